//! AdamW exactly as PyTorch's `torch.optim.AdamW` (non-amsgrad, non-fused):
//! decoupled weight decay `p -= lr * wd * p` applied before the Adam update, bias
//! correction with `step_size = lr / (1 - b1^t)` and `denom = sqrt(v) / sqrt(1 - b2^t) + eps`.
//! Weight decay is applied only to parameters of rank >= 2 (weights, not biases),
//! matching timm's `param_groups_weight_decay`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (the learning rate is passed to each [`AdamW::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Exponential decay of the first moment (PyTorch default 0.9).
    pub beta1: f64,
    /// Exponential decay of the second moment (PyTorch default 0.999).
    pub beta2: f64,
    /// Term added to the denominator (PyTorch default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay, applied to rank >= 2 parameters only (timm default 0.05).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges PyTorch checks (betas in [0, 1), eps >= 0, weight_decay >= 0).
    pub fn validate(&self) -> Result<()> {
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("AdamW {name} must be in [0, 1), got {b}");
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            bail!("AdamW eps must be a finite number >= 0, got {}", self.eps);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!(
                "AdamW weight_decay must be a finite number >= 0, got {}",
                self.weight_decay
            );
        }
        Ok(())
    }
}

struct ParamState {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

/// AdamW over a named list of parameters.
pub struct AdamW {
    params: Vec<ParamState>,
    cfg: AdamWConfig,
    step: u64,
    allow_missing_grads: bool,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("cfg", &self.cfg)
            .field("step", &self.step)
            .field(
                "params",
                &self
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Key of the step counter in [`AdamW::state`].
const STEP_KEY: &str = "step";

fn exp_avg_key(name: &str) -> String {
    format!("exp_avg.{name}")
}
fn exp_avg_sq_key(name: &str) -> String {
    format!("exp_avg_sq.{name}")
}

impl AdamW {
    /// Creates the optimiser; moment buffers start at zero. Names must be unique.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<AdamW> {
        cfg.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        let mut states = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !seen.insert(name.clone()) {
                bail!("AdamW: parameter name {name:?} given twice");
            }
            if !var.dtype().is_float() {
                bail!(
                    "AdamW: parameter {name} has non-float dtype {:?}",
                    var.dtype()
                );
            }
            let zeros = var.as_tensor().zeros_like()?;
            states.push(ParamState {
                decay: var.rank() >= 2,
                name,
                exp_avg: zeros.clone(),
                exp_avg_sq: zeros,
                var,
            });
        }
        Ok(AdamW {
            params: states,
            cfg,
            step: 0,
            allow_missing_grads: false,
        })
    }

    /// When set, parameters without a gradient in the store are skipped (left
    /// unchanged, moments untouched) instead of being an error.
    pub fn allow_missing_grads(mut self, allow: bool) -> Self {
        self.allow_missing_grads = allow;
        self
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of steps taken so far (restored by [`AdamW::load_state`]).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One AdamW update of every parameter with learning rate `lr`.
    ///
    /// Errors (before changing anything) list every parameter with no gradient
    /// in `grads`, unless [`AdamW::allow_missing_grads`] was set.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            bail!("AdamW: learning rate must be a finite number >= 0, got {lr}");
        }
        let missing: Vec<&str> = self
            .params
            .iter()
            .filter(|p| grads.get(p.var.as_tensor()).is_none())
            .map(|p| p.name.as_str())
            .collect();
        if !missing.is_empty() && !self.allow_missing_grads {
            bail!(
                "AdamW: no gradient for {} parameter(s): {} (is the parameter used in the loss?)",
                missing.len(),
                missing.join(", ")
            );
        }
        self.step += 1;
        let t = self.step as i32;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        for p in self.params.iter_mut() {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let grad = grad.to_dtype(p.var.dtype())?;
            if grad.shape() != p.var.shape() {
                bail!(
                    "AdamW: gradient of {} has shape {:?}, parameter has {:?}",
                    p.name,
                    grad.dims(),
                    p.var.dims()
                );
            }
            let mut value = p.var.as_tensor().detach();
            if p.decay && weight_decay != 0.0 {
                value = value.affine(1.0 - lr * weight_decay, 0.0)?;
            }
            p.exp_avg = ((&p.exp_avg * beta1)? + (&grad * (1.0 - beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let denom = ((p.exp_avg_sq.sqrt()? / bias_correction2_sqrt)? + eps)?;
            let update = (p.exp_avg.div(&denom)? * step_size)?;
            p.var.set(&(value - update)?)?;
        }
        Ok(())
    }

    /// Optimiser state for resume: `exp_avg.<name>` and `exp_avg_sq.<name>` per
    /// parameter, plus `step` (a `[1]` f64 tensor holding the step count).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            out.insert(exp_avg_key(&p.name), p.exp_avg.clone());
            out.insert(exp_avg_sq_key(&p.name), p.exp_avg_sq.clone());
        }
        let step = Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)
            .expect("a 1-element CPU tensor");
        out.insert(STEP_KEY.to_string(), step);
        out
    }

    /// Restores a state saved by [`AdamW::state`]. Every problem (missing,
    /// unexpected or mis-shaped entries) is listed in one error and nothing is
    /// changed in that case.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut problems = Vec::new();
        let mut expected = std::collections::BTreeSet::new();
        expected.insert(STEP_KEY.to_string());
        let mut new_moments = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut pair = Vec::with_capacity(2);
            for key in [exp_avg_key(&p.name), exp_avg_sq_key(&p.name)] {
                match state.get(&key) {
                    None => problems.push(format!("missing {key} (shape {:?})", p.var.dims())),
                    Some(t) if t.dims() != p.var.dims() => problems.push(format!(
                        "{key} has shape {:?}, parameter {} has {:?}",
                        t.dims(),
                        p.name,
                        p.var.dims()
                    )),
                    Some(t) => pair.push(
                        t.to_dtype(p.var.dtype())?
                            .to_device(p.var.device())
                            .with_context(|| format!("moving {key} to the parameter's device"))?,
                    ),
                }
                expected.insert(key);
            }
            new_moments.push(pair);
        }
        for key in state.keys().filter(|k| !expected.contains(*k)) {
            problems.push(format!("unexpected {key}"));
        }
        let step = match state.get(STEP_KEY) {
            None => {
                problems.push(format!("missing {STEP_KEY}"));
                0
            }
            Some(t) => match t
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_vec1::<f64>())
            {
                Ok(v) if v.len() == 1 && v[0] >= 0.0 && v[0].fract() == 0.0 && v[0] < 1e15 => {
                    v[0] as u64
                }
                _ => {
                    problems.push(format!(
                        "{STEP_KEY} must hold one non-negative integer, got shape {:?}",
                        t.dims()
                    ));
                    0
                }
            },
        };
        if !problems.is_empty() {
            bail!(
                "AdamW state does not match the parameters ({} problem(s)):\n  {}",
                problems.len(),
                problems.join("\n  ")
            );
        }
        for (p, mut pair) in self.params.iter_mut().zip(new_moments) {
            p.exp_avg_sq = pair.pop().expect("two moments per parameter");
            p.exp_avg = pair.pop().expect("two moments per parameter");
        }
        self.step = step;
        Ok(())
    }
}
