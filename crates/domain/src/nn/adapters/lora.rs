//! `lora` on the qkv projection: `qkv(x) + scaling * [B_q A_q x | B_k A_k x | B_v A_v x]`
//! for the chosen targets (others get no update). A `[r, D]` kaiming-uniform(a=sqrt 5),
//! B `[D, r]` zero. `scaling = alpha / r` when `alpha` is set, 1 when it is not (the NOAH
//! variant, the default). Parameters `blocks.{i}.attn.lora_{q,k,v}.a` / `.b`.

use super::{check_finite, check_positive, AdapterMethod, Halves};
use crate::nn::init::{self, Init};
use crate::nn::params::ParamStore;
use crate::nn::vit::{Fwd, VitConfig};
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

    /// An update of qkv: inside the attention half.
    fn halves(&self) -> Halves {
        Halves::ATTN
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

    /// `scaling * [B_q A_q x | B_k A_k x | B_v A_v x]`, zeros for targets not chosen.
    fn qkv_delta(&self, f: &mut Fwd, i: usize, x: &Tensor) -> Result<Option<Tensor>> {
        let mut parts = Vec::with_capacity(3);
        for t in QkvTarget::ALL {
            let part = if self.has(t) {
                let pre = format!("blocks.{i}.attn.lora_{}", t.letter());
                let h = crate::nn::ops::linear(x, f.p.get(&format!("{pre}.a"))?, None)?;
                let u = crate::nn::ops::linear(&h, f.p.get(&format!("{pre}.b"))?, None)?;
                (u * self.scaling())?
            } else {
                x.zeros_like()?
            };
            parts.push(part);
        }
        Ok(Some(Tensor::cat(&parts, candle_core::D::Minus1)?))
    }
}
