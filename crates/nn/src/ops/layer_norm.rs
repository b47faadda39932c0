//! LayerNorm over the last dimension with affine weight and bias: a fused CPU op whose
//! backward is an op of its own ([`LayerNormBackward`]), and the composed (differentiable
//! tensor-op) reference.

use super::cpu::{min_rows, par_row_sum, slice, unpack};
use super::fastmath;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Composed LayerNorm from differentiable candle ops (any device).
pub fn layer_norm_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xhat.broadcast_mul(w)?.broadcast_add(b)
}

/// Fused CPU LayerNorm; gradients for weight / bias are computed only when requested.
pub(crate) struct LayerNormOp {
    pub eps: f32,
    pub grad_w: bool,
    pub grad_b: bool,
}

const LANES: usize = 8;

/// Mean and 1/std of one row: two passes (mean, then the centred squares) with lane-wise
/// f32 partial sums, which vectorise and keep the rounding error of a 768-wide row ~1e-7.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len().max(1) as f32;
    let mean = fastmath::sum(row) / n;
    let mut acc = [0f32; LANES];
    let mut rc = row.chunks_exact(LANES);
    for c in &mut rc {
        for j in 0..LANES {
            let v = c[j] - mean;
            acc[j] += v * v;
        }
    }
    let tail: f32 = rc
        .remainder()
        .iter()
        .map(|&v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `(sum_j g_j w_j, sum_j g_j w_j (x_j - mean))` of one row.
fn grad_sums(x: &[f32], w: &[f32], g: &[f32], mean: f32) -> (f32, f32) {
    let (mut a1, mut a2) = ([0f32; LANES], [0f32; LANES]);
    let d = x.len();
    let full = d - d % LANES;
    for c in (0..full).step_by(LANES) {
        for j in 0..LANES {
            let gw = g[c + j] * w[c + j];
            a1[j] += gw;
            a2[j] += gw * (x[c + j] - mean);
        }
    }
    let (mut t1, mut t2) = (0f32, 0f32);
    for j in full..d {
        let gw = g[j] * w[j];
        t1 += gw;
        t2 += gw * (x[j] - mean);
    }
    (a1.iter().sum::<f32>() + t1, a2.iter().sum::<f32>() + t2)
}

/// LayerNorm of every `w.len()`-wide row of `x` into `out` (rows in parallel).
pub(crate) fn forward_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .with_min_len(min_rows(d))
        .for_each(|(o, xr)| {
            let (mean, rstd) = row_stats(xr, eps);
            for j in 0..d {
                o[j] = (xr[j] - mean) * rstd * w[j] + b[j];
            }
        });
}

/// Input gradient of LayerNorm for every row: `dx = [residual +] rstd (g w - mean(g w) -
/// xhat mean(g w xhat))`, statistics recomputed from `x`.
pub(crate) fn backward_rows(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    residual: Option<&[f32]>,
    dx: &mut [f32],
) {
    let d = w.len();
    let row = |dxr: &mut [f32], xr: &[f32], gr: &[f32], res: Option<&[f32]>| {
        let (mean, rstd) = row_stats(xr, eps);
        let (s1, s2) = grad_sums(xr, w, gr, mean);
        let m1 = s1 / d as f32;
        let m2 = s2 * rstd / d as f32;
        match res {
            Some(rr) => {
                for j in 0..d {
                    let xhat = (xr[j] - mean) * rstd;
                    dxr[j] = rr[j] + rstd * (gr[j] * w[j] - m1 - xhat * m2);
                }
            }
            None => {
                for j in 0..d {
                    let xhat = (xr[j] - mean) * rstd;
                    dxr[j] = rstd * (gr[j] * w[j] - m1 - xhat * m2);
                }
            }
        }
    };
    let it = dx
        .par_chunks_mut(d)
        .zip(x.par_chunks(d).zip(g.par_chunks(d)))
        .with_min_len(min_rows(d));
    match residual {
        Some(r) => it
            .zip(r.par_chunks(d))
            .for_each(|((dxr, (xr, gr)), rr)| row(dxr, xr, gr, Some(rr))),
        None => it.for_each(|(dxr, (xr, gr))| row(dxr, xr, gr, None)),
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1)?;
        let (w, b) = (slice(s2, l2)?, slice(s3, l3)?);
        let d = l1.dims()[l1.dims().len() - 1];
        if w.len() != d || b.len() != d {
            bail!(
                "layer_norm: weight/bias length {}/{} != last dim {d}",
                w.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        forward_rows(x, w, b, self.eps, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = LayerNormBackward {
            eps: self.eps,
            grad_w: self.grad_w,
            grad_b: self.grad_b,
        };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &back)?;
        let (ws, wb) = (
            self.grad_w.then(|| w.shape()),
            self.grad_b.then(|| w.shape()),
        );
        let mut parts = unpack(&packed, &[Some(x.shape()), ws, wb])?.into_iter();
        let mut next = || parts.next().flatten();
        Ok((next(), next(), next()))
    }
}

/// The backward of [`LayerNormOp`], an op of its own: `(x, w, grad)` in, `[dx | dw | db]`
/// out as one flat buffer (`dw`, `db` only where requested; statistics recomputed from
/// `x`). The CPU entry is below; a device kernel is its `cuda_fwd`.
pub(crate) struct LayerNormBackward {
    pub eps: f32,
    pub grad_w: bool,
    pub grad_b: bool,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "fused-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, ws, gs) = (slice(xs, xl)?, slice(ws, wl)?, slice(gs, gl)?);
        let d = ws.len();
        if d == 0 || xs.len() % d != 0 || gs.len() != xs.len() {
            bail!(
                "layer_norm backward: {} inputs, {} gradients, width {d}",
                xs.len(),
                gs.len()
            );
        }
        let rows = xs.len() / d;
        let eps = self.eps;
        let parts = usize::from(self.grad_w) + usize::from(self.grad_b);
        let mut out = Vec::with_capacity(xs.len() + parts * d);
        out.resize(xs.len(), 0f32);
        backward_rows(xs, ws, gs, eps, None, &mut out);
        if self.grad_w {
            out.extend(par_row_sum(rows, d, |r, acc| {
                let xr = &xs[r * d..(r + 1) * d];
                let gr = &gs[r * d..(r + 1) * d];
                let (mean, rstd) = row_stats(xr, eps);
                for j in 0..d {
                    acc[j] += gr[j] * (xr[j] - mean) * rstd;
                }
            }));
        }
        if self.grad_b {
            out.extend(par_row_sum(rows, d, |r, acc| {
                for (a, g) in acc.iter_mut().zip(&gs[r * d..(r + 1) * d]) {
                    *a += g;
                }
            }));
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
