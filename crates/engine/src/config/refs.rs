//! References inside pipeline values: `${params.a.b}`, `${matrix.AXIS}`,
//! `${stages.ID.outputs}` and `${stages.ID.outputs.FILE}`; `$${` is a literal `${`.
//!
//! A value is held in one of two [`Form`]s: as written ([`Form::Source`]: references not yet
//! resolved and escapes still `$${`, what an instance's `with:` holds until it runs) or as the
//! stage sees it ([`Form::Literal`]: escapes turned into the `${` they stand for).
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

/// Split a string into literal text and references. `$${` is the text `${` (so a stage can
/// be given a literal `${`); any other `${` starts a reference. Errors name the bad reference.
pub fn parse_refs(s: &str) -> Result<Vec<Piece>, String> {
    let mut out: Vec<Piece> = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            // `$${`: the `$` before is the escape; the text keeps one `${`.
            text.push_str(&rest[..i - 1]);
            text.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        text.push_str(&rest[..i]);
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated reference `{}` (missing `}}`)", &rest[i..]))?;
        let body = after[..end].trim();
        out.push(Piece::Ref(parse_one(body)?));
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// Literal text written back in [`Form::Source`]: every `${` escaped as `$${`
/// ([`parse_refs`] of the result gives the text back).
pub fn escape(text: &str) -> String {
    text.replace("${", "$${")
}

/// `v` with [`escape`] applied to every string in it (map keys are never references).
pub fn escape_value(v: &Value) -> Value {
    match v {
        Value::String(s) if s.contains("${") => Value::String(escape(s)),
        Value::Array(a) => Value::Array(a.iter().map(escape_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), escape_value(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A `${NAME}` body that reads like a shell or environment variable (`HOME`, `DATA_DIR`).
fn env_like(body: &str) -> bool {
    let mut c = body.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && !matches!(body, "params" | "matrix" | "stages")
}

/// The first environment-variable spelling in `text` as written: `${NAME}` (which is not a
/// reference) or `$NAME`, as `(NAME, braced)`. `$${NAME}` is the escaped text, not a variable.
pub fn env_var_in(text: &str) -> Option<(&str, bool)> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') && b.get(i + 2) == Some(&b'{') {
            i += 3;
            continue;
        }
        let rest = &text[i + 1..];
        if let Some(body) = rest.strip_prefix('{') {
            if let Some(end) = body.find('}') {
                if env_like(&body[..end]) {
                    return Some((&body[..end], true));
                }
            }
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if n > 0 && env_like(&rest[..n]) {
                return Some((&rest[..n], false));
            }
        }
        i += 1;
    }
    None
}

/// The hint for an environment-variable spelling ([`env_var_in`]) in `text`, the value of
/// the field at dotted path `field`: pipeline files never expand environment variables, so
/// the value is given with `--set` from the shell, which does.
pub fn env_hint(field: &str, text: &str) -> Option<String> {
    let (var, braced) = env_var_in(text)?;
    let mut m = format!(
        "environment variables are not expanded in pipeline files: give the value on the \
         command line, where your shell expands `${var}`: `--set \"{field}={text}\"`"
    );
    if braced {
        m.push_str(&format!(
            "; or write `$${{{var}}}` for the text `${{{var}}}`"
        ));
    }
    Some(m)
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
        _ if env_like(body) => Err(format!(
            "`${{{body}}}` is not a reference (those are `${{params.NAME}}`, `${{matrix.AXIS}}` \
             and `${{stages.ID.outputs[.FILE]}}`)"
        )),
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

/// Which text a value holds: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// As the stage sees it: `$${` became `${`; a reference kept (`Ok(None)`) is its text.
    Literal,
    /// As written: literal text keeps its `$${` escapes and a kept reference stays a
    /// reference, so the value can be substituted again later (outputs at run time).
    Source,
}

/// A substitution callback: `Ok(Some(value))` to substitute (a value in the form being
/// built), `Ok(None)` to keep the reference, `Err` for an unresolved reference.
pub type Resolve<'a> = dyn FnMut(&Ref) -> Result<Option<Value>, String> + 'a;

/// Replace references throughout `v`, giving [`Form::Literal`] text (see
/// [`substitute_in`]).
pub fn substitute(v: &Value, f: &mut Resolve) -> (Value, Vec<(String, String)>) {
    substitute_in(v, Form::Literal, f)
}

/// Replace references throughout `v`, building a value in `form`. `f` returns
/// `Ok(Some(value))` to substitute, `Ok(None)` to leave the reference as it is, `Err` for an
/// unresolved reference. Errors come back as (dotted sub-path, message), all of them.
pub fn substitute_in(v: &Value, form: Form, f: &mut Resolve) -> (Value, Vec<(String, String)>) {
    let mut errors = Vec::new();
    let out = walk(v, "", form, f, &mut errors);
    (out, errors)
}

fn walk(
    v: &Value,
    path: &str,
    form: Form,
    f: &mut Resolve,
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
            Ok(pieces) => interpolate(v, pieces, path, form, f, errors),
        },
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| walk(x, &join(&i.to_string()), form, f, errors))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), walk(x, &join(k), form, f, errors)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The string `v`, parsed into `pieces`, with its references replaced.
fn interpolate(
    v: &Value,
    pieces: Vec<Piece>,
    path: &str,
    form: Form,
    f: &mut Resolve,
    errors: &mut Vec<(String, String)>,
) -> Value {
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
            Piece::Text(t) if form == Form::Source => s.push_str(&escape(&t)),
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

    #[test]
    fn a_doubled_dollar_brace_is_literal_text_and_survives_the_source_form() {
        let lit = |s: &str| {
            let (v, e) = substitute(&json!(s), &mut |_| Ok(Some(json!("X"))));
            assert!(e.is_empty(), "{e:?}");
            v
        };
        assert_eq!(lit("$${params.a}"), json!("${params.a}"));
        assert_eq!(lit("a $${HOME} ${params.b} c"), json!("a ${HOME} X c"));
        // Only `$${` is an escape: `$$` elsewhere stays as written.
        assert_eq!(lit("$$ and $$x"), json!("$$ and $$x"));
        assert_eq!(lit("$$${params.a}"), json!("$${params.a}"));
        // Source form: escapes kept, so a later pass gives the same literal text.
        for s in [
            "$${params.a}",
            "x $${y} ${params.b}",
            "$$${z}",
            "${stages.a.outputs}/$${f}",
        ] {
            let (src, e) = substitute_in(&json!(s), Form::Source, &mut |r| match r {
                Ref::Params(_) => Ok(Some(json!("X"))),
                _ => Ok(None),
            });
            assert!(e.is_empty(), "{e:?}");
            let (twice, _) = substitute(&src, &mut |r| match r {
                Ref::Outputs { .. } => Ok(Some(json!("/up"))),
                _ => panic!("{s}: {r:?} left in {src}"),
            });
            let (once, _) = substitute(&json!(s), &mut |r| match r {
                Ref::Params(_) => Ok(Some(json!("X"))),
                _ => Ok(Some(json!("/up"))),
            });
            assert_eq!(twice, once, "{s} -> {src}");
        }
        // Escaping literal text and parsing it back gives the text.
        for t in ["${a}", "$${a}", "$", "a$", "${", "}${x}$"] {
            let back: String = parse_refs(&escape(t))
                .unwrap()
                .into_iter()
                .map(|p| match p {
                    Piece::Text(t) => t,
                    Piece::Ref(r) => panic!("{t}: {r:?}"),
                })
                .collect();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn environment_variable_spellings_are_recognised_and_get_a_hint() {
        assert_eq!(env_var_in("${DATA}/x"), Some(("DATA", true)));
        assert_eq!(env_var_in("a/$HOME_2/x"), Some(("HOME_2", false)));
        assert_eq!(env_var_in("$${DATA}/x"), None, "escaped: the text itself");
        assert_eq!(env_var_in("${params.x}/$5/$"), None);
        let h = env_hint("params.root", "${DATA}/vtab").unwrap();
        assert_eq!(
            h,
            "environment variables are not expanded in pipeline files: give the value on the \
             command line, where your shell expands `$DATA`: `--set \"params.root=${DATA}/vtab\"`; \
             or write `$${DATA}` for the text `${DATA}`"
        );
        let e = parse_refs("${DATA}/vtab").unwrap_err();
        assert!(e.starts_with("`${DATA}` is not a reference"), "{e}");
    }
}
