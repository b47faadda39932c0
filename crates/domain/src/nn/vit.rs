//! timm-exact pre-norm Vision Transformer of any size (`timm.models.vision_transformer.
//! VisionTransformer` with class-token pooling), hosting every adapter method of
//! [`crate::nn::adapters`].
//!
//! Block: `h = x + DropPath(Attn(LN1 x))`, `y = h + DropPath(MLP(LN2 h))`, LayerNorm eps
//! 1e-6, exact GELU, learned position embedding sized from the config (resampling a
//! checkpoint's grid is `nn::checkpoint::resample_pos_embed`'s job), final LayerNorm, CLS
//! pooling, new linear head. Dropout sites as timm: after the position embedding, on the
//! attention matrix (`attn_drop_rate`), after `attn.proj`, after `mlp.fc1`'s activation and
//! after `mlp.fc2`, before the head (all `drop_rate` except the attention one). Drop-path
//! rate of block i is `drop_path_rate * i / (depth - 1)`.
//!
//! The patch embedding (a Conv2d with kernel = stride = patch) is computed as the
//! equivalent unfold + matmul with the timm weight `[D, C, p, p]` viewed as `[D, C*p*p]`.

use crate::nn::adapters::{AdapterConfig, AdapterMethod};
use crate::nn::init::{self, Init};
use crate::nn::masks::Masks;
use crate::nn::ops::{self, Half, OpsImpl, Tokens};
use crate::nn::params::{Param, ParamStore};
use crate::nn::precision::Precision;
use candle_core::{bail, DType, Device, IndexOp, Result, Tensor, Var};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// LayerNorm epsilon of timm's ViT.
pub const LN_EPS: f64 = 1e-6;

fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_true() -> bool {
    true
}

/// Architecture of a ViT (timm `VisionTransformer` arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Input image side in pixels (square images).
    pub img_size: usize,
    /// Patch side in pixels; must divide `img_size`.
    pub patch_size: usize,
    /// Input channels (3 for RGB).
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Classes of the (new) classification head.
    pub num_classes: usize,
    /// Token width D.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `embed_dim`.
    pub num_heads: usize,
    /// MLP hidden width = `embed_dim * mlp_ratio` (truncated).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Whether `attn.qkv` has a bias.
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Dropout rate (pos, proj, mlp, head).
    #[serde(default)]
    pub drop_rate: f64,
    /// Dropout rate on the attention matrix.
    #[serde(default)]
    pub attn_drop_rate: f64,
    /// Maximum stochastic-depth rate (last block).
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl VitConfig {
    /// timm presets `vit_{tiny,small,base,large}_patch16_224` (1000 classes; set
    /// `num_classes` for the task).
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let (dim, depth, heads) = match name {
            "vit_tiny_patch16_224" => (192, 12, 3),
            "vit_small_patch16_224" => (384, 12, 6),
            "vit_base_patch16_224" => (768, 12, 12),
            "vit_large_patch16_224" => (1024, 24, 16),
            other => anyhow::bail!(
                "unknown ViT preset `{other}`: expected one of vit_tiny_patch16_224, \
                 vit_small_patch16_224, vit_base_patch16_224, vit_large_patch16_224"
            ),
        };
        Ok(VitConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            embed_dim: dim,
            depth,
            num_heads: heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
        })
    }

    /// Checks the fields, naming every invalid one.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs = Vec::new();
        for (field, v) in [
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("num_classes", self.num_classes),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                errs.push(format!("`{field}` must be > 0"));
            }
        }
        if self.patch_size > 0 && !self.img_size.is_multiple_of(self.patch_size) {
            errs.push(format!(
                "`patch_size` {} must divide `img_size` {}",
                self.patch_size, self.img_size
            ));
        }
        if self.num_heads > 0 && !self.embed_dim.is_multiple_of(self.num_heads) {
            errs.push(format!(
                "`num_heads` {} must divide `embed_dim` {}",
                self.num_heads, self.embed_dim
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_hidden() > 0) {
            errs.push(format!("`mlp_ratio` must be > 0 (got {})", self.mlp_ratio));
        }
        for (field, v) in [
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&v) {
                errs.push(format!("`{field}` must be in [0, 1) (got {v})"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid ViT config: {}", errs.join("; "))
        }
    }

    /// MLP hidden width.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens including the class token: `1 + grid²`.
    pub fn num_tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    /// Drop-path rate of block `i`: `drop_path_rate * i / (depth - 1)`.
    pub fn drop_path_at(&self, i: usize) -> f64 {
        if self.depth <= 1 {
            0.0
        } else {
            self.drop_path_rate * i as f64 / (self.depth - 1) as f64
        }
    }

    /// Every backbone tensor in timm naming with its shape, head included.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, h, p, c) = (
            self.embed_dim,
            self.mlp_hidden(),
            self.patch_size,
            self.in_chans,
        );
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("cls_token".into(), vec![1, 1, d]),
            ("pos_embed".into(), vec![1, self.num_tokens(), d]),
            ("patch_embed.proj.weight".into(), vec![d, c, p, p]),
            ("patch_embed.proj.bias".into(), vec![d]),
        ];
        for i in 0..self.depth {
            let b = format!("blocks.{i}");
            v.push((format!("{b}.norm1.weight"), vec![d]));
            v.push((format!("{b}.norm1.bias"), vec![d]));
            v.push((format!("{b}.attn.qkv.weight"), vec![3 * d, d]));
            if self.qkv_bias {
                v.push((format!("{b}.attn.qkv.bias"), vec![3 * d]));
            }
            v.push((format!("{b}.attn.proj.weight"), vec![d, d]));
            v.push((format!("{b}.attn.proj.bias"), vec![d]));
            v.push((format!("{b}.norm2.weight"), vec![d]));
            v.push((format!("{b}.norm2.bias"), vec![d]));
            v.push((format!("{b}.mlp.fc1.weight"), vec![h, d]));
            v.push((format!("{b}.mlp.fc1.bias"), vec![h]));
            v.push((format!("{b}.mlp.fc2.weight"), vec![d, h]));
            v.push((format!("{b}.mlp.fc2.bias"), vec![d]));
        }
        v.push(("norm.weight".into(), vec![d]));
        v.push(("norm.bias".into(), vec![d]));
        v.push(("head.weight".into(), vec![self.num_classes, d]));
        v.push(("head.bias".into(), vec![self.num_classes]));
        v
    }

    /// Number of backbone parameters (head excluded).
    pub fn backbone_params(&self) -> usize {
        self.expected_tensors()
            .iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// Forward-pass mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No dropout / drop path.
    Eval,
    /// Dropout and drop path active, masks drawn deterministically from `seed`.
    Train {
        /// Seed of this forward pass's masks.
        seed: u64,
    },
}

/// State of one forward pass handed to the adapter hooks.
pub(crate) struct Fwd<'a> {
    pub p: &'a ParamStore,
    pub ops: OpsImpl,
    pub masks: Masks,
    /// Low-precision copies of frozen matrix weights (bf16 mixed precision; else empty).
    pub low: &'a BTreeMap<String, Tensor>,
    /// The dtype of those copies, where products run through candle's ops in it (CUDA,
    /// and the composed reference ops on CPU); `None` otherwise.
    pub low_dtype: Option<DType>,
    /// CPU bf16 mixed precision through the fused ops: the kernel of their bf16 products.
    pub cpu_bf16: Option<ops::Bf16Kernel>,
}

impl Fwd<'_> {
    /// Linear layer `prefix.weight` / `prefix.bias` (bias optional): frozen weights go
    /// through [`ops::frozen_linear`], trainable ones through the differentiable matmul.
    pub fn linear(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let wname = format!("{prefix}.weight");
        let bname = format!("{prefix}.bias");
        let w = self.p.get(&wname)?;
        let b = self.p.get_opt(&bname);
        let b_trainable = self.p.is_trainable(&bname);
        if self.p.is_trainable(&wname) {
            return ops::linear(x, w, b);
        }
        let y = self.frozen_linear(x, &wname, w, if b_trainable { None } else { b })?;
        match (b, b_trainable) {
            (Some(b), true) => y.broadcast_add(b),
            _ => Ok(y),
        }
    }

    /// The frozen linear `x w^T (+ b)` of the weight named `wname` in this pass's precision:
    /// on its bf16 copy through the CPU kernel or candle's bf16 ops, else in f32.
    fn frozen_linear(
        &self,
        x: &Tensor,
        wname: &str,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<Tensor> {
        match (self.low.get(wname), self.cpu_bf16) {
            (Some(wl), Some(k)) => ops::frozen_linear_bf16(x, w, wl, k, b, self.ops),
            (Some(wl), None) => ops::frozen_linear(x, wl, b, self.ops),
            (None, _) => ops::frozen_linear(x, w, b, self.ops),
        }
    }

    /// LayerNorm `prefix.weight` / `prefix.bias`.
    pub fn layer_norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let w = self.p.get(&format!("{prefix}.weight"))?;
        let b = self.p.get(&format!("{prefix}.bias"))?;
        ops::layer_norm(x, w, b, LN_EPS, self.ops)
    }
}

/// How `precision: bf16` runs on a model ([`Vit::bf16_products`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Bf16Products {
    /// f32 precision: no bf16 products.
    Off,
    /// candle's bf16 ops on bf16 weight copies (CUDA).
    Candle,
    /// CPU: the fused ops' products on bf16 inputs with f32 accumulation through this
    /// kernel (the composed reference ops use candle's bf16 ops).
    Cpu(ops::Bf16Kernel),
    /// CPU without a usable bf16 kernel (the reason): every product stays f32.
    CpuFallback(String),
}

impl std::fmt::Display for Bf16Products {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bf16Products::Off => write!(f, "f32 products"),
            Bf16Products::Candle => write!(f, "bf16 products through candle's bf16 ops"),
            Bf16Products::Cpu(k) => write!(f, "bf16 products (f32 accumulation) through {k}"),
            Bf16Products::CpuFallback(why) => {
                write!(f, "f32 products: no bf16 kernel on this machine ({why})")
            }
        }
    }
}

/// A ViT with one adapter method; see the module docs and [`crate::nn::adapters`].
pub struct Vit {
    cfg: VitConfig,
    adapter: AdapterConfig,
    /// The method behind `adapter`: its hooks and the block halves they reach into.
    method: Box<dyn AdapterMethod>,
    params: ParamStore,
    ops: OpsImpl,
    precision: Precision,
    /// Low-precision copies of the frozen matrix weights (see [`Vit::set_precision`]).
    low: BTreeMap<String, Tensor>,
    /// How the bf16 precision runs here (`Off` for f32).
    bf16: Bf16Products,
    /// Whether the last block computes only the class token's output (see
    /// [`Vit::set_last_block_cls_only`]).
    last_block_cls_only: bool,
}

impl Vit {
    /// Builds the model from frozen timm-named `backbone` weights (any `head.*` entries are
    /// discarded; a new head is initialised trunc-normal(0.02) / zero from `seed`) and
    /// creates the adapter's parameters from `seed`. Every missing, unexpected or
    /// wrongly-shaped backbone tensor is reported in one error.
    pub fn new(
        cfg: &VitConfig,
        adapter: &AdapterConfig,
        backbone: BTreeMap<String, Tensor>,
        device: &Device,
        seed: u64,
    ) -> anyhow::Result<Vit> {
        cfg.validate()?;
        adapter.validate(cfg)?;
        let expected: BTreeMap<String, Vec<usize>> = cfg
            .expected_tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .collect();
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match backbone.get(name) {
                None => problems.push(format!("missing `{name}` (expected shape {shape:?})")),
                Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )),
                Some(_) => {}
            }
        }
        for name in backbone.keys() {
            if !expected.contains_key(name) && !name.starts_with("head.") {
                problems.push(format!("unexpected tensor `{name}`"));
            }
        }
        if !problems.is_empty() {
            anyhow::bail!(
                "backbone does not match the ViT config (dim {}, depth {}, img {}, patch {}): {}",
                cfg.embed_dim,
                cfg.depth,
                cfg.img_size,
                cfg.patch_size,
                problems.join("; ")
            );
        }
        let mut params = ParamStore::default();
        for (name, t) in backbone {
            if expected.contains_key(&name) {
                let t = t.to_device(device)?.to_dtype(DType::F32)?.contiguous()?;
                params.insert_frozen(name, t);
            }
        }
        let d = cfg.embed_dim;
        let head_w = init::tensor(
            Init::TruncNormal { std: 0.02 },
            &[cfg.num_classes, d],
            seed,
            "head.weight",
            device,
        )?;
        params.insert_trainable("head.weight", &head_w)?;
        params.insert_trainable(
            "head.bias",
            &Tensor::zeros(cfg.num_classes, DType::F32, device)?,
        )?;
        let method = adapter.method();
        method.add_params(cfg, &mut params, seed, device)?;
        Ok(Vit {
            cfg: cfg.clone(),
            adapter: adapter.clone(),
            method,
            params,
            ops: OpsImpl::default(),
            precision: Precision::F32,
            low: BTreeMap::new(),
            bf16: Bf16Products::Off,
            last_block_cls_only: true,
        })
    }

    /// Random backbone with timm's default init (`trunc_normal(0.02)` linear weights and
    /// pos_embed, zero linear biases, `normal(1e-6)` cls token, unit/zero LayerNorms,
    /// PyTorch-default Conv2d init for the patch embedding). No head.
    pub fn random_backbone(
        cfg: &VitConfig,
        device: &Device,
        seed: u64,
    ) -> anyhow::Result<BTreeMap<String, Tensor>> {
        cfg.validate()?;
        let fan_in = cfg.in_chans * cfg.patch_size * cfg.patch_size;
        let mut out = BTreeMap::new();
        for (name, shape) in cfg.expected_tensors() {
            if name.starts_with("head.") {
                continue;
            }
            let init = if name == "cls_token" {
                Init::Normal {
                    mean: 0.0,
                    std: 1e-6,
                }
            } else if name == "pos_embed" {
                Init::TruncNormal { std: 0.02 }
            } else if name.starts_with("patch_embed.") {
                Init::KaimingUniformSqrt5 { fan_in }
            } else if name.contains("norm") {
                if name.ends_with(".weight") {
                    Init::Ones
                } else {
                    Init::Zeros
                }
            } else if name.ends_with(".weight") {
                Init::TruncNormal { std: 0.02 }
            } else {
                Init::Zeros
            };
            out.insert(
                name.clone(),
                init::tensor(init, &shape, seed, &name, device)?,
            );
        }
        Ok(out)
    }

    /// The architecture.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// The adapter method.
    pub fn adapter(&self) -> &AdapterConfig {
        &self.adapter
    }

    /// Selects fused or composed elementary ops (default fused).
    pub fn set_ops_impl(&mut self, ops: OpsImpl) {
        self.ops = ops;
    }

    /// On by default: the last block computes only the class token's output, the one row
    /// the CLS-pooled head reads. Its queries, attention projection, MLP and adapters then
    /// run on one token per sample instead of N (about three quarters of the block's
    /// products, forward and backward); its keys and values still come from every token,
    /// so logits and gradients are those of the full block. Off computes every token, as
    /// timm does (tests compare the two; `idat-pipe bench --full-last-block` times it).
    pub fn set_last_block_cls_only(&mut self, on: bool) {
        self.last_block_cls_only = on;
    }

    /// Selects f32 or bf16 mixed precision for the forward / backward pass (default f32).
    /// bf16 keeps bf16 copies of the frozen matrix weights (patch embedding, qkv, proj,
    /// fc1, fc2) beside the f32 originals, which stay untouched (exports and checkpoints
    /// are f32); see [`Precision`]. On the CPU the products run through
    /// [`ops::cpu_bf16`]'s kernel; without one (no AVX512-BF16, no `cblas_sbgemm`) the
    /// model keeps f32 products and [`Vit::bf16_products`] says why.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let cpu = self.params.get("cls_token")?.device().is_cpu();
        let kernel = (cpu && precision == Precision::Bf16).then(ops::cpu_bf16);
        self.set_precision_with(precision, kernel)
    }

    /// [`Vit::set_precision`] with the CPU bf16 kernel given: `Some(Ok(kernel))` uses it,
    /// `Some(Err(why))` falls back to f32 products, `None` means not on the CPU (candle's
    /// bf16 ops). Tests pass [`ops::Bf16Kernel::Emulated`] to check the CPU bf16 path on
    /// any machine.
    pub fn set_precision_with(
        &mut self,
        precision: Precision,
        cpu_kernel: Option<std::result::Result<ops::Bf16Kernel, String>>,
    ) -> Result<()> {
        let bf16 = match (precision, cpu_kernel) {
            (Precision::F32, _) => Bf16Products::Off,
            (Precision::Bf16, None) => Bf16Products::Candle,
            (Precision::Bf16, Some(Ok(k))) => Bf16Products::Cpu(k),
            (Precision::Bf16, Some(Err(why))) => Bf16Products::CpuFallback(why),
        };
        let mut low = BTreeMap::new();
        if let (Some(dt), Bf16Products::Candle | Bf16Products::Cpu(_)) =
            (precision.low_dtype(), &bf16)
        {
            let c = &self.cfg;
            for (name, p) in self.params.iter() {
                let Param::Frozen(t) = p else { continue };
                let t = if name == "patch_embed.proj.weight" {
                    t.reshape((c.embed_dim, c.in_chans * c.patch_size * c.patch_size))?
                } else if name.starts_with("blocks.")
                    && name.ends_with(".weight")
                    && (name.contains(".attn.") || name.contains(".mlp."))
                    && t.rank() == 2
                {
                    t.clone()
                } else {
                    continue;
                };
                low.insert(name.clone(), t.to_dtype(dt)?.contiguous()?);
            }
        }
        self.low = low;
        self.precision = precision;
        self.bf16 = bf16;
        Ok(())
    }

    /// How the products of this model run under its precision (see [`Bf16Products`]).
    pub fn bf16_products(&self) -> &Bf16Products {
        &self.bf16
    }

    /// The precision set by [`Vit::set_precision`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Trainable variables sorted by name (adapter, head, and backbone tensors the method
    /// unfreezes).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.params.trainable()
    }

    /// Total number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Names and values of the frozen parameters.
    pub fn frozen(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .filter_map(|(n, p)| match p {
                Param::Frozen(t) => Some((n.clone(), t.clone())),
                Param::Trainable(_) => None,
            })
            .collect()
    }

    /// Sets every trainable tensor (e.g. on resume). The map must hold exactly the
    /// trainable names with their shapes; all mismatches are reported together.
    pub fn set_trainable(&self, values: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        let vars: BTreeMap<String, Var> = self.trainable().into_iter().collect();
        let mut problems = Vec::new();
        for (name, var) in &vars {
            match values.get(name) {
                None => problems.push(format!("missing `{name}`")),
                Some(t) if t.dims() != var.dims() => problems.push(format!(
                    "`{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )),
                Some(_) => {}
            }
        }
        for name in values.keys() {
            if !vars.contains_key(name) {
                problems.push(format!("`{name}` is not a trainable tensor of this model"));
            }
        }
        if !problems.is_empty() {
            anyhow::bail!("cannot set trainable tensors: {}", problems.join("; "));
        }
        for (name, var) in &vars {
            let t = values[name]
                .to_device(var.device())?
                .to_dtype(var.dtype())?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// Current timm-named backbone + head weights (e.g. to save a pretrained checkpoint).
    pub fn export_backbone(&self) -> BTreeMap<String, Tensor> {
        self.cfg
            .expected_tensors()
            .into_iter()
            .filter_map(|(n, _)| self.params.get_opt(&n).map(|t| (n, t.copy())))
            .filter_map(|(n, t)| t.ok().map(|t| (n, t)))
            .collect()
    }

    /// Logits `[B, num_classes]` for images `x [B, in_chans, img, img]` (f32).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut f = self.fwd(mode);
        let feat = self.features(x, &mut f)?;
        let feat = f.masks.dropout(&feat, self.cfg.drop_rate)?;
        f.linear(&feat, "head")
    }

    /// The CLS feature `[B, embed_dim]` after the final norm (what the head sees).
    pub fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut f = self.fwd(mode);
        self.features(x, &mut f)
    }

    fn fwd(&self, mode: Mode) -> Fwd<'_> {
        let masks = match mode {
            Mode::Eval => Masks::eval(),
            Mode::Train { seed } => Masks::train(seed),
        };
        // The fused CPU ops take the kernel; the composed reference ops and CUDA run
        // candle's bf16 ops; the CPU fallback runs f32.
        let (low_dtype, cpu_bf16) = match &self.bf16 {
            Bf16Products::Cpu(k) if self.ops == OpsImpl::Fused => (None, Some(*k)),
            Bf16Products::Cpu(_) | Bf16Products::Candle => (self.precision.low_dtype(), None),
            Bf16Products::Off | Bf16Products::CpuFallback(_) => (None, None),
        };
        Fwd {
            p: &self.params,
            ops: self.ops,
            masks,
            low: &self.low,
            low_dtype,
            cpu_bf16,
        }
    }

    fn features(&self, x: &Tensor, f: &mut Fwd) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, ch, h, w) = x.dims4()?;
        if ch != c.in_chans || h != c.img_size || w != c.img_size {
            bail!(
                "ViT input must be [B, {}, {}, {}], got {:?}",
                c.in_chans,
                c.img_size,
                c.img_size,
                x.dims()
            );
        }
        let (p, g, d) = (c.patch_size, c.grid(), c.embed_dim);
        let patches = x
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, ch * p * p))?;
        let pe_w =
            f.p.get("patch_embed.proj.weight")?
                .reshape((d, ch * p * p))?;
        let pe_b = f.p.get("patch_embed.proj.bias")?;
        let pe = "patch_embed.proj.weight";
        let tokens = if f.p.is_trainable(pe) {
            ops::linear(&patches, &pe_w, Some(pe_b))?
        } else if f.p.is_trainable("patch_embed.proj.bias") {
            f.frozen_linear(&patches, pe, &pe_w, None)?
                .broadcast_add(pe_b)?
        } else {
            f.frozen_linear(&patches, pe, &pe_w, Some(pe_b))?
        };
        let tokens = tokens.reshape((b, g * g, d))?;
        let tokens = self.method.at_site(f, "patch_embed", &tokens)?;
        let cls = f.p.get("cls_token")?.broadcast_as((b, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(f.p.get("pos_embed")?)?;
        x = f.masks.dropout(&x, c.drop_rate)?;
        x = self.method.after_embed(f, &x)?;
        for i in 0..c.depth {
            x = self.method.before_block(f, i, &x)?;
            let tokens = if self.last_block_cls_only && i + 1 == c.depth {
                Tokens::Cls
            } else {
                Tokens::All
            };
            x = self.block(i, &x, f, tokens)?;
        }
        let x = f.layer_norm(&x, "norm")?;
        let x = self.method.at_site(f, "norm", &x)?;
        x.i((.., 0))?.contiguous()
    }

    /// The attention branch of block `i` on its normed input `x [B, N, D]`, for the
    /// outputs of `tokens`.
    fn attention(&self, i: usize, x: &Tensor, f: &mut Fwd, tokens: Tokens) -> Result<Tensor> {
        let c = &self.cfg;
        let pre = format!("blocks.{i}.attn");
        let mut qkv = f.linear(x, &format!("{pre}.qkv"))?;
        if let Some(delta) = self.method.qkv_delta(f, i, x)? {
            qkv = (qkv + delta)?;
        }
        let qkv = self.method.at_site(f, &format!("{pre}.qkv"), &qkv)?;
        let o = ops::attention_bf16(
            &qkv,
            c.num_heads,
            c.attn_drop_rate,
            &mut f.masks,
            f.ops,
            f.low_dtype,
            f.cpu_bf16,
            tokens,
        )?;
        let o = f.linear(&o, &format!("{pre}.proj"))?;
        let o = self.method.at_site(f, &format!("{pre}.proj"), &o)?;
        f.masks.dropout(&o, c.drop_rate)
    }

    fn mlp(&self, i: usize, x: &Tensor, f: &mut Fwd) -> Result<Tensor> {
        let pre = format!("blocks.{i}.mlp");
        let hdn = f.linear(x, &format!("{pre}.fc1"))?;
        let hdn = self.method.at_site(f, &format!("{pre}.fc1"), &hdn)?;
        let hdn = ops::gelu(&hdn, f.ops)?;
        let hdn = f.masks.dropout(&hdn, self.cfg.drop_rate)?;
        let o = f.linear(&hdn, &format!("{pre}.fc2"))?;
        let o = self.method.at_site(f, &format!("{pre}.fc2"), &o)?;
        f.masks.dropout(&o, self.cfg.drop_rate)
    }

    /// Whether the attention / MLP half of block `i` runs as one frozen-residual op: fused
    /// CPU f32 ops, f32 precision, no dropout active in this pass, no adapter hook inside
    /// the half and every backbone tensor of the half frozen.
    fn fusable_halves(&self, i: usize, x: &Tensor, f: &Fwd) -> (bool, bool) {
        let c = &self.cfg;
        let dropout = f.masks.training() && (c.drop_rate > 0.0 || c.attn_drop_rate > 0.0);
        if f.ops != OpsImpl::Fused
            || !f.ops.fused_for(ops::FusedOp::FrozenHalf, x)
            || f.low_dtype.is_some()
            || dropout
        {
            return (false, false);
        }
        let frozen = |parts: [&str; 3]| {
            parts.iter().all(|part| {
                ["weight", "bias"]
                    .iter()
                    .all(|t| !f.p.is_trainable(&format!("blocks.{i}.{part}.{t}")))
            })
        };
        let hooked = self.method.halves();
        (
            !hooked.attn && frozen(HALF_ATTN),
            !hooked.mlp && frozen(HALF_MLP),
        )
    }

    /// `x + s * branch(x)` for one half of block `i` as a single frozen op.
    fn frozen_half(
        &self,
        i: usize,
        x: &Tensor,
        f: &mut Fwd,
        parts: [&str; 3],
        half: Half,
    ) -> Result<Tensor> {
        let scale = f
            .masks
            .drop_path_factors(x.dim(0)?, self.cfg.drop_path_at(i));
        let name = |part: &str, t: &str| format!("blocks.{i}.{part}.{t}");
        let get = |part: &str, t: &str| f.p.get(&name(part, t)).cloned();
        let opt = |part: &str| f.p.get_opt(&name(part, "bias")).cloned();
        let w = ops::HalfWeights {
            norm_w: get(parts[0], "weight")?,
            norm_b: get(parts[0], "bias")?,
            w1: get(parts[1], "weight")?,
            b1: opt(parts[1]),
            w2: get(parts[2], "weight")?,
            b2: opt(parts[2]),
            low: match f.cpu_bf16 {
                Some(k) => {
                    let low = |part: &str| {
                        let n = name(part, "weight");
                        f.low.get(&n).cloned().ok_or_else(|| {
                            candle_core::Error::Msg(format!("no bf16 copy of `{n}`"))
                        })
                    };
                    Some((low(parts[1])?, low(parts[2])?, k))
                }
                None => None,
            },
        };
        ops::frozen_residual(x, &w, half, LN_EPS, scale)
    }

    /// Block `i` on `x [B, N, D]`: `[B, N, D]` out, or `[B, 1, D]` (the class token's row)
    /// with [`Tokens::Cls`], where everything after the attention runs on that row only.
    fn block(&self, i: usize, x: &Tensor, f: &mut Fwd, tokens: Tokens) -> Result<Tensor> {
        let dp = self.cfg.drop_path_at(i);
        let a = &self.method;
        let (fuse_attn, fuse_mlp) = self.fusable_halves(i, x, f);
        // The residual stream from here on: every token, or the class token's row.
        let x_out = match tokens {
            Tokens::All => x.clone(),
            Tokens::Cls => x.narrow(1, 0, 1)?,
        };
        let mut h = if fuse_attn {
            let half = Half::Attn {
                heads: self.cfg.num_heads,
                tokens,
            };
            self.frozen_half(i, x, f, HALF_ATTN, half)?
        } else {
            let n1 = f.layer_norm(x, &format!("blocks.{i}.norm1"))?;
            let n1 = a.at_site(f, &format!("blocks.{i}.norm1"), &n1)?;
            let att = self.attention(i, &n1, f, tokens)?;
            (&x_out + f.masks.drop_path(&att, dp)?)?
        };
        if let Some(side) = a.parallel_attn(f, i, &x_out)? {
            h = (h + side)?;
        }
        let mut y = if fuse_mlp {
            self.frozen_half(i, &h, f, HALF_MLP, Half::Mlp)?
        } else {
            let n2 = f.layer_norm(&h, &format!("blocks.{i}.norm2"))?;
            let n2 = a.at_site(f, &format!("blocks.{i}.norm2"), &n2)?;
            let m = self.mlp(i, &n2, f)?;
            let m = f.masks.drop_path(&m, dp)?;
            let m = a.mlp_branch(f, i, &m)?;
            (&h + m)?
        };
        if let Some(side) = a.parallel_mlp(f, i, &h)? {
            y = (y + side)?;
        }
        a.after_block(f, i, &y)
    }
}

/// The LayerNorm and the two linears of a block's attention half and of its MLP half.
const HALF_ATTN: [&str; 3] = ["norm1", "attn.qkv", "attn.proj"];
const HALF_MLP: [&str; 3] = ["norm2", "mlp.fc1", "mlp.fc2"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::adapters::{HoulsbyConfig, LoraConfig, SeqAdapterConfig};

    fn halves(adapter: AdapterConfig, ops: OpsImpl, mode: Mode) -> Vec<(bool, bool)> {
        let cfg = VitConfig {
            img_size: 16,
            patch_size: 8,
            num_classes: 3,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            ..VitConfig::preset("vit_tiny_patch16_224").unwrap()
        };
        let dev = Device::Cpu;
        let backbone = Vit::random_backbone(&cfg, &dev, 0).unwrap();
        let mut vit = Vit::new(&cfg, &adapter, backbone, &dev, 0).unwrap();
        vit.set_ops_impl(ops);
        let x = Tensor::zeros((1, 5, 16), DType::F32, &dev).unwrap();
        let f = vit.fwd(mode);
        (0..cfg.depth)
            .map(|i| vit.fusable_halves(i, &x, &f))
            .collect()
    }

    /// The frozen-block ops run exactly where nothing inside the half is trainable or hooked.
    #[test]
    fn frozen_halves_are_used_only_where_the_half_is_untouched() {
        use AdapterConfig as A;
        let fused = OpsImpl::Fused;
        let train = Mode::Train { seed: 1 };
        let seq = A::SeqAdapter(SeqAdapterConfig::default());
        assert_eq!(halves(seq.clone(), fused, train), vec![(true, true); 2]);
        assert_eq!(halves(A::Linear, fused, Mode::Eval), vec![(true, true); 2]);
        let lora = A::Lora(LoraConfig::default());
        assert_eq!(halves(lora, fused, train), vec![(false, true); 2]);
        let houlsby = A::Houlsby(HoulsbyConfig::default());
        assert_eq!(halves(houlsby, fused, train), vec![(true, false); 2]);
        for a in [A::Ssf, A::Bitfit, A::Full] {
            assert_eq!(halves(a, fused, train), vec![(false, false); 2]);
        }
        for ops in [OpsImpl::Composed, OpsImpl::FusedComposedLinear] {
            assert_eq!(halves(seq.clone(), ops, train), vec![(false, false); 2]);
        }
    }
}
