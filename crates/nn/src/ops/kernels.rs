//! Where each op runs and how products run: THE table of fused kernels
//! ([`has_fused_kernel`]), the ops implementation ([`OpsImpl`]), the one value that says how
//! matrix products run ([`Products`]) and the build-time choice made from all three
//! ([`Kernels`]). A model's typed modules (`crate::modules`) ask [`Kernels`] once, when
//! they are built; nothing re-decides per call.

use super::bf16::Bf16Kernel;
use candle_core::{DType, Device, Tensor};

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

/// The ops that have a fused kernel (one pass, backward an op of its own) beside their
/// composed reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedOp {
    /// [`super::layer_norm`].
    LayerNorm,
    /// [`super::softmax_last_dim`].
    Softmax,
    /// [`super::gelu`].
    Gelu,
    /// [`super::attention`] (no dropout active).
    Attention,
    /// [`super::bottleneck`], the adapter bottleneck.
    Bottleneck,
    /// A frozen linear's bf16 product through the CPU bf16 kernel ([`Products::CpuBf16`];
    /// the f32 [`super::frozen_linear`] runs its own op on every device).
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

/// Whether `op` has a fused kernel (forward and backward op) for tensors on `device` in
/// `dtype`: THE table of where fused kernels exist, read by [`Kernels::fused`] when a model
/// is built and by the op functions' gate ([`OpsImpl::fused_for`]). Today every fused op has
/// a CPU f32 kernel and nothing else; a CUDA kernel for an op adds its row here (with the
/// `cuda_fwd` of the op and of its backward op), and `crates/nn/tests/nn/nn_ops.rs` then
/// compares it with the composed op on that device.
pub fn has_fused_kernel(op: FusedOp, device: &Device, dtype: DType) -> bool {
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
    /// Whether this implementation lets `op` run fused where the table has a kernel: every
    /// op for `Fused`, none for `Composed`, all but the frozen linears and frozen halves for
    /// `FusedComposedLinear`.
    pub fn fuses(self, op: FusedOp) -> bool {
        match self {
            OpsImpl::Fused => true,
            OpsImpl::Composed => false,
            OpsImpl::FusedComposedLinear => {
                !matches!(op, FusedOp::FrozenLinearBf16 | FusedOp::FrozenHalf)
            }
        }
    }

    /// Whether `op` runs fused on `x`: this implementation fuses it ([`OpsImpl::fuses`]),
    /// and the op has a kernel for `x`'s device and dtype ([`has_fused_kernel`]). The op
    /// functions' per-call gate; a model decides once through [`Kernels`].
    pub fn fused_for(self, op: FusedOp, x: &Tensor) -> bool {
        self.fuses(op) && has_fused_kernel(op, x.device(), x.dtype())
    }
}

/// How `precision: bf16` resolved on a model (`Vit::bf16_products`): what the user asked
/// for met the machine. [`Products::new`] turns it, with the ops implementation, into how
/// the products run.
#[derive(Clone, Debug, PartialEq)]
pub enum Bf16Products {
    /// f32 precision: no bf16 products.
    Off,
    /// candle's bf16 ops on bf16 weight copies (CUDA).
    Candle,
    /// CPU: the fused ops' products on bf16 inputs with f32 accumulation through this
    /// kernel (the composed reference ops use candle's bf16 ops).
    Cpu(Bf16Kernel),
    /// CPU without a usable bf16 kernel (the reason): every product stays f32.
    CpuFallback(String),
}

impl std::fmt::Display for Bf16Products {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bf16Products::Off => write!(f, "f32 products"),
            Bf16Products::Candle => write!(f, "bf16 products through candle's bf16 ops"),
            Bf16Products::Cpu(k) => write!(f, "bf16 products (f32 accumulation) through {k}"),
            Bf16Products::CpuFallback(why) => {
                write!(f, "f32 products: no bf16 kernel on this machine ({why})")
            }
        }
    }
}

/// How the matrix products of a model run: THE one value, chosen when the precision or the
/// ops implementation is set, from which every module takes its products.
///
/// The products are those of the frozen backbone's linears (patch embedding, qkv, proj,
/// fc1, fc2) and the two attention products; LayerNorm, softmax, GELU, the residual stream,
/// the adapters and the head always run in f32. A CUDA kernel with its own low-precision
/// products becomes a variant here, which the fused ops with products (attention, frozen
/// halves, frozen linears) accept the way they accept [`Products::CpuBf16`].
#[derive(Clone, Debug, PartialEq)]
pub enum Products {
    /// f32 products: the fused ops' own GEMMs on the CPU, the backend's matmul elsewhere.
    F32,
    /// candle's matmul in this dtype on low-precision copies of the frozen matrices, with
    /// the activations cast around each product (CUDA bf16; on the CPU the composed reference
    /// of bf16). The fused ops with products do not run: their kernels take f32 or a kernel's
    /// bf16.
    Candle(DType),
    /// CPU bf16 mixed precision: the fused ops' products on bf16 inputs (bf16 copies of the
    /// frozen matrices) with f32 accumulation through this kernel.
    CpuBf16(Bf16Kernel),
}

impl Products {
    /// The products of a model whose bf16 precision resolved to `bf16`, under `ops`: the CPU
    /// kernel serves the fused ops; the composed reference (and the ablation) run candle's
    /// bf16 ops instead; a fallback is f32.
    pub fn new(bf16: &Bf16Products, ops: OpsImpl) -> Products {
        match bf16 {
            Bf16Products::Cpu(k) if ops == OpsImpl::Fused => Products::CpuBf16(*k),
            Bf16Products::Cpu(_) | Bf16Products::Candle => Products::Candle(DType::BF16),
            Bf16Products::Off | Bf16Products::CpuFallback(_) => Products::F32,
        }
    }

    /// The dtype of the low-precision copies of the frozen matrices (`None`: f32 products,
    /// no copies).
    pub fn low_dtype(&self) -> Option<DType> {
        match self {
            Products::F32 => None,
            Products::Candle(dt) => Some(*dt),
            Products::CpuBf16(_) => Some(DType::BF16),
        }
    }

    /// The dtype candle's own ops run the products in (`None`: the activations' dtype, or
    /// a fused kernel).
    pub fn candle_dtype(&self) -> Option<DType> {
        match self {
            Products::Candle(dt) => Some(*dt),
            Products::F32 | Products::CpuBf16(_) => None,
        }
    }

    /// The CPU bf16 kernel of the fused ops' products (`None`: f32 products).
    pub fn cpu_kernel(&self) -> Option<Bf16Kernel> {
        match self {
            Products::CpuBf16(k) => Some(*k),
            Products::F32 | Products::Candle(_) => None,
        }
    }
}

/// What a model's modules are built with: the ops implementation, the products and the
/// device. Every fused-or-composed choice is [`Kernels::fused`], asked once per module when
/// the model is built.
#[derive(Clone, Debug)]
pub struct Kernels {
    /// The ops implementation.
    pub ops: OpsImpl,
    /// How the products run.
    pub products: Products,
    /// The device of the model's tensors.
    pub device: Device,
}

impl Kernels {
    /// Whether `op` runs fused in this model: [`OpsImpl::fuses`] and the kernel table for
    /// the model's device and its f32 activations. The fused ops with products (attention,
    /// frozen halves) also need products a fused kernel runs ([`Kernels::fused_products`]).
    pub fn fused(&self, op: FusedOp) -> bool {
        self.ops.fuses(op) && has_fused_kernel(op, &self.device, DType::F32)
    }

    /// Whether a fused op with products can run them: f32 or a fused kernel's bf16, not
    /// candle's low-precision ops.
    pub fn fused_products(&self) -> bool {
        self.products.candle_dtype().is_none()
    }
}
