//! The cards this process sees: `CUDA_VISIBLE_DEVICES` read by CUDA's rules, else the
//! driver's list, else the `/dev/nvidiaN` files.
use super::{Card, Driver, DriverCard};

/// Where the visible cards came from (what messages cite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `CUDA_VISIBLE_DEVICES`, with its value and, where the list ended before its last
    /// entry, the entry that ended it and why (`` `-1` is not ... ``, `` `1` is listed twice ``).
    Env(String, Option<String>),
    /// The driver (NVML) listed them.
    Driver,
    /// Counted `/dev/nvidiaN` files: no NVML, so no names, UUIDs or memory.
    DevFiles,
}

impl Source {
    /// Says how `n` cards became visible, with how to change it.
    pub fn describe(&self, n: usize) -> String {
        match self {
            Source::Env(v, None) => format!(
                "CUDA_VISIBLE_DEVICES=`{v}` makes {n} visible (list more cards there, or unset it)"
            ),
            Source::Env(v, Some(why)) => format!(
                "CUDA_VISIBLE_DEVICES=`{v}` makes {n} visible: the list ends at {why}; CUDA \
                 ignores what follows it (fix the entry or list more cards there, or unset it)"
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
        let (cards, ended) = from_env(v, driver, listed.ok().as_deref());
        return (cards, Source::Env(v.into(), ended));
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
/// given. Returns the cards, and the entry that ended the list early with why.
fn from_env(
    value: &str,
    driver: &dyn Driver,
    listed: Option<&[DriverCard]>,
) -> (Vec<Card>, Option<String>) {
    let mut cards: Vec<Card> = Vec::new();
    if value.trim().is_empty() {
        return (cards, None);
    }
    for entry in value.split(',').map(str::trim) {
        let card = match env_entry(entry, &cards, driver, listed) {
            Ok(c) => c,
            Err(why) => return (cards, Some(why)),
        };
        let same = |c: &Card| c.id == card.id || (c.uuid.is_some() && c.uuid == card.uuid);
        if let Some(first) = cards.iter().find(|c| same(c)) {
            let twice = match first.id == entry {
                true => format!("`{entry}`, listed twice"),
                false => format!("`{entry}`, GPU {} listed twice", card.id),
            };
            return (cards, Some(twice));
        }
        cards.push(card);
    }
    (cards, None)
}

/// One `CUDA_VISIBLE_DEVICES` entry as the card it names (numbered after `cards`), or why
/// it ends the list.
fn env_entry(
    entry: &str,
    cards: &[Card],
    driver: &dyn Driver,
    listed: Option<&[DriverCard]>,
) -> Result<Card, String> {
    let ordinal = cards.len();
    let bad = |why: &str| format!("`{entry}`, {why}");
    let mut card = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
        let i = entry
            .parse::<usize>()
            .map_err(|_| bad("not a card index"))?;
        match listed {
            Some(l) => l
                .get(i)
                .map(|d| from_driver(ordinal, d))
                .ok_or_else(|| bad(&format!("no such card (the driver lists {})", l.len())))?,
            None => declared(ordinal..ordinal + 1).remove(0),
        }
    } else if entry.len() > 4 && entry.starts_with("GPU-") {
        match listed {
            Some(l) => {
                let hits: Vec<&DriverCard> =
                    l.iter().filter(|d| d.uuid.starts_with(entry)).collect();
                match hits[..] {
                    [one] => from_driver(ordinal, one),
                    [] => return Err(bad("a UUID no card of the driver has")),
                    _ => return Err(bad(&format!("a UUID prefix of {} cards", hits.len()))),
                }
            }
            None => Card {
                uuid: Some(entry.into()),
                ..declared(ordinal..ordinal + 1).remove(0)
            },
        }
    } else if entry.len() > 4 && entry.starts_with("MIG-") {
        if cards.iter().any(|c| c.id.starts_with("MIG-")) {
            return Err(bad("a second MIG device (CUDA uses one)"));
        }
        Card {
            uuid: Some(entry.into()),
            total: driver.memory(entry).ok().map(|(_, t)| t),
            ..declared(ordinal..ordinal + 1).remove(0)
        }
    } else if entry.is_empty() {
        return Err("an empty entry".into());
    } else {
        return Err(bad("not a card index, `GPU-` UUID or `MIG-` id"));
    };
    card.id = match (listed, entry.parse::<usize>()) {
        (Some(_), _) if !entry.starts_with("MIG-") => card.id,
        (_, Ok(i)) => i.to_string(),
        _ => entry.to_string(),
    };
    Ok(card)
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
