//! Placement with a fake driver: `CUDA_VISIBLE_DEVICES`, `--device`, `--gpus`, packing and
//! the free-memory check (the scheduler's own test is in `scheduler_tests.rs`).
use super::pool::{admits, Pool};
use super::*;

const G: u64 = 1 << 30;

/// A machine with `n` 80 GiB cards `GPU-000N-...`, each with `free` bytes free.
pub(crate) struct Fake {
    pub cards: Vec<DriverCard>,
    pub free: u64,
}

impl Fake {
    pub(crate) fn new(n: usize) -> Fake {
        let cards = (0..n)
            .map(|i| DriverCard {
                index: i,
                uuid: format!("GPU-{i:04}aaaa-0000-0000-0000-00000000000{i}"),
                name: "NVIDIA H100 80GB HBM3".into(),
                total: 80 * G,
            })
            .collect();
        Fake {
            cards,
            free: 80 * G,
        }
    }
}

impl Driver for Fake {
    fn cards(&self) -> Result<Vec<DriverCard>, String> {
        Ok(self.cards.clone())
    }
    fn memory(&self, uuid: &str) -> Result<(u64, u64), String> {
        match self.cards.iter().find(|c| c.uuid == uuid) {
            Some(c) => Ok((self.free, c.total)),
            None => Err(format!("no card {uuid}")),
        }
    }
}

fn env(v: &str, d: &dyn Driver) -> Vec<Card> {
    visible(Some(v), d, || 0).0
}

/// Why `CUDA_VISIBLE_DEVICES=v` ended early, as [`Source::describe`] says it.
fn ended(v: &str, d: &dyn Driver) -> String {
    let (cards, source) = visible(Some(v), d, || 0);
    source.describe(cards.len())
}

fn ids(cards: &[Card]) -> Vec<String> {
    cards.iter().map(|c| c.id.clone()).collect()
}

#[test]
fn cuda_visible_devices_follows_cudas_rules() {
    let d = Fake::new(8);
    // A subset, renumbered cuda:0.. in the listed order; each card named both ways.
    let c = env("2,5", &d);
    assert_eq!(ids(&c), ["2", "5"]);
    assert_eq!(c[1].label(), "cuda:1 (GPU 5)");
    assert_eq!(c[1].uuid.as_deref(), Some(d.cards[5].uuid.as_str()));
    assert_eq!(c[1].total, Some(80 * G));
    assert_eq!(ids(&env("5, 2", &d)), ["5", "2"]);
    // Empty: no GPU at all.
    assert!(env("", &d).is_empty());
    // The list ends at the first invalid entry.
    assert_eq!(ids(&env("0,-1,2", &d)), ["0"]);
    assert_eq!(
        ids(&env("1,9,2", &d)),
        ["1"],
        "no card 9 on an 8-card machine"
    );
    assert_eq!(ids(&env("1,,2", &d)), ["1"]);
    assert_eq!(ids(&env("1,x,2", &d)), ["1"]);
    assert_eq!(ids(&env("3,3,4", &d)), ["3"], "a card named twice ends it");
    // UUIDs, whole or a prefix naming one card; an ambiguous or unknown one ends the list.
    assert_eq!(ids(&env(&d.cards[6].uuid.clone(), &d)), ["6"]);
    assert_eq!(ids(&env("GPU-0004,1", &d)), ["4", "1"]);
    assert_eq!(ids(&env("1,GPU-000", &d)), ["1"], "prefix of every card");
    assert_eq!(ids(&env("GPU-ffff,1", &d)), Vec::<String>::new());
    assert_eq!(
        ids(&env("GPU-0004,4", &d)),
        ["4"],
        "the same card by UUID and index"
    );
    // One MIG instance only.
    assert_eq!(ids(&env("MIG-aaaa/1/0,MIG-aaaa/2/0", &d)), ["MIG-aaaa/1/0"]);
    // Without a driver, entries are taken as given.
    let c = env("GPU-8932f937,3", &NoDriver);
    assert_eq!(ids(&c), ["GPU-8932f937", "3"]);
    assert_eq!(c[0].uuid.as_deref(), Some("GPU-8932f937"));
    assert_eq!(c[1].total, None);
    assert_eq!(ids(&env("0,-1", &NoDriver)), ["0"]);
    assert_eq!(ids(&env("03,3,1", &NoDriver)), ["3"], "03 is card 3");
}

#[test]
fn the_entry_that_ends_cuda_visible_devices_is_named() {
    let d = Fake::new(8);
    let tail =
        "; CUDA ignores what follows it (fix the entry or list more cards there, or unset it)";
    for (v, n, why) in [
        (
            "0,-1,2",
            1,
            "`-1`, not a card index, `GPU-` UUID or `MIG-` id",
        ),
        ("1,1", 1, "`1`, listed twice"),
        ("3,GPU-0003", 1, "`GPU-0003`, GPU 3 listed twice"),
        ("1,9,2", 1, "`9`, no such card (the driver lists 8)"),
        ("1,,2", 1, "an empty entry"),
        ("1,GPU-000", 1, "`GPU-000`, a UUID prefix of 8 cards"),
        (
            "GPU-ffff",
            0,
            "`GPU-ffff`, a UUID no card of the driver has",
        ),
        (
            "MIG-a/1/0,MIG-a/2/0",
            1,
            "`MIG-a/2/0`, a second MIG device (CUDA uses one)",
        ),
    ] {
        assert_eq!(
            ended(v, &d),
            format!("CUDA_VISIBLE_DEVICES=`{v}` makes {n} visible: the list ends at {why}{tail}")
        );
    }
    assert_eq!(
        ended("0,-1", &NoDriver),
        format!("CUDA_VISIBLE_DEVICES=`0,-1` makes 1 visible: the list ends at `-1`, not a card index, `GPU-` UUID or `MIG-` id{tail}")
    );
    // A list read to its end, or empty, has nothing to name.
    for v in ["2,5", ""] {
        assert!(ended(v, &d).ends_with("visible (list more cards there, or unset it)"));
    }
}

#[test]
fn without_the_variable_the_driver_then_the_device_files_decide() {
    let (c, s) = visible(None, &Fake::new(3), || 99);
    assert_eq!(
        (ids(&c), s),
        (vec!["0".into(), "1".into(), "2".into()], Source::Driver)
    );
    let (c, s) = visible(None, &NoDriver, || 2);
    assert_eq!((c.len(), s), (2, Source::DevFiles));
    assert_eq!(c[1].label(), "cuda:1 (GPU 1)");
    let (c, s) = visible(None, &NoDriver, || 0);
    assert!(c.is_empty());
    assert!(s.describe(0).contains("`--gpus N` declares N"));
}

fn ask(device: DeviceSpec, gpus: Option<usize>) -> Ask {
    Ask {
        device,
        gpus,
        gpu_mem: None,
        per_gpu: None,
    }
}

#[test]
fn device_and_gpus_narrow_the_visible_cards() {
    let d = Fake::new(4);
    let sel = |v: &str, a: Ask| {
        let (c, s) = visible(if v == "-" { None } else { Some(v) }, &d, || 0);
        select(c, &s, &a)
    };
    let s = sel("-", ask(DeviceSpec::Cuda, None)).unwrap();
    assert_eq!((s.cards.len(), s.place), (4, true));
    let s = sel("-", ask(DeviceSpec::Cuda, Some(2))).unwrap();
    assert_eq!(ids(&s.cards), ["0", "1"]);
    let e = sel("-", ask(DeviceSpec::Cuda, Some(5))).unwrap_err();
    assert_eq!(e, "--gpus 5: the driver (NVML) lists 4");
    let e = sel("1,3", ask(DeviceSpec::Cuda, Some(3))).unwrap_err();
    assert!(
        e.contains("CUDA_VISIBLE_DEVICES=`1,3` makes 2 visible"),
        "{e}"
    );
    // Pinned: card N of the visible ones, alone.
    let s = sel("1,3", ask(DeviceSpec::Pinned(1), None)).unwrap();
    assert_eq!(s.cards.len(), 1);
    assert_eq!(s.cards[0].label(), "cuda:1 (GPU 3)");
    assert!(sel("1,3", ask(DeviceSpec::Pinned(1), Some(1))).is_ok());
    let e = sel("1,3", ask(DeviceSpec::Pinned(2), None)).unwrap_err();
    assert!(
        e.starts_with("--device cuda:2: no such card: CUDA_VISIBLE_DEVICES"),
        "{e}"
    );
    let e = sel("-", ask(DeviceSpec::Pinned(0), Some(2))).unwrap_err();
    assert!(e.contains("use --device cuda --gpus 2"), "{e}");
    // Under `--device cpu` the cards are slots: `--gpus` may declare more, nothing is placed.
    let s = sel("-", ask(DeviceSpec::Cpu, Some(6))).unwrap();
    assert_eq!((s.cards.len(), s.place), (6, false));
    // No driver: `--gpus N` declares N cards, `cuda:N` declares card N.
    let (c, src) = visible(None, &NoDriver, || 0);
    let s = select(c.clone(), &src, &ask(DeviceSpec::Cuda, Some(3))).unwrap();
    assert_eq!(ids(&s.cards), ["0", "1", "2"]);
    assert!(s.source.contains("--gpus 3 declares 3"));
    let s = select(c, &src, &ask(DeviceSpec::Pinned(2), None)).unwrap();
    assert_eq!(s.cards[0].label(), "cuda:2 (GPU 2)");
    // `--gpu-mem` states what each card offers; `--per-gpu 0` is refused.
    let mut a = ask(DeviceSpec::Cuda, None);
    a.gpu_mem = Some(20 * G);
    assert!(sel("-", a)
        .unwrap()
        .cards
        .iter()
        .all(|c| c.total == Some(20 * G)));
    a.per_gpu = Some(0);
    assert!(sel("-", a).is_err());
}

#[test]
fn device_spec_and_device_of() {
    assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Pinned(3)));
    assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
    for bad in ["gpu", "cuda:", "cuda:-1", "CUDA", "cuda:1,2"] {
        let e = DeviceSpec::parse(bad).unwrap_err();
        assert!(e.contains("expected `cpu`, `cuda` or `cuda:N`"), "{e}");
    }
    use crate::exec::scheduler::device_of;
    let card = |k| declared(k..k + 1).remove(0);
    assert_eq!(
        device_of("cuda", 0, Some(&[])),
        "cpu",
        "no GPU declared: the CPU"
    );
    assert_eq!(device_of("cuda:1", 0, None), "cpu");
    assert_eq!(device_of("cuda", 2, Some(&[card(3), card(1)])), "cuda:3");
    assert_eq!(
        device_of("cuda", 1, None),
        "cuda",
        "unplaced (Slurm): as given"
    );
    assert_eq!(device_of("cpu", 1, None), "cpu");
}

fn set(n: usize, total: Option<u64>, per_gpu: Option<usize>) -> CardSet {
    let mut cards = declared(0..n);
    for c in &mut cards {
        c.total = total;
    }
    CardSet {
        cards,
        source: format!("--gpus {n} declares {n}"),
        per_gpu,
        place: true,
    }
}

#[test]
fn each_instance_gets_cards_of_its_own() {
    let mut p = Pool::new(set(3, Some(80 * G), None));
    let a = p.take(1, None).unwrap();
    let b = p.take(1, None).unwrap();
    let c = p.take(1, None).unwrap();
    let mut all = [a[0], b[0], c[0]];
    all.sort();
    assert_eq!(all, [0, 1, 2]);
    assert_eq!(p.take(1, None), None, "every card is taken");
    assert_eq!(p.take(1, Some(G)), None, "a whole card is not shared");
    p.give_back(&b, None);
    assert_eq!(p.take(1, None), Some(b.clone()));
    p.give_back(&a, None);
    p.give_back(&c, None);
    // Two cards for one instance: distinct.
    let two = p.take(2, None).unwrap();
    assert_ne!(two[0], two[1]);
    assert_eq!(p.take(2, None), None);
    assert_eq!(p.take(0, None), Some(vec![]), "a CPU instance needs none");
}

#[test]
fn packing_sums_gpu_mem_against_each_card() {
    let mut p = Pool::new(set(2, Some(10 * G), None));
    // Spread first: the least loaded card.
    let a = p.take(1, Some(4 * G)).unwrap();
    let b = p.take(1, Some(4 * G)).unwrap();
    assert_ne!(a, b);
    let c = p.take(1, Some(4 * G)).unwrap();
    let d = p.take(1, Some(4 * G)).unwrap();
    assert_eq!((p.instances_on(0), p.instances_on(1)), (2, 2));
    assert_eq!(
        p.take(1, Some(4 * G)),
        None,
        "8 of 10 GiB used on each: 4 more do not fit"
    );
    let e = p.take(1, Some(2 * G)).expect("2 GiB still fit");
    assert_eq!(
        p.take(1, None),
        None,
        "an instance without gpu_mem waits for a free card"
    );
    // Empty the card `a` is on.
    for (x, m) in [(&a, 4), (&b, 4), (&c, 4), (&d, 4), (&e, 2)] {
        if x[0] == a[0] {
            p.give_back(x, Some(m * G));
        }
    }
    assert_eq!(p.instances_on(a[0]), 0);
    // Card 0 is free again: a whole-card instance takes it, and then no packed one joins.
    let w = p.take(1, None).unwrap();
    assert_eq!(p.instances_on(w[0]), 1);
    assert_eq!(
        p.take(1, Some(4 * G)),
        None,
        "8 of 10 GiB on one card, the other taken whole"
    );
    p.give_back(&w, None);
    assert_eq!(p.take(1, Some(4 * G)), Some(w));
}

#[test]
fn unknown_memory_takes_a_card_alone_and_per_gpu_caps_a_card() {
    let mut p = Pool::new(set(1, None, None));
    assert!(p.take(1, Some(G)).is_some());
    assert_eq!(p.take(1, Some(G)), None, "memory unknown: no packing");
    let mut p = Pool::new(set(1, None, Some(3)));
    for _ in 0..3 {
        assert!(
            p.take(1, None).is_some(),
            "--per-gpu 3 shares without gpu_mem"
        );
    }
    assert_eq!(p.take(1, None), None);
    let mut p = Pool::new(set(1, Some(10 * G), Some(2)));
    assert!(p.take(1, Some(G)).is_some());
    assert!(p.take(1, Some(G)).is_some());
    assert_eq!(p.take(1, Some(G)), None, "memory left, but --per-gpu 2");
}

#[test]
fn admits_names_what_to_change() {
    let one = set(1, Some(80 * G), None);
    assert!(admits(&one, 1, Some(80 * G)).is_ok());
    let e = admits(&one, 2, None).unwrap_err();
    assert_eq!(
        e,
        "needs 2 GPU(s) but this run offers 1: --gpus 1 declares 1"
    );
    let e = admits(&one, 1, Some(81 * G)).unwrap_err();
    assert!(
        e.starts_with("resources.gpu_mem 81.0 GiB is more than cuda:0 (GPU 0) offers (80.0 GiB)"),
        "{e}"
    );
    assert!(e.contains("--gpu-mem SIZE"), "{e}");
    let (c, s) = visible(Some(""), &Fake::new(2), || 0);
    let none = select(c, &s, &ask(DeviceSpec::Cuda, None)).unwrap();
    let e = admits(&none, 1, None).unwrap_err();
    assert!(e.contains("CUDA_VISIBLE_DEVICES=`` makes 0 visible"), "{e}");
    assert!(admits(&none, 0, None).is_ok());
}

#[test]
fn free_memory_is_checked_where_the_driver_knows_the_card() {
    let mut d = Fake::new(8);
    let card = env("3,5", &d).remove(1);
    d.free = 30 * G;
    let ok = check_free(&d, &card, 6 * G).unwrap();
    assert_eq!(
        ok,
        "cuda:1 (GPU 5): 30.0 GiB free, resources.gpu_mem 6.0 GiB fits"
    );
    d.free = 3 * G;
    let e = check_free(&d, &card, 6 * G).unwrap_err();
    assert!(e.starts_with("cuda:1 (GPU 5) has 3.0 GiB free of 80.0 GiB but this instance declares resources.gpu_mem 6.0 GiB"), "{e}");
    for fix in [
        "lower `resources.gpu_mem`",
        "free the card",
        "`--device cuda:N`",
    ] {
        assert!(e.contains(fix), "{e}");
    }
    // A card the driver does not know, or no driver: skipped, and said.
    let declared = env("3", &NoDriver).remove(0);
    assert!(check_free(&d, &declared, G).unwrap().contains("skipped"));
    let by_uuid = env("GPU-0003", &NoDriver).remove(0);
    let s = check_free(&NoDriver, &by_uuid, G).unwrap();
    assert_eq!(
        s,
        "free-memory check of cuda:0 (GPU GPU-0003) skipped: no GPU driver"
    );
}

#[test]
fn mixed_models_without_pci_bus_order_are_warned_about() {
    let mut d = Fake::new(2);
    assert_eq!(order_warning(&d, None), None, "one model");
    d.cards[1].name = "NVIDIA A100-SXM4-40GB".into();
    let w = order_warning(&d, None).unwrap();
    assert!(w.contains("set CUDA_DEVICE_ORDER=PCI_BUS_ID"), "{w}");
    assert!(
        w.contains("NVIDIA A100-SXM4-40GB, NVIDIA H100 80GB HBM3"),
        "{w}"
    );
    assert_eq!(order_warning(&d, Some("PCI_BUS_ID")), None);
    assert_eq!(order_warning(&NoDriver, None), None);
}

#[test]
fn preflight_names_the_cards_then_checks_each_or_says_why_not() {
    let mut d = Fake::new(4);
    let cards = env("1,3", &d);
    let (lines, ok) = preflight("cuda:0", &cards, None, Ok(&d));
    assert_eq!(
        lines,
        [
            "device cuda:0 (GPU 1), NVIDIA H100 80GB HBM3, 80.0 GiB usable; \
          cuda:1 (GPU 3), NVIDIA H100 80GB HBM3, 80.0 GiB usable"
        ]
    );
    assert!(ok.is_ok());
    d.free = 10 * G;
    let (lines, ok) = preflight("cuda:0", &cards, Some(6 * G), Ok(&d));
    assert_eq!(lines.len(), 3, "one line per card: {lines:?}");
    assert!(
        lines[2].starts_with("cuda:1 (GPU 3): 10.0 GiB free"),
        "{lines:?}"
    );
    assert!(ok.is_ok());
    let (lines, ok) = preflight("cuda:0", &cards, Some(12 * G), Ok(&d));
    assert_eq!(lines.len(), 1);
    assert!(ok
        .unwrap_err()
        .starts_with("cuda:0 (GPU 1) has 10.0 GiB free"));
    let (lines, ok) = preflight("cuda:0", &cards, Some(12 * G), Err("no NVML".into()));
    assert_eq!(lines[1], "free-memory check skipped: no NVML");
    assert_eq!(lines.len(), 2, "said once");
    assert!(ok.is_ok());
    assert_eq!(preflight("cpu", &[], Some(G), Ok(&d)).0.len(), 0);
}

#[test]
fn placement_flags_and_gpu_mem_that_do_nothing_are_warned_about_once() {
    use super::advice::{warnings, Demand};
    let d = |gpu_instances, with_gpu_mem| Demand {
        gpu_instances,
        with_gpu_mem,
    };
    // Packing off: the cards' memory is unknown and --gpu-mem not given.
    let w = warnings(Some(&set(2, None, None)), d(4, 3), None, None);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("3 instance(s) state resources.gpu_mem, but the memory of cuda:0 (GPU 0), cuda:1 (GPU 1) is unknown")
            && w[0].contains("each takes a card alone; give --gpu-mem SIZE"),
        "{w:?}"
    );
    // Known memory, or --per-gpu sharing anyway, or nobody states gpu_mem: nothing to say.
    assert!(warnings(
        Some(&set(2, Some(80 * G), None)),
        d(4, 3),
        Some(80 * G),
        None
    )
    .is_empty());
    assert!(warnings(Some(&set(2, None, Some(2))), d(4, 3), None, Some(2)).is_empty());
    assert!(warnings(Some(&set(2, None, None)), d(4, 0), None, None).is_empty());
    // --gpu-mem with no stage stating gpu_mem.
    let w = warnings(Some(&set(2, Some(8 * G), None)), d(4, 0), Some(8 * G), None);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("--gpu-mem ignored: no stage states resources.gpu_mem"),
        "{w:?}"
    );
    // --device cpu without --gpus: no card is counted.
    let w = warnings(None, d(4, 3), Some(8 * G), Some(2));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "--gpu-mem (8.0 GiB) and --per-gpu 2 ignored: under --device cpu without --gpus"
        ),
        "{w:?}"
    );
    assert!(warnings(None, d(4, 3), None, None).is_empty());
    // No GPU instance at all.
    let w = warnings(Some(&set(1, None, Some(2))), d(0, 0), None, Some(2));
    assert_eq!(
        w,
        ["--per-gpu 2 ignored: no stage of this pipeline declares resources.gpus"]
    );
}
