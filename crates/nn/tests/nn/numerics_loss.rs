//! Losses: values worked out by hand, gradients against central finite differences
//! (w.r.t. both arguments), numerical stability and input errors.

use candle_core::{DType, Device, Tensor, Var};
use idat_nn::loss::{accuracy_topk, cross_entropy, kd_kl, log_softmax, mse_logits};

const B: usize = 3;
const C: usize = 4;

fn logits(seed: f64) -> Vec<f64> {
    (0..B * C)
        .map(|i| ((i as f64 + 1.0) * seed).sin() * 2.0)
        .collect()
}

fn var(v: &[f64]) -> Var {
    Var::from_tensor(&Tensor::from_slice(v, (B, C), &Device::Cpu).unwrap()).unwrap()
}

fn labels() -> Tensor {
    Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Checks the autograd gradient of `f` w.r.t. `x` against central differences.
fn check_grad(x: &[f64], f: &dyn Fn(&Tensor) -> Tensor, what: &str) {
    let v = var(x);
    let loss = f(v.as_tensor());
    let grads = loss.backward().unwrap();
    let g = grads
        .get(v.as_tensor())
        .unwrap_or_else(|| panic!("{what}: no gradient"));
    let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-5;
    let mut max_abs = 0f64;
    for i in 0..x.len() {
        let mut plus = x.to_vec();
        plus[i] += h;
        let mut minus = x.to_vec();
        minus[i] -= h;
        let fd =
            (scalar(&f(var(&plus).as_tensor())) - scalar(&f(var(&minus).as_tensor()))) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-7,
            "{what}: d/dx[{i}] autograd {} vs finite difference {fd}",
            g[i]
        );
        max_abs = max_abs.max(g[i].abs());
    }
    assert!(
        max_abs > 1e-4,
        "{what}: gradient is (nearly) zero, the check would be vacuous"
    );
}

#[test]
fn cross_entropy_value_by_hand() {
    // p = softmax([0, ln 3]) = [1/4, 3/4]; label 1 -> -ln(3/4). Row 2: label 0 of [ln 2, ln 2] -> ln 2.
    let z = Tensor::new(&[[0f32, 3f32.ln()], [2f32.ln(), 2f32.ln()]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
    let want = (-(0.75f64).ln() + 2f64.ln()) / 2.0;
    assert!((scalar(&cross_entropy(&z, &y).unwrap()) - want).abs() < 1e-6);
}

#[test]
fn cross_entropy_is_stable_for_huge_logits() {
    let z = Tensor::new(&[[1000f32, 0.0, -1000.0]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    let v = scalar(&cross_entropy(&z, &y).unwrap());
    assert!((v - 1000.0).abs() < 1e-3, "{v}");
    let lp = log_softmax(&z).unwrap().to_vec2::<f32>().unwrap();
    assert!(lp[0].iter().all(|x| x.is_finite()));
}

#[test]
fn kd_kl_value_by_hand() {
    // teacher [0, 0] -> p_t = [1/2, 1/2]; student [0, ln 9] at T = 2 -> p_s = [1/4, 3/4].
    // KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
    let s = Tensor::new(&[[0f64, 9f64.ln()]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[[0f64, 0.0]], &Device::Cpu).unwrap();
    let want = 0.5 * (4.0f64 / 3.0).ln();
    assert!((scalar(&kd_kl(&s, &t, 2.0, false).unwrap()) - want).abs() < 1e-12);
    assert!((scalar(&kd_kl(&s, &t, 2.0, true).unwrap()) - 4.0 * want).abs() < 1e-12);
    // Identical distributions -> 0; batch mean over two rows.
    let s2 = Tensor::new(&[[0f64, 9f64.ln()], [1.0, 1.0]], &Device::Cpu).unwrap();
    let t2 = Tensor::new(&[[0f64, 0.0], [3.0, 3.0]], &Device::Cpu).unwrap();
    assert!((scalar(&kd_kl(&s2, &t2, 2.0, false).unwrap()) - want / 2.0).abs() < 1e-12);
}

#[test]
fn mse_value_by_hand() {
    let s = Tensor::new(&[[1f64, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[[0f64, 2.0], [5.0, 4.0]], &Device::Cpu).unwrap();
    assert!((scalar(&mse_logits(&s, &t).unwrap()) - (1.0 + 4.0) / 4.0).abs() < 1e-12);
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    check_grad(
        &logits(0.7),
        &|z| cross_entropy(z, &labels()).unwrap(),
        "cross_entropy",
    );
}

#[test]
fn kd_kl_gradients_match_finite_differences_for_both_inputs() {
    let s = logits(0.7);
    let t = logits(1.3);
    let tt = Tensor::from_slice(&t, (B, C), &Device::Cpu).unwrap();
    let st = Tensor::from_slice(&s, (B, C), &Device::Cpu).unwrap();
    for (temp, t2) in [(1.0, false), (5.0, false), (3.0, true)] {
        check_grad(
            &s,
            &|z| kd_kl(z, &tt, temp, t2).unwrap(),
            &format!("kd_kl student T={temp}"),
        );
        check_grad(
            &t,
            &|z| kd_kl(&st, z, temp, t2).unwrap(),
            &format!("kd_kl teacher T={temp}"),
        );
    }
}

#[test]
fn mse_gradients_match_finite_differences_for_both_inputs() {
    let s = logits(0.7);
    let t = logits(1.3);
    let tt = Tensor::from_slice(&t, (B, C), &Device::Cpu).unwrap();
    let st = Tensor::from_slice(&s, (B, C), &Device::Cpu).unwrap();
    check_grad(&s, &|z| mse_logits(z, &tt).unwrap(), "mse student");
    check_grad(&t, &|z| mse_logits(&st, z).unwrap(), "mse teacher");
}

#[test]
fn total_idat_loss_trains_both_models() {
    // One backward of CE(s) + CE(t) + KL reaches both logits tensors.
    let s = var(&logits(0.7));
    let t = var(&logits(1.3));
    let y = labels();
    let loss = ((cross_entropy(s.as_tensor(), &y).unwrap()
        + cross_entropy(t.as_tensor(), &y).unwrap())
    .unwrap()
        + kd_kl(s.as_tensor(), t.as_tensor(), 5.0, false).unwrap())
    .unwrap();
    let g = loss.backward().unwrap();
    for v in [&s, &t] {
        let n = g
            .get(v.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(n > 1e-3);
    }
}

#[test]
fn accuracy_topk_counts() {
    let z = Tensor::new(
        &[[0.1f32, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]],
        &Device::Cpu,
    )
    .unwrap();
    let y = Tensor::new(&[2u32, 0, 0], &Device::Cpu).unwrap();
    assert_eq!(accuracy_topk(&z, &y, 1).unwrap(), 1);
    assert_eq!(accuracy_topk(&z, &y, 2).unwrap(), 2);
    assert_eq!(accuracy_topk(&z, &y, 3).unwrap(), 3);
    assert_eq!(accuracy_topk(&z, &y, 10).unwrap(), 3);
    assert!(accuracy_topk(&z, &y, 0).is_err());
}

#[test]
fn accuracy_topk_never_counts_a_non_finite_logit() {
    // A NaN at the label compares false with every other logit, so it would rank first.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let z = Tensor::new(&[[0.1f32, 0.5, 0.4], [bad, 0.05, 0.05]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let e = accuracy_topk(&z, &y, 1).unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("class 0"), "{e}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let err = cross_entropy(&z, &Tensor::new(&[0u32, 3], &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label 3") && err.contains("3 classes"),
        "{err}"
    );
    let err = cross_entropy(&z, &Tensor::new(&[0u32], &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 labels for a batch of 2"), "{err}");
    let err = cross_entropy(&z, &Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("integers"), "{err}");
    let z3 = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let err = kd_kl(&z, &z3, 1.0, false).unwrap_err().to_string();
    assert!(err.contains("differ in shape"), "{err}");
    let err = kd_kl(&z, &z, 0.0, false).unwrap_err().to_string();
    assert!(err.contains("temperature"), "{err}");
    assert!(mse_logits(&z, &z3).is_err());
    let err = cross_entropy(
        &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        &labels(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[batch, classes]"), "{err}");
}
