//! Adapter methods, selected by name (`method:`) with their hyperparameters. Each method
//! is its own module implementing `AdapterMethod` (parameters, count formula, and the typed
//! hooks it places into the model, built once from its parameters); this one holds the
//! tagged config, the trait and the [`registry`] of all methods.
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

use crate::config::VitConfig;
use crate::modules::Hooks;
use crate::ops::Kernels;
use crate::params::ParamStore;
use candle_core::{Device, Result};
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
    /// The method behind this config: the one place a config variant meets its
    /// [`AdapterMethod`] implementation.
    pub(crate) fn method(&self) -> Box<dyn AdapterMethod> {
        match self.clone() {
            AdapterConfig::SeqAdapter(c) => Box::new(c),
            AdapterConfig::Adaptformer(c) => Box::new(c),
            AdapterConfig::AdaptformerOriginal(c) => Box::new(c),
            AdapterConfig::SharedParAdapter(c) => Box::new(c),
            AdapterConfig::Houlsby(c) => Box::new(c),
            AdapterConfig::Lora(c) => Box::new(c),
            AdapterConfig::VptShallow(c) => Box::new(vpt::Vpt::shallow(c)),
            AdapterConfig::VptDeep(c) => Box::new(vpt::Vpt::deep(c)),
            AdapterConfig::Bitfit => Box::new(bitfit::Bitfit),
            AdapterConfig::Ssf => Box::new(ssf::Ssf),
            AdapterConfig::Linear => Box::new(linear::Linear),
            AdapterConfig::Full => Box::new(full::Full),
        }
    }

    /// The method name as written in configs.
    pub fn name(&self) -> &'static str {
        self.method().name()
    }

    /// Checks the hyperparameters, naming each bad field.
    pub fn validate(&self, cfg: &VitConfig) -> anyhow::Result<()> {
        let _ = cfg;
        self.method().validate()
    }

    /// Trainable scalars of the method itself (head excluded), from the config alone.
    pub fn count_method(&self, cfg: &VitConfig) -> usize {
        self.method().count(cfg)
    }

    /// All trainable scalars: the method's plus the head's `(D + 1) * classes`.
    pub fn count_trainable(&self, cfg: &VitConfig) -> usize {
        self.count_method(cfg) + (cfg.embed_dim + 1) * cfg.num_classes
    }
}

/// Every adapter method at its default hyperparameters, one per [`AdapterConfig`] variant,
/// in declaration order. The tests run every method through it (fused == composed,
/// gradients, parameter counts); a unit test checks it against the `method` names the
/// config schema accepts, so a method missing here fails that test.
pub fn registry() -> Vec<AdapterConfig> {
    vec![
        AdapterConfig::SeqAdapter(SeqAdapterConfig::default()),
        AdapterConfig::Adaptformer(AdaptformerConfig::default()),
        AdapterConfig::AdaptformerOriginal(AdaptformerOriginalConfig::default()),
        AdapterConfig::SharedParAdapter(SharedParConfig::default()),
        AdapterConfig::Houlsby(HoulsbyConfig::default()),
        AdapterConfig::Lora(LoraConfig::default()),
        AdapterConfig::VptShallow(VptConfig::default()),
        AdapterConfig::VptDeep(VptConfig::default()),
        AdapterConfig::Bitfit,
        AdapterConfig::Ssf,
        AdapterConfig::Linear,
        AdapterConfig::Full,
    ]
}

/// One adapter method: its name, parameters and the hooks it places into the model
/// (`crate::modules::hooks`). A method made of one bottleneck per block states only
/// [`AdapterMethod::block_bottleneck`] (with its placement); the parameters, their count and
/// the hooks then follow from it.
///
/// To add a method: a config type (or unit struct) implementing this trait in its own
/// module, a variant of [`AdapterConfig`], its arm in [`AdapterConfig::method`] and its
/// entry in [`registry`].
pub(crate) trait AdapterMethod: std::fmt::Debug + Send + Sync {
    /// The method name as written in configs (`method:`).
    fn name(&self) -> &'static str;

    /// The spec of the method's one bottleneck per block (`blocks.{i}.adapter`), for the
    /// methods built from one (Houlsby, the sequential adapter, AdaptFormer, ...): the
    /// default [`AdapterMethod::count`], [`AdapterMethod::add_params`] and
    /// [`AdapterMethod::hooks`] then create, count and place them. None: the method has no
    /// per-block bottleneck.
    fn block_bottleneck(&self) -> Option<bottleneck::Spec> {
        None
    }

    /// Trainable scalars of the method itself (head excluded); by default those of its
    /// per-block bottlenecks ([`AdapterMethod::block_bottleneck`]), else none.
    fn count(&self, cfg: &VitConfig) -> usize {
        self.block_bottleneck()
            .map_or(0, |spec| bottleneck::count_blocks(cfg, spec.hidden))
    }

    /// Checks the hyperparameters; errors name the method and the field.
    fn validate(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Creates the method's parameters in `store` (which already holds the frozen
    /// backbone), or makes backbone tensors trainable; by default its per-block
    /// bottlenecks ([`AdapterMethod::block_bottleneck`]), else nothing.
    fn add_params(
        &self,
        cfg: &VitConfig,
        store: &mut ParamStore,
        seed: u64,
        dev: &Device,
    ) -> Result<()> {
        match self.block_bottleneck() {
            Some(spec) => bottleneck::add_blocks(store, cfg, &spec, seed, dev),
            None => Ok(()),
        }
    }

    /// The hooks of the method, built once from its parameters in `store` (created by
    /// [`AdapterMethod::add_params`]) with the model's `kernels`; by default its per-block
    /// bottlenecks at their placement, else none. A hook that reaches inside a block half
    /// keeps that half from running as the fused frozen op (which calls no hook): the model
    /// sees that from where the hook is placed.
    ///
    /// # Errors
    /// A parameter missing from `store`, named.
    fn hooks(&self, cfg: &VitConfig, store: &ParamStore, kernels: &Kernels) -> Result<Hooks> {
        match self.block_bottleneck() {
            Some(spec) => bottleneck::block_hooks(store, cfg, &spec, kernels),
            None => Ok(Hooks::none(cfg.depth)),
        }
    }
}

/// `adapter `{method}`: `{field}` must be > 0` unless `v > 0`.
pub(crate) fn check_positive(method: &str, field: &str, v: usize) -> anyhow::Result<()> {
    anyhow::ensure!(v > 0, "adapter `{method}`: `{field}` must be > 0");
    Ok(())
}

/// An error unless `v` is in [0, 1), naming the method and field.
pub(crate) fn check_rate(method: &str, field: &str, v: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&v),
        "adapter `{method}`: `{field}` must be in [0, 1) (got {v})"
    );
    Ok(())
}

/// An error unless `v` is finite, naming the method and field.
pub(crate) fn check_finite(method: &str, field: &str, v: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        v.is_finite(),
        "adapter `{method}`: `{field}` must be finite (got {v})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry holds every method the config schema accepts, once, in schema order,
    /// and each method's name is its serde tag.
    #[test]
    fn registry_holds_every_method_of_the_schema() {
        let schema = schemars::schema_for!(AdapterConfig);
        let tags: Vec<String> = schema.as_value()["oneOf"]
            .as_array()
            .expect("AdapterConfig schema is a oneOf")
            .iter()
            .map(|v| {
                v["properties"]["method"]["const"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let names: Vec<&str> = registry().iter().map(|a| a.name()).collect();
        assert_eq!(names, tags);
        for a in registry() {
            assert_eq!(serde_json::to_value(&a).unwrap()["method"], a.name());
        }
    }
}
