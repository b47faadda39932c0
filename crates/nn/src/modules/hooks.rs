//! Where adapter methods plug in: typed [`Hook`]s at named points of the forward pass, built
//! once by the method (`crate::adapters`) from its parameters and installed into the
//! model's modules. A point without a hook is the identity (or adds nothing).
//!
//! The points, in the order a forward pass reaches them ([`ModelHooks`], [`BlockHooks`]):
//! after the patch embedding; after the position embedding; per block: on its input, after
//! `norm1`, an update of `attn.qkv`, after `attn.qkv`, after `attn.proj`, a side branch
//! beside the attention half, after `norm2`, after `mlp.fc1`, after `mlp.fc2`, on the MLP
//! branch before its residual add, a side branch beside the MLP half, on its output; after
//! the final `norm`.

use crate::masks::Masks;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// A module placed at one point of the forward pass: a function of the point's tensor (and
/// of the pass's dropout masks). What its output means depends on the point: it replaces
/// the tensor, or is added to it as an update or a side branch ([`BlockHooks`]).
pub trait Hook: std::fmt::Debug + Send + Sync {
    /// The hook's output for the tensor `x` at its point.
    fn forward(&self, x: &Tensor, masks: &mut Masks) -> Result<Tensor>;
}

/// One hook point: empty, or a hook (shared where a method uses one module at two points).
#[derive(Clone, Debug, Default)]
pub struct Slot(Option<Arc<dyn Hook>>);

impl Slot {
    /// A point holding `hook`.
    pub fn new(hook: impl Hook + 'static) -> Slot {
        Slot(Some(Arc::new(hook)))
    }

    /// A point holding `hook`, which other points may hold too.
    pub fn shared(hook: Arc<dyn Hook>) -> Slot {
        Slot(Some(hook))
    }

    /// Whether the point holds a hook.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The hook's output in place of `x`; `x` itself where the point is empty.
    pub fn apply(&self, x: &Tensor, masks: &mut Masks) -> Result<Tensor> {
        match &self.0 {
            Some(h) => h.forward(x, masks),
            None => Ok(x.clone()),
        }
    }

    /// The hook's output (an update or a side branch to add); `None` where the point is
    /// empty.
    pub fn side(&self, x: &Tensor, masks: &mut Masks) -> Result<Option<Tensor>> {
        self.0.as_ref().map(|h| h.forward(x, masks)).transpose()
    }
}

/// The hooks of one transformer block (`h = x + DropPath(Attn(LN1 x))`,
/// `y = h + DropPath(MLP(LN2 h))`), with what each hook's output means.
#[derive(Clone, Debug, Default)]
pub struct BlockHooks {
    /// Replaces the tokens `[B, N, D]` entering the block.
    pub before: Slot,
    /// Replaces `LN1 x`.
    pub norm1: Slot,
    /// Added to `attn.qkv(LN1 x)` (`[.., 3D]`), from `LN1 x` (after the `norm1` hook).
    pub qkv_delta: Slot,
    /// Replaces `attn.qkv(..)` (with its update).
    pub qkv: Slot,
    /// Replaces `attn.proj(..)`.
    pub proj: Slot,
    /// Added to `h`, from the block input `x` (its class row only where the block computes
    /// only the class token's output).
    pub parallel_attn: Slot,
    /// Replaces `LN2 h`.
    pub norm2: Slot,
    /// Replaces `mlp.fc1(..)` (before GELU).
    pub fc1: Slot,
    /// Replaces `mlp.fc2(..)`.
    pub fc2: Slot,
    /// Replaces the MLP branch `DropPath(MLP(LN2 h))` before its residual add.
    pub mlp_branch: Slot,
    /// Added to `y`, from `h`.
    pub parallel_mlp: Slot,
    /// Replaces the block output `y`.
    pub after: Slot,
}

impl BlockHooks {
    /// Whether a hook reaches inside the attention half (`norm1`, the qkv update, `qkv`,
    /// `proj`): that half then never runs as the fused frozen op, which calls no hook.
    pub fn inside_attn(&self) -> bool {
        [&self.norm1, &self.qkv_delta, &self.qkv, &self.proj]
            .iter()
            .any(|s| s.is_set())
    }

    /// Whether a hook reaches inside the MLP half (`norm2`, `fc1`, `fc2`, the MLP branch).
    pub fn inside_mlp(&self) -> bool {
        [&self.norm2, &self.fc1, &self.fc2, &self.mlp_branch]
            .iter()
            .any(|s| s.is_set())
    }
}

/// The hooks outside the blocks.
#[derive(Clone, Debug, Default)]
pub struct ModelHooks {
    /// Replaces the patch tokens `[B, P, D]` (before the class token and the position
    /// embedding).
    pub patch_embed: Slot,
    /// Replaces the tokens `[B, N, D]` after the position embedding (and its dropout),
    /// before block 0.
    pub after_embed: Slot,
    /// Replaces the output of the final `norm`.
    pub norm: Slot,
}

/// Everything a method places: the hooks outside the blocks and one [`BlockHooks`] per
/// block.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Outside the blocks.
    pub model: ModelHooks,
    /// Block `i`'s hooks at index `i`.
    pub blocks: Vec<BlockHooks>,
}

impl Hooks {
    /// No hook anywhere in a model of `depth` blocks.
    pub fn none(depth: usize) -> Hooks {
        Hooks {
            model: ModelHooks::default(),
            blocks: vec![BlockHooks::default(); depth],
        }
    }
}
