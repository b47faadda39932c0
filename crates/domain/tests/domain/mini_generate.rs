//! The embedded mini-VTAB generators: NOAH layout, counts, labels, PNG validity, determinism,
//! class balance, label semantics of a few tasks, and clear errors.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Instant;

use idat_domain::data::mini::{self, MiniTask};

type List = Vec<(String, u32)>;

fn read_list(path: &Path) -> List {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let (p, lab) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line `{l}` in {}", path.display()));
            (
                p.to_string(),
                lab.parse().unwrap_or_else(|_| panic!("bad label in `{l}`")),
            )
        })
        .collect()
}

/// Checks the exact NOAH layout of one generated task and returns (train list, test list).
fn check_layout(root: &Path, t: &MiniTask, n_train: usize, n_test: usize) -> (List, List) {
    let dir = root.join(t.name);
    let entries: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = [
        "images",
        "test.txt",
        "train800.txt",
        "train800val200.txt",
        "val200.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(entries, want, "{}: folder contents", t.name);

    let all = read_list(&dir.join("train800val200.txt"));
    let train = read_list(&dir.join("train800.txt"));
    let val = read_list(&dir.join("val200.txt"));
    let test = read_list(&dir.join("test.txt"));
    assert_eq!(all.len(), n_train, "{}", t.name);
    assert_eq!(test.len(), n_test, "{}", t.name);
    let n800 = n_train * 4 / 5;
    assert_eq!(train.len(), n800, "{}", t.name);
    assert_eq!(val.len(), n_train - n800, "{}", t.name);
    assert_eq!(
        [train, val].concat(),
        all,
        "{}: train800 + val200 = train800val200",
        t.name
    );
    for (split, list) in [("train", &all), ("test", &test)] {
        for (i, (p, lab)) in list.iter().enumerate() {
            assert_eq!(p, &format!("images/{split}/{i:06}.png"), "{}", t.name);
            assert!(
                (*lab as usize) < t.num_classes,
                "{}: label {lab} out of range",
                t.name
            );
        }
        let files = fs::read_dir(dir.join("images").join(split))
            .unwrap()
            .count();
        assert_eq!(
            files,
            list.len(),
            "{}: images/{split} holds exactly the listed files",
            t.name
        );
    }
    (all, test)
}

fn decode(root: &Path, t: &MiniTask, rel: &str) -> image::DynamicImage {
    let img = image::open(root.join(t.name).join(rel))
        .unwrap_or_else(|e| panic!("{} {rel}: {e}", t.name));
    assert_eq!(
        (img.width(), img.height()),
        (t.image_size, t.image_size),
        "{} {rel}",
        t.name
    );
    img
}

fn all_tasks() -> Vec<MiniTask> {
    let mut v = mini::tasks().to_vec();
    v.push(mini::source_task());
    v
}

#[test]
fn catalogue_covers_three_groups_and_source_is_separate() {
    let tasks = mini::tasks();
    assert!(tasks.len() >= 6);
    let groups: BTreeSet<&str> = tasks.iter().map(|t| t.group).collect();
    assert_eq!(
        groups,
        ["natural", "specialized", "structured"]
            .into_iter()
            .collect()
    );
    let names: BTreeSet<&str> = tasks.iter().map(|t| t.name).collect();
    assert_eq!(names.len(), tasks.len(), "unique names");
    let src = mini::source_task();
    assert!(!names.contains(src.name));
    assert!(src.num_classes >= 50, "source task has many classes");
    for t in all_tasks() {
        assert_eq!(mini::task(t.name).unwrap(), t);
        assert_eq!(
            mini::class_names(t.name).unwrap().len(),
            t.num_classes,
            "{}",
            t.name
        );
    }
}

#[test]
fn every_task_writes_the_noah_layout_with_valid_pngs() {
    let root = tempfile::tempdir().unwrap();
    for t in all_tasks() {
        let rep = mini::generate(t.name, root.path(), 7, 30, 12).unwrap();
        assert_eq!(rep.dir, root.path().join(t.name));
        assert_eq!(rep.train_counts.iter().sum::<usize>(), 30);
        assert_eq!(rep.test_counts.iter().sum::<usize>(), 12);
        let (train, test) = check_layout(root.path(), &t, 30, 12);
        for (p, _) in train.iter().chain(&test) {
            decode(root.path(), &t, p);
        }
    }
    // Nothing else (no temporary folders) is left in the root.
    let left: BTreeSet<String> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        all_tasks().iter().map(|t| t.name.to_string()).collect()
    );
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in glob::glob(&format!("{}/**/*", dir.display())).unwrap() {
        let p = e.unwrap();
        if p.is_file() {
            out.push((
                p.strip_prefix(dir).unwrap().display().to_string(),
                fs::read(&p).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    for t in all_tasks() {
        mini::generate(t.name, a.path(), 3, 20, 10).unwrap();
        mini::generate(t.name, b.path(), 3, 20, 10).unwrap();
        mini::generate(t.name, c.path(), 4, 20, 10).unwrap();
        let sa = snapshot(&a.path().join(t.name));
        let sb = snapshot(&b.path().join(t.name));
        let sc = snapshot(&c.path().join(t.name));
        assert_eq!(sa.len(), 34, "{}: 30 images + 4 lists", t.name);
        assert!(
            sa == sb,
            "{}: same seed must give byte-identical files",
            t.name
        );
        let differing = sa.iter().zip(&sc).filter(|(x, y)| x != y).count();
        assert!(
            differing >= 10,
            "{}: seed 4 differs from seed 3 in only {differing} files",
            t.name
        );
    }
}

/// Full VTAB-1K size (1,000 train) for every task: counts, balance, and the measured time.
#[test]
fn full_size_tasks_are_balanced() {
    let root = tempfile::tempdir().unwrap();
    let start = Instant::now();
    for t in mini::tasks() {
        let rep = mini::generate(t.name, root.path(), 0, 1000, 200).unwrap();
        println!(
            "generated {} (1000 train + 200 test) in {:.2} s, {} PNG bytes",
            t.name, rep.seconds, rep.bytes
        );
        let (train, _) = check_layout(root.path(), t, 1000, 200);
        let mut counts = vec![0usize; t.num_classes];
        for (_, l) in &train {
            counts[*l as usize] += 1;
        }
        assert_eq!(counts, rep.train_counts, "{}", t.name);
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        if t.name == "fashion_coarse" {
            // Natural proportions of the groups (4 + 2 + 3 + 1 fine classes).
            assert_eq!(counts, vec![400, 200, 300, 100]);
        } else {
            assert!(max - min <= 1, "{}: counts {counts:?} not balanced", t.name);
        }
    }
    println!(
        "all {} downstream tasks: {:.2} s",
        mini::tasks().len(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn dsprites_loc_label_is_the_x_position() {
    let root = tempfile::tempdir().unwrap();
    let t = mini::task("dsprites_loc").unwrap();
    mini::generate(t.name, root.path(), 11, 160, 10).unwrap();
    let (train, _) = check_layout(root.path(), &t, 160, 10);
    for (p, label) in &train {
        let img = decode(root.path(), &t, p).to_luma8();
        let (mut sum, mut mass) = (0.0f64, 0.0f64);
        for (x, _, px) in img.enumerate_pixels() {
            sum += (x as f64 + 0.5) * px.0[0] as f64;
            mass += px.0[0] as f64;
        }
        assert!(mass > 0.0, "{p}: empty sprite");
        let centroid = sum / mass;
        let bin_centre = 8.0 + 48.0 * (*label as f64 + 0.5) / 16.0;
        assert!(
            (centroid - bin_centre).abs() <= 4.5,
            "{p}: label {label} but sprite centroid x = {centroid:.1}"
        );
    }
}

#[test]
fn textures_labels_follow_the_photographs_colours() {
    let root = tempfile::tempdir().unwrap();
    let t = mini::task("textures").unwrap();
    mini::generate(t.name, root.path(), 5, 80, 80).unwrap();
    let (train, test) = check_layout(root.path(), &t, 80, 80);
    for (split, list) in [("train", &train), ("test", &test)] {
        for (p, label) in list {
            let img = decode(root.path(), &t, p).to_rgb8();
            let mut mean = [0.0f64; 3];
            for px in img.pixels() {
                for (m, v) in mean.iter_mut().zip(px.0) {
                    *m += v as f64 / 1024.0;
                }
            }
            let [r, g, b] = mean;
            match label {
                // storm_clouds: blue-grey sky
                5 => assert!(b > r + 10.0, "{split} {p}: storm clouds mean {mean:?}"),
                // orange_petals / yellow_petals: warm
                2 | 7 => assert!(r > b + 60.0, "{split} {p}: petals mean {mean:?}"),
                // leaf veins, green grass, wet leaf
                0 | 3 | 4 => assert!(g > r && g > b, "{split} {p}: green mean {mean:?}"),
                _ => {}
            }
        }
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let e = mini::generate("cifar", root.path(), 0, 10, 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown mini task `cifar`") && e.contains("clevr_count"),
        "{e}"
    );
    let e = mini::generate("fashion10", root.path(), 0, 5000, 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n_train = 5000") && e.contains("1200"), "{e}");
    let e = mini::generate("fashion10", root.path(), 0, 10, 1001)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n_test = 1001") && e.contains("1000"), "{e}");
    let e = mini::generate("clevr_count", root.path(), 0, 0, 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n_train must be at least 1"), "{e}");
    mini::generate("clevr_count", root.path(), 0, 5, 5).unwrap();
    let e = mini::generate("clevr_count", root.path(), 0, 5, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert!(mini::class_names("nope").is_err());
}
