//! Exact (erf) GELU: a fused CPU op whose backward is an op of its own ([`GeluBackward`]),
//! and the composed reference (candle's `gelu_erf`, which has a backward pass).

use super::cpu::slice;
use super::fastmath;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// Composed exact GELU (any device).
pub fn gelu_composed(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// `out = GELU(x)` element-wise, in parallel chunks.
pub(crate) fn forward(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, xc)| fastmath::gelu_fwd(o, xc));
}

/// `dx = g * GELU'(x)` element-wise, in parallel chunks.
pub(crate) fn backward(dx: &mut [f32], x: &[f32], g: &[f32]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(d, (xc, gc))| fastmath::gelu_bwd(d, xc, gc));
}

/// `out = GELU(x)` and `x <- GELU'(x)` element-wise, in parallel chunks (the forward of a
/// frozen MLP half, which keeps the derivative for its backward).
pub(crate) fn forward_keeping_grad(out: &mut [f32], x: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks_mut(CHUNK))
        .for_each(|(o, xc)| fastmath::gelu_fwd_grad(o, xc));
}

/// `x <- GELU'(x)` element-wise, in parallel chunks.
pub(crate) fn grad_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK)
        .for_each(fastmath::gelu_grad_inplace);
}

/// `g <- g * d` element-wise, in parallel chunks (the backward from a kept derivative `d`).
pub(crate) fn mul_in_place(g: &mut [f32], d: &[f32]) {
    assert_eq!(g.len(), d.len(), "gelu::mul_in_place: length mismatch");
    g.par_chunks_mut(CHUNK)
        .zip(d.par_chunks(CHUNK))
        .for_each(|(gc, dc)| gc.iter_mut().zip(dc).for_each(|(g, d)| *g *= d));
}

/// Fused CPU exact GELU.
pub(crate) struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut out = vec![0f32; x.len()];
        forward(&mut out, x);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?,
        ))
    }
}

/// The backward of [`GeluOp`], an op of its own: `(x, grad)` in, `dx = g * GELU'(x)` out,
/// with `d/dx x Phi(x) = Phi(x) + x phi(x)`. The CPU entry is below; a device kernel is
/// its `cuda_fwd`.
pub(crate) struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, gs) = (slice(xs, xl)?, slice(gs, gl)?);
        if gs.len() != xs.len() {
            candle_core::bail!("gelu backward: {} inputs, {} gradients", xs.len(), gs.len());
        }
        let mut dx = vec![0f32; xs.len()];
        backward(&mut dx, xs, gs);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}
