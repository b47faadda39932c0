//! End-to-end tests of the Slurm executor against a real Slurm (`.ci/slurm-up.sh` starts a
//! one-node cluster on 127.0.0.1). Like runner_e2e, this binary doubles as the idat-pipe CLI
//! with the test kinds when `IDAT_TESTKIT_CLI` is set; sbatch exports the environment, so
//! the array tasks run it as the CLI too. Without `sinfo` or an idle node the tests print a
//! notice and pass, except with `CI=true`, where that is a failure.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cli_cmd, pipeline, text, CLI_ENV};
/// Poll Slurm often in tests (the default is every 2 s).
const FAST: &str = "slurm.poll_interval=0.5";
/// The long stage takes 30 x 300 ms: long enough to kill or cancel it while it runs.
const SLOW: &str = "stages.long.with.step_ms=300";

fn main() -> ExitCode {
    if std::env::var_os(CLI_ENV).is_some() {
        return idat_pipe::cli::main_with(common::kinds::registry(), std::env::args_os().collect());
    }
    if !slurm_ready() {
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("CI=true but no Slurm with an idle node: run .ci/slurm-up.sh first");
            return ExitCode::FAILURE;
        }
        println!("notice: no Slurm here (sinfo missing or no idle node); Slurm tests skipped");
        return ExitCode::SUCCESS;
    }
    let tests: &[(&str, fn())] = &[
        (
            "matrix_on_slurm_matches_local_with_one_array_per_stage",
            t_matrix,
        ),
        ("failing_job_is_reported_with_log_and_exit_code", t_failure),
        (
            "long_array_tasks_run_to_the_end_and_a_requeued_one_once",
            t_long_array_requeue,
        ),
        ("ctrl_c_cancels_every_task_of_a_running_array", t_cancel),
        (
            "killed_submitter_then_rerun_adopts_running_and_pending_tasks",
            t_kill_resume,
        ),
        (
            "task_cancelled_outside_the_run_is_one_named_failure",
            t_external_cancel,
        ),
        ("node_failure_is_one_named_failure", t_node_fail),
        ("memory_limit_kill_is_one_named_failure", t_oom),
        (
            "matrix_beyond_max_array_size_is_split_and_sbatch_errors_print_once",
            t_split,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        let t0 = Instant::now();
        let ok = std::panic::catch_unwind(f).is_ok();
        failed += usize::from(!ok);
        let verdict = if ok { "ok" } else { "FAILED" };
        println!(
            "test {name} ... {verdict} ({:.1}s)",
            t0.elapsed().as_secs_f64()
        );
    }
    println!("\ntest result: {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn slurm_ready() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("idle"))
}

fn ok(o: Output) -> (String, String) {
    let t = text(&o);
    assert!(o.status.success(), "exit {:?}\n{}\n{}", o.status, t.0, t.1);
    t
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn lines(p: &Path) -> Vec<String> {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    t.lines().map(str::to_string).collect()
}

/// Every file under each entry, by key and relative path, with its bytes.
fn entries(cache: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in files(&cache.join("entries")) {
        let key = e.file_name().unwrap().to_string_lossy().into_owned();
        for f in files(&e) {
            if f.is_file() {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                out.push((format!("{key}/{name}"), std::fs::read(&f).unwrap()));
            }
        }
    }
    out
}

/// This user's idat jobs still in the queue.
fn queued() -> Vec<String> {
    let o = Command::new("squeue")
        .args(["--me", "-h", "-r", "-o", "%i %j"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    s.lines()
        .filter(|l| l.contains("idat-"))
        .map(str::to_string)
        .collect()
}

fn t_matrix() {
    let local = tempfile::tempdir().unwrap();
    let slurm = tempfile::tempdir().unwrap();
    let p = pipeline("five.yaml");
    ok(cli_cmd(local.path(), &["run", &p]).output().unwrap());
    let (_, err) = ok(cli_cmd(
        slurm.path(),
        &["run", &p, "--executor", "slurm", "--set", FAST],
    )
    .output()
    .unwrap());
    assert!(err.contains("10 ran, 0 cached"), "{err}");
    let (a, b) = (
        entries(&local.path().join(".idat")),
        entries(&slurm.path().join(".idat")),
    );
    assert!(!a.is_empty());
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "same keys and files");
    // manifest.json holds timings; every output file must match byte for byte.
    for (x, y) in a
        .iter()
        .zip(&b)
        .filter(|(x, _)| !x.0.ends_with("manifest.json"))
    {
        assert_eq!(x.1, y.1, "{}", x.0);
    }
    // Cells of one stage that became ready together went out as one job array: every
    // array holds one stage's cells, 10 instances in fewer arrays than instances.
    let tables = files(&slurm.path().join(".idat/slurm/arrays"));
    let mut sizes = Vec::new();
    for t in &tables {
        let stages: std::collections::BTreeSet<String> = lines(t)
            .iter()
            .map(|l| {
                l.split('\t')
                    .nth(1)
                    .unwrap()
                    .split('[')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(stages.len(), 1, "{t:?}: {stages:?}");
        sizes.push(lines(t).len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 10, "{sizes:?}");
    assert!(
        tables.len() < 10 && sizes.iter().any(|&n| n >= 2),
        "{sizes:?}"
    );
    let arrays = tables.len();
    // A rerun submits nothing: every entry is cached.
    let (_, err) = ok(cli_cmd(
        slurm.path(),
        &["run", &p, "--executor", "slurm", "--set", FAST],
    )
    .output()
    .unwrap());
    assert!(err.contains("0 ran, 10 cached"), "{err}");
    assert_eq!(
        files(&slurm.path().join(".idat/slurm/arrays")).len(),
        arrays
    );
}

fn t_failure() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("fail.yaml");
    let o = cli_cmd(
        d.path(),
        &[
            "run",
            &p,
            "--executor",
            "slurm",
            "--keep-going",
            "--set",
            FAST,
        ],
    )
    .output()
    .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("FAILED bad\n  error: boom (exit code 1, Slurm job "),
        "{err}"
    );
    assert!(
        err.contains("| log line 25") && err.contains("  log: "),
        "{err}"
    );
    assert!(
        err.contains("1 ran, 0 cached, 2 failed, 1 skipped"),
        "{err}"
    );
    // `--gpus` counts local GPUs: refused with the Slurm executor, before anything runs.
    let o = cli_cmd(d.path(), &["run", &p, "--executor", "slurm", "--gpus", "1"])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--gpus places instances on this machine's GPUs for the local executor"),
        "{err}"
    );
}

/// `scontrol ARGS`' stdout (panics when it fails).
fn scontrol(args: &[&str]) -> String {
    let o = Command::new("scontrol").args(args).output().unwrap();
    assert!(o.status.success(), "scontrol {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A value of `scontrol show config`.
fn slurm_config(name: &str) -> String {
    scontrol(&["show", "config"])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// A test needs a feature this Slurm lacks: a notice, or a failure under CI.
fn unsupported(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {why} (.ci/slurm-up.sh configures it)"
    );
    println!("notice: {why}; test skipped");
}

/// Wait until `cond` holds, at most `secs` seconds.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `long[...] start=N` lines of the count file (one per attempt of a long task).
fn long_starts(cf: &Path) -> Vec<String> {
    lines(cf)
        .into_iter()
        .filter(|l| l.starts_with("long") && l.contains(" start="))
        .collect()
}

/// Running idat array tasks as `(array_task, node)`, by squeue's array id and index.
fn running_tasks() -> Vec<(String, String)> {
    let o = Command::new("squeue")
        .args(["--me", "-h", "-r", "-t", "RUNNING", "-o", "%F_%K|%j|%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 3 && f[1].starts_with("idat-")).then(|| (f[0].into(), f[2].into()))
        })
        .collect()
}

/// `run` of `file` under Slurm with the count file and fast polling, plus `extra` args.
fn run_cmd(dir: &Path, file: &str, cf: &Path, extra: &[&str]) -> Command {
    let set = format!("params.count_file={}", cf.display());
    let p = pipeline(file);
    let mut args = vec![
        "run",
        &p,
        "--executor",
        "slurm",
        "--set",
        &set,
        "--set",
        FAST,
    ];
    args.extend_from_slice(extra);
    cli_cmd(dir, &args)
}

/// Start `run` on `file` (`long.yaml` or `sweep.yaml`) under Slurm and wait until `n`
/// long tasks have started.
fn start_long(dir: &Path, cf: &Path, file: &str, n: usize, extra: &[&str]) -> std::process::Child {
    let child = run_cmd(dir, file, cf, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(90, "the long tasks to start", || long_starts(cf).len() >= n);
    child
}

fn array_tables(dir: &Path) -> usize {
    files(&dir.join(".idat/slurm/arrays")).len()
}

fn wait_queue_empty() {
    wait_until(60, "the queue to empty", || queued().is_empty());
}

/// Three array tasks of 16 s each (2 run at once on two CPUs; many polls, more than the
/// grace period after which a task missing from the queue fails): the run watches them to
/// the end. One is requeued while it runs (`scontrol requeue`, as preemption or a node
/// failure requeues): the run waits for it, it resumes from its checkpoint, and it is
/// counted once; nothing is submitted again.
fn t_long_array_requeue() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let child = start_long(d.path(), &cf, "sweep.yaml", 2, &[]);
    std::thread::sleep(Duration::from_secs(3)); // a few checkpoints
    let (task, _) = running_tasks().into_iter().next().expect("a running task");
    scontrol(&["requeue", &task]);
    // Requeued tasks wait ~2 minutes for their begin time; let it start again now.
    wait_until(30, "the requeued task to be pending", || {
        scontrol(&["show", "job", &task]).contains("JobState=PENDING")
    });
    scontrol(&["update", &format!("jobid={task}"), "StartTime=now"]);
    let o = child.wait_with_output().unwrap();
    let (_, err) = ok(o);
    assert!(err.contains("4 ran, 0 cached, 0 failed"), "{err}");
    assert!(!err.contains("FAILED"), "{err}");
    assert!(err.contains("requeued"), "the requeue is shown: {err}");
    let starts = long_starts(&cf);
    assert_eq!(starts.len(), 4, "3 tasks, one of them twice: {starts:?}");
    let restarted: Vec<&String> = starts.iter().filter(|l| !l.ends_with("start=0")).collect();
    assert_eq!(
        restarted.len(),
        1,
        "resumed from its checkpoint: {starts:?}"
    );
    assert_eq!(
        array_tables(d.path()),
        2,
        "one array per stage, none resubmitted"
    );
    assert_eq!(files(&d.path().join(".idat/entries")).len(), 4);
    wait_queue_empty();
}

fn t_cancel() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let child = start_long(d.path(), &cf, "sweep.yaml", 2, &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        queued().len(),
        3,
        "two tasks running, one pending: {:?}",
        queued()
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("scancel: cancelled Slurm job(s) "), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    wait_queue_empty();
    // Only `first` was committed.
    assert_eq!(files(&d.path().join(".idat/entries")).len(), 1);
    // The tasks wrote their progress to the instance logs, where `run` reads it for its bars.
    let run = files(&d.path().join("runs")).pop().unwrap();
    let logs = files(&run.join("logs"));
    let long = logs
        .iter()
        .find(|p| p.to_string_lossy().contains("/long"))
        .unwrap();
    let log = lines(long);
    assert!(
        log.iter()
            .any(|l| l.starts_with("progress: ") && l.contains("/4")),
        "{log:?}"
    );
}

fn t_kill_resume() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let mut child = start_long(d.path(), &cf, "sweep.yaml", 2, &[]);
    child.kill().unwrap(); // SIGKILL: the submitter dies, its tasks run on
    child.wait().unwrap();
    assert_eq!(
        queued().len(),
        3,
        "two running, one pending: {:?}",
        queued()
    );
    let (_, err) = ok(run_cmd(d.path(), "sweep.yaml", &cf, &[]).output().unwrap());
    assert!(err.contains("3 ran, 1 cached, 0 failed"), "{err}");
    // The rerun waited for the queued and running tasks instead of submitting them again.
    assert_eq!(long_starts(&cf).len(), 3, "{:?}", lines(&cf));
    assert_eq!(array_tables(d.path()), 2);
    wait_queue_empty();
}

/// `scancel` of one running task from outside: that instance fails once, naming the state,
/// its job and the output file; the others finish (`--keep-going`).
fn t_external_cancel() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let child = start_long(d.path(), &cf, "sweep.yaml", 2, &["--keep-going"]);
    std::thread::sleep(Duration::from_secs(2));
    let (task, _) = running_tasks().into_iter().next().expect("a running task");
    let o = Command::new("scancel").arg(&task).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("3 ran, 0 cached, 1 failed"), "{err}");
    assert_eq!(err.matches("\nFAILED ").count(), 1, "{err}");
    assert!(
        err.contains(&format!("Slurm job {task} ended CANCELLED")),
        "{err}"
    );
    assert!(err.contains("cancelled outside this run"), "{err}");
    assert!(
        err.contains("Slurm output: ") && err.contains(&format!("{task}.out")),
        "{err}"
    );
    assert_eq!(files(&d.path().join(".idat/entries")).len(), 3);
    wait_queue_empty();
}

/// Sets a node back to service when dropped (also when the test fails).
struct Resume(String);
impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("scontrol")
            .args(["update", &format!("nodename={}", self.0), "state=resume"])
            .output();
        let _ =
            std::panic::catch_unwind(|| wait_until(60, "the node to be idle again", slurm_ready));
    }
}

/// The node of a running task is set down (as when it fails): a task that may not be
/// requeued ends NODE_FAIL, reported with its reason.
fn t_node_fail() {
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let nr = "slurm.sbatch_args=[--no-requeue]";
    let child = start_long(d.path(), &cf, "long.yaml", 1, &["--set", SLOW, "--set", nr]);
    let (task, node) = running_tasks().into_iter().next().expect("a running task");
    let _resume = Resume(node.clone());
    scontrol(&[
        "update",
        &format!("nodename={node}"),
        "state=down",
        "reason=idat-pipe test",
    ]);
    let o = child.wait_with_output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "Slurm job {task} ended NODE_FAIL (reason NodeDown"
        )),
        "{err}"
    );
    assert!(err.contains("its node failed"), "{err}");
    assert_eq!(files(&d.path().join(".idat/entries")).len(), 1);
}

/// A task above its `resources.mem` is killed by Slurm's memory enforcement and reported as
/// out of memory, naming the limit to raise.
fn t_oom() {
    let gather = slurm_config("JobAcctGatherParams");
    let task_plugin = slurm_config("TaskPlugin");
    if !gather.contains("OverMemoryKill") && !task_plugin.contains("cgroup") {
        return unsupported(
            "this Slurm does not enforce --mem (no OverMemoryKill, no task/cgroup)",
        );
    }
    let d = tempfile::tempdir().unwrap();
    let cf = d.path().join("count.txt");
    let o = run_cmd(
        d.path(),
        "long.yaml",
        &cf,
        &[
            "--set",
            SLOW,
            "--set",
            "stages.long.with.alloc_mb=600",
            "--set",
            "+stages.long.resources={mem: 150M}",
        ],
    )
    .output()
    .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("\nFAILED ").count(), 1, "{err}");
    assert!(err.contains("FAILED long\n  error: Slurm job "), "{err}");
    assert!(
        err.contains("ran out of memory: raise the stage's `resources.mem` (now 150M)"),
        "{err}"
    );
    assert!(err.contains("Slurm output: "), "{err}");
    assert_eq!(files(&d.path().join(".idat/entries")).len(), 1);
    wait_queue_empty();
}

/// More instances than `MaxArraySize` go out as several arrays; when sbatch refuses them
/// all, its message is printed once, not once per instance.
fn t_split() {
    let max: usize = slurm_config("MaxArraySize").parse().unwrap_or(0);
    if max == 0 || max > 50 {
        return unsupported(&format!(
            "MaxArraySize is {max}; the split test needs at most 50"
        ));
    }
    let n = max + 2;
    let xs = format!(
        "params.xs=[{}]",
        (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let d = tempfile::tempdir().unwrap();
    let p = pipeline("many.yaml");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            &p,
            "--executor",
            "slurm",
            "--set",
            FAST,
            "--set",
            &xs,
        ];
        args.extend_from_slice(extra);
        cli_cmd(d.path(), &args).output().unwrap()
    };
    let (_, err) = ok(run(&[]));
    assert!(
        err.contains(&format!("{n} ran, 0 cached, 0 failed")),
        "{err}"
    );
    assert_eq!(
        array_tables(d.path()),
        2,
        "{n} tasks in arrays of at most {max}"
    );
    let o = run(&[
        "--set",
        "params.text=other",
        "--set",
        "slurm.partition=idat-no-such-partition",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("\nFAILED ").count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "FAILED {n} instances with the same error: w[x=1], w[x=2], w[x=3] and {} more",
            n - 3
        )),
        "{err}"
    );
    // sbatch's message once (the partition also appears in the `resume with:` line).
    assert_eq!(
        err.matches("invalid partition specified").count(),
        1,
        "{err}"
    );
}
