//! Gradient accumulation: the gradients of the trainable parameters summed over several
//! backward passes (micro-batches), for one optimiser step on the sum, as timm's
//! `--grad-accum-steps` and PyTorch's `.grad` accumulation do.
//!
//! Only the parameters' gradients are kept: a backward pass's [`GradStore`] also holds
//! the gradients of other tensors of the graph, which [`GradAccum::add`] drops, so between
//! two micro-batches the memory held is one gradient per trainable parameter.

use anyhow::Result;
use candle_core::{backprop::GradStore, Var};

/// The sum of the gradients several backward passes gave the same parameters.
#[derive(Debug, Default)]
pub struct GradAccum {
    sum: GradStore,
    passes: usize,
}

impl GradAccum {
    /// No pass yet: no gradient.
    pub fn new() -> GradAccum {
        GradAccum::default()
    }

    /// Adds the gradients one backward pass gave `params` (a parameter without a gradient
    /// in `grads` keeps the sum it has, if any) and drops `grads` with everything else it
    /// holds. The first pass's gradients are kept as they are (no addition to zeros), so
    /// one pass gives exactly that pass's gradients.
    ///
    /// Errors: a gradient whose shape differs from the sum's (candle's addition error).
    pub fn add(&mut self, mut grads: GradStore, params: &[Var]) -> Result<()> {
        for v in params {
            let Some(g) = grads.remove(v.as_tensor()) else {
                continue;
            };
            let g = match self.sum.remove(v.as_tensor()) {
                None => g,
                Some(prev) => prev.add(&g)?.detach(),
            };
            self.sum.insert(v.as_tensor(), g);
        }
        self.passes += 1;
        Ok(())
    }

    /// Backward passes added so far.
    pub fn passes(&self) -> usize {
        self.passes
    }

    /// The summed gradients, by parameter (what [`super::AdamW::step`] takes).
    pub fn grads(&self) -> &GradStore {
        &self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn sums_the_parameters_gradients_and_drops_the_rest() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, -2.0, 0.5], &dev).unwrap();
        let b = Var::new(&[0.25f32], &dev).unwrap();
        let x1 = Tensor::new(&[3f32, 1.0, -1.0], &dev).unwrap();
        let x2 = Tensor::new(&[-0.5f32, 2.0, 4.0], &dev).unwrap();
        // loss_i = sum(w * x_i)^2 + b * i: d/dw = 2 sum(w x_i) x_i, d/db = i.
        let loss = |x: &Tensor, i: f64| -> Tensor {
            let s = w.as_tensor().mul(x).unwrap().sum_all().unwrap();
            (s.sqr().unwrap() + (b.as_tensor() * i).unwrap().sum_all().unwrap()).unwrap()
        };
        let mut acc = GradAccum::new();
        let g1 = loss(&x1, 1.0).backward().unwrap();
        let hidden = g1.get_ids().count();
        acc.add(g1, std::slice::from_ref(&w)).unwrap();
        // Only `w` was asked for: `b`'s gradient was dropped with the store.
        assert!(hidden >= 2);
        assert!(acc.grads().get(b.as_tensor()).is_none());
        // One pass: exactly its gradient (2 * 0.5 * x1 = x1).
        assert_eq!(
            vec(acc.grads().get(w.as_tensor()).unwrap()),
            [3.0, 1.0, -1.0]
        );
        acc.add(loss(&x2, 2.0).backward().unwrap(), &[w.clone(), b.clone()])
            .unwrap();
        // sum(w * x2) = -0.5 - 4 + 2 = -2.5: + 2 * -2.5 * x2.
        assert_eq!(
            vec(acc.grads().get(w.as_tensor()).unwrap()),
            [5.5, -9.0, -21.0]
        );
        assert_eq!(vec(acc.grads().get(b.as_tensor()).unwrap()), [2.0]);
        assert_eq!(acc.passes(), 2);
        assert_eq!(
            acc.grads().get_ids().count(),
            2,
            "only the parameters' sums stay"
        );
    }
}
