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
//! <root>/stat/<key>.json       the stats under which an entry last matched its manifest (freshness.rs)
//! ```
//!
//! Each subfolder may be a link to another filesystem: an entry is moved into `entries/` by
//! [`move_dir`](super::move_dir::move_dir) (a rename, or a copy next to the destination
//! renamed into place), and what is moved aside inside `entries/` first gets a name starting
//! with `.`, which is never a key.
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
/// The file that makes a directory a cache entry ([`Manifest`]).
pub const MANIFEST: &str = "manifest.json";

/// One output file of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path with `/` separators.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// blake3 hex of the file's content; [`verify_entry`] re-hashes the file against it.
    pub blake3: String,
}

/// What makes a directory a cache entry. Written last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`CACHE_FORMAT`](super::key::CACHE_FORMAT) of the writer.
    pub format: u32,
    /// The cache key (64 hex digits) the entry was committed under: its directory name.
    pub key: String,
    /// Id of the instance that computed it (other instances with the same key reuse it).
    pub instance: String,
    /// What the key is made of ([`KeyParts::key`] of it is `key`).
    pub parts: KeyParts,
    /// Every output file (`manifest.json` itself excluded), sorted by path.
    pub files: Vec<FileEntry>,
    /// blake3 over the file list (paths, sizes, hashes): what downstream keys use.
    pub content_hash: String,
    /// When the entry was committed, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Wall-clock seconds the stage's `run` took (hashing and committing excluded).
    pub seconds: f64,
    /// Package version of the idat-engine that committed it (`CARGO_PKG_VERSION`), e.g. `0.1.0`.
    pub tool_version: String,
    /// What the stage recorded about the computation that is not an output
    /// ([`crate::stages::StageContext::info`]: timings, ...). Not in the content hash.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub info: serde_json::Map<String, serde_json::Value>,
}

/// Result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    /// A verified entry: every file matches its manifest.
    Hit(Box<Manifest>),
    /// No entry directory for the key.
    Missing,
    /// The entry exists but does not match its manifest (or has none).
    Corrupt(String),
}

/// Last outcome of an instance id (for `plan` reasons).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance id the record is for, e.g. `tune[task=dtd,seed=1]`.
    pub instance: String,
    /// Cache key (64 hex digits) of its last run or cache hit.
    pub key: String,
    /// What that key is made of: `plan` diffs it against the current parts to say what changed.
    pub parts: KeyParts,
    /// `ok` or `failed`.
    pub status: String,
    #[serde(default)]
    /// The first line of the error when `status` is `failed`; `None` when `ok`.
    pub error: Option<String>,
}

/// A held lock on one key; released on drop (or by the OS when the process dies).
pub struct KeyLock {
    _file: File,
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    /// The cache directory, laid out as in this module's docs; [`Cache::open`] creates it.
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

pub(crate) fn content_hash(files: &[FileEntry]) -> String {
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

/// Whether an I/O error says the place is not writable (permissions, a read-only mount).
pub fn is_not_writable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

impl Cache {
    /// Open a cache directory for computing: the directory and its folders are created.
    /// An existing cache that is not writable (a shared, read-only one) opens too: a folder
    /// that cannot be created is missing from it, which reads as empty, and each write
    /// fails naming its path (a `run` whose instances are all cached writes nothing there).
    ///
    /// # Errors
    /// A folder cannot be created in a cache that is writable, or the cache directory
    /// itself does not exist and cannot be created (the error names the path).
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache> {
        let root = root.into();
        for sub in [
            "entries",
            "tmp",
            "pending",
            "locks",
            "instances",
            "corrupt",
            "stat",
        ] {
            let dir = root.join(sub);
            match fs::create_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if is_not_writable(&e) && root.is_dir() => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating cache directory {}", dir.display()))
                }
            }
        }
        Ok(Cache { root })
    }

    /// A cache directory opened for reading only (`status`, `plan`, `gc --dry-run`): nothing
    /// is created, not even the directory; what is missing reads as empty.
    pub fn open_read_only(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
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

    /// The directory of the committed entry of `key`, `<root>/entries/<key>` (whether it
    /// exists or not).
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    /// The checkpoint directory of a key (created).
    pub fn checkpoint_dir(&self, key: &str) -> Result<PathBuf> {
        let d = self.root.join("pending").join(key).join("checkpoint");
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// The checkpoint directory a crashed or killed computation of `key` left behind, if it
    /// holds anything (nothing is created).
    pub fn pending_checkpoint(&self, key: &str) -> Option<PathBuf> {
        let d = self.root.join("pending").join(key).join("checkpoint");
        let mut rd = fs::read_dir(&d).ok()?;
        rd.next().is_some().then_some(d)
    }

    /// Move a corrupt entry aside (to `corrupt/`) so that it is recomputed and never used.
    /// It leaves `entries/<key>` in one rename inside `entries/` (whatever filesystem
    /// `corrupt/` is on), then moves to `corrupt/`.
    pub fn quarantine(&self, key: &str) -> Result<PathBuf> {
        self.forget_stat(key);
        let name = format!("{key}.{}.{}", now_unix(), std::process::id());
        let (from, aside) = (self.entry_dir(key), self.aside(&format!("{name}.corrupt")));
        fs::rename(&from, &aside).with_context(|| {
            format!(
                "moving corrupt entry {} aside to {}",
                from.display(),
                aside.display()
            )
        })?;
        let to = self.root.join("corrupt").join(name);
        super::move_dir::move_dir(&aside, &to)?;
        Ok(to)
    }

    /// The newest quarantined copy of `key`'s entry under `corrupt/`, if any.
    pub fn quarantined(&self, key: &str) -> Option<PathBuf> {
        let prefix = format!("{key}.");
        fs::read_dir(self.root.join("corrupt"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .max()
    }

    /// A path inside `entries/` that is never an entry (`entries/.<name>`): where an entry is
    /// moved aside, on the entries' own filesystem.
    fn aside(&self, name: &str) -> PathBuf {
        self.root.join("entries").join(format!(".{name}"))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    /// The lock file of `key`, opened (created) for writing. A cache that is not writable
    /// says so: only its cached instances can be used.
    fn open_lock(&self, key: &str) -> Result<File> {
        let p = self.lock_path(key);
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| {
                let hint = if is_not_writable(&e) {
                    format!(
                        " (the cache {} is not writable: reading commands and cached \
                         instances work on it; to compute or remove, give a writable cache \
                         with --cache-dir)",
                        self.root.display()
                    )
                } else {
                    String::new()
                };
                anyhow::Error::new(e).context(format!("opening lock {}{hint}", p.display()))
            })
    }

    /// Block until this process holds the exclusive lock of `key`.
    pub fn lock(&self, key: &str) -> Result<KeyLock> {
        let f = self.open_lock(key)?;
        f.lock()
            .with_context(|| format!("locking {}", self.lock_path(key).display()))?;
        Ok(KeyLock { _file: f })
    }

    /// Take the lock of `key` if free.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>> {
        let f = self.open_lock(key)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::Error::new(e)
                    .context(format!("locking {}", self.lock_path(key).display())))
            }
        }
    }

    /// Whether a live process holds the lock of `key` (a run computing it), found without
    /// writing: the lock file is opened read-only and a shared lock tried (none is taken
    /// while another process holds the exclusive one). No lock file: not locked.
    pub fn is_locked(&self, key: &str) -> Result<bool> {
        let p = self.lock_path(key);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("opening lock {}", p.display())),
        };
        match f.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("probing lock {}", p.display()))
            }
        }
    }

    /// A fresh temporary output directory for `key`, after removing those left by dead
    /// writers (the caller holds the key's lock, so nobody else writes them).
    pub fn fresh_tmp(&self, key: &str) -> Result<PathBuf> {
        let tmp = self.root.join("tmp");
        let listed = fs::read_dir(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
        for e in listed.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{key}."))
            {
                remove_tree(&e.path())?;
            }
        }
        let d = tmp.join(format!("{key}.{}", std::process::id()));
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
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
        info: &serde_json::Map<String, serde_json::Value>,
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
            info: info.clone(),
        };
        let mpath = tmp.join(MANIFEST);
        fs::write(&mpath, serde_json::to_vec_pretty(&m)?)
            .and_then(|()| File::open(&mpath)?.sync_all())
            .with_context(|| format!("writing {}", mpath.display()))?;
        for rel in list_files(tmp)? {
            let p = tmp.join(rel);
            fs::metadata(&p)
                .and_then(|meta| {
                    let mut perm = meta.permissions();
                    perm.set_readonly(true);
                    fs::set_permissions(&p, perm)
                })
                .with_context(|| format!("making {} read-only", p.display()))?;
        }
        let dest = self.entry_dir(&key);
        let what = || format!("committing entry {key}");
        if dest.exists() {
            // Forced recompute: the old entry goes away only once the new one is complete;
            // it is moved aside inside `entries/`, so on the entries' filesystem.
            let old = self.aside(&format!("{key}.old.{}", std::process::id()));
            fs::rename(&dest, &old)
                .with_context(|| format!("moving {} aside to {}", dest.display(), old.display()))
                .with_context(what)?;
            if let Err(e) = super::move_dir::move_dir(tmp, &dest) {
                // Put the old entry back: the key keeps its last good result.
                let _ = fs::rename(&old, &dest);
                return Err(e.context(what()));
            }
            remove_tree(&old)?;
        } else {
            super::move_dir::move_dir(tmp, &dest).with_context(what)?;
        }
        // From now on a lookup trusts these files while their stats are unchanged.
        self.record_stat(&key, &m);
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

    /// Replace the record of an instance id (atomically: a temporary file in the same
    /// folder, renamed). Errors name the file.
    pub fn write_record(&self, rec: &InstanceRecord) -> Result<()> {
        let p = self.record_path(&rec.instance);
        let tmp = p.with_extension(format!("json.{}.tmp", std::process::id()));
        fs::write(&tmp, serde_json::to_vec_pretty(rec)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &p).with_context(|| {
            let _ = fs::remove_file(&tmp);
            format!("renaming {} to {}", tmp.display(), p.display())
        })?;
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

    /// Keys of committed entries (folders of `entries/` named by a key: 64 hex digits).
    pub fn entry_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join("entries"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| is_key(n))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Folders of `entries/` that are not entries: moved aside or being copied in (named
    /// `.<key>...`), with the key each belongs to. Those whose key is not locked were left
    /// by a process that died; `gc` removes them.
    pub fn entries_aside(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = fs::read_dir(self.root.join("entries"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let key = name.strip_prefix('.')?.split('.').next()?.to_string();
                        is_key(&key).then(|| (key, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Whether `name` is a cache key: 64 lower-case hex digits.
fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// At most this many differences are listed in a corruption message (then a count).
const MAX_LISTED_DIFFERENCES: usize = 8;

/// The first 12 hex digits of a hash, for messages.
fn short_hash(h: &str) -> String {
    let s: String = h.chars().take(12).collect();
    if s.len() < h.len() {
        format!("{s}..")
    } else {
        s
    }
}

/// Verify the entry directory `dir` of `key` against its `manifest.json`, re-hashing every
/// file.
///
/// # Errors
/// One message naming the entry (``entry <dir> (instance `<id>`)``) followed by every
/// difference found, each naming its file and the property that differs:
/// ``file `a.txt` listed in the manifest is missing``, ``file `b.txt` is not in the
/// manifest (extra file)``, ``file `c.bin`: size differs (expected 10 bytes, found 9
/// bytes)``, ``file `c.bin`: content hash differs (expected blake3 0123456789ab.., found
/// ba9876543210..), size matches (10 bytes)``; or what is wrong with the manifest itself.
pub fn verify_entry(dir: &Path, key: &str) -> std::result::Result<Manifest, String> {
    let m = read_manifest(dir, key)?;
    let name = format!("entry {} (instance `{}`)", dir.display(), m.instance);
    let on_disk: Vec<String> = match list_files(dir) {
        Ok(f) => f.into_iter().filter(|f| f != MANIFEST).collect(),
        Err(e) => return Err(listing_failure(&name, vec![format!("{e:#}")])),
    };
    let problems = file_differences(dir, &m, &on_disk);
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(listing_failure(&name, problems))
    }
}

/// `NAME: p1; p2; ...` with at most [`MAX_LISTED_DIFFERENCES`] problems listed.
fn listing_failure(name: &str, problems: Vec<String>) -> String {
    let n = problems.len();
    let mut listed: Vec<String> = problems.into_iter().take(MAX_LISTED_DIFFERENCES).collect();
    if n > MAX_LISTED_DIFFERENCES {
        listed.push(format!("and {} more", n - MAX_LISTED_DIFFERENCES));
    }
    format!("{name}: {}", listed.join("; "))
}

/// The manifest of the entry directory `dir` of `key` (read and parsed; no file hashed).
///
/// # Errors
/// ``entry <dir>: no readable manifest.json (...)``, ``manifest.json does not parse``, or
/// ``manifest.json is for key K, not KEY``.
pub fn read_manifest(dir: &Path, key: &str) -> std::result::Result<Manifest, String> {
    let name = format!("entry {}", dir.display());
    let text = fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| listing_failure(&name, vec![format!("no readable {MANIFEST} ({e})")]))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| listing_failure(&name, vec![format!("{MANIFEST} does not parse ({e})")]))?;
    if m.key != key {
        let name = format!("{name} (instance `{}`)", m.instance);
        return Err(listing_failure(
            &name,
            vec![format!("{MANIFEST} is for key {}, not {key}", m.key)],
        ));
    }
    Ok(m)
}

/// What differs between the manifest `m` and the files `on_disk` of entry `dir` (each
/// listed file re-hashed), then, when the files match, between the manifest's content hash
/// and its file list's.
fn file_differences(dir: &Path, m: &Manifest, on_disk: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let on_disk_set: std::collections::BTreeSet<&str> =
        on_disk.iter().map(String::as_str).collect();
    let listed: std::collections::BTreeSet<&str> =
        m.files.iter().map(|f| f.path.as_str()).collect();
    for f in &m.files {
        if !on_disk_set.contains(f.path.as_str()) {
            problems.push(format!(
                "file `{}` listed in the manifest is missing",
                f.path
            ));
            continue;
        }
        match hash_file(&dir.join(&f.path)) {
            Err(e) => problems.push(format!("file `{}`: unreadable ({e:#})", f.path)),
            Ok((size, _)) if size != f.size => problems.push(format!(
                "file `{}`: size differs (expected {} bytes, found {size} bytes)",
                f.path, f.size
            )),
            Ok((size, hash)) if hash != f.blake3 => problems.push(format!(
                "file `{}`: content hash differs (expected blake3 {}, found {}), size matches \
                 ({size} bytes)",
                f.path,
                short_hash(&f.blake3),
                short_hash(&hash)
            )),
            Ok(_) => {}
        }
    }
    for f in on_disk {
        if !listed.contains(f.as_str()) {
            problems.push(format!("file `{f}` is not in the manifest (extra file)"));
        }
    }
    if problems.is_empty() {
        let computed = content_hash(&m.files);
        if computed != m.content_hash {
            problems.push(format!(
                "the manifest's content hash differs from its file list's (expected {}, \
                 computed {})",
                short_hash(&m.content_hash),
                short_hash(&computed)
            ));
        }
    }
    problems
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
    fn info_goes_to_the_manifest_and_not_into_the_content_hash() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path().join("c")).unwrap();
        let p = parts();
        let key = p.key();
        let mut hashes = Vec::new();
        for secs in [1.5, 2.5] {
            let tmp = c.fresh_tmp(&key).unwrap();
            fs::write(tmp.join("out.txt"), b"same").unwrap();
            let mut info = serde_json::Map::new();
            info.insert("train_seconds".into(), serde_json::json!(secs));
            let m = c.commit(&tmp, "s", &p, secs, &info).unwrap();
            let on_disk = read_manifest(&c.entry_dir(&key), &key).unwrap();
            assert_eq!(on_disk.info["train_seconds"], serde_json::json!(secs));
            hashes.push(m.content_hash);
        }
        assert_eq!(
            hashes[0], hashes[1],
            "a recomputation with identical outputs"
        );
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
        let m = c.commit(&tmp, "s", &p, 0.1, &Default::default()).unwrap();
        assert_eq!(m.files.len(), 1);
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
        let f = c.entry_dir(&key).join("sub/out.txt");
        assert!(fs::metadata(&f).unwrap().permissions().readonly());
        make_writable(&c.entry_dir(&key));
        fs::write(&f, b"hellp").unwrap();
        let dir = c.entry_dir(&key);
        let h = |b: &[u8]| blake3::hash(b).to_hex()[..12].to_string();
        match c.lookup(&key) {
            Lookup::Corrupt(why) => assert_eq!(
                why,
                format!(
                    "entry {} (instance `s`): file `sub/out.txt`: content hash differs \
                     (expected blake3 {}.., found {}..), size matches (5 bytes)",
                    dir.display(),
                    h(b"hello"),
                    h(b"hellp")
                )
            ),
            other => panic!("expected corrupt, got {other:?}"),
        }
        c.quarantine(&key).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Missing));
    }

    /// A committed entry of `files` (path, content) for key parts `p`.
    fn entry(c: &Cache, p: &KeyParts, files: &[(&str, &[u8])]) -> PathBuf {
        let key = p.key();
        let _l = c.lock(&key).unwrap();
        let tmp = c.fresh_tmp(&key).unwrap();
        for (f, b) in files {
            fs::write(tmp.join(f), b).unwrap();
        }
        c.commit(&tmp, "train[seed=1]", p, 0.1, &Default::default())
            .unwrap();
        let dir = c.entry_dir(&key);
        make_writable(&dir);
        dir
    }

    #[test]
    fn corruption_messages_say_what_differs() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path().join("c")).unwrap();
        let p = parts();
        let key = p.key();
        let corrupt = |c: &Cache| match c.lookup(&key) {
            Lookup::Corrupt(why) => why,
            other => panic!("expected corrupt, got {other:?}"),
        };
        let dir = entry(&c, &p, &[("a.bin", b"0123456789"), ("b.txt", b"b")]);
        let head = format!("entry {} (instance `train[seed=1]`)", dir.display());
        // Truncated: both sizes.
        fs::write(dir.join("a.bin"), b"012345678").unwrap();
        assert_eq!(
            corrupt(&c),
            format!("{head}: file `a.bin`: size differs (expected 10 bytes, found 9 bytes)")
        );
        // Missing and extra files, each named.
        fs::write(dir.join("a.bin"), b"0123456789").unwrap();
        fs::remove_file(dir.join("b.txt")).unwrap();
        fs::write(dir.join("c.txt"), b"c").unwrap();
        assert_eq!(
            corrupt(&c),
            format!(
                "{head}: file `b.txt` listed in the manifest is missing; \
                 file `c.txt` is not in the manifest (extra file)"
            )
        );
        // The manifest's own content hash edited: expected and computed.
        fs::remove_file(dir.join("c.txt")).unwrap();
        fs::write(dir.join("b.txt"), b"b").unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
        let mpath = dir.join(MANIFEST);
        let mut m: Manifest = serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
        let real = m.content_hash.clone();
        m.content_hash = "f".repeat(64);
        fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(
            corrupt(&c),
            format!(
                "{head}: the manifest's content hash differs from its file list's \
                 (expected ffffffffffff.., computed {}..)",
                &real[..12]
            )
        );
        // No manifest at all.
        fs::remove_file(&mpath).unwrap();
        let why = corrupt(&c);
        assert!(
            why.starts_with(&format!(
                "entry {}: no readable manifest.json (",
                dir.display()
            )),
            "{why}"
        );
    }

    #[test]
    fn a_held_lock_is_seen_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        assert!(!c.is_locked("k").unwrap(), "no lock file: not locked");
        assert!(!c.lock_path("k").exists(), "probing creates nothing");
        let l = c.lock("k").unwrap();
        assert!(c.is_locked("k").unwrap());
        drop(l);
        assert!(!c.is_locked("k").unwrap());
        // A read-only lock file is probed all the same.
        let mut perm = fs::metadata(c.lock_path("k")).unwrap().permissions();
        perm.set_readonly(true);
        fs::set_permissions(c.lock_path("k"), perm).unwrap();
        assert!(!c.is_locked("k").unwrap());
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

    /// A folder on another filesystem than `near`: a tmpfs at /dev/shm where there is one
    /// (None, with a notice, where there is not: the injected-EXDEV tests in `move_dir.rs`
    /// still cover the copy).
    fn other_filesystem(near: &Path) -> Option<tempfile::TempDir> {
        use std::os::unix::fs::MetadataExt;
        let dev = fs::metadata(near).ok()?.dev();
        let shm = Path::new("/dev/shm");
        let other = fs::metadata(shm)
            .ok()
            .filter(|m| m.dev() != dev && m.is_dir());
        let dir = other.and_then(|_| tempfile::tempdir_in(shm).ok());
        if dir.is_none() {
            eprintln!(
                "notice: no second filesystem (a writable /dev/shm on another device than {}): \
                 the cross-filesystem commit test is skipped",
                near.display()
            );
        }
        dir
    }

    #[test]
    fn commits_work_when_entries_tmp_or_corrupt_are_on_another_filesystem() {
        for linked in ["entries", "tmp", "corrupt"] {
            let d = tempfile::tempdir().unwrap();
            let Some(other) = other_filesystem(d.path()) else {
                return;
            };
            let root = d.path().join("c");
            fs::create_dir_all(&root).unwrap();
            fs::create_dir_all(other.path().join(linked)).unwrap();
            std::os::unix::fs::symlink(other.path().join(linked), root.join(linked)).unwrap();
            let c = Cache::open(&root).unwrap();
            let p = parts();
            let key = p.key();
            let dir = entry(&c, &p, &[("a.txt", b"alpha")]);
            assert!(matches!(c.lookup(&key), Lookup::Hit(_)), "{linked}");
            // Recomputed over an existing entry (`--force`).
            entry(&c, &p, &[("a.txt", b"alpha2")]);
            assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"alpha2", "{linked}");
            // A corrupt entry moves to `corrupt/`.
            fs::write(dir.join("a.txt"), b"alphX2").unwrap();
            assert!(matches!(c.lookup(&key), Lookup::Corrupt(_)), "{linked}");
            let moved = c.quarantine(&key).unwrap();
            assert!(moved.join("a.txt").is_file(), "{linked}");
            assert!(matches!(c.lookup(&key), Lookup::Missing), "{linked}");
            // Nothing is left aside or half copied.
            assert_eq!(c.entries_aside(), vec![], "{linked}");
            assert_eq!(
                fs::read_dir(root.join("tmp")).unwrap().count(),
                0,
                "{linked}"
            );
        }
    }

    #[test]
    fn folders_moved_aside_are_never_entries_and_gc_removes_those_left_behind() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let p = parts();
        let key = p.key();
        entry(&c, &p, &[("a.txt", b"alpha")]);
        // What a process killed in the middle of a cross-filesystem commit leaves.
        let half = c.root.join("entries").join(format!(".{key}.incoming.99.0"));
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("a.txt"), b"al").unwrap();
        assert_eq!(c.entry_keys(), vec![key.clone()]);
        assert_eq!(c.entries_aside(), vec![(key.clone(), half.clone())]);
        // Kept while its key is locked (a commit under way), removed once it is not.
        let l = c.lock(&key).unwrap();
        let r = super::super::gc::gc(&c, false).unwrap();
        assert_eq!((r.tmp, half.exists()), (0, true));
        drop(l);
        c.write_record(&InstanceRecord {
            instance: "s".into(),
            key: key.clone(),
            parts: p.clone(),
            status: "ok".into(),
            error: None,
        })
        .unwrap();
        let r = super::super::gc::gc(&c, false).unwrap();
        assert_eq!((r.tmp, r.entries.len(), half.exists()), (1, 0, false));
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
    }
}
