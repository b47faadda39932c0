//! PIL parity of decoding and bicubic resize, against fixtures made by scripts/pil_fixtures.py
//! (resize), scripts/make_pil_fixtures.py (decode, under fixtures/image/decode/) and
//! scripts/make_pil_verdicts.py (which files PIL opens or refuses, under
//! fixtures/image/verdicts/).

use idat_domain::data::image::{
    decode_rgb, decode_rgb_noted, resize_bicubic, Normalize, NormalizeKind, MAX_IMAGE_PIXELS,
    PIL_MAX_IMAGE_PIXELS,
};
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
    // Scan data cut and an end marker appended (a "repaired" file): PIL decodes it, the
    // rest gray, without a word; so do we, with a note.
    let f = dir.path().join("patched.jpg");
    std::fs::write(
        &f,
        [&bytes[..(main_sos + len) / 2], &[0xFF, 0xD9][..]].concat(),
    )
    .unwrap();
    let d = decode_rgb_noted(&f).unwrap();
    assert_eq!(d.image.dimensions(), (128, 96));
    assert!(
        d.notes.len() == 1 && d.notes[0].contains("the rest is decoded gray, as PIL does"),
        "{:?}",
        d.notes
    );
    // The whole file decodes.
    assert_eq!(
        decode_rgb(&fixture("decode/jpeg_exif_thumb.jpg"))
            .unwrap()
            .dimensions(),
        (128, 96)
    );
}

/// A PNG cut at every place: refused while the image data is incomplete ("truncated
/// PNG", naming the file), decoded to the whole file's pixels once the last row is in
/// (PIL reads no further: CRC, IEND and the rest may be missing).
#[test]
fn a_png_cut_before_its_last_row_is_refused_and_after_it_decodes_as_in_pil() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("rgb64x48.png")).unwrap();
    let whole = decode_rgb(&fixture("rgb64x48.png")).unwrap();
    let (idat, idat_len) = find_chunk(&bytes, b"IDAT");
    let data_end = idat + 8 + idat_len;
    let cuts = (8..bytes.len()).step_by(53).chain([
        idat + 8,
        idat + 9,
        data_end - 7,
        data_end - 6,
        data_end,
        data_end + 2,
    ]);
    for cut in cuts.chain(bytes.len() - 12..bytes.len()) {
        let f = dir.path().join(format!("cut{cut}.png"));
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let r = decode_rgb(&f);
        // The zlib stream ends with the final block's end code and the 4-byte checksum:
        // PIL 13 does not need them. For this file it opens every cut from 6 bytes before
        // the end of the IDAT data on, and refuses every earlier one (measured).
        if cut >= data_end - 6 {
            assert_eq!(r.unwrap(), whole, "cut at {cut} of {}", bytes.len());
        } else {
            let err = must_fail(r);
            assert!(
                err.contains(&format!("cut{cut}.png")) && err.contains("truncated PNG"),
                "cut at {cut}: {err}"
            );
        }
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
    let refix_crc = |png: &mut Vec<u8>, pos: usize, n: usize| {
        let crc = crc32(&png[pos + 4..pos + 8 + n]);
        png[pos + 8 + n..pos + 12 + n].copy_from_slice(&crc.to_be_bytes());
    };
    // A CRC error in IHDR (before the image data: PIL refuses it).
    let mut png = good.clone();
    let (pos, n) = find_chunk(&png, b"IHDR");
    png[pos + 8 + n] ^= 0xFF;
    let f = dir.path().join("crc_IHDR.png");
    std::fs::write(&f, &png).unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("crc_IHDR.png") && err.contains("corrupt PNG: CRC mismatch in chunk `IHDR`"),
        "{err}"
    );
    plain(&err);
    // Damaged deflate data with a correct CRC: the zlib header of IDAT.
    let mut png = good.clone();
    let (pos, n) = find_chunk(&png, b"IDAT");
    png[pos + 8] = 0x00;
    png[pos + 9] = 0x00;
    refix_crc(&mut png, pos, n);
    let f = dir.path().join("deflate.png");
    std::fs::write(&f, &png).unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("deflate.png")
            && err.contains("corrupt PNG: the compressed image data is damaged"),
        "{err}"
    );
    plain(&err);
    // A bad colour type in IHDR (CRC fixed): plain words too.
    let mut png = good.clone();
    let (pos, n) = find_chunk(&png, b"IHDR");
    png[pos + 8 + 9] = 5;
    refix_crc(&mut png, pos, n);
    let f = dir.path().join("colortype.png");
    std::fs::write(&f, &png).unwrap();
    let err = must_fail(decode_rgb(&f));
    assert!(
        err.contains("colortype.png")
            && err.contains("unsupported PNG: bit depth 8 with colour type 5"),
        "{err}"
    );
    plain(&err);
}

/// One row of fixtures/image/verdicts/verdicts.tsv (scripts/make_pil_verdicts.py): PIL's
/// verdict on one file.
struct Verdict {
    file: String,
    /// PIL opened it (else refused it).
    ok: bool,
    width: u32,
    height: u32,
    /// blake3 of PIL's `convert("RGB")` bytes.
    blake3: String,
    /// What PIL said.
    pil: String,
}

fn verdicts() -> Vec<Verdict> {
    let text = std::fs::read_to_string(fixture("verdicts/verdicts.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 6, "{l}");
            Verdict {
                file: c[0].to_string(),
                ok: match c[1] {
                    "ok" => true,
                    "refused" => false,
                    v => panic!("verdict {v}"),
                },
                width: c[2].parse().unwrap_or(0),
                height: c[3].parse().unwrap_or(0),
                blake3: c[4].to_string(),
                pil: c[5].to_string(),
            }
        })
        .collect()
}

/// Our verdict on one fixture against PIL's: None when they agree (same pixels when PIL
/// opens it; refused, naming the file, when PIL refuses it), else what differs.
fn disagreement(v: &Verdict) -> Option<String> {
    let path = fixture(&format!("verdicts/{}", v.file));
    match (decode_rgb(&path), v.ok) {
        (Ok(img), true) => {
            let hash = blake3::hash(img.as_raw()).to_hex().to_string();
            (img.dimensions() != (v.width, v.height) || hash != v.blake3).then(|| {
                format!(
                    "{}: decoded {:?}, PIL {}x{}, pixels {}",
                    v.file,
                    img.dimensions(),
                    v.width,
                    v.height,
                    if hash == v.blake3 { "equal" } else { "differ" }
                )
            })
        }
        (Ok(_), false) => Some(format!("{}: decoded, PIL refused it: {}", v.file, v.pil)),
        (Err(e), true) => Some(format!("{}: refused ({e:#}), PIL opened it", v.file)),
        (Err(e), false) => {
            let e = format!("{e:#}");
            (!e.contains(&v.file)).then(|| format!("{}: error does not name the file: {e}", v.file))
        }
    }
}

/// Every file of the verdict fixtures (PNG and JPEG files damaged or unusual in the ways
/// files from the field are) gets PIL's verdict: PIL's exact pixels when PIL opens it, an
/// error naming the file when PIL refuses it.
#[test]
fn every_verdict_fixture_is_accepted_or_refused_as_pil_does_with_pils_pixels() {
    let all = verdicts();
    assert!(all.len() >= 90, "{} verdicts", all.len());
    let bad: Vec<String> = all.iter().filter_map(disagreement).collect();
    assert!(
        bad.is_empty(),
        "{} of {} differ from PIL:\n{}",
        bad.len(),
        all.len(),
        bad.join("\n")
    );
}

/// The verdict row of `file`, and our error text (None when we decode it).
fn ours(file: &str) -> (Verdict, Option<String>) {
    let v = verdicts().into_iter().find(|v| v.file == file).unwrap();
    let r = decode_rgb_noted(&fixture(&format!("verdicts/{file}")));
    (v, r.err().map(|e| format!("{e:#}")))
}

/// Checks that each of `files` gets PIL's verdict and, when refused, a message with `want`.
fn expect(files: &[(&str, &str)]) {
    for (file, want) in files {
        let (v, err) = ours(file);
        assert_eq!(disagreement(&v), None);
        match err {
            Some(e) => assert!(!v.ok && e.contains(want) && e.contains(file), "{file}: {e}"),
            None => assert!(
                v.ok && want.is_empty(),
                "{file}: decoded, expected `{want}`"
            ),
        }
    }
}

/// CRC mismatches: PIL checks the chunks before the image data (IHDR, PLTE, tRNS, text,
/// private chunks) and refuses a mismatch; it never checks IDAT or the chunks after it.
#[test]
fn png_crc_errors_before_the_image_data_are_refused_and_later_ones_ignored_as_in_pil() {
    let refused = "CRC mismatch in chunk";
    expect(&[
        ("crc_ihdr.png", refused),
        ("crc_plte.png", refused),
        ("crc_trns.png", refused),
        ("crc_gama.png", refused),
        ("crc_text_before_idat.png", refused),
        ("crc_private_before_idat.png", refused),
        ("crc_idat.png", ""),
        ("crc_idat_first_of_3.png", ""),
        ("crc_idat_last_of_3.png", ""),
        ("crc_iend.png", ""),
        ("crc_text_after_idat.png", ""),
    ]);
    let (_, e) = ours("crc_ihdr.png");
    let e = e.unwrap();
    assert!(e.contains("stored 0x") && e.contains("PIL refuses"), "{e}");
}

/// Truncated PNGs: refused when the file ends before the last row or inside a chunk that
/// follows it; decoded when only the checksum, CRC, IEND or the chunk headers after the
/// image are missing.
#[test]
fn png_truncation_is_refused_exactly_where_pil_refuses_it() {
    let t = "truncated PNG";
    expect(&[
        ("trunc_mid_idat.png", t),
        ("trunc_mid_last_of_3_idat.png", t),
        ("trunc_in_ihdr.png", t),
        ("trunc_signature_only.png", t),
        ("trunc_in_text_before_idat.png", t),
        ("trunc_in_text_after_idat.png", t),
        ("adler_in_own_chunk_cut.png", t),
        ("idat_split_by_text.png", t),
        ("interlaced_trunc_mid_idat.png", t),
        ("trunc_idat_last_byte.png", ""),
        ("trunc_before_idat_crc.png", ""),
        ("trunc_no_iend.png", ""),
        ("trunc_half_iend.png", ""),
        ("trunc_in_chunk_header_after_idat.png", ""),
        ("trailing_garbage.png", ""),
    ]);
}

/// The compressed image data: damage and a wrong adler-32 refused (when PIL sees the
/// checksum), data that ends at a row end decoded with zero rows and a note, a stream that
/// ends inside a row refused, extra data ignored.
#[test]
fn png_compressed_data_damage_and_early_ends_as_in_pil() {
    let damaged = "compressed image data is damaged";
    expect(&[
        ("adler_bad.png", damaged),
        ("deflate_corrupt.png", damaged),
        ("zlib_header_bad.png", damaged),
        ("filter_type_bad.png", "unknown filter type"),
        ("stream_short_mid_row.png", "truncated PNG"),
        ("stream_empty.png", "truncated PNG"),
        ("interlaced_short_at_row.png", "truncated PNG"),
        ("adler_missing.png", ""),
        ("adler_bad_in_own_chunk.png", ""),
        ("stream_long.png", ""),
        ("stream_trailing_bytes.png", ""),
        ("stream_short_at_row.png", ""),
        ("idat_empty_chunks.png", ""),
    ]);
    let d = decode_rgb_noted(&fixture("verdicts/stream_short_at_row.png")).unwrap();
    assert!(
        d.notes.len() == 1
            && d.notes[0].contains("ends after 294 of 588 bytes, at the end of a row"),
        "{:?}",
        d.notes
    );
    // Rows 6.. are zero, as in PIL.
    assert!(d
        .image
        .rows()
        .skip(6)
        .all(|r| r.into_iter().all(|p| p.0 == [0, 0, 0])));
    assert!(d
        .image
        .rows()
        .take(6)
        .any(|r| r.into_iter().any(|p| p.0 != [0, 0, 0])));
}

/// Chunk structure: PIL's handlers refuse a bad chunk type, a missing or short IHDR, a
/// filter method other than 0, an unknown depth/colour pair, a size of 0, short gAMA,
/// cHRM, sRGB, pHYs and tRNS chunks (before or after the image data), an unknown zTXt or
/// iCCP compression method, IEND before IDAT; they skip unknown chunks (critical ones
/// too), damaged compressed text and an IHDR that is not first.
#[test]
fn png_chunk_rules_as_in_pil() {
    expect(&[
        (
            "chunk_type_invalid.png",
            "has type `a-b!`: expected 4 letters or digits",
        ),
        ("ihdr_missing.png", "no IHDR chunk"),
        ("ihdr_short.png", "holds 10 bytes, expected at least 13"),
        ("ihdr_filter_method_1.png", "filter method 1"),
        ("ihdr_depth_rgb4.png", "bit depth 4 with colour type 2"),
        ("ihdr_width_0.png", "0x12"),
        ("iend_before_idat.png", "IEND at byte"),
        ("gama_short.png", "chunk `gAMA`"),
        ("gama_short_after_idat.png", "chunk `gAMA`"),
        ("chrm_short.png", "chunk `cHRM`"),
        ("srgb_empty.png", "chunk `sRGB`"),
        ("phys_short.png", "chunk `pHYs`"),
        ("trns_short_rgb.png", "chunk `tRNS`"),
        (
            "ztxt_method_1.png",
            "unknown compression method 1 in the zTXt chunk",
        ),
        (
            "ztxt_method_1_after_idat.png",
            "unknown compression method 1 in the zTXt chunk",
        ),
        (
            "iccp_method_1.png",
            "unknown compression method 1 in the iCCP chunk",
        ),
        ("chunk_unknown_critical.png", ""),
        ("ihdr_after_text.png", ""),
        ("ihdr_compression_method_1.png", ""),
        ("ihdr_interlace_2.png", ""),
        ("ztxt_corrupt.png", ""),
        ("iccp_corrupt.png", ""),
        ("itxt_corrupt.png", ""),
    ]);
}

/// Colour types and layouts PIL reads: palettes (with tRNS, an index beyond the palette,
/// no palette at all: black), gray with tRNS, 2-bit gray, gray+alpha (8 and 16 bits),
/// interlaced RGB, RGBA16 and 2-bit palette, an APNG (its first frame).
#[test]
fn png_colour_types_palettes_interlacing_and_apng_decode_as_pil() {
    expect(&[
        ("png_ok.png", ""),
        ("palette_trns.png", ""),
        ("palette_index_beyond_plte.png", ""),
        ("palette_without_plte.png", ""),
        ("palette_2bit_interlaced.png", ""),
        ("gray8_trns.png", ""),
        ("gray16_trns.png", ""),
        ("gray2.png", ""),
        ("graya8.png", ""),
        ("graya16.png", ""),
        ("rgb8_interlaced.png", ""),
        ("rgba16_interlaced.png", ""),
        ("apng_2_frames.png", ""),
    ]);
}

/// EXIF orientation is not applied (PIL's `open`/`convert` do not apply it): a JPEG or PNG
/// tagged "rotate 90" keeps its stored width and height.
#[test]
fn exif_orientation_is_not_applied_as_in_pil() {
    expect(&[
        ("jpeg_exif_orientation_6.jpg", ""),
        ("exif_orientation_6.png", ""),
    ]);
    let img = decode_rgb(&fixture("verdicts/jpeg_exif_orientation_6.jpg")).unwrap();
    assert_eq!(img.dimensions(), (40, 24));
}

/// No limit on a side (a 20000x8 PNG or JPEG decodes, as in PIL); more than
/// 2 x PIL's MAX_IMAGE_PIXELS is refused before any image data is read, as PIL's
/// DecompressionBombError does.
#[test]
fn the_size_limit_is_pils_pixel_count_not_a_side() {
    assert_eq!(PIL_MAX_IMAGE_PIXELS, 1024 * 1024 * 1024 / 4 / 3);
    assert_eq!(MAX_IMAGE_PIXELS, 178_956_970);
    let bomb = "expected at most 178956970";
    expect(&[
        ("wide_20000x8.png", ""),
        ("tall_8x20000.png", ""),
        ("jpeg_wide_20000x8.jpg", ""),
        ("bomb_13000x13767.png", bomb),
        ("bomb_100000x100000.png", bomb),
        ("jpeg_bomb_60000x60000.jpg", bomb),
    ]);
    let (_, e) = ours("bomb_13000x13767.png");
    assert!(e.unwrap().contains("13000x13767 = 178971000 pixels"));
}

/// JPEGs: truncated ones refused (a missing end marker too), damaged scan data decoded
/// gray with a note, extraneous bytes and data after the end marker ignored.
#[test]
fn jpeg_damage_as_in_pil() {
    expect(&[
        ("jpeg_ok.jpg", ""),
        ("jpeg_cmyk.jpg", ""),
        ("jpeg_trunc_half.jpg", "truncated JPEG"),
        ("jpeg_no_eoi.jpg", "truncated JPEG"),
        ("jpeg_scan_cut_eoi_appended.jpg", ""),
        ("jpeg_extraneous_bytes.jpg", ""),
        ("jpeg_trailing_garbage.jpg", ""),
    ]);
    let d = decode_rgb_noted(&fixture("verdicts/jpeg_scan_cut_eoi_appended.jpg")).unwrap();
    assert!(
        d.notes.iter().any(|n| n.contains("decoded gray")),
        "{:?}",
        d.notes
    );
    assert!(decode_rgb_noted(&fixture("verdicts/jpeg_ok.jpg"))
        .unwrap()
        .notes
        .is_empty());
}

/// Files with an image name that are no image: a macOS AppleDouble sidecar (`._x.jpg`), an
/// empty file, text.
#[test]
fn files_that_are_not_images_are_refused_naming_the_file() {
    expect(&[
        ("appledouble_sidecar.jpg", "AppleDouble"),
        ("empty.png", "unknown image format"),
        ("text_named.png", "unknown image format"),
    ]);
}
