//! The architecture of a ViT: timm's `VisionTransformer` arguments ([`VitConfig`]), the
//! tensors a backbone of it holds (timm names and shapes), and the per-block drop-path
//! rates. What the model, the adapter methods and the checkpoint loader share; it depends
//! on nothing else in `nn`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
