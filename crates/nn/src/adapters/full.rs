//! `full` fine-tuning (also used to pretrain a backbone from scratch): every backbone
//! tensor is trainable under its timm name, plus the head.

use super::AdapterMethod;
use crate::config::VitConfig;
use crate::params::ParamStore;
use candle_core::{Device, Result};

/// Trainable scalars besides the head: the whole backbone.
pub fn count(cfg: &VitConfig) -> usize {
    cfg.backbone_params()
}

/// The `full` method (no hyperparameters).
#[derive(Clone, Copy, Debug)]
pub struct Full;

impl AdapterMethod for Full {
    fn name(&self) -> &'static str {
        "full"
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
        for (n, _) in cfg.expected_tensors() {
            if !n.starts_with("head.") {
                store.make_trainable(&n)?;
            }
        }
        Ok(())
    }
}
