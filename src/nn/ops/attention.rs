//! Fused multi-head self-attention on the packed qkv projection (timm layout: last dim is
//! `q | k | v`, each head-major `H x Dh`): `softmax(q k^T / sqrt(Dh)) v` with heads merged
//! back to `[B, N, D]`. The CPU op reads q, k, v in place through GEMM strides (no
//! permute / split copies), keeps one N x N score buffer per task, and its backward
//! recomputes the probabilities instead of storing them. No attention dropout: callers
//! use the composed path when attention dropout is active.

use super::cpu::{slice, with_slice};
use super::gemm::{mm, View};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Fused attention over `qkv [B, N, 3D]` with `heads` heads.
pub(crate) struct AttentionOp {
    pub heads: usize,
}

pub(crate) struct Dims {
    n: usize,
    d: usize,
    dh: usize,
    scale: f32,
}

impl AttentionOp {
    /// `out [B, N, D]` = attention over `qkv [B, N, 3D]` (one rayon task per sample).
    pub(crate) fn forward(&self, qkv: &[f32], dm: &Dims, out: &mut [f32]) {
        let (n, d, dh) = (dm.n, dm.d, dm.dh);
        out.par_chunks_mut(n * d)
            .zip(qkv.par_chunks(n * 3 * d))
            .for_each(|(o, x)| {
                let mut p = vec![0f32; n * n];
                for h in 0..self.heads {
                    probs(x, h, dm, &mut p);
                    let v = View::new(2 * d + h * dh, 3 * d, 1);
                    mm(
                        o,
                        View::new(h * dh, d, 1),
                        false,
                        &p,
                        View::new(0, n, 1),
                        x,
                        v,
                        n,
                        dh,
                        n,
                        1.0,
                    );
                }
            });
    }

    /// `dqkv [B, N, 3D]` (overwritten) from `qkv` and the output gradient `g [B, N, D]`;
    /// the probabilities are recomputed per head.
    pub(crate) fn backward(&self, qkv: &[f32], g: &[f32], dm: &Dims, dqkv: &mut [f32]) {
        let (n, d, dh) = (dm.n, dm.d, dm.dh);
        dqkv.par_chunks_mut(n * 3 * d)
            .zip(qkv.par_chunks(n * 3 * d).zip(g.par_chunks(n * d)))
            .for_each(|(dxs, (x, g))| {
                let mut p = vec![0f32; n * n];
                let mut dp = vec![0f32; n * n];
                let nn = View::new(0, n, 1);
                for h in 0..self.heads {
                    probs(x, h, dm, &mut p);
                    let q = View::new(h * dh, 3 * d, 1);
                    let k = View::new(d + h * dh, 3 * d, 1);
                    let v = View::new(2 * d + h * dh, 3 * d, 1);
                    let go = View::new(h * dh, d, 1);
                    // dV = P^T dO
                    mm(dxs, v, false, &p, nn.t(), g, go, n, dh, n, 1.0);
                    // dP = dO V^T
                    mm(&mut dp, nn, false, g, go, x, v.t(), n, n, dh, 1.0);
                    // dS = P * (dP - rowsum(dP * P))
                    for (dpr, pr) in dp.chunks_mut(n).zip(p.chunks(n)) {
                        let dot = super::fastmath::dot(dpr, pr);
                        dpr.iter_mut()
                            .zip(pr)
                            .for_each(|(a, &b)| *a = b * (*a - dot));
                    }
                    // dQ = scale dS K ; dK = scale dS^T Q
                    mm(dxs, q, false, &dp, nn, x, k, n, dh, n, dm.scale);
                    mm(dxs, k, false, &dp, nn.t(), x, q, n, dh, n, dm.scale);
                }
            });
    }

    pub(crate) fn dims(&self, shape: &[usize]) -> Result<(usize, Dims)> {
        let [b, n, d3] = shape else {
            bail!("attention: qkv must be [B, N, 3D], got {shape:?}")
        };
        if d3 % 3 != 0 || (d3 / 3) % self.heads != 0 {
            bail!(
                "attention: last dim {d3} is not 3 x heads ({}) x head_dim",
                self.heads
            );
        }
        let d = d3 / 3;
        let dh = d / self.heads;
        Ok((
            *b,
            Dims {
                n: *n,
                d,
                dh,
                scale: (dh as f32).powf(-0.5),
            },
        ))
    }
}

/// Scores of head `h` of one sample into `p` (N x N), then row softmax in place.
fn probs(qkv: &[f32], h: usize, dm: &Dims, p: &mut [f32]) {
    let (n, d, dh) = (dm.n, dm.d, dm.dh);
    let q = View::new(h * dh, 3 * d, 1);
    let k = View::new(d + h * dh, 3 * d, 1);
    mm(
        p,
        View::new(0, n, 1),
        false,
        qkv,
        q,
        qkv,
        k.t(),
        n,
        n,
        dh,
        dm.scale,
    );
    for row in p.chunks_mut(n) {
        let max = super::fastmath::max(row);
        let inv = 1.0 / super::fastmath::exp_sub_inplace(row, max);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s, l)?;
        let (b, dm) = self.dims(l.dims())?;
        let mut out = vec![0f32; b * dm.n * dm.d];
        self.forward(qkv, &dm, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((b, dm.n, dm.d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, dm) = self.dims(qkv.dims())?;
        let dqkv = with_slice(qkv, |xs| {
            with_slice(grad, |gs| {
                let mut dx = vec![0f32; xs.len()];
                self.backward(xs, gs, &dm, &mut dx);
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
    }
}
