//! What a running stage instance sees: where to write, what came from upstream,
//! where to checkpoint, how to log and report progress, and whether to stop.
use anyhow::{bail, Context as _};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One upstream entry this instance depends on (from `needs`).
#[derive(Debug, Clone)]
pub struct Input {
    /// Upstream stage id, e.g. `tune`.
    pub stage: String,
    /// Upstream instance id, e.g. `tune[task=dtd,seed=1]`.
    pub instance: String,
    /// The upstream instance's matrix cell (empty when it has no matrix).
    pub matrix: BTreeMap<String, Value>,
    /// Its committed, read-only output directory.
    pub dir: PathBuf,
}

/// Progress of a running instance, shown as a bar on a terminal and as plain lines otherwise.
pub trait Progress: Send + Sync {
    /// Units of work in this instance (e.g. epochs x steps).
    fn set_total(&self, total: u64);
    /// Units of work done so far (out of the total).
    fn set_position(&self, pos: u64);
    /// Short status, e.g. `epoch 3/10 loss 0.412 acc 81.2%`.
    fn set_message(&self, msg: &str);
}

/// A progress sink that shows nothing (tests, `exec-stage` without a terminal).
pub struct NoProgress;
impl Progress for NoProgress {
    fn set_total(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn set_message(&self, _: &str) {}
}

/// What a running stage instance sees: where to write and checkpoint, its upstream
/// inputs, device and threads, its log, its progress sink and whether to stop. The runner
/// builds it ([`crate::exec::exec_stage`]); tests build one with [`StageContext::new`].
pub struct StageContext {
    /// Readable instance id, e.g. `tune[task=dtd,method=idat,seed=1]`.
    pub instance_id: String,
    /// Write every output file here. It becomes the cache entry, with a manifest, on success.
    pub out_dir: PathBuf,
    /// Survives a crash of this instance; dropped when the entry is committed.
    pub checkpoint_dir: PathBuf,
    /// Upstream entries, in `needs` order (a matrix upstream gives one per matching cell).
    pub inputs: Vec<Input>,
    /// Where this instance runs: `cpu` (always for an instance declaring no GPU), `cuda:K`
    /// (the first card the scheduler gave it), or under Slurm the run's `--device` (`cuda`:
    /// the task's first allocated GPU).
    pub device: String,
    /// CPU threads this instance may use.
    pub threads: usize,
    /// Where the stage reports progress (a bar, plain lines, or nothing: [`NoProgress`]).
    pub progress: Arc<dyn Progress>,
    /// Facts about this computation that are not outputs (wall-clock timings, the host):
    /// recorded in the entry's manifest (`info`), never in a hashed file, so recomputing
    /// an instance that gives identical outputs leaves its dependents cached.
    pub info: serde_json::Map<String, Value>,
    log: Option<Mutex<File>>,
    cancel: Arc<AtomicBool>,
}

impl StageContext {
    /// A context writing to `out_dir` and checkpointing in `checkpoint_dir`, with no inputs,
    /// device `cpu`, 1 thread, no progress display, no log file (log lines go to tracing
    /// only) and nothing to cancel it; the runner sets the rest.
    pub fn new(instance_id: impl Into<String>, out_dir: PathBuf, checkpoint_dir: PathBuf) -> Self {
        Self {
            instance_id: instance_id.into(),
            out_dir,
            checkpoint_dir,
            inputs: Vec::new(),
            device: "cpu".into(),
            threads: 1,
            progress: Arc::new(NoProgress),
            info: serde_json::Map::new(),
            log: None,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Send log lines to this file (appended).
    pub fn with_log_file(mut self, path: &std::path::Path) -> anyhow::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening log file {}", path.display()))?;
        self.log = Some(Mutex::new(f));
        Ok(self)
    }

    /// Stop when `cancel` becomes true: [`StageContext::check_cancel`] then fails with
    /// `interrupted`.
    pub fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> Self {
        self.cancel = cancel;
        self
    }

    /// Append one line to the instance log (and to tracing at debug level). ANSI escape
    /// sequences are removed from what goes to the file.
    pub fn log(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::debug!(instance = %self.instance_id, "{msg}");
        self.write_log(msg);
    }

    /// A warning: one `warning: ...` line in the instance log and one tracing warning on
    /// stderr (not also the debug echo of [`StageContext::log`]).
    pub fn warn(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        tracing::warn!("{msg}");
        self.write_log(&format!("warning: {msg}"));
    }

    fn write_log(&self, msg: &str) {
        if let Some(f) = &self.log {
            if let Ok(mut f) = f.lock() {
                // One write per line, escapes removed: log files are read as plain text.
                let line = format!("{}\n", crate::exec::record::plain_text(msg));
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    /// Err when the run was interrupted (Ctrl-C): stages call this between steps.
    pub fn check_cancel(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// The only input from stage `stage`; an error if there is none or several.
    pub fn input(&self, stage: &str) -> anyhow::Result<&Input> {
        let v = self.inputs_of(stage);
        match v.as_slice() {
            [one] => Ok(one),
            [] => bail!(
                "{}: needs an input from stage `{stage}` (add it to `needs`)",
                self.instance_id
            ),
            many => bail!(
                "{}: expected one input from `{stage}`, got {} (matrix cells: {})",
                self.instance_id,
                many.len(),
                many.iter()
                    .map(|i| i.instance.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Every input from stage `stage` (a matrix upstream gives several).
    pub fn inputs_of(&self, stage: &str) -> Vec<&Input> {
        self.inputs.iter().filter(|i| i.stage == stage).collect()
    }
}
