//! Types and numbers in the user's words, and the one rule for integers.
//!
//! YAML 1.2 reads `1e3` and `10.0` as floats. A field that wants an integer accepts a float
//! with no fractional part, as JSON Schema does (`10.0` is an integer there), and holds the
//! integer: `epochs: 1e3` is `epochs: 1000`, for the stage and for the cache key
//! ([`integral_floats_to_integers`]). `10.5` is refused (`expected an integer, got 10.5`),
//! and so is an integer outside the field's width (`expected an integer of at most
//! 4294967295, got 5000000000`): [`bound_integers`] writes each width's range into the
//! schema, so `validate`, the editor schema and the stage agree.
use super::paths::for_each_marked;
use serde_json::{json, Value};

/// The range of an integer `format` schemars writes (`uint32`, `int64`, `uint` for usize).
fn format_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" | "int" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

fn number(n: i128) -> Value {
    u64::try_from(n)
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(n as i64))
}

/// Add `minimum` and `maximum` to every node of a generated schema whose `format` is an
/// integer width (`uint32`: 0 to 4294967295), keeping a bound the type states already.
pub fn bound_integers(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            let range = m
                .get("format")
                .and_then(Value::as_str)
                .and_then(format_range);
            if let Some((lo, hi)) = range {
                m.entry("minimum").or_insert_with(|| number(lo));
                m.entry("maximum").or_insert_with(|| number(hi));
            }
            for v in m.values_mut() {
                bound_integers(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// The JSON types a schema node admits (`type`, a string or a list).
fn types(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Replace, in place, every float with no fractional part that `schema` (self-contained,
/// with its `$defs`) wants as an integer by that integer (see the module doc). Floats with a
/// fraction or beyond 64 bits are left for the schema check to refuse.
pub fn integral_floats_to_integers(schema: &Value, value: &mut Value) {
    let wants_integer = |s: &Value| {
        let t = types(s);
        t.contains(&"integer") && !t.contains(&"number")
    };
    for_each_marked(schema, value, &wants_integer, &mut |_, v| {
        let Some(f) = v.as_f64().filter(|_| v.is_f64()) else {
            return;
        };
        if f.fract() != 0.0 {
            return;
        }
        if f >= 0.0 && f < u64::MAX as f64 {
            *v = json!(f as u64);
        } else if f < 0.0 && f >= i64::MIN as f64 {
            *v = json!(f as i64);
        }
    });
}

/// What a schema node wants, in words: `an integer`, `a string or null`.
pub fn expected(node: &Value) -> Option<String> {
    let words: Vec<&str> = types(node)
        .into_iter()
        .map(|t| match t {
            "integer" => "an integer",
            "number" => "a number",
            "string" => "a string",
            "boolean" => "a boolean (true or false)",
            "array" => "a list",
            "object" => "a map",
            "null" => "null",
            other => other,
        })
        .collect();
    (!words.is_empty()).then(|| words.join(" or "))
}

/// A value as a message shows it: scalars as written in JSON (`"ten"`, `10.5`, `true`),
/// a list or map by its kind.
pub fn shown(v: &Value) -> String {
    match v {
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
        Value::String(s) if s.chars().count() > 60 => {
            let head: String = s.chars().take(57).collect();
            format!("{:?}", format!("{head}..."))
        }
        other => other.to_string(),
    }
}

/// `expected an integer, got "ten"` for a value of the wrong type at a node of schema
/// `node`; a quoted number says to drop the quotes.
pub fn type_message(node: &Value, got: &Value) -> Option<String> {
    let want = expected(node)?;
    let mut m = format!("expected {want}, got {}", shown(got));
    let wants_number = types(node)
        .iter()
        .any(|t| matches!(*t, "integer" | "number"));
    if wants_number
        && got
            .as_str()
            .is_some_and(|s| s.trim().parse::<f64>().is_ok())
    {
        m.push_str(" (a quoted number is text: write it without quotes)");
    } else if got.is_f64() && types(node).contains(&"integer") {
        m.push_str(" (a number with a fractional part)");
    }
    Some(m)
}

/// `expected an integer from 1 to 16, got 20` for a number outside the
/// `minimum`/`maximum` of schema `node`. A bound that is only the integer width's own
/// (18446744073709551615 for `uint64`) is left out when the value is on its right side:
/// `expected an integer of at least 1, got 0`.
pub fn range_message(node: &Value, got: &Value) -> Option<String> {
    let want = expected(node).unwrap_or_else(|| "a number".into());
    let want = want.split(" or ").next().unwrap_or("a number");
    let width = node
        .get("format")
        .and_then(Value::as_str)
        .and_then(format_range);
    let as_i128 = |v: &Value| {
        v.as_u64()
            .map(i128::from)
            .or_else(|| v.as_i64().map(i128::from))
    };
    let g = as_i128(got);
    // A bound that is the width's own, with the value inside it, says nothing.
    let own = |b: &Value, width_bound: Option<i128>, inside: fn(i128, i128) -> bool| {
        let (b, w) = (as_i128(b), width_bound);
        b.is_some() && b == w && g.is_some_and(|g| inside(g, w.unwrap_or(0)))
    };
    let lo = node
        .get("minimum")
        .or_else(|| node.get("exclusiveMinimum"))
        .filter(|b| !own(b, width.map(|w| w.0), |g, w| g >= w));
    let hi = node
        .get("maximum")
        .or_else(|| node.get("exclusiveMaximum"))
        .filter(|b| !own(b, width.map(|w| w.1), |g, w| g <= w));
    let range = match (lo, hi) {
        (Some(lo), Some(hi)) => format!("from {lo} to {hi}"),
        (Some(lo), None) => format!("of at least {lo}"),
        (None, Some(hi)) => format!("of at most {hi}"),
        (None, None) => return None,
    };
    Some(format!("expected {want} {range}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_widths_get_their_range_and_integral_floats_become_integers() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "epochs": {"type": "integer", "format": "uint32", "minimum": 0},
                "seed": {"type": ["integer", "null"], "format": "uint64"},
                "lr": {"type": "number", "format": "double"},
                "list": {"type": "array", "items": {"type": "integer", "format": "int8"}},
                "opt": {"anyOf": [{"$ref": "#/$defs/O"}, {"type": "null"}]}
            },
            "$defs": {"O": {"type": "object", "properties": {"n": {"type": "integer", "format": "uint"}}}}
        });
        bound_integers(&mut schema);
        assert_eq!(
            schema["properties"]["epochs"]["maximum"],
            json!(4294967295u64)
        );
        assert_eq!(schema["properties"]["seed"]["maximum"], json!(u64::MAX));
        assert_eq!(
            schema["properties"]["list"]["items"]["minimum"],
            json!(-128)
        );
        assert!(schema["properties"]["lr"].get("maximum").is_none());
        let mut v = json!({"epochs": 1000.0, "seed": 7.0, "lr": 1.0, "list": [-3.0, 2.5],
            "opt": {"n": 1e3}});
        integral_floats_to_integers(&schema, &mut v);
        assert_eq!(
            v,
            json!({"epochs": 1000, "seed": 7, "lr": 1.0, "list": [-3, 2.5], "opt": {"n": 1000}})
        );
        assert!(v["epochs"].is_u64() && v["list"][0].is_i64() && v["lr"].is_f64());
    }

    #[test]
    fn messages_say_what_was_expected_and_what_came() {
        let int =
            json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": 4294967295u32});
        assert_eq!(
            type_message(&int, &json!("ten")).unwrap(),
            "expected an integer, got \"ten\""
        );
        assert_eq!(
            type_message(&int, &json!("10")).unwrap(),
            "expected an integer, got \"10\" (a quoted number is text: write it without quotes)"
        );
        assert_eq!(
            type_message(&int, &json!(10.5)).unwrap(),
            "expected an integer, got 10.5 (a number with a fractional part)"
        );
        assert_eq!(
            type_message(&json!({"type": ["string", "null"]}), &json!([1])).unwrap(),
            "expected a string or null, got a list"
        );
        assert_eq!(
            range_message(&int, &json!(5000000000u64)).unwrap(),
            "expected an integer of at most 4294967295, got 5000000000"
        );
        assert_eq!(
            range_message(&json!({"type": "number", "minimum": 0}), &json!(-1)).unwrap(),
            "expected a number of at least 0, got -1"
        );
        // The width's own maximum is not worth stating for a value below the minimum.
        let at_least_1 = json!({"type": "integer", "format": "uint64", "minimum": 1,
            "maximum": u64::MAX});
        assert_eq!(
            range_message(&at_least_1, &json!(0)).unwrap(),
            "expected an integer of at least 1, got 0"
        );
        let int8 = json!({"type": "integer", "format": "int8", "minimum": -128, "maximum": 10});
        assert_eq!(
            range_message(&int8, &json!(11)).unwrap(),
            "expected an integer of at most 10, got 11"
        );
    }
}
