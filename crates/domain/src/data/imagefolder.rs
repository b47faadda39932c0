//! One's own dataset in the torchvision ImageFolder layout, read into the same manifest
//! task as a NOAH-layout task, so that decode, training and evaluation need no special case.
//!
//! Layout: `<root>/<split>/<class name>/<image>` (class folders may nest subfolders), splits
//! `train` and `test`, optionally `val`; links to folders or files are followed. Classes are
//! the sorted folder names of `train` (code-point order, as torchvision's `sorted()`); label
//! `i` is `classes[i]`. Image files
//! are those with torchvision's extensions (case-insensitive); other files are skipped and
//! counted. Of torchvision's extensions only JPEG and PNG decode here: a `.bmp`, `.webp`,
//! `.tif(f)`, `.ppm` or `.pgm` file is an error naming it.
//!
//! Manifest mapping (docs/own-dataset.md): the (optionally subsampled) `train` folder is
//! stored as split `train800val200` (the split the training stages read, whatever its
//! size), `test` as `test`, `val` as `val`. Image paths are relative to the ImageFolder root
//! (`train/cat/001.png`), the task folder is the root itself (`dir: "."`), and a split's
//! "list file" is its folder: the line number of an image is its 1-based position in the
//! sorted listing of that split folder.

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
    /// Files without an image extension, skipped as torchvision skips them.
    pub skipped_files: usize,
    /// Up to 3 of them (relative to the root).
    pub skipped_examples: Vec<String>,
    /// Few-shot subsampling of `train`, when `n_train` was given.
    pub sampling: Option<Sampling>,
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
    pub method: SampleMethod,
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

/// Files under `dir` (recursively, links followed), as paths relative to
/// `rel` joined with `/`, sorted; non-image files go to `skipped`.
fn walk(
    dir: &Path,
    rel: &str,
    depth: usize,
    files: &mut Vec<String>,
    skipped: &mut Vec<String>,
) -> Result<()> {
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
        // Links are followed (as torchvision's os.walk(followlinks=True)); a link loop
        // ends at MAX_DEPTH with an error.
        if std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            walk(&path, &r, depth + 1, files, skipped)?;
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
                files.push(r);
            }
            _ => skipped.push(r),
        }
    }
    Ok(())
}

/// One split folder: class name -> sorted image paths relative to the root.
fn read_split_folder(
    root: &Path,
    folder: &str,
    skipped: &mut Vec<String>,
) -> Result<BTreeMap<String, Vec<String>>> {
    let dir = root.join(folder);
    let mut classes = BTreeMap::new();
    let rd = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in rd {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = utf8_name(&dir, &e.file_name())?;
        if std::fs::metadata(e.path())
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            let mut files = Vec::new();
            walk(
                &e.path(),
                &format!("{folder}/{name}"),
                0,
                &mut files,
                skipped,
            )?;
            classes.insert(name, files);
        } else {
            skipped.push(format!("{folder}/{name}"));
        }
    }
    Ok(classes)
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

/// Reads the ImageFolder tree at `root` into a manifest task (see the module docs): the
/// classes, the split folders, optional few-shot sampling, and the checks of
/// [`check_task`] (no file twice, test apart from training, every image readable, identical
/// contents found and recorded).
pub fn read_imagefolder(root: &Path, opts: &ImageFolderOptions) -> Result<TaskManifest> {
    let mut skipped = Vec::new();
    let mut folders: BTreeMap<&str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (folder, _, required) in SPLIT_FOLDERS {
        let dir = root.join(folder);
        if dir.is_dir() {
            folders.insert(folder, read_split_folder(root, folder, &mut skipped)?);
        } else if required {
            bail!(
                "{}: no `{folder}` folder: expected the ImageFolder layout \
                 `<root>/train/<class name>/<image>` and `<root>/test/<class name>/<image>` \
                 (optionally `<root>/val/...`)",
                root.display()
            );
        }
    }
    let train = &folders["train"];
    let classes: Vec<String> = train.keys().cloned().collect();
    if classes.len() < 2 {
        bail!(
            "{}: {} class folder(s) in `train`: expected at least 2 (one folder per class)",
            root.join("train").display(),
            classes.len()
        );
    }
    for (folder, split) in &folders {
        if let Some(c) = split.keys().find(|c| !train.contains_key(*c)) {
            bail!(
                "{}: class folder `{c}` is not in `train` (classes: {}): expected the classes \
                 of `train`",
                root.join(folder).display(),
                classes.join(", ")
            );
        }
    }
    for (folder, split) in &folders {
        if let Some((c, _)) = split.iter().find(|(_, f)| f.is_empty()) {
            bail!(
                "{}: class folder `{c}` holds no image (.jpg, .jpeg or .png): expected at least \
                 one (an empty `test` class would never be evaluated)",
                root.join(folder).join(c).display()
            );
        }
    }
    let label: BTreeMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();

    let mut sampling = None;
    let mut lists = Vec::new();
    let mut per_class = BTreeMap::new();
    for (folder, split, _) in SPLIT_FOLDERS {
        let Some(by_class) = folders.get(folder) else {
            continue;
        };
        // Every image with its label and its 1-based place in the split's sorted listing.
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
        let mut keep: Option<std::collections::HashSet<String>> = None;
        if folder == "train" {
            if let Some(n) = opts.n_train {
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
                sampling = Some(Sampling {
                    n_train: n,
                    method: opts.method,
                    seed: opts.seed,
                    from_images: total,
                    per_class: classes.iter().cloned().zip(counts).collect(),
                });
                keep = Some(chosen);
            }
        }
        let entries: Vec<ListEntry> = all
            .into_iter()
            .enumerate()
            .filter(|(_, (p, _))| keep.as_ref().is_none_or(|k| k.contains(p)))
            .map(|(i, (path, label))| ListEntry {
                path,
                label,
                line: i + 1,
            })
            .collect();
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
    let skipped_examples = skipped
        .iter()
        .take(3)
        .map(|s| escape_invisible(s))
        .collect();
    m.imagefolder = Some(ImageFolderRecord {
        splits: SPLIT_FOLDERS
            .iter()
            .filter(|(f, _, _)| folders.contains_key(f))
            .map(|(f, s, _)| (s.to_string(), f.to_string()))
            .collect(),
        per_class,
        skipped_files: skipped.len(),
        skipped_examples,
        sampling,
    });
    Ok(m)
}
