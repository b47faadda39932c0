//! Row-major strided matrix views and the one single-threaded f32 product on them (the
//! pure-Rust `gemm` crate): the vocabulary that the CPU product backends share
//! ([`super::blas`], [`super::bf16`], [`super::gemm`]). A leaf: it imports none of them.

/// How a row-major weight operand is stored for `gemm::gemm_w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WLayout {
    /// `w [n, k]`: the product uses its transpose (`x W^T`, a linear layer's forward).
    Nk,
    /// `w [k, n]`: the product uses it as is (`g W`, a linear layer's input gradient).
    Kn,
}

/// Sizes of one product `dst [m, n] (+)= lhs [m, k] * w`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub w: WLayout,
    /// Add to `dst` instead of overwriting it.
    pub accumulate: bool,
}

/// A strided matrix view inside a slice: element (r, c) is at `off + r*rs + c*cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    /// Offset of element (0, 0).
    off: usize,
    /// Row stride.
    rs: usize,
    /// Column stride.
    cs: usize,
}

impl View {
    pub(crate) fn new(off: usize, rs: usize, cs: usize) -> Self {
        View { off, rs, cs }
    }
    pub(crate) fn t(self) -> Self {
        View {
            off: self.off,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// The offset of element (0, 0).
    pub(crate) fn offset(self) -> usize {
        self.off
    }

    /// How a row-major CBLAS call reads this view of a `rows x cols` operand:
    /// `(transposed, leading dimension)`; `None` when neither stride is 1.
    pub(crate) fn cblas(self, rows: usize, cols: usize) -> Option<(bool, usize)> {
        if self.cs == 1 && (rows <= 1 || self.rs >= cols) {
            Some((false, self.rs.max(cols).max(1)))
        } else if self.rs == 1 && (cols <= 1 || self.cs >= rows) {
            Some((true, self.cs.max(rows).max(1)))
        } else {
            None
        }
    }

    pub(crate) fn check(self, rows: usize, cols: usize, len: usize) {
        if rows > 0 && cols > 0 {
            let last = self.off + (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < len, "mm: matrix view out of bounds");
        }
    }
}

/// `dst (m x n) = [dst +] beta * lhs (m x k) * rhs (k x n)`, single-threaded, bounds-checked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
    dst: &mut [f32],
    d: View,
    acc: bool,
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
    m: usize,
    n: usize,
    k: usize,
    beta: f32,
) {
    d.check(m, n, dst.len());
    l.check(m, k, lhs.len());
    r.check(k, n, rhs.len());
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element the GEMM touches lies inside its slice (checked above); `dst`
    // is a unique borrow that does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.off),
            d.cs as isize,
            d.rs as isize,
            acc,
            lhs.as_ptr().add(l.off),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.off),
            r.cs as isize,
            r.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
