//! `full` fine-tuning (also used to pretrain a backbone from scratch): every backbone
//! tensor is trainable under its timm name, plus the head.

use crate::nn::params::ParamStore;
use crate::nn::vit::VitConfig;
use candle_core::Result;

/// Trainable scalars besides the head: the whole backbone.
pub fn count(cfg: &VitConfig) -> usize {
    cfg.backbone_params()
}

pub(crate) fn add(cfg: &VitConfig, store: &mut ParamStore) -> Result<()> {
    for (n, _) in cfg.expected_tensors() {
        if !n.starts_with("head.") {
            store.make_trainable(&n)?;
        }
    }
    Ok(())
}
