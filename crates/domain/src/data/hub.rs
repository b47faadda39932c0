//! Dataset repositories on the Hugging Face hub (or a server speaking its API), fetched with
//! the `hf-hub` crate into an explicit cache folder, without a token. LFS files are checked
//! against their sha256 (the hub's `X-Linked-Etag`, which names the cached blob).

use super::vtab::check_relative_path;
use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Default hub endpoint when neither a parameter nor `HF_ENDPOINT` gives one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The endpoint to use: `explicit`, else the `HF_ENDPOINT` environment variable, else
/// [`DEFAULT_ENDPOINT`].
pub fn endpoint(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// A fetched snapshot of a dataset repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSnapshot {
    /// Folder holding the repository files at their repository paths.
    pub dir: PathBuf,
    /// Commit the revision resolved to.
    pub commit: String,
    /// Repository paths fetched.
    pub files: Vec<String>,
    /// How many of them were verified against an LFS sha256.
    pub verified_lfs: usize,
}

/// Fetches the dataset repository `repo` at `revision` from `endpoint` into `cache_dir`.
/// `select` picks which repository paths to fetch (all when None); paths that are absolute or
/// contain `..` are refused. Files already in the cache are not fetched again.
pub fn fetch_dataset(
    repo: &str,
    revision: &str,
    endpoint: &str,
    cache_dir: &Path,
    select: Option<&dyn Fn(&str) -> bool>,
) -> Result<HubSnapshot> {
    if repo.split('/').count() != 2 || repo.split('/').any(|p| p.is_empty() || p == "..") {
        bail!("hub repo `{repo}` is not valid: expected `owner/name`");
    }
    let api = client(endpoint, cache_dir)?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Dataset,
        revision.to_string(),
    ));
    let info = r
        .info()
        .map_err(|e| anyhow::anyhow!("cannot list dataset {repo}@{revision} on {endpoint}: {e}"))?;
    let mut files = Vec::new();
    for s in &info.siblings {
        let name = &s.rfilename;
        check_relative_path(name).map_err(|e| {
            anyhow::anyhow!("dataset {repo}@{revision} lists an unsafe file path: {e}")
        })?;
        if name.starts_with('.') || select.is_some_and(|f| !f(name)) {
            continue;
        }
        files.push(name.clone());
    }
    if files.is_empty() {
        bail!("dataset {repo}@{revision} on {endpoint} has no files to fetch");
    }
    let mut verified_lfs = 0;
    let mut dir = None;
    for name in &files {
        let local = r.get(name).map_err(|e| {
            anyhow::anyhow!("cannot fetch `{name}` from dataset {repo}@{revision}: {e}")
        })?;
        if verify_blob(&local, name)? {
            verified_lfs += 1;
        }
        if dir.is_none() {
            let depth = Path::new(name).components().count();
            dir = local.ancestors().nth(depth).map(Path::to_path_buf);
        }
    }
    let dir = dir.context("fetched files have no snapshot folder")?;
    Ok(HubSnapshot {
        dir,
        commit: info.sha,
        files,
        verified_lfs,
    })
}

/// A hub client on `endpoint` caching into `cache_dir`, without a token.
fn client(endpoint: &str, cache_dir: &Path) -> Result<hf_hub::api::sync::Api> {
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create hub cache {}", cache_dir.display()))?;
    ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
        .with_endpoint(endpoint.to_string())
        .with_token(None)
        .with_progress(false)
        .build()
        .context("cannot build the hub client")
}

/// Fetches one file of the MODEL repository `repo` at `revision` (e.g. the
/// `model.safetensors` of `timm/vit_base_patch16_224.augreg_in21k`) into `cache_dir`, and
/// checks LFS files against their sha256. A sharded checkpoint's index
/// (`model.safetensors.index.json`, told by content) brings its shards along, each checked
/// the same way. Returns the local path (of the index, for a sharded checkpoint).
pub fn fetch_model_file(
    repo: &str,
    revision: &str,
    file: &str,
    endpoint: &str,
    cache_dir: &Path,
) -> Result<PathBuf> {
    if repo.split('/').count() != 2 || repo.split('/').any(|p| p.is_empty() || p == "..") {
        bail!("hub repo `{repo}` is not valid: expected `owner/name`");
    }
    check_relative_path(file).map_err(|e| anyhow::anyhow!("hub file `{file}`: {e}"))?;
    let api = client(endpoint, cache_dir)?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let local = r.get(file).map_err(|e| {
        let sharded = if file == "model.safetensors" {
            " (a repo whose weights are sharded holds `model.safetensors.index.json` instead: \
             give `file: model.safetensors.index.json` in `with.weights`)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "cannot fetch `{file}` from model {repo}@{revision} on {endpoint}: {e}{sharded}"
        )
    })?;
    verify_blob(&local, file)?;
    if crate::nn::checkpoint::is_shard_index(&local) {
        fetch_shards(&r, repo, revision, file, &local)?;
    }
    Ok(local)
}

/// Fetches (and verifies) the shards the index `local` (repository path `file`) lists,
/// from the index's folder in the repository, next to it in the cache.
fn fetch_shards(
    r: &hf_hub::api::sync::ApiRepo,
    repo: &str,
    revision: &str,
    file: &str,
    local: &Path,
) -> Result<()> {
    let shards = crate::nn::checkpoint::index_shards(local)
        .with_context(|| format!("index `{file}` of model {repo}@{revision}"))?;
    let folder = file.rsplit_once('/').map(|(d, _)| format!("{d}/"));
    for shard in shards {
        let name = format!("{}{shard}", folder.as_deref().unwrap_or(""));
        check_relative_path(&name).map_err(|e| anyhow::anyhow!("hub file `{name}`: {e}"))?;
        let got = r.get(&name).map_err(|e| {
            anyhow::anyhow!(
                "cannot fetch shard `{name}` (listed by `{file}`) from model {repo}@{revision}: {e}"
            )
        })?;
        verify_blob(&got, &name)?;
    }
    Ok(())
}

/// hf-hub names each cached blob by its etag; for LFS files that is the sha256 of the bytes.
/// Returns whether the blob was such a file (and so was verified).
fn verify_blob(local: &Path, name: &str) -> Result<bool> {
    let blob = std::fs::canonicalize(local)
        .with_context(|| format!("fetched `{name}` is missing at {}", local.display()))?;
    let etag = blob
        .file_name()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let got = super::download::sha256_file(&blob)?;
    if got != etag {
        let _ = std::fs::remove_file(&blob);
        bail!("checksum mismatch for hub file `{name}`: expected sha256 {etag}, got {got}");
    }
    Ok(true)
}
