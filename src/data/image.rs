//! Image decoding (JPEG/PNG, grayscale to RGB), PIL-exact bicubic resize and normalisation.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest width or height accepted when decoding (guards against decompression bombs).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Decodes a JPEG or PNG file (format sniffed from its bytes) to 8-bit RGB; grayscale is
/// replicated to three channels and alpha is dropped, as PIL's `convert("RGB")` does.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb_bytes(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decodes JPEG or PNG bytes to 8-bit RGB (see [`decode_rgb`]).
pub fn decode_rgb_bytes(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot sniff image format")?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg) | Some(image::ImageFormat::Png) => {}
        Some(f) => bail!("unsupported image format {f:?}: expected JPEG or PNG"),
        None => bail!("unknown image format: expected JPEG or PNG"),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    if is_jpeg && !jpeg_has_end(bytes) {
        bail!("truncated JPEG: no end-of-image marker after the scan data");
    }
    let img = reader.decode().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(img.to_rgb8())
}

/// True when an end-of-image marker (`FF D9`) follows the first start-of-scan (`FF DA`).
/// The JPEG decoder pads a truncated stream with gray instead of failing; this catches it.
/// Entropy-coded data never holds `FF D9` (0xFF is stuffed as `FF 00`).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// PIL's fixed-point precision for 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// PIL's bicubic kernel with `a = -0.5`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index and fixed-point weights (PIL `precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i32>>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..n)
            .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|w| *w /= ww);
        }
        let fixed = k
            .iter()
            .map(|&w| {
                let r = if w < 0.0 { -0.5 } else { 0.5 };
                (w * (1u64 << PRECISION_BITS) as f64 + r) as i32
            })
            .collect();
        bounds.push((xmin, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

#[inline]
fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes 8-bit RGB to `width x height` exactly as PIL's `Image.resize(size, BICUBIC)`:
/// separable convolution (horizontal pass, then vertical), kernel support widened by the
/// downscale factor (antialias), 8-bit fixed-point weights and rounding, u8 intermediate.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let src = img.as_raw();
    let round = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass: ih rows of ow pixels.
    let horiz: Vec<u8> = if ow == iw {
        src.clone()
    } else {
        let c = coeffs(iw, ow);
        let mut out = vec![0u8; ih * ow * 3];
        for y in 0..ih {
            let row = &src[y * iw * 3..(y + 1) * iw * 3];
            for x in 0..ow {
                let (xmin, n) = c.bounds[x];
                let k = &c.weights[x];
                let mut acc = [round; 3];
                for i in 0..n {
                    let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for ch in 0..3 {
                        acc[ch] += p[ch] as i64 * k[i] as i64;
                    }
                }
                for ch in 0..3 {
                    out[(y * ow + x) * 3 + ch] = clip8(acc[ch]);
                }
            }
        }
        out
    };
    // Vertical pass: oh rows of ow pixels.
    let data = if oh == ih {
        horiz
    } else {
        let c = coeffs(ih, oh);
        let mut out = vec![0u8; oh * ow * 3];
        for y in 0..oh {
            let (ymin, n) = c.bounds[y];
            let k = &c.weights[y];
            for x in 0..ow * 3 {
                let mut acc = round;
                for i in 0..n {
                    acc += horiz[(ymin + i) * ow * 3 + x] as i64 * k[i] as i64;
                }
                out[y * ow * 3 + x] = clip8(acc);
            }
        }
        out
    };
    RgbImage::from_raw(width, height, data).expect("buffer size matches dimensions")
}

/// Named normalisation presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeKind {
    /// mean = std = 0.5 per channel (iDAT/SSF default for AugReg checkpoints).
    #[default]
    Half,
    /// ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
    Imagenet,
}

/// Per-channel normalisation `(x / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Normalize {
    /// Per-channel mean (RGB) on the 0..1 scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB), all > 0.
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Self::from_kind(NormalizeKind::Half)
    }
}

impl Normalize {
    /// The preset for `kind`.
    pub fn from_kind(kind: NormalizeKind) -> Self {
        match kind {
            NormalizeKind::Half => Self {
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            NormalizeKind::Imagenet => Self {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
        }
    }

    /// Normalises one 8-bit value of channel `ch`.
    #[inline]
    pub fn apply(&self, value: u8, ch: usize) -> f32 {
        (value as f32 / 255.0 - self.mean[ch]) / self.std[ch]
    }
}
