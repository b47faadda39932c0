//! `ssf` (Scale and Shift deep Features): `x * scale + shift` per channel after each op, as
//! in the SSF code: after the patch embedding, and in every block after `norm1`,
//! `attn.qkv` (3D channels), `attn.proj`, `norm2`, `mlp.fc1` (before GELU, hidden
//! channels) and `mlp.fc2`, and after the final `norm`. Scale init N(1, 0.02²), shift
//! N(0, 0.02²). Parameters `{site}.ssf_scale` / `{site}.ssf_shift` with site = the timm
//! module name (`patch_embed`, `blocks.{i}.attn.qkv`, `norm`, ...).

use super::{AdapterMethod, Halves};
use crate::nn::init::{self, Init};
use crate::nn::params::ParamStore;
use crate::nn::vit::{Fwd, VitConfig};
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

    /// Scale and shift after ops inside both halves.
    fn halves(&self) -> Halves {
        Halves::BOTH
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

    /// `x * scale + shift` at `site`.
    fn at_site(&self, f: &Fwd, site: &str, x: &Tensor) -> Result<Tensor> {
        let scale = f.p.get(&format!("{site}.ssf_scale"))?;
        let shift = f.p.get(&format!("{site}.ssf_shift"))?;
        x.broadcast_mul(scale)?.broadcast_add(shift)
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
