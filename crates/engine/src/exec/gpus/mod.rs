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
pub mod nvml;
pub mod pool;
#[cfg(test)]
mod tests;

use crate::config::model::Resources;

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

/// Where the visible cards came from (what messages cite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `CUDA_VISIBLE_DEVICES`, with its value.
    Env(String),
    /// The driver (NVML) listed them.
    Driver,
    /// Counted `/dev/nvidiaN` files: no NVML, so no names, UUIDs or memory.
    DevFiles,
}

impl Source {
    /// Says how `n` cards became visible, with how to change it.
    pub fn describe(&self, n: usize) -> String {
        match self {
            Source::Env(v) => format!(
                "CUDA_VISIBLE_DEVICES=`{v}` makes {n} visible (list more cards there, or unset it)"
            ),
            Source::Driver => format!("the driver (NVML) lists {n}"),
            Source::DevFiles if n == 0 => {
                "no GPU found (no NVML, no /dev/nvidiaN); `--gpus N` declares N".into()
            }
            Source::DevFiles => format!("{n} /dev/nvidiaN file(s) found (no NVML)"),
        }
    }

    /// The list is the machine's, so `--gpus` may only take part of it (`--gpus` above
    /// the /dev/nvidiaN count, where no driver answered, declares cards instead).
    fn is_probed(&self) -> bool {
        !matches!(self, Source::DevFiles)
    }
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

/// The cards this process sees, from `CUDA_VISIBLE_DEVICES` (`env`), else the driver,
/// else `dev_files()` (the `/dev/nvidiaN` count).
pub fn visible(
    env: Option<&str>,
    driver: &dyn Driver,
    dev_files: impl FnOnce() -> usize,
) -> (Vec<Card>, Source) {
    let listed = driver.cards();
    if let Some(v) = env {
        return (
            from_env(v, driver, listed.ok().as_deref()),
            Source::Env(v.into()),
        );
    }
    match listed {
        Ok(list) => {
            let cards = list.into_iter().map(|d| from_driver(d.index, &d)).collect();
            (cards, Source::Driver)
        }
        Err(why) => {
            tracing::debug!("no GPU driver: {why}");
            (declared(0..dev_files()), Source::DevFiles)
        }
    }
}

fn from_driver(ordinal: usize, d: &DriverCard) -> Card {
    Card {
        ordinal,
        id: d.index.to_string(),
        uuid: Some(d.uuid.clone()),
        name: Some(d.name.clone()),
        total: Some(d.total),
    }
}

/// Cards known by number only (`--gpus N` without a driver, or `/dev/nvidiaN` files).
fn declared(ordinals: impl Iterator<Item = usize>) -> Vec<Card> {
    ordinals
        .map(|k| Card {
            ordinal: k,
            id: k.to_string(),
            uuid: None,
            name: None,
            total: None,
        })
        .collect()
}

/// `CUDA_VISIBLE_DEVICES`'s cards, as CUDA reads the value: entries in order, each an index,
/// a `GPU-` UUID (a prefix naming one card is enough) or a `MIG-` id (CUDA enumerates one
/// MIG instance only); the list ends at the first entry that is none of these (`-1`, an
/// empty entry, an index or UUID the driver does not have) and, our rule, at a card named
/// a second time. Without a driver, indices and ids cannot be checked and are taken as
/// given.
fn from_env(value: &str, driver: &dyn Driver, listed: Option<&[DriverCard]>) -> Vec<Card> {
    let mut cards: Vec<Card> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let ordinal = cards.len();
        let card = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
            let Ok(i) = entry.parse::<usize>() else { break };
            match listed {
                Some(l) => l.get(i).map(|d| from_driver(ordinal, d)),
                None => Some(declared(ordinal..ordinal + 1).remove(0)),
            }
        } else if entry.len() > 4 && entry.starts_with("GPU-") {
            match listed {
                Some(l) => {
                    let hits: Vec<&DriverCard> =
                        l.iter().filter(|d| d.uuid.starts_with(entry)).collect();
                    (hits.len() == 1).then(|| from_driver(ordinal, hits[0]))
                }
                None => Some(Card {
                    uuid: Some(entry.into()),
                    ..declared(ordinal..ordinal + 1).remove(0)
                }),
            }
        } else if entry.len() > 4 && entry.starts_with("MIG-") {
            let seen_mig = cards.iter().any(|c| c.id.starts_with("MIG-"));
            (!seen_mig).then(|| Card {
                uuid: Some(entry.into()),
                total: driver.memory(entry).ok().map(|(_, t)| t),
                ..declared(ordinal..ordinal + 1).remove(0)
            })
        } else {
            None
        };
        let Some(mut card) = card else { break };
        card.id = match (listed, entry.parse::<usize>()) {
            // The machine's index, when the driver says which card the entry is.
            (Some(_), _) if !entry.starts_with("MIG-") => card.id,
            (_, Ok(i)) => i.to_string(),
            _ => entry.to_string(),
        };
        let same = |c: &Card| c.id == card.id || (c.uuid.is_some() && c.uuid == card.uuid);
        if cards.iter().any(same) {
            break;
        }
        cards.push(card);
    }
    cards
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

/// Where the driver lists different GPU models and `CUDA_DEVICE_ORDER` (`order`) is not
/// `PCI_BUS_ID`, CUDA numbers the cards fastest first while the driver (and so the indices
/// idat-pipe names, also in `CUDA_VISIBLE_DEVICES`) counts by PCI bus: a warning saying so.
pub fn order_warning(driver: &dyn Driver, order: Option<&str>) -> Option<String> {
    if order == Some("PCI_BUS_ID") {
        return None;
    }
    let listed = driver.cards().ok()?;
    let names: std::collections::BTreeSet<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    (names.len() > 1).then(|| {
        format!(
            "this machine has different GPU models ({}): CUDA numbers them fastest first, the \
             driver by PCI bus; set CUDA_DEVICE_ORDER=PCI_BUS_ID so that GPU N is the card N \
             named here",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// NVIDIA device files `/dev/nvidiaN`.
pub fn dev_files() -> usize {
    std::fs::read_dir("/dev")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("nvidia")
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The driver where NVML cannot be loaded: answers nothing.
pub struct NoDriver;
impl Driver for NoDriver {
    fn cards(&self) -> Result<Vec<DriverCard>, String> {
        Err("no GPU driver".into())
    }
    fn memory(&self, _: &str) -> Result<(u64, u64), String> {
        Err("no GPU driver".into())
    }
}

/// `resources.gpu_mem` in bytes (`None` when not set).
///
/// # Errors
/// Its syntax (checked at `validate` already), naming the field.
pub fn gpu_mem(r: &Resources) -> Result<Option<u64>, String> {
    r.gpu_mem
        .as_deref()
        .map(|m| crate::config::resources::bytes(m, "resources.gpu_mem"))
        .transpose()
}

/// What a GPU instance's log says before it runs (`device cuda:1 on cuda:1 (GPU 5), ...`,
/// then one line per card on its free memory, or once why that check was skipped: `driver`
/// is the error where NVML is absent), and `Err` with what to do where `gpu_mem` does not
/// fit a card's free memory. Nothing for an instance on no card.
pub fn preflight(
    device: &str,
    cards: &[Card],
    gpu_mem: Option<u64>,
    driver: Result<&dyn Driver, String>,
) -> (Vec<String>, Result<(), String>) {
    if cards.is_empty() {
        return (vec![], Ok(()));
    }
    let names: Vec<String> = cards.iter().map(Card::describe).collect();
    let mut lines = vec![format!("device {device} on {}", names.join("; "))];
    let Some(need) = gpu_mem else {
        return (lines, Ok(()));
    };
    let driver = match driver {
        Ok(d) => d,
        Err(why) => {
            lines.push(format!("free-memory check skipped: {why}"));
            return (lines, Ok(()));
        }
    };
    for card in cards {
        match check_free(driver, card, need) {
            Ok(line) => lines.push(line),
            Err(e) => return (lines, Err(e)),
        }
    }
    (lines, Ok(()))
}

/// Whether `card` has `need` bytes free for an instance that starts on it: `Ok` with a line
/// for the instance's log (the free memory, or why the check was skipped), `Err` with what
/// to do when it does not fit.
///
/// # Errors
/// The card's free memory is below `need`.
pub fn check_free(driver: &dyn Driver, card: &Card, need: u64) -> Result<String, String> {
    let label = card.label();
    let Some(uuid) = &card.uuid else {
        return Ok(format!(
            "free-memory check of {label} skipped: no GPU driver (NVML) names this card"
        ));
    };
    match driver.memory(uuid) {
        Err(why) => Ok(format!("free-memory check of {label} skipped: {why}")),
        Ok((free, _)) if free >= need => Ok(format!(
            "{label}: {} free, resources.gpu_mem {} fits",
            gib(free),
            gib(need)
        )),
        Ok((free, total)) => Err(format!(
            "{label} has {} free of {} but this instance declares resources.gpu_mem {}: lower \
             `resources.gpu_mem` if it needs less, free the card (nvidia-smi lists what uses \
             it), or pin another card with `--device cuda:N`",
            gib(free),
            gib(total),
            gib(need)
        )),
    }
}
