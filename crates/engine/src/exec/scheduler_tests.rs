//! The scheduler's placement on a fake list of cards: an executor that runs each job when
//! polled (one per poll, so several stay in flight) and records where each ran and how many
//! instances each card held at once.
use super::*;
use crate::exec::executor::Capacity;
use crate::exec::gpus::{pool, select, visible, Ask, CardSet, DeviceSpec, Driver, DriverCard};
use crate::exec::job::StageJob;
use crate::exec::progress::Reporter;
use crate::exec::stage::exec_stage;
use crate::stages::{NoProgress, StageContext, StageKind};
use std::collections::HashMap;

const G: u64 = 1 << 30;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct P {
    #[allow(dead_code)]
    n: u32,
}
struct Out;
impl StageKind for Out {
    type Params = P;
    const NAME: &'static str = "test/out";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "writes its device";
    fn run(_: P, ctx: &mut StageContext) -> anyhow::Result<()> {
        std::fs::write(ctx.out_dir.join("device"), &ctx.device)?;
        Ok(())
    }
}

/// Runs one job per poll; records every job's device and card labels, and the most
/// instances each card (and the whole run) had at once.
struct FakeGpus {
    cards: CardSet,
    queue: Vec<(usize, StageJob)>,
    devices: HashMap<String, String>,
    now_on: HashMap<String, usize>,
    most_on: HashMap<String, usize>,
    most_gpu_jobs: usize,
    cancel: Arc<AtomicBool>,
}

impl FakeGpus {
    fn new(cards: CardSet) -> Self {
        FakeGpus {
            cards,
            queue: vec![],
            devices: HashMap::new(),
            now_on: HashMap::new(),
            most_on: HashMap::new(),
            most_gpu_jobs: 0,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Executor for FakeGpus {
    fn capacity(&self) -> Capacity {
        Capacity {
            cpus: 16,
            gpus: self.cards.cards.len(),
            jobs: usize::MAX,
        }
    }
    fn cards(&self) -> Option<&CardSet> {
        Some(&self.cards)
    }
    fn admits(&self, r: &crate::config::Resources) -> Result<(), String> {
        pool::admits(&self.cards, r.gpus as usize, gpus::gpu_mem(r)?)
    }
    fn submit(&mut self, index: usize, job: StageJob) -> Result<(), String> {
        let labels: Vec<String> = job.cards.iter().map(|c| c.label()).collect();
        self.devices.insert(
            job.instance.id.clone(),
            format!("{} {labels:?}", job.device),
        );
        for l in labels {
            let n = self.now_on.entry(l.clone()).or_default();
            *n += 1;
            let m = self.most_on.entry(l).or_default();
            *m = (*m).max(*n);
        }
        self.queue.push((index, job));
        let gpu_jobs = self
            .queue
            .iter()
            .filter(|(_, j)| !j.cards.is_empty())
            .count();
        self.most_gpu_jobs = self.most_gpu_jobs.max(gpu_jobs);
        Ok(())
    }
    fn poll(&mut self, _: Duration) -> Vec<Event> {
        if self.queue.is_empty() {
            return vec![];
        }
        let (index, job) = self.queue.remove(0);
        for c in &job.cards {
            *self.now_on.get_mut(&c.label()).unwrap() -= 1;
        }
        let outcome = exec_stage(&job, Arc::new(NoProgress), self.cancel.clone());
        let said = ProgressUpdate::Message(format!("done {}", job.instance.id));
        vec![
            Event::Progress {
                index,
                update: said,
            },
            Event::Finished(Finished {
                index,
                outcome,
                start: 0.0,
                end: 0.0,
            }),
        ]
    }
    fn cancel(&mut self) {}
}

/// Records start lines (`start ID on PLACE`) and progress messages, in order.
#[derive(Default, Clone)]
struct Said(Arc<std::sync::Mutex<Vec<String>>>);
impl Said {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}
impl Reporter for Said {
    fn started(&self, id: &str, place: &str) -> Arc<dyn Progress> {
        self.push(format!("start {id} on {place}"));
        Arc::new(self.clone())
    }
    fn finished(&self, _: &str, _: &str, _: f64) {}
    fn line(&self, _: &str) {}
}
impl Progress for Said {
    fn set_total(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn set_message(&self, m: &str) {
        self.push(m.to_string());
    }
}

/// Run `stages` (YAML of the `stages:` map, two-space indented) on `cards` with `--device
/// device`: the summary and the executor.
fn run_on(stages: &str, cards: CardSet, device: &str) -> (RunSummary, FakeGpus) {
    run_said(stages, cards, device).0
}

/// [`run_on`], and what the reporter was told.
fn run_said(stages: &str, cards: CardSet, device: &str) -> ((RunSummary, FakeGpus), Vec<String>) {
    let text = format!("version: 1\nname: t\nstages:\n{stages}");
    let mut reg = Registry::empty();
    reg.register::<Out>();
    let l = crate::config::load_str("t.yaml", &text, &[], &reg).unwrap();
    let g = Graph::build(&l);
    let d = tempfile::tempdir().unwrap();
    let cache = Cache::open(d.path().join("cache")).unwrap();
    let record = RunRecord::create(&d.path().join("runs"), &l.resolved, &[]).unwrap();
    let options = RunOptions {
        keep_going: true,
        forced: vec![false; g.instances.len()],
        device: device.into(),
    };
    let cancel = AtomicBool::new(false);
    let said = Said::default();
    let ctx = RunContext {
        graph: &g,
        registry: &reg,
        cache: &cache,
        record: &record,
        options: &options,
        cancel: &cancel,
        reporter: Arc::new(said.clone()),
    };
    let mut ex = FakeGpus::new(cards);
    let summary = schedule(&ctx, &mut ex);
    let lines = said.0.lock().unwrap().clone();
    ((summary, ex), lines)
}

/// A machine of `n` 10 GiB cards, seen through `CUDA_VISIBLE_DEVICES=env` (None: unset).
fn machine(n: usize, env: Option<&str>, ask: Ask) -> CardSet {
    struct M(usize);
    impl Driver for M {
        fn cards(&self) -> Result<Vec<DriverCard>, String> {
            Ok((0..self.0)
                .map(|i| DriverCard {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    name: "test card".into(),
                    total: 10 * G,
                })
                .collect())
        }
        fn memory(&self, _: &str) -> Result<(u64, u64), String> {
            Err("fake".into())
        }
    }
    let (cards, source) = visible(env, &M(n), || 0);
    select(cards, &source, &ask).unwrap()
}

fn ask(device: DeviceSpec) -> Ask {
    Ask {
        device,
        gpus: None,
        gpu_mem: None,
        per_gpu: None,
    }
}

const SWEEP: &str = "  train:\n    uses: test/out\n    matrix: {n: [1, 2, 3, 4, 5, 6, 7]}\n    \
                     resources: {gpus: 1}\n    with: {n: \"${matrix.n}\"}\n  \
                     prep:\n    uses: test/out\n    matrix: {n: [11, 12]}\n    with: {n: \"${matrix.n}\"}\n";

#[test]
fn concurrent_instances_get_distinct_cards_and_cpu_ones_none() {
    // 8 cards, CUDA_VISIBLE_DEVICES=6,2,5: three, cuda:0..2.
    let ((s, ex), said) = run_said(
        SWEEP,
        machine(8, Some("6,2,5"), ask(DeviceSpec::Cuda)),
        "cuda",
    );
    assert_eq!((s.ran, s.failed.len()), (9, 0));
    // Its start line and its progress messages name its card; a CPU instance's do not.
    for line in [
        "start train[n=2] on cuda:1 (GPU 2)",
        "cuda:1 (GPU 2): done train[n=2]",
        "start prep[n=11] on ",
        "done prep[n=11]",
    ] {
        assert!(said.iter().any(|l| l == line), "{line}: {said:?}");
    }
    assert_eq!(
        ex.most_gpu_jobs, 3,
        "three cards: three GPU instances at once"
    );
    let mut cards: Vec<_> = ex.most_on.iter().collect();
    cards.sort();
    assert_eq!(
        cards,
        [
            (&"cuda:0 (GPU 6)".to_string(), &1),
            (&"cuda:1 (GPU 2)".to_string(), &1),
            (&"cuda:2 (GPU 5)".to_string(), &1)
        ],
        "every card used, never by two instances"
    );
    assert_eq!(ex.devices["train[n=1]"], "cuda:0 [\"cuda:0 (GPU 6)\"]");
    assert_eq!(ex.devices["train[n=2]"], "cuda:1 [\"cuda:1 (GPU 2)\"]");
    assert_eq!(
        ex.devices["prep[n=11]"], "cpu []",
        "no GPU declared: the CPU, no card"
    );
    // The trace names each instance's card.
    let row = s.trace.iter().find(|r| r.instance == "train[n=3]").unwrap();
    assert_eq!(row.device, "cuda:2 (GPU 5)");
    let row = s.trace.iter().find(|r| r.instance == "prep[n=12]").unwrap();
    assert_eq!(row.device, "cpu");
}

#[test]
fn packed_instances_share_a_card_while_their_gpu_mem_fits() {
    let packed = "  train:\n    uses: test/out\n    matrix: {n: [1, 2, 3, 4, 5, 6, 7]}\n    \
                  resources: {gpus: 1, gpu_mem: 4G}\n    with: {n: \"${matrix.n}\"}\n";
    // Two 10 GiB cards: two 4 GiB instances on each at most.
    let (s, ex) = run_on(packed, machine(2, None, ask(DeviceSpec::Cuda)), "cuda");
    assert_eq!(s.ran, 7);
    assert_eq!(ex.most_gpu_jobs, 4);
    assert_eq!(ex.most_on["cuda:0 (GPU 0)"], 2);
    assert_eq!(ex.most_on["cuda:1 (GPU 1)"], 2);
    // `--gpu-mem 12G`: three per card.
    let mut a = ask(DeviceSpec::Cuda);
    a.gpu_mem = Some(12 * G);
    let (_, ex) = run_on(packed, machine(2, None, a), "cuda");
    assert_eq!(ex.most_gpu_jobs, 6);
    assert_eq!(ex.most_on["cuda:0 (GPU 0)"], 3);
    // More than a card offers: refused before it starts, naming the fix.
    let big = packed.replace("4G", "11G");
    let (s, _) = run_on(&big, machine(2, None, ask(DeviceSpec::Cuda)), "cuda");
    assert_eq!(s.failed.len(), 7);
    assert!(
        s.failed[0].error.contains("lower `resources.gpu_mem`"),
        "{}",
        s.failed[0].error
    );
}

#[test]
fn pinned_runs_every_gpu_instance_on_card_n_one_at_a_time() {
    let cards = machine(8, Some("2,3"), ask(DeviceSpec::Pinned(1)));
    let (s, ex) = run_on(SWEEP, cards, "cuda:1");
    assert_eq!(s.ran, 9);
    assert_eq!(ex.most_gpu_jobs, 1);
    assert_eq!(ex.most_on.len(), 1);
    assert_eq!(ex.devices["train[n=7]"], "cuda:1 [\"cuda:1 (GPU 3)\"]");
    assert_eq!(ex.devices["prep[n=12]"], "cpu []");
}

#[test]
fn under_device_cpu_cards_are_slots_and_two_card_instances_need_two() {
    // `--device cpu --gpus 2`: two GPU instances at a time, all on the CPU, no card named.
    let mut a = ask(DeviceSpec::Cpu);
    a.gpus = Some(2);
    let (s, ex) = run_on(SWEEP, machine(0, None, a), "cpu");
    assert_eq!(s.ran, 9);
    assert_eq!(ex.devices["train[n=1]"], "cpu []");
    assert!(ex.most_on.is_empty());
    let row = s.trace.iter().find(|r| r.instance == "train[n=1]").unwrap();
    assert_eq!(row.device, "cpu");
    // Two cards each, on three: one instance at a time, on two distinct cards.
    let two = SWEEP.replace("gpus: 1", "gpus: 2");
    let (s, ex) = run_on(&two, machine(3, None, ask(DeviceSpec::Cuda)), "cuda");
    assert_eq!(s.ran, 9);
    assert!(ex.most_on.values().all(|&n| n == 1));
    let d = &ex.devices["train[n=1]"];
    assert!(
        d.starts_with("cuda:0 [\"cuda:0 (GPU 0)\", \"cuda:1 (GPU 1)\"]"),
        "{d}"
    );
    let row = s.trace.iter().find(|r| r.instance == "train[n=1]").unwrap();
    assert_eq!(row.device, "cuda:0 (GPU 0) + cuda:1 (GPU 1)");
    // On one card: refused, naming the visible cards.
    let (s, _) = run_on(&two, machine(1, None, ask(DeviceSpec::Cuda)), "cuda");
    assert_eq!(s.failed.len(), 7);
    assert_eq!(
        s.failed[0].error,
        "needs 2 GPU(s) but this run offers 1: the driver (NVML) lists 1"
    );
}
