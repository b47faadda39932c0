//! Sharded safetensors checkpoints: a Hugging Face index (`model.safetensors.index.json`:
//! `{"metadata": {...}, "weight_map": {"tensor name": "model-00001-of-00002.safetensors"}}`)
//! and the shards it names, which sit in the index's folder.
//!
//! The index is untrusted: a shard name must be a relative path of plain components (no
//! `..`, no root, no `\`), and the shard must resolve (symlinks followed) inside the index's
//! folder, or, for the Hugging Face cache layout (`<repo>/snapshots/<commit>/` holding
//! links to `<repo>/blobs/`), inside that repo's `blobs/`. The shards' sizes together are
//! bounded like a single file's before any is read. Every tensor the `weight_map` lists
//! must be in the shard it names; tensors a shard holds but the map does not list are
//! not loaded (a note names them), and shard-like files beside the index that it does not
//! list are never read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::MAX_CHECKPOINT_BYTES;

/// The name ending of a safetensors index.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";
/// Largest index file read (the largest published indexes are a few MB).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Most folder entries looked at when searching an index beside a file.
const MAX_DIR_ENTRIES: usize = 10_000;

/// A parsed index.
#[derive(Debug, Clone)]
pub struct Index {
    /// The index file, as given.
    pub path: PathBuf,
    /// The folder shard names are relative to (the index's folder, as given).
    pub dir: PathBuf,
    /// Shard name -> the tensor names the index maps to it.
    pub shards: BTreeMap<String, Vec<String>>,
}

/// Refuses a shard name that is not a relative path of plain components.
fn check_shard_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.contains(['\\', '\0']) {
        return Err(format!("`{name}` is empty or holds `\\` or NUL"));
    }
    for c in Path::new(name).components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(format!("`{name}` contains `..`")),
            Component::CurDir => return Err(format!("`{name}` contains `.`")),
            _ => return Err(format!("`{name}` is absolute")),
        }
    }
    Ok(())
}

/// Reads and checks the index at `path` (size, JSON shape, shard names).
pub fn parse_index(path: &Path) -> Result<Index> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_INDEX_BYTES {
        bail!(
            "{}: {len} bytes, more than the {MAX_INDEX_BYTES} an index may have",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| {
            format!("{}: no `weight_map` object (expected a sharded checkpoint's index: {{\"weight_map\": {{\"tensor\": \"shard file\"}}}})", path.display())
        })?;
    if map.is_empty() {
        bail!("{}: the `weight_map` lists no tensors", path.display());
    }
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().with_context(|| {
            format!(
                "{}: `weight_map` entry `{tensor}`: expected a shard file name (a string)",
                path.display()
            )
        })?;
        check_shard_name(shard).map_err(|e| {
            anyhow::anyhow!("{}: `weight_map` entry `{tensor}` names shard {e}: refused (shards must sit in the index's folder)", path.display())
        })?;
        shards
            .entry(shard.to_string())
            .or_default()
            .push(tensor.clone());
    }
    let pickles: Vec<&String> = shards
        .keys()
        .filter(|s| !s.ends_with(".safetensors"))
        .collect();
    if !pickles.is_empty() {
        bail!(
            "{}: the index names shards that are not .safetensors files ({}): a \
             pytorch_model.bin.index.json names PyTorch pickle shards, which are not read \
             (see docs/checkpoints.md, \"PyTorch files\"); Hugging Face repos usually also hold \
             model.safetensors.index.json with safetensors shards: pass that",
            path.display(),
            super::list_excerpt(
                &pickles.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                ", "
            )
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Index {
        path: path.to_path_buf(),
        dir,
        shards,
    })
}

/// `<repo>/blobs` when `dir` lies in a Hugging Face cache snapshot (`<repo>/snapshots/<commit>/...`).
fn hf_cache_blobs(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find_map(|a| {
        let snapshots = a.parent()?;
        (snapshots.file_name()? == "snapshots")
            .then(|| snapshots.parent().map(|repo| repo.join("blobs")))
            .flatten()
            .filter(|b| b.is_dir())
    })
}

/// The shard `name` of `index` as a path, checked to resolve inside the index's folder.
fn shard_path(index: &Index, name: &str) -> Result<PathBuf> {
    let p = index.dir.join(name);
    let n = index.shards[name].len();
    let real = p.canonicalize().with_context(|| {
        format!(
            "{}: shard {name} (holding {n} of the listed tensors) is not at {}: every shard must \
             sit beside the index",
            index.path.display(),
            p.display()
        )
    })?;
    let inside = |root: &Path| root.canonicalize().is_ok_and(|r| real.starts_with(r));
    if !inside(&index.dir) && !hf_cache_blobs(&index.dir).is_some_and(|b| inside(&b)) {
        bail!(
            "{}: shard {name} resolves to {}, outside the index's folder {} (through a \
             symlink): refused",
            index.path.display(),
            real.display(),
            index.dir.display()
        );
    }
    if !real.is_file() {
        bail!(
            "{}: shard {name} at {} is not a file",
            index.path.display(),
            p.display()
        );
    }
    Ok(p)
}

/// The shard paths of `index`, checked, with their total size bounded.
pub fn shard_paths(index: &Index) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for name in index.shards.keys() {
        let p = shard_path(index, name)?;
        total += std::fs::metadata(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        out.push((name.clone(), p));
    }
    if total > MAX_CHECKPOINT_BYTES {
        bail!(
            "{}: its {} shards hold {total} bytes, more than the {MAX_CHECKPOINT_BYTES} a \
             checkpoint may have",
            index.path.display(),
            out.len()
        );
    }
    Ok(out)
}

/// Tensors read from one file, and (name, dtype) of those set aside.
pub type Read = (BTreeMap<String, Tensor>, Vec<(String, String)>);

/// Loads every tensor `index` lists from its shards with `read_one` (a safetensors reader
/// that sets aside dtypes it cannot hold). Returns the tensors, the set-aside entries and
/// notes. Errors: see the module doc; a shard that is not safetensors gets the message of
/// what it is instead.
pub fn read(
    index: &Index,
    read_one: impl Fn(&Path) -> Result<Read>,
) -> Result<(Read, Vec<String>)> {
    let paths = shard_paths(index)?;
    let mut found = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut unlisted = Vec::new();
    for (name, p) in &paths {
        let listed: BTreeSet<&str> = index.shards[name].iter().map(String::as_str).collect();
        super::expect_safetensors(p)
            .with_context(|| format!("shard {name} of {}", index.path.display()))?;
        let (tensors, aside) = read_one(p)?;
        let absent: Vec<String> = listed
            .iter()
            .filter(|t| !tensors.contains_key(**t) && !aside.iter().any(|(a, _)| a == *t))
            .map(|t| t.to_string())
            .collect();
        if !absent.is_empty() {
            bail!(
                "{}: {} tensor(s) the index maps to shard {name} are not in it: {}",
                index.path.display(),
                absent.len(),
                super::list_excerpt(&absent, ", ")
            );
        }
        for (k, t) in tensors {
            if !listed.contains(k.as_str()) {
                unlisted.push(format!("{k} (in {name})"));
            } else if found.insert(k.clone(), t).is_some() {
                bail!("{}: tensor {k} is listed twice", index.path.display());
            }
        }
        skipped.extend(
            aside
                .into_iter()
                .filter(|(k, _)| listed.contains(k.as_str())),
        );
    }
    let mut notes = vec![format!(
        "read {} tensors from the {} shards listed by {}",
        found.len() + skipped.len(),
        paths.len(),
        index.path.display()
    )];
    if !unlisted.is_empty() {
        notes.push(format!(
            "not loaded: {} tensor(s) in the shards that the index's weight_map does not list: {}",
            unlisted.len(),
            super::list_excerpt(&unlisted, ", ")
        ));
    }
    let strays = stray_shards(index);
    if !strays.is_empty() {
        notes.push(format!(
            "not read: {} shard-like file(s) beside the index that it does not list: {}",
            strays.len(),
            super::list_excerpt(&strays, ", ")
        ));
    }
    Ok(((found, skipped), notes))
}

/// `(i, n)` for a name ending in `-0000i-of-0000n.safetensors` (the Hugging Face shard naming).
pub fn shard_numbering(name: &str) -> Option<(usize, usize)> {
    let stem = name.strip_suffix(".safetensors")?;
    let (head, n) = stem.rsplit_once("-of-")?;
    let (_, i) = head.rsplit_once('-')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (ok(i) && ok(n)).then(|| Some((i.parse().ok()?, n.parse().ok()?)))?
}

/// Names of the files in `dir` (at most [`MAX_DIR_ENTRIES`] looked at).
fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.take(MAX_DIR_ENTRIES)
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Shard-named `.safetensors` files in the index's folder that it does not list.
fn stray_shards(index: &Index) -> Vec<String> {
    let mut s: Vec<String> = dir_names(&index.dir)
        .into_iter()
        .filter(|n| shard_numbering(n).is_some() && !index.shards.contains_key(n))
        .collect();
    s.sort();
    s
}

/// The index beside `file` whose weight_map names it, with its shard count.
pub fn index_listing(file: &Path) -> Option<(PathBuf, usize)> {
    let name = file.file_name()?.to_string_lossy().into_owned();
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut candidates: Vec<String> = dir_names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(INDEX_SUFFIX))
        .collect();
    candidates.sort();
    candidates.into_iter().find_map(|c| {
        let idx = parse_index(&dir.join(&c)).ok()?;
        idx.shards
            .contains_key(&name)
            .then(|| (idx.path.clone(), idx.shards.len()))
    })
}

/// The checkpoint a folder stands for: its one `*.safetensors.index.json`
/// (`model.safetensors.index.json` first), else its `model.safetensors`.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    let names = dir_names(dir);
    let mut indexes: Vec<&String> = names.iter().filter(|n| n.ends_with(INDEX_SUFFIX)).collect();
    indexes.sort();
    let pick = if names.iter().any(|n| n == "model.safetensors.index.json") {
        Some("model.safetensors.index.json".to_string())
    } else if indexes.len() == 1 {
        Some(indexes[0].clone())
    } else if indexes.len() > 1 {
        bail!(
            "{}: a folder with {} indexes ({}): pass the one to load",
            dir.display(),
            indexes.len(),
            indexes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else if names.iter().any(|n| n == "model.safetensors") {
        Some("model.safetensors".to_string())
    } else {
        None
    };
    match pick {
        Some(p) => Ok(dir.join(p)),
        None => {
            let mut shown: Vec<String> = names.into_iter().take(LIST_IN_DIR).collect();
            shown.sort();
            bail!(
                "{}: a folder without model.safetensors.index.json, another *{INDEX_SUFFIX} or \
                 model.safetensors (it holds: {}): pass the checkpoint file itself",
                dir.display(),
                if shown.is_empty() {
                    "nothing".to_string()
                } else {
                    shown.join(", ")
                }
            )
        }
    }
}

/// How many entries of a folder an error lists.
const LIST_IN_DIR: usize = 8;

/// The files a checkpoint at `path` is read from (the index and its shards, or the file
/// itself), for cache keys; best effort: what cannot be resolved is left to the loader's
/// errors.
pub fn input_files(path: &Path) -> Vec<PathBuf> {
    let file = if path.is_dir() {
        match resolve_dir(path) {
            Ok(f) => f,
            Err(_) => return vec![path.to_path_buf()],
        }
    } else {
        path.to_path_buf()
    };
    let is_index = matches!(
        super::sniff::detect(&file),
        Ok(super::sniff::Detected::ShardIndex)
    );
    let mut out = vec![file.clone()];
    if is_index {
        if let Ok(idx) = parse_index(&file) {
            out.extend(idx.shards.keys().filter_map(|n| shard_path(&idx, n).ok()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_in_the_folder() {
        assert!(check_shard_name("model-00001-of-00002.safetensors").is_ok());
        assert!(check_shard_name("sub/model.safetensors").is_ok());
        for bad in [
            "",
            "../x.safetensors",
            "/etc/x",
            "a/../../b",
            "./a",
            "a\\..\\b",
        ] {
            assert!(check_shard_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            shard_numbering("model-00002-of-00003.safetensors"),
            Some((2, 3))
        );
        assert_eq!(shard_numbering("model.safetensors"), None);
        assert_eq!(shard_numbering("x-of-2.safetensors"), None);
    }
}
