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

fn one() -> f64 {
    1.0
}
fn five() -> f64 {
    5.0
}
