//! The model entry of `model/vit` and `model/pretrain`: a frozen backbone.
//!
//! - `backbone.safetensors`: the weights under timm names (`patch_embed.proj.weight`,
//!   `blocks.N.attn.qkv.weight`, ...), metadata `format: pt`; a head (`head.*`) may be
//!   present and is dropped on reading;
//! - `model.json` ([`ModelInfo`]): the architecture, where the weights came from and a label.
//!
//! `model/pretrain` also leaves `metrics.csv` (the [`training`](super::training) format)
//! and `pretrain.json` (its final test evaluation) beside them; nothing reads those.
//! `train/adapt`, `train/idat` and `eval` read the entry through [`read`].
use super::{read_json, write_json};
use crate::nn::checkpoint::{load_backbone_with, save_tensors, LoadOptions};
use crate::nn::vit::VitConfig;
use crate::report::backbones::Backbone;
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The weights file of a model entry.
pub const BACKBONE_FILE: &str = "backbone.safetensors";
/// The description file of a model entry.
pub const MODEL_INFO_FILE: &str = "model.json";

/// `model.json`: what a model entry says about itself.
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

/// Writes `tensors` (timm names) and `info` into the entry `dir`.
///
/// # Errors
/// When a file cannot be written (the error names it).
pub fn write(dir: &Path, info: &ModelInfo, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_tensors(&dir.join(BACKBONE_FILE), tensors, &meta)?;
    write_json(&dir.join(MODEL_INFO_FILE), info)
}

/// A frozen backbone from the entry `dir`, for a task with `num_classes` classes and the
/// given drop-path rate: the config to build the ViT with, the entry's description and the
/// backbone tensors on `dev`. The stored head (if any) is dropped: the task gets a new one;
/// position embeddings are resampled when the config's grid differs.
///
/// # Errors
/// A missing or bad `model.json`, or a `backbone.safetensors` whose tensors do not match
/// the config (missing, unexpected or misshapen tensors, named).
pub fn read(
    dir: &Path,
    num_classes: usize,
    drop_path_rate: f64,
    dev: &Device,
) -> Result<(VitConfig, ModelInfo, BTreeMap<String, Tensor>)> {
    let info: ModelInfo = read_json(
        &dir.join(MODEL_INFO_FILE),
        "the description of a model (model.json as model/vit or model/pretrain writes it)",
    )?;
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
    // Read through the cache's verified reader: checked against the entry's manifest.
    let file = dir.join(BACKBONE_FILE);
    let loaded = load_backbone_with(
        &file,
        &expected,
        &opts,
        dev,
        idat_engine::cache::verified::read,
    )?;
    Ok((cfg, info, loaded.tensors))
}
