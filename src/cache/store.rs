//! The cache directory: committed entries with manifests, pending checkpoints,
//! per-key OS advisory locks, per-instance records.
//!
//! ```text
//! <root>/entries/<key>/        read-only outputs + manifest.json (written last, then renamed into place)
//! <root>/tmp/<key>.<pid>/      an entry being written (removed by the next holder of the lock)
//! <root>/pending/<key>/checkpoint/  survives crashes; dropped at commit
//! <root>/locks/<key>.lock      exclusive advisory lock while computing <key>
//! <root>/instances/<id>.json   last key + parts + status of each instance id
//! <root>/corrupt/<key>.<time>/ entries that failed verification (kept for inspection, removed by gc)
//! ```
use super::key::KeyParts;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that sets the cache directory (the flag `--cache-dir` wins).
pub const CACHE_DIR_ENV: &str = "IDAT_CACHE_DIR";
/// Default cache directory, relative to the working directory.
pub const DEFAULT_CACHE_DIR: &str = ".idat";
const MANIFEST: &str = "manifest.json";

/// One output file of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path with `/` separators.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// What makes a directory a cache entry. Written last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub key: String,
    pub instance: String,
    pub parts: KeyParts,
    pub files: Vec<FileEntry>,
    /// blake3 over the file list (paths, sizes, hashes): what downstream keys use.
    pub content_hash: String,
    pub created_unix: u64,
    pub seconds: f64,
    pub tool_version: String,
}

/// Result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Manifest>),
    Missing,
    /// The entry exists but does not match its manifest (or has none).
    Corrupt(String),
}

/// Last outcome of an instance id (for `plan` reasons).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: String,
    pub key: String,
    pub parts: KeyParts,
    /// `ok` or `failed`.
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// A held lock on one key; released on drop (or by the OS when the process dies).
pub struct KeyLock {
    _file: File,
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

/// Every regular file under `dir` (relative, sorted); symlinks and other special files are refused.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                walk(base, &p, out)?;
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).unwrap_or(&p);
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            } else {
                bail!(
                    "{}: outputs must be regular files (found a symlink or special file)",
                    p.display()
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn content_hash(files: &[FileEntry]) -> String {
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update(&[0]);
        h.update(f.size.to_string().as_bytes());
        h.update(&[0]);
        h.update(f.blake3.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}

/// A filesystem-safe name for an instance id (readable, plus a short hash against collisions).
pub fn sanitize(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=,.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let h = blake3::hash(id.as_bytes()).to_hex();
    format!("{s}-{}", &h[..8])
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn make_writable(dir: &Path) {
    if let Ok(files) = list_files(dir) {
        for f in files {
            let p = dir.join(f);
            if let Ok(m) = fs::metadata(&p) {
                let mut perm = m.permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                let _ = fs::set_permissions(&p, perm);
            }
        }
    }
}

/// Remove a directory tree that may hold read-only files.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if dir.exists() {
        make_writable(dir);
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

impl Cache {
    /// Open (creating) a cache directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache> {
        let root = root.into();
        for sub in ["entries", "tmp", "pending", "locks", "instances", "corrupt"] {
            fs::create_dir_all(root.join(sub)).with_context(|| {
                format!("creating cache directory {}", root.join(sub).display())
            })?;
        }
        Ok(Cache { root })
    }

    /// `--cache-dir`, else `$IDAT_CACHE_DIR`, else `.idat`.
    pub fn resolve_dir(flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| {
                std::env::var_os(CACHE_DIR_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    /// The checkpoint directory of a key (created).
    pub fn checkpoint_dir(&self, key: &str) -> Result<PathBuf> {
        let d = self.root.join("pending").join(key).join("checkpoint");
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// Look a key up and verify the entry against its manifest (every file re-hashed).
    pub fn lookup(&self, key: &str) -> Lookup {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        match self.verify(&dir, key) {
            Ok(m) => Lookup::Hit(Box::new(m)),
            Err(e) => Lookup::Corrupt(format!("{e:#}")),
        }
    }

    fn verify(&self, dir: &Path, key: &str) -> Result<Manifest> {
        let text = fs::read_to_string(dir.join(MANIFEST)).context("no readable manifest.json")?;
        let m: Manifest = serde_json::from_str(&text).context("manifest.json does not parse")?;
        if m.key != key {
            bail!("manifest is for key {}, not {key}", m.key);
        }
        let on_disk: Vec<String> = list_files(dir)?
            .into_iter()
            .filter(|f| f != MANIFEST)
            .collect();
        let listed: Vec<&String> = m.files.iter().map(|f| &f.path).collect();
        if on_disk.iter().collect::<Vec<_>>() != listed {
            bail!("files on disk differ from the manifest's list");
        }
        for f in &m.files {
            let (size, hash) = hash_file(&dir.join(&f.path))?;
            if size != f.size || hash != f.blake3 {
                bail!(
                    "file `{}` does not match its manifest hash (size {size}, expected {})",
                    f.path,
                    f.size
                );
            }
        }
        if content_hash(&m.files) != m.content_hash {
            bail!("manifest content hash does not match its file list");
        }
        Ok(m)
    }

    /// Move a corrupt entry aside (to `corrupt/`) so that it is recomputed and never used.
    pub fn quarantine(&self, key: &str) -> Result<PathBuf> {
        let to =
            self.root
                .join("corrupt")
                .join(format!("{key}.{}.{}", now_unix(), std::process::id()));
        fs::rename(self.entry_dir(key), &to)
            .with_context(|| format!("moving corrupt entry {key} aside"))?;
        Ok(to)
    }

    /// Block until this process holds the exclusive lock of `key`.
    pub fn lock(&self, key: &str) -> Result<KeyLock> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening lock {}", p.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", p.display()))?;
        Ok(KeyLock { _file: f })
    }

    /// Take the lock of `key` if free.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// A fresh temporary output directory for `key`, after removing those left by dead
    /// writers (the caller holds the key's lock, so nobody else writes them).
    pub fn fresh_tmp(&self, key: &str) -> Result<PathBuf> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp)?.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{key}."))
            {
                remove_tree(&e.path())?;
            }
        }
        let d = tmp.join(format!("{key}.{}", std::process::id()));
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Turn a finished output directory into the entry for `parts` (caller holds the lock):
    /// hash files, write the manifest last, make files read-only, rename into place,
    /// drop the pending checkpoint.
    pub fn commit(
        &self,
        tmp: &Path,
        instance: &str,
        parts: &KeyParts,
        seconds: f64,
    ) -> Result<Manifest> {
        let key = parts.key();
        if tmp.join(MANIFEST).exists() {
            bail!("stage wrote a file named {MANIFEST}: that name is reserved for the cache");
        }
        let mut files = Vec::new();
        for rel in list_files(tmp)? {
            let (size, blake3) = hash_file(&tmp.join(&rel))?;
            files.push(FileEntry {
                path: rel,
                size,
                blake3,
            });
        }
        let m = Manifest {
            format: super::key::CACHE_FORMAT,
            key: key.clone(),
            instance: instance.to_string(),
            parts: parts.clone(),
            content_hash: content_hash(&files),
            files,
            created_unix: now_unix(),
            seconds,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let mpath = tmp.join(MANIFEST);
        fs::write(&mpath, serde_json::to_vec_pretty(&m)?)?;
        File::open(&mpath)?.sync_all()?;
        for rel in list_files(tmp)? {
            let p = tmp.join(rel);
            let mut perm = fs::metadata(&p)?.permissions();
            perm.set_readonly(true);
            fs::set_permissions(&p, perm)?;
        }
        let dest = self.entry_dir(&key);
        if dest.exists() {
            // Forced recompute: the old entry goes away only once the new one is complete.
            let old = self
                .root
                .join("tmp")
                .join(format!("{key}.old.{}", std::process::id()));
            fs::rename(&dest, &old)?;
            fs::rename(tmp, &dest)?;
            remove_tree(&old)?;
        } else {
            fs::rename(tmp, &dest).with_context(|| format!("committing entry {key}"))?;
        }
        remove_tree(&self.root.join("pending").join(&key))?;
        Ok(m)
    }

    fn record_path(&self, instance: &str) -> PathBuf {
        self.root
            .join("instances")
            .join(format!("{}.json", sanitize(instance)))
    }

    /// The last record of an instance id, if any (an unreadable record counts as none).
    pub fn record(&self, instance: &str) -> Option<InstanceRecord> {
        let t = fs::read_to_string(self.record_path(instance)).ok()?;
        serde_json::from_str(&t).ok()
    }

    /// Replace the record of an instance id (atomically).
    pub fn write_record(&self, rec: &InstanceRecord) -> Result<()> {
        let p = self.record_path(&rec.instance);
        let tmp = p.with_extension(format!("json.{}.tmp", std::process::id()));
        fs::write(&tmp, serde_json::to_vec_pretty(rec)?)?;
        fs::rename(&tmp, &p)?;
        Ok(())
    }

    /// Every instance record.
    pub fn records(&self) -> Vec<InstanceRecord> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("instances")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    if let Some(r) = fs::read_to_string(e.path())
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                    {
                        v.push(r);
                    }
                }
            }
        }
        v
    }

    /// Keys of committed entries.
    pub fn entry_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join("entries"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Total size in bytes of the regular files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    list_files(dir)
        .map(|fs_| {
            fs_.iter()
                .filter_map(|f| fs::metadata(dir.join(f)).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::CACHE_FORMAT;
    use serde_json::json;

    fn parts() -> KeyParts {
        KeyParts {
            format: CACHE_FORMAT,
            kind: "k".into(),
            kind_version: 1,
            params: json!({"a": 1}),
            upstream: vec![],
            external: vec![],
        }
    }

    #[test]
    fn commit_verify_and_detect_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path().join("c")).unwrap();
        let p = parts();
        let key = p.key();
        let _l = c.lock(&key).unwrap();
        let tmp = c.fresh_tmp(&key).unwrap();
        fs::create_dir_all(tmp.join("sub")).unwrap();
        fs::write(tmp.join("sub/out.txt"), b"hello").unwrap();
        let m = c.commit(&tmp, "s", &p, 0.1).unwrap();
        assert_eq!(m.files.len(), 1);
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
        let f = c.entry_dir(&key).join("sub/out.txt");
        assert!(fs::metadata(&f).unwrap().permissions().readonly());
        make_writable(&c.entry_dir(&key));
        fs::write(&f, b"hellp").unwrap();
        match c.lookup(&key) {
            Lookup::Corrupt(why) => assert!(why.contains("out.txt"), "{why}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        c.quarantine(&key).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Missing));
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let l = c.lock("k").unwrap();
        // A second open file description conflicts even within one process.
        assert!(c.try_lock("k").unwrap().is_none());
        drop(l);
        assert!(c.try_lock("k").unwrap().is_some());
    }
}
