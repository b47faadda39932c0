//! Image decoding as PIL's `Image.open(f).convert("RGB")`: the same files accepted and
//! refused, the same pixels (JPEG through libjpeg-turbo's decoder; PNG through PIL's rules
//! for damaged files, [`super::png_pil`], then the `png` crate with PIL's 16-bit rules), the
//! same decompression-bomb pixel limit; PIL-exact bicubic resize and normalisation.

use anyhow::{bail, Context, Result};
use image::{DynamicImage, RgbImage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// PIL's `Image.MAX_IMAGE_PIXELS` (`int(1024 * 1024 * 1024 // 4 // 3)`): above this many
/// pixels PIL warns (`DecompressionBombWarning`) and still decodes; so do we, with a note
/// ([`Decoded::notes`]).
pub const PIL_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Largest pixel count decoded: 2 x [`PIL_MAX_IMAGE_PIXELS`]. Above it PIL raises
/// `DecompressionBombError` before decoding, and we refuse the image the same way, before
/// any image data is read. There is no limit on the width or height alone (a 20000x8 PNG
/// decodes, as in PIL).
pub const MAX_IMAGE_PIXELS: u64 = 2 * PIL_MAX_IMAGE_PIXELS;

/// An image decoded as PIL decodes it, with what PIL passes over (in silence or with a
/// warning) that a user should hear about.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The 8-bit RGB pixels, as PIL's `convert("RGB")`.
    pub image: RgbImage,
    /// One sentence each: more pixels than PIL's warning limit; a JPEG whose scan data
    /// stops early (the rest decodes gray); a PNG whose data ends early at a row end (the
    /// rest decodes as zeros).
    pub notes: Vec<String>,
}

/// Decodes a JPEG or PNG file (format sniffed from its bytes) to 8-bit RGB exactly as PIL's
/// `Image.open(path).convert("RGB")` (the official timm/VTAB loader); see
/// [`decode_rgb_bytes`]. Errors name the file (invisible characters escaped).
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    decode_rgb_noted(path).map(|d| d.image)
}

/// [`decode_rgb`] with the notes of [`Decoded`].
pub fn decode_rgb_noted(path: &Path) -> Result<Decoded> {
    let shown = || super::vtab::escape_invisible(&path.display().to_string());
    // An image inside a cache entry (a prepared dataset) is checked as it is read.
    let bytes = idat_engine::cache::verified::read(path)
        .with_context(|| format!("cannot read image {}", shown()))?;
    decode_rgb_bytes_noted(&bytes).with_context(|| format!("cannot decode image {}", shown()))
}

/// Decodes JPEG or PNG bytes to 8-bit RGB as PIL 13 does, accepting and refusing the same
/// files (crates/domain/tests/domain/data_image.rs compares with PIL's own output and verdicts,
/// scripts/make_pil_fixtures.py and scripts/make_pil_verdicts.py):
/// - JPEG: libjpeg-turbo's decoder (the `mozjpeg` crate; PIL bundles libjpeg-turbo): the
///   same IDCT and upsampling, so the pixels are identical. Gray is replicated to three
///   channels; CMYK/YCCK is read as Adobe-inverted CMYK and converted with PIL's formula.
///   EXIF orientation is not applied (PIL's `open`/`convert` do not apply it either).
/// - PNG: PIL's rules for damaged files ([`super::png_pil`]: CRCs checked before the image
///   data only, truncation after the last row allowed, ...), then the `png` crate; 8-bit
///   and lower depths expand as PIL does (palette to colours, alpha dropped); 16-bit gray
///   is CLIPPED to 255 (PIL's `I;16` to `RGB`), 16-bit gray+alpha, RGB and RGBA keep the
///   HIGH BYTE of each sample (PIL reads them as 8-bit). APNG: the first frame.
///
/// Errors (each says why, and that PIL refuses the file too): an unknown format (PIL's
/// other formats, GIF, BMP, WebP, ..., are refused here); more than [`MAX_IMAGE_PIXELS`]
/// pixels; a truncated file (a JPEG whose main image runs out of data before its
/// end-of-image marker, as libjpeg itself reports it — an EXIF thumbnail's own end marker
/// does not count; a PNG whose image data stops before the last row, or that ends inside
/// a chunk); a PNG CRC mismatch before the image data, damaged compressed data, a bad
/// filter type; any other decoder error.
pub fn decode_rgb_bytes(bytes: &[u8]) -> Result<RgbImage> {
    decode_rgb_bytes_noted(bytes).map(|d| d.image)
}

/// [`decode_rgb_bytes`] with the notes of [`Decoded`].
pub fn decode_rgb_bytes_noted(bytes: &[u8]) -> Result<Decoded> {
    let (image, mut notes) = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::decode(bytes)?
    } else if bytes.starts_with(PNG_SIGNATURE) {
        decode_png(bytes)?
    } else {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .context("cannot sniff image format")?;
        match reader.format() {
            Some(f) => bail!("unsupported image format {f:?}: expected JPEG or PNG"),
            None if bytes.starts_with(&[0, 5, 0x16, 7]) => bail!(
                "a macOS AppleDouble metadata file (`._*` sidecar), not an image: expected \
                 JPEG or PNG"
            ),
            None => bail!("unknown image format: expected JPEG or PNG"),
        }
    };
    let pixels = image.width() as u64 * image.height() as u64;
    if pixels > PIL_MAX_IMAGE_PIXELS {
        notes.insert(
            0,
            format!(
                "{}x{} is {pixels} pixels, above PIL's MAX_IMAGE_PIXELS ({PIL_MAX_IMAGE_PIXELS}): \
                 PIL warns (DecompressionBombWarning) and decodes it, and so do we",
                image.width(),
                image.height()
            ),
        );
    }
    Ok(Decoded { image, notes })
}

const PNG_SIGNATURE: &[u8] = super::png_pil::SIGNATURE;

/// The bit depth from a PNG's header (its first 25 bytes or more), None when `head` is not
/// the start of a PNG.
pub fn png_bit_depth(head: &[u8]) -> Option<u8> {
    (head.len() >= 25 && head.starts_with(PNG_SIGNATURE) && &head[12..16] == b"IHDR")
        .then(|| head[24])
}

/// PIL's decompression-bomb error: more than [`MAX_IMAGE_PIXELS`] pixels (PIL counts a
/// side of 0 as 1).
fn check_size(w: u64, h: u64) -> Result<()> {
    let pixels = w.max(1).saturating_mul(h.max(1));
    if pixels > MAX_IMAGE_PIXELS {
        bail!(
            "image is {w}x{h} = {pixels} pixels: expected at most {MAX_IMAGE_PIXELS} (2 x PIL's \
             MAX_IMAGE_PIXELS; PIL refuses it too, with DecompressionBombError)"
        );
    }
    Ok(())
}

/// A `png` crate error as plain text (the input is already canonical, so this is rare).
fn png_error(e: image::ImageError) -> anyhow::Error {
    use image::ImageError as E;
    let inner = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    match e {
        E::Unsupported(_) => anyhow::anyhow!("unsupported PNG: {inner}"),
        _ => anyhow::anyhow!("corrupt PNG: {inner}"),
    }
}

/// A PNG as PIL decodes it: [`super::png_pil::read`] applies PIL's rules and gives a
/// canonical PNG, the `png` crate decodes that, samples become 8-bit RGB as in PIL. A
/// filter type above 4 is refused here, as by PIL.
fn decode_png(bytes: &[u8]) -> Result<(RgbImage, Vec<String>)> {
    let png = super::png_pil::read(bytes, &check_size)?;
    let (w, h) = (png.width, png.height);
    let mut reader = image::ImageReader::with_format(
        std::io::Cursor::new(&png.canonical),
        image::ImageFormat::Png,
    );
    // The pixel count is bounded above; the decoder's own allocation limit would refuse
    // large 16-bit images PIL opens.
    reader.limits(image::Limits::no_limits());
    let img = reader.decode().map_err(|e| {
        let text = format!("{}", png_error(e));
        if text.contains("filter") {
            anyhow::anyhow!(
                "{text}: a row has an unknown filter type (PIL refuses it too: unrecognized \
                 data stream contents)"
            )
        } else {
            anyhow::anyhow!(text)
        }
    })?;
    drop(png.canonical);
    // Gray (color type 0) stays gray in PIL; the canonical PNG has no tRNS.
    let gray = png.color_type == 0;
    let clip = |v: u16| v.min(255) as u8;
    let high = |v: u16| (v >> 8) as u8;
    let rgb = match img {
        DynamicImage::ImageLuma16(g) => {
            RgbImage::from_fn(w, h, |x, y| image::Rgb([clip(g.get_pixel(x, y)[0]); 3]))
        }
        DynamicImage::ImageLumaA16(g) => {
            let f = if gray { clip } else { high };
            RgbImage::from_fn(w, h, |x, y| image::Rgb([f(g.get_pixel(x, y)[0]); 3]))
        }
        DynamicImage::ImageRgb16(c) => {
            RgbImage::from_fn(w, h, |x, y| image::Rgb(c.get_pixel(x, y).0.map(high)))
        }
        DynamicImage::ImageRgba16(c) => RgbImage::from_fn(w, h, |x, y| {
            let p = c.get_pixel(x, y).0;
            image::Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        other => other.to_rgb8(),
    };
    Ok((rgb, png.note.into_iter().collect()))
}

/// JPEG through libjpeg-turbo's decoder (vendored by the `mozjpeg` crate), with an error
/// manager that turns libjpeg's errors into Rust unwinds (caught here) and records its
/// warnings, so truncation is known from the decoder's own account.
mod jpeg {
    use super::check_size;
    use anyhow::{bail, Result};
    use image::RgbImage;
    use mozjpeg::{ColorSpace, Decompress};
    use mozjpeg_sys as ffi;
    use std::cell::RefCell;
    use std::os::raw::c_int;

    thread_local! {
        /// Warnings of the decode running on this thread: (libjpeg message code, text).
        static WARNINGS: RefCell<Vec<(c_int, String)>> = const { RefCell::new(Vec::new()) };
    }

    /// libjpeg's `JMSG_LENGTH_MAX`.
    const MSG_LEN: usize = 200;

    /// The text of the current message of `cinfo`.
    unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
        let err = &*cinfo.err;
        let code = err.msg_code;
        let Some(fmt) = err.format_message else {
            return format!("libjpeg message {code}");
        };
        // The binding declares the buffer as `&[u8; 80]`; libjpeg writes up to
        // JMSG_LENGTH_MAX bytes into it, so hand it a buffer of that size.
        let fmt: unsafe extern "C-unwind" fn(*mut ffi::jpeg_common_struct, *mut u8) =
            std::mem::transmute(fmt);
        let mut buf = [0u8; MSG_LEN];
        fmt(cinfo, buf.as_mut_ptr());
        let text = buf.split(|&c| c == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }

    /// A libjpeg error, carried by the unwind out of the decoder.
    struct Fatal {
        code: c_int,
        msg: String,
    }

    unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
        let code = (*cinfo.err).msg_code;
        let msg = message(cinfo);
        std::panic::resume_unwind(Box::new(Fatal { code, msg }));
    }

    unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
        if level < 0 {
            let code = (*cinfo.err).msg_code;
            let msg = message(cinfo);
            WARNINGS.with(|w| w.borrow_mut().push((code, msg)));
        }
    }

    fn error_mgr() -> ffi::jpeg_error_mgr {
        // SAFETY: jpeg_error_mgr is plain C data; jpeg_std_error fills every field.
        let mut err: ffi::jpeg_error_mgr = unsafe { std::mem::zeroed() };
        unsafe { ffi::jpeg_std_error(&mut err) };
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err
    }

    /// PIL's `cmyk2rgb` after its `CMYK;I` unpacking (Adobe inverted CMYK).
    fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
        let muldiv255 = |a: u32, b: u32| {
            let t = a * b + 128;
            ((t >> 8) + t) >> 8
        };
        let k = 255 - p[3] as u32;
        let nk = 255 - k;
        [0, 1, 2].map(|i| {
            let c = 255 - p[i] as u32;
            (nk as i32 - muldiv255(c, nk) as i32).clamp(0, 255) as u8
        })
    }

    fn decode_inner(bytes: &[u8]) -> Result<RgbImage> {
        let d = Decompress::builder()
            .with_err(error_mgr())
            .from_mem(bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (w, h) = d.size();
        check_size(w as u64, h as u64)?;
        let io = |e: std::io::Error| anyhow::anyhow!("{e}");
        let rgb: Vec<u8> = match d.color_space() {
            ColorSpace::JCS_GRAYSCALE => {
                let mut s = d.grayscale().map_err(io)?;
                let g: Vec<u8> = s.read_scanlines().map_err(io)?;
                s.finish().map_err(io)?;
                g.iter().flat_map(|&v| [v; 3]).collect()
            }
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                let mut s = d.to_colorspace(ColorSpace::JCS_CMYK).map_err(io)?;
                let c: Vec<u8> = s.read_scanlines().map_err(io)?;
                s.finish().map_err(io)?;
                c.chunks_exact(4).flat_map(cmyk_to_rgb).collect()
            }
            _ => {
                let mut s = d.rgb().map_err(io)?;
                let c: Vec<u8> = s.read_scanlines().map_err(io)?;
                s.finish().map_err(io)?;
                c
            }
        };
        RgbImage::from_raw(w as u32, h as u32, rgb)
            .ok_or_else(|| anyhow::anyhow!("decoder returned fewer pixels than {w}x{h}"))
    }

    /// Decodes one JPEG; see [`super::decode_rgb_bytes`]. The notes: scan data that stops
    /// early (PIL decodes the rest gray, without a warning).
    pub(super) fn decode(bytes: &[u8]) -> Result<(RgbImage, Vec<String>)> {
        WARNINGS.with(|w| w.borrow_mut().clear());
        let result = std::panic::catch_unwind(|| decode_inner(bytes));
        let warnings = WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()));
        // Running out of data is reported as a warning first (libjpeg then reads a fake end
        // marker), or, inside a marker segment being skipped, as a read error (reading from
        // memory fails only at the end): whatever followed, the file is truncated.
        let eof = warnings
            .iter()
            .find(|(c, _)| *c == ffi::JWRN_JPEG_EOF as c_int);
        let fatal = match &result {
            Err(payload) => Some(match payload.downcast_ref::<Fatal>() {
                Some(f) => (f.code, f.msg.clone()),
                None => (-1, "unexpected panic in the JPEG decoder".to_string()),
            }),
            Ok(_) => None,
        };
        let read_error = fatal
            .as_ref()
            .filter(|(c, _)| *c == ffi::JERR_FILE_READ as c_int);
        if let Some((_, msg)) = eof.or(read_error) {
            bail!(
                "truncated JPEG: the file ends before the main image is complete \
                 (libjpeg: {msg}; PIL refuses it too: image file is truncated)"
            );
        }
        if let Some((_, msg)) = fatal {
            bail!("corrupt JPEG: libjpeg: {msg}");
        }
        let img = result.map_err(|_| anyhow::anyhow!("JPEG decoder failed"))??;
        let notes = warnings
            .iter()
            .find(|(c, _)| *c == ffi::JWRN_HIT_MARKER as c_int)
            .map(|(_, msg)| {
                format!(
                    "the JPEG scan data stops before the image is complete (libjpeg: {msg}): \
                     the rest is decoded gray, as PIL does without a warning"
                )
            });
        Ok((img, notes.into_iter().collect()))
    }
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

/// One separable pass over interleaved 8-bit RGB `src` of `w x h` pixels along one axis
/// (`horizontal`: each row from `w` to `out` pixels; else each column from `h` to `out`),
/// with PIL's fixed-point weights, rounding and u8 clipping (`ImagingResampleHorizontal_8bpc`
/// / `ImagingResampleVertical_8bpc`). Returns the new buffer.
fn resample_pass(src: &[u8], w: usize, h: usize, out: usize, horizontal: bool) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    if horizontal {
        let c = coeffs(w, out);
        let mut dst = vec![0u8; h * out * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for x in 0..out {
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
                    dst[(y * out + x) * 3 + ch] = clip8(acc[ch]);
                }
            }
        }
        dst
    } else {
        let c = coeffs(h, out);
        let mut dst = vec![0u8; out * w * 3];
        for y in 0..out {
            let (ymin, n) = c.bounds[y];
            let k = &c.weights[y];
            for x in 0..w * 3 {
                let mut acc = round;
                for i in 0..n {
                    acc += src[(ymin + i) * w * 3 + x] as i64 * k[i] as i64;
                }
                dst[y * w * 3 + x] = clip8(acc);
            }
        }
        dst
    }
}

/// Whether Pillow runs the vertical pass before the horizontal one for `iw x ih` to
/// `ow x oh` (both passes needed): when the image shrinks vertically and
/// `2 * (iw - ow) < ih - oh`. The passes round to 8 bits in between, so the order changes
/// pixels (up to 14 levels). Measured against Pillow 13.0.0's `Image.resize(.., BICUBIC)`
/// over every shape pair in 1..90 for several targets (scripts/pil_resize_grid.py keeps a
/// grid of them as fixtures).
fn vertical_first(iw: usize, ih: usize, ow: usize, oh: usize) -> bool {
    ih > oh && 2 * (iw as i64 - ow as i64) < (ih - oh) as i64
}

/// Resizes 8-bit RGB (`width x height` pixels out) exactly as PIL's
/// `Image.resize((width, height), BICUBIC)` (Pillow 13): separable convolution, kernel
/// support widened by the downscale factor (antialias), 8-bit fixed-point weights and
/// rounding, u8 intermediate; an axis whose size does not change is not resampled; the pass
/// order is Pillow's (see [`vertical_first`]). Gray images are resized as their RGB
/// conversion (equal to PIL's mode `L` resize, converted). Panics only if a size is 0.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let src = img.as_raw();
    let (need_h, need_v) = (ow != iw, oh != ih);
    let data = match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => resample_pass(src, iw, ih, ow, true),
        (false, true) => resample_pass(src, iw, ih, oh, false),
        (true, true) if vertical_first(iw, ih, ow, oh) => {
            let tmp = resample_pass(src, iw, ih, oh, false);
            resample_pass(&tmp, iw, oh, ow, true)
        }
        (true, true) => {
            let tmp = resample_pass(src, iw, ih, ow, true);
            resample_pass(&tmp, ow, ih, oh, false)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_limit_is_pils_bomb_error_limit_and_no_side_is_limited() {
        assert_eq!(PIL_MAX_IMAGE_PIXELS, 1024 * 1024 * 1024 / 4 / 3);
        assert!(check_size(10, MAX_IMAGE_PIXELS / 10).is_ok());
        assert!(check_size(1, MAX_IMAGE_PIXELS).is_ok());
        let e = check_size(1, MAX_IMAGE_PIXELS + 1).unwrap_err().to_string();
        assert!(e.contains("expected at most 178956970"), "{e}");
        assert!(check_size(u32::MAX as u64, u32::MAX as u64).is_err());
        assert!(check_size(1_000_000, 8).is_ok());
        // PIL counts a side of 0 as 1.
        assert!(check_size(0, MAX_IMAGE_PIXELS).is_ok());
    }
}
