//! Checkpoint I/O: pretrained backbones (timm `.safetensors`, Hugging Face transformers
//! ViT `.safetensors`, sharded safetensors through their index, Google `.npz`) into
//! timm-named tensors checked against the model's expected names and shapes, and
//! trainable weights + optimiser state (`.safetensors`) for resume.
//!
//! Formats are told from the bytes ([`sniff`]); files of other formats (PyTorch pickles,
//! TorchScript, HDF5, archives, saved error pages, LFS pointers, ...) are refused with a
//! message saying what they are and how to convert them ([`foreign`]); nothing is ever
//! unpickled. Every float tensor read (f16/bf16/f32/f64, safetensors or npz) is checked
//! for inf/-inf/NaN, and a file holding any is refused with the tensors named. What
//! [`load_backbone`] tolerates (wrapped-state-dict prefixes, `pre_logits`, the
//! transformers pooler, optimizer and non-float entries) it reports in notes;
//! docs/checkpoints.md lists the layouts and every message.

mod foreign;
mod google;
mod hf_vit;
mod npz;
mod pos_embed;
mod prefix;
mod safetensors_io;
mod sharded;
mod sniff;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

pub use foreign::{TORCHSCRIPT_TO_SAFETENSORS, TORCH_TO_SAFETENSORS};
pub use pos_embed::{bicubic_weights, resample_abs_pos_embed};
pub use sharded::{input_files, INDEX_SUFFIX};

/// How a loader gets the bytes of a safetensors file (a whole checkpoint, a shard, saved
/// weights): [`load_tensors`] and [`load_backbone`] read files as they are
/// (`std::fs::read`); a caller whose files may lie in a store that checks its bytes passes
/// its own reader to [`load_tensors_with`] / [`load_backbone_with`]. idat-domain passes
/// `idat_engine::cache::verified::read`: a file of a cache entry is checked against the
/// entry's manifest as it is read, and a flipped bit fails the load naming the entry
/// (other files are read as they are). The size bound ([`MAX_CHECKPOINT_BYTES`]) is checked
/// before the reader runs; errors are wrapped with the file's path.
pub type ReadFile = fn(&Path) -> std::io::Result<Vec<u8>>;

/// The [`ReadFile`] of [`load_tensors`] and [`load_backbone`]: the file's bytes as they are.
fn read_plain(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Largest checkpoint read, in bytes: one file, the shards of an index together, or the
/// arrays of an `.npz` (ViT-g/14 in f32 is about 4 GB; this leaves room for ViT-22B in bf16).
pub const MAX_CHECKPOINT_BYTES: u64 = 32 << 30;

/// How strictly [`load_backbone`] matches a checkpoint against the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Accept expected tensors that the checkpoint lacks (they are listed in the notes).
    pub allow_partial: bool,
    /// Drop checkpoint tensors the model does not expect (e.g. a 21843-class head).
    pub allow_unexpected: bool,
    /// Names to skip on both sides: an entry matches names starting with it
    /// (a trailing `*` is ignored, so `head.` and `head.*` are the same), checkpoint names
    /// both as written in the file (before a wrapper's prefix is removed: `module.head.`)
    /// and as timm names. Ignored expected tensors are neither loaded nor required.
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
/// stage's `with:` option, a command's flag): tests/cli/checkpoint_hints.rs checks them.
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
    ShardIndex,
}

/// The file `path` stands for (a folder: its index or `model.safetensors`) and its format,
/// told from its bytes. Errors: a format not read (the message says what the file is and
/// how to convert it), an unreadable or unknown file.
fn sniff(path: &Path) -> Result<(PathBuf, Format)> {
    let file = if path.is_dir() {
        sharded::resolve_dir(path)?
    } else {
        path.to_path_buf()
    };
    let d = sniff::detect(&file)?;
    let format = match d {
        sniff::Detected::Safetensors => Format::Safetensors,
        sniff::Detected::Npz => Format::Npz,
        sniff::Detected::ShardIndex => Format::ShardIndex,
        sniff::Detected::Unknown { head_hex } => bail!(unknown_format(&file, &head_hex)),
        other => {
            let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            bail!(foreign::refusal(&file, &other, len).expect("every other kind has a message"))
        }
    };
    Ok((file, format))
}

/// The message for bytes of no known format.
fn unknown_format(p: &Path, head_hex: &str) -> String {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let what = match ext.as_str() {
        "safetensors" => "not a safetensors file: no JSON header after the 8-byte length",
        "npz" => "not a .npz file: no zip signature",
        _ => "unknown checkpoint format",
    };
    format!(
        "{}: {what} (first bytes {head_hex}); expected a .safetensors file (timm or Hugging \
         Face transformers ViT names), a sharded checkpoint's index (*{INDEX_SUFFIX}) or a \
         Google ViT .npz",
        p.display()
    )
}

/// The shard names a sharded checkpoint's index lists (relative to its folder), checked as
/// [`load_backbone`] checks them (plain relative paths of `.safetensors` files): what a
/// downloader fetches next to the index.
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    Ok(sharded::parse_index(index)?.shards.into_keys().collect())
}

/// Whether the file at `path` is a sharded checkpoint's index (told by content).
pub fn is_shard_index(path: &Path) -> bool {
    matches!(sniff::detect(path), Ok(sniff::Detected::ShardIndex))
}

/// Refuses a file that is not safetensors (a shard), with the message of what it is.
fn expect_safetensors(p: &Path) -> Result<()> {
    match sniff(p)?.1 {
        Format::Safetensors => Ok(()),
        Format::Npz => bail!("{}: a .npz file, not a .safetensors shard", p.display()),
        Format::ShardIndex => bail!("{}: another index, not a .safetensors shard", p.display()),
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

/// Sets aside, with a note, the tensors that are not floats and not expected by the model
/// (step counters, `num_batches_tracked`, masks), next to the dtypes candle cannot hold
/// (`skipped`, already set aside by the reader).
fn set_aside_non_params(
    found: &mut BTreeMap<String, Tensor>,
    mut skipped: Vec<(String, String)>,
    expected: &[(String, Vec<usize>)],
) -> Vec<String> {
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
    if skipped.is_empty() {
        return Vec::new();
    }
    skipped.sort();
    let named: Vec<String> = skipped.iter().map(|(k, d)| format!("{k} ({d})")).collect();
    vec![format!(
        "skipped {} non-parameter tensor(s) (not floats): {}",
        named.len(),
        list_excerpt(&named, ", ")
    )]
}

/// Tensors under the file's names (Google `.npz`: already timm's), what was set aside,
/// and whether a `pre_logits` layer was dropped.
struct Raw {
    found: BTreeMap<String, Tensor>,
    notes: Vec<String>,
    had_pre_logits: bool,
}

/// Reads one safetensors file that is not a shard of an index beside it.
fn read_single_safetensors(
    file: &Path,
    expected: &[(String, Vec<usize>)],
    read: ReadFile,
) -> Result<Raw> {
    if let Some((index, n)) = sharded::index_listing(file) {
        bail!(
            "{}: one shard of the {n}-shard checkpoint indexed by {}: a shard alone lacks the \
             other shards' tensors; pass the index (or its folder) instead",
            file.display(),
            index.display()
        );
    }
    let (mut found, skipped) = safetensors_io::read_lenient(file, read)?;
    let mut notes = set_aside_non_params(&mut found, skipped, expected);
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    if let Some((i, n)) = name.as_deref().and_then(sharded::shard_numbering) {
        if n > 1 {
            notes.push(format!(
                "the file's name says it is shard {i} of {n} of a sharded checkpoint, and no \
                 index (*{INDEX_SUFFIX}) beside it lists it: a shard holds only part of the \
                 model; put the index and all {n} shards in one folder and pass the index"
            ));
        }
    }
    Ok(Raw {
        found,
        notes,
        had_pre_logits: false,
    })
}

/// Reads `file` of `format` (see [`Raw`]), safetensors files and shards through `read`.
fn read_raw(
    file: &Path,
    format: Format,
    expected: &[(String, Vec<usize>)],
    read: ReadFile,
) -> Result<Raw> {
    match format {
        Format::Safetensors => read_single_safetensors(file, expected, read),
        Format::ShardIndex => {
            let index = sharded::parse_index(file)?;
            let ((mut found, skipped), mut notes) =
                sharded::read(&index, |p| safetensors_io::read_lenient(p, read))?;
            notes.extend(set_aside_non_params(&mut found, skipped, expected));
            Ok(Raw {
                found,
                notes,
                had_pre_logits: false,
            })
        }
        Format::Npz => {
            let (found, notes, had_pre_logits) = read_google_npz(file)?;
            Ok(Raw {
                found,
                notes,
                had_pre_logits,
            })
        }
    }
}

/// Removes the checkpoint names `opts.ignore` matches as written in the file (before any
/// prefix is removed): returns them.
fn take_ignored(found: &mut BTreeMap<String, Tensor>, ignore: &[String]) -> Vec<String> {
    let names: Vec<String> = found
        .keys()
        .filter(|k| is_ignored(k, ignore))
        .cloned()
        .collect();
    for k in &names {
        found.remove(k);
    }
    names
}

/// Removes a wrapper's prefix when every name carries it ([`prefix`]), with a note; a
/// prefix that explains only part of the file is kept, with a note saying why.
fn strip_wrapper(
    found: BTreeMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
    notes: &mut Vec<String>,
    file: &Path,
) -> Result<BTreeMap<String, Tensor>> {
    let want: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let p = match prefix::find(found.keys(), &want) {
        prefix::Prefix::Wrapped(p) => p,
        other => {
            notes.extend(prefix::partial_note(&other));
            return Ok(found);
        }
    };
    let total = found.len();
    let stripped: BTreeMap<String, Tensor> = found
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(&p).unwrap_or(&k).to_string(), v))
        .collect();
    if stripped.len() != total {
        bail!(
            "{}: removing the prefix `{p}` makes {} names collide",
            file.display(),
            total - stripped.len()
        );
    }
    notes.push(prefix::wrapped_note(&p, total));
    Ok(stripped)
}

/// Loads a pretrained backbone and checks it against `expected` (timm names and
/// shapes, e.g. `VitConfig::expected_tensors`).
///
/// `path` is a file or a folder (its `*.safetensors.index.json`, else its
/// `model.safetensors`). The format is detected from the file's bytes: safetensors
/// (timm names, or Hugging Face transformers ViT names, converted), a sharded
/// checkpoint's index (the shards beside it; see [`sharded`]) or a Google `.npz`
/// (vit_jax, `opt/target/`-prefixed or big_vision), converted to timm names and
/// layouts. Floating tensors (f16/bf16/f32/f64) are converted to f32.
///
/// Tolerated, with a note in [`LoadedWeights::notes`]: a prefix that every name carries
/// (once names in `opts.ignore` are left out) in front of the timm names (`module.`,
/// `model.`, `_orig_mod.`, `backbone.`, nested), removed as timm's `clean_state_dict`
/// does; a `pre_logits` layer or transformers' pooler (dropped, as timm does when the
/// model has none); npz entries that are not float arrays or lie outside the parameter
/// prefix (optimizer state); non-float safetensors entries the model does not expect.
///
/// Errors: any file of another format (PyTorch pickles and TorchScript, HDF5, archives,
/// HTML or text, LFS pointers, empty files: each named with how to convert or fetch the
/// real checkpoint); a file over [`MAX_CHECKPOINT_BYTES`]; a shard passed alone; any float
/// tensor holding inf, -inf or NaN (named: timm name, and for .npz the file's own key);
/// one error listing the missing, unexpected and mis-shaped tensors (counts and a few
/// names each) unless `opts` allows it; mis-shaped tensors are always an error, except
/// `pos_embed` with another grid when `opts.resample_pos_embed` is set.
///
/// Files are read as they are; [`load_backbone_with`] takes the reader.
pub fn load_backbone(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    device: &Device,
) -> Result<LoadedWeights> {
    load_backbone_with(path, expected, opts, device, read_plain)
}

/// [`load_backbone`], reading safetensors files and shards through `read` (see
/// [`ReadFile`]); errors are those of `read` as well, wrapped with the file's path.
pub fn load_backbone_with(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    device: &Device,
    read: ReadFile,
) -> Result<LoadedWeights> {
    let (file, format) = sniff(path)?;
    let Raw {
        mut found,
        mut notes,
        mut had_pre_logits,
    } = read_raw(&file, format, expected, read)?;
    if let Some(hf) = hf_vit::convert(&mut found, &file)? {
        notes.extend(hf.notes);
        had_pre_logits |= hf.had_pooler;
    }
    let ignored = take_ignored(&mut found, &opts.ignore);
    let found = strip_wrapper(found, expected, &mut notes, &file)?;
    had_pre_logits |= found
        .keys()
        .any(|k| k.starts_with("pre_logits.") && !expected.iter().any(|(n, _)| n == k));
    let (tensors, extra, notes) = match_expected(found, expected, opts, notes, ignored)
        .with_context(|| format!("checkpoint {} does not match the model", file.display()))?;
    Ok(LoadedWeights {
        tensors: all_to_f32(tensors, &file, device)?,
        extra: all_to_f32(extra, &file, device)?,
        notes,
        had_pre_logits,
    })
}

/// Converts every float tensor to f32 on `device`; f64 values beyond f32's range and
/// non-float tensors are errors naming the tensor.
fn all_to_f32(
    map: BTreeMap<String, Tensor>,
    file: &Path,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
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
                        file.display()
                    );
                }
                f
            }
            DType::F16 | DType::BF16 => v.to_dtype(DType::F32)?,
            other => bail!(
                "{}: tensor {k} has dtype {other:?}, not a float type",
                file.display()
            ),
        };
        on_device.insert(
            k.clone(),
            v.to_device(device)
                .with_context(|| format!("moving {k} to {device:?}"))?,
        );
    }
    Ok(on_device)
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

/// The tensors of `found` matched to `expected` (pos_embed resampled where allowed), the
/// pass-through ones, and the notes; every mismatch the options do not allow in one error.
fn match_expected(
    mut found: BTreeMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    mut notes: Vec<String>,
    ignored: Vec<String>,
) -> Result<Matched> {
    let extra = set_aside(&mut found, expected, opts, &mut notes, ignored);
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
        match resampled(name, &t, shape, expected, opts, &mut notes)? {
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
        let lists = Mismatch {
            missing,
            unexpected,
            misshaped,
        };
        return Err(lists.error(&out, &found, expected, opts, &notes));
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

/// Takes out of `found` what is not matched: the ignored tensors (with those already
/// `ignored`, noted), a `pre_logits` layer (dropped, noted, as timm does: its ViT has no
/// representation layer) and the pass-through ones, which are returned.
fn set_aside(
    found: &mut BTreeMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    notes: &mut Vec<String>,
    mut ignored: Vec<String>,
) -> BTreeMap<String, Tensor> {
    ignored.extend(take_ignored(found, &opts.ignore));
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
    extra
}

/// `t` (the checkpoint's `name`) resampled to the model's `shape` (noted) where that is
/// allowed and possible: a `pos_embed` of the model's width whose grid is square; `None`
/// otherwise (a shape mismatch).
fn resampled(
    name: &str,
    t: &Tensor,
    shape: &[usize],
    expected: &[(String, Vec<usize>)],
    opts: &LoadOptions,
    notes: &mut Vec<String>,
) -> Result<Option<Tensor>> {
    if !(name == "pos_embed" && opts.resample_pos_embed && t.rank() == 3 && shape.len() == 3) {
        return Ok(None);
    }
    let prefix = prefix_tokens(expected);
    let side = ((shape[1].saturating_sub(prefix)) as f64).sqrt().round() as usize;
    if !(t.dims()[2] == shape[2] && shape[0] == 1 && side * side + prefix == shape[1]) {
        return Ok(None);
    }
    let r = resample_abs_pos_embed(t, (side, side), None, prefix, true)
        .with_context(|| format!("resampling pos_embed {:?} to {shape:?}", t.dims()))?;
    notes.push(format!(
        "resampled pos_embed {} -> {} tokens (bicubic, antialias, {prefix} prefix token(s) kept)",
        t.dims()[1],
        shape[1]
    ));
    Ok(Some(r))
}

/// What did not match: missing, unexpected and mis-shaped tensors, as listed in errors.
struct Mismatch {
    missing: Vec<String>,
    unexpected: Vec<String>,
    misshaped: Vec<String>,
}

impl Mismatch {
    /// The error listing every mismatch, with the hints of `opts`, a diagnosis where none
    /// of the model's tensors was found (`out` empty, the rest in `found`), and the notes.
    fn error(
        &self,
        out: &BTreeMap<String, Tensor>,
        found: &BTreeMap<String, Tensor>,
        expected: &[(String, Vec<usize>)],
        opts: &LoadOptions,
        notes: &[String],
    ) -> anyhow::Error {
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
            if let Some(p) = prefix::common_dot_prefix(found.keys()) {
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
                &self.missing,
                hint(opts.allow_partial, &opts.hints.missing),
            ),
            (
                "unexpected",
                &self.unexpected,
                hint(opts.allow_unexpected, &opts.hints.unexpected),
            ),
            (
                "mis-shaped",
                &self.misshaped,
                hint(false, &opts.hints.misshaped),
            ),
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
        anyhow::anyhow!("checkpoint/model mismatch:{msg}")
    }
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
/// file): tensors keep their stored dtype and are moved to `device`. The file is read as
/// it is; [`load_tensors_with`] takes the reader.
///
/// Errors: the file is missing, over [`MAX_CHECKPOINT_BYTES`], not safetensors, holds a
/// dtype candle cannot hold or a non-finite float (each naming the file).
pub fn load_tensors(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    load_tensors_with(path, device, read_plain)
}

/// [`load_tensors`], reading the file through `read` (see [`ReadFile`]).
pub fn load_tensors_with(
    path: &Path,
    device: &Device,
    read: ReadFile,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let (tensors, meta) = safetensors_io::read(path, read)?;
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
