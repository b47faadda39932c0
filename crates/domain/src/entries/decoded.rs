//! The decoded-data entry of `data/decode`: one task's splits decoded once at one size.
//!
//! - `decoded.json` ([`DecodedInfo`]): the task, its group and number of classes, the side
//!   length in pixels, the file of each split, the images skipped per split, the class
//!   names when the task has them;
//! - `<split>.safetensors` per split (see [`split_file`]): `images` u8 `[N, size, size, 3]`
//!   (RGB, row-major HWC, values 0..=255) and `labels` u32 `[N]`, metadata
//!   `format: idat-pipe decoded split v1` ([`DecodedSplit::save`]).
//!
//! `model/pretrain`, `train/adapt`, `train/idat` and `eval` read it through [`open`], a
//! batch at a time (host memory bounded by a batch, not by the split); [`read`] loads a
//! split whole.
use super::{read_json, write_json};
use crate::data::loader::DecodedSplit;
use crate::data::split_file::SplitFile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The description file of a decoded-data entry.
pub const DECODED_INFO_FILE: &str = "decoded.json";

/// `decoded.json`: what a decoded-data entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodedInfo {
    /// Canonical task name, e.g. `dtd`.
    pub task: String,
    /// Task group (`natural`, `specialized`, `structured`).
    pub group: String,
    /// Number of classes; labels are `0..num_classes`.
    pub num_classes: usize,
    /// Side length of the square images, in pixels.
    pub size: usize,
    /// Split name -> file name in the entry.
    pub splits: BTreeMap<String, String>,
    /// Split name -> images skipped (`skip_bad_images`).
    #[serde(default)]
    pub skipped: BTreeMap<String, usize>,
    /// Class names by label, when the dataset has them (own and ImageFolder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

/// The file name of split `split` in the entry: `<split>.safetensors`.
pub fn split_file(split: &str) -> String {
    format!("{split}.safetensors")
}

/// Writes the decoded split `split` into the entry `dir` and returns its file name (for
/// [`DecodedInfo::splits`]).
///
/// # Errors
/// When the file cannot be written (the error names it).
pub fn write_split(dir: &Path, split: &str, decoded: &DecodedSplit) -> Result<String> {
    let file = split_file(split);
    decoded.save(&dir.join(&file))?;
    Ok(file)
}

/// Writes `decoded.json` into the entry `dir`; write it after the splits it names.
///
/// # Errors
/// When the file cannot be written (the error names it).
pub fn write_info(dir: &Path, info: &DecodedInfo) -> Result<()> {
    write_json(&dir.join(DECODED_INFO_FILE), info)
}

/// `decoded.json` of the entry `dir`.
///
/// # Errors
/// A missing file, or one that is not a `data/decode` description, naming the file.
pub fn read_info(dir: &Path) -> Result<DecodedInfo> {
    read_json(
        &dir.join(DECODED_INFO_FILE),
        "the description of a decoded task (decoded.json as data/decode writes it)",
    )
}

/// The description of the entry `dir` and its decoded split `split`, loaded whole.
///
/// # Errors
/// A bad `decoded.json`, a split the entry does not have (the error lists those it has),
/// or a split file that is not a decoded split (dtypes and shapes checked), naming the file.
pub fn read(dir: &Path, split: &str) -> Result<(DecodedInfo, DecodedSplit)> {
    let info = read_info(dir)?;
    let file = split_path(dir, &info, split)?;
    let split = DecodedSplit::load(&file)?;
    Ok((info, split))
}

/// The description of the entry `dir` and its decoded split `split`, opened to be read a
/// batch at a time ([`SplitFile`]: its header and labels read, its bytes checked against
/// the entry as they are used).
///
/// # Errors
/// As [`read`].
pub fn open(dir: &Path, split: &str) -> Result<(DecodedInfo, SplitFile)> {
    let info = read_info(dir)?;
    let file = split_path(dir, &info, split)?;
    let split = SplitFile::open(&file)?;
    Ok((info, split))
}

/// The file of split `split` in the entry `dir` described by `info`.
fn split_path(dir: &Path, info: &DecodedInfo, split: &str) -> Result<std::path::PathBuf> {
    let file = info.splits.get(split).with_context(|| {
        format!(
            "{}: no split `{split}` (has: {:?})",
            dir.display(),
            info.splits.keys()
        )
    })?;
    let plain = Path::new(file)
        .file_name()
        .is_some_and(|n| n == file.as_str());
    if !plain {
        anyhow::bail!(
            "{}: split `{split}` names file `{file}`: expected a file name in the entry \
             (no folder, no `..`)",
            dir.join(DECODED_INFO_FILE).display()
        );
    }
    Ok(dir.join(file))
}
