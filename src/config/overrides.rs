//! Hydra-style overrides: `--set a.b=v` (v is read as YAML: `0.1`, `true`, `[1, 2]`, `dtd`).
use serde_json::Value;

/// One parsed `--set PATH=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
    /// The text as given, for messages and the run record.
    pub raw: String,
}

/// Parse `a.b.0=value`.
pub fn parse_override(s: &str) -> Result<Override, String> {
    let (path, val) = s
        .split_once('=')
        .ok_or_else(|| format!("--set `{s}`: expected PATH=VALUE, e.g. params.lr=0.01"))?;
    let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("--set `{s}`: empty segment in path"));
    }
    let value = if val.trim().is_empty() {
        Value::String(String::new())
    } else {
        match super::yaml::parse(val) {
            Ok(doc) => doc.value,
            Err(_) => Value::String(val.to_string()),
        }
    };
    Ok(Override {
        path,
        value,
        raw: s.to_string(),
    })
}

/// Apply an override to a document; maps are created as needed, list items are
/// addressed by index (an index equal to the length appends).
pub fn apply(doc: &mut Value, o: &Override) -> Result<(), String> {
    let mut cur = doc;
    let n = o.path.len();
    for (i, seg) in o.path.iter().enumerate() {
        let last = i + 1 == n;
        let here = o.path[..=i].join(".");
        cur = match cur {
            Value::Object(m) => {
                if last {
                    m.insert(seg.clone(), o.value.clone());
                    return Ok(());
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
                }
                if last {
                    a[idx] = o.value.clone();
                    return Ok(());
                }
                &mut a[idx]
            }
            other => {
                return Err(format!(
                    "--set {}: `{}` is a {}, not a map or list",
                    o.raw,
                    o.path[..i].join("."),
                    kind_name(other)
                ))
            }
        };
    }
    Ok(())
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_scalars_lists_and_list_items() {
        let mut d = json!({"params": {"lr": 1}, "stages": {"t": {"matrix": {"seed": [1, 2]}}}});
        for s in [
            "params.lr=0.5",
            "params.new.deep=x",
            "stages.t.matrix.seed.1=7",
            "stages.t.matrix.task=[a, b]",
        ] {
            apply(&mut d, &parse_override(s).unwrap()).unwrap();
        }
        assert_eq!(d["params"]["lr"], json!(0.5));
        assert_eq!(d["params"]["new"]["deep"], json!("x"));
        assert_eq!(d["stages"]["t"]["matrix"]["seed"], json!([1, 7]));
        assert_eq!(d["stages"]["t"]["matrix"]["task"], json!(["a", "b"]));
    }

    #[test]
    fn bad_overrides_say_why() {
        assert!(parse_override("nopath").is_err());
        let mut d = json!({"a": 1, "l": [1]});
        let e = apply(&mut d, &parse_override("a.b=1").unwrap()).unwrap_err();
        assert!(e.contains("`a` is a number"), "{e}");
        let e = apply(&mut d, &parse_override("l.5=1").unwrap()).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }
}
