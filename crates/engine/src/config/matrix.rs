//! Matrices: each axis checked (a non-empty list of distinct scalars, or a param naming
//! one), and every stage expanded to one instance per cell, with its paths resolved and
//! every cell's `with:` type-checked.
use super::checks::{report_ref_errors, valid_id};
use super::diagnostic::{dotted, join, param_behind, Ctx, Diagnostic};
use super::explain::{explain, lower_case_digests, Explained};
use super::load::{Instance, MAX_INSTANCES};
use super::model::StageSpec;
use super::params::Params;
use super::paths;
use super::refs::{self, escape_value, substitute, substitute_in, Form, Ref};
use super::schema;
use super::types;
use crate::stages::Registry;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// One matrix axis: its name and its values.
pub(super) type Axis = (String, Vec<Value>);

/// Matrix axes: a non-empty list of distinct scalars, or a `${params.X}` reference to one.
/// The axes that are valid, in declared order.
pub(super) fn check_matrix(
    cx: &mut Ctx,
    base: &str,
    spec: &StageSpec,
    params: &Params,
) -> Vec<Axis> {
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
pub(super) fn check_axis_values(
    cx: &mut Ctx,
    apath: &str,
    axis: &str,
    val: Value,
) -> Option<Vec<Value>> {
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
                format!(
                    "matrix axis `{axis}` must be a list, got {other}{}",
                    list_hint(&other)
                ),
            );
            None
        }
    }
}

/// What to write instead of a comma-separated string (Hydra's sweep syntax `a=1,2`, typed
/// on the command line): the list in brackets, and how to quote it for `--set`.
fn list_hint(value: &Value) -> String {
    match value.as_str() {
        Some(t) if t.contains(',') => {
            let items: Vec<&str> = t.split(',').map(str::trim).collect();
            format!(
                "; a list is written in brackets: `[{}]` (with --set, quote it for the shell: \
                 --set 'NAME=[{}]')",
                items.join(", "),
                items.join(",")
            )
        }
        _ => String::new(),
    }
}

/// Expand every stage's matrix into instances, with paths resolved and each cell checked.
pub(super) fn expand_all(
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
pub(super) fn resolve_instance_paths(
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
pub(super) fn check_cells(cx: &mut Ctx, registry: &Registry, spec: &StageSpec, cells: &[Instance]) {
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
pub(super) fn expand(
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
