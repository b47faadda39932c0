//! OpenBLAS, loaded at run time, for the frozen-weight products of [`super::gemm`].
//!
//! Loading at run time (not linking) keeps the build free of system libraries: a machine
//! without OpenBLAS runs the same binary on the pure-Rust backend. OpenBLAS's own threads
//! are switched off on load: every call runs single-threaded and the caller splits the
//! rows over its rayon pool, so a pipeline instance still uses exactly its `resources.cpus`
//! threads and concurrent instances do not oversubscribe the cores.
//!
//! Where the library exports `cblas_sbgemm` (OpenBLAS built with `BUILD_BFLOAT16=1`) it
//! also runs the bf16 products of [`super::bf16`]: bf16 inputs, f32 accumulation and output.

use super::view::{Product, View, WLayout};
use half::bf16;
use libloading::Library;
use std::ffi::{c_char, CStr};
use std::fmt;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

type CblasSgemm = unsafe extern "C" fn(
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
/// `cblas_sbgemm`: the `cblas_sgemm` interface with `bfloat16` (`uint16_t`) `a` and `b`.
type CblasSbgemm = unsafe extern "C" fn(
    layout: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const u16,
    lda: i32,
    b: *const u16,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);
type SetNumThreads = unsafe extern "C" fn(n: i32);
type GetConfig = unsafe extern "C" fn() -> *const c_char;

/// A loaded OpenBLAS, set to one thread per call.
pub struct OpenBlas {
    sgemm: CblasSgemm,
    /// `cblas_sbgemm`, where the library was built with bfloat16 support.
    sbgemm: Option<CblasSbgemm>,
    /// `openblas_get_corename()`: the kernel family chosen for this CPU (e.g. "Haswell",
    /// "Cooperlake"); empty where the library does not say.
    core: String,
    /// The name or path it was loaded from.
    source: String,
    /// `openblas_get_config()`, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64".
    config: String,
    /// Keeps the library mapped while `sgemm` may be called.
    _lib: Library,
}

impl fmt::Display for OpenBlas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.config, self.source)
    }
}

impl OpenBlas {
    /// Loads OpenBLAS from `name` (a file name searched on the system's library path, or
    /// a path), checks that it exports what is needed, and sets it to one thread per call.
    pub(crate) fn load(name: &str) -> Result<OpenBlas, String> {
        // SAFETY: loading runs the library's initialisers; this is the system's OpenBLAS
        // (or the library the user named), whose initialisers only set up its own state.
        let lib = unsafe { Library::new(name) }
            .map_err(|e| format!("cannot load {name}: {}", why(&e)))?;
        // SAFETY: the symbols are looked up with OpenBLAS's documented C signatures.
        let (sgemm, sbgemm, set_threads, config, core) = unsafe {
            let sgemm = *lib
                .get::<CblasSgemm>(b"cblas_sgemm\0")
                .map_err(|e| format!("{name} has no cblas_sgemm: {}", why(&e)))?;
            let set_threads = *lib
                .get::<SetNumThreads>(b"openblas_set_num_threads\0")
                .map_err(|e| {
                    format!(
                        "{name} is not OpenBLAS (no openblas_set_num_threads): {}",
                        why(&e)
                    )
                })?;
            let config = lib
                .get::<GetConfig>(b"openblas_get_config\0")
                .ok()
                .map(|f| *f);
            let core = lib
                .get::<GetConfig>(b"openblas_get_corename\0")
                .ok()
                .map(|f| *f);
            let sbgemm = lib.get::<CblasSbgemm>(b"cblas_sbgemm\0").ok().map(|f| *f);
            (sgemm, sbgemm, set_threads, config, core)
        };
        // SAFETY: sets OpenBLAS's thread count; no product of this library is running yet.
        unsafe { set_threads(1) };
        let text = |f: Option<GetConfig>| {
            f
                // SAFETY: openblas_get_config / _corename return static NUL-terminated strings.
                .map(|f| unsafe { f() })
                .filter(|p| !p.is_null())
                .map(|p| {
                    unsafe { CStr::from_ptr(p) }
                        .to_string_lossy()
                        .trim()
                        .to_string()
                })
        };
        let config = text(config).unwrap_or_else(|| "OpenBLAS".to_string());
        let core = text(core).unwrap_or_default();
        Ok(OpenBlas {
            sgemm,
            sbgemm,
            core,
            source: name.to_string(),
            config,
            _lib: lib,
        })
    }

    /// Whether the library exports `cblas_sbgemm`.
    pub fn has_sbgemm(&self) -> bool {
        self.sbgemm.is_some()
    }

    /// The kernel family OpenBLAS chose for this CPU (`openblas_get_corename`, e.g.
    /// "Haswell", "Cooperlake", "SapphireRapids"; `OPENBLAS_CORETYPE` overrides its choice);
    /// empty where the library does not say.
    pub fn core(&self) -> &str {
        &self.core
    }

    /// One single-threaded bf16 product `dst (m x n) = [dst +] alpha * lhs (m x k) * rhs
    /// (k x n)` on strided views, f32 accumulation and output. The caller ([`super::bf16`])
    /// has bounds-checked the views and checked that this library has `cblas_sbgemm`;
    /// `dst`'s view must have unit column stride.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sbgemm_views(
        &self,
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
        let sbgemm = self.sbgemm.expect("sbgemm_views: checked by the caller");
        let (ta, lda) = l.cblas(m, k).expect("sbgemm: lhs view has no unit stride");
        let (tb, ldb) = r.cblas(k, n).expect("sbgemm: rhs view has no unit stride");
        let (td, ldc) = d.cblas(m, n).expect("sbgemm: dst view has no unit stride");
        assert!(!td, "sbgemm: dst must be row-major");
        let trans = |t: bool| if t { TRANS } else { NO_TRANS };
        // SAFETY: the views were bounds-checked against the slices (`View::check`) and
        // `cblas` gave leading dimensions that read exactly those elements; `dst` is a
        // unique borrow that does not alias `lhs` or `rhs`; bf16 is a transparent u16.
        unsafe {
            sbgemm(
                ROW_MAJOR,
                trans(ta),
                trans(tb),
                int(m),
                int(n),
                int(k),
                alpha,
                lhs.as_ptr().add(l.offset()).cast::<u16>(),
                int(lda),
                rhs.as_ptr().add(r.offset()).cast::<u16>(),
                int(ldb),
                if acc { 1.0 } else { 0.0 },
                dst.as_mut_ptr().add(d.offset()),
                int(ldc),
            )
        }
    }

    /// One single-threaded `dst (+)= lhs * w` (sizes checked by `gemm::gemm_w`).
    pub(crate) fn sgemm(&self, dst: &mut [f32], lhs: &[f32], w: &[f32], p: Product) {
        let Product { m, n, k, .. } = p;
        let (trans_b, ldb) = match p.w {
            WLayout::Nk => (TRANS, k),
            WLayout::Kn => (NO_TRANS, n),
        };
        let beta = if p.accumulate { 1.0 } else { 0.0 };
        // SAFETY: `lhs` holds m x k values, `dst` m x n and `w` the n x k (or k x n) operand
        // read through (trans_b, ldb), as `gemm_w` checked; `dst` does not alias them.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                trans_b,
                int(m),
                int(n),
                int(k),
                1.0,
                lhs.as_ptr(),
                int(k.max(1)),
                w.as_ptr(),
                int(ldb.max(1)),
                beta,
                dst.as_mut_ptr(),
                int(n),
            )
        }
    }
}

/// A loader error with its cause (libloading puts the `dlerror` text in the source).
fn why(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn int(v: usize) -> i32 {
    i32::try_from(v).expect("sgemm: dimension exceeds the 32-bit BLAS interface")
}
