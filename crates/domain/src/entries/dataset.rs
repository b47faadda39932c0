//! The dataset entry (`dataset/vtab1k`, `dataset/mini`, `dataset/imagefolder`): the image
//! files (inside the entry or under an external root) and `dataset.json`, the validated
//! [`Manifest`]: `root` (the folder the task folders are under; relative paths are
//! relative to the entry), and per task its name, group, number of classes, optional class
//! names, and per split the list file and every `(image path, label)` line. `data/decode`
//! reads it.
use crate::data::prepare::Manifest;
use anyhow::Result;
use std::path::Path;

/// The manifest file of a dataset entry.
pub const MANIFEST_FILE: &str = "dataset.json";

/// Writes `manifest` into the entry `dir`; a root inside `dir` is stored relative to it
/// (the entry is renamed into the cache after the run, so an absolute path would dangle).
///
/// # Errors
/// When `dataset.json` cannot be written (the error names it).
pub fn write(dir: &Path, mut manifest: Manifest) -> Result<()> {
    if let Ok(rel) = manifest.root.strip_prefix(dir) {
        manifest.root = rel.to_path_buf();
    }
    manifest.save(&dir.join(MANIFEST_FILE))
}

/// The manifest of the dataset entry `dir`, its root made absolute (a relative root is
/// relative to the entry).
///
/// # Errors
/// A missing `dataset.json` or one that is not a dataset manifest, naming the file.
pub fn read(dir: &Path) -> Result<Manifest> {
    let mut m = Manifest::load(&dir.join(MANIFEST_FILE))?;
    if m.root.is_relative() {
        m.root = dir.join(&m.root);
    }
    Ok(m)
}
