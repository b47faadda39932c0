//! JSON Schemas generated (schemars) from the DSL types and the registered kinds.
use super::model::{Pipeline, StageSpec};
use crate::stages::Registry;
use schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

/// The `pattern` of every sha256 field of a kind's params (`#[schemars(extend("pattern" =
/// SHA256_PATTERN))]`): 64 hex digits, either case. It is also the marker by which loading
/// lower-cases the value ([`crate::config::load`]), so the case of a digest never changes a
/// cache key.
pub const SHA256_PATTERN: &str = "^[0-9a-fA-F]{64}$";

fn generator() -> SchemaGenerator {
    SchemaGenerator::new(SchemaSettings::draft2020_12())
}

fn schema_of<T: JsonSchema>() -> Value {
    let mut s = generator().into_root_schema_for::<T>().to_value();
    super::types::bound_integers(&mut s);
    s
}

/// Schema of the pipeline file without per-kind `with:` checks (stages are free maps).
pub fn top_level() -> Value {
    schema_of::<Pipeline>()
}

/// Schema of one stage's common fields (`with:` is any value).
pub fn stage_common() -> Value {
    schema_of::<StageSpec>()
}

/// Schema of one kind's `with:` params (self-contained, with its own `$defs`).
pub fn kind_params(registry: &Registry, kind: &str) -> Option<Value> {
    let k = registry.get(kind)?;
    let mut g = generator();
    let mut s = k.params_schema(&mut g).to_value();
    let defs = g.take_definitions(true);
    if let Value::Object(m) = &mut s {
        if !defs.is_empty() {
            m.insert("$defs".into(), Value::Object(defs));
        }
    }
    super::types::bound_integers(&mut s);
    Some(s)
}

/// Schema of one executor's settings (self-contained, with its own `$defs`).
pub fn executor_settings(registry: &Registry, name: &str) -> Option<Value> {
    let e = registry.executor(name)?;
    let mut g = generator();
    let mut s = e.settings_schema(&mut g).to_value();
    let defs = g.take_definitions(true);
    if let Value::Object(m) = &mut s {
        if !defs.is_empty() {
            m.insert("$defs".into(), Value::Object(defs));
        }
    }
    super::types::bound_integers(&mut s);
    Some(s)
}

/// `executor:` in the editor schema: a registered name, or `{uses: NAME, with: SETTINGS}`
/// with one variant per executor; and the `slurm:` section as the Slurm executor's settings.
fn executor_schemas(registry: &Registry, g: &mut SchemaGenerator, root: &mut Value) {
    let names: Vec<&str> = registry.executor_names().collect();
    let mut variants = vec![json!({
        "type": "string",
        "enum": names,
        "description": "An executor by name, with its default settings (for `slurm`, the \
                        `slurm:` section's)"
    })];
    for e in registry.executors() {
        let settings = e.settings_schema(g).to_value();
        if e.name() == "slurm" {
            root["properties"]["slurm"] = json!({
                "anyOf": [settings.clone(), {"type": "null"}],
                "description": "Settings of the `slurm` executor beside `executor: slurm` \
                                (the same as `executor: {uses: slurm, with: ...}`)"
            });
        }
        variants.push(json!({
            "type": "object",
            "title": e.name(),
            "description": e.summary(),
            "properties": {
                "uses": {"const": e.name(), "description": e.summary()},
                "with": settings,
            },
            "required": ["uses"],
            "additionalProperties": false,
        }));
    }
    let desc = root["properties"]["executor"]["description"].clone();
    root["properties"]["executor"] = json!({ "anyOf": variants, "description": desc });
}

/// Let each top-level `with:` field also be a `${...}` reference (editors would
/// otherwise flag `lr: ${params.lr}`; `validate` type-checks after resolving).
fn allow_references(params: &mut Value) {
    if let Some(props) = params.get_mut("properties").and_then(Value::as_object_mut) {
        for (_, p) in props.iter_mut() {
            let desc = p.as_object_mut().and_then(|o| o.remove("description"));
            let mut wrapped = json!({"anyOf": [p.take(), {"$ref": "#/$defs/Reference"}]});
            if let Some(d) = desc {
                wrapped["description"] = d;
            }
            *p = wrapped;
        }
    }
}

/// The editor schema printed by `idat-pipe schema`: `stages.*` is a `oneOf` with one
/// variant per registered kind (`uses: {const: NAME}`, `with: <params schema>`).
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut g = generator();
    let mut root = g.root_schema_for::<Pipeline>().to_value();
    let common = g.subschema_for::<StageSpec>().to_value();
    let mut variants = Vec::new();
    for k in registry.iter() {
        let mut params = k.params_schema(&mut g).to_value();
        if let Some(r) = params.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default().to_string();
            if let Some(def) = g.definitions_mut().get_mut(&name) {
                allow_references(def);
            }
        } else {
            allow_references(&mut params);
        }
        let mut v = common.clone();
        // `common` is a $ref to the StageSpec definition: inline a copy and specialise it.
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default().to_string();
            v = g.definitions().get(&name).cloned().unwrap_or(v);
        }
        v["title"] = json!(k.name());
        v["description"] = json!(k.summary());
        v["properties"]["uses"] = json!({"const": k.name(), "description": k.summary()});
        v["properties"]["with"] = params;
        variants.push(v);
    }
    let stage_schema = if variants.is_empty() {
        common
    } else {
        json!({ "oneOf": variants })
    };
    root["properties"]["stages"]["additionalProperties"] = stage_schema;
    executor_schemas(registry, &mut g, &mut root);
    root["properties"]["stages"]["propertyNames"] = json!({"pattern": "^[A-Za-z0-9_-]+$"});
    let defs = g.take_definitions(true);
    if !defs.is_empty() {
        if !root["$defs"].is_object() {
            root["$defs"] = json!({});
        }
        for (k, v) in defs {
            root["$defs"][k] = v;
        }
    }
    root["$defs"]["Reference"] = json!({
        "type": "string",
        "pattern": "^\\$\\{[^}]+\\}$",
        "description": "A reference: ${params.NAME}, ${matrix.AXIS}, ${stages.ID.outputs[.FILE]}"
    });
    root["title"] = json!("idat-pipe pipeline");
    super::types::bound_integers(&mut root);
    root
}
