//! The `idat-pipe` binary: the CLI of [`idat_pipe::cli`] with mimalloc as the allocator.

#![warn(missing_docs)]

/// mimalloc reuses freed tensor buffers instead of returning them to the OS and faulting
/// fresh zeroed pages back in on the next allocation (glibc's behaviour for the large,
/// short-lived buffers of a training step): measured in docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    idat_pipe::alloc::keep_freed_memory();
    idat_pipe::cli::main()
}
