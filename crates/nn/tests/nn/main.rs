//! The integration tests of idat-nn, one binary (cargo's `tests/testsuite` layout): each
//! module was a test file of its own, and each links only this crate.
//!
//! - [`nn_parity`]: the ViT's forward and adapter gradients against timm (fixtures in
//!   `tests/fixtures/timm`, scripts/timm_fixtures.py);
//! - [`nn_ops`]: every fused op against its composed form, forward and backward, on every
//!   device the kernel table lists;
//! - [`nn_adapters`]: every registered adapter method, fused and composed, bitwise
//!   reproducible training on any thread count, the bf16 path;
//! - [`numerics_checkpoint`]: checkpoint formats, layouts, conversions and refusals
//!   (`tests/fixtures/ckpt`, scripts/ckpt_fixtures.py and foreign_ckpt_fixtures.py);
//! - [`numerics_loss`], [`numerics_optim`]: losses, AdamW and the cosine schedule against
//!   hand-worked values, PyTorch and timm (`tests/fixtures/optim`).
//!
//! Fixtures live in this crate's `tests/fixtures/` and are found from `CARGO_MANIFEST_DIR`;
//! `nn_util` holds the helpers the modules share. `cargo test -p idat-nn --test nn` runs
//! them; a module alone: `cargo test -p idat-nn --test nn nn_ops::`.

mod nn_adapters;
mod nn_ops;
mod nn_parity;
mod nn_util;
mod numerics_checkpoint;
mod numerics_loss;
mod numerics_optim;
