//! `idat-pipe bench`: throughput and peak memory of one real training step.
//!
//! The training modes time [`crate::train::train_step_accum`], the step function the
//! training stages run (with `--accum-steps N`, as `optim.accum_steps: N`):
//!
//! - `idat`: the iDAT co-training step: small teacher + large student (frozen random
//!   backbones, `seq_adapter` + head trainable), loss `CE_s + CE_t + MSE(z_s, z_t)` (the
//!   teacher is not detached, as in iDAT), one backward, one AdamW step per model
//!   (weight decay 0.05, as `benches/pytorch_step.py`).
//! - `at`: the adapter-tuning baseline step of the large model alone (CE, backward, AdamW).
//! - `eval_idat`, `eval_at` (`--mode eval`): forward-only evaluation as the training loop
//!   runs it after an epoch ([`crate::train::evaluate::evaluate_many`] over a split of
//!   `batch` random u8 images: conversion and normalisation of the batch included, no
//!   gradient graph kept): student and teacher in one pass for iDAT, the student alone for
//!   AT. `idat-pipe budget` turns these rates into time budgets.
//!
//! Peak memory is the process's `VmHWM` (peak resident set) from `/proc/self/status`, so
//! every mode runs in its own process: `--mode all` re-runs this binary once per mode. On
//! CUDA, the device memory the process holds is also measured, from inside the process:
//! the driver's used memory (`total - free`, `cuMemGetInfo`) after every step, peak minus
//! the value before the models were built (so the CUDA context itself is not counted).
//! `benches/pytorch_step.py` reports the same measure for PyTorch.
use crate::data::image::Normalize;
use crate::data::loader::DecodedSplit;
use crate::nn::adapters::{AdapterConfig, SeqAdapterConfig};
use crate::nn::bench::median;
use crate::nn::ops::GEMM_BACKEND_ENV;
use crate::nn::precision::Precision;
use crate::nn::vit::{Vit, VitConfig};
use crate::train::evaluate::evaluate_many;
use crate::train::{
    train_step_accum, DistillConfig, DistillDirection, DistillKind, Member, OptimConfig, StepAt,
};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which training step to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Teacher (small) + student (large), one backward of `CE_s + CE_t + MSE`.
    Idat,
    /// The large model alone (adapter-tuning baseline).
    At,
    /// Forward-only evaluation of student and teacher in one pass (iDAT's per-epoch test).
    EvalIdat,
    /// Forward-only evaluation of the large model alone (AT's per-epoch test, and `eval`).
    EvalAt,
}

impl StepKind {
    /// The `--mode` / JSON name (`idat`, `at`, `eval_idat`, `eval_at`).
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Idat => "idat",
            StepKind::At => "at",
            StepKind::EvalIdat => "eval_idat",
            StepKind::EvalAt => "eval_at",
        }
    }

    /// The kind named `name` ([`StepKind::name`]).
    pub fn from_name(name: &str) -> Option<StepKind> {
        [Self::Idat, Self::At, Self::EvalIdat, Self::EvalAt]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// Two models (teacher and student) rather than the large one alone.
    pub fn two_models(self) -> bool {
        matches!(self, StepKind::Idat | StepKind::EvalIdat)
    }

    /// Forward-only evaluation rather than a training step.
    pub fn is_eval(self) -> bool {
        matches!(self, StepKind::EvalIdat | StepKind::EvalAt)
    }
}

/// What to time.
#[derive(Debug, Clone)]
pub struct StepBench {
    /// iDAT (two models) or AT (the large one alone).
    pub kind: StepKind,
    /// The small model (teacher); unused by `at`.
    pub small: VitConfig,
    /// The large model (student).
    pub large: VitConfig,
    /// Images per step (one random batch, reused every step).
    pub batch: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps (at least 1).
    pub steps: usize,
    /// f32, or bf16 mixed precision where the device has a bf16 kernel.
    pub precision: Precision,
    /// Ablation: the last block computes every token, as timm does (default: only the
    /// class token's row; see `Vit::set_last_block_cls_only`).
    pub full_last_block: bool,
    /// Gradient accumulation of a training step (`optim.accum_steps`): micro-batches of
    /// `batch / accum_steps` images, one AdamW step; 1: none. Must divide `batch`.
    pub accum_steps: usize,
}

/// Result of one [`run_step_bench`], one JSON line on stdout of a bench child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// The step timed.
    pub kind: StepKind,
    /// The device, as candle prints it (`Cpu`, `Cuda(..)`).
    pub device: String,
    /// Threads of candle's CPU kernels.
    pub threads: usize,
    /// Images per step.
    pub batch: usize,
    /// Input side in pixels (the large model's).
    pub img_size: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median step (forward + backward + optimiser), milliseconds.
    pub median_ms: f64,
    /// Fastest timed step, milliseconds.
    pub min_ms: f64,
    /// `batch / median step`.
    pub images_per_s: f64,
    /// Peak resident set of the process (VmHWM), MiB; None where /proc is unavailable.
    pub peak_rss_mib: Option<f64>,
    /// Trainable parameters (student + teacher for `idat`).
    pub trainable: usize,
    /// `f32` or `bf16` (mixed precision).
    #[serde(default)]
    pub precision: Precision,
    /// CUDA: peak device memory held by the process beyond its context, MiB (see the
    /// module docs); None on CPU.
    #[serde(default)]
    pub device_mem_mib: Option<f64>,
    /// The CPU GEMM backend of the frozen-weight products (`IDAT_BLAS`); empty off CPU.
    #[serde(default)]
    pub cpu_gemm: String,
    /// The `--full-last-block` ablation was on.
    #[serde(default)]
    pub full_last_block: bool,
    /// How the products ran (`f32 products`, the bf16 kernel, or why bf16 fell back).
    #[serde(default)]
    pub products: String,
    /// Gradient accumulation of the training step (1: none).
    #[serde(default = "one")]
    pub accum_steps: usize,
}

fn one() -> usize {
    1
}

/// Device memory in use on `dev` (driver view: total - free), bytes; None off CUDA.
pub fn device_used_bytes(dev: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as u64);
    }
    let _ = dev;
    None
}

/// The process's peak resident set size (`VmHWM`) in bytes (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The optimiser settings of the benchmark (AdamW, weight decay 0.05 as
/// `benches/pytorch_step.py`) in `precision`.
fn bench_optim(precision: Precision) -> OptimConfig {
    OptimConfig {
        weight_decay: 0.05,
        precision,
        ..OptimConfig::default()
    }
}

/// A random-backbone model of `cfg` with `seq_adapter` as a training member.
fn member(name: &str, cfg: &VitConfig, dev: &Device, seed: u64, b: &StepBench) -> Result<Member> {
    let backbone = Vit::random_backbone(cfg, dev, seed)?;
    let mut vit = Vit::new(
        cfg,
        &AdapterConfig::SeqAdapter(SeqAdapterConfig::default()),
        backbone,
        dev,
        seed,
    )?;
    vit.set_last_block_cls_only(!b.full_last_block);
    let optim = bench_optim(b.precision);
    // As `train` does before its first step.
    vit.set_precision(optim.precision)?;
    Member::new(name, vit, &optim)
}

/// Builds the models and times `warmup + steps` calls of [`train_step`] on one random batch.
pub fn run_step_bench(b: &StepBench, dev: &Device) -> Result<StepReport> {
    check_bench(b)?;
    let mem_base = device_used_bytes(dev);
    let mut members = vec![member("student", &b.large, dev, 1, b)?];
    if b.kind.two_models() {
        members.push(member("teacher", &b.small, dev, 2, b)?);
    }
    let (mut times, mem_peak) = if b.kind.is_eval() {
        time_evals(b, &members, dev, mem_base)?
    } else {
        time_steps(b, &mut members, dev, mem_base)?
    };
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    let median_ms = median(&mut times);
    let trainable = members.iter().map(|m| m.vit.num_trainable()).sum();
    let products = members[0].vit.bf16_products().to_string();
    // The models stay alive until here so the peak covers the whole run.
    drop(members);
    Ok(StepReport {
        kind: b.kind,
        device: format!("{dev:?}"),
        threads: candle_core::utils::get_num_threads(),
        batch: b.batch,
        img_size: b.large.img_size,
        steps: b.steps,
        median_ms,
        min_ms,
        images_per_s: b.batch as f64 * 1e3 / median_ms,
        peak_rss_mib: peak_rss_bytes().map(|v| v as f64 / (1u64 << 20) as f64),
        trainable,
        precision: b.precision,
        device_mem_mib: match (mem_base, mem_peak) {
            (Some(base), Some(peak)) => {
                Some(peak.saturating_sub(base) as f64 / (1u64 << 20) as f64)
            }
            _ => None,
        },
        cpu_gemm: match crate::nn::ops::cpu_gemm() {
            Ok(g) if dev.is_cpu() => g.to_string(),
            _ => String::new(),
        },
        full_last_block: b.full_last_block,
        products,
        accum_steps: b.accum_steps,
    })
}

/// An error unless `b` has steps and a batch and, for `idat`, two models that share the
/// input size and the classes.
fn check_bench(b: &StepBench) -> Result<()> {
    if b.steps == 0 || b.batch == 0 {
        bail!("bench: --steps and --batch must be at least 1");
    }
    if b.accum_steps == 0 || !b.batch.is_multiple_of(b.accum_steps) {
        bail!(
            "bench: --accum-steps {} must be at least 1 and divide --batch {}",
            b.accum_steps,
            b.batch
        );
    }
    if b.kind.two_models()
        && (b.small.img_size, b.small.num_classes) != (b.large.img_size, b.large.num_classes)
    {
        bail!(
            "bench: teacher and student must share img_size and classes (got {} / {} and {} / {})",
            b.small.img_size,
            b.small.num_classes,
            b.large.img_size,
            b.large.num_classes
        );
    }
    Ok(())
}

/// Runs `warmup + steps` training steps of `members` on one random batch: the timed steps'
/// milliseconds and the peak device memory in use (from `mem_base` on; `None` off CUDA).
fn time_steps(
    b: &StepBench,
    members: &mut [Member],
    dev: &Device,
    mem_base: Option<u64>,
) -> Result<(Vec<f64>, Option<u64>)> {
    // iDAT: CE_s + CE_t + MSE(z_s, z_t), the teacher not detached.
    let distill = DistillConfig {
        kind: DistillKind::Mse,
        weight: 1.0,
        temperature: 5.0,
        t2_factor: false,
        detach_teacher: false,
        direction: DistillDirection::SmallToLarge,
    };
    let distill = b.kind.two_models().then_some(&distill);
    let cfg = &b.large;
    let x = Tensor::randn(
        0f32,
        1f32,
        (b.batch, cfg.in_chans, cfg.img_size, cfg.img_size),
        dev,
    )?;
    let labels: Vec<u32> = (0..b.batch).map(|i| (i % cfg.num_classes) as u32).collect();
    let y = Tensor::new(labels.as_slice(), dev)?;
    let mut times = Vec::new();
    let mut mem_peak = mem_base;
    let total = b.warmup + b.steps;
    for step in 0..total {
        let t0 = Instant::now();
        let at = StepAt {
            seed: 0,
            epoch: 0,
            step,
            steps: total,
        };
        train_step_accum(members, distill, &x, &y, at, 1e-3, b.batch / b.accum_steps)?;
        // Wait for the device (CUDA is asynchronous; the optimiser step is queued).
        dev.synchronize()?;
        mem_peak = mem_peak.max(device_used_bytes(dev));
        if step >= b.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((times, mem_peak))
}

/// Runs `warmup + steps` evaluations of one batch of `b.batch` random images through
/// [`evaluate_many`] (every member in one pass, as the training loop evaluates): the timed
/// evaluations' milliseconds and the peak device memory in use (as [`time_steps`]).
fn time_evals(
    b: &StepBench,
    members: &[Member],
    dev: &Device,
    mem_base: Option<u64>,
) -> Result<(Vec<f64>, Option<u64>)> {
    let cfg = &b.large;
    // Any pixels do: a ViT's cost does not depend on them (Knuth's multiplicative hash).
    let images = (0..b.batch * cfg.img_size * cfg.img_size * 3)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let split = DecodedSplit {
        images,
        labels: (0..b.batch).map(|i| (i % cfg.num_classes) as u32).collect(),
        size: cfg.img_size,
    };
    let norm = Normalize::default();
    let vits: Vec<&Vit> = members.iter().map(|m| &m.vit).collect();
    let mut times = Vec::new();
    let mut mem_peak = mem_base;
    for step in 0..b.warmup + b.steps {
        let t0 = Instant::now();
        evaluate_many(&vits, &split, &norm, b.batch, dev)?;
        dev.synchronize()?;
        mem_peak = mem_peak.max(device_used_bytes(dev));
        if step >= b.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((times, mem_peak))
}

/// A Markdown table row of a report.
pub fn table_row(r: &StepReport) -> String {
    let mib = |m: Option<f64>| m.map_or("n/a".into(), |m| format!("{m:.0} MiB"));
    format!(
        "| {} | {} | {} | {} | {} | {:.1} ms (min {:.1}) | {:.2} | {} | {} |",
        match r.kind {
            StepKind::Idat => "iDAT (S teacher + B student)",
            StepKind::At => "AT (B alone)",
            StepKind::EvalIdat => "iDAT evaluation (S + B forward)",
            StepKind::EvalAt => "AT evaluation (B forward)",
        },
        r.device,
        r.precision,
        r.threads,
        r.batch,
        r.median_ms,
        r.min_ms,
        r.images_per_s,
        mib(r.peak_rss_mib),
        mib(r.device_mem_mib),
    )
}

/// The header matching [`table_row`].
pub const TABLE_HEADER: &str = "| step | device | precision | threads | batch | median step | images/s | peak RSS | device memory |\n|---|---|---|---|---|---|---|---|---|";

/// `idat-pipe bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// `idat`, `at` (training steps), `eval_idat`, `eval_at` (forward-only evaluation of a
    /// batch, as after an epoch), `eval` (both evaluations) or `all` (all four); several run
    /// each in its own child process, so peaks are per mode.
    #[arg(long, default_value = "all", value_parser = ["all", "idat", "at", "eval", "eval_idat", "eval_at"])]
    pub mode: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Small model (teacher): a preset, a JSON/YAML config file, or inline JSON.
    #[arg(long, default_value = "vit_small_patch16_224")]
    pub model_s: String,
    /// Large model (student): a preset, a JSON/YAML config file, or inline JSON.
    #[arg(long, default_value = "vit_base_patch16_224")]
    pub model_b: String,
    /// Classes of both heads.
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// CPU threads (sets RAYON_NUM_THREADS; default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// `f32`, or `bf16` mixed precision (frozen-backbone and attention products on bf16
    /// inputs: CUDA, or a CPU with AVX512-BF16 and an OpenBLAS with `cblas_sbgemm`; other
    /// CPUs fall back to f32 and the output says why).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Ablation: compute every token in the last block, as timm does (default: only the
    /// class token's row, which is all the head reads; same logits and gradients).
    #[arg(long)]
    pub full_last_block: bool,
    /// Gradient accumulation of the training steps (`optim.accum_steps`): micro-batches of
    /// `--batch / N` images, one optimizer step; must divide `--batch`.
    #[arg(long, default_value_t = 1)]
    pub accum_steps: usize,
}

/// Runs `idat-pipe bench`.
pub fn cmd(a: BenchArgs) -> Result<std::process::ExitCode> {
    use anyhow::Context;
    if let Some(t) = a.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle's CPU kernels (get_num_threads) and rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    let dev = crate::kinds::common::device(&a.device)?;
    let resolve = |s: &str, flag: &str| -> Result<VitConfig> {
        let mut c = crate::infer::resolve_model(s).with_context(|| format!("--{flag}"))?;
        c.num_classes = a.classes;
        Ok(c)
    };
    let small = resolve(&a.model_s, "model-s")?;
    let large = resolve(&a.model_b, "model-b")?;
    let several: &[&str] = match a.mode.as_str() {
        "all" => &["idat", "at", "eval_idat", "eval_at"],
        "eval" => &["eval_idat", "eval_at"],
        _ => &[],
    };
    let reports = if !several.is_empty() {
        let exe = std::env::current_exe().context("locating this executable")?;
        several
            .iter()
            .map(|mode| child_report(&exe, mode, &a))
            .collect::<Result<Vec<_>>>()?
    } else {
        let kind = StepKind::from_name(&a.mode)
            .with_context(|| format!("bench: unknown --mode {}", a.mode))?;
        let b = StepBench {
            kind,
            small,
            large: large.clone(),
            batch: a.batch,
            warmup: a.warmup,
            steps: a.steps,
            precision: a.precision,
            full_last_block: a.full_last_block,
            accum_steps: a.accum_steps,
        };
        vec![run_step_bench(&b, &dev)?]
    };
    if a.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&a, &large, &reports);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The report of `bench --mode {mode}` run by this executable `exe` in a child process
/// (so that its peak memory is its own), with the other arguments of `a`.
fn child_report(exe: &std::path::Path, mode: &str, a: &BenchArgs) -> Result<StepReport> {
    use anyhow::Context;
    let mut c = std::process::Command::new(exe);
    c.arg("bench").arg("--mode").arg(mode).arg("--json");
    for (f, v) in [
        ("--device", a.device.clone()),
        ("--steps", a.steps.to_string()),
        ("--warmup", a.warmup.to_string()),
        ("--batch", a.batch.to_string()),
        ("--model-s", a.model_s.clone()),
        ("--model-b", a.model_b.clone()),
        ("--classes", a.classes.to_string()),
        ("--precision", a.precision.to_string()),
        ("--accum-steps", a.accum_steps.to_string()),
    ] {
        c.arg(f).arg(v);
    }
    if let Some(t) = a.threads {
        c.arg("--threads").arg(t.to_string());
    }
    if a.full_last_block {
        c.arg("--full-last-block");
    }
    let o = c
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bench --mode {mode}", exe.display()))?;
    if !o.status.success() {
        bail!("bench --mode {mode} failed ({})", o.status);
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .rfind(|l| l.starts_with('{'))
        .with_context(|| format!("bench --mode {mode}: no JSON result in its output:\n{text}"))?;
    Ok(serde_json::from_str::<StepReport>(line)?)
}

/// The human-readable output: the settings, the CPU GEMM backend, how the products ran,
/// and one table row per report.
fn print_table(a: &BenchArgs, large: &VitConfig, reports: &[StepReport]) {
    println!(
        "models: small {} / large {}, {} classes, img {}, warmup {} + {} timed steps",
        a.model_s, a.model_b, a.classes, large.img_size, a.warmup, a.steps
    );
    if a.full_last_block {
        println!("ablation: the last block computes every token (--full-last-block)");
    }
    if a.accum_steps > 1 {
        println!(
            "gradient accumulation: {} micro-batches of {} per training step",
            a.accum_steps,
            a.batch / a.accum_steps.max(1)
        );
    }
    if let Some(g) = reports.iter().map(|r| &r.cpu_gemm).find(|g| !g.is_empty()) {
        println!("CPU GEMM backend: {g} (choose with {})", GEMM_BACKEND_ENV);
    }
    if let Some(r) = reports.first() {
        println!("precision {}: {}", r.precision, r.products);
    }
    println!("{TABLE_HEADER}");
    for r in reports {
        println!("{}", table_row(r));
    }
}
