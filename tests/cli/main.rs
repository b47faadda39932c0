//! The CLI and end-to-end tests of the `idat-pipe` binary, one test binary (cargo's
//! `tests/testsuite` layout): each module was a test file of its own. They run the real
//! binary (`CARGO_BIN_EXE_idat-pipe`) or the root crate's `infer` and registry.
//!
//! - `cli_schema`: `schema`, `validate` and argument errors;
//! - `budget_cli`: `bench --mode eval` and `budget` (the shipped pipeline's time limits);
//! - `infer_cli`: `idat-pipe infer` against a direct library forward;
//! - `checkpoint_hints`: `model/vit` on checkpoint layouts from the field, and every option
//!   an error message suggests exists;
//! - `stages_e2e`, `own_dataset_e2e`, `paths_e2e`: the ML stage kinds end to end (through
//!   `stages_support`), one's own dataset, the path rule.
//!
//! `tests/runner_e2e.rs` and `tests/slurm_e2e.rs` are binaries of their own (`harness =
//! false`: their `main` doubles as the CLI with test-only kinds). The model's tests are in
//! crates/nn/tests, the domain's in crates/domain/tests.

mod budget_cli;
mod checkpoint_hints;
mod cli_schema;
mod infer_cli;
mod own_dataset_e2e;
mod paths_e2e;
mod stages_e2e;
mod stages_support;
