//! Conversion of Google ViT `.npz` parameter names and layouts to timm's, as
//! timm's `_load_weights` does (see docs/checkpoints.md): vit_jax files (optionally
//! prefixed `opt/target/`) and big_vision files (prefix `params/`, top-level
//! `pos_embedding`, scanned blocks stacked on a leading layer axis).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// Result of a conversion: timm-named tensors plus the Google keys (with their
/// original prefix) that were not used, with their tensors.
pub struct Converted {
    /// Tensors under timm names.
    pub tensors: BTreeMap<String, Tensor>,
    /// Keys not converted, under their original names.
    pub unused: BTreeMap<String, Tensor>,
}

/// Converts the raw arrays of a Google ViT `.npz` to timm names and layouts.
pub fn convert(raw: BTreeMap<String, Tensor>) -> Result<Converted> {
    let prefix = ["opt/target/", "params/"]
        .into_iter()
        .find(|p| raw.keys().any(|k| k.starts_with(p)) && raw.keys().all(|k| k.starts_with(p)))
        .unwrap_or("");
    let mut w: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, v) in raw {
        w.insert(k[prefix.len()..].to_string(), v);
    }
    let mut out = BTreeMap::new();
    let take = |w: &mut BTreeMap<String, Tensor>,
                out: &mut BTreeMap<String, Tensor>,
                from: &str,
                to: &str,
                f: &dyn Fn(Tensor) -> Result<Tensor>|
     -> Result<()> {
        if let Some(t) = w.remove(from) {
            let converted = f(t).with_context(|| format!("converting {prefix}{from} to {to}"))?;
            out.insert(to.to_string(), converted);
        }
        Ok(())
    };
    let id = |t: Tensor| Ok(t);
    let transpose2 = |t: Tensor| Ok(t.t()?.contiguous()?);
    take(
        &mut w,
        &mut out,
        "embedding/kernel",
        "patch_embed.proj.weight",
        &|t: Tensor| Ok(t.permute((3, 2, 0, 1))?.contiguous()?),
    )?;
    take(
        &mut w,
        &mut out,
        "embedding/bias",
        "patch_embed.proj.bias",
        &id,
    )?;
    take(&mut w, &mut out, "cls", "cls_token", &id)?;
    take(
        &mut w,
        &mut out,
        "Transformer/posembed_input/pos_embedding",
        "pos_embed",
        &id,
    )?;
    take(&mut w, &mut out, "pos_embedding", "pos_embed", &id)?;
    take(
        &mut w,
        &mut out,
        "Transformer/encoder_norm/scale",
        "norm.weight",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        "Transformer/encoder_norm/bias",
        "norm.bias",
        &id,
    )?;
    take(&mut w, &mut out, "head/kernel", "head.weight", &transpose2)?;
    take(&mut w, &mut out, "head/bias", "head.bias", &id)?;

    // Scanned big_vision blocks: split the leading layer axis into per-block keys.
    let scanned_prefix = "Transformer/encoderblock/";
    let scanned: Vec<String> = w
        .keys()
        .filter(|k| k.starts_with(scanned_prefix))
        .cloned()
        .collect();
    let (mha, mlp, ln1, ln2) = if scanned.is_empty() {
        (
            "MultiHeadDotProductAttention_1",
            "MlpBlock_3",
            "LayerNorm_0",
            "LayerNorm_2",
        )
    } else {
        (
            "MultiHeadDotProductAttention_0",
            "MlpBlock_0",
            "LayerNorm_0",
            "LayerNorm_1",
        )
    };
    for k in scanned {
        let t = w.remove(&k).expect("key listed above");
        let rest = &k[scanned_prefix.len()..];
        let layers = t.dims().first().copied().unwrap_or(0);
        if layers == 0 || layers > 1000 {
            bail!(
                "{prefix}{k}: scanned block tensor needs a leading layer axis, got shape {:?}",
                t.dims()
            );
        }
        for i in 0..layers {
            w.insert(format!("Transformer/encoderblock_{i}/{rest}"), t.get(i)?);
        }
    }

    let mut depth = 0;
    while w
        .keys()
        .any(|k| k.starts_with(&format!("Transformer/encoderblock_{depth}/")))
    {
        depth += 1;
    }
    for i in 0..depth {
        let b = format!("Transformer/encoderblock_{i}/");
        let t = format!("blocks.{i}.");
        for (ln, norm) in [(ln1, "norm1"), (ln2, "norm2")] {
            take(
                &mut w,
                &mut out,
                &format!("{b}{ln}/scale"),
                &format!("{t}{norm}.weight"),
                &id,
            )?;
            take(
                &mut w,
                &mut out,
                &format!("{b}{ln}/bias"),
                &format!("{t}{norm}.bias"),
                &id,
            )?;
        }
        let a = format!("{b}{mha}/");
        // q, k, v kernels [D, H, Dh] -> reshape(D, H*Dh).T, concatenated along rows.
        let qkv_k: Vec<String> = ["query", "key", "value"]
            .iter()
            .map(|n| format!("{a}{n}/kernel"))
            .collect();
        if qkv_k.iter().all(|k| w.contains_key(k)) {
            let parts = qkv_k
                .iter()
                .map(|k| {
                    let t = w.remove(k).expect("checked");
                    let d = t.dims().first().copied().unwrap_or(0);
                    Ok(t.reshape((d, ()))?.t()?)
                })
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("converting {prefix}{a}{{query,key,value}}/kernel"))?;
            out.insert(
                format!("{t}attn.qkv.weight"),
                Tensor::cat(&parts, 0)?.contiguous()?,
            );
        }
        let qkv_b: Vec<String> = ["query", "key", "value"]
            .iter()
            .map(|n| format!("{a}{n}/bias"))
            .collect();
        if qkv_b.iter().all(|k| w.contains_key(k)) {
            let parts = qkv_b
                .iter()
                .map(|k| Ok(w.remove(k).expect("checked").flatten_all()?))
                .collect::<Result<Vec<_>>>()?;
            out.insert(format!("{t}attn.qkv.bias"), Tensor::cat(&parts, 0)?);
        }
        // out kernel [H, Dh, D] -> transpose(2, 0, 1) -> [D, H*Dh].
        take(
            &mut w,
            &mut out,
            &format!("{a}out/kernel"),
            &format!("{t}attn.proj.weight"),
            &|k: Tensor| {
                let d = k.dims().last().copied().unwrap_or(0);
                if k.rank() != 3 {
                    bail!(
                        "expected a [heads, head_dim, dim] kernel, got {:?}",
                        k.dims()
                    );
                }
                Ok(k.permute((2, 0, 1))?.contiguous()?.reshape((d, ()))?)
            },
        )?;
        take(
            &mut w,
            &mut out,
            &format!("{a}out/bias"),
            &format!("{t}attn.proj.bias"),
            &id,
        )?;
        for (dense, fc) in [("Dense_0", "fc1"), ("Dense_1", "fc2")] {
            take(
                &mut w,
                &mut out,
                &format!("{b}{mlp}/{dense}/kernel"),
                &format!("{t}mlp.{fc}.weight"),
                &transpose2,
            )?;
            take(
                &mut w,
                &mut out,
                &format!("{b}{mlp}/{dense}/bias"),
                &format!("{t}mlp.{fc}.bias"),
                &id,
            )?;
        }
    }
    let unused = w
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect();
    Ok(Converted {
        tensors: out,
        unused,
    })
}
