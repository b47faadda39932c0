//! timm's `Mlp` of a block: `fc2(drop(GELU(fc1(x))))`, with the adapter hooks on fc1 and
//! fc2.

use super::{Linear, Slot};
use crate::masks::Masks;
use crate::ops::{self, FusedOp, Kernels};
use crate::params::ParamStore;
use candle_core::{Result, Tensor};

/// The MLP `fc1` (`[D] -> [H]`), exact GELU (fused or composed, decided when built),
/// dropout, `fc2` (`[H] -> [D]`), dropout.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    /// On `fc1`'s output, before GELU (SSF).
    after_fc1: Slot,
    gelu_fused: bool,
    fc2: Linear,
    /// On `fc2`'s output (SSF).
    after_fc2: Slot,
    drop: f64,
}

impl Mlp {
    /// The MLP `{prefix}.fc1` / `{prefix}.fc2` of `store` with dropout rate `drop` after the
    /// activation and after `fc2`, and the hooks after `fc1` and after `fc2`.
    ///
    /// # Errors
    /// A missing tensor, named.
    pub fn new(
        store: &ParamStore,
        prefix: &str,
        drop: f64,
        kernels: &Kernels,
        (after_fc1, after_fc2): (Slot, Slot),
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(store, &format!("{prefix}.fc1"), kernels, true)?,
            after_fc1,
            gelu_fused: kernels.fused(FusedOp::Gelu),
            fc2: Linear::new(store, &format!("{prefix}.fc2"), kernels, true)?,
            after_fc2,
            drop,
        })
    }

    /// `x [.., D] -> [.., D]`.
    pub fn forward(&self, x: &Tensor, masks: &mut Masks) -> Result<Tensor> {
        let h = self.after_fc1.apply(&self.fc1.forward(x)?, masks)?;
        let h = ops::gelu_as(&h, self.gelu_fused)?;
        let h = masks.dropout(&h, self.drop)?;
        let o = self.after_fc2.apply(&self.fc2.forward(&h)?, masks)?;
        masks.dropout(&o, self.drop)
    }

    /// The first linear.
    pub fn fc1(&self) -> &Linear {
        &self.fc1
    }

    /// The second linear.
    pub fn fc2(&self) -> &Linear {
        &self.fc2
    }

    /// Whether a hook reaches inside (after fc1 or fc2).
    pub fn is_hooked(&self) -> bool {
        self.after_fc1.is_set() || self.after_fc2.is_set()
    }
}
