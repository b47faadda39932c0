//! Decoded splits (the per-task, per-size decoded cache), batching and epoch order.
//!
//! A split is decoded once (in parallel with rayon) into `u8 [N, size, size, 3]` and saved as
//! safetensors; training epochs only index into it. Training and evaluation read a split
//! through [`Split`]: held in memory ([`DecodedSplit`]) or read from its file batch by batch
//! ([`super::split_file::SplitFile`], what the stages use).

use super::image::{decode_rgb_noted, resize_bicubic, Normalize};
use super::vtab::{SplitList, Task};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// What [`Split::for_each_batch`] calls per batch: `(range, images, labels)`, the images'
/// indices in the split, their HWC u8 bytes and their labels.
pub type BatchFn<'a> = dyn FnMut(Range<usize>, &[u8], &[u32]) -> Result<()> + 'a;

/// A decoded split as training and evaluation read it: images `u8 [N, S, S, 3]` (RGB,
/// row-major HWC) with their labels, by index or in order a batch at a time. Both ways give
/// the same bytes for the same images, so results do not depend on which is used.
pub trait Split: Sync {
    /// Number of images `N`.
    fn len(&self) -> usize;

    /// True when there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Side length `S` of the (square) images, in pixels.
    fn size(&self) -> usize;

    /// The `N` labels, in split order.
    fn labels(&self) -> &[u32];

    /// The batch of images `indices` (any order, repeats allowed): images
    /// `f32 [B, 3, S, S]` normalised, labels `u32 [B]`, on `device`.
    ///
    /// # Errors
    /// An index out of range; the images cannot be read (or their file is corrupt).
    fn batch(
        &self,
        indices: &[usize],
        normalize: &Normalize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)>;

    /// Calls `f(range, images, labels)` for consecutive batches of at most `batch` images
    /// in split order (`images`: `range.len() * S * S * 3` bytes HWC). One pass: a file is
    /// read once, its bytes checked against its cache entry by the end of the pass, so
    /// whatever `f` computed must be dropped when this fails.
    ///
    /// # Errors
    /// What `f` returns; the images cannot be read or their file is corrupt.
    fn for_each_batch(&self, batch: usize, f: &mut BatchFn<'_>) -> Result<()>;
}

/// Tensors of a batch: `images` (`B` HWC u8 images of `size x size`) as normalised
/// `f32 [B, 3, size, size]` and `labels` as `u32 [B]`, on `device`.
///
/// # Errors
/// When the tensors cannot be made on `device`.
pub fn batch_tensors(
    images: &[u8],
    labels: Vec<u32>,
    size: usize,
    normalize: &Normalize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = labels.len();
    let x = hwc_to_nchw(images, size, normalize);
    Ok((
        Tensor::from_vec(x, (b, 3, size, size), device)?,
        Tensor::from_vec(labels, (b,), device)?,
    ))
}

/// A decoded split: images `u8 [N, size, size, 3]` (row-major HWC) and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSplit {
    /// `N * size * size * 3` bytes.
    pub images: Vec<u8>,
    /// `N` labels.
    pub labels: Vec<u32>,
    /// Side length of the (square) images.
    pub size: usize,
}

/// An image that was skipped because it could not be decoded (`skip_bad_images: true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedImage {
    /// `list_file:line`.
    pub location: String,
    /// The image path.
    pub path: String,
    /// Why it failed.
    pub error: String,
}

/// An image that decoded, as PIL decodes it, but with something to know (see
/// [`super::image::Decoded::notes`]): damaged data PIL passes over, more pixels than PIL's
/// warning limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotedImage {
    /// `list_file:line`.
    pub location: String,
    /// The image path.
    pub path: String,
    /// What was found.
    pub note: String,
}

/// What decoding a split did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeReport {
    /// Images decoded.
    pub decoded: usize,
    /// Images skipped (only with `skip_bad_images`).
    pub skipped: Vec<SkippedImage>,
    /// Decoded images with a note (one entry per note).
    #[serde(default)]
    pub noted: Vec<NotedImage>,
}

impl DecodeReport {
    /// The one warning for the noted images of split `split` (None when there are none):
    /// how many, and up to 3 with their notes.
    pub fn noted_warning(&self, split: &str) -> Option<String> {
        if self.noted.is_empty() {
            return None;
        }
        let examples: Vec<String> = self
            .noted
            .iter()
            .take(3)
            .map(|n| format!("{} ({}): {}", n.path, n.location, n.note))
            .collect();
        Some(format!(
            "{split}: {} decoded image(s) with damage PIL passes over or above PIL's pixel \
             warning limit (decoded as PIL decodes them): {}{}",
            self.noted.len(),
            examples.join("; "),
            if self.noted.len() > 3 { "; ..." } else { "" }
        ))
    }
}

/// Decodes every image of `split` (paths relative to `task_dir`), resizes it to
/// `size x size` with PIL-exact bicubic, in parallel. A missing or corrupt image is an error
/// naming the list file, line and image path, unless `skip_bad_images` (then it is skipped and
/// reported).
pub fn decode_split(
    task_dir: &Path,
    split: &SplitList,
    size: usize,
    skip_bad_images: bool,
) -> Result<(DecodedSplit, DecodeReport)> {
    if size == 0 || size > 4096 {
        bail!("image size {size} out of range: expected 1..=4096");
    }
    let results = decode_entries(task_dir, split, &split.entries, size);
    let mut images = Vec::with_capacity(split.entries.len() * size * size * 3);
    let mut labels = Vec::with_capacity(split.entries.len());
    let mut report = DecodeReport::default();
    for (e, r) in split.entries.iter().zip(results) {
        match r {
            Ok((px, notes)) => {
                images.extend_from_slice(&px);
                labels.push(e.label);
                report.decoded += 1;
                report.noted.extend(notes);
            }
            Err(s) if skip_bad_images => report.skipped.push(s),
            Err(s) => return Err(bad_image_error(&s)),
        }
    }
    if labels.is_empty() {
        bail!(
            "{}: no image could be decoded ({} skipped)",
            split.list_file.display(),
            report.skipped.len()
        );
    }
    Ok((
        DecodedSplit {
            images,
            labels,
            size,
        },
        report,
    ))
}

/// One entry decoded and resized (its pixels and notes), or why it was not.
type EntryResult = std::result::Result<(Vec<u8>, Vec<NotedImage>), SkippedImage>;

/// Decodes and resizes `entries` (a slice of `split`'s entries) in parallel; failures and
/// notes carry the list location.
fn decode_entries(
    task_dir: &Path,
    split: &SplitList,
    entries: &[super::vtab::ListEntry],
    size: usize,
) -> Vec<EntryResult> {
    let side = size as u32;
    entries
        .par_iter()
        .map(|e| {
            let p = task_dir.join(&e.path);
            let location = format!("{}:{}", split.list_file.display(), e.line);
            let path = super::vtab::escape_invisible(&p.display().to_string());
            decode_rgb_noted(&p)
                .map(|d| {
                    let notes = d
                        .notes
                        .into_iter()
                        .map(|note| NotedImage {
                            location: location.clone(),
                            path: path.clone(),
                            note,
                        })
                        .collect();
                    (resize_bicubic(&d.image, side, side).into_raw(), notes)
                })
                .map_err(|err| SkippedImage {
                    location: location.clone(),
                    path: path.clone(),
                    error: format!("{err:#}"),
                })
        })
        .collect()
}

/// The error for an image that failed to decode without `skip_bad_images`.
fn bad_image_error(s: &SkippedImage) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {}: expected a decodable JPEG/PNG image (set skip_bad_images: true to skip)",
        s.location,
        s.error
    )
}

/// Converts `B` HWC u8 images of `size x size` to normalised NCHW f32.
fn hwc_to_nchw(images: &[u8], size: usize, normalize: &Normalize) -> Vec<f32> {
    let plane = size * size;
    let mut x = vec![0f32; images.len()];
    for (img, out) in images
        .chunks_exact(3 * plane)
        .zip(x.chunks_exact_mut(3 * plane))
    {
        for (p, px) in img.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                out[ch * plane + p] = normalize.apply(px[ch], ch);
            }
        }
    }
    x
}

/// Decodes split `split` of a validated task (see [`decode_split`]).
pub fn decode_task_split(
    task: &Task,
    split: &str,
    size: usize,
    skip_bad_images: bool,
) -> Result<(DecodedSplit, DecodeReport)> {
    decode_split(&task.dir, task.split(split)?, size, skip_bad_images)
}

impl DecodedSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Saves as safetensors: `images` u8 `[N, size, size, 3]`, `labels` u32 `[N]`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let label_bytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let images = TensorView::new(Dtype::U8, vec![n, self.size, self.size, 3], &self.images)?;
        let labels = TensorView::new(Dtype::U32, vec![n], &label_bytes)?;
        let meta: HashMap<String, String> = [(
            "format".to_string(),
            "idat-pipe decoded split v1".to_string(),
        )]
        .into();
        safetensors::serialize_to_file([("images", images), ("labels", labels)], Some(meta), path)
            .with_context(|| format!("cannot write decoded split {}", path.display()))
    }

    /// Loads a file written by [`DecodedSplit::save`], checking dtypes and shapes
    /// (`images` `[N, S, S, 3]` u8, `labels` `[N]` u32, labels agree on `N`).
    pub fn load(path: &Path) -> Result<Self> {
        // Checked against its entry's manifest as it is read.
        let bytes = idat_engine::cache::verified::read(path)
            .with_context(|| format!("cannot read decoded split {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        let get = |name: &str| {
            st.tensor(name).with_context(|| {
                format!(
                    "{}: missing tensor `{name}` (expected `images` and `labels`)",
                    path.display()
                )
            })
        };
        let images = get("images")?;
        let labels = get("labels")?;
        let ishape = images.shape();
        if images.dtype() != Dtype::U8
            || ishape.len() != 4
            || ishape[3] != 3
            || ishape[1] != ishape[2]
        {
            bail!(
                "{}: tensor `images` is {:?} {:?}: expected U8 [N, S, S, 3]",
                path.display(),
                images.dtype(),
                ishape
            );
        }
        if labels.dtype() != Dtype::U32 || labels.shape() != [ishape[0]] {
            bail!(
                "{}: tensor `labels` is {:?} {:?}: expected U32 [{}]",
                path.display(),
                labels.dtype(),
                labels.shape(),
                ishape[0]
            );
        }
        let labels = labels
            .data()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            images: images.data().to_vec(),
            labels,
            size: ishape[1],
        })
    }

    /// Builds a batch: images `f32 [B, 3, size, size]` normalised, labels `u32 [B]`.
    pub fn to_batch(
        &self,
        indices: &[usize],
        normalize: &Normalize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let s = self.size;
        let plane = s * s * 3;
        let mut raw = Vec::with_capacity(indices.len() * plane);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                bail!(
                    "batch index {i} out of range: split has {} images",
                    self.len()
                );
            }
            raw.extend_from_slice(&self.images[i * plane..(i + 1) * plane]);
            y.push(self.labels[i]);
        }
        batch_tensors(&raw, y, s, normalize, device)
    }
}

impl Split for DecodedSplit {
    fn len(&self) -> usize {
        self.labels.len()
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
        self.to_batch(indices, normalize, device)
    }

    fn for_each_batch(&self, batch: usize, f: &mut BatchFn<'_>) -> Result<()> {
        let plane = self.size * self.size * 3;
        for start in (0..self.len()).step_by(batch.max(1)) {
            let end = (start + batch.max(1)).min(self.len());
            f(
                start..end,
                &self.images[start * plane..end * plane],
                &self.labels[start..end],
            )?;
        }
        Ok(())
    }
}

/// A deterministic permutation of `0..n` for `(seed, epoch)` (ChaCha8 seeded from both).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(epoch as u64).to_le_bytes());
    key[16..24].copy_from_slice(b"epochord");
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rng);
    v
}

/// Splits `order` into batches of `batch_size`; with `drop_last` the final short batch is
/// dropped. `batch_size` 0 yields nothing.
pub fn batches(order: &[usize], batch_size: usize, drop_last: bool) -> Vec<&[usize]> {
    if batch_size == 0 {
        return Vec::new();
    }
    order
        .chunks(batch_size)
        .filter(|c| !drop_last || c.len() == batch_size)
        .collect()
}
