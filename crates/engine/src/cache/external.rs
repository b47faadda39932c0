//! Content hashes of external inputs (files or folders a stage reads from outside the
//! cache), memoised by path + size + mtime so unchanged files are not read again.
//!
//! The key never holds a size or a time: only the content hash goes into it. The memo
//! (`<cache>/external/<blake3 of the root path>.json`) maps each file's relative path to
//! its size, mtime (ns) and blake3; a file whose size and mtime are unchanged is not
//! re-read. Touching a file (new mtime, same bytes) re-reads it and yields the same hash.
use super::store::hash_file;
use crate::text::show_path;
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
    /// Device and inode of the file read (0 in memos written before they were kept).
    #[serde(default)]
    dev: u64,
    #[serde(default)]
    ino: u64,
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

/// One regular file of a walked tree: its path on disk (through any links) and the
/// metadata of what it points to.
struct Item(PathBuf, fs::Metadata);

/// Collect every regular file under `dir`, following symlinks (the user's dataset folders
/// often link `images/` to another disk). `ancestors` holds the canonical folders on the way
/// down: a link whose target is one of them, or holds one, would walk in circles, and is
/// reported (naming the link) instead of followed.
fn walk(
    base: &Path,
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<(String, Item)>,
) -> Result<()> {
    let rd = fs::read_dir(dir).with_context(|| format!("reading {}", show_path(dir)))?;
    for e in rd {
        let e = e.with_context(|| format!("reading {}", show_path(dir)))?;
        let p = e.path();
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", show_path(&p)))?;
        let rel = p
            .strip_prefix(base)
            .unwrap_or(&p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let meta = if ft.is_symlink() {
            follow(&p)?
        } else {
            e.metadata()
                .with_context(|| format!("reading {}", show_path(&p)))?
        };
        if meta.is_dir() {
            let canon =
                fs::canonicalize(&p).with_context(|| format!("reading {}", show_path(&p)))?;
            if ft.is_symlink() {
                if let Some(a) = ancestors.iter().find(|a| a.starts_with(&canon)) {
                    bail!(
                        "symlink loop: {} -> {} leads back to {}, a folder that contains \
                         the link; remove or replace that link",
                        show_path(&p),
                        show_path(&fs::read_link(&p).unwrap_or_default()),
                        show_path(a)
                    );
                }
            }
            ancestors.push(canon);
            walk(base, &p, ancestors, out)?;
            ancestors.pop();
        } else if meta.is_file() {
            out.push((rel, Item(p, meta)));
        }
        // Sockets, fifos and devices are not data: left out.
    }
    Ok(())
}

/// The metadata of what the symlink `p` points to; a dangling link or a chain of links
/// that never ends is an error naming the link and its target.
fn follow(p: &Path) -> Result<fs::Metadata> {
    let target = fs::read_link(p).with_context(|| format!("reading symlink {}", show_path(p)))?;
    fs::metadata(p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "dangling symlink: {} -> {} (the target does not exist)",
                show_path(p),
                show_path(&target)
            )
        } else {
            anyhow::anyhow!(
                "symlink {} -> {} cannot be followed: {e} (a link loop?)",
                show_path(p),
                show_path(&target)
            )
        }
    })
}

/// A file's identity on disk, (device, inode) of the metadata given (after following links
/// when it came from `fs::metadata`); None off Unix. Pointing a link at another file of the
/// same size and mtime, or renaming another file over it, changes it; so does a hard link
/// or symlink being the same file as another path (the dataset checks use that).
pub fn file_id(m: &fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        None
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn memo_path(cache_root: &Path, root: &Path) -> PathBuf {
    let h = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
    cache_root
        .join("external")
        .join(format!("{}.json", &h[..32]))
}

/// Hash the file or folder `path` (folders recursively, in sorted order). External inputs
/// are the user's own files, so symlinks, `path` itself or any file or folder inside it,
/// are followed and what they point to is hashed: replacing an image behind a link changes
/// the hash. A dangling link or a link loop is an error naming the link. (Downloaded
/// archives never reach here: their extraction refuses links, `data/archive.rs`.)
/// `cache_root` holds the memo.
pub fn hash_external(cache_root: &Path, path: &Path) -> Result<ExternalHash> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        follow(path).with_context(|| format!("external input {}", show_path(path)))?;
    }
    let root = fs::canonicalize(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (relative paths in a pipeline are resolved against the working directory: \
             docs/pipeline-dsl.md, \"Paths\")"
        } else {
            ""
        };
        anyhow::anyhow!("external input {}: cannot open: {e}{hint}", show_path(path))
    })?;
    let meta = fs::metadata(&root)
        .with_context(|| format!("external input {}: cannot open", show_path(path)))?;
    let mut items = Vec::new();
    if meta.is_dir() {
        walk(&root, &root, &mut vec![root.clone()], &mut items)
            .with_context(|| format!("external input {}", show_path(path)))?;
    } else if meta.is_file() {
        items.push((String::new(), Item(root.clone(), meta)));
    } else {
        bail!(
            "external input {}: not a regular file or folder",
            show_path(path)
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
    for (rel, Item(p, m)) in &items {
        let size = m.len();
        let mt = mtime_ns(m);
        let (dev, ino) = file_id(m).unwrap_or((0, 0));
        let entry = match old.files.get(rel) {
            Some(e) if e.size == size && e.mtime_ns == mt && (e.dev, e.ino) == (dev, ino) => {
                e.clone()
            }
            _ => {
                read += 1;
                let (n, b) =
                    hash_file(p).with_context(|| format!("external input {}", show_path(path)))?;
                MemoEntry {
                    size: n,
                    mtime_ns: mt,
                    dev,
                    ino,
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
    fn symlinked_files_and_folders_are_hashed_by_what_they_point_to() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        // `images/` lives on "another disk"; one list file is a link too.
        let disk = t.path().join("disk");
        fs::create_dir_all(disk.join("images/sub")).unwrap();
        fs::write(disk.join("images/000.png"), b"png0").unwrap();
        fs::write(disk.join("images/sub/001.png"), b"png1").unwrap();
        fs::write(disk.join("train800.txt"), b"images/000.png 0\n").unwrap();
        let data = t.path().join("data/kitti");
        fs::create_dir_all(&data).unwrap();
        symlink(disk.join("images"), data.join("images")).unwrap();
        symlink(disk.join("train800.txt"), data.join("train800.txt")).unwrap();
        let h1 = hash_external(&cache, &data).unwrap();
        assert_eq!((h1.files, h1.read), (3, 3), "files behind links are read");
        // The same bytes as real files hash the same: the link itself is not content.
        let real = t.path().join("real/kitti");
        fs::create_dir_all(real.join("images/sub")).unwrap();
        fs::write(real.join("images/000.png"), b"png0").unwrap();
        fs::write(real.join("images/sub/001.png"), b"png1").unwrap();
        fs::write(real.join("train800.txt"), b"images/000.png 0\n").unwrap();
        assert_eq!(hash_external(&cache, &real).unwrap().hash, h1.hash);
        // Replacing an image behind the folder link changes the hash (stale data otherwise).
        fs::write(disk.join("images/sub/001.png"), b"PNG1").unwrap();
        set_mtime(&disk.join("images/sub/001.png"), 3_000_000);
        let h2 = hash_external(&cache, &data).unwrap();
        assert_ne!(h2.hash, h1.hash);
        assert_eq!(h2.read, 1);
        // Replacing the file a link points to (a new file, same size) changes it too.
        fs::remove_file(disk.join("train800.txt")).unwrap();
        fs::write(disk.join("train800.txt"), b"images/001.png 1\n").unwrap();
        set_mtime(&disk.join("train800.txt"), 4_000_000);
        assert_ne!(hash_external(&cache, &data).unwrap().hash, h2.hash);
        // The root itself may be a link.
        let root_link = t.path().join("root-link");
        symlink(&data, &root_link).unwrap();
        assert_eq!(hash_external(&cache, &root_link).unwrap().files, 3);
    }

    #[cfg(unix)]
    #[test]
    fn dangling_links_and_link_loops_are_errors_naming_the_link() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        fs::create_dir_all(data.join("images")).unwrap();
        fs::write(data.join("images/a.png"), b"a").unwrap();
        symlink(t.path().join("unmounted/b.png"), data.join("images/b.png")).unwrap();
        let e = format!("{:#}", hash_external(t.path(), &data).unwrap_err());
        assert!(
            e.contains("dangling symlink") && e.contains("images/b.png") && e.contains("unmounted"),
            "{e}"
        );
        fs::remove_file(data.join("images/b.png")).unwrap();
        // A folder link back to an ancestor.
        symlink(&data, data.join("images/up")).unwrap();
        let e = format!("{:#}", hash_external(t.path(), &data).unwrap_err());
        assert!(e.contains("symlink loop") && e.contains("images/up"), "{e}");
        fs::remove_file(data.join("images/up")).unwrap();
        // Two links pointing at each other.
        symlink(data.join("images/y"), data.join("images/x")).unwrap();
        symlink(data.join("images/x"), data.join("images/y")).unwrap();
        let e = format!("{:#}", hash_external(t.path(), &data).unwrap_err());
        assert!(
            e.contains("cannot be followed") && e.contains("images/"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_link_pointed_at_another_file_of_the_same_size_and_mtime_is_noticed() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("A.png"), t.path().join("B.png"));
        fs::write(&a, b"aaaa").unwrap();
        fs::write(&b, b"bbbb").unwrap();
        set_mtime(&a, 1_600_000_000);
        set_mtime(&b, 1_600_000_000);
        let data = t.path().join("data");
        fs::create_dir_all(&data).unwrap();
        symlink(&a, data.join("img.png")).unwrap();
        let h1 = hash_external(&t.path().join("c"), &data).unwrap();
        fs::remove_file(data.join("img.png")).unwrap();
        symlink(&b, data.join("img.png")).unwrap();
        let h2 = hash_external(&t.path().join("c"), &data).unwrap();
        assert_eq!(h2.read, 1, "another file behind the link is read again");
        assert_ne!(h2.hash, h1.hash);
        // A file renamed over another (same size, same mtime) is another inode too.
        let real = t.path().join("real");
        fs::create_dir_all(&real).unwrap();
        fs::copy(&a, real.join("x")).unwrap();
        fs::copy(&b, t.path().join("y")).unwrap();
        set_mtime(&real.join("x"), 5);
        set_mtime(&t.path().join("y"), 5);
        let h3 = hash_external(&t.path().join("c"), &real).unwrap();
        fs::rename(t.path().join("y"), real.join("x")).unwrap();
        assert_ne!(
            hash_external(&t.path().join("c"), &real).unwrap().hash,
            h3.hash
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_named_path_itself_dangling_or_looping_is_named_as_a_link() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootdang");
        symlink(t.path().join("unmounted/vtab-1k"), &root).unwrap();
        let e = format!("{:#}", hash_external(t.path(), &root).unwrap_err());
        assert!(
            e.contains("dangling symlink") && e.contains("rootdang") && e.contains("unmounted"),
            "{e}"
        );
        let me = t.path().join("self.safetensors");
        symlink(&me, &me).unwrap();
        let e = format!("{:#}", hash_external(t.path(), &me).unwrap_err());
        assert!(
            e.contains("cannot be followed") && e.contains("a link loop"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_loop_through_two_links_names_the_link_that_closes_it() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        // images -> other/images; other/images/test/up2 -> ../.. (= other, which holds images).
        let other = t.path().join("other");
        fs::create_dir_all(other.join("images/test")).unwrap();
        fs::write(other.join("images/test/a.png"), b"a").unwrap();
        symlink("../..", other.join("images/test/up2")).unwrap();
        let data = t.path().join("data");
        fs::create_dir_all(&data).unwrap();
        symlink(other.join("images"), data.join("images")).unwrap();
        let e = format!("{:#}", hash_external(t.path(), &data).unwrap_err());
        assert!(e.contains("symlink loop"), "{e}");
        assert!(
            e.contains("images/test/up2 -> ../.. leads back to"),
            "names the link itself: {e}"
        );
    }

    #[test]
    fn invisible_characters_in_a_missing_input_are_shown_escaped() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("student.safetensors"), b"x").unwrap();
        let typo = t.path().join("student\u{200b}.safetensors");
        let e = format!("{:#}", hash_external(t.path(), &typo).unwrap_err());
        assert!(e.contains("student\\u{200b}.safetensors"), "{e}");
    }
}
