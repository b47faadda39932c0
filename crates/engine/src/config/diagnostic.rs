//! Errors in a pipeline file, with where they are: [`Diagnostic`], and the collector the
//! checks report into (an error under a `--set` override is the override's).
use super::yaml::{Located, Pos};
use serde_json::Value;
use std::fmt;

/// One error in a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The pipeline file as given (its path as displayed), or `--set` for an error in an override.
    pub file: String,
    /// 1-based line and column of the offending node; `None` when the error has no place in
    /// the file (e.g. an unreadable or too large file, an error in a `--set` override).
    pub pos: Option<Pos>,
    /// Dotted YAML path, e.g. `stages.tune.with.lr` (empty for the whole file).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: ", self.file, p.line, p.col)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "at `{}`: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) doc: &'a Located,
    pub(super) diags: Vec<Diagnostic>,
    /// (dotted path an override created or replaced, the `--set` text): an error under one
    /// of them is the override's, reported at `--set`, not at a line of the file.
    pub(super) sets: Vec<(String, String)>,
}

impl Ctx<'_> {
    /// An error at the node at `path`.
    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), message.into(), false);
    }

    /// An error about the key of the mapping entry at `path` (an unknown field).
    pub(super) fn err_key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), message.into(), true);
    }

    /// The `--set` text of the override that made or replaced `path` (or an ancestor).
    pub(super) fn set_of(&self, path: &str) -> Option<String> {
        self.sets
            .iter()
            .rev()
            .find(|(p, _)| {
                p.is_empty()
                    || path == p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            .map(|(_, raw)| raw.clone())
    }

    /// An error at `path` of a stage's `with:` (`rel` inside it; `raw` is the `with:` as
    /// written): when the value there came through a `${params.P}` that a `--set` changed,
    /// the error is the override's.
    pub(super) fn err_in_with(
        &mut self,
        path: String,
        rel: &[String],
        raw: &Value,
        message: String,
        at_key: bool,
    ) {
        if let Some(p) = param_behind(raw, rel) {
            if let Some(set) = self.set_of(&p) {
                self.diags.push(Diagnostic {
                    file: "--set".into(),
                    pos: None,
                    path,
                    message: format!("{message} (at `{p}`, from `--set {set}`)"),
                });
                return;
            }
        }
        self.push(path, message, at_key);
    }

    pub(super) fn push(&mut self, path: String, message: String, at_key: bool) {
        let d = match self.set_of(&path) {
            Some(raw) => Diagnostic {
                file: "--set".into(),
                pos: None,
                path,
                message: format!("{message} (from `--set {raw}`)"),
            },
            None => Diagnostic {
                file: self.file.to_string(),
                pos: Some(if at_key {
                    self.doc.key_pos(&path)
                } else {
                    self.doc.pos(&path)
                }),
                path,
                message,
            },
        };
        self.diags.push(d);
    }
}

pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    }
}

/// The param a `with:` field at `rel` comes from, when the `with:` as written (`raw`) has a
/// whole-string `${params.P}` on the way there: `params.P` and the rest of `rel`.
pub(super) fn param_behind(raw: &Value, rel: &[String]) -> Option<String> {
    let mut v = raw;
    for (i, seg) in rel.iter().enumerate() {
        if let Some(p) = v
            .as_str()
            .and_then(|t| t.strip_prefix("${params."))
            .and_then(|t| t.strip_suffix('}'))
            .filter(|t| !t.contains('$'))
        {
            return Some(
                std::iter::once(format!("params.{p}"))
                    .chain(rel[i..].iter().cloned())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
        v = value_at(v, std::slice::from_ref(seg))?;
    }
    let p = v.as_str()?.strip_prefix("${params.")?.strip_suffix('}')?;
    (!p.contains('$')).then(|| format!("params.{p}"))
}

pub(super) fn segments(ptr: &str) -> Vec<String> {
    ptr.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// The value at `segs` under `v`.
pub(super) fn value_at<'v>(v: &'v Value, segs: &[String]) -> Option<&'v Value> {
    segs.iter().try_fold(v, |v, s| match v {
        Value::Object(m) => m.get(s),
        Value::Array(a) => s.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The value at dotted path `p` under `v` (`""`: `v` itself).
pub(super) fn dotted<'v>(v: &'v Value, p: &str) -> Option<&'v Value> {
    let segs: Vec<String> = p
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    value_at(v, &segs)
}
