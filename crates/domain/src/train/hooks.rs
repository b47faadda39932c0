//! What the training loop needs from whoever runs it, and nothing more: a folder for epoch
//! checkpoints, a log, progress and a cancel check. A pipeline stage passes its
//! [`StageContext`]; a test or a benchmark can pass its own implementation.
use idat_engine::stages::StageContext;
use std::path::Path;

/// The training loop's view of its runner ([`super::train`]).
pub trait TrainHooks {
    /// Folder that survives a crash: epoch checkpoints are written and resumed from here.
    fn checkpoint_dir(&self) -> &Path;
    /// One line for the run's log.
    fn log(&self, msg: &str);
    /// Units of work in the whole schedule (epochs x steps per epoch).
    fn set_total(&self, steps: u64);
    /// Steps done so far.
    fn set_position(&self, steps: u64);
    /// Short status, e.g. `epoch 3/10 loss 0.412`.
    fn set_message(&self, msg: &str);
    /// Err when the run was interrupted; called between steps.
    fn check_cancel(&self) -> anyhow::Result<()>;
}

impl TrainHooks for StageContext {
    fn checkpoint_dir(&self) -> &Path {
        &self.checkpoint_dir
    }
    fn log(&self, msg: &str) {
        StageContext::log(self, msg)
    }
    fn set_total(&self, steps: u64) {
        self.progress.set_total(steps)
    }
    fn set_position(&self, steps: u64) {
        self.progress.set_position(steps)
    }
    fn set_message(&self, msg: &str) {
        self.progress.set_message(msg)
    }
    fn check_cancel(&self) -> anyhow::Result<()> {
        StageContext::check_cancel(self)
    }
}
