//! Adapter methods, selected by name (`method:`) with their hyperparameters. Each method
//! is its own module; this one holds the tagged config, the trainable-parameter formulas
//! and the hooks the ViT calls.
//!
//! Trainable tensor names (timm names where a timm tensor exists):
//! | method | tensors (besides `head.weight [C, D]`, `head.bias [C]`) |
//! |---|---|
//! | `seq_adapter`, `adaptformer`, `adaptformer_original`, `shared_par_adapter`, `houlsby` | `blocks.{i}.adapter.fc1.{weight [r,D], bias [r]}`, `blocks.{i}.adapter.fc2.{weight [D,r], bias [D]}` |
//! | `lora` | `blocks.{i}.attn.lora_{q,k,v}.a [r, D]`, `.b [D, r]` |
//! | `vpt_shallow` / `vpt_deep` | `prompt_embed [1, L, D]` / `blocks.{i}.prompt_embed [1, L, D]` |
//! | `bitfit` | the timm biases, see [`bitfit`] |
//! | `ssf` | `{site}.ssf_scale`, `{site}.ssf_shift`, see [`ssf`] |
//! | `linear` | none |
//! | `full` | every backbone tensor (timm names) |

pub mod adaptformer;
pub mod bitfit;
pub mod bottleneck;
pub mod full;
pub mod houlsby;
pub mod linear;
pub mod lora;
pub mod seq_adapter;
pub mod shared_par;
pub mod ssf;
pub mod vpt;

pub use adaptformer::{AdaptformerConfig, AdaptformerOriginalConfig};
pub use houlsby::HoulsbyConfig;
pub use lora::{LoraConfig, QkvTarget};
pub use seq_adapter::SeqAdapterConfig;
pub use shared_par::SharedParConfig;
pub use vpt::{PromptInit, VptConfig};

use crate::nn::params::ParamStore;
use crate::nn::vit::{Fwd, VitConfig};
use candle_core::{Device, Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which adapter method, with its hyperparameters (`method: <name>` + fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AdapterConfig {
    /// Bottleneck after each block (official iDAT default).
    SeqAdapter(SeqAdapterConfig),
    /// AdaptFormer, iDAT variant.
    Adaptformer(AdaptformerConfig),
    /// AdaptFormer as published.
    AdaptformerOriginal(AdaptformerOriginalConfig),
    /// One scaled bottleneck parallel to both branches.
    SharedParAdapter(SharedParConfig),
    /// Houlsby/NOAH sequential adapter on the MLP branch.
    Houlsby(HoulsbyConfig),
    /// LoRA on the qkv projection.
    Lora(LoraConfig),
    /// Prompt tokens at the input.
    VptShallow(VptConfig),
    /// Prompt tokens at every block.
    VptDeep(VptConfig),
    /// Biases only.
    Bitfit,
    /// Per-channel scale and shift.
    Ssf,
    /// Head only.
    Linear,
    /// Everything.
    Full,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig::SeqAdapter(SeqAdapterConfig::default())
    }
}

impl AdapterConfig {
    /// The method name as written in configs.
    pub fn name(&self) -> &'static str {
        match self {
            AdapterConfig::SeqAdapter(_) => "seq_adapter",
            AdapterConfig::Adaptformer(_) => "adaptformer",
            AdapterConfig::AdaptformerOriginal(_) => "adaptformer_original",
            AdapterConfig::SharedParAdapter(_) => "shared_par_adapter",
            AdapterConfig::Houlsby(_) => "houlsby",
            AdapterConfig::Lora(_) => "lora",
            AdapterConfig::VptShallow(_) => "vpt_shallow",
            AdapterConfig::VptDeep(_) => "vpt_deep",
            AdapterConfig::Bitfit => "bitfit",
            AdapterConfig::Ssf => "ssf",
            AdapterConfig::Linear => "linear",
            AdapterConfig::Full => "full",
        }
    }

    /// Checks the hyperparameters, naming each bad field.
    pub fn validate(&self, cfg: &VitConfig) -> anyhow::Result<()> {
        let m = self.name();
        let positive = |field: &str, v: usize| -> anyhow::Result<()> {
            anyhow::ensure!(v > 0, "adapter `{m}`: `{field}` must be > 0");
            Ok(())
        };
        let rate = |field: &str, v: f64| -> anyhow::Result<()> {
            anyhow::ensure!(
                (0.0..1.0).contains(&v),
                "adapter `{m}`: `{field}` must be in [0, 1) (got {v})"
            );
            Ok(())
        };
        let finite = |field: &str, v: f64| -> anyhow::Result<()> {
            anyhow::ensure!(
                v.is_finite(),
                "adapter `{m}`: `{field}` must be finite (got {v})"
            );
            Ok(())
        };
        match self {
            AdapterConfig::SeqAdapter(c) => positive("hidden", c.hidden)?,
            AdapterConfig::Adaptformer(c) => {
                positive("hidden", c.hidden)?;
                finite("scale", c.scale)?;
                rate("dropout", c.dropout)?;
            }
            AdapterConfig::AdaptformerOriginal(c) => {
                positive("hidden", c.hidden)?;
                finite("scale", c.scale)?;
                rate("dropout", c.dropout)?;
            }
            AdapterConfig::SharedParAdapter(c) => {
                positive("hidden", c.hidden)?;
                finite("scale", c.scale)?;
            }
            AdapterConfig::Houlsby(c) => positive("hidden", c.hidden)?,
            AdapterConfig::Lora(c) => {
                positive("rank", c.rank)?;
                if let Some(a) = c.alpha {
                    finite("alpha", a)?;
                }
                anyhow::ensure!(
                    !c.targets.is_empty(),
                    "adapter `lora`: `targets` must name at least one of q, k, v"
                );
            }
            AdapterConfig::VptShallow(c) | AdapterConfig::VptDeep(c) => {
                positive("length", c.length)?
            }
            AdapterConfig::Bitfit
            | AdapterConfig::Ssf
            | AdapterConfig::Linear
            | AdapterConfig::Full => {}
        }
        let _ = cfg;
        Ok(())
    }

    /// Trainable scalars of the method itself (head excluded), from the config alone.
    pub fn count_method(&self, cfg: &VitConfig) -> usize {
        let d = cfg.embed_dim;
        match self {
            AdapterConfig::SeqAdapter(c) => cfg.depth * bottleneck::count(d, c.hidden),
            AdapterConfig::Adaptformer(c) => cfg.depth * bottleneck::count(d, c.hidden),
            AdapterConfig::AdaptformerOriginal(c) => cfg.depth * bottleneck::count(d, c.hidden),
            AdapterConfig::SharedParAdapter(c) => cfg.depth * bottleneck::count(d, c.hidden),
            AdapterConfig::Houlsby(c) => cfg.depth * bottleneck::count(d, c.hidden),
            AdapterConfig::Lora(c) => c.count(cfg),
            AdapterConfig::VptShallow(c) => c.length * d,
            AdapterConfig::VptDeep(c) => cfg.depth * c.length * d,
            AdapterConfig::Bitfit => bitfit::count(cfg),
            AdapterConfig::Ssf => ssf::count(cfg),
            AdapterConfig::Linear => linear::count(),
            AdapterConfig::Full => full::count(cfg),
        }
    }

    /// All trainable scalars: the method's plus the head's `(D + 1) * classes`.
    pub fn count_trainable(&self, cfg: &VitConfig) -> usize {
        self.count_method(cfg) + (cfg.embed_dim + 1) * cfg.num_classes
    }

    fn bottleneck_spec(&self) -> Option<bottleneck::Spec> {
        match self {
            AdapterConfig::SeqAdapter(c) => Some(c.spec()),
            AdapterConfig::Adaptformer(c) => Some(c.spec()),
            AdapterConfig::AdaptformerOriginal(c) => Some(c.spec()),
            AdapterConfig::SharedParAdapter(c) => Some(c.spec()),
            AdapterConfig::Houlsby(c) => Some(c.spec()),
            _ => None,
        }
    }
}

/// Creates the method's parameters in `store` (which already holds the frozen backbone).
pub(crate) fn add_params(
    a: &AdapterConfig,
    cfg: &VitConfig,
    store: &mut ParamStore,
    seed: u64,
    dev: &Device,
) -> Result<()> {
    if let Some(spec) = a.bottleneck_spec() {
        for i in 0..cfg.depth {
            bottleneck::add(
                store,
                &format!("blocks.{i}.adapter"),
                cfg.embed_dim,
                &spec,
                seed,
                dev,
            )?;
        }
        return Ok(());
    }
    match a {
        AdapterConfig::Lora(c) => c.add(cfg, store, seed, dev),
        AdapterConfig::VptShallow(c) => c.add(cfg, false, store, seed, dev),
        AdapterConfig::VptDeep(c) => c.add(cfg, true, store, seed, dev),
        AdapterConfig::Bitfit => bitfit::add(cfg, store),
        AdapterConfig::Ssf => ssf::add(cfg, store, seed, dev),
        AdapterConfig::Full => full::add(cfg, store),
        _ => Ok(()),
    }
}

/// Whether the method hooks into a block's attention half (LayerNorm 1, qkv, attention,
/// proj), so that half cannot run as one frozen op.
pub(crate) fn hooks_attn_half(a: &AdapterConfig) -> bool {
    matches!(a, AdapterConfig::Ssf | AdapterConfig::Lora(_))
}

/// Whether the method hooks into a block's MLP half (LayerNorm 2, fc1, GELU, fc2, the
/// branch before its residual add).
pub(crate) fn hooks_mlp_half(a: &AdapterConfig) -> bool {
    matches!(a, AdapterConfig::Ssf | AdapterConfig::Houlsby(_))
}

/// Side branch added to `h` after attention: `s * A(x)` for `shared_par_adapter`.
pub(crate) fn parallel_attn(
    f: &mut Fwd,
    a: &AdapterConfig,
    i: usize,
    x: &Tensor,
) -> Result<Option<Tensor>> {
    match a {
        AdapterConfig::SharedParAdapter(c) => {
            let prefix = format!("blocks.{i}.adapter");
            let act = bottleneck::Activation::Gelu;
            bottleneck::apply(f, &prefix, x, act, 0.0, c.scale, false).map(Some)
        }
        _ => Ok(None),
    }
}

/// Side branch added to the block output, fed with `h`: `s * A(h)` for the AdaptFormer
/// variants and `shared_par_adapter`.
pub(crate) fn parallel_mlp(
    f: &mut Fwd,
    a: &AdapterConfig,
    i: usize,
    h: &Tensor,
) -> Result<Option<Tensor>> {
    let (scale, act, dropout) = match a {
        AdapterConfig::Adaptformer(c) => (c.scale, c.activation, c.dropout),
        AdapterConfig::AdaptformerOriginal(c) => (c.scale, c.activation, c.dropout),
        AdapterConfig::SharedParAdapter(c) => (c.scale, bottleneck::Activation::Gelu, 0.0),
        _ => return Ok(None),
    };
    let prefix = format!("blocks.{i}.adapter");
    bottleneck::apply(f, &prefix, h, act, dropout, scale, false).map(Some)
}
