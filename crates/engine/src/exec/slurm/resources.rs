//! `resources` as sbatch options: `time` to Slurm's `[D-]HH:MM:SS`, `mem` checked, GPUs
//! as `--gres=gpu:N` or `--gpus=N`.
use crate::config::model::{GpuRequest, Resources};

/// A time limit (`90s`, `30m`, `2h`, `1d`, `1h30m`, `1d12h`, or Slurm's own `HH:MM:SS` /
/// `D-HH:MM:SS`) as Slurm's `HH:MM:SS`, or `D-HH:MM:SS` from one day on. Seconds are kept.
///
/// # Errors
/// Any other form, or a limit of zero, with what is expected.
pub fn slurm_time(text: &str) -> Result<String, String> {
    let secs = parse_seconds(text.trim()).ok_or_else(|| {
        format!(
            "time `{text}`: expected a duration like `30m`, `2h`, `1h30m`, `1d12h` or \
             `[D-]HH:MM:SS`"
        )
    })?;
    if secs == 0 {
        return Err(format!("time `{text}`: the limit must be above zero"));
    }
    let (d, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    Ok(if d > 0 { format!("{d}-{hms}") } else { hms })
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

/// A memory amount for `--mem`: digits and an optional unit K, M, G or T (Slurm's; no
/// unit means megabytes), e.g. `8G`, `500M`. Returned upper-cased.
///
/// # Errors
/// Any other form, with what is expected.
pub fn slurm_mem(text: &str) -> Result<String, String> {
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
        if let Err(e) = slurm_time(t) {
            errs.push(("time", e));
        }
    }
    if let Some(m) = &resources.mem {
        if let Err(e) = slurm_mem(m) {
            errs.push(("mem", e));
        }
    }
    errs
}

/// The sbatch options of one instance's resources.
///
/// # Errors
/// `time` or `mem` unreadable; GPUs asked for with `gpu_request: none`.
pub fn sbatch_options(r: &Resources, gpu: GpuRequest) -> Result<Vec<String>, String> {
    let mut o = vec![format!("--cpus-per-task={}", r.cpus.max(1))];
    if r.gpus > 0 {
        match gpu {
            GpuRequest::Gres => o.push(format!("--gres=gpu:{}", r.gpus)),
            GpuRequest::Gpus => o.push(format!("--gpus={}", r.gpus)),
            GpuRequest::None => {
                return Err(format!(
                    "resources.gpus: needs {} GPU(s) but slurm.gpu_request is `none`; set it \
                     to `gres` or `gpus`",
                    r.gpus
                ))
            }
        }
    }
    if let Some(m) = &r.mem {
        o.push(format!(
            "--mem={}",
            slurm_mem(m).map_err(|e| format!("resources.{e}"))?
        ));
    }
    if let Some(t) = &r.time {
        o.push(format!(
            "--time={}",
            slurm_time(t).map_err(|e| format!("resources.{e}"))?
        ));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_slurm_forms() {
        assert_eq!(slurm_time("30m").unwrap(), "00:30:00");
        assert_eq!(slurm_time("2h").unwrap(), "02:00:00");
        assert_eq!(slurm_time("1h30m").unwrap(), "01:30:00");
        assert_eq!(slurm_time("90s").unwrap(), "00:01:30");
        assert_eq!(slurm_time("1d12h").unwrap(), "1-12:00:00");
        assert_eq!(slurm_time("36h").unwrap(), "1-12:00:00");
        assert_eq!(slurm_time("01:02:03").unwrap(), "01:02:03");
        assert_eq!(slurm_time("2-00:00:00").unwrap(), "2-00:00:00");
        for bad in [
            "", "2", "h", "2x", "30m2h", "2h2h", "1:2", "0m", "00:61:00", "2 h",
        ] {
            assert!(slurm_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mem_and_options() {
        assert_eq!(slurm_mem("8g").unwrap(), "8G");
        assert_eq!(slurm_mem("500").unwrap(), "500");
        for bad in ["", "G", "8GB", "8.5G", "-1G"] {
            assert!(slurm_mem(bad).is_err(), "{bad}");
        }
        let r = Resources {
            cpus: 4,
            gpus: 2,
            mem: Some("16G".into()),
            time: Some("2h".into()),
        };
        assert_eq!(
            sbatch_options(&r, GpuRequest::Gres).unwrap(),
            [
                "--cpus-per-task=4",
                "--gres=gpu:2",
                "--mem=16G",
                "--time=02:00:00"
            ]
        );
        assert!(sbatch_options(&r, GpuRequest::Gpus).unwrap()[1] == "--gpus=2");
        let e = sbatch_options(&r, GpuRequest::None).unwrap_err();
        assert!(
            e.contains("resources.gpus") && e.contains("gpu_request"),
            "{e}"
        );
    }
}
