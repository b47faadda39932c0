//! Linear layer with a frozen weight: the backward returns only dL/dx, so the
//! weight-gradient GEMM that candle's matmul backward always computes is skipped and no
//! gradient buffer is allocated for the frozen weight.

use super::cpu::{slice, with_slice};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `x [.., K] -> x W^T + b` with `W [N, K]` and `b [N]` frozen; fused on CPU.
pub(crate) struct FrozenLinearOp {
    /// Contiguous `[N, K]` weight.
    pub w: Tensor,
    /// Optional contiguous `[N]` bias.
    pub b: Option<Tensor>,
}

/// `dst[m, n] (+)= sum_k lhs[m, k] * w[n, k]` for row-major `lhs [m, k]`, `w [n, k]`, `dst [m, n]`.
pub(crate) fn gemm_xwt(
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(
        dst.len() == m * n && lhs.len() == m * k && w.len() == n * k,
        "gemm_xwt: bad sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 && m * n * k >= 32 * 32 * 32 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three buffers have exactly the sizes implied by (m, n, k) and the strides
    // below (checked by the assert), `dst` is uniquely borrowed and does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let dims = l.dims();
        let k = dims[dims.len() - 1];
        let (n, wk) = self.w.dims2()?;
        if wk != k {
            bail!("frozen_linear: input has {k} features, weight expects {wk}");
        }
        let m = x.len() / k.max(1);
        let mut out = vec![0f32; m * n];
        let accumulate = match &self.b {
            Some(b) => {
                with_slice(b, |bs| {
                    out.chunks_mut(n).for_each(|row| row.copy_from_slice(bs));
                    Ok(())
                })?;
                true
            }
            None => false,
        };
        with_slice(&self.w, |ws| {
            gemm_xwt(&mut out, accumulate, x, ws, m, n, k);
            Ok(())
        })?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = self.w.dim(0)?;
        let g2 = grad.reshape(((), n))?;
        let dx = g2.matmul(&self.w)?;
        Ok(Some(dx.reshape(x.shape())?))
    }
}
