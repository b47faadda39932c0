//! The syntax of a stage's `resources.time`, `resources.mem` and `resources.gpu_mem`, owned
//! by the DSL: checked
//! at `validate` for every pipeline, whatever executor will run it (executors format the
//! values their own way, e.g. Slurm's `--time=HH:MM:SS`).
use super::model::Resources;

/// Seconds of a time limit: `90s`, `30m`, `2h`, `1d`, `1h30m`, `1d12h` (units in decreasing
/// order, each at most once), or Slurm's own `HH:MM:SS` / `D-HH:MM:SS`.
///
/// # Errors
/// Any other form, or a limit of zero, with what is expected.
pub fn seconds(text: &str) -> Result<u64, String> {
    let secs = parse_seconds(text.trim()).ok_or_else(|| {
        format!(
            "time `{text}`: expected a duration like `30m`, `2h`, `1h30m`, `1d12h` or \
             `[D-]HH:MM:SS`"
        )
    })?;
    if secs == 0 {
        return Err(format!("time `{text}`: the limit must be above zero"));
    }
    Ok(secs)
}

/// Seconds of `30m`-style or `[D-]HH:MM:SS` text.
fn parse_seconds(t: &str) -> Option<u64> {
    if t.contains(':') {
        let (days, hms) = match t.split_once('-') {
            Some((d, r)) => (d.parse::<u64>().ok()?, r),
            None => (0, t),
        };
        let parts: Vec<u64> = hms
            .split(':')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        let [h, m, s] = parts[..] else { return None };
        return (m < 60 && s < 60).then_some(days * 86_400 + h * 3600 + m * 60 + s);
    }
    let (mut total, mut num, mut last_unit) = (0u64, String::new(), 5usize);
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        // Units in decreasing order, each at most once: d, h, m, s.
        let unit = "dhms".find(c)?;
        if num.is_empty() || (last_unit != 5 && unit <= last_unit) {
            return None;
        }
        let n: u64 = num.parse().ok()?;
        total += n * [86_400, 3600, 60, 1][unit];
        num.clear();
        last_unit = unit;
    }
    (num.is_empty() && last_unit != 5).then_some(total)
}

/// A memory amount: digits and an optional unit K, M, G or T (no unit means megabytes, as
/// Slurm reads it), e.g. `8G`, `500M`. Returned upper-cased.
///
/// # Errors
/// Any other form, with what is expected.
pub fn mem(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_uppercase();
    let digits = t.trim_end_matches(['K', 'M', 'G', 'T']);
    let unit_len = t.len() - digits.len();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || unit_len > 1 {
        return Err(format!(
            "mem `{text}`: expected digits and an optional unit K, M, G or T, e.g. `8G`"
        ));
    }
    Ok(t)
}

/// Bytes of a memory amount in [`mem`]'s syntax: K, M, G and T are powers of 1024 (as Slurm
/// and `nvidia-smi` count), no unit means megabytes; `what` names the field in errors.
///
/// # Errors
/// [`mem`]'s, or an amount too large for 64 bits.
pub fn bytes(text: &str, what: &str) -> Result<u64, String> {
    let t = mem(text).map_err(|e| format!("{what} {}", e.trim_start_matches("mem ")))?;
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t.as_str(), 'M'),
    };
    let shift = 10 * (1 + "KMGT".find(unit).unwrap_or(1) as u32);
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{what} `{text}`: too large"))
}

/// Bytes of a GPU memory amount (`resources.gpu_mem`, `--gpu-mem`): [`bytes`] with a unit
/// required, since an instance's GPU memory in megabytes (what a bare number would mean) is
/// never what is meant; `what` names the field in errors.
///
/// # Errors
/// [`bytes`]'s, no unit, or zero.
pub fn gpu_bytes(text: &str, what: &str) -> Result<u64, String> {
    let n = bytes(text, what)?;
    if text.trim().ends_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "{what} `{text}`: needs a unit K, M, G or T, e.g. `{}G` (a bare number would \
             mean megabytes, never what a GPU instance needs)",
            text.trim()
        ));
    }
    if n == 0 {
        return Err(format!("{what} `{text}`: must be above zero"));
    }
    Ok(n)
}

/// A hint for a number written where `resources.FIELD` (`mem`, `gpu_mem`, `time`) wants
/// text: what to write instead. `None` for other fields or values.
pub fn number_hint(field: &str, got: &serde_json::Value) -> Option<String> {
    if !got.is_number() {
        return None;
    }
    let n = got.as_u64().filter(|n| *n > 0).unwrap_or(8);
    Some(match field {
        "gpu_mem" => format!("write the amount with a unit, e.g. `{n}G`"),
        "mem" => format!(
            "write the amount with a unit, e.g. `{n}M` or `8G` (a bare number is megabytes, \
             as Slurm reads it)"
        ),
        "time" => format!("write it with a unit, e.g. `{n}m` or `2h`"),
        _ => return None,
    })
}

/// Check the `time`, `mem` and `gpu_mem` of `resources`; errors name the field.
pub fn check(resources: &Resources) -> Vec<(&'static str, String)> {
    let mut errs = Vec::new();
    if let Some(t) = &resources.time {
        if let Err(e) = seconds(t) {
            errs.push(("time", e));
        }
    }
    if let Some(m) = &resources.mem {
        if let Err(e) = mem(m) {
            errs.push(("mem", e));
        }
    }
    if let Some(m) = &resources.gpu_mem {
        match gpu_bytes(m, "gpu_mem") {
            Err(e) => errs.push(("gpu_mem", e)),
            Ok(_) if resources.gpus == 0 => errs.push((
                "gpu_mem",
                format!(
                    "gpu_mem `{m}` is memory on the instance's GPUs, but `gpus` is 0; \
                     set `gpus: 1` or remove `gpu_mem`"
                ),
            )),
            Ok(_) => {}
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_mem_is_read_in_binary_units_and_needs_a_gpu() {
        assert_eq!(bytes("6G", "gpu_mem").unwrap(), 6 << 30);
        assert_eq!(bytes("512m", "gpu_mem").unwrap(), 512 << 20);
        assert_eq!(bytes("300", "gpu_mem").unwrap(), 300 << 20, "no unit: MB");
        assert_eq!(bytes("1T", "x").unwrap(), 1 << 40);
        assert_eq!(bytes("2048K", "x").unwrap(), 2 << 20);
        let e = bytes("6GB", "gpu_mem").unwrap_err();
        assert!(e.starts_with("gpu_mem `6GB`: expected digits"), "{e}");
        assert!(bytes("99999999999999T", "x")
            .unwrap_err()
            .contains("too large"));
        let r = |gpus, m: &str| Resources {
            gpus,
            gpu_mem: Some(m.into()),
            ..Resources::default()
        };
        assert!(check(&r(1, "6G")).is_empty());
        let e = check(&r(0, "6G"));
        assert_eq!(e[0].0, "gpu_mem");
        assert!(e[0].1.contains("`gpus` is 0"), "{e:?}");
        assert!(check(&r(1, "0G"))[0].1.contains("above zero"));
        assert!(check(&r(1, "6 GiB"))[0].1.contains("expected digits"));
        let e = check(&r(1, "8"));
        assert_eq!(e[0].0, "gpu_mem");
        assert!(
            e[0].1
                .starts_with("gpu_mem `8`: needs a unit K, M, G or T, e.g. `8G`"),
            "{e:?}"
        );
        assert_eq!(gpu_bytes("8g", "--gpu-mem"), Ok(8 << 30));
        assert!(gpu_bytes("80", "--gpu-mem")
            .unwrap_err()
            .starts_with("--gpu-mem `80`: needs a unit"));
    }

    #[test]
    fn a_number_where_text_is_wanted_gets_what_to_write() {
        let n = serde_json::json!(8);
        assert_eq!(
            number_hint("gpu_mem", &n).unwrap(),
            "write the amount with a unit, e.g. `8G`"
        );
        assert!(number_hint("gpu_mem", &serde_json::json!(0))
            .unwrap()
            .ends_with("e.g. `8G`"));
        assert!(number_hint("mem", &serde_json::json!(8000))
            .unwrap()
            .contains("`8000M` or `8G` (a bare number is megabytes"));
        assert!(number_hint("time", &serde_json::json!(30))
            .unwrap()
            .contains("`30m`"));
        assert_eq!(number_hint("cpus", &n), None);
        assert_eq!(number_hint("mem", &serde_json::json!("8")), None);
    }
}
