//! Elementary ops of the ViT in two interchangeable implementations:
//!
//! * [`OpsImpl::Fused`]: where [`has_fused_kernel`] lists the op for the tensor's device and
//!   dtype (today CPU f32), one-pass custom ops (`CustomOp1/3`) with a
//!   hand-written backward (LayerNorm, softmax, exact GELU) and a frozen linear whose
//!   backward computes only dL/dx. On other devices / dtypes it falls back to the composed
//!   version, so the fused path is never a correctness risk (candle's own fused
//!   `layer_norm` / `softmax_last_dim` have no backward and are deliberately not used).
//! * [`OpsImpl::Composed`]: built from differentiable candle tensor ops only (the
//!   reference the fused ops are tested against, and the benchmark baseline).

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
mod layer_norm;
mod softmax;
mod view;

pub use gelu::gelu_composed;
pub use layer_norm::layer_norm_composed;
pub use softmax::softmax_composed;

use candle_core::{DType, IndexOp, Result, Tensor};

/// Which implementation the model's elementary ops use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpsImpl {
    /// Fused CPU kernels with hand-written backward (composed fallback off CPU).
    #[default]
    Fused,
    /// Differentiable candle tensor ops only.
    Composed,
    /// Benchmark ablation: fused LayerNorm / softmax / GELU, but frozen linears as plain
    /// matmuls (candle computes and discards their weight gradients).
    FusedComposedLinear,
}

/// The ops that have a fused kernel (one pass, hand-written backward) beside their
/// composed reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedOp {
    /// [`layer_norm`].
    LayerNorm,
    /// [`softmax_last_dim`].
    Softmax,
    /// [`gelu`].
    Gelu,
    /// [`attention`] (no dropout active).
    Attention,
    /// [`bottleneck`], the adapter bottleneck.
    Bottleneck,
    /// [`frozen_linear_bf16`]'s bf16 product (the f32 [`frozen_linear`] runs its own op on
    /// every device).
    FrozenLinearBf16,
    /// A whole frozen residual half of a block (`frozen_residual`).
    FrozenHalf,
}

impl FusedOp {
    /// Every fused op.
    pub const ALL: [FusedOp; 7] = [
        FusedOp::LayerNorm,
        FusedOp::Softmax,
        FusedOp::Gelu,
        FusedOp::Attention,
        FusedOp::Bottleneck,
        FusedOp::FrozenLinearBf16,
        FusedOp::FrozenHalf,
    ];
}

/// Whether `op` has a fused kernel for tensors on `device` in `dtype`: THE table of where
/// fused kernels exist, read by every op's gate ([`OpsImpl::fused_for`]). Today every fused
/// op has a CPU f32 kernel and nothing else; a CUDA kernel for an op adds its row here (and
/// its `cuda_fwd`), and `tests/nn_ops.rs` then compares it with the composed op on that
/// device.
pub fn has_fused_kernel(op: FusedOp, device: &candle_core::Device, dtype: DType) -> bool {
    use FusedOp::*;
    // One arm per (ops, devices, dtypes) that have kernels; the match is exhaustive over
    // the ops, so a new fused op must say here where it runs.
    match op {
        LayerNorm | Softmax | Gelu | Attention | Bottleneck | FrozenLinearBf16 | FrozenHalf => {
            device.is_cpu() && dtype == DType::F32
        }
    }
}

impl OpsImpl {
    /// Whether `op` runs fused on `x`: this implementation fuses, and the op has a kernel
    /// for `x`'s device and dtype ([`has_fused_kernel`]).
    pub(crate) fn fused_for(self, op: FusedOp, x: &Tensor) -> bool {
        self != OpsImpl::Composed && has_fused_kernel(op, x.device(), x.dtype())
    }
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
/// Gradients flow to `x`, and to `w` / `b` when they are (or depend on) variables.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, imp: OpsImpl) -> Result<Tensor> {
    if !imp.fused_for(FusedOp::LayerNorm, x) {
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
    if !imp.fused_for(FusedOp::Softmax, x) {
        return softmax_composed(x);
    }
    x.contiguous()?.apply_op1(softmax::SoftmaxOp)
}

/// Exact (erf) GELU.
pub fn gelu(x: &Tensor, imp: OpsImpl) -> Result<Tensor> {
    if !imp.fused_for(FusedOp::Gelu, x) {
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
    masks: &mut crate::nn::masks::Masks,
    imp: OpsImpl,
    low: Option<DType>,
    tokens: Tokens,
) -> Result<Tensor> {
    attention_bf16(qkv, heads, attn_drop, masks, imp, low, None, tokens)
}

/// [`attention`] whose fused CPU op runs its per-head products on bf16 inputs through
/// `kernel` (CPU bf16 mixed precision, f32 accumulation; `None`: f32).
#[allow(clippy::too_many_arguments)]
pub fn attention_bf16(
    qkv: &Tensor,
    heads: usize,
    attn_drop: f64,
    masks: &mut crate::nn::masks::Masks,
    imp: OpsImpl,
    low: Option<DType>,
    kernel: Option<Bf16Kernel>,
    tokens: Tokens,
) -> Result<Tensor> {
    let dropout_active = masks.training() && attn_drop > 0.0;
    if imp.fused_for(FusedOp::Attention, qkv) && !dropout_active && low.is_none() {
        let op = attention::AttentionOp::new(heads, tokens, qkv.track_op()).with_kernel(kernel);
        return qkv.contiguous()?.apply_op1(op);
    }
    let (b, n, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let dh = d / heads;
    let nq = tokens.rows(n);
    let qkv = qkv
        .reshape((b, n, 3, heads, dh))?
        .permute((2, 0, 3, 1, 4))?;
    let dt = qkv.dtype();
    let lo = low.unwrap_or(dt);
    let q = (qkv.i(0)?.narrow(2, 0, nq)? * (dh as f64).powf(-0.5))?
        .to_dtype(lo)?
        .contiguous()?;
    let k = qkv.i(1)?.to_dtype(lo)?.contiguous()?;
    let v = qkv.i(2)?.to_dtype(lo)?.contiguous()?;
    let scores = q.matmul(&k.t()?)?.to_dtype(dt)?;
    let attn = softmax_last_dim(&scores, imp)?;
    let attn = masks.dropout(&attn, attn_drop)?.to_dtype(lo)?;
    attn.matmul(&v)?
        .to_dtype(dt)?
        .transpose(1, 2)?
        .reshape((b, nq, d))
}

/// One adapter bottleneck `[x +] scale * (act(x w1^T + b1) w2^T + b2)` (`x +` with
/// `residual`): its four trainable tensors `w1 [r, D]`, `b1 [r]`, `w2 [D, r]`, `b2 [D]` and
/// how it is applied.
pub struct Bottleneck<'a> {
    pub w1: &'a Tensor,
    pub b1: &'a Tensor,
    pub w2: &'a Tensor,
    pub b2: &'a Tensor,
    pub act: Activation,
    pub scale: f64,
    pub residual: bool,
}

/// The adapter bottleneck `p` on `x [.., D]`. Fused on CPU f32: one op whose backward gives
/// dL/dx and the four parameter gradients in one pass over the rows (see
/// `ops/bottleneck.rs`); composed otherwise. No dropout: callers with dropout active use
/// [`bottleneck_composed`].
pub fn bottleneck(x: &Tensor, p: &Bottleneck, imp: OpsImpl) -> Result<Tensor> {
    if !imp.fused_for(FusedOp::Bottleneck, x) {
        return bottleneck_composed(x, p, imp, Ok);
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

/// [`bottleneck`] from differentiable ops, with `after_act` applied to the hidden
/// activations (dropout, for the callers that have it active; `Ok` otherwise).
pub fn bottleneck_composed(
    x: &Tensor,
    p: &Bottleneck,
    imp: OpsImpl,
    after_act: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let h = linear(x, p.w1, Some(p.b1))?;
    let h = match p.act {
        Activation::Gelu => gelu(&h, imp)?,
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
    let out_dtype = x.dtype();
    let xin = x.to_dtype(w.dtype())?;
    let add_bias = |y: Tensor| match b {
        Some(b) => y.broadcast_add(&b.detach()),
        None => Ok(y),
    };
    if imp != OpsImpl::Fused {
        return add_bias(linear(&xin, &w.detach(), None)?.to_dtype(out_dtype)?);
    }
    let fuse_bias = xin.device().is_cpu() && xin.dtype() == DType::F32;
    let op = frozen_linear::FrozenLinearOp {
        w: w.detach().contiguous()?,
        b: if fuse_bias {
            b.map(|b| b.detach().contiguous()).transpose()?
        } else {
            None
        },
        low: None,
    };
    let y = xin.contiguous()?.apply_op1(op)?.to_dtype(out_dtype)?;
    if fuse_bias {
        Ok(y)
    } else {
        add_bias(y)
    }
}

/// [`frozen_linear`] for CPU bf16 mixed precision: `x [.., K]` (f32) times the bf16 copy
/// `w_bf16 [N, K]` of the frozen `w` through `kernel` (bf16 inputs, f32 accumulation), plus
/// the frozen bias in f32; the backward's dL/dx product likewise. Where the fused CPU ops do
/// not apply to `x` (not CPU f32, or `imp` not fused) it is [`frozen_linear`] on `w`.
pub fn frozen_linear_bf16(
    x: &Tensor,
    w: &Tensor,
    w_bf16: &Tensor,
    kernel: Bf16Kernel,
    b: Option<&Tensor>,
    imp: OpsImpl,
) -> Result<Tensor> {
    if imp != OpsImpl::Fused || !imp.fused_for(FusedOp::FrozenLinearBf16, x) {
        return frozen_linear(x, w, b, imp);
    }
    if w_bf16.dtype() != DType::BF16 || w_bf16.dims() != w.dims() {
        candle_core::bail!(
            "frozen_linear_bf16: the bf16 copy is {:?} {:?}, the weight {:?}",
            w_bf16.dtype(),
            w_bf16.dims(),
            w.dims()
        );
    }
    let op = frozen_linear::FrozenLinearOp {
        w: w.detach().contiguous()?,
        b: b.map(|b| b.detach().contiguous()).transpose()?,
        low: Some((w_bf16.detach().contiguous()?, kernel)),
    };
    x.contiguous()?.apply_op1(op)
}

/// One residual half of a pre-norm block with every backbone tensor frozen, as a single
/// CPU f32 op: `x + s * proj(attention(qkv(LN(x))))` for [`Half::Attn`] (only the class
/// token's row of it with [`Tokens::Cls`]), `x + s * fc2(GELU(fc1(LN(x))))` for
/// [`Half::Mlp`]; `scale` holds the per-sample drop-path factors `s`. Only dL/dx flows
/// back. Callers use it where [`OpsImpl::fused_for`] holds for [`FusedOp::FrozenHalf`].
pub(crate) fn frozen_residual(
    x: &Tensor,
    w: &HalfWeights,
    half: Half,
    eps: f64,
    scale: Option<Vec<f32>>,
) -> Result<Tensor> {
    let core = frozen_block::HalfCore {
        half,
        weights: w.prepared()?,
        eps: eps as f32,
        scale,
    };
    let op = frozen_block::ResidualHalfOp::new(core, x.track_op());
    x.contiguous()?.apply_op1(op)
}
