//! The pipeline engine of idat-pipe: it knows pipelines, not machine learning.
//!
//! The module tree follows the flow of one run (see docs/architecture.md): `config`
//! (parse, validate, override, expand) -> `graph` (DAG of instances) -> `cache`
//! (content-addressed entries) -> `exec` (plan, schedule, executors) -> `stages` (the
//! stage-kind trait, its registry and the context a running instance sees). `text` shows
//! untrusted names with invisible characters escaped.
//!
//! The engine names no stage kind: a domain crate implements [`stages::StageKind`] and a
//! binary registers its kinds in a [`stages::Registry`].

#![warn(missing_docs)]

pub mod cache;
pub mod config;
pub mod exec;
pub mod graph;
pub mod stages;
pub mod text;
