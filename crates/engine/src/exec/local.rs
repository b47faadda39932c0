//! The local executor: independent instances in parallel on threads, within
//! `--jobs` CPU slots and `--gpus` GPU slots; `--keep-going`; clean Ctrl-C.
use super::plan::{key_parts, upstream_parts};
use super::progress::Reporter;
use super::record::{tail, unix_now, RunRecord, TraceRow};
use super::stage::{exec_stage, record_hit, Outcome, StageJob};
use crate::cache::Cache;
use crate::graph::Graph;
use crate::stages::{Input, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Name prefix of the threads that run stages (their panics are reported as failures).
pub const STAGE_THREAD: &str = "stage:";

/// Keep the default panic message for every thread except stage threads, whose
/// panics are caught and reported as instance failures (with the message) instead.
pub fn quiet_stage_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let stage = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(STAGE_THREAD));
            if !stage {
                default(info);
            }
        }));
    });
}

/// Options of a local run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub jobs: usize,
    pub gpus: usize,
    pub keep_going: bool,
    /// `forced[i]`: recompute instance `i`.
    pub forced: Vec<bool>,
    pub device: String,
}

/// A failed instance, for the failure report.
#[derive(Debug, Clone)]
pub struct Failure {
    pub instance: String,
    pub error: String,
    pub log: std::path::PathBuf,
    pub log_tail: Vec<String>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: usize,
    pub cached: usize,
    pub failed: Vec<Failure>,
    pub skipped: usize,
    pub interrupted: bool,
    pub trace: Vec<TraceRow>,
}

#[derive(Clone, PartialEq)]
enum State {
    Waiting,
    Running,
    Done(String),
    Failed,
    Skipped,
}

impl RunSummary {
    /// An instance that failed before it could start (no log, no key): reported as
    /// finished-failed (progress and ETA count it) and recorded in the failure report and
    /// the trace.
    fn fail_before_start(&mut self, reporter: &dyn Reporter, instance: &str, error: String) {
        reporter.finished(instance, "failed", 0.0);
        let now = unix_now();
        self.failed.push(Failure {
            instance: instance.to_string(),
            error,
            log: Default::default(),
            log_tail: vec![],
        });
        self.trace.push(TraceRow {
            instance: instance.to_string(),
            key: String::new(),
            status: "failed".into(),
            start: now,
            end: now,
            seconds: 0.0,
        });
    }
}

/// Run every instance of `graph` (cached ones are verified and reused).
pub fn run_local(
    graph: &Graph,
    registry: &Registry,
    cache: &Cache,
    record: &RunRecord,
    opts: &LocalOptions,
    cancel: Arc<AtomicBool>,
    reporter: Arc<dyn Reporter>,
) -> RunSummary {
    quiet_stage_panics();
    let n = graph.instances.len();
    let jobs = opts.jobs.max(1);
    let mut state = vec![State::Waiting; n];
    let mut hashes: Vec<Option<String>> = vec![None; n];
    let mut summary = RunSummary::default();
    let (tx, rx) = mpsc::channel::<(usize, Outcome, f64, f64, String)>();
    let (mut cpu_used, mut gpu_used, mut running) = (0usize, 0usize, 0usize);
    let mut stop_launching = false;
    let mut keys: Vec<String> = vec![String::new(); n];
    loop {
        if cancel.load(Ordering::Relaxed) && !summary.interrupted {
            summary.interrupted = true;
            stop_launching = true;
            reporter
                .line("interrupted: stopping running instances (no partial entry is committed)");
        }
        // Skip instances whose upstream failed or was skipped.
        for &i in &graph.order {
            if state[i] == State::Waiting
                && graph.deps[i]
                    .iter()
                    .any(|(_, u)| matches!(state[*u], State::Failed | State::Skipped))
            {
                state[i] = State::Skipped;
            }
        }
        if !stop_launching {
            for &i in &graph.order {
                if state[i] != State::Waiting {
                    continue;
                }
                let Some(up) = upstream_parts(graph, i, &hashes) else {
                    continue;
                };
                let inst = &graph.instances[i];
                let cpus = (inst.resources.cpus as usize).clamp(1, jobs);
                let gpus = inst.resources.gpus as usize;
                if gpus > opts.gpus {
                    let err = format!(
                        "needs {gpus} GPU(s) but this machine offers {} (--gpus)",
                        opts.gpus
                    );
                    state[i] = State::Failed;
                    summary.fail_before_start(reporter.as_ref(), &inst.id, err);
                    if !opts.keep_going {
                        stop_launching = true;
                        break;
                    }
                    continue;
                }
                if cpu_used + cpus > jobs || gpu_used + gpus > opts.gpus {
                    continue;
                }
                let Some(kind) = registry.get(&inst.uses).cloned() else {
                    continue;
                };
                let inputs: Vec<Input> = graph.deps[i]
                    .iter()
                    .map(|(need, u)| {
                        let ui = &graph.instances[*u];
                        Input {
                            stage: need.clone(),
                            instance: ui.id.clone(),
                            matrix: ui.cell_map(),
                            dir: cache.entry_dir(&keys[*u]),
                        }
                    })
                    .collect();
                let parts = match key_parts(inst, registry, cache, up) {
                    Ok(p) => p,
                    Err(err) => {
                        // An unreadable external input: the instance fails before it starts.
                        state[i] = State::Failed;
                        summary.fail_before_start(reporter.as_ref(), &inst.id, err);
                        if !opts.keep_going {
                            stop_launching = true;
                            break;
                        }
                        continue;
                    }
                };
                // What `plan` would say about a checkpoint a killed run left: said here too.
                if let Some(why) =
                    super::plan::resume_reason(cache, &parts.key(), Some(kind.as_ref()))
                {
                    reporter.line(&format!("{}: {why}", inst.id));
                }
                state[i] = State::Running;
                cpu_used += cpus;
                gpu_used += gpus;
                running += 1;
                let job = StageJob {
                    cache: cache.clone(),
                    instance: inst.clone(),
                    kind,
                    parts,
                    inputs,
                    log_path: record.log_path(&inst.id),
                    cancel: cancel.clone(),
                    progress: reporter.started(&inst.id),
                    device: opts.device.clone(),
                    threads: cpus,
                    force: opts.forced[i],
                };
                let tx2 = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{STAGE_THREAD}{}", inst.id))
                    .spawn(move || {
                        let start = unix_now();
                        let key = job.parts.key();
                        let out = exec_stage(&job);
                        let _ = tx2.send((i, out, start, unix_now(), key));
                    });
                if let Err(e) = spawned {
                    // Report it like a failed instance (the channel never hears from it).
                    let now = unix_now();
                    let _ = tx.send((
                        i,
                        Outcome::Failed(format!("cannot start a thread: {e}")),
                        now,
                        now,
                        String::new(),
                    ));
                }
            }
        }
        if running == 0 {
            break;
        }
        let Ok((i, out, start, end, key)) = rx.recv_timeout(std::time::Duration::from_millis(200))
        else {
            continue;
        };
        running -= 1;
        keys[i] = key.clone();
        let inst = &graph.instances[i];
        cpu_used -= (inst.resources.cpus as usize).clamp(1, jobs);
        gpu_used -= inst.resources.gpus as usize;
        let status = match out {
            Outcome::Cached(m) => {
                record_hit(cache, &inst.id, &m);
                hashes[i] = Some(m.content_hash.clone());
                state[i] = State::Done(m.content_hash.clone());
                summary.cached += 1;
                "cached"
            }
            Outcome::Ran(m) => {
                hashes[i] = Some(m.content_hash.clone());
                state[i] = State::Done(m.content_hash.clone());
                summary.ran += 1;
                "ran"
            }
            Outcome::Failed(err) => {
                state[i] = State::Failed;
                let log = record.log_path(&inst.id);
                summary.failed.push(Failure {
                    instance: inst.id.clone(),
                    error: err,
                    log_tail: tail(&log, 20),
                    log,
                });
                if !opts.keep_going {
                    stop_launching = true;
                }
                "failed"
            }
        };
        reporter.finished(&inst.id, status, end - start);
        summary.trace.push(TraceRow {
            instance: inst.id.clone(),
            key,
            status: status.into(),
            start,
            end,
            seconds: end - start,
        });
    }
    for &i in &graph.order {
        if matches!(state[i], State::Waiting | State::Skipped) {
            summary.skipped += 1;
            let now = unix_now();
            summary.trace.push(TraceRow {
                instance: graph.instances[i].id.clone(),
                key: String::new(),
                status: "skipped".into(),
                start: now,
                end: now,
                seconds: 0.0,
            });
        }
    }
    summary
}
