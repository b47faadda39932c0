//! Bicubic resampling of absolute position embeddings, as timm's
//! `resample_abs_pos_embed`: prefix tokens (class/distillation) are kept, the grid
//! tokens are reshaped to `[D, gh, gw]`, resized with PyTorch's
//! `F.interpolate(mode="bicubic", align_corners=False, antialias=...)` and
//! flattened back. timm's default is `antialias=True` (PIL-style cubic filter,
//! a = -0.5, widened when down-sampling, weights renormalised at the borders);
//! `antialias=False` is PyTorch's plain bicubic (a = -0.75, edge replication),
//! which timm 0.6's `resize_pos_embed` used.
//!
//! The resize is separable: `out[d] = Wh · grid[d] · Wwᵀ` with 1-D weight
//! matrices computed in f64 exactly as PyTorch computes its kernels.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// 1-D interpolation weights `[out_size][in_size]` of PyTorch's bicubic resize.
pub fn bicubic_weights(in_size: usize, out_size: usize, antialias: bool) -> Vec<Vec<f64>> {
    let scale = in_size as f64 / out_size as f64;
    let mut w = vec![vec![0.0; in_size]; out_size];
    if antialias {
        // PyTorch `_upsample_bicubic2d_aa` (PIL's bicubic filter, a = -0.5).
        let filter = |x: f64| cubic(x.abs(), -0.5);
        let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        for (i, row) in w.iter_mut().enumerate() {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
            let xmax = ((center + support + 0.5).trunc() as i64)
                .min(in_size as i64)
                .max(0) as usize;
            let mut total = 0.0;
            for (j, wj) in row.iter_mut().enumerate().take(xmax).skip(xmin) {
                *wj = filter((j as f64 - center + 0.5) * invscale);
                total += *wj;
            }
            if total != 0.0 {
                row.iter_mut().for_each(|v| *v /= total);
            }
        }
    } else {
        // PyTorch `upsample_bicubic2d`, align_corners=False, a = -0.75.
        for (i, row) in w.iter_mut().enumerate() {
            let src = (i as f64 + 0.5) * scale - 0.5;
            let x0 = src.floor();
            let t = src - x0;
            let coeffs = [
                cubic(t + 1.0, -0.75),
                cubic(t, -0.75),
                cubic(1.0 - t, -0.75),
                cubic(2.0 - t, -0.75),
            ];
            for (k, c) in coeffs.iter().enumerate() {
                let idx = (x0 as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
                row[idx] += c;
            }
        }
    }
    w
}

/// Keys' cubic convolution kernel at distance `x >= 0` with parameter `a`.
fn cubic(x: f64, a: f64) -> f64 {
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// Resamples `posemb` `[1, prefix + old_h*old_w, D]` to `[1, prefix + new_h*new_w, D]`.
///
/// `old_grid` defaults to a square grid. The result has the input's dtype and device.
pub fn resample_abs_pos_embed(
    posemb: &Tensor,
    new_grid: (usize, usize),
    old_grid: Option<(usize, usize)>,
    num_prefix_tokens: usize,
    antialias: bool,
) -> Result<Tensor> {
    let (one, n, d) = match posemb.dims() {
        &[a, b, c] => (a, b, c),
        other => bail!("pos_embed must have shape [1, tokens, dim], got {other:?}"),
    };
    if one != 1 || n < num_prefix_tokens {
        bail!(
            "pos_embed must have shape [1, tokens >= {num_prefix_tokens}, dim], got {:?}",
            posemb.dims()
        );
    }
    let grid_tokens = n - num_prefix_tokens;
    let (oh, ow) = match old_grid {
        Some(g) => g,
        None => {
            let s = (grid_tokens as f64).sqrt().round() as usize;
            (s, s)
        }
    };
    if oh * ow != grid_tokens || oh == 0 {
        bail!(
            "pos_embed has {grid_tokens} grid tokens (after {num_prefix_tokens} prefix tokens), not a {oh}x{ow} grid"
        );
    }
    let (nh, nw) = new_grid;
    if nh == 0 || nw == 0 {
        bail!("cannot resample pos_embed to an empty {nh}x{nw} grid");
    }
    if (nh, nw) == (oh, ow) {
        return Ok(posemb.clone());
    }
    let values = posemb
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let (prefix, grid) = values.split_at(num_prefix_tokens * d);
    let wh = bicubic_weights(oh, nh, antialias);
    let ww = bicubic_weights(ow, nw, antialias);
    // Horizontal pass: tmp[y][x'][c] = sum_x ww[x'][x] grid[y][x][c].
    let mut tmp = vec![0.0; oh * nw * d];
    for y in 0..oh {
        for (xn, wrow) in ww.iter().enumerate() {
            let dst = &mut tmp[(y * nw + xn) * d..(y * nw + xn + 1) * d];
            for (x, &wx) in wrow.iter().enumerate().filter(|(_, w)| **w != 0.0) {
                let src = &grid[(y * ow + x) * d..(y * ow + x + 1) * d];
                dst.iter_mut().zip(src).for_each(|(o, s)| *o += wx * s);
            }
        }
    }
    // Vertical pass.
    let mut out = prefix.to_vec();
    out.resize(prefix.len() + nh * nw * d, 0.0);
    let grid_out = &mut out[prefix.len()..];
    for (yn, hrow) in wh.iter().enumerate() {
        for (y, &wy) in hrow.iter().enumerate().filter(|(_, w)| **w != 0.0) {
            for xn in 0..nw {
                let src = &tmp[(y * nw + xn) * d..(y * nw + xn + 1) * d];
                let dst = &mut grid_out[(yn * nw + xn) * d..(yn * nw + xn + 1) * d];
                dst.iter_mut().zip(src).for_each(|(o, s)| *o += wy * s);
            }
        }
    }
    let t = Tensor::from_vec(out, (1, num_prefix_tokens + nh * nw, d), posemb.device())?;
    Ok(t.to_dtype(posemb.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_rows_sum_to_one() {
        for aa in [false, true] {
            for (i, o) in [(4, 6), (6, 4), (14, 7), (3, 5)] {
                for row in bicubic_weights(i, o, aa) {
                    assert!(
                        (row.iter().sum::<f64>() - 1.0).abs() < 1e-12,
                        "{i}->{o} aa={aa}"
                    );
                }
            }
        }
    }

    #[test]
    fn same_grid_is_identity_and_bad_grid_errors() {
        let p = Tensor::arange(0f32, 17.0 * 2.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((1, 17, 2))
            .unwrap();
        let same = resample_abs_pos_embed(&p, (4, 4), None, 1, true).unwrap();
        assert_eq!(same.to_vec3::<f32>().unwrap(), p.to_vec3::<f32>().unwrap());
        let err = resample_abs_pos_embed(&p, (4, 4), None, 2, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("15 grid tokens"), "{err}");
    }
}
