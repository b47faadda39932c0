//! bf16 products on the CPU: bfloat16 inputs, f32 accumulation and output, the products of
//! `precision: bf16` (see [`crate::precision::Precision`]).
//!
//! The kernel is OpenBLAS's `cblas_sbgemm`, loaded at run time with `cblas_sgemm`
//! ([`super::blas`]). It is used only where it runs at the hardware's bf16 speed: the CPU
//! has AVX512-BF16 (`vdpbf16ps`) and OpenBLAS chose kernels that use it (its Cooperlake or
//! SapphireRapids families; with `OPENBLAS_CORETYPE=Haswell`, for example, its sbgemm is a
//! generic C loop). Everywhere else `gemm::cpu_bf16` says why not and the model keeps its f32
//! products (a clean fallback, no conversions). Why OpenBLAS: the project already loads it
//! for f32; the `gemm` crate has no bf16 dot-product kernels, and oneDNN has no well-kept
//! Rust binding.
//!
//! [`Bf16Kernel::Emulated`] gives the same numbers without the hardware (operands rounded
//! to bf16, products and sums in f32 through the `gemm` crate): tests use it to check the
//! mixed-precision path on any machine. It is slower than f32 and never chosen by default.

use super::blas::OpenBlas;
use super::view::{mm, View};
use half::bf16;
use std::fmt;

/// The kernel of the CPU bf16 products.
#[derive(Clone, Copy)]
pub enum Bf16Kernel {
    /// OpenBLAS's `cblas_sbgemm` (AVX512-BF16).
    Sbgemm(&'static OpenBlas),
    /// Operands rounded to bf16, product in f32 (the `gemm` crate): same numbers as a bf16
    /// kernel up to summation order, on any CPU; for tests.
    Emulated,
}

impl fmt::Debug for Bf16Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Bf16Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bf16Kernel::Sbgemm(b) => write!(f, "OpenBLAS cblas_sbgemm, {} kernels", b.core()),
            Bf16Kernel::Emulated => write!(f, "emulated (bf16-rounded operands, f32 gemm crate)"),
        }
    }
}

impl PartialEq for Bf16Kernel {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Bf16Kernel::Sbgemm(a), Bf16Kernel::Sbgemm(b)) => std::ptr::eq(*a, *b),
            (Bf16Kernel::Emulated, Bf16Kernel::Emulated) => true,
            _ => false,
        }
    }
}

/// Whether this CPU has the AVX512-BF16 instructions.
pub fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `src` rounded to bf16 (to nearest, ties to even; NaN stays NaN).
pub(crate) fn to_bf16(src: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; src.len()];
    to_bf16_into(src, &mut out);
    out
}

/// [`to_bf16`] into `dst` (same length). A plain loop over the bits, which vectorises.
pub(crate) fn to_bf16_into(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "to_bf16: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        let b = s.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        *d = bf16::from_bits(if s.is_nan() { 0x7fc0 } else { rounded });
    }
}

impl Bf16Kernel {
    /// `dst (m x n) = [dst +] alpha * lhs (m x k) * rhs (k x n)` on strided views of bf16
    /// operands, f32 accumulation and output, single-threaded, bounds-checked. `dst`'s
    /// view must have unit column stride, the operands' one unit stride.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mm(
        self,
        dst: &mut [f32],
        d: View,
        acc: bool,
        lhs: &[bf16],
        l: View,
        rhs: &[bf16],
        r: View,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
    ) {
        d.check(m, n, dst.len());
        l.check(m, k, lhs.len());
        r.check(k, n, rhs.len());
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !acc {
                // Zero the view's elements only: dst may hold other views' results.
                for i in 0..m {
                    let row = d.offset() + i * d.cblas(m, n).map_or(n, |c| c.1);
                    dst[row..row + n].fill(0.0);
                }
            }
            return;
        }
        match self {
            Bf16Kernel::Sbgemm(b) => b.sbgemm_views(dst, d, acc, lhs, l, rhs, r, (m, n, k), alpha),
            Bf16Kernel::Emulated => {
                let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
                mm(dst, d, acc, &widen(lhs), l, &widen(rhs), r, m, n, k, alpha);
            }
        }
    }
}

/// An operand of [`mm_any`]: f32, or bf16 for a bf16 kernel.
#[derive(Clone, Copy)]
pub(crate) enum Mat<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// A matrix operand kept as given (`kernel` None: f32 products) or rounded to bf16 once
/// (a kernel given), for the attention's per-head products.
pub(crate) enum Operand<'a> {
    F32(&'a [f32]),
    Bf16(Vec<bf16>),
}

impl<'a> Operand<'a> {
    /// `v` for the products of `kernel`.
    pub(crate) fn new(v: &'a [f32], kernel: Option<Bf16Kernel>) -> Self {
        match kernel {
            None => Operand::F32(v),
            Some(_) => Operand::Bf16(to_bf16(v)),
        }
    }

    pub(crate) fn mat(&self) -> Mat<'_> {
        match self {
            Operand::F32(s) => Mat::F32(s),
            Operand::Bf16(b) => Mat::Bf16(b),
        }
    }
}

/// `dst (m x n) = [dst +] alpha * lhs * rhs` (see [`mm`]): f32 operands through the `gemm`
/// crate, bf16 operands through `kernel`.
///
/// # Panics
/// If the operands' types do not match `kernel` (both f32 without, both bf16 with one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_any(
    kernel: Option<Bf16Kernel>,
    dst: &mut [f32],
    d: View,
    acc: bool,
    lhs: Mat,
    l: View,
    rhs: Mat,
    r: View,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
) {
    match (kernel, lhs, rhs) {
        (None, Mat::F32(a), Mat::F32(b)) => mm(dst, d, acc, a, l, b, r, m, n, k, alpha),
        (Some(kr), Mat::Bf16(a), Mat::Bf16(b)) => kr.mm(dst, d, acc, a, l, b, r, (m, n, k), alpha),
        _ => panic!("mm_any: operand types do not match the kernel"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_bf16_is_to_nearest_even_like_the_half_crate() {
        let vals = [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0, // a tie: stays 1.0 (even)
            1.0 + 3.0 / 256.0, // a tie: rounds up to 1 + 2/128
            -2.71234,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            1.2345e-20,
        ];
        let got = to_bf16(&vals);
        for (v, g) in vals.iter().zip(&got) {
            assert_eq!(g.to_bits(), bf16::from_f32(*v).to_bits(), "{v}");
        }
        assert!(to_bf16(&[f32::NAN])[0].is_nan());
    }
}
