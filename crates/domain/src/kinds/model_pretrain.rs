//! `model/pretrain`: train a ViT from scratch (every weight trainable) on a source task
//! and store it as a timm-named safetensors backbone, so downstream stages load it
//! through the same checkpoint path as real pretrained weights. Reports label such
//! models "in-pipeline pretrained toy backbone".
use super::common::{device, input_dir, Arch};
use crate::data::image::{Normalize, NormalizeKind};
use crate::entries::model::{self, ModelInfo};
use crate::entries::{decoded, training, write_json};
use crate::nn::adapters::AdapterConfig;
use crate::nn::vit::Vit;
use crate::train::{self, Member, OptimConfig};
use anyhow::Result;
use idat_engine::stages::{ParamError, StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `with:` of `model/pretrain`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Architecture; `num_classes` is taken from the source task.
    pub arch: Arch,
    /// The `data/decode` stage of the source task; must be in `needs`.
    pub data: StageRef,
    /// The optimiser and schedule (default: AdamW at lr 1e-3, weight decay 0.05, 30
    /// epochs with 3 of warm-up, batch 64).
    #[serde(default = "default_optim")]
    pub optim: OptimConfig,
    /// Maximum stochastic-depth rate (last block).
    #[serde(default)]
    pub drop_path: f64,
    /// Seed of the initial weights, the data order and the dropout masks.
    #[serde(default)]
    pub seed: u64,
    /// Input normalisation: `half` (mean = std = 0.5, default) or `imagenet`.
    #[serde(default)]
    pub normalize: NormalizeKind,
    /// The backbone's label in reports.
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_optim() -> OptimConfig {
    OptimConfig {
        lr: 1e-3,
        weight_decay: 0.05,
        epochs: 30,
        cooldown_epochs: 0,
        warmup_epochs: 3,
        warmup_lr: 1e-6,
        min_lr: 1e-5,
        batch_size: 64,
        ..OptimConfig::default()
    }
}

fn default_label() -> String {
    "in-pipeline pretrained toy backbone".into()
}

/// The `model/pretrain` stage kind.
pub struct ModelPretrain;

impl StageKind for ModelPretrain {
    type Params = Params;
    const NAME: &'static str = "model/pretrain";
    const VERSION: u32 = 3;
    const SUMMARY: &'static str =
        "Train a ViT from scratch on a source task; store it as a timm-named backbone";

    fn check(p: &Params) -> Result<(), ParamError> {
        super::train::check_optim(&p.optim)
    }

    fn resume_point(checkpoint_dir: &std::path::Path) -> Result<Option<String>> {
        crate::train::resume_point(checkpoint_dir)
    }

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let dev = device(&ctx.device)?;
        let dir = input_dir(ctx, &p.data)?.to_path_buf();
        let (info, train_split) = decoded::open(&dir, "train800val200")?;
        let (_, test_split) = decoded::open(&dir, "test")?;
        let mut cfg = p.arch.resolve()?;
        cfg.num_classes = info.num_classes;
        cfg.img_size = info.size;
        cfg.drop_path_rate = p.drop_path;
        let backbone = Vit::random_backbone(&cfg, &dev, p.seed)?;
        let vit = Vit::new(&cfg, &AdapterConfig::Full, backbone, &dev, p.seed)?;
        let mut members = vec![Member::new("model", vit, &p.optim)?];
        let data = train::cotrain::TrainData {
            train: &train_split,
            test: &test_split,
            normalize: Normalize::from_kind(p.normalize),
            device: &dev,
        };
        let eval_every = p.optim.total_epochs().max(1);
        let t0 = std::time::Instant::now();
        let out = train::train(&mut members, None, &p.optim, &data, p.seed, eval_every, ctx)?;
        training::record_run(&mut ctx.info, t0.elapsed().as_secs_f64(), &out);
        training::write_metrics(&ctx.out_dir, &out.rows)?;
        ctx.log(format!(
            "source task `{}`: test top-1 {:.2}",
            info.task, out.final_eval.top1
        ));
        let mut cfg_out = cfg.clone();
        cfg_out.drop_path_rate = 0.0;
        let model_info = ModelInfo {
            config: cfg_out,
            source: format!(
                "trained from scratch on `{}` ({} classes, {} epochs, seed {}): test top-1 {:.2}%",
                info.task,
                info.num_classes,
                p.optim.total_epochs(),
                p.seed,
                out.final_eval.top1
            ),
            label: p.label,
            source_top1: Some(out.final_eval.top1),
            notes: vec![],
        };
        model::write(&ctx.out_dir, &model_info, &members[0].vit.export_backbone())?;
        write_json(&ctx.out_dir.join("pretrain.json"), &out.final_eval)
    }
}
