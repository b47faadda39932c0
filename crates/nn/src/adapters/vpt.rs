//! Visual prompt tuning. `vpt_shallow`: `length` learned tokens inserted after the class
//! token (after the position embedding is added), kept through all blocks.
//! `vpt_deep`: block i's own prompts replace the prompt tokens before block i (block 0's
//! are the inserted ones). CLS pooling is unchanged. Init `uniform` (default, VPT's
//! xavier-style U(±sqrt(6 / (3·p² + D)))) or `trunc_normal` (std 0.02). VPT's prompt
//! dropout is not applied. Parameters: shallow `prompt_embed [1, L, D]`, deep
//! `blocks.{i}.prompt_embed [1, L, D]`.

use super::{check_positive, AdapterMethod};
use crate::config::VitConfig;
use crate::init::{self, Init};
use crate::masks::Masks;
use crate::modules::{Hook, Hooks, Slot};
use crate::ops::Kernels;
use crate::params::ParamStore;
use candle_core::{Device, Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prompt initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptInit {
    /// U(±sqrt(6 / (3·patch² + D))) as in the VPT code.
    Uniform,
    /// trunc-normal(std 0.02).
    TruncNormal,
}

fn l10() -> usize {
    10
}
fn uniform() -> PromptInit {
    PromptInit::Uniform
}

/// Hyperparameters of `vpt_shallow` / `vpt_deep`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VptConfig {
    /// Prompt tokens per insertion (default 10).
    #[serde(default = "l10")]
    pub length: usize,
    /// Init (default uniform).
    #[serde(default = "uniform")]
    pub init: PromptInit,
}

impl Default for VptConfig {
    fn default() -> Self {
        VptConfig {
            length: 10,
            init: PromptInit::Uniform,
        }
    }
}

impl VptConfig {
    fn add(
        &self,
        cfg: &VitConfig,
        deep: bool,
        store: &mut ParamStore,
        seed: u64,
        dev: &Device,
    ) -> Result<()> {
        let d = cfg.embed_dim;
        let init = match self.init {
            PromptInit::Uniform => {
                let fan = 3 * cfg.patch_size * cfg.patch_size + d;
                Init::Uniform {
                    bound: (6.0 / fan as f64).sqrt(),
                }
            }
            PromptInit::TruncNormal => Init::TruncNormal { std: 0.02 },
        };
        let names: Vec<String> = if deep {
            (0..cfg.depth)
                .map(|i| format!("blocks.{i}.prompt_embed"))
                .collect()
        } else {
            vec!["prompt_embed".to_string()]
        };
        for n in names {
            store.insert_trainable(
                &n,
                &init::tensor(init, &[1, self.length, d], seed, &n, dev)?,
            )?;
        }
        Ok(())
    }
}

/// `vpt_shallow` or `vpt_deep` with its hyperparameters.
#[derive(Clone, Debug)]
pub struct Vpt {
    /// Prompt length and init.
    pub config: VptConfig,
    /// `vpt_deep`: every block has its own prompts.
    pub deep: bool,
}

impl Vpt {
    /// `vpt_shallow`.
    pub fn shallow(config: VptConfig) -> Self {
        Vpt {
            config,
            deep: false,
        }
    }

    /// `vpt_deep`.
    pub fn deep(config: VptConfig) -> Self {
        Vpt { config, deep: true }
    }
}

impl AdapterMethod for Vpt {
    fn name(&self) -> &'static str {
        if self.deep {
            "vpt_deep"
        } else {
            "vpt_shallow"
        }
    }

    fn count(&self, cfg: &VitConfig) -> usize {
        let per_insertion = self.config.length * cfg.embed_dim;
        if self.deep {
            cfg.depth * per_insertion
        } else {
            per_insertion
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_positive(self.name(), "length", self.config.length)
    }

    fn add_params(
        &self,
        cfg: &VitConfig,
        store: &mut ParamStore,
        seed: u64,
        dev: &Device,
    ) -> Result<()> {
        self.config.add(cfg, self.deep, store, seed, dev)
    }

    /// The prompts (block 0's for `vpt_deep`) inserted after the position embedding; for
    /// `vpt_deep`, block i's replacing them before every block `i > 0`.
    fn hooks(&self, cfg: &VitConfig, store: &ParamStore, _: &Kernels) -> Result<Hooks> {
        let mut hooks = Hooks::none(cfg.depth);
        let first = if self.deep {
            "blocks.0.prompt_embed"
        } else {
            "prompt_embed"
        };
        hooks.model.after_embed = Slot::new(Prompts::new(store, first, false)?);
        if self.deep {
            for (i, b) in hooks.blocks.iter_mut().enumerate().skip(1) {
                let name = format!("blocks.{i}.prompt_embed");
                b.before = Slot::new(Prompts::new(store, &name, true)?);
            }
        }
        Ok(hooks)
    }
}

/// Learned prompt tokens `[1, L, D]` placed after the class token: inserted, or replacing
/// the `L` prompt tokens already there.
#[derive(Clone, Debug)]
pub struct Prompts {
    prompts: Tensor,
    replace: bool,
}

impl Prompts {
    /// The prompts `name` of `store`; `replace`: they replace the prompt tokens after the
    /// class token instead of being inserted there.
    ///
    /// # Errors
    /// A tensor missing from `store` (named) or not `[1, L, D]`.
    pub fn new(store: &ParamStore, name: &str, replace: bool) -> Result<Self> {
        let prompts = store.get(name)?.clone();
        prompts.dims3()?;
        Ok(Prompts { prompts, replace })
    }
}

impl Hook for Prompts {
    fn forward(&self, x: &Tensor, _: &mut Masks) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (_, l, d) = self.prompts.dims3()?;
        let p = self.prompts.broadcast_as((b, l, d))?;
        let rest = if self.replace {
            x.narrow(1, 1 + l, n - 1 - l)?
        } else {
            x.narrow(1, 1, n - 1)?
        };
        Tensor::cat(&[&x.narrow(1, 0, 1)?, &p, &rest], 1)
    }
}
