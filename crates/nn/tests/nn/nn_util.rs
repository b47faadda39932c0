//! Helpers shared by the nn_* integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, D};
use idat_nn::vit::VitConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Path of a committed timm fixture.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/timm")
        .join(name)
}

/// Loads a fixture safetensors file.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("fixture loads")
}

/// Loads a fixture's VitConfig json.
pub fn config(name: &str) -> VitConfig {
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).expect("fixture json");
    serde_json::from_str(&text).expect("fixture json parses")
}

/// Backbone part (no head) of a fixture's tensors, adapter tensors removed.
pub fn backbone(all: &HashMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    all.iter()
        .filter(|(k, _)| !k.starts_with("head.") && !k.contains(".adapter."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// sum |t| as f32.
pub fn abs_sum(t: &Tensor) -> f32 {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-30)
}

/// Mean cross-entropy of `logits [B, C]` for `labels [B]` (u32), composed from
/// differentiable ops.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.detach().max_keepdim(D::Minus1)?;
    let z = logits.broadcast_sub(&max)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = z.broadcast_sub(&lse)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Small ViT used by the adapter tests.
pub fn tiny_config() -> VitConfig {
    VitConfig {
        img_size: 16,
        patch_size: 8,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 32,
        depth: 2,
        num_heads: 4,
        mlp_ratio: 2.0,
        qkv_bias: true,
        drop_rate: 0.0,
        attn_drop_rate: 0.0,
        drop_path_rate: 0.0,
    }
}

/// Deterministic pseudo-random tensor in [-1, 1).
pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}
