//! What a checkpoint file is, from its bytes (never its name): the formats
//! [`super::load_backbone`] reads, and the ones users hold that it cannot read, each
//! recognised so that [`super::foreign`] can say what the file is and how to convert it.
//!
//! Only the first [`HEAD_BYTES`] bytes are read, plus, for a zip, its central directory
//! (entry names; no entry is decompressed, nothing is unpickled).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// Bytes read from the start of a file to tell its format.
pub const HEAD_BYTES: usize = 1024;
/// Most zip entries whose names are listed to tell a zip's kind.
const MAX_ZIP_ENTRIES: usize = 100_000;

/// What a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A `.safetensors` file (8-byte header length, then a JSON header).
    Safetensors,
    /// A NumPy `.npz` (a zip of `.npy` entries).
    Npz,
    /// A JSON document with a `weight_map` in its first kilobyte, or a JSON file named
    /// `*.index.json`: the index of a sharded checkpoint.
    ShardIndex,
    /// Zero bytes.
    Empty,
    /// A Git LFS pointer: the real file's sha256 and size, as the pointer states them.
    LfsPointer {
        /// `oid sha256:` of the real file.
        oid: Option<String>,
        /// `size` of the real file in bytes.
        size: Option<u64>,
    },
    /// A `torch.save` zip archive (torch >= 1.6): its pickle entry (`<name>/data.pkl`).
    TorchZip {
        /// The pickle entry's name.
        record: String,
    },
    /// A TorchScript archive (`torch.jit.save`): its `constants.pkl` or `code/` entry.
    TorchScript {
        /// The entry that marks it.
        entry: String,
    },
    /// A legacy `torch.save` file (torch < 1.6 or `_use_new_zipfile_serialization=False`):
    /// a pickle stream starting with torch's magic number.
    TorchLegacy,
    /// Another Python pickle stream (protocol 2 to 5).
    Pickle {
        /// The pickle protocol.
        protocol: u8,
    },
    /// A Keras 3 `.keras` archive (zip with `config.json` and `model.weights.h5`).
    KerasZip,
    /// A zip that is neither of the above: a few entry names and the entry count.
    OtherZip {
        /// The first entry names.
        entries: Vec<String>,
        /// Entries in all.
        total: usize,
    },
    /// An HDF5 file (Keras `.h5`, `tf_model.h5`).
    Hdf5,
    /// A single NumPy `.npy` array.
    Npy,
    /// A Flax `msgpack` state (`flax_model.msgpack`).
    FlaxMsgpack,
    /// A GGUF file (llama.cpp).
    Gguf,
    /// A compressed stream: `gzip`, `xz`, `zstd`, `bzip2` or `7z`.
    Compressed(&'static str),
    /// An uncompressed tar archive.
    Tar,
    /// An HTML page, with its `<title>` when it has one.
    Html {
        /// The page's title.
        title: Option<String>,
    },
    /// Another text file (JSON, XML, plain text): its first characters.
    Text {
        /// What kind of text (`JSON`, `XML`, `text`).
        what: &'static str,
        /// Its first characters, on one line.
        start: String,
    },
    /// None of the above: the first bytes in hex.
    Unknown {
        /// Up to 16 first bytes, hex.
        head_hex: String,
    },
}

/// Reads the first bytes of `path` and its length.
fn head(path: &Path) -> Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("opening checkpoint {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut buf = Vec::with_capacity(HEAD_BYTES);
    f.by_ref()
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((buf, len))
}

/// Tells what the file at `path` is from its content.
pub fn detect(path: &Path) -> Result<Detected> {
    let (h, len) = head(path)?;
    if len == 0 {
        return Ok(Detected::Empty);
    }
    if h.starts_with(b"PK\x03\x04") || h.starts_with(b"PK\x05\x06") {
        return classify_zip(path);
    }
    if let Some(d) = binary_magic(&h) {
        return Ok(d);
    }
    Ok(match text_kind(&h) {
        // An index whose `weight_map` starts after the first kilobyte (long metadata).
        Some(Detected::Text { what: "JSON", .. })
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".index.json")) =>
        {
            Detected::ShardIndex
        }
        Some(d) => d,
        None => Detected::Unknown {
            head_hex: h.iter().take(16).map(|b| format!("{b:02x}")).collect(),
        },
    })
}

/// Formats told by fixed bytes at fixed offsets.
fn binary_magic(h: &[u8]) -> Option<Detected> {
    // safetensors: a little-endian u64 header length (text would make it huge), then `{`.
    if h.len() >= 9 && h[8] == b'{' {
        let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        if n < 1 << 48 {
            return Some(Detected::Safetensors);
        }
    }
    if h.len() >= 2 && h[0] == 0x80 && (2..=5).contains(&h[1]) {
        // LONG1 of 10 bytes: torch's magic number 0x1950a86a20f9469cfc6c, little-endian,
        // right after the PROTO opcode (protocol 2/3) or after a FRAME (4/5).
        const MAGIC: &[u8] = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
        let window = &h[..h.len().min(32)];
        let torch = window.windows(MAGIC.len()).any(|w| w == MAGIC);
        return Some(if torch {
            Detected::TorchLegacy
        } else {
            Detected::Pickle { protocol: h[1] }
        });
    }
    let starts = |m: &[u8]| h.starts_with(m);
    if starts(b"\x89HDF\r\n\x1a\n") {
        return Some(Detected::Hdf5);
    }
    if starts(b"\x93NUMPY") {
        return Some(Detected::Npy);
    }
    if starts(b"GGUF") {
        return Some(Detected::Gguf);
    }
    for (magic, name) in [
        (&b"\x1f\x8b"[..], "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"7z\xbc\xaf\x27\x1c", "7z"),
    ] {
        if starts(magic) {
            return Some(Detected::Compressed(name));
        }
    }
    if h.len() >= 4 && starts(b"BZh") && (b'1'..=b'9').contains(&h[3]) {
        return Some(Detected::Compressed("bzip2"));
    }
    if h.len() >= 262 && &h[257..262] == b"ustar" {
        return Some(Detected::Tar);
    }
    // A msgpack map of 1-15 entries whose first key is a string: Flax's serialisation.
    if h.len() >= 2 && (0x81..=0x8f).contains(&h[0]) && matches!(h[1], 0xa1..=0xbf | 0xd9) {
        return Some(Detected::FlaxMsgpack);
    }
    None
}

/// The first `n` characters of `s` on one line (control characters as spaces).
fn one_line(s: &str, n: usize) -> String {
    let mut out: String = s
        .chars()
        .take(n)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > n {
        out.push_str("...");
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text formats: an LFS pointer, a shard index, HTML, XML, JSON, plain text.
fn text_kind(h: &[u8]) -> Option<Detected> {
    // A cut in the middle of a UTF-8 character at the end of the head is fine.
    let valid = match std::str::from_utf8(h) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&h[..e.valid_up_to()]).ok()?,
        Err(_) => return None,
    };
    if valid.contains('\0') {
        return None;
    }
    let text = valid.trim_start_matches('\u{feff}').trim_start();
    if let Some(rest) = text.strip_prefix("version https://git-lfs.github.com/spec/v1") {
        return Some(lfs_pointer(rest));
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.contains("<html")
    {
        return Some(Detected::Html {
            title: html_title(text, &lower),
        });
    }
    let what = if text.starts_with("<?xml") || text.starts_with('<') {
        "XML"
    } else if text.starts_with('{') || text.starts_with('[') {
        if text.starts_with('{') && text.contains("\"weight_map\"") {
            return Some(Detected::ShardIndex);
        }
        "JSON"
    } else {
        "text"
    };
    Some(Detected::Text {
        what,
        start: one_line(text, 160),
    })
}

/// The oid and size lines of a Git LFS pointer.
fn lfs_pointer(rest: &str) -> Detected {
    let mut oid = None;
    let mut size = None;
    for line in rest.lines() {
        if let Some(o) = line.strip_prefix("oid sha256:") {
            oid = Some(o.trim().to_string());
        } else if let Some(s) = line.strip_prefix("size ") {
            size = s.trim().parse().ok();
        }
    }
    Detected::LfsPointer { oid, size }
}

/// The text of the page's `<title>`, if the head holds one.
fn html_title(text: &str, lower: &str) -> Option<String> {
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let t = one_line(text.get(open_end..close)?, 120);
    (!t.is_empty()).then_some(t)
}

/// Tells a zip's kind from its entry names (the central directory only).
fn classify_zip(path: &Path) -> Result<Detected> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("opening checkpoint {}", path.display()))?;
    let zip = zip::ZipArchive::new(f).with_context(|| {
        format!(
            "{}: a zip archive with a corrupt or missing directory (truncated download?)",
            path.display()
        )
    })?;
    let total = zip.len();
    let names: Vec<&str> = zip.file_names().take(MAX_ZIP_ENTRIES).collect();
    let file_names: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !n.ends_with('/'))
        .collect();
    if let Some(e) = names
        .iter()
        .find(|n| n.ends_with("constants.pkl") || n.contains("/code/") || n.starts_with("code/"))
    {
        return Ok(Detected::TorchScript {
            entry: e.to_string(),
        });
    }
    if let Some(e) = names
        .iter()
        .find(|n| **n == "data.pkl" || n.ends_with("/data.pkl"))
    {
        return Ok(Detected::TorchZip {
            record: e.to_string(),
        });
    }
    if names.contains(&"config.json") && names.iter().any(|n| n.ends_with(".weights.h5")) {
        return Ok(Detected::KerasZip);
    }
    if !file_names.is_empty() && file_names.iter().any(|n| n.ends_with(".npy")) {
        // An .npz; the reader names any entry that is not an array.
        return Ok(Detected::Npz);
    }
    let mut entries: Vec<String> = file_names.iter().take(5).map(|s| s.to_string()).collect();
    entries.sort();
    Ok(Detected::OtherZip { entries, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_tell_the_format() {
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{} ");
        assert_eq!(binary_magic(&st), Some(Detected::Safetensors));
        // JSON text whose 9th byte is `{` is not a safetensors header length.
        assert_eq!(binary_magic(b"{\"aaaaaa\"{"), None);
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02";
        assert_eq!(binary_magic(legacy), Some(Detected::TorchLegacy));
        let framed = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(binary_magic(framed), Some(Detected::TorchLegacy));
        assert_eq!(
            binary_magic(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."),
            Some(Detected::Pickle { protocol: 4 })
        );
        assert_eq!(binary_magic(b"\x89HDF\r\n\x1a\n\0\0"), Some(Detected::Hdf5));
        assert_eq!(
            binary_magic(b"\x1f\x8b\x08\0"),
            Some(Detected::Compressed("gzip"))
        );
        assert_eq!(
            binary_magic(b"BZh91AY"),
            Some(Detected::Compressed("bzip2"))
        );
        assert_eq!(
            binary_magic(b"\x81\xa6params\x81"),
            Some(Detected::FlaxMsgpack)
        );
        let mut tar = vec![0u8; 300];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(binary_magic(&tar), Some(Detected::Tar));
    }

    #[test]
    fn text_files_are_named_with_their_start() {
        let lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 346286016\n";
        assert_eq!(
            text_kind(lfs),
            Some(Detected::LfsPointer {
                oid: Some("4d7a".into()),
                size: Some(346286016)
            })
        );
        let html = b"\n<!DOCTYPE html>\n<html><head><title>Sign in\n - Hub</title></head>";
        assert_eq!(
            text_kind(html),
            Some(Detected::Html {
                title: Some("Sign in - Hub".into())
            })
        );
        assert_eq!(
            text_kind(b"404: Not Found"),
            Some(Detected::Text {
                what: "text",
                start: "404: Not Found".into()
            })
        );
        assert_eq!(
            text_kind(b"{\"metadata\": {}, \"weight_map\": {}}"),
            Some(Detected::ShardIndex)
        );
        assert!(matches!(
            text_kind(b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>"),
            Some(Detected::Text { what: "XML", .. })
        ));
        assert_eq!(text_kind(b"\x00\x01binary"), None);
        assert_eq!(text_kind(b"\xff\xfe\xfd"), None);
    }
}
