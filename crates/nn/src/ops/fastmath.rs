//! Branch-free f32 `exp` and GELU kernels that the compiler vectorises (the scalar libm
//! `expf` / `erff` calls they replace took ~20% of a small-model CPU training step).
//! On x86-64 the slice kernels are compiled twice and the AVX2+FMA copy is picked at run
//! time; elsewhere the portable copy runs.
//!
//! Accuracy (checked in the tests against f64 references): `exp` relative error < 3e-7 on
//! [-87, 88] (exactly 0 below -87.3, like `expf`'s underflow to subnormals, which is
//! immaterial for softmax and GELU), `erf` absolute error < 6e-7 (Abramowitz & Stegun 7.1.26,
//! |error| <= 1.5e-7, plus its evaluation in f32 and the `exp` error); GELU and its
//! derivative within 5e-7 of the f64 values.

use std::f32::consts::{FRAC_1_SQRT_2, LOG2_E};

/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9 (`LN2_HI` has 9 trailing zero
/// bits); `LN2_LO` is the rest, ln 2 - 0.693145751953125, written out because the f32
/// rounding of ln 2 itself is larger than the precision needed here.
const LN2_HI: f32 = 0.693_145_75;
#[allow(clippy::excessive_precision)]
const LN2_LO: f32 = 1.428_606_820_309_417_2e-6;

/// `e^x` for finite `x`, clamped to `[e^-87.3, e^88.3]` (0 below -87.3).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let below = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2_E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor polynomial of e^r on |r| <= ln2/2 (truncation error < 6e-9 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if below {
        0.0
    } else {
        p * scale
    }
}

/// `erf(z)` given `e = exp(-z^2)` (Abramowitz & Stegun 7.1.26).
#[inline(always)]
fn erf_with(z: f32, e: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let a = z.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * e;
    if z < 0.0 {
        -y
    } else {
        y
    }
}

/// `erf(z)` (the tests' handle on the shared kernel).
#[cfg(test)]
fn erf(z: f32) -> f32 {
    erf_with(z, exp(-z * z))
}

/// `1 / sqrt(2 pi)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `(GELU(v), GELU'(v))` from one exp and one erf: `exp(-v^2 / 2)` is both the erf's
/// `exp(-z^2)` for `z = v / sqrt 2` and the derivative's density term. Every GELU kernel
/// below uses this one formula, so they agree bit for bit; a kernel that uses only one of
/// the two results lets the compiler drop the other's arithmetic.
#[inline(always)]
fn gelu_and_grad(v: f32) -> (f32, f32) {
    let e = exp(-0.5 * v * v);
    let erf = erf_with(v * FRAC_1_SQRT_2, e);
    (
        0.5 * v * (1.0 + erf),
        0.5 * (1.0 + erf) + v * INV_SQRT_2PI * e,
    )
}

#[inline(always)]
fn gelu_fwd_portable(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu_and_grad(v).0;
    }
}

#[inline(always)]
fn gelu_bwd_portable(dx: &mut [f32], x: &[f32], g: &[f32]) {
    for ((d, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
        *d = gv * gelu_and_grad(v).1;
    }
}

/// `out = GELU(x)` and `x <- GELU'(x)` in one pass: the forward of a frozen MLP keeps the
/// derivative instead of the input, so its backward is one multiply.
#[inline(always)]
fn gelu_fwd_grad_portable(out: &mut [f32], x: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x.iter_mut()) {
        (*o, *v) = gelu_and_grad(*v);
    }
}

/// `x <- GELU'(x)`.
#[inline(always)]
fn gelu_grad_inplace_portable(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu_and_grad(*v).1;
    }
}

/// Lanes of the partial sums in the reductions below: independent accumulators let the
/// compiler vectorise a floating-point reduction (a single running sum cannot be reordered).
const LANES: usize = 8;

// The exp loops below are plain maps (which the loop vectoriser handles, like the GELU
// loops); the sum is a second pass over the row, still in L1, with lane-wise partial sums.

#[inline(always)]
fn exp_sub_portable(out: &mut [f32], x: &[f32], shift: f32) -> f32 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp(v - shift);
    }
    sum_portable(out)
}

#[inline(always)]
fn exp_sub_inplace_portable(x: &mut [f32], shift: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp(*v - shift);
    }
    sum_portable(x)
}

/// The largest element (`-inf` for an empty slice); NaN-free input assumed.
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut xc = x.chunks_exact(LANES);
    for xs in &mut xc {
        for j in 0..LANES {
            acc[j] = if xs[j] > acc[j] { xs[j] } else { acc[j] };
        }
    }
    let m = xc
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    acc.iter().fold(m, |a, &b| a.max(b))
}

/// `sum_i a[i] * b[i]` over the common length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ac = a.chunks_exact(LANES);
    let mut bc = b.chunks_exact(LANES);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum_i a[i]`.
pub fn sum(a: &[f32]) -> f32 {
    sum_portable(a)
}

#[inline(always)]
fn sum_portable(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ac = a.chunks_exact(LANES);
    for x in &mut ac {
        for j in 0..LANES {
            acc[j] += x[j];
        }
    }
    acc.iter().sum::<f32>() + ac.remainder().iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_inplace(x: &mut [f32], shift: f32) -> f32 {
        super::exp_sub_inplace_portable(x, shift)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_fwd(out: &mut [f32], x: &[f32]) {
        super::gelu_fwd_portable(out, x)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_bwd(dx: &mut [f32], x: &[f32], g: &[f32]) {
        super::gelu_bwd_portable(dx, x, g)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_fwd_grad(out: &mut [f32], x: &mut [f32]) {
        super::gelu_fwd_grad_portable(out, x)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_grad_inplace(x: &mut [f32]) {
        super::gelu_grad_inplace_portable(x)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub(out: &mut [f32], x: &[f32], shift: f32) -> f32 {
        super::exp_sub_portable(out, x, shift)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `out[i] = gelu(x[i])` (exact-erf GELU).
pub fn gelu_fwd(out: &mut [f32], x: &[f32]) {
    assert_eq!(out.len(), x.len(), "gelu_fwd: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::gelu_fwd(out, x) };
    }
    gelu_fwd_portable(out, x)
}

/// `dx[i] = g[i] * gelu'(x[i])`.
pub fn gelu_bwd(dx: &mut [f32], x: &[f32], g: &[f32]) {
    assert!(
        dx.len() == x.len() && x.len() == g.len(),
        "gelu_bwd: length mismatch"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::gelu_bwd(dx, x, g) };
    }
    gelu_bwd_portable(dx, x, g)
}

/// `out[i] = gelu(x[i])` and `x[i] <- gelu'(x[i])` in one pass.
pub fn gelu_fwd_grad(out: &mut [f32], x: &mut [f32]) {
    assert_eq!(out.len(), x.len(), "gelu_fwd_grad: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::gelu_fwd_grad(out, x) };
    }
    gelu_fwd_grad_portable(out, x)
}

/// `x[i] <- gelu'(x[i])`.
pub fn gelu_grad_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::gelu_grad_inplace(x) };
    }
    gelu_grad_inplace_portable(x)
}

/// `out[i] = exp(x[i] - shift)`; returns the sum of `out` (the softmax denominator).
pub fn exp_sub(out: &mut [f32], x: &[f32], shift: f32) -> f32 {
    assert_eq!(out.len(), x.len(), "exp_sub: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::exp_sub(out, x, shift) };
    }
    exp_sub_portable(out, x, shift)
}

/// `x[i] = exp(x[i] - shift)` in place; returns the new sum of `x`.
pub fn exp_sub_inplace(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx2::exp_sub_inplace(x, shift) };
    }
    exp_sub_inplace_portable(x, shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f64 / n as f64)
    }

    #[test]
    fn exp_relative_error() {
        let mut worst = 0f64;
        for x in grid(-87.0, 88.0, 200_000) {
            let x32 = x as f32;
            let want = (x32 as f64).exp();
            let rel = ((exp(x32) as f64) - want).abs() / want;
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "exp max rel error {worst:e}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(88.3).is_finite() && exp(1000.0).is_finite());
    }

    #[test]
    fn erf_absolute_error() {
        let mut worst = 0f64;
        for z in grid(-6.0, 6.0, 120_000) {
            let z32 = z as f32;
            let want = candle_core::cpu::erf::erf_f64(z32 as f64);
            worst = worst.max((erf(z32) as f64 - want).abs());
        }
        assert!(worst < 6e-7, "erf max abs error {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_f64() {
        let xs: Vec<f32> = grid(-10.0, 10.0, 20_001).map(|x| x as f32).collect();
        let mut y = vec![0f32; xs.len()];
        gelu_fwd(&mut y, &xs);
        let ones = vec![1f32; xs.len()];
        let mut d = vec![0f32; xs.len()];
        gelu_bwd(&mut d, &xs, &ones);
        let (mut ey, mut ed) = (0f64, 0f64);
        for i in 0..xs.len() {
            let x = xs[i] as f64;
            let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            ey = ey.max((y[i] as f64 - x * cdf).abs() / x.abs().max(1.0));
            ed = ed.max((d[i] as f64 - (cdf + x * pdf)).abs());
        }
        assert!(ey < 5e-7, "gelu error {ey:e}");
        assert!(ed < 5e-7, "gelu' error {ed:e}");
    }

    #[test]
    fn gelu_with_its_derivative_in_one_pass_is_bit_identical_to_the_separate_kernels() {
        let xs: Vec<f32> = grid(-9.0, 9.0, 4_099).map(|x| x as f32).collect();
        let mut y = vec![0f32; xs.len()];
        gelu_fwd(&mut y, &xs);
        let mut d = vec![0f32; xs.len()];
        gelu_bwd(&mut d, &xs, &vec![1f32; xs.len()]);
        let mut y1 = vec![0f32; xs.len()];
        let mut d1 = xs.clone();
        gelu_fwd_grad(&mut y1, &mut d1);
        let mut d2 = xs.clone();
        gelu_grad_inplace(&mut d2);
        for i in 0..xs.len() {
            assert_eq!(y1[i].to_bits(), y[i].to_bits(), "gelu({})", xs[i]);
            assert_eq!(
                d1[i].to_bits(),
                d[i].to_bits(),
                "gelu'({}) with gelu",
                xs[i]
            );
            assert_eq!(d2[i].to_bits(), d[i].to_bits(), "gelu'({}) alone", xs[i]);
        }
    }

    #[test]
    fn exp_sub_returns_the_sum() {
        let x = [1.0f32, 2.0, 3.0, -50.0];
        let mut o = [0f32; 4];
        let s = exp_sub(&mut o, &x, 3.0);
        let want: f64 = x.iter().map(|&v| ((v - 3.0) as f64).exp()).sum();
        assert!((s as f64 - want).abs() < 1e-6);
        assert!((o[2] - 1.0).abs() < 1e-7);
        let mut y = x;
        assert_eq!(exp_sub_inplace(&mut y, 3.0), s);
        assert_eq!(y, o);
    }

    #[test]
    fn lane_reductions_match_plain_sums_for_every_remainder() {
        for n in [0usize, 1, 7, 8, 9, 19, 64, 197] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.5).collect();
            let want_dot: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            let want_sum: f64 = a.iter().map(|&x| x as f64).sum();
            let want_max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!((dot(&a, &b) as f64 - want_dot).abs() < 1e-4, "dot, n = {n}");
            assert!((sum(&a) as f64 - want_sum).abs() < 1e-4, "sum, n = {n}");
            assert_eq!(max(&a), want_max, "max, n = {n}");
            let mut e = a.clone();
            let s = exp_sub_inplace(&mut e, 1.0);
            let want: f64 = a.iter().map(|&x| ((x - 1.0) as f64).exp()).sum();
            assert!(
                (s as f64 - want).abs() <= 1e-5 * want.max(1.0),
                "exp sum, n = {n}"
            );
        }
    }
}
