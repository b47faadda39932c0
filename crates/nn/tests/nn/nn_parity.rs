//! Numeric parity with the real timm (fixtures from scripts/timm_fixtures.py): forward max
//! relative error < 1e-4 (f32), gradients of the seq_adapter model < 1e-3, for both the
//! fused and the composed op implementations.

use crate::nn_util::*;
use candle_core::{DType, Device, Tensor};
use idat_nn::adapters::{AdapterConfig, SeqAdapterConfig};
use idat_nn::ops::OpsImpl;
use idat_nn::vit::{Mode, Vit};
use std::collections::BTreeMap;

fn check_forward(name: &str, ops: OpsImpl) {
    let cfg = config(name);
    let weights = load(&format!("{name}.safetensors"));
    let io = load(&format!("{name}_io.safetensors"));
    let mut vit = Vit::new(
        &cfg,
        &AdapterConfig::Linear,
        backbone(&weights),
        &Device::Cpu,
        0,
    )
    .unwrap();
    vit.set_ops_impl(ops);
    let head: BTreeMap<String, Tensor> = ["head.weight", "head.bias"]
        .iter()
        .map(|k| (k.to_string(), weights[*k].clone()))
        .collect();
    vit.set_trainable(&head).unwrap();
    let x = &io["input"];
    let feats = vit.forward_features(x, Mode::Eval).unwrap();
    let logits = vit.forward(x, Mode::Eval).unwrap();
    let (ef, el) = (
        rel_err(&feats, &io["features"]),
        rel_err(&logits, &io["logits"]),
    );
    println!("{name} {ops:?}: features rel err {ef:.2e}, logits rel err {el:.2e}");
    assert!(ef < 1e-4, "{name} {ops:?}: features rel err {ef}");
    assert!(el < 1e-4, "{name} {ops:?}: logits rel err {el}");
}

#[test]
fn forward_matches_timm_dim64_patch8() {
    check_forward("s1", OpsImpl::Fused);
    check_forward("s1", OpsImpl::Composed);
}

#[test]
fn forward_matches_timm_dim48_patch4_no_qkv_bias() {
    check_forward("s2", OpsImpl::Fused);
    check_forward("s2", OpsImpl::Composed);
}

#[test]
fn forward_matches_timm_with_drop_path_in_eval_mode() {
    check_forward("s3", OpsImpl::Fused);
    check_forward("s3", OpsImpl::Composed);
}

fn check_seq_adapter_grad(ops: OpsImpl) {
    let cfg = config("seq_grad");
    let weights = load("seq_grad.safetensors");
    let io = load("seq_grad_io.safetensors");
    let adapter = AdapterConfig::SeqAdapter(SeqAdapterConfig { hidden: 4 });
    let mut vit = Vit::new(&cfg, &adapter, backbone(&weights), &Device::Cpu, 0).unwrap();
    vit.set_ops_impl(ops);
    let trainable: BTreeMap<String, Tensor> = vit
        .trainable()
        .into_iter()
        .map(|(n, _)| {
            let t = weights
                .get(&n)
                .unwrap_or_else(|| panic!("fixture lacks {n}"))
                .clone();
            (n, t)
        })
        .collect();
    vit.set_trainable(&trainable).unwrap();
    let logits = vit.forward(&io["input"], Mode::Eval).unwrap();
    let el = rel_err(&logits, &io["logits"]);
    assert!(el < 1e-4, "{ops:?}: logits rel err {el}");
    let labels = io["labels"].to_dtype(DType::U32).unwrap();
    let loss = cross_entropy(&logits, &labels).unwrap();
    let loss_err = rel_err(&loss.reshape(1).unwrap(), &io["loss"]);
    assert!(loss_err < 1e-4, "{ops:?}: loss rel err {loss_err}");
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in vit.trainable() {
        let expected = &io[&format!("grad.{name}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let e = rel_err(got, expected);
        println!("{ops:?} grad {name}: rel err {e:.2e}");
        assert!(e < 1e-3, "{ops:?}: gradient of {name} rel err {e}");
        checked += 1;
    }
    assert_eq!(checked, 2 * 4 + 2, "adapter tensors of 2 blocks + head");
}

#[test]
fn seq_adapter_gradients_match_timm_fused() {
    check_seq_adapter_grad(OpsImpl::Fused);
}

#[test]
fn seq_adapter_gradients_match_timm_composed() {
    check_seq_adapter_grad(OpsImpl::Composed);
}
