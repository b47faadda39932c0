//! When a committed entry is trusted without reading its bytes.
//!
//! `plan`, `status`, `run` and `exec-stage` look entries up on every call; re-hashing them
//! made every command cost as much as reading the whole cache (VTAB-1K decoded is ~61 GB).
//! As git's index and DVC's state do, the stat of every file of an entry (size, modification
//! and change times in ns, inode, device) and of its manifest is recorded when the entry is
//! committed or verified (`<root>/stat/<key>.json`). A lookup trusts a file whose stat is
//! unchanged and re-hashes only the others (updating the record when they match). The set of
//! files is always checked against the manifest (a directory listing, no bytes read).
//!
//! What this does not catch — a byte changed in place with its stat restored, or bit rot —
//! is caught where the bytes are used: a stage reading an upstream entry verifies what it
//! reads ([`super::verified`]), and `idat-pipe verify` re-hashes every entry.
use super::store::{
    hash_file, list_files, read_manifest, verify_entry, Cache, Lookup, Manifest, MANIFEST,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Version of the stat record's format (a record of another version is ignored).
const STAT_FORMAT: u32 = 1;

/// The stat of one file: what must be unchanged for its bytes to be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i128,
    /// Status-change time (ctime), ns since the Unix epoch (0 where the platform has none).
    pub ctime_ns: i128,
    /// Inode number (0 where the platform has none).
    pub ino: u64,
    /// Device number (0 where the platform has none).
    pub dev: u64,
}

impl FileStat {
    /// The stat of `path` (following links).
    ///
    /// # Errors
    /// The file cannot be stat'ed.
    pub fn of(path: &Path) -> std::io::Result<FileStat> {
        let m = fs::metadata(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
            Ok(FileStat {
                size: m.size(),
                mtime_ns: ns(m.mtime(), m.mtime_nsec()),
                ctime_ns: ns(m.ctime(), m.ctime_nsec()),
                ino: m.ino(),
                dev: m.dev(),
            })
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = m
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            Ok(FileStat {
                size: m.len(),
                mtime_ns,
                ctime_ns: 0,
                ino: 0,
                dev: 0,
            })
        }
    }
}

/// `<root>/stat/<key>.json`: the stats under which an entry's files were last found to
/// match its manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatRecord {
    format: u32,
    key: String,
    manifest: FileStat,
    files: BTreeMap<String, FileStat>,
}

fn record_path(root: &Path, key: &str) -> PathBuf {
    root.join("stat").join(format!("{key}.json"))
}

fn read_record(root: &Path, key: &str) -> Option<StatRecord> {
    let text = fs::read(record_path(root, key)).ok()?;
    serde_json::from_slice::<StatRecord>(&text)
        .ok()
        .filter(|r| r.format == STAT_FORMAT && r.key == key)
}

/// The stats of the entry `dir`'s manifest and listed files, as they are now.
fn stats_now(dir: &Path, m: &Manifest) -> std::io::Result<StatRecord> {
    let mut files = BTreeMap::new();
    for f in &m.files {
        files.insert(f.path.clone(), FileStat::of(&dir.join(&f.path))?);
    }
    Ok(StatRecord {
        format: STAT_FORMAT,
        key: m.key.clone(),
        manifest: FileStat::of(&dir.join(MANIFEST))?,
        files,
    })
}

impl Cache {
    /// Look a key up. An entry is a hit when its files are those its manifest lists and
    /// each has the stat recorded when it last matched (others are re-hashed, and the
    /// record updated when they match): no work proportional to the entry's bytes when
    /// nothing changed. A corrupt entry's message names the entry directory (and its
    /// instance when the manifest says it) and every property that differs: see
    /// [`verify_entry`].
    pub fn lookup(&self, key: &str) -> Lookup {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        let full = || match verify_entry(&dir, key) {
            Ok(m) => {
                self.record_stat(key, &m);
                Lookup::Hit(Box::new(m))
            }
            Err(why) => Lookup::Corrupt(why),
        };
        let (Ok(m), Ok(on_disk)) = (read_manifest(&dir, key), list_files(&dir)) else {
            return full();
        };
        let listed = m.files.iter().map(|f| f.path.as_str());
        if !on_disk
            .iter()
            .filter(|f| *f != MANIFEST)
            .map(String::as_str)
            .eq(listed)
        {
            return full();
        }
        let Some(rec) = read_record(&self.root, key) else {
            return full();
        };
        if FileStat::of(&dir.join(MANIFEST)).ok().as_ref() != Some(&rec.manifest) {
            return full();
        }
        let mut rehashed = false;
        for f in &m.files {
            let path = dir.join(&f.path);
            if FileStat::of(&path).ok().as_ref() == rec.files.get(&f.path) {
                continue;
            }
            match hash_file(&path) {
                Ok((size, hash)) if size == f.size && hash == f.blake3 => rehashed = true,
                _ => return full(),
            }
        }
        if rehashed {
            self.record_stat(key, &m);
        }
        Lookup::Hit(Box::new(m))
    }

    /// Re-hash every file of `key`'s entry against its manifest (what `idat-pipe verify`
    /// does), whatever the recorded stats say. A match records the files' stats; a
    /// corrupt entry's stats are forgotten, so the next lookup finds it corrupt too.
    pub fn verify(&self, key: &str) -> Lookup {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        match verify_entry(&dir, key) {
            Ok(m) => {
                self.record_stat(key, &m);
                Lookup::Hit(Box::new(m))
            }
            Err(why) => {
                self.forget_stat(key);
                Lookup::Corrupt(why)
            }
        }
    }

    /// Record the stats of `key`'s entry, whose files were just found to match manifest
    /// `m` (or were just committed). Best effort: on a read-only cache, or when the record
    /// cannot be written, the next lookup re-hashes instead.
    pub(crate) fn record_stat(&self, key: &str, m: &Manifest) {
        let Ok(rec) = stats_now(&self.entry_dir(key), m) else {
            return;
        };
        let path = record_path(&self.root, key);
        let Ok(bytes) = serde_json::to_vec(&rec) else {
            return;
        };
        // A temporary file beside it, renamed: concurrent lookups write whole records. The
        // folder is not created (a read-only cache stays as it is).
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        if fs::write(&tmp, bytes).is_ok() && fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Forget the stats of `key`'s entry (it was removed, quarantined or found corrupt).
    pub(crate) fn forget_stat(&self, key: &str) {
        let _ = fs::remove_file(record_path(&self.root, key));
    }

    /// Stat records whose entry no longer exists (for `gc`).
    pub(crate) fn stale_stat_records(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(self.root.join("stat")) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| {
                let key = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                key.is_none_or(|k| !self.entry_dir(&k).is_dir())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{KeyParts, CACHE_FORMAT};

    fn parts(n: u32) -> KeyParts {
        KeyParts {
            format: CACHE_FORMAT,
            kind: "test/x".into(),
            kind_version: 1,
            params: serde_json::json!({ "n": n }),
            upstream: vec![],
            external: vec![],
        }
    }

    fn committed(cache: &Cache, n: u32, bytes: &[u8]) -> String {
        let p = parts(n);
        let key = p.key();
        let tmp = cache.fresh_tmp(&key).unwrap();
        std::fs::write(tmp.join("data.bin"), bytes).unwrap();
        std::fs::create_dir_all(tmp.join("sub")).unwrap();
        std::fs::write(tmp.join("sub/b.txt"), "b").unwrap();
        cache
            .commit(&tmp, "x", &p, 0.0, &Default::default())
            .unwrap();
        key
    }

    /// Overwrite a byte of a read-only entry file in place, then restore its times (as
    /// silent corruption leaves them). Returns the file.
    fn flip_byte_keeping_times(path: &Path) {
        let m = fs::metadata(path).unwrap();
        let (atime, mtime) = (m.accessed().unwrap(), m.modified().unwrap());
        let mut perm = m.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(path, perm.clone()).unwrap();
        let mut b = fs::read(path).unwrap();
        b[3] ^= 0x10;
        fs::write(path, b).unwrap();
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
            .unwrap();
        perm.set_readonly(true);
        fs::set_permissions(path, perm).unwrap();
    }

    #[test]
    fn unchanged_stats_are_trusted_and_changed_files_rehashed() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = committed(&cache, 1, &[7u8; 4096]);
        assert!(
            record_path(&cache.root, &key).exists(),
            "recorded at commit"
        );
        assert!(matches!(cache.lookup(&key), Lookup::Hit(_)));
        // A byte flipped in place with the modification time put back: the ctime (and,
        // where the write replaced the file, the inode) changed, so the file is re-hashed
        // and the entry found corrupt by `plan`.
        let file = cache.entry_dir(&key).join("data.bin");
        flip_byte_keeping_times(&file);
        match cache.lookup(&key) {
            Lookup::Corrupt(why) => assert!(
                why.contains("file `data.bin`: content hash differs"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flip_that_keeps_the_recorded_stat_is_left_to_the_consumer_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = committed(&cache, 2, &[1u8; 100]);
        let file = cache.entry_dir(&key).join("data.bin");
        flip_byte_keeping_times(&file);
        // Pretend the stat is unchanged (the case no stat can see): record the new one.
        let m = read_manifest(&cache.entry_dir(&key), &key).unwrap();
        cache.record_stat(&key, &m);
        assert!(
            matches!(cache.lookup(&key), Lookup::Hit(_)),
            "trusted by stat"
        );
        assert!(
            matches!(cache.verify(&key), Lookup::Corrupt(_)),
            "verify re-hashes"
        );
        // verify forgot the stats: from now on lookups see the corruption too.
        assert!(matches!(cache.lookup(&key), Lookup::Corrupt(_)));
    }

    #[test]
    fn files_added_or_removed_are_seen_without_hashing_and_records_are_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = committed(&cache, 3, b"abc");
        let dir = cache.entry_dir(&key);
        // No record (a cache copied from elsewhere, an older version): re-hash, record.
        cache.forget_stat(&key);
        assert!(matches!(cache.lookup(&key), Lookup::Hit(_)));
        assert!(read_record(&cache.root, &key).is_some());
        // An extra file in the entry.
        let mut perm = fs::metadata(&dir).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(&dir, perm).unwrap();
        fs::write(dir.join("extra.txt"), "x").unwrap();
        match cache.lookup(&key) {
            Lookup::Corrupt(why) => {
                assert!(why.contains("`extra.txt` is not in the manifest"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(dir.join("extra.txt")).unwrap();
        assert!(matches!(cache.lookup(&key), Lookup::Hit(_)));
        // The record of a removed entry is stale (gc removes it).
        crate::cache::store::remove_tree(&dir).unwrap();
        assert_eq!(
            cache.stale_stat_records(),
            vec![record_path(&cache.root, &key)]
        );
        assert!(matches!(cache.lookup(&key), Lookup::Missing));
    }

    #[test]
    fn a_read_only_cache_is_looked_up_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = committed(&cache, 4, b"abc");
        cache.forget_stat(&key);
        let ro = Cache::open_read_only(d.path().join("no-such-cache-copy"));
        assert!(matches!(ro.lookup(&key), Lookup::Missing));
        // Without a record a lookup re-hashes; writing the record is best effort.
        fs::remove_dir_all(cache.root.join("stat")).unwrap();
        assert!(matches!(cache.lookup(&key), Lookup::Hit(_)));
        assert!(!cache.root.join("stat").exists(), "nothing created");
    }
}
