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
//!
//! More instances than the cluster's `MaxArraySize` go out as several arrays. A task that
//! Slurm requeues (preemption, a failed node, `scontrol requeue`) is waited for, not failed;
//! one that Slurm ends (`TIMEOUT`, `OUT_OF_MEMORY`, `CANCELLED`, `NODE_FAIL`, ...) or has
//! already forgotten fails naming the state, reason, job ids and logs (`states`).
pub mod progress;
pub mod queue;
pub mod resources;
pub mod script;
pub mod settings;
pub mod states;

use super::executor::{Capacity, Event, Executor, Finished};
use super::job::StageJob;
use super::record::unix_now;
use super::stage::Outcome;
use crate::cache::Cache;
use crate::config::model::Resources;
use crate::config::StageSpec;
use progress::LogTail;
use queue::{Commands, Listed, TaskId};
use script::{TaskRow, NAME_PREFIX};
pub use settings::{GpuRequest, SlurmConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use script::Command as ExecCommand;

/// Default seconds between two `squeue` calls.
pub const DEFAULT_POLL_SECONDS: f64 = 2.0;

/// Slurm's default `MaxArraySize`, used when `scontrol show config` does not give one.
pub const DEFAULT_MAX_ARRAY_SIZE: usize = 1001;

/// A submitted (or adopted) array task the executor watches.
struct Tracked {
    index: usize,
    instance: String,
    key: String,
    task: TaskId,
    tail: LogTail,
    start: f64,
    /// Submitted by an earlier run of the same pipeline.
    adopted: bool,
    /// When the task was first seen gone from the queue without a sentinel.
    gone_since: Option<Instant>,
    /// The stage's `resources.mem` and `resources.time` as written (named in hints).
    mem: Option<String>,
    time: Option<String>,
    /// Seen running; seen waiting again after that (requeued).
    ran: bool,
    requeued: bool,
    /// The last queue state shown as its progress message.
    shown: Option<String>,
}

/// The `slurm` executor plugin: settings [`SlurmConfig`] (`executor: {uses: slurm, with:
/// {partition: gpu, ...}}`, or the `slurm:` section beside `executor: slurm`).
pub struct Slurm;

impl super::plugin::ExecutorPlugin for Slurm {
    type Settings = SlurmConfig;
    const NAME: &'static str = "slurm";
    const SUMMARY: &'static str =
        "sbatch job arrays running `idat-pipe exec-stage`, watched with squeue (docs/slurm.md)";

    /// A stage asking for GPUs when `gpu_request: none`.
    fn check(settings: &SlurmConfig, stages: &[(String, StageSpec)]) -> Vec<(String, String)> {
        if settings.gpu_request != GpuRequest::None {
            return Vec::new();
        }
        stages
            .iter()
            .filter(|(_, s)| s.resources.gpus > 0)
            .map(|(id, s)| {
                (
                    format!("stages.{id}.resources.gpus"),
                    format!(
                        "needs {} GPU(s) but the Slurm setting `gpu_request` is `none`; set it \
                         to `gres` or `gpus`",
                        s.resources.gpus
                    ),
                )
            })
            .collect()
    }

    fn build(
        settings: SlurmConfig,
        run: &super::plugin::RunSetup,
    ) -> Result<Box<dyn super::Executor>, String> {
        for (given, flag) in [
            (run.gpus.is_some(), "--gpus"),
            (run.gpu_mem.is_some(), "--gpu-mem"),
            (run.per_gpu.is_some(), "--per-gpu"),
        ] {
            if given {
                return Err(format!(
                    "{flag} places instances on this machine's GPUs for the local executor; \
                     with the Slurm executor a stage asks for GPUs with `resources.gpus`"
                ));
            }
        }
        let abs = |p: &std::path::Path| {
            std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let command = ExecCommand {
            exe: std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
            pipeline: abs(run.pipeline)?,
            overrides: run.overrides.to_vec(),
            cache_dir: abs(&run.cache.root)?,
            device: run.device.to_string(),
        };
        let cache = Cache::open(&command.cache_dir).map_err(|e| format!("{e:#}"))?;
        Ok(Box::new(SlurmExecutor::new(settings, command, cache)))
    }
}

/// Runs instances as Slurm job arrays. See the module documentation.
pub struct SlurmExecutor {
    slurm: Box<dyn Commands>,
    /// The cluster's `MaxArraySize`, read at the first submission.
    max_array: Option<usize>,
    config: SlurmConfig,
    command: ExecCommand,
    cache: Cache,
    pending: Vec<(usize, StageJob)>,
    tasks: Vec<Tracked>,
    /// Job ids of every array submitted or adopted (`cancel` cancels those still running).
    arrays: Vec<String>,
    events: Vec<Event>,
    interval: Duration,
    /// How long a task may be gone from the queue, unknown to Slurm or ended without a
    /// sentinel before it fails (a sentinel may show up late on a network filesystem).
    grace: Duration,
    last_sweep: Option<Instant>,
    cancelled: bool,
    note: Option<String>,
    squeue_failing: bool,
}

impl SlurmExecutor {
    /// An executor submitting `command` (absolute paths) with the `slurm:` settings `config`,
    /// against `cache` (the directory in `command.cache_dir`).
    pub fn new(config: SlurmConfig, command: ExecCommand, cache: Cache) -> Self {
        Self::with_slurm(Box::new(queue::Cli), config, command, cache)
    }

    /// The same, talking to `slurm` instead of the Slurm commands on `PATH` (tests script a
    /// queue with it).
    pub fn with_slurm(
        slurm: Box<dyn Commands>,
        config: SlurmConfig,
        command: ExecCommand,
        cache: Cache,
    ) -> Self {
        let secs = config
            .poll_interval
            .unwrap_or(DEFAULT_POLL_SECONDS)
            .max(0.2);
        Self {
            slurm,
            max_array: None,
            config,
            command,
            cache,
            pending: Vec::new(),
            tasks: Vec::new(),
            arrays: Vec::new(),
            events: Vec::new(),
            interval: Duration::from_secs_f64(secs),
            grace: watch::GRACE.max(Duration::from_secs_f64(secs * 5.0)),
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
        match self.slurm.squeue(NAME_PREFIX) {
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

    /// One stage's ready instances (the scheduler has already found them not cached): ones
    /// still queued by an earlier run are adopted, the rest go out as one array (several
    /// beyond `MaxArraySize`).
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
            if let Some((task, row)) = live.get(&key).filter(|_| !job.force) {
                tracing::info!(
                    "{}: waiting for Slurm job {task} (queued earlier)",
                    row.instance
                );
                if !self.arrays.contains(&task.array) {
                    self.arrays.push(task.array.clone());
                }
                self.track(
                    index,
                    row.clone(),
                    task.clone(),
                    true,
                    &job.instance.resources,
                );
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
        let size = self.max_array_size();
        let mut members = members.into_iter();
        let mut rows = rows.into_iter();
        loop {
            let chunk: Vec<(TaskRow, bool)> = rows.by_ref().take(size).collect();
            if chunk.is_empty() {
                break;
            }
            let who: Vec<(usize, Resources)> = members.by_ref().take(chunk.len()).collect();
            let resources = who[0].1.clone();
            match self.sbatch_array(stage, &chunk, &resources) {
                Ok(array) => {
                    for (t, ((row, _), (index, _))) in chunk.into_iter().zip(who).enumerate() {
                        let task = TaskId {
                            array: array.clone(),
                            task: t as u32,
                        };
                        self.track(index, row, task, false, &resources);
                    }
                }
                Err(e) => {
                    // The same text for every instance: the failure report shows it once.
                    let e = format!("submitting stage {stage} to Slurm: {e}");
                    for (index, _) in who {
                        self.finished(index, Outcome::Failed(e.clone()), now);
                    }
                }
            }
        }
    }

    /// The cluster's `MaxArraySize` (read once; Slurm's default when unreadable).
    fn max_array_size(&mut self) -> usize {
        if let Some(n) = self.max_array {
            return n;
        }
        let n = match self.slurm.max_array_size() {
            Ok(n) if n > 0 => n,
            Ok(_) | Err(_) => {
                tracing::warn!(
                    "could not read MaxArraySize from `scontrol show config`; \
                     assuming Slurm's default {DEFAULT_MAX_ARRAY_SIZE}"
                );
                DEFAULT_MAX_ARRAY_SIZE
            }
        };
        self.max_array = Some(n);
        n
    }

    fn track(
        &mut self,
        index: usize,
        row: TaskRow,
        task: TaskId,
        adopted: bool,
        resources: &Resources,
    ) {
        self.tasks.push(Tracked {
            index,
            tail: LogTail::at_end(&row.log),
            instance: row.instance,
            key: row.key,
            task,
            start: unix_now(),
            adopted,
            gone_since: None,
            mem: resources.mem.clone(),
            time: resources.time.clone(),
            ran: false,
            requeued: false,
            shown: None,
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
        // An instance that declares no GPU runs on the CPU, whatever `--device` says (as
        // the scheduler's jobs do: `device_of`).
        let command = script::Command {
            device: super::scheduler::device_of(&self.command.device, resources.gpus, None),
            ..self.command.clone()
        };
        let text = script::batch_script(&command, stage, rows);
        script::write_atomic(&path, text.as_bytes()).map_err(io)?;
        let args = self.sbatch_args(&name, stage, rows.len(), resources)?;
        let id = self.slurm.sbatch(&args, &path)?;
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
            // A requeued task's attempts all stay in its output file.
            "--open-mode=append".into(),
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
        let opts = resources::sbatch_options(resources, c.gpu_request)?;
        a.extend(opts);
        a.extend(c.sbatch_args.iter().cloned());
        Ok(a)
    }
}

mod watch;

#[cfg(test)]
mod tests;

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
        self.note = match self.slurm.scancel(&ids) {
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
