//! Dataset sources (local folder, archive URL, HF hub repo) and the validated manifest that
//! the `dataset/vtab1k` stage outputs.

use super::archive::{extract_atomic, ArchiveLimits};
use super::download::{download_verified, parse_sha256, DownloadOptions};
use super::hidden::is_hidden_or_os;
use super::hub;
use super::vtab::{read_task, ListEntry, Task, TaskChecks, TaskSpec, SPLITS};
use anyhow::{bail, Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a dataset comes from (`dataset/vtab1k`: NOAH layout; `dataset/imagefolder`:
/// ImageFolder layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VtabSource {
    /// A local folder: NOAH layout (`<path>/<task>/train800.txt`, ...) or, for
    /// `dataset/imagefolder`, `<path>/{train,test}/<class>/...` (or one or two levels above).
    Local {
        /// The dataset root; relative paths are resolved against the working directory
        /// (docs/pipeline-dsl.md, "Paths").
        #[schemars(extend("format" = "path"))]
        path: PathBuf,
    },
    /// A zip or tar.gz archive, downloaded (resumable), sha256-verified, extracted atomically.
    Archive {
        /// HTTP(S) URL of the archive, or `file:///absolute/path` for one on this machine.
        url: String,
        /// Expected sha256 of the archive (64 hex digits).
        #[schemars(extend("pattern" = idat_engine::config::schema::SHA256_PATTERN))]
        sha256: String,
    },
    /// A dataset repository on the Hugging Face hub (endpoint from `HF_ENDPOINT` or the options).
    Hub {
        /// `owner/name` of the dataset repository.
        repo: String,
        /// Branch, tag or commit.
        #[serde(default = "default_revision")]
        revision: String,
    },
}

fn default_revision() -> String {
    "main".to_string()
}

/// Knobs of [`prepare`] that are not part of the source.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Splits to validate and list (default: all four).
    pub splits: Vec<String>,
    /// Hub endpoint; None reads `HF_ENDPOINT`, else huggingface.co.
    pub hub_endpoint: Option<String>,
    /// Download bounds.
    pub download: DownloadOptions,
    /// Extraction bounds.
    pub limits: ArchiveLimits,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            splits: SPLITS.iter().map(|s| s.to_string()).collect(),
            hub_endpoint: None,
            download: DownloadOptions::default(),
            limits: ArchiveLimits::default(),
        }
    }
}

/// One split in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    /// List file, relative to the dataset root.
    pub list_file: String,
    /// Number of images.
    pub count: usize,
    /// Entries in list order; `path` is relative to `<root>/<task>` (as in the list file).
    pub images: Vec<ListEntry>,
}

/// One validated task in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskManifest {
    /// Folder name.
    pub name: String,
    /// Task group.
    pub group: String,
    /// Number of classes.
    pub num_classes: usize,
    /// blake3 over list files and image bytes (see [`Task::content_hash`]).
    pub content_hash: String,
    /// Splits by name.
    pub splits: BTreeMap<String, SplitManifest>,
    /// What the dataset checks found (duplicates by content, 16-bit PNGs, ...); absent in
    /// manifests written before the checks existed.
    #[serde(default)]
    pub checks: TaskChecks,
    /// Class names by label (`class_names[label]`), when known: custom `dataset/vtab1k`
    /// entries that give them, and every `dataset/imagefolder` task (its sorted folder names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// The task folder relative to the root when it is not `<root>/<name>`; `.` for an
    /// ImageFolder task, whose image paths are relative to the ImageFolder root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// How an ImageFolder task was read: split folders, files skipped, few-shot sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imagefolder: Option<super::imagefolder::ImageFolderRecord>,
}

impl TaskManifest {
    /// The manifest entry of a validated task (no ImageFolder record, default folder).
    pub fn from_task(task: Task) -> Self {
        let name = task.spec.name.clone();
        let splits = task
            .splits
            .iter()
            .map(|(s, l)| {
                let m = SplitManifest {
                    list_file: format!("{name}/{s}.txt"),
                    count: l.entries.len(),
                    images: l.entries.clone(),
                };
                (s.clone(), m)
            })
            .collect();
        TaskManifest {
            name,
            group: task.spec.group.clone(),
            num_classes: task.spec.num_classes,
            content_hash: task.content_hash,
            splits,
            checks: task.checks,
            class_names: task.spec.class_names.clone(),
            dir: None,
            imagefolder: None,
        }
    }

    /// The task folder under `root` (list paths are relative to it).
    pub fn dir_under(&self, root: &Path) -> PathBuf {
        match self.dir.as_deref() {
            None => root.join(&self.name),
            Some(".") | Some("") => root.to_path_buf(),
            Some(d) => root.join(d),
        }
    }
}

/// The validated dataset: root folder and, per task, splits with their images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Dataset root (task folders live directly under it).
    pub root: PathBuf,
    /// Tasks in the requested order.
    pub tasks: Vec<TaskManifest>,
}

impl Manifest {
    /// The task named `name` (aliases resolved).
    pub fn task(&self, name: &str) -> Result<&TaskManifest> {
        let name = super::vtab::canonical_name(name);
        self.tasks.iter().find(|t| t.name == name).with_context(|| {
            format!(
                "task `{name}` is not in the dataset manifest (has: {})",
                self.tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// Rebuilds the validated [`Task`] of `name` from the manifest (no file is read).
    pub fn load_task(&self, name: &str) -> Result<Task> {
        let t = self.task(name)?;
        let dir = t.dir_under(&self.root);
        let splits = t
            .splits
            .iter()
            .map(|(s, m)| {
                let list = super::vtab::SplitList {
                    name: s.clone(),
                    list_file: self.root.join(&m.list_file),
                    entries: m.images.clone(),
                };
                (s.clone(), list)
            })
            .collect();
        Ok(Task {
            spec: TaskSpec {
                name: t.name.clone(),
                group: t.group.clone(),
                num_classes: t.num_classes,
                expected_sizes: BTreeMap::new(),
                class_names: t.class_names.clone(),
            },
            dir,
            splits,
            content_hash: t.content_hash.clone(),
            checks: t.checks.clone(),
        })
    }

    /// The warnings of every task's [`TaskChecks`], one line each (none when all is clean).
    pub fn warnings(&self) -> Vec<String> {
        self.tasks
            .iter()
            .flat_map(|t| t.checks.warnings(&t.name))
            .collect()
    }

    /// blake3 over the task hashes, in order (a cache key for the whole dataset).
    pub fn content_hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        for t in &self.tasks {
            h.update(t.name.as_bytes());
            h.update(t.content_hash.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// Writes the manifest as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a manifest written by [`Manifest::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = idat_engine::cache::verified::read(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a valid dataset manifest", path.display()))
    }
}

/// One entry of `dataset/vtab1k`'s `tasks:`: a VTAB-1K task by name, or a task of one's
/// own in the NOAH layout with its class count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TaskEntry {
    /// A VTAB-1K task folder name or alias (`dtd`, `cifar100`, ...); split sizes enforced.
    Vtab(String),
    /// A task of one's own: `<root>/<name>/{train800val200,test,...}.txt`; no split size
    /// is enforced.
    Custom(CustomTask),
}

/// A NOAH-layout task that is not one of the 19 (`{name: fashion, num_classes: 10}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomTask {
    /// Folder name under the dataset root (one path component).
    pub name: String,
    /// Number of classes (at least 2); labels in the lists are `0..num_classes`.
    pub num_classes: usize,
    /// Class names in label order (`class_names[label]`), carried into decoded.json,
    /// eval.json and the trained student; as many as `num_classes`.
    #[serde(default)]
    pub class_names: Option<Vec<String>>,
    /// `natural` (default), `specialized` or `structured`: the group `report/vtab` puts
    /// the task in.
    #[serde(default)]
    pub group: Option<String>,
}

/// Checks a task name given for a task of one's own: one plain path component.
pub fn check_task_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(super::vtab::is_invisible);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "task name `{}` is not a plain folder name: expected one path component \
             (no `/`, `\\`, `..`, invisible characters)",
            super::vtab::escape_invisible(name)
        ))
    }
}

/// Checks a group given for a task of one's own.
pub fn check_group(group: &str) -> std::result::Result<(), String> {
    if super::vtab::GROUPS.contains(&group) {
        Ok(())
    } else {
        Err(format!(
            "group `{group}`: expected one of {} (report/vtab groups tasks by them)",
            super::vtab::GROUPS.join(", ")
        ))
    }
}

impl TaskEntry {
    /// The task's name as written.
    pub fn name(&self) -> &str {
        match self {
            TaskEntry::Vtab(n) => n,
            TaskEntry::Custom(c) => &c.name,
        }
    }

    /// The reader's spec; the error (text) says what is wrong with this entry.
    pub fn spec(&self) -> std::result::Result<TaskSpec, String> {
        match self {
            TaskEntry::Vtab(n) => TaskSpec::vtab(n).map_err(|e| {
                format!(
                    "{e:#}: `{{name: {n}, num_classes: N}}` (optionally `class_names`, `group`)"
                )
            }),
            TaskEntry::Custom(c) => {
                check_task_name(&c.name)?;
                if let Some(info) = super::vtab::task_info(&c.name) {
                    return Err(format!(
                        "`{}` is the VTAB-1K task `{}` ({} classes, split sizes enforced): \
                         give it as a plain name, or name your own task differently",
                        c.name, info.name, info.num_classes
                    ));
                }
                if c.num_classes < 2 {
                    return Err(format!(
                        "task `{}`: num_classes {}: expected at least 2",
                        c.name, c.num_classes
                    ));
                }
                let group = c.group.as_deref().unwrap_or("natural");
                check_group(group).map_err(|e| format!("task `{}`: {e}", c.name))?;
                let spec = TaskSpec::custom(&c.name, group, c.num_classes);
                match &c.class_names {
                    Some(names) => spec
                        .with_class_names(names.clone())
                        .map_err(|e| format!("{e:#}")),
                    None => Ok(spec),
                }
            }
        }
    }
}

/// Specs of `tasks:` entries, in order; the error is (index of the entry, message). Two
/// entries for the same folder (aliases resolved) are an error.
pub fn task_specs(entries: &[TaskEntry]) -> std::result::Result<Vec<TaskSpec>, (usize, String)> {
    let mut out: Vec<TaskSpec> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let spec = e.spec().map_err(|m| (i, m))?;
        if let Some(j) = out.iter().position(|s| s.name == spec.name) {
            return Err((
                i,
                format!(
                    "task `{}` is listed twice (entries {j} and {i}): expected each task once",
                    spec.name
                ),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Validates `tasks` under `root` (see [`read_task`]) and builds the manifest. Every
/// split in `splits` is read; for a task of one's own `train800` and `val200` only when
/// their list files exist.
pub fn validate(root: &Path, tasks: &[TaskSpec], splits: &[String]) -> Result<Manifest> {
    if tasks.is_empty() {
        bail!("no tasks requested: expected at least one task name");
    }
    let splits: Vec<&str> = splits.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for spec in tasks {
        // A task of one's own may leave out train800/val200 ([`TaskSpec::requires`]).
        let dir = root.join(&spec.name);
        let splits: Vec<&str> = splits
            .iter()
            .copied()
            .filter(|s| spec.requires(s) || dir.join(format!("{s}.txt")).exists())
            .collect();
        out.push(TaskManifest::from_task(read_task(root, spec, &splits)?));
    }
    Ok(Manifest {
        root: root.to_path_buf(),
        tasks: out,
    })
}

/// The task folders of a local dataset whose root is `path` (as [`resolve_root`] finds
/// them: the root itself or a folder up to two levels down), the external inputs of its
/// cache key. Only the requested tasks: editing another task, or a cache or run folder that
/// lives beside them, changes nothing. Empty when the tasks are not found (the stage then
/// says where it looked).
pub fn local_task_dirs(path: &Path, tasks: &[TaskSpec]) -> Vec<PathBuf> {
    let Some(first) = tasks.first() else {
        return Vec::new();
    };
    let Ok(root) = find_root(path, &first.name) else {
        return Vec::new();
    };
    tasks
        .iter()
        .map(|t| root.join(&t.name))
        .filter(|d| d.is_dir())
        .collect()
}

/// The folder among `dir` and its descendants up to two levels down for which `is_root`
/// holds (archives often wrap everything in one or two folders, e.g. `vtab-1k/vtab-1k/`),
/// searched level by level. None when there is none. Errors: two or more at the first level
/// that has one (two copies of a dataset under the given root): which one is meant is the
/// user's to say, never a silent pick that could change when a folder is added. Hidden and
/// OS folders (`__MACOSX`, `.git`, ...: [`super::hidden`]) are not searched.
pub fn find_wrapped_root(dir: &Path, is_root: &dyn Fn(&Path) -> bool) -> Result<Option<PathBuf>> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..3 {
        let found: Vec<&PathBuf> = level.iter().filter(|d| is_root(d)).collect();
        match found.as_slice() {
            [] => {}
            [one] => return Ok(Some((*one).clone())),
            many => bail!(
                "{} holds {} dataset roots at the same depth: {}; give the one you mean as \
                 the path",
                dir.display(),
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        let mut next = Vec::new();
        for d in &level {
            if let Ok(rd) = std::fs::read_dir(d) {
                let mut subs: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .filter(|e| !is_hidden_or_os(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                subs.sort();
                next.extend(subs);
            }
        }
        level = next;
    }
    Ok(None)
}

/// Finds the folder holding the task folders: `dir` itself, or a descendant up to two levels
/// down (archives often wrap everything in `vtab-1k/`).
pub fn find_root(dir: &Path, first_task: &str) -> Result<PathBuf> {
    if let Some(root) = find_wrapped_root(dir, &|d| d.join(first_task).is_dir())? {
        return Ok(root);
    }
    bail!(
        "no folder `{first_task}` found in {} (searched two levels down): expected the NOAH layout `<root>/{first_task}/train800.txt`",
        dir.display()
    )
}

/// Resolves `source` to a local dataset root, downloading and extracting into `cache_dir`
/// as needed (archives under `cache_dir/archives/<sha256>`, hub files under `cache_dir/hub`).
pub fn resolve_root(
    source: &VtabSource,
    tasks: &[TaskSpec],
    cache_dir: &Path,
    opts: &PrepareOptions,
) -> Result<PathBuf> {
    let first = tasks
        .first()
        .context("no tasks requested: expected at least one task name")?;
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    resolve_source(source, &names, cache_dir, opts, &|d: &Path| {
        find_root(d, &first.name)
    })
}

/// Resolves `source` to a local folder and finds the dataset root in it with `find`
/// (NOAH: [`find_root`]; ImageFolder: `imagefolder::find_imagefolder_root`). `names`
/// are the NOAH task folders wanted from a hub repository; empty: every file.
pub fn resolve_source(
    source: &VtabSource,
    names: &[&str],
    cache_dir: &Path,
    opts: &PrepareOptions,
    find: &dyn Fn(&Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    match source {
        VtabSource::Local { path } => {
            // Pipelines hand over absolute paths (config/paths.rs); a caller of this
            // function gets the same rule, so the manifest never stores a relative root.
            let (cwd, home) =
                idat_engine::config::paths::process_bases().map_err(anyhow::Error::msg)?;
            let path = idat_engine::config::paths::absolute(
                &cwd,
                home.as_deref(),
                &path.to_string_lossy(),
            )
            .map_err(anyhow::Error::msg)?;
            if path.is_file() {
                bail!(
                    "{} is a file, not a dataset folder: for an archive (.zip, .tar.gz) on this \
                     machine give `source: {{kind: archive, url: \"file://{}\", sha256: <its \
                     sha256>}}` (checked, then extracted into the cache), or extract it and \
                     give the folder",
                    path.display(),
                    path.display()
                );
            }
            if !path.is_dir() {
                bail!(
                    "dataset folder {} not found: expected a folder in the NOAH or ImageFolder \
                     layout (relative paths in a pipeline are resolved against the working \
                     directory)",
                    path.display()
                );
            }
            find(&path)
        }
        VtabSource::Archive { url, sha256 } => {
            let sha = parse_sha256(sha256)?;
            let extracted = cache_dir.join("archives").join(&sha);
            if !extracted.is_dir() {
                let file = cache_dir.join("downloads").join(format!("{sha}.archive"));
                download_verified(url, &sha, &file, &opts.download)?;
                let report = extract_atomic(&file, &extracted, &opts.limits)
                    .with_context(|| format!("extracting the archive from {url}"))?;
                warn_macos_metadata(&report, url);
                let _ = std::fs::remove_file(&file);
            }
            find(&extracted)
        }
        VtabSource::Hub { repo, revision } => {
            let endpoint = hub::endpoint(opts.hub_endpoint.as_deref());
            let lists: Vec<String> = opts.splits.iter().map(|s| format!("{s}.txt")).collect();
            let select = |path: &str| hub_wanted(path, names, &lists);
            let snap = hub::fetch_dataset(
                repo,
                revision,
                &endpoint,
                &cache_dir.join("hub"),
                if names.is_empty() {
                    None
                } else {
                    Some(&select)
                },
            )?;
            if let Ok(root) = find(&snap.dir) {
                return Ok(root);
            }
            let extracted = cache_dir.join("hub-extracted").join(&snap.commit);
            if !extracted.is_dir() {
                // Staged next to its destination: one filesystem, so the rename is atomic
                // even where `hub-extracted` is a link to another disk.
                let parent = extracted.parent().unwrap_or(cache_dir);
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                let staging = super::archive::unique_temp_dir(parent, ".hub-extract-")?;
                let res = (|| -> Result<()> {
                    for f in snap.files.iter().filter(|f| archive_stem(f).is_some()) {
                        extract_hub_archive(&snap.dir.join(f), f, &staging, names, opts)
                            .with_context(|| format!("extracting `{f}` from dataset {repo}"))?;
                    }
                    std::fs::rename(&staging, &extracted).with_context(|| {
                        format!("renaming {} to {}", staging.display(), extracted.display())
                    })?;
                    Ok(())
                })();
                if let Err(e) = res {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e);
                }
            }
            find(&extracted)
        }
    }
}

/// The one warning for the macOS AppleDouble entries an extraction of `archive` left out.
fn warn_macos_metadata(report: &super::archive::ExtractReport, archive: &str) {
    if report.macos_metadata > 0 {
        tracing::warn!(
            "{archive}: skipped {} macOS metadata entries (`__MACOSX/...`, `._*`: Finder \
             attributes and resource forks, never image data)",
            report.macos_metadata
        );
    }
}

/// The file stem of an archive name (`a/cifar.tar.gz` -> `cifar`), or None for other files.
fn archive_stem(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next().unwrap_or(path);
    [".zip", ".tar.gz", ".tgz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
}

/// Which hub files to fetch: files inside a requested task's folder (its list files for the
/// requested splits, or anything in a subfolder such as `images/`), at any depth; archives
/// named for a requested task; and archives not named for any VTAB task (whole-dataset packs).
fn hub_wanted(path: &str, tasks: &[&str], lists: &[String]) -> bool {
    if let Some(stem) = archive_stem(path) {
        return tasks.contains(&stem) || super::vtab::task_info(stem).is_none();
    }
    let parts: Vec<&str> = path.split('/').collect();
    parts.iter().enumerate().any(|(i, p)| {
        tasks.contains(p)
            && match parts.len() - i - 1 {
                0 => false,
                1 => lists.iter().any(|l| l == parts[i + 1]),
                _ => true,
            }
    })
}

/// Extracts one hub archive into `staging`. An archive named for a task goes to
/// `staging/<task>/` (its contents may be flat or wrapped in `<task>/`); any other archive is
/// extracted as is (the root is found later).
fn extract_hub_archive(
    archive: &Path,
    name: &str,
    staging: &Path,
    tasks: &[&str],
    opts: &PrepareOptions,
) -> Result<()> {
    let stem = archive_stem(name).unwrap_or(name);
    if !tasks.contains(&stem) {
        let report = super::archive::extract(archive, staging, &opts.limits)?;
        warn_macos_metadata(&report, name);
        return Ok(());
    }
    let dest = staging.join(stem);
    let report = extract_atomic(archive, &dest, &opts.limits)?;
    warn_macos_metadata(&report, name);
    let nested = dest.join(stem);
    // Hidden and OS entries beside the task folder (`.DS_Store`) do not count.
    let only_child = std::fs::read_dir(&dest)?
        .filter_map(|e| e.ok())
        .filter(|e| !is_hidden_or_os(&e.file_name().to_string_lossy()))
        .count()
        == 1;
    if only_child && nested.is_dir() {
        let tmp = staging.join(format!(".{stem}.unwrap"));
        std::fs::rename(&nested, &tmp)?;
        std::fs::remove_dir_all(&dest)?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(())
}

/// Resolves the source (see [`resolve_root`]) and validates the tasks into a [`Manifest`].
pub fn prepare(
    source: &VtabSource,
    tasks: &[TaskSpec],
    cache_dir: &Path,
    opts: &PrepareOptions,
) -> Result<Manifest> {
    let root = resolve_root(source, tasks, cache_dir, opts)?;
    validate(&root, tasks, &opts.splits)
}
