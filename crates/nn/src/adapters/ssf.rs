//! `ssf` (Scale and Shift deep Features): `x * scale + shift` per channel after each op, as
//! in the SSF code: after the patch embedding, and in every block after `norm1`,
//! `attn.qkv` (3D channels), `attn.proj`, `norm2`, `mlp.fc1` (before GELU, hidden
//! channels) and `mlp.fc2`, and after the final `norm`. Scale init N(1, 0.02²), shift
//! N(0, 0.02²). Parameters `{site}.ssf_scale` / `{site}.ssf_shift` with site = the timm
//! module name (`patch_embed`, `blocks.{i}.attn.qkv`, `norm`, ...).

use super::AdapterMethod;
use crate::config::VitConfig;
use crate::init::{self, Init};
use crate::masks::Masks;
use crate::modules::{Hook, Hooks, Slot};
use crate::ops::Kernels;
use crate::params::ParamStore;
use candle_core::{Device, Result, Tensor};

/// `(site, channels)` of every scale/shift pair.
pub fn sites(cfg: &VitConfig) -> Vec<(String, usize)> {
    let (d, h) = (cfg.embed_dim, cfg.mlp_hidden());
    let mut v = vec![("patch_embed".to_string(), d)];
    for i in 0..cfg.depth {
        for (s, c) in [
            ("norm1", d),
            ("attn.qkv", 3 * d),
            ("attn.proj", d),
            ("norm2", d),
            ("mlp.fc1", h),
            ("mlp.fc2", d),
        ] {
            v.push((format!("blocks.{i}.{s}"), c));
        }
    }
    v.push(("norm".to_string(), d));
    v
}

/// Trainable scalars (head excluded).
pub fn count(cfg: &VitConfig) -> usize {
    2 * sites(cfg).iter().map(|(_, c)| c).sum::<usize>()
}

/// The `ssf` method (no hyperparameters).
#[derive(Clone, Copy, Debug)]
pub struct Ssf;

impl AdapterMethod for Ssf {
    fn name(&self) -> &'static str {
        "ssf"
    }

    fn count(&self, cfg: &VitConfig) -> usize {
        count(cfg)
    }

    fn add_params(
        &self,
        cfg: &VitConfig,
        store: &mut ParamStore,
        seed: u64,
        dev: &Device,
    ) -> Result<()> {
        add(cfg, store, seed, dev)
    }

    /// A [`ScaleShift`] at every site.
    fn hooks(&self, cfg: &VitConfig, store: &ParamStore, _: &Kernels) -> Result<Hooks> {
        let at = |site: &str| ScaleShift::new(store, site).map(Slot::new);
        let mut hooks = Hooks::none(cfg.depth);
        hooks.model.patch_embed = at("patch_embed")?;
        hooks.model.norm = at("norm")?;
        for (i, b) in hooks.blocks.iter_mut().enumerate() {
            b.norm1 = at(&format!("blocks.{i}.norm1"))?;
            b.qkv = at(&format!("blocks.{i}.attn.qkv"))?;
            b.proj = at(&format!("blocks.{i}.attn.proj"))?;
            b.norm2 = at(&format!("blocks.{i}.norm2"))?;
            b.fc1 = at(&format!("blocks.{i}.mlp.fc1"))?;
            b.fc2 = at(&format!("blocks.{i}.mlp.fc2"))?;
        }
        Ok(hooks)
    }
}

/// `x * scale + shift` per channel (the last dimension) at one site.
#[derive(Clone, Debug)]
pub struct ScaleShift {
    scale: Tensor,
    shift: Tensor,
}

impl ScaleShift {
    /// `{site}.ssf_scale` and `{site}.ssf_shift` of `store`.
    ///
    /// # Errors
    /// A tensor missing from `store`, named.
    pub fn new(store: &ParamStore, site: &str) -> Result<Self> {
        Ok(ScaleShift {
            scale: store.get(&format!("{site}.ssf_scale"))?.clone(),
            shift: store.get(&format!("{site}.ssf_shift"))?.clone(),
        })
    }
}

impl Hook for ScaleShift {
    fn forward(&self, x: &Tensor, _: &mut Masks) -> Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

fn add(cfg: &VitConfig, store: &mut ParamStore, seed: u64, dev: &Device) -> Result<()> {
    for (site, c) in sites(cfg) {
        let n = format!("{site}.ssf_scale");
        store.insert_trainable(
            &n,
            &init::tensor(
                Init::Normal {
                    mean: 1.0,
                    std: 0.02,
                },
                &[c],
                seed,
                &n,
                dev,
            )?,
        )?;
        let n = format!("{site}.ssf_shift");
        store.insert_trainable(
            &n,
            &init::tensor(
                Init::Normal {
                    mean: 0.0,
                    std: 0.02,
                },
                &[c],
                seed,
                &n,
                dev,
            )?,
        )?;
    }
    Ok(())
}
