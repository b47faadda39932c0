//! The NOAH-layout reader: task table, validation and precise errors on bad data.

use crate::data_support::{write_task, SMALL_SPLITS};
use idat_domain::data::prepare::{validate, Manifest};
use idat_domain::data::vtab::{read_task, task_info, TaskSpec, SPLITS, TASKS};
use std::path::Path;

fn spec(name: &str, classes: usize) -> TaskSpec {
    TaskSpec::custom(name, "mini", classes)
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn task_table_has_19_tasks_and_aliases() {
    assert_eq!(TASKS.len(), 19);
    let per_group = |g: &str| TASKS.iter().filter(|t| t.group.name() == g).count();
    assert_eq!(
        (
            per_group("natural"),
            per_group("specialized"),
            per_group("structured")
        ),
        (7, 4, 8)
    );
    assert_eq!(task_info("cifar100").unwrap().num_classes, 100);
    assert_eq!(task_info("pets").unwrap().name, "oxford_iiit_pet");
    assert_eq!(task_info("flowers102").unwrap().name, "oxford_flowers102");
    assert_eq!(task_info("sun397").unwrap().num_classes, 397);
    let s = TaskSpec::vtab("dtd").unwrap();
    assert_eq!(
        (s.num_classes, s.expected_sizes["train800val200"]),
        (47, 1000)
    );
    assert!(err_of(TaskSpec::vtab("imagenet")).contains("unknown VTAB-1K task `imagenet`"));
}

#[test]
fn reads_a_valid_task_and_hash_tracks_content() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let task = read_task(d.path(), &spec("toy", 3), &SPLITS).unwrap();
    assert_eq!(task.split("test").unwrap().entries.len(), 5);
    // train800val200 = train800 (4) + val200 (2): its fifth line is val200's first.
    let tv = &task.split("train800val200").unwrap().entries[4];
    assert_eq!(
        (tv.path.as_str(), tv.label),
        ("images/val200/000000.jpg", 0)
    );
    assert!(task.checks.train800val200_is_union);
    assert_eq!(
        (task.checks.listed_images, task.checks.unique_images),
        (17, 11)
    );
    assert_eq!(task.checks.identical_content.groups, 0);
    let h1 = task.content_hash.clone();
    assert_eq!(
        read_task(d.path(), &spec("toy", 3), &SPLITS)
            .unwrap()
            .content_hash,
        h1
    );
    // Change one image's bytes: the hash changes.
    let img = d.path().join("toy/images/test/000001.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(&img)
        .unwrap();
    assert_ne!(
        read_task(d.path(), &spec("toy", 3), &SPLITS)
            .unwrap()
            .content_hash,
        h1
    );
}

#[test]
fn manifest_round_trips_and_rebuilds_tasks() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "a", 2, SMALL_SPLITS, 8);
    write_task(d.path(), "b", 4, SMALL_SPLITS, 8);
    let splits: Vec<String> = SPLITS.iter().map(|s| s.to_string()).collect();
    let m = validate(d.path(), &[spec("a", 2), spec("b", 4)], &splits).unwrap();
    assert_eq!(m.tasks.len(), 2);
    assert_eq!(m.task("b").unwrap().splits["val200"].count, 2);
    assert_eq!(m.task("a").unwrap().splits["test"].list_file, "a/test.txt");
    let f = d.path().join("manifest.json");
    m.save(&f).unwrap();
    let back = Manifest::load(&f).unwrap();
    assert_eq!(back, m);
    let t = back.load_task("b").unwrap();
    assert_eq!(
        t.split("test").unwrap().entries,
        m.task("b").unwrap().splits["test"].images
    );
    assert!(err_of(back.task("zzz")).contains("task `zzz` is not in the dataset manifest"));
}

fn write_list(root: &Path, task: &str, split: &str, text: &str) {
    std::fs::write(root.join(task).join(format!("{split}.txt")), text).unwrap();
}

#[test]
fn missing_image_names_list_line_and_path() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    std::fs::remove_file(d.path().join("toy/images/test/000003.png")).unwrap();
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
    assert!(
        e.contains("toy/test.txt:4:") && e.contains("images/test/000003.png"),
        "{e}"
    );
}

#[test]
fn label_out_of_range_names_line_and_range() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/000000.jpg 0\nimages/val200/000001.png 3\n",
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
    assert!(
        e.contains("toy/val200.txt:2: label 3 out of range: expected 0..=2 (3 classes)"),
        "{e}"
    );
}

#[test]
fn malformed_lines_name_line_and_expected_form() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    for (text, line, what) in [
        (
            "images/val200/000000.jpg 0\nimages/val200/000001.png\n",
            2,
            "malformed list line",
        ),
        (
            "images/val200/000000.jpg zero\n",
            1,
            "label `zero` is not a non-negative integer",
        ),
        (
            "images/val200/000000.jpg -1\n",
            1,
            "not a non-negative integer",
        ),
        ("\n../escape.jpg 1\n", 2, "contains `..`"),
        ("/etc/passwd 1\n", 1, "is absolute"),
    ] {
        write_list(d.path(), "toy", "val200", text);
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
        assert!(
            e.contains(&format!("toy/val200.txt:{line}:")) && e.contains(what),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn missing_folder_list_and_wrong_sizes() {
    let d = tempfile::tempdir().unwrap();
    let e = err_of(read_task(d.path(), &spec("nope", 3), &["test"]));
    assert!(e.contains("task folder") && e.contains("nope"), "{e}");
    write_task(d.path(), "toy", 3, &[("test", 3)], 8);
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["train800"]));
    assert!(
        e.contains("list file") && e.contains("train800.txt") && e.contains("missing"),
        "{e}"
    );
    let mut s = spec("toy", 3);
    s.expected_sizes.insert("test".into(), 4);
    let e = err_of(read_task(d.path(), &s, &["test"]));
    assert!(
        e.contains("toy/test.txt: 3 images listed, expected 4"),
        "{e}"
    );
    // A real VTAB task enforces 800/200/1000.
    write_task(d.path(), "dtd", 47, &[("train800", 10)], 8);
    let e = err_of(read_task(
        d.path(),
        &TaskSpec::vtab("dtd").unwrap(),
        &["train800"],
    ));
    assert!(
        e.contains("10 images listed, expected 800 for split `train800`"),
        "{e}"
    );
}

/// The list text of split `split` of `toy` as written by `write_task`.
fn list_of(root: &Path, split: &str) -> String {
    std::fs::read_to_string(root.join("toy").join(format!("{split}.txt"))).unwrap()
}

#[test]
fn utf8_bom_at_file_start_is_dropped() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let text = list_of(d.path(), "test");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(text.as_bytes());
    std::fs::write(d.path().join("toy/test.txt"), bytes).unwrap();
    let task = read_task(d.path(), &spec("toy", 3), &["test"]).unwrap();
    let e = &task.split("test").unwrap().entries[0];
    assert_eq!(
        (e.path.as_str(), e.label, e.line),
        ("images/test/000000.jpg", 0, 1)
    );
}

#[test]
fn invisible_characters_in_an_unreadable_path_are_printed_escaped() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    // A BOM not at file start (two lists concatenated), a zero-width space, a no-break space,
    // a C0 and a C1 control.
    for (bad, shown, code) in [
        (
            "\u{feff}images/test/000001.png",
            "\\u{feff}images/test/000001.png",
            "U+FEFF",
        ),
        (
            "images/test/000001\u{200b}.png",
            "000001\\u{200b}.png",
            "U+200B",
        ),
        (
            "images/test\u{a0}/000001.png",
            "images/test\\u{a0}/000001.png",
            "U+00A0",
        ),
        ("images/test/\u{1}000001.png", "\\u{1}000001.png", "U+0001"),
        (
            "images/test/\u{85}000001.png",
            "\\u{85}000001.png",
            "U+0085",
        ),
    ] {
        write_list(
            d.path(),
            "toy",
            "test",
            &format!("images/test/000000.jpg 0\n{bad} 1\n"),
        );
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
        assert!(
            e.contains("toy/test.txt:2:")
                && e.contains("listed but not readable")
                && e.contains(shown)
                && e.contains(code)
                && !e.contains(bad),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn utf16_utf32_and_invalid_utf8_lists_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let text = list_of(d.path(), "test");
    let le: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
    let f = d.path().join("toy/test.txt");
    for (bom, body, what) in [
        (&[0xFF, 0xFE][..], &le, "is UTF-16"),
        (&[0xFE, 0xFF][..], &be, "is UTF-16"),
        (&[0xFF, 0xFE, 0, 0][..], &le, "is UTF-32"),
        (&[][..], &le, "test.txt:1: NUL byte"),
    ] {
        std::fs::write(&f, [bom, body.as_slice()].concat()).unwrap();
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
        assert!(
            e.contains("toy/test.txt") && e.contains(what) && e.contains("expected UTF-8"),
            "{bom:?}: {e}"
        );
    }
    // Latin-1 `é` on line 2.
    std::fs::write(&f, b"images/test/000000.jpg 0\nimages/caf\xe9.png 1\n").unwrap();
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
    assert!(
        e.contains("toy/test.txt:2: invalid UTF-8 (byte 0xE9"),
        "{e}"
    );
}

#[test]
fn line_endings_and_windows_separators_are_read_as_one_spelling() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let want = read_task(d.path(), &spec("toy", 3), &["test"]).unwrap();
    for text in [
        list_of(d.path(), "test").replace('\n', "\r\n"),
        list_of(d.path(), "test").replace('\n', "\r"),
        list_of(d.path(), "test").replace('/', "\\"),
        list_of(d.path(), "test").replace("images/", ".\\images\\.\\"),
        list_of(d.path(), "test").replace("images/test/", "images/x/../test//"),
    ] {
        write_list(d.path(), "toy", "test", &text);
        let got = read_task(d.path(), &spec("toy", 3), &["test"]).unwrap();
        assert_eq!(
            got.split("test").unwrap().entries,
            want.split("test").unwrap().entries,
            "{text:?}"
        );
        assert_eq!(got.content_hash, want.content_hash, "{text:?}");
    }
}

#[test]
fn paths_that_leave_the_task_folder_are_refused() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    for (path, what) in [
        ("images/../../escape.jpg", "leaves the task folder"),
        ("..\\escape.jpg", "leaves the task folder"),
        ("C:\\data\\a.jpg", "is absolute (drive `C:`)"),
        ("\\\\server\\share\\a.jpg", "is absolute"),
        ("./.", "names the task folder itself"),
    ] {
        write_list(d.path(), "toy", "test", &format!("{path} 0\n"));
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
        assert!(
            e.contains("toy/test.txt:1: image path") && e.contains(what),
            "{path}: {e}"
        );
    }
}

#[test]
fn the_same_file_twice_in_a_split_under_any_spelling_is_an_error_naming_both_lines() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    for variant in [
        "images/test/000000.jpg",
        "./images/test/000000.jpg",
        "images//test/000000.jpg",
        "images/./test/000000.jpg",
        "images/sub/../test/000000.jpg",
        "images\\test\\000000.jpg",
        "images/test/000000.jpg\r",
    ] {
        write_list(
            d.path(),
            "toy",
            "test",
            &format!("images/test/000000.jpg 0\nimages/test/000001.png 1\n{variant} 0\n"),
        );
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
        assert!(
            e.contains("toy/test.txt:1 and ")
                && e.contains(
                    "toy/test.txt:3: `images/test/000000.jpg` is listed twice in split `test`"
                ),
            "{variant:?}: {e}"
        );
    }
}

#[test]
fn a_test_image_in_a_training_split_is_an_error_naming_both_places() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let mut test = list_of(d.path(), "test");
    test.push_str("./images/val200/000001.png 1\n");
    write_list(d.path(), "toy", "test", &test);
    // All four splits: the file is in val200 (and train800val200); val200 is named.
    let e = err_of(read_task(d.path(), &spec("toy", 3), &SPLITS));
    assert!(
        e.contains("toy/test.txt:6 and ")
            && e.contains("toy/val200.txt:2: `images/val200/000001.png` is in split `test` and in split `val200`"),
        "{e}"
    );
    // Only test and train800val200 loaded: still found.
    let e = err_of(read_task(
        d.path(),
        &spec("toy", 3),
        &["test", "train800val200"],
    ));
    assert!(
        e.contains("toy/test.txt:6 and ") && e.contains("toy/train800val200.txt:6:"),
        "{e}"
    );
    // train800 and val200 overlapping.
    write_task(d.path(), "b", 3, SMALL_SPLITS, 8);
    let mut val = std::fs::read_to_string(d.path().join("b/val200.txt")).unwrap();
    val.push_str("images/train800/000003.png 0\n");
    std::fs::write(d.path().join("b/val200.txt"), val).unwrap();
    let e = err_of(read_task(d.path(), &spec("b", 3), &["train800", "val200"]));
    assert!(
        e.contains("b/train800.txt:4 and ")
            && e.contains("b/val200.txt:3:")
            && e.contains("expected train800 and val200 disjoint"),
        "{e}"
    );
}

#[test]
fn train800val200_must_be_exactly_train800_plus_val200() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let tv = list_of(d.path(), "train800val200");
    let lines: Vec<&str> = tv.lines().collect();
    // Any order is fine.
    let mut rev = lines.clone();
    rev.reverse();
    write_list(d.path(), "toy", "train800val200", &(rev.join("\n") + "\n"));
    let t = read_task(d.path(), &spec("toy", 3), &SPLITS).unwrap();
    assert!(t.checks.train800val200_is_union);
    // A line missing.
    write_list(
        d.path(),
        "toy",
        "train800val200",
        &(lines[..5].join("\n") + "\n"),
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &SPLITS));
    assert!(
        e.contains("toy/train800val200.txt: train800val200 is not train800 + val200: 1 images of train800/val200 are not in it (e.g. `images/val200/000001.png` (")
            && e.contains("toy/val200.txt:2)"),
        "{e}"
    );
    // An extra image (a test image would be caught as a leak first: use another file).
    std::fs::copy(
        d.path().join("toy/images/test/000000.jpg"),
        d.path().join("toy/images/extra.jpg"),
    )
    .unwrap();
    write_list(
        d.path(),
        "toy",
        "train800val200",
        &(tv.clone() + "images/extra.jpg 2\n"),
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &SPLITS));
    assert!(
        e.contains("1 images in it are in neither train800 nor val200 (e.g. `images/extra.jpg` (")
            && e.contains("toy/train800val200.txt:7)"),
        "{e}"
    );
    // Same file, other label.
    write_list(
        d.path(),
        "toy",
        "train800val200",
        &tv.replacen(
            "images/train800/000001.png 1",
            "images/train800/000001.png 2",
            1,
        ),
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &SPLITS));
    assert!(
        e.contains("toy/train800.txt:2 and ")
            && e.contains("toy/train800val200.txt:2: `images/train800/000001.png` has label 1 in split `train800` but 2 in split `train800val200`"),
        "{e}"
    );
    // Not all three loaded: not checked, and said so.
    let t = read_task(d.path(), &spec("toy", 3), &["train800", "test"]).unwrap();
    assert!(!t.checks.train800val200_is_union);
}

#[test]
fn identical_bytes_under_two_names_are_counted_and_warned_about() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let img = |p: &str| d.path().join("toy").join(p);
    // A test image that is a byte copy of a training image, and two test images equal.
    std::fs::copy(
        img("images/train800/000000.jpg"),
        img("images/test/000000.jpg"),
    )
    .unwrap();
    std::fs::copy(img("images/test/000001.png"), img("images/test/000003.png")).unwrap();
    let splits: Vec<String> = SPLITS.iter().map(|s| s.to_string()).collect();
    let m = validate(d.path(), &[spec("toy", 3)], &splits).unwrap();
    let c = &m.task("toy").unwrap().checks;
    assert_eq!(
        (c.identical_content.groups, c.identical_content.files),
        (2, 4)
    );
    assert_eq!(
        (
            c.test_train_identical_content.groups,
            c.test_train_identical_content.files
        ),
        (1, 2)
    );
    let ex = c.test_train_identical_content.examples[0].join(" ");
    assert!(
        ex.contains("`images/train800/000000.jpg` (toy/train800.txt:1)")
            && ex.contains("`images/test/000000.jpg` (toy/test.txt:1)"),
        "{ex}"
    );
    let w = m.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("task `toy`: 4 images in 2 sets have identical bytes"),
        "{w:?}"
    );
    assert!(
        w[1].contains("1 sets of identical bytes hold both a test and a training image"),
        "{w:?}"
    );
    // Recorded in the manifest.
    let f = d.path().join("dataset.json");
    m.save(&f).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(json["tasks"][0]["checks"]["identical_content"]["groups"], 2);
    assert_eq!(
        json["tasks"][0]["checks"]["test_train_identical_content"]["files"],
        2
    );
    assert_eq!(json["tasks"][0]["checks"]["unique_images"], 11);
    // Places are relative to the dataset root: nothing machine-specific is recorded.
    let checks = json["tasks"][0]["checks"].to_string();
    assert!(!checks.contains(d.path().to_str().unwrap()), "{checks}");
    assert_eq!(Manifest::load(&f).unwrap(), m);
}

#[test]
fn sixteen_bit_pngs_are_counted_and_old_manifests_still_load() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let p = d.path().join("toy/images/test/000001.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(8, 8, |x, y| {
        image::Luma([(x * 4000 + y) as u16])
    })
    .save(&p)
    .unwrap();
    let splits: Vec<String> = SPLITS.iter().map(|s| s.to_string()).collect();
    let m = validate(d.path(), &[spec("toy", 3)], &splits).unwrap();
    let c = &m.task("toy").unwrap().checks;
    assert_eq!(
        (c.png16_images, c.png16_examples.clone()),
        (1, vec!["images/test/000001.png".to_string()])
    );
    let w = m.warnings();
    assert!(
        w.len() == 1 && w[0].contains("1 16-bit PNG images (e.g. images/test/000001.png)"),
        "{w:?}"
    );
    // A manifest written before the checks existed (no `checks` field) still loads.
    let mut json = serde_json::to_value(&m).unwrap();
    json["tasks"][0].as_object_mut().unwrap().remove("checks");
    let f = d.path().join("old.json");
    std::fs::write(&f, serde_json::to_vec(&json).unwrap()).unwrap();
    let back = Manifest::load(&f).unwrap();
    assert_eq!(back.task("toy").unwrap().checks, Default::default());
    assert!(back.warnings().is_empty());
}

/// `images/x.png 3 7` is an extra column, not a file `images/x.png 3`; names with spaces
/// (even ending in a number, when that file exists) still read whole.
#[test]
fn an_extra_column_after_the_label_is_a_malformed_line() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let dir = d.path().join("toy/images/val200");
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/000000.jpg 0\nimages/val200/000001.png 2 7\n",
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
    assert!(
        e.contains("toy/val200.txt:2: malformed list line `images/val200/000001.png 2 7`: an extra column (3 columns")
            && e.contains("expected `<path> <label>`"),
        "{e}"
    );
    // Decimal extra columns too.
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/000000.jpg 0.5 1\n",
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
    assert!(
        e.contains("toy/val200.txt:1: malformed list line") && e.contains("extra column"),
        "{e}"
    );
    // Names with spaces work, also one whose last word is a number when it exists.
    std::fs::copy(dir.join("000000.jpg"), dir.join("my pic.jpg")).unwrap();
    std::fs::copy(dir.join("000001.png"), dir.join("take 2")).unwrap();
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/my pic.jpg 0\nimages/val200/take 2 1\n",
    );
    let t = read_task(d.path(), &spec("toy", 3), &["val200"]).unwrap();
    let got: Vec<(&str, u32)> = t
        .split("val200")
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.label))
        .collect();
    assert_eq!(
        got,
        [("images/val200/my pic.jpg", 0), ("images/val200/take 2", 1)]
    );
}

/// A set of identical bytes with several training images before the test one still shows
/// the test image and a training image in its example (warning and dataset.json).
#[test]
fn test_train_identical_examples_show_the_test_image() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let img = |p: &str| d.path().join("toy").join(p);
    for p in [
        "images/train800/000002.jpg",
        "images/val200/000000.jpg",
        "images/val200/000001.png",
        "images/test/000004.jpg",
    ] {
        std::fs::copy(img("images/train800/000000.jpg"), img(p)).unwrap();
    }
    // train800 lists 000002.jpg? No: it lists 000002.png; rewrite that line to the copy.
    let t8 = std::fs::read_to_string(img("train800.txt")).unwrap();
    let t8 = t8.replace("images/train800/000002.png", "images/train800/000002.jpg");
    std::fs::write(img("train800.txt"), &t8).unwrap();
    let tv = std::fs::read_to_string(img("train800val200.txt")).unwrap();
    std::fs::write(
        img("train800val200.txt"),
        tv.replace("images/train800/000002.png", "images/train800/000002.jpg"),
    )
    .unwrap();
    let splits: Vec<String> = SPLITS.iter().map(|s| s.to_string()).collect();
    let m = validate(d.path(), &[spec("toy", 3)], &splits).unwrap();
    let c = &m.task("toy").unwrap().checks;
    assert_eq!(
        (
            c.test_train_identical_content.groups,
            c.test_train_identical_content.files
        ),
        (1, 5)
    );
    let ex = &c.test_train_identical_content.examples[0];
    assert_eq!(ex[0], "`images/test/000004.jpg` (toy/test.txt:5)", "{ex:?}");
    assert_eq!(
        ex[1], "`images/train800/000000.jpg` (toy/train800.txt:1)",
        "{ex:?}"
    );
    let w = m.warnings().join("\n");
    assert!(
        w.contains("`images/test/000004.jpg` (toy/test.txt:5) = `images/train800/000000.jpg` (toy/train800.txt:1)"),
        "{w}"
    );
    let f = d.path().join("dataset.json");
    m.save(&f).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(
        json["tasks"][0]["checks"]["test_train_identical_content"]["examples"][0][0],
        "`images/test/000004.jpg` (toy/test.txt:5)"
    );
}

/// The same file on disk (symlink or hard link: same device and inode) under two list
/// paths is the error a same-path duplicate is.
#[cfg(unix)]
#[test]
fn the_same_file_through_a_link_is_a_duplicate() {
    let fresh = || {
        let d = tempfile::tempdir().unwrap();
        write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
        d
    };
    // Test image a symlink to a train800 image.
    let d = fresh();
    let t = d.path().join("toy/images");
    std::fs::remove_file(t.join("test/000000.jpg")).unwrap();
    std::os::unix::fs::symlink("../train800/000000.jpg", t.join("test/000000.jpg")).unwrap();
    let e = err_of(read_task(d.path(), &spec("toy", 3), &SPLITS));
    assert!(
        e.contains("toy/train800.txt:1 and ")
            && e.contains("toy/test.txt:1: `images/train800/000000.jpg` and `images/test/000000.jpg` are the same file on disk")
            && e.contains("expected test images apart from train800"),
        "{e}"
    );
    // Test image a hard link to a val200 image.
    let d = fresh();
    let t = d.path().join("toy/images");
    std::fs::remove_file(t.join("test/000001.png")).unwrap();
    std::fs::hard_link(t.join("val200/000001.png"), t.join("test/000001.png")).unwrap();
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200", "test"]));
    assert!(
        e.contains("toy/val200.txt:2 and ")
            && e.contains("toy/test.txt:2: ")
            && e.contains("same file on disk"),
        "{e}"
    );
    // The same file twice in one split.
    let d = fresh();
    let t = d.path().join("toy/images");
    std::fs::remove_file(t.join("test/000003.png")).unwrap();
    std::fs::hard_link(t.join("test/000001.png"), t.join("test/000003.png")).unwrap();
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["test"]));
    assert!(
        e.contains("toy/test.txt:2 and ")
            && e.contains("toy/test.txt:4: ")
            && e.contains("listed twice in split `test`"),
        "{e}"
    );
    // Identical bytes in two separate files stay a warning (not this error).
    let d = fresh();
    let t = d.path().join("toy/images");
    std::fs::copy(t.join("train800/000000.jpg"), t.join("test/000000.jpg")).unwrap();
    read_task(d.path(), &spec("toy", 3), &SPLITS).unwrap();
}

/// A list line spelled in NFD for a file stored NFC (or the reverse, or a folder so
/// spelled) is still an error (PIL would not open it either) that names both spellings.
#[test]
fn a_name_differing_only_by_unicode_normalisation_is_named_in_the_error() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    let t = d.path().join("toy");
    let nfc = "caf\u{e9}.png";
    let nfd = "cafe\u{301}.png";
    for (on_disk, listed, disk_form, list_form) in [
        (nfc, nfd, "NFC, composed", "NFD, decomposed"),
        (nfd, nfc, "NFD, decomposed", "NFC, composed"),
    ] {
        let _ = std::fs::remove_file(t.join("images/val200").join(nfc));
        let _ = std::fs::remove_file(t.join("images/val200").join(nfd));
        std::fs::copy(
            t.join("images/val200/000001.png"),
            t.join("images/val200").join(on_disk),
        )
        .unwrap();
        write_list(
            d.path(),
            "toy",
            "val200",
            &format!("images/val200/000000.jpg 0\nimages/val200/{listed} 1\n"),
        );
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
        let esc = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii() {
                        c.to_string()
                    } else {
                        format!("\\u{{{:x}}}", c as u32)
                    }
                })
                .collect::<String>()
        };
        assert!(
            e.contains("toy/val200.txt:2: image ")
                && e.contains("listed but not readable")
                && e.contains(&format!(
                    "the list spells the name `{}` ({list_form})",
                    esc(listed)
                ))
                && e.contains(&format!(
                    "the folder holds `{}` ({disk_form})",
                    esc(on_disk)
                )),
            "{e}"
        );
    }
    // A folder spelled the other way.
    let folder = "r\u{e9}sum\u{e9}";
    std::fs::create_dir_all(t.join("images").join(folder)).unwrap();
    std::fs::copy(
        t.join("images/val200/000001.png"),
        t.join("images").join(folder).join("a.png"),
    )
    .unwrap();
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/000000.jpg 0\nimages/re\u{301}sume\u{301}/a.png 1\n",
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
    assert!(
        e.contains("the folder holds `r\\u{e9}sum\\u{e9}` (NFC, composed)"),
        "{e}"
    );
    // No such note for a plainly missing file.
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/000000.jpg 0\nimages/val200/nope.png 1\n",
    );
    let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
    assert!(
        e.contains("listed but not readable") && !e.contains("normalisation"),
        "{e}"
    );
}

/// A list line naming OS metadata (a macOS `._` sidecar, anything under `__MACOSX/`,
/// `Thumbs.db`, `.DS_Store`, a Synology `@eaDir/` thumbnail) is an error naming the list
/// file and line: such a file is never an image. Other dot-names may be listed.
#[test]
fn a_list_line_naming_os_metadata_is_an_error_naming_the_line() {
    let d = tempfile::tempdir().unwrap();
    write_task(d.path(), "toy", 3, SMALL_SPLITS, 8);
    for (path, kind) in [
        ("images/val200/._000000.jpg", "macOS AppleDouble"),
        ("__MACOSX/images/val200/000000.jpg", "macOS AppleDouble"),
        ("images/Thumbs.db", "Windows Explorer"),
        ("images/.DS_Store", "macOS Finder"),
        ("images/@eaDir/000000.jpg/SYNOPHOTO_THUMB_M.jpg", "Synology"),
    ] {
        write_list(
            d.path(),
            "toy",
            "val200",
            &format!("images/val200/000000.jpg 0\n{path} 1\n"),
        );
        let e = err_of(read_task(d.path(), &spec("toy", 3), &["val200"]));
        assert!(
            e.contains(&format!("toy/val200.txt:2: `{path}` is a {kind}"))
                && e.contains("not an image"),
            "{e}"
        );
    }
    // A dot-folder the user lists on purpose is read.
    let hidden = d.path().join("toy/.kept");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::copy(
        d.path().join("toy/images/val200/000000.jpg"),
        hidden.join("a.jpg"),
    )
    .unwrap();
    write_list(
        d.path(),
        "toy",
        "val200",
        "images/val200/000000.jpg 0\n.kept/a.jpg 1\n",
    );
    read_task(d.path(), &spec("toy", 3), &["val200"]).unwrap();
}
