//! The executor's decisions against a scripted queue ([`Fake`]): how each way Slurm ends,
//! requeues or forgets a task becomes exactly one outcome. The real Slurm runs the same
//! paths in tests/slurm_e2e.rs where a one-node cluster can produce them.
use super::queue::{Commands, JobInfo, Listed, TaskId};
use super::script::{self, TaskRow};
use super::*;
use crate::cache::KeyParts;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct World {
    queue: HashMap<TaskId, Listed>,
    /// What `scontrol show job` says; absent: forgotten.
    jobs: HashMap<TaskId, JobInfo>,
    squeue_fails: bool,
    /// The batch scripts `sbatch` was given, in order.
    scripts: Vec<String>,
}

/// A queue the test scripts through the shared [`World`].
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Commands for Fake {
    fn sbatch(&self, _: &[String], script: &Path) -> Result<String, String> {
        let text = std::fs::read_to_string(script).map_err(|e| e.to_string())?;
        let mut w = self.0.lock().unwrap();
        w.scripts.push(text);
        Ok(format!("{}", 100 + w.scripts.len()))
    }
    fn squeue(&self, prefix: &str) -> Result<HashMap<TaskId, Listed>, String> {
        let w = self.0.lock().unwrap();
        if w.squeue_fails {
            return Err("squeue: error: slurm_load_jobs error: Socket timed out".into());
        }
        let mut q = w.queue.clone();
        q.retain(|_, l| l.name.starts_with(prefix));
        Ok(q)
    }
    fn job(&self, id: &TaskId) -> Result<Option<JobInfo>, String> {
        Ok(self.0.lock().unwrap().jobs.get(id).cloned())
    }
    fn scancel(&self, _: &[String]) -> Result<(), String> {
        Ok(())
    }
    fn max_array_size(&self) -> Result<usize, String> {
        Ok(4)
    }
}

const TASK: &str = "7_1";

fn task() -> TaskId {
    TaskId {
        array: "7".into(),
        task: 1,
    }
}

fn listed(state: &str, reason: &str) -> Listed {
    Listed {
        name: "idat-0123456789abcdef".into(),
        state: state.into(),
        reason: reason.into(),
    }
}

fn info(state: &str, reason: &str, exit_code: &str) -> JobInfo {
    JobInfo {
        state: state.into(),
        reason: reason.into(),
        exit_code: exit_code.into(),
        restarts: 0,
        job_id: "9".into(),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    fake: Fake,
    ex: SlurmExecutor,
    key: String,
    cache: Cache,
    parts: KeyParts,
}

/// An executor tracking one task `7_1` of instance `train[seed=1]` (mem 100M, time 1h).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let parts = KeyParts {
        format: crate::cache::CACHE_FORMAT,
        kind: "test/x".into(),
        kind_version: 1,
        params: serde_json::json!({"seed": 1}),
        upstream: vec![],
        external: vec![],
    };
    let key = parts.key();
    let fake = Fake::default();
    let command = ExecCommand {
        exe: "/bin/true".into(),
        pipeline: dir.path().join("p.yaml"),
        overrides: vec![],
        cache_dir: cache.root.clone(),
        device: "cpu".into(),
    };
    let mut ex = SlurmExecutor::with_slurm(
        Box::new(fake.clone()),
        SlurmConfig::default(),
        command,
        cache.clone(),
    );
    ex.grace = Duration::ZERO;
    let row = TaskRow {
        key: key.clone(),
        instance: "train[seed=1]".into(),
        log: dir.path().join("train.log"),
    };
    let resources = Resources {
        mem: Some("100M".into()),
        time: Some("1h".into()),
        ..Resources::default()
    };
    ex.track(0, row, task(), false, &resources);
    std::fs::create_dir_all(script::slurm_dir(&cache.root).join("exit")).unwrap();
    std::fs::create_dir_all(script::slurm_dir(&cache.root).join("out")).unwrap();
    Setup {
        _dir: dir,
        fake,
        ex,
        key,
        cache,
        parts,
    }
}

impl Setup {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.fake.0.lock().unwrap()
    }
    fn sentinel(&self, rc: i32, restarts: u32) {
        let text = format!("{rc} - {TASK} {restarts}\n");
        std::fs::write(script::sentinel(&self.cache.root, &self.key), text).unwrap();
    }
    fn out_file(&self, text: &str) {
        let p = script::slurm_dir(&self.cache.root).join(format!("out/{TASK}.out"));
        std::fs::write(p, text).unwrap();
    }
    fn commit(&self) {
        let tmp = self.cache.fresh_tmp(&self.key).unwrap();
        std::fs::write(tmp.join("out.txt"), "x").unwrap();
        self.cache
            .commit(&tmp, "train[seed=1]", &self.parts, 1.0, &Default::default())
            .unwrap();
    }
    /// One sweep: the finished outcomes and progress messages it reported.
    fn sweep(&mut self) -> (Vec<Outcome>, Vec<String>) {
        self.ex.sweep();
        let mut done = vec![];
        let mut msgs = vec![];
        for e in std::mem::take(&mut self.ex.events) {
            match e {
                Event::Finished(f) => done.push(f.outcome),
                Event::Progress {
                    update: ProgressUpdate::Message(m),
                    ..
                } => msgs.push(m),
                Event::Progress { .. } => {}
            }
        }
        (done, msgs)
    }
    /// The one failure the next sweep reports.
    fn failure(&mut self) -> String {
        let (done, _) = self.sweep();
        match &done[..] {
            [Outcome::Failed(e)] => e.clone(),
            other => panic!("expected one failure, got {other:?}"),
        }
    }
}

use crate::exec::executor::ProgressUpdate;

#[test]
fn listed_tasks_are_waited_for_whatever_their_sentinel_says() {
    let mut s = setup();
    s.world().queue.insert(task(), listed("RUNNING", "None"));
    for _ in 0..3 {
        assert!(s.sweep().0.is_empty());
    }
    // A failed attempt's sentinel while Slurm still lists the task: it may be requeued.
    s.sentinel(143, 0);
    s.world().queue.insert(task(), listed("COMPLETING", "None"));
    assert!(s.sweep().0.is_empty());
    // Without a view of the queue nothing is decided.
    s.world().queue.clear();
    s.world().squeue_fails = true;
    assert!(s.sweep().0.is_empty());
}

#[test]
fn a_requeued_task_is_waited_for_and_ends_once() {
    let mut s = setup();
    s.world().queue.insert(task(), listed("RUNNING", "None"));
    assert!(s.sweep().0.is_empty());
    // Attempt 1 was ended by `scontrol requeue` and wrote a failure sentinel; the task
    // waits for its begin time.
    s.sentinel(1, 0);
    s.world()
        .queue
        .insert(task(), listed("PENDING", "BeginTime"));
    let (done, msgs) = s.sweep();
    assert!(done.is_empty());
    assert_eq!(msgs, ["Slurm: PENDING (BeginTime), requeued"]);
    // Between two squeue views the task may be missing while scontrol says REQUEUED.
    s.world().queue.clear();
    s.world()
        .jobs
        .insert(task(), info("REQUEUED", "None", "0:0"));
    assert!(s.sweep().0.is_empty());
    // Attempt 2 runs (its script removed the old sentinel), commits and writes its own.
    std::fs::remove_file(script::sentinel(&s.cache.root, &s.key)).unwrap();
    s.world().queue.insert(task(), listed("RUNNING", "None"));
    assert!(s.sweep().0.is_empty());
    s.commit();
    s.sentinel(0, 1);
    let (done, _) = s.sweep();
    assert!(matches!(done[..], [Outcome::Ran(_)]), "{done:?}");
    assert!(s.ex.tasks.is_empty(), "tracked no longer");
    assert!(s.sweep().0.is_empty(), "never a second outcome");
}

#[test]
fn held_tasks_say_how_to_release_them() {
    let mut s = setup();
    s.world()
        .queue
        .insert(task(), listed("REQUEUE_HOLD", "JobHeldUser"));
    let (done, msgs) = s.sweep();
    assert!(done.is_empty());
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].contains("scontrol release 7_1"), "{msgs:?}");
    // The same state is not shown again.
    assert!(s.sweep().1.is_empty());
}

#[test]
fn states_slurm_ends_a_task_with_are_named_with_reason_job_and_logs() {
    let cases = [
        ("CANCELLED", "None", "0:15", "cancelled outside this run"),
        ("TIMEOUT", "TimeLimit", "0:15", "`resources.time` (now 1h)"),
        (
            "OUT_OF_MEMORY",
            "OutOfMemory",
            "0:125",
            "`resources.mem` (now 100M)",
        ),
        ("NODE_FAIL", "NodeDown", "0:0", "its node failed"),
        ("PREEMPTED", "None", "0:15", "preempted and not requeued"),
        ("BOOT_FAIL", "None", "0:0", "its node failed"),
        ("DEADLINE", "None", "0:0", "deadline"),
    ];
    for (state, reason, code, hint) in cases {
        for with_sentinel in [false, true] {
            let mut s = setup();
            s.world().jobs.insert(task(), info(state, reason, code));
            if with_sentinel {
                s.sentinel(1, 0);
            }
            let e = s.failure();
            let first = e.lines().next().unwrap();
            assert!(
                first.starts_with(&format!("Slurm job 7_1 ended {state} (")),
                "{e}"
            );
            assert!(first.contains(&format!("exit code {code}")), "{e}");
            assert!(first.contains("job id 9"), "{e}");
            if reason != "None" {
                assert!(first.contains(&format!("reason {reason}")), "{e}");
            }
            assert!(first.contains(hint), "{state}: {e}");
            assert!(e.contains("Slurm output: ") && e.contains("7_1.out"), "{e}");
            if with_sentinel {
                assert!(first.contains("exec-stage then exited 1"), "{e}");
            }
        }
    }
}

#[test]
fn a_memory_kill_reported_as_failed_reads_as_out_of_memory() {
    // jobacct_gather's OverMemoryKill (no cgroup) ends the task FAILED; slurmstepd says why.
    let mut s = setup();
    s.out_file(
        "idat-pipe: Slurm job 7_1 (job id 9), attempt 1 on vm\n\
         slurmstepd-vm: error: StepId=9.batch exceeded memory limit (198197248 > 104857600), being killed\n\
         slurmstepd-vm: error: Exceeded job memory limit\n",
    );
    s.world()
        .jobs
        .insert(task(), info("FAILED", "JobLaunchFailure", "0:9"));
    let e = s.failure();
    assert!(
        e.starts_with("Slurm job 7_1 ended FAILED (reason JobLaunchFailure, exit code 0:9"),
        "{e}"
    );
    assert!(
        e.contains("ran out of memory: raise the stage's `resources.mem` (now 100M)"),
        "{e}"
    );
    assert!(
        e.contains("\n    slurmstepd-vm: error: Exceeded job memory limit"),
        "{e}"
    );
}

#[test]
fn exec_stage_failing_on_its_own_keeps_its_error() {
    let mut s = setup();
    s.cache
        .write_record(&crate::cache::InstanceRecord {
            instance: "train[seed=1]".into(),
            key: s.key.clone(),
            parts: s.parts.clone(),
            status: "failed".into(),
            error: Some("boom".into()),
        })
        .unwrap();
    s.sentinel(1, 0);
    s.world()
        .jobs
        .insert(task(), info("FAILED", "NonZeroExitCode", "1:0"));
    assert_eq!(s.failure(), "boom (exit code 1, Slurm job 7_1)");
}

#[test]
fn forgotten_tasks_are_explained_from_their_output_file() {
    // Gone from squeue and from scontrol (MinJobAge), no sentinel, no entry.
    let mut s = setup();
    s.out_file(
        "idat-pipe: Slurm job 7_1 (job id 9), attempt 1 on n3\nepoch 4\n\
         slurmstepd: error: *** JOB 9 ON n3 CANCELLED AT 2026-12-07T15:34:09 DUE TO TIME LIMIT ***\n",
    );
    let e = s.failure();
    assert!(e.contains("Slurm no longer knows the job"), "{e}");
    assert!(
        e.contains("its output file says it was ended TIMEOUT"),
        "{e}"
    );
    assert!(e.contains("`resources.time` (now 1h)"), "{e}");
    assert!(e.contains("DUE TO TIME LIMIT"), "{e}");
    // The same, with nothing in the output file: still one failure naming the sentinel.
    let mut s = setup();
    let e = s.failure();
    assert!(e.contains("without writing its exit code to"), "{e}");
    assert!(e.contains("Slurm output: "), "{e}");
    // Forgotten, but the entry was committed (the sentinel was lost): it ran.
    let mut s = setup();
    s.commit();
    assert!(matches!(s.sweep().0[..], [Outcome::Ran(_)]));
}

#[test]
fn a_forgotten_task_waits_out_the_grace_period_for_a_late_sentinel() {
    let mut s = setup();
    s.ex.grace = Duration::from_secs(3600);
    assert!(s.sweep().0.is_empty());
    s.sentinel(2, 0);
    let e = s.failure();
    assert_eq!(e, "exec-stage failed (exit code 2, Slurm job 7_1)");
}

#[test]
fn an_array_declaring_no_gpu_runs_its_tasks_on_the_cpu() {
    let mut s = setup();
    s.ex.command.device = "cuda".into();
    let row = TaskRow {
        key: s.key.clone(),
        instance: "x".into(),
        log: s._dir.path().join("x.log"),
    };
    let cpu = Resources::default();
    let gpu = Resources {
        gpus: 1,
        ..Resources::default()
    };
    s.ex.sbatch_array("prep", &[(row.clone(), false)], &cpu)
        .unwrap();
    s.ex.sbatch_array("train", &[(row, false)], &gpu).unwrap();
    let w = s.fake.0.lock().unwrap();
    assert!(w.scripts[0].contains(" --device 'cpu'"), "{}", w.scripts[0]);
    assert!(
        w.scripts[1].contains(" --device 'cuda'"),
        "{}",
        w.scripts[1]
    );
}
