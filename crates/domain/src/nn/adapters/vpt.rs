//! Visual prompt tuning. `vpt_shallow`: `length` learned tokens inserted after the class
//! token (after the position embedding is added), kept through all blocks.
//! `vpt_deep`: block i's own prompts replace the prompt tokens before block i (block 0's
//! are the inserted ones). CLS pooling is unchanged. Init `uniform` (default, VPT's
//! xavier-style U(±sqrt(6 / (3·p² + D)))) or `trunc_normal` (std 0.02). VPT's prompt
//! dropout is not applied. Parameters: shallow `prompt_embed [1, L, D]`, deep
//! `blocks.{i}.prompt_embed [1, L, D]`.

use super::AdapterConfig;
use crate::nn::init::{self, Init};
use crate::nn::params::ParamStore;
use crate::nn::vit::{Fwd, VitConfig};
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
    pub(crate) fn add(
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

fn prompts(f: &Fwd, name: &str, b: usize) -> Result<Tensor> {
    let p = f.p.get(name)?;
    let (_, l, d) = p.dims3()?;
    p.broadcast_as((b, l, d))
}

/// Inserts the prompts after the class token (VPT methods only).
pub(crate) fn insert(f: &mut Fwd, a: &AdapterConfig, x: &Tensor) -> Result<Tensor> {
    let name = match a {
        AdapterConfig::VptShallow(_) => "prompt_embed",
        AdapterConfig::VptDeep(_) => "blocks.0.prompt_embed",
        _ => return Ok(x.clone()),
    };
    let (b, n, _) = x.dims3()?;
    let p = prompts(f, name, b)?;
    Tensor::cat(&[&x.narrow(1, 0, 1)?, &p, &x.narrow(1, 1, n - 1)?], 1)
}

/// Before block `i > 0` of `vpt_deep`, replaces the prompt tokens by block i's.
pub(crate) fn replace(f: &mut Fwd, a: &AdapterConfig, i: usize, x: &Tensor) -> Result<Tensor> {
    let AdapterConfig::VptDeep(c) = a else {
        return Ok(x.clone());
    };
    if i == 0 {
        return Ok(x.clone());
    }
    let (b, n, _) = x.dims3()?;
    let l = c.length;
    let p = prompts(f, &format!("blocks.{i}.prompt_embed"), b)?;
    Tensor::cat(
        &[&x.narrow(1, 0, 1)?, &p, &x.narrow(1, 1 + l, n - 1 - l)?],
        1,
    )
}
