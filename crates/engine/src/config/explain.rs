//! Schema checks and their errors in the user's terms: a `jsonschema` error becomes a
//! message naming the field and what is expected (the branch a tag selects, an unknown
//! field with the closest one, a null from YAML's `~`, a sha256, an integer's range).
use super::diagnostic::{join, segments, value_at, Ctx};
use super::paths;
use super::schema;
use super::types;
use serde_json::Value;

/// Validate `value` (found at `base`) against `schema`; every error is recorded. True if valid.
/// `raw`: the `with:` as written, when `value` is a stage's `with:` after substitution.
pub(super) fn check_schema(cx: &mut Ctx, schema: &Value, value: &Value, base: &str) -> bool {
    check_schema_with(cx, schema, value, base, None)
}

pub(super) fn check_schema_with(
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
pub(super) struct Explained {
    /// Dotted path inside the checked value.
    pub(super) path: String,
    pub(super) message: String,
    /// The error is about the key at `path` (an unknown field), not its value.
    pub(super) at_key: bool,
}

/// `s` with its `$ref` followed and, while it is a `oneOf`/`anyOf` of which exactly one
/// branch describes `v` (the variant its tag selects, or the one its type admits), that branch.
pub(super) fn settle<'s>(root: &'s Value, s: &'s Value, v: &Value) -> &'s Value {
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
pub(super) fn schema_at<'s>(root: &'s Value, value: &Value, segs: &[String]) -> Option<&'s Value> {
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
pub(super) fn explain(
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
        K::Type { .. } => {
            let mut m = here
                .and_then(|h| types::type_message(h, node))
                .unwrap_or_else(|| e.to_string());
            if let [.., "resources", field] =
                segs.iter().map(String::as_str).collect::<Vec<_>>()[..]
            {
                if let Some(hint) = super::resources::number_hint(field, node) {
                    m = format!("{m}: {hint}");
                }
            }
            one(m)
        }
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
pub(super) fn unknown_fields(
    here: Option<&Value>,
    path: &str,
    unexpected: &[String],
) -> Vec<Explained> {
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
pub(super) fn null_message(here: Option<&Value>, e: &jsonschema::ValidationError) -> String {
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
pub(super) fn explain_branches(
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
pub(super) fn not_a_sha256(got: &str) -> String {
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
pub(super) fn lower_case_digests(schema: &Value, v: &mut Value) {
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
pub(super) fn untaken_tag(
    root: &Value,
    branches: &[Value],
    node: &Value,
    path: &str,
) -> Option<Explained> {
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
