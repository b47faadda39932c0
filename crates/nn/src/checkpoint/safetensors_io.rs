//! Bounded reading and atomic writing of `.safetensors` files.
//!
//! The header is parsed and validated by the `safetensors` crate (declared shapes
//! times dtype sizes must match the data offsets, offsets must tile the file, the
//! header must fit the file) before any tensor is materialised.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use super::NonFinite;

/// A named map of tensors plus the file's string metadata.
pub type TensorsAndMetadata = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

/// Tensors plus the (name, dtype) of the entries set aside.
pub type TensorsAndSkipped = (BTreeMap<String, Tensor>, Vec<(String, String)>);

/// Maps a safetensors dtype to the candle dtype it is read as.
fn candle_dtype(dtype: StDtype) -> Option<DType> {
    Some(match dtype {
        StDtype::U8 => DType::U8,
        StDtype::U32 => DType::U32,
        StDtype::I64 => DType::I64,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        _ => return None,
    })
}

fn st_dtype(dtype: DType) -> Option<StDtype> {
    Some(match dtype {
        DType::U8 => StDtype::U8,
        DType::U32 => StDtype::U32,
        DType::I64 => StDtype::I64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        _ => return None,
    })
}

/// Counts the non-finite values of a little-endian float buffer (other dtypes: none).
fn non_finite(bytes: &[u8], dtype: StDtype) -> NonFinite {
    let mut nf = NonFinite::default();
    match dtype {
        StDtype::F16 => bytes
            .chunks_exact(2)
            .for_each(|c| nf.add(half::f16::from_le_bytes([c[0], c[1]]).to_f64())),
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .for_each(|c| nf.add(half::bf16::from_le_bytes([c[0], c[1]]).to_f64())),
        StDtype::F32 => bytes
            .chunks_exact(4)
            .for_each(|c| nf.add(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)),
        StDtype::F64 => bytes
            .chunks_exact(8)
            .for_each(|c| nf.add(f64::from_le_bytes(c.try_into().expect("chunk of 8")))),
        _ => {}
    }
    nf
}

/// Parses safetensors bytes (validated before any tensor is created); tensors
/// keep their stored dtype and live on the CPU. `origin` names the file in errors.
///
/// Errors: a malformed header, an unsupported dtype, or any float tensor
/// (f16/bf16/f32/f64) holding inf, -inf or NaN (all such tensors are named, with counts).
pub fn parse(bytes: &[u8], origin: &Path) -> Result<TensorsAndMetadata> {
    let (tensors, metadata, skipped) = parse_inner(bytes, origin, false)?;
    debug_assert!(skipped.is_empty());
    Ok((tensors, metadata))
}

/// Like [`parse`], but tensors of a dtype candle cannot hold (bool, i8/i16/i32, f8, ...)
/// are skipped, not refused: returned as (name, dtype) pairs. For pretrained files,
/// where such entries are not parameters (step counters, masks).
pub fn parse_lenient(bytes: &[u8], origin: &Path) -> Result<TensorsAndSkipped> {
    let (tensors, _, skipped) = parse_inner(bytes, origin, true)?;
    Ok((tensors, skipped))
}

type Parsed = (
    BTreeMap<String, Tensor>,
    BTreeMap<String, String>,
    Vec<(String, String)>,
);

fn parse_inner(bytes: &[u8], origin: &Path, lenient: bool) -> Result<Parsed> {
    if bytes.len() < 8 {
        bail!(
            "{}: not a safetensors file: {} bytes, shorter than the 8-byte header length",
            origin.display(),
            bytes.len()
        );
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: invalid or truncated safetensors file ({} bytes): {e:?}",
            origin.display(),
            bytes.len()
        )
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow::anyhow!("{}: invalid safetensors header: {e:?}", origin.display()))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut bad = Vec::new();
    for (name, view) in st.tensors() {
        let nf = non_finite(view.data(), view.dtype());
        if !nf.is_clean() {
            bad.push(format!(
                "{name} {:?} {:?}: {}",
                view.shape(),
                view.dtype(),
                nf.describe()
            ));
        }
        if lenient && candle_dtype(view.dtype()).is_none() {
            skipped.push((name, format!("{:?}", view.dtype())));
            continue;
        }
        let dtype = candle_dtype(view.dtype()).with_context(|| {
            format!(
                "{}: tensor {name} has unsupported dtype {:?}",
                origin.display(),
                view.dtype()
            )
        })?;
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .with_context(|| {
                format!(
                    "{}: reading tensor {name} {:?}",
                    origin.display(),
                    view.shape()
                )
            })?;
        tensors.insert(name, t);
    }
    if !bad.is_empty() {
        bad.sort();
        bail!(
            "{}: {} tensor(s) hold non-finite values (inf/NaN, e.g. an fp16 export that overflowed); \
             refusing to load them:\n  {}",
            origin.display(),
            bad.len(),
            super::list_excerpt(&bad, "\n  ")
        );
    }
    skipped.sort();
    Ok((tensors, metadata, skipped))
}

/// The bytes of the file at `path` read by `read`, refused when it is larger than
/// [`super::MAX_CHECKPOINT_BYTES`] (before anything is read).
fn read_bounded(path: &Path, read: super::ReadFile) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > super::MAX_CHECKPOINT_BYTES {
        bail!(
            "{}: {len} bytes, more than the {} a checkpoint may have",
            path.display(),
            super::MAX_CHECKPOINT_BYTES
        );
    }
    // The caller's reader: a file of a cache entry may be checked against the entry's
    // manifest as it is read (see `ReadFile`).
    read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads (through `read`) and parses a safetensors file (see [`parse`]); files over
/// [`super::MAX_CHECKPOINT_BYTES`] are refused unread.
pub fn read(path: &Path, read: super::ReadFile) -> Result<TensorsAndMetadata> {
    parse(&read_bounded(path, read)?, path)
}

/// Reads a safetensors file with [`parse_lenient`] (bounded as [`read`]).
pub fn read_lenient(path: &Path, read: super::ReadFile) -> Result<TensorsAndSkipped> {
    parse_lenient(&read_bounded(path, read)?, path)
}

/// A tensor already copied to host bytes, for serialisation.
struct HostTensor {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn host_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::U32 => le(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I64 => le(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::F16 => le(flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::BF16 => le(flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::F32 => le(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => le(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        other => bail!("cannot save dtype {other:?}"),
    })
}

/// Serialises `tensors` + `metadata` to safetensors bytes.
pub fn serialize(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = st_dtype(t.dtype())
            .with_context(|| format!("tensor {name}: cannot save dtype {:?}", t.dtype()))?;
        let bytes = host_bytes(t).with_context(|| format!("copying tensor {name} to the host"))?;
        host.push((
            name.clone(),
            HostTensor {
                dtype,
                shape: t.dims().to_vec(),
                bytes,
            },
        ));
    }
    let bytes = safetensors::tensor::serialize(host.iter().map(|(n, h)| (n.as_str(), h)), None)
        .map_err(|e| anyhow::anyhow!("serialising tensors: {e:?}"))?;
    with_sorted_metadata(bytes, metadata)
}

/// Puts `metadata` into the header of serialised safetensors `bytes`, keys in sorted order.
/// (The safetensors crate takes a `HashMap`, whose random order would make identical runs
/// write different bytes, and so different cache hashes downstream.)
fn with_sorted_metadata(bytes: Vec<u8>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    if metadata.is_empty() {
        return Ok(bytes);
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte header length")) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n])
            .context("re-reading the safetensors header just written")?;
    let mut out_header = serde_json::Map::new();
    out_header.insert(
        "__metadata__".to_string(),
        serde_json::Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
    );
    out_header.extend(header);
    let mut text = serde_json::to_vec(&out_header)?;
    // The data section starts 8-byte aligned, padded with spaces as the format allows.
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is
/// written, flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
