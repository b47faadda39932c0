//! One model being trained: its ViT and its optimiser.

use super::config::OptimConfig;
use crate::nn::optim::AdamW;
use crate::nn::vit::Vit;
use anyhow::Result;

/// One adapter-tuned model being trained.
pub struct Member {
    /// `student` (the kept, larger model) or `teacher` (the smaller one).
    pub name: String,
    /// The model.
    pub vit: Vit,
    /// The optimiser of its trainable tensors.
    pub opt: AdamW,
}

impl Member {
    /// `vit` with an AdamW over its trainable tensors, set from `optim`. Errors: AdamW's
    /// range checks on `optim`'s betas, eps and weight decay.
    pub fn new(name: &str, vit: Vit, optim: &OptimConfig) -> Result<Member> {
        let opt = AdamW::new(vit.trainable(), optim.adamw())?;
        Ok(Member {
            name: name.into(),
            vit,
            opt,
        })
    }
}
