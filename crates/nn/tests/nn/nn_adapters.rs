//! Adapter methods: parameter-count formulas, freezing (no gradients for frozen tensors,
//! bit-identical through training), non-zero gradients for every trainable tensor of every
//! method, fused == composed, deterministic training masks, and error reporting.

use crate::nn_util::*;
use candle_core::{DType, Device, Tensor};
use idat_nn::adapters::*;
use idat_nn::ops::{cpu_bf16, Bf16Kernel, OpsImpl};
use idat_nn::vit::{Mode, Vit, VitConfig};
use std::collections::BTreeMap;

/// Every registered method at its defaults ([`registry`]), then variants the defaults do
/// not reach: LoRA on q and v only with alpha, deep VPT with trunc-normal prompts.
fn all_methods() -> Vec<AdapterConfig> {
    let mut methods = registry();
    methods.extend([
        AdapterConfig::Lora(LoraConfig {
            rank: 2,
            alpha: Some(4.0),
            targets: vec![QkvTarget::Q, QkvTarget::V],
        }),
        AdapterConfig::VptDeep(VptConfig {
            length: 3,
            init: PromptInit::TruncNormal,
        }),
    ]);
    methods
}

#[test]
fn vit_base_counts_follow_the_formulas() {
    let mut cfg = VitConfig::preset("vit_base_patch16_224").unwrap();
    cfg.num_classes = 100;
    let head = (768 + 1) * 100;
    let expect = [
        ("seq_adapter", 82_992),
        ("adaptformer", 82_992),
        ("adaptformer_original", 12 * (2 * 768 * 8 + 8 + 768)),
        ("shared_par_adapter", 82_992),
        ("houlsby", 156_768),
        ("lora", 12 * 3 * 2 * 8 * 768),
        ("vpt_shallow", 10 * 768),
        ("vpt_deep", 12 * 10 * 768),
        ("bitfit", 102_912),
        ("ssf", 205_824),
        ("linear", 0),
        ("full", 85_798_656),
        ("lora", 12 * 2 * 2 * 2 * 768),
        ("vpt_deep", 12 * 3 * 768),
    ];
    assert_eq!(all_methods().len(), expect.len());
    for (m, (name, n)) in all_methods().iter().zip(expect) {
        assert_eq!(m.name(), name);
        assert_eq!(m.count_method(&cfg), n, "{name}");
        assert_eq!(m.count_trainable(&cfg), n + head, "{name}");
    }
    assert_eq!(head, 76_900);
}

fn build(cfg: &VitConfig, m: &AdapterConfig) -> Vit {
    let bb = Vit::random_backbone(cfg, &Device::Cpu, 1).unwrap();
    Vit::new(cfg, m, bb, &Device::Cpu, 2).unwrap()
}

#[test]
fn built_models_have_the_formula_counts() {
    let cfg = tiny_config();
    for m in all_methods() {
        let vit = build(&cfg, &m);
        assert_eq!(vit.num_trainable(), m.count_trainable(&cfg), "{}", m.name());
        let frozen: usize = vit.frozen().values().map(|t| t.elem_count()).sum();
        assert_eq!(
            frozen + vit.num_trainable(),
            cfg.backbone_params() + m.count_trainable(&cfg) - m.count_method(&cfg)
                + added(&m, &cfg)
        );
    }
}

/// Parameters a method adds on top of the backbone (as opposed to unfreezing backbone ones).
fn added(m: &AdapterConfig, cfg: &VitConfig) -> usize {
    match m {
        AdapterConfig::Bitfit | AdapterConfig::Full | AdapterConfig::Linear => 0,
        _ => m.count_method(cfg),
    }
}

/// Replaces all-zero trainable tensors (zero-init up projections, LoRA B, biases) by
/// small random values: at such an init some gradients are exactly zero by construction,
/// which would hide a missing backward pass.
fn perturb_zero_tensors(vit: &Vit) {
    let vals: BTreeMap<String, Tensor> = vit
        .trainable()
        .into_iter()
        .enumerate()
        .map(|(i, (n, v))| {
            let t = v.as_tensor();
            let zero = t
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0;
            let t = if zero {
                (rand_tensor(t.dims(), 1000 + i as u64) * 0.1).unwrap()
            } else {
                t.copy().unwrap()
            };
            (n, t)
        })
        .collect();
    vit.set_trainable(&vals).unwrap();
}

fn grads_of(vit: &Vit, x: &Tensor, y: &Tensor) -> (candle_core::backprop::GradStore, Tensor) {
    grads_in(vit, x, y, Mode::Eval)
}

fn grads_in(
    vit: &Vit,
    x: &Tensor,
    y: &Tensor,
    mode: Mode,
) -> (candle_core::backprop::GradStore, Tensor) {
    let logits = vit.forward(x, mode).unwrap();
    let loss = cross_entropy(&logits, y).unwrap();
    (loss.backward().unwrap(), logits)
}

/// Runs `f` on a freshly built, perturbed tiny model of every method with fused and composed
/// ops, and a batch of 3 images (drawn from `seed`) with labels.
fn each_method_and_ops(
    seed: u64,
    mut f: impl FnMut(&AdapterConfig, OpsImpl, &mut Vit, &Tensor, &Tensor),
) {
    let cfg = tiny_config();
    let x = rand_tensor(&[3, 3, 16, 16], seed);
    let y = Tensor::new(&[0u32, 3, 4], &Device::Cpu).unwrap();
    for m in all_methods() {
        for ops in [OpsImpl::Fused, OpsImpl::Composed] {
            let mut vit = build(&cfg, &m);
            vit.set_ops_impl(ops);
            perturb_zero_tensors(&vit);
            f(&m, ops, &mut vit, &x, &y);
        }
    }
}

#[test]
fn every_trainable_tensor_gets_a_nonzero_gradient_and_frozen_ones_none() {
    each_method_and_ops(5, |m, ops, vit, x, y| {
        let (grads, _) = grads_of(vit, x, y);
        assert_gradients(vit, &grads, ops, &format!("{} {ops:?}", m.name()));
    });
}

/// Every trainable tensor has a finite, non-zero f32 gradient; with fused ops no frozen
/// tensor has a gradient buffer.
fn assert_gradients(vit: &Vit, grads: &candle_core::backprop::GradStore, ops: OpsImpl, what: &str) {
    for (name, var) in vit.trainable() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no grad for {name}"));
        assert_eq!(g.dtype(), DType::F32, "{what}: {name} gradient dtype");
        let s = abs_sum(g);
        assert!(
            s > 0.0 && s.is_finite(),
            "{what}: gradient of {name} is {s}"
        );
    }
    if ops == OpsImpl::Fused {
        for (name, t) in vit.frozen() {
            assert!(
                grads.get(&t).is_none(),
                "{what}: frozen {name} got a gradient buffer"
            );
        }
    }
}

/// Logits and every trainable tensor's gradient agree between fused and composed ops, for
/// every method, in `mode`.
fn assert_fused_matches_composed(cfg: &VitConfig, x: &Tensor, y: &Tensor, mode: Mode) {
    for m in all_methods() {
        let mut vit = build(cfg, &m);
        perturb_zero_tensors(&vit);
        let (gf, lf) = grads_in(&vit, x, y, mode);
        vit.set_ops_impl(OpsImpl::Composed);
        let (gc, lc) = grads_in(&vit, x, y, mode);
        assert!(rel_err(&lf, &lc) < 1e-5, "{}: logits differ", m.name());
        for (name, var) in vit.trainable() {
            let e = rel_err(
                gf.get(var.as_tensor()).unwrap(),
                gc.get(var.as_tensor()).unwrap(),
            );
            assert!(
                e < 1e-4,
                "{}: gradient of {name} differs, rel err {e}",
                m.name()
            );
        }
    }
}

#[test]
fn fused_and_composed_gradients_agree_for_every_method() {
    let x = rand_tensor(&[2, 3, 16, 16], 6);
    let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert_fused_matches_composed(&tiny_config(), &x, &y, Mode::Eval);
}

/// Long sequences (heads x N > 6 D: patch 2 gives N = 65, 4 heads, D = 32) take the path
/// where attention probabilities are recomputed in the backward instead of kept.
#[test]
fn fused_and_composed_gradients_agree_when_attention_probabilities_are_recomputed() {
    let cfg = VitConfig {
        patch_size: 2,
        ..tiny_config()
    };
    let x = rand_tensor(&[2, 3, 16, 16], 8);
    let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert_fused_matches_composed(&cfg, &x, &y, Mode::Eval);
}

/// The last block computing only the class token's row gives the logits and gradients of
/// the full last block, for every method, fused and composed, with drop path active and
/// on a long sequence (probabilities recomputed in the backward). Dropout is off: its
/// masks in the last block are drawn for the computed row only, so the random stream
/// differs from a full pass (same distribution, other draws).
#[test]
fn the_class_token_only_last_block_gives_the_full_blocks_logits_and_gradients() {
    let drop_path = VitConfig {
        depth: 3,
        drop_path_rate: 0.6,
        ..tiny_config()
    };
    let long = VitConfig {
        patch_size: 2,
        ..tiny_config()
    };
    let y = Tensor::new(&[1u32, 2, 0, 4], &Device::Cpu).unwrap();
    let x = rand_tensor(&[4, 3, 16, 16], 12);
    for (cfg, mode) in [
        (tiny_config(), Mode::Eval),
        (drop_path, Mode::Train { seed: 3 }),
        (long, Mode::Eval),
    ] {
        for m in all_methods() {
            let m = match m {
                AdapterConfig::AdaptformerOriginal(c) => {
                    AdapterConfig::AdaptformerOriginal(AdaptformerOriginalConfig {
                        dropout: 0.0,
                        ..c
                    })
                }
                m => m,
            };
            for ops in [OpsImpl::Fused, OpsImpl::Composed] {
                let mut vit = build(&cfg, &m);
                vit.set_ops_impl(ops);
                perturb_zero_tensors(&vit);
                let (g_cls, l_cls) = grads_in(&vit, &x, &y, mode);
                vit.set_last_block_cls_only(false);
                let (g_all, l_all) = grads_in(&vit, &x, &y, mode);
                let what = format!("{} {ops:?} {mode:?} patch {}", m.name(), cfg.patch_size);
                let e = rel_err(&l_cls, &l_all);
                assert!(e < 1e-5, "{what}: logits differ ({e})");
                for (name, var) in vit.trainable() {
                    let (a, b) = (g_cls.get(var.as_tensor()), g_all.get(var.as_tensor()));
                    let e = rel_err(a.unwrap(), b.unwrap());
                    assert!(e < 1e-4, "{what}: gradient of {name} differs ({e})");
                }
            }
        }
    }
}

/// The fused ops hand their kept activations to the first backward; a second backward over
/// the same graph recomputes them and gives the same gradients.
#[test]
fn a_second_backward_over_the_same_graph_gives_the_same_gradients() {
    let x = rand_tensor(&[2, 3, 16, 16], 9);
    let y = Tensor::new(&[0u32, 4], &Device::Cpu).unwrap();
    for m in all_methods() {
        let vit = build(&tiny_config(), &m);
        perturb_zero_tensors(&vit);
        let loss = cross_entropy(&vit.forward(&x, Mode::Eval).unwrap(), &y).unwrap();
        let first = loss.backward().unwrap();
        let second = loss.backward().unwrap();
        for (name, var) in vit.trainable() {
            let (a, b) = (first.get(var.as_tensor()), second.get(var.as_tensor()));
            let e = rel_err(a.unwrap(), b.unwrap());
            assert!(
                e < 1e-6,
                "{}: {name} differs on the second backward ({e})",
                m.name()
            );
        }
    }
}

/// The frozen-block ops draw drop-path factors at the same point of the mask stream as the
/// composed block and apply them per sample; a missing qkv bias takes the no-bias path.
#[test]
fn fused_blocks_match_composed_with_drop_path_and_without_qkv_bias() {
    let cfg = VitConfig {
        depth: 3,
        drop_path_rate: 0.6,
        qkv_bias: false,
        ..tiny_config()
    };
    let x = rand_tensor(&[6, 3, 16, 16], 11);
    let y = Tensor::new(&[1u32, 2, 0, 4, 3, 1], &Device::Cpu).unwrap();
    // Seed 3 drops some but not all samples in the later blocks (checked below).
    let mut masks = idat_nn::masks::Masks::train(3);
    let mut dropped = 0;
    for i in 0..cfg.depth {
        for _branch in 0..2 {
            let f = masks.drop_path_factors(6, cfg.drop_path_at(i));
            dropped += f.map_or(0, |f| f.iter().filter(|&&v| v == 0.0).count());
        }
    }
    assert!(
        dropped > 0,
        "seed 3 drops no sample: the test would not test drop path"
    );
    assert_fused_matches_composed(&cfg, &x, &y, Mode::Train { seed: 3 });
}

fn snapshot(ts: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<u32>> {
    ts.iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn frozen_tensors_stay_bit_identical_through_sgd_steps() {
    let cfg = tiny_config();
    let x = rand_tensor(&[4, 3, 16, 16], 7);
    let y = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu).unwrap();
    for m in [
        AdapterConfig::SeqAdapter(SeqAdapterConfig::default()),
        AdapterConfig::Bitfit,
        AdapterConfig::Ssf,
    ] {
        let vit = build(&cfg, &m);
        let frozen_before = snapshot(&vit.frozen());
        let train_before = snapshot(
            &vit.trainable()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
                .collect(),
        );
        for step in 0..3u64 {
            let logits = vit.forward(&x, Mode::Train { seed: step }).unwrap();
            let grads = cross_entropy(&logits, &y).unwrap().backward().unwrap();
            for (_, var) in vit.trainable() {
                let g = grads.get(var.as_tensor()).unwrap();
                var.set(&(var.as_tensor() - (g * 0.5).unwrap()).unwrap())
                    .unwrap();
            }
        }
        assert_eq!(
            snapshot(&vit.frozen()),
            frozen_before,
            "{}: a frozen tensor changed",
            m.name()
        );
        let train_after = snapshot(
            &vit.trainable()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
                .collect(),
        );
        for (n, before) in &train_before {
            assert_ne!(
                &train_after[n],
                before,
                "{}: trainable {n} did not change",
                m.name()
            );
        }
        // export_backbone returns the (unchanged) frozen timm tensors plus the trained head.
        let exported = vit.export_backbone();
        assert_eq!(exported.len(), cfg.expected_tensors().len());
    }
}

#[test]
fn train_mode_masks_are_deterministic_per_seed() {
    let mut cfg = tiny_config();
    cfg.drop_path_rate = 0.5;
    cfg.drop_rate = 0.2;
    cfg.attn_drop_rate = 0.2;
    let vit = build(&cfg, &AdapterConfig::default());
    let x = rand_tensor(&[4, 3, 16, 16], 8);
    let a = vit.forward(&x, Mode::Train { seed: 11 }).unwrap();
    let b = vit.forward(&x, Mode::Train { seed: 11 }).unwrap();
    let c = vit.forward(&x, Mode::Train { seed: 12 }).unwrap();
    let e1 = vit.forward(&x, Mode::Eval).unwrap();
    let e2 = vit.forward(&x, Mode::Eval).unwrap();
    let bits = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_ne!(bits(&a), bits(&c));
    assert_eq!(bits(&e1), bits(&e2));
    assert_ne!(bits(&a), bits(&e1));
}

#[test]
fn drop_path_rates_increase_linearly() {
    let mut cfg = tiny_config();
    cfg.depth = 5;
    cfg.drop_path_rate = 0.2;
    let rates: Vec<f64> = (0..5).map(|i| cfg.drop_path_at(i)).collect();
    assert_eq!(rates[0], 0.0);
    assert!((rates[2] - 0.1).abs() < 1e-12 && (rates[4] - 0.2).abs() < 1e-12);
}

#[test]
fn bad_backbone_lists_every_problem() {
    let cfg = tiny_config();
    let mut bb = Vit::random_backbone(&cfg, &Device::Cpu, 1).unwrap();
    bb.remove("blocks.1.mlp.fc2.bias");
    bb.insert(
        "pos_embed".into(),
        Tensor::zeros((1, 3, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    bb.insert(
        "fc_norm.weight".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    bb.insert(
        "head.weight".into(),
        Tensor::zeros((21843, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Vit::new(&cfg, &AdapterConfig::default(), bb, &Device::Cpu, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing `blocks.1.mlp.fc2.bias`"), "{err}");
    assert!(
        err.contains("`pos_embed` has shape [1, 3, 32], expected [1, 5, 32]"),
        "{err}"
    );
    assert!(err.contains("unexpected tensor `fc_norm.weight`"), "{err}");
    assert!(
        !err.contains("head.weight"),
        "the head is discarded, not an error: {err}"
    );
}

#[test]
fn bad_configs_and_inputs_are_reported() {
    let mut cfg = tiny_config();
    cfg.patch_size = 5;
    cfg.num_heads = 3;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("`patch_size` 5 must divide `img_size` 16") && err.contains("`num_heads` 3"),
        "{err}"
    );
    assert!(VitConfig::preset("vit_huge")
        .unwrap_err()
        .to_string()
        .contains("vit_base_patch16_224"));
    let cfg = tiny_config();
    let lora = AdapterConfig::Lora(LoraConfig {
        rank: 0,
        alpha: None,
        targets: vec![],
    });
    assert!(lora
        .validate(&cfg)
        .unwrap_err()
        .to_string()
        .contains("`rank` must be > 0"));
    let vit = build(&cfg, &AdapterConfig::Linear);
    let err = vit
        .forward(&rand_tensor(&[1, 3, 8, 8], 1), Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[B, 3, 16, 16]"), "{err}");
    let mut vals = BTreeMap::new();
    vals.insert(
        "head.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    vals.insert(
        "blocks.0.norm1.weight".to_string(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = vit.set_trainable(&vals).unwrap_err().to_string();
    assert!(
        err.contains("missing `head.bias`")
            && err.contains("`head.weight` has shape [2, 2], expected [5, 32]"),
        "{err}"
    );
    assert!(
        err.contains("`blocks.0.norm1.weight` is not a trainable tensor"),
        "{err}"
    );
}

#[test]
fn adapter_configs_parse_by_method_name() {
    let a: AdapterConfig =
        serde_json::from_str(r#"{"method":"lora","rank":4,"targets":["q","v"]}"#).unwrap();
    assert_eq!(
        a,
        AdapterConfig::Lora(LoraConfig {
            rank: 4,
            alpha: None,
            targets: vec![QkvTarget::Q, QkvTarget::V]
        })
    );
    let a: AdapterConfig = serde_json::from_str(r#"{"method":"seq_adapter"}"#).unwrap();
    assert_eq!(a, AdapterConfig::SeqAdapter(SeqAdapterConfig { hidden: 4 }));
    let a: AdapterConfig = serde_json::from_str(r#"{"method":"adaptformer_original"}"#).unwrap();
    assert_eq!(
        a,
        AdapterConfig::AdaptformerOriginal(AdaptformerOriginalConfig::default())
    );
    let err = serde_json::from_str::<AdapterConfig>(r#"{"method":"seq_adapter","hiden":8}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hiden"), "{err}");
    let err = serde_json::from_str::<AdapterConfig>(r#"{"method":"prefix"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefix"), "{err}");
}

/// The CPU bf16 kernels to test: the emulated one everywhere (bf16-rounded operands, f32
/// products: the numbers of a bf16 kernel on any machine) and OpenBLAS's sbgemm where this
/// machine can use it.
fn bf16_kernels() -> Vec<Bf16Kernel> {
    let mut all = vec![Bf16Kernel::Emulated];
    match cpu_bf16() {
        Ok(k) => all.push(k),
        Err(why) => eprintln!("CPU bf16 kernel not tested here: {why}"),
    }
    all
}

#[test]
fn bf16_mixed_precision_tracks_f32_and_trains_every_tensor() {
    use idat_nn::precision::Precision;
    for kernel in bf16_kernels() {
        each_method_and_ops(7, |m, ops, vit, x, y| {
            let (g32, l32) = grads_of(vit, x, y);
            vit.set_precision_with(Precision::Bf16, Some(Ok(kernel)))
                .unwrap();
            assert_eq!(vit.precision(), Precision::Bf16);
            let (g16, l16) = grads_of(vit, x, y);
            assert_eq!(l16.dtype(), DType::F32, "logits stay f32");
            let e = rel_err(&l16, &l32);
            // (Full fine-tuning has no frozen matrices; its attention products still run in bf16.)
            assert!(
                e > 0.0,
                "{} {ops:?} {kernel}: bf16 changed nothing",
                m.name()
            );
            assert!(e < 3e-2, "{} {ops:?}: bf16 logits off by {e}", m.name());
            assert_gradients(vit, &g16, ops, &format!("{} {ops:?} bf16", m.name()));
            for (name, var) in vit.trainable() {
                let g = g16.get(var.as_tensor()).expect("checked above");
                let e = rel_err(g, g32.get(var.as_tensor()).unwrap());
                assert!(e < 0.1, "{} {ops:?}: {name} bf16 grad off by {e}", m.name());
            }
            // Back to f32: bit-identical logits to the first pass.
            vit.set_precision(Precision::F32).unwrap();
            let (_, again) = grads_of(vit, x, y);
            assert_eq!(rel_err(&again, &l32), 0.0, "{}: f32 after bf16", m.name());
        });
    }
}

/// One training step's gradients (drop path active, the fused frozen halves of
/// `seq_adapter`, the class-token-only last block) at CPU bf16 against f32, per trainable
/// tensor, as max |g16 - g32| / max |g32|.
///
/// Tolerance 2^-5 = 0.031: bf16 keeps 8 significant bits, so rounding an operand changes it
/// by at most u = 2^-8 (0.39%) relative, and a product of two rounded operands by at most
/// 2u. A gradient here passes through about a dozen bf16 products in series (patch
/// embedding, per block qkv, two attention products, proj, fc1, fc2, and the same chain
/// back); independent rounding errors add in quadrature, sqrt(12) * 2u = 0.027. Measured
/// with the emulated kernel: 4e-5 to 4e-3 on this model. f32 summation order alone gives ~1e-6, so the test also
/// checks that bf16 changed something (> 1e-4).
#[test]
fn bf16_training_step_gradients_are_within_a_stated_tolerance_of_f32() {
    use idat_nn::precision::Precision;
    use idat_nn::vit::Bf16Products;
    const TOL: f32 = 1.0 / 32.0;
    let mut cfg = tiny_config();
    cfg.drop_path_rate = 0.1;
    let x = rand_tensor(&[4, 3, 16, 16], 11);
    let y = Tensor::new(&[0u32, 3, 4, 1], &Device::Cpu).unwrap();
    let mode = Mode::Train { seed: 5 };
    let mut vit = build(
        &cfg,
        &AdapterConfig::SeqAdapter(SeqAdapterConfig::default()),
    );
    perturb_zero_tensors(&vit);
    let (g32, l32) = grads_in(&vit, &x, &y, mode);
    for kernel in bf16_kernels() {
        vit.set_precision_with(Precision::Bf16, Some(Ok(kernel)))
            .unwrap();
        assert_eq!(vit.bf16_products(), &Bf16Products::Cpu(kernel));
        let (g16, _) = grads_in(&vit, &x, &y, mode);
        let mut worst = 0f32;
        for (name, var) in vit.trainable() {
            let e = rel_err(
                g16.get(var.as_tensor()).unwrap(),
                g32.get(var.as_tensor()).unwrap(),
            );
            eprintln!("{kernel}: {name} {e:.2e}");
            assert!(e < TOL, "{kernel}: {name} bf16 gradient off by {e}");
            worst = worst.max(e);
        }
        assert!(worst > 1e-4, "{kernel}: bf16 changed nothing ({worst})");
    }
    // Without a kernel the model falls back to f32 products: bit-identical to f32.
    vit.set_precision_with(Precision::Bf16, Some(Err("no kernel here".into())))
        .unwrap();
    assert_eq!(
        vit.bf16_products(),
        &Bf16Products::CpuFallback("no kernel here".into())
    );
    let (_, l) = grads_in(&vit, &x, &y, mode);
    assert_eq!(rel_err(&l, &l32), 0.0, "the fallback is f32");
}

/// Gradients of every method are bitwise the same from run to run on 2 and on 3 threads:
/// the fused CPU ops sum over fixed parts of rows, never over rayon's work-stealing splits
/// (which made repeated multi-threaded runs differ). Batch 64 makes those sums span several
/// parts. (Across thread counts candle's own matmul still sums in different orders.)
#[test]
fn gradients_are_bitwise_the_same_from_run_to_run_on_several_threads() {
    let cfg = tiny_config();
    let x = rand_tensor(&[64, 3, 16, 16], 11);
    let labels: Vec<u32> = (0..64).map(|i| i % 5).collect();
    let y = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|f| f.to_bits()).collect()
    };
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for m in all_methods() {
            let vit = build(&cfg, &m);
            perturb_zero_tensors(&vit);
            let run = || -> Vec<(String, Vec<u32>)> {
                let (grads, _) = pool.install(|| grads_of(&vit, &x, &y));
                vit.trainable()
                    .into_iter()
                    .map(|(name, var)| (name, bits(grads.get(var.as_tensor()).unwrap())))
                    .collect()
            };
            let first = run();
            for _ in 0..8 {
                for ((name, a), (_, b)) in first.iter().zip(run()) {
                    assert!(
                        *a == b,
                        "{}: gradient of {name} changed between two runs on {threads} threads",
                        m.name()
                    );
                }
            }
        }
    }
}
