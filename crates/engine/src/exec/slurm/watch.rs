//! Watching submitted tasks: sentinels, `squeue`, `scontrol show job`, log progress.
use super::queue::{self, Listed, TaskId};
use super::script;
use super::{SlurmExecutor, Tracked};
use crate::cache::Lookup;
use crate::exec::executor::Event;
use crate::exec::stage::Outcome;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a task may be gone from the queue without a sentinel before it counts as
/// failed (its sentinel may show up late on a network filesystem): at least this.
const GRACE: Duration = Duration::from_secs(10);

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
            match self.check(&mut t, queue.as_ref()) {
                Some(outcome) => self.finished(t.index, outcome, t.start),
                None => self.tasks.push(t),
            }
        }
    }

    /// The outcome of a task that ended, None while it is queued or running.
    fn check(&self, t: &mut Tracked, queue: Option<&HashMap<TaskId, Listed>>) -> Option<Outcome> {
        let task = t.task.to_string();
        let sentinel = script::read_sentinel(&script::sentinel(&self.command.cache_dir, &t.key));
        if let Some((rc, word, _)) = sentinel.filter(|(_, _, by)| *by == task) {
            return Some(self.ended(t, rc, &word));
        }
        // Without a view of the queue (squeue failing), wait.
        if queue?.contains_key(&t.task) {
            t.gone_since = None;
            return None;
        }
        let since = *t.gone_since.get_or_insert_with(Instant::now);
        if let Some((state, reason)) = queue::final_state(&t.task) {
            let ended = !matches!(state.as_str(), "COMPLETED" | "PENDING" | "RUNNING")
                && !state.ends_with("ING");
            if ended {
                let why = if reason.is_empty() || reason == "None" {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                return Some(Outcome::Failed(format!(
                    "Slurm job {task} ended {state}{why} before exec-stage returned{}",
                    self.log_note(t)
                )));
            }
        }
        if since.elapsed() < GRACE.max(self.interval * 5) {
            return None;
        }
        Some(Outcome::Failed(format!(
            "Slurm job {task} left the queue without writing its exit code to {}{}; see {}",
            script::sentinel(&self.command.cache_dir, &t.key).display(),
            self.log_note(t),
            script::slurm_dir(&self.command.cache_dir)
                .join(format!("out/{}_{}.out", t.task.array, t.task.task))
                .display()
        )))
    }

    /// The outcome of a task that wrote exit code `rc` (`word`: what exec-stage printed).
    fn ended(&self, t: &Tracked, rc: i32, word: &str) -> Outcome {
        if rc == 0 {
            return match self.cache.lookup(&t.key) {
                Lookup::Hit(m) if word == "cached" => Outcome::Cached(m),
                Lookup::Hit(m) => Outcome::Ran(m),
                Lookup::Missing => Outcome::Failed(format!(
                    "Slurm job {} exited 0 but entry {} is not in the cache (is the cache \
                     directory shared with the nodes?)",
                    t.task, t.key
                )),
                Lookup::Corrupt(why) => Outcome::Failed(format!("entry {}: {why}", t.key)),
            };
        }
        let recorded = self
            .cache
            .record(&t.instance)
            .filter(|r| r.key == t.key && r.status == "failed")
            .and_then(|r| r.error);
        let error = recorded
            .or_else(|| last_error_line(&t.tail.path))
            .unwrap_or_else(|| "exec-stage failed".into());
        Outcome::Failed(format!(
            "{error} (exit code {rc}, Slurm job {}{})",
            t.task,
            self.log_note(t)
        ))
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
