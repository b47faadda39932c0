//! The formats of the cache entries the stage kinds write and read, one module per format,
//! each with its file names, its fields (with units) and a writer and a reader that the
//! producing kind and every consuming kind (and `idat-pipe infer`) share:
//!
//! - [`dataset`]: `dataset.json`, the validated manifest a `dataset/*` kind writes and
//!   `data/decode` reads;
//! - [`decoded`]: `decoded.json` and one `<split>.safetensors` per split, written by
//!   `data/decode`, read by `model/pretrain`, `train/*` and `eval`;
//! - [`model`]: `backbone.safetensors` and `model.json`, written by `model/vit` and
//!   `model/pretrain`, read by `train/*` and `eval`;
//! - [`training`]: `student.safetensors`, `teacher.safetensors`, `summary.json` and
//!   `metrics.csv`, written by `train/adapt` and `train/idat`, read by `eval`,
//!   `analysis/adapter-stats` and `idat-pipe infer`;
//! - [`eval`]: `eval.json` (and a copy of the training `metrics.csv`), written by `eval`,
//!   read by `report/vtab`.
//!
//! An entry is renamed into the cache only after its kind returns, so a reader never sees
//! a half-written entry; the readers still check every file and name it in their errors.

pub mod dataset;
pub mod decoded;
pub mod eval;
pub mod model;
pub mod training;

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// Writes `v` as pretty JSON with a final newline to `path`.
///
/// # Errors
/// When `v` does not serialize or `path` cannot be written (the error names `path`).
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Reads JSON written by [`write_json`]; `what` says what the file should hold, e.g.
/// "a training summary (summary.json of train/adapt or train/idat)".
///
/// # Errors
/// A missing or unreadable file, or content that is not `what`, naming `path` and `what`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: unexpected content, expected {what}", path.display()))
}
