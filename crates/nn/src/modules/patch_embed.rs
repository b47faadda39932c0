//! timm's `PatchEmbed`: the `p x p` convolution with stride `p`, computed as the equivalent
//! unfold + matmul with the weight `[D, C, p, p]` viewed as `[D, C p p]`.

use super::Linear;
use crate::config::VitConfig;
use crate::ops::Kernels;
use crate::params::ParamStore;
use candle_core::{bail, Result, Tensor};

/// Images `[B, C, S, S]` to patch tokens `[B, (S/p)^2, D]`.
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    proj: Linear,
    in_chans: usize,
    img_size: usize,
    patch: usize,
    dim: usize,
}

impl PatchEmbed {
    /// `patch_embed.proj` of `store` for the architecture `cfg`.
    ///
    /// # Errors
    /// A missing tensor, named.
    pub fn new(store: &ParamStore, cfg: &VitConfig, kernels: &Kernels) -> Result<Self> {
        Ok(PatchEmbed {
            proj: Linear::new(store, "patch_embed.proj", kernels, true)?,
            in_chans: cfg.in_chans,
            img_size: cfg.img_size,
            patch: cfg.patch_size,
            dim: cfg.embed_dim,
        })
    }

    /// The patch tokens of `x [B, C, S, S]`.
    ///
    /// # Errors
    /// `x` is not `[B, in_chans, img_size, img_size]` (the message gives the shape expected).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, ch, h, w) = x.dims4()?;
        let s = self.img_size;
        if ch != self.in_chans || h != s || w != s {
            bail!(
                "ViT input must be [B, {}, {s}, {s}], got {:?}",
                self.in_chans,
                x.dims()
            );
        }
        let (p, g, d) = (self.patch, s / self.patch, self.dim);
        let patches = x
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, ch * p * p))?;
        self.proj.forward(&patches)?.reshape((b, g * g, d))
    }
}
