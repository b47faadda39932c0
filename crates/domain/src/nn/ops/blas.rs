//! OpenBLAS, loaded at run time, for the frozen-weight products of [`super::gemm`].
//!
//! Loading at run time (not linking) keeps the build free of system libraries: a machine
//! without OpenBLAS runs the same binary on the pure-Rust backend. OpenBLAS's own threads
//! are switched off on load: every call runs single-threaded and the caller splits the
//! rows over its rayon pool, so a pipeline instance still uses exactly its `resources.cpus`
//! threads and concurrent instances do not oversubscribe the cores.

use super::gemm::{Product, WLayout};
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
type SetNumThreads = unsafe extern "C" fn(n: i32);
type GetConfig = unsafe extern "C" fn() -> *const c_char;

/// A loaded OpenBLAS, set to one thread per call.
pub struct OpenBlas {
    sgemm: CblasSgemm,
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
        let (sgemm, set_threads, config) = unsafe {
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
            (sgemm, set_threads, config)
        };
        // SAFETY: sets OpenBLAS's thread count; no product of this library is running yet.
        unsafe { set_threads(1) };
        let config = config
            // SAFETY: openblas_get_config returns a static NUL-terminated string.
            .map(|f| unsafe { f() })
            .filter(|p| !p.is_null())
            .map(|p| {
                unsafe { CStr::from_ptr(p) }
                    .to_string_lossy()
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| "OpenBLAS".to_string());
        Ok(OpenBlas {
            sgemm,
            source: name.to_string(),
            config,
            _lib: lib,
        })
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
