//! Load a pipeline: parse with positions, apply overrides, check against the schema and
//! the semantic rules (all errors at once: `checks.rs`, `explain.rs`), expand matrices to
//! instances (`matrix.rs`).
use super::checks::{check_stage, check_stray_refs, find_cycle, hinted};
pub use super::diagnostic::Diagnostic;
use super::diagnostic::{dotted, Ctx};
use super::explain::check_schema;
use super::matrix::{expand_all, Axis};
use super::model::{Pipeline, Resources, StageSpec, DSL_VERSION};
use super::overrides::{apply, parse_override};
use super::params::Params;
use super::schema;
use super::types;
use super::yaml::{parse, Located};
use crate::stages::Registry;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Most instances one pipeline may expand to (a bad matrix must not exhaust memory).
pub const MAX_INSTANCES: usize = 1_000_000;

/// One stage instance: a stage and one cell of its matrix.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Readable id: `tune[task=dtd,seed=1]`, or the stage id without a matrix.
    pub id: String,
    /// The stage id (its key under `stages:`), e.g. `tune`.
    pub stage: String,
    /// The stage's `uses:` name: the kind that runs it, e.g. `train/idat`.
    pub uses: String,
    /// Matrix cell, axes in declared order.
    pub cell: Vec<(String, Value)>,
    /// `with:` with params and matrix resolved, in [`Form::Source`]: `${stages...}`
    /// references kept as text and a literal `${` still written `$${` (run time resolves
    /// both: `exec::stage::resolve_outputs`).
    pub with: Value,
    /// The stage's `resources:` (CPU slots, GPUs, memory, time limit), the same for every cell.
    pub resources: Resources,
}

impl Instance {
    /// The cell as a map (for [`crate::stages::Input`]).
    pub fn cell_map(&self) -> BTreeMap<String, Value> {
        self.cell.iter().cloned().collect()
    }
}

/// A valid, expanded pipeline.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Path of the pipeline file ([`load`]), or the label [`load_str`] was given.
    pub file: PathBuf,
    /// The pipeline's `name:` (used in run ids and reports).
    pub name: String,
    /// The document after overrides (written to the run record).
    pub resolved: Value,
    /// The `--set` texts as given, in order (the run record writes them to `overrides.txt`).
    pub overrides: Vec<String>,
    /// Stages in file order.
    pub stages: Vec<(String, StageSpec)>,
    /// Every stage instance: stages in file order, each stage's matrix cells with the last
    /// axis varying fastest.
    pub instances: Vec<Instance>,
    /// The executor `executor:` names (None: not set; `run --executor` decides, else
    /// `local`).
    pub executor: Option<String>,
    /// The executor settings the file gives, by executor name, with where they are
    /// (`executor.with`, or `slurm` for the `slurm:` section); checked against each
    /// executor's schema ([`crate::exec::plugin`]).
    pub executor_settings: super::ExecutorSettings,
}

/// Read and check a pipeline file.
pub fn load(
    path: &Path,
    overrides: &[String],
    registry: &Registry,
) -> Result<Loaded, Vec<Diagnostic>> {
    let label = path.display().to_string();
    let diag = |m: String| {
        vec![Diagnostic {
            file: label.clone(),
            pos: None,
            path: String::new(),
            message: m,
        }]
    };
    let meta = std::fs::metadata(path).map_err(|e| diag(format!("cannot read: {e}")))?;
    if meta.len() > super::yaml::MAX_FILE_BYTES as u64 {
        return Err(diag(format!(
            "file is {} bytes; pipeline files are limited to {} bytes",
            meta.len(),
            super::yaml::MAX_FILE_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| diag(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| diag(format!("not UTF-8 text: {e}")))?;
    let mut l = load_str(&label, &text, overrides, registry)?;
    l.file = path.to_path_buf();
    Ok(l)
}

/// Check a pipeline given as text (`file` labels the messages).
pub fn load_str(
    file: &str,
    text: &str,
    overrides: &[String],
    registry: &Registry,
) -> Result<Loaded, Vec<Diagnostic>> {
    let mut doc = parse(text).map_err(|e| {
        vec![Diagnostic {
            file: file.to_string(),
            pos: e.pos,
            path: String::new(),
            message: format!("invalid YAML: {}", e.message),
        }]
    })?;
    let top_schema = schema::top_level();
    let sets = apply_overrides(&mut doc, overrides, &top_schema)?;
    types::integral_floats_to_integers(&top_schema, &mut doc.value);
    let mut cx = Ctx {
        file,
        doc: &doc,
        diags: Vec::new(),
        sets,
    };
    let Some(top) = read_top(&mut cx, &top_schema) else {
        return Err(cx.diags);
    };
    let params_value = Value::Object(top.params.clone());
    let params = Params::new(&params_value);
    for (p, m) in params.check() {
        let m = hinted(&p, dotted(&cx.doc.value, &p), m);
        cx.err(p, m);
    }
    let mut stages: Vec<(String, StageSpec)> = Vec::new();
    let mut axes_of: HashMap<String, Vec<Axis>> = HashMap::new();
    for (id, v) in &top.stages {
        if let Some((spec, axes)) = check_stage(&mut cx, registry, &top, &params, id, v) {
            axes_of.insert(id.clone(), axes);
            stages.push((id.clone(), spec));
        }
    }
    let (executor, executor_settings) =
        super::executor::check_executor(&mut cx, registry, &top, &stages);
    check_stray_refs(&mut cx);
    if let Some(cycle) = find_cycle(&stages) {
        let first = cycle[0].clone();
        cx.err(
            format!("stages.{first}.needs"),
            format!("cycle: {}", cycle.join(" -> ")),
        );
    }
    if !cx.diags.is_empty() {
        let mut d = cx.diags;
        d.sort_by_key(|d| d.pos.map(|p| (p.line, p.col)));
        return Err(d);
    }
    let instances = expand_all(&mut cx, registry, &stages, &axes_of, &params)?;
    Ok(Loaded {
        file: PathBuf::from(file),
        name: top.name,
        resolved: doc.value.clone(),
        overrides: overrides.to_vec(),
        stages,
        instances,
        executor,
        executor_settings,
    })
}

/// Apply the `--set` overrides to the document; returns (dotted path made, `--set` text) for
/// each, or the errors of those that do not apply (reported at `--set`).
fn apply_overrides(
    doc: &mut Located,
    overrides: &[String],
    top_schema: &Value,
) -> Result<Vec<(String, String)>, Vec<Diagnostic>> {
    let top_fields: Vec<&str> = top_schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut diags = Vec::new();
    let mut sets = Vec::new();
    for o in overrides {
        match parse_override(o).and_then(|ov| apply(&mut doc.value, &ov, &top_fields)) {
            Ok(made) => {
                // The file's positions under what the override replaced no longer apply.
                doc.forget(&made);
                sets.push((made, o.clone()));
            }
            Err(m) => diags.push(Diagnostic {
                file: "--set".into(),
                pos: None,
                path: o
                    .split('=')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches('+')
                    .to_string(),
                message: m,
            }),
        }
    }
    if diags.is_empty() {
        Ok(sets)
    } else {
        Err(diags)
    }
}

/// The top level checked against its schema and read, with its `version` checked.
fn read_top(cx: &mut Ctx, top_schema: &Value) -> Option<Pipeline> {
    if !check_schema(cx, top_schema, &cx.doc.value, "") {
        return None;
    }
    let top: Pipeline = match serde_json::from_value(cx.doc.value.clone()) {
        Ok(p) => p,
        Err(e) => {
            cx.err("", e.to_string());
            return None;
        }
    };
    if top.version != DSL_VERSION {
        cx.err(
            "version",
            format!(
                "unsupported version {}: this build reads version {DSL_VERSION}",
                top.version
            ),
        );
    }
    Some(top)
}
