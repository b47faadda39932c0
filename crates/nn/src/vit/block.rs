//! One pre-norm transformer block (timm's `Block`), with its adapter hooks and, where
//! nothing inside a half is trainable or hooked, that half as one frozen op.

use crate::config::{VitConfig, LN_EPS};
use crate::masks::Masks;
use crate::modules::{Attention, AttentionHooks, BlockHooks, LayerNorm, Linear, Mlp, Slot};
use crate::ops::{self, FusedOp, Half, HalfWeights, Kernels, OpsImpl, Tokens};
use crate::params::ParamStore;
use candle_core::{Result, Tensor};

/// `h = x + DropPath(Attn(LN1 x))`, `y = h + DropPath(MLP(LN2 h))`, plus the adapter
/// method's hooks ([`BlockHooks`]).
#[derive(Clone, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    /// Stochastic-depth rate of this block.
    drop_path: f64,
    /// Heads of the attention (for the frozen attention half).
    heads: usize,
    /// Dropout is configured somewhere in the block: the frozen halves (which have none)
    /// stay off in training passes.
    dropout: bool,
    /// The attention half / the MLP half as one frozen op, where built (see [`Block::new`]).
    frozen_attn: Option<HalfWeights>,
    frozen_mlp: Option<HalfWeights>,
    /// The hooks the block itself calls (those inside attention and MLP are theirs).
    hooks: Hooks,
}

/// The hooks of [`BlockHooks`] that the block calls itself.
#[derive(Clone, Debug)]
struct Hooks {
    before: Slot,
    norm1: Slot,
    parallel_attn: Slot,
    norm2: Slot,
    mlp_branch: Slot,
    parallel_mlp: Slot,
    after: Slot,
}

impl Block {
    /// Block `i` of `cfg` from `store` (`blocks.{i}.*`), with `hooks`. A half runs as one
    /// frozen op ([`ops::frozen_residual`]) when the kernel table has the op for the model
    /// (fused ops, products f32 or a CPU bf16 kernel), no hook reaches inside it and none of
    /// its tensors is trainable; in a training pass with dropout configured it runs as
    /// separate ops.
    ///
    /// # Errors
    /// A missing tensor, named.
    pub fn new(
        store: &ParamStore,
        cfg: &VitConfig,
        i: usize,
        kernels: &Kernels,
        hooks: BlockHooks,
    ) -> Result<Block> {
        let inside = (hooks.inside_attn(), hooks.inside_mlp());
        let pre = format!("blocks.{i}");
        let attn_hooks = AttentionHooks {
            qkv_delta: hooks.qkv_delta,
            after_qkv: hooks.qkv,
            after_proj: hooks.proj,
        };
        let drops = (cfg.attn_drop_rate, cfg.drop_rate);
        let attn = Attention::new(
            store,
            &format!("{pre}.attn"),
            cfg.num_heads,
            drops,
            kernels,
            attn_hooks,
        )?;
        let mlp_hooks = (hooks.fc1, hooks.fc2);
        let mlp = Mlp::new(
            store,
            &format!("{pre}.mlp"),
            cfg.drop_rate,
            kernels,
            mlp_hooks,
        )?;
        let norm1 = LayerNorm::new(store, &format!("{pre}.norm1"), LN_EPS, kernels)?;
        let norm2 = LayerNorm::new(store, &format!("{pre}.norm2"), LN_EPS, kernels)?;
        let frozen_ops = kernels.ops == OpsImpl::Fused
            && kernels.fused(FusedOp::FrozenHalf)
            && kernels.fused_products();
        let frozen_attn = (frozen_ops && !inside.0)
            .then(|| frozen_half(&norm1, attn.qkv(), attn.proj(), kernels))
            .flatten()
            .transpose()?;
        let frozen_mlp = (frozen_ops && !inside.1)
            .then(|| frozen_half(&norm2, mlp.fc1(), mlp.fc2(), kernels))
            .flatten()
            .transpose()?;
        Ok(Block {
            norm1,
            attn,
            norm2,
            mlp,
            drop_path: cfg.drop_path_at(i),
            heads: cfg.num_heads,
            dropout: cfg.drop_rate > 0.0 || cfg.attn_drop_rate > 0.0,
            frozen_attn,
            frozen_mlp,
            hooks: Hooks {
                before: hooks.before,
                norm1: hooks.norm1,
                parallel_attn: hooks.parallel_attn,
                norm2: hooks.norm2,
                mlp_branch: hooks.mlp_branch,
                parallel_mlp: hooks.parallel_mlp,
                after: hooks.after,
            },
        })
    }

    /// The block on `x [B, N, D]`: `[B, N, D]` out, or `[B, 1, D]` (the class token's row)
    /// with [`Tokens::Cls`], where everything after the attention runs on that row only.
    pub fn forward(&self, x: &Tensor, masks: &mut Masks, tokens: Tokens) -> Result<Tensor> {
        let x = self.hooks.before.apply(x, masks)?;
        let h = self.attn_half(&x, masks, tokens)?;
        let y = self.mlp_half(&h, masks)?;
        self.hooks.after.apply(&y, masks)
    }

    /// `h = x + DropPath(Attn(LN1 x))` plus the side branch beside it (for the rows of
    /// `tokens`).
    fn attn_half(&self, x: &Tensor, masks: &mut Masks, tokens: Tokens) -> Result<Tensor> {
        // The residual stream from here on: every token, or the class token's row.
        let x_out = match tokens {
            Tokens::All => x.clone(),
            Tokens::Cls => x.narrow(1, 0, 1)?,
        };
        let h = match self.frozen(&self.frozen_attn, masks) {
            Some(w) => {
                let half = Half::Attn {
                    heads: self.heads,
                    tokens,
                };
                self.frozen_residual(x, w, half, masks)?
            }
            None => {
                let n1 = self.hooks.norm1.apply(&self.norm1.forward(x)?, masks)?;
                let a = self.attn.forward(&n1, masks, tokens)?;
                (&x_out + masks.drop_path(&a, self.drop_path)?)?
            }
        };
        add(h, self.hooks.parallel_attn.side(&x_out, masks)?)
    }

    /// `y = h + DropPath(MLP(LN2 h))` plus the side branch beside it.
    fn mlp_half(&self, h: &Tensor, masks: &mut Masks) -> Result<Tensor> {
        let y = match self.frozen(&self.frozen_mlp, masks) {
            Some(w) => self.frozen_residual(h, w, Half::Mlp, masks)?,
            None => {
                let n2 = self.hooks.norm2.apply(&self.norm2.forward(h)?, masks)?;
                let m = self.mlp.forward(&n2, masks)?;
                let m = masks.drop_path(&m, self.drop_path)?;
                (h + self.hooks.mlp_branch.apply(&m, masks)?)?
            }
        };
        add(y, self.hooks.parallel_mlp.side(h, masks)?)
    }

    /// The frozen half's weights where it runs as one op in this pass.
    fn frozen<'a>(&self, half: &'a Option<HalfWeights>, masks: &Masks) -> Option<&'a HalfWeights> {
        half.as_ref()
            .filter(|_| !(masks.training() && self.dropout))
    }

    /// `x + s * branch(x)` for one half as a single frozen op, `s` the drop-path factors.
    fn frozen_residual(
        &self,
        x: &Tensor,
        w: &HalfWeights,
        half: Half,
        masks: &mut Masks,
    ) -> Result<Tensor> {
        let scale = masks.drop_path_factors(x.dim(0)?, self.drop_path);
        ops::frozen_residual(x, w, half, LN_EPS, scale)
    }

    /// Whether the attention half and the MLP half run as one frozen op each (outside
    /// training passes with dropout).
    pub fn frozen_halves(&self) -> (bool, bool) {
        (self.frozen_attn.is_some(), self.frozen_mlp.is_some())
    }
}

/// `t + side` where there is a side branch.
fn add(t: Tensor, side: Option<Tensor>) -> Result<Tensor> {
    match side {
        Some(s) => t + s,
        None => Ok(t),
    }
}

/// The weights of a half made of `norm`, `l1` and `l2` as the frozen op reads them, or
/// `None` when one of them is trainable. The products are the linears': on their bf16
/// copies through the CPU bf16 kernel where they have them, else f32.
fn frozen_half(
    norm: &LayerNorm,
    l1: &Linear,
    l2: &Linear,
    kernels: &Kernels,
) -> Option<Result<HalfWeights>> {
    if !norm.is_frozen() {
        return None;
    }
    let (w1, b1, low1) = l1.frozen_parts()?;
    let (w2, b2, low2) = l2.frozen_parts()?;
    if !(l1.is_frozen() && l2.is_frozen()) {
        return None;
    }
    let low = match (kernels.products.cpu_kernel(), low1, low2) {
        (Some(k), Some(l1), Some(l2)) => Some((l1, l2, k)),
        // The linears run f32 products (no bf16 kernel for them here): so does the half.
        _ => None,
    };
    let w = HalfWeights {
        norm_w: norm.weight().clone(),
        norm_b: norm.bias().clone(),
        w1,
        b1,
        w2,
        b2,
        low,
    };
    Some(w.prepared())
}
