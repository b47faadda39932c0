//! What one epoch of training reports: the running sums over its steps and the
//! `metrics.csv` row made from them.

use super::evaluate::EvalResult;
use super::step::StepLoss;
use crate::nn::loss;
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// One line of `metrics.csv`: one epoch's means over its steps and its evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    /// The epoch, counted from 1.
    pub epoch: usize,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean total loss over the steps.
    pub loss: f64,
    /// Mean cross-entropy of the student.
    pub ce_student: f64,
    /// Mean cross-entropy of the teacher (iDAT).
    pub ce_teacher: Option<f64>,
    /// Mean distillation term (iDAT).
    pub distill: Option<f64>,
    /// The student's training top-1 over the epoch's batches, percent.
    pub train_top1_student: f64,
    /// The student's test top-1, percent, where the epoch was evaluated.
    pub test_top1_student: Option<f64>,
    /// The student's test top-5, percent, where the epoch was evaluated.
    pub test_top5_student: Option<f64>,
    /// The teacher's test top-1, percent, where the epoch was evaluated (iDAT).
    pub test_top1_teacher: Option<f64>,
    // No wall-clock time here: the row is a result, hashed with the entry, and a
    // recomputation with identical weights must write identical rows (issue 25). Epoch
    // times go to the entry's manifest (`TrainOutcome::epoch_seconds`). Files written
    // before that have a `seconds` column, which readers ignore.
}

/// Sums of one epoch's step losses and correct predictions, on batches of `batch`.
pub(super) struct Sums {
    batch: usize,
    loss: f64,
    steps: usize,
    ce_s: f64,
    ce_t: Option<f64>,
    d: Option<f64>,
    correct: usize,
}

impl Sums {
    /// No step yet, batches of `batch` images.
    pub(super) fn new(batch: usize) -> Sums {
        Sums {
            batch,
            loss: 0.0,
            steps: 0,
            ce_s: 0.0,
            ce_t: None,
            d: None,
            correct: 0,
        }
    }

    /// Adds one step's losses and the student's correct predictions on its labels `y`.
    pub(super) fn add(&mut self, p: &StepLoss, y: &Tensor) -> Result<()> {
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
    /// Mean total loss over the steps so far.
    pub(super) fn mean_loss(&self) -> f64 {
        self.loss / self.steps.max(1) as f64
    }

    /// The student's training top-1 over the steps so far, percent.
    pub(super) fn train_top1(&self) -> f64 {
        100.0 * self.correct as f64 / (self.steps * self.batch) as f64
    }

    /// The row of the 1-based `epoch` once all its steps are added: the means, the last
    /// step's `lr` and the evaluations (where run).
    pub(super) fn row(
        &self,
        epoch: usize,
        lr: f64,
        test_s: Option<&EvalResult>,
        test_t: Option<f64>,
    ) -> EpochRow {
        let steps = self.steps as f64;
        EpochRow {
            epoch,
            lr,
            loss: self.mean_loss(),
            ce_student: self.ce_s / steps,
            ce_teacher: self.ce_t.map(|v| v / steps),
            distill: self.d.map(|v| v / steps),
            train_top1_student: self.train_top1(),
            test_top1_student: test_s.map(|e| e.top1),
            test_top5_student: test_s.map(|e| e.top5),
            test_top1_teacher: test_t,
        }
    }
}
