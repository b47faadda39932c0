//! The Slurm executor's settings, as a pipeline file gives them.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How `resources.gpus` is asked of Slurm.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpuRequest {
    /// `--gres=gpu:N` (works with every GRES-configured cluster).
    #[default]
    Gres,
    /// `--gpus=N` (cons_tres clusters).
    Gpus,
    /// Never ask for GPUs: a stage with `resources.gpus > 0` is an error.
    None,
}

/// The Slurm executor's settings (`executor: {uses: slurm, with: ...}`, or the `slurm:`
/// section beside `executor: slurm`): how jobs are submitted.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// `--qos`.
    #[serde(default)]
    pub qos: Option<String>,
    /// Extra sbatch arguments, one per item, e.g. `["--constraint=a100", "--exclusive"]`.
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Array tasks of one job array running at once (the `%N` throttle); none: no limit.
    #[serde(default)]
    pub max_jobs: Option<u32>,
    /// Seconds between two `squeue` calls (at least 0.2; default 2).
    #[serde(default)]
    pub poll_interval: Option<f64>,
    /// How GPUs are requested: `gres` (`--gres=gpu:N`, default), `gpus` (`--gpus=N`) or `none`.
    #[serde(default)]
    pub gpu_request: GpuRequest,
}
