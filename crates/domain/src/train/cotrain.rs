//! The training loop: the AT baseline (one member) and iDAT co-training (two members,
//! one backward of `CE_s + CE_t + w * D`, one AdamW step per member; [`super::step`]).
//!
//! Gradient accumulation (`optim.accum_steps: N`): each step's batch runs as N micro-batches
//! of `batch_size / N` images and one AdamW step per member follows
//! ([`super::step::train_step_accum`]); the schedule and the epoch rows count steps. The
//! test evaluations run in batches of `batch_size / N` too.
//!
//! Determinism: the data order depends only on (seed, epoch), dropout/DropPath masks only
//! on (seed, member, epoch, step, and the micro-batch with N > 1), so a run resumed from an epoch checkpoint ends with the
//! same weights and metrics as an uninterrupted one on CPU.
use super::config::{DistillConfig, OptimConfig};
use super::epoch::{EpochRow, Sums};
use super::evaluate::{evaluate, evaluate_many, EvalResult};
use super::hooks::TrainHooks;
use super::member::Member;
use super::state;
use super::step::{train_step_accum, StepAt};
use crate::data::image::Normalize;
use crate::data::loader::{epoch_order, Split};
use crate::nn::optim::CosineSchedule;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a whole training run gives: the epoch rows and the student's accuracies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// One row per epoch (resumed runs: the checkpoint's rows first).
    pub rows: Vec<EpochRow>,
    /// Best test top-1 of the student over evaluated epochs (the literature's protocol).
    pub best_top1: f64,
    /// The 1-based epoch of `best_top1`.
    pub best_epoch: usize,
    /// Test top-1 / top-5 of the student after the last epoch (the honest number).
    pub final_eval: EvalResult,
    /// The teacher's test top-1 after the last epoch (iDAT).
    pub final_teacher_top1: Option<f64>,
    /// Epoch the run resumed from (None: started fresh).
    pub resumed_from_epoch: Option<usize>,
    /// `(epoch, seconds)`: the wall-clock time of each epoch this process ran (1-based
    /// epochs; training and evaluation). Not a result: it goes to the entry's manifest.
    pub epoch_seconds: Vec<(usize, f64)>,
}

/// The data of a run: the decoded splits, their normalisation and the device of the
/// batches. The stages read both splits from their files a batch at a time
/// ([`crate::data::split_file::SplitFile`]); tests may hold them in memory.
pub struct TrainData<'a> {
    /// The training split (read by shuffled indices).
    pub train: &'a dyn Split,
    /// The split evaluated after epochs (read in order, once per evaluation).
    pub test: &'a dyn Split,
    /// How images become model inputs.
    pub normalize: Normalize,
    /// Where the batches go.
    pub device: &'a Device,
}

/// Where a run stands before its first epoch: the rows so far and the epoch to start at.
struct Start {
    rows: Vec<EpochRow>,
    epoch: usize,
    resumed_from_epoch: Option<usize>,
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
    let steps = check_run(members, distill, optim, data)?;
    for m in members.iter_mut() {
        m.vit.set_precision(optim.precision)?;
    }
    let total = optim.total_epochs();
    let sched = schedule(optim);
    let start = resume(members, data, total, ctx)?;
    let mut rows = start.rows;
    ctx.set_total((total * steps) as u64);
    ctx.set_position((start.epoch * steps) as u64);
    // The last epoch's evaluation is the final one (same weights, eval mode).
    let mut last_eval = None;
    let mut epoch_seconds = Vec::new();
    for epoch in start.epoch..total {
        let t0 = Instant::now();
        let run = Epoch {
            epoch,
            total,
            steps,
            batch: optim.batch_size,
            micro_batch: optim.micro_batch(),
            seed,
        };
        let (sums, lr) = run.train(members, distill, &sched, data, ctx)?;
        let last = epoch + 1 == total;
        let (test_s, test_t) = if evaluates_after(epoch, total, eval_every) {
            // In micro-batches: a card that trains batch_size / N at a time may not hold
            // the forward of a whole batch (an evaluation forward holds its intermediate
            // tensors until its logits are out). N = 1: batches of batch_size, as always.
            evaluate_members(members, data, optim.micro_batch())?
        } else {
            (None, None)
        };
        if last {
            last_eval.clone_from(&test_s);
        }
        epoch_seconds.push((epoch + 1, t0.elapsed().as_secs_f64()));
        let row = sums.row(epoch + 1, lr, test_s.as_ref(), test_t);
        log_row(ctx, &row);
        rows.push(row);
        state::save(ctx.checkpoint_dir(), epoch, members, &rows)?;
    }
    let final_eval = match last_eval {
        Some(e) => e,
        // Resumed after the last epoch: nothing was evaluated in this process.
        None => evaluate_student(members, data, optim.micro_batch())?,
    };
    Ok(outcome(
        rows,
        final_eval,
        start.resumed_from_epoch,
        epoch_seconds,
    ))
}

/// The steps per epoch, after checking the members (one or two; two need `distill`), the
/// batch size against the training split and `accum_steps` against the batch size.
fn check_run(
    members: &[Member],
    distill: Option<&DistillConfig>,
    optim: &OptimConfig,
    data: &TrainData<'_>,
) -> Result<usize> {
    if members.is_empty() || members.len() > 2 {
        bail!(
            "training needs one model (AT) or two (iDAT), got {}",
            members.len()
        );
    }
    if members.len() == 2 && distill.is_none() {
        bail!("two models need a `distill` configuration");
    }
    if let Err((field, message)) = optim.check() {
        bail!("optim.{field}: {message}");
    }
    let n = data.train.len();
    let bs = optim.batch_size;
    if bs == 0 || n < bs {
        bail!("batch_size {bs} needs at least that many training images, the split has {n}");
    }
    Ok(steps_per_epoch(n, bs))
}

/// Steps of an epoch over `n` training images in batches of `batch_size` (at least 1): the
/// last, incomplete batch is dropped, as in the official loader.
pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
    n / batch_size.max(1)
}

/// Whether the test split is evaluated after `epoch` (from 0) of `total`: every
/// `eval_every`-th epoch (at least 1) and always the last.
pub fn evaluates_after(epoch: usize, total: usize, eval_every: usize) -> bool {
    epoch + 1 == total || (epoch + 1).is_multiple_of(eval_every.max(1))
}

/// The learning-rate schedule of `optim`.
fn schedule(optim: &OptimConfig) -> CosineSchedule {
    CosineSchedule {
        base_lr: optim.lr,
        warmup_lr: optim.warmup_lr,
        warmup_epochs: optim.warmup_epochs,
        min_lr: optim.min_lr,
        decay_epochs: optim.epochs,
        cooldown_epochs: optim.cooldown_epochs,
        per_step: optim.per_step_schedule,
    }
}

/// The run's start: after the newest epoch checkpoint in `ctx.checkpoint_dir()` (loaded
/// into `members`), or from scratch.
fn resume(
    members: &mut [Member],
    data: &TrainData<'_>,
    total: usize,
    ctx: &dyn TrainHooks,
) -> Result<Start> {
    let Some(saved) = state::load_latest(ctx.checkpoint_dir(), members, data.device)? else {
        return Ok(Start {
            rows: Vec::new(),
            epoch: 0,
            resumed_from_epoch: None,
        });
    };
    // Epochs are counted from 1 in messages (as `plan`'s `resumes after epoch N`).
    ctx.log(&format!(
        "resuming after epoch {} of {total} from {}",
        saved.epoch + 1,
        saved.path.display()
    ));
    Ok(Start {
        rows: saved.rows,
        epoch: saved.epoch + 1,
        resumed_from_epoch: Some(saved.epoch),
    })
}

/// One epoch of a run: `steps` batches of `batch` images, each run as micro-batches of
/// `micro_batch` images (`batch`: no accumulation).
struct Epoch {
    epoch: usize,
    total: usize,
    steps: usize,
    batch: usize,
    micro_batch: usize,
    seed: u64,
}

impl Epoch {
    /// Trains every step of the epoch: the step sums and the last step's learning rate.
    fn train(
        &self,
        members: &mut [Member],
        distill: Option<&DistillConfig>,
        sched: &CosineSchedule,
        data: &TrainData<'_>,
        ctx: &dyn TrainHooks,
    ) -> Result<(Sums, f64)> {
        let (epoch, steps, bs) = (self.epoch, self.steps, self.batch);
        let order = epoch_order(data.train.len(), self.seed, epoch);
        let mut sums = Sums::new(bs);
        let mut lr = sched.lr(epoch, 0, steps);
        for step in 0..steps {
            ctx.check_cancel()?;
            lr = sched.lr(epoch, step, steps);
            let idx = &order[step * bs..(step + 1) * bs];
            let (x, y) = data
                .train
                .batch(idx, &data.normalize, data.device)
                .context("building a training batch")?;
            let at = StepAt {
                seed: self.seed,
                epoch,
                step,
                steps,
            };
            let parts = train_step_accum(members, distill, &x, &y, at, lr, self.micro_batch)?;
            sums.add(&parts, &y)?;
            ctx.set_position((epoch * steps + step + 1) as u64);
            ctx.set_message(&format!(
                "epoch {}/{} step {}/{steps} loss {:.4} train acc {:.1}%",
                epoch + 1,
                self.total,
                step + 1,
                sums.mean_loss(),
                sums.train_top1()
            ));
        }
        Ok((sums, lr))
    }
}

/// The student's and (iDAT) the teacher's test evaluation.
fn evaluate_members(
    members: &[Member],
    data: &TrainData<'_>,
    batch: usize,
) -> Result<(Option<EvalResult>, Option<f64>)> {
    // One pass over the test split for the student and the teacher.
    let vits: Vec<&crate::nn::vit::Vit> = members.iter().map(|m| &m.vit).collect();
    let mut r = evaluate_many(&vits, data.test, &data.normalize, batch, data.device)?;
    let t = (r.len() > 1).then(|| r[1].top1);
    Ok((Some(r.swap_remove(0)), t))
}

/// The student's test evaluation.
fn evaluate_student(members: &[Member], data: &TrainData<'_>, batch: usize) -> Result<EvalResult> {
    evaluate(
        &members[0].vit,
        data.test,
        &data.normalize,
        batch,
        data.device,
    )
}

/// The log line of an epoch row.
fn log_row(ctx: &dyn TrainHooks, row: &EpochRow) {
    ctx.log(&format!(
        "epoch {} lr {:.3e} loss {:.4} train_top1 {:.2} test_top1 {}",
        row.epoch,
        row.lr,
        row.loss,
        row.train_top1_student,
        row.test_top1_student
            .map_or("-".into(), |v| format!("{v:.2}"))
    ));
}

/// The outcome of a run with `rows`: the best evaluated epoch, and the last one's results.
fn outcome(
    rows: Vec<EpochRow>,
    final_eval: EvalResult,
    resumed_from_epoch: Option<usize>,
    epoch_seconds: Vec<(usize, f64)>,
) -> TrainOutcome {
    let (best_epoch, best_top1) = rows
        .iter()
        .filter_map(|r| r.test_top1_student.map(|a| (r.epoch, a)))
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (e, a)| if a > b.1 { (e, a) } else { b },
        );
    let final_teacher_top1 = rows.last().and_then(|r| r.test_top1_teacher);
    TrainOutcome {
        rows,
        best_top1,
        best_epoch,
        final_eval,
        final_teacher_top1,
        resumed_from_epoch,
        epoch_seconds,
    }
}
