//! What Slurm's job states mean for a task the executor watches, and how a task that Slurm
//! ended is explained: the state, its reason, the job ids, what `slurmstepd` wrote to the
//! task's output file (the only trace left once Slurm has forgotten the job), the logs, and
//! what to change. Job states are squeue(1)'s "JOB STATE CODES".

/// Where a task stands, by its Slurm job state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Queued, running, or between two attempts (requeued, held, suspended): wait.
    Active,
    /// Ended with exit code 0.
    Completed,
    /// Ended otherwise: `FAILED` (non-zero exit code) or ended by Slurm.
    Ended,
}

/// The phase of job state `state` (squeue's `%T`, scontrol's `JobState`). An unknown state
/// counts as active: a newer Slurm's state is waited on, never failed early.
pub fn phase(state: &str) -> Phase {
    match state {
        "COMPLETED" => Phase::Completed,
        "FAILED" | "CANCELLED" | "TIMEOUT" | "OUT_OF_MEMORY" | "NODE_FAIL" | "PREEMPTED"
        | "BOOT_FAIL" | "DEADLINE" | "REVOKED" => Phase::Ended,
        // PENDING, RUNNING, CONFIGURING, COMPLETING, SUSPENDED, STOPPED, RESIZING,
        // SIGNALING, STAGE_OUT, REQUEUED, REQUEUE_FED, REQUEUE_HOLD, SPECIAL_EXIT,
        // RESV_DEL_HOLD, and anything newer.
        _ => Phase::Active,
    }
}

/// A line for the progress bar of a task that has not started running, or waits to run
/// again after it was `requeued` (preempted, its node failed, `scontrol requeue`), e.g.
/// `Slurm: PENDING (Priority)`; held tasks say how to release them. None while it runs.
pub fn waiting_message(task: &str, state: &str, reason: &str, requeued: bool) -> Option<String> {
    let why = if reason.is_empty() || reason == "None" {
        String::new()
    } else {
        format!(" ({reason})")
    };
    let held = matches!(state, "REQUEUE_HOLD" | "SPECIAL_EXIT" | "RESV_DEL_HOLD")
        || reason.starts_with("JobHeld");
    if held {
        return Some(format!(
            "Slurm: {state}{why}: held; release it with `scontrol release {task}`"
        ));
    }
    let again = if requeued { ", requeued" } else { "" };
    match state {
        "RUNNING" | "COMPLETING" | "CONFIGURING" | "STAGE_OUT" | "SIGNALING" => None,
        _ => Some(format!("Slurm: {state}{why}{again}")),
    }
}

/// The line the batch script writes to the output file when an attempt starts
/// ([`super::script::batch_script`]); the output file is appended to, so it holds every
/// attempt of a requeued task.
pub const ATTEMPT_MARKER: &str = "idat-pipe: Slurm job ";

/// What `slurmstepd` wrote into a task's output file during its last attempt (the
/// `*** JOB ... ***` banners, memory-limit and OOM-kill messages), at most the last 5 such
/// lines.
pub fn stepd_lines(out_file_text: &str) -> Vec<String> {
    let last = out_file_text
        .rfind(&format!("\n{ATTEMPT_MARKER}"))
        .map_or(0, |i| i + 1);
    let mut v: Vec<String> = out_file_text[last..]
        .lines()
        .filter(|l| l.starts_with("slurmstepd") || l.starts_with("srun: error"))
        .map(|l| l.trim().to_string())
        .collect();
    // The memory-limit lines repeat at every sample until the kill lands.
    let mut seen = std::collections::HashSet::new();
    v.retain(|l| seen.insert(l.clone()));
    let skip = v.len().saturating_sub(5);
    v.split_off(skip)
}

/// The state Slurm's messages in a task's output file point to, for a task Slurm no longer
/// lists: `CANCELLED`, `TIMEOUT`, `PREEMPTED`, `NODE_FAIL`, `REQUEUED` or `OUT_OF_MEMORY`.
pub fn state_from_stepd(lines: &[String]) -> Option<&'static str> {
    let text = lines.join("\n").to_ascii_lowercase();
    if text.contains("oom") || text.contains("memory limit") || text.contains("out of memory") {
        Some("OUT_OF_MEMORY")
    } else if text.contains("due to time limit") {
        Some("TIMEOUT")
    } else if text.contains("due to preemption") {
        Some("PREEMPTED")
    } else if text.contains("due to node failure") {
        Some("NODE_FAIL")
    } else if text.contains("due to job requeue") {
        Some("REQUEUED")
    } else if text.contains("cancelled at") {
        Some("CANCELLED")
    } else {
        None
    }
}

/// What to do about a task that ended in `state` (with `stepd` lines from its output file),
/// given the stage's `resources` as written (`mem`, `time`), or None.
pub fn hint(
    state: &str,
    stepd: &[String],
    mem: Option<&str>,
    time: Option<&str>,
) -> Option<String> {
    let oom = state == "OUT_OF_MEMORY" || state_from_stepd(stepd) == Some("OUT_OF_MEMORY");
    if oom {
        return Some(match mem {
            Some(m) => format!("it ran out of memory: raise the stage's `resources.mem` (now {m})"),
            None => "it ran out of memory: set the stage's `resources.mem` above the \
                     partition's default memory per task"
                .into(),
        });
    }
    Some(match state {
        "TIMEOUT" => match time {
            Some(t) => format!("it hit its time limit: raise the stage's `resources.time` (now {t}); a rerun resumes from the last checkpoint"),
            None => "it hit the partition's default time limit: set the stage's `resources.time`; a rerun resumes from the last checkpoint".into(),
        },
        "CANCELLED" => "it was cancelled outside this run (scancel by you or an administrator); rerun to submit it again".into(),
        "NODE_FAIL" | "BOOT_FAIL" => "its node failed; rerun to submit it again (it resumes from its last checkpoint), or exclude the node with `slurm.sbatch_args: [\"--exclude=NODE\"]`".into(),
        "PREEMPTED" => "it was preempted and not requeued; rerun to submit it again, or use a partition or QOS without preemption (`slurm.partition`, `slurm.qos`)".into(),
        "DEADLINE" => "it could not finish before its deadline (`--deadline` in `slurm.sbatch_args`)".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_of_every_documented_state() {
        for s in [
            "PENDING",
            "RUNNING",
            "CONFIGURING",
            "COMPLETING",
            "SUSPENDED",
            "STOPPED",
            "RESIZING",
            "SIGNALING",
            "STAGE_OUT",
            "REQUEUED",
            "REQUEUE_FED",
            "REQUEUE_HOLD",
            "SPECIAL_EXIT",
            "RESV_DEL_HOLD",
            "SOME_NEW_STATE",
        ] {
            assert_eq!(phase(s), Phase::Active, "{s}");
        }
        assert_eq!(phase("COMPLETED"), Phase::Completed);
        for s in [
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
            "REVOKED",
        ] {
            assert_eq!(phase(s), Phase::Ended, "{s}");
        }
    }

    #[test]
    fn output_file_messages_name_the_state() {
        // As slurmstepd wrote them on Slurm 22.05 (jobacct_gather OverMemoryKill, scancel,
        // scontrol requeue, a node set down), and as cgroup OOM kills and time limits read.
        let cases = [
            (
                "slurmstepd-vm: error: StepId=6.batch exceeded memory limit (198197248 > 104857600), being killed\n\
                 slurmstepd-vm: error: Exceeded job memory limit\n\
                 slurmstepd-vm: error: *** JOB 6 ON vm CANCELLED AT 2026-12-07T15:33:42 ***",
                Some("OUT_OF_MEMORY"),
            ),
            (
                "slurmstepd: error: Detected 1 oom_kill event in StepId=12.batch. Some of the step tasks have been OOM Killed.",
                Some("OUT_OF_MEMORY"),
            ),
            (
                "epoch 3\nslurmstepd-vm: error: *** JOB 8 ON vm CANCELLED AT 2026-12-07T15:34:02 ***",
                Some("CANCELLED"),
            ),
            (
                "slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-12-07T15:34:09 DUE TO TIME LIMIT ***",
                Some("TIMEOUT"),
            ),
            (
                "slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-12-07T15:34:09 DUE TO PREEMPTION ***",
                Some("PREEMPTED"),
            ),
            (
                "slurmstepd-vm: error: *** JOB 11 ON vm CANCELLED AT 2026-12-07T15:35:43 DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***",
                Some("NODE_FAIL"),
            ),
            (
                "slurmstepd-vm: error: *** JOB 9 ON vm CANCELLED AT 2026-12-07T15:34:09 DUE TO JOB REQUEUE ***",
                Some("REQUEUED"),
            ),
            ("epoch 1\nerror: boom", None),
            // A requeued task that then failed on its own: only the last attempt counts.
            (
                "idat-pipe: Slurm job 7_1 (job id 9), attempt 1 on vm\n\
                 slurmstepd-vm: error: *** JOB 9 ON vm CANCELLED AT 2026-12-07T15:34:09 DUE TO JOB REQUEUE ***\n\
                 idat-pipe: Slurm job 7_1 (job id 9), attempt 2 on vm\nerror: boom",
                None,
            ),
        ];
        for (text, want) in cases {
            let lines = stepd_lines(text);
            assert_eq!(state_from_stepd(&lines), want, "{text}");
        }
        let lines = stepd_lines(cases[0].0);
        assert_eq!(lines.len(), 3);
        let h = hint("FAILED", &lines, Some("100M"), None).unwrap();
        assert!(h.contains("`resources.mem` (now 100M)"), "{h}");
        let h = hint("TIMEOUT", &[], None, Some("1h")).unwrap();
        assert!(h.contains("`resources.time` (now 1h)"), "{h}");
        assert!(hint("FAILED", &[], None, None).is_none());
    }

    #[test]
    fn waiting_messages() {
        assert_eq!(waiting_message("7_1", "RUNNING", "None", false), None);
        assert_eq!(
            waiting_message("7_1", "PENDING", "Priority", false).as_deref(),
            Some("Slurm: PENDING (Priority)")
        );
        let held = waiting_message("7_1", "REQUEUE_HOLD", "JobHeldUser", true).unwrap();
        assert!(held.contains("`scontrol release 7_1`"), "{held}");
        assert_eq!(
            waiting_message("7_1", "PENDING", "BeginTime", true).as_deref(),
            Some("Slurm: PENDING (BeginTime), requeued")
        );
    }
}
