//! `resources` as sbatch options: `time` to Slurm's `[D-]HH:MM:SS`, `mem` as `--mem`, GPUs
//! as `--gres=gpu:N` or `--gpus=N`. The syntax of `time` and `mem` is the DSL's
//! ([`crate::config::resources`]).
use super::settings::GpuRequest;
use crate::config::model::Resources;
use crate::config::resources::mem as slurm_mem;

/// A time limit ([`crate::config::resources::seconds`]'s forms) as Slurm's `HH:MM:SS`, or
/// `D-HH:MM:SS` from one day on. Seconds are kept.
///
/// # Errors
/// An unreadable limit, with what is expected.
pub fn slurm_time(text: &str) -> Result<String, String> {
    let secs = crate::config::resources::seconds(text)?;
    let (d, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    Ok(if d > 0 { format!("{d}-{hms}") } else { hms })
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
            ..Resources::default()
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
