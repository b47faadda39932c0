//! The seam between the scheduler and whatever runs instances: [`Executor`].
//!
//! The scheduler ([`super::scheduler::schedule`]) decides what runs when (readiness, skips,
//! resource slots, keep-going, cancel); an executor only starts jobs and reports, as data,
//! what became of them. So an executor whose instances run in other processes or on other
//! machines reports progress and failures the same way the local one does.
use super::job::StageJob;
use super::stage::Outcome;
use crate::config::model::Resources;
use std::time::Duration;

/// How much an executor can run at once. The scheduler never has more CPU slots, GPUs or
/// instances in flight than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU slots; an instance's `resources.cpus` is clamped to 1..=cpus.
    pub cpus: usize,
    /// GPUs (the number of cards, where [`Executor::cards`] lists them).
    pub gpus: usize,
    /// Instances in flight (`usize::MAX`: no limit beyond the slots).
    pub jobs: usize,
}

/// One change to a running instance's progress, as [`crate::stages::Progress`] receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressUpdate {
    /// Units of work in the instance.
    Total(u64),
    /// Units done.
    Position(u64),
    /// Short status line.
    Message(String),
}

/// How a submitted instance ended.
#[derive(Debug)]
pub struct Finished {
    /// The instance's index in the graph.
    pub index: usize,
    /// Cached or ran (with the entry's manifest), or failed (with the error message).
    pub outcome: Outcome,
    /// When it started and ended, seconds since the Unix epoch.
    pub start: f64,
    /// When it ended, seconds since the Unix epoch: `end - start` is the duration the trace
    /// and the reporter show.
    pub end: f64,
}

/// What an executor reports from [`Executor::poll`].
#[derive(Debug)]
pub enum Event {
    /// Progress of the instance with graph index `index`.
    Progress {
        /// Graph index of the instance, as given to [`Executor::submit`].
        index: usize,
        /// What changed.
        update: ProgressUpdate,
    },
    /// The instance ended (ran, was found cached, or failed).
    Finished(Finished),
}

/// Runs the instances the scheduler hands it. Every submitted instance ends with exactly one
/// [`Event::Finished`], also after [`Executor::cancel`].
pub trait Executor {
    /// What it can run at once.
    fn capacity(&self) -> Capacity;
    /// The cards the scheduler places GPU instances on ([`super::gpus::pool::Pool`]), or
    /// `None` (the default) for an executor whose instances get their GPUs elsewhere (Slurm
    /// allocates them per task): the scheduler then only counts [`Capacity::gpus`].
    fn cards(&self) -> Option<&super::gpus::CardSet> {
        None
    }
    /// Why an instance with these resources can never run here (an error message naming the
    /// option to change), or `Ok` when it can. The scheduler fails such an instance before
    /// it starts.
    fn admits(&self, resources: &Resources) -> Result<(), String>;
    /// Start `job` (graph index `index`) within its `threads` CPU slots. Returns at once; an
    /// executor may hold jobs back until the next [`Executor::poll`] to submit together the
    /// ones that became ready together. An `Err` means it could not be started (reported as
    /// a failure of that instance).
    fn submit(&mut self, index: usize, job: StageJob) -> Result<(), String>;
    /// News of submitted instances, waiting at most `timeout` for the first.
    fn poll(&mut self, timeout: Duration) -> Vec<Event>;
    /// Ask every unfinished instance to stop (no partial entry is committed). Their
    /// [`Event::Finished`] still come through `poll`.
    fn cancel(&mut self);
    /// A line for the run's "interrupted" message after [`Executor::cancel`] (e.g. the
    /// Slurm job ids it cancelled); None by default.
    fn cancel_note(&self) -> Option<String> {
        None
    }
}
