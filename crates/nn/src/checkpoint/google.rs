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
    let prefix = find_prefix(&raw);
    let mut notes = Vec::new();
    let mut w = strip_prefix(raw, prefix, &mut notes);
    let had_pre_logits = drop_pre_logits(&mut w, prefix, &mut notes);
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
    c.take_outside_blocks()?;
    let names = c.split_scanned_blocks()?;
    let mut depth = 0;
    while c
        .w
        .keys()
        .any(|k| k.starts_with(&format!("Transformer/encoderblock_{depth}/")))
    {
        depth += 1;
    }
    for i in 0..depth {
        c.take_block(i, &names)?;
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
        had_pre_logits,
    })
}

/// The prefix of the parameters in `raw`: `opt/target/` or `params/` where the patch
/// embedding is under it (as timm probes), or where every key carries it; else none.
fn find_prefix(raw: &BTreeMap<String, Tensor>) -> &'static str {
    ["opt/target/", "params/"]
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
        .unwrap_or("")
}

/// The entries of `raw` under `prefix`, without it; the others (optimizer state) are
/// skipped with a note.
fn strip_prefix(
    raw: BTreeMap<String, Tensor>,
    prefix: &str,
    notes: &mut Vec<String>,
) -> BTreeMap<String, Tensor> {
    let mut w = BTreeMap::new();
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
    w
}

/// Removes the pre-logits layer (`pre_logits/*`) with a note, as timm does; whether there
/// was one.
fn drop_pre_logits(
    w: &mut BTreeMap<String, Tensor>,
    prefix: &str,
    notes: &mut Vec<String>,
) -> bool {
    let pre_logits: Vec<String> = w
        .keys()
        .filter(|k| k.starts_with("pre_logits/"))
        .cloned()
        .collect();
    if pre_logits.is_empty() {
        return false;
    }
    for k in &pre_logits {
        w.remove(k);
    }
    let named: Vec<String> = pre_logits.iter().map(|k| format!("{prefix}{k}")).collect();
    notes.push(format!(
        "dropped the pre-logits layer ({}), as timm does: the model has none",
        named.join(", ")
    ));
    true
}

/// The module names inside a block of one of the two Google layouts: attention, MLP, and
/// the two LayerNorms.
struct BlockNames {
    mha: &'static str,
    mlp: &'static str,
    ln1: &'static str,
    ln2: &'static str,
}

/// `t` as it is.
fn id(t: Tensor) -> Result<Tensor> {
    Ok(t)
}

/// `t` transposed (a Dense kernel `[in, out]` to a timm weight `[out, in]`).
fn transpose2(t: Tensor) -> Result<Tensor> {
    Ok(t.t()?.contiguous()?)
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
    /// The tensors outside the blocks: patch embedding, class token, position embedding,
    /// final norm, head.
    fn take_outside_blocks(&mut self) -> Result<()> {
        self.take(
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
            self.take(from, to, &id)?;
        }
        self.take("head/kernel", "head.weight", &transpose2)
    }

    /// Splits scanned big_vision blocks (`Transformer/encoderblock/*`, a leading layer
    /// axis) into per-block keys; the block module names of the layout found.
    fn split_scanned_blocks(&mut self) -> Result<BlockNames> {
        let scanned_prefix = "Transformer/encoderblock/";
        let scanned: Vec<String> = self
            .w
            .keys()
            .filter(|k| k.starts_with(scanned_prefix))
            .cloned()
            .collect();
        let names = if scanned.is_empty() {
            BlockNames {
                mha: "MultiHeadDotProductAttention_1",
                mlp: "MlpBlock_3",
                ln1: "LayerNorm_0",
                ln2: "LayerNorm_2",
            }
        } else {
            BlockNames {
                mha: "MultiHeadDotProductAttention_0",
                mlp: "MlpBlock_0",
                ln1: "LayerNorm_0",
                ln2: "LayerNorm_1",
            }
        };
        for k in scanned {
            let t = self.w.remove(&k).expect("key listed above");
            let rest = &k[scanned_prefix.len()..];
            let layers = t.dims().first().copied().unwrap_or(0);
            if layers == 0 || layers > 1000 {
                bail!(
                    "{}{k}: scanned block tensor needs a leading layer axis, got shape {:?}",
                    self.prefix,
                    t.dims()
                );
            }
            for i in 0..layers {
                let split = format!("Transformer/encoderblock_{i}/{rest}");
                self.origin
                    .insert(split.clone(), format!("{}{k}", self.prefix));
                self.w.insert(split, t.get(i)?);
            }
        }
        Ok(names)
    }

    /// Block `i`'s tensors: the two norms, qkv (from the separate query, key, value), the
    /// attention output projection and the MLP.
    fn take_block(&mut self, i: usize, n: &BlockNames) -> Result<()> {
        let b = format!("Transformer/encoderblock_{i}/");
        let t = format!("blocks.{i}.");
        for (ln, norm) in [(n.ln1, "norm1"), (n.ln2, "norm2")] {
            self.take(&format!("{b}{ln}/scale"), &format!("{t}{norm}.weight"), &id)?;
            self.take(&format!("{b}{ln}/bias"), &format!("{t}{norm}.bias"), &id)?;
        }
        let a = format!("{b}{}/", n.mha);
        // q, k, v kernels [D, H, Dh] -> reshape(D, H*Dh).T, concatenated along rows.
        self.take_qkv(
            &a,
            "kernel",
            &format!("{t}attn.qkv.weight"),
            &|t: Tensor| {
                let d = t.dims().first().copied().unwrap_or(0);
                Ok(t.reshape((d, ()))?.t()?)
            },
        )?;
        self.take_qkv(&a, "bias", &format!("{t}attn.qkv.bias"), &|t: Tensor| {
            Ok(t.flatten_all()?)
        })?;
        // out kernel [H, Dh, D] -> transpose(2, 0, 1) -> [D, H*Dh].
        self.take(
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
        self.take(&format!("{a}out/bias"), &format!("{t}attn.proj.bias"), &id)?;
        for (dense, fc) in [("Dense_0", "fc1"), ("Dense_1", "fc2")] {
            let from = format!("{b}{}/{dense}", n.mlp);
            self.take(
                &format!("{from}/kernel"),
                &format!("{t}mlp.{fc}.weight"),
                &transpose2,
            )?;
            self.take(&format!("{from}/bias"), &format!("{t}mlp.{fc}.bias"), &id)?;
        }
        Ok(())
    }

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
