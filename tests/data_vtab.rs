//! The NOAH-layout reader: task table, validation and precise errors on bad data.

mod data_support;

use data_support::{write_task, SMALL_SPLITS};
use idat_pipe::data::prepare::{validate, Manifest};
use idat_pipe::data::vtab::{read_task, task_info, TaskSpec, SPLITS, TASKS};
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
    let per_group = |g: &str| TASKS.iter().filter(|t| t.group == g).count();
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
    assert_eq!(task.split("train800val200").unwrap().entries[4].label, 1);
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
