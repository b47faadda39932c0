//! OpenBLAS `sgemm` for the frozen-weight products (cargo feature `openblas`, linking the
//! system `libopenblas`, e.g. Debian's `libopenblas-dev`). Measured on the 2-core build VM
//! for the ViT-B/16 shapes (docs/benchmarks.md): ~15% more GFLOP/s than the `gemm` crate
//! with 2 threads, ~25% with 1.
//!
//! OpenBLAS's own threads are switched off: every call runs single-threaded and the rows
//! of the output are split over the caller's rayon pool, so a pipeline instance still uses
//! exactly its `resources.cpus` threads and concurrent instances do not oversubscribe.

use super::frozen_linear::{Product, WLayout, PARALLEL_MIN_WORK};
use rayon::prelude::*;
use std::sync::Once;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn openblas_set_num_threads(n: i32);
}

static SINGLE_THREADED: Once = Once::new();

/// Rows per task: at least 16, and about one chunk per pool thread.
fn rows_per_task(m: usize, n: usize, k: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m * n * k < PARALLEL_MIN_WORK {
        return m;
    }
    m.div_ceil(threads).max(16)
}

fn int(v: usize) -> i32 {
    i32::try_from(v).expect("sgemm: dimension exceeds the 32-bit BLAS interface")
}

/// `frozen_linear::gemm_w` through OpenBLAS (sizes already checked there).
pub(crate) fn sgemm(dst: &mut [f32], lhs: &[f32], w: &[f32], p: Product) {
    // SAFETY: sets a process-wide OpenBLAS option; no product is running at first use.
    SINGLE_THREADED.call_once(|| unsafe { openblas_set_num_threads(1) });
    let Product { m, n, k, .. } = p;
    let (trans_b, ldb) = match p.w {
        WLayout::Nk => (TRANS, k),
        WLayout::Kn => (NO_TRANS, n),
    };
    let beta = if p.accumulate { 1.0 } else { 0.0 };
    let rows = rows_per_task(m, n, k);
    dst.par_chunks_mut(rows * n)
        .zip(lhs.par_chunks(rows * k.max(1)))
        .for_each(|(c, a)| {
            let mm = c.len() / n;
            // SAFETY: `a` holds mm x k values, `c` mm x n and `w` the n x k (or k x n)
            // operand read through (trans_b, ldb), as `gemm_w` checked.
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    trans_b,
                    int(mm),
                    int(n),
                    int(k),
                    1.0,
                    a.as_ptr(),
                    int(k.max(1)),
                    w.as_ptr(),
                    int(ldb.max(1)),
                    beta,
                    c.as_mut_ptr(),
                    int(n),
                )
            }
        });
}
