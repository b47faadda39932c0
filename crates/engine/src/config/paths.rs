//! The one rule for relative paths in a pipeline: a path a stage kind declares as a file or
//! folder (`format: "path"` in its `with:` schema) is resolved against the **working
//! directory of the `idat-pipe` process**, the way Snakemake and Hydra resolve theirs and the
//! way `--cache-dir`, `--set` values typed in a shell and `infer --weights` already are.
//! A leading `~` or `~/` is the user's home (`$HOME`). The result is absolute and lexically
//! normalised like Python's `os.path.abspath` (`.` dropped, `a/..` removed, links not
//! followed), so `validate`, `plan`, the cache key and every stage see the same path.
//!
//! Resolution runs once, on each instance's `with:` after references are substituted
//! ([`resolve_paths`]), so a path built from `${params...}` or a `--set` value obeys it too.
use serde_json::Value;
use std::path::{Component, Path, PathBuf};

/// The schema `format` that marks a string as a file-system path.
pub const PATH_FORMAT: &str = "path";

/// `p` made absolute against `base` (the working directory), `~` expanded from `home`,
/// then lexically normalised (`..` above the root stays at the root, as in POSIX).
///
/// Errors: `~user` forms (only the current user's home is expanded), and `~` when no home
/// is known.
pub fn absolute(base: &Path, home: Option<&Path>, p: &str) -> Result<PathBuf, String> {
    Ok(normalise(&base.join(expand_home(home, p)?)))
}

/// `p` with a leading `~` or `~/` replaced by `home`; other paths unchanged (relative ones
/// stay relative). Errors: `~user`, and `~` when no home is known.
pub fn expand_home(home: Option<&Path>, p: &str) -> Result<PathBuf, String> {
    if p == "~" || p.starts_with("~/") {
        let home = home.ok_or_else(|| {
            format!("`{p}` starts with `~` but HOME is not set: give an absolute path")
        })?;
        Ok(home.join(p.trim_start_matches('~').trim_start_matches('/')))
    } else if p.starts_with('~') {
        Err(format!(
            "`{p}`: only `~` and `~/...` (your own home) are expanded; give an absolute path"
        ))
    } else {
        Ok(PathBuf::from(p))
    }
}

/// The value parser of every path argument and path variable of the command line
/// (`--cache-dir`, `IDAT_CACHE_DIR`, `--runs-dir`, `infer --weights`, ...): `~` expanded
/// as in pipelines, so `--cache-dir=~/x` (where the shell does not expand it) never makes
/// a folder named `~`; relative paths stay relative to the working directory.
pub fn cli_path(s: &str) -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    expand_home(home.as_deref(), s)
}

/// Lexical normalisation of an absolute path: `.` removed, `x/..` collapsed.
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                // `pop` at the root keeps the root, as POSIX does for `/..`.
                if out.parent().is_some() {
                    out.pop();
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The process's working directory and home, the bases of [`absolute`].
pub fn process_bases() -> Result<(PathBuf, Option<PathBuf>), String> {
    let cwd = std::env::current_dir()
        .map_err(|e| format!("cannot read the working directory to resolve paths: {e}"))?;
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    Ok((cwd, home))
}

/// Resolve, in place, every string of `value` that `schema` (a kind's self-contained
/// `with:` schema, with its `$defs`) marks `format: "path"`. Strings that are still
/// `${stages...}` references are left alone; an empty path is an error, and so is a path
/// spelled with an environment variable (`$DATA/x`: never expanded) when no such file or
/// folder exists (the caller adds how to pass the value instead). Returns the errors as
/// (dotted path inside `with`, message); a path in error is left as written.
pub fn resolve_paths(
    schema: &Value,
    value: &mut Value,
    base: &Path,
    home: Option<&Path>,
) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let is_path = |s: &Value| s.get("format").and_then(Value::as_str) == Some(PATH_FORMAT);
    for_each_marked_string(schema, value, &is_path, &mut |at, text| {
        if text.trim().is_empty() {
            errs.push((
                at.to_string(),
                "empty path: expected a file or folder".into(),
            ));
        } else if !text.starts_with("${") {
            match absolute(base, home, text) {
                Ok(p) => match env_var_path(text, &p) {
                    Some(m) => errs.push((at.to_string(), m)),
                    None => *text = p.to_string_lossy().into_owned(),
                },
                Err(m) => errs.push((at.to_string(), m)),
            }
        }
    });
    errs
}

/// Why `text` (resolved to `abs`; both in source form, `$${` escapes kept) is refused: it
/// spells an environment variable (`$NAME`) and names nothing that exists. A file or folder
/// whose name really holds a `$` is accepted once it exists.
fn env_var_path(text: &str, abs: &Path) -> Option<String> {
    let (var, _) = super::refs::env_var_in(text)?;
    let literal = PathBuf::from(abs.to_string_lossy().replace("$${", "${"));
    if literal.symlink_metadata().is_ok() {
        return None;
    }
    Some(format!(
        "`{text}` holds `${var}`, and no file or folder `{}` exists",
        literal.display()
    ))
}

/// Call `f(dotted path, text)` for every string of `value` whose schema node (in `schema`,
/// self-contained with its `$defs`) satisfies `marked`: the one walk over a `with:` by its
/// schema, for the load-time normalisations (the path rule here, sha256 case in `load.rs`).
/// `allOf` branches all apply; of a `oneOf`/`anyOf`, the branches the value selects
/// ([`branch_selects`]: the variant its tag names, or the one its type admits).
pub(crate) fn for_each_marked_string(
    schema: &Value,
    value: &mut Value,
    marked: &dyn Fn(&Value) -> bool,
    f: &mut dyn FnMut(&str, &mut String),
) {
    for_each_marked(schema, value, marked, &mut |at, v| {
        if let Value::String(text) = v {
            f(at, text);
        }
    });
}

/// [`for_each_marked_string`] for values of any type: `f(dotted path, value)` for every value
/// whose schema node satisfies `marked` (the integer rule in `types.rs`).
pub(crate) fn for_each_marked(
    schema: &Value,
    value: &mut Value,
    marked: &dyn Fn(&Value) -> bool,
    f: &mut dyn FnMut(&str, &mut Value),
) {
    walk(schema, schema, value, "", marked, f);
}

pub(crate) fn deref<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .or_else(|| r.strip_prefix("#/definitions/"))
            .and_then(|name| {
                root.get("$defs")
                    .or_else(|| root.get("definitions"))
                    .and_then(|d| d.get(name))
            })
            .unwrap_or(s),
        None => s,
    }
}

fn walk(
    root: &Value,
    s: &Value,
    v: &mut Value,
    at: &str,
    marked: &dyn Fn(&Value) -> bool,
    f: &mut dyn FnMut(&str, &mut Value),
) {
    let s = deref(root, s);
    if marked(s) {
        f(at, v);
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        if let Some(branches) = s.get(key).and_then(Value::as_array) {
            for b in branches {
                // Tagged enums: only the variant this value selects applies.
                if key == "allOf" || branch_selects(root, b, v) {
                    walk(root, b, v, at, marked, f);
                }
            }
        }
    }
    match v {
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, child) in map.iter_mut() {
                let sub = props
                    .and_then(|p| p.get(k))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    let here = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    walk(root, sub, child, &here, marked, f);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = s.get("items").filter(|i| i.is_object()) {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(root, sub, child, &format!("{at}.{i}"), marked, f);
                }
            }
        }
        _ => {}
    }
}

/// Whether a `oneOf`/`anyOf` branch describes `v`: its `type` admits it and every
/// property fixed by `const` (or a one-value `enum`), the tag of a serde enum, matches.
pub(crate) fn branch_selects(root: &Value, b: &Value, v: &Value) -> bool {
    let b = deref(root, b);
    if let Some(t) = b.get("type") {
        let admits = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            // JSON Schema's integer: a number with no fractional part (`10.0` too).
            "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        let ok = match t {
            Value::String(t) => admits(t),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(admits),
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    if let (Some(props), Value::Object(obj)) = (b.get("properties").and_then(Value::as_object), v) {
        for (k, ps) in props {
            let fixed = ps.get("const").or_else(|| {
                ps.get("enum")
                    .and_then(Value::as_array)
                    .filter(|e| e.len() == 1)
                    .map(|e| &e[0])
            });
            if let Some(c) = fixed {
                if obj.get(k) != Some(c) {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn abs(p: &str) -> Result<String, String> {
        absolute(Path::new("/work/proj"), Some(Path::new("/home/ann")), p)
            .map(|p| p.to_string_lossy().into_owned())
    }

    #[test]
    fn relative_paths_resolve_against_the_base_and_normalise() {
        assert_eq!(abs("vtab-1k").unwrap(), "/work/proj/vtab-1k");
        assert_eq!(abs("./data//vtab-1k/").unwrap(), "/work/proj/data/vtab-1k");
        assert_eq!(abs("../shared/vtab-1k").unwrap(), "/work/shared/vtab-1k");
        assert_eq!(abs("a/b/../../c").unwrap(), "/work/proj/c");
        assert_eq!(abs("../../../../x").unwrap(), "/x");
        assert_eq!(abs("/data/./vtab/../vtab-1k").unwrap(), "/data/vtab-1k");
        assert_eq!(abs("~/vtab-1k").unwrap(), "/home/ann/vtab-1k");
        assert_eq!(abs("~").unwrap(), "/home/ann");
        assert_eq!(
            abs("dir with space/ü").unwrap(),
            "/work/proj/dir with space/ü"
        );
        let e = abs("~bob/x").unwrap_err();
        assert!(e.contains("only `~` and `~/...`"), "{e}");
        let e = absolute(Path::new("/w"), None, "~/x").unwrap_err();
        assert!(e.contains("HOME is not set"), "{e}");
        let h = Some(Path::new("/home/ann"));
        assert_eq!(expand_home(h, "~/c").unwrap(), Path::new("/home/ann/c"));
        assert_eq!(expand_home(h, "rel/x").unwrap(), Path::new("rel/x"));
        assert_eq!(expand_home(h, "a/~/b").unwrap(), Path::new("a/~/b"));
    }

    #[test]
    fn only_path_formatted_strings_of_the_selected_variant_change() {
        let schema = json!({
            "type": "object",
            "properties": {
                "source": {"$ref": "#/$defs/Source"},
                "name": {"type": "string"},
                "extra": {"type": "array", "items": {"type": "string", "format": "path"}},
                "maybe": {"type": ["string", "null"], "format": "path"}
            },
            "$defs": {"Source": {"oneOf": [
                {"type": "object", "properties": {
                    "kind": {"const": "local"}, "path": {"type": "string", "format": "path"}}},
                {"type": "object", "properties": {
                    "kind": {"const": "hub"}, "path": {"type": "string"}}}
            ]}}
        });
        let mut v = json!({"source": {"kind": "local", "path": "d/../vtab"}, "name": "n/x",
            "extra": ["a", "/b", "${stages.x.outputs}"], "maybe": null});
        let errs = resolve_paths(&schema, &mut v, Path::new("/w"), None);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            v,
            json!({"source": {"kind": "local", "path": "/w/vtab"}, "name": "n/x",
                "extra": ["/w/a", "/b", "${stages.x.outputs}"], "maybe": null})
        );
        let mut hub = json!({"source": {"kind": "hub", "path": "org/repo"}});
        resolve_paths(&schema, &mut hub, Path::new("/w"), None);
        assert_eq!(
            hub["source"]["path"], "org/repo",
            "a hub repo is not a path"
        );
        let mut empty = json!({"source": {"kind": "local", "path": " "}});
        let errs = resolve_paths(&schema, &mut empty, Path::new("/w"), None);
        assert_eq!(
            errs,
            vec![(
                "source.path".to_string(),
                "empty path: expected a file or folder".to_string()
            )]
        );
        let mut bad = json!({"maybe": "~x/y"});
        let errs = resolve_paths(&schema, &mut bad, Path::new("/w"), None);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "maybe");
    }
}
