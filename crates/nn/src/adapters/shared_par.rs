//! `shared_par_adapter` (`gist_shared_par_adapter` in the official iDAT code): ONE scaled
//! bottleneck used twice per block, parallel to both branches:
//! `h = x + DropPath(Attn(LN1 x)) + s*A(x)`, `y = h + DropPath(MLP(LN2 h)) + s*A(h)`.
//! GELU, hidden 4, s = 0.1, trunc-normal(0.02) weights, zero biases.
//! Parameters `blocks.{i}.adapter.fc{1,2}.{weight,bias}`.

use super::bottleneck::{Activation, Placement, Spec, WeightInit};
use super::{check_finite, check_positive, AdapterMethod};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn h4() -> usize {
    4
}
fn s01() -> f64 {
    0.1
}

/// Hyperparameters of `shared_par_adapter`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedParConfig {
    /// Bottleneck width (default 4).
    #[serde(default = "h4")]
    pub hidden: usize,
    /// Output scale s (default 0.1).
    #[serde(default = "s01")]
    pub scale: f64,
}

impl Default for SharedParConfig {
    fn default() -> Self {
        SharedParConfig {
            hidden: 4,
            scale: 0.1,
        }
    }
}

impl AdapterMethod for SharedParConfig {
    fn name(&self) -> &'static str {
        "shared_par_adapter"
    }

    fn block_bottleneck(&self) -> Option<Spec> {
        Some(Spec {
            hidden: self.hidden,
            act: Activation::Gelu,
            dropout: 0.0,
            down_init: WeightInit::TruncNormal,
            up_init: WeightInit::TruncNormal,
            placement: Placement::ParallelBoth { scale: self.scale },
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_positive(self.name(), "hidden", self.hidden)?;
        check_finite(self.name(), "scale", self.scale)
    }
}
