//! YAML loading that keeps the line and column of every node, so that later
//! (schema and semantic) errors can point at the exact place in the file.
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::fmt;

/// Largest pipeline file accepted (pipeline files are untrusted).
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// 1-based line and column of a YAML node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

/// A parsed YAML document: its JSON value and where each node came from,
/// keyed by dotted path (`stages.tune.with.lr`, list items as `matrix.seed.0`).
#[derive(Debug, Clone)]
pub struct Located {
    pub value: Value,
    pub positions: HashMap<String, Pos>,
}

impl Located {
    /// Position of `path`, or of its nearest located ancestor.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .positions
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 })
                }
            }
        }
    }
}

enum Kind {
    Scalar(Value),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

struct Node(Kind);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::Bool(v))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::from(v))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::from(v))))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Node(Kind::Scalar(Value::Number(n)))),
            None => Err(E::custom(format!("number {v} is not finite"))),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::String(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::String(v))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::Null)))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node(Kind::Scalar(Value::Null)))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = seq.next_element::<Spanned<Node>>()? {
            v.push(n);
        }
        Ok(Node(Kind::Seq(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut v: Vec<(String, Spanned<Node>)> = Vec::new();
        while let Some(k) = map.next_key::<Spanned<KeyString>>()? {
            let key = k.value.0;
            if v.iter().any(|(existing, _)| *existing == key) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{key}` at line {} column {}",
                    k.referenced.line(),
                    k.referenced.column()
                )));
            }
            let val = map.next_value::<Spanned<Node>>()?;
            v.push((key, val));
        }
        Ok(Node(Kind::Map(v)))
    }
}

/// Mapping keys: strings, or scalars written as strings (`1: x` gives key `1`).
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize(d)?.0 {
            Kind::Scalar(Value::String(s)) => Ok(KeyString(s)),
            Kind::Scalar(Value::Null) => Ok(KeyString("null".into())),
            Kind::Scalar(v) => Ok(KeyString(v.to_string())),
            _ => Err(de::Error::custom("mapping keys must be plain scalars")),
        }
    }
}

fn flatten(node: Spanned<Node>, path: String, out: &mut HashMap<String, Pos>) -> Value {
    out.insert(
        path.clone(),
        Pos {
            line: node.referenced.line(),
            col: node.referenced.column(),
        },
    );
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match node.value.0 {
        Kind::Scalar(v) => v,
        Kind::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| flatten(n, join(&i.to_string()), out))
                .collect(),
        ),
        Kind::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, n) in entries {
                let v = flatten(n, join(&k), out);
                m.insert(k, v);
            }
            Value::Object(m)
        }
    }
}

/// A YAML syntax error with its position (when the parser knows it).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parse YAML text into a value with node positions. Aliases, depth and node
/// counts are bounded by serde-saphyr's default budget; size by [`MAX_FILE_BYTES`].
/// Booleans are YAML 1.2's `true` / `false` only (`yes`, `no`, `on`, `off`, `y`, `n` are
/// strings).
pub fn parse(text: &str) -> Result<Located, SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SyntaxError {
            pos: None,
            message: format!(
                "file is {} bytes; pipeline files are limited to {} bytes",
                text.len(),
                MAX_FILE_BYTES
            ),
        });
    }
    if text.trim().is_empty() {
        return Err(SyntaxError {
            pos: Some(Pos { line: 1, col: 1 }),
            message: "empty document: expected a mapping with `version`, `name` and `stages`"
                .into(),
        });
    }
    // YAML 1.2 core booleans only: under YAML 1.1 rules a param named `n` or `y`, or a value
    // `no` / `on`, silently became a boolean.
    let options = serde_saphyr::options! { strict_booleans: true };
    let node: Spanned<Node> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let pos = e.location().map(|l| Pos {
            line: l.line(),
            col: l.column(),
        });
        SyntaxError {
            pos,
            message: clean(&e.to_string()),
        }
    })?;
    let mut positions = HashMap::new();
    let value = flatten(node, String::new(), &mut positions);
    if value.is_null() {
        return Err(SyntaxError {
            pos: Some(Pos { line: 1, col: 1 }),
            message: "empty document: expected a mapping with `version`, `name` and `stages`"
                .into(),
        });
    }
    Ok(Located { value, positions })
}

/// First line of a parser message, without the parser's own `error: line L column C:` prefix.
fn clean(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").trim();
    let l = l.strip_prefix("error: ").unwrap_or(l);
    match l.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.contains("column") => rest.to_string(),
        _ => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_nodes() {
        let doc = parse("a:\n  b: [1, 2]\n  c:\n    - x: 3\n").unwrap();
        assert_eq!(doc.value["a"]["b"][1], 2);
        assert_eq!(doc.pos("a.b").line, 2);
        assert_eq!(doc.pos("a.c.0.x"), Pos { line: 4, col: 10 });
        assert_eq!(doc.pos("a.c.0.x.missing").line, 4);
    }

    #[test]
    fn only_yaml_1_2_spellings_are_booleans() {
        let doc = parse("n: 1\ny: 2\nflags: [yes, no, on, off, Y, N, true, False]\n").unwrap();
        assert_eq!(doc.value["n"], 1, "key `n` stays a string key");
        assert_eq!(doc.value["y"], 2);
        assert_eq!(
            doc.value["flags"],
            serde_json::json!(["yes", "no", "on", "off", "Y", "N", true, false])
        );
    }

    #[test]
    fn duplicate_keys_and_bad_syntax_are_errors() {
        assert!(parse("a: 1\na: 2\n")
            .unwrap_err()
            .message
            .contains("duplicate"));
        let e = parse("a: [1, 2\n").unwrap_err();
        assert!(e.pos.is_some(), "{e:?}");
    }
}
