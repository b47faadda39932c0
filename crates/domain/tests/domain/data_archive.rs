//! Safe extraction: hand-crafted malicious zip and tar.gz archives are refused.

use idat_domain::data::archive::{extract, extract_atomic, ArchiveLimits};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tar header with its data.
type TarEntry = (tar::Header, Vec<u8>);

/// A raw tar entry (name written byte-for-byte, bypassing the tar crate's own path checks).
fn tar_entry(name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> TarEntry {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    (h, data.to_vec())
}

fn write_tar_gz(path: &Path, entries: &[TarEntry]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for (h, d) in entries {
        b.append(h, d.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

enum ZipItem<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn write_zip(path: &Path, items: &[ZipItem]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for it in items {
        match it {
            ZipItem::File(n, d) => {
                z.start_file(*n, opts).unwrap();
                z.write_all(d).unwrap();
            }
            ZipItem::Symlink(n, t) => z.add_symlink(*n, *t, opts).unwrap(),
        }
    }
    z.finish().unwrap();
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    (d, out)
}

fn refused(archive: &Path, out: &Path, limits: &ArchiveLimits, what: &str) {
    let e = format!(
        "{:#}",
        extract(archive, out, limits).expect_err("archive accepted")
    );
    assert!(e.contains(what), "expected `{what}` in: {e}");
    assert!(!out.parent().unwrap().join("evil.txt").exists());
}

#[test]
fn good_archives_extract() {
    let (d, out) = fresh();
    let tgz = d.path().join("ok.tar.gz");
    write_tar_gz(
        &tgz,
        &[
            tar_entry("vtab/", tar::EntryType::Directory, b"", None),
            tar_entry("vtab/t/a.txt", tar::EntryType::Regular, b"hello", None),
            tar_entry("./vtab/t/b.txt", tar::EntryType::Regular, b"world!", None),
        ],
    );
    let r = extract(&tgz, &out, &ArchiveLimits::default()).unwrap();
    assert_eq!((r.files, r.bytes), (2, 11));
    assert_eq!(std::fs::read(out.join("vtab/t/b.txt")).unwrap(), b"world!");
    let zipf = d.path().join("ok.zip");
    write_zip(
        &zipf,
        &[
            ZipItem::File("z/one.txt", b"1"),
            ZipItem::File("z/sub/two.txt", b"22"),
        ],
    );
    let dest = d.path().join("zipped");
    let r = extract_atomic(&zipf, &dest, &ArchiveLimits::default()).unwrap();
    assert_eq!((r.files, r.bytes), (2, 3));
    assert_eq!(std::fs::read(dest.join("z/sub/two.txt")).unwrap(), b"22");
    let e = extract_atomic(&zipf, &dest, &ArchiveLimits::default()).unwrap_err();
    assert!(e.to_string().contains("already exists"));
}

#[test]
fn tar_gz_escapes_and_links_are_refused() {
    let (d, out) = fresh();
    let lim = ArchiveLimits::default();
    let cases: Vec<(&str, Vec<TarEntry>, &str)> = vec![
        (
            "dotdot",
            vec![tar_entry(
                "a/../../evil.txt",
                tar::EntryType::Regular,
                b"x",
                None,
            )],
            "contains `..`",
        ),
        (
            "abs",
            vec![tar_entry(
                "/tmp/evil.txt",
                tar::EntryType::Regular,
                b"x",
                None,
            )],
            "absolute path",
        ),
        (
            "sym",
            vec![tar_entry(
                "link",
                tar::EntryType::Symlink,
                b"",
                Some("/etc/passwd"),
            )],
            "symbolic link",
        ),
        (
            "hard",
            vec![tar_entry(
                "hl",
                tar::EntryType::Link,
                b"",
                Some("/etc/passwd"),
            )],
            "hard link",
        ),
        (
            "fifo",
            vec![tar_entry("p", tar::EntryType::Fifo, b"", None)],
            "unsupported type",
        ),
    ];
    for (name, entries, what) in cases {
        let p = d.path().join(format!("{name}.tar.gz"));
        write_tar_gz(&p, &entries);
        refused(&p, &out, &lim, what);
        assert!(!out.join("link").exists() && !out.join("hl").exists());
    }
}

#[test]
fn zip_escapes_and_links_are_refused() {
    let (d, out) = fresh();
    let lim = ArchiveLimits::default();
    for (name, items, what) in [
        (
            "dotdot",
            vec![ZipItem::File("../evil.txt", b"x")],
            "contains `..`",
        ),
        (
            "abs",
            vec![ZipItem::File("/evil.txt", b"x")],
            "absolute path",
        ),
        (
            "sym",
            vec![ZipItem::Symlink("ln", "/etc/passwd")],
            "symbolic link",
        ),
    ] {
        let p = d.path().join(format!("{name}.zip"));
        write_zip(&p, &items);
        refused(&p, &out, &lim, what);
    }
}

#[test]
fn size_and_entry_bounds_and_atomicity() {
    let (d, out) = fresh();
    let big = vec![0u8; 200_000];
    let z = d.path().join("bomb.zip");
    write_zip(&z, &[ZipItem::File("zeros.bin", &big)]);
    assert!(std::fs::metadata(&z).unwrap().len() < 10_000);
    let small = ArchiveLimits {
        max_entries: 10,
        max_total_bytes: 100_000,
    };
    refused(&z, &out, &small, "uncompressed size exceeds 100000 bytes");
    let t = d.path().join("many.tar.gz");
    let entries: Vec<_> = (0..11)
        .map(|i| tar_entry(&format!("f{i}"), tar::EntryType::Regular, b"x", None))
        .collect();
    write_tar_gz(&t, &entries);
    refused(&t, &out.join("x"), &small, "more than 10 entries");
    let z2 = d.path().join("many.zip");
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    write_zip(
        &z2,
        &names
            .iter()
            .map(|n| ZipItem::File(n, b"x"))
            .collect::<Vec<_>>(),
    );
    refused(&z2, &out, &small, "more than the limit 10");
    // A failed atomic extraction leaves neither the destination nor a temporary folder.
    let dest = d.path().join("atomic");
    assert!(extract_atomic(&z, &dest, &small).is_err());
    assert!(!dest.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".extract-"))
        .collect();
    assert!(leftovers.is_empty());
    // Not an archive at all.
    let junk = d.path().join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    refused(&junk, &out, &small, "unknown archive format");
}

/// The first bytes of a macOS AppleDouble sidecar.
const APPLEDOUBLE: &[u8] = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ";

/// Zips made on macOS carry `__MACOSX/` (an AppleDouble `._` file per file) and tars made
/// there carry `._*` files beside each file: neither is written, both are counted.
#[test]
fn macos_appledouble_entries_are_not_extracted() {
    let (d, out) = fresh();
    let zipf = d.path().join("mac.zip");
    write_zip(
        &zipf,
        &[
            ZipItem::File("ds/train/cat/001.png", b"png"),
            ZipItem::File("__MACOSX/ds/train/cat/._001.png", APPLEDOUBLE),
            ZipItem::File("__MACOSX/._ds", APPLEDOUBLE),
            ZipItem::File("ds/.DS_Store", b"Bud1"),
        ],
    );
    let r = extract(&zipf, &out, &ArchiveLimits::default()).unwrap();
    assert_eq!((r.files, r.macos_metadata), (2, 2));
    assert!(out.join("ds/train/cat/001.png").is_file());
    assert!(!out.join("__MACOSX").exists());
    // .DS_Store is kept (the folder walks skip it); only AppleDouble data is left out.
    assert!(out.join("ds/.DS_Store").is_file());

    let (d, out) = fresh();
    let tgz = d.path().join("mac.tar.gz");
    write_tar_gz(
        &tgz,
        &[
            tar_entry(
                "ds/train/cat/001.png",
                tar::EntryType::Regular,
                b"png",
                None,
            ),
            tar_entry(
                "ds/train/cat/._001.png",
                tar::EntryType::Regular,
                APPLEDOUBLE,
                None,
            ),
            tar_entry("./._ds", tar::EntryType::Regular, APPLEDOUBLE, None),
        ],
    );
    let r = extract(&tgz, &out, &ArchiveLimits::default()).unwrap();
    assert_eq!((r.files, r.macos_metadata), (1, 2));
    assert!(!out.join("ds/train/cat/._001.png").exists());
    assert!(!out.join("._ds").exists());
}
