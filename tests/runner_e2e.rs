//! End-to-end tests of `idat-pipe run/plan/validate/...` with test-only stage kinds.
//!
//! This test binary has its own `main` (harness = false): with `IDAT_TESTKIT_CLI=1`
//! it IS the idat-pipe CLI (`idat_pipe::cli::main_with`) with the test kinds
//! registered; otherwise it runs the tests below, each spawning itself as the CLI.
//! Filter with `cargo test --test runner_e2e -- NAME`.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cli_cmd, pipeline, text, CLI_ENV};

fn main() -> ExitCode {
    if std::env::var_os(CLI_ENV).is_some() {
        return idat_pipe::cli::main_with(common::kinds::registry(), std::env::args_os().collect());
    }
    let tests: &[(&str, fn())] = &[
        (
            "matrix_pipeline_runs_reruns_nothing_and_reruns_what_changed",
            t_five_stage,
        ),
        ("kill_9_then_resume", t_kill_resume),
        ("concurrent_runs_compute_each_instance_once", t_concurrent),
        ("flipped_byte_is_detected_and_recomputed", t_corrupt),
        (
            "a_test_executor_registered_as_a_plugin_runs_what_is_not_cached",
            t_plugin_executor,
        ),
        (
            "flip_that_keeps_the_stat_is_caught_by_the_consumer_and_by_verify",
            t_silent_flip,
        ),
        ("failure_report_keep_going_and_failed_before", t_failure),
        ("gpu_slots_never_overlap", t_gpu_slots),
        (
            "gpu_placement_distinct_cards_packing_and_pinning",
            t_gpu_placement,
        ),
        (
            "gpu_pack_pipeline_places_both_instances_on_one_card",
            t_gpu_pack,
        ),
        (
            "force_reruns_the_stage_and_downstream_only_when_its_outputs_change",
            t_force,
        ),
        ("validate_corpus", t_validate_corpus),
        ("dag_and_status_and_gc", t_dag_status_gc),
        ("exec_stage_runs_one_instance", t_exec_stage),
        ("ctrl_c_stops_cleanly_and_resumes", t_ctrl_c),
        (
            "external_input_content_not_mtime_decides_and_summaries_print",
            t_external,
        ),
        ("plain_mode_prints_progress_with_eta", t_plain_progress),
        ("no_escape_codes_in_files_or_pipes", t_no_escape_codes),
        (
            "param_references_resolve_and_escapes_reach_the_stage_as_text",
            t_param_refs,
        ),
        (
            "cache_with_entries_or_tmp_on_another_filesystem",
            t_two_filesystems,
        ),
        ("read_only_cache_serves_every_reading_command", t_read_only),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut n = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        n += 1;
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(f);
        let ok = r.is_ok();
        println!(
            "test {name} ... {} ({:.1}s)",
            if ok { "ok" } else { "FAILED" },
            t0.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        n - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    cli_cmd(dir, args).output().unwrap()
}

fn ok(o: &Output) -> (String, String) {
    let t = text(o);
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        t.0,
        t.1
    );
    t
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The latest run record's trace as (instance, status).
fn trace(dir: &Path) -> Vec<(String, String)> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let last = runs.last().unwrap();
    let mut r = csv::Reader::from_path(last.join("trace.csv")).unwrap();
    r.records()
        .map(|x| x.unwrap())
        .map(|x| (x[0].to_string(), x[2].to_string()))
        .collect()
}

fn count_of(t: &[(String, String)], status: &str) -> usize {
    t.iter().filter(|(_, s)| s == status).count()
}

fn t_five_stage() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline("five.yaml");
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &set, "--jobs", "2"]));
    assert!(err.contains("10 ran, 0 cached"), "{err}");
    assert_eq!(lines(&cf).len(), 10);
    let t = trace(d.path());
    assert_eq!(count_of(&t, "ran"), 10);
    // Fan-in and matrix matching: eval[task=a] read exactly tune[task=a,seed=1] and seed=2.
    let ids = std::fs::read_dir(d.path().join(".idat/entries"))
        .unwrap()
        .count();
    assert_eq!(ids, 10);
    // Rerun: nothing executes, fast.
    let t0 = Instant::now();
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &set]));
    let secs = t0.elapsed().as_secs_f64();
    assert!(err.contains("0 ran, 10 cached"), "{err}");
    assert!(secs < 1.0, "rerun took {secs:.2}s");
    assert_eq!(lines(&cf).len(), 10);
    // Plan says why before a change.
    let (out, _) = ok(&cli(
        d.path(),
        &["plan", &p, "--set", &set, "--set", "stages.eval.with.sep=+"],
    ));
    assert!(
        out.contains("will run  eval[task=a]: param `sep` changed: \" | \" -> \"+\""),
        "{out}"
    );
    assert!(
        out.contains("will run  report: upstream `eval[task=a]` will run"),
        "{out}"
    );
    assert!(out.contains("cached    tune[task=b,seed=2]"), "{out}");
    assert!(out.contains("7 cached, 3 will run"), "{out}");
    // `run --dry-run` prints the same plan and runs nothing.
    let (out2, _) = ok(&cli(
        d.path(),
        &[
            "run",
            "--dry-run",
            &p,
            "--set",
            &set,
            "--set",
            "stages.eval.with.sep=+",
        ],
    ));
    assert_eq!(out, out2);
    let (_, err) = ok(&cli(
        d.path(),
        &["run", &p, "--set", &set, "--set", "stages.eval.with.sep=+"],
    ));
    assert!(err.contains("3 ran, 7 cached"), "{err}");
    let new: Vec<String> = lines(&cf)[10..].to_vec();
    let mut new_sorted = new.clone();
    new_sorted.sort();
    assert_eq!(
        new_sorted,
        vec!["eval[task=a] ran", "eval[task=b] ran", "report ran"]
    );
    // A non-output param (sleep_ms) changes nothing.
    let (out, _) = ok(&cli(
        d.path(),
        &[
            "plan",
            &p,
            "--set",
            &set,
            "--set",
            "stages.eval.with.sep=+",
            "--set",
            "params.sleep_ms=5",
        ],
    ));
    assert!(out.contains("10 cached, 0 will run"), "{out}");
    // The run record.
    let mut runs: Vec<PathBuf> = std::fs::read_dir(d.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    let last = runs.last().unwrap();
    assert!(std::fs::read_to_string(last.join("overrides.txt"))
        .unwrap()
        .contains("stages.eval.with.sep=+"));
    assert!(std::fs::read_to_string(last.join("config.yaml"))
        .unwrap()
        .contains("report"));
    assert!(std::fs::read_dir(last.join("logs")).unwrap().count() >= 3);
    let header = lines(&last.join("trace.csv"))[0].clone();
    assert_eq!(header, "instance,key,status,start,end,seconds,device");
}

fn t_kill_resume() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline("long.yaml");
    let mut child = cli_cmd(d.path(), &["run", &p, "--set", &set, "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the long stage has checkpointed a few steps, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    let step = loop {
        let pend = d.path().join(".idat/pending");
        let s: u32 = std::fs::read_dir(&pend)
            .ok()
            .and_then(|rd| rd.flatten().next())
            .and_then(|e| std::fs::read_to_string(e.path().join("checkpoint/step")).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if s >= 5 {
            break s;
        }
        assert!(Instant::now() < deadline, "long stage never reached step 5");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        lines(&cf),
        vec!["first ran".to_string(), "long start=0".to_string()]
    );
    // No entry for the long stage, no stale lock: the rerun completes.
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    // Not `new`: it resumes from what the killed run left.
    assert!(
        out.contains("cached    first")
            && out.contains(&format!(
                "will run  long: resumes from its checkpoint (.idat/pending/{}/checkpoint)\n",
                pending_key(d.path())
            )),
        "{out}"
    );
    let key = pending_key(d.path());
    // Combined with the other reasons.
    let (out, _) = ok(&cli(
        d.path(),
        &["plan", &p, "--set", &set, "--force", "long"],
    ));
    assert!(
        out.contains(&format!(
            "will run  long: forced (--force); resumes from its checkpoint \
             (.idat/pending/{key}/checkpoint)\n"
        )),
        "{out}"
    );
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &set]));
    assert!(err.contains("1 ran, 1 cached"), "{err}");
    // `run` says it too, once.
    let said = format!("long: resumes from its checkpoint (.idat/pending/{key}/checkpoint)\n");
    assert_eq!(err.matches(&said).count(), 1, "{err}");
    let l = lines(&cf);
    assert_eq!(l.len(), 3, "{l:?}");
    let resumed: u32 = l[2].strip_prefix("long start=").unwrap().parse().unwrap();
    assert!(
        resumed >= step,
        "resumed at {resumed}, checkpoint was at least {step}"
    );
    // The entry says where it resumed; the pending checkpoint was dropped at commit.
    let entries: Vec<PathBuf> = std::fs::read_dir(d.path().join(".idat/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let outs: Vec<String> = entries
        .iter()
        .map(|e| std::fs::read_to_string(e.join("out.txt")).unwrap())
        .collect();
    assert!(
        outs.iter()
            .any(|o| o == &format!("steps=30 resumed_from={resumed}")),
        "{outs:?}"
    );
    assert_eq!(
        std::fs::read_dir(d.path().join(".idat/pending"))
            .unwrap()
            .count(),
        0
    );
}

/// The key of the only pending checkpoint.
fn pending_key(dir: &Path) -> String {
    let keys: Vec<String> = std::fs::read_dir(dir.join(".idat/pending"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

fn t_concurrent() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline("five.yaml");
    let spawn = |runs: &str| {
        cli_cmd(
            d.path(),
            &[
                "run",
                &p,
                "--set",
                &set,
                "--set",
                "params.sleep_ms=150",
                "--jobs",
                "3",
                "--runs-dir",
                runs,
                "--quiet",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let a = spawn("runs_a");
    let b = spawn("runs_b");
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    ok(&oa);
    ok(&ob);
    let mut l = lines(&cf);
    l.sort();
    let mut dedup = l.clone();
    dedup.dedup();
    assert_eq!(l.len(), 10, "every instance computed exactly once: {l:?}");
    assert_eq!(dedup.len(), 10);
}

fn entry_of(d: &Path, instance: &str) -> PathBuf {
    for e in std::fs::read_dir(d.join(".idat/entries")).unwrap() {
        let e = e.unwrap().path();
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.join("manifest.json")).unwrap())
                .unwrap();
        if m["instance"] == instance {
            return e;
        }
    }
    panic!("no entry for {instance}");
}

/// An executor registered by the test binary (as its stage kinds are) is selected by the
/// file (`executor: {uses: inline, with: ...}`) or by `--executor`; the scheduler decides
/// freshness, so a cached instance never reaches it.
fn t_plugin_executor() {
    let d = tempfile::tempdir().unwrap();
    let trace = d.path().join("trace.txt");
    let p = pipeline("five.yaml");
    let sel = format!(
        "executor={{uses: inline, with: {{trace: {}}}}}",
        trace.display()
    );
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &sel]));
    assert!(err.contains("10 ran, 0 cached, 0 failed"), "{err}");
    let l = lines(&trace);
    assert_eq!(l.len(), 10, "{l:?}");
    assert!(l.iter().all(|x| x.ends_with(" ran")), "{l:?}");
    assert_eq!(l[0], "prep ran");
    // Everything cached: the executor is handed nothing.
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &sel]));
    assert!(err.contains("0 ran, 10 cached"), "{err}");
    assert_eq!(lines(&trace).len(), 10);
    // `--executor` picks it by name (its settings from the file when given there).
    let (_, err) = ok(&cli(
        d.path(),
        &["run", &p, "--executor", "inline", "--force", "report"],
    ));
    assert!(err.contains("1 ran, 9 cached"), "{err}");
    // Unknown names and settings are refused before anything runs, naming what exists.
    let o = cli(d.path(), &["run", &p, "--executor", "inlin"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o)
            .1
            .contains("unknown executor `inlin` (executors: inline, local, slurm)"),
        "{:?}",
        text(&o)
    );
    let o = cli(
        d.path(),
        &[
            "validate",
            &p,
            "--set",
            "executor={uses: inline, with: {trac: x}}",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("unknown field `trac`"),
        "{:?}",
        text(&o)
    );
}

/// Flip the first byte of an entry file and give its stat record the file's new stat: the
/// damage no stat can see (bit rot, a change with its stat restored).
fn flip_silently(entry: &Path, file: &str) {
    use std::os::unix::fs::MetadataExt;
    let f = entry.join(file);
    let mut perm = std::fs::metadata(&f).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&f, perm.clone()).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    perm.set_readonly(true);
    std::fs::set_permissions(&f, perm).unwrap();
    let key = entry.file_name().unwrap().to_string_lossy().into_owned();
    let rec = entry
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(format!("stat/{key}.json"));
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rec).unwrap()).unwrap();
    let m = std::fs::metadata(&f).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    r["files"][file] = serde_json::json!({
        "size": m.size(),
        "mtime_ns": ns(m.mtime(), m.mtime_nsec()),
        "ctime_ns": ns(m.ctime(), m.ctime_nsec()),
        "ino": m.ino(),
        "dev": m.dev(),
    });
    std::fs::write(&rec, serde_json::to_vec(&r).unwrap()).unwrap();
}

/// `plan` and `run` trust an entry whose stats are unchanged; a byte flipped under an
/// unchanged stat is caught where it is read (the consumer fails naming the entry and file,
/// and the entry is moved aside, so the rerun recomputes it) and by `verify`.
fn t_silent_flip() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline("five.yaml");
    ok(&cli(d.path(), &["run", &p, "--set", &set, "--quiet"]));
    let entry = entry_of(d.path(), "data[task=b]");
    let key = entry.file_name().unwrap().to_string_lossy().into_owned();
    flip_silently(&entry, "out.txt");
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains("10 cached, 0 will run"),
        "trusted by stat: {out}"
    );
    // `verify` reads every byte: exit 1, the file named.
    let o = cli(d.path(), &["verify", &p, "--set", &set]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("corrupt entry .idat/entries/{key} (instance `data[task=b]`): file `out.txt`: content hash differs")),
        "{out}"
    );
    assert!(
        out.contains("10 entries verified") && out.contains("9 ok, 1 corrupt"),
        "{out}"
    );
    // Once verify has seen it, plan sees it too.
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains("will run  data[task=b]: corrupt cache entry"),
        "{out}"
    );
    // The same damage, left to the consumer: recomputing `tune` reads data[task=b].
    std::fs::remove_dir_all(d.path().join(".idat")).unwrap();
    ok(&cli(d.path(), &["run", &p, "--set", &set, "--quiet"]));
    let entry = entry_of(d.path(), "data[task=b]");
    let key = entry.file_name().unwrap().to_string_lossy().into_owned();
    flip_silently(&entry, "out.txt");
    let o = cli(
        d.path(),
        &["run", &p, "--set", &set, "--force", "tune", "--keep-going"],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("error: corrupt cache entry .idat/entries/{key} (instance `data[task=b]`): file `out.txt`: content hash differs")),
        "{err}"
    );
    assert!(err.contains("the next run recomputes it"), "{err}");
    assert!(!entry.exists(), "moved aside");
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains(
            "will run  data[task=b]: its entry was found corrupt and moved to .idat/corrupt/"
        ),
        "{out}"
    );
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &set]));
    assert!(err.contains("0 failed"), "{err}");
    let now = std::fs::read_to_string(entry_of(d.path(), "data[task=b]").join("out.txt")).unwrap();
    assert_eq!(now, "data b x1");
}

fn t_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline("five.yaml");
    ok(&cli(d.path(), &["run", &p, "--set", &set, "--quiet"]));
    let f = entry_of(d.path(), "data[task=b]").join("out.txt");
    let mut perm = std::fs::metadata(&f).unwrap().permissions();
    assert!(perm.readonly(), "entries are read-only");
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&f, perm).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let key = entry_of(d.path(), "data[task=b]")
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let h = |b: &[u8]| blake3::hash(b).to_hex()[..12].to_string();
    // What differs, in which file of which entry (not "size 9, expected 9").
    let detail = format!(
        "corrupt cache entry .idat/entries/{key} (instance `data[task=b]`): file `out.txt`: \
         content hash differs (expected blake3 {}.., found {}..), size matches (9 bytes)",
        h(b"data b x1"),
        h(b"eata b x1")
    );
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains(&format!(
            "will run  data[task=b]: {detail}; will recompute\n"
        )),
        "{out}"
    );
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &set]));
    // Warned once (it was printed twice), with what differs, as plain text on a pipe.
    assert_eq!(err.matches("corrupt cache entry").count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "WARN data[task=b]: {detail}; moved to .idat/corrupt/{key}."
        )),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "escape codes on a pipe: {err:?}");
    let log = std::fs::read_to_string(
        latest_run(d.path()).join("logs").join(
            std::fs::read_dir(latest_run(d.path()).join("logs"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("data_task=b_"))
                .unwrap(),
        ),
    )
    .unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("warning: ")).count(),
        1,
        "{log}"
    );
    // Recomputed to the same content, so downstream stays cached.
    assert!(err.contains("1 ran, 9 cached"), "{err}");
    assert_eq!(
        lines(&cf)
            .iter()
            .filter(|l| *l == "data[task=b] ran")
            .count(),
        2
    );
    let now = std::fs::read_to_string(entry_of(d.path(), "data[task=b]").join("out.txt")).unwrap();
    assert_eq!(now, "data b x1");
    assert_eq!(
        std::fs::read_dir(d.path().join(".idat/corrupt"))
            .unwrap()
            .count(),
        1
    );
    // Other kinds of damage, each said as what it is.
    let writable = |f: &Path| {
        let mut perm = std::fs::metadata(f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(f, perm).unwrap();
    };
    let a = entry_of(d.path(), "data[task=a]");
    let a_key = a.file_name().unwrap().to_string_lossy().into_owned();
    writable(&a.join("out.txt"));
    std::fs::write(a.join("out.txt"), "data a x").unwrap();
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains(&format!(
            "will run  data[task=a]: corrupt cache entry .idat/entries/{a_key} (instance \
             `data[task=a]`): file `out.txt`: size differs (expected 9 bytes, found 8 bytes); \
             will recompute\n"
        )),
        "{out}"
    );
    std::fs::remove_file(a.join("out.txt")).unwrap();
    std::fs::write(a.join("stray.txt"), "x").unwrap();
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains(&format!(
            "will run  data[task=a]: corrupt cache entry .idat/entries/{a_key} (instance \
             `data[task=a]`): file `out.txt` listed in the manifest is missing; file \
             `stray.txt` is not in the manifest (extra file); will recompute\n"
        )),
        "{out}"
    );
}

/// The newest run record directory.
fn latest_run(dir: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    runs.pop().unwrap()
}

fn t_failure() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("fail.yaml");
    let o = cli(d.path(), &["run", &p, "--keep-going", "--jobs", "1"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("FAILED bad\n  error: boom"), "{err}");
    assert!(
        err.contains("FAILED crash\n  error: stage panicked: kaboom"),
        "{err}"
    );
    assert!(err.contains("last 20 log lines"), "{err}");
    assert!(
        err.contains("| log line 25") && !err.contains("| log line 5\n"),
        "{err}"
    );
    assert!(err.contains("  log: ") && err.contains("runs/"), "{err}");
    assert!(
        err.contains("resume with: runner_e2e") && err.contains("--keep-going"),
        "{err}"
    );
    let t = trace(d.path());
    assert!(t.contains(&("ok".into(), "ran".into())), "{t:?}");
    assert!(t.contains(&("after".into(), "skipped".into())), "{t:?}");
    // Nothing partial was committed.
    assert_eq!(
        std::fs::read_dir(d.path().join(".idat/entries"))
            .unwrap()
            .count(),
        1
    );
    // ... and the failed instances left no scratch directories behind.
    let left: Vec<_> = std::fs::read_dir(d.path().join(".idat/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let (out, _) = ok(&cli(d.path(), &["plan", &p]));
    assert!(out.contains("will run  bad: failed before: boom"), "{out}");
    // Without --keep-going the run stops launching after the first failure.
    let d2 = tempfile::tempdir().unwrap();
    let o = cli(d2.path(), &["run", &p, "--jobs", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(count_of(&trace(d2.path()), "skipped") >= 2);
}

fn t_gpu_slots() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("gpu.yaml");
    let o = cli(d.path(), &["run", &p, "--gpus", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("needs 1 GPU(s) but this run offers 0: --gpus 0"),
        "{}",
        text(&o).1
    );
    ok(&cli(
        d.path(),
        &["run", &p, "--gpus", "1", "--jobs", "4", "--quiet"],
    ));
    let mut runs: Vec<PathBuf> = std::fs::read_dir(d.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    let mut r = csv::Reader::from_path(runs.last().unwrap().join("trace.csv")).unwrap();
    let spans: Vec<(f64, f64)> = r
        .records()
        .map(|x| x.unwrap())
        .map(|x| (x[3].parse().unwrap(), x[4].parse().unwrap()))
        .collect();
    assert_eq!(spans.len(), 2);
    let (a, b) = (spans[0], spans[1]);
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "gpu instances overlapped: {spans:?}"
    );
}

/// One line of the `test/device` record: instance, device, start, end.
type Ran = (String, String, f64, f64);

/// Run gpu-place.yaml with `args` (and no NVML, no `CUDA_VISIBLE_DEVICES` unless `env`
/// gives one): its stderr and what each instance recorded.
fn run_placed(env: Option<&str>, args: &[&str]) -> (Output, Vec<Ran>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let record = d.path().join("record.txt");
    let set = format!("params.record={}", record.display());
    let p = pipeline("gpu-place.yaml");
    let mut all = vec!["run", p.as_str(), "--set", set.as_str()];
    all.extend(args);
    let mut c = cli_cmd(d.path(), &all);
    c.env("IDAT_NO_NVML", "1")
        .env_remove("CUDA_VISIBLE_DEVICES");
    if let Some(v) = env {
        c.env("CUDA_VISIBLE_DEVICES", v);
    }
    let o = c.output().unwrap();
    let ran = lines(&record)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].into(),
                f[1].into(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    (o, ran, d)
}

/// The log file of a run record whose name starts with `prefix`.
fn log_of(run: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(run.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no log {prefix}* in {}", run.display()))
}

/// The most `train` instances running at once, overall and on one device.
fn most_at_once(ran: &[Ran]) -> (usize, usize) {
    let train: Vec<&Ran> = ran.iter().filter(|r| r.0.starts_with("train")).collect();
    let (mut all, mut one) = (0, 0);
    for r in &train {
        // Those running at r's start.
        let at: Vec<&&Ran> = train.iter().filter(|x| x.2 <= r.2 && r.2 < x.3).collect();
        all = all.max(at.len());
        one = one.max(at.iter().filter(|x| x.1 == r.1).count());
    }
    (all, one)
}

fn t_gpu_placement() {
    // Three cards declared (no driver): each running instance on its own card.
    let (o, ran, d) = run_placed(None, &["--device", "cuda", "--gpus", "3", "-j", "8"]);
    let (_, err) = ok(&o);
    assert_eq!(ran.len(), 8, "{err}");
    for (id, dev, ..) in &ran {
        match id.starts_with("train") {
            true => assert!(
                ["cuda:0", "cuda:1", "cuda:2"].contains(&dev.as_str()),
                "{id} {dev}"
            ),
            false => assert_eq!(dev, "cpu", "{id}: no GPU declared, the CPU"),
        }
    }
    assert_eq!(most_at_once(&ran), (3, 1), "{ran:?}");
    // Named in its start line, its log's first line and the trace.
    assert!(
        err.contains("start   train[n=1] on cuda:0 (GPU 0)"),
        "{err}"
    );
    assert!(err.contains("start   prep[n=11]\n"), "{err}");
    let run = latest_run(d.path());
    let log = lines(&log_of(&run, "train_n=1_-"));
    assert!(
        log.first()
            .is_some_and(|l| l.ends_with("device cuda:0 (GPU 0)")),
        "{log:?}"
    );
    let trace = std::fs::read_to_string(run.join("trace.csv")).unwrap();
    assert!(trace.contains(",cuda:0 (GPU 0)\n"), "{trace}");
    assert!(trace.contains(",cpu\n"), "{trace}");

    // Packed: 4G instances on two cards offering 10G: two per card, four at once.
    let (o, ran, d) = run_placed(
        None,
        &[
            "--device",
            "cuda",
            "--gpus",
            "2",
            "--gpu-mem",
            "10G",
            "-j",
            "8",
            "--set",
            "stages.train.resources.gpu_mem=4G",
        ],
    );
    ok(&o);
    assert_eq!(most_at_once(&ran), (4, 2), "{ran:?}");
    let log = lines(&log_of(&latest_run(d.path()), "train_n=1_-"));
    assert!(
        log[1].ends_with("free-memory check skipped: IDAT_NO_NVML is set"),
        "{log:?}"
    );

    // Pinned: CUDA_VISIBLE_DEVICES=4,7 and cuda:1: every GPU instance on GPU 7, one at a time.
    let (o, ran, d) = run_placed(Some("4,7"), &["--device", "cuda:1", "-j", "8"]);
    ok(&o);
    assert!(ran
        .iter()
        .filter(|r| r.0.starts_with("train"))
        .all(|r| r.1 == "cuda:1"));
    assert_eq!(most_at_once(&ran), (1, 1), "{ran:?}");
    let trace = std::fs::read_to_string(latest_run(d.path()).join("trace.csv")).unwrap();
    assert!(trace.contains(",cuda:1 (GPU 7)\n"), "{trace}");

    // `--device cpu` (the default) without `--gpus`: no card needed, none counted, even
    // where none is visible; GPU instances overlap within the CPU slots.
    let (o, ran, _) = run_placed(Some(""), &["-j", "8"]);
    ok(&o);
    assert!(ran.iter().all(|r| r.1 == "cpu"), "{ran:?}");
    assert!(most_at_once(&ran).0 > 1, "{ran:?}");

    // What cannot be honoured is refused before anything runs, naming the option.
    let (o, ran, _) = run_placed(Some(""), &["--device", "cuda", "--gpus", "3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(ran.is_empty());
    assert!(
        text(&o)
            .1
            .contains("--gpus 3: CUDA_VISIBLE_DEVICES=`` makes 0 visible"),
        "{}",
        text(&o).1
    );
    let (o, _, _) = run_placed(None, &["--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o)
        .1
        .contains("--device `gpu`: expected `cpu`, `cuda` or `cuda:N`"));
    for flag in [["--gpus", "1"], ["--gpu-mem", "8G"], ["--per-gpu", "2"]] {
        let (o, _, _) = run_placed(None, &["--executor", "slurm", flag[0], flag[1]]);
        assert_eq!(o.status.code(), Some(2));
        let want = format!(
            "{} places instances on this machine's GPUs for the local",
            flag[0]
        );
        assert!(text(&o).1.contains(&want), "{}", text(&o).1);
    }
    let (o, _, _) = run_placed(
        None,
        &["--device", "cuda", "--gpus", "1", "--gpu-mem", "8GB"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("--gpu-mem `8GB`: expected digits"),
        "{}",
        text(&o).1
    );
}

/// What scripts/gpu-check.sh runs on the GPU, placed on the CPU build: tests/pipelines/
/// gpu-pack.yaml's two packed `train/adapt` instances both start on the one card before
/// either ends (without CUDA they then fail; on a GPU they train), the rest on the CPU.
fn t_gpu_pack() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("gpu-pack.yaml");
    let args = [
        "run",
        &p,
        "--device",
        "cuda",
        "--gpus",
        "1",
        "--gpu-mem",
        "8G",
        "-j",
        "4",
    ];
    let o = cli_cmd(d.path(), &args)
        .env("IDAT_NO_NVML", "1")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    let err = text(&o).1;
    let at = |s: &str| err.find(s).unwrap_or_else(|| panic!("no `{s}` in:\n{err}"));
    let first_end = ["ran     at[", "failed  at["]
        .iter()
        .filter_map(|s| err.find(s))
        .min();
    for seed in [1, 2] {
        let start = at(&format!("start   at[seed={seed}] on cuda:0 (GPU 0)\n"));
        assert!(first_end.is_none_or(|e| start < e), "{err}");
    }
    let trace = std::fs::read_to_string(latest_run(d.path()).join("trace.csv")).unwrap();
    let devices: Vec<&str> = trace.lines().filter_map(|l| l.rsplit(',').next()).collect();
    assert_eq!(
        devices,
        [
            "device",
            "cpu",
            "cpu",
            "cpu",
            "cuda:0 (GPU 0)",
            "cuda:0 (GPU 0)"
        ],
        "{trace}"
    );
    assert!(!err.contains("WARN"), "{err}");
    // Without --gpu-mem the card's memory is unknown here (no NVML): packing is off, and the
    // run says so once, before anything runs (also under --dry-run).
    let warned = |args: &[&str]| {
        let o = cli_cmd(d.path(), args)
            .env("IDAT_NO_NVML", "1")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        text(&o).1
    };
    let base = ["run", &p, "--dry-run", "--device", "cuda", "--gpus", "1"];
    let err = warned(&base);
    assert_eq!(
        err.matches(
            "2 instance(s) state resources.gpu_mem, but the memory of cuda:0 (GPU 0) is unknown"
        )
        .count(),
        1,
        "{err}"
    );
    assert!(err.contains("give --gpu-mem SIZE"), "{err}");
    // --gpu-mem and --per-gpu under --device cpu without --gpus: no card is counted.
    let err = warned(&["run", &p, "--dry-run", "--gpu-mem", "8G", "--per-gpu", "2"]);
    assert!(
        err.contains(
            "--gpu-mem (8.0 GiB) and --per-gpu 2 ignored: under --device cpu without --gpus"
        ),
        "{err}"
    );
}

fn t_force() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("five.yaml");
    ok(&cli(d.path(), &["run", &p, "--quiet"]));
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--force", "eval"]));
    assert!(
        out.contains("7 cached, 3 will run") && out.contains("forced (--force)"),
        "{out}"
    );
    // The 2 eval instances recompute the same outputs: `report`, downstream, keeps its
    // key and stays cached (early cutoff).
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--force", "eval"]));
    assert!(err.contains("2 ran, 8 cached"), "{err}");
    let (_, err) = ok(&cli(
        d.path(),
        &["run", &p, "--force", "eval", "--force", "report"],
    ));
    assert!(err.contains("3 ran, 7 cached"), "{err}");
    let o = cli(d.path(), &["run", &p, "--force", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--force nope: no such stage"));
}

/// Every file in tests/validate/ starts with `# expect: TEXT` (and optionally
/// `# at: LINE:COL`); validate must exit 2 and print TEXT with the file's position.
fn t_validate_corpus() {
    let dir = root().join("tests/validate");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "corpus has {} files", files.len());
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        let expect: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        let at = src.lines().find_map(|l| l.strip_prefix("# at: "));
        assert!(!expect.is_empty(), "{}: no `# expect:` line", f.display());
        let o = cli(
            &dir,
            &["validate", f.file_name().unwrap().to_str().unwrap()],
        );
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", f.display());
        assert!(!err.contains("panicked"), "{}: {err}", f.display());
        for e in expect {
            assert!(
                err.contains(e),
                "{}: expected `{e}` in:\n{err}",
                f.display()
            );
        }
        let name = f.file_name().unwrap().to_str().unwrap();
        match at {
            Some(at) => assert!(
                err.contains(&format!("{name}:{at}:")),
                "{}: expected position {at} in:\n{err}",
                f.display()
            ),
            None => assert!(err.contains(&format!("{name}:")), "{err}"),
        }
    }
    // The valid example passes.
    ok(&cli(
        &root(),
        &["validate", &pipeline("five.yaml"), &pipeline("long.yaml")],
    ));
}

fn t_dag_status_gc() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("five.yaml");
    let (m, _) = ok(&cli(d.path(), &["dag", &p, "--format", "mermaid"]));
    assert!(m.starts_with("flowchart LR"));
    assert!(m.contains("[\"tune[task=a,seed=2]\"]"));
    assert_eq!(m.matches("-->").count(), 2 + 4 * 2 + 4 + 2, "{m}");
    let (dot, _) = ok(&cli(d.path(), &["dag", &p, "--format", "dot"]));
    assert!(
        dot.starts_with("digraph") && dot.matches("->").count() == 16,
        "{dot}"
    );
    let cache = d.path().join("elsewhere");
    let cache_s = cache.display().to_string();
    ok(&cli(
        d.path(),
        &["run", &p, "--cache-dir", &cache_s, "--quiet"],
    ));
    assert!(!d.path().join(".idat").exists());
    // The env var is honoured too.
    let o = cli_cmd(d.path(), &["status"])
        .env("IDAT_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let (out, _) = ok(&o);
    assert!(out.contains("entries:   10"), "{out}");
    assert!(
        out.contains("    tune: 4 ok, 0 failed, 0 entry missing")
            && out.contains("    prep: 1 ok, 0 failed"),
        "{out}"
    );
    // A changed param supersedes report's entry: gc removes the old one only.
    ok(&cli(
        d.path(),
        &[
            "run",
            &p,
            "--cache-dir",
            &cache_s,
            "--quiet",
            "--set",
            "stages.report.with.sep=;",
        ],
    ));
    let (out, _) = ok(&cli(
        d.path(),
        &["gc", "--cache-dir", &cache_s, "--dry-run"],
    ));
    assert!(out.contains("would remove 1 entries"), "{out}");
    let (out, _) = ok(&cli(d.path(), &["gc", "--cache-dir", &cache_s]));
    assert!(out.contains("removed 1 entries"), "{out}");
    assert_eq!(
        std::fs::read_dir(cache.join("entries")).unwrap().count(),
        10
    );
}

fn t_exec_stage() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("five.yaml");
    let o = cli(d.path(), &["exec-stage", &p, "--instance", "data[task=a]"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("upstream `prep` is not cached (new); run the pipeline"),
        "{}",
        text(&o).1
    );
    // --threads sizes the instance's thread pool (default: every core); 0 is refused.
    let o = cli(
        d.path(),
        &["exec-stage", &p, "--instance", "prep", "--threads", "0"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--threads"), "{}", text(&o).1);
    let log = d.path().join("prep.log");
    let log_s = log.display().to_string();
    let (out, _) = ok(&cli(
        d.path(),
        &[
            "exec-stage",
            &p,
            "--instance",
            "prep",
            "--threads",
            "3",
            "--log",
            &log_s,
        ],
    ));
    assert!(out.starts_with("ran prep "), "{out}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("on 3 threads"), "{logged}");
    let (out, _) = ok(&cli(
        d.path(),
        &["exec-stage", &p, "--instance", "data[task=a]"],
    ));
    assert!(out.starts_with("ran data[task=a] "), "{out}");
    let (out, _) = ok(&cli(d.path(), &["plan", &p]));
    assert!(
        out.contains("cached    data[task=a]") && out.contains("2 cached, 8 will run"),
        "{out}"
    );
}

fn t_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline("long.yaml");
    let child = cli_cmd(d.path(), &["run", &p, "--set", &set])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines(&cf).iter().any(|l| l.starts_with("long start")) {
        assert!(Instant::now() < deadline, "long stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("resume with:"),
        "{err}"
    );
    // Only `first` was committed; the interrupted stage left its checkpoint, not an entry.
    assert_eq!(
        std::fs::read_dir(d.path().join(".idat/entries"))
            .unwrap()
            .count(),
        1
    );
    let (out, _) = ok(&cli(d.path(), &["plan", &p, "--set", &set]));
    assert!(
        out.contains(&format!(
            "will run  long: resumes from its checkpoint (.idat/pending/{}/checkpoint)\n",
            pending_key(d.path())
        )),
        "an interrupt is not a failure, and the checkpoint is used: {out}"
    );
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--set", &set]));
    assert!(err.contains("1 ran, 1 cached"), "{err}");
    let l = lines(&cf);
    let resumed: u32 = l
        .last()
        .unwrap()
        .strip_prefix("long start=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(resumed >= 1, "{l:?}");
}

/// A stage reading a folder outside the cache: one changed byte reruns it and its
/// dependents (plan says why); a touched mtime reruns nothing. Its summary.txt and
/// report.md path are printed at the end of every run, cached or not.
fn t_external() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha").unwrap();
    std::fs::write(data.join("b.txt"), "beta").unwrap();
    let p = d.path().join("ext.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: ext\nstages:\n  src:\n    uses: test/read_dir\n    \
         with: {path: data, count_file: count.txt}\n  down:\n    uses: test/concat\n    \
         needs: [src]\n    with: {sep: '+', count_file: count.txt}\n",
    )
    .unwrap();
    let p = p.display().to_string();
    let count = d.path().join("count.txt");
    let (out, err) = ok(&cli(d.path(), &["run", &p]));
    assert!(err.contains("2 ran, 0 cached"), "{err}");
    assert!(
        out.contains("== src ") && out.contains("read 2 files: alphabeta"),
        "{out}"
    );
    assert!(
        out.contains("report: ") && out.contains("report.md"),
        "{out}"
    );
    // Cached: the summary is still printed.
    let (out, err) = ok(&cli(d.path(), &["run", &p]));
    assert!(err.contains("0 ran, 2 cached"), "{err}");
    assert!(out.contains("read 2 files: alphabeta"), "{out}");

    // Touch only: same content, nothing reruns.
    let f = std::fs::File::options()
        .write(true)
        .open(data.join("a.txt"))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    let (out, _) = ok(&cli(d.path(), &["plan", &p]));
    assert!(out.contains("2 cached, 0 will run"), "{out}");
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--quiet"]));
    assert_eq!(lines(&count).len(), 2, "{err}");

    // One byte changed: the stage and its dependent rerun, plan says why.
    std::fs::write(data.join("b.txt"), "beto").unwrap();
    let (out, _) = ok(&cli(d.path(), &["plan", &p]));
    assert!(out.contains("0 cached, 2 will run"), "{out}");
    assert!(out.contains("external input changed: data"), "{out}");
    assert!(out.contains("upstream `src` will run"), "{out}");
    let (out, err) = ok(&cli(d.path(), &["run", &p]));
    assert!(err.contains("2 ran, 0 cached"), "{err}");
    assert!(out.contains("alphabeto"), "{out}");
    assert_eq!(lines(&count).len(), 4);

    // A missing external input fails the instance with the path named.
    std::fs::remove_dir_all(&data).unwrap();
    let o = cli(d.path(), &["run", &p]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("external input data"), "{:?}", text(&o));
    // Its hash memo is stale now: gc removes it.
    let (out, _) = ok(&cli(d.path(), &["gc"]));
    assert!(out.contains(", 1 stale external-input memos"), "{out}");
    let memos = std::fs::read_dir(d.path().join(".idat/external"))
        .unwrap()
        .count();
    assert_eq!(memos, 0);
}

/// Without a terminal, `run` prints a `progress:` line every IDAT_PROGRESS_SECS seconds.
fn t_plain_progress() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: p\nstages:\n  a:\n    uses: test/write\n    with: {text: a}\n  \
         s:\n    uses: test/steps\n    needs: [a]\n    with: {steps: 3, step_ms: 800}\n",
    )
    .unwrap();
    let o = cli_cmd(d.path(), &["run", &p.display().to_string()])
        .env("IDAT_PROGRESS_SECS", "1")
        .output()
        .unwrap();
    let (_, err) = ok(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("progress: 1/2 instances, elapsed "))
        .unwrap_or_else(|| panic!("no progress line:\n{err}"));
    assert!(line.contains(", ETA "), "{line}");
    assert!(err.contains("2 ran, 0 cached"), "{err}");
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// No file the runner writes (run record, instance logs, entries) holds an escape code, for
/// any colour setting; stderr has colour only where asked for (CLICOLOR_FORCE, a terminal)
/// and then still none in the files. An escape inside a message (here the error of a stage)
/// is removed wherever colour is off.
fn t_no_escape_codes() {
    let p = pipeline("fail.yaml");
    let red = r#"stages.bad.with.message="\e[31mboom\e[0m""#;
    let cases: [(&[(&str, &str)], bool); 4] = [
        (&[], false),
        (&[("CLICOLOR_FORCE", "1")], true),
        (&[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")], false),
        (&[("TERM", "dumb")], false),
    ];
    for (env, coloured) in cases {
        let d = tempfile::tempdir().unwrap();
        let mut c = cli_cmd(d.path(), &["run", &p, "--keep-going", "-v", "--set", red]);
        for k in ["NO_COLOR", "CLICOLOR_FORCE", "CLICOLOR"] {
            c.env_remove(k);
        }
        c.envs(env.iter().copied());
        let o = c.output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{env:?}: {err}");
        assert!(err.contains("INFO"), "{env:?}: {err}");
        assert_eq!(err.contains('\x1b'), coloured, "{env:?}: {err:?}");
        if !coloured {
            assert!(err.contains("FAILED bad\n  error: boom\n"), "{err:?}");
        }
        let mut files = files_under(&latest_run(d.path()));
        files.extend(files_under(&d.path().join(".idat")));
        assert!(files.len() > 5, "{files:?}");
        for f in &files {
            let b = std::fs::read(f).unwrap();
            assert!(
                !b.contains(&0x1b),
                "{env:?}: escape code in {}",
                f.display()
            );
        }
        let logs = files_under(&latest_run(d.path()).join("logs"));
        let bad = logs
            .iter()
            .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("bad-"))
            .unwrap();
        assert_eq!(lines(bad).last().unwrap(), "error: boom", "{env:?}");
    }
    // A terminal still gets colour (script(1) gives the run a pseudo-terminal).
    let d = tempfile::tempdir().unwrap();
    let five = pipeline("five.yaml");
    let exe = std::env::current_exe().unwrap();
    let cmd = format!("'{}' run '{five}' -v --jobs 1", exe.display());
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env(CLI_ENV, "1")
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .env_remove("IDAT_CACHE_DIR")
        .current_dir(d.path())
        .stdin(Stdio::null())
        .output();
    match o {
        Ok(o) if o.status.success() => {
            let tty = String::from_utf8_lossy(&o.stdout);
            assert!(tty.contains("\x1b[32m INFO\x1b[0m"), "{tty:?}");
            for f in files_under(&latest_run(d.path())) {
                let b = std::fs::read(&f).unwrap();
                assert!(!b.contains(&0x1b), "escape code in {}", f.display());
            }
        }
        other => println!("  (no pseudo-terminal check: script(1) unavailable: {other:?})"),
    }
}

/// References inside params resolve (chains, lists, longer strings, `--set`) before any
/// stage sees them; `$${` reaches the stage as the text `${`; a cycle is refused by `run`.
fn t_param_refs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("refs.yaml");
    std::fs::write(
        &p,
        r#"version: 1
name: refs
params:
  who: world
  greeting: "hello ${params.who}"
  words: ["${params.greeting}", plain]
  note: "$${params.who} is text"
stages:
  w:
    uses: test/write
    matrix: {t: "${params.words}"}
    with: {text: "${matrix.t} / ${params.note}"}
  c:
    uses: test/concat
    needs: [w]
    with: {sep: " | ${params.note} | "}
"#,
    )
    .unwrap();
    let p = p.display().to_string();
    let (_, err) = ok(&cli(d.path(), &["run", &p, "--quiet"]));
    let t = trace(d.path());
    // The trace is in order of completion.
    let mut ids: Vec<&str> = t.iter().map(|(i, _)| i.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["c", "w[t=hello world]", "w[t=plain]"], "{err}");
    let out = std::fs::read_to_string(entry_of(d.path(), "c").join("out.txt")).unwrap();
    assert_eq!(
        out,
        "hello world / ${params.who} is text x1 | ${params.who} is text | plain / \
         ${params.who} is text x1"
    );
    // A `--set` value with a reference resolves the same way (in a fresh cache).
    let d2 = tempfile::tempdir().unwrap();
    ok(&cli(
        d2.path(),
        &[
            "run",
            &p,
            "--quiet",
            "--set",
            "+params.other=moon",
            "--set",
            "params.who=${params.other}",
        ],
    ));
    let out = std::fs::read_to_string(entry_of(d2.path(), "c").join("out.txt")).unwrap();
    assert!(
        out.starts_with("hello moon / ${params.who} is text x1"),
        "{out}"
    );
    // A cycle made on the command line: refused before anything runs.
    let o = cli(
        d.path(),
        &["run", &p, "--set", "params.who=${params.greeting}"],
    );
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(
        text(&o)
            .1
            .contains("--set: at `params.who`: cycle: params.who -> params.greeting -> params.who"),
        "{:?}",
        text(&o)
    );
}

/// A folder on another filesystem than `near` (a tmpfs at /dev/shm), or None with a notice.
fn other_filesystem(near: &Path) -> Option<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(near).unwrap().dev();
    let shm = Path::new("/dev/shm");
    let dir = std::fs::metadata(shm)
        .ok()
        .filter(|m| m.is_dir() && m.dev() != dev)
        .and_then(|_| tempfile::tempdir_in(shm).ok());
    if dir.is_none() {
        println!(
            "  notice: /dev/shm is not a writable second filesystem here: skipped (the \
             cross-filesystem commit is unit-tested with an injected EXDEV)"
        );
    }
    dir
}

/// `entries/` or `tmp/` on another filesystem (a link to a tmpfs): every commit works (it
/// used to fail with `Invalid cross-device link (os error 18)`), reruns are cached, `--force`
/// replaces entries, and gc finds nothing left aside.
fn t_two_filesystems() {
    for linked in ["entries", "tmp"] {
        let d = tempfile::tempdir().unwrap();
        let Some(other) = other_filesystem(d.path()) else {
            return;
        };
        std::fs::create_dir_all(d.path().join(".idat")).unwrap();
        std::fs::create_dir_all(other.path().join(linked)).unwrap();
        std::os::unix::fs::symlink(
            other.path().join(linked),
            d.path().join(".idat").join(linked),
        )
        .unwrap();
        let p = pipeline("five.yaml");
        let (_, err) = ok(&cli(d.path(), &["run", &p]));
        assert!(err.contains("10 ran, 0 cached"), "{linked}: {err}");
        let (_, err) = ok(&cli(d.path(), &["run", &p]));
        assert!(err.contains("0 ran, 10 cached"), "{linked}: {err}");
        let (_, err) = ok(&cli(d.path(), &["run", &p, "--force", "report"]));
        assert!(err.contains("1 ran, 9 cached"), "{linked}: {err}");
        let (out, _) = ok(&cli(d.path(), &["gc", "--dry-run"]));
        assert!(
            out.contains("would remove 0 entries, 0 temporary dirs"),
            "{linked}: {out}"
        );
        let entries = std::fs::read_dir(d.path().join(".idat/entries"))
            .unwrap()
            .count();
        assert_eq!(entries, 10, "{linked}");
    }
}

/// Every file and folder under `dir` with its size and mtime (what a read-only command must
/// leave as it was).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.len(), m.modified().unwrap()));
        if m.is_dir() {
            out.extend(snapshot(&p));
        }
    }
    out.sort();
    out
}

/// Set or clear the write bits of everything under `dir` (and `dir`).
fn set_writable(dir: &Path, writable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let walk = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        let mode = m.permissions().mode();
        let mode = if writable {
            mode | 0o200
        } else {
            mode & !0o222
        };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for (p, _, _) in snapshot(dir) {
        walk(&p);
    }
    walk(dir);
}

/// The user to run the CLI as so that the read-only `cache` really refuses writes: none
/// (this user) unless this test runs as root, which permissions do not stop; then `nobody`.
/// `Err` with why when there is no such user here (the test is then skipped).
fn read_only_user(d: &Path, cache: &Path) -> Result<Option<(u32, u32)>, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let who = if std::fs::metadata(d).unwrap().uid() == 0 {
        // `nobody` must reach the working directory and write its run records there.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(d.join("runs")).unwrap();
        std::fs::set_permissions(d.join("runs"), std::fs::Permissions::from_mode(0o777)).unwrap();
        Some((65534, 65534))
    } else {
        None
    };
    let as_user = |c: &mut Command| {
        if let Some((u, g)) = who {
            c.uid(u).gid(g);
        }
    };
    // Writing must fail, and the CLI must start, as that user.
    let mut probe = Command::new("sh");
    probe
        .args(["-c", "touch \"$0/entries/.probe\""])
        .arg(cache)
        .current_dir(d)
        .stderr(Stdio::null());
    as_user(&mut probe);
    if probe
        .status()
        .map_err(|e| format!("cannot run sh: {e}"))?
        .success()
    {
        return Err("the cache stays writable (a user permissions do not stop)".into());
    }
    let mut version = cli_cmd(d, &["--version"]);
    as_user(&mut version);
    match version.output() {
        Ok(o) if o.status.success() => Ok(who),
        other => Err(format!("the CLI cannot run as uid 65534 here: {other:?}")),
    }
}

/// A cache that cannot be written (a shared one): `status`, `plan`, `run` with everything
/// cached, `run --dry-run`, `gc --dry-run`, `dag` and `validate` work and change nothing in
/// it; what must write (`run` of an uncached instance, `gc`) fails naming the path. Run as
/// `nobody` where the test runs as root.
fn t_read_only() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("five.yaml");
    ok(&cli(d.path(), &["run", &p, "--quiet"]));
    // A superseded entry, for `gc --dry-run` to find.
    ok(&cli(
        d.path(),
        &["run", &p, "--quiet", "--set", "stages.report.with.sep=;"],
    ));
    let cache = d.path().join(".idat");
    set_writable(&cache, false);
    let who = match read_only_user(d.path(), &cache) {
        Ok(w) => w,
        Err(why) => {
            set_writable(&cache, true);
            println!("  notice: skipped: {why}");
            return;
        }
    };
    let before = snapshot(&cache);
    let run_as = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let mut c = cli_cmd(d.path(), args);
        if let Some((u, g)) = who {
            c.uid(u).gid(g);
        }
        c.output().unwrap()
    };
    let (out, _) = ok(&run_as(&["status"]));
    assert!(out.contains("entries:   11"), "{out}");
    assert!(out.contains("running (locked): 0"), "{out}");
    let (out, _) = ok(&run_as(&["plan", &p, "--set", "stages.report.with.sep=;"]));
    assert!(out.contains("10 cached, 0 will run"), "{out}");
    let (_, err) = ok(&run_as(&["run", &p, "--set", "stages.report.with.sep=;"]));
    assert!(err.contains("0 ran, 10 cached, 0 failed"), "{err}");
    let (out, _) = ok(&run_as(&["run", &p, "--dry-run"]));
    assert!(out.contains("10 cached, 0 will run"), "{out}");
    let (out, _) = ok(&run_as(&["gc", "--dry-run"]));
    assert!(out.contains("would remove 1 entries"), "{out}");
    ok(&run_as(&["dag", &p]));
    ok(&run_as(&["validate", &p]));
    assert_eq!(
        snapshot(&cache),
        before,
        "a reading command changed the cache"
    );
    // What has to write fails, naming the path and why.
    let o = run_as(&["run", &p, "--set", "stages.report.with.sep=+"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("1 failed")
            && err.contains("error: opening lock .idat/locks/")
            && err.contains(
                "(the cache .idat is not writable: reading commands and cached \
                 instances work on it; to compute or remove, give a writable cache with \
                 --cache-dir): Permission denied"
            ),
        "{err}"
    );
    let o = run_as(&["gc"]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("opening lock .idat/locks/"),
        "{:?}",
        text(&o)
    );
    assert_eq!(snapshot(&cache), before);
    set_writable(&cache, true);
    // `status` of a cache that does not exist creates none.
    let (out, _) = ok(&cli(d.path(), &["status", "--cache-dir", "nowhere"]));
    assert!(out.contains("nowhere (does not exist yet)"), "{out}");
    assert!(!d.path().join("nowhere").exists());
}
