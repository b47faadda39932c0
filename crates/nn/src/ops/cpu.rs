//! Helpers shared by the fused CPU kernels: borrowing f32 slices out of candle storage
//! and choosing the rayon chunking.

use candle_core::{bail, CpuStorage, Layout, Result, Shape, Storage, Tensor};

/// The contiguous f32 slice that `layout` describes inside `storage`.
pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "fused op: expected a contiguous f32 tensor, got strides {:?}",
            layout.stride()
        ),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copies only if `t` is strided).
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout)?),
        _ => bail!(
            "fused op: expected a CPU tensor, got one on {:?}",
            t.device()
        ),
    }
}

/// Runs `f` on the contiguous bf16 data of a CPU bf16 tensor (a frozen weight's bf16 copy).
pub(crate) fn with_bf16_slice<R>(
    t: &Tensor,
    f: impl FnOnce(&[half::bf16]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused op: expected a CPU bf16 tensor")
    };
    let data = cpu.as_slice::<half::bf16>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => f(&data[start..end]),
        None => bail!("fused op: expected a contiguous bf16 tensor"),
    }
}

/// Minimum number of rows per rayon task: keeps tiny tensors on one thread.
pub(crate) fn min_rows(row_len: usize) -> usize {
    (4096 / row_len.max(1)).max(1)
}

/// At most this many partial sums per parallel reduction. Fixed, so that how rows are
/// grouped, and so the order of every float sum, depends on the sizes alone: results are
/// bitwise the same on any number of threads and from run to run (rayon's own `fold` /
/// `reduce` split by work stealing, which made them differ between runs).
pub(crate) const MAX_PARTS: usize = 64;

/// Rows per part when `rows` rows are reduced in parallel: at most [`MAX_PARTS`] parts, each
/// at least `min` rows.
pub(crate) fn part_rows(rows: usize, min: usize) -> usize {
    rows.div_ceil(MAX_PARTS).max(min).max(1)
}

/// Sums per-row contributions `f(row_index) -> [len]` over all rows, in parallel over
/// fixed parts of rows ([`part_rows`]) whose partial sums are then added in part order:
/// the result does not depend on the thread count.
pub(crate) fn par_row_sum(
    rows: usize,
    len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let per = part_rows(rows, min_rows(len));
    let parts: Vec<Vec<f32>> = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|p| {
            let mut acc = vec![0f32; len];
            for r in p * per..((p + 1) * per).min(rows) {
                f(r, &mut acc);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; len];
    for part in &parts {
        out.iter_mut().zip(part).for_each(|(x, y)| *x += y);
    }
    out
}

/// The parts of a backward op's packed output `[a | b | ...]` (one flat tensor: a CustomOp
/// returns one storage), each viewed with its shape; `None` parts are absent from the
/// buffer. The views share the buffer, no data is copied.
pub(crate) fn unpack(packed: &Tensor, parts: &[Option<&Shape>]) -> Result<Vec<Option<Tensor>>> {
    let mut off = 0;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        out.push(match part {
            Some(shape) => {
                let n = shape.elem_count();
                let t = packed.narrow(0, off, n)?.reshape(*shape)?;
                off += n;
                Some(t)
            }
            None => None,
        });
    }
    if off != packed.elem_count() {
        bail!(
            "fused op: a backward returned {} values, its parts hold {off}",
            packed.elem_count()
        );
    }
    Ok(out)
}
