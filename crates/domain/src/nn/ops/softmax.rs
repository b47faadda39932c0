//! Softmax over the last dimension: fused CPU op with a hand-written backward, and the
//! composed reference.

use super::cpu::{min_rows, slice, with_slice};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Composed, numerically stable softmax from differentiable candle ops (any device).
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    // The max is a constant shift: detaching it leaves the gradient unchanged.
    let max = x.detach().max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Fused CPU softmax over the last dimension.
pub(crate) struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims()[l.dims().len() - 1];
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .with_min_len(min_rows(d))
            .for_each(|(o, xr)| {
                let max = super::fastmath::max(xr);
                let inv = 1.0 / super::fastmath::exp_sub(o, xr, max);
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = res.dim(D::Minus1)?;
        let dx = with_slice(res, |ys| {
            with_slice(grad, |gs| {
                let mut dx = vec![0f32; ys.len()];
                dx.par_chunks_mut(d)
                    .zip(ys.par_chunks(d).zip(gs.par_chunks(d)))
                    .with_min_len(min_rows(d))
                    .for_each(|(dxr, (yr, gr))| {
                        let dot = super::fastmath::dot(yr, gr);
                        for j in 0..d {
                            dxr[j] = yr[j] * (gr[j] - dot);
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}
