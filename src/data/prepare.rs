//! Dataset sources (local folder, archive URL, HF hub repo) and the validated manifest that
//! the `dataset/vtab1k` stage outputs.

use super::archive::{extract_atomic, ArchiveLimits};
use super::download::{download_verified, parse_sha256, DownloadOptions};
use super::hub;
use super::vtab::{read_task, ListEntry, Task, TaskChecks, TaskSpec, SPLITS};
use anyhow::{bail, Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the VTAB-1K folders come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VtabSource {
    /// A local folder in the NOAH layout (`<path>/<task>/train800.txt`, ...).
    Local {
        /// The dataset root; relative paths are resolved against the working directory
        /// (docs/pipeline-dsl.md, "Paths").
        #[schemars(extend("format" = "path"))]
        path: PathBuf,
    },
    /// A zip or tar.gz archive, downloaded (resumable), sha256-verified, extracted atomically.
    Archive {
        /// HTTP(S) URL of the archive.
        url: String,
        /// Expected sha256 of the archive (64 hex digits).
        #[schemars(extend("pattern" = crate::config::schema::SHA256_PATTERN))]
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
        let dir = self.root.join(&t.name);
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
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a valid dataset manifest", path.display()))
    }
}

/// Specs of VTAB-1K tasks by name (aliases allowed); unknown names are an error.
pub fn vtab_specs(names: &[String]) -> Result<Vec<TaskSpec>> {
    names.iter().map(|n| TaskSpec::vtab(n)).collect()
}

/// Validates `tasks` under `root` (see [`read_task`]) and builds the manifest.
pub fn validate(root: &Path, tasks: &[TaskSpec], splits: &[String]) -> Result<Manifest> {
    if tasks.is_empty() {
        bail!("no tasks requested: expected at least one task name");
    }
    let splits: Vec<&str> = splits.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for spec in tasks {
        let task = read_task(root, spec, &splits)?;
        let splits = task
            .splits
            .iter()
            .map(|(s, l)| {
                let m = SplitManifest {
                    list_file: format!("{}/{s}.txt", spec.name),
                    count: l.entries.len(),
                    images: l.entries.clone(),
                };
                (s.clone(), m)
            })
            .collect();
        out.push(TaskManifest {
            name: spec.name.clone(),
            group: spec.group.clone(),
            num_classes: spec.num_classes,
            content_hash: task.content_hash,
            splits,
            checks: task.checks,
        });
    }
    Ok(Manifest {
        root: root.to_path_buf(),
        tasks: out,
    })
}

/// Finds the folder holding the task folders: `dir` itself, or a descendant up to two levels
/// down (archives often wrap everything in `vtab-1k/`).
pub fn find_root(dir: &Path, first_task: &str) -> Result<PathBuf> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for d in &level {
            if d.join(first_task).is_dir() {
                return Ok(d.clone());
            }
            if let Ok(rd) = std::fs::read_dir(d) {
                let mut subs: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect();
                subs.sort();
                next.extend(subs);
            }
        }
        level = next;
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
    match source {
        VtabSource::Local { path } => {
            // Pipelines hand over absolute paths (config/paths.rs); a caller of this
            // function gets the same rule, so the manifest never stores a relative root.
            let (cwd, home) = crate::config::paths::process_bases().map_err(anyhow::Error::msg)?;
            let path =
                crate::config::paths::absolute(&cwd, home.as_deref(), &path.to_string_lossy())
                    .map_err(anyhow::Error::msg)?;
            if !path.is_dir() {
                bail!(
                    "dataset folder {} not found: expected a folder in the NOAH layout \
                     (relative paths in a pipeline are resolved against the working directory)",
                    path.display()
                );
            }
            find_root(&path, &first.name)
        }
        VtabSource::Archive { url, sha256 } => {
            let sha = parse_sha256(sha256)?;
            let extracted = cache_dir.join("archives").join(&sha);
            if !extracted.is_dir() {
                let file = cache_dir.join("downloads").join(format!("{sha}.archive"));
                download_verified(url, &sha, &file, &opts.download)?;
                extract_atomic(&file, &extracted, &opts.limits)
                    .with_context(|| format!("extracting the archive from {url}"))?;
                let _ = std::fs::remove_file(&file);
            }
            find_root(&extracted, &first.name)
        }
        VtabSource::Hub { repo, revision } => {
            let endpoint = hub::endpoint(opts.hub_endpoint.as_deref());
            let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
            let lists: Vec<String> = opts.splits.iter().map(|s| format!("{s}.txt")).collect();
            let select = |path: &str| hub_wanted(path, &names, &lists);
            let snap = hub::fetch_dataset(
                repo,
                revision,
                &endpoint,
                &cache_dir.join("hub"),
                Some(&select),
            )?;
            if find_root(&snap.dir, &first.name).is_ok() {
                return find_root(&snap.dir, &first.name);
            }
            let extracted = cache_dir.join("hub-extracted").join(&snap.commit);
            if !extracted.is_dir() {
                let staging = super::archive::unique_temp_dir(cache_dir, ".hub-extract-")?;
                let res = (|| -> Result<()> {
                    for f in snap.files.iter().filter(|f| archive_stem(f).is_some()) {
                        extract_hub_archive(&snap.dir.join(f), f, &staging, &names, opts)
                            .with_context(|| format!("extracting `{f}` from dataset {repo}"))?;
                    }
                    std::fs::create_dir_all(extracted.parent().unwrap_or(cache_dir))?;
                    std::fs::rename(&staging, &extracted)?;
                    Ok(())
                })();
                if let Err(e) = res {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e);
                }
            }
            find_root(&extracted, &first.name)
        }
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
        super::archive::extract(archive, staging, &opts.limits)?;
        return Ok(());
    }
    let dest = staging.join(stem);
    extract_atomic(archive, &dest, &opts.limits)?;
    let nested = dest.join(stem);
    let only_child = std::fs::read_dir(&dest)?.count() == 1;
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
