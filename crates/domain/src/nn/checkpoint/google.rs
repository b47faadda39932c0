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
    /// The file had a representation layer (`pre_logits/*`, dropped): its head reads that
    /// layer's output, not the features.
    pub had_pre_logits: bool,
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
    let origin: BTreeMap<String, String> = w
        .keys()
        .map(|k| (k.clone(), format!("{prefix}{k}")))
        .collect();
    let mut c = Work {
        prefix,
        w,
        origin,
        out: BTreeMap::new(),
        sources: BTreeMap::new(),
    };
    let id = |t: Tensor| Ok(t);
    let transpose2 = |t: Tensor| Ok(t.t()?.contiguous()?);
    c.take(
        "embedding/kernel",
        "patch_embed.proj.weight",
        &|t: Tensor| Ok(t.permute((3, 2, 0, 1))?.contiguous()?),
    )?;
    for (from, to) in [
        ("embedding/bias", "patch_embed.proj.bias"),
        ("cls", "cls_token"),
        ("Transformer/posembed_input/pos_embedding", "pos_embed"),
        ("pos_embedding", "pos_embed"),
        ("Transformer/encoder_norm/scale", "norm.weight"),
        ("Transformer/encoder_norm/bias", "norm.bias"),
        ("head/bias", "head.bias"),
    ] {
        c.take(from, to, &id)?;
    }
    c.take("head/kernel", "head.weight", &transpose2)?;

    // Scanned big_vision blocks: split the leading layer axis into per-block keys.
    let scanned_prefix = "Transformer/encoderblock/";
    let scanned: Vec<String> =
        c.w.keys()
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
        let t = c.w.remove(&k).expect("key listed above");
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
            c.origin.insert(split.clone(), format!("{prefix}{k}"));
            c.w.insert(split, t.get(i)?);
        }
    }

    let mut depth = 0;
    while c
        .w
        .keys()
        .any(|k| k.starts_with(&format!("Transformer/encoderblock_{depth}/")))
    {
        depth += 1;
    }
    for i in 0..depth {
        let b = format!("Transformer/encoderblock_{i}/");
        let t = format!("blocks.{i}.");
        for (ln, norm) in [(ln1, "norm1"), (ln2, "norm2")] {
            c.take(&format!("{b}{ln}/scale"), &format!("{t}{norm}.weight"), &id)?;
            c.take(&format!("{b}{ln}/bias"), &format!("{t}{norm}.bias"), &id)?;
        }
        let a = format!("{b}{mha}/");
        // q, k, v kernels [D, H, Dh] -> reshape(D, H*Dh).T, concatenated along rows.
        c.take_qkv(
            &a,
            "kernel",
            &format!("{t}attn.qkv.weight"),
            &|t: Tensor| {
                let d = t.dims().first().copied().unwrap_or(0);
                Ok(t.reshape((d, ()))?.t()?)
            },
        )?;
        c.take_qkv(&a, "bias", &format!("{t}attn.qkv.bias"), &|t: Tensor| {
            Ok(t.flatten_all()?)
        })?;
        // out kernel [H, Dh, D] -> transpose(2, 0, 1) -> [D, H*Dh].
        c.take(
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
        c.take(&format!("{a}out/bias"), &format!("{t}attn.proj.bias"), &id)?;
        for (dense, fc) in [("Dense_0", "fc1"), ("Dense_1", "fc2")] {
            let from = format!("{b}{mlp}/{dense}");
            c.take(
                &format!("{from}/kernel"),
                &format!("{t}mlp.{fc}.weight"),
                &transpose2,
            )?;
            c.take(&format!("{from}/bias"), &format!("{t}mlp.{fc}.bias"), &id)?;
        }
    }
    let Work {
        w,
        out,
        mut sources,
        ..
    } = c;
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
        had_pre_logits: !pre_logits.is_empty(),
    })
}

/// A conversion in progress: Google keys (prefix removed) still to convert, the timm
/// tensors made so far, and which file keys each came from.
struct Work<'a> {
    prefix: &'a str,
    w: BTreeMap<String, Tensor>,
    /// Working key -> the file's own key (a split scanned block keeps its stacked key).
    origin: BTreeMap<String, String>,
    out: BTreeMap<String, Tensor>,
    sources: BTreeMap<String, Vec<String>>,
}

impl Work<'_> {
    /// Move `from` (when present) to timm name `to` through the layout change `f`.
    fn take(&mut self, from: &str, to: &str, f: &dyn Fn(Tensor) -> Result<Tensor>) -> Result<()> {
        if let Some(t) = self.w.remove(from) {
            let converted =
                f(t).with_context(|| format!("converting {}{from} to {to}", self.prefix))?;
            self.out.insert(to.to_string(), converted);
            if let Some(o) = self.origin.get(from) {
                self.sources
                    .entry(to.to_string())
                    .or_default()
                    .push(o.clone());
            }
        }
        Ok(())
    }

    /// The separate query/key/value `part` (`kernel` or `bias`) under `attn` made one timm
    /// qkv tensor `to`: each through `f`, concatenated along rows. Nothing happens unless
    /// all three are present (the missing ones are then reported by the caller's checks).
    fn take_qkv(
        &mut self,
        attn: &str,
        part: &str,
        to: &str,
        f: &dyn Fn(Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let keys: Vec<String> = ["query", "key", "value"]
            .iter()
            .map(|n| format!("{attn}{n}/{part}"))
            .collect();
        if !keys.iter().all(|k| self.w.contains_key(k)) {
            return Ok(());
        }
        let parts = keys
            .iter()
            .map(|k| f(self.w.remove(k).expect("checked")))
            .collect::<Result<Vec<_>>>()
            .with_context(|| {
                format!("converting {}{attn}{{query,key,value}}/{part}", self.prefix)
            })?;
        self.out
            .insert(to.to_string(), Tensor::cat(&parts, 0)?.contiguous()?);
        let from: Vec<String> = keys
            .iter()
            .filter_map(|k| self.origin.get(k).cloned())
            .collect();
        self.sources.insert(to.to_string(), from);
        Ok(())
    }
}
