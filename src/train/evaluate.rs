//! Top-1 / top-5 accuracy of a model on a decoded split.
use crate::data::image::Normalize;
use crate::data::loader::DecodedSplit;
use crate::nn::loss::accuracy_topk;
use crate::nn::vit::{Mode, Vit};
use anyhow::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    /// Percent.
    pub top1: f64,
    /// Percent (equals 100 when the task has at most 5 classes).
    pub top5: f64,
    pub images: usize,
}

/// Evaluate in batches of `batch` (no dropout, no DropPath, no gradient graph kept).
pub fn evaluate(
    vit: &Vit,
    split: &DecodedSplit,
    norm: &Normalize,
    batch: usize,
    dev: &Device,
) -> Result<EvalResult> {
    let n = split.len();
    let (mut c1, mut c5) = (0usize, 0usize);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = split.to_batch(chunk, norm, dev)?;
        let logits = vit.forward(&x, Mode::Eval)?.detach();
        c1 += accuracy_topk(&logits, &y, 1)?;
        c5 += accuracy_topk(&logits, &y, 5)?;
    }
    let pct = |c: usize| {
        if n == 0 {
            0.0
        } else {
            100.0 * c as f64 / n as f64
        }
    };
    Ok(EvalResult {
        top1: pct(c1),
        top5: pct(c5),
        images: n,
    })
}
