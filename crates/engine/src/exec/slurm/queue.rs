//! The Slurm commands the executor uses: `sbatch`, `squeue`, `scontrol show job`,
//! `scontrol show config` and `scancel`, behind the [`Commands`] trait so the executor's
//! decisions can be tested against a scripted queue. No `sacct`: many clusters have no
//! accounting daemon.
//!
//! Array tasks are named by the array's job id and the task index everywhere (`%F` and
//! `%K` in squeue(1), `ArrayJobId`/`ArrayTaskId` in `scontrol show job`). A running task
//! has a job id of its own (`%A`/`%i` of squeue), which is not the array's: matching on it
//! loses every task but the one that kept the array's id.
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// One array task: `<array job id>_<task index>`, as Slurm names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId {
    /// The array's job id (`SLURM_ARRAY_JOB_ID`, squeue's `%F`).
    pub array: String,
    /// The task index (`SLURM_ARRAY_TASK_ID`, squeue's `%K`).
    pub task: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.array, self.task)
    }
}

/// A task listed by `squeue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The job's name (`%j`): `idat-<digest of the task keys>` for the arrays `run` submits.
    pub name: String,
    /// Slurm's job state (`%T`), e.g. `PENDING`, `RUNNING`, `COMPLETING`, `REQUEUE_HOLD`.
    pub state: String,
    /// Why it waits (`%r`), e.g. `Resources`, `Priority`, `BeginTime`; `None` when running.
    pub reason: String,
}

/// What `scontrol show job` says of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// `JobState`, e.g. `COMPLETED`, `FAILED`, `TIMEOUT`, `OUT_OF_MEMORY`, `PENDING`.
    pub state: String,
    /// `Reason` (`None` when Slurm gives none).
    pub reason: String,
    /// `ExitCode`, `code:signal` (e.g. `0:9` for a task killed by SIGKILL).
    pub exit_code: String,
    /// `Restarts`: how often the task was requeued.
    pub restarts: u32,
    /// The task's own job id (`JobId`).
    pub job_id: String,
}

/// The Slurm commands, as the executor needs them. [`Cli`] runs the real ones.
pub trait Commands: Send {
    /// Submit `script` with `args`; the array's job id.
    ///
    /// # Errors
    /// sbatch cannot run or refuses the job (its message).
    fn sbatch(&self, args: &[String], script: &Path) -> Result<String, String>;
    /// This user's array tasks whose job name starts with `prefix`, one per task.
    ///
    /// # Errors
    /// squeue cannot run or fails (the caller keeps waiting).
    fn squeue(&self, prefix: &str) -> Result<HashMap<TaskId, Listed>, String>;
    /// What Slurm still knows of a task: `Ok(None)` once it has forgotten it (`MinJobAge`
    /// after the end, 300 s by default).
    ///
    /// # Errors
    /// scontrol cannot run or fails for another reason than an unknown job.
    fn job(&self, id: &TaskId) -> Result<Option<JobInfo>, String>;
    /// Cancel these jobs (whole arrays, by array job id).
    ///
    /// # Errors
    /// scancel cannot run or fails.
    fn scancel(&self, jobs: &[String]) -> Result<(), String>;
    /// The cluster's `MaxArraySize`: an array's task indices must be below it.
    ///
    /// # Errors
    /// `scontrol show config` cannot run or does not give it.
    fn max_array_size(&self) -> Result<usize, String>;
}

/// The real Slurm client commands, found on `PATH`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cli;

fn run(cmd: &mut Command) -> Result<String, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
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

/// The squeue format [`parse_squeue`] reads: array id, task index, name, state, reason.
pub const SQUEUE_FORMAT: &str = "%F|%K|%j|%T|%r";

impl Commands for Cli {
    fn sbatch(&self, args: &[String], script: &Path) -> Result<String, String> {
        let out = run(Command::new("sbatch")
            .arg("--parsable")
            .args(args)
            .arg(script))?;
        parse_sbatch(&out)
    }

    fn squeue(&self, prefix: &str) -> Result<HashMap<TaskId, Listed>, String> {
        let out = run(Command::new("squeue").args(["--me", "-h", "-r", "-o", SQUEUE_FORMAT]))?;
        Ok(parse_squeue(&out, prefix))
    }

    fn job(&self, id: &TaskId) -> Result<Option<JobInfo>, String> {
        let o = Command::new("scontrol")
            .args(["show", "job", &id.to_string()])
            .output()
            .map_err(|e| format!("cannot run scontrol: {e} (is Slurm's client on PATH?)"))?;
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            // "slurm_load_jobs error: Invalid job id specified"
            if err.contains("Invalid job id") {
                return Ok(None);
            }
            return Err(format!("scontrol show job {id} failed: {}", err.trim()));
        }
        Ok(parse_job(&String::from_utf8_lossy(&o.stdout)))
    }

    fn scancel(&self, jobs: &[String]) -> Result<(), String> {
        if jobs.is_empty() {
            return Ok(());
        }
        run(Command::new("scancel").args(jobs)).map(|_| ())
    }

    fn max_array_size(&self) -> Result<usize, String> {
        let out = run(Command::new("scontrol").args(["show", "config"]))?;
        parse_config_value(&out, "MaxArraySize")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "scontrol show config gives no MaxArraySize".into())
    }
}

/// The job id `sbatch --parsable` prints (`id` or `id;cluster`).
///
/// # Errors
/// No numeric id in the output.
pub fn parse_sbatch(out: &str) -> Result<String, String> {
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("sbatch printed no job id: {out:?}"));
    }
    Ok(id)
}

/// Lines of [`SQUEUE_FORMAT`] into tasks whose name starts with `prefix` (jobs that are not
/// array tasks, task `N/A`, are left out).
pub fn parse_squeue(out: &str, prefix: &str) -> HashMap<TaskId, Listed> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().splitn(5, '|').collect();
            let [array, task, name, state, reason] = f[..] else {
                return None;
            };
            let task = task.parse().ok()?;
            if !name.starts_with(prefix) || !array.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let id = TaskId {
                array: array.to_string(),
                task,
            };
            let listed = Listed {
                name: name.to_string(),
                state: state.to_string(),
                reason: reason.to_string(),
            };
            Some((id, listed))
        })
        .collect()
}

/// `scontrol show job` output (`Key=Value` words) into a [`JobInfo`]; None without a
/// `JobState`.
pub fn parse_job(out: &str) -> Option<JobInfo> {
    let field = |name: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
    };
    Some(JobInfo {
        state: field("JobState")?,
        reason: field("Reason").unwrap_or_else(|| "None".into()),
        exit_code: field("ExitCode").unwrap_or_default(),
        restarts: field("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0),
        job_id: field("JobId").unwrap_or_default(),
    })
}

/// The value of `name` in `scontrol show config` output (`Name = value` lines).
pub fn parse_config_value(out: &str, name: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_names_tasks_by_array_id_not_their_own_job_id() {
        // squeue -r -o '%F|%K|%j|%T|%r' as Slurm 22.05 printed it for `--array=0-2` on two
        // CPUs: running tasks 0 and 1 have job ids 8 and 9 of their own; the pending task 2
        // still carries the array's id 7. All three are tasks of array 7.
        let out = "7|2|idat-ab|PENDING|Resources\n7|0|idat-ab|RUNNING|None\n\
                   7|1|idat-ab|RUNNING|None\n13|N/A|idat-x|RUNNING|None\n14|0|other|RUNNING|None\n";
        let m = parse_squeue(out, "idat-");
        assert_eq!(m.len(), 3);
        for (task, state) in [(0, "RUNNING"), (1, "RUNNING"), (2, "PENDING")] {
            let t = TaskId {
                array: "7".into(),
                task,
            };
            assert_eq!(m[&t].state, state, "{t}");
        }
        let t = TaskId {
            array: "7".into(),
            task: 2,
        };
        assert_eq!(m[&t].reason, "Resources");
        assert_eq!(t.to_string(), "7_2");
    }

    #[test]
    fn scontrol_job_fields() {
        let out = "JobId=9 ArrayJobId=7 ArrayTaskId=1 JobName=idat-ab\n   \
                   JobState=PENDING Reason=BeginTime Dependency=(null)\n   \
                   Requeue=1 Restarts=2 BatchFlag=1 Reboot=0 ExitCode=0:0\n";
        let j = parse_job(out).unwrap();
        assert_eq!(
            j,
            JobInfo {
                state: "PENDING".into(),
                reason: "BeginTime".into(),
                exit_code: "0:0".into(),
                restarts: 2,
                job_id: "9".into(),
            }
        );
        assert!(parse_job("nothing here").is_none());
    }

    #[test]
    fn config_and_sbatch_output() {
        let cfg = "MaxArraySize            = 1001\nMaxJobCount             = 10000\n";
        assert_eq!(
            parse_config_value(cfg, "MaxArraySize").as_deref(),
            Some("1001")
        );
        assert_eq!(parse_sbatch("42;cluster\n").unwrap(), "42");
        assert!(parse_sbatch("sbatch: error").is_err());
    }
}
