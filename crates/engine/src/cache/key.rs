//! Cache keys: blake3 of the canonical JSON of everything that determines an output.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the key derivation and entry layout; bump to invalidate every entry.
pub const CACHE_FORMAT: u32 = 1;

/// What a key is made of. Stored beside entries and per instance, so `plan` can say which part changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    /// [`CACHE_FORMAT`] when the key was made: bumping it makes every older key differ.
    pub format: u32,
    /// The instance's `uses:` name (its stage kind), e.g. `train/idat`.
    pub kind: String,
    /// The kind's [`StageKind::VERSION`](crate::stages::StageKind::VERSION) (0 when the kind
    /// is not registered).
    pub kind_version: u32,
    /// Resolved `with:` less the kind's non-output params; `${stages...}` references stay as text.
    pub params: Value,
    /// Upstream entries' content hashes, sorted by (need, instance).
    pub upstream: Vec<UpstreamPart>,
    /// Content hashes of the files/folders the kind reads from outside the cache, in the
    /// order the kind lists them (absent from keys of kinds that read none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalPart>,
}

/// One external input in a key: the path as written in `with:` and its content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalPart {
    /// The path the kind lists for it (as written in `with:`, lossily made UTF-8); `plan`
    /// names it when its content changes.
    pub path: String,
    /// blake3 hex of the file's or folder's content
    /// ([`ExternalHash::hash`](crate::cache::ExternalHash::hash)).
    pub content_hash: String,
}

/// One upstream entry in a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPart {
    /// The stage id in this instance's `needs` that the upstream instance belongs to.
    pub need: String,
    /// Upstream instance id, e.g. `tune[task=dtd,seed=1]`.
    pub instance: String,
    /// The upstream entry's [`Manifest::content_hash`](crate::cache::Manifest::content_hash)
    /// (blake3 hex over its file list).
    pub content_hash: String,
}

/// JSON with object keys sorted at every level, no whitespace.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

impl KeyParts {
    /// The cache key (64 hex digits).
    pub fn key(&self) -> String {
        let mut parts = self.clone();
        parts
            .upstream
            .sort_by(|a, b| (&a.need, &a.instance).cmp(&(&b.need, &b.instance)));
        let v = serde_json::to_value(&parts).unwrap_or(Value::Null);
        blake3::hash(canonical_json(&v).as_bytes())
            .to_hex()
            .to_string()
    }

    /// Human reasons why `self` differs from `old` (empty when equal).
    pub fn diff(&self, old: &KeyParts) -> Vec<String> {
        let mut out = Vec::new();
        if self.format != old.format {
            out.push(format!("cache format {} -> {}", old.format, self.format));
        }
        if self.kind != old.kind {
            out.push(format!("kind `{}` -> `{}`", old.kind, self.kind));
        } else if self.kind_version != old.kind_version {
            out.push(format!(
                "kind version {} -> {}",
                old.kind_version, self.kind_version
            ));
        }
        diff_values("", &old.params, &self.params, &mut out);
        for u in &self.upstream {
            match old
                .upstream
                .iter()
                .find(|o| o.need == u.need && o.instance == u.instance)
            {
                Some(o) if o.content_hash == u.content_hash => {}
                Some(_) => out.push(format!("upstream `{}` changed", u.instance)),
                None => out.push(format!("new upstream `{}`", u.instance)),
            }
        }
        for o in &old.upstream {
            if !self
                .upstream
                .iter()
                .any(|u| u.need == o.need && u.instance == o.instance)
            {
                out.push(format!("upstream `{}` removed", o.instance));
            }
        }
        for e in &self.external {
            match old.external.iter().find(|o| o.path == e.path) {
                Some(o) if o.content_hash == e.content_hash => {}
                Some(_) => out.push(format!("external input changed: {}", e.path)),
                None => out.push(format!("new external input: {}", e.path)),
            }
        }
        for o in &old.external {
            if !self.external.iter().any(|e| e.path == o.path) {
                out.push(format!("external input removed: {}", o.path));
            }
        }
        out
    }
}

/// Param differences as `param `a.b` changed: 1 -> 2`.
pub fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let name = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                match a.get(k) {
                    Some(av) => diff_values(&name(k), av, bv, out),
                    None => out.push(format!("param `{}` added: {}", name(k), bv)),
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push(format!("param `{}` removed", name(k)));
            }
        }
        (a, b) if a != b => {
            let p = if path.is_empty() { "with" } else { path };
            out.push(format!("param `{p}` changed: {a} -> {b}"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(params: Value) -> KeyParts {
        KeyParts {
            format: CACHE_FORMAT,
            kind: "k".into(),
            kind_version: 1,
            params,
            upstream: vec![],
            external: vec![],
        }
    }

    #[test]
    fn key_ignores_object_order_but_not_values() {
        let a = parts(json!({"a": 1, "b": {"c": 2, "d": 3}}));
        let b = parts(serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).unwrap());
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), parts(json!({"a": 2, "b": {"c": 2, "d": 3}})).key());
        assert_eq!(a.key().len(), 64);
    }

    #[test]
    fn external_inputs_change_the_key_and_are_named() {
        let mut old = parts(json!({"p": "d"}));
        let plain = old.key();
        old.external.push(ExternalPart {
            path: "d".into(),
            content_hash: "h1".into(),
        });
        assert_ne!(old.key(), plain, "an external hash is part of the key");
        let mut new = old.clone();
        new.external[0].content_hash = "h2".into();
        assert_ne!(new.key(), old.key());
        assert_eq!(
            new.diff(&old),
            vec!["external input changed: d".to_string()]
        );
        // Keys of kinds without external inputs are unchanged by the new field.
        let v = serde_json::to_value(parts(json!({}))).unwrap();
        assert!(v.get("external").is_none());
    }

    #[test]
    fn diff_names_the_changed_param_and_upstream() {
        let mut old = parts(json!({"lr": 0.1, "x": 1}));
        old.upstream.push(UpstreamPart {
            need: "a".into(),
            instance: "a[s=1]".into(),
            content_hash: "h1".into(),
        });
        let mut new = parts(json!({"lr": 0.2, "x": 1}));
        new.upstream.push(UpstreamPart {
            need: "a".into(),
            instance: "a[s=1]".into(),
            content_hash: "h2".into(),
        });
        let d = new.diff(&old);
        assert_eq!(
            d,
            vec![
                "param `lr` changed: 0.1 -> 0.2".to_string(),
                "upstream `a[s=1]` changed".to_string()
            ]
        );
    }
}
