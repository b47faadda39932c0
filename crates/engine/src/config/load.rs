//! Load a pipeline: parse with positions, apply overrides, check against the
//! schema and the semantic rules (all errors at once), expand matrices to instances.
use super::model::{
    ExecutorKind, GpuRequest, Pipeline, Resources, SlurmConfig, StageSpec, DSL_VERSION,
};
use super::overrides::{apply, parse_override};
use super::params::{Params, REPORTED};
use super::paths;
use super::refs::{self, escape_value, substitute, substitute_in, Form, Ref};
use super::schema;
use super::types;
use super::yaml::{parse, Located, Pos};
use crate::stages::{DynStage, Registry, STAGE_REF_FORMAT};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Most instances one pipeline may expand to (a bad matrix must not exhaust memory).
pub const MAX_INSTANCES: usize = 1_000_000;

/// One error in a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The pipeline file as given (its path as displayed), or `--set` for an error in an override.
    pub file: String,
    /// 1-based line and column of the offending node; `None` when the error has no place in
    /// the file (e.g. an unreadable or too large file, an error in a `--set` override).
    pub pos: Option<Pos>,
    /// Dotted YAML path, e.g. `stages.tune.with.lr` (empty for the whole file).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: ", self.file, p.line, p.col)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "at `{}`: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

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
    /// `executor:` (None: not set; `run --executor` decides, else local).
    pub executor: Option<ExecutorKind>,
    /// The `slurm:` section (defaults when absent).
    pub slurm: SlurmConfig,
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

struct Ctx<'a> {
    file: &'a str,
    doc: &'a Located,
    diags: Vec<Diagnostic>,
    /// (dotted path an override created or replaced, the `--set` text): an error under one
    /// of them is the override's, reported at `--set`, not at a line of the file.
    sets: Vec<(String, String)>,
}

impl Ctx<'_> {
    /// An error at the node at `path`.
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), message.into(), false);
    }

    /// An error about the key of the mapping entry at `path` (an unknown field).
    fn err_key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), message.into(), true);
    }

    /// The `--set` text of the override that made or replaced `path` (or an ancestor).
    fn set_of(&self, path: &str) -> Option<String> {
        self.sets
            .iter()
            .rev()
            .find(|(p, _)| {
                p.is_empty()
                    || path == p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            .map(|(_, raw)| raw.clone())
    }

    /// An error at `path` of a stage's `with:` (`rel` inside it; `raw` is the `with:` as
    /// written): when the value there came through a `${params.P}` that a `--set` changed,
    /// the error is the override's.
    fn err_in_with(
        &mut self,
        path: String,
        rel: &[String],
        raw: &Value,
        message: String,
        at_key: bool,
    ) {
        if let Some(p) = param_behind(raw, rel) {
            if let Some(set) = self.set_of(&p) {
                self.diags.push(Diagnostic {
                    file: "--set".into(),
                    pos: None,
                    path,
                    message: format!("{message} (at `{p}`, from `--set {set}`)"),
                });
                return;
            }
        }
        self.push(path, message, at_key);
    }

    fn push(&mut self, path: String, message: String, at_key: bool) {
        let d = match self.set_of(&path) {
            Some(raw) => Diagnostic {
                file: "--set".into(),
                pos: None,
                path,
                message: format!("{message} (from `--set {raw}`)"),
            },
            None => Diagnostic {
                file: self.file.to_string(),
                pos: Some(if at_key {
                    self.doc.key_pos(&path)
                } else {
                    self.doc.pos(&path)
                }),
                path,
                message,
            },
        };
        self.diags.push(d);
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    }
}

/// The param a `with:` field at `rel` comes from, when the `with:` as written (`raw`) has a
/// whole-string `${params.P}` on the way there: `params.P` and the rest of `rel`.
fn param_behind(raw: &Value, rel: &[String]) -> Option<String> {
    let mut v = raw;
    for (i, seg) in rel.iter().enumerate() {
        if let Some(p) = v
            .as_str()
            .and_then(|t| t.strip_prefix("${params."))
            .and_then(|t| t.strip_suffix('}'))
            .filter(|t| !t.contains('$'))
        {
            return Some(
                std::iter::once(format!("params.{p}"))
                    .chain(rel[i..].iter().cloned())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
        v = value_at(v, std::slice::from_ref(seg))?;
    }
    let p = v.as_str()?.strip_prefix("${params.")?.strip_suffix('}')?;
    (!p.contains('$')).then(|| format!("params.{p}"))
}

/// Validate `value` (found at `base`) against `schema`; every error is recorded. True if valid.
/// `raw`: the `with:` as written, when `value` is a stage's `with:` after substitution.
fn check_schema(cx: &mut Ctx, schema: &Value, value: &Value, base: &str) -> bool {
    check_schema_with(cx, schema, value, base, None)
}

fn check_schema_with(
    cx: &mut Ctx,
    schema: &Value,
    value: &Value,
    base: &str,
    raw: Option<&Value>,
) -> bool {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            cx.err(base, format!("internal error: bad generated schema: {e}"));
            return false;
        }
    };
    let mut ok = true;
    for e in validator.iter_errors(value) {
        ok = false;
        for x in explain(schema, value, &e, None) {
            let path = join(base, &x.path);
            match raw {
                Some(raw) => {
                    let rel: Vec<String> = x
                        .path
                        .split('.')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    cx.err_in_with(path, &rel, raw, x.message, x.at_key);
                }
                None => cx.push(path, x.message, x.at_key),
            }
        }
    }
    ok
}

/// One schema error in the user's terms.
struct Explained {
    /// Dotted path inside the checked value.
    path: String,
    message: String,
    /// The error is about the key at `path` (an unknown field), not its value.
    at_key: bool,
}

fn segments(ptr: &str) -> Vec<String> {
    ptr.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// The value at `segs` under `v`.
fn value_at<'v>(v: &'v Value, segs: &[String]) -> Option<&'v Value> {
    segs.iter().try_fold(v, |v, s| match v {
        Value::Object(m) => m.get(s),
        Value::Array(a) => s.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The value at dotted path `p` under `v` (`""`: `v` itself).
fn dotted<'v>(v: &'v Value, p: &str) -> Option<&'v Value> {
    let segs: Vec<String> = p
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    value_at(v, &segs)
}

/// `s` with its `$ref` followed and, while it is a `oneOf`/`anyOf` of which exactly one
/// branch describes `v` (the variant its tag selects, or the one its type admits), that branch.
fn settle<'s>(root: &'s Value, s: &'s Value, v: &Value) -> &'s Value {
    let mut s = paths::deref(root, s);
    loop {
        let branches = s
            .get("oneOf")
            .or_else(|| s.get("anyOf"))
            .and_then(Value::as_array);
        let Some(branches) = branches else { return s };
        let mut selected = branches
            .iter()
            .filter(|b| paths::branch_selects(root, b, v));
        match (selected.next(), selected.next()) {
            (Some(b), None) => s = paths::deref(root, b),
            _ => return s,
        }
    }
}

/// The schema written for the value at `segs` of `value` (tagged variants on the way
/// followed; the last one as written, not settled).
fn schema_at<'s>(root: &'s Value, value: &Value, segs: &[String]) -> Option<&'s Value> {
    let mut s = root;
    let mut v = value;
    for seg in segs {
        let here = settle(root, s, v);
        s = match v {
            Value::Object(_) => here
                .get("properties")
                .and_then(|p| p.get(seg))
                .or_else(|| here.get("additionalProperties").filter(|a| a.is_object())),
            Value::Array(_) => here.get("items").filter(|i| i.is_object()),
            _ => None,
        }?;
        v = value_at(v, std::slice::from_ref(seg))?;
    }
    Some(s)
}

/// The YAML word for a value's type (`map`, `list`, ...), for messages.
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// A schema error of `value` (checked against `root`) as messages that name the field and
/// what is expected. `oneOf`/`anyOf` failures report the errors of the branch the value
/// selects (its tag, e.g. `kind: local`, or its type); an unknown or missing tag is named
/// with the tags there are.
///
/// `branch`: the branch schema (and its path) whose errors these are, when called for a
/// `oneOf`/`anyOf` branch (its own `oneOf` is the one a nested error at that path refers to).
fn explain(
    root: &Value,
    value: &Value,
    e: &jsonschema::ValidationError,
    branch: Option<(&str, &Value)>,
) -> Vec<Explained> {
    use jsonschema::error::ValidationErrorKind as K;
    let segs = segments(&e.instance_path().to_string());
    let path = segs.join(".");
    let node = value_at(value, &segs).unwrap_or(&Value::Null);
    let written = match branch {
        Some((p, b)) if p == path => Some(b),
        _ => schema_at(root, value, &segs),
    };
    let here = written.map(|w| settle(root, w, node));
    let one = |message: String| {
        vec![Explained {
            path: path.clone(),
            message,
            at_key: false,
        }]
    };
    match e.kind() {
        K::AdditionalProperties { unexpected } => unknown_fields(here, &path, unexpected),
        K::Required { property } => one(format!(
            "missing field `{}`",
            property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string())
        )),
        K::Type { .. } if node.is_null() => one(null_message(here, e)),
        K::Type { .. } => one(here
            .and_then(|h| types::type_message(h, node))
            .unwrap_or_else(|| e.to_string())),
        K::Minimum { .. }
        | K::Maximum { .. }
        | K::ExclusiveMinimum { .. }
        | K::ExclusiveMaximum { .. } => one(here
            .and_then(|h| types::range_message(h, node))
            .unwrap_or_else(|| e.to_string())),
        K::OneOfNotValid { context } | K::AnyOf { context } => {
            let raw = paths::deref(root, written.unwrap_or(root));
            let branches = raw
                .get("oneOf")
                .or_else(|| raw.get("anyOf"))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            explain_branches(root, value, node, &path, branches, context)
                .unwrap_or_else(|| one(e.to_string()))
        }
        K::Pattern { pattern } if pattern == schema::SHA256_PATTERN => {
            one(not_a_sha256(node.as_str().unwrap_or_default()))
        }
        _ => one(e.to_string()),
    }
}

/// `unknown field `k`` for each unexpected key of the map at `path`, with the fields its
/// schema (`here`) has and the closest one.
fn unknown_fields(here: Option<&Value>, path: &str, unexpected: &[String]) -> Vec<Explained> {
    let expected: Vec<&str> = here
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    unexpected
        .iter()
        .map(|k| {
            let mut message = format!("unknown field `{k}`");
            if !expected.is_empty() {
                message.push_str(&format!(" (expected: {})", expected.join(", ")));
                if let Some(m) = super::overrides::did_you_mean(k, expected.iter().copied()) {
                    message.push_str(&format!("; did you mean `{m}`?"));
                }
            }
            Explained {
                path: join(path, k),
                message,
                at_key: true,
            }
        })
        .collect()
}

/// A null where the schema (`here`) wants another type: YAML's `~` and empty values.
fn null_message(here: Option<&Value>, e: &jsonschema::ValidationError) -> String {
    let is_path =
        here.and_then(|s| s.get("format")).and_then(Value::as_str) == Some(paths::PATH_FORMAT);
    if is_path {
        return "expected a path string, got null: YAML reads `~` alone (and an empty value) \
                as null; write \"~\" in quotes for the home folder"
            .to_string();
    }
    let want = here
        .and_then(types::expected)
        .unwrap_or_else(|| e.to_string());
    format!("expected {want}, got null: YAML reads `~` alone (and an empty value) as null")
}

/// The errors of a failed `oneOf`/`anyOf` at `path`: those of the one branch the value
/// selects, else its untaken tag, else the types the branches admit. None: nothing better
/// than the validator's own message.
fn explain_branches(
    root: &Value,
    value: &Value,
    node: &Value,
    path: &str,
    branches: &[Value],
    context: &[Vec<jsonschema::ValidationError>],
) -> Option<Vec<Explained>> {
    let picked: Vec<usize> = (0..branches.len())
        .filter(|&i| paths::branch_selects(root, &branches[i], node))
        .collect();
    if let [i] = picked[..] {
        let mut out = Vec::new();
        for be in context.get(i).map(Vec::as_slice).unwrap_or_default() {
            out.extend(explain(root, value, be, Some((path, &branches[i]))));
        }
        if !out.is_empty() {
            return Some(out);
        }
    }
    if !picked.is_empty() {
        return None;
    }
    if let Some(m) = untaken_tag(root, branches, node, path) {
        return Some(vec![m]);
    }
    let types: Vec<String> = branches
        .iter()
        .filter_map(|b| paths::deref(root, b).get("type"))
        .map(|t| match t {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        })
        .collect();
    if types.len() != branches.len() || types.is_empty() {
        return None;
    }
    let mut m = format!(
        "expected {}, got {} {}",
        types.join(" or "),
        type_name(node),
        node
    );
    if node.is_null() {
        m.push_str(" (YAML reads `~` alone and an empty value as null)");
    }
    Some(vec![Explained {
        path: path.to_string(),
        message: m,
        at_key: false,
    }])
}

/// Why `got` is not a sha256.
fn not_a_sha256(got: &str) -> String {
    format!(
        "`{got}` is not a sha256: expected 64 hex digits (0-9, a-f; either case), got {} \
         characters{}",
        got.chars().count(),
        if got.chars().all(|c| c.is_ascii_hexdigit()) {
            ""
        } else {
            " with non-hex ones"
        }
    )
}

/// Lower-case, in place, every string that `schema` marks as a sha256
/// ([`schema::SHA256_PATTERN`]): the one place a digest's case is settled, so the stage, the
/// plan and the cache key all see the same text (`ABC…` and `abc…` are one key).
fn lower_case_digests(schema: &Value, v: &mut Value) {
    let is_digest =
        |s: &Value| s.get("pattern").and_then(Value::as_str) == Some(schema::SHA256_PATTERN);
    paths::for_each_marked_string(schema, v, &is_digest, &mut |_, t| {
        if !t.starts_with("${") {
            t.make_ascii_lowercase();
        }
    });
}

/// For a map that no tagged variant selects: its tag is missing or not one of the variants'
/// (`kind: lcoal`), named with the tags there are.
fn untaken_tag(root: &Value, branches: &[Value], node: &Value, path: &str) -> Option<Explained> {
    let obj = node.as_object()?;
    let mut tag: Option<&str> = None;
    let mut tags: Vec<&Value> = Vec::new();
    for b in branches {
        let props = paths::deref(root, b).get("properties")?.as_object()?;
        let (k, c) = props
            .iter()
            .find_map(|(k, p)| p.get("const").map(|c| (k.as_str(), c)))?;
        if tag.is_some_and(|t| t != k) {
            return None;
        }
        tag = Some(k);
        tags.push(c);
    }
    let tag = tag?;
    let names: Vec<String> = tags
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| t.to_string())
        })
        .collect();
    let list = names.join(", ");
    Some(match obj.get(tag) {
        None => Explained {
            path: path.to_string(),
            message: format!("missing field `{tag}` (one of {list})"),
            at_key: false,
        },
        Some(got) => {
            let shown = got
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| got.to_string());
            let mut message = format!("{tag}: `{shown}` is not one of {list}");
            if let Some(m) = got
                .as_str()
                .and_then(|g| super::overrides::did_you_mean(g, names.iter().map(String::as_str)))
            {
                message.push_str(&format!("; did you mean `{m}`?"));
            }
            Explained {
                path: join(path, tag),
                message,
                at_key: false,
            }
        }
    })
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
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
    check_executor(&mut cx, &top, &stages);
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
        executor: top.executor,
        slurm: top.slurm.unwrap_or_default(),
    })
}

/// Resources Slurm cannot be asked for: with `executor: slurm` and `slurm.gpu_request:
/// none`, a stage needing GPUs.
fn check_executor(cx: &mut Ctx, top: &Pipeline, stages: &[(String, StageSpec)]) {
    let none = top
        .slurm
        .as_ref()
        .is_some_and(|s| s.gpu_request == GpuRequest::None);
    if top.executor != Some(ExecutorKind::Slurm) || !none {
        return;
    }
    for (id, spec) in stages.iter().filter(|(_, s)| s.resources.gpus > 0) {
        cx.err(
            format!("stages.{id}.resources.gpus"),
            format!(
                "needs {} GPU(s) but `slurm.gpu_request` is `none`; set it to `gres` or `gpus`",
                spec.resources.gpus
            ),
        );
    }
}

/// One matrix axis: its name and its values.
type Axis = (String, Vec<Value>);

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

/// Check one stage (`stages.ID`): its id, common fields, kind, needs, matrix and `with:`.
/// None when it cannot be read far enough to expand (its errors are in `cx`).
fn check_stage(
    cx: &mut Ctx,
    registry: &Registry,
    top: &Pipeline,
    params: &Params,
    id: &str,
    v: &Value,
) -> Option<(StageSpec, Vec<Axis>)> {
    let base = format!("stages.{id}");
    if !valid_id(id) {
        cx.err(
            &base,
            format!("stage id `{id}`: use only letters, digits, `_` and `-`"),
        );
    }
    let common = schema::stage_common();
    let mut v = v.clone();
    types::integral_floats_to_integers(&common, &mut v);
    if !check_schema(cx, &common, &v, &base) {
        return None;
    }
    let spec: StageSpec = match serde_json::from_value(v) {
        Ok(s) => s,
        Err(e) => {
            cx.err(&base, e.to_string());
            return None;
        }
    };
    for (field, e) in crate::exec::slurm::resources::check(&spec.resources) {
        cx.err(format!("{base}.resources.{field}"), e);
    }
    let kind = registry.get(&spec.uses).cloned();
    if kind.is_none() {
        let known: Vec<&str> = registry.names().collect();
        cx.err(
            format!("{base}.uses"),
            format!(
                "unknown stage kind `{}` (known kinds: {})",
                spec.uses,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
    check_needs(cx, top, id, &spec);
    let axes = check_matrix(cx, &base, &spec, params);
    let cells: usize = axes.iter().map(|(_, v)| v.len()).product();
    if cells > MAX_INSTANCES {
        cx.err(
            format!("{base}.matrix"),
            format!("matrix has {cells} cells; at most {MAX_INSTANCES} are allowed"),
        );
        return None;
    }
    if let Some(kind) = kind {
        check_with(
            cx,
            registry,
            kind.as_ref(),
            top,
            &base,
            &spec,
            params,
            &axes,
        );
    }
    Some((spec, axes))
}

/// Every id in `needs` is another stage of the pipeline, listed once.
fn check_needs(cx: &mut Ctx, top: &Pipeline, id: &str, spec: &StageSpec) {
    let base = format!("stages.{id}");
    for (i, n) in spec.needs.iter().enumerate() {
        if n == id {
            cx.err(
                format!("{base}.needs.{i}"),
                format!("stage `{id}` needs itself"),
            );
        } else if !top.stages.contains_key(n) {
            let ids: Vec<&str> = top.stages.keys().map(String::as_str).collect();
            cx.err(
                format!("{base}.needs.{i}"),
                format!("unknown stage `{n}` in needs (stages: {})", ids.join(", ")),
            );
        }
    }
    if spec.needs.iter().collect::<HashSet<_>>().len() != spec.needs.len() {
        cx.err(format!("{base}.needs"), "a stage is listed twice in needs");
    }
}

/// Matrix axes: a non-empty list of distinct scalars, or a `${params.X}` reference to one.
/// The axes that are valid, in declared order.
fn check_matrix(cx: &mut Ctx, base: &str, spec: &StageSpec, params: &Params) -> Vec<Axis> {
    let mut axes = Vec::new();
    for (axis, raw) in &spec.matrix {
        let apath = format!("{base}.matrix.{axis}");
        if !valid_id(axis) {
            cx.err(
                &apath,
                format!("matrix axis `{axis}`: use only letters, digits, `_` and `-`"),
            );
            continue;
        }
        let mut not_in_axis = |r: &Ref| {
            Err(format!(
                "`{}` cannot be used in a matrix axis: only `${{params.NAME}}`",
                refs::render(r)
            ))
        };
        let (val, errs) = substitute(raw, &mut |r| match r {
            Ref::Params(p) => params.resolve(p, Form::Literal, &mut not_in_axis).map(Some),
            other => not_in_axis(other),
        });
        let had_errs = !errs.is_empty();
        report_ref_errors(cx, &apath, raw, errs);
        if !had_errs {
            if let Some(values) = check_axis_values(cx, &apath, axis, val) {
                axes.push((axis.clone(), values));
            }
        }
    }
    axes
}

/// The values of matrix axis `axis` (at `apath`), when they are a non-empty list of
/// distinct scalars.
fn check_axis_values(cx: &mut Ctx, apath: &str, axis: &str, val: Value) -> Option<Vec<Value>> {
    match val {
        Value::Array(items) if !items.is_empty() => {
            let mut seen = HashSet::new();
            let mut ok = true;
            for (i, it) in items.iter().enumerate() {
                if it.is_array() || it.is_object() {
                    cx.err(
                        format!("{apath}.{i}"),
                        "matrix values must be scalars (string, number, boolean)",
                    );
                    ok = false;
                } else if !seen.insert(it.to_string()) {
                    cx.err(
                        format!("{apath}.{i}"),
                        format!("duplicate matrix value {it}"),
                    );
                    ok = false;
                }
            }
            ok.then_some(items)
        }
        Value::Array(_) => {
            cx.err(
                apath,
                format!("matrix axis `{axis}` is empty: give at least one value"),
            );
            None
        }
        other => {
            cx.err(
                apath,
                format!("matrix axis `{axis}` must be a list, got {other}"),
            );
            None
        }
    }
}

/// References in `with:`, checked with the first matrix cell; then the kind's schema, the
/// stages its stage-reference fields name ([`check_stage_refs`]) and the kind's own check.
#[allow(clippy::too_many_arguments)]
fn check_with(
    cx: &mut Ctx,
    registry: &Registry,
    kind: &dyn DynStage,
    top: &Pipeline,
    base: &str,
    spec: &StageSpec,
    params: &Params,
    axes: &[Axis],
) {
    let wpath = format!("{base}.with");
    let first: HashMap<&str, &Value> = axes.iter().map(|(a, v)| (a.as_str(), &v[0])).collect();
    let mut other = |r: &Ref| resolve_for_check(r, &first, &spec.needs);
    let (mut checked, errs) = substitute(&spec.with, &mut |r| match r {
        Ref::Params(p) => params.resolve(p, Form::Literal, &mut other).map(Some),
        r => other(r),
    });
    if !errs.is_empty() {
        report_ref_errors(cx, &wpath, &spec.with, errs);
        return;
    }
    let Some(s) = schema::kind_params(registry, kind.name()) else {
        return;
    };
    types::integral_floats_to_integers(&s, &mut checked);
    if !check_schema_with(cx, &s, &checked, &wpath, Some(&spec.with)) {
        return;
    }
    if check_stage_refs(cx, &s, &checked, &wpath, top, spec) {
        if let Err(e) = kind.check_params(&checked) {
            cx.err(join(&wpath, &e.path), e.message);
        }
    }
}

/// Every `with:` field the kind's schema marks as a stage reference
/// ([`crate::stages::StageRef`]) names a stage in this stage's `needs`. An error names the
/// stages in `needs` (and the closest one to a misspelling). False when there were errors.
fn check_stage_refs(
    cx: &mut Ctx,
    schema: &Value,
    with: &Value,
    wpath: &str,
    top: &Pipeline,
    spec: &StageSpec,
) -> bool {
    let is_ref = |s: &Value| s.get("format").and_then(Value::as_str) == Some(STAGE_REF_FORMAT);
    let mut bad: Vec<(String, String)> = Vec::new();
    let mut with = with.clone();
    paths::for_each_marked_string(schema, &mut with, &is_ref, &mut |at, name| {
        if !spec.needs.iter().any(|n| n == name) {
            bad.push((at.to_string(), name.clone()));
        }
    });
    let needs = if spec.needs.is_empty() {
        "this stage has no `needs`".to_string()
    } else {
        format!("needs: {}", spec.needs.join(", "))
    };
    for (at, name) in &bad {
        let mut message = if top.stages.contains_key(name) {
            format!("stage `{name}` is not in this stage's `needs` ({needs}); add it to `needs`")
        } else {
            format!("`{name}` is not a stage in `needs` ({needs})")
        };
        if let Some(m) = super::overrides::did_you_mean(name, spec.needs.iter().map(String::as_str))
        {
            message.push_str(&format!("; did you mean `{m}`?"));
        }
        cx.err(join(wpath, at), message);
    }
    bad.is_empty()
}

/// Expand every stage's matrix into instances, with paths resolved and each cell checked.
fn expand_all(
    cx: &mut Ctx,
    registry: &Registry,
    stages: &[(String, StageSpec)],
    axes_of: &HashMap<String, Vec<Axis>>,
    params: &Params,
) -> Result<Vec<Instance>, Vec<Diagnostic>> {
    let bases = match paths::process_bases() {
        Ok(b) => b,
        Err(m) => {
            cx.err("", m);
            return Err(std::mem::take(&mut cx.diags));
        }
    };
    let mut instances = Vec::new();
    let mut total = 0usize;
    for (id, spec) in stages {
        let axes = &axes_of[id];
        total += axes.iter().map(|(_, v)| v.len()).product::<usize>();
        if total > MAX_INSTANCES {
            return Err(vec![Diagnostic {
                file: cx.file.into(),
                pos: Some(cx.doc.pos("stages")),
                path: "stages".into(),
                message: format!("the pipeline expands to more than {MAX_INSTANCES} instances"),
            }]);
        }
        let first = instances.len();
        expand(id, spec, axes, params, &mut instances);
        resolve_instance_paths(cx, registry, spec, &bases, &mut instances[first..]);
        if !axes.is_empty() && spec.with.to_string().contains("${matrix.") {
            check_cells(cx, registry, spec, &instances[first..]);
        }
    }
    if !cx.diags.is_empty() {
        return Err(std::mem::take(&mut cx.diags));
    }
    Ok(instances)
}

/// Lower-case each instance's sha256 fields, then apply the path rule (`config/paths.rs`) to
/// its `with:`; an error (a `~user` path) is reported once per stage at the field's position.
fn resolve_instance_paths(
    cx: &mut Ctx,
    registry: &Registry,
    spec: &StageSpec,
    (cwd, home): &(PathBuf, Option<PathBuf>),
    cells: &mut [Instance],
) {
    let Some(schema) = schema::kind_params(registry, &spec.uses) else {
        return;
    };
    for inst in cells.iter_mut() {
        lower_case_digests(&schema, &mut inst.with);
        types::integral_floats_to_integers(&schema, &mut inst.with);
    }
    for inst in cells {
        let errs = paths::resolve_paths(&schema, &mut inst.with, cwd, home.as_deref());
        if let Some((p, m)) = errs.into_iter().next() {
            let field = join(&format!("stages.{}.with", inst.stage), &p);
            let rel: Vec<String> = p.split('.').map(str::to_string).collect();
            // The hint names what to `--set`: the param the value came from, else the field.
            let set = param_behind(&spec.with, &rel).unwrap_or_else(|| field.clone());
            let m = match dotted(&inst.with, &p)
                .and_then(Value::as_str)
                .and_then(|t| refs::env_hint(&set, t))
            {
                Some(h) => format!("{m}; {h}"),
                None => m,
            };
            cx.err(field, m);
            return;
        }
    }
}

/// Type-check `with:` in every matrix cell, and run the kind's semantic check
/// ([`crate::stages::StageKind::check`]) on it (the first cell was checked already);
/// reports the first bad cell of a stage with its instance id.
fn check_cells(cx: &mut Ctx, registry: &Registry, spec: &StageSpec, cells: &[Instance]) {
    let Some(schema) = schema::kind_params(registry, &spec.uses) else {
        return;
    };
    let Ok(validator) = jsonschema::validator_for(&schema) else {
        return;
    };
    let mut seen = HashSet::new();
    for inst in cells {
        let (with, _) = substitute(&inst.with, &mut |r| match r {
            Ref::Outputs { stage, .. } => Ok(Some(Value::String(format!("/upstream/{stage}")))),
            _ => Ok(None),
        });
        if !seen.insert(with.to_string()) {
            continue;
        }
        let first = validator
            .iter_errors(&with)
            .next()
            .and_then(|e| explain(&schema, &with, &e, None).into_iter().next())
            .or_else(|| {
                let kind = registry.get(&spec.uses)?;
                kind.check_params(&with).err().map(|e| Explained {
                    path: e.path,
                    message: e.message,
                    at_key: false,
                })
            });
        if let Some(x) = first {
            let path = join(&format!("stages.{}.with", inst.stage), &x.path);
            let message = format!("in `{}`: {}", inst.id, x.message);
            if x.at_key {
                cx.err_key(path, message);
            } else {
                cx.err(path, message);
            }
            return;
        }
    }
}

/// The value a reference other than `${params...}` has when `with:` is checked: the
/// first matrix cell's value, a stand-in path for an upstream's outputs.
fn resolve_for_check(
    r: &Ref,
    cell: &HashMap<&str, &Value>,
    needs: &[String],
) -> Result<Option<Value>, String> {
    match r {
        Ref::Params(p) => Err(format!("internal: `${{params.{p}}}` not resolved first")),
        Ref::Matrix(a) => cell
            .get(a.as_str())
            .map(|v| Some((*v).clone()))
            .ok_or_else(|| {
                format!(
                    "unresolved reference `${{matrix.{a}}}`: this stage has no matrix axis `{a}`"
                )
            }),
        Ref::Outputs { stage, file } => {
            if needs.iter().any(|n| n == stage) {
                Ok(Some(Value::String(format!(
                    "/upstream/{stage}{}",
                    file.as_deref().map(|f| format!("/{f}")).unwrap_or_default()
                ))))
            } else {
                Err(format!(
                    "unresolved reference `{}`: `{stage}` is not in this stage's `needs`",
                    refs::render(r)
                ))
            }
        }
    }
}

/// Report the errors of a substitution in `raw` (found at `base`), except those reported
/// already at the param they come from; an environment-variable spelling gets its hint.
fn report_ref_errors(cx: &mut Ctx, base: &str, raw: &Value, errs: Vec<(String, String)>) {
    for (p, m) in errs {
        if m == REPORTED {
            continue;
        }
        let field = join(base, &p);
        let m = hinted(&field, dotted(raw, &p), m);
        cx.err(field, m);
    }
}

/// `m` with the environment-variable hint ([`refs::env_hint`]) when the string `raw` at
/// `field` holds a `${NAME}` that reads like one.
fn hinted(field: &str, raw: Option<&Value>, m: String) -> String {
    match raw
        .and_then(Value::as_str)
        .filter(|t| refs::env_var_in(t).is_some_and(|(_, braced)| braced))
        .and_then(|t| refs::env_hint(field, t))
    {
        Some(h) => format!("{m}; {h}"),
        None => m,
    }
}

/// References are resolved in `params`, `with:` and `matrix:` only: a `${` anywhere else
/// (a name, resources, Slurm settings; its escape `$${` too) would reach a command as
/// text, so it is an error.
fn check_stray_refs(cx: &mut Ctx) {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        let skip = at == "params"
            || at.strip_prefix("stages.").is_some_and(|r| {
                r.split_once('.')
                    .is_some_and(|(_, f)| f == "with" || f == "matrix")
            });
        if skip {
            return;
        }
        match v {
            Value::String(s) if s.contains("${") => out.push(at.to_string()),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &join(at, &i.to_string()), out);
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    walk(x, &join(at, k), out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&cx.doc.value, "", &mut found);
    // A field refused already (an unknown one) is not reported twice.
    found.retain(|at| !cx.diags.iter().any(|d| d.path == *at));
    for at in found {
        cx.err(
            at,
            "references (`${...}`) are resolved only in `params`, a stage's `with:` and its \
             `matrix:`; this field takes its value as written, without `${`",
        );
    }
}

/// Readable id of a cell: `stage[a=1,b=x]`.
pub fn instance_id(stage: &str, cell: &[(String, Value)]) -> String {
    if cell.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = cell
        .iter()
        .map(|(k, v)| format!("{k}={}", super::refs::as_text(v)))
        .collect();
    format!("{stage}[{}]", parts.join(","))
}

/// One instance per matrix cell, its `with:` in [`Form::Source`] (params and matrix
/// resolved; `${stages...}` references and `$${` escapes kept for run time).
fn expand(
    id: &str,
    spec: &StageSpec,
    axes: &[(String, Vec<Value>)],
    params: &Params,
    out: &mut Vec<Instance>,
) {
    let n: usize = axes.iter().map(|(_, v)| v.len()).product();
    for mut k in 0..n {
        // Last axis varies fastest.
        let mut cell = vec![(String::new(), Value::Null); axes.len()];
        for (i, (a, vals)) in axes.iter().enumerate().rev() {
            cell[i] = (a.clone(), vals[k % vals.len()].clone());
            k /= vals.len();
        }
        // The cell's values are literal text: escaped where a reference puts them.
        let mut other = |r: &Ref| match r {
            Ref::Matrix(a) => Ok(cell
                .iter()
                .find(|(x, _)| x == a)
                .map(|(_, v)| escape_value(v))),
            _ => Ok(None),
        };
        let (with, _) = substitute_in(&spec.with, Form::Source, &mut |r| match r {
            Ref::Params(p) => params.resolve(p, Form::Source, &mut other).map(Some),
            r => other(r),
        });
        out.push(Instance {
            id: instance_id(id, &cell),
            stage: id.to_string(),
            uses: spec.uses.clone(),
            cell,
            with,
            resources: spec.resources.clone(),
        });
    }
}

/// A cycle among stage `needs`, as a path `a -> b -> a` in the `needs` direction, starting
/// at the first stage (file order) that lies on a cycle.
fn find_cycle(stages: &[(String, StageSpec)]) -> Option<Vec<String>> {
    use petgraph::graph::{DiGraph, NodeIndex};
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let mut g: DiGraph<&str, ()> = DiGraph::with_capacity(stages.len(), stages.len());
    for (id, _) in stages {
        g.add_node(id.as_str());
    }
    for (i, (_, spec)) in stages.iter().enumerate() {
        for need in &spec.needs {
            if let Some(&j) = index.get(need.as_str()) {
                g.add_edge(NodeIndex::new(i), NodeIndex::new(j), ());
            }
        }
    }
    // Strongly connected components with a cycle: more than one stage, or a self-need.
    let start = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .filter(|c| c.len() > 1 || g.contains_edge(c[0], c[0]))
        .filter_map(|c| c.into_iter().min())
        .min()?;
    if g.contains_edge(start, start) {
        return Some(vec![g[start].to_string(), g[start].to_string()]);
    }
    // The first need (in `needs` order) from which `start` can be reached closes the cycle.
    let needs = &stages[start.index()].1.needs;
    needs
        .iter()
        .filter_map(|n| index.get(n.as_str()).map(|&j| NodeIndex::new(j)))
        .find_map(|next| {
            petgraph::algo::all_simple_paths::<Vec<NodeIndex>, _, std::hash::RandomState>(
                &g, next, start, 0, None,
            )
            .next()
        })
        .map(|path| {
            std::iter::once(start)
                .chain(path)
                .map(|n| g[n].to_string())
                .collect()
        })
}
