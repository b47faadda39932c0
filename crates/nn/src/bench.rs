//! Timing of one adapter-tuning training step (frozen backbone + `seq_adapter` + head,
//! cross-entropy, backward, plain SGD update) used by `benches/train_step.rs` to compare
//! the composed and fused op implementations.

use crate::adapters::{AdapterConfig, SeqAdapterConfig};
use crate::loss::cross_entropy;
use crate::ops::OpsImpl;
use crate::vit::{Mode, Vit, VitConfig};
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Timings of [`bench_step`], in milliseconds.
#[derive(Clone, Debug)]
pub struct StepTimes {
    /// Median full step (forward + backward + update).
    pub median_ms: f64,
    /// Fastest step.
    pub min_ms: f64,
    /// Median forward alone (inside the timed steps).
    pub forward_median_ms: f64,
}

/// The median of timings: the upper middle value for an even count (sorts `v`).
///
/// # Panics
/// If `v` is empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `warmup + steps` training steps of a random-weight ViT of `cfg` with `seq_adapter`
/// (hidden 4) on a random batch of `batch` images and reports the timed steps.
pub fn bench_step(
    cfg: &VitConfig,
    batch: usize,
    ops: OpsImpl,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<StepTimes> {
    anyhow::ensure!(steps > 0, "bench_step: steps must be > 0");
    let dev = Device::Cpu;
    let backbone = Vit::random_backbone(cfg, &dev, 0)?;
    let mut vit = Vit::new(
        cfg,
        &AdapterConfig::SeqAdapter(SeqAdapterConfig::default()),
        backbone,
        &dev,
        0,
    )?;
    vit.set_ops_impl(ops);
    let x = Tensor::randn(
        0f32,
        1f32,
        (batch, cfg.in_chans, cfg.img_size, cfg.img_size),
        &dev,
    )?;
    let labels: Vec<u32> = (0..batch).map(|i| (i % cfg.num_classes) as u32).collect();
    let labels = Tensor::new(labels.as_slice(), &dev)?;
    let params = vit.trainable();
    let (mut total, mut fwd) = (Vec::new(), Vec::new());
    for step in 0..warmup + steps {
        let t0 = Instant::now();
        let logits = vit.forward(&x, Mode::Train { seed: step as u64 })?;
        let t1 = Instant::now();
        let grads = cross_entropy(&logits, &labels)?.backward()?;
        for (_, var) in &params {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * 1e-3)?)?)?;
            }
        }
        let t2 = Instant::now();
        if step >= warmup {
            total.push((t2 - t0).as_secs_f64() * 1e3);
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
        }
    }
    let min_ms = total.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(StepTimes {
        median_ms: median(&mut total),
        min_ms,
        forward_median_ms: median(&mut fwd),
    })
}
