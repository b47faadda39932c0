//! The engine at the scale of the real benchmark (not a test; issue 25): what `plan` and
//! `exec-stage` read when the cache holds gigabytes.
//!
//! Builds a pipeline whose `big` stage commits 16 entries of 128 MiB (2 GiB), an unrelated
//! `small -> tail` branch, and then measures, each with a cold page cache when the process
//! may drop it (root: `/proc/sys/vm/drop_caches`):
//! - `plan` of the whole pipeline, trusting entries by their recorded stats (today);
//! - every entry looked up by re-hashing all its files (`Cache::verify`: what every `plan`,
//!   `run` and `exec-stage` did before stats were recorded);
//! - `exec-stage` of `tail` (`exec::run::exec_one`, forced), which looks only at its
//!   ancestors: bytes read from the disk (`/proc/self/io`) while the 2 GiB sit beside it.
//!
//! Run: `cargo bench --bench cache_scale --profile dev` (needs ~2.2 GB in the target
//! directory's filesystem; `IDAT_BENCH_DIR` puts the cache elsewhere). Numbers go to
//! docs/benchmarks.md ("Cache at scale").
use idat_pipe::cache::Cache;
use idat_pipe::config::load_str;
use idat_pipe::exec::run::{exec_one, run, OneRequest, RunRequest};
use idat_pipe::exec::{plan, Decision, Outcome};
use idat_pipe::graph::Graph;
use idat_pipe::stages::{StageContext, StageKind};
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

const ENTRIES: usize = 16;
const ENTRY_MIB: usize = 128;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct P {
    /// Seed of the bytes written.
    seed: u64,
    /// MiB to write.
    mib: usize,
}

/// Writes `mib` MiB of seeded pseudo-random bytes to `data.bin`.
struct Fill;
impl StageKind for Fill {
    type Params = P;
    const NAME: &'static str = "bench/fill";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "bench: write seeded bytes";
    fn run(p: P, ctx: &mut StageContext) -> anyhow::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(ctx.out_dir.join("data.bin"))?);
        let mut x = p.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..p.mib {
            for c in block.chunks_exact_mut(8) {
                // xorshift64*: cheap bytes that do not compress.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                c.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            f.write_all(&block)?;
        }
        f.flush()?;
        Ok(())
    }
}

fn pipeline() -> String {
    let seeds: Vec<String> = (0..ENTRIES).map(|i| i.to_string()).collect();
    format!(
        "version: 1\nname: scale\nstages:\n  \
         big:\n    uses: bench/fill\n    matrix: {{seed: [{}]}}\n    with: {{seed: \"${{matrix.seed}}\", mib: {ENTRY_MIB}}}\n  \
         small:\n    uses: bench/fill\n    with: {{seed: 1000, mib: 1}}\n  \
         tail:\n    uses: bench/fill\n    needs: [small]\n    with: {{seed: 1001, mib: 1}}\n",
        seeds.join(", ")
    )
}

/// `read_bytes` (from the disk) and `rchar` (through read calls) of this process so far.
fn io() -> (u64, u64) {
    let t = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("read_bytes:"), field("rchar:"))
}

/// Drop the page cache (root only); whether it was dropped.
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Time `f` after dropping the page cache; (seconds, MiB read from disk, MiB through
/// read calls, cold?).
fn measure<T>(f: impl FnOnce() -> T) -> (f64, f64, f64, bool, T) {
    let cold = drop_caches();
    let (b0, r0) = io();
    let t0 = Instant::now();
    let v = f();
    let secs = t0.elapsed().as_secs_f64();
    let (b1, r1) = io();
    let mib = |x: u64| x as f64 / (1 << 20) as f64;
    (secs, mib(b1 - b0), mib(r1 - r0), cold, v)
}

fn main() {
    let mut reg = idat_pipe::builtin_registry();
    reg.register::<Fill>();
    let base = std::env::var_os("IDAT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let cache_dir = dir.path().join("cache");
    let loaded = load_str("scale.yaml", &pipeline(), &[], &reg).expect("valid");
    let cancel = Arc::new(AtomicBool::new(false));
    let req = RunRequest {
        cache_dir: &cache_dir,
        runs_dir: &dir.path().join("runs"),
        force: &[],
        keep_going: false,
        device: "cpu",
        jobs: 2,
        gpus: Some(0),
        gpu_mem: None,
        per_gpu: None,
        executor: Some("local"),
        quiet: true,
        cancel: cancel.clone(),
    };
    let t0 = Instant::now();
    let out = run(&loaded, &reg, &req).unwrap_or_else(|_| panic!("run failed"));
    assert!(out.summary.failed.is_empty());
    let cache = Cache::open(&cache_dir).expect("cache");
    let keys = cache.entry_keys();
    let bytes: u64 = keys
        .iter()
        .map(|k| idat_pipe::cache::store::dir_size(&cache.entry_dir(k)))
        .sum();
    println!(
        "built {} entries, {:.2} GiB, in {:.1}s",
        keys.len(),
        bytes as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64()
    );
    let g = Graph::build(&loaded);
    let none = vec![false; g.instances.len()];
    println!(
        "| measurement | cold page cache | seconds | MiB read from disk | MiB through read calls |"
    );
    println!("|---|---|---|---|---|");
    let row = |what: &str, (s, disk, rchar, cold): (f64, f64, f64, bool)| {
        println!(
            "| {what} | {} | {s:.3} | {disk:.1} | {rchar:.1} |",
            if cold { "yes" } else { "no (not root)" }
        );
    };
    for round in 0..2 {
        let (s, d, r, c, decisions) = measure(|| plan(&g, &cache, &reg, &none));
        let hits = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Cached { .. }))
            .count();
        assert_eq!(hits, g.instances.len());
        row(
            &format!("`plan`, {hits} cached instances, round {round}"),
            (s, d, r, c),
        );
    }
    let (s, d, r, c, n) = measure(|| {
        keys.iter()
            .filter(|k| matches!(cache.verify(k), idat_pipe::cache::Lookup::Hit(_)))
            .count()
    });
    assert_eq!(n, keys.len());
    row(
        "every entry re-hashed (`Cache::verify`: each lookup before stat records)",
        (s, d, r, c),
    );
    for round in 0..2 {
        let one = OneRequest {
            cache_dir: &cache_dir,
            instance: "tail",
            log: Some(dir.path().join("tail.log")),
            device: "cpu".into(),
            force: true,
            threads: Some(1),
            cancel: cancel.clone(),
        };
        let (s, d, r, c, o) = measure(|| exec_one(&loaded, &reg, one).map(|(o, _)| o));
        assert!(matches!(o, Ok(Outcome::Ran(_))));
        row(
            &format!("`exec-stage tail` (forced; it writes and hashes 1 MiB), round {round}"),
            (s, d, r, c),
        );
    }
}
