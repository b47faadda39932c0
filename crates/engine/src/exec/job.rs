//! One instance made ready to run: [`StageJob`], built by [`build_job`] for the scheduler
//! and for `idat-pipe exec-stage` alike.
use super::plan::{key_parts, upstream_parts};
use crate::cache::{Cache, KeyParts};
use crate::config::Instance;
use crate::graph::Graph;
use crate::stages::{DynStage, Input, Registry};
use std::path::PathBuf;
use std::sync::Arc;

/// Everything needed to run one instance, as data: where its progress goes and how it is
/// cancelled are the executor's business ([`super::stage::exec_stage`] takes them).
#[derive(Clone)]
pub struct StageJob {
    /// The cache the entry is looked up in and committed to.
    pub cache: Cache,
    /// The instance to run: its id, `uses:` name and resolved `with:` (its `${stages...}`
    /// references are resolved against `inputs` when it runs).
    pub instance: Instance,
    /// The registered kind of `instance.uses`, which runs it.
    pub kind: Arc<dyn DynStage>,
    /// The key's parts; `parts.key()` is the entry's cache key.
    pub parts: KeyParts,
    /// Upstream entries, in `needs` order.
    pub inputs: Vec<Input>,
    /// The instance's log file (appended to).
    pub log_path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CPU threads for the instance's kernels.
    pub threads: usize,
    /// Recompute even when a valid entry exists (`--force`).
    pub force: bool,
}

/// The committed entry of a finished instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Cache key (the entry's directory name).
    pub key: String,
    /// Hash of the entry's content (what downstream keys are made of).
    pub content_hash: String,
}

/// Where a job runs and what it may use (the parts of [`StageJob`] not taken from the graph).
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The instance's log file in the run record (appended to).
    pub log_path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N` (`--device`).
    pub device: String,
    /// CPU threads for the instance's kernels (the scheduler gives its CPU slots).
    pub threads: usize,
    /// Recompute even when a valid entry exists (`--force`).
    pub force: bool,
}

/// The job of instance `i` of `graph`, given the committed entries of finished instances
/// (`committed[u]` for every upstream `u`).
///
/// # Errors
/// An upstream has no committed entry; the instance's kind is not registered; an external
/// input cannot be read (hashing it for the key).
pub fn build_job(
    graph: &Graph,
    i: usize,
    registry: &Registry,
    cache: &Cache,
    committed: &[Option<Committed>],
    settings: JobSettings,
) -> Result<StageJob, String> {
    let inst = &graph.instances[i];
    let hashes: Vec<Option<String>> = committed
        .iter()
        .map(|c| c.as_ref().map(|c| c.content_hash.clone()))
        .collect();
    let up = upstream_parts(graph, i, &hashes)
        .ok_or("its upstream instances are not all cached; run them first")?;
    let kind = registry
        .get(&inst.uses)
        .cloned()
        .ok_or_else(|| format!("unknown stage kind `{}`", inst.uses))?;
    let inputs = graph.deps[i]
        .iter()
        .map(|(need, u)| {
            let key = committed[*u].as_ref().map(|c| c.key.as_str()).unwrap_or("");
            Input {
                stage: need.clone(),
                instance: graph.instances[*u].id.clone(),
                matrix: graph.instances[*u].cell_map(),
                dir: cache.entry_dir(key),
            }
        })
        .collect();
    Ok(StageJob {
        cache: cache.clone(),
        instance: inst.clone(),
        kind,
        parts: key_parts(inst, registry, cache, up)?,
        inputs,
        log_path: settings.log_path,
        device: settings.device,
        threads: settings.threads,
        force: settings.force,
    })
}
