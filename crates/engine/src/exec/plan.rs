//! `plan` / `run --dry-run`: for every instance, cached or will run, and why.
use crate::cache::keys::{key_parts, params_parts, upstream_parts};
use crate::cache::{Cache, KeyParts, Lookup};
use crate::graph::Graph;
use crate::stages::{DynStage, Registry};

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
        /// Its cache key, when its upstreams' content hashes are known.
        key: Option<String>,
        /// Why, as `plan` prints them, e.g. `new`, `forced (--force)`,
        /// ``param `lr` changed: 0.1 -> 0.2``, ``upstream `a` will run``, `will fail: ...`,
        /// or what it resumes from.
        reasons: Vec<String>,
    },
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
            } else if let Some(moved) = cache.quarantined(&key) {
                vec![format!(
                    "its entry was found corrupt and moved to {}; will recompute",
                    moved.display()
                )]
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
    let all = vec![true; graph.instances.len()];
    plan_only(graph, cache, registry, forced, &all)
        .into_iter()
        .map(|d| d.unwrap_or_else(|| run(None, vec!["new".into()])))
        .collect()
}

/// Decide the instances marked in `only` (which must hold each marked instance's
/// upstreams, e.g. [`Graph::ancestors`]), in graph order; the others are not looked at
/// (None). `exec-stage` decides only its instance's ancestors this way, so a task of a
/// large sweep never looks at its siblings' entries.
pub fn plan_only(
    graph: &Graph,
    cache: &Cache,
    registry: &Registry,
    forced: &[bool],
    only: &[bool],
) -> Vec<Option<Decision>> {
    let n = graph.instances.len();
    let mut hashes: Vec<Option<String>> = vec![None; n];
    let mut out: Vec<Option<Decision>> = vec![None; n];
    for &i in graph.order.iter().filter(|&&i| only[i]) {
        let d = decide(graph, i, cache, registry, forced[i], &hashes);
        if let Decision::Cached { content_hash, .. } = &d {
            hashes[i] = Some(content_hash.clone());
        }
        out[i] = Some(d);
    }
    out
}

/// The keys of the pipeline's instances that have an entry in the cache (cached, or found
/// corrupt by a lookup), sorted and without repeats: what `verify FILE` re-hashes.
pub fn entry_keys(
    loaded: &crate::config::Loaded,
    cache: &Cache,
    registry: &Registry,
) -> Vec<String> {
    let g = Graph::build(loaded);
    let none = vec![false; g.instances.len()];
    let mut k: Vec<String> = plan(&g, cache, registry, &none)
        .into_iter()
        .filter_map(|d| match d {
            Decision::Cached { key, .. } => Some(key),
            Decision::Run { key, .. } => key,
        })
        .filter(|k| cache.entry_dir(k).is_dir())
        .collect();
    k.sort();
    k.dedup();
    k
}

fn run(key: Option<String>, reasons: Vec<String>) -> Decision {
    Decision::Run { key, reasons }
}

/// The decision of instance `i`, given the content hashes of its cached upstreams.
fn decide(
    graph: &Graph,
    i: usize,
    cache: &Cache,
    registry: &Registry,
    forced: bool,
    hashes: &[Option<String>],
) -> Decision {
    let inst = &graph.instances[i];
    let kind = registry.get(&inst.uses).map(|k| k.as_ref());
    let Some(up) = upstream_parts(graph, i, hashes) else {
        let mut reasons: Vec<String> = graph.deps[i]
            .iter()
            .filter(|(_, u)| hashes[*u].is_none())
            .map(|(_, u)| format!("upstream `{}` will run", graph.instances[*u].id))
            .collect();
        if forced {
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
        return run(None, reasons);
    };
    let parts = match key_parts(inst, registry, cache, up) {
        Ok(p) => p,
        Err(e) => return run(None, vec![format!("will fail: {e}")]),
    };
    let key = parts.key();
    if forced {
        let reasons = with_resume(cache, &key, kind, vec!["forced (--force)".into()]);
        return run(Some(key), reasons);
    }
    let lookup = cache.lookup(&key);
    if let Lookup::Hit(m) = &lookup {
        return Decision::Cached {
            key,
            content_hash: m.content_hash.clone(),
        };
    }
    let reasons = with_resume(
        cache,
        &key,
        kind,
        miss_reasons(cache, &inst.id, &parts, &lookup),
    );
    run(Some(key), reasons)
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
