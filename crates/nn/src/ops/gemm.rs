//! The CPU f32 GEMMs of the fused ops.
//!
//! [`gemm_w`] is the frozen-weight product `dst [m, n] (+)= lhs [m, k] * w` behind every
//! frozen linear (forward and input gradient).
//! One driver: the output rows are split over the current rayon pool (the pipeline
//! instance's `resources.cpus` threads) and every chunk runs a single-threaded product in
//! one of two backends, chosen once per process:
//!
//! * the system OpenBLAS, loaded at run time ([`super::blas`]) when it is installed
//!   (training steps measured ~10-15% faster, docs/benchmarks.md);
//! * `view::mm` (the `gemm` crate) otherwise, so the build needs no system library.
//!
//! The environment variable [`ENV`] chooses: `auto` (default: OpenBLAS if found),
//! `off` (always the `gemm` crate), `openblas` (OpenBLAS or an error), or the path of a
//! library that exports OpenBLAS's `cblas_sgemm` and `openblas_set_num_threads`.

use super::bf16::{cpu_has_avx512_bf16, to_bf16, Bf16Kernel};
use super::blas::OpenBlas;
use super::view::{mm, Product, View, WLayout};
use rayon::prelude::*;
use std::fmt;
use std::sync::OnceLock;

/// The environment variable that selects the CPU GEMM backend.
pub const ENV: &str = "IDAT_BLAS";

/// The frozen weight operand of [`gemm_w`]: f32, or a bf16 copy with the kernel that
/// multiplies it (the `lhs` rows are then rounded to bf16 per call; f32 accumulation).
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16], Bf16Kernel),
}

impl Weight<'_> {
    fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w, _) => w.len(),
        }
    }
}

/// Products this small (m * n * k) run on one thread: splitting them costs more than it saves.
pub(crate) const PARALLEL_MIN_WORK: usize = 32 * 32 * 32;

/// The CPU GEMM backend of this process.
pub enum CpuGemm {
    /// The pure-Rust `gemm` crate.
    Rust,
    /// A run-time loaded OpenBLAS.
    OpenBlas(OpenBlas),
}

impl fmt::Display for CpuGemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuGemm::Rust => write!(f, "gemm crate (pure Rust)"),
            CpuGemm::OpenBlas(b) => write!(f, "{b}"),
        }
    }
}

/// Library names tried by `auto` and `openblas`, in order.
#[cfg(target_os = "macos")]
const OPENBLAS_NAMES: &[&str] = &[
    "libopenblas.0.dylib",
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
];
#[cfg(windows)]
const OPENBLAS_NAMES: &[&str] = &["libopenblas.dll", "openblas.dll"];
#[cfg(not(any(target_os = "macos", windows)))]
const OPENBLAS_NAMES: &[&str] = &["libopenblas.so.0", "libopenblas.so"];

/// The backend that [`ENV`] set to `value` selects (`None`: unset). `Err` says what is
/// wrong with the value, or why the library it asks for cannot be used.
pub(crate) fn select(value: Option<&str>) -> Result<CpuGemm, String> {
    let first_found = || {
        let mut tried = Vec::new();
        for name in OPENBLAS_NAMES {
            match OpenBlas::load(name) {
                Ok(b) => return Ok(b),
                Err(e) => tried.push(e),
            }
        }
        Err(tried.join("; "))
    };
    match value.map(str::trim) {
        None | Some("") | Some("auto") => {
            Ok(first_found().map_or(CpuGemm::Rust, CpuGemm::OpenBlas))
        }
        Some("off") => Ok(CpuGemm::Rust),
        Some("openblas") => first_found().map(CpuGemm::OpenBlas).map_err(|e| {
            format!(
                "{ENV}=openblas, but no usable OpenBLAS was found ({e}); install it \
                 (Debian/Ubuntu: apt-get install libopenblas0), give its path in {ENV}, \
                 or set {ENV}=auto or off"
            )
        }),
        Some(path) if path.contains(std::path::MAIN_SEPARATOR) || path.contains('.') => {
            OpenBlas::load(path)
                .map(CpuGemm::OpenBlas)
                .map_err(|e| format!("{ENV}={path}: {e}; expected the path of an OpenBLAS library"))
        }
        Some(other) => Err(format!(
            "{ENV}={other:?} is not understood: expected `auto` (default), `off`, \
             `openblas`, or the path of an OpenBLAS library"
        )),
    }
}

static BACKEND: OnceLock<Result<CpuGemm, String>> = OnceLock::new();

/// The CPU GEMM backend of this process, chosen on first use from [`ENV`]. The CLI calls
/// this at start-up so that a bad value stops the command with this error.
pub fn cpu_gemm() -> Result<&'static CpuGemm, String> {
    BACKEND
        .get_or_init(|| select(std::env::var(ENV).ok().as_deref()))
        .as_ref()
        .map_err(Clone::clone)
}

/// OpenBLAS kernel families whose sbgemm uses AVX512-BF16 (`openblas_get_corename`).
const BF16_CORES: &[&str] = &["cooperlake", "sapphirerapids"];

/// The bf16 kernel of this process, or every reason why there is none (the caller then
/// runs f32 products). Needs the OpenBLAS backend of [`cpu_gemm`] with `cblas_sbgemm`,
/// an AVX512-BF16 CPU, and an OpenBLAS kernel family that uses it.
pub fn cpu_bf16() -> Result<Bf16Kernel, String> {
    let mut why = Vec::new();
    if !cpu_has_avx512_bf16() {
        why.push("this CPU has no AVX512-BF16".to_string());
    }
    match cpu_gemm() {
        Ok(CpuGemm::OpenBlas(b)) if !b.has_sbgemm() => why.push(format!(
            "the loaded OpenBLAS ({b}) has no cblas_sbgemm (built without BUILD_BFLOAT16)"
        )),
        Ok(CpuGemm::OpenBlas(b))
            if !BF16_CORES.contains(&b.core().to_ascii_lowercase().as_str()) =>
        {
            why.push(format!(
                "OpenBLAS uses its {:?} kernels, whose sbgemm does not use AVX512-BF16 \
                 (is OPENBLAS_CORETYPE set?)",
                b.core()
            ))
        }
        Ok(CpuGemm::OpenBlas(b)) if why.is_empty() => return Ok(Bf16Kernel::Sbgemm(b)),
        Ok(CpuGemm::OpenBlas(_)) => {}
        Ok(CpuGemm::Rust) => why.push(format!(
            "no OpenBLAS is loaded (the gemm crate has no bf16 kernels; see {})",
            ENV
        )),
        Err(e) => why.push(e.clone()),
    }
    Err(why.join("; "))
}

/// Row blocks a large product is cut into (whatever the thread count).
const BLOCKS_PER_PRODUCT: usize = 4;

/// Block heights are multiples of this many rows.
const ROW_GRAIN: usize = 16;

/// Rows per rayon task: the whole product when small, else about [`BLOCKS_PER_PRODUCT`]
/// blocks whose height is a multiple of [`ROW_GRAIN`]. From the shape alone, never from the
/// pool's size: every block is then the same product whatever the thread count, so results
/// are bitwise the same on 1 or 64 threads (a local run and a Slurm task of the same key
/// commit the same bytes, and what depends on them stays cached). With blocks of
/// `m / threads` rows, OpenBLAS, which picks its kernels by shape, gave different bits on 1
/// and 2 threads; blocks of a fixed 64 rows cost 20-35% of an AT step (too many small calls).
fn rows_per_task(m: usize, n: usize, k: usize) -> usize {
    if m * n * k < PARALLEL_MIN_WORK {
        return m;
    }
    m.div_ceil(BLOCKS_PER_PRODUCT)
        .next_multiple_of(ROW_GRAIN)
        .min(m)
}

/// Row-major `dst [m, n] (+)= lhs [m, k] * w` (see [`WLayout`]), the rows split over the
/// current rayon pool, through this process's backend ([`cpu_gemm`]; the `gemm` crate if
/// [`ENV`] is invalid, which the CLI has reported before any product runs).
/// With a [`Weight::Bf16`] the chunk's `lhs` rows are rounded to bf16 and the product runs
/// in that weight's kernel.
pub(crate) fn gemm_w(dst: &mut [f32], lhs: &[f32], w: Weight, p: Product) {
    let backend = cpu_gemm().unwrap_or(&CpuGemm::Rust);
    gemm_w_with(backend, dst, lhs, w, p)
}

fn gemm_w_with(backend: &CpuGemm, dst: &mut [f32], lhs: &[f32], w: Weight, p: Product) {
    let Product { m, n, k, .. } = p;
    assert!(
        dst.len() == m * n && lhs.len() == m * k && w.len() == n * k,
        "gemm_w: bad sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !p.accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let rows = rows_per_task(m, n, k);
    dst.par_chunks_mut(rows * n)
        .zip(lhs.par_chunks(rows * k))
        .for_each(|(c, a)| {
            let chunk = Product {
                m: c.len() / n,
                ..p
            };
            match (w, backend) {
                (Weight::F32(w), CpuGemm::Rust) => rust_gemm(c, a, w, chunk),
                (Weight::F32(w), CpuGemm::OpenBlas(b)) => b.sgemm(c, a, w, chunk),
                (Weight::Bf16(w, kernel), _) => {
                    let (m, n, k) = (chunk.m, chunk.n, chunk.k);
                    kernel.mm(
                        c,
                        View::new(0, n, 1),
                        chunk.accumulate,
                        &to_bf16(a),
                        View::new(0, k, 1),
                        w,
                        w_view(chunk),
                        (m, n, k),
                        1.0,
                    )
                }
            }
        });
}

/// The `k x n` view of the weight operand of `p`.
fn w_view(p: Product) -> View {
    match p.w {
        WLayout::Nk => View::new(0, 1, p.k),
        WLayout::Kn => View::new(0, p.n, 1),
    }
}

/// One single-threaded product through the `gemm` crate (sizes checked by [`gemm_w`]).
fn rust_gemm(dst: &mut [f32], lhs: &[f32], w: &[f32], p: Product) {
    let Product { m, n, k, .. } = p;
    let w_view = w_view(p);
    mm(
        dst,
        View::new(0, n, 1),
        p.accumulate,
        lhs,
        View::new(0, k, 1),
        w,
        w_view,
        m,
        n,
        k,
        1.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `dst (+)= lhs * w` in f64, element by element.
    fn reference(dst: &[f32], lhs: &[f32], w: &[f32], p: Product) -> Vec<f32> {
        let Product { m, n, k, .. } = p;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = if p.accumulate {
                    dst[i * n + j] as f64
                } else {
                    0.0
                };
                for kk in 0..k {
                    let wv = match p.w {
                        WLayout::Nk => w[j * k + kk],
                        WLayout::Kn => w[kk * n + j],
                    };
                    s += lhs[i * k + kk] as f64 * wv as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    /// Every backend this machine has (CI installs OpenBLAS and must exercise it).
    fn backends() -> Vec<CpuGemm> {
        let mut all = vec![CpuGemm::Rust];
        match select(Some("openblas")) {
            Ok(b) => all.push(b),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI installs OpenBLAS, but it cannot be loaded: {e}")
            }
            Err(e) => eprintln!("OpenBLAS backend not tested here: {e}"),
        }
        all
    }

    #[test]
    fn every_backend_matches_the_f64_reference_for_any_shape_layout_and_thread_count() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (70, 100, 40),
            (197, 48, 192),
            (33, 130, 300),
            (1088, 96, 384),
        ];
        let pools: Vec<_> = [1, 2, 3]
            .into_iter()
            .map(|t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
            })
            .collect();
        for backend in backends() {
            for (si, &(m, n, k)) in shapes.iter().enumerate() {
                for layout in [WLayout::Nk, WLayout::Kn] {
                    for accumulate in [false, true] {
                        let p = Product {
                            m,
                            n,
                            k,
                            w: layout,
                            accumulate,
                        };
                        let lhs = values(m * k, si as u64 + 1);
                        let w = values(n * k, si as u64 + 100);
                        let start = values(m * n, si as u64 + 200);
                        let want = reference(&start, &lhs, &w, p);
                        let mut first: Option<Vec<f32>> = None;
                        for pool in &pools {
                            let mut got = start.clone();
                            pool.install(|| {
                                gemm_w_with(&backend, &mut got, &lhs, Weight::F32(&w), p)
                            });
                            // Bitwise the same on every thread count.
                            match &first {
                                None => first = Some(got.clone()),
                                Some(f) => assert!(
                                    f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "{backend}: {m}x{n}x{k} {layout:?}: {} threads differ \
                                     from 1",
                                    pool.current_num_threads()
                                ),
                            }
                            let worst = got
                                .iter()
                                .zip(&want)
                                .map(|(g, r)| (g - r).abs() / (1.0 + r.abs()))
                                .fold(0f32, f32::max);
                            assert!(
                                worst < 1e-5,
                                "{backend}: {m}x{n}x{k} {layout:?} accumulate={accumulate} \
                                 on {} threads: error {worst}",
                                pool.current_num_threads()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_inner_dimension_clears_or_keeps_the_output() {
        for backend in backends() {
            for accumulate in [false, true] {
                let mut dst = vec![2.5f32; 6];
                let p = Product {
                    m: 2,
                    n: 3,
                    k: 0,
                    w: WLayout::Nk,
                    accumulate,
                };
                gemm_w_with(&backend, &mut dst, &[], Weight::F32(&[]), p);
                let want = if accumulate { 2.5 } else { 0.0 };
                assert!(dst.iter().all(|&v| v == want), "{backend}: {dst:?}");
            }
        }
    }

    #[test]
    fn the_backend_variable_is_parsed_with_errors_that_name_it() {
        assert!(matches!(select(Some("off")), Ok(CpuGemm::Rust)));
        assert!(select(None).is_ok() && select(Some("auto")).is_ok());
        let e = select(Some("fast"))
            .err()
            .expect("an unknown word is refused");
        assert!(
            e.contains("IDAT_BLAS=\"fast\"") && e.contains("`off`"),
            "{e}"
        );
        let e = select(Some("/nonexistent/libopenblas.so"))
            .err()
            .expect("a missing library is refused");
        assert!(
            e.starts_with("IDAT_BLAS=/nonexistent/libopenblas.so:"),
            "{e}"
        );
    }

    /// Every kernel this machine has (the emulated one always; sbgemm where usable).
    fn kernels() -> Vec<Bf16Kernel> {
        let mut all = vec![Bf16Kernel::Emulated];
        match cpu_bf16() {
            Ok(k) => all.push(k),
            Err(e) => eprintln!("sbgemm not tested here: {e}"),
        }
        all
    }

    /// Every kernel, on strided and transposed views, equals the f64 product of the
    /// bf16-rounded operands up to f32 summation error.
    #[test]
    fn every_kernel_computes_the_product_of_the_rounded_operands() {
        let (m, n, k) = (5, 7, 33);
        let wave = |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        // lhs stored transposed (k x m, row stride m), rhs as rows of width 40 (k x n inside).
        let a = to_bf16(&wave(k * m, 0.37));
        let b = to_bf16(&wave(k * 40, 0.91));
        let la = View::new(0, m, 1).t();
        let rb = View::new(3, 40, 1);
        let at = |i: usize, kk: usize| a[kk * m + i].to_f32() as f64;
        let bt = |kk: usize, j: usize| b[3 + kk * 40 + j].to_f32() as f64;
        for kernel in kernels() {
            for acc in [false, true] {
                let mut dst = vec![0.5f32; m * 9];
                kernel.mm(
                    &mut dst,
                    View::new(1, 9, 1),
                    acc,
                    &a,
                    la,
                    &b,
                    rb,
                    (m, n, k),
                    0.5,
                );
                for i in 0..m {
                    assert_eq!(dst[i * 9], 0.5, "{kernel}: outside the view");
                    for j in 0..n {
                        let want = (0..k).map(|kk| at(i, kk) * bt(kk, j)).sum::<f64>() * 0.5
                            + if acc { 0.5 } else { 0.0 };
                        let got = dst[i * 9 + 1 + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{kernel} acc={acc}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_fallback_names_what_is_missing() {
        match cpu_bf16() {
            Ok(k) => assert!(cpu_has_avx512_bf16() && matches!(k, Bf16Kernel::Sbgemm(_))),
            Err(e) => {
                assert_eq!(
                    e.contains("this CPU has no AVX512-BF16"),
                    !cpu_has_avx512_bf16(),
                    "{e}"
                );
                if let Ok(CpuGemm::OpenBlas(b)) = cpu_gemm() {
                    assert_eq!(e.contains("has no cblas_sbgemm"), !b.has_sbgemm(), "{e}");
                }
            }
        }
    }
}
