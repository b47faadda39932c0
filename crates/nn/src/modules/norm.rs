//! timm's `nn.LayerNorm` over the last dimension (affine weight and bias).

use crate::ops::{self, FusedOp, Kernels};
use crate::params::ParamStore;
use candle_core::{Result, Tensor};

/// LayerNorm `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// The fused op runs (else the composed one), decided when built.
    fused: bool,
    /// Neither tensor is trainable.
    frozen: bool,
}

impl LayerNorm {
    /// The LayerNorm `{prefix}.weight` / `{prefix}.bias` of `store` with epsilon `eps`.
    ///
    /// # Errors
    /// A missing tensor, named.
    pub fn new(store: &ParamStore, prefix: &str, eps: f64, kernels: &Kernels) -> Result<Self> {
        let (wn, bn) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        Ok(LayerNorm {
            weight: store.get(&wn)?.clone(),
            bias: store.get(&bn)?.clone(),
            eps,
            fused: kernels.fused(FusedOp::LayerNorm),
            frozen: !store.is_trainable(&wn) && !store.is_trainable(&bn),
        })
    }

    /// The normalised `x [.., D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm_as(x, &self.weight, &self.bias, self.eps, self.fused)
    }

    /// Neither the weight nor the bias is trainable.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The weight `[D]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[D]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}
