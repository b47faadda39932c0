//! Linear layer with a frozen weight: the backward ([`FrozenLinearBackward`], an op of its
//! own) returns only dL/dx, so the weight-gradient GEMM that candle's matmul backward always
//! computes is skipped and no gradient buffer is allocated for the frozen weight.
//!
//! CPU f32 runs one [`super::gemm`] product with the bias fused in; with a bf16 copy of the
//! weight and a [`Bf16Kernel`] (CPU `precision: bf16`) that product and the input
//! gradient's take bf16 inputs and accumulate in f32, while the input, output and bias stay
//! f32. Every other case (bf16 on CPU, any dtype on CUDA) runs the backend's own matmul on
//! the storage ([`backend_xwt`], [`backend_gw`]); the bias is then added outside the op by
//! the caller.

use super::bf16::Bf16Kernel;
use super::cpu::{slice, with_bf16_slice, with_slice};
use super::gemm::{gemm_w, Weight};
use super::view::{Product, WLayout};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `x [.., K] -> x W^T (+ b)` with `W [N, K]` and `b [N]` frozen.
pub(crate) struct FrozenLinearOp {
    /// Contiguous `[N, K]` weight, of the input's dtype and device.
    pub w: Tensor,
    /// Optional contiguous `[N]` bias: CPU f32 only (see the module docs).
    pub b: Option<Tensor>,
    /// A contiguous bf16 copy of `w` and the kernel for it: the CPU f32 products then take
    /// bf16 inputs (forward and input gradient).
    pub low: Option<(Tensor, Bf16Kernel)>,
}

/// Runs `f` on the weight operand of the CPU f32 products: the bf16 copy in `low` where
/// there is one, else `w`.
fn with_weight<R>(
    w: &Tensor,
    low: &Option<(Tensor, Bf16Kernel)>,
    f: impl FnOnce(Weight) -> Result<R>,
) -> Result<R> {
    match low {
        Some((wl, kernel)) => with_bf16_slice(wl, |w| f(Weight::Bf16(w, *kernel))),
        None => with_slice(w, |w| f(Weight::F32(w))),
    }
}

/// `x [.., K] · w^T` through the backend's matmul, for a contiguous `x` and a contiguous
/// `w [N, K]` on the same backend; returns the `[.., N]` result.
fn backend_xwt<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let dims = xl.dims();
    let k = dims[dims.len() - 1];
    let (n, wk) = wl.shape().dims2()?;
    if wk != k {
        bail!("frozen_linear: input has {k} features, weight expects {wk}");
    }
    let Some((start, _)) = xl.contiguous_offsets() else {
        bail!("frozen_linear: input must be contiguous");
    };
    if !wl.is_contiguous() {
        bail!("frozen_linear: weight must be contiguous");
    }
    let m = xl.shape().elem_count() / k.max(1);
    let lhs = Layout::contiguous_with_offset((m, k), start);
    let rhs = wl.transpose(0, 1)?;
    let out = x.matmul(w, (1, m, n, k), &lhs, &rhs)?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = n;
    Ok((out, Shape::from(shape)))
}

/// A linear layer's forward on rows: `x [m, k] W^T + b` for `W [n, k]`, `b [n]`. The output
/// starts as the bias rows (written once, no zero-fill first) and the GEMM accumulates onto
/// them; without a bias it starts zeroed.
pub(crate) fn linear_rows(
    x: &[f32],
    w: Weight,
    b: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut out = match b {
        Some(b) => {
            let mut out = Vec::with_capacity(m * n);
            (0..m).for_each(|_| out.extend_from_slice(b));
            out
        }
        None => vec![0f32; m * n],
    };
    let p = Product {
        m,
        n,
        k,
        w: WLayout::Nk,
        accumulate: b.is_some(),
    };
    gemm_w(&mut out, x, w, p);
    out
}

/// A linear layer's input gradient on rows: `g [m, k_out] W` for `W [k_out, n_in]`, a new
/// `[m, n_in]` buffer.
pub(crate) fn input_grad(g: &[f32], w: Weight, m: usize, n_in: usize, k_out: usize) -> Vec<f32> {
    let mut dx = vec![0f32; m * n_in];
    let p = Product {
        m,
        n: n_in,
        k: k_out,
        w: WLayout::Kn,
        accumulate: false,
    };
    gemm_w(&mut dx, g, w, p);
    dx
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !matches!(s, CpuStorage::F32(_)) {
            if self.b.is_some() {
                bail!("frozen_linear: a fused bias needs f32 input");
            }
            let (ws, wl) = self.w.storage_and_layout();
            return match &*ws {
                Storage::Cpu(w) => backend_xwt(s, l, w, wl),
                _ => bail!("frozen_linear: the weight is not on the CPU"),
            };
        }
        let x = slice(s, l)?;
        let dims = l.dims();
        let k = dims[dims.len() - 1];
        let (n, wk) = self.w.dims2()?;
        if wk != k {
            bail!("frozen_linear: input has {k} features, weight expects {wk}");
        }
        let m = x.len() / k.max(1);
        let out = with_weight(&self.w, &self.low, |ws| match &self.b {
            Some(b) => with_slice(b, |bs| {
                if bs.len() != n {
                    bail!(
                        "frozen_linear: bias has {} values, weight has {n} rows",
                        bs.len()
                    );
                }
                Ok(linear_rows(x, ws, Some(bs), m, n, k))
            }),
            None => Ok(linear_rows(x, ws, None, m, n, k)),
        })?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.b.is_some() {
            bail!("frozen_linear: on CUDA the bias is added outside the op");
        }
        let (ws, wl) = self.w.storage_and_layout();
        match &*ws {
            Storage::Cuda(w) => backend_xwt(s, l, w, wl),
            _ => bail!("frozen_linear: the weight is not on the CUDA device"),
        }
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = FrozenLinearBackward {
            w: self.w.clone(),
            low: self.low.clone(),
        };
        let dx = grad.contiguous()?.apply_op1_no_bwd(&back)?;
        if dx.dims() != x.dims() {
            bail!(
                "frozen_linear backward: input gradient {:?} for input {:?}",
                dx.dims(),
                x.dims()
            );
        }
        Ok(Some(dx))
    }
}

/// The backward of [`FrozenLinearOp`], an op of its own: the output gradient `g [.., N]` in,
/// `dL/dx = g W [.., K]` out (the frozen weight gets none). CPU f32: one [`super::gemm`]
/// product (bf16 inputs with the copy's kernel where the forward had one); every other
/// case, CUDA included, the backend's own matmul ([`backend_gw`]).
pub(crate) struct FrozenLinearBackward {
    /// Contiguous `[N, K]` weight, of the gradient's dtype and device.
    w: Tensor,
    /// The forward's bf16 copy and kernel (CPU bf16 mixed precision).
    low: Option<(Tensor, Bf16Kernel)>,
}

/// `g [.., N] · w [N, K]` through the backend's matmul, for a contiguous `g` and a
/// contiguous `w` on the same backend; returns the `[.., K]` result.
fn backend_gw<S: BackendStorage>(g: &S, gl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let dims = gl.dims();
    let n = dims[dims.len() - 1];
    let (wn, k) = wl.shape().dims2()?;
    if wn != n {
        bail!("frozen_linear backward: gradient has {n} features, weight has {wn} rows");
    }
    let Some((start, _)) = gl.contiguous_offsets() else {
        bail!("frozen_linear backward: gradient must be contiguous");
    };
    if !wl.is_contiguous() {
        bail!("frozen_linear backward: weight must be contiguous");
    }
    let m = gl.shape().elem_count() / n.max(1);
    let lhs = Layout::contiguous_with_offset((m, n), start);
    let out = g.matmul(w, (1, m, k, n), &lhs, wl)?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = k;
    Ok((out, Shape::from(shape)))
}

impl CustomOp1 for FrozenLinearBackward {
    fn name(&self) -> &'static str {
        "frozen-linear-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !matches!(s, CpuStorage::F32(_)) {
            let (ws, wl) = self.w.storage_and_layout();
            return match &*ws {
                Storage::Cpu(w) => backend_gw(s, l, w, wl),
                _ => bail!("frozen_linear backward: the weight is not on the CPU"),
            };
        }
        let g = slice(s, l)?;
        let (n, k) = self.w.dims2()?;
        let dims = l.dims();
        if dims[dims.len() - 1] != n {
            bail!(
                "frozen_linear backward: gradient has {} features, weight has {n} rows",
                dims[dims.len() - 1]
            );
        }
        let dx = with_weight(&self.w, &self.low, |w| {
            Ok(input_grad(g, w, g.len() / n.max(1), k, n))
        })?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = k;
        Ok((CpuStorage::F32(dx), Shape::from(shape)))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (ws, wl) = self.w.storage_and_layout();
        match &*ws {
            Storage::Cuda(w) => backend_gw(s, l, w, wl),
            _ => bail!("frozen_linear backward: the weight is not on the CUDA device"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::{frozen_linear, OpsImpl};
    use candle_core::{DType, Device, Tensor, Var};

    /// On a low-precision copy of the weight (candle's products, as on CUDA), the op's
    /// forward and its backward op (the backend's matmul, `backend_xwt` / `backend_gw`) give
    /// the composed layer's output and input gradient.
    #[test]
    fn the_op_on_a_bf16_copy_matches_the_composed_layer() {
        let dev = Device::Cpu;
        let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        let x =
            Var::from_tensor(&Tensor::from_vec(wave(2 * 3 * 8, 0.37), (2, 3, 8), &dev).unwrap())
                .unwrap();
        let w = Tensor::from_vec(wave(5 * 8, 0.91), (5, 8), &dev).unwrap();
        let w = w.to_dtype(DType::BF16).unwrap();
        let b = Tensor::from_vec(wave(5, 1.3), 5, &dev).unwrap();
        let r = Tensor::from_vec(wave(2 * 3 * 5, 0.53), (2, 3, 5), &dev).unwrap();
        let run = |imp: OpsImpl| {
            let y = frozen_linear(x.as_tensor(), &w, Some(&b), imp).unwrap();
            assert_eq!((y.dtype(), y.dims()), (DType::F32, &[2, 3, 5][..]));
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = g.get(x.as_tensor()).expect("an input gradient").clone();
            assert_eq!(dx.dtype(), DType::F32);
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                dx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (yf, gf) = run(OpsImpl::Fused);
        let (yc, gc) = run(OpsImpl::Composed);
        for (a, b) in yf.iter().zip(&yc).chain(gf.iter().zip(&gc)) {
            assert!((a - b).abs() <= 1e-2 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert!(gf.iter().any(|&v| v != 0.0));
    }
}
