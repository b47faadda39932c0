//! timm's `nn.Linear`, with the product of a frozen weight chosen once.

use crate::ops::{self, FrozenProduct, FusedOp, Kernels, OpsImpl, Products};
use crate::params::ParamStore;
use candle_core::{Result, Tensor};

/// A linear layer `x [.., K] -> x W^T + b` with `W [N, K]` and an optional bias `b [N]`.
///
/// A trainable weight runs the differentiable matmul. A frozen one runs the product chosen
/// when the layer is built: the frozen-linear op (its backward computes dL/dx only), in the
/// model's products ([`Products`]) when the layer is a backbone matrix (a low-precision copy
/// of the weight is made then), or the composed matmul under [`OpsImpl::Composed`] and the
/// ablation. A trainable bias beside a frozen weight is added after the product.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight as stored (`[N, K]`, or the patch embedding's `[D, C, p, p]`).
    weight: Tensor,
    /// `[N, K]`: the product's view of the weight.
    dims: (usize, usize),
    bias: Option<Tensor>,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Trainable weight: the differentiable matmul.
    Trainable,
    /// Frozen weight: this product; a trainable bias is added after it.
    Frozen {
        product: FrozenProduct,
        bias_trainable: bool,
    },
}

impl Linear {
    /// The layer `{prefix}.weight` (`[N, K]`; a weight of higher rank, the patch
    /// embedding's convolution kernel `[D, C, p, p]`, is viewed as `[N, rest]`) with
    /// `{prefix}.bias` if the store has one. `backbone`: a frozen weight runs in the model's
    /// products ([`Kernels::products`]); otherwise (the head) in f32.
    ///
    /// # Errors
    /// A missing weight (named), or a low-precision copy that cannot be made.
    pub fn new(
        store: &ParamStore,
        prefix: &str,
        kernels: &Kernels,
        backbone: bool,
    ) -> Result<Self> {
        let wn = format!("{prefix}.weight");
        let bn = format!("{prefix}.bias");
        let weight = store.get(&wn)?.clone();
        let n = weight.dim(0)?;
        let dims = (n, weight.elem_count() / n.max(1));
        let bias = store.get_opt(&bn).cloned();
        let kind = if store.is_trainable(&wn) {
            Kind::Trainable
        } else {
            let w = weight.reshape(dims)?;
            let products = if backbone {
                &kernels.products
            } else {
                &Products::F32
            };
            Kind::Frozen {
                product: frozen_product(&w, kernels, products)?,
                bias_trainable: store.is_trainable(&bn),
            }
        };
        Ok(Linear {
            weight,
            dims,
            bias,
            kind,
        })
    }

    /// `x [.., K] -> [.., N]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            Kind::Trainable => {
                let w = if self.weight.rank() == 2 {
                    self.weight.clone()
                } else {
                    self.weight.reshape(self.dims)?
                };
                ops::linear(x, &w, self.bias.as_ref())
            }
            Kind::Frozen {
                product,
                bias_trainable: false,
            } => product.forward(x, self.bias.as_ref()),
            Kind::Frozen {
                product,
                bias_trainable: true,
            } => {
                let b = self.bias.as_ref().expect("a trainable bias exists");
                product.forward(x, None)?.broadcast_add(b)
            }
        }
    }

    /// Neither the weight nor the bias (if any) is trainable.
    pub fn is_frozen(&self) -> bool {
        matches!(
            self.kind,
            Kind::Frozen {
                bias_trainable: false,
                ..
            }
        )
    }

    /// For a frozen layer: its `[N, K]` weight, its bias, and the weight's bf16 copy when
    /// the products run through a CPU bf16 kernel (what a frozen residual half takes).
    pub(crate) fn frozen_parts(&self) -> Option<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let Kind::Frozen { product, .. } = &self.kind else {
            return None;
        };
        let (w, low) = match product {
            FrozenProduct::Composed { w } | FrozenProduct::Op { w, .. } => (w.clone(), None),
            FrozenProduct::CpuBf16 { w, w_bf16, .. } => (w.clone(), Some(w_bf16.clone())),
        };
        Some((w, self.bias.clone(), low))
    }
}

/// The product of the frozen `[N, K]` weight `w` under `kernels` with `products`: candle's
/// matmul on a low-precision copy, the CPU bf16 kernel on a bf16 copy (where the table has
/// it; else f32), or f32; the op where the ops implementation is fused, else composed.
fn frozen_product(w: &Tensor, kernels: &Kernels, products: &Products) -> Result<FrozenProduct> {
    let fused = kernels.ops == OpsImpl::Fused;
    match products {
        Products::CpuBf16(k) if fused && kernels.fused(FusedOp::FrozenLinearBf16) => {
            let low = w.to_dtype(candle_core::DType::BF16)?.contiguous()?;
            FrozenProduct::cpu_bf16(w, &low, *k)
        }
        Products::Candle(dt) => FrozenProduct::new(&w.to_dtype(*dt)?.contiguous()?, fused),
        Products::F32 | Products::CpuBf16(_) => FrozenProduct::new(w, fused),
    }
}
