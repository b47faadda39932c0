//! One training step: the members' forward passes, the loss (`CE_s`, or `CE_s + CE_t + w D`
//! with two members), one backward, one AdamW step per member; or, with gradient
//! accumulation ([`train_step_accum`]), a forward and backward per micro-batch and one
//! AdamW step per member on the summed gradients.
use super::config::{DistillConfig, DistillDirection, DistillKind};
use super::member::Member;
use crate::nn::loss;
use crate::nn::optim::GradAccum;
use crate::nn::vit::Mode;
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};

/// The losses of one [`train_step`] (scalars, except the logits): the full batch's, also
/// when it ran as micro-batches ([`train_step_accum`]).
pub struct StepLoss {
    /// `CE_s`, or `CE_s + CE_t + weight * D` with two members (micro-batches: the
    /// row-weighted sum of theirs, detached).
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
/// (`seed`, member, `epoch`, `step`), and the micro-batch where the step runs as several
/// ([`train_step_accum`]); `steps` (per epoch) is for messages.
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
/// step per member at learning rate `lr`. This is [`train_step_accum`] without
/// accumulation, what [`train`](super::train) runs for every batch with `accum_steps: 1`
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
    let parts = step_loss(members, distill, x, y, at, None)?;
    check_finite(&parts, at, lr, None)?;
    let grads = parts.total.backward()?;
    for m in members.iter_mut() {
        m.opt.step(&grads, lr)?;
    }
    Ok(parts)
}

/// One training step on the batch `x [B, C, H, W]`, `y [B]` with gradient accumulation:
/// the batch runs as consecutive micro-batches of at most `micro_batch` rows (the last
/// one shorter where `micro_batch` does not divide B). Each micro-batch gets its forward
/// passes, its loss (as in [`train_step`]) scaled by its rows / B, and its backward; the
/// trainable tensors' gradients are summed ([`GradAccum`]; nothing else of a micro-batch's
/// graph is kept), then each member takes one AdamW step at `lr`. The mean losses of the
/// batch are thereby the row-weighted sums of the micro-batches', and so are the gradients.
/// Each micro-batch draws its own dropout / DropPath masks (from its index too); without
/// active dropout or drop path the result is [`train_step`]'s on the whole batch to float
/// rounding. With `micro_batch >= B` this is [`train_step`], bit for bit.
///
/// The returned losses are the full batch's (row-weighted sums, detached) and its
/// student logits (the micro-batches' concatenated).
///
/// Errors: `micro_batch` 0; a non-finite loss (named with its epoch, step and micro-batch,
/// counted from 1, and `lr`); those of [`train_step`].
#[allow(clippy::too_many_arguments)]
pub fn train_step_accum(
    members: &mut [Member],
    distill: Option<&DistillConfig>,
    x: &Tensor,
    y: &Tensor,
    at: StepAt,
    lr: f64,
    micro_batch: usize,
) -> Result<StepLoss> {
    if micro_batch == 0 {
        bail!("a micro-batch needs at least 1 image");
    }
    let rows = x.dim(0)?;
    if rows <= micro_batch {
        return train_step(members, distill, x, y, at, lr);
    }
    let count = rows.div_ceil(micro_batch);
    let params: Vec<Var> = members
        .iter()
        .flat_map(|m| m.vit.trainable().into_iter().map(|(_, v)| v))
        .collect();
    let mut grads = GradAccum::new();
    let mut sums = WeightedSums::default();
    for k in 0..count {
        let start = k * micro_batch;
        let len = micro_batch.min(rows - start);
        // A copy: the micro-batch's own storage, as a batch of that size would have.
        let xk = x.narrow(0, start, len)?.copy()?;
        let yk = y.narrow(0, start, len)?.copy()?;
        let parts = step_loss(members, distill, &xk, &yk, at, Some(k))?;
        check_finite(&parts, at, lr, Some((k, count)))?;
        let w = len as f64 / rows as f64;
        grads.add((&parts.total * w)?.backward()?, &params)?;
        sums.add(&parts, w)?;
    }
    for m in members.iter_mut() {
        m.opt.step(grads.grads(), lr)?;
    }
    sums.finish()
}

/// An error naming the step (and the micro-batch `(k, count)`) when the loss is not finite.
fn check_finite(
    parts: &StepLoss,
    at: StepAt,
    lr: f64,
    micro: Option<(usize, usize)>,
) -> Result<()> {
    if parts.loss.is_finite() {
        return Ok(());
    }
    let micro = micro.map_or(String::new(), |(k, n)| {
        format!(", micro-batch {} of {n}", k + 1)
    });
    bail!(
        "loss is {} at epoch {} step {} (of {}){micro}; lr {lr:.3e}. \
         Lower the learning rate or check the data.",
        parts.loss,
        at.epoch + 1,
        at.step + 1,
        at.steps
    )
}

/// The full batch's losses from its micro-batches': sums of the detached scalars, each
/// weighted by its micro-batch's share of the rows, and the student logits in order.
#[derive(Default)]
struct WeightedSums {
    total: Option<Tensor>,
    ce_s: Option<Tensor>,
    ce_t: Option<Tensor>,
    d: Option<Tensor>,
    logits_s: Vec<Tensor>,
}

impl WeightedSums {
    /// Adds one micro-batch's losses with weight `w` (its rows / the batch's).
    fn add(&mut self, p: &StepLoss, w: f64) -> Result<()> {
        fn acc(sum: &mut Option<Tensor>, t: &Tensor, w: f64) -> Result<()> {
            let t = (t.detach() * w)?;
            *sum = Some(match sum.take() {
                None => t,
                Some(s) => (s + t)?,
            });
            Ok(())
        }
        acc(&mut self.total, &p.total, w)?;
        acc(&mut self.ce_s, &p.ce_s, w)?;
        if let Some(t) = &p.ce_t {
            acc(&mut self.ce_t, t, w)?;
        }
        if let Some(d) = &p.d {
            acc(&mut self.d, d, w)?;
        }
        self.logits_s.push(p.logits_s.detach());
        Ok(())
    }

    /// The batch's [`StepLoss`]. Errors: no micro-batch added.
    fn finish(self) -> Result<StepLoss> {
        let total = self.total.context("a step with no micro-batch")?;
        Ok(StepLoss {
            loss: read_f32(&total)?,
            total,
            ce_s: self.ce_s.context("a step with no micro-batch")?,
            ce_t: self.ce_t,
            d: self.d,
            logits_s: Tensor::cat(&self.logits_s, 0)?,
        })
    }
}

/// A scalar tensor read back as f32.
fn read_f32(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?)
}

/// The seed of a member's dropout / DropPath masks at a step, and at micro-batch `micro`
/// where the step runs as several (`None`: the whole batch at once, as without
/// accumulation; these seeds are unchanged from before `accum_steps` existed).
fn mask_seed(seed: u64, member: usize, epoch: usize, step: usize, micro: Option<usize>) -> u64 {
    // A fixed mix so every (member, epoch, step[, micro-batch]) draws its own reproducible masks.
    let mut h = blake3::Hasher::new();
    for v in [seed, member as u64, epoch as u64, step as u64] {
        h.update(&v.to_le_bytes());
    }
    if let Some(k) = micro {
        h.update(&(k as u64).to_le_bytes());
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

fn step_loss(
    members: &[Member],
    distill: Option<&DistillConfig>,
    x: &Tensor,
    y: &Tensor,
    at: StepAt,
    micro: Option<usize>,
) -> Result<StepLoss> {
    let StepAt {
        seed, epoch, step, ..
    } = at;
    let read = read_f32;
    let zs = members[0].vit.forward(
        x,
        Mode::Train {
            seed: mask_seed(seed, 0, epoch, step, micro),
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
            seed: mask_seed(seed, 1, epoch, step, micro),
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

#[cfg(test)]
mod tests {
    use super::mask_seed;

    #[test]
    fn whole_batch_masks_are_unchanged_and_each_micro_batch_draws_its_own() {
        // The seed of (seed 7, member 1, epoch 3, step 5) as the formula gave it before
        // `accum_steps` existed: runs without accumulation keep their masks, so their
        // weights and metrics.
        assert_eq!(mask_seed(7, 1, 3, 5, None), 16879589690475036086);
        let micro: Vec<u64> = (0..4).map(|k| mask_seed(7, 1, 3, 5, Some(k))).collect();
        let mut all = micro.clone();
        all.push(mask_seed(7, 1, 3, 5, None));
        all.push(mask_seed(7, 0, 3, 5, Some(0)));
        all.push(mask_seed(7, 1, 3, 6, Some(0)));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all.len(),
            n,
            "every micro-batch, member and step its own seed"
        );
    }
}
