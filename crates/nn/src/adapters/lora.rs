//! `lora` on the qkv projection: `qkv(x) + scaling * [B_q A_q x | B_k A_k x | B_v A_v x]`
//! for the chosen targets (others get no update). A `[r, D]` kaiming-uniform(a=sqrt 5),
//! B `[D, r]` zero. `scaling = alpha / r` when `alpha` is set, 1 when it is not (the NOAH
//! variant, the default). Parameters `blocks.{i}.attn.lora_{q,k,v}.a` / `.b`.

use super::{check_finite, check_positive, AdapterMethod};
use crate::config::VitConfig;
use crate::init::{self, Init};
use crate::masks::Masks;
use crate::modules::{Hook, Hooks, Slot};
use crate::ops::{self, Kernels};
use crate::params::ParamStore;
use candle_core::{DType, Device, Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One of the three qkv projections.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QkvTarget {
    /// Query.
    Q,
    /// Key.
    K,
    /// Value.
    V,
}

impl QkvTarget {
    /// All three, in qkv order.
    pub const ALL: [QkvTarget; 3] = [QkvTarget::Q, QkvTarget::K, QkvTarget::V];

    fn letter(self) -> &'static str {
        match self {
            QkvTarget::Q => "q",
            QkvTarget::K => "k",
            QkvTarget::V => "v",
        }
    }
}

fn r8() -> usize {
    8
}
fn all_targets() -> Vec<QkvTarget> {
    QkvTarget::ALL.to_vec()
}

/// Hyperparameters of `lora`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r (default 8).
    #[serde(default = "r8")]
    pub rank: usize,
    /// Scaling numerator: update scaled by alpha / r; absent = no scaling (NOAH).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Which of q, k, v get an update (default all three).
    #[serde(default = "all_targets")]
    pub targets: Vec<QkvTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: None,
            targets: all_targets(),
        }
    }
}

impl LoraConfig {
    fn scaling(&self) -> f64 {
        self.alpha.map(|a| a / self.rank as f64).unwrap_or(1.0)
    }

    fn has(&self, t: QkvTarget) -> bool {
        self.targets.contains(&t)
    }

    /// Trainable scalars.
    pub fn count(&self, cfg: &VitConfig) -> usize {
        let targets = QkvTarget::ALL.iter().filter(|t| self.has(**t)).count();
        cfg.depth * targets * 2 * self.rank * cfg.embed_dim
    }
}

impl AdapterMethod for LoraConfig {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn count(&self, cfg: &VitConfig) -> usize {
        LoraConfig::count(self, cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_positive(self.name(), "rank", self.rank)?;
        if let Some(a) = self.alpha {
            check_finite(self.name(), "alpha", a)?;
        }
        anyhow::ensure!(
            !self.targets.is_empty(),
            "adapter `lora`: `targets` must name at least one of q, k, v"
        );
        Ok(())
    }

    fn add_params(
        &self,
        cfg: &VitConfig,
        store: &mut ParamStore,
        seed: u64,
        dev: &Device,
    ) -> Result<()> {
        let (d, r) = (cfg.embed_dim, self.rank);
        for i in 0..cfg.depth {
            for t in QkvTarget::ALL.into_iter().filter(|t| self.has(*t)) {
                let pre = format!("blocks.{i}.attn.lora_{}", t.letter());
                let a = init::tensor(
                    Init::KaimingUniformSqrt5 { fan_in: d },
                    &[r, d],
                    seed,
                    &format!("{pre}.a"),
                    dev,
                )?;
                store.insert_trainable(format!("{pre}.a"), &a)?;
                store.insert_trainable(
                    format!("{pre}.b"),
                    &Tensor::zeros((d, r), DType::F32, dev)?,
                )?;
            }
        }
        Ok(())
    }

    /// Block i's update of qkv, [`LoraQkv`], from `blocks.{i}.attn.lora_{q,k,v}`.
    fn hooks(&self, cfg: &VitConfig, store: &ParamStore, _: &Kernels) -> Result<Hooks> {
        let mut hooks = Hooks::none(cfg.depth);
        for (i, block) in hooks.blocks.iter_mut().enumerate() {
            let mut parts = [None, None, None];
            for (slot, t) in parts.iter_mut().zip(QkvTarget::ALL) {
                if self.has(t) {
                    let pre = format!("blocks.{i}.attn.lora_{}", t.letter());
                    let a = store.get(&format!("{pre}.a"))?.clone();
                    *slot = Some((a, store.get(&format!("{pre}.b"))?.clone()));
                }
            }
            block.qkv_delta = Slot::new(LoraQkv {
                parts,
                scaling: self.scaling(),
            });
        }
        Ok(hooks)
    }
}

/// One block's LoRA update of qkv: `scaling * [B_q A_q x | B_k A_k x | B_v A_v x]`, zeros
/// for the targets not chosen.
#[derive(Clone, Debug)]
pub struct LoraQkv {
    /// `(A [r, D], B [D, r])` of q, k and v, where chosen.
    parts: [Option<(Tensor, Tensor)>; 3],
    scaling: f64,
}

impl Hook for LoraQkv {
    fn forward(&self, x: &Tensor, _: &mut Masks) -> Result<Tensor> {
        let mut out = Vec::with_capacity(3);
        for part in &self.parts {
            out.push(match part {
                Some((a, b)) => {
                    let h = ops::linear(x, a, None)?;
                    (ops::linear(&h, b, None)? * self.scaling)?
                }
                None => x.zeros_like()?,
            });
        }
        Tensor::cat(&out, candle_core::D::Minus1)
    }
}
