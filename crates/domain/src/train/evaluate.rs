//! Top-1 / top-5 accuracy of a model on a decoded split.
use crate::data::image::Normalize;
use crate::data::loader::{batch_tensors, Split};
use crate::nn::loss::accuracy_topk;
use crate::nn::vit::{Mode, Vit};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::ops::Range;

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
///
/// # Errors
/// A non-finite logit; the split cannot be read or is corrupt ([`Split::for_each_batch`]).
pub fn evaluate(
    vit: &Vit,
    split: &dyn Split,
    norm: &Normalize,
    batch: usize,
    dev: &Device,
) -> Result<EvalResult> {
    let mut r = evaluate_many(&[vit], split, norm, batch, dev)?;
    Ok(r.remove(0))
}

/// [`evaluate`] for several models in one pass over the split (the student and the
/// teacher of iDAT read it once): one result per model, in order. Each model's result is
/// what [`evaluate`] gives it alone.
///
/// # Errors
/// As [`evaluate`]; the error of a non-finite logit names the model's index when there
/// are several.
pub fn evaluate_many(
    vits: &[&Vit],
    split: &dyn Split,
    norm: &Normalize,
    batch: usize,
    dev: &Device,
) -> Result<Vec<EvalResult>> {
    let n = split.len();
    let mut correct = vec![(0usize, 0usize); vits.len()];
    let mut b = 0usize;
    split.for_each_batch(batch.max(1), &mut |range, images, labels| {
        let (x, y) = batch_tensors(images, labels.to_vec(), split.size(), norm, dev)?;
        for (m, vit) in vits.iter().enumerate() {
            let logits = vit.forward(&x, Mode::Eval)?.detach();
            check_finite(&logits, &range, b).map_err(|e| match vits.len() {
                1 => e,
                _ => e.context(format!("model {m} of {}", vits.len())),
            })?;
            correct[m].0 += accuracy_topk(&logits, &y, 1)?;
            correct[m].1 += accuracy_topk(&logits, &y, 5)?;
        }
        b += 1;
        Ok(())
    })?;
    let pct = |c: usize| {
        if n == 0 {
            0.0
        } else {
            100.0 * c as f64 / n as f64
        }
    };
    Ok(correct
        .into_iter()
        .map(|(c1, c5)| EvalResult {
            top1: pct(c1),
            top5: pct(c5),
            images: n,
        })
        .collect())
}

/// An error when a row of `logits` (batch `b`, images `range` of the split) is not finite.
fn check_finite(logits: &candle_core::Tensor, range: &Range<usize>, b: usize) -> Result<()> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let bad: Vec<usize> = rows
        .iter()
        .zip(range.clone())
        .filter(|(r, _)| r.iter().any(|v| !v.is_finite()))
        .map(|(_, i)| i)
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = bad.iter().take(8).map(|i| format!("#{i}")).collect();
    bail!(
        "batch {b} (images #{}..#{}): the model's output holds non-finite logits \
         (inf/NaN) for {} image(s): {}{}; no prediction is counted",
        range.start,
        range.end - 1,
        bad.len(),
        shown.join(", "),
        if bad.len() > 8 { ", ..." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::DecodedSplit;
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

    /// Several models in one pass, and a split read from its file, give what one model on
    /// the split in memory gives.
    #[test]
    fn one_pass_for_several_models_and_the_file_give_the_same_results() {
        let norm = Normalize::default();
        let (a, b, s) = (tiny(0.1), tiny(-0.2), split(7));
        let one = |v: &Vit| evaluate(v, &s, &norm, 3, &Device::Cpu).unwrap();
        let many = evaluate_many(&[&a, &b], &s, &norm, 3, &Device::Cpu).unwrap();
        assert_eq!(many, vec![one(&a), one(&b)]);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("test.safetensors");
        s.save(&path).unwrap();
        let file = crate::data::split_file::SplitFile::open(&path).unwrap();
        let from_file = evaluate_many(&[&a, &b], &file, &norm, 3, &Device::Cpu).unwrap();
        assert_eq!(from_file, many);
        assert_eq!(from_file[0].images, 7);
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
