//! Checkpoint I/O: pretrained backbones (timm `.safetensors`, Google `.npz`) into
//! timm-named tensors checked against the model's expected names and shapes, and
//! trainable weights + optimiser state (`.safetensors`) for resume.

mod google;
mod npz;
mod pos_embed;
mod safetensors_io;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

pub use pos_embed::{bicubic_weights, resample_abs_pos_embed};

/// How strictly [`load_backbone`] matches a checkpoint against the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Accept expected tensors that the checkpoint lacks (they are listed in the notes).
    pub allow_partial: bool,
    /// Drop checkpoint tensors the model does not expect (e.g. a 21843-class head).
    pub allow_unexpected: bool,
    /// Names to skip on both sides: an entry matches names starting with it
    /// (a trailing `*` is ignored, so `head.` and `head.*` are the same). Ignored
    /// expected tensors are neither loaded nor required.
    pub ignore: Vec<String>,
    /// Resample `pos_embed` bicubically (timm `resample_abs_pos_embed`, antialias on)
    /// when its grid differs from the model's.
    pub resample_pos_embed: bool,
}

/// Tensors loaded from a backbone checkpoint.
#[derive(Debug, Clone)]
pub struct LoadedWeights {
    /// Tensors under timm names, f32, on the requested device.
    pub tensors: BTreeMap<String, Tensor>,
    /// What was adapted or tolerated (resampling, ignored/dropped/missing tensors).
    pub notes: Vec<String>,
}

/// File formats [`load_backbone`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Npz,
}

fn sniff(path: &Path) -> Result<Format> {
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("opening checkpoint {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        return Ok(Format::Npz);
    }
    if n == 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => Ok(Format::Safetensors), // the parser reports what is wrong
        "npz" => bail!("{}: not a .npz file (no zip signature)", path.display()),
        "pth" | "pt" | "bin" | "ckpt" => bail!(
            "{}: PyTorch pickle checkpoints are not read (unsafe to unpickle); convert to .safetensors",
            path.display()
        ),
        _ => bail!("{}: unknown checkpoint format (expected .safetensors or a Google .npz)", path.display()),
    }
}

fn is_ignored(name: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|p| {
        let p = p.strip_suffix('*').unwrap_or(p);
        !p.is_empty() && name.starts_with(p)
    })
}

fn fmt_shape(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Loads a pretrained backbone and checks it against `expected` (timm names and
/// shapes, e.g. `VitConfig::expected_tensors`).
///
/// The format is detected from the file's first bytes: safetensors (timm names)
/// or a Google `.npz` (vit_jax, `opt/target/`-prefixed or big_vision), converted to
/// timm names and layouts. Floating tensors are converted to f32. One error lists
/// every missing, unexpected and mis-shaped tensor with shapes unless
/// `opts` allows it; mis-shaped tensors are always an error, except `pos_embed`
/// with another grid when `opts.resample_pos_embed` is set.
pub fn load_backbone(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    device: &Device,
) -> Result<LoadedWeights> {
    let found = match sniff(path)? {
        Format::Safetensors => safetensors_io::read(path)?.0,
        Format::Npz => {
            let raw = npz::read(path)?;
            let conv = google::convert(raw)
                .with_context(|| format!("{}: converting Google names", path.display()))?;
            let mut all = conv.tensors;
            for (k, v) in conv.unused {
                all.insert(k, v);
            }
            all
        }
    };
    let (tensors, notes) = match_expected(found, expected, opts)
        .with_context(|| format!("checkpoint {} does not match the model", path.display()))?;
    let mut on_device = BTreeMap::new();
    for (k, v) in tensors {
        let v = if v.dtype() == DType::F32 {
            v
        } else {
            v.to_dtype(DType::F32)?
        };
        on_device.insert(
            k.clone(),
            v.to_device(device)
                .with_context(|| format!("moving {k} to {device:?}"))?,
        );
    }
    Ok(LoadedWeights {
        tensors: on_device,
        notes,
    })
}

/// Number of prefix tokens (class, distillation) the model's pos_embed carries.
fn prefix_tokens(expected: &[(String, Vec<usize>)]) -> usize {
    expected
        .iter()
        .filter(|(n, _)| n == "cls_token" || n == "dist_token")
        .count()
}

fn match_expected(
    mut found: BTreeMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let mut notes = Vec::new();
    let ignored: Vec<String> = found
        .keys()
        .filter(|k| is_ignored(k, &opts.ignore))
        .cloned()
        .collect();
    for k in &ignored {
        found.remove(k);
    }
    if !ignored.is_empty() {
        notes.push(format!(
            "ignored {} checkpoint tensor(s): {}",
            ignored.len(),
            ignored.join(", ")
        ));
    }
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut out = BTreeMap::new();
    for (name, shape) in expected {
        if is_ignored(name, &opts.ignore) {
            continue;
        }
        let Some(t) = found.remove(name) else {
            missing.push(format!("{name} {}", fmt_shape(shape)));
            continue;
        };
        if t.dims() == shape.as_slice() {
            out.insert(name.clone(), t);
            continue;
        }
        let resampled = if name == "pos_embed"
            && opts.resample_pos_embed
            && t.rank() == 3
            && shape.len() == 3
        {
            let prefix = prefix_tokens(expected);
            let side = ((shape[1].saturating_sub(prefix)) as f64).sqrt().round() as usize;
            if t.dims()[2] == shape[2] && shape[0] == 1 && side * side + prefix == shape[1] {
                let r = resample_abs_pos_embed(&t, (side, side), None, prefix, true)
                    .with_context(|| format!("resampling pos_embed {:?} to {shape:?}", t.dims()))?;
                notes.push(format!(
                    "resampled pos_embed {} -> {} tokens (bicubic, antialias, {prefix} prefix token(s) kept)",
                    t.dims()[1],
                    shape[1]
                ));
                Some(r)
            } else {
                None
            }
        } else {
            None
        };
        match resampled {
            Some(r) => {
                out.insert(name.clone(), r);
            }
            None => misshaped.push(format!(
                "{name}: checkpoint {} vs model {}",
                fmt_shape(t.dims()),
                fmt_shape(shape)
            )),
        }
    }
    let unexpected: Vec<String> = found
        .iter()
        .map(|(k, t)| format!("{k} {}", fmt_shape(t.dims())))
        .collect();

    let missing_fatal = !missing.is_empty() && !opts.allow_partial;
    let unexpected_fatal = !unexpected.is_empty() && !opts.allow_unexpected;
    if missing_fatal || unexpected_fatal || !misshaped.is_empty() {
        let mut msg = String::new();
        for (title, list, hint) in [
            (
                "missing",
                &missing,
                if opts.allow_partial {
                    " (allowed)"
                } else {
                    " (set allow_partial or ignore to accept)"
                },
            ),
            (
                "unexpected",
                &unexpected,
                if opts.allow_unexpected {
                    " (allowed)"
                } else {
                    " (set allow_unexpected or ignore to drop)"
                },
            ),
            ("mis-shaped", &misshaped, ""),
        ] {
            if !list.is_empty() {
                msg.push_str(&format!(
                    "\n{} {title} tensor(s){hint}:\n  {}",
                    list.len(),
                    list.join("\n  ")
                ));
            }
        }
        bail!("checkpoint/model mismatch:{msg}");
    }
    if !missing.is_empty() {
        notes.push(format!(
            "partial load: {} tensor(s) missing: {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !unexpected.is_empty() {
        notes.push(format!(
            "dropped {} unexpected tensor(s): {}",
            unexpected.len(),
            unexpected.join(", ")
        ));
    }
    Ok((out, notes))
}

/// Saves tensors (any of u8/u32/i64/f16/bf16/f32/f64, any device) and string
/// metadata as `.safetensors`, atomically (temporary file, then rename).
pub fn save_tensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes = safetensors_io::serialize(tensors, metadata)
        .with_context(|| format!("saving {}", path.display()))?;
    safetensors_io::write_atomic(path, &bytes)
}

/// Loads a `.safetensors` file written by [`save_tensors`] (or any safetensors
/// file): tensors keep their stored dtype and are moved to `device`.
pub fn load_tensors(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let (tensors, meta) = safetensors_io::read(path)?;
    let mut out = BTreeMap::new();
    for (k, v) in tensors {
        out.insert(
            k.clone(),
            v.to_device(device)
                .with_context(|| format!("moving {k} to {device:?}"))?,
        );
    }
    Ok((out, meta))
}
