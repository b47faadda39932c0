//! Watching submitted tasks: sentinels, `squeue`, `scontrol show job`, log progress.
//!
//! A task's outcome is decided as follows. A sentinel with exit code 0 is final (the entry
//! is checked in the cache). Anything else waits until the task has left the queue, since a
//! task that Slurm requeues (preemption, a failed node, `scontrol requeue`) comes back to
//! `PENDING` and runs again, its earlier attempt's sentinel notwithstanding. Once it has
//! left, `scontrol show job` says how it ended: `FAILED` with a sentinel is exec-stage's own
//! failure; a state Slurm set (`CANCELLED`, `TIMEOUT`, `OUT_OF_MEMORY`, `NODE_FAIL`, ...)
//! is named with its reason; a task Slurm has forgotten is explained from its output file.
use super::queue::{JobInfo, Listed};
use super::script::{self, Sentinel};
use super::states::{self, Phase};
use super::{SlurmExecutor, Tracked};
use crate::cache::Lookup;
use crate::exec::executor::{Event, ProgressUpdate};
use crate::exec::stage::Outcome;
use std::time::{Duration, Instant};

/// How long a task may be gone from the queue without a sentinel before it counts as
/// failed (its sentinel may show up late on a network filesystem): at least this, and at
/// least five polls.
pub(super) const GRACE: Duration = Duration::from_secs(10);

impl SlurmExecutor {
    /// Time until the next sweep is due (zero: now).
    pub(super) fn until_sweep(&self) -> Duration {
        self.last_sweep
            .map(|t| self.interval.saturating_sub(t.elapsed()))
            .unwrap_or_default()
    }

    /// One look at every tracked task: progress lines, then whether it ended.
    pub(super) fn sweep(&mut self) {
        self.last_sweep = Some(Instant::now());
        if self.tasks.is_empty() {
            return;
        }
        // The queue first, then the sentinels: a task gone from the queue wrote its
        // sentinel before it left, so it is seen.
        let queue = self.squeue();
        for mut t in std::mem::take(&mut self.tasks) {
            for update in t.tail.updates() {
                self.events.push(Event::Progress {
                    index: t.index,
                    update,
                });
            }
            // None: no view of the queue (squeue failing); Some(None): not listed.
            let listed = queue.as_ref().map(|q| q.get(&t.task));
            if let Some(Some(l)) = listed {
                self.queue_state(&mut t, l);
            }
            match self.check(&mut t, listed) {
                Some(outcome) => self.finished(t.index, outcome, t.start),
                None => self.tasks.push(t),
            }
        }
    }

    /// Show a waiting task's queue state on its progress bar; note a requeue.
    fn queue_state(&mut self, t: &mut Tracked, l: &Listed) {
        let phase_running = matches!(l.state.as_str(), "RUNNING" | "COMPLETING");
        if phase_running {
            t.ran = true;
        } else if t.ran && !t.requeued {
            t.requeued = true;
            tracing::warn!(
                "{}: Slurm requeued job {} ({}, {}); waiting for it to run again",
                t.instance,
                t.task,
                l.state,
                l.reason
            );
        }
        let msg = states::waiting_message(&t.task.to_string(), &l.state, &l.reason, t.requeued);
        if msg != t.shown {
            if let Some(m) = &msg {
                self.events.push(Event::Progress {
                    index: t.index,
                    update: ProgressUpdate::Message(m.clone()),
                });
            }
            t.shown = msg;
        }
    }

    /// The outcome of a task that ended, None while it is queued, running or requeued.
    fn check(&self, t: &mut Tracked, listed: Option<Option<&Listed>>) -> Option<Outcome> {
        let task = t.task.to_string();
        let sentinel = script::read_sentinel(&script::sentinel(&self.command.cache_dir, &t.key))
            .filter(|s| s.task == task);
        if let Some(s) = sentinel.as_ref().filter(|s| s.rc == 0) {
            return Some(self.ended(t, s));
        }
        // Without a view of the queue (squeue failing), or while it is listed, wait: a
        // failed attempt may still be requeued.
        if listed?.is_some() {
            t.gone_since = None;
            return None;
        }
        let since = *t.gone_since.get_or_insert_with(Instant::now);
        let grace_over = since.elapsed() >= self.grace;
        match self.slurm.job(&t.task) {
            Ok(Some(info)) => match states::phase(&info.state) {
                // Between two attempts (squeue raced a requeue): wait.
                Phase::Active => None,
                Phase::Completed => match (&sentinel, self.cache.lookup(&t.key)) {
                    (Some(s), _) => Some(self.ended(t, s)),
                    (None, Lookup::Hit(m)) => Some(Outcome::Ran(m)),
                    (None, _) if grace_over => Some(self.slurm_failure(t, Some(&info), None)),
                    (None, _) => None,
                },
                Phase::Ended => {
                    let stepd = self.stepd_lines(t);
                    match &sentinel {
                        // exec-stage's own failure, not one Slurm caused.
                        Some(s)
                            if info.state == "FAILED"
                                && states::state_from_stepd(&stepd).is_none() =>
                        {
                            Some(self.ended(t, s))
                        }
                        Some(s) => Some(self.slurm_failure(t, Some(&info), Some(s))),
                        // A killed task writes no sentinel; a failed one may write it late.
                        None if info.state == "FAILED" && !grace_over => None,
                        None => Some(self.slurm_failure(t, Some(&info), None)),
                    }
                }
            },
            // Forgotten by Slurm (MinJobAge), or scontrol failing: the sentinel, the cache
            // and the task's output file are what is left.
            Ok(None) | Err(_) => {
                let stepd = self.stepd_lines(t);
                match (&sentinel, self.cache.lookup(&t.key)) {
                    (Some(s), _) if states::state_from_stepd(&stepd).is_none() => {
                        Some(self.ended(t, s))
                    }
                    (Some(s), _) => Some(self.slurm_failure(t, None, Some(s))),
                    (None, Lookup::Hit(m)) => Some(Outcome::Ran(m)),
                    (None, _) if grace_over => Some(self.slurm_failure(t, None, None)),
                    (None, _) => None,
                }
            }
        }
    }

    /// The outcome of a task whose sentinel says exec-stage returned with `s.rc`.
    fn ended(&self, t: &Tracked, s: &Sentinel) -> Outcome {
        if s.rc == 0 {
            return match self.cache.lookup(&t.key) {
                Lookup::Hit(m) if s.word == "cached" => Outcome::Cached(m),
                Lookup::Hit(m) => Outcome::Ran(m),
                Lookup::Missing => Outcome::Failed(format!(
                    "Slurm job {} exited 0 but entry {} is not in the cache (is the cache \
                     directory shared with the nodes?)",
                    t.task, t.key
                )),
                Lookup::Corrupt(why) => Outcome::Failed(format!("entry {}: {why}", t.key)),
            };
        }
        let error = self
            .stage_error(t)
            .unwrap_or_else(|| "exec-stage failed".into());
        Outcome::Failed(format!(
            "{error} (exit code {}, Slurm job {}{})",
            s.rc,
            t.task,
            self.log_note(t)
        ))
    }

    /// A task that Slurm ended (or that left no trace): the state and reason (`info`, None
    /// when Slurm has forgotten the task), what slurmstepd wrote, what to change, and where
    /// the output and the log are.
    fn slurm_failure(&self, t: &Tracked, info: Option<&JobInfo>, s: Option<&Sentinel>) -> Outcome {
        let stepd = self.stepd_lines(t);
        let from_file = states::state_from_stepd(&stepd);
        let mut head = match info {
            Some(i) => {
                let mut what = vec![];
                if i.reason != "None" && !i.reason.is_empty() {
                    what.push(format!("reason {}", i.reason));
                }
                if !i.exit_code.is_empty() {
                    what.push(format!("exit code {}", i.exit_code));
                }
                if !i.job_id.is_empty() && i.job_id != t.task.array {
                    what.push(format!("job id {}", i.job_id));
                }
                if i.restarts > 0 {
                    what.push(format!("after {} requeue(s)", i.restarts));
                }
                format!(
                    "Slurm job {} ended {} ({})",
                    t.task,
                    i.state,
                    what.join(", ")
                )
            }
            None => {
                let known = match from_file {
                    Some(st) => format!("; its output file says it was ended {st}"),
                    None => String::new(),
                };
                format!(
                    "Slurm job {} left the queue without writing its exit code to {}, and \
                     Slurm no longer knows the job (it forgets ended jobs after MinJobAge){known}",
                    t.task,
                    script::sentinel(&self.command.cache_dir, &t.key).display()
                )
            }
        };
        if let Some(s) = s {
            let error = self
                .stage_error(t)
                .unwrap_or_else(|| "no error recorded".into());
            head += &format!("; exec-stage then exited {} ({error})", s.rc);
        } else if info.is_some() {
            head += " before exec-stage returned";
        }
        let state = info.map(|i| i.state.as_str()).or(from_file).unwrap_or("");
        if let Some(h) = states::hint(state, &stepd, t.mem.as_deref(), t.time.as_deref()) {
            head += &format!(": {h}");
        }
        for l in &stepd {
            head += &format!("\n    {l}");
        }
        head += &format!("\n  Slurm output: {}", self.out_file(t).display());
        if t.adopted {
            head += &format!("\n  instance log: {}", t.tail.path.display());
        }
        Outcome::Failed(head)
    }

    /// The error exec-stage recorded for this instance and key, else the log's last
    /// `error: ` line.
    fn stage_error(&self, t: &Tracked) -> Option<String> {
        self.cache
            .record(&t.instance)
            .filter(|r| r.key == t.key && r.status == "failed")
            .and_then(|r| r.error)
            .or_else(|| last_error_line(&t.tail.path))
    }

    /// The task's Slurm output file (`--output`).
    fn out_file(&self, t: &Tracked) -> std::path::PathBuf {
        script::slurm_dir(&self.command.cache_dir)
            .join(format!("out/{}_{}.out", t.task.array, t.task.task))
    }

    /// What slurmstepd wrote to the task's output file.
    fn stepd_lines(&self, t: &Tracked) -> Vec<String> {
        let text = std::fs::read(self.out_file(t)).unwrap_or_default();
        states::stepd_lines(&String::from_utf8_lossy(&text))
    }

    /// `; log PATH` for a task an earlier run submitted (its log is that run's).
    fn log_note(&self, t: &Tracked) -> String {
        if t.adopted {
            format!("; log {}", t.tail.path.display())
        } else {
            String::new()
        }
    }
}

/// The message of the last `error: ` line of a log.
fn last_error_line(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.split_once("error: ").map(|(_, m)| m.to_string()))
}
