//! Hydra-style overrides: `--set a.b=v` (v is read as YAML: `0.1`, `true`, `[1, 2]`, `dtd`).
//!
//! An override changes what the file has; it does not add to it, so a typo cannot be
//! silently ignored: a missing top-level key (other than a field of the DSL), stage id, or
//! key under `params` is an error naming what the file has. `+PATH=VALUE` adds a new entry
//! (Hydra's form) and is an error when the entry exists. Inside a stage (`stages.ID.with...`)
//! missing maps are created, since each kind's schema checks its fields.
use serde_json::Value;

/// One parsed `--set [+]PATH=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted path split at `.`, e.g. `["params", "lr"]` (a list item by its index, `"0"`).
    pub path: Vec<String>,
    /// The value read as YAML (`null` or `~` is null, an empty value the empty string; text that
    /// is not YAML is a string).
    pub value: Value,
    /// The text as given, for messages and the run record.
    pub raw: String,
    /// `+PATH=VALUE`: add an entry the file does not have.
    pub add: bool,
}

/// Parse `[+]a.b.0=value`. A value that starts like a YAML flow collection or quoted string
/// (`{`, `[`, `"`, `'`) must parse as YAML; other values that are not YAML are strings.
pub fn parse_override(s: &str) -> Result<Override, String> {
    let (path, val) = s
        .split_once('=')
        .ok_or_else(|| format!("--set `{s}`: expected PATH=VALUE, e.g. params.lr=0.01"))?;
    let path = path.trim();
    let (add, path) = match path.strip_prefix('+') {
        Some(p) => (true, p),
        None => (false, path),
    };
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("--set `{s}`: empty segment in path"));
    }
    let value = if val.trim().is_empty() {
        Value::String(String::new())
    } else if matches!(val.trim(), "null" | "Null" | "NULL" | "~") {
        // YAML 1.2's null, as in the file (the document parser wants a non-null root):
        // `--set stages.data.with.n_train=null` asks for the default.
        Value::Null
    } else {
        match super::yaml::parse(val) {
            Ok(doc) => doc.value,
            Err(e) => match val.trim_start().chars().next() {
                Some(c @ ('{' | '[' | '"' | '\'')) => {
                    let what = match c {
                        '{' => "a YAML flow mapping",
                        '[' => "a YAML flow list",
                        _ => "a quoted YAML string",
                    };
                    return Err(format!(
                        "--set `{s}`: the value starts with `{c}` but is not valid as {what}: {} \
                         (quote the whole value in the shell, e.g. --set 'PATH={{a: 1, b: 2}}')",
                        e.message
                    ));
                }
                _ => Value::String(val.to_string()),
            },
        }
    };
    Ok(Override {
        path,
        value,
        raw: s.to_string(),
        add,
    })
}

/// `word`'s closest candidate, when it is close enough to be a likely typo: an edit
/// distance (a swap of two letters counts one) of at most 1 for short words, at most a
/// third of the length for longer ones.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Whether a missing key at `path[..=i]` is a typo to refuse (see the module doc).
fn strict_at(path: &[String], i: usize, top_fields: &[&str]) -> bool {
    match (path[0].as_str(), i) {
        (first, 0) => !top_fields.contains(&first),
        ("params", _) => true,
        ("stages", 1) => true,
        _ => false,
    }
}

fn missing_key(
    o: &Override,
    i: usize,
    have: &serde_json::Map<String, Value>,
    top_fields: &[&str],
) -> String {
    let seg = &o.path[i];
    let (what, list_name, names): (String, &str, Vec<&str>) = match (o.path[0].as_str(), i) {
        (_, 0) => (
            format!("the pipeline has no top-level key `{seg}`"),
            "top-level keys",
            top_fields.to_vec(),
        ),
        ("params", 1) => (
            format!("the pipeline has no param `{seg}`"),
            "params",
            have.keys().map(String::as_str).collect(),
        ),
        ("stages", 1) => (
            format!("the pipeline has no stage `{seg}`"),
            "stages",
            have.keys().map(String::as_str).collect(),
        ),
        _ => (
            format!("`{}` has no key `{seg}`", o.path[..i].join(".")),
            "keys",
            have.keys().map(String::as_str).collect(),
        ),
    };
    let mut m = format!(
        "--set {}: {what} ({list_name}: {})",
        o.raw,
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    );
    if let Some(s) = did_you_mean(seg, names.iter().copied()) {
        m.push_str(&format!("; did you mean `{s}`?"));
    }
    // A new top-level key cannot be valid: only offer `+` where the schema allows new keys.
    if i > 0 {
        m.push_str(&format!(
            "; to add it, write `--set +{}`",
            o.raw.trim_start_matches('+')
        ));
    }
    m
}

/// Apply an override to a document. A missing key is refused or created as the module doc
/// says (`top_fields`: the DSL's top-level fields, which may be set when absent); list items
/// are addressed by index (an index equal to the length appends). Returns the dotted path of
/// the shallowest node the override created or replaced (errors under it are the
/// override's, not the file's).
/// A refused override leaves the document as it was.
pub fn apply(doc: &mut Value, o: &Override, top_fields: &[&str]) -> Result<String, String> {
    let mut work = doc.clone();
    let made = apply_in(&mut work, o, top_fields)?;
    *doc = work;
    Ok(made)
}

fn apply_in(doc: &mut Value, o: &Override, top_fields: &[&str]) -> Result<String, String> {
    let mut cur = doc;
    let n = o.path.len();
    let mut made: Option<usize> = None;
    for (i, seg) in o.path.iter().enumerate() {
        let last = i + 1 == n;
        let here = o.path[..=i].join(".");
        cur = match cur {
            Value::Object(m) => {
                if !m.contains_key(seg) {
                    if !o.add && strict_at(&o.path, i, top_fields) {
                        return Err(missing_key(o, i, m, top_fields));
                    }
                    made.get_or_insert(i);
                } else if last && o.add && made.is_none() {
                    return Err(format!(
                        "--set {}: `{here}` exists already: write `--set {}` to change it \
                         (`+` adds a new entry)",
                        o.raw,
                        o.raw.trim_start_matches('+')
                    ));
                }
                if last {
                    m.insert(seg.clone(), o.value.clone());
                    break;
                }
                m.entry(seg.clone())
                    .or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(a) => {
                let idx: usize = seg.parse().map_err(|_| {
                    format!(
                        "--set {}: `{here}` indexes a list: expected a number",
                        o.raw
                    )
                })?;
                if idx > a.len() {
                    return Err(format!(
                        "--set {}: `{here}`: index {idx} is past the end of a list of {}",
                        o.raw,
                        a.len()
                    ));
                }
                if idx == a.len() {
                    a.push(Value::Null);
                    made.get_or_insert(i);
                }
                if last {
                    a[idx] = o.value.clone();
                    break;
                }
                &mut a[idx]
            }
            other => {
                return Err(format!(
                    "--set {}: `{}` is a {}, not a map or list",
                    o.raw,
                    o.path[..i].join("."),
                    super::explain::type_name(other)
                ))
            }
        };
    }
    Ok(o.path[..=made.unwrap_or(n - 1)].join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOP: &[&str] = &["version", "name", "params", "stages"];

    fn set(d: &mut Value, s: &str) -> Result<String, String> {
        apply(d, &parse_override(s)?, TOP)
    }

    #[test]
    fn sets_scalars_lists_and_list_items() {
        let mut d =
            json!({"params": {"lr": 1, "new": {}}, "stages": {"t": {"matrix": {"seed": [1, 2]}}}});
        assert_eq!(set(&mut d, "params.lr=0.5").unwrap(), "params.lr");
        assert_eq!(
            set(&mut d, "+params.new.deep=x").unwrap(),
            "params.new.deep"
        );
        assert_eq!(set(&mut d, "+params.more.deep=[1]").unwrap(), "params.more");
        assert_eq!(
            set(&mut d, "stages.t.matrix.seed.1=7").unwrap(),
            "stages.t.matrix.seed.1"
        );
        assert_eq!(
            set(&mut d, "stages.t.matrix.task=[a, b]").unwrap(),
            "stages.t.matrix.task"
        );
        assert_eq!(
            set(&mut d, "stages.t.with.splits=[test]").unwrap(),
            "stages.t.with"
        );
        assert_eq!(d["params"]["lr"], json!(0.5));
        assert_eq!(d["params"]["new"]["deep"], json!("x"));
        assert_eq!(d["params"]["more"]["deep"], json!([1]));
        assert_eq!(d["stages"]["t"]["matrix"]["seed"], json!([1, 7]));
        assert_eq!(d["stages"]["t"]["matrix"]["task"], json!(["a", "b"]));
        assert_eq!(d["stages"]["t"]["with"]["splits"], json!(["test"]));
    }

    #[test]
    fn a_missing_param_stage_or_top_key_is_refused_with_a_suggestion() {
        let mut d = json!({"name": "p", "params": {"root": "r", "weights": "w",
            "student": {"embed_dim": 32}}, "stages": {"data": {}}});
        let before = d.clone();
        assert_eq!(
            set(&mut d, "params.rot=../data/vtab-1k").unwrap_err(),
            "--set params.rot=../data/vtab-1k: the pipeline has no param `rot` (params: root, \
             weights, student); did you mean `root`?; to add it, write \
             `--set +params.rot=../data/vtab-1k`"
        );
        assert_eq!(
            set(&mut d, "params.student.embd_dim=1").unwrap_err(),
            "--set params.student.embd_dim=1: `params.student` has no key `embd_dim` (keys: \
             embed_dim); did you mean `embed_dim`?; to add it, write \
             `--set +params.student.embd_dim=1`"
        );
        assert_eq!(
            set(&mut d, "stages.dta.with.tasks=[dtd]").unwrap_err(),
            "--set stages.dta.with.tasks=[dtd]: the pipeline has no stage `dta` (stages: data); \
             did you mean `data`?; to add it, write `--set +stages.dta.with.tasks=[dtd]`"
        );
        assert_eq!(
            set(&mut d, "nme=x").unwrap_err(),
            "--set nme=x: the pipeline has no top-level key `nme` (top-level keys: version, \
             name, params, stages); did you mean `name`?"
        );
        let e = set(&mut d, "params.zzzzzz=1").unwrap_err();
        assert!(!e.contains("did you mean"), "{e}");
        let e = set(&mut d, "+params.root=x").unwrap_err();
        assert!(
            e.contains("`params.root` exists already: write `--set params.root=x`"),
            "{e}"
        );
        assert_eq!(d, before, "a refused override changes nothing");
        // A DSL field the file lacks may be set without `+`; a param under it may not.
        let mut bare = json!({"name": "p"});
        assert_eq!(set(&mut bare, "version=1").unwrap(), "version");
        let e = set(&mut bare, "params.lr=1").unwrap_err();
        assert!(e.contains("no param `lr` (params: none)"), "{e}");
        assert_eq!(
            bare,
            json!({"name": "p", "version": 1}),
            "nothing was created"
        );
        assert_eq!(set(&mut bare, "+params.lr=1").unwrap(), "params");
        assert_eq!(bare["params"]["lr"], 1);
    }

    #[test]
    fn a_broken_flow_value_is_an_error_not_a_string() {
        for (s, what) in [
            (
                "params.student={img_size: 16, patch_size: 8",
                "a YAML flow mapping",
            ),
            ("params.tasks=[dtd, eurosat", "a YAML flow list"),
            ("params.name=\"abc", "a quoted YAML string"),
        ] {
            let e = parse_override(s).unwrap_err();
            assert!(
                e.starts_with(&format!("--set `{s}`: the value starts with")) && e.contains(what),
                "{e}"
            );
        }
        // Plain text that is not YAML structure stays a string.
        assert_eq!(parse_override("a=x: y: z").unwrap().value, json!("x: y: z"));
        assert_eq!(parse_override("a={b: 1}").unwrap().value, json!({"b": 1}));
    }

    #[test]
    fn bad_overrides_say_why() {
        assert!(parse_override("nopath").is_err());
        let mut d = json!({"params": {"a": 1, "l": [1]}});
        let e = set(&mut d, "params.a.b=1").unwrap_err();
        assert!(e.contains("`params.a` is a number"), "{e}");
        let e = set(&mut d, "params.l.5=1").unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn null_and_tilde_are_yaml_null_as_in_the_file() {
        for v in ["null", "Null", "NULL", "~", " null "] {
            let o = parse_override(&format!("params.n={v}")).unwrap();
            assert_eq!(o.value, Value::Null, "{v}");
        }
        // Quoted, or part of a longer text, they stay strings.
        let o = parse_override("params.n='null'").unwrap();
        assert_eq!(o.value, json!("null"));
        let o = parse_override("params.n=~/x").unwrap();
        assert_eq!(o.value, json!("~/x"));
    }
}
