//! The fused CPU ops against their composed (differentiable tensor-op) references:
//! forward and backward, plus finite differences for the composed references.

use crate::nn_util::{abs_sum, rand_tensor};
use candle_core::{Tensor, Var};
use idat_nn::ops::{self, OpsImpl, Tokens};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    (f32(a) - f32(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs `f` with both implementations on the same inputs (as Vars) and a random upstream
/// gradient; compares outputs and every input gradient.
fn compare(inputs: &[Tensor], f: impl Fn(&[Tensor], OpsImpl) -> Tensor, tol: f32) {
    let run = |imp| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts, imp);
        let up = rand_tensor(y.dims(), 99);
        let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
            .collect();
        (y, g)
    };
    let (yf, gf) = run(OpsImpl::Fused);
    let (yc, gc) = run(OpsImpl::Composed);
    let e = max_abs_diff(&yf, &yc);
    assert!(e < tol, "forward differs by {e}");
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        let e = max_abs_diff(a, b);
        assert!(e < tol, "gradient of input {i} differs by {e}");
        assert!(abs_sum(b) > 0.0, "gradient of input {i} is zero");
    }
}

#[test]
fn layer_norm_fused_matches_composed() {
    let x = (rand_tensor(&[3, 5, 24], 1) * 3.0).unwrap();
    let w = (rand_tensor(&[24], 2) + 1.0).unwrap();
    let b = rand_tensor(&[24], 3);
    compare(
        &[x, w, b],
        |t, imp| ops::layer_norm(&t[0], &t[1], &t[2], 1e-6, imp).unwrap(),
        2e-5,
    );
}

#[test]
fn softmax_fused_matches_composed() {
    let x = (rand_tensor(&[2, 3, 7, 17], 4) * 5.0).unwrap();
    compare(
        &[x],
        |t, imp| ops::softmax_last_dim(&t[0], imp).unwrap(),
        1e-6,
    );
}

#[test]
fn gelu_fused_matches_composed() {
    let x = (rand_tensor(&[4, 33], 5) * 4.0).unwrap();
    compare(&[x], |t, imp| ops::gelu(&t[0], imp).unwrap(), 1e-5);
}

#[test]
fn frozen_linear_fused_matches_composed_and_has_no_weight_gradient() {
    let x = rand_tensor(&[2, 9, 16], 6);
    let w = rand_tensor(&[12, 16], 7);
    let b = rand_tensor(&[12], 8);
    compare(
        std::slice::from_ref(&x),
        |t, imp| ops::frozen_linear(&t[0], &w, Some(&b), imp).unwrap(),
        1e-5,
    );
    let plain = ops::linear(&x, &w, Some(&b)).unwrap();
    let fused = ops::frozen_linear(&x, &w, Some(&b), OpsImpl::Fused).unwrap();
    assert!(max_abs_diff(&plain, &fused) < 1e-5);
    // Frozen weight and bias get no gradient entry at all with the fused op.
    let xv = Var::from_tensor(&x).unwrap();
    let y = ops::frozen_linear(xv.as_tensor(), &w, Some(&b), OpsImpl::Fused).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(xv.as_tensor()).is_some());
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
}

#[test]
fn layer_norm_gradients_only_for_variables() {
    // weight trainable, bias frozen: the fused op must produce dW but nothing for b.
    let x = Var::from_tensor(&rand_tensor(&[4, 8], 9)).unwrap();
    let w = Var::from_tensor(&(rand_tensor(&[8], 10) + 1.0).unwrap()).unwrap();
    let b = rand_tensor(&[8], 11);
    let y = ops::layer_norm(x.as_tensor(), w.as_tensor(), &b, 1e-6, OpsImpl::Fused).unwrap();
    let up = rand_tensor(&[4, 8], 12);
    let grads = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some());
    assert!(grads.get(&b).is_none());
}

/// Central finite differences of `sum(f(x) * up)` against the fused backward.
fn finite_diff(x: &Tensor, f: impl Fn(&Tensor) -> Tensor, tol: f32) {
    let xv = Var::from_tensor(x).unwrap();
    let up = rand_tensor(x.dims(), 77);
    let loss = |t: &Tensor| {
        (f(t) * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
    };
    let g = loss(xv.as_tensor())
        .backward()
        .unwrap()
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap();
    let g = g.to_vec1::<f32>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let h = 1e-2f32;
    for i in (0..base.len()).step_by(7) {
        let mut p = base.clone();
        p[i] += h;
        let lp = loss(&Tensor::from_vec(p.clone(), x.dims(), x.device()).unwrap())
            .to_scalar::<f64>()
            .unwrap();
        p[i] -= 2.0 * h;
        let lm = loss(&Tensor::from_vec(p, x.dims(), x.device()).unwrap())
            .to_scalar::<f64>()
            .unwrap();
        let fd = ((lp - lm) / (2.0 * h as f64)) as f32;
        assert!(
            (fd - g[i]).abs() < tol,
            "element {i}: finite difference {fd} vs backward {}",
            g[i]
        );
    }
}

#[test]
fn fused_backwards_match_finite_differences() {
    let w = (rand_tensor(&[10], 13) + 1.0).unwrap();
    let b = rand_tensor(&[10], 14);
    finite_diff(
        &rand_tensor(&[3, 10], 15),
        |t| ops::layer_norm(t, &w, &b, 1e-6, OpsImpl::Fused).unwrap(),
        2e-3,
    );
    finite_diff(
        &(rand_tensor(&[3, 10], 16) * 3.0).unwrap(),
        |t| ops::softmax_last_dim(t, OpsImpl::Fused).unwrap(),
        2e-3,
    );
    finite_diff(
        &(rand_tensor(&[3, 10], 17) * 3.0).unwrap(),
        |t| ops::gelu(t, OpsImpl::Fused).unwrap(),
        2e-3,
    );
}

#[test]
fn attention_fused_matches_composed() {
    use idat_nn::masks::Masks;
    // B 2, N 7, heads 3, Dh 4 -> qkv last dim 36.
    let qkv = (rand_tensor(&[2, 7, 36], 18) * 2.0).unwrap();
    compare(
        &[qkv],
        |t, imp| ops::attention(&t[0], 3, 0.0, &mut Masks::eval(), imp, None, Tokens::All).unwrap(),
        1e-5,
    );
    // N 30: heads x N > 6 D, so the fused backward recomputes the probabilities.
    let qkv = (rand_tensor(&[2, 30, 36], 20) * 2.0).unwrap();
    compare(
        &[qkv],
        |t, imp| ops::attention(&t[0], 3, 0.0, &mut Masks::eval(), imp, None, Tokens::All).unwrap(),
        1e-5,
    );
    // Only the class token querying: [B, 1, D], short and long sequences.
    for (n, seed) in [(7, 21), (30, 22)] {
        let qkv = (rand_tensor(&[2, n, 36], seed) * 2.0).unwrap();
        compare(
            &[qkv],
            |t, imp| {
                ops::attention(&t[0], 3, 0.0, &mut Masks::eval(), imp, None, Tokens::Cls).unwrap()
            },
            1e-5,
        );
    }
    // With attention dropout active in training, the composed path is used (masks apply).
    let qkv = rand_tensor(&[2, 7, 36], 19);
    let a = ops::attention(
        &qkv,
        3,
        0.5,
        &mut Masks::train(1),
        OpsImpl::Fused,
        None,
        Tokens::All,
    )
    .unwrap();
    let b = ops::attention(
        &qkv,
        3,
        0.5,
        &mut Masks::eval(),
        OpsImpl::Fused,
        None,
        Tokens::All,
    )
    .unwrap();
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "attention dropout had no effect"
    );
}

/// The fused adapter bottleneck against the composed one: output and the gradients of the
/// input and of all four parameters, for both activations, with and without the residual,
/// with a scale, on row counts that do and do not fill the op's row tasks (32 rows).
#[test]
fn bottleneck_fused_matches_composed() {
    use idat_nn::ops::{Activation, Bottleneck};
    let (d, r) = (24, 3);
    for (case, (rows, act, scale, residual)) in [
        (5, Activation::Gelu, 1.0, true),
        (70, Activation::Gelu, 0.1, false),
        (70, Activation::Relu, 4.0, true),
        (33, Activation::Relu, 1.0, false),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 40 + 10 * case as u64;
        let inputs = [
            (rand_tensor(&[2, rows, d], seed) * 2.0).unwrap(),
            rand_tensor(&[r, d], seed + 1),
            rand_tensor(&[r], seed + 2),
            rand_tensor(&[d, r], seed + 3),
            rand_tensor(&[d], seed + 4),
        ];
        compare(
            &inputs,
            |t, imp| {
                let p = Bottleneck {
                    w1: &t[1],
                    b1: &t[2],
                    w2: &t[3],
                    b2: &t[4],
                    act,
                    scale,
                    residual,
                };
                ops::bottleneck(&t[0], &p, imp).unwrap()
            },
            1e-4,
        );
    }
}

/// An input outside the graph (the first block's adapter input) gets no gradient from the
/// fused bottleneck (that product is skipped); the parameters get the composed ones.
#[test]
fn bottleneck_on_a_constant_input_gives_only_parameter_gradients() {
    use idat_nn::ops::{Activation, Bottleneck};
    let x = rand_tensor(&[3, 40, 16], 90);
    let run = |imp| {
        let vars: Vec<Var> = [
            rand_tensor(&[4, 16], 91),
            rand_tensor(&[4], 92),
            rand_tensor(&[16, 4], 93),
            rand_tensor(&[16], 94),
        ]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
        let p = Bottleneck {
            w1: vars[0].as_tensor(),
            b1: vars[1].as_tensor(),
            w2: vars[2].as_tensor(),
            b2: vars[3].as_tensor(),
            act: Activation::Gelu,
            scale: 1.0,
            residual: true,
        };
        let y = ops::bottleneck(&x, &p, imp).unwrap();
        let up = rand_tensor(y.dims(), 95);
        let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        // (candle's composed matmul backward computes and stores one all the same.)
        if imp == OpsImpl::Fused {
            assert!(grads.get(&x).is_none(), "the constant input got a gradient");
        }
        vars.iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect::<Vec<_>>()
    };
    for (f, c) in run(OpsImpl::Fused).iter().zip(run(OpsImpl::Composed)) {
        assert!(max_abs_diff(f, &c) < 1e-4);
        assert!(abs_sum(f) > 0.0);
    }
}

/// One fused op called on its inputs with an implementation.
type OpCall = dyn Fn(&[Tensor], OpsImpl) -> Tensor;

/// The devices this machine has: the CPU, and the first CUDA device when there is one.
fn devices() -> Vec<candle_core::Device> {
    let mut d = vec![candle_core::Device::Cpu];
    if let Ok(cuda) = candle_core::Device::new_cuda(0) {
        d.push(cuda);
    }
    d
}

/// Every fused op, on every device of this machine and every float dtype for which the
/// kernel table (`ops::has_fused_kernel`) lists a kernel, against its composed reference
/// (forward and every input gradient); elsewhere the op falls back to the composed one,
/// which the fused-or-not comparison then also covers. So a CUDA kernel added to the table
/// is compared on a GPU machine.
/// `FrozenHalf` is compared per adapter method in crates/nn/tests/nn/nn_adapters.rs (fused vs composed).
#[test]
fn every_fused_op_matches_composed_where_the_table_has_a_kernel() {
    use candle_core::DType;
    use idat_nn::masks::Masks;
    use idat_nn::ops::{has_fused_kernel, Activation, Bottleneck, FusedOp};
    let mut compared = 0;
    for dev in devices() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let to = |t: Tensor| t.to_device(&dev).unwrap().to_dtype(dtype).unwrap();
            for op in FusedOp::ALL {
                let (inputs, f): (Vec<Tensor>, Box<OpCall>) = match op {
                    FusedOp::LayerNorm => (
                        vec![
                            to(rand_tensor(&[2, 5, 24], 1)),
                            to(rand_tensor(&[24], 2)),
                            to(rand_tensor(&[24], 3)),
                        ],
                        Box::new(|t, imp| ops::layer_norm(&t[0], &t[1], &t[2], 1e-6, imp).unwrap()),
                    ),
                    FusedOp::Softmax => (
                        vec![to(rand_tensor(&[2, 3, 17], 4))],
                        Box::new(|t, imp| ops::softmax_last_dim(&t[0], imp).unwrap()),
                    ),
                    FusedOp::Gelu => (
                        vec![to(rand_tensor(&[4, 33], 5))],
                        Box::new(|t, imp| ops::gelu(&t[0], imp).unwrap()),
                    ),
                    FusedOp::Attention => (
                        vec![to(rand_tensor(&[2, 7, 36], 18))],
                        Box::new(|t, imp| {
                            ops::attention(
                                &t[0],
                                3,
                                0.0,
                                &mut Masks::eval(),
                                imp,
                                None,
                                Tokens::All,
                            )
                            .unwrap()
                        }),
                    ),
                    FusedOp::Bottleneck => (
                        vec![
                            to(rand_tensor(&[2, 5, 24], 40)),
                            to(rand_tensor(&[3, 24], 41)),
                            to(rand_tensor(&[3], 42)),
                            to(rand_tensor(&[24, 3], 43)),
                            to(rand_tensor(&[24], 44)),
                        ],
                        Box::new(|t, imp| {
                            let p = Bottleneck {
                                w1: &t[1],
                                b1: &t[2],
                                w2: &t[3],
                                b2: &t[4],
                                act: Activation::Gelu,
                                scale: 1.0,
                                residual: true,
                            };
                            ops::bottleneck(&t[0], &p, imp).unwrap()
                        }),
                    ),
                    // Needs a CPU bf16 kernel (AVX512-BF16); compared in its own tests.
                    FusedOp::FrozenLinearBf16 | FusedOp::FrozenHalf => continue,
                };
                // f32: rounding of a different summation order; bf16: 8-bit mantissas.
                let tol = if dtype == DType::F32 { 1e-4 } else { 0.1 };
                compare(
                    &inputs,
                    |t, imp| f(t, imp).to_dtype(DType::F32).unwrap(),
                    tol,
                );
                if has_fused_kernel(op, &dev, dtype) {
                    compared += 1;
                }
            }
        }
    }
    // At least the CPU f32 kernels were compared.
    assert!(compared >= 5, "compared {compared} fused kernels");
}
