//! Training losses (cross-entropy, KD-KL, MSE on logits) and top-k accuracy.
//!
//! Every loss is built from differentiable candle ops only (no `softmax_last_dim`,
//! which has no backward pass), so gradients flow into BOTH arguments: iDAT's
//! distillation term trains the student and the teacher (nothing is detached).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};

/// Checks that `t` is a `[B, C]` matrix of floats and returns `(B, C)`.
fn batch_classes(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    let (b, c) = t.dims2().with_context(|| {
        format!(
            "{what}: expected logits of shape [batch, classes], got {:?}",
            t.dims()
        )
    })?;
    if b == 0 || c == 0 {
        bail!("{what}: logits must be non-empty, got shape [{b}, {c}]");
    }
    if !t.dtype().is_float() {
        bail!("{what}: logits must be floating point, got {:?}", t.dtype());
    }
    Ok((b, c))
}

/// Numerically stable `log_softmax` over the last dimension of a `[B, C]` tensor.
///
/// `log p = (z - m) - log(sum(exp(z - m)))` with `m` the detached row maximum: the
/// gradient of the result does not depend on `m`, so detaching it is exact and
/// avoids ties in the max's gradient.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Mean cross-entropy of `logits` `[B, C]` (float) against integer `labels` `[B]` (u32).
///
/// Errors name the problem when shapes disagree or a label is not below `C`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, c) = batch_classes(logits, "cross_entropy")?;
    let labels = check_labels(labels, b, c, "cross_entropy")?;
    let logp = log_softmax(logits)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?; // [B, 1]
    Ok(picked.mean_all()?.neg()?)
}

/// Validates `labels` as `[B]` integers below `c` and returns them as a u32 tensor.
fn check_labels(labels: &Tensor, b: usize, c: usize, what: &str) -> Result<Tensor> {
    let n = labels.dims1().with_context(|| {
        format!(
            "{what}: expected labels of shape [{b}], got {:?}",
            labels.dims()
        )
    })?;
    if n != b {
        bail!("{what}: {n} labels for a batch of {b} logits rows");
    }
    let labels = match labels.dtype() {
        DType::U32 => labels.clone(),
        DType::U8 | DType::I64 => labels.to_dtype(DType::U32)?,
        other => bail!("{what}: labels must be integers (u32), got {other:?}"),
    };
    let values = labels.to_vec1::<u32>()?;
    if let Some((i, &l)) = values.iter().enumerate().find(|(_, &l)| l as usize >= c) {
        bail!("{what}: label {l} at batch index {i} is out of range for {c} classes");
    }
    Ok(labels)
}

/// Knowledge-distillation KL divergence `KL(p_t || p_s)` with `p = softmax(z / T)`:
/// `sum_c p_t (log p_t - log p_s)`, averaged over the batch (PyTorch `batchmean`),
/// multiplied by `T^2` when `t2_factor` is set. Differentiable w.r.t. both inputs.
pub fn kd_kl(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    t2_factor: bool,
) -> Result<Tensor> {
    let (b, c) = batch_classes(student, "kd_kl student")?;
    let tc = batch_classes(teacher, "kd_kl teacher")?;
    if (b, c) != tc {
        bail!(
            "kd_kl: student logits {:?} and teacher logits {:?} differ in shape",
            student.dims(),
            teacher.dims()
        );
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("kd_kl: temperature must be a positive finite number, got {temperature}");
    }
    let inv_t = 1.0 / temperature;
    let logp_s = log_softmax(&student.affine(inv_t, 0.0)?)?;
    let logp_t = log_softmax(&teacher.affine(inv_t, 0.0)?)?;
    let p_t = logp_t.exp()?;
    let kl = (p_t * (logp_t - logp_s)?)?.sum_all()?;
    let scale = if t2_factor {
        temperature * temperature
    } else {
        1.0
    } / b as f64;
    Ok(kl.affine(scale, 0.0)?)
}

/// Mean over `B x C` of `(student - teacher)^2` on raw logits (PyTorch `mse_loss`).
pub fn mse_logits(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let s = batch_classes(student, "mse_logits student")?;
    let t = batch_classes(teacher, "mse_logits teacher")?;
    if s != t {
        bail!(
            "mse_logits: student logits {:?} and teacher logits {:?} differ in shape",
            student.dims(),
            teacher.dims()
        );
    }
    Ok((student - teacher)?.sqr()?.mean_all()?)
}

/// Number of rows whose label is among the `k` largest logits (ties broken by
/// lower class index first, like a stable descending sort). `k` larger than the
/// number of classes counts every row (as timm's `accuracy` clamps `k`).
/// Errors: a non-finite logit in any row (it would otherwise rank as a hit).
pub fn accuracy_topk(logits: &Tensor, labels: &Tensor, k: usize) -> Result<usize> {
    if k == 0 {
        bail!("accuracy_topk: k must be at least 1");
    }
    let (b, c) = batch_classes(logits, "accuracy_topk")?;
    let labels = check_labels(labels, b, c, "accuracy_topk")?.to_vec1::<u32>()?;
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let k = k.min(c);
    let mut correct = 0;
    for (i, (row, &label)) in rows.iter().zip(&labels).enumerate() {
        // NaN compares false with everything, so it would rank first: never a prediction.
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!(
                "accuracy_topk: row {i} holds a non-finite logit ({}) at class {j}",
                row[j]
            );
        }
        let target = row[label as usize];
        // Rank of the label: classes strictly larger, or equal with a lower index.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > target || (v == target && j < label as usize))
            .count();
        if rank < k {
            correct += 1;
        }
    }
    Ok(correct)
}
