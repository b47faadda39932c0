//! LayerNorm over the last dimension with affine weight and bias: a fused CPU op with a
//! hand-written backward, and the composed (differentiable tensor-op) reference.

use super::cpu::{min_rows, slice, with_slice};
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

/// Mean and 1/std of one row (two-pass, f32 accumulation in f64 for stability).
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
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
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .with_min_len(min_rows(d))
            .for_each(|(o, xr)| {
                let (mean, rstd) = row_stats(xr, self.eps);
                for j in 0..d {
                    o[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                }
            });
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
        let d = x.dim(D::Minus1)?;
        let rows = x.elem_count() / d;
        let eps = self.eps;
        let (dx, dw, db) = with_slice(x, |xs| {
            with_slice(w, |ws| {
                with_slice(grad, |gs| {
                    let mut dx = vec![0f32; xs.len()];
                    dx.par_chunks_mut(d)
                        .zip(xs.par_chunks(d).zip(gs.par_chunks(d)))
                        .with_min_len(min_rows(d))
                        .for_each(|(dxr, (xr, gr))| {
                            let (mean, rstd) = row_stats(xr, eps);
                            let (mut s1, mut s2) = (0f32, 0f32);
                            for j in 0..d {
                                let xhat = (xr[j] - mean) * rstd;
                                let dxhat = gr[j] * ws[j];
                                s1 += dxhat;
                                s2 += dxhat * xhat;
                            }
                            let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                            for j in 0..d {
                                let xhat = (xr[j] - mean) * rstd;
                                dxr[j] = rstd * (gr[j] * ws[j] - m1 - xhat * m2);
                            }
                        });
                    let dw = self.grad_w.then(|| {
                        super::cpu::par_row_sum(rows, d, |r, acc| {
                            let xr = &xs[r * d..(r + 1) * d];
                            let gr = &gs[r * d..(r + 1) * d];
                            let (mean, rstd) = row_stats(xr, eps);
                            for j in 0..d {
                                acc[j] += gr[j] * (xr[j] - mean) * rstd;
                            }
                        })
                    });
                    let db = self.grad_b.then(|| {
                        super::cpu::par_row_sum(rows, d, |r, acc| {
                            for (a, g) in acc.iter_mut().zip(&gs[r * d..(r + 1) * d]) {
                                *a += g;
                            }
                        })
                    });
                    Ok((dx, dw, db))
                })
            })
        })?;
        let dev = x.device();
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        let dw = dw
            .map(|v| Tensor::from_vec(v, w.shape(), dev))
            .transpose()?;
        let db = db
            .map(|v| Tensor::from_vec(v, w.shape(), dev))
            .transpose()?;
        Ok((Some(dx), dw, db))
    }
}
