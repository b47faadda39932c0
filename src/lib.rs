//! idat-pipe: a declarative, cached pipeline runner for iDAT (inverse Distillation
//! Adapter-Tuning) on VTAB-1K.
//!
//! The module tree follows the flow of one run (see docs/architecture.md):
//! `config` (parse, override, expand) -> `graph` (DAG of instances) -> `cache`
//! (content-addressed entries) -> `exec` (run the misses) -> `stages` (what each
//! `uses:` kind does), built on `nn` (ViT, adapters, losses, optimiser, checkpoints),
//! `data` (VTAB-1K, images, the embedded mini benchmark), `train` and `report`; `text`
//! shows untrusted names with invisible characters escaped.

pub mod alloc;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod config;
pub mod data;
pub mod exec;
pub mod graph;
pub mod infer;
pub mod nn;
pub mod report;
pub mod stages;
pub mod text;
pub mod train;
