//! The bottleneck module `A(z) = W2 act(W1 z + b1) + b2` shared by the adapter methods.
//! Parameters: `{prefix}.fc1.weight [r, D]`, `{prefix}.fc1.bias [r]`, `{prefix}.fc2.weight
//! [D, r]`, `{prefix}.fc2.bias [D]`.

use crate::nn::init::{self, Init};
use crate::nn::ops;
use crate::nn::params::ParamStore;
use crate::nn::vit::{Fwd, VitConfig};
use candle_core::{DType, Device, Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::nn::ops::Activation;

/// Initialisation of a bottleneck weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// trunc-normal(std 0.02) (timm `_init_weights`, the official iDAT code).
    TruncNormal,
    /// PyTorch `kaiming_uniform_(a=sqrt(5))` (AdaptFormer's `lora` init of the down projection).
    KaimingUniform,
    /// Xavier-uniform (NOAH / Houlsby down projection).
    XavierUniform,
    /// Zeros (AdaptFormer / Houlsby up projection, so the adapter starts as identity).
    Zeros,
}

/// Shape and init of one bottleneck.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Hidden width r.
    pub hidden: usize,
    /// Activation.
    pub act: Activation,
    /// Dropout after the activation (training only).
    pub dropout: f64,
    /// Init of `fc1.weight`.
    pub down_init: WeightInit,
    /// Init of `fc2.weight`.
    pub up_init: WeightInit,
}

/// Trainable scalars of one bottleneck on width `dim`.
pub fn count(dim: usize, hidden: usize) -> usize {
    2 * dim * hidden + hidden + dim
}

fn weight_init(w: WeightInit, fan_in: usize, fan_out: usize) -> Init {
    match w {
        WeightInit::TruncNormal => Init::TruncNormal { std: 0.02 },
        WeightInit::KaimingUniform => Init::KaimingUniformSqrt5 { fan_in },
        WeightInit::XavierUniform => Init::XavierUniform { fan_in, fan_out },
        WeightInit::Zeros => Init::Zeros,
    }
}

/// Creates the four trainable tensors under `prefix`; biases start at zero.
pub fn add(
    store: &mut ParamStore,
    prefix: &str,
    dim: usize,
    spec: &Spec,
    seed: u64,
    dev: &Device,
) -> Result<()> {
    let r = spec.hidden;
    let n = format!("{prefix}.fc1.weight");
    store.insert_trainable(
        &n,
        &init::tensor(
            weight_init(spec.down_init, dim, r),
            &[r, dim],
            seed,
            &n,
            dev,
        )?,
    )?;
    store.insert_trainable(
        format!("{prefix}.fc1.bias"),
        &Tensor::zeros(r, DType::F32, dev)?,
    )?;
    let n = format!("{prefix}.fc2.weight");
    store.insert_trainable(
        &n,
        &init::tensor(weight_init(spec.up_init, r, dim), &[dim, r], seed, &n, dev)?,
    )?;
    store.insert_trainable(
        format!("{prefix}.fc2.bias"),
        &Tensor::zeros(dim, DType::F32, dev)?,
    )?;
    Ok(())
}

/// Trainable scalars of one bottleneck per block (`blocks.{i}.adapter`), on width `D`.
pub fn count_blocks(cfg: &VitConfig, hidden: usize) -> usize {
    cfg.depth * count(cfg.embed_dim, hidden)
}

/// Creates one bottleneck per block, under `blocks.{i}.adapter`, for `i` in `0..depth`.
pub fn add_blocks(
    store: &mut ParamStore,
    cfg: &VitConfig,
    spec: &Spec,
    seed: u64,
    dev: &Device,
) -> Result<()> {
    for i in 0..cfg.depth {
        add(
            store,
            &format!("blocks.{i}.adapter"),
            cfg.embed_dim,
            spec,
            seed,
            dev,
        )?;
    }
    Ok(())
}

/// `[x +] scale * A(x)` (`x +` with `residual`), with `dropout` after the activation in
/// training. One fused op where the elementary ops are fused and no dropout is active.
pub(crate) fn apply(
    f: &mut Fwd,
    prefix: &str,
    x: &Tensor,
    act: Activation,
    dropout: f64,
    scale: f64,
    residual: bool,
) -> Result<Tensor> {
    let name = |l: &str, t: &str| format!("{prefix}.{l}.{t}");
    let p = ops::Bottleneck {
        w1: f.p.get(&name("fc1", "weight"))?,
        b1: f.p.get(&name("fc1", "bias"))?,
        w2: f.p.get(&name("fc2", "weight"))?,
        b2: f.p.get(&name("fc2", "bias"))?,
        act,
        scale,
        residual,
    };
    if f.masks.training() && dropout > 0.0 {
        let masks = &mut f.masks;
        let drop = |h: Tensor| masks.dropout(&h, dropout);
        return ops::bottleneck_composed(x, &p, f.ops, drop);
    }
    ops::bottleneck(x, &p, f.ops)
}
