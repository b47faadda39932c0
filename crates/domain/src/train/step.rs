//! One training step: the members' forward passes, the loss (`CE_s`, or `CE_s + CE_t + w D`
//! with two members), one backward, one AdamW step per member.
use super::config::{DistillConfig, DistillDirection, DistillKind};
use super::member::Member;
use crate::nn::loss;
use crate::nn::vit::Mode;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// The losses of one [`train_step`] (scalars, except the logits).
pub struct StepLoss {
    /// `CE_s`, or `CE_s + CE_t + weight * D` with two members.
    pub total: Tensor,
    /// `total` read back (finite: [`train_step`] checks).
    pub loss: f32,
    /// The student's (first member's) cross-entropy.
    pub ce_s: Tensor,
    /// The teacher's cross-entropy (two members).
    pub ce_t: Option<Tensor>,
    /// The distillation term D (two members).
    pub d: Option<Tensor>,
    /// The student's logits `[B, C]`.
    pub logits_s: Tensor,
}

/// Where a step is in the schedule: its dropout / DropPath masks are drawn from
/// (`seed`, member, `epoch`, `step`); `steps` (per epoch) is for messages.
#[derive(Clone, Copy, Debug)]
pub struct StepAt {
    /// The run's seed.
    pub seed: u64,
    /// The epoch, from 0.
    pub epoch: usize,
    /// The step within the epoch, from 0.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
}

/// One training step on the batch `x [B, C, H, W]`, `y [B]` (u32 labels): the members'
/// forward passes (each in its model's precision), the loss `CE_s` (one member, AT) or
/// `CE_s + CE_t + weight * D` (two, iDAT; `distill` required), one backward, one AdamW
/// step per member at learning rate `lr`. This is what [`train`] runs for every batch
/// and what `idat-pipe bench` times.
///
/// Errors: a non-finite loss (named with its epoch and step, counted from 1, and `lr`),
/// two members without `distill`, and any error of the ops or the optimiser.
pub fn train_step(
    members: &mut [Member],
    distill: Option<&DistillConfig>,
    x: &Tensor,
    y: &Tensor,
    at: StepAt,
    lr: f64,
) -> Result<StepLoss> {
    let parts = step_loss(members, distill, x, y, at)?;
    if !parts.loss.is_finite() {
        bail!(
            "loss is {} at epoch {} step {} (of {}); lr {lr:.3e}. \
             Lower the learning rate or check the data.",
            parts.loss,
            at.epoch + 1,
            at.step + 1,
            at.steps
        );
    }
    let grads = parts.total.backward()?;
    for m in members.iter_mut() {
        m.opt.step(&grads, lr)?;
    }
    Ok(parts)
}

fn mask_seed(seed: u64, member: usize, epoch: usize, step: usize) -> u64 {
    // A fixed mix so every (member, epoch, step) draws its own reproducible masks.
    let mut h = blake3::Hasher::new();
    for v in [seed, member as u64, epoch as u64, step as u64] {
        h.update(&v.to_le_bytes());
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

fn step_loss(
    members: &[Member],
    distill: Option<&DistillConfig>,
    x: &Tensor,
    y: &Tensor,
    at: StepAt,
) -> Result<StepLoss> {
    let StepAt {
        seed, epoch, step, ..
    } = at;
    let read = |t: &Tensor| -> Result<f32> {
        Ok(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?)
    };
    let zs = members[0].vit.forward(
        x,
        Mode::Train {
            seed: mask_seed(seed, 0, epoch, step),
        },
    )?;
    let ce_s = loss::cross_entropy(&zs, y)?;
    let Some(teacher) = members.get(1) else {
        return Ok(StepLoss {
            loss: read(&ce_s)?,
            total: ce_s.clone(),
            ce_s,
            ce_t: None,
            d: None,
            logits_s: zs,
        });
    };
    let cfg = distill.context("two models need a `distill` configuration")?;
    let zt = teacher.vit.forward(
        x,
        Mode::Train {
            seed: mask_seed(seed, 1, epoch, step),
        },
    )?;
    let ce_t = loss::cross_entropy(&zt, y)?;
    // members[0] is the large model, members[1] the small one.
    let (learner, guide) = match cfg.direction {
        DistillDirection::SmallToLarge => (&zs, &zt),
        DistillDirection::LargeToSmall => (&zt, &zs),
    };
    let guide = if cfg.detach_teacher {
        guide.detach()
    } else {
        guide.clone()
    };
    let d = match cfg.kind {
        DistillKind::Mse => loss::mse_logits(learner, &guide)?,
        DistillKind::Kl => loss::kd_kl(learner, &guide, cfg.temperature, cfg.t2_factor)?,
    };
    let total = ((&ce_s + &ce_t)? + (&d * cfg.weight)?)?;
    Ok(StepLoss {
        loss: read(&total)?,
        total,
        ce_s,
        ce_t: Some(ce_t),
        d: Some(d),
        logits_s: zs,
    })
}
