//! The eval entry of `eval`: `eval.json` ([`EvalRecord`], the student's accuracies on one
//! split) and a copy of the training entry's `metrics.csv`
//! ([`training::read_metrics`](super::training::read_metrics) reads it). `report/vtab`
//! reads both.
use super::{read_json, write_json};
use crate::report::backbones::Backbone;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The result file of an eval entry.
pub const EVAL_FILE: &str = "eval.json";

/// `eval.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Task name (from the training summary).
    pub task: String,
    /// Task group (`natural`, `specialized`, `structured`).
    pub group: String,
    /// Row label in reports, e.g. `at`.
    pub label: String,
    /// Training seed.
    pub seed: u64,
    /// The split evaluated on, e.g. `test`.
    pub split: String,
    /// Top-1 (percent) after the last epoch, recomputed here from the saved weights.
    pub top1_final: f64,
    /// Top-5 (percent) after the last epoch.
    pub top5_final: f64,
    /// Best test top-1 (percent) over epochs during training (SSF/FacT/iDAT protocol).
    pub top1_best_epoch: f64,
    /// The 1-based epoch of `top1_best_epoch`.
    pub best_epoch: usize,
    /// The teacher's final test top-1 (percent), `train/idat` only.
    pub teacher_top1_final: Option<f64>,
    /// Trainable parameters of the student (count).
    pub trainable_params: usize,
    /// Images evaluated.
    pub images: usize,
    /// The student's backbone and its source-task top-1 (from the training entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_backbone: Option<Backbone>,
    /// The co-trained teacher's backbone (iDAT runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_backbone: Option<Backbone>,
    /// Class names by label, when the task has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

/// Writes `eval.json` into the entry `dir`.
///
/// # Errors
/// When the file cannot be written (named).
pub fn write(dir: &Path, rec: &EvalRecord) -> Result<()> {
    write_json(&dir.join(EVAL_FILE), rec)
}

/// `eval.json` of the eval entry `dir`.
///
/// # Errors
/// A missing file or one that is not an eval record, naming it.
pub fn read(dir: &Path) -> Result<EvalRecord> {
    read_json(
        &dir.join(EVAL_FILE),
        "an evaluation result (eval.json as the eval stage writes it)",
    )
}
