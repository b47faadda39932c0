//! Training hyper-parameters, as they appear under `with:` of the training stages.
use crate::nn::optim::AdamWConfig;
use crate::nn::precision::Precision;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AdamW + warm-up + cosine + cool-down: the official iDAT/SSF recipe by default.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate (per task in the official recipe; see docs/vtab.md).
    pub lr: f64,
    /// Decoupled weight decay, applied to 2-D weights only.
    pub weight_decay: f64,
    /// Epochs of cosine schedule (warm-up included), `t_initial` in timm.
    pub epochs: usize,
    /// Extra epochs at `min_lr` after the cosine (110 = 100 + 10 in the recipe).
    pub cooldown_epochs: usize,
    /// Epochs of linear warm-up from `warmup_lr` to `lr` (part of `epochs`).
    pub warmup_epochs: usize,
    /// Learning rate at the start of the warm-up.
    pub warmup_lr: f64,
    /// Learning rate at the end of the cosine and during the cool-down.
    pub min_lr: f64,
    /// Update the learning rate every step instead of every epoch.
    pub per_step_schedule: bool,
    /// Images per step (the last incomplete batch of an epoch is dropped).
    pub batch_size: usize,
    /// Gradient accumulation (timm's `--grad-accum-steps`): each step's batch of
    /// `batch_size` images runs as this many consecutive micro-batches of `batch_size /
    /// accum_steps` images, each with its own forward and backward; their gradients are
    /// summed and one AdamW step follows. Schedules count optimiser steps, so steps per
    /// epoch, learning rates and the logged losses are those of the full batch. Must
    /// divide `batch_size`. With dropout or drop path each micro-batch draws its own
    /// masks; without them `2` gives the weights of `1` to float rounding (docs/stages.md).
    /// Default 1: one forward and backward of the whole batch.
    #[serde(skip_serializing_if = "is_one")]
    #[schemars(range(min = 1), extend("default" = 1))]
    pub accum_steps: usize,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's denominator epsilon.
    pub eps: f64,
    /// `f32`, or `bf16` mixed precision for the frozen backbone's matrix products (worth
    /// it on CUDA; see docs/stages.md). Per-epoch test accuracies are computed in this
    /// precision; the `eval` stage always evaluates in f32.
    pub precision: Precision,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 5e-3,
            weight_decay: 5e-5,
            epochs: 100,
            cooldown_epochs: 10,
            warmup_epochs: 10,
            warmup_lr: 1e-7,
            min_lr: 1e-8,
            per_step_schedule: false,
            batch_size: 64,
            accum_steps: 1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            precision: Precision::F32,
        }
    }
}

impl OptimConfig {
    /// Epochs in all: the cosine's and the cool-down's.
    pub fn total_epochs(&self) -> usize {
        self.epochs + self.cooldown_epochs
    }

    /// Images per micro-batch: `batch_size / accum_steps` (see [`OptimConfig::check`]).
    pub fn micro_batch(&self) -> usize {
        self.batch_size / self.accum_steps.max(1)
    }

    /// The rules beyond the field types: `accum_steps` at least 1 and a divisor of
    /// `batch_size`. The error is `(field, message)`, the field's path below `optim`,
    /// the message saying what to write instead.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let (bs, n) = (self.batch_size, self.accum_steps);
        if n == 0 {
            return Err((
                "accum_steps",
                "accum_steps 0: expected at least 1 (1: no gradient accumulation)".into(),
            ));
        }
        if !bs.is_multiple_of(n) {
            let divisors = divisors(bs);
            return Err((
                "accum_steps",
                format!(
                    "accum_steps {n} does not divide batch_size {bs}: each optimiser step \
                     runs batch_size / accum_steps images at a time; write a divisor of \
                     {bs} ({}) or a batch_size that is a multiple of {n}",
                    divisors
                ),
            ));
        }
        Ok(())
    }

    /// The AdamW settings of this configuration (betas, eps, decoupled weight decay).
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// The distillation term D of `L = CE_s + CE_t + weight * D`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DistillKind {
    /// Mean over batch x classes of (z_s - z_t)^2 on raw logits (the official launch script).
    Mse,
    /// KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, batch mean (the code's default).
    Kl,
}

/// Who teaches whom in the D term.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DistillDirection {
    /// iDAT: the small model is the teacher of the large one (the large one is kept).
    #[default]
    SmallToLarge,
    /// The forward-KD ablation: the large model teaches the small one.
    LargeToSmall,
}

/// The distillation of iDAT: `L = CE_s + CE_t + weight * D`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The term D.
    pub kind: DistillKind,
    /// Its weight in the loss (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// Softmax temperature of `kl` (ignored by `mse`).
    #[serde(default = "five")]
    pub temperature: f64,
    /// Multiply the KL term by T^2 (off in the official code).
    #[serde(default)]
    pub t2_factor: bool,
    /// Stop the D gradient into the teacher: classic one-way KD (iDAT trains both: false).
    #[serde(default)]
    pub detach_teacher: bool,
    /// Who teaches whom (default: the small model the large one).
    #[serde(default)]
    pub direction: DistillDirection,
}

/// The divisors of `n` (> 0) in increasing order, as text: the first 12 (searched up to
/// 65536, so a huge `n` costs nothing), then `...` where there may be more.
fn divisors(n: usize) -> String {
    let found: Vec<usize> = (1..=n.min(1 << 16))
        .filter(|d| n.is_multiple_of(*d))
        .take(13)
        .collect();
    let mut text: Vec<String> = found.iter().take(12).map(|d| d.to_string()).collect();
    if found.len() > 12 || n > 1 << 16 {
        text.push("...".into());
    }
    text.join(", ")
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn one() -> f64 {
    1.0
}
fn five() -> f64 {
    5.0
}

#[cfg(test)]
mod tests {
    use super::OptimConfig;

    fn with(batch_size: usize, accum_steps: usize) -> OptimConfig {
        OptimConfig {
            batch_size,
            accum_steps,
            ..OptimConfig::default()
        }
    }

    #[test]
    fn accum_steps_must_divide_the_batch_and_the_error_says_what_to_write() {
        for (bs, n) in [(64, 1), (64, 2), (64, 64), (48, 3), (0, 5)] {
            assert_eq!(with(bs, n).check(), Ok(()), "{bs} / {n}");
        }
        assert_eq!(with(64, 2).micro_batch(), 32);
        assert_eq!(
            with(64, 3).check(),
            Err((
                "accum_steps",
                "accum_steps 3 does not divide batch_size 64: each optimiser step runs \
                 batch_size / accum_steps images at a time; write a divisor of 64 (1, 2, 4, \
                 8, 16, 32, 64) or a batch_size that is a multiple of 3"
                    .to_string()
            ))
        );
        let e = with(64, 0).check().unwrap_err();
        assert_eq!(e.0, "accum_steps");
        assert!(e.1.contains("expected at least 1"), "{}", e.1);
        // Many divisors: the first 12, then `...`; a huge batch lists what it found.
        assert!(with(720720, 7 * 11 * 13).check().is_ok());
        let e = with(720720, 17 * 17).check().unwrap_err().1;
        assert!(
            e.contains("(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ...)"),
            "{e}"
        );
        let e = with(usize::MAX - 1, 3).check().unwrap_err().1;
        assert!(
            e.contains("(1, 2, 7, 14, 49, 73, 98, 127, 146, 254, 337, 511, ...)"),
            "{e}"
        );
    }

    #[test]
    fn accum_steps_1_is_not_written_so_configs_serialize_as_before() {
        let v = serde_json::to_value(OptimConfig::default()).unwrap();
        assert!(v.get("accum_steps").is_none(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 13, "{v}");
        let v = serde_json::to_value(with(64, 4)).unwrap();
        assert_eq!(v["accum_steps"], 4);
        // Unset, it is 1; set, it round-trips.
        let o: OptimConfig = serde_json::from_str(r#"{"batch_size": 32}"#).unwrap();
        assert_eq!(o.accum_steps, 1);
        let o: OptimConfig = serde_json::from_value(v).unwrap();
        assert_eq!(o, with(64, 4));
    }
}
