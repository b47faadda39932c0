//! The commands that run instances, as the CLI calls them: [`run`] (a whole pipeline on an
//! executor) and [`exec_one`] (one instance in this process: what every Slurm task runs).
//! The CLI parses arguments and prints what these return.
use super::job::job_alone;
use super::plugin::{self, RunSetup};
use super::progress::reporter;
use super::record::RunRecord;
use super::scheduler::{schedule, RunContext, RunOptions, RunSummary};
use super::stage::{exec_stage, Outcome};
use super::JobSettings;
use crate::cache::Cache;
use crate::config::Loaded;
use crate::graph::Graph;
use crate::stages::Registry;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Why a command did not run: bad input (exit 2) or a failure while running (exit 1).
#[derive(Debug)]
pub enum RunError {
    /// An option or the pipeline does not fit (an unknown `--force` stage, executor or
    /// instance): nothing ran.
    Invalid(String),
    /// Setting up or finishing the run failed (the cache or run record cannot be written).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        RunError::Failed(e)
    }
}

/// What `run` was asked to do, besides the pipeline.
pub struct RunRequest<'a> {
    /// Where the cache is (created when missing).
    pub cache_dir: &'a Path,
    /// Where the run record goes (`--runs-dir`).
    pub runs_dir: &'a Path,
    /// `--force STAGE...`: recompute these stages and everything downstream.
    pub force: &'a [String],
    /// `--keep-going`.
    pub keep_going: bool,
    /// `--device`.
    pub device: &'a str,
    /// `--jobs`.
    pub jobs: usize,
    /// `--gpus`.
    pub gpus: Option<usize>,
    /// `--gpu-mem`, bytes.
    pub gpu_mem: Option<u64>,
    /// `--per-gpu`.
    pub per_gpu: Option<usize>,
    /// `--executor` (None: the file's, else `local`).
    pub executor: Option<&'a str>,
    /// `--quiet`: no progress.
    pub quiet: bool,
    /// Set by Ctrl-C.
    pub cancel: Arc<AtomicBool>,
}

/// What a run did.
pub struct RunOutcome {
    /// Counts, failures and the trace.
    pub summary: RunSummary,
    /// The run record's folder.
    pub record_dir: PathBuf,
    /// The `summary.txt` of the entries that have one, rendered ([`super::summaries`]).
    pub summaries: String,
}

/// The stages `--force` names, and `--device` checked against this build: what [`run`]
/// checks before it opens the cache (and [`check`] too).
fn forced_and_device(
    g: &Graph,
    loaded: &Loaded,
    registry: &Registry,
    req: &RunRequest,
) -> Result<Vec<bool>, RunError> {
    let forced = g.forced(loaded, req.force).map_err(RunError::Invalid)?;
    registry
        .check_device(req.device)
        .map_err(RunError::Invalid)?;
    Ok(forced)
}

/// The executor `req` asks for, built: its placement flags checked against the machine.
fn executor(
    loaded: &Loaded,
    registry: &Registry,
    req: &RunRequest,
    cache: &Cache,
) -> Result<Box<dyn super::Executor>, RunError> {
    let setup = RunSetup {
        cache,
        pipeline: &loaded.file,
        overrides: &loaded.overrides,
        device: req.device,
        jobs: req.jobs,
        gpus: req.gpus,
        gpu_mem: req.gpu_mem,
        per_gpu: req.per_gpu,
        cancel: req.cancel.clone(),
    };
    let executor =
        plugin::build(registry, loaded, req.executor, &setup).map_err(RunError::Invalid)?;
    // The local executor places on this machine's cards (`cards()` is `None` there under
    // `--device cpu` without `--gpus`); others get their GPUs elsewhere.
    let name = req
        .executor
        .or(loaded.executor.as_deref())
        .unwrap_or("local");
    if name == <super::local::Local as plugin::ExecutorPlugin>::NAME {
        let g = Graph::build(loaded);
        let gpu = || g.instances.iter().filter(|i| i.resources.gpus > 0);
        let demand = super::gpus::advice::Demand {
            gpu_instances: gpu().count(),
            with_gpu_mem: gpu().filter(|i| i.resources.gpu_mem.is_some()).count(),
        };
        for w in super::gpus::advice::warnings(executor.cards(), demand, req.gpu_mem, req.per_gpu) {
            tracing::warn!("{w}");
        }
    }
    Ok(executor)
}

/// What `run --dry-run` checks: every option [`run`] would refuse (`--force`, `--device`,
/// `--gpus`, `--gpu-mem`, `--per-gpu`, `--executor`), with the same messages; runs nothing.
/// Returns which instances `--force` recomputes (for the plan).
///
/// # Errors
/// [`RunError::Invalid`] as [`run`] gives it.
pub fn check(
    loaded: &Loaded,
    registry: &Registry,
    req: &RunRequest,
) -> Result<Vec<bool>, RunError> {
    let forced = forced_and_device(&Graph::build(loaded), loaded, registry, req)?;
    let cache = Cache::open_read_only(req.cache_dir);
    executor(loaded, registry, req, &cache)?;
    Ok(forced)
}

/// Run every instance of the pipeline `loaded` on the chosen executor: cached ones are
/// reused, the rest computed; the trace is written to the run record.
///
/// # Errors
/// [`RunError::Invalid`] for an unknown `--force` stage, a `--device` this build cannot run
/// (the registry's device check) or placement flags that do not fit the machine, or an
/// executor that cannot run it: nothing ran;
/// [`RunError::Failed`] when the cache or the run record cannot be written.
pub fn run(loaded: &Loaded, registry: &Registry, req: &RunRequest) -> Result<RunOutcome, RunError> {
    let g = Graph::build(loaded);
    let forced = forced_and_device(&g, loaded, registry, req)?;
    let cache = Cache::open(req.cache_dir)?;
    let mut executor = executor(loaded, registry, req, &cache)?;
    let record = RunRecord::create(req.runs_dir, &loaded.resolved, &loaded.overrides)?;
    let ids: Vec<(&str, &str)> = g
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.uses.as_str()))
        .collect();
    let rep = reporter(&ids, req.jobs, req.quiet);
    let options = RunOptions {
        keep_going: req.keep_going,
        forced,
        device: req.device.to_string(),
    };
    let ctx = RunContext {
        graph: &g,
        registry,
        cache: &cache,
        record: &record,
        options: &options,
        cancel: &req.cancel,
        reporter: rep.clone(),
    };
    let summary = schedule(&ctx, executor.as_mut());
    drop(ctx);
    drop(rep);
    record.write_trace(&summary.trace)?;
    let found = super::summaries::entry_summaries(&g, &cache, &summary.trace);
    Ok(RunOutcome {
        summary,
        record_dir: record.dir.clone(),
        summaries: super::summaries::render(&found),
    })
}

/// How `exec-stage` runs its one instance.
pub struct OneRequest<'a> {
    /// Where the cache is (created when missing).
    pub cache_dir: &'a Path,
    /// The instance id, as `plan` names it.
    pub instance: &'a str,
    /// Its log file (default: `<cache>/logs/<instance>.log`).
    pub log: Option<PathBuf>,
    /// `--device`.
    pub device: String,
    /// `--force`.
    pub force: bool,
    /// `--threads` (default: `$SLURM_CPUS_PER_TASK`, else every core).
    pub threads: Option<usize>,
    /// Set by Ctrl-C (or SIGTERM from Slurm).
    pub cancel: Arc<AtomicBool>,
}

/// Run one instance of `loaded` in this process through the cache (its upstreams must be
/// cached; only its ancestors are looked at). Progress goes to its log as `progress:` lines.
/// Returns the outcome and the log file.
///
/// # Errors
/// [`RunError::Invalid`]: a `--device` this build cannot run (the registry's device check),
/// no such instance, or an upstream not cached;
/// [`RunError::Failed`]: the cache cannot be opened.
pub fn exec_one(
    loaded: &Loaded,
    registry: &Registry,
    req: OneRequest,
) -> Result<(Outcome, PathBuf), RunError> {
    registry
        .check_device(&req.device)
        .map_err(RunError::Invalid)?;
    let g = Graph::build(loaded);
    let Some(i) = g.instances.iter().position(|x| x.id == req.instance) else {
        return Err(RunError::Invalid(format!(
            "no instance `{}` in {}",
            req.instance,
            loaded.file.display()
        )));
    };
    let cache = Cache::open(req.cache_dir)?;
    let all_cores = || {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    let settings = JobSettings {
        log_path: req.log.unwrap_or_else(|| {
            cache.root.join("logs").join(format!(
                "{}.log",
                crate::cache::store::sanitize(req.instance)
            ))
        }),
        device: req.device,
        // Under Slurm the task's GPUs are its allocation (cuda:0.. in the task); nothing is
        // placed here.
        cards: Vec::new(),
        gpu_mem: None,
        // Under Slurm, the task's `--cpus-per-task`.
        threads: req.threads.unwrap_or_else(|| {
            std::env::var("SLURM_CPUS_PER_TASK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(all_cores)
        }),
        force: req.force,
    };
    let job = job_alone(&g, i, registry, &cache, settings)
        .map_err(|e| RunError::Failed(anyhow::anyhow!("{}: {e}", req.instance)))?;
    // Progress as `progress: POS/TOTAL MESSAGE` lines in the log (what the Slurm executor
    // shows as bars).
    let progress = Arc::new(super::slurm::progress::LogProgress::new(&job.log_path));
    Ok((exec_stage(&job, progress, req.cancel), job.log_path.clone()))
}
