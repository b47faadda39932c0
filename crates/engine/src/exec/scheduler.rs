//! The scheduler: which instance runs when, on any [`Executor`]. It owns readiness (every
//! upstream committed), skips below failures, resource slots, `--keep-going`, Ctrl-C, the
//! failure report and the trace; executors only start jobs and report what became of them.
use super::executor::{Event, Executor, Finished, ProgressUpdate};
use super::gpus::{self, pool::Pool, Card};
use super::job::{build_job, Committed, JobSettings};
use super::progress::Reporter;
use super::record::{tail, unix_now, RunRecord, TraceRow};
use super::stage::{record_hit, Outcome};
use crate::cache::{Cache, Lookup};
use crate::graph::Graph;
use crate::stages::{Progress, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the scheduler looks at Ctrl-C while it waits for news.
const POLL: Duration = Duration::from_millis(200);

/// Options of a run that do not depend on the executor.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Go on with independent instances after a failure (`--keep-going`).
    pub keep_going: bool,
    /// `forced[i]`: recompute instance `i` (`--force`).
    pub forced: Vec<bool>,
    /// `cpu`, `cuda` or `cuda:N` (`--device`): what a GPU instance gets where the executor
    /// lists no cards to place it on ([`device_of`]).
    pub device: String,
}

/// The device of an instance declaring `gpus` GPUs: `cpu` when it declares none (whatever
/// `--device` says), `cuda:K` of its first card where the scheduler placed it, else the
/// run's `--device` (Slurm: the task's allocated GPUs are `cuda:0..` there).
pub fn device_of(run_device: &str, gpus: u32, placed: Option<&[Card]>) -> String {
    if gpus == 0 {
        return "cpu".into();
    }
    match placed.and_then(|c| c.first()) {
        Some(c) => format!("cuda:{}", c.ordinal),
        None => run_device.to_string(),
    }
}

/// A failed instance, for the failure report.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Id of the failed instance.
    pub instance: String,
    /// The error message, every line (the instance's cache record keeps only the first).
    pub error: String,
    /// Its log file (empty when it failed before it started).
    pub log: std::path::PathBuf,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Instances computed and committed in this run.
    pub ran: usize,
    /// Instances whose verified entry was reused.
    pub cached: usize,
    /// Failed instances, in the order they ended.
    pub failed: Vec<Failure>,
    /// Instances that never started: below a failure, or not launched after a failure
    /// (without `--keep-going`) or after Ctrl-C.
    pub skipped: usize,
    /// Ctrl-C stopped the run.
    pub interrupted: bool,
    /// One row per instance, in the order they ended (skipped ones last): `trace.csv`.
    pub trace: Vec<TraceRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Failed,
    Skipped,
}

/// What the scheduler works with, borrowed for one run.
pub struct RunContext<'a> {
    /// The instances to run and their upstream edges.
    pub graph: &'a Graph,
    /// The stage kinds the instances' `uses:` names resolve to.
    pub registry: &'a Registry,
    /// Where entries are looked up and committed.
    pub cache: &'a Cache,
    /// The run record the instances' log files are in.
    pub record: &'a RunRecord,
    /// `--keep-going`, `--force` and `--device`.
    pub options: &'a RunOptions,
    /// Set by Ctrl-C.
    pub cancel: &'a AtomicBool,
    /// Shows what starts, progresses and ends (bars, plain lines or nothing).
    pub reporter: Arc<dyn Reporter>,
}

/// Run every instance of the graph on `executor` (cached ones are verified and reused).
pub fn schedule(run: &RunContext, executor: &mut dyn Executor) -> RunSummary {
    let mut s = Scheduler::new(run, executor.capacity().cpus);
    s.pool = executor.cards().cloned().map(Pool::new);
    loop {
        if run.cancel.load(Ordering::Relaxed) && !s.summary.interrupted {
            s.summary.interrupted = true;
            s.stop_launching = true;
            executor.cancel();
            run.reporter
                .line("interrupted: stopping running instances (no partial entry is committed)");
            if let Some(note) = executor.cancel_note() {
                run.reporter.line(&note);
            }
        }
        s.skip_below_failures();
        if !s.stop_launching {
            s.launch_ready(executor);
        }
        if s.running == 0 {
            break;
        }
        for event in executor.poll(POLL) {
            s.on_event(event);
        }
    }
    s.finish()
}

struct Scheduler<'r, 'a> {
    run: &'r RunContext<'a>,
    state: Vec<State>,
    committed: Vec<Option<Committed>>,
    /// Cache key of each submitted instance.
    keys: Vec<String>,
    progress: Vec<Option<Arc<dyn Progress>>>,
    cpu_slots: usize,
    cpu_used: usize,
    /// GPUs in use, where the executor lists no cards (Slurm).
    gpu_used: usize,
    /// The executor's cards and what holds them (the local executor).
    pool: Option<Pool>,
    /// Cards (indices in the pool) each running instance holds.
    held: Vec<Vec<usize>>,
    /// Where each running instance runs, for its progress and the trace: `cuda:1 (GPU 5)`,
    /// `cpu`, `cuda` (unplaced).
    device: Vec<String>,
    running: usize,
    stop_launching: bool,
    summary: RunSummary,
}

impl<'r, 'a> Scheduler<'r, 'a> {
    fn new(run: &'r RunContext<'a>, cpu_slots: usize) -> Self {
        let n = run.graph.instances.len();
        Self {
            run,
            state: vec![State::Waiting; n],
            committed: vec![None; n],
            keys: vec![String::new(); n],
            progress: vec![None; n],
            cpu_slots: cpu_slots.max(1),
            cpu_used: 0,
            gpu_used: 0,
            pool: None,
            held: vec![Vec::new(); n],
            device: vec![String::new(); n],
            running: 0,
            stop_launching: false,
            summary: RunSummary::default(),
        }
    }

    /// CPU slots of instance `i`: its `resources.cpus`, at least 1, at most the executor's.
    fn cpus(&self, i: usize) -> usize {
        (self.run.graph.instances[i].resources.cpus as usize).clamp(1, self.cpu_slots)
    }

    fn gpus(&self, i: usize) -> usize {
        self.run.graph.instances[i].resources.gpus as usize
    }

    /// `resources.gpu_mem` of instance `i`, bytes (its syntax was checked at load and by
    /// `admits`).
    fn gpu_mem(&self, i: usize) -> Option<u64> {
        gpus::gpu_mem(&self.run.graph.instances[i].resources)
            .ok()
            .flatten()
    }

    /// Cards for instance `i` if they are free now (none for a CPU instance): pool indices.
    fn take_cards(&mut self, i: usize, gpu_limit: usize) -> Option<Vec<usize>> {
        let (k, mem) = (self.gpus(i), self.gpu_mem(i));
        match &mut self.pool {
            Some(p) => p.take(k, mem),
            None => (self.gpu_used.saturating_add(k) <= gpu_limit).then(Vec::new),
        }
    }

    /// Give back instance `i`'s cards.
    fn release_cards(&mut self, i: usize) {
        let mem = self.gpu_mem(i);
        let held = std::mem::take(&mut self.held[i]);
        if let Some(p) = &mut self.pool {
            p.give_back(&held, mem);
        }
    }

    /// Instances whose upstream failed or was skipped are skipped.
    fn skip_below_failures(&mut self) {
        for &i in &self.run.graph.order {
            if self.state[i] == State::Waiting
                && self.run.graph.deps[i]
                    .iter()
                    .any(|(_, u)| matches!(self.state[*u], State::Failed | State::Skipped))
            {
                self.state[i] = State::Skipped;
            }
        }
    }

    /// Submit every waiting instance whose upstreams are committed and that fits the free
    /// slots, in graph order.
    fn launch_ready(&mut self, executor: &mut dyn Executor) {
        let cap = executor.capacity();
        for &i in &self.run.graph.order {
            if self.stop_launching {
                break;
            }
            let ready = self.state[i] == State::Waiting
                && self.run.graph.deps[i]
                    .iter()
                    .all(|(_, u)| self.committed[*u].is_some());
            if !ready {
                continue;
            }
            let inst = &self.run.graph.instances[i];
            if let Err(why) = executor.admits(&inst.resources) {
                self.fail_before_start(i, why);
                continue;
            }
            let fits = self.running < cap.jobs && self.cpu_used + self.cpus(i) <= cap.cpus.max(1);
            if !fits {
                continue;
            }
            if let Some(cards) = self.take_cards(i, cap.gpus) {
                self.held[i] = cards;
                self.launch(i, executor);
            }
        }
    }

    /// The cards instance `i` holds, when the executor places stages on them (none under
    /// `--device cpu`, where cards are only slots).
    fn placed(&self, i: usize) -> Option<Vec<Card>> {
        let p = self.pool.as_ref().filter(|p| p.set().place)?;
        Some(self.held[i].iter().map(|&c| p.card(c).clone()).collect())
    }

    /// Instance `i` holds cards its stage runs on (not mere slots).
    fn placed_on_cards(&self, i: usize) -> bool {
        !self.held[i].is_empty() && self.pool.as_ref().is_some_and(|p| p.set().place)
    }

    /// Instance `i`'s job settings: its device and cards (recorded for its progress and
    /// trace), log, threads and `--force`.
    fn settings(&mut self, i: usize) -> JobSettings {
        let run = self.run;
        let inst = &run.graph.instances[i];
        let placed = self.placed(i);
        let device = device_of(&run.options.device, inst.resources.gpus, placed.as_deref());
        let cards = placed.unwrap_or_default();
        self.device[i] = match cards.is_empty() {
            true => device.clone(),
            false => gpus::labels(&cards.iter().collect::<Vec<_>>()),
        };
        JobSettings {
            log_path: run.record.log_path(&inst.id),
            device,
            gpu_mem: self.gpu_mem(i).filter(|_| !cards.is_empty()),
            cards,
            threads: self.cpus(i),
            force: run.options.forced[i],
        }
    }

    /// Build instance `i`'s job (on the cards it holds) and submit it.
    fn launch(&mut self, i: usize, executor: &mut dyn Executor) {
        let run = self.run;
        let inst = &run.graph.instances[i];
        let settings = self.settings(i);
        let job = match build_job(
            run.graph,
            i,
            run.registry,
            run.cache,
            &self.committed,
            settings,
        ) {
            Ok(job) => job,
            // An unreadable external input: the instance fails before it starts.
            Err(why) => {
                self.release_cards(i);
                return self.fail_before_start(i, why);
            }
        };
        let key = job.parts.key();
        // Freshness is decided here, once: a cached instance never reaches the executor.
        // (`exec_stage` looks again under the key's lock, for runs racing on one cache.)
        let cached = match job.force {
            true => None,
            false => match run.cache.lookup(&key) {
                Lookup::Hit(m) => Some(m),
                _ => None,
            },
        };
        // What `plan` would say about a checkpoint a killed run left: said here too.
        if cached.is_none() {
            let why = super::plan::resume_reason(run.cache, &key, Some(job.kind.as_ref()));
            if let Some(why) = why {
                run.reporter.line(&format!("{}: {why}", inst.id));
            }
        }
        self.state[i] = State::Running;
        self.cpu_used += self.cpus(i);
        self.gpu_used += self.gpus(i);
        self.running += 1;
        self.keys[i] = key;
        // Where it runs, on its start line; a cached instance runs nowhere.
        let place = match (&cached, job.cards.is_empty()) {
            (None, false) => self.device[i].as_str(),
            _ => "",
        };
        self.progress[i] = Some(run.reporter.started(&inst.id, place));
        if let Some(m) = cached {
            self.device[i].clear();
            let now = unix_now();
            return self.on_finished(Finished {
                index: i,
                outcome: Outcome::Cached(m),
                start: now,
                end: now,
            });
        }
        if let Err(why) = executor.submit(i, job) {
            // Reported like any failed instance, with its log (no key: nothing ran).
            self.keys[i].clear();
            let now = unix_now();
            self.on_finished(Finished {
                index: i,
                outcome: Outcome::Failed(why),
                start: now,
                end: now,
            });
        }
    }

    /// An instance that failed before it could start (no log, no key): reported as
    /// finished-failed (progress and ETA count it) and recorded in the failure report and
    /// the trace.
    fn fail_before_start(&mut self, i: usize, error: String) {
        let id = self.run.graph.instances[i].id.clone();
        self.state[i] = State::Failed;
        self.run.reporter.finished(&id, "failed", 0.0);
        let now = unix_now();
        self.summary.failed.push(Failure {
            instance: id.clone(),
            error,
            log: Default::default(),
            log_tail: vec![],
        });
        self.summary.trace.push(trace_row(
            id,
            String::new(),
            "failed",
            now,
            now,
            String::new(),
        ));
        if !self.run.options.keep_going {
            self.stop_launching = true;
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Progress { index, update } => {
                if let Some(p) = &self.progress[index] {
                    match update {
                        ProgressUpdate::Total(t) => p.set_total(t),
                        ProgressUpdate::Position(n) => p.set_position(n),
                        // A GPU instance's messages start with its card.
                        ProgressUpdate::Message(m) => match self.placed_on_cards(index) {
                            false => p.set_message(&m),
                            true => p.set_message(&format!("{}: {m}", self.device[index])),
                        },
                    }
                }
            }
            Event::Finished(f) => self.on_finished(f),
        }
    }

    /// Free the instance's slots, record its outcome and report it.
    fn on_finished(&mut self, f: Finished) {
        let run = self.run;
        let i = f.index;
        let inst = &run.graph.instances[i];
        self.running -= 1;
        self.cpu_used -= self.cpus(i);
        self.gpu_used -= self.gpus(i);
        self.release_cards(i);
        self.progress[i] = None;
        let status = match f.outcome {
            Outcome::Cached(m) => {
                record_hit(run.cache, &inst.id, &m);
                self.commit(i, &m.content_hash);
                self.summary.cached += 1;
                "cached"
            }
            Outcome::Ran(m) => {
                self.commit(i, &m.content_hash);
                self.summary.ran += 1;
                "ran"
            }
            Outcome::Failed(error) => {
                self.state[i] = State::Failed;
                let log = run.record.log_path(&inst.id);
                self.summary.failed.push(Failure {
                    instance: inst.id.clone(),
                    error,
                    log_tail: tail(&log, 20),
                    log,
                });
                if !run.options.keep_going {
                    self.stop_launching = true;
                }
                "failed"
            }
        };
        run.reporter.finished(&inst.id, status, f.end - f.start);
        let key = self.keys[i].clone();
        let device = std::mem::take(&mut self.device[i]);
        self.summary.trace.push(trace_row(
            inst.id.clone(),
            key,
            status,
            f.start,
            f.end,
            device,
        ));
    }

    /// Instance `i` has a committed entry under the key it was submitted with.
    fn commit(&mut self, i: usize, content_hash: &str) {
        self.state[i] = State::Done;
        self.committed[i] = Some(Committed {
            key: self.keys[i].clone(),
            content_hash: content_hash.to_string(),
        });
    }

    /// Count and trace what never ran (below a failure, or not launched after one).
    fn finish(mut self) -> RunSummary {
        for &i in &self.run.graph.order {
            if matches!(self.state[i], State::Waiting | State::Skipped) {
                self.summary.skipped += 1;
                let now = unix_now();
                let id = self.run.graph.instances[i].id.clone();
                self.summary.trace.push(trace_row(
                    id,
                    String::new(),
                    "skipped",
                    now,
                    now,
                    String::new(),
                ));
            }
        }
        self.summary
    }
}

fn trace_row(
    instance: String,
    key: String,
    status: &str,
    start: f64,
    end: f64,
    device: String,
) -> TraceRow {
    TraceRow {
        instance,
        key,
        status: status.into(),
        start,
        end,
        seconds: end - start,
        device,
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
