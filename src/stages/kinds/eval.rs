//! `eval`: the kept student of a training entry on the task's test split: top-1 and top-5
//! after the last epoch (the honest number), beside the best-epoch top-1 recorded during
//! training (the literature's protocol), each labelled.
use super::common::read_json;
use super::common::{device, input_dir, read_model, read_split, write_json};
use super::train::{TrainSummary, METRICS_FILE, STUDENT_FILE, SUMMARY_FILE};
use crate::data::image::{Normalize, NormalizeKind};
use crate::data::loader::DecodedSplit;
use crate::nn::checkpoint::load_tensors;
use crate::nn::loss::accuracy_topk;
use crate::nn::vit::Mode;
use crate::nn::vit::Vit;
use crate::stages::{StageContext, StageKind};
use crate::train::EvalResult;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const EVAL_FILE: &str = "eval.json";

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The training stage (`train/adapt` or `train/idat`); must be in `needs`.
    pub train: String,
    /// The `data/decode` stage of the task; must be in `needs`.
    pub data: String,
    /// The backbone stage of the student; must be in `needs`.
    pub model: String,
    #[serde(default = "test_split")]
    pub split: String,
    #[serde(default)]
    pub normalize: NormalizeKind,
    #[serde(default = "batch")]
    pub batch_size: usize,
}

fn test_split() -> String {
    "test".into()
}
fn batch() -> usize {
    64
}

/// `eval.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub task: String,
    pub group: String,
    pub label: String,
    pub seed: u64,
    pub split: String,
    /// Top-1 after the last epoch, recomputed here from the saved weights.
    pub top1_final: f64,
    pub top5_final: f64,
    /// Best test top-1 over epochs during training (SSF/FacT/iDAT protocol).
    pub top1_best_epoch: f64,
    pub best_epoch: usize,
    pub teacher_top1_final: Option<f64>,
    pub trainable_params: usize,
    pub images: usize,
}

/// Top-1/top-5 like [`crate::train::evaluate`], with each batch's logits checked first:
/// a non-finite logit (inf/NaN, e.g. from overflowing weights) is an error naming the
/// batch and its images (indices in the split), never turned into a prediction.
pub fn evaluate_finite(
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

pub struct Eval;

impl StageKind for Eval {
    type Params = Params;
    const NAME: &'static str = "eval";
    const VERSION: u32 = 2;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["batch_size"];
    const SUMMARY: &'static str =
        "Student top-1/top-5 on test: final epoch and best epoch, labelled";

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let dev = device(&ctx.device)?;
        let train_dir = input_dir(ctx, &p.train)?.to_path_buf();
        let summary: TrainSummary = read_json(&train_dir.join(SUMMARY_FILE))?;
        let (info, split) = read_split(input_dir(ctx, &p.data)?, &p.split)?;
        let (cfg, _, backbone) =
            read_model(input_dir(ctx, &p.model)?, info.num_classes, 0.0, &dev)?;
        let vit = Vit::new(&cfg, &summary.adapter, backbone, &dev, 0)?;
        let (weights, _) = load_tensors(&train_dir.join(STUDENT_FILE), &dev)?;
        vit.set_trainable(&weights)
            .context("restoring the trained student")?;
        let r = evaluate_finite(
            &vit,
            &split,
            &Normalize::from_kind(p.normalize),
            p.batch_size,
            &dev,
        )
        .with_context(|| format!("evaluating on split `{}`", p.split))?;
        ctx.log(format!(
            "{} {}: top-1 {:.2} top-5 {:.2} on {} images",
            summary.task, summary.label, r.top1, r.top5, r.images
        ));
        let rec = EvalRecord {
            task: summary.task.clone(),
            group: info.group.clone(),
            label: summary.label.clone(),
            seed: summary.seed,
            split: p.split.clone(),
            top1_final: r.top1,
            top5_final: r.top5,
            top1_best_epoch: summary.best_top1,
            best_epoch: summary.best_epoch,
            teacher_top1_final: summary.final_teacher_top1,
            trainable_params: summary.trainable_student,
            images: r.images,
        };
        // The learning curves travel with the result, for the report.
        std::fs::copy(train_dir.join(METRICS_FILE), ctx.out_dir.join(METRICS_FILE))
            .with_context(|| format!("copying {}", train_dir.join(METRICS_FILE).display()))?;
        write_json(&ctx.out_dir.join(EVAL_FILE), &rec)
    }
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
        // Finite: the same numbers as the training-time evaluation.
        let (vit, s) = (tiny(0.1), split(5));
        let got = evaluate_finite(&vit, &s, &norm, 2, &Device::Cpu).unwrap();
        let want = crate::train::evaluate(&vit, &s, &norm, 2, &Device::Cpu).unwrap();
        assert_eq!(got, want);
        // Finite but huge weights overflow in the forward pass: NaN logits would count
        // as correct predictions (NaN compares false); here they are an error.
        let vit = tiny(3e38);
        let e = format!(
            "{:#}",
            evaluate_finite(&vit, &s, &norm, 2, &Device::Cpu).unwrap_err()
        );
        assert!(
            e.contains("batch 0 (images #0..#1)") && e.contains("non-finite logits"),
            "{e}"
        );
    }
}
