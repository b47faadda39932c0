//! Allocator tuning for the `idat-pipe` binary, which uses mimalloc as its global allocator
//! (`src/main.rs`).
//!
//! mimalloc by default returns freed memory to the OS ("purges") 1 s after it is freed. A
//! training step frees and re-allocates the same large activation buffers every step, but
//! steps last from tens of milliseconds to seconds, so the buffers were purged between steps
//! and the kernel zeroed fresh pages on every step (`clear_page_erms` 8.5% of a ViT-B step
//! in perf). Never purging keeps them: the peak resident set is unchanged (the same buffers
//! are reused), the step gets faster (docs/benchmarks.md).

use std::os::raw::c_long;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h; the Rust bindings
/// do not name it). Its v3 default is 1000 (ms, options.c), which the tests check.
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS before exit, unless the user chose a purge delay
/// with mimalloc's own `MIMALLOC_PURGE_DELAY` variable (then that value stays).
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores an option value; any option index in range is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1 as c_long) }
}

/// The current purge delay in milliseconds (-1: never).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads an option value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_index_is_the_purge_delay() {
        // mimalloc v3's default purge delay is 1000 ms: a wrong index reads another option.
        assert_eq!(super::purge_delay_ms(), 1000);
        super::keep_freed_memory();
        assert_eq!(super::purge_delay_ms(), -1);
    }
}
