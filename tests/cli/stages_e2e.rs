//! End-to-end tests of the ML stage kinds through the real `idat-pipe` binary: the whole
//! chain on a tiny VTAB-layout dataset, resume after `kill -9`, bad data, a diverging loss,
//! the reduced demo and validation of the shipped pipelines.
use crate::stages_support::*;
use idat_pipe::nn::checkpoint::load_tensors;
use std::path::Path;
use std::time::{Duration, Instant};

fn assert_pct(v: &serde_json::Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!((0.0..=100.0).contains(&x), "{what} = {x} not in 0..100");
    x
}

#[test]
fn vtab_chain_runs_through_the_binary() {
    let w = Work::new(&[("dtd", 47), ("eurosat", 10)]);
    ok(&w.run(&pipeline("stages_vtab.yaml"), "c", &[]));

    // eval: one per (method, task), sane numbers on every test image.
    let evals = w.entries_with("c", "eval.json");
    assert_eq!(evals.len(), 4, "{evals:?}");
    let mut seen = Vec::new();
    for e in &evals {
        let r = read_json(&e.join("eval.json"));
        for k in ["top1_final", "top5_final", "top1_best_epoch"] {
            assert_pct(&r[k], k);
        }
        assert!(r["top5_final"].as_f64() >= r["top1_final"].as_f64(), "{r}");
        assert_eq!(r["images"], N_TEST, "{r}");
        assert!(r["trainable_params"].as_u64().unwrap() > 0, "{r}");
        let label = r["label"].as_str().unwrap().to_string();
        if label == "idat-mse" {
            assert_pct(&r["teacher_top1_final"], "teacher_top1_final");
        } else {
            assert!(r["teacher_top1_final"].is_null(), "{r}");
        }
        let metrics = std::fs::read_to_string(e.join("metrics.csv")).unwrap();
        assert_eq!(metrics.lines().count(), 3, "header + 2 epochs:\n{metrics}");
        seen.push((r["task"].as_str().unwrap().to_string(), label));
    }
    seen.sort();
    let want: Vec<(String, String)> = [
        ("dtd", "at"),
        ("dtd", "idat-mse"),
        ("eurosat", "at"),
        ("eurosat", "idat-mse"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want);

    // Training entries: both sizes in iDAT, the student only in AT.
    let trains = w.entries_with("c", "summary.json");
    assert_eq!(trains.len(), 4);
    assert_eq!(w.entries_with("c", "teacher.safetensors").len(), 2);

    // Adapter statistics on student + teacher of each task.
    let stats = w.entries_with("c", "adapter-stats.md");
    assert_eq!(stats.len(), 2, "{stats:?}");
    for s in &stats {
        for f in ["wasserstein.png", "kde.png", "summary.txt"] {
            assert!(s.join(f).is_file(), "{} lacks {f}", s.display());
        }
        let models = read_json(&s.join("models.json"));
        let models: Vec<&str> = models
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(
            models,
            ["dim16-depth2-heads2", "dim32-depth2-heads2"],
            "{models:?}"
        );
    }

    // The report: markdown, plots, a summary naming both methods and tasks.
    let reports = w.entries_with("c", "report.md");
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    let summary = std::fs::read_to_string(r.join("summary.txt")).unwrap();
    for word in ["stages e2e", "at", "idat-mse", "dtd", "eurosat"] {
        assert!(summary.contains(word), "summary lacks {word}:\n{summary}");
    }
    let md = std::fs::read_to_string(r.join("report.md")).unwrap();
    assert!(md.contains("dtd") && md.contains("eurosat"), "{md}");
    let pngs = walk_pngs(r);
    assert!(!pngs.is_empty(), "no PNG under {}", r.display());
    for p in &pngs {
        image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    assert!(r.join("idat-mse-vs-at").is_dir());

    // A second run reuses everything.
    let o = w.run(&pipeline("stages_vtab.yaml"), "c", &[]);
    ok(&o);
    assert_eq!(ran_in_last_run(w.path(), "c"), 0);

    // Early cutoff: the trainings recomputed (`--force` names only them) write the same
    // bytes (no wall-clock time in them: it is in the manifest), so eval, analysis and
    // report keep their keys and stay cached.
    let before: Vec<String> = trains.iter().map(|t| content_hash(t)).collect();
    for t in &trains {
        let m = read_json(&t.join("manifest.json"));
        assert!(m["info"]["train_seconds"].as_f64().unwrap() > 0.0, "{m}");
        assert_eq!(
            m["info"]["epoch_seconds"].as_array().unwrap().len(),
            2,
            "{m}"
        );
        assert!(m["info"]["resumed_from_epoch"].is_null(), "{m}");
        let s = std::fs::read_to_string(t.join("summary.json")).unwrap();
        assert!(!s.contains("seconds") && !s.contains("resumed"), "{s}");
        let h = std::fs::read_to_string(t.join("metrics.csv")).unwrap();
        assert!(!h.lines().next().unwrap().contains("seconds"), "{h}");
    }
    let o = w
        .run_cmd(&pipeline("stages_vtab.yaml"), "c", &[])
        .args(["--force", "at", "--force", "idat"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(
        ran_in_last_run(w.path(), "c"),
        4,
        "only the 4 forced trainings ran"
    );
    let after: Vec<String> = trains.iter().map(|t| content_hash(t)).collect();
    assert_eq!(before, after, "a recomputed training wrote other bytes");

    // On 2 threads instead of 1 (a Slurm task with another cpus-per-task): the same bytes.
    for instance in ["idat[task=dtd]", "at[task=eurosat]"] {
        let mut args: Vec<String> = [
            "exec-stage",
            &pipeline("stages_vtab.yaml"),
            "--cache-dir",
            &w.path().join("c").display().to_string(),
            "--instance",
            instance,
            "--force",
            "--threads",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for s in w.sets() {
            args.extend(["--set".to_string(), s]);
        }
        ok(&bin(w.path(), &args).output().unwrap());
    }
    let on_two: Vec<String> = trains.iter().map(|t| content_hash(t)).collect();
    assert_eq!(before, on_two, "2 threads wrote other bytes than 1");
}

/// The content hash in the manifest of the entry `dir`.
fn content_hash(dir: &Path) -> String {
    read_json(&dir.join("manifest.json"))["content_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

fn walk_pngs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for p in sorted_dir(dir) {
        if p.is_dir() {
            out.extend(walk_pngs(&p));
        } else if p.extension().is_some_and(|e| e == "png") {
            out.push(p);
        }
    }
    out
}

/// Instances with status `ran` in the trace of the latest run recorded for cache `cache`.
fn ran_in_last_run(work: &Path, cache: &str) -> usize {
    let run = sorted_dir(&work.join(format!("runs-{cache}")))
        .pop()
        .expect("a run record");
    let mut r = csv::Reader::from_path(run.join("trace.csv")).unwrap();
    let status = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "status")
        .unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert!(!rows.is_empty(), "empty trace in {}", run.display());
    rows.iter().filter(|x| &x[status] == "ran").count()
}

/// Epoch checkpoints in the cache's pending dirs.
fn pending_checkpoints(cache: &Path) -> Vec<std::path::PathBuf> {
    sorted_dir(&cache.join("pending"))
        .into_iter()
        .flat_map(|k| sorted_dir(&k.join("checkpoint")))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("epoch-") && n.ends_with(".safetensors")
        })
        .collect()
}

#[test]
fn idat_resumes_after_kill_9_with_identical_results() {
    let w = Work::new(&[("eurosat", 10)]);
    let file = pipeline("stages_resume.yaml");

    // Uninterrupted reference run in its own cache.
    ok(&w.run(&file, "ref", &[]));

    // Killed run: SIGKILL as soon as the first epoch checkpoint exists.
    let cache = w.path().join("killed");
    let mut child = w.run_cmd(&file, "killed", &[]).spawn().unwrap();
    let t0 = Instant::now();
    let ckpt = loop {
        if let Some(c) = pending_checkpoints(&cache).first() {
            break c.clone();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before any epoch checkpoint appeared"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        w.entries_with("killed", "summary.json").is_empty(),
        "the training finished before the kill ({} appeared); make it longer",
        ckpt.display()
    );
    assert!(
        !pending_checkpoints(&cache).is_empty(),
        "checkpoint gone after kill"
    );

    // `plan` says where the run will resume (epochs counted from 1, as the log does), for
    // the newest checkpoint the killed run left (`epoch-0002` holds 3 completed epochs).
    let newest = pending_checkpoints(&cache).pop().unwrap();
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    let index: usize = name["epoch-".len()..name.len() - ".safetensors".len()]
        .parse()
        .unwrap();
    let mut args = vec![
        "plan".to_string(),
        file.clone(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    for s in w.sets() {
        args.extend(["--set".to_string(), s]);
    }
    let (out, _) = ok(&bin(w.path(), &args).output().unwrap());
    assert!(
        out.contains(&format!(
            "will run  idat: resumes after epoch {}\n",
            index + 1
        )),
        "{out}"
    );
    ok(&w.run(&file, "killed", &[]));
    let logs = w.logs("killed");
    assert!(
        logs.contains(&format!("resuming after epoch {} of 7 from ", index + 1)),
        "{logs}"
    );
    // How the run went is in the manifest, not in a hashed file.
    let m = read_json(&w.entries_with("killed", "summary.json")[0].join("manifest.json"));
    assert_eq!(m["info"]["resumed_from_epoch"], index, "{m}");
    let trained: Vec<u64> = m["info"]["epoch_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_u64().unwrap())
        .collect();
    assert_eq!(trained, ((index as u64 + 2)..=7).collect::<Vec<_>>(), "{m}");
    assert!(
        pending_checkpoints(&cache).is_empty(),
        "checkpoint dir kept after commit"
    );

    let a = w.entries_with("ref", "eval.json");
    let b = w.entries_with("killed", "eval.json");
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(
        std::fs::read_to_string(a[0].join("eval.json")).unwrap(),
        std::fs::read_to_string(b[0].join("eval.json")).unwrap(),
        "eval.json differs after resume"
    );
    let ma = std::fs::read_to_string(a[0].join("metrics.csv")).unwrap();
    let mb = std::fs::read_to_string(b[0].join("metrics.csv")).unwrap();
    assert_eq!(ma.lines().count(), 1 + 7, "header + 6 + 1 epochs");
    assert_eq!(ma, mb, "metrics.csv differs after resume");
    // The whole training entry is the same, byte for byte (early cutoff: what depends on
    // it keeps its key), and its weights are equal tensor by tensor.
    let trains = (
        w.entries_with("ref", "summary.json"),
        w.entries_with("killed", "summary.json"),
    );
    let hash = |d: &std::path::Path| read_json(&d.join("manifest.json"))["content_hash"].clone();
    assert_eq!(
        hash(&trains.0[0]),
        hash(&trains.1[0]),
        "content differs after resume"
    );
    let ta = w.entries_with("ref", "student.safetensors");
    let tb = w.entries_with("killed", "student.safetensors");
    let dev = candle_core::Device::Cpu;
    let (wa, _) = load_tensors(&ta[0].join("student.safetensors"), &dev).unwrap();
    let (wb, _) = load_tensors(&tb[0].join("student.safetensors"), &dev).unwrap();
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (k, a) in &wa {
        let d = (a - &wb[k]).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} differs after resume");
    }
}

/// Runs `stages_data.yaml` on a broken copy of the dataset and returns stderr of the
/// failed run, after checking that no entry of `stage_file` was committed.
fn bad_data_run(w: &Work, cache: &str, stage_file: &str) -> String {
    let err = failed(&w.run(&pipeline("stages_data.yaml"), cache, &[]));
    assert!(
        w.entries_with(cache, stage_file).is_empty(),
        "an entry with {stage_file} was committed for the failed instance"
    );
    err
}

fn list_line(w: &Work, list: &str, line: usize) -> String {
    let t = std::fs::read_to_string(w.root().join("eurosat").join(list)).unwrap();
    t.lines().nth(line - 1).unwrap().to_string()
}

fn edit_list(w: &Work, list: &str, line: usize, new: &str) {
    let f = w.root().join("eurosat").join(list);
    let t = std::fs::read_to_string(&f).unwrap();
    let mut lines: Vec<String> = t.lines().map(String::from).collect();
    lines[line - 1] = new.to_string();
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
}

#[test]
fn bad_data_fails_precisely_and_commits_nothing() {
    // A missing image: the dataset stage names list file, line and image.
    let w = Work::new(&[("eurosat", 10)]);
    let rel = image_rel("train", 7);
    std::fs::remove_file(w.root().join("eurosat").join(&rel)).unwrap();
    let err = bad_data_run(&w, "missing", "dataset.json");
    assert!(
        err.contains("FAILED data")
            && err.contains("eurosat/train800.txt:8:")
            && err.contains(&rel)
            && err.contains("listed but not readable")
            && err.contains("expected an image file"),
        "{err}"
    );
    assert!(w.entries("missing").is_empty());

    // A label out of range.
    let w = Work::new(&[("eurosat", 10)]);
    let l = list_line(&w, "val200.txt", 3);
    let path = l.rsplit_once(' ').unwrap().0.to_string();
    edit_list(&w, "val200.txt", 3, &format!("{path} 10"));
    let err = bad_data_run(&w, "label", "dataset.json");
    assert!(
        err.contains("eurosat/val200.txt:3: label 10 out of range: expected 0..=9 (10 classes)"),
        "{err}"
    );
    assert!(w.entries("label").is_empty());

    // A malformed list line (no label).
    edit_list(&w, "val200.txt", 3, &path);
    let err = bad_data_run(&w, "malformed", "dataset.json");
    assert!(
        err.contains("eurosat/val200.txt:3: malformed list line")
            && err.contains("expected `<relative image path> <0-based label>`"),
        "{err}"
    );
    assert!(w.entries("malformed").is_empty());

    // A truncated JPEG: the dataset is fine, decoding fails naming list, line and image.
    let w = Work::new(&[("eurosat", 10)]);
    let rel = image_rel("test", 10);
    assert!(rel.ends_with(".jpg"));
    let jpg = w.root().join("eurosat").join(&rel);
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
    let err = bad_data_run(&w, "trunc", "decoded.json");
    assert!(
        err.contains("FAILED decode")
            && err.contains("eurosat/test.txt:11:")
            && err.contains(&rel)
            && err.contains("truncated JPEG"),
        "{err}"
    );
    // Only the dataset entry (and possibly the backbone) was committed.
    assert_eq!(w.entries_with("trunc", "dataset.json").len(), 1);

    // skip_bad_images: the same data decodes, the bad image skipped and counted.
    let o = w.run(
        &pipeline("stages_data.yaml"),
        "skip",
        &["params.skip_bad=true", "stages.at.with.optim.epochs=1"],
    );
    ok(&o);
    let dec = w.entries_with("skip", "decoded.json");
    assert_eq!(dec.len(), 1);
    let info = read_json(&dec[0].join("decoded.json"));
    assert_eq!(info["skipped"]["test"], 1, "{info}");
    assert_eq!(info["skipped"]["train800val200"], 0, "{info}");
    let logs = w.logs("skip");
    assert!(logs.contains("skipped") && logs.contains(&rel), "{logs}");
    let ev = w.entries_with("skip", "summary.json");
    assert_eq!(ev.len(), 1);
}

#[test]
fn diverging_loss_stops_naming_epoch_and_step() {
    let w = Work::new(&[("eurosat", 10)]);
    let err = failed(&w.run(&pipeline("stages_data.yaml"), "c", &["params.lr=1e30"]));
    assert!(err.contains("FAILED at"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("loss is"))
        .unwrap_or_else(|| panic!("no loss error in:\n{err}"));
    assert!(
        ["NaN", "inf"].iter().any(|k| line.contains(k)),
        "not a NaN/Inf message: {line}"
    );
    assert!(
        line.contains("at epoch 1 step ") && line.contains("Lower the learning rate"),
        "{line}"
    );
    assert!(w.entries_with("c", "summary.json").is_empty());
}

#[test]
fn reduced_demo_runs_and_reruns_nothing() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache").display().to_string();
    let runs = d.path().join("runs").display().to_string();
    let sets = [
        "params.tasks=[fashion10,textures]",
        "params.seeds=[1]",
        "params.n_train=200",
        "params.n_test=50",
        "params.img=16",
        "params.epochs=2",
        "params.cooldown=0",
        "params.warmup=1",
        "params.batch=50",
        "params.pretrain_epochs=1",
        "params.teacher_pretrain_epochs=1",
        "params.pretrain_n_train=300",
        "stages.source.with.n_test=50",
        "params.student={img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 32, depth: 2, num_heads: 4}",
        "params.teacher={img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 16, depth: 2, num_heads: 2}",
    ];
    let args = |quiet: bool| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            shipped("demo.yaml"),
            "--jobs".into(),
            "2".into(),
            "--cache-dir".into(),
            cache.clone(),
            "--runs-dir".into(),
            runs.clone(),
        ];
        if quiet {
            a.push("-q".into());
        }
        for s in sets {
            a.push("--set".into());
            a.push(s.into());
        }
        a
    };
    ok(&bin(d.path(), &args(true)).output().unwrap());
    let reports: Vec<_> = entries(Path::new(&cache))
        .into_iter()
        .filter(|e| e.join("report.md").is_file())
        .collect();
    assert_eq!(reports.len(), 1);
    let summary = std::fs::read_to_string(reports[0].join("summary.txt")).unwrap();
    for m in ["at", "idat-mse", "idat-kl", "fashion10", "textures"] {
        assert!(summary.contains(m), "summary lacks {m}:\n{summary}");
    }
    // Each backbone's source top-1, as its pretraining entry recorded it.
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let pretrained: Vec<_> = entries(Path::new(&cache))
        .into_iter()
        .filter(|e| e.join("pretrain.json").is_file())
        .collect();
    assert_eq!(pretrained.len(), 2);
    for e in &pretrained {
        let model = json(&e.join("model.json"));
        let top1 = model["source_top1"]
            .as_f64()
            .expect("source_top1 in model.json");
        assert_eq!(
            top1,
            json(&e.join("pretrain.json"))["top1"].as_f64().unwrap()
        );
        let source = model["source"].as_str().unwrap();
        let line = summary
            .lines()
            .find(|l| l.contains(source))
            .unwrap_or_else(|| panic!("summary lacks backbone `{source}`:\n{summary}"));
        assert!(line.ends_with(&format!("{top1:.2}")), "{line}");
    }
    // The teacher's downstream top-1 beside the student's, for every iDAT run (one seed).
    let mut teachers = 0;
    for e in entries(Path::new(&cache)) {
        let Ok(text) = std::fs::read_to_string(e.join("eval.json")) else {
            continue;
        };
        let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
        let Some(t) = rec["teacher_top1_final"].as_f64() else {
            assert_eq!(rec["label"], "at");
            continue;
        };
        let (task, label) = (
            rec["task"].as_str().unwrap(),
            rec["label"].as_str().unwrap(),
        );
        let s = rec["top1_final"].as_f64().unwrap();
        // Row `task  method  student (n)  teacher (n)  teacher - student`.
        let want = [
            task.to_string(),
            label.to_string(),
            format!("{s:.2}"),
            "(1)".into(),
            format!("{t:.2}"),
            "(1)".into(),
            format!("{:.2}", t - s),
        ];
        assert!(
            summary.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.len() == 7 && cells.iter().zip(&want).all(|(a, b)| a == b)
            }),
            "no row {want:?} in\n{summary}"
        );
        teachers += 1;
    }
    assert_eq!(teachers, 4);
    // Rerun: nothing executes.
    let (_, err) = ok(&bin(d.path(), &args(false)).output().unwrap());
    assert!(err.contains("0 ran, 20 cached, 0 failed"), "{err}");
}

#[test]
fn shipped_pipelines_validate() {
    let d = tempfile::tempdir().unwrap();
    let mut args = vec!["validate".to_string()];
    for p in [
        "demo.yaml",
        "vtab.yaml",
        "vtab-adapters.yaml",
        "own-imagefolder.yaml",
    ] {
        args.push(shipped(p));
    }
    for p in ["stages_vtab.yaml", "stages_resume.yaml", "stages_data.yaml"] {
        args.push(pipeline(p));
    }
    ok(&bin(d.path(), &args).output().unwrap());
    // And validation can fail: a wrong type in a shipped pipeline is caught.
    let o = bin(
        d.path(),
        &[
            "validate".into(),
            shipped("demo.yaml"),
            "--set".into(),
            "params.epochs=many".into(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("demo.yaml"), "{:?}", text(&o));
}
