//! `train/adapt` (the AT baseline: one adapter-tuned model) and `train/idat` (a small
//! teacher and a large student co-trained with online distillation; the student is kept).
//!
//! Both checkpoint every epoch into the instance's checkpoint directory, so a killed run
//! resumes from its last epoch and ends with the same metrics as an uninterrupted one.
use super::common::{device, input_dir};
use crate::data::image::{Normalize, NormalizeKind};
use crate::entries::training::{self, Role, TrainSummary};
use crate::entries::{decoded, model};
use crate::nn::adapters::AdapterConfig;
use crate::nn::vit::Vit;
use crate::train::{self, DistillConfig, Member, OptimConfig, TrainOutcome};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use idat_engine::stages::{ParamError, StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::Path;

/// The `with:` of `train/adapt`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptParams {
    /// Task folder name (for labels; the data comes from `data`).
    pub task: String,
    /// The `data/decode` stage of this task; must be in `needs`.
    pub data: StageRef,
    /// The `model/vit` or `model/pretrain` stage of the backbone; must be in `needs`.
    pub model: StageRef,
    /// Adapter method (default `seq_adapter`).
    #[serde(default)]
    pub adapter: AdapterConfig,
    /// The optimiser and schedule (default: the official recipe's).
    #[serde(default)]
    pub optim: OptimConfig,
    /// Maximum stochastic-depth rate (per task in the official recipe).
    #[serde(default)]
    pub drop_path: f64,
    /// Take lr, weight decay and drop-path from the official per-task iDAT/SSF recipe
    /// (docs/vtab.md) for `task`, overriding `optim.lr`, `optim.weight_decay`, `drop_path`.
    #[serde(default)]
    pub official_recipe: bool,
    /// Seed of the adapter and head init, the data order and the dropout masks.
    #[serde(default)]
    pub seed: u64,
    /// Evaluate on test every N epochs (the last epoch always).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// Input normalisation: `half` (mean = std = 0.5, default) or `imagenet`.
    #[serde(default)]
    pub normalize: NormalizeKind,
    /// Row label in reports (default `at`).
    #[serde(default)]
    pub label: Option<String>,
}

/// The `with:` of `train/idat`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdatParams {
    /// Task folder name (for labels; the data comes from `data`).
    pub task: String,
    /// The `data/decode` stage of this task; must be in `needs`.
    pub data: StageRef,
    /// Backbone stage of the LARGE model (kept and evaluated).
    pub student: StageRef,
    /// Backbone stage of the SMALL model (exists only during training).
    pub teacher: StageRef,
    /// Adapter method of both models.
    #[serde(default)]
    pub adapter: AdapterConfig,
    /// The optimiser and schedule of both models (default: the official recipe's).
    #[serde(default)]
    pub optim: OptimConfig,
    /// Maximum stochastic-depth rate of both models (per task in the official recipe).
    #[serde(default)]
    pub drop_path: f64,
    /// Take lr, weight decay and drop-path from the official per-task iDAT/SSF recipe
    /// (docs/vtab.md) for `task`, overriding `optim.lr`, `optim.weight_decay`, `drop_path`.
    #[serde(default)]
    pub official_recipe: bool,
    /// The distillation term and its weight.
    pub distill: DistillConfig,
    /// Seed of the adapters' and heads' init (each model its own stream), the data order
    /// and the dropout masks.
    #[serde(default)]
    pub seed: u64,
    /// Evaluate on test every N epochs (the last epoch always).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// Input normalisation: `half` (mean = std = 0.5, default) or `imagenet`.
    #[serde(default)]
    pub normalize: NormalizeKind,
    /// Row label in reports (default `idat-<mse|kl>`).
    #[serde(default)]
    pub label: Option<String>,
}

fn one() -> usize {
    1
}

/// [`OptimConfig::check`] of a stage's `optim`, the field named below `with:`
/// (`optim.accum_steps`), for [`StageKind::check`] of the kinds that train.
pub(super) fn check_optim(optim: &OptimConfig) -> Result<(), ParamError> {
    optim
        .check()
        .map_err(|(field, message)| ParamError::at(format!("optim.{field}"), message))
}

/// The optimiser settings and drop-path rate to use, after the official recipe if asked.
fn recipe(
    task: &str,
    optim: &OptimConfig,
    drop_path: f64,
    official: bool,
) -> Result<(OptimConfig, f64)> {
    if !official {
        return Ok((optim.clone(), drop_path));
    }
    let info = crate::data::vtab::task_info(task).with_context(|| {
        format!("`official_recipe: true` but `{task}` is not a VTAB-1K task (set optim.lr, optim.weight_decay and drop_path instead)")
    })?;
    let mut o = optim.clone();
    o.lr = info.lr;
    o.weight_decay = info.weight_decay;
    Ok((o, info.drop_path))
}

/// Everything one training run needs besides the context.
struct Job<'a> {
    task: &'a str,
    /// The `data/decode` stage id.
    data: &'a str,
    /// (member name, model stage id); the first is the kept (large) model.
    members: Vec<(&'static str, &'a str)>,
    adapter: &'a AdapterConfig,
    optim: OptimConfig,
    drop_path: f64,
    distill: Option<&'a DistillConfig>,
    seed: u64,
    eval_every: usize,
    normalize: NormalizeKind,
    label: String,
}

fn member(
    job: &Job<'_>,
    name: &str,
    model_dir: &Path,
    num_classes: usize,
    seed: u64,
    dev: &Device,
) -> Result<(Member, model::ModelInfo)> {
    let (cfg, info, backbone) = model::read(model_dir, num_classes, job.drop_path, dev)?;
    let vit = Vit::new(&cfg, job.adapter, backbone, dev, seed)
        .with_context(|| format!("building the {name} from {}", model_dir.display()))?;
    Ok((Member::new(name, vit, &job.optim)?, info))
}

fn run_training(ctx: &mut StageContext, job: Job<'_>) -> Result<()> {
    let dev = device(&ctx.device)?;
    let data_dir = input_dir(ctx, job.data)?.to_path_buf();
    let (info, train_split) = decoded::open(&data_dir, "train800val200")?;
    let (_, test_split) = decoded::open(&data_dir, "test")?;
    let task = job.task;
    if info.task != task && crate::data::vtab::canonical_name(task) != info.task {
        bail!(
            "`task: {task}` but the `{}` input holds task `{}`",
            job.data,
            info.task
        );
    }
    let mut members = Vec::new();
    let mut model_infos = Vec::new();
    for (i, (name, stage)) in job.members.iter().enumerate() {
        let dir = input_dir(ctx, stage)?.to_path_buf();
        // Teacher and student get different init streams from the same seed.
        let seed = job.seed.wrapping_add(i as u64 * 1_000_003);
        let (m, mi) = member(&job, name, &dir, info.num_classes, seed, &dev)?;
        ctx.log(format!(
            "{name}: {} trainable parameters ({})",
            m.vit.num_trainable(),
            mi.label
        ));
        members.push(m);
        model_infos.push(mi);
    }
    let t0 = std::time::Instant::now();
    let data = train::cotrain::TrainData {
        train: &train_split,
        test: &test_split,
        normalize: Normalize::from_kind(job.normalize),
        device: &dev,
    };
    let out: TrainOutcome = train::train(
        &mut members,
        job.distill,
        &job.optim,
        &data,
        job.seed,
        job.eval_every,
        ctx,
    )?;
    training::record_run(&mut ctx.info, t0.elapsed().as_secs_f64(), &out);
    training::write_metrics(&ctx.out_dir, &out.rows)?;
    let names = info.class_names.as_deref();
    training::write_weights(&ctx.out_dir, Role::Student, &members[0].vit, names)?;
    if let Some(t) = members.get(1) {
        training::write_weights(&ctx.out_dir, Role::Teacher, &t.vit, names)?;
    }
    let summary = TrainSummary {
        task: task.to_string(),
        label: job.label.clone(),
        seed: job.seed,
        adapter: job.adapter.clone(),
        student_config: members[0].vit.config().clone(),
        teacher_config: members.get(1).map(|m| m.vit.config().clone()),
        student_model: model_infos[0].label.clone(),
        teacher_model: model_infos.get(1).map(|m| m.label.clone()),
        trainable_student: members[0].vit.num_trainable(),
        trainable_teacher: members.get(1).map(|m| m.vit.num_trainable()),
        epochs: job.optim.total_epochs(),
        best_top1: out.best_top1,
        best_epoch: out.best_epoch,
        final_top1: out.final_eval.top1,
        final_top5: out.final_eval.top5,
        final_teacher_top1: out.final_teacher_top1,
        student_backbone: Some(model_infos[0].backbone("student")),
        teacher_backbone: model_infos.get(1).map(|m| m.backbone("teacher")),
    };
    ctx.log(format!(
        "done: final top-1 {:.2} (best {:.2} at epoch {})",
        summary.final_top1, summary.best_top1, summary.best_epoch
    ));
    training::write_summary(&ctx.out_dir, &summary)
}

/// The `train/adapt` stage kind.
pub struct TrainAdapt;

impl StageKind for TrainAdapt {
    type Params = AdaptParams;
    const NAME: &'static str = "train/adapt";
    const VERSION: u32 = 3;
    const SUMMARY: &'static str =
        "Adapter-tuning of one frozen model (the AT baseline), any adapter method";

    fn check(p: &AdaptParams) -> Result<(), ParamError> {
        check_optim(&p.optim)
    }

    fn resume_point(checkpoint_dir: &std::path::Path) -> Result<Option<String>> {
        crate::train::resume_point(checkpoint_dir)
    }

    fn run(p: AdaptParams, ctx: &mut StageContext) -> Result<()> {
        let label = p.label.clone().unwrap_or_else(|| "at".into());
        let (optim, drop_path) = recipe(&p.task, &p.optim, p.drop_path, p.official_recipe)?;
        run_training(
            ctx,
            Job {
                task: &p.task,
                data: &p.data,
                members: vec![("student", &p.model)],
                adapter: &p.adapter,
                optim,
                drop_path,
                distill: None,
                seed: p.seed,
                eval_every: p.eval_every,
                normalize: p.normalize,
                label,
            },
        )
    }
}

/// The `train/idat` stage kind.
pub struct TrainIdat;

impl StageKind for TrainIdat {
    type Params = IdatParams;
    const NAME: &'static str = "train/idat";
    const VERSION: u32 = 3;
    const SUMMARY: &'static str = "iDAT: co-train a small teacher and a large student with online distillation; keep the student";

    fn check(p: &IdatParams) -> Result<(), ParamError> {
        check_optim(&p.optim)
    }

    fn resume_point(checkpoint_dir: &std::path::Path) -> Result<Option<String>> {
        crate::train::resume_point(checkpoint_dir)
    }

    fn run(p: IdatParams, ctx: &mut StageContext) -> Result<()> {
        let kind = match p.distill.kind {
            train::DistillKind::Mse => "mse",
            train::DistillKind::Kl => "kl",
        };
        let label = p.label.clone().unwrap_or_else(|| format!("idat-{kind}"));
        let (optim, drop_path) = recipe(&p.task, &p.optim, p.drop_path, p.official_recipe)?;
        run_training(
            ctx,
            Job {
                task: &p.task,
                data: &p.data,
                members: vec![("student", &p.student), ("teacher", &p.teacher)],
                adapter: &p.adapter,
                optim,
                drop_path,
                distill: Some(&p.distill),
                seed: p.seed,
                eval_every: p.eval_every,
                normalize: p.normalize,
                label,
            },
        )
    }
}
