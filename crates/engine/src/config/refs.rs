//! References inside pipeline values: `${params.a.b}`, `${matrix.AXIS}`,
//! `${stages.ID.outputs}` and `${stages.ID.outputs.FILE}`.
use serde_json::Value;

/// One parsed reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Ref {
    /// `${params.a.b}`: a pipeline param (dotted path).
    Params(String),
    /// `${matrix.AXIS}`: this instance's value on a matrix axis.
    Matrix(String),
    /// `${stages.ID.outputs[.FILE]}`: an upstream entry directory (or a file in it) at run time.
    Outputs {
        /// The upstream stage id (it must be in this stage's `needs`).
        stage: String,
        /// A file below the entry directory (the rest of the reference, dots kept:
        /// `report.md`); `None` for the directory itself.
        file: Option<String>,
    },
}

/// Split a string into literal text and references. Errors name the bad reference.
pub fn parse_refs(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 {
            out.push(Piece::Text(rest[..i].to_string()));
        }
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated reference `{}` (missing `}}`)", &rest[i..]))?;
        let body = after[..end].trim();
        out.push(Piece::Ref(parse_one(body)?));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

/// Literal text or a reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Literal text between references.
    Text(String),
    /// A `${...}` reference.
    Ref(Ref),
}

fn parse_one(body: &str) -> Result<Ref, String> {
    let parts: Vec<&str> = body.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed reference `${{{body}}}`"));
    }
    match parts[0] {
        "params" if parts.len() >= 2 => Ok(Ref::Params(parts[1..].join("."))),
        "matrix" if parts.len() == 2 => Ok(Ref::Matrix(parts[1].to_string())),
        "stages" if parts.len() >= 3 && parts[2] == "outputs" => Ok(Ref::Outputs {
            stage: parts[1].to_string(),
            file: (parts.len() > 3).then(|| parts[3..].join(".")),
        }),
        _ => Err(format!(
            "malformed reference `${{{body}}}`: expected `${{params.NAME}}`, `${{matrix.AXIS}}` or `${{stages.ID.outputs[.FILE]}}`"
        )),
    }
}

/// Look up a dotted path (`a.b.0`) inside a JSON value.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Text form of a value inside a larger string: strings raw, the rest as JSON.
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replace references throughout `v`. `f` returns `Ok(Some(value))` to substitute,
/// `Ok(None)` to leave the reference text as is, `Err` for an unresolved reference.
/// Errors come back as (dotted sub-path, message), all of them.
pub fn substitute(
    v: &Value,
    f: &mut dyn FnMut(&Ref) -> Result<Option<Value>, String>,
) -> (Value, Vec<(String, String)>) {
    let mut errors = Vec::new();
    let out = walk(v, "", f, &mut errors);
    (out, errors)
}

fn walk(
    v: &Value,
    path: &str,
    f: &mut dyn FnMut(&Ref) -> Result<Option<Value>, String>,
    errors: &mut Vec<(String, String)>,
) -> Value {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::String(s) if s.contains("${") => match parse_refs(s) {
            Err(e) => {
                errors.push((path.to_string(), e));
                v.clone()
            }
            Ok(pieces) => {
                if let [Piece::Ref(r)] = pieces.as_slice() {
                    return match f(r) {
                        Ok(Some(val)) => val,
                        Ok(None) => v.clone(),
                        Err(e) => {
                            errors.push((path.to_string(), e));
                            v.clone()
                        }
                    };
                }
                let mut s = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => s.push_str(&t),
                        Piece::Ref(r) => match f(&r) {
                            Ok(Some(val)) => s.push_str(&as_text(&val)),
                            Ok(None) => s.push_str(&render(&r)),
                            Err(e) => errors.push((path.to_string(), e)),
                        },
                    }
                }
                Value::String(s)
            }
        },
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| walk(x, &join(&i.to_string()), f, errors))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), walk(x, &join(k), f, errors)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The reference written back as text.
pub fn render(r: &Ref) -> String {
    match r {
        Ref::Params(p) => format!("${{params.{p}}}"),
        Ref::Matrix(a) => format!("${{matrix.{a}}}"),
        Ref::Outputs { stage, file: None } => format!("${{stages.{stage}.outputs}}"),
        Ref::Outputs {
            stage,
            file: Some(f),
        } => format!("${{stages.{stage}.outputs.{f}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_refs_keep_type_and_embedded_refs_interpolate() {
        let params = json!({"lr": 0.1, "tasks": ["a", "b"], "opt": {"wd": 5}});
        let v = json!({"x": "${params.lr}", "t": "${params.tasks}", "s": "lr=${params.lr} wd=${ params.opt.wd }", "o": "${stages.a.outputs.f.txt}"});
        let (out, errs) = substitute(&v, &mut |r| match r {
            Ref::Params(p) => lookup(&params, p)
                .cloned()
                .map(Some)
                .ok_or_else(|| format!("unresolved {p}")),
            _ => Ok(None),
        });
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out["x"], json!(0.1));
        assert_eq!(out["t"], json!(["a", "b"]));
        assert_eq!(out["s"], json!("lr=0.1 wd=5"));
        assert_eq!(out["o"], json!("${stages.a.outputs.f.txt}"));
    }

    #[test]
    fn bad_refs_are_reported_with_their_path() {
        let v = json!({"a": ["ok", "${nope.x}"], "b": "${params.x"});
        let (_, errs) = substitute(&v, &mut |_| Ok(None));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0, "a.1");
        assert!(errs[0].1.contains("malformed reference"));
        assert!(errs[1].1.contains("unterminated"));
    }
}
