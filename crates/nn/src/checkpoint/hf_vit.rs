//! Hugging Face transformers ViT names (`ViTModel`, `ViTForImageClassification`, e.g.
//! `google/vit-base-patch16-224-in21k`) converted to timm's, as docs/checkpoints.md
//! tabulates: `embeddings.*`, `encoder.layer.N.*` (query/key/value concatenated into
//! `attn.qkv`), `layernorm.*`, `classifier.*` -> `head.*`; the pooler (a dense+tanh layer
//! over the CLS token, which timm's ViT lacks) is dropped with a note.
//!
//! Both spellings transformers writes are read: the original one (`encoder.layer.N.
//! attention.attention.query`, `intermediate.dense`, `output.dense`), which
//! `save_pretrained` writes and the hub holds, and the one of transformers 5 models in
//! memory (`layers.N.attention.q_proj`, `o_proj`, `mlp.fc1`), which `save_file(model.
//! state_dict())` or `save_pretrained(save_original_format=False)` writes.
//!
//! The layout is recognised by name under any root: none (a bare `ViTModel`), `vit.`
//! (`ViTForImageClassification`), or either inside a wrapper (`module.vit.`); the wrapper
//! stays in front of the timm names for [`super::prefix`] to judge. A `config.json` beside
//! the file is read (bounded) for what tensors cannot show: the activation and LayerNorm eps.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// Largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The LayerNorm eps this project's ViT uses (timm's).
const OUR_EPS: f64 = crate::config::LN_EPS;

/// What [`convert`] did.
#[derive(Debug, Default)]
pub struct HfConverted {
    /// Notes for [`super::LoadedWeights::notes`].
    pub notes: Vec<String>,
    /// A pooler (the in21k representation layer) was dropped.
    pub had_pooler: bool,
}

/// The roots (`""`, `vit.`, `module.vit.`, ...) under which `names` hold a transformers ViT.
fn roots<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let root = if let Some(r) = n.strip_suffix("embeddings.patch_embeddings.projection.weight")
        {
            Some(r)
        } else {
            [
                ("encoder.layer.", ".attention.attention."),
                ("layers.", ".attention.q_proj."),
            ]
            .into_iter()
            .find_map(|(stem, marker)| {
                let i = n.find(stem)?;
                let rest = &n[i + stem.len()..];
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                (digits > 0 && rest[digits..].starts_with(marker)).then_some(&n[..i])
            })
        };
        if let Some(r) = root.filter(|r| r.is_empty() || r.ends_with('.')) {
            if !out.iter().any(|o| o == r) {
                out.push(r.to_string());
            }
        }
    }
    out
}

/// The timm name of a transformers name below the root; `Err(part)` for a query/key/value
/// piece (`(block, q|k|v index, weight|bias)`), `Ok(None)` for a name with no timm twin.
type Piece = (usize, usize, String);
fn timm_name(rest: &str) -> Result<Option<String>, Piece> {
    let fixed = match rest {
        "embeddings.cls_token" => Some("cls_token"),
        "embeddings.position_embeddings" => Some("pos_embed"),
        "embeddings.patch_embeddings.projection.weight" => Some("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias" => Some("patch_embed.proj.bias"),
        "layernorm.weight" => Some("norm.weight"),
        "layernorm.bias" => Some("norm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Ok(Some(f.to_string()));
    }
    let Some(layer) = rest
        .strip_prefix("encoder.layer.")
        .or_else(|| rest.strip_prefix("layers."))
    else {
        return Ok(None);
    };
    let Some((idx, sub)) = layer.split_once('.') else {
        return Ok(None);
    };
    let Ok(i) = idx.parse::<usize>() else {
        return Ok(None);
    };
    let Some((module, param)) = sub.rsplit_once('.') else {
        return Ok(None);
    };
    if param != "weight" && param != "bias" {
        return Ok(None);
    }
    let to = match module {
        "layernorm_before" => "norm1",
        "layernorm_after" => "norm2",
        "attention.output.dense" | "attention.o_proj" => "attn.proj",
        "intermediate.dense" | "mlp.fc1" => "mlp.fc1",
        "output.dense" | "mlp.fc2" => "mlp.fc2",
        "attention.attention.query" | "attention.q_proj" => return Err((i, 0, param.to_string())),
        "attention.attention.key" | "attention.k_proj" => return Err((i, 1, param.to_string())),
        "attention.attention.value" | "attention.v_proj" => return Err((i, 2, param.to_string())),
        _ => return Ok(None),
    };
    Ok(Some(format!("blocks.{i}.{to}.{param}")))
}

/// Inserts `name` into `map`, refusing a name the file already holds.
fn put(map: &mut BTreeMap<String, Tensor>, name: String, t: Tensor, from: &str) -> Result<()> {
    if map.contains_key(&name) {
        bail!("converting `{from}` gives `{name}`, which the file also holds under that name");
    }
    map.insert(name, t);
    Ok(())
}

/// The query, key and value tensors of one block's weight or bias, with their names.
type QkvParts = [Option<(String, Tensor)>; 3];

/// Converts the names under one root; returns how many tensors were converted and the
/// pooler names dropped.
fn convert_root(found: &mut BTreeMap<String, Tensor>, root: &str) -> Result<(usize, Vec<String>)> {
    let outer = root.strip_suffix("vit.").unwrap_or(root).to_string();
    let mine: Vec<String> = found
        .keys()
        .filter(|k| k.starts_with(root))
        .cloned()
        .collect();
    let mut qkv: BTreeMap<(usize, String), QkvParts> = BTreeMap::new();
    let (mut converted, mut pooler) = (0, Vec::new());
    for name in mine {
        let rest = &name[root.len()..];
        if rest.starts_with("pooler.dense.") {
            found.remove(&name);
            pooler.push(name);
            continue;
        }
        match timm_name(rest) {
            Ok(None) => {}
            Ok(Some(t)) => {
                let v = found.remove(&name).expect("listed");
                put(found, format!("{outer}{t}"), v, &name)?;
                converted += 1;
            }
            Err((block, j, param)) => {
                let v = found.remove(&name).expect("listed");
                qkv.entry((block, param)).or_default()[j] = Some((name, v));
            }
        }
    }
    for ((block, param), parts) in qkv {
        if parts.iter().all(Option::is_some) {
            let parts: Vec<(String, Tensor)> = parts.into_iter().flatten().collect();
            let ts: Vec<&Tensor> = parts.iter().map(|(_, t)| t).collect();
            let cat = Tensor::cat(&ts, 0).with_context(|| {
                let shapes: Vec<String> = parts
                    .iter()
                    .map(|(n, t)| format!("{n} {:?}", t.dims()))
                    .collect();
                format!(
                    "joining query/key/value into attn.qkv: {}",
                    shapes.join(", ")
                )
            })?;
            put(
                found,
                format!("{outer}blocks.{block}.attn.qkv.{param}"),
                cat,
                &parts[0].0,
            )?;
            converted += 3;
        } else {
            // Left under their own names: the report lists them and the missing qkv.
            for (n, t) in parts.into_iter().flatten() {
                found.insert(n, t);
            }
        }
    }
    if root.ends_with("vit.") {
        for param in ["weight", "bias"] {
            if let Some(t) = found.remove(&format!("{outer}classifier.{param}")) {
                let from = format!("{outer}classifier.{param}");
                put(found, format!("{outer}head.{param}"), t, &from)?;
                converted += 1;
            }
        }
    }
    Ok((converted, pooler))
}

/// What a transformers `config.json` says that tensors cannot.
#[derive(Debug, Default, PartialEq)]
struct HfConfig {
    model_type: Option<String>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

/// Reads the `config.json` beside `ckpt`, if there is one.
fn config_beside(ckpt: &Path) -> Result<Option<(std::path::PathBuf, HfConfig)>> {
    let p = ckpt.with_file_name("config.json");
    let Ok(meta) = std::fs::metadata(&p) else {
        return Ok(None);
    };
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        bail!(
            "{}: not a file of at most {MAX_CONFIG_BYTES} bytes (the transformers config beside the checkpoint)",
            p.display()
        );
    }
    let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not valid JSON", p.display()))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Ok(Some((
        p,
        HfConfig {
            model_type: s("model_type"),
            hidden_act: s("hidden_act"),
            layer_norm_eps: v.get("layer_norm_eps").and_then(|x| x.as_f64()),
        },
    )))
}

/// The note on LayerNorm eps, and the refusal of an activation this ViT does not compute.
fn config_notes(ckpt: &Path) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let cfg = config_beside(ckpt)?;
    let eps = cfg.as_ref().and_then(|(_, c)| c.layer_norm_eps);
    if let Some((p, c)) = &cfg {
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "gelu") {
            bail!(
                "{}: hidden_act `{act}`: this ViT computes exact (erf) GELU, transformers' \
                 `gelu`; weights trained with another activation would give other features",
                p.display()
            );
        }
        if let Some(t) = c.model_type.as_deref().filter(|t| *t != "vit") {
            notes.push(format!(
                "{}: model_type `{t}`, not `vit`: only the ViT names were converted",
                p.display()
            ));
        }
    }
    let said = match (eps, &cfg) {
        (Some(e), Some((p, _))) => format!("{} sets layer_norm_eps {e:e}", p.display()),
        _ => "transformers' ViT configs have layer_norm_eps 1e-12 for google/vit-* (no \
              config.json beside the file to read it from)"
            .to_string(),
    };
    if eps != Some(OUR_EPS) {
        notes.push(format!(
            "LayerNorm eps: {said}; this model uses timm's {OUR_EPS:e}, the value the \
             google/vit-* weights were trained with (JAX/Flax) and timm uses for the same \
             weights: features differ from transformers' by about eps / (2 x the variance \
             of a token), relative (1.2e-5 on the repository's tiny random test model)"
        ));
    }
    Ok(notes)
}

/// Converts every transformers ViT in `found` (see the module doc) to timm names in place.
/// `ckpt` is the file read (its folder may hold `config.json`). `None`: not that layout.
///
/// Errors: a converted name the file also holds, query/key/value that cannot be joined,
/// a `config.json` that is not JSON or names an activation other than `gelu`.
pub fn convert(found: &mut BTreeMap<String, Tensor>, ckpt: &Path) -> Result<Option<HfConverted>> {
    let roots = roots(found.keys());
    if roots.is_empty() {
        return Ok(None);
    }
    let mut out = HfConverted::default();
    for root in &roots {
        let (n, pooler) = convert_root(found, root).with_context(|| {
            format!("{}: Hugging Face ViT names under `{root}`", ckpt.display())
        })?;
        out.notes.push(format!(
            "converted {n} tensors from the Hugging Face transformers ViT layout (`{root}embeddings.*`, \
             `{root}encoder.layer.N.*` or `{root}layers.N.*`) to timm names (query/key/value \
             joined into attn.qkv{})",
            if root.ends_with("vit.") { ", classifier as head" } else { "" }
        ));
        if !pooler.is_empty() {
            out.had_pooler = true;
            out.notes.push(format!(
                "dropped the pooler ({}: transformers' dense+tanh layer over the CLS token, the \
                 in21k release's pre-logits layer), as timm does: the model has none",
                pooler.join(", ")
            ));
        }
    }
    out.notes.extend(config_notes(ckpt)?);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn names_map_to_timm_and_qkv_is_joined_in_order() {
        let dev = Device::Cpu;
        let mut m = BTreeMap::new();
        for (j, part) in ["query", "key", "value"].iter().enumerate() {
            let w = Tensor::full(j as f32, (2, 2), &dev).unwrap();
            m.insert(
                format!("vit.encoder.layer.3.attention.attention.{part}.weight"),
                w,
            );
        }
        for n in [
            "vit.embeddings.cls_token",
            "vit.encoder.layer.3.output.dense.bias",
            "vit.encoder.layer.3.attention.output.dense.weight",
            "classifier.weight",
            "vit.embeddings.mask_token",
        ] {
            m.insert(n.to_string(), Tensor::zeros(2, DType::F32, &dev).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        let r = convert(&mut m, &dir.path().join("model.safetensors"))
            .unwrap()
            .unwrap();
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "blocks.3.attn.proj.weight",
                "blocks.3.attn.qkv.weight",
                "blocks.3.mlp.fc2.bias",
                "cls_token",
                "head.weight",
                "vit.embeddings.mask_token"
            ]
        );
        let qkv = m["blocks.3.attn.qkv.weight"].to_vec2::<f32>().unwrap();
        assert_eq!(
            qkv.iter().map(|r| r[0]).collect::<Vec<_>>(),
            [0., 0., 1., 1., 2., 2.]
        );
        assert!(
            r.notes[0].starts_with("converted 7 tensors"),
            "{:?}",
            r.notes
        );
        assert!(!r.had_pooler);
        // A wrapped bare ViTModel keeps its wrapper; a lone query stays unconverted.
        let mut m = BTreeMap::new();
        for n in [
            "module.encoder.layer.0.attention.attention.query.bias",
            "module.layernorm.weight",
            "module.pooler.dense.bias",
        ] {
            m.insert(n.to_string(), Tensor::zeros(2, DType::F32, &dev).unwrap());
        }
        let r = convert(&mut m, &dir.path().join("x.safetensors"))
            .unwrap()
            .unwrap();
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "module.encoder.layer.0.attention.attention.query.bias",
                "module.norm.weight"
            ]
        );
        assert!(r.had_pooler);
        let mut plain: BTreeMap<String, Tensor> = BTreeMap::new();
        plain.insert(
            "cls_token".into(),
            Tensor::zeros(1, DType::F32, &dev).unwrap(),
        );
        assert!(convert(&mut plain, Path::new("x")).unwrap().is_none());
    }

    #[test]
    fn the_config_beside_refuses_other_activations_and_reports_eps() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("model.safetensors");
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"model_type": "vit", "hidden_act": "gelu", "layer_norm_eps": 1e-12}"#,
        )
        .unwrap();
        let notes = config_notes(&ckpt).unwrap();
        assert!(notes[0].contains("sets layer_norm_eps 1e-12"), "{notes:?}");
        std::fs::write(&cfg, r#"{"layer_norm_eps": 1e-6}"#).unwrap();
        assert!(config_notes(&ckpt).unwrap().is_empty());
        std::fs::write(&cfg, r#"{"hidden_act": "gelu_new"}"#).unwrap();
        let e = config_notes(&ckpt).unwrap_err().to_string();
        assert!(e.contains("config.json: hidden_act `gelu_new`"), "{e}");
        std::fs::write(&cfg, "{").unwrap();
        assert!(config_notes(&ckpt).is_err());
    }
}
