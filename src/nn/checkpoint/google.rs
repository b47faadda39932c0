//! Conversion of Google ViT `.npz` parameter names and layouts to timm's, as
//! timm's `_load_weights` does (see docs/checkpoints.md): vit_jax files (optionally
//! prefixed `opt/target/`) and big_vision files (prefix `params/`, top-level
//! `pos_embedding`, scanned blocks stacked on a leading layer axis).
//!
//! The prefix is found as timm finds it, by probing a known key
//! (`opt/target/embedding/kernel`, `params/embedding/kernel`); entries outside the
//! prefix (optimizer state next to `opt/target/`) are set aside, not required to
//! carry it. `pre_logits/*` (the representation layer of the original ImageNet-21k
//! `ViT-B_16.npz`, which timm drops) is dropped.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// Result of a conversion: timm-named tensors plus the Google keys (with their
/// original prefix) that were not used, with their tensors.
pub struct Converted {
    /// Tensors under timm names.
    pub tensors: BTreeMap<String, Tensor>,
    /// Keys under the parameter prefix that were not converted, under their original names.
    pub unused: BTreeMap<String, Tensor>,
    /// The file's own key(s) each timm tensor was made from.
    pub sources: BTreeMap<String, Vec<String>>,
    /// What was set aside (optimizer entries outside the prefix, `pre_logits/*`).
    pub notes: Vec<String>,
}

/// Keys of the Google layouts with which a prefix is probed (as timm does).
const PROBE_KEY: &str = "embedding/kernel";

/// Converts the raw arrays of a Google ViT `.npz` to timm names and layouts.
pub fn convert(raw: BTreeMap<String, Tensor>) -> Result<Converted> {
    let prefix = ["opt/target/", "params/"]
        .into_iter()
        .find(|p| raw.contains_key(&format!("{p}{PROBE_KEY}")))
        .or_else(|| {
            // No embedding at all: a prefix every key carries still tells the layout.
            ["opt/target/", "params/"].into_iter().find(|p| {
                !raw.contains_key(PROBE_KEY)
                    && raw.keys().any(|k| k.starts_with(p))
                    && raw.keys().all(|k| k.starts_with(p))
            })
        })
        .unwrap_or("");
    let mut notes = Vec::new();
    let mut w: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut outside = Vec::new();
    for (k, v) in raw {
        match k.strip_prefix(prefix) {
            Some(rest) => {
                w.insert(rest.to_string(), v);
            }
            None => outside.push(k),
        }
    }
    if !outside.is_empty() {
        notes.push(format!(
            "skipped {} entr{} outside the parameters under `{prefix}` (optimizer state): {}",
            outside.len(),
            if outside.len() == 1 { "y" } else { "ies" },
            super::list_excerpt(&outside, ", ")
        ));
    }
    let pre_logits: Vec<String> = w
        .keys()
        .filter(|k| k.starts_with("pre_logits/"))
        .cloned()
        .collect();
    if !pre_logits.is_empty() {
        for k in &pre_logits {
            w.remove(k);
        }
        let named: Vec<String> = pre_logits.iter().map(|k| format!("{prefix}{k}")).collect();
        notes.push(format!(
            "dropped the pre-logits layer ({}), as timm does: the model has none",
            named.join(", ")
        ));
    }
    // Each working key's name in the file (split scanned blocks keep their stacked key).
    let mut origin: BTreeMap<String, String> = w
        .keys()
        .map(|k| (k.clone(), format!("{prefix}{k}")))
        .collect();
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let take = |w: &mut BTreeMap<String, Tensor>,
                out: &mut BTreeMap<String, Tensor>,
                origin: &BTreeMap<String, String>,
                sources: &mut BTreeMap<String, Vec<String>>,
                from: &str,
                to: &str,
                f: &dyn Fn(Tensor) -> Result<Tensor>|
     -> Result<()> {
        if let Some(t) = w.remove(from) {
            let converted = f(t).with_context(|| format!("converting {prefix}{from} to {to}"))?;
            out.insert(to.to_string(), converted);
            if let Some(o) = origin.get(from) {
                sources.entry(to.to_string()).or_default().push(o.clone());
            }
        }
        Ok(())
    };
    let id = |t: Tensor| Ok(t);
    let transpose2 = |t: Tensor| Ok(t.t()?.contiguous()?);
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "embedding/kernel",
        "patch_embed.proj.weight",
        &|t: Tensor| Ok(t.permute((3, 2, 0, 1))?.contiguous()?),
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "embedding/bias",
        "patch_embed.proj.bias",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "cls",
        "cls_token",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "Transformer/posembed_input/pos_embedding",
        "pos_embed",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "pos_embedding",
        "pos_embed",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "Transformer/encoder_norm/scale",
        "norm.weight",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "Transformer/encoder_norm/bias",
        "norm.bias",
        &id,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "head/kernel",
        "head.weight",
        &transpose2,
    )?;
    take(
        &mut w,
        &mut out,
        &origin,
        &mut sources,
        "head/bias",
        "head.bias",
        &id,
    )?;

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
            let split = format!("Transformer/encoderblock_{i}/{rest}");
            origin.insert(split.clone(), format!("{prefix}{k}"));
            w.insert(split, t.get(i)?);
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
                &origin,
                &mut sources,
                &format!("{b}{ln}/scale"),
                &format!("{t}{norm}.weight"),
                &id,
            )?;
            take(
                &mut w,
                &mut out,
                &origin,
                &mut sources,
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
            sources.insert(
                format!("{t}attn.qkv.weight"),
                qkv_k
                    .iter()
                    .filter_map(|k| origin.get(k).cloned())
                    .collect(),
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
            sources.insert(
                format!("{t}attn.qkv.bias"),
                qkv_b
                    .iter()
                    .filter_map(|k| origin.get(k).cloned())
                    .collect(),
            );
        }
        // out kernel [H, Dh, D] -> transpose(2, 0, 1) -> [D, H*Dh].
        take(
            &mut w,
            &mut out,
            &origin,
            &mut sources,
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
            &origin,
            &mut sources,
            &format!("{a}out/bias"),
            &format!("{t}attn.proj.bias"),
            &id,
        )?;
        for (dense, fc) in [("Dense_0", "fc1"), ("Dense_1", "fc2")] {
            take(
                &mut w,
                &mut out,
                &origin,
                &mut sources,
                &format!("{b}{mlp}/{dense}/kernel"),
                &format!("{t}mlp.{fc}.weight"),
                &transpose2,
            )?;
            take(
                &mut w,
                &mut out,
                &origin,
                &mut sources,
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
    for v in sources.values_mut() {
        v.dedup();
    }
    Ok(Converted {
        tensors: out,
        unused,
        sources,
        notes,
    })
}
