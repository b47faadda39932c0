//! Deterministic dropout and drop-path (stochastic depth) masks. In training mode the masks
//! are drawn, in a fixed order, from a ChaCha8 RNG seeded by the forward pass's seed, so a
//! resumed run that replays the same seeds is bit-identical. In eval mode they are identity.

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Source of masks for one forward pass.
pub struct Masks {
    rng: Option<ChaCha8Rng>,
}

impl Masks {
    /// Masks for a training forward pass seeded by `seed`.
    pub fn train(seed: u64) -> Self {
        Masks {
            rng: Some(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// No masks (evaluation).
    pub fn eval() -> Self {
        Masks { rng: None }
    }

    /// Whether masks are active.
    pub fn training(&self) -> bool {
        self.rng.is_some()
    }

    fn keep_mask(&mut self, n: usize, p: f64) -> Vec<f32> {
        let rng = self.rng.as_mut().expect("only called in training");
        let scale = (1.0 / (1.0 - p)) as f32;
        (0..n)
            .map(|_| if rng.gen::<f64>() >= p { scale } else { 0.0 })
            .collect()
    }

    /// Element-wise dropout with rate `p` (inverted scaling, as `nn.Dropout`).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        if self.rng.is_none() || p <= 0.0 {
            return Ok(x.clone());
        }
        let mask = Tensor::from_vec(self.keep_mask(x.elem_count(), p), x.shape(), x.device())?;
        x.mul(&mask.to_dtype(x.dtype())?)
    }

    /// Drop path: zeroes whole samples (dim 0) with rate `p`, scaling kept ones by 1/(1-p).
    pub fn drop_path(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        let b = x.dim(0)?;
        let Some(keep) = self.drop_path_factors(b, p) else {
            return Ok(x.clone());
        };
        let mut shape = vec![1usize; x.rank()];
        shape[0] = b;
        let mask = Tensor::from_vec(keep, shape, x.device())?;
        x.broadcast_mul(&mask.to_dtype(x.dtype())?)
    }

    /// The per-sample factors that [`Masks::drop_path`] would apply to a batch of `b`
    /// (drawn from the same stream at the same point), or `None` when drop path is off.
    pub fn drop_path_factors(&mut self, b: usize, p: f64) -> Option<Vec<f32>> {
        (self.rng.is_some() && p > 0.0).then(|| self.keep_mask(b, p))
    }
}
