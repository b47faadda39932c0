//! Moving a finished directory to its final path in one step, also when the two are on
//! different filesystems (a cache whose `entries/`, `tmp/` or `corrupt/` is a link to
//! another mount): a rename, else a copy into a staging folder next to the destination
//! (same filesystem), every file and folder synced, renamed into place. The destination
//! never holds part of a tree; a staging folder left by a killed process has a name that is
//! never a cache key (it starts with `.`), and `gc` removes it.
use anyhow::{anyhow, Context as _, Result};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What names a staging folder (`.<destination name>.incoming.<pid>.<n>`).
pub const STAGING_MARK: &str = ".incoming.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a rename failed because its two paths are on different filesystems (EXDEV).
pub fn is_cross_device(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::CrossesDevices || e.raw_os_error() == Some(18)
}

/// Move the directory `from` to `to` (which must not exist) as one step: see the module
/// doc. `from` is gone afterwards.
///
/// # Errors
/// Both paths and the cause: the rename's error, or the copy's (naming the file that
/// failed, e.g. no space left on the destination's filesystem); `to` is then absent and
/// `from` as it was.
pub fn move_dir(from: &Path, to: &Path) -> Result<()> {
    move_dir_with(from, to, &|a, b| fs::rename(a, b))
}

/// [`move_dir`] with the rename given (tests inject the cross-filesystem case).
pub(crate) fn move_dir_with(
    from: &Path,
    to: &Path,
    rename: &dyn Fn(&Path, &Path) -> io::Result<()>,
) -> Result<()> {
    let what = || format!("moving {} to {}", from.display(), to.display());
    match rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if is_cross_device(&e) => {}
        Err(e) => return Err(anyhow!(e).context(what())),
    }
    let staging = staging_path(to);
    let placed = copy_tree(from, &staging)
        .and_then(|()| sync_tree(&staging))
        .and_then(|()| {
            rename(&staging, to)
                .with_context(|| format!("renaming {} to {}", staging.display(), to.display()))
        })
        .and_then(|()| sync_dir(to.parent().unwrap_or(Path::new("."))));
    if let Err(e) = placed {
        let _ = super::store::remove_tree(&staging);
        return Err(e.context(format!(
            "{} (on different filesystems: copied through {})",
            what(),
            staging.display()
        )));
    }
    super::store::remove_tree(from).with_context(what)
}

/// A fresh staging path next to `to`.
fn staging_path(to: &Path) -> PathBuf {
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    to.with_file_name(format!(
        ".{name}{STAGING_MARK}{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Copy the tree `from` to `to` (created): folders and regular files, permissions kept.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", from.display()))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", src.display()))?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        } else {
            anyhow::bail!(
                "{}: not a regular file or folder (a link or special file cannot be moved)",
                src.display()
            );
        }
    }
    Ok(())
}

/// Flush every file and folder of the tree `dir` to its disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A tree with a nested folder and a read-only file.
    fn tree(root: &Path) {
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a.txt"), b"alpha").unwrap();
        fs::write(root.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
        let mut perm = fs::metadata(root.join("a.txt")).unwrap().permissions();
        perm.set_readonly(true);
        fs::set_permissions(root.join("a.txt"), perm).unwrap();
    }

    /// A rename that fails with EXDEV when asked to move `from` (as across filesystems).
    fn exdev_for(from: &Path) -> impl Fn(&Path, &Path) -> io::Result<()> + '_ {
        move |a: &Path, b: &Path| {
            if a == from {
                Err(io::Error::from_raw_os_error(18))
            } else {
                fs::rename(a, b)
            }
        }
    }

    #[test]
    fn across_filesystems_the_tree_is_copied_synced_and_renamed_into_place() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("tmp/k.1"), d.path().join("entries/k"));
        tree(&from);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        move_dir_with(&from, &to, &exdev_for(&from)).unwrap();
        assert!(!from.exists());
        assert_eq!(fs::read(to.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(fs::read(to.join("sub/b.bin")).unwrap(), vec![7u8; 100_000]);
        assert!(fs::metadata(to.join("a.txt"))
            .unwrap()
            .permissions()
            .readonly());
        // Nothing but the entry next to it: the staging folder was renamed.
        let names: Vec<_> = fs::read_dir(to.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k"]);
    }

    #[test]
    fn a_failed_copy_leaves_no_destination_and_names_both_paths() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("tmp/k.1"), d.path().join("entries/k"));
        tree(&from);
        std::os::unix::fs::symlink("/etc/hostname", from.join("sub/link")).unwrap();
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        let e = format!(
            "{:#}",
            move_dir_with(&from, &to, &exdev_for(&from)).unwrap_err()
        );
        assert!(
            e.starts_with(&format!(
                "moving {} to {} (on different filesystems: copied through {}/.k.incoming.",
                from.display(),
                to.display(),
                d.path().join("entries").display()
            )),
            "{e}"
        );
        assert!(e.contains("sub/link: not a regular file or folder"), "{e}");
        assert!(!to.exists());
        assert_eq!(fs::read_dir(to.parent().unwrap()).unwrap().count(), 0);
        assert_eq!(
            fs::read(from.join("a.txt")).unwrap(),
            b"alpha",
            "source kept"
        );
        // The rename into place failing (the destination appeared meanwhile) is named too.
        let calls = Cell::new(0);
        fs::remove_file(from.join("sub/link")).unwrap();
        fs::create_dir_all(to.join("x")).unwrap();
        let e = move_dir_with(&from, &to, &|a, b| {
            calls.set(calls.get() + 1);
            if a == from {
                Err(io::Error::from_raw_os_error(18))
            } else {
                fs::rename(a, b)
            }
        })
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!(
                "renaming {}",
                d.path().join("entries/.k").display()
            )),
            "{e}"
        );
        assert_eq!(calls.get(), 2);
        assert!(from.join("a.txt").exists());
        let names: Vec<_> = fs::read_dir(to.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k"], "the staging folder is removed");
    }

    #[test]
    fn any_other_rename_error_names_both_paths() {
        let d = tempfile::tempdir().unwrap();
        let e = move_dir(&d.path().join("nope"), &d.path().join("to")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.starts_with(&format!(
                "moving {} to {}: No such file or directory",
                d.path().join("nope").display(),
                d.path().join("to").display()
            )),
            "{e}"
        );
    }
}
