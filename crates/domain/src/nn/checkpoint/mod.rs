//! Checkpoint I/O: pretrained backbones (timm `.safetensors`, Google `.npz`) into
//! timm-named tensors checked against the model's expected names and shapes, and
//! trainable weights + optimiser state (`.safetensors`) for resume.
//!
//! Every float tensor read (f16/bf16/f32/f64, safetensors or npz) is checked for
//! inf/-inf/NaN, and a file holding any is refused with the tensors named. What
//! [`load_backbone`] tolerates (wrapped-state-dict prefixes, `pre_logits`, optimizer
//! and non-float entries) it reports in notes; docs/vtab.md "Checkpoint layouts that
//! load" lists the layouts.

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
    /// Checkpoint tensors whose (timm) name starts with one of these are returned
    /// unchecked in [`LoadedWeights::extra`] (e.g. `head.` for a head of unknown size).
    pub pass_through: Vec<String>,
    /// Resample `pos_embed` bicubically (timm `resample_abs_pos_embed`, antialias on)
    /// when its grid differs from the model's.
    pub resample_pos_embed: bool,
    /// The fixes a mismatch error offers, in the caller's own option names.
    pub hints: Hints,
}

/// The fix a mismatch error suggests for each kind of mismatch; `None` (the default)
/// offers none. Each must name an option that exists where the error is shown (a
/// stage's `with:` option, a command's flag): tests/checkpoint_hints.rs checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// After the unexpected tensors.
    pub unexpected: Option<String>,
    /// After the missing tensors.
    pub missing: Option<String>,
    /// After the mis-shaped tensors.
    pub misshaped: Option<String>,
}

/// Tensors loaded from a backbone checkpoint.
#[derive(Debug, Clone)]
pub struct LoadedWeights {
    /// Tensors under timm names, f32, on the requested device.
    pub tensors: BTreeMap<String, Tensor>,
    /// Checkpoint tensors matched by [`LoadOptions::pass_through`], timm names, f32, on the device.
    pub extra: BTreeMap<String, Tensor>,
    /// What was adapted or tolerated (resampling, stripped prefixes, ignored/dropped/missing tensors).
    pub notes: Vec<String>,
    /// The checkpoint had a representation layer before its head (`pre_logits`, dropped as
    /// timm drops it): a head passed through in [`Self::extra`] reads that layer's output,
    /// so it cannot be used on the features.
    pub had_pre_logits: bool,
}

/// Counts of non-finite values in one float tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonFinite {
    /// Values equal to +inf.
    pub pos_inf: usize,
    /// Values equal to -inf.
    pub neg_inf: usize,
    /// NaN values (any payload or sign).
    pub nan: usize,
    /// Values seen, finite or not.
    pub total: usize,
}

impl NonFinite {
    /// Counts one value.
    pub fn add(&mut self, v: f64) {
        self.total += 1;
        if v.is_nan() {
            self.nan += 1;
        } else if v == f64::INFINITY {
            self.pos_inf += 1;
        } else if v == f64::NEG_INFINITY {
            self.neg_inf += 1;
        }
    }
    /// No inf, -inf or NaN seen.
    pub fn is_clean(&self) -> bool {
        self.pos_inf + self.neg_inf + self.nan == 0
    }
    /// E.g. `3 inf, 1 NaN of 4096 values`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.pos_inf, "inf"),
            (self.neg_inf, "-inf"),
            (self.nan, "NaN"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}"))
        .collect();
        format!("{} of {} values", parts.join(", "), self.total)
    }
}

/// How many names a list in a message shows before `... and N more`.
pub const LIST_LIMIT: usize = 8;

/// The first [`LIST_LIMIT`] items joined by `sep`, then `... and N more` (with the count)
/// when there are more: messages never list hundreds of names.
pub fn list_excerpt(items: &[String], sep: &str) -> String {
    let mut out = items
        .iter()
        .take(LIST_LIMIT)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > LIST_LIMIT {
        out.push_str(&format!("{sep}... and {} more", items.len() - LIST_LIMIT));
    }
    out
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

/// Reads a Google `.npz` and converts it to timm names. Non-float entries and
/// optimizer entries are set aside with notes; any non-finite float array is an
/// error naming the file's key and the timm tensor made from it.
/// The arrays under timm names, the notes, and whether a `pre_logits` layer was dropped.
fn read_google_npz(path: &Path) -> Result<(BTreeMap<String, Tensor>, Vec<String>, bool)> {
    let contents = npz::read(path)?;
    let mut notes = Vec::new();
    if !contents.skipped.is_empty() {
        let named: Vec<String> = contents
            .skipped
            .iter()
            .map(|(k, d)| {
                if d.contains('O') && !d.contains('[') {
                    format!("{k} ({d}, a pickled object: not unpickled)")
                } else {
                    format!("{k} ({d})")
                }
            })
            .collect();
        notes.push(format!(
            "skipped {} non-parameter entr{} (not float arrays): {}",
            named.len(),
            if named.len() == 1 { "y" } else { "ies" },
            list_excerpt(&named, ", ")
        ));
    }
    let non_finite = contents.non_finite;
    let conv = google::convert(contents.arrays)
        .with_context(|| format!("{}: converting Google names", path.display()))?;
    if !non_finite.is_empty() {
        let bad: Vec<String> = non_finite
            .iter()
            .map(|(key, (nf, dtype))| {
                let timm: Vec<&str> = conv
                    .sources
                    .iter()
                    .filter(|(_, src)| src.iter().any(|s| s == key))
                    .map(|(t, _)| t.as_str())
                    .collect();
                let as_timm = if timm.is_empty() {
                    "not a model tensor".to_string()
                } else {
                    format!(
                        "timm {}",
                        list_excerpt(
                            &timm.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                            ", "
                        )
                    )
                };
                format!("{key} ({as_timm}) {dtype}: {}", nf.describe())
            })
            .collect();
        bail!(
            "{}: {} array(s) hold non-finite values (inf/NaN, e.g. an fp16 export that \
             overflowed); refusing to load them:\n  {}",
            path.display(),
            bad.len(),
            list_excerpt(&bad, "\n  ")
        );
    }
    notes.extend(conv.notes);
    let mut all = conv.tensors;
    for (k, v) in conv.unused {
        all.insert(k, v);
    }
    Ok((all, notes, conv.had_pre_logits))
}

/// Reads a safetensors file for [`load_backbone`]: tensors that are not floats and
/// not expected by the model (step counters, `num_batches_tracked`, masks) are set
/// aside with a note; so are dtypes candle cannot hold.
fn read_timm_safetensors(
    path: &Path,
    expected: &[(String, Vec<usize>)],
) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let (mut found, mut skipped) = safetensors_io::read_lenient(path)?;
    let not_params: Vec<String> = found
        .iter()
        .filter(|(k, t)| {
            !t.dtype().is_float()
                && !expected
                    .iter()
                    .any(|(n, _)| k.as_str() == n || k.ends_with(&format!(".{n}")))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in not_params {
        let t = found.remove(&k).expect("listed above");
        skipped.push((k, format!("{:?}", t.dtype())));
    }
    let mut notes = Vec::new();
    if !skipped.is_empty() {
        skipped.sort();
        let named: Vec<String> = skipped.iter().map(|(k, d)| format!("{k} ({d})")).collect();
        notes.push(format!(
            "skipped {} non-parameter tensor(s) (not floats): {}",
            named.len(),
            list_excerpt(&named, ", ")
        ));
    }
    Ok((found, notes))
}

/// The prefix (empty, or ending in `.`) that, removed from checkpoint names, makes the
/// most expected names match, when that is more than without removing anything: the
/// `module.` of DDP, `model.` of Lightning, `backbone.`, or nested ones (`module.model.`).
fn detect_prefix(
    found: &BTreeMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> Option<String> {
    let want: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in found.keys() {
        for (i, _) in k.match_indices('.') {
            let (p, rest) = k.split_at(i + 1);
            if want.contains(rest) {
                *counts.entry(p).or_default() += 1;
            }
        }
    }
    let plain = found.keys().filter(|k| want.contains(k.as_str())).count();
    counts
        .into_iter()
        .filter(|&(_, n)| n > plain)
        .max_by_key(|&(p, n)| (n, std::cmp::Reverse(p.len())))
        .map(|(p, _)| p.to_string())
}

/// The longest prefix ending in `.` that every name carries, if any.
fn common_dot_prefix<'a>(names: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut prefix: Option<&str> = None;
    for n in names {
        let cut = match prefix {
            None => n.rfind('.').map_or("", |i| &n[..=i]),
            Some(p) => {
                let common = p
                    .char_indices()
                    .zip(n.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((i, a), _)| i + a.len_utf8());
                p[..common].rfind('.').map_or("", |i| &p[..=i])
            }
        };
        if cut.is_empty() {
            return None;
        }
        prefix = Some(cut);
    }
    prefix.map(str::to_string)
}

/// Loads a pretrained backbone and checks it against `expected` (timm names and
/// shapes, e.g. `VitConfig::expected_tensors`).
///
/// The format is detected from the file's first bytes: safetensors (timm names)
/// or a Google `.npz` (vit_jax, `opt/target/`-prefixed or big_vision), converted to
/// timm names and layouts. Floating tensors (f16/bf16/f32/f64) are converted to f32.
///
/// Tolerated, with a note in [`LoadedWeights::notes`]: a prefix that all (or most)
/// names carry in front of the timm names (`module.`, `model.`, `backbone.`, nested),
/// removed as timm's `clean_state_dict` does; a `pre_logits` layer (dropped, as timm
/// does when the model has none); npz entries that are not float arrays or lie outside
/// the parameter prefix (optimizer state).
///
/// Errors: any float tensor holding inf, -inf or NaN (named: timm name, and for .npz
/// the file's own key); one error listing the missing, unexpected and mis-shaped
/// tensors (counts and a few names each) unless `opts` allows it; mis-shaped tensors
/// are always an error, except `pos_embed` with another grid when
/// `opts.resample_pos_embed` is set.
pub fn load_backbone(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    device: &Device,
) -> Result<LoadedWeights> {
    let (mut found, mut notes, npz_pre_logits) = match sniff(path)? {
        Format::Safetensors => {
            let (found, notes) = read_timm_safetensors(path, expected)?;
            (found, notes, false)
        }
        Format::Npz => read_google_npz(path)?,
    };
    if let Some(prefix) = detect_prefix(&found, expected) {
        let total = found.len();
        let carried = found.keys().filter(|k| k.starts_with(&prefix)).count();
        found = found
            .into_iter()
            .map(|(k, v)| match k.strip_prefix(&prefix) {
                Some(rest) => (rest.to_string(), v),
                None => (k, v),
            })
            .collect();
        notes.push(format!(
            "removed the prefix `{prefix}` that {} of the {total} tensor names carry \
             (a wrapped state dict: DDP, Lightning, ...), as timm's clean_state_dict does",
            if carried == total {
                "all".to_string()
            } else {
                carried.to_string()
            }
        ));
        if found.len() != total {
            bail!(
                "{}: removing the prefix `{prefix}` makes {} names collide with unprefixed ones",
                path.display(),
                total - found.len()
            );
        }
    }
    let had_pre_logits = npz_pre_logits
        || found
            .keys()
            .any(|k| k.starts_with("pre_logits.") && !expected.iter().any(|(n, _)| n == k));
    let (tensors, extra, notes) = match_expected(found, expected, opts, notes)
        .with_context(|| format!("checkpoint {} does not match the model", path.display()))?;
    let to_f32 = |map: BTreeMap<String, Tensor>| -> Result<BTreeMap<String, Tensor>> {
        let mut on_device = BTreeMap::new();
        for (k, v) in map {
            let v = match v.dtype() {
                DType::F32 => v,
                DType::F64 => {
                    let f = v.to_dtype(DType::F32)?;
                    let values = f.flatten_all()?.to_vec1::<f32>()?;
                    if values.iter().any(|x| !x.is_finite()) {
                        bail!(
                            "{}: tensor {k} holds float64 values too large for float32",
                            path.display()
                        );
                    }
                    f
                }
                DType::F16 | DType::BF16 => v.to_dtype(DType::F32)?,
                other => bail!(
                    "{}: tensor {k} has dtype {other:?}, not a float type",
                    path.display()
                ),
            };
            on_device.insert(
                k.clone(),
                v.to_device(device)
                    .with_context(|| format!("moving {k} to {device:?}"))?,
            );
        }
        Ok(on_device)
    };
    Ok(LoadedWeights {
        tensors: to_f32(tensors)?,
        extra: to_f32(extra)?,
        notes,
        had_pre_logits,
    })
}

/// Number of prefix tokens (class, distillation) the model's pos_embed carries.
fn prefix_tokens(expected: &[(String, Vec<usize>)]) -> usize {
    expected
        .iter()
        .filter(|(n, _)| n == "cls_token" || n == "dist_token")
        .count()
}

type Matched = (
    BTreeMap<String, Tensor>,
    BTreeMap<String, Tensor>,
    Vec<String>,
);

fn match_expected(
    mut found: BTreeMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    mut notes: Vec<String>,
) -> Result<Matched> {
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
            list_excerpt(&ignored, ", ")
        ));
    }
    let passed: Vec<String> = found
        .keys()
        .filter(|k| is_ignored(k, &opts.pass_through))
        .cloned()
        .collect();
    let mut extra = BTreeMap::new();
    for k in passed {
        let t = found.remove(&k).expect("listed above");
        extra.insert(k, t);
    }
    // timm's ViT has no representation layer: a `pre_logits` one is dropped, as timm does.
    let pre_logits: Vec<String> = found
        .keys()
        .filter(|k| k.starts_with("pre_logits.") && !expected.iter().any(|(n, _)| n == *k))
        .cloned()
        .collect();
    if !pre_logits.is_empty() {
        for k in &pre_logits {
            found.remove(k);
        }
        notes.push(format!(
            "dropped the pre-logits layer ({}), as timm does: the model has none",
            pre_logits.join(", ")
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
        let hint = |allowed: bool, h: &Option<String>| match (allowed, h) {
            (true, _) => " (allowed)".to_string(),
            (false, Some(h)) => format!(" ({h})"),
            (false, None) => String::new(),
        };
        let mut msg = String::new();
        if out.is_empty() && !found.is_empty() {
            msg.push_str(&format!(
                "\nnone of the model's {} tensors is in the checkpoint under its timm name",
                expected.len()
            ));
            if let Some(p) = common_dot_prefix(found.keys()) {
                msg.push_str(&format!(
                    "; all {} checkpoint names start with `{p}` and no prefix removal makes \
                     them timm names (another architecture?)",
                    found.len()
                ));
            }
        }
        for (title, list, hint) in [
            (
                "missing",
                &missing,
                hint(opts.allow_partial, &opts.hints.missing),
            ),
            (
                "unexpected",
                &unexpected,
                hint(opts.allow_unexpected, &opts.hints.unexpected),
            ),
            ("mis-shaped", &misshaped, hint(false, &opts.hints.misshaped)),
        ] {
            if !list.is_empty() {
                msg.push_str(&format!(
                    "\n{} {title} tensor(s){hint}:\n  {}",
                    list.len(),
                    list_excerpt(list, "\n  ")
                ));
            }
        }
        if !notes.is_empty() {
            msg.push_str(&format!("\nnotes: {}", notes.join("; ")));
        }
        bail!("checkpoint/model mismatch:{msg}");
    }
    if !missing.is_empty() {
        notes.push(format!(
            "partial load: {} tensor(s) missing: {}",
            missing.len(),
            list_excerpt(&missing, ", ")
        ));
    }
    if !unexpected.is_empty() {
        notes.push(format!(
            "dropped {} unexpected tensor(s): {}",
            unexpected.len(),
            list_excerpt(&unexpected, ", ")
        ));
    }
    Ok((out, extra, notes))
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
