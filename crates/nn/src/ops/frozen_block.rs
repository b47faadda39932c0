//! The two residual halves of a pre-norm ViT block whose backbone tensors are all frozen,
//! each as one CPU op with a hand-written backward that returns only dL/dx:
//!
//! * attention half: `x + s * proj(attention(qkv(LN1(x))))`
//! * MLP half: `x + s * fc2(GELU(fc1(LN2(x))))`
//!
//! where `s` is the per-sample drop-path factor (1 when drop path is off). Against the same
//! computation as separate fused ops this removes, per half, about ten candle graph nodes,
//! each of which costs candle's backward a zero-filled gradient buffer plus an add pass
//! over a `[tokens, width]` tensor, and it keeps only one inner activation (the qkv
//! projection, or GELU's derivative at the MLP hidden state, which the forward computes in the
//! same pass as GELU) instead of every intermediate, plus the attention probabilities where
//! [`super::attention::keeps_probs`] allows. LayerNorm statistics are recomputed in the
//! backward; the backward hands what was kept back to the allocator as it goes.
//! The numbers are those of the separate fused ops (tested against the composed model).
//!
//! An attention half with [`Tokens::Cls`] returns only the class token's row `[B, 1, D]`:
//! its projection and residual run on one row per sample, and its backward still reaches
//! every token through the keys and values.

use super::attention::{AttentionOp, Tokens};
use super::bf16::Bf16Kernel;
use super::cpu::{slice, with_bf16_slice};
use super::frozen_linear::{input_grad, linear_rows};
use super::gemm::Weight;
use super::{gelu, layer_norm};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Elements per rayon task of the residual add.
const CHUNK: usize = 4096;

/// Which half, with its shape parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Half {
    /// LN1 -> qkv -> attention with `heads` heads -> proj, for the outputs of `tokens`.
    Attn { heads: usize, tokens: Tokens },
    /// LN2 -> fc1 -> GELU -> fc2.
    Mlp,
}

/// Frozen tensors of one half: norm weight and bias `[D]`, first linear weight `[H, D]`
/// (+ bias `[H]`; qkv or fc1), second linear weight `[D, K]` (+ bias `[D]`; proj or fc2).
#[derive(Clone, Debug)]
pub(crate) struct HalfWeights {
    pub norm_w: Tensor,
    pub norm_b: Tensor,
    pub w1: Tensor,
    pub b1: Option<Tensor>,
    pub w2: Tensor,
    pub b2: Option<Tensor>,
    /// bf16 mixed precision on the CPU: contiguous bf16 copies of `w1` and `w2` and the
    /// kernel for them. The half's products (both linears and the attention's per-head
    /// products, forward and backward) then take bf16 inputs with f32 accumulation;
    /// LayerNorm, softmax, GELU and the residual stay f32.
    pub low: Option<(Tensor, Tensor, Bf16Kernel)>,
}

/// What a half's forward and backward share: which half, its frozen tensors, the LayerNorm
/// epsilon and the per-sample drop-path factors.
pub(crate) struct HalfCore {
    pub half: Half,
    pub weights: HalfWeights,
    pub eps: f32,
    /// Per-sample factor of the branch (drop path); `None` = 1 for every sample.
    pub scale: Option<Vec<f32>>,
}

/// One residual half as a custom op on `x [B, N, D]`; its backward is
/// [`ResidualHalfBackward`].
pub(crate) struct ResidualHalfOp {
    core: Arc<HalfCore>,
    /// Keep the inner activation for the backward (set when `x` is part of a graph).
    keep: bool,
    /// What the forward keeps for the backward.
    saved: Mutex<Option<Saved>>,
}

impl ResidualHalfOp {
    /// The op for `core`; `keep`: a backward may follow (the input is part of a graph), so
    /// the forward keeps what the backward needs.
    pub(crate) fn new(core: HalfCore, keep: bool) -> Self {
        ResidualHalfOp {
            core: Arc::new(core),
            keep,
            saved: Mutex::new(None),
        }
    }
}

/// The backward of [`ResidualHalfOp`], an op of its own: `(x, grad)` in, `dL/dx` out, from
/// what the forward kept (recomputed when it kept nothing). The CPU entry is below; a device
/// kernel is its `cuda_fwd`.
pub(crate) struct ResidualHalfBackward {
    core: Arc<HalfCore>,
    /// Taken by the CPU entry, which frees it as soon as it is used.
    saved: Mutex<Option<Saved>>,
}

/// Activations a half's forward keeps for its backward.
pub(crate) struct Saved {
    /// The qkv projection `[M, 3D]` (attention half), or GELU's derivative at the
    /// pre-GELU hidden state `[M, H]` (MLP half).
    inner: Vec<f32>,
    /// The attention probabilities `[B, heads, N, N]`, where kept.
    probs: Option<Vec<f32>>,
}

/// The sizes of one call: `b` samples of `n` tokens of width `d` in, `nq` tokens per sample
/// out; inner width `h` (3D or the MLP hidden width), middle width `k` (D or the hidden).
struct Sizes {
    b: usize,
    n: usize,
    nq: usize,
    d: usize,
    h: usize,
    k: usize,
}

impl Sizes {
    /// Input rows.
    fn m(&self) -> usize {
        self.b * self.n
    }
    /// Output rows.
    fn mq(&self) -> usize {
        self.b * self.nq
    }
}

/// The weight slices of a half.
struct W<'a> {
    nw: &'a [f32],
    nb: &'a [f32],
    w1: Weight<'a>,
    b1: Option<&'a [f32]>,
    w2: Weight<'a>,
    b2: Option<&'a [f32]>,
}

impl HalfWeights {
    /// The same tensors detached and contiguous, as the op reads them.
    pub(crate) fn prepared(&self) -> Result<HalfWeights> {
        let c = |t: &Tensor| t.detach().contiguous();
        Ok(HalfWeights {
            norm_w: c(&self.norm_w)?,
            norm_b: c(&self.norm_b)?,
            w1: c(&self.w1)?,
            b1: self.b1.as_ref().map(c).transpose()?,
            w2: c(&self.w2)?,
            b2: self.b2.as_ref().map(c).transpose()?,
            low: match &self.low {
                Some((l1, l2, k)) => Some((l1.contiguous()?, l2.contiguous()?, *k)),
                None => None,
            },
        })
    }
}

impl HalfCore {
    fn with_weights<R>(&self, f: impl FnOnce(&W) -> Result<R>) -> Result<R> {
        let hw = &self.weights;
        let mut ts = vec![&hw.norm_w, &hw.norm_b, &hw.w1, &hw.w2];
        ts.extend(hw.b1.iter());
        ts.extend(hw.b2.iter());
        // Read guards on the weight storages, held while `f` runs on their data.
        let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
        let s = guards
            .iter()
            .map(|(s, l)| match &**s {
                Storage::Cpu(c) => slice(c, l),
                _ => bail!("frozen block: weights must be on the CPU"),
            })
            .collect::<Result<Vec<&[f32]>>>()?;
        let mut rest = s[4..].iter().copied();
        let w = W {
            nw: s[0],
            nb: s[1],
            w1: Weight::F32(s[2]),
            b1: hw.b1.as_ref().and_then(|_| rest.next()),
            w2: Weight::F32(s[3]),
            b2: hw.b2.as_ref().and_then(|_| rest.next()),
        };
        match &hw.low {
            None => f(&w),
            Some((l1, l2, kernel)) => with_bf16_slice(l1, |l1| {
                with_bf16_slice(l2, |l2| {
                    f(&W {
                        w1: Weight::Bf16(l1, *kernel),
                        w2: Weight::Bf16(l2, *kernel),
                        ..w
                    })
                })
            }),
        }
    }

    /// The kernel of the bf16 products; `None`: f32.
    fn kernel(&self) -> Option<Bf16Kernel> {
        self.weights.low.as_ref().map(|l| l.2)
    }

    /// The sizes for input dims `[B, N, D]`, checking the weight shapes.
    fn dims(&self, dims: &[usize]) -> Result<Sizes> {
        let [b, n, d] = dims else {
            bail!("frozen block: input must be [B, N, D], got {dims:?}")
        };
        let (h, d1) = self.weights.w1.dims2()?;
        let (d2, k) = self.weights.w2.dims2()?;
        let k_want = match self.half {
            Half::Attn { .. } => h / 3,
            Half::Mlp => h,
        };
        if d1 != *d || d2 != *d || k != k_want || self.weights.norm_w.elem_count() != *d {
            bail!(
                "frozen block: weights [{h}, {d1}] / [{d2}, {k}] do not fit width {d} ({:?})",
                self.half
            );
        }
        if let Some(s) = &self.scale {
            if s.len() != *b {
                bail!(
                    "frozen block: {} drop-path factors for {b} samples",
                    s.len()
                );
            }
        }
        let nq = match self.half {
            Half::Attn { tokens, .. } => tokens.rows(*n),
            Half::Mlp => *n,
        };
        Ok(Sizes {
            b: *b,
            n: *n,
            nq,
            d: *d,
            h,
            k,
        })
    }

    /// The inner activation: `LN(x) W1^T + b1`.
    fn inner(&self, x: &[f32], w: &W, m: usize, d: usize, h: usize) -> Vec<f32> {
        let mut n = vec![0f32; m * d];
        layer_norm::forward_rows(x, w.nw, w.nb, self.eps, &mut n);
        linear_rows(&n, w.w1, w.b1, m, h, d)
    }

    fn attention(&self, z: &Sizes) -> Result<(AttentionOp, super::attention::Dims)> {
        let Half::Attn { heads, tokens } = self.half else {
            bail!("frozen block: not an attention half")
        };
        let op = AttentionOp::new(heads, tokens, false).with_kernel(self.kernel());
        let (_, dm) = op.dims(&[z.b, z.n, 3 * z.d])?;
        Ok((op, dm))
    }

    /// Multiplies each sample's rows of `v` (`rows_per_sample * width` values per sample)
    /// by its factor.
    fn scale_rows(&self, v: &mut [f32], per_sample: usize) {
        if let Some(s) = self.scale.as_ref().filter(|_| per_sample > 0) {
            v.par_chunks_mut(per_sample)
                .zip(s.par_iter())
                .for_each(|(c, &f)| c.iter_mut().for_each(|x| *x *= f));
        }
    }
}

/// `out [B, Nq, D] += x`'s first `Nq` rows of each sample (`x [B, N, D]`).
fn add_residual(out: &mut [f32], x: &[f32], z: &Sizes) {
    if z.nq == z.n {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(add);
    } else {
        out.par_chunks_mut(z.nq * z.d)
            .zip(x.par_chunks(z.n * z.d))
            .for_each(|(o, x)| add((o, &x[..z.nq * z.d])));
    }
}

/// The first `Nq` rows of each sample of `dx [B, N, D]` += `g [B, Nq, D]`.
fn add_residual_grad(dx: &mut [f32], g: &[f32], z: &Sizes) {
    dx.par_chunks_mut(z.n * z.d)
        .zip(g.par_chunks(z.nq * z.d))
        .for_each(|(dx, g)| add((&mut dx[..g.len()], g)));
}

fn add((a, b): (&mut [f32], &[f32])) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

impl CustomOp1 for ResidualHalfOp {
    fn name(&self) -> &'static str {
        match self.core.half {
            Half::Attn { .. } => "frozen-attention-residual",
            Half::Mlp => "frozen-mlp-residual",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let c = &*self.core;
        let z = c.dims(l.dims())?;
        let (out, saved) = c.with_weights(|w| c.forward(x, w, &z, self.keep))?;
        if let Some(saved) = saved {
            *self.saved.lock().expect("frozen block: poisoned") = Some(saved);
        }
        Ok((CpuStorage::F32(out), Shape::from((z.b, z.nq, z.d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Taken, not borrowed, so the memory goes back as the backward proceeds; a second
        // backward over the same graph finds nothing and recomputes.
        let back = ResidualHalfBackward {
            core: self.core.clone(),
            saved: Mutex::new(self.saved.lock().expect("frozen block: poisoned").take()),
        };
        let x = x.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

impl HalfCore {
    /// The forward on the rows of `x`: the output `[B, Nq, D]`, and with `keep` what the
    /// backward needs.
    fn forward(
        &self,
        x: &[f32],
        w: &W,
        z: &Sizes,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Saved>)> {
        let (m, mq, d, h, k) = (z.m(), z.mq(), z.d, z.h, z.k);
        let mut inner = self.inner(x, w, m, d, h);
        let mut probs = None;
        let mid = match self.half {
            Half::Attn { .. } => {
                let (op, dm) = self.attention(z)?;
                let mut o = vec![0f32; mq * k];
                probs = op.forward(&inner, &dm, &mut o, keep);
                o
            }
            Half::Mlp => {
                let mut o = vec![0f32; m * k];
                if keep {
                    gelu::forward_keeping_grad(&mut o, &mut inner);
                } else {
                    gelu::forward(&mut o, &inner);
                }
                o
            }
        };
        let mut out = linear_rows(&mid, w.w2, w.b2, mq, d, k);
        drop(mid);
        self.scale_rows(&mut out, z.nq * d);
        add_residual(&mut out, x, z);
        Ok((out, keep.then_some(Saved { inner, probs })))
    }

    /// dL/dx from `x`, the output gradient `g` and what the forward kept (`None`:
    /// recomputed), freeing each kept activation as soon as it is used.
    fn backward(
        &self,
        xs: &[f32],
        gs: &[f32],
        w: &W,
        z: &Sizes,
        saved: Option<Saved>,
    ) -> Result<Vec<f32>> {
        let (m, mq, d, h, k) = (z.m(), z.mq(), z.d, z.h, z.k);
        let Saved { inner: kept, probs } = match saved {
            Some(s) => s,
            None => {
                let mut inner = self.inner(xs, w, m, d, h);
                if let Half::Mlp = self.half {
                    gelu::grad_in_place(&mut inner);
                }
                Saved { inner, probs: None }
            }
        };
        // Gradient of the middle activation: (s g) W2, scaled per sample afterwards.
        let mut gmid = input_grad(gs, w.w2, mq, k, d);
        self.scale_rows(&mut gmid, z.nq * k);
        let ginner = match self.half {
            Half::Attn { .. } => {
                let (op, dm) = self.attention(z)?;
                let mut ginner = vec![0f32; m * h];
                op.backward(&kept, probs.as_deref(), &gmid, &dm, &mut ginner);
                ginner
            }
            Half::Mlp => {
                gelu::mul_in_place(&mut gmid, &kept);
                gmid
            }
        };
        drop((kept, probs));
        let gn = input_grad(&ginner, w.w1, m, d, h);
        drop(ginner);
        let mut dx = vec![0f32; m * d];
        if z.nq == z.n {
            layer_norm::backward_rows(xs, w.nw, &gn, self.eps, Some(gs), &mut dx);
        } else {
            // The residual's gradient reaches only the rows that were output.
            layer_norm::backward_rows(xs, w.nw, &gn, self.eps, None, &mut dx);
            add_residual_grad(&mut dx, gs, z);
        }
        Ok(dx)
    }
}

impl CustomOp2 for ResidualHalfBackward {
    fn name(&self) -> &'static str {
        match self.core.half {
            Half::Attn { .. } => "frozen-attention-residual-backward",
            Half::Mlp => "frozen-mlp-residual-backward",
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = &*self.core;
        let z = c.dims(xl.dims())?;
        let (xs, gs) = (slice(xs, xl)?, slice(gs, gl)?);
        if gs.len() != z.mq() * z.d {
            bail!(
                "frozen block backward: {} gradients for [{}, {}, {}]",
                gs.len(),
                z.b,
                z.nq,
                z.d
            );
        }
        let saved = self.saved.lock().expect("frozen block: poisoned").take();
        let dx = c.with_weights(|w| c.backward(xs, gs, w, &z, saved))?;
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}
