//! Numeric precision of the training forward and backward pass.

use candle_core::DType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `f32` everywhere, or bf16 mixed precision.
///
/// `bf16` (PyTorch-autocast-like): the frozen backbone's matrix products (patch embedding,
/// qkv, attention output projection, MLP) and the two attention products run in bfloat16 on
/// bf16 copies of the frozen weights. LayerNorm, softmax, GELU, the residual stream, the
/// adapters, the head, the losses, the gradients of trainable tensors and the optimizer
/// state stay f32. On CUDA candle's bf16 ops run the products (tensor cores). On CPU the
/// fused ops run them with bf16 inputs and f32 accumulation through OpenBLAS's
/// `cblas_sbgemm` where the CPU has AVX512-BF16 (`idat-pipe bench` says which kernel runs); without
/// it the model keeps f32 products and `bench` says why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full f32.
    #[default]
    F32,
    /// bfloat16 matrix products for the frozen backbone, f32 elsewhere.
    Bf16,
}

impl Precision {
    /// The dtype of the low-precision products (`None` for full f32).
    pub fn low_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}`: expected f32 or bf16")),
        }
    }
}
