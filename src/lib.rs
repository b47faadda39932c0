//! idat-pipe: a declarative, cached pipeline runner for iDAT (inverse Distillation
//! Adapter-Tuning) on VTAB-1K.
//!
//! Four crates (see docs/architecture.md): the engine (`idat_engine`: config, graph,
//! cache, exec, the stage-kind trait), the model (`idat_nn`: ViT, adapters, ops,
//! checkpoints, optim, loss), the domain (`idat_domain`: data, train, report, entry formats
//! and the stage kinds; it re-exports `idat_nn` as `nn`) and this thin binary crate, which
//! wires the domain's kinds into the engine's registry ([`builtin_registry`]) and adds the
//! `infer` and `bench` commands. The modules are re-exported here under their own names, so
//! `idat_pipe::cache` is `idat_engine::cache` and `idat_pipe::nn` is `idat_nn`.

#![warn(missing_docs)]

pub mod alloc;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod infer;

pub use idat_domain::{data, entries, kinds, nn, report, train};
pub use idat_engine::{cache, config, exec, graph, stages, text};

/// The engine's registry with every stage kind the product ships, and their device check
/// (`run --device cuda` on a build without CUDA is refused before anything runs).
pub fn builtin_registry() -> stages::Registry {
    let mut r = kinds::registry();
    r.set_device_check(|d| {
        kinds::common::check_device(d)
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    });
    r
}
