//! Running instances: the plan (cached or why not), the scheduler that drives any
//! [`Executor`], the local executor, the one entry point [`exec_stage`] that runs an
//! instance through the cache, progress display and the run record.
pub mod eta;
pub mod executor;
pub mod gpus;
pub mod job;
pub mod local;
pub mod plan;
pub mod plugin;
pub mod progress;
pub mod record;
pub mod run;
pub mod scheduler;
pub mod slurm;
pub mod stage;
pub mod summaries;

pub use executor::{Capacity, Event, Executor, Finished, ProgressUpdate};
pub use job::{build_job, Committed, JobSettings, StageJob};
pub use local::LocalExecutor;
pub use plan::{plan, Decision};
pub use plugin::{ExecutorPlugin, RunSetup};
pub use scheduler::{schedule, Failure, RunContext, RunOptions, RunSummary};
pub use slurm::SlurmExecutor;
pub use stage::{exec_stage, Outcome};
