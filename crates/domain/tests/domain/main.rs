//! The integration tests of idat-domain, one binary (cargo's `tests/testsuite` layout):
//! each module was a test file of its own. They exercise the domain's libraries (data,
//! report, train, the stage kinds' configuration) without the CLI, so a change in the
//! binary crate does not rebuild them.
//!
//! - `data_*`: VTAB-1K layouts and checks, downloads, archives and the hub source (against a
//!   local HTTP server, `data_support::http`), PIL-exact decoding and resizing (fixtures in
//!   `tests/fixtures/image`), the decoded-split loader; `mini_generate`: the embedded mini
//!   benchmark;
//! - `report_*`: tables, paired comparisons, plots and the report writers, against
//!   hand-computed numbers;
//! - `cotrain_trajectory`: five steps of iDAT co-training against PyTorch + timm
//!   (`tests/fixtures/cotrain`);
//! - `config_overrides`: `--set` overrides and schema messages on the shipped stage kinds;
//! - `train_accum`: gradient accumulation (`optim.accum_steps`) against whole batches, and
//!   the cache keys of pipelines that do not set it.
//!
//! `cargo test -p idat-domain --test domain` runs them; a module alone:
//! `cargo test -p idat-domain --test domain data_image::`.

mod config_overrides;
mod cotrain_trajectory;
mod data_archive;
mod data_download;
mod data_hub;
mod data_image;
mod data_loader;
mod data_support;
mod data_vtab;
mod mini_generate;
mod report_backbones;
mod report_compare;
mod report_plots;
mod report_vtab;
mod train_accum;
mod train_support;
