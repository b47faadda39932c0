//! One's own dataset: `dataset/imagefolder` (torchvision layout, few-shot sampling, class
//! names) and custom NOAH-layout tasks in `dataset/vtab1k`, through the real binary, following
//! docs/own-dataset.md command by command; plus the reader's errors on bad trees.
use crate::stages_support::*;
use idat_pipe::data::imagefolder::{
    find_imagefolder_root, read_imagefolder, sample_counts, ImageFolderOptions, SampleMethod,
};
use std::path::Path;

/// Class folders of the generated ImageFolder tree and their train / test image counts.
const CLASSES: [(&str, usize, usize); 3] = [("cat", 20, 6), ("dog", 14, 6), ("emu", 8, 6)];

/// A learnable 12x12 image of class `c` (colour by class, a little noise), its first two
/// pixels encoding `i` so that no two generated images are alike.
fn image(c: usize, i: usize) -> image::RgbImage {
    let base = [
        (c * 90 % 256) as u8,
        (c * 37 % 256) as u8,
        (200 - c * 60) as u8,
    ];
    image::RgbImage::from_fn(SIDE, SIDE, |x, y| match (x, y) {
        (0, 0) => image::Rgb([(i % 256) as u8, (i / 256) as u8, 0]),
        _ => {
            let noise = ((i as u32 * 13 + x * 7 + y * 3) % 23) as u8;
            image::Rgb(base.map(|b| b.wrapping_add(noise)))
        }
    })
}

/// Writes `<root>/{train,test}/<class>/<i>.{png,jpg}` (every fourth a JPEG), one image of
/// `dog` in a nested folder, and a `notes.txt` that must be skipped.
fn write_imagefolder(root: &Path) {
    for (c, (name, n_train, n_test)) in CLASSES.iter().enumerate() {
        for (split, n, offset) in [("train", *n_train, 0), ("test", *n_test, 1000)] {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let ext = if i % 4 == 0 { "jpg" } else { "png" };
                image(c, i + offset)
                    .save(dir.join(format!("{i:03}.{ext}")))
                    .unwrap();
            }
        }
    }
    let nested = root.join("train/dog/more");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::rename(root.join("train/dog/013.png"), nested.join("013.png")).unwrap();
    std::fs::write(root.join("train/cat/notes.txt"), "not an image").unwrap();
    write_os_junk(root);
}

/// The first bytes of a macOS AppleDouble sidecar (`._<name>`): every one alike.
const APPLEDOUBLE: &[u8] = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02";

/// What Jupyter, macOS, Windows and a Synology NAS leave in a copied folder, never classes
/// or images: 6 entries under `train/` (`.DS_Store`, `.ipynb_checkpoints/` holding an image,
/// `cat/.DS_Store`, `cat/._000.png`, `dog/._001.png`, `emu/@eaDir/` holding a JPEG
/// thumbnail), 3 under `test/` (`Thumbs.db`, `dog/desktop.ini`, `emu/._000.png`), and a
/// `__MACOSX/` beside them.
fn write_os_junk(root: &Path) {
    let ckpt = root.join("train/.ipynb_checkpoints");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::copy(
        root.join("train/cat/001.png"),
        ckpt.join("001-checkpoint.png"),
    )
    .unwrap();
    let thumbs = root.join("train/emu/@eaDir/000.jpg");
    std::fs::create_dir_all(&thumbs).unwrap();
    image(2, 0)
        .save(thumbs.join("SYNOPHOTO_THUMB_S.jpg"))
        .unwrap();
    for f in [
        "train/.DS_Store",
        "train/cat/.DS_Store",
        "test/Thumbs.db",
        "test/dog/desktop.ini",
    ] {
        std::fs::write(root.join(f), b"\x00\x00\x00\x01Bud1").unwrap();
    }
    for f in [
        "train/cat/._000.png",
        "train/dog/._001.png",
        "test/emu/._000.png",
    ] {
        std::fs::write(root.join(f), APPLEDOUBLE).unwrap();
    }
    let mac = root.join("__MACOSX/train/cat");
    std::fs::create_dir_all(&mac).unwrap();
    std::fs::write(mac.join("._000.png"), APPLEDOUBLE).unwrap();
}

/// The `--set`s of the small CPU run in docs/own-dataset.md.
const SMALL: [&str; 12] = [
    "params.name=toys",
    "params.n_train=30",
    "params.img=16",
    "params.epochs=2",
    "params.cooldown=0",
    "params.warmup=1",
    "params.lr=0.01",
    "params.batch=10",
    "params.student_arch={img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 32, depth: 2, num_heads: 2}",
    "params.teacher_arch={img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 16, depth: 2, num_heads: 2}",
    "params.student_weights={from: random, seed: 1}",
    "params.teacher_weights={from: random, seed: 2}",
];

fn cmd(dir: &Path, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    bin(dir, &args).output().unwrap()
}

/// `.idat/entries/<key>` of instance `id` in the last run record under `<dir>/runs`
/// (the tutorial's `grep '^id,' runs/*/trace.csv`).
fn entry_of(dir: &Path, id: &str) -> std::path::PathBuf {
    let run = sorted_dir(&dir.join("runs")).pop().expect("a run record");
    let trace = std::fs::read_to_string(run.join("trace.csv")).unwrap();
    let key = trace
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{id},")))
        .unwrap_or_else(|| panic!("no `{id}` in trace.csv:\n{trace}"))
        .split(',')
        .next()
        .unwrap()
        .to_string();
    dir.join(".idat/entries").join(key)
}

#[test]
fn imagefolder_tutorial_runs_to_a_report_with_class_names() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write_imagefolder(&dir.join("my-images"));
    let pipe = shipped("own-imagefolder.yaml");
    let with_sets = |first: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = first.iter().map(|s| s.to_string()).collect();
        for s in SMALL {
            a.push("--set".into());
            a.push(s.into());
        }
        a
    };
    ok(&cmd(
        dir,
        &[
            "validate",
            &pipe,
            "--set",
            "params.images=my-images",
            "--set",
            "params.name=toys",
        ],
    ));
    ok(&bin(dir, &with_sets(&["validate", &pipe])).output().unwrap());
    ok(&bin(dir, &with_sets(&["run", &pipe, "-q"]))
        .output()
        .unwrap());
    // One warning per split folder that held hidden or OS entries, in the stage's log.
    let run = sorted_dir(&dir.join("runs")).pop().expect("a run record");
    let log_file = sorted_dir(&run.join("logs"))
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data-")
        })
        .expect("the data stage's log");
    let log = std::fs::read_to_string(log_file).unwrap();
    for w in [
        "warning: skipped 6 hidden or OS entries under train/ (.DS_Store, .ipynb_checkpoints, \
         cat/.DS_Store, ...)",
        "warning: skipped 3 hidden or OS entries under test/ (Thumbs.db, dog/desktop.ini, \
         emu/._000.png)",
    ] {
        assert_eq!(log.matches(w).count(), 1, "`{w}` once in:\n{log}");
    }

    // dataset.json: classes are the sorted folder names; 30 drawn, balanced: emu has only
    // 8, the other two share the rest; the nested image counts, notes.txt is skipped.
    let m = read_json(&entry_of(dir, "data").join("dataset.json"));
    let t = &m["tasks"][0];
    assert_eq!(t["name"], "toys");
    assert_eq!(t["group"], "natural");
    assert_eq!(t["num_classes"], 3);
    assert_eq!(t["class_names"], serde_json::json!(["cat", "dog", "emu"]));
    assert_eq!(t["dir"], ".");
    let r = &t["imagefolder"];
    assert_eq!(
        r["sampling"]["per_class"],
        serde_json::json!({"cat": 11, "dog": 11, "emu": 8})
    );
    assert_eq!(r["sampling"]["from_images"], 42);
    assert_eq!(r["sampling"]["method"], "balanced");
    assert_eq!(r["sampling"]["seed"], 0);
    assert_eq!(r["skipped_files"], 1);
    assert_eq!(
        r["skipped_examples"],
        serde_json::json!(["train/cat/notes.txt"])
    );
    // Hidden and OS entries: never classes or images, counted per split folder, no
    // identical-content warning for the alike AppleDouble sidecars.
    assert_eq!(r["hidden"]["train"]["count"], 6);
    assert_eq!(
        r["hidden"]["train"]["examples"],
        serde_json::json!([".DS_Store", ".ipynb_checkpoints", "cat/.DS_Store"])
    );
    assert_eq!(r["hidden"]["test"]["count"], 3);
    assert_eq!(t["checks"]["identical_content"]["groups"], 0);
    assert_eq!(
        r["per_class"]["test"],
        serde_json::json!({"cat": 6, "dog": 6, "emu": 6})
    );
    assert_eq!(t["splits"]["train800val200"]["count"], 30);
    assert_eq!(t["splits"]["train800val200"]["list_file"], "train");
    assert_eq!(t["splits"]["test"]["count"], 18);
    let train = t["splits"]["train800val200"]["images"].as_array().unwrap();
    assert!(train
        .iter()
        .all(|e| e["path"].as_str().unwrap().starts_with("train/")));
    let emu: Vec<&serde_json::Value> = train.iter().filter(|e| e["label"] == 2).collect();
    assert_eq!(emu.len(), 8, "every emu image is drawn");

    // decoded.json and eval.json carry the class names; both methods were evaluated on
    // all 18 test images.
    let dec = read_json(&entry_of(dir, "decode").join("decoded.json"));
    assert_eq!(dec["class_names"], serde_json::json!(["cat", "dog", "emu"]));
    assert_eq!(dec["task"], "toys");
    for (id, label) in [("eval_at", "at"), ("eval_idat", "idat-mse")] {
        let e = read_json(&entry_of(dir, id).join("eval.json"));
        assert_eq!(e["label"], label);
        assert_eq!(e["task"], "toys");
        assert_eq!(e["images"], 18);
        assert_eq!(e["class_names"], serde_json::json!(["cat", "dog", "emu"]));
        let top1 = e["top1_final"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&top1), "{e}");
    }

    // The report compares both methods on the task.
    let rep = entry_of(dir, "report");
    let summary = std::fs::read_to_string(rep.join("summary.txt")).unwrap();
    for w in ["AT vs iDAT on toys", "toys", "at", "idat-mse"] {
        assert!(summary.contains(w), "summary lacks {w}:\n{summary}");
    }
    assert!(rep.join("report.md").is_file());
    assert!(rep.join("idat-mse-vs-at").is_dir());

    // The adapter statistics of student and teacher.
    let stats = entry_of(dir, "stats");
    assert!(stats.join("adapter-stats.md").is_file());
    let models = read_json(&stats.join("models.json"));
    assert_eq!(
        models,
        serde_json::json!(["dim16-depth2-heads2", "dim32-depth2-heads2"])
    );

    // infer with the trained student prints and writes the class names.
    let student = entry_of(dir, "student");
    let at = entry_of(dir, "at");
    let model = student.join("model.json").display().to_string();
    let weights = student.join("backbone.safetensors").display().to_string();
    let adapter = at.join("student.safetensors").display().to_string();
    let o = cmd(
        dir,
        &[
            "infer",
            "--model",
            &model,
            "--weights",
            &weights,
            "--adapter",
            &adapter,
            "--images",
            "my-images/test/emu",
            "--out",
            "predictions.csv",
        ],
    );
    let (out, err) = ok(&o);
    assert!(
        err.contains("skipped 1 hidden or OS entry under my-images/test/emu/ (._000.png)"),
        "{err}"
    );
    let csv = std::fs::read_to_string(dir.join("predictions.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "source,label,class_name,logit_0,logit_1,logit_2"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6);
    let names = ["cat", "dog", "emu"];
    for r in &rows {
        let label: usize = r[1].parse().unwrap();
        assert_eq!(r[2], names[label], "{r:?}");
        let printed = format!("{}\t{}\t{}", r[0], r[1], r[2]);
        assert!(out.contains(&printed), "stdout lacks `{printed}`:\n{out}");
    }
}

/// A NOAH-layout task of one's own: `<root>/<name>/{train800val200,test}.txt`.
fn write_noah(root: &Path, name: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut lists = [String::new(), String::new()];
    for i in 0..24 {
        let label = i % 3;
        let rel = format!("images/{i:03}.png");
        image(label, i).save(dir.join(&rel)).unwrap();
        lists[usize::from(i >= 18)].push_str(&format!("{rel} {label}\n"));
    }
    std::fs::write(dir.join("train800val200.txt"), &lists[0]).unwrap();
    std::fs::write(dir.join("test.txt"), &lists[1]).unwrap();
}

const NOAH_PIPE: &str = "version: 1
name: own-noah
params:
  root: vtab-1k
  tasks:
    - {name: fashion_own, num_classes: 3, class_names: [top, trouser, bag]}
stages:
  data:
    uses: dataset/vtab1k
    with:
      source: {kind: local, path: \"${params.root}\"}
      tasks: \"${params.tasks}\"
  decode:
    uses: data/decode
    needs: [data]
    with: {dataset: data, task: fashion_own, size: 16}
";

#[test]
fn vtab1k_takes_a_custom_task_with_class_count_and_names() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write_noah(&dir.join("vtab-1k"), "fashion_own");
    std::fs::write(dir.join("p.yaml"), NOAH_PIPE).unwrap();
    ok(&cmd(dir, &["validate", "p.yaml"]));
    ok(&cmd(dir, &["run", "p.yaml", "-q"]));
    let m = read_json(&entry_of(dir, "data").join("dataset.json"));
    let t = &m["tasks"][0];
    assert_eq!(t["name"], "fashion_own");
    assert_eq!(t["num_classes"], 3);
    assert_eq!(t["group"], "natural");
    assert_eq!(
        t["class_names"],
        serde_json::json!(["top", "trouser", "bag"])
    );
    assert_eq!(t["splits"]["train800val200"]["count"], 18);
    assert_eq!(t["splits"]["test"]["count"], 6);
    let dec = read_json(&entry_of(dir, "decode").join("decoded.json"));
    assert_eq!(
        dec["class_names"],
        serde_json::json!(["top", "trouser", "bag"])
    );

    // Errors at `validate`, at the offending entry's line.
    let bad = |tasks: &str| -> String {
        let o = cmd(
            dir,
            &[
                "validate",
                "p.yaml",
                "--set",
                &format!("params.tasks={tasks}"),
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
        text(&o).1
    };
    let q = NOAH_PIPE.replace(
        "      tasks: \"${params.tasks}\"",
        "      tasks:\n        - dtd\n        - fashion_own",
    );
    std::fs::write(dir.join("q.yaml"), q).unwrap();
    let o = cmd(dir, &["validate", "q.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let err = text(&o).1;
    assert!(
        err.contains(
            "q.yaml:14:11: at `stages.data.with.tasks.1`: unknown VTAB-1K task `fashion_own`"
        ),
        "{err}"
    );
    assert!(err.contains("{name: fashion_own, num_classes: N}"), "{err}");

    let e = bad("[{name: shoes, num_classes: 3, class_names: [a, b]}]");
    assert!(
        e.contains("at `stages.data.with.tasks.0`")
            && e.contains("2 class names given for 3 classes"),
        "{e}"
    );
    let e = bad("[{name: svhn, num_classes: 10}]");
    assert!(e.contains("is the VTAB-1K task `svhn`"), "{e}");
    let e = bad("[{name: shoes, num_classes: 3, group: weird}]");
    assert!(e.contains("group `weird`: expected one of natural"), "{e}");
    let e = bad("[cifar100, cifar]");
    assert!(
        e.contains("at `stages.data.with.tasks.1`") && e.contains("task `cifar` is listed twice"),
        "{e}"
    );
    let e = bad("[{name: ../up, num_classes: 3}]");
    assert!(e.contains("not a plain folder name"), "{e}");

    // The same check on every matrix cell, naming the cell.
    let m = "version: 1
name: m
params:
  names: [toys, pets]
stages:
  data:
    uses: dataset/imagefolder
    matrix: {n: \"${params.names}\"}
    with:
      source: {kind: local, path: imgs}
      name: \"${matrix.n}\"
";
    std::fs::write(dir.join("m.yaml"), m).unwrap();
    let o = cmd(dir, &["validate", "m.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let e = text(&o).1;
    assert!(
        e.contains("m.yaml:11:13: at `stages.data.with.name`: in `data[n=pets]`: task name `pets` is the VTAB-1K task `oxford_iiit_pet`"),
        "{e}"
    );
}

#[test]
fn sampling_counts_balanced_and_stratified() {
    use SampleMethod::*;
    assert_eq!(sample_counts(&[20, 14, 8], 30, Balanced), [11, 11, 8]);
    assert_eq!(sample_counts(&[20, 14, 8], 31, Balanced), [12, 11, 8]);
    assert_eq!(
        sample_counts(&[100, 100, 100], 1000 / 4, Balanced),
        [84, 83, 83]
    );
    assert_eq!(sample_counts(&[20, 14, 8], 42, Balanced), [20, 14, 8]);
    // 21 * 20/42 = 10, 21 * 14/42 = 7, 21 * 8/42 = 4 (remainder 0): exact.
    assert_eq!(sample_counts(&[20, 14, 8], 21, Stratified), [10, 7, 4]);
    // 10 * (20, 14, 8) / 42 = 4.76, 3.33, 1.90 -> 4, 3, 1 + largest remainders (0.90, 0.76).
    assert_eq!(sample_counts(&[20, 14, 8], 10, Stratified), [5, 3, 2]);
    assert_eq!(
        sample_counts(&[500, 300, 200], 1000, Stratified),
        [500, 300, 200]
    );
}

fn opts(n_train: Option<usize>, method: SampleMethod, seed: u64) -> ImageFolderOptions {
    ImageFolderOptions {
        name: "toys".into(),
        group: "natural".into(),
        n_train,
        method,
        seed,
    }
}

#[test]
fn sampling_is_seeded_and_recorded() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("imgs");
    write_imagefolder(&root);
    let paths = |seed: u64, method| -> Vec<String> {
        let t = read_imagefolder(&root, &opts(Some(12), method, seed)).unwrap();
        t.splits["train800val200"]
            .images
            .iter()
            .map(|e| e.path.clone())
            .collect()
    };
    let a = paths(7, SampleMethod::Stratified);
    assert_eq!(
        a,
        paths(7, SampleMethod::Stratified),
        "same seed, same draw"
    );
    assert_ne!(
        a,
        paths(8, SampleMethod::Stratified),
        "another seed, another draw"
    );
    let t = read_imagefolder(&root, &opts(Some(12), SampleMethod::Stratified, 7)).unwrap();
    let s = t.imagefolder.unwrap().sampling.unwrap();
    // 12 * (20, 14, 8) / 42 = 5.71, 4, 2.29 -> 5, 4, 2 + the largest remainder (cat).
    assert_eq!(s.per_class.values().copied().collect::<Vec<_>>(), [6, 4, 2]);
    // Without n_train every training image is kept, in sorted order, 1-based positions.
    let t = read_imagefolder(&root, &opts(None, SampleMethod::Balanced, 0)).unwrap();
    let train = &t.splits["train800val200"];
    assert_eq!(train.count, 42);
    assert_eq!(train.images[0].path, "train/cat/000.jpg");
    assert_eq!(train.images[0].line, 1);
    assert!(t.imagefolder.unwrap().sampling.is_none());
}

#[test]
fn bad_imagefolder_trees_fail_naming_the_file() {
    let err = |root: &Path, o: ImageFolderOptions| -> String {
        format!(
            "{:#}",
            read_imagefolder(root, &o).expect_err("expected an error")
        )
    };
    let fresh = || {
        let d = tempfile::tempdir().unwrap();
        write_imagefolder(&d.path().join("imgs"));
        d
    };
    let o = || opts(None, SampleMethod::Balanced, 0);

    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::remove_dir_all(root.join("test")).unwrap();
    assert!(
        err(&root, o()).contains("no `test` folder"),
        "{}",
        err(&root, o())
    );

    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::create_dir_all(root.join("test/yak")).unwrap();
    let e = err(&root, o());
    assert!(
        e.contains("class folder `yak` of split `test` is not in `train`"),
        "{e}"
    );

    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::write(root.join("train/dog/x.bmp"), b"BM").unwrap();
    let e = err(&root, o());
    assert!(
        e.contains("train/dog/x.bmp") && e.contains("expected JPEG or PNG"),
        "{e}"
    );

    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::create_dir_all(root.join("train/yak")).unwrap();
    let e = err(&root, o());
    assert!(
        e.contains("train/yak: class `yak` of split `train` is empty"),
        "{e}"
    );
    // A class folder with only AppleDouble sidecars in it: empty, and said so.
    std::fs::write(root.join("train/yak/._a.png"), APPLEDOUBLE).unwrap();
    let e = err(&root, o());
    assert!(
        e.contains("class `yak` of split `train` is empty")
            && e.contains("it holds only 1 hidden or OS entry"),
        "{e}"
    );

    // An empty class folder in `test` (the class would never be evaluated).
    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::create_dir_all(root.join("test/cat")).unwrap();
    for f in std::fs::read_dir(root.join("test/cat")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let e = err(&root, o());
    assert!(
        e.contains("test/cat: class `cat` of split `test` is empty"),
        "{e}"
    );
    // ... and in `val`.
    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::create_dir_all(root.join("val/dog")).unwrap();
    let e = err(&root, o());
    assert!(
        e.contains("val/dog: class `dog` of split `val` is empty"),
        "{e}"
    );

    let d = fresh();
    let root = d.path().join("imgs");
    let e = err(&root, opts(Some(43), SampleMethod::Balanced, 0));
    assert!(e.contains("n_train 43: expected 1..=42"), "{e}");

    // An image that cannot be read (a dangling link) is named.
    let d = fresh();
    let root = d.path().join("imgs");
    std::os::unix::fs::symlink(root.join("nowhere.png"), root.join("test/emu/zz.png")).unwrap();
    let e = err(&root, o());
    assert!(
        e.contains("test/emu/zz.png") && e.contains("not a readable file"),
        "{e}"
    );

    // A class folder that is a link to another disk is followed; a link loop is an error.
    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::rename(root.join("train/emu"), d.path().join("emu-elsewhere")).unwrap();
    std::os::unix::fs::symlink(d.path().join("emu-elsewhere"), root.join("train/emu")).unwrap();
    let t = read_imagefolder(&root, &o()).unwrap();
    assert_eq!(t.class_names.as_deref().unwrap(), ["cat", "dog", "emu"]);
    assert_eq!(t.splits["train800val200"].count, 42);
    std::os::unix::fs::symlink(root.join("train/dog"), root.join("train/dog/loop")).unwrap();
    let e = err(&root, o());
    assert!(e.contains("nested deeper than 16 levels"), "{e}");

    // The same picture in test and train is found and recorded (as for NOAH tasks).
    let d = fresh();
    let root = d.path().join("imgs");
    std::fs::copy(
        root.join("train/cat/001.png"),
        root.join("test/cat/zzz.png"),
    )
    .unwrap();
    let t = read_imagefolder(&root, &o()).unwrap();
    let c = &t.checks.test_train_identical_content;
    assert_eq!((c.groups, c.files), (1, 2), "{c:?}");
    assert!(
        c.examples[0].iter().any(|x| x.contains("test/cat/zzz.png")),
        "{c:?}"
    );
}

#[test]
fn a_dataset_root_is_never_picked_silently_among_several() {
    // Two complete ImageFolder layouts at the same depth below the given root.
    let d = tempfile::tempdir().unwrap();
    write_imagefolder(&d.path().join("R/inner/zz"));
    assert_eq!(
        find_imagefolder_root(&d.path().join("R")).unwrap(),
        d.path().join("R/inner/zz")
    );
    write_imagefolder(&d.path().join("R/inner/aa"));
    let e = format!(
        "{:#}",
        find_imagefolder_root(&d.path().join("R")).unwrap_err()
    );
    assert!(
        e.contains("2 dataset roots at the same depth")
            && e.contains("inner/aa")
            && e.contains("inner/zz"),
        "{e}"
    );
    // A root with `train/` but no `test/` is the root (its missing `test` is reported), not
    // a complete layout below it.
    let q = d.path().join("Q");
    write_imagefolder(&q.join("sub"));
    std::fs::create_dir_all(q.join("train/cat")).unwrap();
    assert_eq!(find_imagefolder_root(&q).unwrap(), q);
    // The NOAH layout: two copies of the task one level down.
    let v = d.path().join("V");
    std::fs::create_dir_all(v.join("copy1/eurosat")).unwrap();
    std::fs::create_dir_all(v.join("copy2/eurosat")).unwrap();
    let e = format!(
        "{:#}",
        idat_pipe::data::prepare::find_root(&v, "eurosat").unwrap_err()
    );
    assert!(e.contains("copy1") && e.contains("copy2"), "{e}");
}

/// Classes are ordered as torchvision's `find_classes` orders them: Python's `sorted()` on
/// the folder names, i.e. by Unicode code point (digits before upper case before `_`
/// before lower case, `10` before `9`, accented letters after `z`). The expected order is
/// Python 3.11's `sorted()` of these names.
#[test]
fn classes_are_in_pythons_sorted_order_as_torchvision_numbers_them() {
    let names = [
        "Zebra", "apple", "Äpfel", "éclair", "10", "9", "b_c", "b-c", "b c", "B", "a.b", "_x",
        "~t", "Ω", "z",
    ];
    let python_sorted = [
        "10", "9", "B", "Zebra", "_x", "a.b", "apple", "b c", "b-c", "b_c", "z", "~t", "Äpfel",
        "éclair", "Ω",
    ];
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("imgs");
    for (i, n) in names.iter().enumerate() {
        for split in ["train", "test"] {
            let dir = root.join(split).join(n);
            std::fs::create_dir_all(&dir).unwrap();
            image(i % 3, i + if split == "test" { 500 } else { 0 })
                .save(dir.join("0.png"))
                .unwrap();
        }
    }
    let t = read_imagefolder(&root, &opts(None, SampleMethod::Balanced, 0)).unwrap();
    assert_eq!(t.class_names.as_deref().unwrap(), python_sorted);
    // Label i is class_names[i].
    let by_path: std::collections::BTreeMap<&str, u32> = t.splits["test"]
        .images
        .iter()
        .map(|e| (e.path.as_str(), e.label))
        .collect();
    for (label, n) in python_sorted.iter().enumerate() {
        assert_eq!(
            by_path[format!("test/{n}/0.png").as_str()],
            label as u32,
            "{n}"
        );
    }
}

/// Hidden and OS entries never change what is read: the same classes, images, labels and
/// few-shot draw as the same tree without them; one record per split folder.
#[test]
fn hidden_and_os_entries_change_nothing_but_the_count_of_skipped_entries() {
    let d = tempfile::tempdir().unwrap();
    let with = d.path().join("with");
    write_imagefolder(&with);
    let without = d.path().join("without");
    write_imagefolder(&without);
    for junk in ["train/.ipynb_checkpoints", "train/emu/@eaDir", "__MACOSX"] {
        std::fs::remove_dir_all(without.join(junk)).unwrap();
    }
    for junk in [
        "train/.DS_Store",
        "train/cat/.DS_Store",
        "test/Thumbs.db",
        "test/dog/desktop.ini",
        "train/cat/._000.png",
        "train/dog/._001.png",
        "test/emu/._000.png",
    ] {
        std::fs::remove_file(without.join(junk)).unwrap();
    }
    for n_train in [None, Some(12)] {
        let a = read_imagefolder(&with, &opts(n_train, SampleMethod::Stratified, 7)).unwrap();
        let b = read_imagefolder(&without, &opts(n_train, SampleMethod::Stratified, 7)).unwrap();
        assert_eq!(a.class_names, b.class_names);
        assert_eq!(a.splits, b.splits, "n_train {n_train:?}");
        assert_eq!(a.checks, b.checks);
        let (ra, rb) = (a.imagefolder.unwrap(), b.imagefolder.unwrap());
        assert_eq!(ra.sampling, rb.sampling);
        assert_eq!(ra.per_class, rb.per_class);
        assert!(rb.hidden.is_empty() && rb.warnings().is_empty());
        assert_eq!(ra.hidden["train"].count, 6);
        assert_eq!(ra.hidden["test"].count, 3);
        assert_eq!(
            ra.warnings(),
            [
                "skipped 6 hidden or OS entries under train/ (.DS_Store, .ipynb_checkpoints, \
                 cat/.DS_Store, ...): dot-files and dot-folders, __MACOSX, Thumbs.db, \
                 desktop.ini and the like are never classes or images",
                "skipped 3 hidden or OS entries under test/ (Thumbs.db, dog/desktop.ini, \
                 emu/._000.png): dot-files and dot-folders, __MACOSX, Thumbs.db, desktop.ini \
                 and the like are never classes or images",
            ]
        );
    }
}

/// A hidden or OS folder beside the dataset (`__MACOSX/`, a `.snapshot/` copy) is not a
/// second dataset root.
#[test]
fn hidden_folders_are_not_searched_for_the_dataset_root() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("R");
    write_imagefolder(&r.join("imgs"));
    write_imagefolder(&r.join(".snapshot"));
    write_imagefolder(&r.join("__MACOSX"));
    assert_eq!(find_imagefolder_root(&r).unwrap(), r.join("imgs"));
    std::fs::create_dir_all(r.join("v/eurosat")).unwrap();
    std::fs::create_dir_all(r.join(".Trash-1000/eurosat")).unwrap();
    assert_eq!(
        idat_pipe::data::prepare::find_root(&r, "eurosat").unwrap(),
        r.join("v")
    );
}
