//! Content hashes of external inputs (files or folders a stage reads from outside the
//! cache), memoised by path + size + mtime so unchanged files are not read again.
//!
//! The key never holds a size or a time: only the content hash goes into it. The memo
//! (`<cache>/external/<blake3 of the root path>.json`) maps each file's relative path to
//! its size, mtime (ns) and blake3; a file whose size and mtime are unchanged is not
//! re-read. Touching a file (new mtime, same bytes) re-reads it and yields the same hash.
use super::store::hash_file;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

/// One file's memoised hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MemoEntry {
    size: u64,
    mtime_ns: u128,
    blake3: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Memo {
    root: String,
    files: BTreeMap<String, MemoEntry>,
}

/// The hash of one external input and what computing it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalHash {
    /// blake3 over the sorted (relative path, kind, size, content hash) of every file.
    pub hash: String,
    /// Files in the input.
    pub files: usize,
    /// Files whose content had to be read (not answered by the memo).
    pub read: usize,
}

fn mtime_ns(m: &fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One item of a walked tree: a regular file or a symlink (never followed).
enum Item {
    File(PathBuf, fs::Metadata),
    Link(PathBuf),
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Item)>) -> Result<()> {
    let rd = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let p = e.path();
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", p.display()))?;
        let rel = p
            .strip_prefix(base)
            .unwrap_or(&p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if ft.is_dir() {
            walk(base, &p, out)?;
        } else if ft.is_symlink() {
            out.push((rel, Item::Link(p)));
        } else if ft.is_file() {
            let m = e
                .metadata()
                .with_context(|| format!("reading {}", p.display()))?;
            out.push((rel, Item::File(p, m)));
        }
        // Sockets, fifos and devices are not data: left out.
    }
    Ok(())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn memo_path(cache_root: &Path, root: &Path) -> PathBuf {
    let h = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
    cache_root
        .join("external")
        .join(format!("{}.json", &h[..32]))
}

/// Hash the file or folder `path` (folders recursively, in sorted order). Symlinks inside
/// a folder are never followed (their target text is hashed instead), so nothing outside
/// the tree is read; `path` itself may be a symlink. `cache_root` holds the memo.
pub fn hash_external(cache_root: &Path, path: &Path) -> Result<ExternalHash> {
    let root = fs::canonicalize(path)
        .with_context(|| format!("external input {}: cannot open", path.display()))?;
    let meta = fs::metadata(&root)
        .with_context(|| format!("external input {}: cannot open", path.display()))?;
    let mut items = Vec::new();
    if meta.is_dir() {
        walk(&root, &root, &mut items)?;
    } else if meta.is_file() {
        items.push((String::new(), Item::File(root.clone(), meta)));
    } else {
        bail!(
            "external input {}: not a regular file or folder",
            path.display()
        );
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mp = memo_path(cache_root, &root);
    let old: Memo = fs::read(&mp)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|m: &Memo| m.root == root.to_string_lossy())
        .unwrap_or_default();
    let mut memo = Memo {
        root: root.to_string_lossy().into_owned(),
        files: BTreeMap::new(),
    };
    let mut h = blake3::Hasher::new();
    let mut read = 0usize;
    for (rel, item) in &items {
        match item {
            Item::File(p, m) => {
                let size = m.len();
                let mt = mtime_ns(m);
                let entry = match old.files.get(rel) {
                    Some(e) if e.size == size && e.mtime_ns == mt => e.clone(),
                    _ => {
                        read += 1;
                        let (n, b) = hash_file(p)
                            .with_context(|| format!("external input {}", path.display()))?;
                        MemoEntry {
                            size: n,
                            mtime_ns: mt,
                            blake3: b,
                        }
                    }
                };
                for part in [rel.as_str(), "f", &entry.size.to_string(), &entry.blake3] {
                    h.update(part.as_bytes());
                    h.update(&[0]);
                }
                memo.files.insert(rel.clone(), entry);
            }
            Item::Link(p) => {
                let target =
                    fs::read_link(p).with_context(|| format!("reading symlink {}", p.display()))?;
                for part in [rel.as_str(), "l", &target.to_string_lossy()] {
                    h.update(part.as_bytes());
                    h.update(&[0]);
                }
            }
        }
    }
    if read > 0 || memo.files.len() != old.files.len() {
        // Best effort: a failed memo write only costs re-reading next time.
        let _ = write_memo(&mp, &memo);
    }
    Ok(ExternalHash {
        hash: h.finalize().to_hex().to_string(),
        files: memo.files.len(),
        read,
    })
}

fn write_memo(path: &Path, memo: &Memo) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!(
        "json.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, serde_json::to_vec(memo)?)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Memo files under `<cache_root>/external` whose input folder or file no longer exists, or
/// that cannot be read as a memo. Memos are only a speed-up (the next run re-hashes), so
/// removing them loses nothing.
pub fn stale_memos(cache_root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(cache_root.join("external")) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            let memo = fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Memo>(&b).ok());
            match memo {
                Some(m) => !Path::new(&m.root).exists(),
                None => true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memos_of_vanished_inputs_are_stale() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        let (kept, gone) = (t.path().join("kept"), t.path().join("gone"));
        fs::create_dir_all(&kept).unwrap();
        fs::create_dir_all(&gone).unwrap();
        fs::write(kept.join("a"), b"1").unwrap();
        fs::write(gone.join("b"), b"2").unwrap();
        hash_external(&cache, &kept).unwrap();
        hash_external(&cache, &gone).unwrap();
        assert!(stale_memos(&cache).is_empty());
        let gone_memo = memo_path(&cache, &fs::canonicalize(&gone).unwrap());
        fs::remove_dir_all(&gone).unwrap();
        fs::write(cache.join("external/garbage.json"), b"{not json").unwrap();
        let mut stale = stale_memos(&cache);
        stale.sort();
        let mut want = vec![gone_memo, cache.join("external/garbage.json")];
        want.sort();
        assert_eq!(stale, want);
    }

    fn set_mtime(p: &Path, secs: u64) {
        let f = fs::File::options().write(true).open(p).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn content_not_mtime_and_memo_skips_unchanged_files() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        let data = t.path().join("data");
        fs::create_dir_all(data.join("sub")).unwrap();
        fs::write(data.join("a.txt"), b"hello").unwrap();
        fs::write(data.join("sub/b.bin"), [1u8, 2, 3]).unwrap();
        let h1 = hash_external(&cache, &data).unwrap();
        assert_eq!((h1.files, h1.read), (2, 2));
        let h2 = hash_external(&cache, &data).unwrap();
        assert_eq!(h2.hash, h1.hash);
        assert_eq!(h2.read, 0, "unchanged files are answered by the memo");

        // mtime only: re-read, same hash.
        set_mtime(&data.join("a.txt"), 1_000_000);
        let h3 = hash_external(&cache, &data).unwrap();
        assert_eq!((h3.hash.as_str(), h3.read), (h1.hash.as_str(), 1));

        // One byte changed (same size, mtime forced back to the memo's value would hide it,
        // so keep a fresh mtime): a different hash.
        fs::write(data.join("sub/b.bin"), [1u8, 2, 4]).unwrap();
        set_mtime(&data.join("sub/b.bin"), 2_000_000);
        let h4 = hash_external(&cache, &data).unwrap();
        assert_ne!(h4.hash, h1.hash);
        assert_eq!(h4.read, 1);

        // A renamed file changes the hash too.
        fs::rename(data.join("a.txt"), data.join("c.txt")).unwrap();
        assert_ne!(hash_external(&cache, &data).unwrap().hash, h4.hash);
    }

    #[test]
    fn single_file_and_missing_path() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("w.bin");
        fs::write(&f, b"abc").unwrap();
        let h = hash_external(t.path(), &f).unwrap();
        assert_eq!(h.files, 1);
        let e = hash_external(t.path(), &t.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("external input"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_not_followed_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside.txt");
        fs::write(&outside, b"x").unwrap();
        let data = t.path().join("data");
        fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        let h1 = hash_external(t.path(), &data).unwrap();
        assert_eq!(
            (h1.files, h1.read),
            (0, 0),
            "the outside file is never read"
        );
        fs::write(&outside, b"y").unwrap();
        assert_eq!(hash_external(t.path(), &data).unwrap().hash, h1.hash);
    }
}
