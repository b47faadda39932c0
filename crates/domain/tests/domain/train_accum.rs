//! Gradient accumulation (`optim.accum_steps`, issue 26): two micro-batches of 32 train
//! the weights one batch of 64 trains (AT, iDAT with KL and with MSE), the logged losses are
//! the full batch's, a bad `accum_steps` is refused at validate, and pipelines that do not
//! set it keep their cache keys.
//!
//! The training runs go through `idat_domain::train::train`, the loop the stages run, on
//! tiny random-backbone ViTs (`seq_adapter`), recording every trainable tensor after every
//! optimiser step through the loop's progress hook.

use crate::train_support::{trainables, values};
use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use idat_domain::data::image::{Normalize, NormalizeKind};
use idat_domain::data::loader::DecodedSplit;
use idat_domain::nn::adapters::{AdapterConfig, SeqAdapterConfig};
use idat_domain::nn::vit::{Vit, VitConfig};
use idat_domain::train::{
    self, cotrain::TrainData, DistillConfig, DistillDirection, DistillKind, EpochRow, Member,
    OptimConfig, TrainHooks,
};
use idat_engine::cache::keys::params_parts;
use idat_engine::config::load_str;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The AdamW settings a comparison runs with: the difference between accumulated and
/// whole-batch training is float32 rounding, but how far AdamW carries it depends on eps.
#[derive(Clone, Copy, Debug)]
enum Adam {
    /// The recipe's AdamW (eps 1e-8), lr 1e-2: the update is about lr * m / sqrt(v),
    /// normalised, so the scale of the gradients hardly matters but the relative rounding
    /// error of a gradient component whose terms nearly cancel goes into the update whole.
    Recipe,
    /// eps 1, lr 3: for these gradients (|g| << 1) the update is about lr * m, momentum
    /// SGD, so the weights follow the gradients' values, scale included, and rounding is
    /// not amplified.
    Linear,
}

impl Adam {
    /// Bound on |accum_steps 2 - accum_steps 1| for every trainable scalar after every
    /// optimiser step, in units of the tensor's largest magnitude (at least 1e-2), as the
    /// co-training trajectory test measures its error.
    ///
    /// Without dropout or drop path the two runs compute the same sums in another order
    /// (two GEMMs of 32 rows and an addition instead of one of 64; each half's mean loss
    /// scaled by 0.5 instead of one mean over 64), so each gradient differs by float32
    /// rounding, ~1e-7 relative to its terms.
    ///
    /// `Linear`, 1e-5: the weights differ by float32 rounding of the updates, measured
    /// (CPU, OpenBLAS) at most 1.0e-6 to 1.8e-6 over the 8 steps below and 7.7e-7 in the
    /// uneven test: a factor ~5 above.
    ///
    /// `Recipe`, 1e-4: AdamW's normalised update passes on the relative error of a
    /// gradient component whose terms nearly cancel (lr 1e-2 times, say, 1e-4 relative),
    /// and that error is as large as the data make it: measured 4.7e-7 to 9.2e-7 on the
    /// batches of 64 below, 1.8e-5 in the uneven test (where, tried, micro-batches of 24
    /// and 24 or 47 and 1 differ from one pass over 48 by 1.3e-5 to 4e-5 too).
    ///
    /// Wrong accumulations fail (tried on `train_step_accum`): an AdamW step per
    /// micro-batch differs by ~1 in both; micro-batch losses not scaled by their share of
    /// the rows (gradients doubled) by 2 to 12 in `Linear` but only 1.1e-4 to 2.1e-4 in
    /// `Recipe`, as AdamW's normalisation all but hides a scale (hence both); equal
    /// weights for unequal micro-batches by 1.6 in the uneven test. Every run must also
    /// move every trainable tensor by more than 100 times the bound.
    fn weight_tol(self) -> f64 {
        match self {
            Adam::Recipe => 1e-4,
            Adam::Linear => 1e-5,
        }
    }
}

/// Bound on |accum_steps 2 - accum_steps 1| / max(|accum_steps 1|, 1) for each logged
/// epoch mean (loss, CE_s, CE_t, D) and the train top-1 (as a fraction): f32 losses of
/// logits equal to rounding, averaged over the steps (measured at most 1.5e-7).
const LOSS_TOL: f64 = 1e-6;

/// The student (large) and teacher (small): 2 blocks, 4 tokens + CLS, 5 classes.
fn arch(embed_dim: usize) -> VitConfig {
    serde_json::from_value(serde_json::json!({
        "img_size": 16, "patch_size": 8, "num_classes": 5,
        "embed_dim": embed_dim, "depth": 2, "num_heads": 2
    }))
    .unwrap()
}

/// A training member as the stages build one: a (random) frozen backbone, `seq_adapter`,
/// AdamW from `optim`. The same `seed` gives the same weights.
fn member(name: &str, embed_dim: usize, seed: u64, optim: &OptimConfig) -> Member {
    let cfg = arch(embed_dim);
    let dev = Device::Cpu;
    let backbone = Vit::random_backbone(&cfg, &dev, seed).unwrap();
    let adapter = AdapterConfig::SeqAdapter(SeqAdapterConfig::default());
    let vit = Vit::new(&cfg, &adapter, backbone, &dev, seed).unwrap();
    Member::new(name, vit, optim).unwrap()
}

/// `n` random 16x16 images with labels in 0..5 (a fixed linear congruential stream).
fn split(n: usize, seed: u64) -> DecodedSplit {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    DecodedSplit {
        images: (0..n * 16 * 16 * 3).map(|_| next() as u8).collect(),
        labels: (0..n).map(|_| next() % 5).collect(),
        size: 16,
    }
}

/// Every trainable tensor by `<member>.<name>`, flattened.
type Snapshot = Vec<(String, Vec<f64>)>;

/// Hooks that copy every trainable tensor each time the loop reports a finished step.
struct Recorder {
    dir: PathBuf,
    vars: Vec<(String, Var)>,
    snapshots: RefCell<Vec<Snapshot>>,
}

impl Recorder {
    fn snapshot(&self) -> Snapshot {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), values(v.as_tensor())))
            .collect()
    }
}

impl TrainHooks for Recorder {
    fn checkpoint_dir(&self) -> &Path {
        &self.dir
    }
    fn log(&self, _: &str) {}
    fn set_total(&self, _: u64) {}
    fn set_position(&self, pos: u64) {
        if pos > 0 {
            self.snapshots.borrow_mut().push(self.snapshot());
        }
    }
    fn set_message(&self, _: &str) {}
    fn check_cancel(&self) -> Result<()> {
        Ok(())
    }
}

/// What one run gives: the initial tensors, the tensors after every step, the epoch rows.
struct Run {
    init: Snapshot,
    steps: Vec<Snapshot>,
    rows: Vec<EpochRow>,
}

/// 128 training images, batch 64 (2 steps per epoch), 4 epochs: 2 of per-step warm-up, 1
/// of cosine, 1 of cool-down, so the 8 optimiser steps each have their own learning rate.
fn optim(accum_steps: usize, adam: Adam) -> OptimConfig {
    let (lr, eps) = match adam {
        Adam::Recipe => (1e-2, 1e-8),
        Adam::Linear => (3.0, 1.0),
    };
    OptimConfig {
        lr,
        eps,
        weight_decay: 0.05,
        epochs: 3,
        warmup_epochs: 2,
        cooldown_epochs: 1,
        warmup_lr: lr / 100.0,
        min_lr: lr / 10.0,
        per_step_schedule: true,
        batch_size: 64,
        accum_steps,
        ..OptimConfig::default()
    }
}

/// Trains the student alone (AT, `distill` None) or with the teacher (iDAT).
fn run(optim: &OptimConfig, distill: Option<&DistillConfig>) -> Result<Run> {
    let mut members = vec![member("student", 32, 11, optim)];
    if distill.is_some() {
        members.push(member("teacher", 16, 12, optim));
    }
    let (train_split, test_split) = (split(128, 1), split(10, 2));
    let data = TrainData {
        train: &train_split,
        test: &test_split,
        normalize: Normalize::from_kind(NormalizeKind::Half),
        device: &Device::Cpu,
    };
    let tmp = tempfile::tempdir().unwrap();
    let rec = Recorder {
        dir: tmp.path().join("ckpt"),
        vars: trainables(&members),
        snapshots: RefCell::new(Vec::new()),
    };
    let init = rec.snapshot();
    let out = train::train(&mut members, distill, optim, &data, 5, 1000, &rec)?;
    Ok(Run {
        init,
        steps: rec.snapshots.into_inner(),
        rows: out.rows,
    })
}

/// For each tensor, the largest |a - b| in units of `scale`'s largest magnitude (>= 1e-2;
/// NaN counts as infinite), with its name.
fn differences(a: &Snapshot, b: &Snapshot, scale: &Snapshot) -> Vec<(f64, String)> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .zip(scale)
        .map(|(((name, a), (_, b)), (_, s))| {
            assert_eq!(a.len(), b.len(), "{name}");
            let s = s.iter().fold(1e-2f64, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(b)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            (if d.is_nan() { f64::INFINITY } else { d / s }, name.clone())
        })
        .collect()
}

/// The tensor that differs most: (difference, name), as [`differences`] measures them.
fn worst(a: &Snapshot, b: &Snapshot, scale: &Snapshot) -> (f64, String) {
    differences(a, b, scale)
        .into_iter()
        .fold((0.0, String::new()), |w, d| if d.0 > w.0 { d } else { w })
}

fn distill(kind: DistillKind) -> DistillConfig {
    DistillConfig {
        kind,
        weight: 1.0,
        temperature: 5.0,
        t2_factor: false,
        detach_teacher: false,
        direction: DistillDirection::SmallToLarge,
    }
}

/// accum_steps 2 against accum_steps 1 on batch 64, with both AdamW settings: the weights
/// after every one of the 8 steps and every logged epoch value, within the bounds above;
/// both runs train.
fn two_micro_batches_equal_one_batch(what: &str, d: Option<DistillConfig>) {
    for adam in [Adam::Linear, Adam::Recipe] {
        compare_runs(&format!("{what} ({adam:?} AdamW)"), d.as_ref(), adam);
    }
}

fn compare_runs(what: &str, d: Option<&DistillConfig>, adam: Adam) {
    let one = run(&optim(1, adam), d).unwrap();
    let two = run(&optim(2, adam), d).unwrap();
    assert_eq!(one.steps.len(), 8, "{what}: 4 epochs of 2 optimiser steps");
    assert_eq!(
        two.steps.len(),
        8,
        "{what}: accumulation keeps the steps per epoch"
    );
    let mut worst_w = (0.0f64, String::new());
    for (k, (a, b)) in two.steps.iter().zip(&one.steps).enumerate() {
        let (e, name) = worst(a, b, b);
        if e > worst_w.0 {
            worst_w = (e, format!("{name} after step {}", k + 1));
        }
    }
    // The tensor that moved least from its initial value in the 8 steps, in both runs.
    let moved = [&one, &two]
        .iter()
        .flat_map(|r| differences(&r.steps[7], &r.init, &r.steps[7]))
        .fold(f64::INFINITY, |m, (d, _)| m.min(d));
    let mut worst_l = (0.0f64, String::new());
    assert_eq!(one.rows.len(), two.rows.len());
    for (a, b) in two.rows.iter().zip(&one.rows) {
        assert_eq!((a.epoch, a.lr), (b.epoch, b.lr), "{what}: same schedule");
        let pairs = [
            ("loss", a.loss, b.loss),
            ("ce_student", a.ce_student, b.ce_student),
            (
                "ce_teacher",
                a.ce_teacher.unwrap_or(0.0),
                b.ce_teacher.unwrap_or(0.0),
            ),
            (
                "distill",
                a.distill.unwrap_or(0.0),
                b.distill.unwrap_or(0.0),
            ),
            (
                "train_top1",
                a.train_top1_student / 100.0,
                b.train_top1_student / 100.0,
            ),
        ];
        assert_eq!(a.ce_teacher.is_some(), b.ce_teacher.is_some());
        assert_eq!(a.distill.is_some(), b.distill.is_some());
        for (name, x, y) in pairs {
            let e = (x - y).abs() / y.abs().max(1.0);
            let e = if e.is_nan() { f64::INFINITY } else { e };
            if e > worst_l.0 {
                worst_l = (e, format!("{name} of epoch {}", a.epoch));
            }
        }
    }
    println!(
        "{what}: worst weight difference {:.2e} ({}), worst logged-value difference {:.2e} \
         ({}); the tensor that moved least in 8 steps moved {moved:.2e}",
        worst_w.0, worst_w.1, worst_l.0, worst_l.1
    );
    assert!(
        worst_w.0 < adam.weight_tol(),
        "{what}: accum_steps 2 differs from 1 by {:.2e} at {} (bound {:.0e})",
        worst_w.0,
        worst_w.1,
        adam.weight_tol()
    );
    assert!(
        worst_l.0 < LOSS_TOL,
        "{what}: logged {} differs by {:.2e} (bound {LOSS_TOL:.0e})",
        worst_l.1,
        worst_l.0
    );
    assert!(
        moved > 100.0 * adam.weight_tol(),
        "{what}: a trainable tensor moved by only {moved:.2e} in training"
    );
}

#[test]
fn at_two_micro_batches_of_32_train_as_one_batch_of_64() {
    two_micro_batches_equal_one_batch("AT", None);
}

#[test]
fn idat_kl_two_micro_batches_of_32_train_as_one_batch_of_64() {
    two_micro_batches_equal_one_batch("iDAT KL", Some(distill(DistillKind::Kl)));
}

#[test]
fn idat_mse_two_micro_batches_of_32_train_as_one_batch_of_64() {
    two_micro_batches_equal_one_batch("iDAT MSE", Some(distill(DistillKind::Mse)));
}

#[test]
fn a_micro_batch_that_does_not_divide_the_batch_weighs_by_its_rows() {
    // train_step_accum on its own: 48 rows as micro-batches of 32 and 16 (weights 2/3 and
    // 1/3) against train_step on the 48 at once, three steps of iDAT (KL).
    for adam in [Adam::Linear, Adam::Recipe] {
        uneven_micro_batches(adam);
    }
}

fn uneven_micro_batches(adam: Adam) {
    let o = optim(1, adam);
    let d = distill(DistillKind::Kl);
    let data = split(48, 3);
    let norm = Normalize::from_kind(NormalizeKind::Half);
    let idx: Vec<usize> = (0..48).collect();
    let (x, y) = idat_domain::data::loader::Split::batch(&data, &idx, &norm, &Device::Cpu).unwrap();
    let mut results = Vec::new();
    for micro in [None, Some(32)] {
        let mut members = vec![member("student", 32, 11, &o), member("teacher", 16, 12, &o)];
        let mut losses = Vec::new();
        for step in 0..3 {
            let at = train::StepAt {
                seed: 1,
                epoch: 0,
                step,
                steps: 3,
            };
            let p = match micro {
                None => train::train_step(&mut members, Some(&d), &x, &y, at, o.lr),
                Some(m) => train::train_step_accum(&mut members, Some(&d), &x, &y, at, o.lr, m),
            }
            .unwrap();
            assert_eq!(p.logits_s.dims(), [48, 5]);
            let s = |t: &Tensor| t.to_scalar::<f32>().unwrap() as f64;
            losses.push([
                s(&p.total),
                s(&p.ce_s),
                s(p.ce_t.as_ref().unwrap()),
                s(p.d.as_ref().unwrap()),
            ]);
        }
        let snap: Snapshot = members
            .iter()
            .flat_map(|m| {
                m.vit
                    .trainable()
                    .into_iter()
                    .map(|(n, v)| (format!("{}.{n}", m.name), values(v.as_tensor())))
            })
            .collect();
        results.push((snap, losses));
    }
    let (e, name) = worst(&results[1].0, &results[0].0, &results[0].0);
    println!("uneven micro-batches ({adam:?} AdamW): worst weight difference {e:.2e} ({name})");
    assert!(e < adam.weight_tol(), "{adam:?}: {name} differs by {e:.2e}");
    for (a, b) in results[1].1.iter().zip(&results[0].1) {
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() < LOSS_TOL * y.abs().max(1.0),
                "{a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn a_diverging_loss_names_the_micro_batch() {
    let mut o = optim(2, Adam::Recipe);
    (o.lr, o.warmup_lr) = (1e30, 1e30);
    let e = run(&o, Some(&distill(DistillKind::Mse)))
        .err()
        .expect("diverges");
    let e = format!("{e:#}");
    assert!(
        e.starts_with("loss is ")
            && e.contains(" at epoch 1 step 2 (of 2), micro-batch 1 of 2; lr 1.000e30"),
        "{e}"
    );
    // Without accumulation the message is the one it always was.
    let mut o = optim(1, Adam::Recipe);
    (o.lr, o.warmup_lr) = (1e30, 1e30);
    let e = format!("{:#}", run(&o, None).err().expect("diverges"));
    assert!(
        e.contains(" at epoch 1 step 2 (of 2); lr 1.000e30. Lower"),
        "{e}"
    );
    // The loop refuses an accum_steps the kinds' check would have refused.
    let e = format!(
        "{:#}",
        run(&optim(3, Adam::Recipe), None).err().expect("refused")
    );
    assert!(
        e.starts_with("optim.accum_steps: accum_steps 3 does not divide batch_size 64"),
        "{e}"
    );
}

/// A split that records the sizes of the evaluation passes' batches.
struct Watched {
    inner: DecodedSplit,
    eval_batches: std::sync::Mutex<Vec<usize>>,
}

impl idat_domain::data::loader::Split for Watched {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn labels(&self) -> &[u32] {
        self.inner.labels()
    }
    fn batch(&self, indices: &[usize], n: &Normalize, d: &Device) -> Result<(Tensor, Tensor)> {
        self.inner.batch(indices, n, d)
    }
    fn for_each_batch(
        &self,
        batch: usize,
        f: &mut idat_domain::data::loader::BatchFn<'_>,
    ) -> Result<()> {
        self.eval_batches.lock().unwrap().push(batch);
        self.inner.for_each_batch(batch, f)
    }
}

#[test]
fn the_test_evaluations_run_in_micro_batches_too() {
    // A card that trains 32 images at a time may not hold the forward of 64: the per-epoch
    // and final evaluations use batch_size / accum_steps (batch_size without accumulation).
    for (accum, want) in [(1, 64), (2, 32), (4, 16)] {
        let o = OptimConfig {
            epochs: 2,
            warmup_epochs: 1,
            cooldown_epochs: 0,
            ..optim(accum, Adam::Recipe)
        };
        let mut members = vec![member("student", 32, 11, &o)];
        let train_split = split(64, 1);
        let test = Watched {
            inner: split(70, 2),
            eval_batches: Default::default(),
        };
        let data = TrainData {
            train: &train_split,
            test: &test,
            normalize: Normalize::from_kind(NormalizeKind::Half),
            device: &Device::Cpu,
        };
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder {
            dir: tmp.path().join("ckpt"),
            vars: Vec::new(),
            snapshots: RefCell::new(Vec::new()),
        };
        let out = train::train(&mut members, None, &o, &data, 5, 1, &rec).unwrap();
        assert_eq!(out.rows.len(), 2);
        assert!(out.rows.iter().all(|r| r.test_top1_student.is_some()));
        assert_eq!(
            *test.eval_batches.lock().unwrap(),
            [want, want],
            "accum_steps {accum}"
        );
    }
}

/// Training stages of all three kinds that take `optim`, none setting `accum_steps`.
const KEYED: &str = "version: 1
name: keys
params:
  arch: {img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 32, depth: 2, num_heads: 2}
stages:
  data:
    uses: dataset/mini
    with: {tasks: [fashion10], seed: 0, n_train: 100, n_test: 50}
  decode:
    uses: data/decode
    needs: [data]
    with: {dataset: data, task: fashion10, size: 16}
  pre:
    uses: model/pretrain
    needs: [decode]
    with: {arch: \"${params.arch}\", data: decode, optim: {epochs: 2, batch_size: 32}}
  at:
    uses: train/adapt
    needs: [decode, pre]
    with: {task: fashion10, data: decode, model: pre, seed: 1}
  idat:
    uses: train/idat
    needs: [decode, pre]
    with:
      task: fashion10
      data: decode
      student: pre
      teacher: pre
      optim: {lr: 0.01, batch_size: 64, warmup_epochs: 1, epochs: 3, cooldown_epochs: 0}
      distill: {kind: kl}
";

/// The keys (params part) of the training instances of [`KEYED`] with `sets` applied.
fn keys(sets: &[&str]) -> Vec<(String, String)> {
    let reg = idat_domain::kinds::registry();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let l = load_str("keys.yaml", KEYED, &sets, &reg).unwrap();
    l.instances
        .iter()
        .filter(|i| ["pre", "at", "idat"].contains(&i.stage.as_str()))
        .map(|i| (i.id.clone(), params_parts(i, &reg, vec![]).key()))
        .collect()
}

#[test]
fn pipelines_that_do_not_set_accum_steps_keep_their_cache_keys() {
    // These keys were computed before `accum_steps` existed (commit 8a4f23b): kind,
    // kind version and `with:` as written; the upstream entries' hashes, left out here,
    // do not depend on it. A deliberate change of a kind's VERSION or of the cache
    // format changes them, and this test with them.
    let before = [
        (
            "pre",
            "bf7309f06e408cdfc6848494c4ad58025b7a137a4a538cb9f49fbd8953ad4d8f",
        ),
        (
            "at",
            "e808a97327167443d6d4a465abdca01a1daba643d806258615b7d4742c13f6b1",
        ),
        (
            "idat",
            "6642c091cf82fa88281276e7cc6c076c7fc330473bd2e0288557b410dcdf8363",
        ),
    ];
    let now = keys(&[]);
    let now: Vec<(&str, &str)> = now.iter().map(|(i, k)| (i.as_str(), k.as_str())).collect();
    assert_eq!(now, before);
    // Setting it is a different output: a different key.
    let set = keys(&["stages.idat.with.optim.accum_steps=2"]);
    assert_eq!(set[..2], keys(&[])[..2]);
    assert_ne!(set[2].1, before[2].1);
}
