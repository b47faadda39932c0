//! Host memory of `eval` and training on a large decoded test split (not a test; issue 25):
//! the peak resident set must be bounded by batches, not by the split.
//!
//! Builds, in one cache: the mini `dsprites_loc` task with `IDAT_BENCH_TEST_IMAGES` test
//! images (default 7,200) decoded at 224x224 (7,200 images are 1.01 GiB of u8 pixels), a
//! tiny random ViT (patch 16, width 32, one block) and its linear-probe training (1 epoch,
//! which evaluates on the test split once). Then, each in a fresh child process (this
//! executable run again), it recomputes one instance with everything upstream cached
//! (`exec-stage --force`, as a Slurm task runs it) and prints the child's peak resident set
//! (`VmHWM`): `eval`, then the training. The model is tiny on purpose: what is measured is
//! what holding the data costs.
//!
//! Run: `cargo bench --bench eval_memory --profile dev` (needs ~1.3 GB in the target
//! directory's filesystem; `IDAT_BENCH_DIR` puts the cache elsewhere). Numbers go to
//! docs/benchmarks.md ("Evaluation memory on a large split").
use idat_pipe::config::load_str;
use idat_pipe::exec::run::{exec_one, run, OneRequest, RunRequest};
use idat_pipe::exec::Outcome;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// The pipeline; `with_eval` adds the `eval` stage.
fn pipeline(test_images: usize, with_eval: bool) -> String {
    let mut p = format!(
        r#"version: 1
name: eval-memory
stages:
  data:
    uses: dataset/mini
    with: {{tasks: [dsprites_loc], seed: 0, n_train: 200, n_test: {test_images}}}
  decode:
    uses: data/decode
    needs: [data]
    with: {{dataset: data, task: dsprites_loc, size: 224}}
  model:
    uses: model/vit
    with:
      arch: {{img_size: 224, patch_size: 16, num_classes: 0, embed_dim: 32, depth: 1, num_heads: 2}}
      weights: {{from: random, seed: 0}}
  train:
    uses: train/adapt
    needs: [decode, model]
    with:
      task: dsprites_loc
      data: decode
      model: model
      adapter: {{method: linear}}
      optim: {{lr: 0.01, epochs: 1, cooldown_epochs: 0, warmup_epochs: 0, batch_size: 50}}
      seed: 1
"#
    );
    if with_eval {
        p.push_str(
            "  eval:\n    uses: eval\n    needs: [train, decode, model]\n    \
             with: {train: train, data: decode, model: model}\n",
        );
    }
    p
}

/// The peak resident set of this process (`VmHWM`), MiB.
fn peak_rss_mib() -> f64 {
    idat_pipe::bench::peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 20) as f64
}

/// In a child: recompute `instance` with its upstreams cached; print its peak memory.
fn child(cache_dir: &Path, instance: &str, test_images: usize) {
    let reg = idat_pipe::builtin_registry();
    let loaded = load_str("eval-memory.yaml", &pipeline(test_images, true), &[], &reg)
        .expect("valid pipeline");
    let one = OneRequest {
        cache_dir,
        instance,
        log: Some(cache_dir.with_extension(format!("{instance}.log"))),
        device: "cpu".into(),
        force: true,
        threads: Some(
            std::env::var("IDAT_BENCH_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        ),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let t0 = Instant::now();
    let (o, _) = exec_one(&loaded, &reg, one).expect("exec-stage");
    assert!(matches!(o, Outcome::Ran(_)), "{instance} did not run");
    println!(
        "CHILD {instance} {:.1} {:.1}",
        peak_rss_mib(),
        t0.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let test_images: usize = std::env::var("IDAT_BENCH_TEST_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7200);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]), &args[i + 2], test_images);
        return;
    }
    let base = std::env::var_os("IDAT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let cache_dir = dir.path().join("cache");
    // IDAT_BENCH_KEEP=1 keeps the cache and the children's logs (`cache.<instance>.log`).
    let dir = match std::env::var_os("IDAT_BENCH_KEEP") {
        Some(_) => {
            let kept = dir.keep();
            println!("keeping {}", kept.display());
            Kept::Path(kept)
        }
        None => Kept::Temp(dir),
    };
    let reg = idat_pipe::builtin_registry();
    for with_eval in [false, true] {
        let loaded = load_str(
            "eval-memory.yaml",
            &pipeline(test_images, with_eval),
            &[],
            &reg,
        )
        .expect("valid pipeline");
        let req = RunRequest {
            cache_dir: &cache_dir,
            runs_dir: &dir.path().join("runs"),
            force: &[],
            keep_going: false,
            device: "cpu",
            jobs: 1,
            gpus: Some(0),
            gpu_mem: None,
            per_gpu: None,
            executor: Some("local"),
            quiet: true,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let t0 = Instant::now();
        let out = run(&loaded, &reg, &req).unwrap_or_else(|_| panic!("run failed"));
        assert!(out.summary.failed.is_empty(), "a stage failed");
        println!(
            "built the pipeline{} in {:.1}s",
            if with_eval { " with eval" } else { "" },
            t0.elapsed().as_secs_f64()
        );
    }
    let split = walk_size(&cache_dir, "test.safetensors");
    println!(
        "test split: {test_images} images at 224x224, {:.2} GiB ({split} bytes)",
        split as f64 / (1u64 << 30) as f64
    );
    println!("| recomputed instance (`exec-stage --force`) | peak RSS (VmHWM), MiB | seconds |");
    println!("|---|---|---|");
    for instance in ["eval", "train", "eval", "train"] {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["--child", &cache_dir.display().to_string(), instance])
            .env("IDAT_BENCH_TEST_IMAGES", test_images.to_string())
            .output()
            .expect("child");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("CHILD ")) else {
            panic!(
                "child {instance} failed: {}\n{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        println!("| `{}` | {} | {} |", f[1], f[2], f[3]);
    }
}

/// The size of the first file named `name` under `dir`, bytes.
fn walk_size(dir: &Path, name: &str) -> u64 {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                return e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    0
}

/// The bench's folder: removed at the end, or kept (`IDAT_BENCH_KEEP`).
enum Kept {
    Temp(tempfile::TempDir),
    Path(std::path::PathBuf),
}

impl Kept {
    fn path(&self) -> &Path {
        match self {
            Kept::Temp(t) => t.path(),
            Kept::Path(p) => p,
        }
    }
}
