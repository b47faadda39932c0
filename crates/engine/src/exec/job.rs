//! One instance made ready to run: [`StageJob`], built by [`build_job`] for the scheduler
//! and for `idat-pipe exec-stage` alike.
use super::gpus::Card;
use crate::cache::keys::{key_parts, upstream_parts};
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
    /// The cards the scheduler placed it on (`device` is `cuda:K` of the first); empty when
    /// nothing was placed (a CPU instance, `exec-stage`).
    pub cards: Vec<Card>,
    /// `resources.gpu_mem` in bytes: checked against its cards' free memory when it starts.
    pub gpu_mem: Option<u64>,
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
    /// `cpu`, `cuda` or `cuda:N`: the scheduler's [`super::scheduler::device_of`].
    pub device: String,
    /// The cards it is placed on ([`StageJob::cards`]).
    pub cards: Vec<Card>,
    /// `resources.gpu_mem` in bytes ([`StageJob::gpu_mem`]).
    pub gpu_mem: Option<u64>,
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
        cards: settings.cards,
        gpu_mem: settings.gpu_mem,
        threads: settings.threads,
        force: settings.force,
    })
}

/// The job of instance `i` run on its own (`idat-pipe exec-stage`): its upstreams must be
/// cached. Only `i`'s ancestors are looked up ([`super::plan::plan_only`]), so a task of a
/// sweep never reads or stats its siblings' or unrelated branches' entries.
///
/// # Errors
/// An upstream is not cached (named, with why), or [`build_job`]'s errors.
pub fn job_alone(
    graph: &Graph,
    i: usize,
    registry: &Registry,
    cache: &Cache,
    settings: JobSettings,
) -> Result<StageJob, String> {
    let mut only = graph.ancestors(&[i]);
    only[i] = false;
    let none = vec![false; graph.instances.len()];
    let decisions = super::plan::plan_only(graph, cache, registry, &none, &only);
    let mut committed: Vec<Option<Committed>> = vec![None; graph.instances.len()];
    for (u, d) in decisions.into_iter().enumerate() {
        match d {
            Some(super::plan::Decision::Cached { key, content_hash }) => {
                committed[u] = Some(Committed { key, content_hash })
            }
            Some(super::plan::Decision::Run { reasons, .. })
                if graph.deps[i].iter().any(|(_, d)| *d == u) =>
            {
                return Err(format!(
                    "upstream `{}` is not cached ({}); run the pipeline, not one instance",
                    graph.instances[u].id,
                    reasons.join("; ")
                ));
            }
            _ => {}
        }
    }
    build_job(graph, i, registry, cache, &committed, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::{StageContext, StageKind};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Instances whose external inputs were asked for (each key computation asks).
    static ASKED: AtomicUsize = AtomicUsize::new(0);

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct P {
        #[allow(dead_code)]
        n: u32,
    }
    struct Counted;
    impl StageKind for Counted {
        type Params = P;
        const NAME: &'static str = "test/counted";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "counts key computations";
        fn external_inputs(_: &P) -> Vec<PathBuf> {
            ASKED.fetch_add(1, Ordering::SeqCst);
            vec![]
        }
        fn run(_: P, ctx: &mut StageContext) -> anyhow::Result<()> {
            std::fs::write(ctx.out_dir.join("o"), "o")?;
            Ok(())
        }
    }

    #[test]
    fn a_job_alone_looks_only_at_its_ancestors() {
        // a -> b -> c, and 10 unrelated siblings of b under a.
        let text = "version: 1\nname: t\nstages:\n  a: {uses: test/counted, with: {n: 0}}\n  \
                    b: {uses: test/counted, needs: [a], with: {n: 1}}\n  \
                    c: {uses: test/counted, needs: [b], with: {n: 2}}\n  \
                    s: {uses: test/counted, needs: [a], matrix: {n: [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}, with: {n: \"${matrix.n}\"}}\n";
        let mut reg = Registry::empty();
        reg.register::<Counted>();
        let l = crate::config::load_str("t.yaml", text, &[], &reg).unwrap();
        let g = Graph::build(&l);
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let id = |s: &str| g.instances.iter().position(|i| i.id == s).unwrap();
        let settings = || JobSettings {
            log_path: d.path().join("log"),
            device: "cpu".into(),
            cards: vec![],
            gpu_mem: None,
            threads: 1,
            force: false,
        };
        // Upstream `b` not cached: said, naming it.
        let e = job_alone(&g, id("c"), &reg, &cache, settings())
            .err()
            .unwrap();
        assert!(e.contains("upstream `b` is not cached"), "{e}");
        // Commit a and b, then ask for c's job: only a and b (and c) get keys.
        for name in ["a", "b"] {
            let job = job_alone(&g, id(name), &reg, &cache, settings()).unwrap();
            let tmp = cache.fresh_tmp(&job.parts.key()).unwrap();
            std::fs::write(tmp.join("o"), name).unwrap();
            cache
                .commit(&tmp, name, &job.parts, 0.0, &Default::default())
                .unwrap();
        }
        ASKED.store(0, Ordering::SeqCst);
        let job = job_alone(&g, id("c"), &reg, &cache, settings()).unwrap();
        assert_eq!(job.inputs.len(), 1);
        assert_eq!(job.inputs[0].instance, "b");
        assert_eq!(ASKED.load(Ordering::SeqCst), 3, "a, b and c: no sibling");
    }
}
