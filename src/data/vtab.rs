//! VTAB-1K on disk in the NOAH layout: the task table, list-file parsing and
//! validation with precise errors (`file:line: what was expected`).
//!
//! Layout: `<root>/<task>/{train800,val200,train800val200,test}.txt`, each line
//! `<relative image path> <0-based label>`, image paths relative to `<root>/<task>`.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The four list files of a VTAB-1K task, in canonical order.
pub const SPLITS: [&str; 4] = ["train800", "val200", "train800val200", "test"];

/// The three VTAB task groups.
pub const GROUPS: [&str; 3] = ["natural", "specialized", "structured"];

/// One row of the VTAB-1K task table (classes and the iDAT/SSF per-task recipe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskInfo {
    /// Folder name in the NOAH layout.
    pub name: &'static str,
    /// `natural`, `specialized` or `structured`.
    pub group: &'static str,
    /// Number of classes; labels are `0..num_classes`.
    pub num_classes: usize,
    /// Test-split size from the VPT appendix (unverified; the list file is authoritative).
    pub test_size: usize,
    /// Learning rate of the per-task recipe.
    pub lr: f64,
    /// Weight decay of the per-task recipe.
    pub weight_decay: f64,
    /// Drop-path rate of the per-task recipe.
    pub drop_path: f64,
}

const fn t(
    name: &'static str,
    group: &'static str,
    num_classes: usize,
    test_size: usize,
    lr: f64,
    weight_decay: f64,
    drop_path: f64,
) -> TaskInfo {
    TaskInfo {
        name,
        group,
        num_classes,
        test_size,
        lr,
        weight_decay,
        drop_path,
    }
}

/// The 19 VTAB-1K tasks (docs/vtab.md).
pub const TASKS: &[TaskInfo] = &[
    t("cifar", "natural", 100, 10_000, 5e-3, 5e-5, 0.0),
    t("caltech101", "natural", 102, 6_084, 1e-3, 5e-2, 0.1),
    t("dtd", "natural", 47, 1_880, 5e-3, 5e-5, 0.0),
    t("oxford_flowers102", "natural", 102, 6_149, 5e-3, 5e-5, 0.0),
    t("oxford_iiit_pet", "natural", 37, 3_669, 5e-3, 5e-5, 0.0),
    t("svhn", "natural", 10, 26_032, 1e-2, 5e-5, 0.0),
    t("sun397", "natural", 397, 21_750, 5e-3, 5e-5, 0.0),
    t("patch_camelyon", "specialized", 2, 32_768, 5e-3, 5e-5, 0.0),
    t("eurosat", "specialized", 10, 5_400, 3e-3, 5e-2, 0.2),
    t("resisc45", "specialized", 45, 6_300, 2e-3, 5e-5, 0.1),
    t(
        "diabetic_retinopathy",
        "specialized",
        5,
        42_670,
        5e-3,
        5e-5,
        0.2,
    ),
    t("clevr_count", "structured", 8, 15_000, 2e-3, 5e-2, 0.1),
    t("clevr_dist", "structured", 6, 15_000, 5e-2, 5e-2, 0.1),
    t("dmlab", "structured", 6, 22_735, 5e-3, 5e-5, 0.1),
    t("kitti", "structured", 4, 711, 1e-2, 5e-5, 0.0),
    t("dsprites_loc", "structured", 16, 73_728, 1e-2, 5e-5, 0.0),
    t("dsprites_ori", "structured", 16, 73_728, 5e-3, 5e-5, 0.2),
    t("smallnorb_azi", "structured", 18, 12_150, 2e-2, 5e-5, 0.1),
    t("smallnorb_ele", "structured", 9, 12_150, 5e-3, 5e-2, 0.2),
];

/// Folder-name aliases used by the iDAT scripts.
pub const ALIASES: &[(&str, &str)] = &[
    ("cifar100", "cifar"),
    ("flowers102", "oxford_flowers102"),
    ("pets", "oxford_iiit_pet"),
];

/// Maps an alias (`cifar100`, `flowers102`, `pets`) to its folder name; other names pass through.
pub fn canonical_name(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, folder)| *folder)
        .unwrap_or(name)
}

/// Looks a task up in [`TASKS`] by folder name or alias.
pub fn task_info(name: &str) -> Option<&'static TaskInfo> {
    let name = canonical_name(name);
    TASKS.iter().find(|t| t.name == name)
}

/// What the reader needs to know about one task: folder, classes and the split sizes to enforce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Folder name under the dataset root.
    pub name: String,
    /// Task group (free text for tasks outside the VTAB table).
    pub group: String,
    /// Number of classes; every label must be `< num_classes`.
    pub num_classes: usize,
    /// Expected number of lines per split; splits absent here are not size-checked.
    pub expected_sizes: BTreeMap<String, usize>,
}

impl TaskSpec {
    /// The spec of a VTAB-1K task (alias allowed), enforcing train800=800, val200=200,
    /// train800val200=1000 (test is counted, not enforced).
    pub fn vtab(name: &str) -> Result<Self> {
        let info = task_info(name).with_context(|| {
            format!(
                "unknown VTAB-1K task `{name}`: expected one of {} (or aliases {}), \
                 or give its class count for a custom task",
                TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
                ALIASES.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
            )
        })?;
        let expected_sizes = [("train800", 800), ("val200", 200), ("train800val200", 1000)]
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        Ok(Self {
            name: info.name.to_string(),
            group: info.group.to_string(),
            num_classes: info.num_classes,
            expected_sizes,
        })
    }

    /// A task outside the VTAB table (e.g. the mini benchmark): no split size is enforced
    /// unless added to `expected_sizes`.
    pub fn custom(name: &str, group: &str, num_classes: usize) -> Self {
        Self {
            name: name.to_string(),
            group: group.to_string(),
            num_classes,
            expected_sizes: BTreeMap::new(),
        }
    }
}

/// One parsed list line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Image path relative to the task folder, as written in the list.
    pub path: String,
    /// 0-based class label.
    pub label: u32,
    /// 1-based line number in the list file (for error messages).
    pub line: usize,
}

/// One split of a task: its list file and entries.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitList {
    /// Split name (`train800`, `test`, ...).
    pub name: String,
    /// Absolute (or root-joined) path of the list file.
    pub list_file: PathBuf,
    /// Parsed entries in file order.
    pub entries: Vec<ListEntry>,
}

/// A validated task: every listed image exists, every label is in range, sizes match.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The spec it was validated against.
    pub spec: TaskSpec,
    /// `<root>/<task>`; list paths are relative to it.
    pub dir: PathBuf,
    /// The requested splits, by name.
    pub splits: BTreeMap<String, SplitList>,
    /// blake3 (hex) over the list files and the bytes of every listed image.
    pub content_hash: String,
}

impl Task {
    /// The split named `name`, or an error listing what was read.
    pub fn split(&self, name: &str) -> Result<&SplitList> {
        self.splits.get(name).with_context(|| {
            format!(
                "task `{}` has no split `{name}` loaded (loaded: {})",
                self.spec.name,
                self.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Checks that a list path is relative and stays inside its folder (no `..`, no root, no drive).
pub fn check_relative_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("an empty path".to_string());
    }
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{path}` contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("`{path}` is absolute"))
            }
        }
    }
    Ok(())
}

/// Parses list text (`<path> <label>` per line; blank lines ignored). `file` names the
/// list in errors; labels must be `< num_classes`.
pub fn parse_list(text: &str, file: &Path, num_classes: usize) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        let loc = format!("{}:{line}", file.display());
        let Some((path, label)) = l.rsplit_once(char::is_whitespace) else {
            bail!("{loc}: malformed list line `{l}`: expected `<relative image path> <0-based label>`");
        };
        let path = path.trim_end();
        let label: u32 = label.parse().map_err(|_| {
            anyhow::anyhow!(
                "{loc}: malformed list line `{l}`: label `{label}` is not a non-negative integer \
                 (expected `<relative image path> <0-based label>`)"
            )
        })?;
        if label as usize >= num_classes {
            bail!(
                "{loc}: label {label} out of range: expected 0..={} ({num_classes} classes)",
                num_classes.saturating_sub(1)
            );
        }
        check_relative_path(path).map_err(|e| {
            anyhow::anyhow!("{loc}: image path {e}: expected a path relative to the task folder")
        })?;
        out.push(ListEntry {
            path: path.to_string(),
            label,
            line,
        });
    }
    Ok(out)
}

/// Reads and parses one list file.
pub fn read_list(list_file: &Path, num_classes: usize) -> Result<Vec<ListEntry>> {
    let text = std::fs::read_to_string(list_file).with_context(|| {
        format!(
            "cannot read list file {} (expected a UTF-8 text file `<path> <label>` per line)",
            list_file.display()
        )
    })?;
    parse_list(&text, list_file, num_classes)
}

/// Reads and validates `splits` of the task `spec` under `root`: list files present and
/// well-formed, labels in range, sizes as expected, every listed image present. Computes
/// the task's content hash (list files + image bytes, hashed in parallel).
pub fn read_task(root: &Path, spec: &TaskSpec, splits: &[&str]) -> Result<Task> {
    let dir = root.join(&spec.name);
    if !dir.is_dir() {
        bail!(
            "task folder {} not found: expected `<root>/{}/` with {}",
            dir.display(),
            spec.name,
            SPLITS.map(|s| format!("{s}.txt")).join(", ")
        );
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(spec.name.as_bytes());
    hasher.update(&(spec.num_classes as u64).to_le_bytes());
    let mut out = BTreeMap::new();
    for &split in splits {
        let list_file = dir.join(format!("{split}.txt"));
        if !list_file.is_file() {
            bail!(
                "list file {} missing: task `{}` needs `{split}.txt`",
                list_file.display(),
                spec.name
            );
        }
        let entries = read_list(&list_file, spec.num_classes)?;
        if let Some(&want) = spec.expected_sizes.get(split) {
            if entries.len() != want {
                bail!(
                    "{}: {} images listed, expected {want} for split `{split}`",
                    list_file.display(),
                    entries.len()
                );
            }
        }
        if entries.is_empty() {
            bail!("{}: no images listed", list_file.display());
        }
        let hashes: Vec<[u8; 32]> = entries
            .par_iter()
            .map(|e| hash_image(&dir, e, &list_file))
            .collect::<Result<_>>()?;
        hasher.update(split.as_bytes());
        for (e, h) in entries.iter().zip(&hashes) {
            hasher.update(e.path.as_bytes());
            hasher.update(&e.label.to_le_bytes());
            hasher.update(h);
        }
        out.insert(
            split.to_string(),
            SplitList {
                name: split.to_string(),
                list_file,
                entries,
            },
        );
    }
    Ok(Task {
        spec: spec.clone(),
        dir,
        splits: out,
        content_hash: hasher.finalize().to_hex().to_string(),
    })
}

fn hash_image(dir: &Path, e: &ListEntry, list_file: &Path) -> Result<[u8; 32]> {
    let p = dir.join(&e.path);
    let mut f = std::fs::File::open(&p).map_err(|err| {
        anyhow::anyhow!(
            "{}:{}: image {} listed but not readable ({err}): expected an image file",
            list_file.display(),
            e.line,
            p.display()
        )
    })?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        bail!(
            "{}:{}: {} is not a regular file: expected an image file",
            list_file.display(),
            e.line,
            p.display()
        );
    }
    let mut h = blake3::Hasher::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}
