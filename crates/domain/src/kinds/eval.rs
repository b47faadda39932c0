//! `eval`: the kept student of a training entry on the task's test split: top-1 and top-5
//! after the last epoch (the honest number), beside the best-epoch top-1 recorded during
//! training (the literature's protocol), each labelled.
use super::common::read_json;
use super::common::{device, input_dir, read_model, read_split, write_json};
use super::train::{TrainSummary, METRICS_FILE, STUDENT_FILE, SUMMARY_FILE};
use crate::data::image::{Normalize, NormalizeKind};
use crate::nn::checkpoint::load_tensors;
use crate::nn::vit::Vit;
use crate::report::backbones::Backbone;
use crate::train::evaluate;
use anyhow::{Context, Result};
use idat_engine::stages::{StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const EVAL_FILE: &str = "eval.json";

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The training stage (`train/adapt` or `train/idat`); must be in `needs`.
    pub train: StageRef,
    /// The `data/decode` stage of the task; must be in `needs`.
    pub data: StageRef,
    /// The backbone stage of the student; must be in `needs`.
    pub model: StageRef,
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

pub struct Eval;

impl StageKind for Eval {
    type Params = Params;
    const NAME: &'static str = "eval";
    const VERSION: u32 = 3;
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
        let r = evaluate(
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
            student_backbone: summary.student_backbone.clone(),
            teacher_backbone: summary.teacher_backbone.clone(),
            class_names: info.class_names.clone(),
        };
        // The learning curves travel with the result, for the report.
        std::fs::copy(train_dir.join(METRICS_FILE), ctx.out_dir.join(METRICS_FILE))
            .with_context(|| format!("copying {}", train_dir.join(METRICS_FILE).display()))?;
        write_json(&ctx.out_dir.join(EVAL_FILE), &rec)
    }
}
