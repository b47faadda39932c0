//! The adapter bottleneck `out = [x +] s * (act(x W1^T + b1) W2^T + b2)` as one CPU op
//! whose backward returns dL/dx and the four parameter gradients.
//!
//! With hidden width r = 4-8 the two products are skinny and the cost is memory traffic:
//! composed from candle ops the bottleneck makes about a dozen passes over `[tokens, D]`
//! tensors (products, bias adds, residual add, and their backward with zero-filled gradient
//! buffers and sums); this op reads `x` once and writes `out` once in the forward, and
//! reads `x` and the output gradient once and writes dL/dx once in the backward, working
//! row by row with the r hidden values in registers. Nothing is kept between forward and
//! backward: the hidden values are recomputed (r dot products per row).
//!
//! The parameters come packed, so that one `CustomOp3` carries them: `p1 = [W1 | b1]`
//! (`[r, D + 1]`) and `p2 = [W2 | b2]` (`[D, r + 1]`), concatenated by the caller with
//! differentiable ops, which route the gradients back to the four tensors.

use super::cpu::{slice, unpack, with_slice};
use super::fastmath;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Activation inside a bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// ReLU.
    Relu,
}

/// Rows per rayon task.
const ROWS: usize = 32;

/// The fused bottleneck; see the module docs.
#[derive(Clone, Copy)]
pub(crate) struct BottleneckOp {
    pub act: Activation,
    pub scale: f32,
    /// Add `x` to the output.
    pub residual: bool,
    /// Which of `x`, `p1`, `p2` need a gradient (the others get none, and their products
    /// are skipped).
    pub needs_grad: [bool; 3],
}

/// Sizes: `m` rows of width `d`, hidden width `r`.
struct Dims {
    m: usize,
    d: usize,
    r: usize,
}

/// The parameters unpacked for row-wise use: `p1` rows are `[w1_j | b1_j]`; `w2t` holds
/// `W2`'s columns as rows (`[r, D]`), `b2` the output bias.
struct Params<'a> {
    p1: &'a [f32],
    w2t: Vec<f32>,
    b2: Vec<f32>,
}

impl Params<'_> {
    fn w1(&self, j: usize, d: usize) -> (&[f32], f32) {
        let row = &self.p1[j * (d + 1)..(j + 1) * (d + 1)];
        (&row[..d], row[d])
    }
}

impl BottleneckOp {
    fn dims(&self, x: &Layout, p1: &Layout, p2: &Layout) -> Result<Dims> {
        let d = *x.dims().last().unwrap_or(&0);
        let (r, d1) = p1.shape().dims2()?;
        let (d2, r1) = p2.shape().dims2()?;
        if d == 0 || d1 != d + 1 || d2 != d || r1 != r + 1 || r == 0 {
            bail!(
                "bottleneck: packed parameters [{r}, {d1}] and [{d2}, {r1}] do not fit width {d} \
                 (expected [r, D + 1] and [D, r + 1])"
            );
        }
        Ok(Dims {
            m: x.shape().elem_count() / d,
            d,
            r,
        })
    }

    fn params<'a>(&self, p1: &'a [f32], p2: &[f32], z: &Dims) -> Params<'a> {
        let (d, r) = (z.d, z.r);
        let mut w2t = vec![0f32; r * d];
        let mut b2 = vec![0f32; d];
        for (i, row) in p2.chunks_exact(r + 1).enumerate() {
            for j in 0..r {
                w2t[j * d + i] = row[j];
            }
            b2[i] = row[r];
        }
        Params { p1, w2t, b2 }
    }

    /// One row's hidden activations `a = act(x W1^T + b1)`; `h` is left holding the
    /// activation's derivative at the pre-activations.
    fn hidden(&self, x: &[f32], p: &Params, d: usize, h: &mut [f32], a: &mut [f32]) {
        for (j, hj) in h.iter_mut().enumerate() {
            let (w, b) = p.w1(j, d);
            *hj = fastmath::dot(x, w) + b;
        }
        match self.act {
            Activation::Gelu => fastmath::gelu_fwd_grad(a, h),
            Activation::Relu => {
                for (a, h) in a.iter_mut().zip(h.iter_mut()) {
                    let on = *h > 0.0;
                    *a = if on { *h } else { 0.0 };
                    *h = if on { 1.0 } else { 0.0 };
                }
            }
        }
    }
}

/// `out += c * v`.
fn axpy(out: &mut [f32], c: f32, v: &[f32]) {
    out.iter_mut().zip(v).for_each(|(o, v)| *o += c * v);
}

impl CustomOp3 for BottleneckOp {
    fn name(&self) -> &'static str {
        "fused-bottleneck"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        p1s: &CpuStorage,
        p1l: &Layout,
        p2s: &CpuStorage,
        p2l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = self.dims(xl, p1l, p2l)?;
        let (x, p1, p2) = (slice(xs, xl)?, slice(p1s, p1l)?, slice(p2s, p2l)?);
        let p = self.params(p1, p2, &z);
        let (d, r, s) = (z.d, z.r, self.scale);
        let sb2: Vec<f32> = p.b2.iter().map(|b| s * b).collect();
        let mut out = vec![0f32; z.m * d];
        out.par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d))
            .for_each(|(o, x)| {
                let (mut h, mut a) = (vec![0f32; r], vec![0f32; r]);
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    self.hidden(x, &p, d, &mut h, &mut a);
                    if self.residual {
                        o.iter_mut()
                            .zip(x.iter().zip(&sb2))
                            .for_each(|(o, (x, b))| *o = x + b);
                    } else {
                        o.copy_from_slice(&sb2);
                    }
                    for (j, &aj) in a.iter().enumerate() {
                        axpy(o, s * aj, &p.w2t[j * d..(j + 1) * d]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p1: &Tensor,
        p2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = BottleneckBackward {
            op: *self,
            p1: p1.contiguous()?,
            p2: p2.contiguous()?,
        };
        let packed = x
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &back)?;
        let [gx, g1, g2] = self.needs_grad;
        let shapes = [
            gx.then(|| x.shape()),
            g1.then(|| p1.shape()),
            g2.then(|| p2.shape()),
        ];
        let mut parts = unpack(&packed, &shapes)?.into_iter();
        let mut next = || parts.next().flatten();
        Ok((next(), next(), next()))
    }
}

/// The backward of [`BottleneckOp`], an op of its own: `(x, grad)` in (the packed
/// parameters held here), `[dx | dp1 | dp2]` out as one flat buffer, each part only where
/// [`BottleneckOp::needs_grad`] asks for it. One pass over the rows, the hidden values
/// recomputed; the parameter gradients summed over fixed parts of rows in order, so the
/// result does not depend on the thread count. The CPU entry is below; a device kernel is
/// its `cuda_fwd`.
pub(crate) struct BottleneckBackward {
    op: BottleneckOp,
    /// `[W1 | b1]`, `[r, D + 1]`, contiguous.
    p1: Tensor,
    /// `[W2 | b2]`, `[D, r + 1]`, contiguous.
    p2: Tensor,
}

/// Partial sums of the parameter gradients over some rows: `[r, D + 1]` (as p1) and
/// `[r + 1, D]` (W2's columns, then b2).
type Partial = (Vec<f32>, Vec<f32>);

impl BottleneckBackward {
    fn zero(z: &Dims) -> Partial {
        (vec![0f32; z.r * (z.d + 1)], vec![0f32; (z.r + 1) * z.d])
    }

    /// The rows `x`, `g` (whole rows of width D) of one part: their input gradients into
    /// `dx` (when asked for) and their parameter-gradient sums.
    fn part(&self, p: &Params, z: &Dims, x: &[f32], g: &[f32], dx: &mut [f32]) -> Partial {
        let (d, r, s) = (z.d, z.r, self.op.scale);
        let [gx, g1, g2] = self.op.needs_grad;
        let (mut a1, mut a2) = Self::zero(z);
        let (mut h, mut a) = (vec![0f32; r], vec![0f32; r]);
        let mut gh = vec![0f32; r];
        for (i, (x, g)) in x.chunks_exact(d).zip(g.chunks_exact(d)).enumerate() {
            self.op.hidden(x, p, d, &mut h, &mut a);
            for j in 0..r {
                let dl_da = s * fastmath::dot(g, &p.w2t[j * d..(j + 1) * d]);
                gh[j] = dl_da * h[j];
            }
            if gx {
                let dx = &mut dx[i * d..(i + 1) * d];
                if self.op.residual {
                    dx.copy_from_slice(g);
                }
                for (j, &c) in gh.iter().enumerate() {
                    axpy(dx, c, p.w1(j, d).0);
                }
            }
            if g2 {
                for (j, &aj) in a.iter().enumerate() {
                    axpy(&mut a2[j * d..(j + 1) * d], s * aj, g);
                }
                axpy(&mut a2[r * d..], s, g);
            }
            if g1 {
                for (j, &c) in gh.iter().enumerate() {
                    let row = &mut a1[j * (d + 1)..(j + 1) * (d + 1)];
                    axpy(&mut row[..d], c, x);
                    row[d] += c;
                }
            }
        }
        (a1, a2)
    }

    /// `out[..M D]` = dx (when asked for), then the parameter gradients appended: `[r, D +
    /// 1]` and `[D, r + 1]` (p1's and p2's layouts), each when asked for.
    fn backward(&self, p: &Params, z: &Dims, xs: &[f32], gs: &[f32], out: &mut Vec<f32>) {
        let [gx, g1, g2] = self.op.needs_grad;
        // Fixed parts of rows, summed in order: the same sums on any number of threads.
        let part = super::cpu::part_rows(z.m, ROWS) * z.d;
        let rows = xs.par_chunks(part).zip(gs.par_chunks(part));
        let parts: Vec<Partial> = if gx {
            out.resize(z.m * z.d, 0f32);
            rows.zip(out.par_chunks_mut(part))
                .map(|((x, g), dx)| self.part(p, z, x, g, dx))
                .collect()
        } else {
            rows.map(|(x, g)| self.part(p, z, x, g, &mut [])).collect()
        };
        let add = |(mut a1, mut a2): Partial, (b1, b2): Partial| {
            axpy(&mut a1, 1.0, &b1);
            axpy(&mut a2, 1.0, &b2);
            (a1, a2)
        };
        let (a1, a2) = parts
            .into_iter()
            .reduce(add)
            .unwrap_or_else(|| Self::zero(z));
        if g1 {
            out.extend_from_slice(&a1);
        }
        if g2 {
            // Back to p2's layout `[D, r + 1]`.
            let (d, r) = (z.d, z.r);
            out.extend((0..d * (r + 1)).map(|k| a2[(k % (r + 1)) * d + k / (r + 1)]));
        }
    }
}

impl CustomOp2 for BottleneckBackward {
    fn name(&self) -> &'static str {
        "fused-bottleneck-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = self.op.dims(xl, self.p1.layout(), self.p2.layout())?;
        let (xs, gs) = (slice(xs, xl)?, slice(gs, gl)?);
        if gs.len() != xs.len() {
            bail!(
                "bottleneck backward: {} inputs, {} gradients",
                xs.len(),
                gs.len()
            );
        }
        let [gx, g1, g2] = self.op.needs_grad;
        let len = usize::from(gx) * z.m * z.d
            + usize::from(g1) * z.r * (z.d + 1)
            + usize::from(g2) * z.d * (z.r + 1);
        let mut out = Vec::with_capacity(len);
        with_slice(&self.p1, |p1| {
            with_slice(&self.p2, |p2| {
                let p = self.op.params(p1, p2, &z);
                self.backward(&p, &z, xs, gs, &mut out);
                Ok(())
            })
        })?;
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
