//! Decoded splits: parallel decode, bad-image handling, safetensors cache, batches, epoch order.

use crate::data_support::{write_task, SMALL_SPLITS};
use candle_core::Device;
use idat_domain::data::image::{decode_rgb, resize_bicubic, Normalize};
use idat_domain::data::loader::{batches, decode_task_split, epoch_order, DecodedSplit};
use idat_domain::data::vtab::{read_task, TaskSpec, SPLITS};

fn task(root: &std::path::Path) -> idat_domain::data::vtab::Task {
    read_task(root, &TaskSpec::custom("toy", "mini", 3), &SPLITS).unwrap()
}

#[test]
fn decodes_resizes_and_round_trips_through_safetensors() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 10);
    let t = task(d.path());
    let (split, report) = decode_task_split(&t, "test", 16, false).unwrap();
    assert_eq!((split.len(), split.size, report.decoded), (5, 16, 5));
    assert!(report.skipped.is_empty());
    assert_eq!(split.labels, vec![0, 1, 2, 0, 1]);
    // Image 2 is the same as decoding + resizing it directly.
    let direct = resize_bicubic(
        &decode_rgb(&t.dir.join("images/test/000002.jpg")).unwrap(),
        16,
        16,
    );
    assert_eq!(
        &split.images[2 * 16 * 16 * 3..3 * 16 * 16 * 3],
        direct.as_raw().as_slice()
    );
    let f = d.path().join("test.safetensors");
    split.save(&f).unwrap();
    assert_eq!(DecodedSplit::load(&f).unwrap(), split);
    // A truncated file is refused, naming it, before any image is read.
    let bytes = std::fs::read(&f).unwrap();
    let cut = d.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = format!("{:#}", DecodedSplit::load(&cut).unwrap_err());
    assert!(
        e.contains("cut.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn bad_images_error_with_list_line_or_are_skipped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 10);
    let t = task(d.path());
    let jpg = t.dir.join("images/test/000004.jpg");
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!(
        "{:#}",
        decode_task_split(&t, "test", 16, false).expect_err("truncated JPEG accepted")
    );
    assert!(
        e.contains("toy/test.txt:5:") && e.contains("000004.jpg") && e.contains("truncated JPEG"),
        "{e}"
    );
    let (split, report) = decode_task_split(&t, "test", 16, true).unwrap();
    assert_eq!(
        (split.len(), report.decoded, report.skipped.len()),
        (4, 4, 1)
    );
    assert!(report.skipped[0].location.ends_with("toy/test.txt:5"));
    assert_eq!(split.labels, vec![0, 1, 2, 0]);
}

#[test]
fn to_batch_is_nchw_normalised() {
    let split = DecodedSplit {
        // two 2x2 images, HWC
        images: (0..24).map(|v| (v * 10) as u8).collect(),
        labels: vec![7, 9],
        size: 2,
    };
    let (x, y) = split
        .to_batch(&[1, 0], &Normalize::default(), &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[2, 3, 2, 2]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), vec![9, 7]);
    let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // batch 0 = image 1; channel 1, pixel 1 (row 0, col 1): HWC byte 12 + 1*3 + 1 = 16 -> 160;
    // NCHW index 0*12 + 1*4 + 1 = 5.
    let want = (160.0 / 255.0 - 0.5) / 0.5;
    assert!((x[5] - want).abs() < 1e-6, "{}", x[5]);
    // batch 1 = image 0; channel 2, pixel 3: HWC byte 3*3 + 2 = 11 -> 110; NCHW 12 + 8 + 3 = 23.
    assert!((x[23] - (110.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    let e = split
        .to_batch(&[2], &Normalize::default(), &Device::Cpu)
        .expect_err("index 2 accepted");
    assert!(e.to_string().contains("batch index 2 out of range"));
}

#[test]
fn load_rejects_wrong_shapes() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bad.safetensors");
    let imgs = vec![0u8; 2 * 4 * 4 * 3];
    let labels = vec![0u8; 4 * 3]; // three labels for two images
    let a = safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![2, 4, 4, 3], &imgs)
        .unwrap();
    let b =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![3], &labels).unwrap();
    safetensors::serialize_to_file([("images", a), ("labels", b)], None, &f).unwrap();
    let e = format!(
        "{:#}",
        DecodedSplit::load(&f).expect_err("bad shapes accepted")
    );
    assert!(
        e.contains("tensor `labels`") && e.contains("expected U32 [2]"),
        "{e}"
    );
    std::fs::write(&f, b"garbage").unwrap();
    assert!(
        format!("{:#}", DecodedSplit::load(&f).unwrap_err()).contains("not a valid safetensors")
    );
}

#[test]
fn epoch_order_is_a_deterministic_permutation() {
    let a = epoch_order(100, 7, 3);
    assert_eq!(a, epoch_order(100, 7, 3));
    assert_ne!(a, epoch_order(100, 7, 4));
    assert_ne!(a, epoch_order(100, 8, 3));
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    let b = batches(&a, 32, true);
    assert_eq!(b.len(), 3);
    assert!(b.iter().all(|c| c.len() == 32));
    let b = batches(&a, 32, false);
    assert_eq!((b.len(), b[3].len()), (4, 4));
    assert!(batches(&a, 0, false).is_empty());
}

/// An image PIL decodes in silence although damaged (a JPEG whose scan data stops early,
/// the rest gray) is decoded, and the split's report notes it with its list line: one
/// warning for the split.
#[test]
fn damaged_images_pil_accepts_are_decoded_and_noted_with_their_line() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 10);
    let t = task(d.path());
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image");
    std::fs::copy(
        fixtures.join("verdicts/jpeg_scan_cut_eoi_appended.jpg"),
        t.dir.join("images/test/000004.jpg"),
    )
    .unwrap();
    let (split, report) = decode_task_split(&t, "test", 16, false).unwrap();
    assert_eq!((split.len(), report.decoded), (5, 5));
    assert!(report.skipped.is_empty());
    assert_eq!(report.noted.len(), 1, "{:?}", report.noted);
    let n = &report.noted[0];
    assert!(
        n.location.ends_with("toy/test.txt:5") && n.path.ends_with("000004.jpg"),
        "{n:?}"
    );
    let w = report.noted_warning("test").unwrap();
    assert!(
        w.starts_with("test: 1 decoded image(s) with damage PIL passes over")
            && w.contains("decoded gray, as PIL does"),
        "{w}"
    );
    let (_, clean) = decode_task_split(&t, "train800", 16, false).unwrap();
    assert!(clean.noted.is_empty() && clean.noted_warning("train800").is_none());
}
