//! The one entry point that runs a stage instance: [`exec_stage`]. The local executor
//! calls it on a thread; `idat-pipe exec-stage` calls it in its own process.
use super::job::StageJob;
use crate::cache::{Cache, InstanceRecord, Lookup, Manifest};
use crate::config::refs::{substitute, Ref};
use crate::stages::{Input, Progress, StageContext};
use anyhow::Context as _;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// How an instance ended.
#[derive(Debug)]
pub enum Outcome {
    /// A valid entry existed (possibly committed meanwhile by a concurrent run).
    Cached(Box<Manifest>),
    /// The stage ran and its outputs were committed as this entry.
    Ran(Box<Manifest>),
    /// The error message (causes joined by `: `); nothing was committed.
    Failed(String),
}

/// Replace `${stages.ID.outputs[.FILE]}` by upstream entry paths (a list when the
/// need has several matching instances), and `$${` escapes by the `${` they stand for: the
/// `with:` the stage sees.
pub fn resolve_outputs(with: &Value, inputs: &[Input]) -> Result<Value, String> {
    let (v, errs) = substitute(with, &mut |r| match r {
        Ref::Outputs { stage, file } => {
            let paths: Vec<Value> = inputs
                .iter()
                .filter(|i| &i.stage == stage)
                .map(|i| {
                    let p = match file {
                        Some(f) => i.dir.join(f),
                        None => i.dir.clone(),
                    };
                    Value::String(p.to_string_lossy().into_owned())
                })
                .collect();
            match paths.len() {
                0 => Err(format!(
                    "no upstream entry for `{}`",
                    crate::config::refs::render(r)
                )),
                1 => Ok(paths.into_iter().next()),
                _ => Ok(Some(Value::Array(paths))),
            }
        }
        _ => Ok(None),
    });
    match errs.first() {
        Some((p, m)) => Err(format!("with.{p}: {m}")),
        None => Ok(v),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Run one instance through the cache: reuse a verified entry, else take the key's lock,
/// check again (a concurrent run may have committed it), run the stage into a fresh
/// temporary directory with its checkpoint directory, and commit. Never commits on error.
/// The stage reports to `progress` and stops when `cancel` is set.
pub fn exec_stage(job: &StageJob, progress: Arc<dyn Progress>, cancel: Arc<AtomicBool>) -> Outcome {
    let key = job.parts.key();
    let cache = &job.cache;
    let mut ctx = match open_context(job, progress, cancel.clone()) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    // A first look without the lock: a verified entry is reused at once.
    if !job.force {
        if let Lookup::Hit(m) = cache.lookup(&key) {
            return Outcome::Cached(m);
        }
    }
    let _lock = match cache.lock(&key) {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    // Under the lock, the decisive look (a concurrent run may have committed the entry, or
    // moved a corrupt one aside). A corrupt entry is reported here only, once.
    match cache.lookup(&key) {
        Lookup::Hit(m) if !job.force => return Outcome::Cached(m),
        Lookup::Corrupt(why) => {
            let moved = match cache.quarantine(&key) {
                Ok(p) => p,
                Err(e) => return Outcome::Failed(format!("{why}; {e:#}")),
            };
            ctx.warn(format!(
                "{}: corrupt cache {why}; moved to {}, recomputing",
                job.instance.id,
                moved.display()
            ));
        }
        _ => {}
    }
    if let Err(e) = gpu_preflight(job, &ctx) {
        ctx.log(format!("error: {e}"));
        return Outcome::Failed(e);
    }
    let tmp = match cache.fresh_tmp(&key) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    let result = run_and_commit(job, &mut ctx, &tmp);
    // Committed or failed, the scratch directory is not needed any more (a failed instance's
    // partial outputs are never read; its log and checkpoints live elsewhere).
    let _ = crate::cache::store::remove_tree(&tmp);
    let interrupted = cancel.load(std::sync::atomic::Ordering::Relaxed);
    record_outcome(job, &ctx, result, interrupted)
}

/// A GPU instance's log starts with its cards, and one that states `resources.gpu_mem` has
/// each card's free memory checked through NVML ([`super::gpus::preflight`]).
fn gpu_preflight(job: &StageJob, ctx: &StageContext) -> Result<(), String> {
    use super::gpus::{nvml::Nvml, Driver};
    let driver = Nvml::system().map(|n| n as &dyn Driver);
    let (lines, fits) = super::gpus::preflight(&job.device, &job.cards, job.gpu_mem, driver);
    for l in lines {
        ctx.log(l);
    }
    fits
}

/// The context the stage sees, logging to the job's log file.
fn open_context(
    job: &StageJob,
    progress: Arc<dyn Progress>,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<StageContext> {
    if let Some(dir) = job.log_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut ctx = StageContext::new(job.instance.id.clone(), PathBuf::new(), PathBuf::new())
        .with_log_file(&job.log_path)?
        .with_cancel(cancel);
    ctx.inputs = job.inputs.clone();
    ctx.device = job.device.clone();
    ctx.threads = job.threads;
    ctx.progress = progress;
    Ok(ctx)
}

/// Run the stage into `tmp/out` (checkpoints in the key's checkpoint directory) and commit
/// the output as the key's entry.
fn run_and_commit(
    job: &StageJob,
    ctx: &mut StageContext,
    tmp: &std::path::Path,
) -> anyhow::Result<Manifest> {
    let key = job.parts.key();
    let cache = &job.cache;
    let out = tmp.join("out");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    ctx.out_dir = out.clone();
    ctx.checkpoint_dir = cache.checkpoint_dir(&key)?;
    let with = resolve_outputs(&job.instance.with, &job.inputs).map_err(anyhow::Error::msg)?;
    ctx.log(format!(
        "== {} ({}) key {key}",
        job.instance.id, job.instance.uses
    ));
    let t0 = Instant::now();
    // The instance's CPU slots bound its kernels' threads: its own rayon pool, so
    // concurrent instances do not hand every small op to one shared pool.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(job.threads.max(1))
        .thread_name(|i| format!("idat-kernel-{i}"))
        .build()?;
    let r = pool.install(|| catch_unwind(AssertUnwindSafe(|| job.kind.run(&with, ctx))));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(p) => anyhow::bail!("stage panicked: {}", panic_message(&*p)),
    }
    ctx.check_cancel()?;
    let secs = t0.elapsed().as_secs_f64();
    let m = cache.commit(&out, &job.instance.id, &job.parts, secs, &ctx.info)?;
    ctx.log(format!("== committed {key} in {secs:.2}s"));
    Ok(m)
}

/// The instance's record in the cache (`plan` reads it: "failed before: ...") and its
/// outcome. An interrupted run records nothing: it did not fail.
fn record_outcome(
    job: &StageJob,
    ctx: &StageContext,
    result: anyhow::Result<Manifest>,
    interrupted: bool,
) -> Outcome {
    let record = |status: &str, error: Option<String>| InstanceRecord {
        instance: job.instance.id.clone(),
        key: job.parts.key(),
        parts: job.parts.clone(),
        status: status.into(),
        error,
    };
    match result {
        Ok(m) => {
            let _ = job.cache.write_record(&record("ok", None));
            Outcome::Ran(Box::new(m))
        }
        Err(e) => {
            let msg = format!("{e:#}");
            ctx.log(format!("error: {msg}"));
            if !interrupted {
                let first = msg.lines().next().unwrap_or_default().to_string();
                let _ = job.cache.write_record(&record("failed", Some(first)));
            }
            Outcome::Failed(msg)
        }
    }
}

/// Record a verified cache hit as the instance's last outcome (for `plan` reasons).
pub fn record_hit(cache: &Cache, id: &str, m: &Manifest) {
    let keep = cache
        .record(id)
        .is_some_and(|r| r.key == m.key && r.status == "ok");
    if !keep {
        let _ = cache.write_record(&InstanceRecord {
            instance: id.to_string(),
            key: m.key.clone(),
            parts: m.parts.clone(),
            status: "ok".into(),
            error: None,
        });
    }
}
