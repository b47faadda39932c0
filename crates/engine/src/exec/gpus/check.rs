//! What is checked about a card when an instance starts on it (its free memory) and when a
//! run starts (the numbering of mixed GPU models).
use super::{gib, Card, Driver};

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

/// What a GPU instance's log says before it runs (`device cuda:1 (GPU 5), NVIDIA ...`: the
/// device once when it is the first card's, else `device DEVICE on CARDS`;
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
    let on_first = device.trim() == format!("cuda:{}", cards[0].ordinal);
    let mut lines = vec![match on_first {
        true => format!("device {}", names.join("; ")),
        false => format!("device {device} on {}", names.join("; ")),
    }];
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
