//! Cosine learning-rate schedule with the semantics of timm's `CosineLRScheduler`
//! as created by timm's `create_scheduler` in the SSF/iDAT training scripts:
//! `cycle_limit = 1`, `cycle_mul = 1`, `k_decay = 1`, no noise and
//! `warmup_prefix = False` (the warm-up overlaps the first cosine epochs; the
//! official iDAT `train_onlinekd.py` has no `--warmup-prefix` flag).
//!
//! With `t` the schedule time (epoch, or global step when `per_step`):
//! - `t < warmup_t`: `warmup_lr + t * (base_lr - warmup_lr) / warmup_t`;
//! - `t < t_initial`: `min_lr + 0.5 (base_lr - min_lr) (1 + cos(pi t / t_initial))`;
//! - otherwise (cool-down): `min_lr`.
//!
//! The training loop of timm applies `lr(t)` to the whole epoch `t` (per epoch) or
//! to the `t`-th optimiser update counted from 0 (per step: `t_initial` and
//! `warmup_t` are then counted in updates, i.e. multiplied by steps per epoch).

use anyhow::{bail, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Warm-up + cosine decay + cool-down schedule (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CosineSchedule {
    /// Peak learning rate (the optimiser's `lr`).
    pub base_lr: f64,
    /// Learning rate at the start of warm-up (timm `warmup_lr_init`).
    pub warmup_lr: f64,
    /// Warm-up length in epochs (timm `warmup_t`); 0 disables warm-up.
    pub warmup_epochs: usize,
    /// Floor of the cosine and the cool-down learning rate (timm `lr_min`).
    pub min_lr: f64,
    /// Length of the cosine cycle in epochs (timm `t_initial`, the `--epochs` argument).
    pub decay_epochs: usize,
    /// Epochs at `min_lr` after the cycle (timm `cooldown_epochs`).
    pub cooldown_epochs: usize,
    /// Update the learning rate every optimiser step instead of every epoch
    /// (timm `t_in_epochs = False`).
    pub per_step: bool,
}

impl CosineSchedule {
    /// The official iDAT recipe: warm-up 10 epochs from 1e-7, cosine over 100
    /// epochs to 1e-8, then 10 cool-down epochs (110 in all), per epoch.
    pub fn idat(base_lr: f64) -> Self {
        Self {
            base_lr,
            warmup_lr: 1e-7,
            warmup_epochs: 10,
            min_lr: 1e-8,
            decay_epochs: 100,
            cooldown_epochs: 10,
            per_step: false,
        }
    }

    /// Checks that rates are finite and non-negative and the cycle is not empty.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("base_lr", self.base_lr),
            ("warmup_lr", self.warmup_lr),
            ("min_lr", self.min_lr),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("schedule: {name} must be a finite number >= 0, got {v}");
            }
        }
        if self.decay_epochs == 0 {
            bail!("schedule: decay_epochs must be at least 1");
        }
        Ok(())
    }

    /// Total number of training epochs: the cosine cycle plus the cool-down.
    pub fn total_epochs(&self) -> usize {
        self.decay_epochs + self.cooldown_epochs
    }

    /// Learning rate for optimiser step `step_in_epoch` of epoch `epoch` (both
    /// from 0). `steps_per_epoch` only matters when `per_step` is set.
    pub fn lr(&self, epoch: usize, step_in_epoch: usize, steps_per_epoch: usize) -> f64 {
        let (t, warmup_t, t_initial) = if self.per_step {
            let spe = steps_per_epoch.max(1) as f64;
            (
                epoch as f64 * spe + step_in_epoch as f64,
                self.warmup_epochs as f64 * spe,
                self.decay_epochs as f64 * spe,
            )
        } else {
            (
                epoch as f64,
                self.warmup_epochs as f64,
                self.decay_epochs as f64,
            )
        };
        if t < warmup_t {
            self.warmup_lr + t * (self.base_lr - self.warmup_lr) / warmup_t
        } else if t < t_initial {
            self.min_lr
                + 0.5
                    * (self.base_lr - self.min_lr)
                    * (1.0 + (std::f64::consts::PI * t / t_initial).cos())
        } else {
            self.min_lr
        }
    }
}
