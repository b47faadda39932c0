//! timm-exact pre-norm Vision Transformer of any size (`timm.models.vision_transformer.
//! VisionTransformer` with class-token pooling), hosting every adapter method of
//! [`crate::adapters`].
//!
//! Block ([`Block`]): `h = x + DropPath(Attn(LN1 x))`, `y = h + DropPath(MLP(LN2 h))`,
//! LayerNorm eps 1e-6, exact GELU, learned position embedding sized from the config
//! (resampling a checkpoint's grid is `nn::checkpoint::resample_pos_embed`'s job), final
//! LayerNorm, CLS pooling, new linear head. Dropout sites as timm: after the position
//! embedding, on the attention matrix (`attn_drop_rate`), after `attn.proj`, after
//! `mlp.fc1`'s activation and after `mlp.fc2`, before the head (all `drop_rate` except the
//! attention one). Drop-path rate of block i is `drop_path_rate * i / (depth - 1)`.
//!
//! The model is built once from the timm-named [`ParamStore`] (`crate::modules`): the
//! typed modules hold their tensors and their implementation, chosen from the ops
//! implementation, the precision and the device ([`Kernels`]); setting either rebuilds them.
//! The adapter method's hooks are built with them ([`AdapterMethod::hooks`]).

mod block;

pub use crate::config::{VitConfig, LN_EPS};
pub use crate::ops::Bf16Products;
pub use block::Block;

use crate::adapters::{AdapterConfig, AdapterMethod};
use crate::init::{self, Init};
use crate::masks::Masks;
use crate::modules::{LayerNorm, Linear, ModelHooks, PatchEmbed};
use crate::ops::{self, Kernels, OpsImpl, Products, Tokens};
use crate::params::{Param, ParamStore};
use crate::precision::Precision;
use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use std::collections::BTreeMap;

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

impl Mode {
    /// The masks of a forward pass in this mode.
    fn masks(self) -> Masks {
        match self {
            Mode::Eval => Masks::eval(),
            Mode::Train { seed } => Masks::train(seed),
        }
    }
}

/// A ViT with one adapter method; see the module docs and [`crate::adapters`].
pub struct Vit {
    cfg: VitConfig,
    adapter: AdapterConfig,
    /// The method behind `adapter`: its parameters and hooks.
    method: Box<dyn AdapterMethod>,
    /// Every parameter under its timm name: loading, saving, the optimiser and export go
    /// through it; the modules below hold its tensors.
    params: ParamStore,
    ops: OpsImpl,
    precision: Precision,
    /// How the bf16 precision resolved here (`Off` for f32).
    bf16: Bf16Products,
    /// Whether the last block computes only the class token's output (see
    /// [`Vit::set_last_block_cls_only`]).
    last_block_cls_only: bool,
    /// The modules, built from the above by [`Modules::build`].
    modules: Modules,
}

/// The typed modules of a [`Vit`], built once from its parameters.
struct Modules {
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    /// The method's hooks outside the blocks.
    hooks: ModelHooks,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl Modules {
    /// The modules of `cfg` from `params` with the hooks of `method`, built with `kernels`.
    fn build(
        cfg: &VitConfig,
        params: &ParamStore,
        method: &dyn AdapterMethod,
        kernels: &Kernels,
    ) -> Result<Modules> {
        let hooks = method.hooks(cfg, params, kernels)?;
        if hooks.blocks.len() != cfg.depth {
            candle_core::bail!(
                "adapter `{}` built hooks for {} blocks, the model has {}",
                method.name(),
                hooks.blocks.len(),
                cfg.depth
            );
        }
        let blocks = hooks
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, h)| Block::new(params, cfg, i, kernels, h))
            .collect::<Result<Vec<_>>>()?;
        Ok(Modules {
            patch_embed: PatchEmbed::new(params, cfg, kernels)?,
            cls_token: params.get("cls_token")?.clone(),
            pos_embed: params.get("pos_embed")?.clone(),
            hooks: hooks.model,
            blocks,
            norm: LayerNorm::new(params, "norm", LN_EPS, kernels)?,
            head: Linear::new(params, "head", kernels, false)?,
        })
    }
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
        let params = backbone_store(cfg, backbone, device)?;
        let mut params = with_new_head(params, cfg, device, seed)?;
        let method = adapter.method();
        method.add_params(cfg, &mut params, seed, device)?;
        let ops = OpsImpl::default();
        let kernels = Kernels {
            ops,
            products: Products::F32,
            device: device.clone(),
        };
        let modules = Modules::build(cfg, &params, &*method, &kernels)?;
        Ok(Vit {
            cfg: cfg.clone(),
            adapter: adapter.clone(),
            method,
            params,
            ops,
            precision: Precision::F32,
            bf16: Bf16Products::Off,
            last_block_cls_only: true,
            modules,
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

    /// The device of the model's tensors.
    pub fn device(&self) -> &Device {
        self.modules.cls_token.device()
    }

    /// Selects fused or composed elementary ops (default fused); the modules are rebuilt
    /// with the new choice.
    pub fn set_ops_impl(&mut self, ops: OpsImpl) {
        self.ops = ops;
        // Rebuilding from the same parameters cannot meet a missing one: `new` built them.
        self.rebuild()
            .expect("rebuilding the modules of a built model");
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
        let cpu = self.device().is_cpu();
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
        self.bf16 = match (precision, cpu_kernel) {
            (Precision::F32, _) => Bf16Products::Off,
            (Precision::Bf16, None) => Bf16Products::Candle,
            (Precision::Bf16, Some(Ok(k))) => Bf16Products::Cpu(k),
            (Precision::Bf16, Some(Err(why))) => Bf16Products::CpuFallback(why),
        };
        self.precision = precision;
        self.rebuild()
    }

    /// What the modules are built with: the ops implementation, the products of the
    /// precision under it, and the device.
    pub fn kernels(&self) -> Kernels {
        Kernels {
            ops: self.ops,
            products: Products::new(&self.bf16, self.ops),
            device: self.device().clone(),
        }
    }

    /// Builds the modules again from the parameters (after the ops or the precision
    /// changed).
    fn rebuild(&mut self) -> Result<()> {
        let kernels = self.kernels();
        self.modules = Modules::build(&self.cfg, &self.params, &*self.method, &kernels)?;
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
        let mut masks = mode.masks();
        let feat = self.features(x, &mut masks)?;
        let feat = masks.dropout(&feat, self.cfg.drop_rate)?;
        self.modules.head.forward(&feat)
    }

    /// The CLS feature `[B, embed_dim]` after the final norm (what the head sees).
    pub fn forward_features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.features(x, &mut mode.masks())
    }

    fn features(&self, x: &Tensor, masks: &mut Masks) -> Result<Tensor> {
        let m = &self.modules;
        let tokens = m.patch_embed.forward(x)?;
        let tokens = m.hooks.patch_embed.apply(&tokens, masks)?;
        let (b, _, d) = tokens.dims3()?;
        let cls = m.cls_token.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&m.pos_embed)?;
        let x = masks.dropout(&x, self.cfg.drop_rate)?;
        let mut x = m.hooks.after_embed.apply(&x, masks)?;
        let depth = m.blocks.len();
        for (i, block) in m.blocks.iter().enumerate() {
            let tokens = if self.last_block_cls_only && i + 1 == depth {
                Tokens::Cls
            } else {
                Tokens::All
            };
            x = block.forward(&x, masks, tokens)?;
        }
        let x = m.hooks.norm.apply(&m.norm.forward(&x)?, masks)?;
        x.i((.., 0))?.contiguous()
    }

    /// Per block, whether its attention half and its MLP half run as one frozen op each
    /// (outside training passes with dropout).
    pub fn frozen_halves(&self) -> Vec<(bool, bool)> {
        self.modules
            .blocks
            .iter()
            .map(Block::frozen_halves)
            .collect()
    }
}

/// The store of the frozen `backbone` (f32, contiguous, on `device`), checked against `cfg`:
/// every missing, unexpected or wrongly-shaped tensor in one error (`head.*` discarded).
fn backbone_store(
    cfg: &VitConfig,
    backbone: BTreeMap<String, Tensor>,
    device: &Device,
) -> anyhow::Result<ParamStore> {
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
    Ok(params)
}

/// `params` with a new trainable head: weight trunc-normal(0.02) from `seed`, bias zero.
fn with_new_head(
    mut params: ParamStore,
    cfg: &VitConfig,
    device: &Device,
    seed: u64,
) -> Result<ParamStore> {
    let head_w = init::tensor(
        Init::TruncNormal { std: 0.02 },
        &[cfg.num_classes, cfg.embed_dim],
        seed,
        "head.weight",
        device,
    )?;
    params.insert_trainable("head.weight", &head_w)?;
    params.insert_trainable(
        "head.bias",
        &Tensor::zeros(cfg.num_classes, DType::F32, device)?,
    )?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::{HoulsbyConfig, LoraConfig, SeqAdapterConfig};

    fn halves(adapter: AdapterConfig, ops: OpsImpl) -> Vec<(bool, bool)> {
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
        vit.frozen_halves()
    }

    /// The frozen-block ops run exactly where nothing inside the half is trainable or hooked.
    #[test]
    fn frozen_halves_are_used_only_where_the_half_is_untouched() {
        use AdapterConfig as A;
        let fused = OpsImpl::Fused;
        let seq = A::SeqAdapter(SeqAdapterConfig::default());
        assert_eq!(halves(seq.clone(), fused), vec![(true, true); 2]);
        assert_eq!(halves(A::Linear, fused), vec![(true, true); 2]);
        let lora = A::Lora(LoraConfig::default());
        assert_eq!(halves(lora, fused), vec![(false, true); 2]);
        let houlsby = A::Houlsby(HoulsbyConfig::default());
        assert_eq!(halves(houlsby, fused), vec![(true, false); 2]);
        for a in [A::Ssf, A::Bitfit, A::Full] {
            assert_eq!(halves(a, fused), vec![(false, false); 2]);
        }
        for ops in [OpsImpl::Composed, OpsImpl::FusedComposedLinear] {
            assert_eq!(halves(seq.clone(), ops), vec![(false, false); 2]);
        }
    }
}
