//! Large decoded splits on disk: a streaming writer (decodes in chunks, never holds the whole
//! split in memory) and a reader that serves batches by seeking, so a 73,728-image test split
//! at 224x224 (11 GB) needs only one batch in memory. Same safetensors format as
//! [`DecodedSplit::save`](super::loader::DecodedSplit::save).

use super::image::Normalize;
use super::loader::{bad_image_error, decode_entries, hwc_to_nchw, DecodeReport, DecodedSplit};
use super::vtab::SplitList;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, Metadata};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest safetensors header accepted when opening a decoded file.
const MAX_HEADER: u64 = 1 << 20;

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Decodes `split` (paths relative to `task_dir`) at `size x size` in chunks of `chunk` images
/// (each chunk in parallel) and writes the safetensors file `path` (`images` u8
/// `[N, size, size, 3]`, `labels` u32 `[N]`) atomically. Errors and skipping as in
/// [`decode_split`](super::loader::decode_split).
pub fn decode_split_to_file(
    task_dir: &Path,
    split: &SplitList,
    size: usize,
    skip_bad_images: bool,
    path: &Path,
    chunk: usize,
) -> Result<DecodeReport> {
    if size == 0 || size > 4096 {
        bail!("image size {size} out of range: expected 1..=4096");
    }
    let data_tmp = sibling(path, ".images.tmp");
    let out_tmp = sibling(path, ".tmp");
    let result = (|| -> Result<DecodeReport> {
        let mut data = BufWriter::new(File::create(&data_tmp)?);
        let mut labels: Vec<u32> = Vec::new();
        let mut report = DecodeReport::default();
        for entries in split.entries.chunks(chunk.max(1)) {
            for (e, r) in entries
                .iter()
                .zip(decode_entries(task_dir, split, entries, size))
            {
                match r {
                    Ok(px) => {
                        data.write_all(&px)?;
                        labels.push(e.label);
                        report.decoded += 1;
                    }
                    Err(s) if skip_bad_images => report.skipped.push(s),
                    Err(s) => return Err(bad_image_error(&s)),
                }
            }
        }
        data.flush()?;
        drop(data);
        let n = labels.len();
        if n == 0 {
            bail!(
                "{}: no image could be decoded ({} skipped)",
                split.list_file.display(),
                report.skipped.len()
            );
        }
        let img_bytes = n * size * size * 3;
        let header = serde_json::json!({
            "__metadata__": { "format": "idat-pipe decoded split v1" },
            "images": { "dtype": "U8", "shape": [n, size, size, 3], "data_offsets": [0, img_bytes] },
            "labels": { "dtype": "U32", "shape": [n], "data_offsets": [img_bytes, img_bytes + 4 * n] },
        });
        let mut header = serde_json::to_string(&header)?;
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = BufWriter::new(File::create(&out_tmp)?);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        std::io::copy(&mut File::open(&data_tmp)?, &mut out)?;
        for l in &labels {
            out.write_all(&l.to_le_bytes())?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&out_tmp, path)?;
        Ok(report)
    })();
    let _ = std::fs::remove_file(&data_tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&out_tmp);
    }
    result.with_context(|| format!("writing decoded split {}", path.display()))
}

/// A decoded split read lazily from disk: labels in memory, images fetched per batch.
#[derive(Debug)]
pub struct DecodedFile {
    path: PathBuf,
    file: Mutex<File>,
    images_start: u64,
    size: usize,
    labels: Vec<u32>,
}

impl DecodedFile {
    /// Opens a decoded split, checking the header (bounded), dtypes, shapes and that the file
    /// length matches before anything is allocated.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |what: String| anyhow::anyhow!("{}: {what}", path.display());
        let mut file = File::open(path)
            .with_context(|| format!("cannot open decoded split {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut n8 = [0u8; 8];
        file.read_exact(&mut n8)
            .map_err(|_| bad("too short for a safetensors header".into()))?;
        let hlen = u64::from_le_bytes(n8);
        if hlen > MAX_HEADER || 8 + hlen > file_len {
            return Err(bad(format!(
                "header length {hlen} invalid for a {file_len}-byte file"
            )));
        }
        let mut header = vec![0u8; hlen as usize];
        file.read_exact(&mut header)?;
        let meta: Metadata = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
        let (Some(images), Some(labels)) = (meta.info("images"), meta.info("labels")) else {
            return Err(bad("missing tensor `images` or `labels`".into()));
        };
        let s = &images.shape;
        if images.dtype != Dtype::U8 || s.len() != 4 || s[3] != 3 || s[1] != s[2] {
            return Err(bad(format!(
                "tensor `images` is {:?} {:?}: expected U8 [N, S, S, 3]",
                images.dtype, s
            )));
        }
        if labels.dtype != Dtype::U32 || labels.shape != [s[0]] {
            return Err(bad(format!(
                "tensor `labels` is {:?} {:?}: expected U32 [{}]",
                labels.dtype, labels.shape, s[0]
            )));
        }
        let img_len = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let (ia, ib) = images.data_offsets;
        let (la, lb) = labels.data_offsets;
        let data_len = file_len - 8 - hlen;
        if img_len != Some(ib.wrapping_sub(ia))
            || lb.wrapping_sub(la) != 4 * s[0]
            || ib.max(lb) as u64 != data_len
        {
            return Err(bad(format!(
                "tensor offsets do not match shapes or the file length ({data_len} data bytes)"
            )));
        }
        let mut raw = vec![0u8; 4 * s[0]];
        file.seek(SeekFrom::Start(8 + hlen + la as u64))?;
        file.read_exact(&mut raw)?;
        let labels = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            images_start: 8 + hlen + ia as u64,
            size: s[1],
            labels,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image side length.
    pub fn size(&self) -> usize {
        self.size
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The HWC bytes of the images at `indices`, concatenated.
    pub fn read_images(&self, indices: &[usize]) -> Result<Vec<u8>> {
        let per = self.size * self.size * 3;
        let mut out = vec![0u8; indices.len() * per];
        let mut f = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("decoded file lock poisoned"))?;
        for (b, &i) in indices.iter().enumerate() {
            if i >= self.len() {
                bail!(
                    "batch index {i} out of range: split has {} images",
                    self.len()
                );
            }
            f.seek(SeekFrom::Start(self.images_start + (i * per) as u64))?;
            f.read_exact(&mut out[b * per..(b + 1) * per])
                .with_context(|| format!("reading image {i} of {}", self.path.display()))?;
        }
        Ok(out)
    }

    /// A batch: images `f32 [B, 3, S, S]` normalised, labels `u32 [B]`.
    pub fn to_batch(
        &self,
        indices: &[usize],
        normalize: &Normalize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let raw = self.read_images(indices)?;
        let x = hwc_to_nchw(&raw, self.size, normalize);
        let y: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        let (b, s) = (indices.len(), self.size);
        Ok((
            Tensor::from_vec(x, (b, 3, s, s), device)?,
            Tensor::from_vec(y, (b,), device)?,
        ))
    }

    /// Reads everything into memory.
    pub fn load_all(&self) -> Result<DecodedSplit> {
        let all: Vec<usize> = (0..self.len()).collect();
        Ok(DecodedSplit {
            images: self.read_images(&all)?,
            labels: self.labels.clone(),
            size: self.size,
        })
    }
}
