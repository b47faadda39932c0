//! Reading the files of a committed entry with their bytes checked against its manifest.
//!
//! Lookups trust an entry whose files' stats are unchanged ([`super::freshness`]); the
//! bytes are checked where they are used. A stage that reads a file of an upstream entry
//! opens it here: the bytes are hashed as they are read (no extra I/O), and a file that
//! does not match its manifest fails the read naming the entry and the file, and moves the
//! entry aside (`corrupt/`), so the next run recomputes it. Files outside any entry (a
//! dataset folder, a checkpoint given by path) are read as they are.
use super::freshness::FileStat;
use super::store::{read_manifest, Cache, FileEntry, MANIFEST};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Where a file sits in a committed entry: the cache, the key and the manifest's record
/// of the file.
#[derive(Debug, Clone)]
pub struct EntryFile {
    /// The cache the entry is in.
    pub cache: Cache,
    /// The entry's key.
    pub key: String,
    /// The instance that computed the entry (from its manifest), for messages.
    pub instance: String,
    /// The manifest's record of the file (its path relative to the entry, size, blake3).
    pub file: FileEntry,
}

/// An entry's manifest as files by path, with the stat of the manifest it was read from.
struct Indexed {
    stat: FileStat,
    instance: String,
    files: HashMap<String, FileEntry>,
}

/// Manifests already read by this process, by entry directory: a stage reading the 20,000
/// images of a prepared dataset parses its manifest once. A manifest whose stat changed
/// (the entry was recomputed) is read again.
fn manifests() -> &'static Mutex<HashMap<PathBuf, Arc<Indexed>>> {
    static M: OnceLock<Mutex<HashMap<PathBuf, Arc<Indexed>>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

fn indexed(dir: &Path, key: &str) -> Option<Arc<Indexed>> {
    let stat = FileStat::of(&dir.join(MANIFEST)).ok()?;
    let mut memo = manifests().lock().ok()?;
    if let Some(i) = memo.get(dir).filter(|i| i.stat == stat) {
        return Some(i.clone());
    }
    let m = read_manifest(dir, key).ok()?;
    let i = Arc::new(Indexed {
        stat,
        instance: m.instance,
        files: m.files.into_iter().map(|f| (f.path.clone(), f)).collect(),
    });
    memo.insert(dir.to_path_buf(), i.clone());
    Some(i)
}

/// The entry `path` belongs to, found from its ancestors (`<root>/entries/<key>/...` with a
/// manifest listing the file); None for a file outside any entry, or one its entry's
/// manifest does not list.
pub fn entry_file(path: &Path) -> Option<EntryFile> {
    let (shown, path) = (path, std::path::absolute(path).ok()?);
    for (depth, dir) in path.ancestors().enumerate().skip(1) {
        let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) else {
            break;
        };
        if parent.file_name().is_none_or(|n| n != "entries") {
            continue;
        }
        let key = name.to_str()?;
        let index = indexed(dir, key)?;
        let rel = path.strip_prefix(dir).ok()?;
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let file = index.files.get(&rel.join("/"))?.clone();
        // The cache as the caller named it (relative stays relative, for messages).
        let root = match shown.ancestors().nth(depth + 2) {
            Some(r) if depth + 2 < shown.ancestors().count() => r.to_path_buf(),
            _ => parent.parent()?.to_path_buf(),
        };
        return Some(EntryFile {
            cache: Cache::open_read_only(root),
            key: key.to_string(),
            instance: index.instance.clone(),
            file,
        });
    }
    None
}

/// A file opened for reading from start to end, hashed as it is read; reaching its end
/// checks it against its entry's manifest ([`open`]).
pub struct VerifiedReader {
    inner: File,
    path: PathBuf,
    entry: Option<EntryFile>,
    hasher: blake3::Hasher,
    read: u64,
    checked: bool,
}

/// Open `path` to read it whole, in order. Inside an entry its bytes are checked at the
/// end against the manifest: a mismatch is an [`io::ErrorKind::InvalidData`] error naming
/// the entry, the instance and the file (and where the entry was moved). Outside entries
/// the file is read as it is.
///
/// # Errors
/// The file cannot be opened (the error names it).
pub fn open(path: &Path) -> io::Result<VerifiedReader> {
    let inner = File::open(path).map_err(|e| {
        let why = match moved_aside(path) {
            Some(to) => format!(
                "; its entry was found corrupt and moved to {} (the next run recomputes it)",
                to.display()
            ),
            None => String::new(),
        };
        io::Error::new(e.kind(), format!("opening {}: {e}{why}", path.display()))
    })?;
    Ok(VerifiedReader {
        inner,
        path: path.to_path_buf(),
        entry: entry_file(path),
        hasher: blake3::Hasher::new(),
        read: 0,
        checked: false,
    })
}

/// Where the entry of `path` (`.../entries/<key>/...`) was moved as corrupt, if it was.
fn moved_aside(path: &Path) -> Option<PathBuf> {
    for dir in path.ancestors() {
        let parent = dir.parent()?;
        if parent.file_name().is_some_and(|n| n == "entries") {
            let key = dir.file_name()?.to_str()?;
            return Cache::open_read_only(parent.parent()?).quarantined(key);
        }
    }
    None
}

impl VerifiedReader {
    /// Whether the file belongs to an entry (and so is checked).
    pub fn is_checked(&self) -> bool {
        self.entry.is_some()
    }

    /// The check at the end of the file.
    fn check(&mut self) -> io::Result<()> {
        self.checked = true;
        let Some(e) = &self.entry else { return Ok(()) };
        let hash = self.hasher.finalize().to_hex().to_string();
        if self.read == e.file.size && hash == e.file.blake3 {
            return Ok(());
        }
        let what = if self.read != e.file.size {
            format!(
                "size differs (expected {} bytes, read {})",
                e.file.size, self.read
            )
        } else {
            format!(
                "content hash differs (expected blake3 {}, found {})",
                &e.file.blake3[..12.min(e.file.blake3.len())],
                &hash[..12]
            )
        };
        Err(corrupt(e, &what))
    }
}

/// The error of a corrupt entry file, after moving the entry aside.
fn corrupt(e: &EntryFile, what: &str) -> io::Error {
    let dir = e.cache.entry_dir(&e.key);
    let moved = match e.cache.quarantine(&e.key) {
        Ok(to) => format!("moved to {}; the next run recomputes it", to.display()),
        Err(err) => {
            format!("it could not be moved aside ({err:#}): run `idat-pipe verify` and remove it")
        }
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "corrupt cache entry {} (instance `{}`): file `{}`: {what}; {moved}",
            dir.display(),
            e.instance,
            e.file.path
        ),
    )
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| {
            io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display()))
        })?;
        if n == 0 && !buf.is_empty() {
            if !self.checked {
                self.check()?;
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// The whole of `path`, checked when it is an entry's file ([`open`]).
///
/// # Errors
/// The file cannot be read, or does not match its entry's manifest.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut r = open(path)?;
    let mut v = Vec::with_capacity(r.entry.as_ref().map_or(0, |e| e.file.size as usize));
    r.read_to_end(&mut v)?;
    Ok(v)
}

/// Check `path` against its entry's manifest by reading it once, for readers that then use
/// it out of order (memory maps, random access). Nothing to do outside entries.
///
/// # Errors
/// The file cannot be read, or does not match its entry's manifest.
pub fn check(path: &Path) -> io::Result<()> {
    let mut r = open(path)?;
    if !r.is_checked() {
        return Ok(());
    }
    io::copy(&mut r, &mut io::sink()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{KeyParts, Lookup, CACHE_FORMAT};

    fn entry(cache: &Cache) -> String {
        let p = KeyParts {
            format: CACHE_FORMAT,
            kind: "test/x".into(),
            kind_version: 1,
            params: serde_json::json!({}),
            upstream: vec![],
            external: vec![],
        };
        let key = p.key();
        let tmp = cache.fresh_tmp(&key).unwrap();
        std::fs::create_dir_all(tmp.join("d")).unwrap();
        std::fs::write(tmp.join("d/w.bin"), vec![5u8; 100_000]).unwrap();
        cache
            .commit(&tmp, "train[seed=1]", &p, 0.0, &Default::default())
            .unwrap();
        key
    }

    #[test]
    fn entry_files_are_checked_as_they_are_read_and_others_read_as_they_are() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path().join("c")).unwrap();
        let key = entry(&cache);
        let file = cache.entry_dir(&key).join("d/w.bin");
        let e = entry_file(&file).unwrap();
        assert_eq!(
            (e.key.as_str(), e.file.path.as_str()),
            (key.as_str(), "d/w.bin")
        );
        assert_eq!(read(&file).unwrap().len(), 100_000);
        check(&file).unwrap();
        let outside = d.path().join("x.bin");
        std::fs::write(&outside, "x").unwrap();
        assert!(entry_file(&outside).is_none());
        assert_eq!(read(&outside).unwrap(), b"x");
        // The manifest itself is not a listed file: read as it is.
        assert!(entry_file(&cache.entry_dir(&key).join("manifest.json")).is_none());
    }

    #[test]
    fn a_flipped_byte_fails_the_read_naming_the_file_and_quarantines_the_entry() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path().join("c")).unwrap();
        let key = entry(&cache);
        let file = cache.entry_dir(&key).join("d/w.bin");
        let mut perm = std::fs::metadata(&file).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&file, perm).unwrap();
        let mut b = std::fs::read(&file).unwrap();
        b[77_777] ^= 1;
        std::fs::write(&file, b).unwrap();
        let e = read(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(msg.contains("instance `train[seed=1]`"), "{msg}");
        assert!(
            msg.contains("file `d/w.bin`: content hash differs"),
            "{msg}"
        );
        assert!(msg.contains("the next run recomputes it"), "{msg}");
        assert!(matches!(cache.lookup(&key), Lookup::Missing), "moved aside");
        assert_eq!(
            std::fs::read_dir(cache.root.join("corrupt"))
                .unwrap()
                .count(),
            1
        );
    }
}
