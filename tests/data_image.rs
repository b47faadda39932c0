//! PIL parity of decoding and bicubic resize, against fixtures made by scripts/pil_fixtures.py
//! (resize) and scripts/make_pil_fixtures.py (decode, under fixtures/image/decode/).

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
fn jpeg_decode_and_resize_match_pil_exactly() {
    // Resize alone is exact when starting from PIL's own decode.
    let pil_decoded = decode_rgb(&fixture("rgb300x200.jpg.decoded.png")).unwrap();
    for (w, h) in [(224, 224), (40, 40)] {
        let want = decode_rgb(&fixture(&format!("rgb300x200.jpg.bicubic{w}x{h}.png"))).unwrap();
        assert_eq!(diff(&resize_bicubic(&pil_decoded, w, h), &want), (0.0, 0));
    }
    // libjpeg-turbo's decoder, as in PIL: the same pixels.
    let ours = decode_rgb(&fixture("rgb300x200.jpg")).unwrap();
    assert_eq!(diff(&ours, &pil_decoded), (0.0, 0));
    for (w, h) in [(224, 224), (40, 40)] {
        assert_eq!(check("rgb300x200.jpg", w, h), (0.0, 0));
    }
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

/// Every decode fixture against PIL's `Image.open(f).convert("RGB")`, with the largest
/// difference allowed (0: identical pixels).
#[test]
fn decode_matches_pil_for_every_kind_of_jpeg_and_png() {
    let cases = [
        ("jpeg_rgb444.jpg", 0),
        ("jpeg_rgb422.jpg", 0),
        ("jpeg_rgb420.jpg", 0),
        ("jpeg_rgb420_odd.jpg", 0),
        ("jpeg_progressive.jpg", 0),
        ("jpeg_gray.jpg", 0),
        ("jpeg_cmyk.jpg", 0),
        ("jpeg_exif_thumb.jpg", 0),
        ("png_gray16.png", 0),
        ("png_gray16_low.png", 0),
        ("png_gray16_trns.png", 0),
        ("png_graya16.png", 0),
        ("png_rgb16.png", 0),
        ("png_rgba16.png", 0),
        ("png_gray1.png", 0),
        ("png_gray4.png", 0),
        ("png_palette.png", 0),
        ("png_rgba8.png", 0),
        ("png_graya8.png", 0),
    ];
    let mut failed = Vec::new();
    for (name, bound) in cases {
        let ours = decode_rgb(&fixture(&format!("decode/{name}"))).unwrap();
        let pil = decode_rgb(&fixture(&format!("decode/{name}.pil.png"))).unwrap();
        let (mean, max) = diff(&ours, &pil);
        eprintln!("{name}: mean abs diff {mean:.4}, max {max}");
        if max > bound {
            failed.push(format!(
                "{name}: max abs diff {max} > {bound} (mean {mean:.4})"
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn sixteen_bit_png_is_clipped_when_gray_and_high_byte_when_colour_as_in_pil() {
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("g16.png");
    let vals = [0u16, 100, 255, 256, 4660, 65535];
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(6, 1, |x, _| {
        image::Luma([vals[x as usize]])
    })
    .save(&gray)
    .unwrap();
    let got: Vec<u8> = decode_rgb(&gray).unwrap().pixels().map(|p| p[0]).collect();
    assert_eq!(got, vec![0, 100, 255, 255, 255, 255]);
    let rgb = dir.path().join("c16.png");
    image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(2, 1, |x, _| {
        image::Rgb(if x == 0 {
            [0x1234, 0x00FF, 0xFFFF]
        } else {
            [0x8080, 0x7FFF, 0x0100]
        })
    })
    .save(&rgb)
    .unwrap();
    let got = decode_rgb(&rgb).unwrap().into_raw();
    assert_eq!(got, vec![0x12, 0x00, 0xFF, 0x80, 0x7F, 0x01]);
}

/// Offsets of every `FF xx` marker (not stuffing or restart) in `bytes`, with `xx`.
fn markers(bytes: &[u8]) -> Vec<(usize, u8)> {
    bytes
        .windows(2)
        .enumerate()
        .filter(|(_, w)| {
            w[0] == 0xFF && w[1] != 0 && w[1] != 0xFF && !(0xD0..=0xD7).contains(&w[1])
        })
        .map(|(i, w)| (i, w[1]))
        .collect()
}

#[test]
fn a_truncated_jpeg_is_refused_even_when_an_exif_thumbnail_ends_first() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("decode/jpeg_exif_thumb.jpg")).unwrap();
    let m = markers(&bytes);
    let sos: Vec<usize> = m
        .iter()
        .filter(|(_, c)| *c == 0xDA)
        .map(|(i, _)| *i)
        .collect();
    let eoi: Vec<usize> = m
        .iter()
        .filter(|(_, c)| *c == 0xD9)
        .map(|(i, _)| *i)
        .collect();
    // The thumbnail's SOS and EOI come before the main image's SOS.
    assert!(sos.len() >= 2 && eoi[0] < sos[sos.len() - 1], "{m:?}");
    let main_sos = sos[sos.len() - 1];
    let len = bytes.len();
    // Inside the thumbnail, the headers, the scan data, and just before or in the end marker.
    let cuts = (3..len).step_by(len / 60).chain([
        main_sos + 20,
        (main_sos + len) / 2,
        len - 3,
        len - 2,
        len - 1,
    ]);
    for cut in cuts {
        let f = dir.path().join(format!("cut{cut}.jpg"));
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let err = must_fail(decode_rgb(&f));
        assert!(
            err.contains(&format!("cut{cut}.jpg")) && err.contains("truncated JPEG"),
            "cut at {cut} of {len}: {err}"
        );
    }
    // Progressive: cut between two scans (all data of the first scans present).
    let prog = std::fs::read(fixture("decode/jpeg_progressive.jpg")).unwrap();
    let psos: Vec<usize> = markers(&prog)
        .iter()
        .filter(|(_, c)| *c == 0xDA)
        .map(|(i, _)| *i)
        .collect();
    assert!(psos.len() > 2);
    let f = dir.path().join("prog.jpg");
    std::fs::write(&f, &prog[..psos[2]]).unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("prog.jpg") && err.contains("truncated JPEG"),
        "{err}"
    );
    // Scan data cut and an end marker appended (a "repaired" file): the rest would be gray.
    let f = dir.path().join("patched.jpg");
    std::fs::write(
        &f,
        [&bytes[..(main_sos + len) / 2], &[0xFF, 0xD9][..]].concat(),
    )
    .unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("patched.jpg") && err.contains("corrupt JPEG: the scan data stops"),
        "{err}"
    );
    // The whole file decodes.
    assert_eq!(
        decode_rgb(&fixture("decode/jpeg_exif_thumb.jpg"))
            .unwrap()
            .dimensions(),
        (128, 96)
    );
}

#[test]
fn a_png_truncated_in_idat_or_without_iend_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("rgb64x48.png")).unwrap();
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
    let idat_len = u32::from_be_bytes(bytes[idat..idat + 4].try_into().unwrap()) as usize;
    for cut in (8..bytes.len()).step_by(97) {
        let f = dir.path().join(format!("cut{cut}.png"));
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let err = must_fail(decode_rgb(&f));
        assert!(
            err.contains(&format!("cut{cut}.png")) && err.contains("truncated PNG"),
            "cut at {cut}: {err}"
        );
    }
    for (name, cut, what) in [
        (
            "in_idat.png",
            idat + 8 + idat_len / 2,
            "truncated PNG: chunk `IDAT`",
        ),
        (
            "idat_crc.png",
            idat + 8 + idat_len + 2,
            "truncated PNG: chunk `IDAT`",
        ),
        (
            "no_iend.png",
            bytes.len() - 12,
            "truncated PNG: the file ends at byte",
        ),
        ("half_iend.png", bytes.len() - 6, "truncated PNG"),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let err = must_fail(decode_rgb(&f));
        assert!(err.contains(name) && err.contains(what), "{name}: {err}");
    }
}

/// The synthetic source of scripts/pil_resize_grid.py: pixel (y, x, c) is the high byte of
/// `(x * 7919 + y * 104729 + c * 1299709 + 12345) * 2654435761 mod 2^32`; gray when
/// `channels == 1` (replicated to RGB, as PIL's `convert("RGB")`).
fn grid_source(h: u32, w: u32, channels: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = |c: u64| {
            let t = (x as u64 * 7919 + y as u64 * 104729 + c * 1299709 + 12345)
                .wrapping_mul(2654435761)
                & 0xFFFF_FFFF;
            (t >> 24) as u8
        };
        if channels == 1 {
            image::Rgb([v(0); 3])
        } else {
            image::Rgb([v(0), v(1), v(2)])
        }
    })
}

/// Every shape pair of the grid (down, up and equal in each axis, 1-pixel sides, odd targets,
/// both sides of Pillow's pass-order switch, a few 224 targets; RGB and gray) against
/// Pillow 13's `Image.resize(.., BICUBIC)`: bit-exact.
#[test]
fn resize_matches_pil_exactly_over_a_grid_of_shapes() {
    let dir = fixture("resize_grid");
    let mut n = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        // <h>x<w>_to_<oh>x<ow>_<mode>
        let parts: Vec<&str> = name.split('_').collect();
        let dims = |s: &str| -> (u32, u32) {
            let (a, b) = s.split_once('x').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        };
        let ((h, w), (oh, ow)) = (dims(parts[0]), dims(parts[2]));
        let channels = if parts[3] == "l" { 1 } else { 3 };
        let want = decode_rgb(&path).unwrap();
        assert_eq!(want.dimensions(), (ow, oh), "{name}");
        let got = resize_bicubic(&grid_source(h, w, channels), ow, oh);
        let (_, max) = diff(&got, &want);
        if max != 0 {
            failures.push(format!("{name}: max diff {max}"));
        }
        n += 1;
    }
    assert!(n >= 150, "only {n} fixtures in {}", dir.display());
    assert!(failures.is_empty(), "not bit-exact: {failures:?}");
}

/// CRC-32 of PNG chunks (type + data).
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// (offset of the chunk's length field, data length) of the first chunk `kind`.
fn find_chunk(png: &[u8], kind: &[u8; 4]) -> (usize, usize) {
    let mut pos = 8;
    loop {
        let n = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        if &png[pos + 4..pos + 8] == kind {
            return (pos, n);
        }
        pos += 12 + n;
    }
}

/// Every PNG decode error reads as plain text naming the file: no Rust debug structs.
#[test]
fn png_decode_errors_are_plain_text_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("rgb64x48.png")).unwrap();
    let plain = |err: &str| {
        for bad in ["ChunkType", "critical:", "{", "}", "Format error"] {
            assert!(!err.contains(bad), "debug text `{bad}` in: {err}");
        }
    };
    for kind in [b"IDAT", b"IHDR"] {
        let mut png = good.clone();
        let (pos, n) = find_chunk(&png, kind);
        png[pos + 8 + n] ^= 0xFF; // first CRC byte
        let f = dir
            .path()
            .join(format!("crc_{}.png", std::str::from_utf8(kind).unwrap()));
        std::fs::write(&f, &png).unwrap();
        let err = must_fail(decode_rgb(&f));
        let want = format!(
            "corrupt PNG: CRC mismatch in {} chunk",
            std::str::from_utf8(kind).unwrap()
        );
        assert!(
            err.contains(&want) && err.contains(f.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        plain(&err);
    }
    // Damaged deflate data with a correct CRC: the zlib header of IDAT.
    let mut png = good.clone();
    let (pos, n) = find_chunk(&png, b"IDAT");
    png[pos + 8] = 0x00;
    png[pos + 9] = 0x00;
    let crc = crc32(&png[pos + 4..pos + 8 + n]);
    png[pos + 8 + n..pos + 12 + n].copy_from_slice(&crc.to_be_bytes());
    let f = dir.path().join("deflate.png");
    std::fs::write(&f, &png).unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("deflate.png")
            && err.contains("corrupt PNG: corrupt deflate stream (bad zlib header)"),
        "{err}"
    );
    plain(&err);
    // A bad colour type in IHDR (CRC fixed): plain words too.
    let mut png = good.clone();
    let (pos, n) = find_chunk(&png, b"IHDR");
    png[pos + 8 + 9] = 5;
    let crc = crc32(&png[pos + 4..pos + 8 + n]);
    png[pos + 8 + n..pos + 12 + n].copy_from_slice(&crc.to_be_bytes());
    let f = dir.path().join("colortype.png");
    std::fs::write(&f, &png).unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("colortype.png") && err.contains("corrupt PNG: invalid color type 5"),
        "{err}"
    );
    plain(&err);
}
