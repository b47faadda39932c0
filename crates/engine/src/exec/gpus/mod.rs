//! Which GPUs a run may use, and how its instances share them: THE owner of placement.
//!
//! The cards are the ones this process sees: `CUDA_VISIBLE_DEVICES` when it is set (CUDA's
//! rules: indices or `GPU-<uuid>` prefixes or one `MIG-...` id, comma-separated; the list
//! ends at the first invalid entry; the empty string hides every GPU), else every card of
//! the driver (NVML, loaded at run time: [`nvml`]), else the `/dev/nvidiaN` files. The
//! process numbers them `cuda:0..n` in that order, so a card is named with both: `cuda:1
//! (GPU 5)`. [`select`] applies `--device` and `--gpus` to them; [`pool::Pool`] hands each
//! running instance cards of its own (or a share of one: `resources.gpu_mem`, `--per-gpu`),
//! and [`check_free`] looks at a card's free memory when a packed instance starts.
//!
//! Every query of the machine goes through the [`Driver`] trait, so tests use a fake list.
pub mod advice;
mod check;
pub mod nvml;
pub mod pool;
#[cfg(test)]
mod tests;
mod visible;

pub use check::{check_free, order_warning, preflight};
pub use visible::{dev_files, visible, NoDriver, Source};

use crate::config::model::Resources;
use visible::declared;

/// One card as the driver lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverCard {
    /// The driver's index (NVML's order: PCI bus order).
    pub index: usize,
    /// Its UUID, `GPU-8932f937-d72c-4106-c12f-20bd9faed9f6`.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total memory, bytes.
    pub total: u64,
}

/// What placement asks of the GPU driver: NVML in a run ([`nvml::Nvml`]), a fake in tests.
pub trait Driver: Send + Sync {
    /// Every card of the machine, in the driver's order.
    ///
    /// # Errors
    /// No driver answers (its library is absent, or it fails), with why.
    fn cards(&self) -> Result<Vec<DriverCard>, String>;
    /// `(free, total)` memory in bytes of the card (or MIG instance) with this UUID.
    ///
    /// # Errors
    /// No driver, or no such card, with why.
    fn memory(&self, uuid: &str) -> Result<(u64, u64), String>;
}

/// A card this run may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// Its number in this process: a stage placed on it gets the device `cuda:{ordinal}`.
    pub ordinal: usize,
    /// How the machine names it: its `CUDA_VISIBLE_DEVICES` entry (`5`, `GPU-8932f937`,
    /// `MIG-...`), else the driver's index.
    pub id: String,
    /// Its full UUID when the driver listed it (the free-memory check asks by it).
    pub uuid: Option<String>,
    /// Product name, when the driver listed it.
    pub name: Option<String>,
    /// Memory in bytes that instances may declare on it (`--gpu-mem`, else the driver's
    /// total); `None`: unknown, instances with `gpu_mem` take it alone.
    pub total: Option<u64>,
}

impl Card {
    /// `cuda:1 (GPU 5)`: the process's name and the machine's.
    pub fn label(&self) -> String {
        format!("cuda:{} (GPU {})", self.ordinal, self.id)
    }

    /// [`Card::label`] with the product name and memory when known, for logs.
    pub fn describe(&self) -> String {
        let mut extra: Vec<String> = self.name.iter().cloned().collect();
        if let Some(t) = self.total {
            extra.push(format!("{} usable", gib(t)));
        }
        match extra.is_empty() {
            true => self.label(),
            false => format!("{}, {}", self.label(), extra.join(", ")),
        }
    }
}

/// Several cards' labels, as one name without commas (trace.csv's `device` column).
pub fn labels(cards: &[&Card]) -> String {
    let l: Vec<String> = cards.iter().map(|c| c.label()).collect();
    l.join(" + ")
}

/// `6.0 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `--device`: where stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `cpu`: every instance on the CPU; the cards are only slots for `resources.gpus`.
    Cpu,
    /// `cuda`: each GPU instance on cards of its own among the visible ones.
    Cuda,
    /// `cuda:N`: every GPU instance on visible card N.
    Pinned(usize),
}

impl DeviceSpec {
    /// Read `--device`.
    ///
    /// # Errors
    /// Not `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Result<DeviceSpec, String> {
        match text.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda),
            t => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Pinned)
                .ok_or_else(|| format!("--device `{text}`: expected `cpu`, `cuda` or `cuda:N`")),
        }
    }
}

/// The cards of a run and how its instances share them.
#[derive(Debug, Clone)]
pub struct CardSet {
    /// The cards, in their process order.
    pub cards: Vec<Card>,
    /// How they were chosen, for messages: `the driver (NVML) lists 8`, `--gpus 2 of ...`.
    pub source: String,
    /// `--per-gpu`: at most this many instances on one card; instances without
    /// `gpu_mem` share cards too.
    pub per_gpu: Option<usize>,
    /// Stages get `cuda:K` of their first card (`--device cuda` or `cuda:N`); false under
    /// `--device cpu`, where the cards are only slots that bound GPU instances.
    pub place: bool,
}

/// What a run asks for: `--device`, `--gpus`, `--gpu-mem`, `--per-gpu`.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// `--device`.
    pub device: DeviceSpec,
    /// `--gpus`: the first N visible cards (declared, where no driver lists them).
    pub gpus: Option<usize>,
    /// `--gpu-mem`: bytes each card offers to `resources.gpu_mem` (instead of its total).
    pub gpu_mem: Option<u64>,
    /// `--per-gpu`: instances per card at most.
    pub per_gpu: Option<usize>,
}

/// The run's cards: `visible` (from `source`) narrowed by `--device` and `--gpus`.
///
/// # Errors
/// `--device cuda:N` or `--gpus N` beyond the visible cards; `--gpus` above 1 with a pinned
/// card; `--per-gpu 0`.
pub fn select(visible: Vec<Card>, source: &Source, ask: &Ask) -> Result<CardSet, String> {
    let n = visible.len();
    let seen = source.describe(n);
    if ask.per_gpu == Some(0) {
        return Err("--per-gpu 0: at least one instance per card".into());
    }
    let (mut cards, why) = match (ask.device, ask.gpus) {
        (DeviceSpec::Pinned(k), g) => {
            if g.is_some_and(|g| g > 1) {
                return Err(format!(
                    "--device cuda:{k} puts every GPU instance on one card, but --gpus {} asks \
                     for more; use --device cuda --gpus {0} for one card per instance",
                    g.unwrap_or(0)
                ));
            }
            let card = match source.is_probed() || k < n {
                true => visible
                    .get(k)
                    .cloned()
                    .ok_or_else(|| format!("--device cuda:{k}: no such card: {seen}"))?,
                false => declared(k..k + 1).remove(0),
            };
            let cards = if g == Some(0) { vec![] } else { vec![card] };
            (cards, format!("--device cuda:{k} pins every GPU instance to one card; use --device cuda for more"))
        }
        (_, Some(g)) if g <= n => {
            let why = format!("--gpus {g}; {seen}");
            (visible.into_iter().take(g).collect(), why)
        }
        // Under `--device cpu` the cards are only slots: `--gpus` may declare more.
        (d, Some(g)) if source.is_probed() && d != DeviceSpec::Cpu => {
            return Err(format!("--gpus {g}: {seen}"));
        }
        (_, Some(g)) => (declared(0..g), format!("--gpus {g} declares {g}")),
        (_, None) => (visible, seen),
    };
    if let Some(m) = ask.gpu_mem {
        for c in &mut cards {
            c.total = Some(m);
        }
    }
    Ok(CardSet {
        cards,
        source: why,
        per_gpu: ask.per_gpu,
        place: ask.device != DeviceSpec::Cpu,
    })
}

/// The run's cards on this machine: `CUDA_VISIBLE_DEVICES`, NVML, `/dev/nvidiaN`, then
/// [`select`].
///
/// # Errors
/// [`DeviceSpec::parse`]'s and [`select`]'s.
pub fn for_run(ask: &Ask) -> Result<CardSet, String> {
    let env = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let driver: &dyn Driver = match nvml::Nvml::system() {
        Ok(n) => n,
        Err(_) => &NoDriver,
    };
    let (cards, source) = visible(env.as_deref(), driver, dev_files);
    if let Some(w) = order_warning(driver, std::env::var("CUDA_DEVICE_ORDER").ok().as_deref()) {
        tracing::warn!("{w}");
    }
    select(cards, &source, ask)
}

/// `resources.gpu_mem` in bytes (`None` when not set).
///
/// # Errors
/// Its syntax (checked at `validate` already), naming the field.
pub fn gpu_mem(r: &Resources) -> Result<Option<u64>, String> {
    r.gpu_mem
        .as_deref()
        .map(|m| crate::config::resources::gpu_bytes(m, "resources.gpu_mem"))
        .transpose()
}
