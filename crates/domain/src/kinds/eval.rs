//! `eval`: the kept student of a training entry on the task's test split: top-1 and top-5
//! after the last epoch (the honest number), beside the best-epoch top-1 recorded during
//! training (the literature's protocol), each labelled.
use super::common::{device, input_dir};
use crate::data::image::{Normalize, NormalizeKind};
use crate::entries::eval::{self as eval_entry, EvalRecord};
use crate::entries::training::{self, Role};
use crate::entries::{decoded, model};
use crate::train::evaluate;
use anyhow::{Context, Result};
use idat_engine::stages::{StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `with:` of `eval`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The training stage (`train/adapt` or `train/idat`); must be in `needs`.
    pub train: StageRef,
    /// The `data/decode` stage of the task; must be in `needs`.
    pub data: StageRef,
    /// The backbone stage of the student; must be in `needs`.
    pub model: StageRef,
    /// The split evaluated (a list file stem of the decoded task; default `test`).
    #[serde(default = "test_split")]
    pub split: String,
    /// Input normalisation: `half` (mean = std = 0.5, default) or `imagenet`.
    #[serde(default)]
    pub normalize: NormalizeKind,
    /// Images per forward pass (default 64; not part of the cache key).
    #[serde(default = "batch")]
    pub batch_size: usize,
}

fn test_split() -> String {
    "test".into()
}
fn batch() -> usize {
    64
}

/// The `eval` stage kind.
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
        let summary = training::read_summary(&train_dir)?;
        let (info, split) = decoded::open(input_dir(ctx, &p.data)?, &p.split)?;
        let (cfg, _, backbone) =
            model::read(input_dir(ctx, &p.model)?, info.num_classes, 0.0, &dev)?;
        let vit = training::restore_trained(&train_dir, Role::Student, &dev)?
            .into_vit(
                &cfg,
                backbone,
                &format!("the backbone of `{}`", p.model),
                &dev,
            )
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
        training::copy_metrics(&train_dir, &ctx.out_dir)?;
        eval_entry::write(&ctx.out_dir, &rec)
    }
}
