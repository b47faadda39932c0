//! Training: adapter-tuning of one model (the AT baseline), iDAT co-training of a small
//! teacher and a large student, evaluation, and epoch checkpoints for resume.
//!
//! One loop serves both: [`cotrain::train`] runs with one member (AT) or two (iDAT).

pub mod config;
pub mod cotrain;
pub mod evaluate;
mod hooks;
mod state;

pub use config::{DistillConfig, DistillDirection, DistillKind, OptimConfig};
pub use cotrain::{train, train_step, EpochRow, Member, StepAt, StepLoss, TrainOutcome};
pub use evaluate::{evaluate, EvalResult};
pub use hooks::TrainHooks;
pub use state::{resume_epoch, resume_point};
