//! The path rule through the real binary (docs/pipeline-dsl.md, "Paths"): relative paths in a
//! pipeline, built from params, `--set` values and `..`, resolve against the working
//! directory; entries store absolute roots; the shipped `pipelines/vtab.yaml` reads a
//! `vtab-1k/` folder in the working directory; symlinked dataset folders are hashed by what
//! they point to.
use crate::stages_support::*;
use std::path::Path;

/// `idat-pipe ARGS` run in `cwd`, cache `cache` (absolute), no `--set` of the workspace.
fn cli(cwd: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--cache-dir".into(), cache.display().to_string()]);
    bin(cwd, &a).output().unwrap()
}

fn run_paths(cwd: &Path, cache: &Path, root: &str, weights: &str) -> std::process::Output {
    let runs = cache.with_extension("runs");
    cli(
        cwd,
        cache,
        &[
            "run",
            &pipeline("paths.yaml"),
            "-q",
            "--jobs",
            "1",
            "--runs-dir",
            &runs.display().to_string(),
            "--set",
            &format!("params.root={root}"),
            "--set",
            &format!("params.weights={weights}"),
        ],
    )
}

/// `paths.yaml` with its own relative defaults, run in the workspace.
fn run_from_workspace(w: &Work, cache: &Path) -> std::process::Output {
    run_paths(w.path(), cache, "vtab-1k", "student.safetensors")
}

fn dataset_root(cache: &Path) -> String {
    let e = entries(cache)
        .into_iter()
        .find(|e| e.join("dataset.json").is_file())
        .expect("a dataset entry");
    read_json(&e.join("dataset.json"))["root"]
        .as_str()
        .unwrap()
        .to_string()
}

fn plan(cwd: &Path, cache: &Path, sets: &[String]) -> String {
    let mut args = vec!["plan".to_string(), pipeline("paths.yaml")];
    for s in sets {
        args.extend(["--set".into(), s.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&cli(cwd, cache, &args)).0
}

#[test]
fn relative_paths_resolve_against_the_working_directory() {
    let w = Work::new(&[("eurosat", 10)]);
    let cache = w.path().join("cache");
    // The pipeline's own defaults (`vtab-1k`, `student.safetensors`) are relative: run from
    // the workspace, the pipeline file lying elsewhere.
    ok(&run_from_workspace(&w, &cache));
    assert_eq!(
        dataset_root(&cache),
        w.root().display().to_string(),
        "the entry stores the absolute, normalised root"
    );
    let decoded = w.entries_with("cache", "test.safetensors");
    assert_eq!(
        decoded.len(),
        1,
        "decode read the images from the stored root"
    );
    let info = read_json(&decoded[0].join("decoded.json"));
    assert_eq!(info["task"], "eurosat", "{info}");

    // The same files reached from a sub-folder with `..`, and as `./x/../` spellings: the
    // same absolute paths, so the same keys: nothing runs.
    let sub = w.path().join("sub dir");
    std::fs::create_dir_all(&sub).unwrap();
    let sets = [
        "params.root=../vtab-1k".to_string(),
        "params.weights=./x/../../student.safetensors".to_string(),
    ];
    let p = plan(&sub, &cache, &sets);
    assert!(p.contains("3 cached, 0 will run"), "{p}");
    ok(&run_paths(
        &sub,
        &cache,
        "../vtab-1k",
        "../student.safetensors",
    ));
    assert_eq!(dataset_root(&cache), w.root().display().to_string());

    // `.` (the folder above `vtab-1k/`, which also holds the cache and the run records):
    // only the task folder is hashed, so a second plan finds everything cached.
    let dot = w.path().join("cache-dot");
    ok(&run_paths(w.path(), &dot, ".", "student.safetensors"));
    let p = plan(
        w.path(),
        &dot,
        &[
            "params.root=.".into(),
            "params.weights=student.safetensors".into(),
        ],
    );
    assert!(p.contains("3 cached, 0 will run"), "{p}");

    // From another folder the same relative text names another (missing) folder: the
    // error names the absolute path it looked for.
    let o = run_paths(&sub, &cache, "vtab-1k", "../student.safetensors");
    let err = failed(&o);
    let want = sub.join("vtab-1k").display().to_string();
    assert!(err.contains(&want), "error names {want}:\n{err}");
}

#[test]
fn a_home_path_of_another_user_is_an_error_at_its_position() {
    let w = Work::new(&[]);
    let o = cli(
        w.path(),
        &w.path().join("c"),
        &[
            "validate",
            &pipeline("paths.yaml"),
            "--set",
            "params.root=~bob/vtab-1k",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(
        err.contains("stages.data.with.source.path") && err.contains("only `~` and `~/...`"),
        "{err}"
    );
    assert!(
        err.contains("paths.yaml:14:"),
        "position of the field: {err}"
    );
}

#[test]
fn shipped_vtab_pipeline_reads_vtab_1k_in_the_working_directory() {
    // `idat-pipe run pipelines/vtab.yaml` with a `vtab-1k/` folder where the command runs:
    // its dataset and decode stages, through the same exec-stage every executor runs (the
    // backbones come from the hub, which tests never reach).
    let w = Work::new(&[("dtd", 47)]);
    let vtab = shipped("vtab.yaml");
    let cache = w.path().join(".idat");
    // One instance of the shipped pipeline, restricted to the task the workspace has.
    let exec = |instance: &str, extra: &[&str]| {
        let mut args = vec!["exec-stage", &vtab, "--instance", instance];
        args.extend(["--set", "params.tasks=[dtd]"]);
        for e in extra {
            args.extend(["--set", e]);
        }
        ok(&cli(w.path(), &cache, &args));
    };
    exec("data", &[]);
    assert_eq!(dataset_root(&cache), w.root().display().to_string());
    exec("decode[task=dtd]", &["stages.decode.with.splits=[test]"]);
    let decoded = entries(&cache)
        .into_iter()
        .filter(|e| e.join("test.safetensors").is_file())
        .count();
    assert_eq!(decoded, 1);
}

#[cfg(unix)]
#[test]
fn a_symlinked_images_folder_is_hashed_by_its_content() {
    let w = Work::new(&[("eurosat", 10)]);
    // Move `images/` to "another disk" and link it back, as users do.
    let disk = w.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let task = w.root().join("eurosat");
    std::fs::rename(task.join("images"), disk.join("images")).unwrap();
    std::os::unix::fs::symlink(disk.join("images"), task.join("images")).unwrap();
    let cache = w.path().join("cache");
    ok(&run_from_workspace(&w, &cache));
    let sets = ["params.root=vtab-1k".to_string()];
    assert!(plan(w.path(), &cache, &sets).contains("3 cached, 0 will run"));

    // Replace one test image behind the link (another picture, same file name).
    let img = disk.join(image_rel("test", 1));
    image::RgbImage::from_pixel(SIDE, SIDE, image::Rgb([1, 2, 3]))
        .save(&img)
        .unwrap();
    let f = std::fs::File::options().write(true).open(&img).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(7_000_000))
        .unwrap();
    let p = plan(w.path(), &cache, &sets);
    assert!(
        p.contains("will run  data: external input changed"),
        "a changed image behind a link reruns the dataset stage:\n{p}"
    );

    // A dangling link in the dataset: the error names the link.
    std::os::unix::fs::symlink(w.path().join("gone.png"), task.join("extra.png")).unwrap();
    let o = cli(w.path(), &cache, &["plan", &pipeline("paths.yaml")]);
    let (out, err) = text(&o);
    let all = format!("{out}{err}");
    assert!(
        all.contains("dangling symlink") && all.contains("extra.png"),
        "{all}"
    );
}

#[test]
fn command_line_paths_expand_the_home_folder_and_never_create_a_tilde_folder() {
    // `--cache-dir=~/x` reaches the program unexpanded (the shell expands `~` only at the
    // start of a word), as does `IDAT_CACHE_DIR='~/x'`.
    let w = Work::new(&[]);
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = bin(
            w.path(),
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        c.env("HOME", &home);
        if let Some(v) = env {
            c.env("IDAT_CACHE_DIR", v);
        }
        c.output().unwrap()
    };
    let (out, _) = ok(&run(&["status", "--cache-dir=~/flag-cache"], None));
    assert!(
        out.contains(&home.join("flag-cache").display().to_string()),
        "{out}"
    );
    let (out, _) = ok(&run(&["status"], Some("~/env-cache")));
    assert!(
        out.contains(&home.join("env-cache").display().to_string()),
        "{out}"
    );
    let o = run(
        &[
            "run",
            &pipeline("paths.yaml"),
            "-q",
            "--cache-dir=~/c",
            "--runs-dir=~/runs",
            "--set",
            "params.root=~/nowhere",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(
        !w.path().join("~").exists(),
        "no folder named `~` in the working directory"
    );
    assert!(home.join("runs").is_dir() || home.join("c").is_dir());
    let (_, err) = text(&run(&["status", "--cache-dir=~bob/c"], None));
    assert!(err.contains("only `~` and `~/...`"), "{err}");
}
