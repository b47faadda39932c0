//! `model/vit`: a frozen backbone from a preset and a weights source (local safetensors or
//! Google npz, an HF hub repo, or random weights for tests), validated and stored in timm names.
use super::common::{device, Arch};
use crate::entries::model::{self, ModelInfo};
use crate::nn::checkpoint::{load_backbone_with, Hints, LoadOptions, LoadedWeights};
use crate::nn::vit::Vit;
use anyhow::{bail, Context, Result};
use idat_engine::stages::{StageContext, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the backbone weights come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum Weights {
    /// timm-style random init (tests, pretraining from scratch).
    Random {
        /// Seed of the weights.
        seed: u64,
    },
    /// A local `.safetensors` (timm or Hugging Face transformers ViT names), a sharded
    /// checkpoint's `*.safetensors.index.json` (or a folder holding it), or a Google `.npz`.
    File {
        /// Relative paths are resolved against the working directory (docs/pipeline-dsl.md).
        #[schemars(extend("format" = "path"))]
        path: PathBuf,
        /// Expected sha256 of the file (hex); checked before use when given.
        #[serde(default)]
        #[schemars(extend("pattern" = idat_engine::config::schema::SHA256_PATTERN))]
        sha256: Option<String>,
    },
    /// A file of a model repo on the HF hub (endpoint from `HF_ENDPOINT`); for an index
    /// (`model.safetensors.index.json`) its shards are fetched too.
    Hub {
        /// The model repo, e.g. `google/vit-base-patch16-224-in21k`.
        repo: String,
        /// Branch, tag or commit (default `main`).
        #[serde(default = "main_rev")]
        revision: String,
        /// The file in the repo (default `model.safetensors`).
        #[serde(default = "model_file")]
        file: String,
        /// Expected sha256 of the file (hex); checked before use when given.
        #[serde(default)]
        #[schemars(extend("pattern" = idat_engine::config::schema::SHA256_PATTERN))]
        sha256: Option<String>,
    },
}

fn main_rev() -> String {
    "main".into()
}
fn model_file() -> String {
    "model.safetensors".into()
}

/// The `with:` of `model/vit`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Preset name (e.g. `vit_base_patch16_224`) or a full ViT config.
    pub arch: Arch,
    /// Input size to use; position embeddings are resampled (bicubic) when it differs.
    #[serde(default)]
    pub img_size: Option<usize>,
    /// Where the weights come from (`from: random`, `file` or `hub`).
    pub weights: Weights,
    /// Shown in reports.
    #[serde(default)]
    pub label: Option<String>,
    /// Drop (with a note) checkpoint tensors the model does not expect, instead of
    /// refusing the file. The head and a `pre_logits` layer are always dropped, a prefix
    /// all names carry (`module.`, `model.`, ...) is always removed, with a note.
    #[serde(default)]
    pub allow_unexpected: bool,
    /// Checkpoint tensor name prefixes to drop with a note (a trailing `*` is allowed):
    /// timm names (e.g. `dist_token` or `head_dist.`) or names as written in the file
    /// (e.g. `module.head.`, so that a prefix the rest carries is removed). They must not
    /// cover a tensor the backbone needs.
    #[serde(default)]
    pub ignore: Vec<String>,
}

/// The fixes a mismatch error offers, named as `with:` options of this kind.
fn hints() -> Hints {
    Hints {
        unexpected: Some(
            "if `with.arch` is right, drop them with `with.allow_unexpected: true` or list \
             their name prefixes in `with.ignore`"
                .into(),
        ),
        missing: Some(
            "the backbone needs every one of them: check that `with.arch` is the \
             checkpoint's architecture"
                .into(),
        ),
        misshaped: Some("check that `with.arch` is the checkpoint's architecture".into()),
    }
}

/// Where hub downloads are kept across runs: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the layout other HF tools share).
fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

/// A weights file checked against `sha256` (when given) before use, then loaded without
/// its classification head (tasks get their own).
fn load_checked(
    path: &Path,
    sha256: Option<&str>,
    expected: &[(String, Vec<usize>)],
    p: &Params,
    dev: &candle_core::Device,
) -> Result<LoadedWeights> {
    if let Some(want) = sha256 {
        crate::data::download::verify_sha256(path, want)?;
    }
    let mut ignore: Vec<String> = vec!["head.".into()];
    ignore.extend(p.ignore.iter().cloned());
    let opts = LoadOptions {
        allow_partial: false,
        allow_unexpected: p.allow_unexpected,
        ignore,
        pass_through: Vec::new(),
        resample_pos_embed: true,
        hints: hints(),
    };
    // A path into the cache (another stage's entry) is checked against its manifest.
    load_backbone_with(
        path,
        expected,
        &opts,
        dev,
        idat_engine::cache::verified::read,
    )
    .with_context(|| format!("loading backbone {}", path.display()))
}

/// The `model/vit` stage kind.
pub struct ModelVit;

impl StageKind for ModelVit {
    type Params = Params;
    const NAME: &'static str = "model/vit";
    // 2: non-finite weights are refused; entries committed before that are checked again.
    const VERSION: u32 = 2;
    const SUMMARY: &'static str = "A frozen ViT backbone from a preset and a weights source, checked and stored in timm names";

    /// A local weights file is keyed by its content (an index: with its shards).
    fn external_inputs(p: &Params) -> Vec<PathBuf> {
        match &p.weights {
            Weights::File { path, .. } => crate::nn::checkpoint::input_files(path),
            _ => Vec::new(),
        }
    }

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let dev = device(&ctx.device)?;
        let mut cfg = p.arch.resolve()?;
        if let Some(s) = p.img_size {
            cfg.img_size = s;
        }
        // Keep the checkpoint's head out: tasks get their own.
        cfg.num_classes = 0;
        let expected: Vec<(String, Vec<usize>)> = cfg
            .expected_tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .collect();
        for pat in &p.ignore {
            let stem = pat.strip_suffix('*').unwrap_or(pat);
            if stem.is_empty() {
                bail!("`with.ignore`: an empty entry would match every tensor");
            }
            let covered: Vec<&str> = expected
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| n.starts_with(stem))
                .collect();
            if !covered.is_empty() {
                bail!(
                    "`with.ignore` entry `{pat}` covers {} tensor(s) the backbone needs (e.g. {}); \
                     it may only drop checkpoint tensors the model does not have",
                    covered.len(),
                    covered[0]
                );
            }
        }
        let (tensors, source, notes) = match &p.weights {
            Weights::Random { seed } => {
                let mut c = cfg.clone();
                c.num_classes = 1;
                let mut t = Vit::random_backbone(&c, &dev, *seed)?;
                t.retain(|k, _| !k.starts_with("head."));
                (t, format!("random init (seed {seed})"), vec![])
            }
            Weights::File { path, sha256 } => {
                let l = load_checked(path, sha256.as_deref(), &expected, &p, &dev)?;
                (l.tensors, format!("file {}", path.display()), l.notes)
            }
            Weights::Hub {
                repo,
                revision,
                file,
                sha256,
            } => {
                let endpoint = crate::data::hub::endpoint(None);
                let path = crate::data::hub::fetch_model_file(
                    repo,
                    revision,
                    file,
                    &endpoint,
                    &hub_cache_dir(),
                )?;
                let l = load_checked(&path, sha256.as_deref(), &expected, &p, &dev)
                    .with_context(|| format!("backbone {repo}@{revision}/{file}"))?;
                (l.tensors, format!("hub {repo}@{revision}/{file}"), l.notes)
            }
        };
        for n in &notes {
            ctx.log(n);
        }
        let info = ModelInfo {
            config: cfg,
            source,
            label: p.label.unwrap_or_else(|| "pretrained backbone".into()),
            source_top1: None,
            notes,
        };
        model::write(&ctx.out_dir, &info, &tensors)
    }
}
