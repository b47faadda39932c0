//! `${params...}` references resolved: a param may refer to other params (chains, inside
//! lists and maps, inside a longer string), and is resolved where it is used, so a
//! `${matrix.AXIS}` or `${stages.ID.outputs}` inside a param takes the value of the stage
//! that uses it (as OmegaConf's interpolation does). A cycle, a reference to a param that
//! does not exist and a malformed reference are errors at `validate`, each reported once
//! at the param where it is written ([`Params::check`]); a stage using a broken param gets
//! no second report.
use super::refs::{self, Form, Ref, Resolve};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;

/// Most values one resolution may produce (nodes, plus the bytes of strings): references
/// inside params can multiply (a list of two references to a list of two ...), as YAML
/// aliases can, and pipeline files are untrusted.
pub const MAX_EXPANDED: usize = 8 << 20;

/// The message of an error that was reported already at the param it comes from
/// ([`Params::check`]); callers drop it instead of reporting it again.
pub const REPORTED: &str = "\u{0}reported at params";

/// The `params:` of a pipeline, with what [`Params::check`] found broken.
pub struct Params<'a> {
    root: &'a Value,
    /// Dotted paths (below `params`) of the values whose resolution failed and was reported.
    broken: RefCell<HashSet<String>>,
    /// While checking: the errors found, as (`params.PATH`, message).
    found: RefCell<Option<Vec<(String, String)>>>,
    /// Values produced by the resolution under way (against [`MAX_EXPANDED`]).
    produced: Cell<usize>,
}

/// Why a param could not be resolved.
enum Fail {
    /// The message, not yet reported.
    Other(String),
    /// Reported already (while checking) or part of a broken param.
    Reported,
}

impl<'a> Params<'a> {
    /// The params map (`Value::Object`; anything else has no params).
    pub fn new(root: &'a Value) -> Self {
        Self {
            root,
            broken: RefCell::new(HashSet::new()),
            found: RefCell::new(None),
            produced: Cell::new(0),
        }
    }

    /// Resolve every reference inside the params, in file order, and return the errors as
    /// (`params.PATH`, message): a cycle (`cycle: params.a -> params.b -> params.a`, at the
    /// param where it was entered), a reference to a param that does not exist, a malformed
    /// reference. `${matrix...}` and `${stages...}` inside a param are left for the stage
    /// that uses it. Broken params are remembered: [`Params::resolve`] then fails with
    /// [`REPORTED`] for them.
    pub fn check(&self) -> Vec<(String, String)> {
        *self.found.borrow_mut() = Some(Vec::new());
        let mut leaves = Vec::new();
        collect_refs(self.root, "", &mut leaves);
        for leaf in leaves {
            if self.is_broken(&leaf) {
                continue;
            }
            self.produced.set(0);
            match self.value_of(&leaf, Form::Literal, &mut |_| Ok(None), &mut Vec::new()) {
                Ok(_) => {}
                Err(Fail::Other(m)) => self.report(&leaf, m),
                // It uses a param whose error is reported: silent, but broken too.
                Err(Fail::Reported) => {
                    self.broken.borrow_mut().insert(leaf);
                }
            }
        }
        self.found.borrow_mut().take().unwrap_or_default()
    }

    /// The value of `${params.PATH}` in `form`, with the references inside it resolved:
    /// params recursively, the others by `other` (the using stage's matrix cell and
    /// outputs). Errors: [`REPORTED`] for a param [`Params::check`] found broken; else what
    /// is wrong, naming the param where the failing reference is written.
    pub fn resolve(&self, path: &str, form: Form, other: &mut Resolve) -> Result<Value, String> {
        self.produced.set(0);
        self.value_of(path, form, other, &mut Vec::new())
            .map_err(|f| match f {
                Fail::Other(m) => m,
                Fail::Reported => REPORTED.to_string(),
            })
    }

    fn is_broken(&self, path: &str) -> bool {
        let under = format!("{path}.");
        self.broken
            .borrow()
            .iter()
            .any(|b| b == path || b.starts_with(&under))
    }

    /// While checking: record `m` at `params.PATH` and mark the param broken.
    fn report(&self, path: &str, m: String) {
        self.broken.borrow_mut().insert(path.to_string());
        if let Some(found) = self.found.borrow_mut().as_mut() {
            found.push((format!("params.{path}"), m));
        }
    }

    /// Checking (errors are recorded where they are written) rather than using.
    fn checking(&self) -> bool {
        self.found.borrow().is_some()
    }

    /// The value at dotted `path` below the params, resolved. `stack`: the params being
    /// resolved (a cycle returns to one of them).
    fn value_of(
        &self,
        path: &str,
        form: Form,
        other: &mut Resolve,
        stack: &mut Vec<String>,
    ) -> Result<Value, Fail> {
        let mut cur = self.root;
        let mut at = String::new();
        for (i, seg) in path.split('.').enumerate() {
            if whole_param_ref(cur).is_some() {
                // `${params.a.x}` where `a` is itself `${params.b}`: index into a's value.
                let v = self.value_of(&at, form, other, stack)?;
                let rest: Vec<&str> = path.split('.').skip(i).collect();
                return refs::lookup(&v, &rest.join("."))
                    .cloned()
                    .ok_or_else(|| Fail::Other(self.unresolved(path)));
            }
            cur = match cur {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|k| a.get(k)),
                _ => None,
            }
            .ok_or_else(|| Fail::Other(self.unresolved(path)))?;
            at = if at.is_empty() {
                seg.to_string()
            } else {
                format!("{at}.{seg}")
            };
        }
        if self.is_broken(&at) {
            return Err(Fail::Reported);
        }
        if let Some(i) = stack.iter().position(|s| *s == at) {
            return Err(self.cycle(&stack[i..], &at));
        }
        stack.push(at.clone());
        let r = self.substitute_param(cur, &at, form, other, stack);
        stack.pop();
        r
    }

    /// The param value `v` (at `at`) with its references replaced.
    fn substitute_param(
        &self,
        v: &Value,
        at: &str,
        form: Form,
        other: &mut Resolve,
        stack: &mut Vec<String>,
    ) -> Result<Value, Fail> {
        let mut inner: Option<Fail> = None;
        let (out, errs) = refs::substitute_in(v, form, &mut |r| {
            let got = match r {
                Ref::Params(q) => self.value_of(q, form, other, stack).map(Some),
                _ => other(r).map_err(|m| Fail::Other(format!("{m}{}", written_in(at)))),
            };
            got.map_err(|f| {
                inner.get_or_insert(f);
                String::new()
            })
        });
        let first_written = errs.into_iter().find(|(_, m)| !m.is_empty());
        let fail = match (inner, first_written) {
            (Some(Fail::Reported), _) => {
                if self.checking() {
                    self.broken.borrow_mut().insert(at.to_string());
                }
                return Err(Fail::Reported);
            }
            (Some(Fail::Other(m)), _) => Some(m),
            // A malformed reference: while checking, reported at the string that holds it.
            (None, Some((sub, m))) if self.checking() => {
                self.broken.borrow_mut().insert(at.to_string());
                self.report(&join(at, &sub), m);
                return Err(Fail::Reported);
            }
            (None, Some((sub, m))) => Some(format!("{m}{}", written_in(&join(at, &sub)))),
            (None, None) => None,
        };
        if let Some(m) = fail {
            if self.checking() {
                self.report(at, m);
                return Err(Fail::Reported);
            }
            return Err(Fail::Other(m));
        }
        let n = self.produced.get().saturating_add(size(&out));
        self.produced.set(n);
        if n > MAX_EXPANDED {
            let m = format!(
                "`params.{at}` expands to more than {MAX_EXPANDED} values: references inside \
                 params multiply"
            );
            if self.checking() {
                self.report(at, m);
                return Err(Fail::Reported);
            }
            return Err(Fail::Other(m));
        }
        Ok(out)
    }

    /// A cycle: `stack` from the param entered twice, then `at` (that param) again.
    fn cycle(&self, stack: &[String], at: &str) -> Fail {
        let m = if stack.len() == 1 {
            format!("`params.{at}` refers to itself")
        } else {
            let chain: Vec<String> = stack
                .iter()
                .map(String::as_str)
                .chain([at])
                .map(|p| format!("params.{p}"))
                .collect();
            format!("cycle: {}", chain.join(" -> "))
        };
        if self.checking() {
            for s in &stack[1..] {
                self.broken.borrow_mut().insert(s.clone());
            }
            self.report(at, m);
            return Fail::Reported;
        }
        Fail::Other(m)
    }

    /// `unresolved reference `${params.p}`: no such param (params: ...)`.
    fn unresolved(&self, p: &str) -> String {
        unresolved_param(p, self.root)
    }
}

/// The message for `${params.p}` when `params` has no such value.
pub fn unresolved_param(p: &str, params: &Value) -> String {
    let names: Vec<String> = params
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    format!(
        "unresolved reference `${{params.{p}}}`: no such param (params: {})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )
}

/// ` (written in `params.a.b`)`: where an error found while using a param is written.
fn written_in(at: &str) -> String {
    format!(" (written in `params.{at}`)")
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    }
}

/// The param a string that is exactly one `${params.Q}` reference names.
fn whole_param_ref(v: &Value) -> Option<String> {
    match refs::parse_refs(v.as_str()?).ok()?.as_slice() {
        [refs::Piece::Ref(Ref::Params(q))] => Some(q.clone()),
        _ => None,
    }
}

/// Dotted paths of the strings under `v` that hold a `${`, in file order.
fn collect_refs(v: &Value, at: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::String(s) if s.contains("${") => out.push(at.to_string()),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect_refs(x, &join(&i.to_string()), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                collect_refs(x, &join(k), out);
            }
        }
        _ => {}
    }
}

/// Nodes of `v` plus the bytes of its strings.
fn size(v: &Value) -> usize {
    match v {
        Value::String(s) => 1 + s.len(),
        Value::Array(a) => 1 + a.iter().map(size).sum::<usize>(),
        Value::Object(m) => 1 + m.iter().map(|(k, x)| k.len() + size(x)).sum::<usize>(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn literal(p: &Params, path: &str) -> Result<Value, String> {
        p.resolve(path, Form::Literal, &mut |_| Ok(None))
    }

    #[test]
    fn chains_resolve_inside_lists_maps_and_longer_strings() {
        let v = json!({
            "c": "data",
            "b": "${params.c}",
            "a": "${params.b}",
            "dir": "${params.a}/sub",
            "list": ["${params.a}", 3, {"k": "${params.dir}"}],
            "alias": "${params.list}",
            "deep": "${params.alias.2.k}",
            "n": 5,
            "num": "${params.n}",
            "text": "n=${params.num}",
        });
        let p = Params::new(&v);
        assert_eq!(p.check(), vec![]);
        assert_eq!(literal(&p, "a").unwrap(), json!("data"));
        assert_eq!(literal(&p, "dir").unwrap(), json!("data/sub"));
        assert_eq!(
            literal(&p, "alias").unwrap(),
            json!(["data", 3, {"k": "data/sub"}])
        );
        // Through a reference in the middle of the path.
        assert_eq!(literal(&p, "alias.2.k").unwrap(), json!("data/sub"));
        assert_eq!(literal(&p, "deep").unwrap(), json!("data/sub"));
        // A whole reference keeps the type; an embedded one is text.
        assert_eq!(literal(&p, "num").unwrap(), json!(5));
        assert_eq!(literal(&p, "text").unwrap(), json!("n=5"));
    }

    #[test]
    fn a_cycle_is_reported_once_at_the_param_where_it_is_entered() {
        let v = json!({"a": "${params.b}", "b": "${params.a}", "x": "${params.a}/y"});
        let p = Params::new(&v);
        assert_eq!(
            p.check(),
            vec![(
                "params.a".to_string(),
                "cycle: params.a -> params.b -> params.a".to_string()
            )]
        );
        // Users of a broken param are not reported again.
        assert_eq!(literal(&p, "x").unwrap_err(), REPORTED);
        assert_eq!(literal(&p, "b").unwrap_err(), REPORTED);

        let v = json!({"x": "${params.a}", "a": ["${params.b.k}"], "b": {"k": "${params.c}"},
            "c": "${params.a}"});
        assert_eq!(
            Params::new(&v).check(),
            vec![(
                "params.a".to_string(),
                "cycle: params.a -> params.b.k -> params.c -> params.a".to_string()
            )]
        );
        let v = json!({"s": "${params.s}", "m": {"k": "x/${params.m}"}, "t": "${params.t.u}"});
        assert_eq!(
            Params::new(&v).check(),
            vec![
                ("params.s".into(), "`params.s` refers to itself".into()),
                ("params.m".into(), "`params.m` refers to itself".into()),
                ("params.t".into(), "`params.t` refers to itself".into()),
            ]
        );
    }

    #[test]
    fn unresolved_and_malformed_references_are_reported_where_written() {
        let v = json!({"a": "${params.nope}", "b": "${params.a}", "m": {"k": ["ok", "${params"]},
            "u": "${params.m.k.5}"});
        let p = Params::new(&v);
        let errs = p.check();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0].0, "params.a");
        assert!(
            errs[0].1.starts_with(
                "unresolved reference `${params.nope}`: no such param (params: a, b, m, u)"
            ),
            "{errs:?}"
        );
        assert_eq!(errs[1].0, "params.m.k.1");
        assert!(errs[1].1.contains("unterminated"), "{errs:?}");
        assert_eq!(errs[2].0, "params.u");
        assert!(errs[2].1.contains("`${params.m.k.5}`"), "{errs:?}");
    }

    #[test]
    fn matrix_and_output_references_in_a_param_are_resolved_by_the_user() {
        let v = json!({"out": "runs/${matrix.task}", "up": "${stages.a.outputs}/f",
            "lit": "$${matrix.task}", "both": "${params.lit}-${params.out}"});
        let p = Params::new(&v);
        assert_eq!(p.check(), vec![]);
        let mut cell = |r: &Ref| match r {
            Ref::Matrix(a) if a == "task" => Ok(Some(json!("dtd"))),
            Ref::Matrix(a) => Err(format!("no axis {a}")),
            _ => Ok(None),
        };
        assert_eq!(
            p.resolve("out", Form::Literal, &mut cell).unwrap(),
            json!("runs/dtd")
        );
        assert_eq!(
            p.resolve("up", Form::Source, &mut cell).unwrap(),
            json!("${stages.a.outputs}/f")
        );
        assert_eq!(
            p.resolve("both", Form::Literal, &mut cell).unwrap(),
            json!("${matrix.task}-runs/dtd")
        );
        assert_eq!(
            p.resolve("both", Form::Source, &mut cell).unwrap(),
            json!("$${matrix.task}-runs/dtd")
        );
        let e = p
            .resolve("out", Form::Literal, &mut |_| Err("no axis task".into()))
            .unwrap_err();
        assert_eq!(e, "no axis task (written in `params.out`)");
    }

    #[test]
    fn references_that_multiply_are_bounded() {
        let mut m = serde_json::Map::new();
        m.insert("a0".into(), json!("xxxxxxxx"));
        for i in 1..40 {
            m.insert(
                format!("a{i}"),
                json!([
                    format!("${{params.a{}}}", i - 1),
                    format!("${{params.a{}}}", i - 1)
                ]),
            );
        }
        let v = Value::Object(m);
        let errs = Params::new(&v).check();
        assert!(!errs.is_empty());
        assert!(errs[0].1.contains("expands to more than"), "{errs:?}");
    }
}
