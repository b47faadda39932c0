//! A decoded split read from its file batch by batch, never whole (issue 25): host memory
//! is bounded by a batch, not by the split (dsprites' 73,728 test images are 11 GB at 224).
//!
//! The file is the safetensors [`DecodedSplit::save`](super::loader::DecodedSplit::save)
//! writes: `images` u8 `[N, S, S, 3]` and `labels` u32 `[N]`. Opening it reads the header
//! (bounded, dtypes, shapes and byte ranges checked against the file's size before anything
//! is allocated) and the labels (4 bytes an image). Then:
//! - [`Split::for_each_batch`] reads the images in order, once, through
//!   [`idat_engine::cache::verified::open`]: the bytes are hashed as they are read and the
//!   whole file is checked against its entry's manifest at the end of the pass, so a corrupt
//!   file fails the pass (naming the entry and file, the entry moved aside) before anything
//!   computed from it is kept. Evaluation reads this way.
//! - [`Split::batch`] reads the images of any indices (training's shuffled batches); the
//!   first call checks the whole file first ([`idat_engine::cache::verified::check`], one
//!   sequential pass), as a memory map or random reads cannot be checked while used.
//!
//! Files outside a cache entry are read as they are.
use super::image::Normalize;
use super::loader::{batch_tensors, BatchFn, Split};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The largest header accepted, in bytes (a decoded split's is about 200).
const MAX_HEADER: u64 = 1 << 20;

/// Bytes read from the file at a time in a pass.
const PASS_BUFFER: usize = 1 << 20;

/// A decoded split on disk: its labels in memory, its images read per batch.
#[derive(Debug)]
pub struct SplitFile {
    path: PathBuf,
    len: usize,
    size: usize,
    labels: Vec<u32>,
    /// Byte offset of image 0 in the file.
    images_at: u64,
    /// For [`Split::batch`]'s reads.
    file: Mutex<File>,
    /// The whole-file check before the first random read: `Err` holds its message.
    checked: OnceLock<std::result::Result<(), String>>,
}

/// One tensor's entry in a safetensors header.
#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

impl SplitFile {
    /// Opens the decoded split `path`: reads and checks its header and reads its labels.
    ///
    /// # Errors
    /// Each names the file: it cannot be opened or read; its header is too large, not
    /// JSON, or lacks `images`/`labels`; `images` is not U8 `[N, S, S, 3]`, `labels` not U32
    /// `[N]`, or a byte range does not match its shape or lies past the file's end. When the
    /// file belongs to a cache entry whose manifest it no longer matches, the error is the
    /// corruption (and the entry is moved aside).
    pub fn open(path: &Path) -> Result<SplitFile> {
        match Self::open_unchecked(path) {
            Ok(s) => Ok(s),
            // A file that does not parse may be a corrupt entry file: say that instead.
            Err(e) => match idat_engine::cache::verified::check(path) {
                Err(corrupt) if corrupt.kind() == io::ErrorKind::InvalidData => {
                    Err(anyhow::Error::new(corrupt)
                        .context(format!("cannot read decoded split {}", path.display())))
                }
                _ => Err(e),
            },
        }
    }

    fn open_unchecked(path: &Path) -> Result<SplitFile> {
        let shown = path.display();
        let mut file =
            File::open(path).with_context(|| format!("cannot open decoded split {shown}"))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("cannot read the size of {shown}"))?
            .len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .with_context(|| format!("{shown}: not a valid safetensors file (under 8 bytes)"))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > file_len {
            bail!(
                "{shown}: not a valid safetensors file: header of {n} bytes (the file has \
                 {file_len}; a decoded split's header is under {MAX_HEADER})"
            );
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("cannot read {shown}"))?;
        let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .with_context(|| format!("{shown}: not a valid safetensors file (header)"))?;
        let data_at = 8 + n;
        let data_len = file_len - data_at;
        let entry = |name: &str| -> Result<HeaderEntry> {
            let v = header.get(name).with_context(|| {
                format!("{shown}: missing tensor `{name}` (expected `images` and `labels`)")
            })?;
            serde_json::from_value(v.clone())
                .with_context(|| format!("{shown}: not a valid safetensors file (`{name}`)"))
        };
        let (images, labels) = (entry("images")?, entry("labels")?);
        let s = &images.shape;
        if images.dtype != "U8" || s.len() != 4 || s[3] != 3 || s[1] != s[2] {
            bail!(
                "{shown}: tensor `images` is {} {:?}: expected U8 [N, S, S, 3]",
                images.dtype,
                s
            );
        }
        let (len, size) = (s[0], s[1]);
        if labels.dtype != "U32" || labels.shape != [len] {
            bail!(
                "{shown}: tensor `labels` is {} {:?}: expected U32 [{len}]",
                labels.dtype,
                labels.shape
            );
        }
        let image_bytes = [len, size, size, 3]
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let range = |e: &HeaderEntry, name: &str, want: Option<u64>| -> Result<Range<u64>> {
            let [a, b] = e.data_offsets;
            if a > b || b > data_len || Some(b - a) != want {
                bail!(
                    "{shown}: not a valid safetensors file: tensor `{name}` at bytes {a}..{b} \
                     of a {data_len}-byte data section, for {} bytes",
                    want.map_or("too many".into(), |w| w.to_string())
                );
            }
            Ok(data_at + a..data_at + b)
        };
        let images_range = range(&images, "images", image_bytes)?;
        let labels_range = range(&labels, "labels", Some(4 * len as u64))?;
        let mut raw = vec![0u8; 4 * len];
        file.seek(SeekFrom::Start(labels_range.start))
            .and_then(|_| file.read_exact(&mut raw))
            .with_context(|| format!("cannot read the labels of {shown}"))?;
        let labels = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(SplitFile {
            path: path.to_path_buf(),
            len,
            size,
            labels,
            images_at: images_range.start,
            file: Mutex::new(file),
            checked: OnceLock::new(),
        })
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of one image (`S * S * 3`).
    fn plane(&self) -> usize {
        self.size * self.size * 3
    }

    /// The whole file checked against its entry's manifest, once (before random reads).
    fn check_once(&self) -> Result<()> {
        let r = self.checked.get_or_init(|| {
            idat_engine::cache::verified::check(&self.path).map_err(|e| e.to_string())
        });
        r.clone().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Split for SplitFile {
    fn len(&self) -> usize {
        self.len
    }

    fn size(&self) -> usize {
        self.size
    }

    fn labels(&self) -> &[u32] {
        &self.labels
    }

    fn batch(
        &self,
        indices: &[usize],
        normalize: &Normalize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.check_once()?;
        let plane = self.plane();
        let mut raw = vec![0u8; indices.len() * plane];
        let mut y = Vec::with_capacity(indices.len());
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        for (&i, out) in indices.iter().zip(raw.chunks_exact_mut(plane)) {
            if i >= self.len {
                bail!(
                    "batch index {i} out of range: split has {} images",
                    self.len
                );
            }
            f.seek(SeekFrom::Start(self.images_at + (i * plane) as u64))
                .and_then(|_| f.read_exact(out))
                .with_context(|| format!("reading image #{i} of {}", self.path.display()))?;
            y.push(self.labels[i]);
        }
        batch_tensors(&raw, y, self.size, normalize, device)
    }

    fn for_each_batch(&self, batch: usize, f: &mut BatchFn<'_>) -> Result<()> {
        let shown = self.path.display();
        let reader = idat_engine::cache::verified::open(&self.path)
            .with_context(|| format!("cannot read decoded split {shown}"))?;
        let mut r = BufReader::with_capacity(PASS_BUFFER, reader);
        let mut skip = (&mut r).take(self.images_at);
        io::copy(&mut skip, &mut io::sink()).with_context(|| format!("reading {shown}"))?;
        let (plane, batch) = (self.plane(), batch.max(1));
        let mut buf = vec![0u8; batch.min(self.len) * plane];
        for start in (0..self.len).step_by(batch) {
            let end = (start + batch).min(self.len);
            let bytes = &mut buf[..(end - start) * plane];
            r.read_exact(bytes)
                .with_context(|| format!("reading images #{start}..#{end} of {shown}"))?;
            f(start..end, bytes, &self.labels[start..end])?;
        }
        // To the end of the file: the verified reader checks the whole file there.
        io::copy(&mut r, &mut io::sink())
            .with_context(|| format!("cannot read decoded split {shown}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::DecodedSplit;
    use idat_engine::cache::{Cache, KeyParts, CACHE_FORMAT};

    /// `n` images of `size x size`, every byte different from its neighbours.
    fn split(n: usize, size: usize) -> DecodedSplit {
        DecodedSplit {
            images: (0..n * size * size * 3)
                .map(|i| (i * 37 % 251) as u8)
                .collect(),
            labels: (0..n as u32).map(|i| (i * 7) % 5).collect(),
            size,
        }
    }

    /// Every batch of a pass, as (range, images, labels).
    fn pass(s: &dyn Split, batch: usize) -> Vec<(Range<usize>, Vec<u8>, Vec<u32>)> {
        let mut out = Vec::new();
        s.for_each_batch(batch, &mut |r, x, y| {
            out.push((r, x.to_vec(), y.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn the_file_gives_the_bytes_the_split_in_memory_gives() {
        let d = tempfile::tempdir().unwrap();
        let mem = split(7, 4);
        let path = d.path().join("test.safetensors");
        mem.save(&path).unwrap();
        let file = SplitFile::open(&path).unwrap();
        assert_eq!(
            (file.len(), file.size(), file.labels()),
            (7, 4, &mem.labels[..])
        );
        for batch in [1, 3, 7, 64] {
            let (a, b) = (pass(&mem, batch), pass(&file, batch));
            assert_eq!(a, b, "batch {batch}");
            assert_eq!(a.len(), 7usize.div_ceil(batch));
            assert_eq!(a.last().unwrap().0.end, 7);
        }
        let norm = Normalize::default();
        let idx = [6, 0, 3, 3];
        let (xa, ya) = mem.batch(&idx, &norm, &Device::Cpu).unwrap();
        let (xb, yb) = file.batch(&idx, &norm, &Device::Cpu).unwrap();
        assert_eq!(xb.dims(), [4, 3, 4, 4]);
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(xa), flat(xb));
        assert_eq!(ya.to_vec1::<u32>().unwrap(), yb.to_vec1::<u32>().unwrap());
        let e = format!("{:#}", file.batch(&[7], &norm, &Device::Cpu).unwrap_err());
        assert!(
            e.contains("batch index 7 out of range: split has 7 images"),
            "{e}"
        );
    }

    /// A safetensors file with header `header` (JSON) and `data` bytes.
    fn raw_file(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let p = dir.join("bad.safetensors");
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn a_bad_file_is_refused_before_anything_is_allocated_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let err = |p: &Path| format!("{:#}", SplitFile::open(p).unwrap_err());
        let ok_labels = r#""labels":{"dtype":"U32","shape":[2],"data_offsets":[0,8]}"#;
        let cases: Vec<(String, Vec<u8>, &str)> = vec![
            // A header length far past the file (no 2^60-byte allocation).
            ("{}".into(), vec![], "header of 2 bytes"),
            (
                format!(r#"{{{ok_labels}}}"#),
                vec![0; 8],
                "missing tensor `images` (expected `images` and `labels`)",
            ),
            (
                format!(
                    r#"{{{ok_labels},"images":{{"dtype":"F32","shape":[2,1,1,3],"data_offsets":[8,14]}}}}"#
                ),
                vec![0; 14],
                "tensor `images` is F32 [2, 1, 1, 3]: expected U8 [N, S, S, 3]",
            ),
            (
                format!(
                    r#"{{{ok_labels},"images":{{"dtype":"U8","shape":[3,1,1,3],"data_offsets":[8,17]}}}}"#
                ),
                vec![0; 17],
                "tensor `labels` is U32 [2]: expected U32 [3]",
            ),
            // Shape and byte range disagree; a range past the end of the file.
            (
                format!(
                    r#"{{{ok_labels},"images":{{"dtype":"U8","shape":[2,1,1,3],"data_offsets":[8,13]}}}}"#
                ),
                vec![0; 13],
                "tensor `images` at bytes 8..13 of a 13-byte data section, for 6 bytes",
            ),
            (
                format!(
                    r#"{{{ok_labels},"images":{{"dtype":"U8","shape":[2,1,1,3],"data_offsets":[8,14]}}}}"#
                ),
                vec![0; 10],
                "tensor `images` at bytes 8..14 of a 10-byte data section",
            ),
            // Dimensions whose product overflows.
            (
                r#"{"labels":{"dtype":"U32","shape":[4294967296],"data_offsets":[0,8]},"images":{"dtype":"U8","shape":[4294967296,4294967296,4294967296,3],"data_offsets":[8,14]}}"#.to_string(),
                vec![0; 14],
                "for too many bytes",
            ),
            (
                "not json".into(),
                vec![],
                "not a valid safetensors file (header)",
            ),
        ];
        for (header, data, want) in cases {
            let p = raw_file(d.path(), &header, &data);
            if header == "{}" {
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
                std::fs::write(&p, b).unwrap();
            }
            let e = err(&p);
            assert!(e.contains(&p.display().to_string()), "{e}");
            let want = if header == "{}" {
                "header of 1152921504606846976 bytes"
            } else {
                want
            };
            assert!(e.contains(want), "want `{want}` in: {e}");
        }
        std::fs::write(d.path().join("short"), [1, 2, 3]).unwrap();
        assert!(err(&d.path().join("short")).contains("under 8 bytes"));
        assert!(err(&d.path().join("absent")).contains("cannot open decoded split"));
    }

    /// Commits `files` as an entry of `cache`; its directory.
    fn commit(cache: &Cache, seed: u64, files: &[(&str, &[u8])]) -> PathBuf {
        let parts = KeyParts {
            format: CACHE_FORMAT,
            kind: "data/decode".into(),
            kind_version: 3,
            params: serde_json::json!({ "seed": seed }),
            upstream: vec![],
            external: vec![],
        };
        let key = parts.key();
        let _lock = cache.lock(&key).unwrap();
        let tmp = cache.fresh_tmp(&key).unwrap();
        for (name, bytes) in files {
            std::fs::write(tmp.join(name), bytes).unwrap();
        }
        cache
            .commit(&tmp, "decode[task=x]", &parts, 0.0, &Default::default())
            .unwrap();
        cache.entry_dir(&key)
    }

    /// Flips one byte of `file` in place (the entry's files are read-only).
    fn flip(file: &Path, at: usize) {
        let mut perm = std::fs::metadata(file).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(file, perm).unwrap();
        let mut b = std::fs::read(file).unwrap();
        b[at] ^= 0x10;
        std::fs::write(file, b).unwrap();
    }

    #[test]
    fn a_flipped_image_byte_in_an_entry_fails_both_reads_and_moves_the_entry_aside() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path().join(".idat")).unwrap();
        let s = split(5, 4);
        let tmp = d.path().join("x.safetensors");
        s.save(&tmp).unwrap();
        let bytes = std::fs::read(&tmp).unwrap();
        let last = bytes.len() - 1; // inside the images or the labels: either way caught
        for (seed, random) in [(1, false), (2, true)] {
            let entry = commit(&cache, seed, &[("test.safetensors", &bytes)]);
            let file = entry.join("test.safetensors");
            // Intact: a pass and a random read work, and leave the entry in place.
            let sf = SplitFile::open(&file).unwrap();
            assert_eq!(pass(&sf, 2).len(), 3);
            let norm = Normalize::default();
            sf.batch(&[4, 1], &norm, &Device::Cpu).unwrap();
            flip(&file, last - 30);
            let sf = SplitFile::open(&file).unwrap();
            let e = if random {
                format!("{:#}", sf.batch(&[0], &norm, &Device::Cpu).unwrap_err())
            } else {
                format!(
                    "{:#}",
                    sf.for_each_batch(2, &mut |_, _, _| Ok(())).unwrap_err()
                )
            };
            assert!(
                e.contains("corrupt cache entry")
                    && e.contains("file `test.safetensors`: content hash differs")
                    && e.contains("the next run recomputes it"),
                "{e}"
            );
            assert!(!entry.exists(), "the entry was moved aside");
        }
        // A flipped header byte: the file no longer parses, and the error is the corruption.
        let entry = commit(&cache, 3, &[("test.safetensors", &bytes)]);
        let file = entry.join("test.safetensors");
        flip(&file, 9);
        let e = format!("{:#}", SplitFile::open(&file).unwrap_err());
        assert!(e.contains("corrupt cache entry"), "{e}");
    }
}
