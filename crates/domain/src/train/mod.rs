//! Training: adapter-tuning of one model (the AT baseline), iDAT co-training of a small
//! teacher and a large student, evaluation, and epoch checkpoints for resume.
//!
//! One loop serves both: [`cotrain::train`] runs with one member (AT) or two (iDAT).

pub mod config;
pub mod cotrain;
mod epoch;
pub mod evaluate;
mod hooks;
mod member;
mod state;
mod step;

pub use config::{DistillConfig, DistillDirection, DistillKind, OptimConfig};
pub use cotrain::{evaluates_after, steps_per_epoch, train, TrainOutcome};
pub use epoch::EpochRow;
pub use evaluate::{evaluate, EvalResult};
pub use hooks::TrainHooks;
pub use member::Member;
pub use state::{resume_epoch, resume_point};
pub use step::{train_step, train_step_accum, StepAt, StepLoss};
