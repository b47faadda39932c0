//! timm's `Attention` of a block: `proj(attention(qkv(x)))`, with the adapter hooks on qkv
//! and proj.

use super::{Linear, Slot};
use crate::masks::Masks;
use crate::ops::{self, FusedOp, Kernels, Tokens};
use crate::params::ParamStore;
use candle_core::{Result, Tensor};

/// Multi-head self-attention: `qkv` (`[D] -> [3D]`, q | k | v head-major), the attention
/// (fused or composed, decided when built; dropout `attn_drop` on the probabilities), `proj`
/// and dropout `proj_drop` after it.
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    /// An update added to `qkv(x)`, from `x` (LoRA).
    qkv_delta: Slot,
    /// On `qkv(x)` (+ update) (SSF).
    after_qkv: Slot,
    core: ops::Attention,
    proj: Linear,
    /// On `proj`'s output (SSF).
    after_proj: Slot,
    proj_drop: f64,
}

/// The hooks an [`Attention`] calls.
#[derive(Clone, Debug, Default)]
pub struct AttentionHooks {
    /// An update added to `qkv(x)`, from the attention's input `x`.
    pub qkv_delta: Slot,
    /// On `qkv(x)` (+ update).
    pub after_qkv: Slot,
    /// On the output of `proj`.
    pub after_proj: Slot,
}

impl Attention {
    /// The attention `{prefix}.qkv` / `{prefix}.proj` of `store` with `heads` heads.
    ///
    /// # Errors
    /// A missing tensor, named.
    pub fn new(
        store: &ParamStore,
        prefix: &str,
        heads: usize,
        (attn_drop, proj_drop): (f64, f64),
        kernels: &Kernels,
        hooks: AttentionHooks,
    ) -> Result<Self> {
        let core = ops::Attention {
            heads,
            attn_drop,
            fused: kernels.fused(FusedOp::Attention) && kernels.fused_products(),
            kernel: kernels.products.cpu_kernel(),
            low: kernels.products.candle_dtype(),
            softmax_fused: kernels.fused(FusedOp::Softmax),
        };
        Ok(Attention {
            qkv: Linear::new(store, &format!("{prefix}.qkv"), kernels, true)?,
            qkv_delta: hooks.qkv_delta,
            after_qkv: hooks.after_qkv,
            core,
            proj: Linear::new(store, &format!("{prefix}.proj"), kernels, true)?,
            after_proj: hooks.after_proj,
            proj_drop,
        })
    }

    /// The attention output `[B, Nq, D]` (`Nq` from `tokens`) of the normed tokens
    /// `x [B, N, D]`.
    pub fn forward(&self, x: &Tensor, masks: &mut Masks, tokens: Tokens) -> Result<Tensor> {
        let mut qkv = self.qkv.forward(x)?;
        if let Some(delta) = self.qkv_delta.side(x, masks)? {
            qkv = (qkv + delta)?;
        }
        let qkv = self.after_qkv.apply(&qkv, masks)?;
        let o = self.core.forward(&qkv, masks, tokens)?;
        let o = self.after_proj.apply(&self.proj.forward(&o)?, masks)?;
        masks.dropout(&o, self.proj_drop)
    }

    /// The qkv projection.
    pub fn qkv(&self) -> &Linear {
        &self.qkv
    }

    /// The output projection.
    pub fn proj(&self) -> &Linear {
        &self.proj
    }

    /// Whether a hook reaches inside (a qkv update, or a hook after qkv or proj).
    pub fn is_hooked(&self) -> bool {
        self.qkv_delta.is_set() || self.after_qkv.is_set() || self.after_proj.is_set()
    }
}
