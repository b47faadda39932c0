//! Fused multi-head self-attention on the packed qkv projection (timm layout: last dim is
//! `q | k | v`, each head-major `H x Dh`): `softmax(q k^T / sqrt(Dh)) v` with heads merged
//! back to `[B, N, D]`. The CPU op reads q, k, v in place through GEMM strides (no
//! permute / split copies). When a backward will follow and the probabilities are at most
//! twice the size of the qkv input (see [`keeps_probs`]; ViT-S and ViT-B at 224 x 224), the
//! forward keeps them and the backward uses them: one product of seven and half the
//! exponentials fewer. Otherwise (long sequences, where they grow as N^2) it keeps one
//! N x N buffer per task and the backward recomputes them. No attention dropout: callers
//! use the composed path when attention dropout is active.
//!
//! With [`Tokens::Cls`] only the class token (row 0 of every sample) queries: the output is
//! `[B, 1, D]`, every product shrinks to one query row, and the backward still reaches the
//! keys and values of every token. A CLS-pooled ViT's last block needs nothing more.
//!
//! With a [`Bf16Kernel`] (CPU `precision: bf16`) the seven per-head products take bf16
//! inputs (q, k, v, the probabilities and the gradients rounded once per sample or head)
//! and accumulate in f32; the softmax and its backward stay f32, as under PyTorch's autocast.

use super::bf16::{mm_any, Bf16Kernel, Operand};
use super::cpu::slice;
use super::view::View;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Which tokens' outputs an attention (or a whole block) computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tokens {
    /// Every token's.
    #[default]
    All,
    /// Only the class token's (row 0 of each sample): all a CLS-pooled model reads from
    /// its last block.
    Cls,
}

impl Tokens {
    /// Output rows per sample of `n` tokens.
    pub(crate) fn rows(self, n: usize) -> usize {
        match self {
            Tokens::All => n,
            Tokens::Cls => 1.min(n),
        }
    }
}

/// Fused attention over `qkv [B, N, 3D]` with `heads` heads.
pub(crate) struct AttentionOp {
    pub heads: usize,
    /// Whose outputs are computed.
    pub tokens: Tokens,
    /// Probabilities kept by the forward for the backward (as a graph op; see [`Self::new`]).
    kept: Option<Mutex<Option<Vec<f32>>>>,
    /// The kernel of bf16 products; `None`: f32 products.
    kernel: Option<Bf16Kernel>,
}

pub(crate) struct Dims {
    /// Tokens (keys) per sample.
    n: usize,
    /// Query rows (outputs) per sample: `n`, or 1 for [`Tokens::Cls`].
    nq: usize,
    d: usize,
    dh: usize,
    scale: f32,
}

/// Whether the probabilities `[B, heads, Nq, N]` are worth keeping for the backward: they
/// are at most twice the size of the qkv activation `[B, N, 3D]` (heads x Nq <= 6 D). True
/// for ViT-S/B/L at 224 x 224 (N = 197) and for every class-token-only attention; false for
/// all tokens from about 384 x 384 on (N = 577), where they would dominate the training
/// memory.
pub(crate) fn keeps_probs(heads: usize, dm: &Dims) -> bool {
    heads * dm.nq <= 6 * dm.d
}

impl AttentionOp {
    /// The op; `graph` says whether a backward may follow (the input is part of a graph),
    /// in which case the forward keeps the probabilities where [`keeps_probs`] allows.
    pub(crate) fn new(heads: usize, tokens: Tokens, graph: bool) -> Self {
        Self {
            heads,
            tokens,
            kept: graph.then(|| Mutex::new(None)),
            kernel: None,
        }
    }

    /// The same op with its products on bf16 inputs through `kernel` (`None`: f32).
    pub(crate) fn with_kernel(mut self, kernel: Option<Bf16Kernel>) -> Self {
        self.kernel = kernel;
        self
    }

    /// `out [B, Nq, D]` = attention over `qkv [B, N, 3D]` (one rayon task per sample). With
    /// `graph` (a backward may follow) and where [`keeps_probs`] allows, returns the
    /// probabilities `[B, heads, Nq, N]` for [`Self::backward`].
    pub(crate) fn forward(
        &self,
        qkv: &[f32],
        dm: &Dims,
        out: &mut [f32],
        graph: bool,
    ) -> Option<Vec<f32>> {
        let (n, nq, d) = (dm.n, dm.nq, dm.d);
        let per_sample = self.heads * nq * n;
        let batch = out.len() / (nq * d);
        let samples = out.par_chunks_mut(nq * d).zip(qkv.par_chunks(n * 3 * d));
        if graph && keeps_probs(self.heads, dm) {
            let mut kept = vec![0f32; batch * per_sample];
            samples
                .zip(kept.par_chunks_mut(per_sample))
                .for_each(|((o, x), p)| self.forward_sample(x, dm, o, p));
            Some(kept)
        } else {
            samples.for_each(|(o, x)| self.forward_sample(x, dm, o, &mut vec![0f32; nq * n]));
            None
        }
    }

    /// One sample: `p` holds every head's probabilities (`heads x Nq x N`, kept) or room
    /// for one head's at a time (`Nq x N`).
    fn forward_sample(&self, x: &[f32], dm: &Dims, o: &mut [f32], p: &mut [f32]) {
        let (n, nq, d, dh) = (dm.n, dm.nq, dm.d, dm.dh);
        let size = nq * n;
        let per_head = p.len() > size;
        let kernel = self.kernel;
        let xs = Operand::new(x, kernel);
        for h in 0..self.heads {
            let p = if per_head {
                &mut p[h * size..(h + 1) * size]
            } else {
                &mut p[..]
            };
            probs(&xs, kernel, h, dm, p);
            let pb = Operand::new(&p[..size], kernel);
            let v = View::new(2 * d + h * dh, 3 * d, 1);
            mm_any(
                kernel,
                o,
                View::new(h * dh, d, 1),
                false,
                pb.mat(),
                View::new(0, n, 1),
                xs.mat(),
                v,
                (nq, dh, n),
                1.0,
            );
        }
    }

    /// `dqkv [B, N, 3D]` from `qkv`, the output gradient `g [B, Nq, D]` and the
    /// probabilities the forward kept, if any; without them they are recomputed per head.
    /// `dqkv` must come zero-filled: with [`Tokens::Cls`] only the class token's query rows
    /// are written.
    pub(crate) fn backward(
        &self,
        qkv: &[f32],
        kept: Option<&[f32]>,
        g: &[f32],
        dm: &Dims,
        dqkv: &mut [f32],
    ) {
        let (n, nq, d) = (dm.n, dm.nq, dm.d);
        let per_sample = self.heads * nq * n;
        let samples = dqkv
            .par_chunks_mut(n * 3 * d)
            .zip(qkv.par_chunks(n * 3 * d).zip(g.par_chunks(nq * d)));
        match kept {
            Some(kept) => samples
                .zip(kept.par_chunks(per_sample))
                .for_each(|((dx, (x, g)), p)| self.backward_sample(x, g, dm, dx, Some(p))),
            None => samples.for_each(|(dx, (x, g))| self.backward_sample(x, g, dm, dx, None)),
        }
    }

    /// One sample's backward, with its kept probabilities (every head) or none.
    fn backward_sample(
        &self,
        x: &[f32],
        g: &[f32],
        dm: &Dims,
        dxs: &mut [f32],
        kept: Option<&[f32]>,
    ) {
        let (n, nq, d, dh) = (dm.n, dm.nq, dm.d, dm.dh);
        let size = nq * n;
        let kernel = self.kernel;
        let (xs, gs) = (Operand::new(x, kernel), Operand::new(g, kernel));
        let mut scratch = vec![0f32; if kept.is_some() { 0 } else { size }];
        let mut dp = vec![0f32; size];
        // A query-by-key matrix (Nq x N).
        let nn = View::new(0, n, 1);
        for h in 0..self.heads {
            let p: &[f32] = match kept {
                Some(all) => &all[h * size..(h + 1) * size],
                None => {
                    probs(&xs, kernel, h, dm, &mut scratch);
                    &scratch
                }
            };
            let pb = Operand::new(p, kernel);
            let q = View::new(h * dh, 3 * d, 1);
            let k = View::new(d + h * dh, 3 * d, 1);
            let v = View::new(2 * d + h * dh, 3 * d, 1);
            let go = View::new(h * dh, d, 1);
            let (x, g, pm) = (xs.mat(), gs.mat(), pb.mat());
            // dV = P^T dO
            mm_any(kernel, dxs, v, false, pm, nn.t(), g, go, (n, dh, nq), 1.0);
            // dP = dO V^T
            mm_any(
                kernel,
                &mut dp,
                nn,
                false,
                g,
                go,
                x,
                v.t(),
                (nq, n, dh),
                1.0,
            );
            // dS = P * (dP - rowsum(dP * P))
            for (dpr, pr) in dp.chunks_mut(n).zip(p.chunks(n)) {
                let dot = super::fastmath::dot(dpr, pr);
                dpr.iter_mut()
                    .zip(pr)
                    .for_each(|(a, &b)| *a = b * (*a - dot));
            }
            let dsb = Operand::new(&dp, kernel);
            let ds = dsb.mat();
            // dQ = scale dS K ; dK = scale dS^T Q
            mm_any(kernel, dxs, q, false, ds, nn, x, k, (nq, dh, n), dm.scale);
            mm_any(
                kernel,
                dxs,
                k,
                false,
                ds,
                nn.t(),
                x,
                q,
                (n, dh, nq),
                dm.scale,
            );
        }
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
                nq: self.tokens.rows(*n),
                d,
                dh,
                scale: (dh as f32).powf(-0.5),
            },
        ))
    }
}

/// Scores of head `h` of one sample into `p` (Nq x N), then row softmax in place.
fn probs(qkv: &Operand, kernel: Option<Bf16Kernel>, h: usize, dm: &Dims, p: &mut [f32]) {
    let (n, nq, d, dh) = (dm.n, dm.nq, dm.d, dm.dh);
    let q = View::new(h * dh, 3 * d, 1);
    let k = View::new(d + h * dh, 3 * d, 1);
    let x = qkv.mat();
    mm_any(
        kernel,
        p,
        View::new(0, n, 1),
        false,
        x,
        q,
        x,
        k.t(),
        (nq, n, dh),
        dm.scale,
    );
    for row in p[..nq * n].chunks_mut(n) {
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
        let mut out = vec![0f32; b * dm.nq * dm.d];
        let probs = self.forward(qkv, &dm, &mut out, self.kept.is_some());
        if let Some(kept) = &self.kept {
            *kept.lock().expect("attention: poisoned") = probs;
        }
        Ok((CpuStorage::F32(out), Shape::from((b, dm.nq, dm.d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Taken, not borrowed: the memory goes back when the backward op is done. A second
        // backward over the same graph finds none and recomputes them.
        let kept = self
            .kept
            .as_ref()
            .and_then(|k| k.lock().expect("attention: poisoned").take());
        let back = AttentionBackward {
            op: AttentionOp {
                heads: self.heads,
                tokens: self.tokens,
                kept: None,
                kernel: self.kernel,
            },
            kept,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

/// The backward of [`AttentionOp`], an op of its own: `(qkv, grad)` in, `dqkv` out, from
/// the probabilities the forward kept (recomputed when it kept none). The CPU entry is
/// below; a device kernel is its `cuda_fwd`.
pub(crate) struct AttentionBackward {
    /// The forward's shape and products (without kept probabilities).
    op: AttentionOp,
    /// The probabilities `[B, heads, Nq, N]` the forward kept, if any.
    kept: Option<Vec<f32>>,
}

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, dm) = self.op.dims(xl.dims())?;
        let (xs, gs) = (slice(xs, xl)?, slice(gs, gl)?);
        if gs.len() != b * dm.nq * dm.d {
            bail!(
                "attention backward: {} gradients for [{b}, {}, {}]",
                gs.len(),
                dm.nq,
                dm.d
            );
        }
        let mut dx = vec![0f32; xs.len()];
        self.op.backward(xs, self.kept.as_deref(), gs, &dm, &mut dx);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(heads: usize, n: usize, d: usize) -> Dims {
        AttentionOp::new(heads, Tokens::All, false)
            .dims(&[1, n, 3 * d])
            .unwrap()
            .1
    }

    #[test]
    fn probabilities_are_kept_up_to_twice_the_qkv_size() {
        // ViT-S, ViT-B, ViT-L at 224 (N 197): kept; ViT-B at 384 (N 577): recomputed.
        assert!(keeps_probs(6, &dims(6, 197, 384)));
        assert!(keeps_probs(12, &dims(12, 197, 768)));
        assert!(keeps_probs(16, &dims(16, 197, 1024)));
        assert!(!keeps_probs(12, &dims(12, 577, 768)));
        // The bound itself: heads x N = 6 D.
        assert!(keeps_probs(2, &dims(2, 24, 8)));
        assert!(!keeps_probs(2, &dims(2, 25, 8)));
    }

    /// The backward on kept probabilities is bit-identical to the one that recomputes them.
    #[test]
    fn kept_and_recomputed_probabilities_give_identical_gradients() {
        let (b, n, d, heads) = (3, 9, 16, 4);
        let wave = |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        let qkv = wave(b * n * 3 * d, 0.37);
        let g = wave(b * n * d, 0.91);
        let op = AttentionOp::new(heads, Tokens::All, false);
        let dm = dims(heads, n, d);
        let (mut out_kept, mut out) = (vec![0f32; b * n * d], vec![0f32; b * n * d]);
        let probs = op.forward(&qkv, &dm, &mut out_kept, true).expect("kept");
        assert!(op.forward(&qkv, &dm, &mut out, false).is_none());
        assert_eq!(out_kept, out);
        assert_eq!(probs.len(), b * heads * n * n);
        for row in probs.chunks(n) {
            assert!(
                (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
                "a row does not sum to 1"
            );
        }
        let (mut dk, mut dr) = (vec![0f32; qkv.len()], vec![0f32; qkv.len()]);
        op.backward(&qkv, Some(&probs), &g, &dm, &mut dk);
        op.backward(&qkv, None, &g, &dm, &mut dr);
        assert_eq!(dk, dr);
        assert!(dk.iter().any(|&v| v != 0.0));
    }

    /// The class-token-only attention is the full one's row 0, forward and backward (the
    /// full backward given an output gradient that is zero outside row 0), with the
    /// probabilities kept or recomputed.
    #[test]
    fn class_token_only_attention_is_row_zero_of_the_full_one() {
        let (b, n, d, heads) = (3, 9, 16, 4);
        let wave = |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        let qkv = wave(b * n * 3 * d, 0.37);
        let g_cls = wave(b * d, 0.91);
        let mut g_full = vec![0f32; b * n * d];
        for (full, cls) in g_full.chunks_mut(n * d).zip(g_cls.chunks(d)) {
            full[..d].copy_from_slice(cls);
        }
        let full = AttentionOp::new(heads, Tokens::All, false);
        let cls = AttentionOp::new(heads, Tokens::Cls, false);
        let (_, dm_full) = full.dims(&[b, n, 3 * d]).unwrap();
        let (_, dm_cls) = cls.dims(&[b, n, 3 * d]).unwrap();
        let mut out_full = vec![0f32; b * n * d];
        let mut out_cls = vec![0f32; b * d];
        let p_full = full.forward(&qkv, &dm_full, &mut out_full, true).unwrap();
        let p_cls = cls.forward(&qkv, &dm_cls, &mut out_cls, true).unwrap();
        assert_eq!(p_cls.len(), b * heads * n);
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "{what}[{i}]: {x} vs {y}"
                );
            }
        };
        for (s, o) in out_cls.chunks(d).enumerate() {
            close(o, &out_full[s * n * d..s * n * d + d], "output");
        }
        let mut d_full = vec![0f32; qkv.len()];
        full.backward(&qkv, Some(&p_full), &g_full, &dm_full, &mut d_full);
        for kept in [Some(p_cls.as_slice()), None] {
            let mut d_cls = vec![0f32; qkv.len()];
            cls.backward(&qkv, kept, &g_cls, &dm_cls, &mut d_cls);
            close(&d_cls, &d_full, "dqkv");
        }
        // Every key and value row gets a gradient, not only the class token's.
        let row = |s: usize, t: usize| &d_full[(s * n + t) * 3 * d..(s * n + t + 1) * 3 * d];
        assert!(row(0, n - 1)[d..].iter().any(|&v| v != 0.0));
        assert!(row(0, n - 1)[..d].iter().all(|&v| v == 0.0));
    }
}
