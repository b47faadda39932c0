//! The Slurm commands the executor uses: `sbatch`, `squeue`, `scontrol show job`, `scancel`.
//! No `sacct`: many clusters have no accounting daemon.
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// One array task: `<array job id>_<task index>`, as Slurm names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId {
    /// The array's job id (`SLURM_ARRAY_JOB_ID`).
    pub array: String,
    /// The task index (`SLURM_ARRAY_TASK_ID`).
    pub task: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.array, self.task)
    }
}

/// A task listed by `squeue`: its job name and state (`PENDING`, `RUNNING`, ...).
#[derive(Debug, Clone)]
pub struct Listed {
    /// The job's name (`%j`): `idat-<digest of the task keys>` for the arrays `run` submits.
    pub name: String,
    /// Slurm's job state (`%T`), e.g. `PENDING`, `RUNNING`, `COMPLETING`.
    pub state: String,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let name = format!("{:?}", cmd.get_program());
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {name}: {e} (is Slurm's client on PATH?)"))?;
    if !o.status.success() {
        return Err(format!(
            "{name} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Submit `script` with `args`; returns the job id (`sbatch --parsable` prints `id[;cluster]`).
///
/// # Errors
/// sbatch cannot run or refuses the job (its message).
pub fn sbatch(args: &[String], script: &Path) -> Result<String, String> {
    let out = run(Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script))?;
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("sbatch printed no job id: {out:?}"));
    }
    Ok(id)
}

/// This user's array tasks whose job name starts with `prefix`, one per task (`squeue -r`).
///
/// # Errors
/// squeue cannot run or fails (the caller keeps its last view).
pub fn squeue(prefix: &str) -> Result<HashMap<TaskId, Listed>, String> {
    let out = run(Command::new("squeue").args(["--me", "-h", "-r", "-o", "%A|%K|%j|%T"]))?;
    Ok(parse_squeue(&out, prefix))
}

/// Lines `array|task|name|state` into tasks (non-array jobs, task `N/A`, are left out).
pub fn parse_squeue(out: &str, prefix: &str) -> HashMap<TaskId, Listed> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            let [array, task, name, state] = f[..] else {
                return None;
            };
            let task = task.parse().ok()?;
            name.starts_with(prefix).then(|| {
                let id = TaskId {
                    array: array.to_string(),
                    task,
                };
                let listed = Listed {
                    name: name.to_string(),
                    state: state.to_string(),
                };
                (id, listed)
            })
        })
        .collect()
}

/// The final `JobState` of a task that left the queue (`COMPLETED`, `FAILED`, `TIMEOUT`,
/// `CANCELLED`, `NODE_FAIL`, `OUT_OF_MEMORY`, ...) and its `Reason`; None once Slurm has
/// forgotten it (`MinJobAge`, 300 s by default).
pub fn final_state(id: &TaskId) -> Option<(String, String)> {
    let out = run(Command::new("scontrol").args(["show", "job", &id.to_string()])).ok()?;
    let field = |name: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    Some((field("JobState=")?, field("Reason=").unwrap_or_default()))
}

/// Cancel these jobs (whole arrays).
///
/// # Errors
/// scancel cannot run or fails.
pub fn scancel(jobs: &[String]) -> Result<(), String> {
    if jobs.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(jobs)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines() {
        let out =
            "12|0|idat-ab|RUNNING\n12|1|idat-ab|PENDING\n13|N/A|other|RUNNING\n14|0|x|RUNNING\n";
        let m = parse_squeue(out, "idat-");
        assert_eq!(m.len(), 2);
        let t = TaskId {
            array: "12".into(),
            task: 1,
        };
        assert_eq!(m[&t].state, "PENDING");
        assert_eq!(t.to_string(), "12_1");
    }
}
