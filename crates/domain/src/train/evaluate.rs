//! Top-1 / top-5 accuracy of a model on a decoded split.
use crate::data::image::Normalize;
use crate::data::loader::DecodedSplit;
use crate::nn::loss::accuracy_topk;
use crate::nn::vit::{Mode, Vit};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// Accuracy of a model on a split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    /// Percent.
    pub top1: f64,
    /// Percent (equals 100 when the task has at most 5 classes).
    pub top5: f64,
    /// Images evaluated.
    pub images: usize,
}

/// Evaluate in batches of `batch` (no dropout, no DropPath, no gradient graph kept).
/// Each batch's logits are checked first: a non-finite logit (inf/NaN, e.g. from
/// overflowing weights) is an error naming the batch and its images (indices in the
/// split), never turned into a prediction. Used by training (best epoch) and `eval` alike.
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
    for (b, chunk) in idx.chunks(batch.max(1)).enumerate() {
        let (x, y) = split.to_batch(chunk, norm, dev)?;
        let logits = vit.forward(&x, Mode::Eval)?.detach();
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let bad: Vec<usize> = rows
            .iter()
            .zip(chunk)
            .filter(|(r, _)| r.iter().any(|v| !v.is_finite()))
            .map(|(_, &i)| i)
            .collect();
        if !bad.is_empty() {
            let shown: Vec<String> = bad.iter().take(8).map(|i| format!("#{i}")).collect();
            bail!(
                "batch {b} (images #{}..#{}): the model's output holds non-finite logits \
                 (inf/NaN) for {} image(s): {}{}; no prediction is counted",
                chunk[0],
                chunk[chunk.len() - 1],
                bad.len(),
                shown.join(", "),
                if bad.len() > 8 { ", ..." } else { "" }
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::adapters::AdapterConfig;
    use crate::nn::vit::VitConfig;
    use candle_core::Tensor;
    use std::collections::BTreeMap;

    fn tiny(head_scale: f64) -> Vit {
        let dev = Device::Cpu;
        let cfg = VitConfig {
            img_size: 16,
            patch_size: 8,
            in_chans: 3,
            num_classes: 3,
            embed_dim: 16,
            depth: 1,
            num_heads: 2,
            mlp_ratio: 2.0,
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
        };
        let backbone = Vit::random_backbone(&cfg, &dev, 1).unwrap();
        let vit = Vit::new(&cfg, &AdapterConfig::Linear, backbone, &dev, 2).unwrap();
        let head = BTreeMap::from([
            (
                "head.weight".to_string(),
                (Tensor::ones((3, 16), DType::F32, &dev).unwrap() * head_scale).unwrap(),
            ),
            (
                "head.bias".to_string(),
                Tensor::new(&[0f32, 1.0, 0.5], &dev).unwrap(),
            ),
        ]);
        vit.set_trainable(&head).unwrap();
        vit
    }

    fn split(n: usize) -> DecodedSplit {
        DecodedSplit {
            images: (0..n * 16 * 16 * 3).map(|i| (i * 37 % 251) as u8).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            size: 16,
        }
    }

    #[test]
    fn non_finite_logits_are_an_error_naming_the_batch_not_a_prediction() {
        let norm = Normalize::default();
        // Finite: top-1 against the argmax of one forward pass over all images, batched
        // in 2s (a last batch of one).
        let (vit, s) = (tiny(0.1), split(5));
        let got = evaluate(&vit, &s, &norm, 2, &Device::Cpu).unwrap();
        let (x, y) = s.to_batch(&[0, 1, 2, 3, 4], &norm, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = vit.forward(&x, Mode::Eval).unwrap().to_vec2().unwrap();
        let labels: Vec<u32> = y.to_vec1().unwrap();
        let hits = rows
            .iter()
            .zip(&labels)
            .filter(|(r, &l)| {
                let best = (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)));
                best == Some(l as usize)
            })
            .count();
        assert_eq!(got.images, 5);
        assert_eq!(got.top1, 100.0 * hits as f64 / 5.0);
        assert_eq!(got.top5, 100.0, "3 classes: top-5 counts every image");
        // Finite but huge weights overflow in the forward pass: NaN logits would count
        // as correct predictions (NaN compares false); here they are an error.
        let vit = tiny(3e38);
        let e = format!(
            "{:#}",
            evaluate(&vit, &s, &norm, 2, &Device::Cpu).unwrap_err()
        );
        assert!(
            e.contains("batch 0 (images #0..#1)") && e.contains("non-finite logits"),
            "{e}"
        );
    }
}
