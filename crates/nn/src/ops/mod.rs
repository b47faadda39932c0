//! Elementary ops of the ViT in two interchangeable implementations:
//!
//! * fused: where [`has_fused_kernel`] lists the op for the device and dtype (today CPU
//!   f32), one-pass custom ops (`CustomOp1/3`) whose backward is an op of its own with a
//!   per-device entry (its `cpu_fwd`; a device kernel is its `cuda_fwd`): LayerNorm,
//!   softmax, exact GELU, attention, the adapter bottleneck, the frozen residual halves, and
//!   a frozen linear whose backward computes only dL/dx. Elsewhere the composed version
//!   runs, so the fused path is never a correctness risk (candle's own fused `layer_norm` /
//!   `softmax_last_dim` have no backward and are deliberately not used).
//! * composed: built from differentiable candle tensor ops only (the reference the fused
//!   ops are tested against, and the benchmark baseline).
//!
//! Each op function here takes the [`OpsImpl`] and decides per call (the op-level API the
//! tests use); a model decides once, when its modules are built, through [`Kernels`]
//! (`kernels.rs`), and calls the `*_as` forms with that decision.

mod attention;
pub use attention::Tokens;
mod bf16;
pub use bf16::{cpu_has_avx512_bf16, Bf16Kernel};
mod blas;
mod bottleneck;
pub use blas::OpenBlas;
pub use bottleneck::Activation;
mod cpu;
mod fastmath;
mod frozen_block;
pub(crate) use frozen_block::{Half, HalfWeights};
mod frozen_linear;
mod gemm;
pub use gemm::{cpu_bf16, cpu_gemm, CpuGemm, ENV as GEMM_BACKEND_ENV};
mod gelu;
mod kernels;
pub use kernels::{has_fused_kernel, Bf16Products, FusedOp, Kernels, OpsImpl, Products};
mod layer_norm;
mod softmax;
mod view;

pub use gelu::gelu_composed;
pub use layer_norm::layer_norm_composed;
pub use softmax::softmax_composed;

use crate::masks::Masks;
use candle_core::{DType, IndexOp, Result, Tensor};

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
/// Gradients flow to `x`, and to `w` / `b` when they are (or depend on) variables.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, imp: OpsImpl) -> Result<Tensor> {
    layer_norm_as(x, w, b, eps, imp.fused_for(FusedOp::LayerNorm, x))
}

/// [`layer_norm`], fused or composed as decided by the caller.
pub(crate) fn layer_norm_as(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    fused: bool,
) -> Result<Tensor> {
    if !fused {
        return layer_norm_composed(x, w, b, eps);
    }
    let op = layer_norm::LayerNormOp {
        eps: eps as f32,
        grad_w: w.track_op(),
        grad_b: b.track_op(),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor, imp: OpsImpl) -> Result<Tensor> {
    softmax_as(x, imp.fused_for(FusedOp::Softmax, x))
}

/// [`softmax_last_dim`], fused or composed as decided by the caller.
pub(crate) fn softmax_as(x: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused {
        return softmax_composed(x);
    }
    x.contiguous()?.apply_op1(softmax::SoftmaxOp)
}

/// Exact (erf) GELU.
pub fn gelu(x: &Tensor, imp: OpsImpl) -> Result<Tensor> {
    gelu_as(x, imp.fused_for(FusedOp::Gelu, x))
}

/// [`gelu`], fused or composed as decided by the caller.
pub(crate) fn gelu_as(x: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused {
        return gelu_composed(x);
    }
    x.contiguous()?.apply_op1(gelu::GeluOp)
}

/// Multi-head self-attention on the packed projection `qkv [B, N, 3D]` (last dim
/// `q | k | v`, each head-major): `softmax(q k^T / sqrt(Dh)) v`, heads merged to
/// `[B, N, D]` (`[B, 1, D]` with [`Tokens::Cls`]: only the class token queries), with
/// dropout rate `attn_drop` on the attention matrix drawn from `masks`.
/// Fused (one op, no layout copies) on CPU when no attention dropout is active and `low`
/// is `None`. With `low` (bf16 mixed precision through candle's ops, as on CUDA) the two
/// products run in that dtype and the softmax in `qkv`'s dtype.
pub fn attention(
    qkv: &Tensor,
    heads: usize,
    attn_drop: f64,
    masks: &mut Masks,
    imp: OpsImpl,
    low: Option<DType>,
    tokens: Tokens,
) -> Result<Tensor> {
    let a = Attention {
        heads,
        attn_drop,
        fused: imp.fused_for(FusedOp::Attention, qkv) && low.is_none(),
        kernel: None,
        low,
        softmax_fused: imp.fused_for(FusedOp::Softmax, qkv),
    };
    a.forward(qkv, masks, tokens)
}

/// [`attention`] with its implementation decided once (a model's attention module).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attention {
    /// Heads; must divide the width.
    pub heads: usize,
    /// Dropout rate on the attention matrix (training passes).
    pub attn_drop: f64,
    /// The fused op runs where no attention dropout is active.
    pub fused: bool,
    /// The fused op's products on bf16 inputs through this kernel (`None`: f32).
    pub kernel: Option<Bf16Kernel>,
    /// Composed: the two products in this dtype (`None`: `qkv`'s).
    pub low: Option<DType>,
    /// Composed: the softmax fused.
    pub softmax_fused: bool,
}

impl Attention {
    /// The attention of `qkv [B, N, 3D]` for the outputs of `tokens` (see [`attention`]).
    pub(crate) fn forward(
        &self,
        qkv: &Tensor,
        masks: &mut Masks,
        tokens: Tokens,
    ) -> Result<Tensor> {
        let dropout_active = masks.training() && self.attn_drop > 0.0;
        if self.fused && !dropout_active {
            let op = attention::AttentionOp::new(self.heads, tokens, qkv.track_op())
                .with_kernel(self.kernel);
            return qkv.contiguous()?.apply_op1(op);
        }
        let (b, n, d3) = qkv.dims3()?;
        let d = d3 / 3;
        let heads = self.heads;
        let dh = d / heads;
        let nq = tokens.rows(n);
        let qkv = qkv
            .reshape((b, n, 3, heads, dh))?
            .permute((2, 0, 3, 1, 4))?;
        let dt = qkv.dtype();
        let lo = self.low.unwrap_or(dt);
        let q = (qkv.i(0)?.narrow(2, 0, nq)? * (dh as f64).powf(-0.5))?
            .to_dtype(lo)?
            .contiguous()?;
        let k = qkv.i(1)?.to_dtype(lo)?.contiguous()?;
        let v = qkv.i(2)?.to_dtype(lo)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?.to_dtype(dt)?;
        let attn = softmax_as(&scores, self.softmax_fused)?;
        let attn = masks.dropout(&attn, self.attn_drop)?.to_dtype(lo)?;
        attn.matmul(&v)?
            .to_dtype(dt)?
            .transpose(1, 2)?
            .reshape((b, nq, d))
    }
}

/// One adapter bottleneck `[x +] scale * (act(x w1^T + b1) w2^T + b2)` (`x +` with
/// `residual`): its four trainable tensors `w1 [r, D]`, `b1 [r]`, `w2 [D, r]`, `b2 [D]` and
/// how it is applied.
pub struct Bottleneck<'a> {
    /// Down projection `[r, D]`.
    pub w1: &'a Tensor,
    /// Its bias `[r]`.
    pub b1: &'a Tensor,
    /// Up projection `[D, r]`.
    pub w2: &'a Tensor,
    /// Its bias `[D]`.
    pub b2: &'a Tensor,
    /// Activation between the two.
    pub act: Activation,
    /// Output scale.
    pub scale: f64,
    /// Add `x` to the output.
    pub residual: bool,
}

/// The adapter bottleneck `p` on `x [.., D]`. Fused on CPU f32: one op whose backward gives
/// dL/dx and the four parameter gradients in one pass over the rows (see
/// `ops/bottleneck.rs`); composed otherwise. No dropout: callers with dropout active use
/// [`bottleneck_composed`].
pub fn bottleneck(x: &Tensor, p: &Bottleneck, imp: OpsImpl) -> Result<Tensor> {
    let gelu_fused = imp.fused_for(FusedOp::Gelu, x);
    bottleneck_as(x, p, imp.fused_for(FusedOp::Bottleneck, x), gelu_fused)
}

/// [`bottleneck`], fused or composed (with a fused GELU or not) as decided by the caller.
pub(crate) fn bottleneck_as(
    x: &Tensor,
    p: &Bottleneck,
    fused: bool,
    gelu_fused: bool,
) -> Result<Tensor> {
    if !fused {
        return bottleneck_composed(x, p, gelu_fused, Ok);
    }
    let p1 = Tensor::cat(&[p.w1, &p.b1.unsqueeze(1)?], 1)?;
    let p2 = Tensor::cat(&[p.w2, &p.b2.unsqueeze(1)?], 1)?;
    let op = bottleneck::BottleneckOp {
        act: p.act,
        scale: p.scale as f32,
        residual: p.residual,
        needs_grad: [x.track_op(), p1.track_op(), p2.track_op()],
    };
    x.contiguous()?.apply_op3(&p1, &p2, op)
}

/// [`bottleneck`] from differentiable ops (its GELU fused or not), with `after_act` applied
/// to the hidden activations (dropout, for the callers that have it active; `Ok`
/// otherwise).
pub(crate) fn bottleneck_composed(
    x: &Tensor,
    p: &Bottleneck,
    gelu_fused: bool,
    after_act: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let h = linear(x, p.w1, Some(p.b1))?;
    let h = match p.act {
        Activation::Gelu => gelu_as(&h, gelu_fused)?,
        Activation::Relu => h.relu()?,
    };
    let mut y = linear(&after_act(h)?, p.w2, Some(p.b2))?;
    if p.scale != 1.0 {
        y = (y * p.scale)?;
    }
    if p.residual {
        x + y
    } else {
        Ok(y)
    }
}

/// Differentiable linear layer `x [.., K] -> x w^T + b`, `w [N, K]`, `b [N]` (all composed).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let x2 = x.reshape(((), k))?;
    let mut y = x2.matmul(&w.t()?)?;
    if let Some(b) = b {
        y = y.broadcast_add(b)?;
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(shape)
}

/// Linear layer whose weight and bias are frozen: no gradient is computed (or allocated)
/// for them. Fused: the backward is a single GEMM for dL/dx (CPU: one `gemm` call with the
/// bias fused; other devices / dtypes: the backend's matmul). Composed: plain [`linear`] on
/// detached parameters (candle then still computes the discarded weight gradient).
///
/// `w` may be a low-precision copy (bf16 mixed precision): `x` is then cast to its dtype
/// for the product and the result cast back to `x`'s dtype; the bias is added after that,
/// in `x`'s dtype.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, imp: OpsImpl) -> Result<Tensor> {
    FrozenProduct::new(w, imp == OpsImpl::Fused)?.forward(x, b)
}

/// The product of a frozen linear, chosen once: how [`frozen_linear`] runs, and what a
/// model's frozen linear modules hold.
#[derive(Clone, Debug)]
pub(crate) enum FrozenProduct {
    /// [`linear`] on the detached weight (`x` cast to its dtype and back), bias added after.
    Composed {
        /// The detached `[N, K]` weight (f32, or a low-precision copy).
        w: Tensor,
    },
    /// The frozen-linear op on the weight in its own dtype (`x` cast to it and back).
    Op {
        /// The detached, contiguous `[N, K]` weight (f32, or candle's low-precision copy).
        w: Tensor,
        /// The bias is added inside the op (CPU f32), else after it.
        fuse_bias: bool,
    },
    /// The frozen-linear op with its products on the bf16 copy through a CPU kernel (CPU
    /// `precision: bf16`); input, output and bias f32.
    CpuBf16 {
        /// The detached, contiguous f32 `[N, K]` weight.
        w: Tensor,
        /// Its detached, contiguous bf16 copy.
        w_bf16: Tensor,
        /// The kernel of the products.
        kernel: Bf16Kernel,
    },
}

impl FrozenProduct {
    /// The product on `w` (f32, or candle's low-precision copy): the op when `fused`, else
    /// composed.
    pub(crate) fn new(w: &Tensor, fused: bool) -> Result<FrozenProduct> {
        if !fused {
            return Ok(FrozenProduct::Composed { w: w.detach() });
        }
        Ok(FrozenProduct::Op {
            w: w.detach().contiguous()?,
            fuse_bias: w.device().is_cpu() && w.dtype() == DType::F32,
        })
    }

    /// The product on the f32 `w` with its bf16 copy `w_bf16` through `kernel`.
    pub(crate) fn cpu_bf16(
        w: &Tensor,
        w_bf16: &Tensor,
        kernel: Bf16Kernel,
    ) -> Result<FrozenProduct> {
        if w_bf16.dtype() != DType::BF16 || w_bf16.dims() != w.dims() {
            candle_core::bail!(
                "frozen linear: the bf16 copy is {:?} {:?}, the weight {:?}",
                w_bf16.dtype(),
                w_bf16.dims(),
                w.dims()
            );
        }
        Ok(FrozenProduct::CpuBf16 {
            w: w.detach().contiguous()?,
            w_bf16: w_bf16.detach().contiguous()?,
            kernel,
        })
    }

    /// `x [.., K] w^T (+ b)` in `x`'s dtype, with the frozen bias `b` (detached here).
    pub(crate) fn forward(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let add_bias = |y: Tensor| match b {
            Some(b) => y.broadcast_add(&b.detach()),
            None => Ok(y),
        };
        match self {
            FrozenProduct::Composed { w } => {
                let out_dtype = x.dtype();
                let xin = x.to_dtype(w.dtype())?;
                add_bias(linear(&xin, w, None)?.to_dtype(out_dtype)?)
            }
            FrozenProduct::Op { w, fuse_bias } => {
                let out_dtype = x.dtype();
                let xin = x.to_dtype(w.dtype())?;
                let op = frozen_linear::FrozenLinearOp {
                    w: w.clone(),
                    b: if *fuse_bias {
                        b.map(|b| b.detach().contiguous()).transpose()?
                    } else {
                        None
                    },
                    low: None,
                };
                let y = xin.contiguous()?.apply_op1(op)?.to_dtype(out_dtype)?;
                if *fuse_bias {
                    Ok(y)
                } else {
                    add_bias(y)
                }
            }
            FrozenProduct::CpuBf16 { w, w_bf16, kernel } => {
                let op = frozen_linear::FrozenLinearOp {
                    w: w.clone(),
                    b: b.map(|b| b.detach().contiguous()).transpose()?,
                    low: Some((w_bf16.clone(), *kernel)),
                };
                x.contiguous()?.apply_op1(op)
            }
        }
    }
}

/// One residual half of a pre-norm block with every backbone tensor frozen, as a single
/// CPU f32 op: `x + s * proj(attention(qkv(LN(x))))` for [`Half::Attn`] (only the class
/// token's row of it with [`Tokens::Cls`]), `x + s * fc2(GELU(fc1(LN(x))))` for
/// [`Half::Mlp`]; `scale` holds the per-sample drop-path factors `s`. Only dL/dx flows
/// back. `w` must be [`HalfWeights::prepared`]. Callers use it where [`Kernels::fused`]
/// holds for [`FusedOp::FrozenHalf`].
pub(crate) fn frozen_residual(
    x: &Tensor,
    w: &HalfWeights,
    half: Half,
    eps: f64,
    scale: Option<Vec<f32>>,
) -> Result<Tensor> {
    let core = frozen_block::HalfCore {
        half,
        weights: w.clone(),
        eps: eps as f32,
        scale,
    };
    let op = frozen_block::ResidualHalfOp::new(core, x.track_op());
    x.contiguous()?.apply_op1(op)
}
