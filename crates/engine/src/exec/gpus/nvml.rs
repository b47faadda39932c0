//! NVML (`libnvidia-ml.so.1`, installed with the NVIDIA driver) loaded at run time, so the
//! CPU build links no NVIDIA library and runs where there is none: [`Nvml::system`] is then
//! an error naming the library, and callers fall back (counting `/dev/nvidiaN`, skipping the
//! free-memory check).
use super::{Driver, DriverCard};
use libloading::Library;
use std::ffi::{c_char, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

/// The library's file name (the versioned name: the unversioned one ships only with the
/// development package).
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// Set (to anything): NVML is not loaded, as on a machine without it: cards are counted from
/// `/dev/nvidiaN` (or declared with `--gpus N`) and the free-memory check is skipped.
pub const NO_NVML: &str = "IDAT_NO_NVML";

/// `nvmlReturn_t`: 0 is success.
type Ret = i32;
/// `nvmlDevice_t`: an opaque handle.
type Handle = *mut c_void;
/// `nvmlMemory_t`: bytes.
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    /// Part of NVML's layout; not read.
    #[allow(dead_code)]
    used: u64,
}

type Init = unsafe extern "C" fn() -> Ret;
type Count = unsafe extern "C" fn(*mut c_uint) -> Ret;
type ByIndex = unsafe extern "C" fn(c_uint, *mut Handle) -> Ret;
type ByUuid = unsafe extern "C" fn(*const c_char, *mut Handle) -> Ret;
type Text = unsafe extern "C" fn(Handle, *mut c_char, c_uint) -> Ret;
type MemoryInfo = unsafe extern "C" fn(Handle, *mut Memory) -> Ret;
type ErrorString = unsafe extern "C" fn(Ret) -> *const c_char;

/// The NVML functions idat-pipe calls, resolved once.
pub struct Nvml {
    init: Init,
    shutdown: Init,
    count: Count,
    by_index: ByIndex,
    by_uuid: ByUuid,
    name: Text,
    uuid: Text,
    memory: MemoryInfo,
    error_string: ErrorString,
    /// Keeps the functions above loaded.
    _lib: Library,
}

impl Nvml {
    /// This machine's NVML, loaded on first use: an error naming the library when it is
    /// absent or lacks a function, or when [`NO_NVML`] is set (the same error every call).
    pub fn system() -> Result<&'static Nvml, String> {
        static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
        NVML.get_or_init(|| match std::env::var_os(NO_NVML) {
            Some(_) => Err(format!("{NO_NVML} is set")),
            None => Nvml::load(),
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn load() -> Result<Nvml, String> {
        // libloading puts the `dlerror` text in the error's source.
        let why = |e: libloading::Error| match std::error::Error::source(&e) {
            Some(cause) => format!("{LIBRARY}: {e}: {cause}"),
            None => format!("{LIBRARY}: {e}"),
        };
        // SAFETY: loading the NVIDIA driver's library runs its initialisers, which have no
        // preconditions; each symbol is read with the signature of NVML's header (nvml.h).
        unsafe {
            let lib = Library::new(LIBRARY).map_err(why)?;
            Ok(Nvml {
                init: *lib.get::<Init>(b"nvmlInit_v2\0").map_err(why)?,
                shutdown: *lib.get::<Init>(b"nvmlShutdown\0").map_err(why)?,
                count: *lib.get::<Count>(b"nvmlDeviceGetCount_v2\0").map_err(why)?,
                by_index: *lib
                    .get::<ByIndex>(b"nvmlDeviceGetHandleByIndex_v2\0")
                    .map_err(why)?,
                by_uuid: *lib
                    .get::<ByUuid>(b"nvmlDeviceGetHandleByUUID\0")
                    .map_err(why)?,
                name: *lib.get::<Text>(b"nvmlDeviceGetName\0").map_err(why)?,
                uuid: *lib.get::<Text>(b"nvmlDeviceGetUUID\0").map_err(why)?,
                memory: *lib
                    .get::<MemoryInfo>(b"nvmlDeviceGetMemoryInfo\0")
                    .map_err(why)?,
                error_string: *lib.get::<ErrorString>(b"nvmlErrorString\0").map_err(why)?,
                _lib: lib,
            })
        }
    }

    /// `Err` with NVML's text for a failed call.
    fn ok(&self, what: &str, r: Ret) -> Result<(), String> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: nvmlErrorString returns a static NUL-terminated string for any code.
        let text = unsafe { CStr::from_ptr((self.error_string)(r)) };
        Err(format!(
            "NVML {what}: {} (code {r})",
            text.to_string_lossy()
        ))
    }

    /// Run `f` between `nvmlInit_v2` and `nvmlShutdown` (NVML counts them, so concurrent
    /// sessions of several instances are fine).
    fn session<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        // SAFETY: no arguments; NVML may be initialised any number of times.
        self.ok("nvmlInit_v2", unsafe { (self.init)() })?;
        let r = f();
        // SAFETY: balances the successful init above.
        unsafe { (self.shutdown)() };
        r
    }

    fn text(&self, what: &str, f: Text, h: Handle) -> Result<String, String> {
        let mut buf = [0 as c_char; 96];
        // SAFETY: `buf` holds `len` bytes; NVML writes a NUL-terminated string within them
        // (names and UUIDs are at most 96 and 80 bytes).
        self.ok(what, unsafe { f(h, buf.as_mut_ptr(), buf.len() as c_uint) })?;
        // SAFETY: NUL-terminated by NVML (and the buffer's last byte is never written past).
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    fn memory_of(&self, h: Handle) -> Result<Memory, String> {
        let mut m = Memory::default();
        // SAFETY: `h` is a live handle of this session; `m` is an nvmlMemory_t.
        self.ok("nvmlDeviceGetMemoryInfo", unsafe {
            (self.memory)(h, &mut m)
        })?;
        Ok(m)
    }
}

impl Driver for Nvml {
    fn cards(&self) -> Result<Vec<DriverCard>, String> {
        self.session(|| {
            let mut n: c_uint = 0;
            // SAFETY: `n` is a valid out-pointer.
            self.ok("nvmlDeviceGetCount_v2", unsafe { (self.count)(&mut n) })?;
            (0..n)
                .map(|i| {
                    let mut h: Handle = std::ptr::null_mut();
                    // SAFETY: `i` < the count; `h` is a valid out-pointer.
                    let r = unsafe { (self.by_index)(i, &mut h) };
                    self.ok("nvmlDeviceGetHandleByIndex_v2", r)?;
                    Ok(DriverCard {
                        index: i as usize,
                        uuid: self.text("nvmlDeviceGetUUID", self.uuid, h)?,
                        name: self.text("nvmlDeviceGetName", self.name, h)?,
                        total: self.memory_of(h)?.total,
                    })
                })
                .collect()
        })
    }

    fn memory(&self, uuid: &str) -> Result<(u64, u64), String> {
        let c = CString::new(uuid).map_err(|_| format!("UUID `{uuid}` holds a NUL byte"))?;
        self.session(|| {
            let mut h: Handle = std::ptr::null_mut();
            // SAFETY: `c` is NUL-terminated; `h` is a valid out-pointer.
            let r = unsafe { (self.by_uuid)(c.as_ptr(), &mut h) };
            self.ok(&format!("nvmlDeviceGetHandleByUUID({uuid})"), r)?;
            let m = self.memory_of(h)?;
            Ok((m.free, m.total))
        })
    }
}
