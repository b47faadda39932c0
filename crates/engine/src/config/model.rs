//! The pipeline DSL types (docs/pipeline-dsl.md). They drive the JSON Schema;
//! loading works on the located JSON value and deserializes into these once valid.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The one DSL version this build reads.
pub const DSL_VERSION: u32 = 1;

/// A pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// DSL version; must be 1.
    pub version: u32,
    /// Pipeline name (used in run ids and reports).
    pub name: String,
    /// Free-form values referenced as `${params.NAME}` (dotted paths reach into maps).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Stages by id (letters, digits, `_` and `-`).
    pub stages: Map<String, Value>,
    /// Where instances run: `local` (threads of this process, the default) or `slurm` (one
    /// sbatch job array per stage's ready instances). `idat-pipe run --executor` wins.
    #[serde(default)]
    pub executor: Option<ExecutorKind>,
    /// Settings of the Slurm executor (read only when it is used).
    #[serde(default)]
    pub slurm: Option<SlurmConfig>,
}

/// Which executor runs the instances.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Threads of this process, within `--jobs` CPU slots and `--gpus` GPUs.
    #[default]
    Local,
    /// Slurm: `sbatch` job arrays running `idat-pipe exec-stage`, watched with `squeue`.
    Slurm,
}

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

/// The `slurm:` section of a pipeline file: how jobs are submitted.
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

/// One stage (the value of `stages.ID`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Stage kind, e.g. `train/idat`.
    pub uses: String,
    /// The kind's parameters; values may be references `${...}`.
    #[serde(default, rename = "with")]
    pub with: Value,
    /// Stage ids whose outputs this stage reads.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Axis name -> list of values (or a `${params.X}` reference to a list). One instance per cell.
    #[serde(default)]
    pub matrix: Map<String, Value>,
    /// What one instance needs from the machine.
    #[serde(default)]
    pub resources: Resources,
}

/// Resources of one instance; the local executor schedules on `cpus` and `gpus`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU slots (counted against `--jobs`).
    #[serde(default = "one")]
    pub cpus: u32,
    /// GPUs (counted against `--gpus`).
    #[serde(default)]
    pub gpus: u32,
    /// Memory, e.g. `8G` (used by the Slurm executor).
    #[serde(default)]
    pub mem: Option<String>,
    /// Time limit, e.g. `2h` or `30m` (used by the Slurm executor).
    #[serde(default)]
    pub time: Option<String>,
}

fn one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1,
            gpus: 0,
            mem: None,
            time: None,
        }
    }
}
