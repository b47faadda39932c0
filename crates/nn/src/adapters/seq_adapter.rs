//! `seq_adapter` (official iDAT default, `gist_seq_adapter` in its code): after the whole
//! block, `y' = y + A(y)`, A = bottleneck with GELU, hidden 4, trunc-normal(0.02) weights
//! (up projection NOT zero), zero biases. Parameters `blocks.{i}.adapter.fc{1,2}.{weight,bias}`.

use super::bottleneck::{Activation, Placement, Spec, WeightInit};
use super::{check_positive, AdapterMethod};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_hidden() -> usize {
    4
}

/// Hyperparameters of `seq_adapter`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeqAdapterConfig {
    /// Bottleneck width (official: 4).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
}

impl Default for SeqAdapterConfig {
    fn default() -> Self {
        SeqAdapterConfig {
            hidden: default_hidden(),
        }
    }
}

impl AdapterMethod for SeqAdapterConfig {
    fn name(&self) -> &'static str {
        "seq_adapter"
    }

    fn block_bottleneck(&self) -> Option<Spec> {
        Some(Spec {
            hidden: self.hidden,
            act: Activation::Gelu,
            dropout: 0.0,
            down_init: WeightInit::TruncNormal,
            up_init: WeightInit::TruncNormal,
            placement: Placement::AfterBlock,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_positive(self.name(), "hidden", self.hidden)
    }
}
