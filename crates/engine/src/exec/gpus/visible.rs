//! The cards this process sees: `CUDA_VISIBLE_DEVICES` read by CUDA's rules, else the
//! driver's list, else the `/dev/nvidiaN` files.
use super::{Card, Driver, DriverCard};

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
    pub(super) fn is_probed(&self) -> bool {
        !matches!(self, Source::DevFiles)
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
pub(super) fn declared(ordinals: impl Iterator<Item = usize>) -> Vec<Card> {
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
