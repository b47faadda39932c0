//! Planning benchmark (not a test): load + validate + expand a pipeline with
//! 10,000+ instances, build its graph and plan it, first against an empty cache,
//! then against a cache holding a verified entry for every instance.
//! Run: `cargo bench --bench plan`. Target: under 2 s (docs/benchmarks.md).
use idat_pipe::cache::keys::{key_parts, upstream_parts};
use idat_pipe::cache::Cache;
use idat_pipe::config::load_str;
use idat_pipe::exec::{plan, Decision};
use idat_pipe::graph::Graph;
use idat_pipe::stages::{StageContext, StageKind};
use std::time::Instant;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct P {
    text: String,
    lr: f64,
}
struct K;
impl StageKind for K {
    type Params = P;
    const NAME: &'static str = "bench/k";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "bench";
    fn run(_: P, _: &mut StageContext) -> anyhow::Result<()> {
        Ok(())
    }
}

fn pipeline_text() -> String {
    let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    // data: 20 tasks; tune: 20 tasks x 10 methods x 50 seeds = 10,000; eval: 20; report: 1.
    format!(
        r#"version: 1
name: bench
params:
  tasks: [{tasks}]
  lr: 0.001
stages:
  data:
    uses: bench/k
    matrix: {{task: "${{params.tasks}}"}}
    with: {{text: "d ${{matrix.task}}", lr: 0}}
  tune:
    uses: bench/k
    needs: [data]
    matrix:
      task: ${{params.tasks}}
      method: [{methods}]
      seed: [{seeds}]
    with:
      text: "${{stages.data.outputs.x}} ${{matrix.method}} ${{matrix.seed}}"
      lr: ${{params.lr}}
  eval:
    uses: bench/k
    needs: [tune]
    matrix: {{task: "${{params.tasks}}"}}
    with: {{text: e, lr: 0}}
  report:
    uses: bench/k
    needs: [eval]
    with: {{text: r, lr: 0}}
"#,
        tasks = list(20),
        methods = list(10),
        seeds = list(50)
    )
}

fn main() {
    let text = pipeline_text();
    let mut reg = idat_pipe::builtin_registry();
    reg.register::<K>();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(dir.path()).expect("cache");
    for round in 0..3 {
        let t0 = Instant::now();
        let loaded = load_str("bench.yaml", &text, &[], &reg).expect("valid");
        let t1 = Instant::now();
        let g = Graph::build(&loaded);
        let t2 = Instant::now();
        let d = plan(&g, &cache, &reg, &vec![false; g.instances.len()]);
        let t3 = Instant::now();
        let edges: usize = g.deps.iter().map(Vec::len).sum();
        println!(
            "empty cache, round {round}: {} instances, {edges} edges: load+validate+expand {:.3}s, graph {:.3}s, plan {:.3}s, total {:.3}s ({} decisions)",
            g.instances.len(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t3 - t0).as_secs_f64(),
            d.len()
        );
    }
    // One small committed entry per instance; then every instance is a cached hit.
    let loaded = load_str("bench.yaml", &text, &[], &reg).expect("valid");
    let g = Graph::build(&loaded);
    let mut hashes: Vec<Option<String>> = vec![None; g.instances.len()];
    for &i in &g.order {
        let up = upstream_parts(&g, i, &hashes).expect("upstreams are committed first");
        let parts = key_parts(&g.instances[i], &reg, &cache, up).expect("key parts");
        let key = parts.key();
        let _lock = cache.lock(&key).expect("lock");
        let tmp = cache.fresh_tmp(&key).expect("tmp");
        std::fs::write(tmp.join("out.txt"), &g.instances[i].id).expect("write");
        let m = cache
            .commit(&tmp, &g.instances[i].id, &parts, 0.0, &Default::default())
            .expect("commit");
        hashes[i] = Some(m.content_hash);
    }
    for round in 0..2 {
        let t0 = Instant::now();
        let loaded = load_str("bench.yaml", &text, &[], &reg).expect("valid");
        let g = Graph::build(&loaded);
        let d = plan(&g, &cache, &reg, &vec![false; g.instances.len()]);
        let hits = d
            .iter()
            .filter(|x| matches!(x, Decision::Cached { .. }))
            .count();
        println!(
            "all cached, round {round}: {} instances, {hits} hits (entries trusted by their recorded stats), total {:.3}s",
            g.instances.len(),
            t0.elapsed().as_secs_f64()
        );
    }
}
