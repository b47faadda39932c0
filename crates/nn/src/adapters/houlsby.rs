//! `houlsby`: sequential bottleneck adapter on the MLP branch (NOAH placement):
//! `y = h + A'(DropPath(MLP(LN2 h)))` with the Houlsby residual `A'(m) = m + A(m)`.
//! Defaults: bottleneck 8, GELU, down projection xavier-uniform, up projection zero
//! (starts as identity), zero biases. Parameters `blocks.{i}.adapter.fc{1,2}.{weight,bias}`.

use super::bottleneck::{Activation, Placement, Spec, WeightInit};
use super::{check_positive, AdapterMethod};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn h8() -> usize {
    8
}
fn gelu() -> Activation {
    Activation::Gelu
}

/// Hyperparameters of `houlsby`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoulsbyConfig {
    /// Bottleneck width (default 8).
    #[serde(default = "h8")]
    pub hidden: usize,
    /// Activation (default gelu).
    #[serde(default = "gelu")]
    pub activation: Activation,
}

impl Default for HoulsbyConfig {
    fn default() -> Self {
        HoulsbyConfig {
            hidden: 8,
            activation: Activation::Gelu,
        }
    }
}

impl AdapterMethod for HoulsbyConfig {
    fn name(&self) -> &'static str {
        "houlsby"
    }

    fn block_bottleneck(&self) -> Option<Spec> {
        Some(Spec {
            hidden: self.hidden,
            act: self.activation,
            dropout: 0.0,
            down_init: WeightInit::XavierUniform,
            up_init: WeightInit::Zeros,
            placement: Placement::MlpBranch,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_positive(self.name(), "hidden", self.hidden)
    }
}
