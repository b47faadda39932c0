//! The training loop: the AT baseline (one member) and iDAT co-training (two members,
//! one backward of `CE_s + CE_t + w * D`, one AdamW step per member).
//!
//! Determinism: the data order depends only on (seed, epoch), dropout/DropPath masks only
//! on (seed, member, epoch, step), so a run resumed from an epoch checkpoint ends with the
//! same weights and metrics as an uninterrupted one on CPU.
use super::config::{DistillConfig, DistillDirection, DistillKind, OptimConfig};
use super::evaluate::{evaluate, EvalResult};
use super::hooks::TrainHooks;
use super::state;
use crate::data::image::Normalize;
use crate::data::loader::{epoch_order, DecodedSplit};
use crate::nn::loss;
use crate::nn::optim::{AdamW, CosineSchedule};
use crate::nn::vit::{Mode, Vit};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One adapter-tuned model being trained.
pub struct Member {
    /// `student` (the kept, larger model) or `teacher` (the smaller one).
    pub name: String,
    pub vit: Vit,
    pub opt: AdamW,
}

impl Member {
    /// `vit` with an AdamW over its trainable tensors, set from `optim`. Errors: AdamW's
    /// range checks on `optim`'s betas, eps and weight decay.
    pub fn new(name: &str, vit: Vit, optim: &OptimConfig) -> Result<Member> {
        let opt = AdamW::new(vit.trainable(), optim.adamw())?;
        Ok(Member {
            name: name.into(),
            vit,
            opt,
        })
    }
}

/// One line of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub ce_student: f64,
    pub ce_teacher: Option<f64>,
    pub distill: Option<f64>,
    pub train_top1_student: f64,
    pub test_top1_student: Option<f64>,
    pub test_top5_student: Option<f64>,
    pub test_top1_teacher: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub rows: Vec<EpochRow>,
    /// Best test top-1 of the student over evaluated epochs (the literature's protocol).
    pub best_top1: f64,
    pub best_epoch: usize,
    /// Test top-1 / top-5 of the student after the last epoch (the honest number).
    pub final_eval: EvalResult,
    pub final_teacher_top1: Option<f64>,
    /// Epoch the run resumed from (None: started fresh).
    pub resumed_from_epoch: Option<usize>,
}

pub struct TrainData<'a> {
    pub train: &'a DecodedSplit,
    pub test: &'a DecodedSplit,
    pub normalize: Normalize,
    pub device: &'a Device,
}

/// Run the whole schedule, resuming from `ctx.checkpoint_dir()` when an epoch checkpoint is there.
pub fn train(
    members: &mut [Member],
    distill: Option<&DistillConfig>,
    optim: &OptimConfig,
    data: &TrainData<'_>,
    seed: u64,
    eval_every: usize,
    ctx: &dyn TrainHooks,
) -> Result<TrainOutcome> {
    if members.is_empty() || members.len() > 2 {
        bail!(
            "training needs one model (AT) or two (iDAT), got {}",
            members.len()
        );
    }
    if members.len() == 2 && distill.is_none() {
        bail!("two models need a `distill` configuration");
    }
    let n = data.train.len();
    let bs = optim.batch_size;
    if bs == 0 || n < bs {
        bail!("batch_size {bs} needs at least that many training images, the split has {n}");
    }
    let steps = n / bs; // drop last, as the official loader
    for m in members.iter_mut() {
        m.vit.set_precision(optim.precision)?;
    }
    let total = optim.total_epochs();
    let sched = CosineSchedule {
        base_lr: optim.lr,
        warmup_lr: optim.warmup_lr,
        warmup_epochs: optim.warmup_epochs,
        min_lr: optim.min_lr,
        decay_epochs: optim.epochs,
        cooldown_epochs: optim.cooldown_epochs,
        per_step: optim.per_step_schedule,
    };

    let mut rows: Vec<EpochRow> = Vec::new();
    let mut start_epoch = 0;
    let mut resumed_from_epoch = None;
    if let Some(saved) = state::load_latest(ctx.checkpoint_dir(), members, data.device)? {
        // Epochs are counted from 1 in messages (as `plan`'s `resumes after epoch N`).
        ctx.log(&format!(
            "resuming after epoch {} of {total} from {}",
            saved.epoch + 1,
            saved.path.display()
        ));
        rows = saved.rows;
        start_epoch = saved.epoch + 1;
        resumed_from_epoch = Some(saved.epoch);
    }

    ctx.set_total((total * steps) as u64);
    ctx.set_position((start_epoch * steps) as u64);
    let eval_every = eval_every.max(1);
    // The last epoch's evaluation is the final one (same weights, eval mode).
    let mut last_eval = None;

    for epoch in start_epoch..total {
        let t0 = Instant::now();
        let order = epoch_order(n, seed, epoch);
        let mut sums = Sums::default();
        let mut lr = sched.lr(epoch, 0, steps);
        for step in 0..steps {
            ctx.check_cancel()?;
            lr = sched.lr(epoch, step, steps);
            let idx = &order[step * bs..(step + 1) * bs];
            let (x, y) = data
                .train
                .to_batch(idx, &data.normalize, data.device)
                .context("building a training batch")?;
            let at = StepAt {
                seed,
                epoch,
                step,
                steps,
            };
            let parts = train_step(members, distill, &x, &y, at, lr)?;
            sums.add(&parts, &y)?;
            let done = (epoch * steps + step + 1) as u64;
            ctx.set_position(done);
            ctx.set_message(&format!(
                "epoch {}/{total} step {}/{steps} loss {:.4} train acc {:.1}%",
                epoch + 1,
                step + 1,
                sums.mean_loss(),
                100.0 * sums.correct as f64 / ((step + 1) * bs) as f64
            ));
        }
        let last = epoch + 1 == total;
        let (test_s, test_t) = if last || (epoch + 1) % eval_every == 0 {
            let s = evaluate(&members[0].vit, data.test, &data.normalize, bs, data.device)?;
            let t = match members.get(1) {
                Some(t) => {
                    Some(evaluate(&t.vit, data.test, &data.normalize, bs, data.device)?.top1)
                }
                None => None,
            };
            if last {
                last_eval = Some(s.clone());
            }
            (Some(s), t)
        } else {
            (None, None)
        };
        let row = EpochRow {
            epoch: epoch + 1,
            lr,
            loss: sums.mean_loss(),
            ce_student: sums.ce_s / steps as f64,
            ce_teacher: sums.ce_t.map(|v| v / steps as f64),
            distill: sums.d.map(|v| v / steps as f64),
            train_top1_student: 100.0 * sums.correct as f64 / (steps * bs) as f64,
            test_top1_student: test_s.as_ref().map(|e| e.top1),
            test_top5_student: test_s.as_ref().map(|e| e.top5),
            test_top1_teacher: test_t,
            seconds: t0.elapsed().as_secs_f64(),
        };
        ctx.log(&format!(
            "epoch {} lr {:.3e} loss {:.4} train_top1 {:.2} test_top1 {}",
            row.epoch,
            row.lr,
            row.loss,
            row.train_top1_student,
            row.test_top1_student
                .map_or("-".into(), |v| format!("{v:.2}"))
        ));
        rows.push(row);
        state::save(ctx.checkpoint_dir(), epoch, members, &rows)?;
    }

    let (best_epoch, best_top1) = rows
        .iter()
        .filter_map(|r| r.test_top1_student.map(|a| (r.epoch, a)))
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (e, a)| if a > b.1 { (e, a) } else { b },
        );
    let final_eval = match last_eval {
        Some(e) => e,
        // Resumed after the last epoch: nothing was evaluated in this process.
        None => evaluate(&members[0].vit, data.test, &data.normalize, bs, data.device)?,
    };
    let final_teacher_top1 = rows.last().and_then(|r| r.test_top1_teacher);
    Ok(TrainOutcome {
        rows,
        best_top1,
        best_epoch,
        final_eval,
        final_teacher_top1,
        resumed_from_epoch,
    })
}

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
    pub seed: u64,
    pub epoch: usize,
    pub step: usize,
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

#[derive(Default)]
struct Sums {
    loss: f64,
    steps: usize,
    ce_s: f64,
    ce_t: Option<f64>,
    d: Option<f64>,
    correct: usize,
}

impl Sums {
    fn add(&mut self, p: &StepLoss, y: &Tensor) -> Result<()> {
        let scalar = |t: &Tensor| -> Result<f64> {
            Ok(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64)
        };
        self.loss += p.loss as f64;
        self.steps += 1;
        self.ce_s += scalar(&p.ce_s)?;
        if let Some(t) = &p.ce_t {
            *self.ce_t.get_or_insert(0.0) += scalar(t)?;
        }
        if let Some(d) = &p.d {
            *self.d.get_or_insert(0.0) += scalar(d)?;
        }
        self.correct += loss::accuracy_topk(&p.logits_s.detach(), y, 1)?;
        Ok(())
    }
    fn mean_loss(&self) -> f64 {
        self.loss / self.steps.max(1) as f64
    }
}
