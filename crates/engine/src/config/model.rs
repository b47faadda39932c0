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
    /// Where instances run: an executor's name (`local`, the default: threads of this
    /// process; `slurm`: one sbatch job array per stage's ready instances) or `{uses: NAME,
    /// with: SETTINGS}`. `idat-pipe run --executor NAME` wins.
    #[serde(default)]
    pub executor: Option<ExecutorSpec>,
    /// Settings of the `slurm` executor, the spelling beside `executor: slurm` (the same as
    /// `executor: {uses: slurm, with: ...}`; read only when Slurm runs the pipeline).
    #[serde(default)]
    pub slurm: Option<Value>,
}

/// Which executor runs the instances, as `executor:` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum ExecutorSpec {
    /// A registered executor's name (`local`, `slurm`), with its default settings (for
    /// `slurm`, the `slurm:` section's).
    Name(String),
    /// `{uses: NAME, with: SETTINGS}`: an executor and its settings.
    Use(ExecutorUse),
}

/// `executor: {uses: NAME, with: SETTINGS}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecutorUse {
    /// The executor's name, e.g. `slurm`.
    pub uses: String,
    /// Its settings (checked against the executor's schema); its defaults when absent.
    #[serde(default)]
    pub with: Option<Value>,
}

impl ExecutorSpec {
    /// The executor's name.
    pub fn name(&self) -> &str {
        match self {
            ExecutorSpec::Name(n) => n,
            ExecutorSpec::Use(u) => &u.uses,
        }
    }
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

/// Resources of one instance; the local executor schedules on `cpus`, `gpus` and `gpu_mem`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU slots (counted against `--jobs`).
    #[serde(default = "one")]
    pub cpus: u32,
    /// GPUs: the local executor gives the instance this many cards of its own (of the
    /// visible ones, `--gpus`); 0 runs it on the CPU, whatever `--device` says.
    #[serde(default)]
    pub gpus: u32,
    /// GPU memory the instance uses on each of its cards, e.g. `6G` (`mem`'s syntax): the
    /// local executor puts several instances on one card while their `gpu_mem` fits the
    /// card's memory, and checks the card's free memory when one starts. Without it an
    /// instance takes its cards alone (unless `--per-gpu`).
    #[serde(default)]
    pub gpu_mem: Option<String>,
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
            gpu_mem: None,
            mem: None,
            time: None,
        }
    }
}
