//! The whole iDAT co-training loop against an independent PyTorch + timm implementation of the
//! official loop: crates/domain/tests/fixtures/cotrain/trajectory.safetensors, written by
//! scripts/cotrain_trajectory_fixture.py (its docstring says what it runs and how).
//!
//! The fixture holds a tiny student (dim 32) and teacher (dim 16) ViT with `seq_adapter`, one
//! batch of 8 images that is the whole training split (so one step per epoch), and for MSE and
//! for KL distillation the learning rate, the losses (CE_s, CE_t, D, total) and every trainable
//! tensor of both models after each of 5 steps: 2 warm-up epochs, 2 cosine epochs, 1 cool-down
//! epoch, so the learning rate differs at every step.
//!
//! The Rust side runs `idat_domain::train::train`, the very function the `train` stage calls (no
//! copy of the loop here): the test only builds the two members from the fixture's weights as
//! the stage builds them (ViT + AdamW from the optim config) and watches the loop through the
//! stage context's progress sink, which the loop calls after every optimiser step; the sink
//! reads the trainable `Var`s, which share storage with the models'.
//!
//! Every trainable tensor and every loss is compared after every step (bounds below).
//! Breaking the loop makes this test fail: the distillation term detached from the teacher,
//! the learning rate of the next epoch used (off by one), or D weighted 0.5 instead of 1 (all
//! three were tried on `crates/domain/src/train/cotrain.rs`).

use crate::train_support::{trainables, values};
use candle_core::{Device, Tensor, Var};
use idat_domain::data::image::{Normalize, NormalizeKind};
use idat_domain::data::loader::DecodedSplit;
use idat_domain::nn::adapters::AdapterConfig;
use idat_domain::nn::checkpoint::load_tensors;
use idat_domain::nn::optim::{AdamW, AdamWConfig};
use idat_domain::nn::vit::{Vit, VitConfig};
use idat_domain::train::{self, cotrain::TrainData, DistillConfig, Member, OptimConfig};
use idat_engine::stages::{Progress, StageContext};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Bound on |idat-pipe - reference| for every trainable scalar after every step, in units of
/// the tensor's largest reference magnitude (max over the tensor, at least 1e-2 so that a
/// tensor of tiny values is not held to a tighter absolute bound than its neighbours).
///
/// Why 1e-5: the reference runs in float64, so the difference is idat-pipe's float32 rounding
/// alone. Float32 epsilon is 1.2e-7; a forward/backward through these 2-block ViTs (sums of up
/// to 128 terms, softmaxes) loses about one more decimal in the gradients, AdamW passes that
/// relative error on to its update (size ~lr, at most 5.5e-3 here), and `w - update` rounds
/// to 0.5 ulp of w: a few 1e-7 of the tensor's scale per step. Measured over the 5 steps:
/// 6.0e-7 (MSE) and 1.5e-6 (KL) with OpenBLAS, 7.2e-7 and 9.9e-7 with the `gemm` crate
/// (`IDAT_BLAS=off`); PyTorch's own float32 run of the fixture script differs from
/// its float64 run by 8.5e-7 and 1.2e-6, the same level. 1e-5 leaves a factor ~7 over that.
/// A wrong loop moves weights by far more: already the first step's update is lr = 1e-4 per
/// scalar, 2e-4 to 5e-3 of the tensors' scales (0.02 to 0.5).
const WEIGHT_TOL: f64 = 1e-5;

/// Bound on |idat-pipe - reference| / max(|reference|, 1) for each loss (CE_s, CE_t, D, total)
/// at each step: the losses are single f32 reductions of logits computed to ~1e-6 relative.
const LOSS_TOL: f64 = 1e-5;

struct Fixture {
    tensors: BTreeMap<String, Tensor>,
    meta: BTreeMap<String, String>,
}

impl Fixture {
    fn load() -> Fixture {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cotrain/trajectory.safetensors");
        let (tensors, meta) = load_tensors(&path, &Device::Cpu).expect("fixture loads");
        Fixture { tensors, meta }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> T {
        let text = self
            .meta
            .get(key)
            .unwrap_or_else(|| panic!("fixture metadata has no `{key}`"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture metadata `{key}`: {e}"))
    }

    /// Tensors under `prefix`, with the prefix removed.
    fn under(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
            .collect()
    }
}

/// `err` is above `tol` or NaN.
fn exceeds(err: f64, tol: f64) -> bool {
    err.is_nan() || err >= tol
}

/// A member built as the `train` stage builds one (Vit::new from the frozen backbone, AdamW
/// from the optim config), with the fixture's initial trainable tensors instead of a seed's.
fn member(fx: &Fixture, who: &str, adapter: &AdapterConfig, optim: &OptimConfig) -> Member {
    let cfg: VitConfig = fx.json(who);
    let all = fx.under(&format!("init.{who}."));
    let backbone = all
        .iter()
        .filter(|(k, _)| !k.contains(".adapter.") && !k.starts_with("head."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let vit = Vit::new(&cfg, adapter, backbone, &Device::Cpu, 0).unwrap();
    let init: BTreeMap<String, Tensor> = vit
        .trainable()
        .into_iter()
        .map(|(n, _)| {
            let t = all
                .get(&n)
                .unwrap_or_else(|| panic!("fixture lacks initial `{n}` of the {who}"));
            (n, t.clone())
        })
        .collect();
    vit.set_trainable(&init).unwrap();
    let opt = AdamW::new(
        vit.trainable(),
        AdamWConfig {
            beta1: optim.beta1,
            beta2: optim.beta2,
            eps: optim.eps,
            weight_decay: optim.weight_decay,
        },
    )
    .unwrap();
    Member {
        name: who.into(),
        vit,
        opt,
    }
}

/// Every trainable tensor by `<member>.<name>`, flattened.
type Snapshot = BTreeMap<String, Vec<f64>>;

/// Progress sink that copies every trainable tensor each time the loop reports a finished
/// step (position = steps done so far).
struct Recorder {
    vars: Vec<(String, Var)>,
    snapshots: Mutex<Vec<(u64, Snapshot)>>,
}

impl Progress for Recorder {
    fn set_total(&self, _: u64) {}
    fn set_position(&self, pos: u64) {
        if pos == 0 {
            return; // the start, before any step
        }
        let snap = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), values(v.as_tensor())))
            .collect();
        self.snapshots.lock().unwrap().push((pos, snap));
    }
    fn set_message(&self, _: &str) {}
}

fn check_trajectory(kind: &str) {
    let fx = Fixture::load();
    let optim: OptimConfig = fx.json("optim");
    let distill: DistillConfig = fx.json(&format!("distill.{kind}"));
    let adapter: AdapterConfig = fx.json("adapter");
    let mut members = vec![
        member(&fx, "student", &adapter, &optim),
        member(&fx, "teacher", &adapter, &optim),
    ];

    let image = fx.get("image");
    let (b, size, _, _) = image.dims4().unwrap();
    let split = DecodedSplit {
        images: image.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        labels: values(fx.get("label"))
            .into_iter()
            .map(|v| v as u32)
            .collect(),
        size,
    };
    assert_eq!(
        b, optim.batch_size,
        "the batch is the whole split: one step per epoch"
    );
    let data = TrainData {
        train: &split,
        test: &split,
        normalize: Normalize::from_kind(NormalizeKind::Half),
        device: &Device::Cpu,
    };

    let recorder = Arc::new(Recorder {
        vars: trainables(&members),
        snapshots: Mutex::new(Vec::new()),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = StageContext::new(
        "cotrain-trajectory",
        dir.path().join("out"),
        dir.path().join("ckpt"),
    );
    ctx.progress = recorder.clone() as Arc<dyn Progress>;
    // The loop shuffles the split each epoch; with one batch that only permutes its rows, and
    // every loss is a batch mean, so the order changes nothing beyond float rounding.
    let outcome = train::train(&mut members, Some(&distill), &optim, &data, 7, 1000, &ctx)
        .expect("training runs");

    let steps = optim.total_epochs();
    let ref_lr = values(fx.get(&format!("{kind}.lr")));
    let ref_loss = values(fx.get(&format!("{kind}.loss")));
    assert_eq!(ref_lr.len(), steps, "fixture steps vs schedule epochs");
    assert_eq!(outcome.rows.len(), steps);
    let snapshots = recorder.snapshots.lock().unwrap();
    let positions: Vec<u64> = snapshots.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (1..=steps as u64).collect::<Vec<_>>());

    // Every comparison runs; all failures are reported together.
    let mut failures: Vec<String> = Vec::new();
    let mut worst_w = (0.0f64, String::new());
    let mut worst_l = (0.0f64, String::new());
    for (k, ((_, snap), row)) in snapshots.iter().zip(&outcome.rows).enumerate() {
        let step = k + 1;
        // The learning rate of the step (the epoch's, per-epoch schedule).
        let lr_err = (row.lr - ref_lr[k]).abs() / ref_lr[k];
        if exceeds(lr_err, 1e-9) {
            failures.push(format!(
                "{kind} step {step}: lr {} vs timm {}",
                row.lr, ref_lr[k]
            ));
        }
        // Losses: CE_s, CE_t, D, total.
        let got = [
            row.ce_student,
            row.ce_teacher.expect("iDAT row has CE_t"),
            row.distill.expect("iDAT row has D"),
            row.loss,
        ];
        for (i, what) in ["CE_s", "CE_t", "D", "total"].iter().enumerate() {
            let want = ref_loss[k * 4 + i];
            let err = (got[i] - want).abs() / want.abs().max(1.0);
            if err > worst_l.0 {
                worst_l = (err, format!("{what} at step {step}"));
            }
            if exceeds(err, LOSS_TOL) {
                failures.push(format!(
                    "{kind} step {step}: {what} {} vs PyTorch {want} (err {err:.2e})",
                    got[i]
                ));
            }
        }
        // Every trainable tensor of both models.
        assert_eq!(snap.len(), recorder.vars.len());
        for (name, got) in snap {
            let want = values(fx.get(&format!("{kind}.step{step}.{name}")));
            assert_eq!(got.len(), want.len(), "{name}: size");
            let scale = want.iter().fold(1e-2f64, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            let err = diff / scale;
            if err > worst_w.0 {
                worst_w = (err, format!("{name} at step {step}"));
            }
            if exceeds(err, WEIGHT_TOL) {
                failures.push(format!(
                    "{kind} step {step}: {name} differs from PyTorch by {diff:.3e} \
                     (scale {scale:.3e}, relative {err:.2e} > {WEIGHT_TOL:.0e})"
                ));
            }
        }
    }
    println!(
        "{kind}: worst weight error {:.2e} ({}), worst loss error {:.2e} ({})",
        worst_w.0, worst_w.1, worst_l.0, worst_l.1
    );
    let losses = failures
        .iter()
        .filter(|f| f.contains(" vs PyTorch "))
        .count();
    let lrs = failures.iter().filter(|f| f.contains(" vs timm ")).count();
    assert!(
        failures.is_empty(),
        "{kind}: {} comparisons failed ({lrs} learning rates, {losses} losses, {} tensors); \
         the first ones:\n  {}",
        failures.len(),
        failures.len() - losses - lrs,
        failures
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn idat_mse_trajectory_matches_pytorch() {
    check_trajectory("mse");
}

#[test]
fn idat_kl_trajectory_matches_pytorch() {
    check_trajectory("kl");
}
