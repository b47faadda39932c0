//! Helpers shared by the ML stage kinds: devices, model directories, decoded splits.
use crate::data::loader::DecodedSplit;
use crate::nn::checkpoint::{load_backbone, save_tensors, LoadOptions};
use crate::nn::vit::VitConfig;
use crate::report::backbones::Backbone;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use idat_engine::stages::StageContext;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// File names inside a model entry (`model/vit`, `model/pretrain`).
pub const BACKBONE_FILE: &str = "backbone.safetensors";
pub const MODEL_INFO_FILE: &str = "model.json";
/// File names inside a decoded-data entry (`data/decode`).
pub const DECODED_INFO_FILE: &str = "decoded.json";

/// The device a stage runs on, from `--device` (`cpu`, `cuda`, `cuda:N`).
pub fn device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"))?,
        None => bail!("device `{spec}`: expected `cpu`, `cuda` or `cuda:N`"),
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "device `{spec}` asked for, but this idat-pipe was built without CUDA; \
             build the CUDA binary with scripts/cuda-build.sh (see docs/gpu.md) or use `--device cpu`"
        );
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!("opening CUDA device {ordinal} (is an NVIDIA GPU and driver present?)")
    })
}

/// The architecture of a model stage: a timm preset name, or a full config.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Arch {
    /// A timm preset, e.g. `vit_base_patch16_224`.
    Preset(String),
    /// Any size.
    Config(VitConfig),
}

impl Arch {
    pub fn resolve(&self) -> Result<VitConfig> {
        match self {
            Arch::Preset(name) => VitConfig::preset(name),
            Arch::Config(c) => Ok(c.clone()),
        }
    }
}

/// What a model entry says about itself (`model.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Architecture; `num_classes` is the stored head's (0: no head).
    pub config: VitConfig,
    /// Where the weights came from, in words.
    pub source: String,
    /// A label for reports, e.g. "in-pipeline pretrained toy backbone".
    pub label: String,
    /// Test top-1 (%) on the source task, for backbones trained in the pipeline
    /// (`model/pretrain`); `None` for loaded checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_top1: Option<f64>,
    /// Loader notes (resampled position embeddings, dropped tensors).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl ModelInfo {
    /// This backbone as a report lists it, in the given role (`student` or `teacher`).
    pub fn backbone(&self, role: &str) -> Backbone {
        Backbone {
            role: role.into(),
            source: self.source.clone(),
            source_top1: self.source_top1,
        }
    }
}

pub fn write_model(dir: &Path, info: &ModelInfo, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_tensors(&dir.join(BACKBONE_FILE), tensors, &meta)?;
    write_json(&dir.join(MODEL_INFO_FILE), info)
}

/// A frozen backbone from a model entry, for a task with `num_classes` classes and the
/// given drop-path rate. The stored head (if any) is dropped: the task gets a new one.
pub fn read_model(
    dir: &Path,
    num_classes: usize,
    drop_path_rate: f64,
    dev: &Device,
) -> Result<(VitConfig, ModelInfo, BTreeMap<String, Tensor>)> {
    let info: ModelInfo = read_json(&dir.join(MODEL_INFO_FILE))?;
    let mut cfg = info.config.clone();
    cfg.num_classes = num_classes;
    cfg.drop_path_rate = drop_path_rate;
    let expected: Vec<(String, Vec<usize>)> = cfg
        .expected_tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect();
    let opts = LoadOptions {
        allow_partial: false,
        allow_unexpected: false,
        ignore: vec!["head.".to_string()],
        resample_pos_embed: true,
        ..Default::default()
    };
    let loaded = load_backbone(&dir.join(BACKBONE_FILE), &expected, &opts, dev)?;
    Ok((cfg, info, loaded.tensors))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodedInfo {
    pub task: String,
    pub group: String,
    pub num_classes: usize,
    pub size: usize,
    /// split name -> file name in the entry.
    pub splits: BTreeMap<String, String>,
    /// split name -> images skipped (`skip_bad_images`).
    #[serde(default)]
    pub skipped: BTreeMap<String, usize>,
    /// Class names by label, when the dataset has them (own and ImageFolder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

/// A decoded split from a `data/decode` entry.
pub fn read_split(dir: &Path, split: &str) -> Result<(DecodedInfo, DecodedSplit)> {
    let info: DecodedInfo = read_json(&dir.join(DECODED_INFO_FILE))?;
    let file = info.splits.get(split).with_context(|| {
        format!(
            "{}: no split `{split}` (has: {:?})",
            dir.display(),
            info.splits.keys()
        )
    })?;
    let split = DecodedSplit::load(&dir.join(file))?;
    Ok((info, split))
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: unexpected content", path.display()))
}

/// The input directory of stage `id`, when this instance `needs` it.
pub fn input_dir<'a>(ctx: &'a StageContext, id: &str) -> Result<&'a Path> {
    Ok(ctx.input(id)?.dir.as_path())
}

/// Write `metrics.csv` rows.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}
