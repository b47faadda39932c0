//! The semantic checks of stages: ids, kinds, `needs` (and their cycles), `with:` against
//! the kind's schema and its own check, stage references, and references where none are
//! resolved.
use super::diagnostic::{dotted, join, Ctx};
use super::explain::{check_schema, check_schema_with};
use super::load::MAX_INSTANCES;
use super::matrix::{check_matrix, Axis};
use super::model::{Pipeline, StageSpec};
use super::params::{Params, REPORTED};
use super::paths;
use super::refs::{self, substitute, Form, Ref};
use super::schema;
use super::types;
use crate::stages::{DynStage, Registry, STAGE_REF_FORMAT};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

pub(super) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check one stage (`stages.ID`): its id, common fields, kind, needs, matrix and `with:`.
/// None when it cannot be read far enough to expand (its errors are in `cx`).
pub(super) fn check_stage(
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
    for (field, e) in super::resources::check(&spec.resources) {
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
pub(super) fn check_needs(cx: &mut Ctx, top: &Pipeline, id: &str, spec: &StageSpec) {
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

/// References in `with:`, checked with the first matrix cell; then the kind's schema, the
/// stages its stage-reference fields name ([`check_stage_refs`]) and the kind's own check.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_with(
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
    // An axis that was refused (reported where it is) would only make its references look
    // unresolved here: `with:` is checked once the matrix is valid.
    if spec
        .matrix
        .keys()
        .any(|k| !axes.iter().any(|(a, _)| a == k))
    {
        return;
    }
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
pub(super) fn check_stage_refs(
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

/// The value a reference other than `${params...}` has when `with:` is checked: the
/// first matrix cell's value, a stand-in path for an upstream's outputs.
pub(super) fn resolve_for_check(
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
pub(super) fn report_ref_errors(
    cx: &mut Ctx,
    base: &str,
    raw: &Value,
    errs: Vec<(String, String)>,
) {
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
pub(super) fn hinted(field: &str, raw: Option<&Value>, m: String) -> String {
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
pub(super) fn check_stray_refs(cx: &mut Ctx) {
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

/// A cycle among stage `needs`, as a path `a -> b -> a` in the `needs` direction, starting
/// at the first stage (file order) that lies on a cycle.
pub(super) fn find_cycle(stages: &[(String, StageSpec)]) -> Option<Vec<String>> {
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
