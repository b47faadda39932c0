//! One's own dataset in the torchvision ImageFolder layout, read into the same manifest
//! task as a NOAH-layout task, so that decode, training and evaluation need no special case.
//!
//! Layout: `<root>/<split>/<class name>/<image>` (class folders may nest subfolders), splits
//! `train` and `test`, optionally `val`; links to folders or files are followed. Classes are
//! the sorted folder names of `train` (Unicode code-point order, case-sensitive: Python's
//! `sorted()` on `str`, as torchvision's `find_classes`); label `i` is `classes[i]`. Image
//! files are those with torchvision's extensions (case-insensitive); other files are skipped
//! and counted. Of torchvision's extensions only JPEG and PNG decode here: a `.bmp`, `.webp`,
//! `.tif(f)`, `.ppm` or `.pgm` file is an error naming it. Hidden and OS entries
//! ([`super::hidden`]: `.ipynb_checkpoints`, `._x.jpg`, `__MACOSX`, `Thumbs.db`, ...) are
//! never classes or images, anywhere in the tree (torchvision would take a dot-folder as a
//! class and a `._x.jpg` as an image): they are skipped and counted per split folder.
//!
//! Manifest mapping (docs/own-dataset.md): the (optionally subsampled) `train` folder is
//! stored as split `train800val200` (the split the training stages read, whatever its
//! size), `test` as `test`, `val` as `val`. Image paths are relative to the ImageFolder root
//! (`train/cat/001.png`), the task folder is the root itself (`dir: "."`), and a split's
//! "list file" is its folder: the line number of an image is its 1-based position in the
//! sorted listing of that split folder.

use super::hidden::{is_hidden_or_os, HiddenEntries};
use super::prepare::TaskManifest;
use super::vtab::{check_task, escape_invisible, ListEntry, SplitList, TaskSpec};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// torchvision's `IMG_EXTENSIONS` (lower case, no dot).
pub const TORCHVISION_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// The extensions that decode here (JPEG and PNG).
pub const DECODABLE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// Deepest folder nesting read below a class folder.
pub const MAX_DEPTH: usize = 16;

/// The split folders: `(folder, manifest split name, required)`.
pub const SPLIT_FOLDERS: [(&str, &str, bool); 3] = [
    ("train", "train800val200", true),
    ("test", "test", true),
    ("val", "val", false),
];

/// How `n_train` training images are drawn (VTAB-1K style few-shot subsampling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SampleMethod {
    /// As equal a count per class as the classes allow: `n_train / C` each, the remainder
    /// one more for the first classes in label order; a class with fewer images gives all
    /// it has and the rest is shared out among the others the same way.
    #[default]
    Balanced,
    /// Proportional to each class's share of `train` (largest remainders, ties to the
    /// lower label).
    Stratified,
}

/// What few-shot subsampling did (recorded in dataset.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampling {
    /// Training images asked for.
    pub n_train: usize,
    /// How they were drawn.
    pub method: SampleMethod,
    /// Seed of the per-class ChaCha8 RNG that shuffles each class's sorted file list
    /// before its first `k` are taken.
    pub seed: u64,
    /// Images in the `train` folder before sampling.
    pub from_images: usize,
    /// Images drawn per class name.
    pub per_class: BTreeMap<String, usize>,
}

/// How an ImageFolder task was read (dataset.json, `imagefolder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFolderRecord {
    /// Manifest split -> folder under the root (`train800val200` -> `train`).
    pub splits: BTreeMap<String, String>,
    /// Images per class name, per manifest split (after sampling).
    pub per_class: BTreeMap<String, BTreeMap<String, usize>>,
    /// Files without an image extension, skipped as torchvision skips them (hidden or OS
    /// files are counted in `hidden` instead).
    pub skipped_files: usize,
    /// Up to 3 of them (relative to the root).
    pub skipped_examples: Vec<String>,
    /// Per split folder (`train`, `test`, `val`): the hidden or OS entries skipped in it
    /// (dot-files and dot-folders, `__MACOSX`, `Thumbs.db`, ...; see [`super::hidden`]),
    /// examples relative to the split folder. Absent: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hidden: BTreeMap<String, HiddenEntries>,
    /// Few-shot subsampling of `train`, when `n_train` was given.
    pub sampling: Option<Sampling>,
}

impl ImageFolderRecord {
    /// The warnings of this read: one per split folder that held hidden or OS entries
    /// (`skipped 7 hidden or OS entries under train/ (...)`), in split-folder order.
    pub fn warnings(&self) -> Vec<String> {
        SPLIT_FOLDERS
            .iter()
            .filter_map(|(f, _, _)| self.hidden.get(*f)?.warning(&format!("{f}/")))
            .collect()
    }
}

/// Knobs of [`read_imagefolder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolderOptions {
    /// Task name (what `data/decode`'s `task:` refers to).
    pub name: String,
    /// `natural`, `specialized` or `structured`.
    pub group: String,
    /// Draw this many training images (None: all of `train`).
    pub n_train: Option<usize>,
    /// How they are drawn.
    pub method: SampleMethod,
    /// Seed of the per-class shuffles (see [`Sampling::seed`]).
    pub seed: u64,
}

/// Finds the ImageFolder root: `dir` itself or a descendant up to two levels down that
/// holds a `train` and a `test` folder (archives often wrap everything in one folder).
pub fn find_imagefolder_root(dir: &Path) -> Result<PathBuf> {
    // A folder with either split is the root (a missing `test/` is then said, rather than
    // a complete layout further down being taken silently).
    let is_root = |d: &Path| d.join("train").is_dir() || d.join("test").is_dir();
    if let Some(root) = super::prepare::find_wrapped_root(dir, &is_root)? {
        return Ok(root);
    }
    bail!(
        "no ImageFolder layout found in {} (searched two levels down): expected \
         `<root>/train/<class name>/<image>` and `<root>/test/<class name>/<image>`",
        dir.display()
    )
}

/// The lower-case extension of a file name.
fn extension(name: &str) -> Option<String> {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

/// The UTF-8 name of a directory entry, or an error naming the folder.
fn utf8_name(dir: &Path, name: &std::ffi::OsStr) -> Result<String> {
    name.to_str().map(str::to_string).with_context(|| {
        format!(
            "{}: the name {:?} is not valid UTF-8: expected UTF-8 folder and file names",
            dir.display(),
            name
        )
    })
}

/// What walking one split folder found besides its images.
#[derive(Default)]
struct Walk {
    /// Image paths of the class being walked, relative to the root.
    files: Vec<String>,
    /// Files without an image extension, relative to the root.
    skipped: Vec<String>,
    /// Hidden or OS entries, relative to the split folder.
    hidden: HiddenEntries,
}

/// Walks `dir` (recursively, links followed, entries in sorted order), whose path relative
/// to the root is `rel` and relative to its split folder `in_split`: images go to
/// `w.files`, other files to `w.skipped`, hidden or OS entries (never descended into) to
/// `w.hidden`.
fn walk(dir: &Path, rel: &str, in_split: &str, depth: usize, w: &mut Walk) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "{}: folders nested deeper than {MAX_DEPTH} levels below a class folder",
            dir.display()
        );
    }
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut entries = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        entries.push((utf8_name(dir, &e.file_name())?, e.path()));
    }
    entries.sort();
    for (name, path) in entries {
        let r = format!("{rel}/{name}");
        let s = format!("{in_split}/{name}");
        if is_hidden_or_os(&name) {
            w.hidden.add(&s);
            continue;
        }
        // Links are followed (as torchvision's os.walk(followlinks=True)); a link loop
        // ends at MAX_DEPTH with an error.
        if std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            walk(&path, &r, &s, depth + 1, w)?;
            continue;
        }
        match extension(&name) {
            Some(ext) if TORCHVISION_EXTENSIONS.contains(&ext.as_str()) => {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => bail!(
                        "{}: an image name but not a readable file: expected an image file",
                        escape_invisible(&path.display().to_string())
                    ),
                    Err(e) => bail!(
                        "{}: an image name but not a readable file ({e}): expected an image file",
                        escape_invisible(&path.display().to_string())
                    ),
                }
                if !DECODABLE_EXTENSIONS.contains(&ext.as_str()) {
                    bail!(
                        "{}: `.{ext}` images are not supported: expected JPEG or PNG \
                         (convert it, e.g. with PIL: Image.open(p).save(q, \"PNG\"))",
                        escape_invisible(&path.display().to_string())
                    );
                }
                w.files.push(r);
            }
            _ => w.skipped.push(r),
        }
    }
    Ok(())
}

/// One split folder read: its classes and what was skipped in it.
struct SplitFolder {
    /// Class name -> sorted image paths relative to the root.
    classes: BTreeMap<String, Vec<String>>,
    /// Class name -> hidden or OS entries inside that class folder.
    hidden_in_class: BTreeMap<String, usize>,
    /// Hidden or OS entries anywhere in the split folder (relative to it).
    hidden: HiddenEntries,
}

/// Reads split folder `folder` of `root`: every folder directly in it that is not hidden is
/// a class (sorted by name, as torchvision's `find_classes`); files directly in it are
/// skipped (added to `skipped`).
fn read_split_folder(root: &Path, folder: &str, skipped: &mut Vec<String>) -> Result<SplitFolder> {
    let dir = root.join(folder);
    let mut out = SplitFolder {
        classes: BTreeMap::new(),
        hidden_in_class: BTreeMap::new(),
        hidden: HiddenEntries::default(),
    };
    let rd = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut entries = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        entries.push((utf8_name(&dir, &e.file_name())?, e.path()));
    }
    entries.sort();
    for (name, path) in entries {
        if is_hidden_or_os(&name) {
            out.hidden.add(&name);
            continue;
        }
        if std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            let mut w = Walk {
                hidden: std::mem::take(&mut out.hidden),
                ..Walk::default()
            };
            let before = w.hidden.count;
            walk(&path, &format!("{folder}/{name}"), &name, 0, &mut w)?;
            out.hidden_in_class
                .insert(name.clone(), w.hidden.count - before);
            out.hidden = w.hidden;
            skipped.extend(w.skipped);
            out.classes.insert(name, w.files);
        } else {
            skipped.push(format!("{folder}/{name}"));
        }
    }
    Ok(out)
}

/// The RNG that shuffles class `class`'s files: ChaCha8 keyed by blake3 of the class name
/// with `seed` (little-endian) XORed into its first 8 bytes, so that adding a class does
/// not change the draw of the others.
fn class_rng(seed: u64, class: &str) -> ChaCha8Rng {
    let mut key = *blake3::hash(class.as_bytes()).as_bytes();
    for (k, b) in key.iter_mut().zip(seed.to_le_bytes()) {
        *k ^= b;
    }
    ChaCha8Rng::from_seed(key)
}

/// How many of each class to draw: `avail[c]` images in class `c`, `n` in all.
pub fn sample_counts(avail: &[usize], n: usize, method: SampleMethod) -> Vec<usize> {
    let mut take = vec![0usize; avail.len()];
    match method {
        SampleMethod::Balanced => {
            let mut left = n;
            loop {
                let open: Vec<usize> = (0..avail.len()).filter(|&c| take[c] < avail[c]).collect();
                if left == 0 || open.is_empty() {
                    break;
                }
                let share = left / open.len();
                let extra = left % open.len();
                for (k, &c) in open.iter().enumerate() {
                    let want = share + usize::from(k < extra);
                    let got = want.min(avail[c] - take[c]);
                    take[c] += got;
                    left -= got;
                }
            }
        }
        SampleMethod::Stratified => {
            let total: usize = avail.iter().sum();
            if total == 0 {
                return take;
            }
            let mut rem: Vec<(usize, usize)> = Vec::with_capacity(avail.len());
            for (c, &a) in avail.iter().enumerate() {
                let exact = a as u128 * n as u128;
                take[c] = (exact / total as u128) as usize;
                rem.push(((exact % total as u128) as usize, c));
            }
            let mut left = n - take.iter().sum::<usize>();
            rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, c) in rem {
                if left == 0 {
                    break;
                }
                if take[c] < avail[c] {
                    take[c] += 1;
                    left -= 1;
                }
            }
        }
    }
    take
}

/// Draws `n` of the training images (few-shot subsampling, see [`SampleMethod`]): the
/// chosen paths and the record of the draw.
fn draw_train(
    root: &Path,
    by_class: &BTreeMap<String, Vec<String>>,
    classes: &[String],
    n: usize,
    opts: &ImageFolderOptions,
) -> Result<(std::collections::HashSet<String>, Sampling)> {
    let avail: Vec<usize> = classes.iter().map(|c| by_class[c].len()).collect();
    let total: usize = avail.iter().sum();
    if n == 0 || n > total {
        bail!(
            "n_train {n}: expected 1..={total} (the images in {})",
            root.join("train").display()
        );
    }
    let counts = sample_counts(&avail, n, opts.method);
    let mut chosen = std::collections::HashSet::new();
    for (c, k) in classes.iter().zip(&counts) {
        let mut files = by_class[c].clone();
        files.shuffle(&mut class_rng(opts.seed, c));
        chosen.extend(files.into_iter().take(*k));
    }
    let sampling = Sampling {
        n_train: n,
        method: opts.method,
        seed: opts.seed,
        from_images: total,
        per_class: classes.iter().cloned().zip(counts).collect(),
    };
    Ok((chosen, sampling))
}

/// The classes (the sorted folder names of `train`) after the checks: at least 2, every
/// class folder of `test`/`val` also in `train`, no class folder of any split without an
/// image. The errors name the split and the folder.
fn check_classes(root: &Path, folders: &BTreeMap<&str, SplitFolder>) -> Result<Vec<String>> {
    let train = &folders["train"].classes;
    let classes: Vec<String> = train.keys().cloned().collect();
    if classes.len() < 2 {
        bail!(
            "{}: {} class folder(s) in split `train`: expected at least 2 (one folder per class)",
            root.join("train").display(),
            classes.len()
        );
    }
    for (folder, split) in folders {
        if let Some(c) = split.classes.keys().find(|c| !train.contains_key(*c)) {
            bail!(
                "{}: class folder `{c}` of split `{folder}` is not in `train` (classes: {}): \
                 expected the classes of `train`",
                root.join(folder).display(),
                classes.join(", ")
            );
        }
    }
    for (folder, split) in folders {
        if let Some((c, _)) = split.classes.iter().find(|(_, f)| f.is_empty()) {
            let hidden = split.hidden_in_class.get(c).copied().unwrap_or(0);
            let note = if hidden > 0 {
                format!(
                    "; it holds only {hidden} hidden or OS entr{} (dot-files, `._*` sidecars, \
                     Thumbs.db, ...), which are not images",
                    if hidden == 1 { "y" } else { "ies" }
                )
            } else {
                String::new()
            };
            bail!(
                "{}: class `{c}` of split `{folder}` is empty: its folder holds no image \
                 (.jpg, .jpeg or .png){note}: expected at least one image per class in every \
                 split (an empty `test` class would never be evaluated; remove the folder or \
                 add images)",
                root.join(folder).join(c).display()
            );
        }
    }
    Ok(classes)
}

/// The list entries of split folder `folder`: every image with its label and its 1-based
/// place in the split's sorted listing, those not in `keep` (when given) left out. Error:
/// no image in any class folder.
fn split_entries(
    root: &Path,
    folder: &str,
    by_class: &BTreeMap<String, Vec<String>>,
    classes: &[String],
    keep: Option<&std::collections::HashSet<String>>,
) -> Result<Vec<ListEntry>> {
    let label: BTreeMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut all: Vec<(String, u32)> = by_class
        .iter()
        .flat_map(|(c, files)| files.iter().map(|f| (f.clone(), label[c.as_str()])))
        .collect();
    all.sort();
    if all.is_empty() {
        bail!(
            "{}: no image (.jpg, .jpeg or .png) in any class folder",
            root.join(folder).display()
        );
    }
    Ok(all
        .into_iter()
        .enumerate()
        .filter(|(_, (p, _))| keep.is_none_or(|k| k.contains(p)))
        .map(|(i, (path, label))| ListEntry {
            path,
            label,
            line: i + 1,
        })
        .collect())
}

/// Reads the ImageFolder tree at `root` into a manifest task (see the module docs): the
/// classes, the split folders, optional few-shot sampling, and the checks of
/// [`check_task`] (no file twice, test apart from training, every image readable, identical
/// contents found and recorded).
pub fn read_imagefolder(root: &Path, opts: &ImageFolderOptions) -> Result<TaskManifest> {
    let mut skipped = Vec::new();
    let mut split_folders: BTreeMap<&str, SplitFolder> = BTreeMap::new();
    for (folder, _, required) in SPLIT_FOLDERS {
        let dir = root.join(folder);
        if dir.is_dir() {
            split_folders.insert(folder, read_split_folder(root, folder, &mut skipped)?);
        } else if required {
            bail!(
                "{}: no `{folder}` folder: expected the ImageFolder layout \
                 `<root>/train/<class name>/<image>` and `<root>/test/<class name>/<image>` \
                 (optionally `<root>/val/...`)",
                root.display()
            );
        }
    }
    let classes = check_classes(root, &split_folders)?;
    let folders: BTreeMap<&str, &BTreeMap<String, Vec<String>>> = split_folders
        .iter()
        .map(|(f, s)| (*f, &s.classes))
        .collect();

    let mut sampling = None;
    let mut lists = Vec::new();
    let mut per_class = BTreeMap::new();
    for (folder, split, _) in SPLIT_FOLDERS {
        let Some(by_class) = folders.get(folder) else {
            continue;
        };
        let mut keep: Option<std::collections::HashSet<String>> = None;
        if folder == "train" {
            if let Some(n) = opts.n_train {
                let (chosen, drawn) = draw_train(root, by_class, &classes, n, opts)?;
                sampling = Some(drawn);
                keep = Some(chosen);
            }
        }
        let entries = split_entries(root, folder, by_class, &classes, keep.as_ref())?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in &entries {
            *counts.entry(classes[e.label as usize].clone()).or_default() += 1;
        }
        per_class.insert(split.to_string(), counts);
        lists.push(SplitList {
            name: split.to_string(),
            list_file: root.join(folder),
            entries,
        });
    }

    let spec = TaskSpec::custom(&opts.name, &opts.group, classes.len())
        .with_class_names(classes.clone())?;
    let task = check_task(&spec, root.to_path_buf(), lists)?;
    let mut m = TaskManifest::from_task(task);
    for (folder, split, _) in SPLIT_FOLDERS {
        if let Some(s) = m.splits.get_mut(split) {
            s.list_file = folder.to_string();
        }
    }
    m.dir = Some(".".to_string());
    m.imagefolder = Some(ImageFolderRecord {
        splits: SPLIT_FOLDERS
            .iter()
            .filter(|(f, _, _)| folders.contains_key(f))
            .map(|(f, s, _)| (s.to_string(), f.to_string()))
            .collect(),
        per_class,
        skipped_files: skipped.len(),
        skipped_examples: skipped
            .iter()
            .take(3)
            .map(|s| escape_invisible(s))
            .collect(),
        hidden: split_folders
            .iter()
            .filter(|(_, s)| s.hidden.count > 0)
            .map(|(f, s)| (f.to_string(), s.hidden.clone()))
            .collect(),
        sampling,
    });
    Ok(m)
}
