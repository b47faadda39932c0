//! The Slurm executor: instances of one stage that become ready together go to Slurm as one
//! job array (`sbatch --array=0-N-1[%max_jobs]`), each task running `idat-pipe exec-stage`
//! against the shared cache directory and writing its exit code to a sentinel file. Status
//! comes from `squeue` (rate-limited), the sentinels and, for a task that left the queue
//! without one, `scontrol show job`. Dependencies are handled by submitting when ready (the
//! scheduler's readiness), not by `--dependency=afterok` chains: a downstream key is made
//! of its upstreams' content hashes, known only once they are committed.
//!
//! A rerun finds tasks still queued or running by job name (`idat-<digest of the keys>`)
//! and the array's task table under `<cache>/slurm/arrays/`, and waits for them instead of
//! submitting the same keys again; a committed entry is reused without a job.
pub mod progress;
pub mod queue;
pub mod resources;
pub mod script;

use super::executor::{Capacity, Event, Executor, Finished};
use super::job::StageJob;
use super::record::unix_now;
use super::stage::Outcome;
use crate::cache::{Cache, Lookup};
use crate::config::model::{Resources, SlurmConfig};
use progress::LogTail;
use queue::{Listed, TaskId};
use script::{TaskRow, NAME_PREFIX};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use script::Command as ExecCommand;

/// Default seconds between two `squeue` calls.
pub const DEFAULT_POLL_SECONDS: f64 = 2.0;

/// A submitted (or adopted) array task the executor watches.
struct Tracked {
    index: usize,
    instance: String,
    key: String,
    task: TaskId,
    tail: LogTail,
    start: f64,
    /// Submitted by an earlier run of the same pipeline (its log is named in a failure).
    adopted: bool,
    /// When the task was first seen gone from the queue without a sentinel.
    gone_since: Option<Instant>,
}

/// Runs instances as Slurm job arrays. See the module documentation.
pub struct SlurmExecutor {
    config: SlurmConfig,
    command: ExecCommand,
    cache: Cache,
    pending: Vec<(usize, StageJob)>,
    tasks: Vec<Tracked>,
    /// Job ids of every array submitted or adopted (`cancel` cancels those still running).
    arrays: Vec<String>,
    events: Vec<Event>,
    interval: Duration,
    last_sweep: Option<Instant>,
    cancelled: bool,
    note: Option<String>,
    squeue_failing: bool,
}

impl SlurmExecutor {
    /// An executor submitting `command` (absolute paths) with the `slurm:` settings `config`,
    /// against `cache` (the directory in `command.cache_dir`).
    pub fn new(config: SlurmConfig, command: ExecCommand, cache: Cache) -> Self {
        let secs = config
            .poll_interval
            .unwrap_or(DEFAULT_POLL_SECONDS)
            .max(0.2);
        Self {
            config,
            command,
            cache,
            pending: Vec::new(),
            tasks: Vec::new(),
            arrays: Vec::new(),
            events: Vec::new(),
            interval: Duration::from_secs_f64(secs),
            last_sweep: None,
            cancelled: false,
            note: None,
            squeue_failing: false,
        }
    }

    fn finished(&mut self, index: usize, outcome: Outcome, start: f64) {
        self.events.push(Event::Finished(Finished {
            index,
            outcome,
            start,
            end: unix_now(),
        }));
    }

    /// `squeue`, logging a failure once per streak (None while it fails).
    fn squeue(&mut self) -> Option<HashMap<TaskId, Listed>> {
        match queue::squeue(NAME_PREFIX) {
            Ok(q) => {
                self.squeue_failing = false;
                Some(q)
            }
            Err(e) => {
                if !self.squeue_failing {
                    tracing::warn!("{e}; retrying every {:?}", self.interval);
                }
                self.squeue_failing = true;
                None
            }
        }
    }

    /// Tasks of this user's idat arrays still in the queue, by cache key (from the tables).
    fn live_tasks(&mut self) -> HashMap<String, (TaskId, TaskRow)> {
        let mut tables: HashMap<String, Option<Vec<TaskRow>>> = HashMap::new();
        let mut live = HashMap::new();
        for (id, listed) in self.squeue().unwrap_or_default() {
            let rows = tables
                .entry(listed.name.clone())
                .or_insert_with(|| script::read_table(&self.command.cache_dir, &listed.name));
            if let Some(row) = rows.as_ref().and_then(|r| r.get(id.task as usize)) {
                live.insert(row.key.clone(), (id, row.clone()));
            }
        }
        live
    }

    /// Submit what `submit` held back: one array per stage, in the order they came.
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let live = self.live_tasks();
        let mut groups: Vec<(String, Vec<(usize, StageJob)>)> = Vec::new();
        for (index, job) in pending {
            let stage = job.instance.stage.clone();
            match groups.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, g)) => g.push((index, job)),
                None => groups.push((stage, vec![(index, job)])),
            }
        }
        for (stage, jobs) in groups {
            self.submit_group(&stage, jobs, &live);
        }
    }

    /// One stage's ready instances: cached ones end at once, ones still queued by an earlier
    /// run are adopted, the rest go out as one array.
    fn submit_group(
        &mut self,
        stage: &str,
        jobs: Vec<(usize, StageJob)>,
        live: &HashMap<String, (TaskId, TaskRow)>,
    ) {
        let now = unix_now();
        let mut rows = Vec::new();
        let mut members = Vec::new();
        for (index, job) in jobs {
            let key = job.parts.key();
            if !job.force {
                if let Lookup::Hit(m) = self.cache.lookup(&key) {
                    self.finished(index, Outcome::Cached(m), now);
                    continue;
                }
            }
            if let Some((task, row)) = live.get(&key).filter(|_| !job.force) {
                tracing::info!(
                    "{}: waiting for Slurm job {task} (queued earlier)",
                    row.instance
                );
                if !self.arrays.contains(&task.array) {
                    self.arrays.push(task.array.clone());
                }
                self.track(index, row.clone(), task.clone(), true);
                continue;
            }
            let log = std::path::absolute(&job.log_path).unwrap_or(job.log_path.clone());
            rows.push((
                TaskRow {
                    key,
                    instance: job.instance.id.clone(),
                    log,
                },
                job.force,
            ));
            members.push((index, job.instance.resources.clone()));
        }
        let Some((_, resources)) = members.first().cloned() else {
            return;
        };
        match self.sbatch_array(stage, &rows, &resources) {
            Ok(array) => {
                for (t, ((row, _), (index, _))) in rows.into_iter().zip(members).enumerate() {
                    let task = TaskId {
                        array: array.clone(),
                        task: t as u32,
                    };
                    self.track(index, row, task, false);
                }
            }
            Err(e) => {
                for (index, _) in members {
                    self.finished(index, Outcome::Failed(e.clone()), now);
                }
            }
        }
    }

    fn track(&mut self, index: usize, row: TaskRow, task: TaskId, adopted: bool) {
        self.tasks.push(Tracked {
            index,
            tail: LogTail::at_end(&row.log),
            instance: row.instance,
            key: row.key,
            task,
            start: unix_now(),
            adopted,
            gone_since: None,
        });
    }

    /// Write the array's task table and script, clear stale sentinels, and `sbatch` it.
    fn sbatch_array(
        &mut self,
        stage: &str,
        rows: &[(TaskRow, bool)],
        resources: &Resources,
    ) -> Result<String, String> {
        let dir = script::slurm_dir(&self.command.cache_dir);
        let plain: Vec<TaskRow> = rows.iter().map(|(r, _)| r.clone()).collect();
        let name = script::job_name(&plain);
        let io = |e: std::io::Error| {
            format!("writing the job array's files under {}: {e}", dir.display())
        };
        script::write_table(&self.command.cache_dir, &name, &plain).map_err(io)?;
        for r in &plain {
            let _ = std::fs::remove_file(script::sentinel(&self.command.cache_dir, &r.key));
        }
        std::fs::create_dir_all(dir.join("exit")).map_err(io)?;
        std::fs::create_dir_all(dir.join("out")).map_err(io)?;
        let path = dir.join("scripts").join(format!("{name}.sh"));
        let text = script::batch_script(&self.command, stage, rows);
        script::write_atomic(&path, text.as_bytes()).map_err(io)?;
        let args = self.sbatch_args(&name, stage, rows.len(), resources)?;
        let id = queue::sbatch(&args, &path)?;
        tracing::info!(
            "stage {stage}: Slurm job array {id} ({} task(s))",
            rows.len()
        );
        self.arrays.push(id.clone());
        Ok(id)
    }

    /// sbatch options of an array of `n` tasks of `stage`.
    fn sbatch_args(
        &self,
        name: &str,
        stage: &str,
        n: usize,
        resources: &Resources,
    ) -> Result<Vec<String>, String> {
        let c = &self.config;
        let throttle = c
            .max_jobs
            .map(|m| format!("%{}", m.max(1)))
            .unwrap_or_default();
        let out = script::slurm_dir(&self.command.cache_dir).join("out/%A_%a.out");
        let mut a = vec![
            format!("--job-name={name}"),
            format!("--array=0-{}{throttle}", n - 1),
            format!("--output={}", out.display()),
            format!("--comment=idat-pipe stage {stage}"),
        ];
        for (flag, v) in [
            ("partition", &c.partition),
            ("account", &c.account),
            ("qos", &c.qos),
        ] {
            if let Some(v) = v {
                a.push(format!("--{flag}={v}"));
            }
        }
        let opts = resources::sbatch_options(resources, c.gpu_request)
            .map_err(|e| format!("stage {stage}: {e}"))?;
        a.extend(opts);
        a.extend(c.sbatch_args.iter().cloned());
        Ok(a)
    }
}

mod watch;

impl Executor for SlurmExecutor {
    fn capacity(&self) -> Capacity {
        // Slurm does the scheduling: the run submits everything that is ready.
        Capacity {
            cpus: 1 << 20,
            gpus: 1 << 20,
            jobs: usize::MAX,
        }
    }

    fn admits(&self, resources: &Resources) -> Result<(), String> {
        resources::sbatch_options(resources, self.config.gpu_request).map(|_| ())
    }

    fn submit(&mut self, index: usize, job: StageJob) -> Result<(), String> {
        if self.cancelled {
            return Err("interrupted before it was submitted".into());
        }
        self.pending.push((index, job));
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Vec<Event> {
        if !self.pending.is_empty() {
            self.flush();
        }
        if self.events.is_empty() {
            let due = self.until_sweep();
            std::thread::sleep(due.min(timeout));
            if self.until_sweep().is_zero() {
                self.sweep();
            }
        }
        std::mem::take(&mut self.events)
    }

    fn cancel(&mut self) {
        self.cancelled = true;
        let now = unix_now();
        for (index, _) in std::mem::take(&mut self.pending) {
            self.finished(
                index,
                Outcome::Failed("interrupted before submission".into()),
                now,
            );
        }
        // The arrays with a task not yet seen ending (finished arrays need no scancel).
        let ids: Vec<String> = self
            .arrays
            .iter()
            .filter(|a| self.tasks.iter().any(|t| &t.task.array == *a))
            .cloned()
            .collect();
        self.note = match queue::scancel(&ids) {
            Ok(()) if ids.is_empty() => None,
            Ok(()) => Some(format!(
                "scancel: cancelled Slurm job(s) {}",
                ids.join(", ")
            )),
            Err(e) => Some(format!(
                "could not cancel Slurm job(s) {}: {e}; cancel them with `scancel {}`",
                ids.join(", "),
                ids.join(" ")
            )),
        };
        // Look again soon: cancelled tasks leave the queue within seconds.
        self.last_sweep = None;
    }

    fn cancel_note(&self) -> Option<String> {
        self.note.clone()
    }
}
