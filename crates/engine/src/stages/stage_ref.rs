//! [`StageRef`]: a kind's `with:` field that names an upstream stage (`data: decode`).
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The schema `format` that marks a string as the id of a stage in `needs`.
pub const STAGE_REF_FORMAT: &str = "stage-ref";

/// The id of an upstream stage, as a kind's `with:` names it (`data: decode`,
/// `model: pretrain_student`). Its schema is a string marked `format: "stage-ref"`, so
/// `validate` checks every such field against the stage's `needs` and reports a misspelt or
/// missing upstream at its file:line:column. Serialises as the plain string (cache keys are
/// unchanged); reads as `&str` through `Deref`, e.g. for [`super::StageContext::input`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageRef(pub String);

impl std::ops::Deref for StageRef {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StageRef {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl JsonSchema for StageRef {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "StageRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": STAGE_REF_FORMAT })
    }
}
