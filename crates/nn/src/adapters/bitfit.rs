//! `bitfit`: every bias of the backbone is trainable — `patch_embed.proj.bias`, per block
//! `norm1.bias`, `attn.qkv.bias` (if the model has one), `attn.proj.bias`, `norm2.bias`,
//! `mlp.fc1.bias`, `mlp.fc2.bias`, and the final `norm.bias` (LayerNorm biases included,
//! LayerNorm weights not). Names are timm's.

use super::AdapterMethod;
use crate::config::VitConfig;
use crate::params::ParamStore;
use candle_core::{Device, Result};

/// The timm names of the biases BitFit trains.
pub fn bias_names(cfg: &VitConfig) -> Vec<String> {
    cfg.expected_tensors()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".bias") && !n.starts_with("head."))
        .collect()
}

/// Trainable scalars (head excluded).
pub fn count(cfg: &VitConfig) -> usize {
    let (d, h) = (cfg.embed_dim, cfg.mlp_hidden());
    let qkv = if cfg.qkv_bias { 3 * d } else { 0 };
    d + cfg.depth * (d + qkv + d + d + h + d) + d
}

/// The `bitfit` method (no hyperparameters).
#[derive(Clone, Copy, Debug)]
pub struct Bitfit;

impl AdapterMethod for Bitfit {
    fn name(&self) -> &'static str {
        "bitfit"
    }

    fn count(&self, cfg: &VitConfig) -> usize {
        count(cfg)
    }

    fn add_params(
        &self,
        cfg: &VitConfig,
        store: &mut ParamStore,
        _: u64,
        _: &Device,
    ) -> Result<()> {
        for n in bias_names(cfg) {
            store.make_trainable(&n)?;
        }
        Ok(())
    }
}
