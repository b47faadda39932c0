//! Running instances: the plan (cached or why not), the one entry point
//! [`exec_stage`], the local executor, progress display and the run record.
pub mod eta;
pub mod local;
pub mod plan;
pub mod progress;
pub mod record;
pub mod stage;
pub mod summaries;

pub use local::{run_local, Failure, LocalOptions, RunSummary};
pub use plan::{plan, Decision};
pub use stage::{exec_stage, Outcome, StageJob};
