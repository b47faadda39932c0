//! The bottleneck module `A(z) = W2 act(W1 z + b1) + b2` shared by the adapter methods:
//! its spec (shape, init, and where a method places it), its parameters, and the typed
//! module ([`Bottleneck`]) that runs it as a hook. Parameters: `{prefix}.fc1.weight [r, D]`,
//! `{prefix}.fc1.bias [r]`, `{prefix}.fc2.weight [D, r]`, `{prefix}.fc2.bias [D]`.

use crate::config::VitConfig;
use crate::init::{self, Init};
use crate::masks::Masks;
use crate::modules::{BlockHooks, Hook, Hooks, Slot};
use crate::ops::{self, FusedOp, Kernels};
use crate::params::ParamStore;
use candle_core::{DType, Device, Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use crate::ops::Activation;

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

/// Where a method places its bottleneck in each block, which fixes how its output is used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// After the whole block: `y' = y + A(y)` (the sequential adapter).
    AfterBlock,
    /// On the MLP branch before its residual add: `m' = m + A(m)` (Houlsby).
    MlpBranch,
    /// Beside the MLP half, fed with its input: `y = h + MLP(..) + s A(h)` (AdaptFormer).
    ParallelMlp {
        /// The scale `s`.
        scale: f64,
    },
    /// Beside both halves, one module used twice: `h = x + Attn(..) + s A(x)`,
    /// `y = h + MLP(..) + s A(h)` (the shared parallel adapter).
    ParallelBoth {
        /// The scale `s`.
        scale: f64,
    },
}

impl Placement {
    /// `(scale, residual)` of the bottleneck at this placement: `x + A(x)` in the stream,
    /// or `s A(x)` beside it.
    fn apply(self) -> (f64, bool) {
        match self {
            Placement::AfterBlock | Placement::MlpBranch => (1.0, true),
            Placement::ParallelMlp { scale } | Placement::ParallelBoth { scale } => (scale, false),
        }
    }

    /// Installs `module` at this placement in a block's hooks.
    fn install(self, hooks: &mut BlockHooks, module: Arc<dyn Hook>) {
        match self {
            Placement::AfterBlock => hooks.after = Slot::shared(module),
            Placement::MlpBranch => hooks.mlp_branch = Slot::shared(module),
            Placement::ParallelMlp { .. } => hooks.parallel_mlp = Slot::shared(module),
            Placement::ParallelBoth { .. } => {
                hooks.parallel_attn = Slot::shared(module.clone());
                hooks.parallel_mlp = Slot::shared(module);
            }
        }
    }
}

/// Shape, init and placement of one bottleneck.
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
    /// Where it goes in each block.
    pub placement: Placement,
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

/// The hooks of one bottleneck per block (`blocks.{i}.adapter`) at the placement of `spec`.
///
/// # Errors
/// A bottleneck tensor missing from `store`, named.
pub(crate) fn block_hooks(
    store: &ParamStore,
    cfg: &VitConfig,
    spec: &Spec,
    kernels: &Kernels,
) -> Result<Hooks> {
    let mut hooks = Hooks::none(cfg.depth);
    for (i, block) in hooks.blocks.iter_mut().enumerate() {
        let module = Bottleneck::new(store, &format!("blocks.{i}.adapter"), spec, kernels)?;
        spec.placement.install(block, Arc::new(module));
    }
    Ok(hooks)
}

/// One bottleneck as a hook: `[x +] scale * A(x)` (`x +` and the scale from its
/// placement), with dropout after the activation in training passes. One fused op where the
/// model's ops are fused and no dropout is active, decided when built.
#[derive(Clone, Debug)]
pub struct Bottleneck {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    act: Activation,
    dropout: f64,
    scale: f64,
    residual: bool,
    fused: bool,
    gelu_fused: bool,
}

impl Bottleneck {
    /// The bottleneck `{prefix}.fc{1,2}.{weight,bias}` of `store` with `spec`.
    ///
    /// # Errors
    /// A tensor missing from `store`, named.
    pub fn new(store: &ParamStore, prefix: &str, spec: &Spec, kernels: &Kernels) -> Result<Self> {
        let get = |l: &str, t: &str| store.get(&format!("{prefix}.{l}.{t}")).cloned();
        let (scale, residual) = spec.placement.apply();
        Ok(Bottleneck {
            w1: get("fc1", "weight")?,
            b1: get("fc1", "bias")?,
            w2: get("fc2", "weight")?,
            b2: get("fc2", "bias")?,
            act: spec.act,
            dropout: spec.dropout,
            scale,
            residual,
            fused: kernels.fused(FusedOp::Bottleneck),
            gelu_fused: kernels.fused(FusedOp::Gelu),
        })
    }
}

impl Hook for Bottleneck {
    fn forward(&self, x: &Tensor, masks: &mut Masks) -> Result<Tensor> {
        let p = ops::Bottleneck {
            w1: &self.w1,
            b1: &self.b1,
            w2: &self.w2,
            b2: &self.b2,
            act: self.act,
            scale: self.scale,
            residual: self.residual,
        };
        if masks.training() && self.dropout > 0.0 {
            let drop = |h: Tensor| masks.dropout(&h, self.dropout);
            return ops::bottleneck_composed(x, &p, self.gelu_fused, drop);
        }
        ops::bottleneck_as(x, &p, self.fused, self.gelu_fused)
    }
}
