//! Safe extraction of zip and tar.gz archives: entries may not leave the destination
//! (`..`, absolute paths), links and special files are refused, and the entry count and
//! total uncompressed size are bounded (the bound counts bytes actually written). macOS
//! AppleDouble entries (anything under `__MACOSX/`, and `._*` sidecar files: Finder
//! metadata and resource forks that zips made on macOS carry beside every file, never image
//! data) are not written; they are counted in [`ExtractReport::macos_metadata`].

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// Bounds applied while extracting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Maximum number of entries (files and folders).
    pub max_entries: u64,
    /// Maximum total uncompressed bytes written.
    pub max_total_bytes: u64,
}

impl Default for ArchiveLimits {
    /// Sized for VTAB-1K (~1.2 M files, a few GB): 4 M entries, 64 GiB.
    fn default() -> Self {
        Self {
            max_entries: 4_000_000,
            max_total_bytes: 64 << 30,
        }
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Regular files written.
    pub files: u64,
    /// Folders created.
    pub dirs: u64,
    /// Total bytes written.
    pub bytes: u64,
    /// macOS AppleDouble entries (`__MACOSX/...`, `._*`) left out.
    pub macos_metadata: u64,
}

/// Whether an archive entry name is macOS AppleDouble metadata: a component `__MACOSX`, or
/// a last component starting with `._`.
pub fn is_macos_metadata(name: &str) -> bool {
    let parts: Vec<&str> = name.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    parts.contains(&"__MACOSX") || parts.last().is_some_and(|p| p.starts_with("._"))
}

/// Archive formats recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// PKZIP (`PK\x03\x04`).
    Zip,
    /// gzip-compressed tar (`\x1f\x8b`).
    TarGz,
}

/// Sniffs the format of `path` from its first bytes.
pub fn detect_format(path: &Path) -> Result<ArchiveFormat> {
    let mut head = [0u8; 4];
    let mut f =
        File::open(path).with_context(|| format!("cannot open archive {}", path.display()))?;
    let n = f.read(&mut head)?;
    match &head[..n] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Ok(ArchiveFormat::Zip),
        [0x1f, 0x8b, ..] => Ok(ArchiveFormat::TarGz),
        _ => bail!(
            "{}: unknown archive format (first bytes {:02x?}): expected zip or tar.gz",
            path.display(),
            &head[..n]
        ),
    }
}

/// Validates an entry name and returns the relative path it maps to (None for `.`).
fn safe_relative(archive: &Path, name: &str) -> Result<Option<PathBuf>> {
    if name.contains('\0') {
        bail!(
            "{}: entry `{name}` has a NUL byte in its name",
            archive.display()
        );
    }
    if name.starts_with('/') || name.starts_with('\\') || name.contains(":\\") {
        bail!(
            "{}: entry `{name}` has an absolute path: expected a relative path",
            archive.display()
        );
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => {
                if p.to_string_lossy().contains('\\') {
                    bail!(
                        "{}: entry `{name}` has a backslash in its name",
                        archive.display()
                    );
                }
                out.push(p)
            }
            Component::CurDir => {}
            Component::ParentDir => bail!(
                "{}: entry `{name}` contains `..`: entries must stay inside the destination",
                archive.display()
            ),
            Component::RootDir | Component::Prefix(_) => bail!(
                "{}: entry `{name}` has an absolute path: expected a relative path",
                archive.display()
            ),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

struct Writer<'a> {
    archive: &'a Path,
    dest: &'a Path,
    limits: ArchiveLimits,
    report: ExtractReport,
    entries: u64,
}

impl Writer<'_> {
    fn count_entry(&mut self, name: &str) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            bail!(
                "{}: more than {} entries (at `{name}`): archive refused",
                self.archive.display(),
                self.limits.max_entries
            );
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path) -> Result<()> {
        std::fs::create_dir_all(self.dest.join(rel))?;
        self.report.dirs += 1;
        Ok(())
    }

    fn file(&mut self, name: &str, rel: &Path, mut data: impl Read) -> Result<()> {
        let target = self.dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .with_context(|| {
                format!(
                    "{}: cannot create `{name}` (duplicate entry or unwritable destination)",
                    self.archive.display()
                )
            })?;
        let left = self.limits.max_total_bytes - self.report.bytes;
        let mut limited = (&mut data).take(left + 1);
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = limited.read(&mut buf).with_context(|| {
                format!("{}: cannot read entry `{name}`", self.archive.display())
            })?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > left {
                bail!(
                    "{}: uncompressed size exceeds {} bytes (at `{name}`): archive refused",
                    self.archive.display(),
                    self.limits.max_total_bytes
                );
            }
            f.write_all(&buf[..n])?;
        }
        self.report.bytes += written;
        self.report.files += 1;
        Ok(())
    }
}

/// Extracts `archive` (zip or tar.gz, sniffed) into the existing folder `dest`, refusing any
/// entry that would escape it, links, special files, and archives beyond `limits`.
pub fn extract(archive: &Path, dest: &Path, limits: &ArchiveLimits) -> Result<ExtractReport> {
    let mut w = Writer {
        archive,
        dest,
        limits: *limits,
        report: ExtractReport::default(),
        entries: 0,
    };
    match detect_format(archive)? {
        ArchiveFormat::Zip => extract_zip(&mut w)?,
        ArchiveFormat::TarGz => extract_tar_gz(&mut w)?,
    }
    Ok(w.report)
}

fn extract_zip(w: &mut Writer) -> Result<()> {
    let file = File::open(w.archive)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a valid zip archive", w.archive.display()))?;
    if zip.len() as u64 > w.limits.max_entries {
        bail!(
            "{}: {} entries, more than the limit {}: archive refused",
            w.archive.display(),
            zip.len(),
            w.limits.max_entries
        );
    }
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .with_context(|| format!("{}: cannot read entry #{i}", w.archive.display()))?;
        let name = entry.name().to_string();
        w.count_entry(&name)?;
        if is_macos_metadata(&name) {
            w.report.macos_metadata += 1;
            continue;
        }
        let mode = entry.unix_mode().unwrap_or(0);
        let kind = mode & 0o170000;
        if entry.is_symlink() || kind == 0o120000 {
            bail!(
                "{}: entry `{name}` is a symbolic link: links are refused",
                w.archive.display()
            );
        }
        if kind != 0 && kind != 0o100000 && kind != 0o040000 {
            bail!(
                "{}: entry `{name}` is a special file (mode {mode:o}): expected files and folders",
                w.archive.display()
            );
        }
        let rel = safe_relative(w.archive, &name)?;
        match rel {
            None => continue,
            Some(rel) if entry.is_dir() => w.dir(&rel)?,
            Some(rel) => w.file(&name, &rel, entry)?,
        }
    }
    Ok(())
}

fn extract_tar_gz(w: &mut Writer) -> Result<()> {
    let file = File::open(w.archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = tar
        .entries()
        .with_context(|| format!("{}: not a valid tar.gz archive", w.archive.display()))?;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("{}: corrupt tar.gz entry", w.archive.display()))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        w.count_entry(&name)?;
        if is_macos_metadata(&name) {
            w.report.macos_metadata += 1;
            continue;
        }
        let ty = entry.header().entry_type();
        let rel = safe_relative(w.archive, &name)?;
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => match rel {
                Some(rel) => w.file(&name, &rel, entry)?,
                None => bail!("{}: file entry with an empty name", w.archive.display()),
            },
            tar::EntryType::Directory => {
                if let Some(rel) = rel {
                    w.dir(&rel)?
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => bail!(
                "{}: entry `{name}` is a {} link: links are refused",
                w.archive.display(),
                if ty == tar::EntryType::Symlink {
                    "symbolic"
                } else {
                    "hard"
                }
            ),
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => bail!(
                "{}: entry `{name}` has unsupported type {other:?}: expected files and folders",
                w.archive.display()
            ),
        }
    }
    Ok(())
}

/// Extracts into a fresh temporary folder next to `dest`, then renames it to `dest`
/// atomically (a failed extraction leaves nothing at `dest`). `dest` must not exist.
pub fn extract_atomic(
    archive: &Path,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<ExtractReport> {
    if dest.exists() {
        bail!(
            "{} already exists: refusing to extract over it",
            dest.display()
        );
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = unique_temp_dir(parent, ".extract-")?;
    let result = extract(archive, &tmp, limits).and_then(|report| {
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("cannot move extracted files to {}", dest.display()))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let report = result?;
    Ok(report)
}

/// Creates a new, uniquely named folder `<parent>/<prefix><pid>-<n>`.
pub(crate) fn unique_temp_dir(parent: &Path, prefix: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = parent.join(format!("{prefix}{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create a folder in {}", parent.display()))
            }
        }
    }
}
