//! The syntax of a stage's `resources.time` and `resources.mem`, owned by the DSL: checked
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

/// Check the `time` and `mem` of `resources`; errors name the field (`time` or `mem`).
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
    errs
}
