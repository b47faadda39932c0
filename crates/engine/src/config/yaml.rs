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
    /// Line, counting from 1.
    pub line: u64,
    /// Column, counting from 1.
    pub col: u64,
}

/// A parsed YAML document: its JSON value and where each node came from,
/// keyed by dotted path (`stages.tune.with.lr`, list items as `matrix.seed.0`).
#[derive(Debug, Clone)]
pub struct Located {
    /// The document as JSON (YAML mappings as objects, sequences as arrays).
    pub value: Value,
    /// Where each node's value starts, by dotted path (the root at the empty path).
    pub positions: HashMap<String, Pos>,
    /// Where the key of each mapping entry is, by the same dotted path (an unknown key is
    /// reported at the key, not at its value, which may be on another line).
    pub key_positions: HashMap<String, Pos>,
}

impl Located {
    /// Position of the key of the mapping entry at `path`, or [`Located::pos`] when `path`
    /// is not a mapping entry (a list item, the root, or a node an override made).
    pub fn key_pos(&self, path: &str) -> Pos {
        self.key_positions
            .get(path)
            .copied()
            .unwrap_or_else(|| self.pos(path))
    }

    /// Forget the positions of `path` and everything under it (an override replaced it).
    pub fn forget(&mut self, path: &str) {
        let under = format!("{path}.");
        let gone = |k: &String| path.is_empty() || k == path || k.starts_with(&under);
        self.positions.retain(|k, _| !gone(k));
        self.key_positions.retain(|k, _| !gone(k));
    }
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
    Map(Vec<(String, Pos, Spanned<Node>)>),
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
        let mut v: Vec<(String, Pos, Spanned<Node>)> = Vec::new();
        while let Some(k) = map.next_key::<Spanned<KeyString>>()? {
            let key = k.value.0;
            if v.iter().any(|(existing, _, _)| *existing == key) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{key}` at line {} column {}",
                    k.referenced.line(),
                    k.referenced.column()
                )));
            }
            let at = Pos {
                line: k.referenced.line(),
                col: k.referenced.column(),
            };
            let val = map.next_value::<Spanned<Node>>()?;
            v.push((key, at, val));
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

/// The document's lines and where each node is, filled in by [`flatten`].
struct Flat<'t> {
    lines: Vec<&'t str>,
    positions: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

fn flatten(node: Spanned<Node>, path: String, f: &mut Flat) -> Result<Value, SyntaxError> {
    let pos = Pos {
        line: node.referenced.line(),
        col: node.referenced.column(),
    };
    f.positions.insert(path.clone(), pos);
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    Ok(match node.value.0 {
        Kind::Scalar(Value::Number(n)) if n.is_f64() => {
            // An alias is read where its anchor's node is written.
            let at = Pos {
                line: node.defined.line(),
                col: node.defined.column(),
            };
            match decimal_int(&f.lines, at) {
                None => Value::Number(n),
                Some(Ok(v)) => v,
                Some(Err(message)) => {
                    return Err(SyntaxError {
                        pos: Some(pos),
                        message,
                    })
                }
            }
        }
        Kind::Scalar(v) => v,
        Kind::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| flatten(n, join(&i.to_string()), f))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, at, n) in entries {
                f.keys.insert(join(&k), at);
                let v = flatten(n, join(&k), f)?;
                m.insert(k, v);
            }
            Value::Object(m)
        }
    })
}

/// The integer written at `at` when it is a plain, untagged YAML 1.2 decimal integer
/// (`[-+]?[0-9]+`, leading zeros included: `010` is ten, not YAML 1.1's octal eight) that
/// the parser read as a float (it reads a leading zero, and a value beyond 64 bits, as one).
/// None: not such a scalar (a float, `!!float 010`, a quoted string). An error: the integer
/// does not fit in 64 bits.
fn decimal_int(lines: &[&str], at: Pos) -> Option<Result<Value, String>> {
    let line = lines.get((at.line.max(1) - 1) as usize)?;
    let before: String = line.chars().take((at.col.max(1) - 1) as usize).collect();
    let token: String = line
        .chars()
        .skip((at.col.max(1) - 1) as usize)
        .take_while(|c| !c.is_whitespace() && !",]}#".contains(*c))
        .collect();
    let digits = token.strip_prefix(['-', '+']).unwrap_or(&token);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Node properties before the scalar on its line: an explicit tag keeps its type.
    let props = before
        .split(|c: char| c.is_whitespace() || "[{,".contains(c))
        .filter(|t| !t.is_empty());
    for prop in props.rev() {
        if prop.starts_with('!') {
            return None;
        }
        if !prop.starts_with('&') {
            break;
        }
    }
    let value = if token.starts_with('-') {
        token.parse::<i64>().ok().map(Value::from)
    } else {
        digits.parse::<u64>().ok().map(Value::from)
    };
    Some(value.ok_or_else(|| {
        format!(
            "integer {token} does not fit in 64 bits (from {} to {}); write it in quotes if it \
             is text",
            i64::MIN,
            u64::MAX
        )
    }))
}

/// A YAML syntax error with its position (when the parser knows it).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// Where the parser stopped; `None` when there is no place to name (a file over
    /// [`MAX_FILE_BYTES`]).
    pub pos: Option<Pos>,
    /// What is wrong, in the parser's words or ours (an empty document, a tab in the indentation).
    pub message: String,
}

/// Parse YAML text into a value with node positions. Aliases, depth and node
/// counts are bounded by serde-saphyr's default budget; size by [`MAX_FILE_BYTES`].
/// Scalars follow the YAML 1.2 core schema: booleans are `true` / `false` only (`yes`, `no`,
/// `on`, `off`, `y`, `n` are strings); `[-+]?[0-9]+` is a decimal integer, leading zeros
/// included (`010` is 10), as are `0o17` and `0x1F` (the parser also takes YAML 1.1's `0b101`
/// and `1_000`); an integer beyond 64 bits is an error; `1e3` and `10.0` are floats; `.inf`
/// and `.nan` are refused (JSON, the form of every cache key, has no such numbers); `~`,
/// `null` and an empty value are null.
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
    if let Some(pos) = first_node_tab(text) {
        return Err(SyntaxError {
            pos: Some(pos),
            message: TAB_INDENT.into(),
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
        let message = in_user_terms(clean(&e.to_string()));
        match pos
            .filter(|_| mentions_tab(&message))
            .and_then(|p| culprit_tab(text, p))
        {
            Some((tab, true)) => SyntaxError {
                pos: Some(tab),
                message: TAB_INDENT.into(),
            },
            Some((tab, false)) => SyntaxError {
                pos: Some(tab),
                message,
            },
            // Another error at the first token of a line indented with a tab: the tab is what
            // broke the structure (e.g. a block scalar ended by a tab-indented line).
            None => match pos.and_then(|p| indent_tab_before_content(text, p)) {
                Some(tab) => SyntaxError {
                    pos: Some(tab),
                    message: format!("{TAB_INDENT} ({message})"),
                },
                None => SyntaxError { pos, message },
            },
        }
    })?;
    let mut flat = Flat {
        lines: yaml_lines(text),
        positions: HashMap::new(),
        keys: HashMap::new(),
    };
    let value = flatten(node, String::new(), &mut flat)?;
    let (positions, key_positions) = (flat.positions, flat.keys);
    if value.is_null() {
        return Err(SyntaxError {
            pos: Some(Pos { line: 1, col: 1 }),
            message: "empty document: expected a mapping with `version`, `name` and `stages`"
                .into(),
        });
    }
    Ok(Located {
        value,
        positions,
        key_positions,
    })
}

/// The message for a tab in the indentation of a line.
const TAB_INDENT: &str = "a tab is used for indentation; YAML indents with spaces only";

/// A tab indenting the document's first node (its first line that is not blank, a comment,
/// a directive or `---`), unless that node is a flow collection (`\t{...}` is valid YAML).
/// The parser accepts it when the node fits on that line, or reports the line after.
fn first_node_tab(text: &str) -> Option<Pos> {
    for (i, line) in yaml_lines(text).iter().enumerate() {
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        let content = line.trim_start_matches([' ', '\t']);
        let skip = content.is_empty()
            || content.starts_with('#')
            || line.starts_with('%')
            || content.trim_end() == "---"
            || content.starts_with("--- #");
        if skip {
            continue;
        }
        if content.starts_with(['{', '[']) {
            return None;
        }
        return line
            .chars()
            .position(|c| c == '\t')
            .filter(|k| *k < line.chars().count() - content.chars().count())
            .map(|k| Pos {
                line: i as u64 + 1,
                col: k as u64 + 1,
            });
    }
    None
}

/// The first tab in the indentation of line `at.line` when `at` is that line's first token.
fn indent_tab_before_content(text: &str, at: Pos) -> Option<Pos> {
    let lines = yaml_lines(text);
    let line = lines.get((at.line.max(1) - 1) as usize)?;
    let indent = line.chars().take_while(|c| *c == ' ' || *c == '\t').count() as u64;
    if at.col != indent + 1 {
        return None;
    }
    line.chars().position(|c| c == '\t').and_then(|k| {
        { (k as u64) < indent }.then_some(Pos {
            line: at.line,
            col: k as u64 + 1,
        })
    })
}

/// Whether a parser message is about a tab character.
fn mentions_tab(message: &str) -> bool {
    message
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| w.eq_ignore_ascii_case("tab") || w.eq_ignore_ascii_case("tabs"))
}

/// The lines of `text` without their breaks (YAML's: CR LF, CR or LF).
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        out.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    out.push(rest);
    out
}

/// The tab behind a tab error the parser reported at `at`, and whether it indents its line.
/// The parser reports some of these where the construct before the tab began, often the
/// line before (`while scanning a plain scalar, found a tab` at the previous value), and
/// others after the tab: the culprit is a tab in the indentation of the reported line before
/// the reported column, else the first tab indenting a later line, else the first tab after
/// the reported position. Line and column are 1-based, columns in characters.
fn culprit_tab(text: &str, at: Pos) -> Option<(Pos, bool)> {
    let lines = yaml_lines(text);
    let first = (at.line.max(1) - 1) as usize;
    let indent_tab = |line: &str| -> Option<u64> {
        line.chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .position(|c| c == '\t')
            .map(|i| i as u64 + 1)
    };
    for (i, line) in lines.iter().enumerate().skip(first) {
        let limit = if i == first { at.col } else { u64::MAX };
        if let Some(col) = indent_tab(line).filter(|c| *c <= limit) {
            let pos = Pos {
                line: i as u64 + 1,
                col,
            };
            return Some((pos, true));
        }
    }
    for (i, line) in lines.iter().enumerate().skip(first) {
        let from = if i == first { at.col.max(1) - 1 } else { 0 };
        if let Some(k) = line.chars().skip(from as usize).position(|c| c == '\t') {
            let pos = Pos {
                line: i as u64 + 1,
                col: from + k as u64 + 1,
            };
            return Some((pos, false));
        }
    }
    None
}

/// The parser's messages about numbers in the user's terms: its refusal of `.inf`/`.nan`
/// (`non-finite float `.inf` rejected by the configured policy`) and of a `!!int` value it
/// cannot read (`invalid u64`: it reads no leading zero under the tag); others unchanged.
fn in_user_terms(message: String) -> String {
    if matches!(message.as_str(), "invalid u64" | "invalid i64") {
        return "not an integer as `!!int` reads it: decimal digits without leading zeros, \
                `0o` octal or `0x` hex (without the tag, `010` is the integer 10)"
            .into();
    }
    let value = message
        .strip_prefix("non-finite float `")
        .and_then(|r| r.split_once('`'))
        .map(|(v, _)| v.to_string());
    match value {
        Some(v) => format!(
            "`{v}` is not a finite number: pipeline values must be finite (they enter cache \
             keys as JSON, which has no infinity or NaN); write it in quotes (\"{v}\") if it is \
             text"
        ),
        None => message,
    }
}

/// First line of a parser message, without the parser's own `error: line L column C:` prefix.
fn clean(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").trim();
    let l = l.strip_prefix("error: ").unwrap_or(l);
    // The parser's advice names its own Rust API, not anything a pipeline file can set.
    let l = match l.find(", set DuplicateKeyPolicy") {
        Some(i) => &l[..i],
        None => l,
    };
    match l.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.contains("column") => rest.to_string(),
        _ => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positions_of_nested_nodes() {
        let doc = parse("a:\n  b: [1, 2]\n  c:\n    - x: 3\n").unwrap();
        assert_eq!(doc.value["a"]["b"][1], 2);
        assert_eq!(doc.pos("a.b").line, 2);
        assert_eq!(doc.pos("a.c.0.x"), Pos { line: 4, col: 10 });
        assert_eq!(doc.pos("a.c.0.x.missing").line, 4);
    }

    #[test]
    fn keys_have_their_own_positions() {
        // A block value on the next line: the key is on line 2, its value on line 3.
        let mut doc = parse(
            "a: 1
stagess:
  x: {}
l: [1]
",
        )
        .unwrap();
        assert_eq!(doc.key_pos("stagess"), Pos { line: 2, col: 1 });
        assert_eq!(doc.pos("stagess"), Pos { line: 3, col: 3 });
        assert_eq!(doc.key_pos("stagess.x"), Pos { line: 3, col: 3 });
        // A list item has no key: its own position.
        assert_eq!(doc.key_pos("l.0"), doc.pos("l.0"));
        doc.forget("stagess");
        assert_eq!(doc.pos("stagess.x"), Pos { line: 1, col: 1 });
        assert_eq!(doc.key_pos("a"), Pos { line: 1, col: 1 });
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

    fn error_at(text: &str) -> (u64, u64, String) {
        let e = parse(text).unwrap_err();
        let p = e
            .pos
            .unwrap_or_else(|| panic!("{text:?}: no position: {e:?}"));
        (p.line, p.col, e.message)
    }

    #[test]
    fn a_tab_in_indentation_is_reported_at_the_tab() {
        // (text, line, column of the tab): 1-based, columns in characters.
        let cases: &[(&str, u64, u64)] = &[
            // After a nested value: the parser reported the value before (2:6).
            ("a:\n  b: 1\n\tc: 2\n", 3, 1),
            ("a:\n\tb: 1\n", 2, 1),
            // Spaces, then a tab.
            ("a:\n    b: 1\n  \tc: 2\n", 3, 3),
            ("a:\n  b:\n    c: 1\n\t\td: 2\n", 4, 1),
            // A sequence item indented by a tab; a tab after `- ` then one indenting the
            // item's next key.
            ("a: 1\nb:\n  - x\n\t- y\n", 4, 1),
            ("a:\n  - b\n  -\tc: 1\n    \td: 2\n", 4, 5),
            // A tab inside the value before does not count.
            ("a: x\ty\n\tb: 2\n", 2, 1),
            // Non-ASCII before: columns count characters.
            ("name: é\na:\n  b: ü\n\tc: 2\n", 4, 1),
            // First line of the file (alone, and followed by more), after comments, after `---`.
            ("\ta: 1\n", 1, 1),
            ("\ta: 1\nb: 2\n", 1, 1),
            ("  \tversion: 1\n", 1, 3),
            ("# pipeline\n\n\ta: 1\n", 3, 1),
            ("---\n\ta: 1\n", 2, 1),
            // Last line, without a final line break.
            ("a: 1\n\tb: 2", 2, 1),
            // CRLF and lone CR line breaks count one line each.
            ("a: 1\r\n\tb: 2\r\n", 2, 1),
            ("a:\r\n  b: 1\r\n\tc: 2\r\n", 3, 1),
            ("a: 1\r\tb: 2\r", 2, 1),
            // Inside a nested flow collection, a tab cannot indent the continuation either.
            ("a:\n  b: [1,\n\t2]\n", 3, 1),
            ("a:\n\t- 1\n", 2, 1),
            ("a: |\n\tx\n", 2, 1),
        ];
        for &(text, line, col) in cases {
            assert_eq!(
                error_at(text),
                (line, col, TAB_INDENT.to_string()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_tab_ending_a_block_scalar_is_named() {
        // The parser's own message is about the mapping; the position was the `y` after the tab.
        assert_eq!(
            error_at("a: |\n  x\n\ty\n"),
            (
                3,
                1,
                format!("{TAB_INDENT} (while parsing a block mapping, did not find expected key)")
            )
        );
        // An error elsewhere on a line indented by a tab is not blamed on the tab.
        let (line, col, msg) = error_at("a: {b: 1,\n\tc: [2}\n");
        assert!(!msg.contains("tab"), "{line}:{col} {msg}");
    }

    #[test]
    fn tabs_where_yaml_allows_them_are_accepted() {
        let cases: &[(&str, serde_json::Value)] = &[
            // Separation after a sequence marker (with and without a space before it).
            ("a:\n  -\tb: 1\n", json!({"a": [{"b": 1}]})),
            ("a:\n  - \tb: 1\n  - c\n", json!({"a": [{"b": 1}, "c"]})),
            // Inside flow collections, also starting a continuation line.
            ("a: {b: 1,\tc: 2}\n", json!({"a": {"b": 1, "c": 2}})),
            ("a: {b: 1,\n\tc: 2}\n", json!({"a": {"b": 1, "c": 2}})),
            ("\t{a: 1}\n", json!({"a": 1})),
            // Content of a block scalar; a line of blanks; the last line.
            ("a: |\n  x\n  \ty\n", json!({"a": "x\n\ty\n"})),
            ("x:\n\t\n  y: 1\n", json!({"x": {"y": 1}})),
            ("a: 1\n\t", json!({"a": 1})),
            ("a: x\ty\n", json!({"a": "x\ty"})),
            // Quoted continuation lines, explicit keys, folded scalar content.
            ("a: 'x\n\ty'\n", json!({"a": "x y"})),
            ("? \tkey\n: v\n", json!({"key": "v"})),
            ("a: >\n \tx\n", json!({"a": "\tx\n"})),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(&got.value, want, "{text:?}");
        }
    }

    #[test]
    fn positions_after_crlf_line_breaks() {
        // Errors: 1-based line and column of the offending token.
        assert_eq!(
            error_at("a: 1\r\nb: [1,\r\nc: 3\r\n"),
            (2, 4, "unclosed bracket '['".into())
        );
        assert_eq!(
            error_at("a: 1\r\nb:\r\n  c: 1\r\n d: 2\r\n"),
            (
                4,
                2,
                "while parsing a block mapping, did not find expected key".into()
            )
        );
        // The parser's advice to set a Rust option is not ours to give.
        assert_eq!(
            error_at("a: 1\r\nb: 2\r\na: 3\r\n"),
            (3, 1, "duplicate mapping key: a".into())
        );
        // Node positions.
        let doc = parse("a: 1\r\nb:\r\n  c: [x, y]\r\n").unwrap();
        assert_eq!(doc.pos("b.c.1"), Pos { line: 3, col: 10 });
        assert_eq!(doc.pos("a"), Pos { line: 1, col: 4 });
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

    #[test]
    fn numbers_follow_the_yaml_1_2_core_schema() {
        let cases: &[(&str, Value)] = &[
            // Leading zeros: decimal (YAML 1.1 read 010 as octal 8).
            ("010", json!(10)),
            ("007", json!(7)),
            ("-010", json!(-10)),
            ("+010", json!(10)),
            ("00", json!(0)),
            ("+5", json!(5)),
            ("-0", json!(0)),
            ("0o17", json!(15)),
            ("0x1F", json!(31)),
            // Not YAML 1.2 core, accepted as YAML 1.1 parsers do.
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            // 1.2 core: hex and octal prefixes are lower case; `0X1F` is text.
            ("0X1F", json!("0X1F")),
            ("18446744073709551615", json!(u64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            // Floats stay floats.
            ("1e3", json!(1000.0)),
            ("1.0", json!(1.0)),
            ("010.5", json!(10.5)),
            ("!!float 010", json!(10.0)),
            // Quoted, tagged as text, or null.
            ("'010'", json!("010")),
            ("\"007\"", json!("007")),
            ("!!str 010", json!("010")),
            ("~", Value::Null),
            ("null", Value::Null),
            ("", Value::Null),
        ];
        for (t, want) in cases {
            let doc = parse(&format!("a: {t}\n")).unwrap_or_else(|e| panic!("{t}: {e:?}"));
            assert_eq!(&doc.value["a"], want, "{t}");
            if t.is_empty() {
                continue;
            }
            // In flow and block collections, after an anchor, and through an alias.
            let doc = parse(&format!("l: [{t}, 1]\nm:\n  - {t} # c\n")).unwrap();
            assert_eq!(&doc.value["l"][0], want, "[{t}]");
            assert_eq!(&doc.value["m"][0], want, "- {t}");
        }
        let doc = parse("a: &x 010\nb: *x\nc: {d: 0042}\n").unwrap();
        assert_eq!(doc.value, json!({"a": 10, "b": 10, "c": {"d": 42}}));
        assert!(doc.value["a"].is_u64());
        assert!(doc.value["c"]["d"].is_u64());
    }

    #[test]
    fn numbers_json_cannot_hold_are_refused_at_their_position() {
        let (line, col, m) = error_at("a: 1\nb: 12345678901234567890123\n");
        assert_eq!((line, col), (2, 4));
        assert_eq!(
            m,
            "integer 12345678901234567890123 does not fit in 64 bits (from \
             -9223372036854775808 to 18446744073709551615); write it in quotes if it is text"
        );
        for v in [".inf", "-.inf", ".nan", ".NaN", "+.inf"] {
            let (line, col, m) = error_at(&format!("a:\n  lr: {v}\n"));
            assert_eq!((line, col), (2, 7), "{v}");
            assert_eq!(
                m,
                format!(
                    "`{v}` is not a finite number: pipeline values must be finite (they enter \
                     cache keys as JSON, which has no infinity or NaN); write it in quotes \
                     (\"{v}\") if it is text"
                )
            );
        }
        // Quoted, it is text.
        assert_eq!(parse("a: '.inf'\n").unwrap().value["a"], ".inf");
        // The parser reads no leading zero under an explicit `!!int` tag: said so.
        let (line, col, m) = error_at("a: !!int 010\n");
        assert_eq!((line, col), (1, 10));
        assert!(m.starts_with("not an integer as `!!int` reads it"), "{m}");
        assert_eq!(parse("a: !!int 10\n").unwrap().value["a"], 10);
    }
}
