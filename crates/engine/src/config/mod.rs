//! Pipeline files: YAML with positions, the DSL types, overrides, references,
//! schema and semantic checks, matrix expansion. See docs/pipeline-dsl.md.
mod checks;
mod diagnostic;
mod executor;
mod explain;
mod load;
mod matrix;
pub mod model;
pub mod overrides;
pub mod params;
pub mod paths;
pub mod refs;
pub mod resources;
pub mod schema;
pub mod types;
pub mod yaml;

pub use executor::ExecutorSettings;
pub use load::{load, load_str, Diagnostic, Instance, Loaded, MAX_INSTANCES};
pub use matrix::instance_id;
pub use model::{Pipeline, Resources, StageSpec};
