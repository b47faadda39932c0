//! How an instance's cache key is made: its kind and version, its `with:` less the kind's
//! non-output params, its upstream entries' content hashes, and the content hashes of the
//! files it reads from outside the cache. `plan`, the scheduler and `exec-stage` all build
//! keys here.
use super::{hash_external, Cache, ExternalPart, KeyParts, UpstreamPart, CACHE_FORMAT};
use crate::config::refs::{substitute, Ref};
use crate::config::Instance;
use crate::graph::Graph;
use crate::stages::Registry;
use serde_json::Value;
use std::path::PathBuf;

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
