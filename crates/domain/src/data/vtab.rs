//! VTAB-1K on disk in the NOAH layout: list-file parsing and validation with precise errors
//! (`file:line: what was expected`). The task table is [`super::vtab_tasks`], re-exported here.
//!
//! Layout: `<root>/<task>/{train800,val200,train800val200,test}.txt`, each line
//! `<relative image path> <0-based label>`, image paths relative to `<root>/<task>`.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub use super::vtab_tasks::{
    canonical_name, task_info, TaskInfo, ALIASES, GROUPS, SPLITS, SPLIT_SIZES, TASKS,
};

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
    /// Class names by label (`class_names[label]`), when known (custom and ImageFolder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
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
        let expected_sizes = SPLIT_SIZES
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        Ok(Self {
            name: info.name.to_string(),
            group: info.group.name().to_string(),
            num_classes: info.num_classes,
            expected_sizes,
            class_names: None,
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
            class_names: None,
        }
    }

    /// Whether split `split` must have a list file: every requested split of a VTAB-1K
    /// task (one with expected sizes); for a task of one's own only `train800val200` (what
    /// training reads) and `test`, while `train800` and `val200` are read when present.
    pub fn requires(&self, split: &str) -> bool {
        !self.expected_sizes.is_empty() || !matches!(split, "train800" | "val200")
    }

    /// [`TaskSpec::custom`] with class names (`class_names[label]`); their count must be
    /// `num_classes`, each non-empty and distinct.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        check_class_names(&names, self.num_classes)
            .map_err(|e| anyhow::anyhow!("task `{}`: {e}", self.name))?;
        self.class_names = Some(names);
        Ok(self)
    }
}

/// Checks class names against a class count: `num_classes` of them, none empty, no two
/// equal. The error is text for the caller to prefix with where the names came from.
pub fn check_class_names(names: &[String], num_classes: usize) -> std::result::Result<(), String> {
    if names.len() != num_classes {
        return Err(format!(
            "{} class names given for {num_classes} classes: expected one name per class, \
             in label order",
            names.len()
        ));
    }
    let mut seen = HashSet::new();
    for (i, n) in names.iter().enumerate() {
        if n.trim().is_empty() {
            return Err(format!(
                "class name {i} is empty: expected a non-empty name"
            ));
        }
        if !seen.insert(n.as_str()) {
            return Err(format!(
                "class name `{n}` is given twice (again for label {i}): expected distinct names"
            ));
        }
    }
    Ok(())
}

/// One parsed list line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Image path relative to the task folder, normalised ([`normalize_list_path`]).
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
    /// What the integrity checks found (counts of allowed oddities).
    pub checks: TaskChecks,
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

/// The one spelling of a list path used to store, open and compare it: `\` read as `/`
/// (lists written on Windows), empty and `.` components dropped, `a/..` folded away, all
/// lexically (symlinks are not resolved). `./images//a.png`, `images\a.png` and
/// `images/sub/../a.png` all become `images/a.png`.
///
/// Errors (as text for the caller to prefix with `file:line`): an empty path, an absolute
/// path (`/x`, `\\server\x`, `C:\x`), a `..` that leaves the task folder, a NUL byte.
pub fn normalize_list_path(path: &str) -> std::result::Result<String, String> {
    let shown = escape_invisible(path);
    if path.contains('\0') {
        return Err(format!("`{shown}` contains a NUL byte"));
    }
    let unified = path.replace('\\', "/");
    if unified.starts_with('/') {
        return Err(format!("`{shown}` is absolute"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for (i, c) in unified.split('/').enumerate() {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "`{shown}` contains `..` that leaves the task folder"
                    ));
                }
            }
            c if i == 0
                && c.len() == 2
                && c.ends_with(':')
                && c.as_bytes()[0].is_ascii_alphabetic() =>
            {
                return Err(format!("`{shown}` is absolute (drive `{c}`)"));
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "`{shown}` names the task folder itself, not an image"
        ));
    }
    Ok(parts.join("/"))
}

pub use idat_engine::text::{escape_invisible, is_invisible};

/// A note for an error about `s` when it holds invisible characters (empty otherwise).
fn invisible_note(s: &str) -> String {
    let found: Vec<String> = s
        .chars()
        .filter(|&c| is_invisible(c))
        .map(|c| format!("U+{:04X}", c as u32))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if found.is_empty() {
        String::new()
    } else {
        format!(
            " [the path holds invisible characters, shown escaped: {}; remove them from the list]",
            found.join(", ")
        )
    }
}

/// Splits list text into lines ending in `\n` or `\r\n`; a file with no `\n` at all but
/// with `\r` (old Mac line ends) is split at each `\r`.
fn list_lines(text: &str) -> Vec<&str> {
    if !text.contains('\n') && text.contains('\r') {
        return text.split('\r').collect();
    }
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

/// Parses list text (`<path> <label>` per line; blank lines ignored; lines may end in
/// `\n`, `\r\n`, or `\r` in a file without `\n`; whitespace around the path, a stray `\r`
/// included, is trimmed). `file` names the list in errors; labels must be `< num_classes`.
/// Paths are stored normalised ([`normalize_list_path`]); a path that names OS metadata
/// (`._x.jpg`, `__MACOSX/...`, `Thumbs.db`: [`super::hidden::os_metadata_kind`]) is an error. The label is the last column and
/// the path everything before it, spaces included; a path whose last word is a number
/// (`images/x.png 3 7`) is a malformed line (an extra column) unless a file of that whole
/// name exists next to the list file.
pub fn parse_list(text: &str, file: &Path, num_classes: usize) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (i, raw) in list_lines(text).into_iter().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        let loc = format!("{}:{line}", file.display());
        let shown = escape_invisible(l);
        let Some((path, label)) = l.rsplit_once(char::is_whitespace) else {
            bail!("{loc}: malformed list line `{shown}`: expected `<relative image path> <0-based label>`");
        };
        let path = path.trim_end();
        let label: u32 = label.parse().map_err(|_| {
            anyhow::anyhow!(
                "{loc}: malformed list line `{shown}`: label `{}` is not a non-negative integer \
                 (expected `<relative image path> <0-based label>`)",
                escape_invisible(label)
            )
        })?;
        let path = normalize_list_path(path).map_err(|e| {
            anyhow::anyhow!("{loc}: image path {e}: expected a path relative to the task folder")
        })?;
        if let Some(kind) = super::hidden::os_metadata_kind(&path) {
            bail!(
                "{loc}: `{}` is {kind}, not an image (copies made on macOS, Windows or a NAS \
                 add such files beside the images): expected the path of an image; remove \
                 the line",
                escape_invisible(&path)
            );
        }
        // A path may hold spaces, so `images/x.png 3 7` reads as path `images/x.png 3`: an
        // extra numeric column unless a file of that very name exists.
        if let Some((head, tail)) = path.rsplit_once(char::is_whitespace) {
            let dir = file.parent().unwrap_or(Path::new("."));
            if !head.trim().is_empty()
                && tail.parse::<f64>().is_ok()
                && std::fs::symlink_metadata(dir.join(&path)).is_err()
            {
                let cols: Vec<String> = l
                    .split_whitespace()
                    .map(|c| format!("`{}`", escape_invisible(c)))
                    .collect();
                bail!(
                    "{loc}: malformed list line `{shown}`: an extra column ({} columns: {}): \
                     expected `<path> <label>` (a path may hold spaces, but no file `{}` exists)",
                    cols.len(),
                    cols.join(" "),
                    escape_invisible(&path)
                );
            }
        }
        if label as usize >= num_classes {
            bail!(
                "{loc}: label {label} out of range: expected 0..={} ({num_classes} classes)",
                num_classes.saturating_sub(1)
            );
        }
        out.push(ListEntry { path, label, line });
    }
    Ok(out)
}

/// Decodes list-file bytes as UTF-8 text: a UTF-8 byte-order mark at the start is dropped;
/// UTF-16/UTF-32 (by their byte-order mark, or NUL bytes) and invalid UTF-8 are errors
/// naming the file (and line).
pub fn list_text(bytes: &[u8], file: &Path) -> Result<String> {
    let f = file.display();
    let encoding =
        if bytes.starts_with(&[0xFF, 0xFE, 0, 0]) || bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
            Some("UTF-32")
        } else if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
            Some("UTF-16")
        } else {
            None
        };
    if let Some(enc) = encoding {
        bail!(
            "{f}: the list file is {enc} (it starts with a {enc} byte-order mark): expected UTF-8 \
             text; convert it, e.g. `iconv -f {enc} -t UTF-8`"
        );
    }
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let line_of = |pos: usize| bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        bail!(
            "{f}:{}: NUL byte in the list file (UTF-16 or UTF-32 without a byte-order mark?): \
             expected UTF-8 text `<path> <label>` per line",
            line_of(pos)
        );
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let pos = e.valid_up_to();
            bail!(
                "{f}:{}: invalid UTF-8 (byte 0x{:02X} at offset {pos}): expected UTF-8 text; \
                 re-save the list as UTF-8",
                line_of(pos),
                bytes[pos]
            )
        }
    }
}

/// Reads and parses one list file (see [`list_text`] and [`parse_list`]).
pub fn read_list(list_file: &Path, num_classes: usize) -> Result<Vec<ListEntry>> {
    let bytes = idat_engine::cache::verified::read(list_file).with_context(|| {
        format!(
            "cannot read list file {} (expected a UTF-8 text file `<path> <label>` per line)",
            list_file.display()
        )
    })?;
    parse_list(&list_text(&bytes, list_file)?, list_file, num_classes)
}

/// The splits whose images are trained on (a test image may be in none of them).
pub const TRAIN_SPLITS: [&str; 3] = ["train800", "val200", "train800val200"];

/// Sets of distinct image files (different normalised paths) with identical bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdenticalContent {
    /// Number of sets; each holds at least two distinct files.
    pub groups: usize,
    /// Number of files in those sets.
    pub files: usize,
    /// Up to 3 sets, each as up to 3 `` `path` (<task>/<split>.txt:line) `` places.
    pub examples: Vec<Vec<String>>,
}

/// What [`read_task`] found that is allowed but worth knowing; recorded in dataset.json
/// and logged as warnings (see [`TaskChecks::warnings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChecks {
    /// Lines listed over the loaded splits.
    pub listed_images: usize,
    /// Distinct files over the loaded splits (a file in train800 and train800val200 counts once).
    pub unique_images: usize,
    /// True when train800, val200 and train800val200 were all loaded and train800val200 was
    /// found to list exactly the images (and labels) of train800 + val200.
    pub train800val200_is_union: bool,
    /// Distinct files with identical bytes, over all loaded splits (synthetic tasks can
    /// render identical images legitimately).
    pub identical_content: IdenticalContent,
    /// The subset of `identical_content` sets that hold both a test image and a training
    /// image (train800, val200 or train800val200): the same picture on both sides.
    pub test_train_identical_content: IdenticalContent,
    /// PNG files with 16 bits per sample; they decode as PIL's `convert("RGB")` does
    /// (gray clipped to 255, colour reduced to the high byte: docs/vtab.md).
    pub png16_images: usize,
    /// Up to 3 of them (path relative to the task folder).
    pub png16_examples: Vec<String>,
}

impl TaskChecks {
    /// One line per finding that deserves a warning for task `task` (none when clean).
    pub fn warnings(&self, task: &str) -> Vec<String> {
        let mut out = Vec::new();
        let ex = |c: &IdenticalContent| {
            c.examples
                .iter()
                .map(|g| g.join(" = "))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if self.identical_content.groups > 0 {
            out.push(format!(
                "task `{task}`: {} images in {} sets have identical bytes under different names \
                 (e.g. {})",
                self.identical_content.files,
                self.identical_content.groups,
                ex(&self.identical_content)
            ));
        }
        if self.test_train_identical_content.groups > 0 {
            out.push(format!(
                "task `{task}`: {} sets of identical bytes hold both a test and a training image \
                 ({} images; e.g. {})",
                self.test_train_identical_content.groups,
                self.test_train_identical_content.files,
                ex(&self.test_train_identical_content)
            ));
        }
        if self.png16_images > 0 {
            out.push(format!(
                "task `{task}`: {} 16-bit PNG images (e.g. {}), decoded as PIL does: 16-bit gray \
                 clipped to 255, 16-bit colour reduced to its high byte",
                self.png16_images,
                self.png16_examples.join(", ")
            ));
        }
        out
    }
}

/// `list:line` of entry `e` of list `l`.
fn place(l: &SplitList, e: &ListEntry) -> String {
    format!("{}:{}", l.list_file.display(), e.line)
}

/// `` `path` (list:line) ``, the path escaped ([`escape_invisible`]).
fn at(l: &SplitList, e: &ListEntry) -> String {
    format!("`{}` ({})", escape_invisible(&e.path), place(l, e))
}

/// `` `path` (<task>/<split>.txt:line) ``: [`at`] with the list named by its last two
/// path components, for what is recorded in dataset.json (no machine-specific paths).
/// For an ImageFolder task the "list" is the split folder (`<root name>/train:line`).
fn rel_at(l: &SplitList, e: &ListEntry) -> String {
    let name = |p: Option<&Path>| {
        p.and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!(
        "`{}` ({}/{}:{})",
        escape_invisible(&e.path),
        name(l.list_file.parent()),
        name(Some(&l.list_file)),
        e.line
    )
}

/// Cross-split integrity: no file twice in a split, no test file in a training split,
/// train800 and val200 disjoint, and (when all three are loaded) train800val200 lists
/// exactly train800 + val200 with the same labels. Paths are already normalised, so "the
/// same file" means the same normalised path. Returns whether the union was checked.
fn check_splits(lists: &[SplitList]) -> Result<bool> {
    for l in lists {
        let mut seen: HashMap<&str, &ListEntry> = HashMap::new();
        for e in &l.entries {
            if let Some(first) = seen.insert(&e.path, e) {
                bail!(
                    "{} and {}: `{}` is listed twice in split `{}` (the same file, however its \
                     path is spelled): expected each image once per split",
                    place(l, first),
                    place(l, e),
                    escape_invisible(&e.path),
                    l.name
                );
            }
        }
    }
    let get = |n: &str| lists.iter().find(|l| l.name == n);
    let disjoint = |a: &SplitList, b: &SplitList, why: &str| -> Result<()> {
        let index: HashMap<&str, &ListEntry> =
            a.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        for e in &b.entries {
            if let Some(x) = index.get(e.path.as_str()) {
                bail!(
                    "{} and {}: `{}` is in split `{}` and in split `{}`: {why}",
                    place(a, x),
                    place(b, e),
                    escape_invisible(&e.path),
                    a.name,
                    b.name
                );
            }
        }
        Ok(())
    };
    if let Some(test) = get("test") {
        for s in TRAIN_SPLITS {
            if let Some(l) = get(s) {
                disjoint(
                    test,
                    l,
                    "expected test images apart from train800, val200 and train800val200",
                )?;
            }
        }
    }
    if let (Some(a), Some(b)) = (get("train800"), get("val200")) {
        disjoint(a, b, "expected train800 and val200 disjoint")?;
    }
    let (Some(a), Some(b), Some(c)) = (get("train800"), get("val200"), get("train800val200"))
    else {
        return Ok(false);
    };
    let parts: HashMap<&str, (&SplitList, &ListEntry)> = a
        .entries
        .iter()
        .map(|e| (a, e))
        .chain(b.entries.iter().map(|e| (b, e)))
        .map(|(l, e)| (e.path.as_str(), (l, e)))
        .collect();
    let union: HashMap<&str, &ListEntry> = c.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut extra = Vec::new();
    for e in &c.entries {
        match parts.get(e.path.as_str()) {
            None => extra.push(at(c, e)),
            Some((l, x)) if x.label != e.label => bail!(
                "{} and {}: `{}` has label {} in split `{}` but {} in split `{}`: expected one \
                 label per image",
                place(l, x),
                place(c, e),
                escape_invisible(&e.path),
                x.label,
                l.name,
                e.label,
                c.name
            ),
            Some(_) => {}
        }
    }
    let missing: Vec<String> = a
        .entries
        .iter()
        .map(|e| (a, e))
        .chain(b.entries.iter().map(|e| (b, e)))
        .filter(|(_, e)| !union.contains_key(e.path.as_str()))
        .map(|(l, e)| at(l, e))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let first = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        let mut what = Vec::new();
        if !missing.is_empty() {
            what.push(format!(
                "{} images of train800/val200 are not in it (e.g. {})",
                missing.len(),
                first(&missing)
            ));
        }
        if !extra.is_empty() {
            what.push(format!(
                "{} images in it are in neither train800 nor val200 (e.g. {})",
                extra.len(),
                first(&extra)
            ));
        }
        bail!(
            "{}: train800val200 is not train800 + val200: {}: expected exactly the images of \
             {} and {} (in any order)",
            c.list_file.display(),
            what.join("; "),
            a.list_file.display(),
            b.list_file.display()
        );
    }
    Ok(true)
}

/// What hashing one listed file found.
struct FileInfo {
    hash: [u8; 32],
    png16: bool,
    /// (device, inode) of the file after following links (None off Unix).
    id: Option<(u64, u64)>,
}

/// The same FILE (device + inode, after following symlinks; hard links too) under two
/// different list paths: an error where the same path would be one — twice in one split,
/// in test and a training split, in train800 and val200.
fn check_same_files(lists: &[SplitList], id_of: &HashMap<&str, Option<(u64, u64)>>) -> Result<()> {
    let mut by_id: BTreeMap<(u64, u64), Vec<(&SplitList, &ListEntry)>> = BTreeMap::new();
    for l in lists {
        for e in &l.entries {
            if let Some(Some(id)) = id_of.get(e.path.as_str()) {
                by_id.entry(*id).or_default().push((l, e));
            }
        }
    }
    let training = |n: &str| TRAIN_SPLITS.contains(&n);
    for places in by_id.values().filter(|v| v.len() > 1) {
        for (i, (la, a)) in places.iter().enumerate() {
            for (lb, b) in &places[i + 1..] {
                if a.path == b.path {
                    continue; // the same path: check_splits' business
                }
                let why = if la.name == lb.name {
                    format!(
                        "listed twice in split `{}`: expected each image once per split",
                        la.name
                    )
                } else if (la.name == "test" && training(&lb.name))
                    || (lb.name == "test" && training(&la.name))
                {
                    format!(
                        "in split `{}` and in split `{}`: expected test images apart from \
                         train800, val200 and train800val200",
                        la.name, lb.name
                    )
                } else if matches!(
                    (la.name.as_str(), lb.name.as_str()),
                    ("train800", "val200") | ("val200", "train800")
                ) {
                    format!(
                        "in split `{}` and in split `{}`: expected train800 and val200 disjoint",
                        la.name, lb.name
                    )
                } else {
                    continue;
                };
                bail!(
                    "{} and {}: `{}` and `{}` are the same file on disk (a symlink or hard link: \
                     same device and inode), {why}",
                    place(la, a),
                    place(lb, b),
                    escape_invisible(&a.path),
                    escape_invisible(&b.path)
                );
            }
        }
    }
    Ok(())
}

/// Reads and validates `splits` of the task `spec` under `root`: list files present and
/// well-formed (UTF-8, BOM dropped), labels in range, sizes as expected, no file twice in a
/// split, test apart from the training splits, train800val200 = train800 + val200, every
/// listed image present. Computes the task's content hash (list files + image bytes, each
/// distinct file read once, in parallel) and the [`TaskChecks`].
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
    let mut lists = Vec::with_capacity(splits.len());
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
        lists.push(SplitList {
            name: split.to_string(),
            list_file,
            entries,
        });
    }
    check_task(spec, dir, lists)
}

/// The checks and hashing of [`read_task`] on lists already read (from list files, or
/// built from an ImageFolder tree): no file twice in a split, test apart from the training
/// splits, train800val200 = train800 + val200 when all three are given, every listed image
/// a readable regular file under `dir`; the content hash and the [`TaskChecks`].
pub fn check_task(spec: &TaskSpec, dir: PathBuf, lists: Vec<SplitList>) -> Result<Task> {
    let union_checked = check_splits(&lists)?;

    // Each distinct file once, at its first place.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut unique = Vec::new();
    for l in &lists {
        for e in &l.entries {
            if seen.insert(&e.path) {
                unique.push((l, e));
            }
        }
    }
    let infos: Vec<FileInfo> = unique
        .par_iter()
        .map(|(l, e)| hash_image(&dir, e, &l.list_file))
        .collect::<Result<_>>()?;
    let info: HashMap<&str, &FileInfo> = unique
        .iter()
        .zip(&infos)
        .map(|((_, e), i)| (e.path.as_str(), i))
        .collect();
    check_same_files(&lists, &info.iter().map(|(p, i)| (*p, i.id)).collect())?;

    let mut hasher = blake3::Hasher::new();
    hasher.update(spec.name.as_bytes());
    hasher.update(&(spec.num_classes as u64).to_le_bytes());
    if let Some(names) = &spec.class_names {
        for n in names {
            hasher.update(&(n.len() as u64).to_le_bytes());
            hasher.update(n.as_bytes());
        }
    }
    for l in &lists {
        hasher.update(l.name.as_bytes());
        for e in &l.entries {
            hasher.update(e.path.as_bytes());
            hasher.update(&e.label.to_le_bytes());
            hasher.update(&info[e.path.as_str()].hash);
        }
    }

    let in_test: HashSet<&str> = lists
        .iter()
        .filter(|l| l.name == "test")
        .flat_map(|l| l.entries.iter().map(|e| e.path.as_str()))
        .collect();
    let mut by_hash: BTreeMap<[u8; 32], Vec<(&SplitList, &ListEntry)>> = BTreeMap::new();
    for ((l, e), i) in unique.iter().zip(&infos) {
        by_hash.entry(i.hash).or_default().push((l, e));
    }
    let mut identical = IdenticalContent::default();
    let mut cross = IdenticalContent::default();
    for group in by_hash.values().filter(|g| g.len() > 1) {
        let is_test = |e: &ListEntry| in_test.contains(e.path.as_str());
        let tests = group.iter().filter(|(_, e)| is_test(e)).count();
        let has_cross = tests > 0 && tests < group.len();
        // Up to 3 places; a set with test and training images shows one of each first.
        let example = || {
            let mut order: Vec<&(&SplitList, &ListEntry)> = Vec::with_capacity(group.len());
            if has_cross {
                order.extend(group.iter().find(|(_, e)| is_test(e)));
                order.extend(group.iter().find(|(_, e)| !is_test(e)));
            }
            for g in group {
                if !order.iter().any(|o| std::ptr::eq(*o, g)) {
                    order.push(g);
                }
            }
            order
                .iter()
                .take(3)
                .map(|(l, e)| rel_at(l, e))
                .collect::<Vec<_>>()
        };
        for (c, applies) in [(&mut identical, true), (&mut cross, has_cross)] {
            if applies {
                c.groups += 1;
                c.files += group.len();
                if c.examples.len() < 3 {
                    c.examples.push(example());
                }
            }
        }
    }
    let png16: Vec<&str> = unique
        .iter()
        .zip(&infos)
        .filter(|(_, i)| i.png16)
        .map(|((_, e), _)| e.path.as_str())
        .collect();
    let checks = TaskChecks {
        listed_images: lists.iter().map(|l| l.entries.len()).sum(),
        unique_images: unique.len(),
        train800val200_is_union: union_checked,
        identical_content: identical,
        test_train_identical_content: cross,
        png16_images: png16.len(),
        png16_examples: png16.iter().take(3).map(|p| escape_invisible(p)).collect(),
    };
    let out = lists.into_iter().map(|l| (l.name.clone(), l)).collect();
    Ok(Task {
        spec: spec.clone(),
        dir,
        splits: out,
        content_hash: hasher.finalize().to_hex().to_string(),
        checks,
    })
}

/// `s` with every non-ASCII character written as a Rust escape (`caf\u{e9}`), so two
/// Unicode spellings of one name can be told apart.
fn escape_non_ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c.to_string()
            } else {
                format!("\\u{{{:x}}}", c as u32)
            }
        })
        .collect()
}

/// For a listed path `rel` (under `dir`) that cannot be opened: a note naming a file or
/// folder on disk whose name differs from the listed one only by Unicode normalisation
/// (NFC `é` vs NFD `e` + U+0301, as macOS writes names), both spellings escaped; empty
/// when there is none. Such a file is NOT opened in its place (PIL would not open it either).
fn normalization_note(dir: &Path, rel: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut at = dir.to_path_buf();
    for part in rel.split('/') {
        let next = at.join(part);
        if std::fs::symlink_metadata(&next).is_ok() {
            at = next;
            continue;
        }
        let want: String = part.nfc().collect();
        let Ok(entries) = std::fs::read_dir(&at) else {
            return String::new();
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name != part && name.nfc().collect::<String>() == want {
                let form = |s: &str| {
                    if unicode_normalization::is_nfc(s) {
                        "NFC, composed"
                    } else if unicode_normalization::is_nfd(s) {
                        "NFD, decomposed"
                    } else {
                        "mixed"
                    }
                };
                return format!(
                    " [the list spells the name `{}` ({}) but the folder holds `{}` ({}): the \
                     same text under Unicode normalisation, different bytes; write the list \
                     line as the file is named, e.g. normalise the list or the file names to NFC]",
                    escape_non_ascii(part),
                    form(part),
                    escape_non_ascii(name),
                    form(name)
                );
            }
        }
        return String::new();
    }
    String::new()
}

/// Hashes one listed file (blake3 of its bytes) and notes whether it is a 16-bit PNG.
fn hash_image(dir: &Path, e: &ListEntry, list_file: &Path) -> Result<FileInfo> {
    let p = dir.join(&e.path);
    let shown = || idat_engine::text::show_path(&p);
    let mut f = std::fs::File::open(&p).map_err(|err| {
        anyhow::anyhow!(
            "{}:{}: image {} listed but not readable ({err}): expected an image file{}{}",
            list_file.display(),
            e.line,
            shown(),
            invisible_note(&e.path),
            normalization_note(dir, &e.path)
        )
    })?;
    let meta = f.metadata().ok();
    if !meta.as_ref().is_some_and(|m| m.is_file()) {
        bail!(
            "{}:{}: {} is not a regular file: expected an image file",
            list_file.display(),
            e.line,
            shown()
        );
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::with_capacity(32);
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", shown()))?;
        if n == 0 {
            break;
        }
        if head.len() < 32 {
            let take = (32 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        h.update(&buf[..n]);
    }
    Ok(FileInfo {
        hash: *h.finalize().as_bytes(),
        png16: crate::data::image::png_bit_depth(&head) == Some(16),
        id: meta
            .as_ref()
            .and_then(idat_engine::cache::external::file_id),
    })
}
