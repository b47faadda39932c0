//! Pipeline files: YAML with positions, the DSL types, overrides, references,
//! schema and semantic checks, matrix expansion. See docs/pipeline-dsl.md.
mod load;
pub mod model;
pub mod overrides;
pub mod params;
pub mod paths;
pub mod refs;
pub mod schema;
pub mod types;
pub mod yaml;

pub use load::{instance_id, load, load_str, Diagnostic, Instance, Loaded, MAX_INSTANCES};
pub use model::{Pipeline, Resources, StageSpec};
