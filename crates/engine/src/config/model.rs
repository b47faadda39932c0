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
