//! The local executor: instances in parallel on threads of this process, within `--jobs`
//! CPU slots and the run's cards ([`super::gpus`]: `--device`, `--gpus`, `--gpu-mem`,
//! `--per-gpu`); the scheduler places GPU instances on them.
use super::executor::{Capacity, Event, Executor, Finished, ProgressUpdate};
use super::gpus::CardSet;
use super::job::StageJob;
use super::record::unix_now;
use super::stage::exec_stage;
use crate::config::model::Resources;
use crate::stages::Progress;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// The `local` executor plugin: no settings; `--jobs` CPU slots and the cards
/// [`super::gpus::for_run`] finds (`CUDA_VISIBLE_DEVICES`, NVML, `/dev/nvidiaN`).
pub struct Local;

/// The `local` executor's settings: none.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {}

impl super::plugin::ExecutorPlugin for Local {
    type Settings = LocalSettings;
    const NAME: &'static str = "local";
    const SUMMARY: &'static str =
        "threads of the `run` process, within `--jobs` CPU slots and the visible GPUs (`--gpus`)";
    fn build(
        _: LocalSettings,
        run: &super::plugin::RunSetup,
    ) -> Result<Box<dyn super::Executor>, String> {
        let ask = super::gpus::Ask {
            device: super::gpus::DeviceSpec::parse(run.device)?,
            gpus: run.gpus,
            gpu_mem: run.gpu_mem,
            per_gpu: run.per_gpu,
        };
        let cards = match (ask.device, ask.gpus) {
            // Everything on the CPU and no `--gpus`: GPU instances are bounded by CPU slots
            // alone (no card is used, so none is counted).
            (super::gpus::DeviceSpec::Cpu, None) => None,
            _ => Some(super::gpus::for_run(&ask)?),
        };
        Ok(Box::new(LocalExecutor::new(
            run.jobs,
            cards,
            run.cancel.clone(),
        )))
    }
}

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

/// Runs each instance on its own thread through [`exec_stage`].
pub struct LocalExecutor {
    cpus: usize,
    /// `None`: `--device cpu` without `--gpus`, GPU instances are not bounded by cards.
    cards: Option<CardSet>,
    /// Shared with every running stage (and with the Ctrl-C handler).
    cancel: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl LocalExecutor {
    /// `jobs` CPU slots (at least 1), GPU instances on `cards` (`None`: not bounded by
    /// cards); `cancel` stops the running stages.
    pub fn new(jobs: usize, cards: Option<CardSet>, cancel: Arc<AtomicBool>) -> Self {
        quiet_stage_panics();
        let (tx, rx) = mpsc::channel();
        Self {
            cpus: jobs.max(1),
            cards,
            cancel,
            tx,
            rx,
        }
    }
}

/// A stage's progress, sent to the scheduler as [`Event::Progress`].
struct ChannelProgress {
    index: usize,
    tx: mpsc::Sender<Event>,
}

impl ChannelProgress {
    fn send(&self, update: ProgressUpdate) {
        let _ = self.tx.send(Event::Progress {
            index: self.index,
            update,
        });
    }
}

impl Progress for ChannelProgress {
    fn set_total(&self, total: u64) {
        self.send(ProgressUpdate::Total(total));
    }
    fn set_position(&self, pos: u64) {
        self.send(ProgressUpdate::Position(pos));
    }
    fn set_message(&self, msg: &str) {
        self.send(ProgressUpdate::Message(msg.to_string()));
    }
}

impl Executor for LocalExecutor {
    fn capacity(&self) -> Capacity {
        Capacity {
            cpus: self.cpus,
            gpus: self.cards.as_ref().map_or(usize::MAX, |c| c.cards.len()),
            jobs: usize::MAX,
        }
    }

    fn cards(&self) -> Option<&CardSet> {
        self.cards.as_ref()
    }

    fn admits(&self, resources: &Resources) -> Result<(), String> {
        let mem = super::gpus::gpu_mem(resources)?;
        match &self.cards {
            Some(cards) => super::gpus::pool::admits(cards, resources.gpus as usize, mem),
            None => Ok(()),
        }
    }

    fn submit(&mut self, index: usize, job: StageJob) -> Result<(), String> {
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let progress = Arc::new(ChannelProgress {
            index,
            tx: tx.clone(),
        });
        std::thread::Builder::new()
            .name(format!("{STAGE_THREAD}{}", job.instance.id))
            .spawn(move || {
                let start = unix_now();
                let outcome = exec_stage(&job, progress, cancel);
                let _ = tx.send(Event::Finished(Finished {
                    index,
                    outcome,
                    start,
                    end: unix_now(),
                }));
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start a thread: {e}"))
    }

    fn poll(&mut self, timeout: Duration) -> Vec<Event> {
        let mut events: Vec<Event> = self.rx.recv_timeout(timeout).into_iter().collect();
        events.extend(self.rx.try_iter());
        events
    }

    fn cancel(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}
