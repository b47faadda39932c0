//! PIL parity of decoding and bicubic resize, against fixtures made by scripts/pil_fixtures.py.

use idat_pipe::data::image::{decode_rgb, resize_bicubic, Normalize, NormalizeKind};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/image")
        .join(name)
}

/// (mean abs diff, max abs diff) in 8-bit units.
fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, max)
}

fn check(source: &str, w: u32, h: u32) -> (f64, u8) {
    let src = decode_rgb(&fixture(source)).unwrap();
    let want = decode_rgb(&fixture(&format!("{source}.bicubic{w}x{h}.png"))).unwrap();
    let got = resize_bicubic(&src, w, h);
    let (mean, max) = diff(&got, &want);
    eprintln!("{source} -> {w}x{h}: mean abs diff {mean:.4}, max {max}");
    assert!(
        mean < 1.0,
        "{source} -> {w}x{h}: mean abs diff {mean} >= 1/255"
    );
    (mean, max)
}

#[test]
fn png_resize_matches_pil_exactly() {
    for src in ["rgb32x32.png", "rgb64x48.png", "gray28x28.png"] {
        for (w, h) in [(224, 224), (40, 40)] {
            let (mean, max) = check(src, w, h);
            // Same pixels in, same fixed-point arithmetic: bit-exact.
            assert_eq!((mean, max), (0.0, 0), "{src} -> {w}x{h} not bit-exact");
        }
    }
}

#[test]
fn jpeg_decode_and_resize_close_to_pil() {
    // Resize alone is exact when starting from PIL's own decode.
    let pil_decoded = decode_rgb(&fixture("rgb300x200.jpg.decoded.png")).unwrap();
    for (w, h) in [(224, 224), (40, 40)] {
        let want = decode_rgb(&fixture(&format!("rgb300x200.jpg.bicubic{w}x{h}.png"))).unwrap();
        assert_eq!(diff(&resize_bicubic(&pil_decoded, w, h), &want), (0.0, 0));
    }
    // Decoder differences (zune-jpeg vs libjpeg) stay below 1/255 on average.
    let ours = decode_rgb(&fixture("rgb300x200.jpg")).unwrap();
    let (mean, max) = diff(&ours, &pil_decoded);
    eprintln!("jpeg decode vs PIL: mean abs diff {mean:.4}, max {max}");
    assert!(mean < 1.0);
    check("rgb300x200.jpg", 224, 224);
    check("rgb300x200.jpg", 40, 40);
}

#[test]
fn grayscale_becomes_three_equal_channels() {
    let img = decode_rgb(&fixture("gray28x28.png")).unwrap();
    assert_eq!(img.dimensions(), (28, 28));
    assert!(img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(img.pixels().any(|p| p[0] != img.get_pixel(0, 0)[0]));
}

#[test]
fn same_size_resize_is_identity() {
    let img = decode_rgb(&fixture("rgb64x48.png")).unwrap();
    assert_eq!(resize_bicubic(&img, 64, 48), img);
}

/// The error text of a decode that must fail (without printing a whole image on success).
fn must_fail(r: anyhow::Result<image::RgbImage>) -> String {
    match r {
        Ok(img) => panic!("accepted: decoded a {:?} image", img.dimensions()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn corrupt_and_truncated_images_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("rgb300x200.jpg")).unwrap();
    let trunc = dir.path().join("trunc.jpg");
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).unwrap();
    let err = must_fail(decode_rgb(&trunc));
    assert!(
        err.contains("trunc.jpg") && err.contains("truncated JPEG"),
        "{err}"
    );
    let png = std::fs::read(fixture("rgb64x48.png")).unwrap();
    let trunc_png = dir.path().join("trunc.png");
    std::fs::write(&trunc_png, &png[..png.len() / 2]).unwrap();
    let err = must_fail(decode_rgb(&trunc_png));
    assert!(err.contains("trunc.png"), "{err}");
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not an image at all").unwrap();
    let err = must_fail(decode_rgb(&junk));
    assert!(
        err.contains("junk.png") && err.contains("expected JPEG or PNG"),
        "{err}"
    );
}

#[test]
fn normalisation_presets() {
    let half = Normalize::default();
    assert_eq!(half.apply(0, 0), -1.0);
    assert_eq!(half.apply(255, 2), 1.0);
    let inet = Normalize::from_kind(NormalizeKind::Imagenet);
    assert!((inet.apply(0, 0) - (-0.485 / 0.229)).abs() < 1e-6);
    assert!((inet.apply(255, 1) - ((1.0 - 0.456) / 0.224)).abs() < 1e-6);
    let k: NormalizeKind = serde_json::from_str("\"imagenet\"").unwrap();
    assert_eq!(k, NormalizeKind::Imagenet);
}

#[test]
fn image_crate_catmull_rom_differs_from_pil_which_is_why_we_own_the_resize() {
    let src = decode_rgb(&fixture("rgb64x48.png")).unwrap();
    let want = decode_rgb(&fixture("rgb64x48.png.bicubic40x40.png")).unwrap();
    let theirs = image::imageops::resize(&src, 40, 40, image::imageops::FilterType::CatmullRom);
    let (mean, max) = diff(&theirs, &want);
    eprintln!("image crate CatmullRom 64x48 -> 40x40 vs PIL: mean {mean:.4}, max {max}");
    assert!(mean > 0.0);
}
