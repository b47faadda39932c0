//! AdaptFormer: a scaled bottleneck parallel to the MLP branch, fed with the block's
//! intermediate `h`: `y = h + DropPath(MLP(LN2 h)) + s * A(h)` (no LayerNorm before A).
//!
//! Two method names:
//! * `adaptformer` — the iDAT variant (official iDAT code): hidden 4, GELU, no dropout,
//!   scale 0.1, trunc-normal(0.02) weights for both projections, zero biases.
//! * `adaptformer_original` — AdaptFormer as published: bottleneck 8 (VTAB), ReLU, dropout
//!   0.1, scale 0.1, down projection kaiming-uniform, up projection zero, zero biases.
//!
//! Parameters `blocks.{i}.adapter.fc{1,2}.{weight,bias}`.

use super::bottleneck::{Activation, Placement, Spec, WeightInit};
use super::{check_finite, check_positive, check_rate, AdapterMethod};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn h4() -> usize {
    4
}
fn h8() -> usize {
    8
}
fn s01() -> f64 {
    0.1
}
fn gelu() -> Activation {
    Activation::Gelu
}
fn relu() -> Activation {
    Activation::Relu
}
fn trunc() -> WeightInit {
    WeightInit::TruncNormal
}
fn kaiming() -> WeightInit {
    WeightInit::KaimingUniform
}
fn zeros() -> WeightInit {
    WeightInit::Zeros
}

/// Hyperparameters of `adaptformer` (iDAT variant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptformerConfig {
    /// Bottleneck width (default 4).
    #[serde(default = "h4")]
    pub hidden: usize,
    /// Output scale s (default 0.1).
    #[serde(default = "s01")]
    pub scale: f64,
    /// Activation (default gelu).
    #[serde(default = "gelu")]
    pub activation: Activation,
    /// Dropout after the activation (default 0).
    #[serde(default)]
    pub dropout: f64,
    /// Init of the up projection (default trunc_normal).
    #[serde(default = "trunc")]
    pub up_init: WeightInit,
}

impl Default for AdaptformerConfig {
    fn default() -> Self {
        AdaptformerConfig {
            hidden: 4,
            scale: 0.1,
            activation: Activation::Gelu,
            dropout: 0.0,
            up_init: trunc(),
        }
    }
}

/// Hyperparameters of `adaptformer_original` (AdaptFormer as published).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptformerOriginalConfig {
    /// Bottleneck width (default 8).
    #[serde(default = "h8")]
    pub hidden: usize,
    /// Output scale s (default 0.1).
    #[serde(default = "s01")]
    pub scale: f64,
    /// Activation (default relu).
    #[serde(default = "relu")]
    pub activation: Activation,
    /// Dropout after the activation (default 0.1).
    #[serde(default = "s01")]
    pub dropout: f64,
    /// Init of the down projection (default kaiming_uniform).
    #[serde(default = "kaiming")]
    pub down_init: WeightInit,
    /// Init of the up projection (default zeros).
    #[serde(default = "zeros")]
    pub up_init: WeightInit,
}

impl Default for AdaptformerOriginalConfig {
    fn default() -> Self {
        AdaptformerOriginalConfig {
            hidden: 8,
            scale: 0.1,
            activation: Activation::Relu,
            dropout: 0.1,
            down_init: kaiming(),
            up_init: zeros(),
        }
    }
}

impl AdaptformerConfig {
    /// The bottleneck spec.
    pub fn spec(&self) -> Spec {
        Spec {
            hidden: self.hidden,
            act: self.activation,
            dropout: self.dropout,
            down_init: WeightInit::TruncNormal,
            up_init: self.up_init,
            placement: Placement::ParallelMlp { scale: self.scale },
        }
    }
}

impl AdaptformerOriginalConfig {
    /// The bottleneck spec.
    pub fn spec(&self) -> Spec {
        Spec {
            hidden: self.hidden,
            act: self.activation,
            dropout: self.dropout,
            down_init: self.down_init,
            up_init: self.up_init,
            placement: Placement::ParallelMlp { scale: self.scale },
        }
    }
}

/// Checks the fields both variants share, in this order: hidden, scale, dropout.
fn validate(method: &str, hidden: usize, scale: f64, dropout: f64) -> anyhow::Result<()> {
    check_positive(method, "hidden", hidden)?;
    check_finite(method, "scale", scale)?;
    check_rate(method, "dropout", dropout)
}

impl AdapterMethod for AdaptformerConfig {
    fn name(&self) -> &'static str {
        "adaptformer"
    }

    fn block_bottleneck(&self) -> Option<Spec> {
        Some(self.spec())
    }

    fn validate(&self) -> anyhow::Result<()> {
        validate(self.name(), self.hidden, self.scale, self.dropout)
    }
}

impl AdapterMethod for AdaptformerOriginalConfig {
    fn name(&self) -> &'static str {
        "adaptformer_original"
    }

    fn block_bottleneck(&self) -> Option<Spec> {
        Some(self.spec())
    }

    fn validate(&self) -> anyhow::Result<()> {
        validate(self.name(), self.hidden, self.scale, self.dropout)
    }
}
