//! AdamW against hand-computed values and PyTorch's `torch.optim.AdamW`
//! (crates/nn/tests/fixtures/optim/adamw_torch.json), state save/restore for resume, and the
//! cosine schedule against hand-worked values and timm's CosineLRScheduler
//! (crates/nn/tests/fixtures/optim/cosine_timm.json), both from scripts/ckpt_fixtures.py.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use idat_nn::checkpoint::{load_tensors, save_tensors};
use idat_nn::optim::{AdamW, AdamWConfig, CosineSchedule};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/optim/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// A GradStore holding `grad` for each var (obtained through a linear loss).
fn grads_for(pairs: &[(&Var, &Tensor)]) -> GradStore {
    let mut loss: Option<Tensor> = None;
    for (v, g) in pairs {
        let term = (v.as_tensor() * *g).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => (l + term).unwrap(),
        });
    }
    loss.unwrap().backward().unwrap()
}

#[test]
fn adamw_first_step_by_hand() {
    let w = Var::new(&[[1.0f64]], &Device::Cpu).unwrap();
    let b = Var::new(&[1.0f64], &Device::Cpu).unwrap();
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
    let g = Tensor::new(&[[0.5f64]], &Device::Cpu).unwrap();
    let gb = Tensor::new(&[-2.0f64], &Device::Cpu).unwrap();
    opt.step(&grads_for(&[(&w, &g), (&b, &gb)]), 0.1).unwrap();
    // w: decay 1 - 0.1*0.1 = 0.99; m = 0.05, v = 0.00025; step_size = 0.1 / 0.1 = 1;
    // denom = sqrt(0.00025)/sqrt(0.001) + 1e-8 = 0.5 + 1e-8 -> w = 0.99 - 0.05/(0.5 + 1e-8).
    let want_w = 0.99 - 0.05 / (0.5 + 1e-8);
    // b (rank 1): no decay; m = -0.2, denom = 2 + 1e-8 -> b = 1 + 0.2/(2 + 1e-8).
    let want_b = 1.0 + 0.2 / (2.0 + 1e-8);
    assert!(
        (values(w.as_tensor())[0] - want_w).abs() < 1e-14,
        "{:?}",
        values(w.as_tensor())
    );
    assert!((values(b.as_tensor())[0] - want_b).abs() < 1e-14);
    assert_eq!(opt.step_count(), 1);
}

fn run_torch_case(case: &Value, dtype: DType, tol: f64) {
    let init = &case["init"];
    let dev = Device::Cpu;
    let mk = |v: &Value, shape: &[usize]| {
        Tensor::from_vec(floats(v), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let w = Var::from_tensor(&mk(&init["w"], &[3, 4])).unwrap();
    let b = Var::from_tensor(&mk(&init["b"], &[4])).unwrap();
    let cfg = AdamWConfig {
        beta1: case["beta1"].as_f64().unwrap(),
        beta2: case["beta2"].as_f64().unwrap(),
        eps: case["eps"].as_f64().unwrap(),
        weight_decay: case["weight_decay"].as_f64().unwrap(),
    };
    let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
    for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let gw = mk(&step["grad_w"], &[3, 4]);
        let gb = mk(&step["grad_b"], &[4]);
        opt.step(
            &grads_for(&[(&w, &gw), (&b, &gb)]),
            step["lr"].as_f64().unwrap(),
        )
        .unwrap();
        for (name, got, want) in [("w", &w, &step["w"]), ("b", &b, &step["b"])] {
            for (g, e) in values(got.as_tensor()).iter().zip(floats(want)) {
                assert!(
                    (g - e).abs() <= tol * e.abs().max(1.0),
                    "step {i} {name}: {g} vs torch {e}"
                );
            }
        }
    }
    let state = opt.state();
    for (key, want) in [
        ("exp_avg.w", "exp_avg_w"),
        ("exp_avg_sq.w", "exp_avg_sq_w"),
        ("exp_avg.b", "exp_avg_b"),
        ("exp_avg_sq.b", "exp_avg_sq_b"),
    ] {
        for (g, e) in values(&state[key]).iter().zip(floats(&case[want])) {
            assert!(
                (g - e).abs() <= tol * e.abs().max(1e-3),
                "{key}: {g} vs torch {e}"
            );
        }
    }
}

#[test]
fn adamw_matches_pytorch_trajectories() {
    let f = fixture("adamw_torch.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        run_torch_case(case, DType::F64, 1e-12);
        run_torch_case(case, DType::F32, 2e-5);
    }
}

#[test]
fn adamw_state_resume_is_exact_through_a_file() {
    let dev = Device::Cpu;
    let mk = || {
        let w = Var::new(&[[0.3f32, -0.2], [0.1, 0.7]], &dev).unwrap();
        let b = Var::new(&[0.05f32, -0.4], &dev).unwrap();
        (w, b)
    };
    let grads = |k: usize| {
        (
            Tensor::new(&[[0.1f32 * k as f32, -0.3], [0.2, 0.05]], &dev).unwrap(),
            Tensor::new(&[-0.1f32, 0.02 * k as f32], &dev).unwrap(),
        )
    };
    let cfg = AdamWConfig::default();
    // Uninterrupted: 4 steps.
    let (w1, b1) = mk();
    let mut o1 = AdamW::new(
        vec![("w".into(), w1.clone()), ("b".into(), b1.clone())],
        cfg,
    )
    .unwrap();
    for k in 0..4 {
        let (gw, gb) = grads(k);
        o1.step(&grads_for(&[(&w1, &gw), (&b1, &gb)]), 1e-2)
            .unwrap();
    }
    // Interrupted after 2 steps: params + state saved to a file, restored into fresh objects.
    let (w2, b2) = mk();
    let mut o2 = AdamW::new(
        vec![("w".into(), w2.clone()), ("b".into(), b2.clone())],
        cfg,
    )
    .unwrap();
    for k in 0..2 {
        let (gw, gb) = grads(k);
        o2.step(&grads_for(&[(&w2, &gw), (&b2, &gb)]), 1e-2)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resume.safetensors");
    let mut all: BTreeMap<String, Tensor> = o2
        .state()
        .into_iter()
        .map(|(k, v)| (format!("optim.{k}"), v))
        .collect();
    all.insert("w".into(), w2.as_tensor().clone());
    all.insert("b".into(), b2.as_tensor().clone());
    let meta = BTreeMap::from([("epoch".to_string(), "2".to_string())]);
    save_tensors(&path, &all, &meta).unwrap();
    let (loaded, lmeta) = load_tensors(&path, &dev).unwrap();
    assert_eq!(lmeta, meta);
    let w3 = Var::from_tensor(&loaded["w"]).unwrap();
    let b3 = Var::from_tensor(&loaded["b"]).unwrap();
    let mut o3 = AdamW::new(
        vec![("w".into(), w3.clone()), ("b".into(), b3.clone())],
        cfg,
    )
    .unwrap();
    let state: BTreeMap<String, Tensor> = loaded
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("optim.").map(|k| (k.to_string(), v.clone())))
        .collect();
    o3.load_state(&state).unwrap();
    assert_eq!(o3.step_count(), 2);
    for k in 2..4 {
        let (gw, gb) = grads(k);
        o3.step(&grads_for(&[(&w3, &gw), (&b3, &gb)]), 1e-2)
            .unwrap();
    }
    assert_eq!(values(w3.as_tensor()), values(w1.as_tensor()));
    assert_eq!(values(b3.as_tensor()), values(b1.as_tensor()));
}

#[test]
fn adamw_load_state_names_every_problem() {
    let dev = Device::Cpu;
    let w = Var::new(&[[1f32, 2.0]], &dev).unwrap();
    let b = Var::new(&[1f32], &dev).unwrap();
    let mut opt = AdamW::new(
        vec![("w".into(), w), ("b".into(), b)],
        AdamWConfig::default(),
    )
    .unwrap();
    let mut state = opt.state();
    state.insert(
        "exp_avg.w".into(),
        Tensor::zeros((2, 1), DType::F32, &dev).unwrap(),
    );
    state.remove("exp_avg_sq.b");
    state.insert(
        "exp_avg.stranger".into(),
        Tensor::zeros(1, DType::F32, &dev).unwrap(),
    );
    let err = opt.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("exp_avg.w has shape [2, 1]"), "{err}");
    assert!(err.contains("missing exp_avg_sq.b"), "{err}");
    assert!(err.contains("unexpected exp_avg.stranger"), "{err}");
    assert!(err.contains("3 problem"), "{err}");
}

#[test]
fn adamw_missing_gradient_is_an_error_unless_allowed() {
    let dev = Device::Cpu;
    let used = Var::new(&[[1f32, 2.0]], &dev).unwrap();
    let unused = Var::new(&[[3f32]], &dev).unwrap();
    let params = vec![
        ("adapter.fc1.weight".to_string(), used.clone()),
        ("head.weight".to_string(), unused.clone()),
    ];
    let g = Tensor::new(&[[1f32, 1.0]], &dev).unwrap();
    let grads = grads_for(&[(&used, &g)]);
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
    let err = opt.step(&grads, 0.1).unwrap_err().to_string();
    assert!(
        err.contains("head.weight") && !err.contains("adapter.fc1"),
        "{err}"
    );
    assert_eq!(
        values(used.as_tensor()),
        vec![1.0, 2.0],
        "nothing changes on error"
    );
    let mut opt = AdamW::new(params, AdamWConfig::default())
        .unwrap()
        .allow_missing_grads(true);
    opt.step(&grads, 0.1).unwrap();
    assert_eq!(values(unused.as_tensor()), vec![3.0]);
    assert!(values(used.as_tensor())[0] < 1.0);
}

#[test]
fn adamw_rejects_bad_config() {
    let cfg = AdamWConfig {
        beta1: 1.0,
        ..AdamWConfig::default()
    };
    assert!(AdamW::new(vec![], cfg)
        .unwrap_err()
        .to_string()
        .contains("beta1"));
    let v = Var::new(&[1f32], &Device::Cpu).unwrap();
    let err = AdamW::new(
        vec![("a".into(), v.clone()), ("a".into(), v)],
        AdamWConfig::default(),
    );
    assert!(err.err().unwrap().to_string().contains("twice"));
}

#[test]
fn cosine_idat_recipe_by_hand() {
    let s = CosineSchedule::idat(1e-3);
    assert_eq!(s.total_epochs(), 110);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 + 1e-12 * b.abs();
    assert!(close(s.lr(0, 0, 15), 1e-7));
    // Linear warm-up: epoch 5 is half way from 1e-7 to 1e-3.
    assert!(close(s.lr(5, 7, 15), 1e-7 + 5.0 * (1e-3 - 1e-7) / 10.0));
    // warmup_prefix = False: epoch 10 is the cosine at t = 10 of 100, not the peak.
    let c10 = 1e-8 + 0.5 * (1e-3 - 1e-8) * (1.0 + (std::f64::consts::PI * 0.1).cos());
    assert!(close(s.lr(10, 0, 15), c10));
    assert!(close(s.lr(50, 0, 15), 1e-8 + 0.5 * (1e-3 - 1e-8)));
    for e in 100..110 {
        assert!(close(s.lr(e, 3, 15), 1e-8), "cool-down epoch {e}");
    }
    // Per-step: step 7 of epoch 0 with 15 steps/epoch is 7/150 through warm-up.
    let p = CosineSchedule {
        per_step: true,
        ..s.clone()
    };
    assert!(close(p.lr(0, 7, 15), 1e-7 + 7.0 * (1e-3 - 1e-7) / 150.0));
    assert!(close(p.lr(1, 0, 15), 1e-7 + 15.0 * (1e-3 - 1e-7) / 150.0));
    assert!(s.validate().is_ok());
    assert!(CosineSchedule {
        decay_epochs: 0,
        ..s
    }
    .validate()
    .is_err());
}

#[test]
fn cosine_matches_timm_scheduler() {
    let f = fixture("cosine_timm.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for c in cases {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let s = CosineSchedule {
            base_lr: c["base_lr"].as_f64().unwrap(),
            warmup_lr: c["warmup_lr"].as_f64().unwrap(),
            warmup_epochs: u("warmup_epochs"),
            min_lr: c["min_lr"].as_f64().unwrap(),
            decay_epochs: u("decay_epochs"),
            cooldown_epochs: u("cooldown_epochs"),
            per_step: c["per_step"].as_bool().unwrap(),
        };
        assert_eq!(s.total_epochs(), u("total_epochs"));
        let spe = u("steps_per_epoch");
        for (e, row) in c["lrs"].as_array().unwrap().iter().enumerate() {
            for (k, want) in floats(row).into_iter().enumerate() {
                let got = s.lr(e, k, spe);
                assert!(
                    (got - want).abs() <= 1e-15 + 1e-12 * want.abs(),
                    "{s:?} epoch {e} step {k}: {got} vs timm {want}"
                );
            }
        }
    }
}
