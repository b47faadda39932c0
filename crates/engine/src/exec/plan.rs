//! `plan` / `run --dry-run`: for every instance, cached or will run, and why.
use crate::cache::{
    hash_external, Cache, ExternalPart, KeyParts, Lookup, UpstreamPart, CACHE_FORMAT,
};
use crate::config::refs::{substitute, Ref};
use crate::config::Instance;
use crate::graph::Graph;
use crate::stages::{DynStage, Registry};
use serde_json::Value;
use std::path::PathBuf;

/// What will happen to one instance.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A verified entry exists: it is reused.
    Cached {
        /// Cache key (64 hex digits): the entry's directory name.
        key: String,
        /// The entry's content hash (blake3 hex), which downstream keys are made of.
        content_hash: String,
    },
    /// The instance will be computed (or fail).
    Run {
        /// Why, as `plan` prints them, e.g. `new`, `forced (--force)`,
        /// ``param `lr` changed: 0.1 -> 0.2``, ``upstream `a` will run``, `will fail: ...`,
        /// or what it resumes from.
        reasons: Vec<String>,
    },
}

/// The key parts of an instance less its external inputs (nothing is read from disk).
pub fn params_parts(inst: &Instance, registry: &Registry, upstream: Vec<UpstreamPart>) -> KeyParts {
    let (kind_version, params) = match registry.get(&inst.uses) {
        Some(k) => (k.version(), k.key_params(&inst.with)),
        None => (0, inst.with.clone()),
    };
    let mut p = KeyParts {
        format: CACHE_FORMAT,
        kind: inst.uses.clone(),
        kind_version,
        params,
        upstream,
        external: Vec::new(),
    };
    p.upstream
        .sort_by(|a, b| (&a.need, &a.instance).cmp(&(&b.need, &b.instance)));
    p
}

/// The external inputs a kind declares for this instance's `with:` (paths that hold a
/// `${stages...}` reference are upstream outputs, already keyed by their content hash).
/// The kind sees `with:` as it will at run time (a `$${` escape is the text `${`).
pub fn external_paths(inst: &Instance, registry: &Registry) -> Vec<PathBuf> {
    // A NUL cannot be in a path: it marks where an upstream's outputs will be.
    const UPSTREAM: &str = "\0upstream";
    let (with, _) = substitute(&inst.with, &mut |r| match r {
        Ref::Outputs { .. } => Ok(Some(Value::String(UPSTREAM.into()))),
        _ => Ok(None),
    });
    registry
        .get(&inst.uses)
        .map(|k| k.external_inputs(&with))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains('\0'))
        .collect()
}

/// The full key parts of an instance given its upstreams' content hashes: its external
/// inputs are hashed (memoised in the cache). Error: an external input cannot be read.
pub fn key_parts(
    inst: &Instance,
    registry: &Registry,
    cache: &Cache,
    upstream: Vec<UpstreamPart>,
) -> Result<KeyParts, String> {
    let mut p = params_parts(inst, registry, upstream);
    for path in external_paths(inst, registry) {
        let h = hash_external(&cache.root, &path).map_err(|e| format!("{e:#}"))?;
        p.external.push(ExternalPart {
            path: path.to_string_lossy().into_owned(),
            content_hash: h.hash,
        });
    }
    Ok(p)
}

/// Upstream parts of instance `i`, if every upstream's content hash is known.
pub fn upstream_parts(
    graph: &Graph,
    i: usize,
    hashes: &[Option<String>],
) -> Option<Vec<UpstreamPart>> {
    graph.deps[i]
        .iter()
        .map(|(need, u)| {
            hashes[*u].clone().map(|h| UpstreamPart {
                need: need.clone(),
                instance: graph.instances[*u].id.clone(),
                content_hash: h,
            })
        })
        .collect()
}

/// Why an instance whose key is known must run (it is not a verified hit).
pub fn miss_reasons(cache: &Cache, id: &str, parts: &KeyParts, lookup: &Lookup) -> Vec<String> {
    let key = parts.key();
    if let Lookup::Corrupt(why) = lookup {
        // `why` names the entry and says what differs in which file.
        return vec![format!("corrupt cache {why}; will recompute")];
    }
    match cache.record(id) {
        None => vec!["new".into()],
        Some(rec) if rec.key == key => {
            if rec.status == "failed" {
                vec![format!("failed before: {}", rec.error.unwrap_or_default())]
            } else {
                vec!["entry missing (removed by gc or by hand)".into()]
            }
        }
        Some(rec) => {
            let mut d = parts.diff(&rec.parts);
            if d.is_empty() {
                d.push("key changed".into());
            }
            d
        }
    }
}

/// What a run of `key` will resume from, when a killed or crashed run left a checkpoint:
/// what the kind says ([`crate::stages::StageKind::resume_point`], e.g. `resumes after epoch
/// N`), else `resumes from its checkpoint (<dir>)`, or why the checkpoint cannot be resumed
/// from. None when there is no checkpoint.
pub fn resume_reason(cache: &Cache, key: &str, kind: Option<&dyn DynStage>) -> Option<String> {
    let dir = cache.pending_checkpoint(key)?;
    let point = kind.map_or(Ok(None), |k| k.resume_point(&dir));
    Some(match point {
        Ok(Some(point)) => point,
        Ok(None) => format!("resumes from its checkpoint ({})", dir.display()),
        Err(e) => format!("will fail: {e:#} (delete {} to start over)", dir.display()),
    })
}

/// Add what the run resumes from to the reasons of a run of `key`; `new` is dropped then
/// (an instance with a checkpoint has run before, it was killed or crashed).
fn with_resume(
    cache: &Cache,
    key: &str,
    kind: Option<&dyn DynStage>,
    mut reasons: Vec<String>,
) -> Vec<String> {
    if let Some(r) = resume_reason(cache, key, kind) {
        reasons.retain(|x| x != "new");
        reasons.push(r);
    }
    reasons
}

/// Decide every instance, in graph order. `forced[i]` reruns instance `i` regardless.
pub fn plan(graph: &Graph, cache: &Cache, registry: &Registry, forced: &[bool]) -> Vec<Decision> {
    let n = graph.instances.len();
    let mut hashes: Vec<Option<String>> = vec![None; n];
    let mut out: Vec<Option<Decision>> = vec![None; n];
    for &i in &graph.order {
        let inst = &graph.instances[i];
        let kind = registry.get(&inst.uses).map(|k| k.as_ref());
        let d = match upstream_parts(graph, i, &hashes) {
            None => {
                let mut reasons: Vec<String> = graph.deps[i]
                    .iter()
                    .filter(|(_, u)| hashes[*u].is_none())
                    .map(|(_, u)| format!("upstream `{}` will run", graph.instances[*u].id))
                    .collect();
                if forced[i] {
                    reasons.insert(0, "forced (--force)".into());
                }
                if let Some(rec) = cache.record(&inst.id) {
                    let now = params_parts(inst, registry, vec![]);
                    let mut d = Vec::new();
                    crate::cache::key::diff_values("", &rec.parts.params, &now.params, &mut d);
                    reasons.extend(d);
                } else {
                    reasons.push("new".into());
                }
                Decision::Run { reasons }
            }
            Some(up) => match key_parts(inst, registry, cache, up) {
                Err(e) => Decision::Run {
                    reasons: vec![format!("will fail: {e}")],
                },
                Ok(parts) => {
                    let key = parts.key();
                    let lookup = cache.lookup(&key);
                    match (&lookup, forced[i]) {
                        (_, true) => Decision::Run {
                            reasons: with_resume(
                                cache,
                                &key,
                                kind,
                                vec!["forced (--force)".into()],
                            ),
                        },
                        (Lookup::Hit(m), false) => {
                            hashes[i] = Some(m.content_hash.clone());
                            Decision::Cached {
                                key,
                                content_hash: m.content_hash.clone(),
                            }
                        }
                        _ => Decision::Run {
                            reasons: with_resume(
                                cache,
                                &key,
                                kind,
                                miss_reasons(cache, &inst.id, &parts, &lookup),
                            ),
                        },
                    }
                }
            },
        };
        out[i] = Some(d);
    }
    out.into_iter()
        .map(|d| {
            d.unwrap_or(Decision::Run {
                reasons: vec!["new".into()],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind that says what it resumes from (as the domain's training kinds do).
    struct Epochs;
    impl crate::stages::StageKind for Epochs {
        type Params = serde_json::Value;
        const NAME: &'static str = "test/epochs";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "resumes from `epoch` files";
        fn resume_point(dir: &std::path::Path) -> anyhow::Result<Option<String>> {
            match std::fs::read_to_string(dir.join("epoch")) {
                Ok(e) if e == "bad" => anyhow::bail!("epoch file {} is broken", dir.display()),
                Ok(e) => Ok(Some(format!("resumes after epoch {e}"))),
                Err(_) => Ok(None),
            }
        }
        fn run(_: Self::Params, _: &mut crate::stages::StageContext) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_pending_checkpoint_replaces_new_and_joins_other_reasons() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path().join(".idat")).unwrap();
        let mut reg = Registry::empty();
        reg.register::<Epochs>();
        let kind = reg.get("test/epochs").map(|k| k.as_ref());
        let new = || vec!["new".to_string()];
        assert_eq!(with_resume(&cache, "k", kind, new()), new());
        // An empty checkpoint directory (created for every run) is no checkpoint.
        let dir = cache.checkpoint_dir("k").unwrap();
        assert_eq!(with_resume(&cache, "k", kind, new()), new());
        std::fs::write(dir.join("step"), "5").unwrap();
        let other = format!("resumes from its checkpoint ({})", dir.display());
        assert_eq!(with_resume(&cache, "k", kind, new()), vec![other.clone()]);
        assert_eq!(with_resume(&cache, "k", None, new()), vec![other.clone()]);
        assert_eq!(
            with_resume(&cache, "k", kind, vec!["forced (--force)".into()]),
            vec!["forced (--force)".to_string(), other]
        );
        // What the kind says, and why its checkpoint cannot be resumed from.
        std::fs::write(dir.join("epoch"), "3").unwrap();
        assert_eq!(
            with_resume(&cache, "k", kind, new()),
            vec!["resumes after epoch 3".to_string()]
        );
        std::fs::write(dir.join("epoch"), "bad").unwrap();
        assert_eq!(
            with_resume(&cache, "k", kind, new()),
            vec![format!(
                "will fail: epoch file {} is broken (delete {} to start over)",
                dir.display(),
                dir.display()
            )]
        );
    }
}
