//! Softmax over the last dimension: a fused CPU op whose backward is an op of its own
//! ([`SoftmaxBackward`]), and the composed reference.

use super::cpu::{min_rows, slice};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
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
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// The backward of [`SoftmaxOp`], an op of its own: `(y, grad)` in (`y` the softmax
/// output), `dx = y * (g - sum(y * g))` row by row out. The CPU entry is below; a device
/// kernel is its `cuda_fwd`.
pub(crate) struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (ys, gs) = (slice(ys, yl)?, slice(gs, gl)?);
        let d = yl.dims()[yl.dims().len() - 1];
        if gs.len() != ys.len() {
            bail!(
                "softmax backward: {} outputs, {} gradients",
                ys.len(),
                gs.len()
            );
        }
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
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}
