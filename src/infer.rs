//! `idat-pipe infer`: logits and the predicted label of every image (or of a tensor of
//! preprocessed inputs) under a frozen backbone plus, optionally, a trained adapter
//! checkpoint (a training entry's `student.safetensors`).
//!
//! Preprocessing is the training one: decode to RGB, bicubic resize to the model's
//! `img_size`, `(x / 255 - mean) / std` (mean = std = 0.5 unless configured).
use crate::config::paths::cli_path;
use crate::data::hidden::{is_hidden_or_os, HiddenEntries};
use crate::data::image::{decode_rgb_noted, resize_bicubic, Normalize};
use crate::entries::training::read_trained;
use crate::nn::adapters::AdapterConfig;
use crate::nn::checkpoint::{
    load_backbone_with, load_tensors_with, Hints, LoadOptions, LoadedWeights,
};
use crate::nn::vit::{Mode, Vit, VitConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Image file extensions read from an `--images` directory.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// What to run inference on.
#[derive(Debug, Clone)]
pub enum InferInput {
    /// Image files (decoded, resized, normalised).
    Images(Vec<PathBuf>),
    /// A `.safetensors` file holding an already normalised `[B, C, H, W]` f32 tensor
    /// under `name` (e.g. the parity fixtures' `input`).
    Tensor {
        /// The `.safetensors` file.
        file: PathBuf,
        /// The tensor's name in it.
        name: String,
    },
}

/// Everything `infer` needs.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// A preset name, or a JSON/YAML file holding a `VitConfig` or a model entry's `model.json`.
    pub model: String,
    /// Backbone weights (timm or transformers ViT `.safetensors`, a sharded checkpoint's index
    /// or its folder, or Google `.npz`; docs/checkpoints.md); a `head.*` is used when present.
    pub weights: PathBuf,
    /// Trained trainable tensors (adapter + head) with `adapter` / `config` metadata.
    pub adapter: Option<PathBuf>,
    /// Number of classes (default: from the adapter's or the weights' head).
    pub num_classes: Option<usize>,
    /// The images or the tensor to classify.
    pub input: InferInput,
    /// Per-channel mean and std applied to decoded images (not to tensor input).
    pub normalize: Normalize,
    /// Images per forward pass.
    pub batch: usize,
    /// Where the model runs.
    pub device: Device,
}

/// One output row.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The image path, or `<file>#<index>` for tensor input.
    pub source: String,
    /// Arg-max of the logits (first index on ties).
    pub label: usize,
    /// The label's class name, when the adapter checkpoint carries the task's class names
    /// (metadata `class_names`, written by `train/adapt` and `train/idat`).
    pub class_name: Option<String>,
    /// The head's outputs, one per class, before softmax.
    pub logits: Vec<f32>,
}

/// Resolves `--model`: a preset name, inline JSON (`{...}`), or a JSON/YAML file holding a `VitConfig` or a
/// model entry's `model.json` (whose `config` field is the architecture).
pub fn resolve_model(spec: &str) -> Result<VitConfig> {
    if spec.trim_start().starts_with('{') {
        let cfg: VitConfig = serde_json::from_str(spec)
            .with_context(|| format!("inline model config `{spec}`: not a ViT config"))?;
        validate_arch(&cfg)?;
        return Ok(cfg);
    }
    let path = Path::new(spec);
    if !path.exists() {
        if spec.ends_with(".json") || spec.ends_with(".yaml") || spec.ends_with(".yml") {
            bail!("--model {spec}: no such file");
        }
        return VitConfig::preset(spec)
            .with_context(|| format!("--model {spec}: not a file, so it must be a preset name"));
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
    let value: serde_json::Value = if spec.ends_with(".yaml") || spec.ends_with(".yml") {
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{spec}: invalid YAML: {e}"))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{spec}: invalid JSON"))?
    };
    let (value, what) = match value.get("config") {
        Some(c) if c.is_object() => (c.clone(), "its `config` field (a model.json)"),
        _ => (value, "a ViT config"),
    };
    let cfg: VitConfig = serde_json::from_value(value).with_context(|| {
        format!(
            "{spec}: expected {what} with fields img_size, patch_size, num_classes, \
             embed_dim, depth, num_heads (see `idat-pipe schema`)"
        )
    })?;
    validate_arch(&cfg).with_context(|| spec.to_string())?;
    Ok(cfg)
}

/// Checks a config's architecture; `num_classes` 0 (a model entry stored without a head)
/// is fine here, the classes come from the head or `--num-classes`.
fn validate_arch(cfg: &VitConfig) -> Result<()> {
    let mut c = cfg.clone();
    c.num_classes = c.num_classes.max(1);
    c.validate()
}

/// Image files under `dir`, recursively (links followed, at most 16 folders deep); hidden
/// or OS entries (`._x.jpg`, `.ipynb_checkpoints`, `Thumbs.db`, ...) are skipped, not
/// descended into, and counted in `hidden` (paths relative to the top folder `top`).
fn images_under(
    dir: &Path,
    top: &Path,
    is_image: &dyn Fn(&Path) -> bool,
    depth: usize,
    out: &mut Vec<PathBuf>,
    hidden: &mut HiddenEntries,
) -> Result<()> {
    if depth > 16 {
        bail!(
            "{}: folders nested deeper than 16 levels (a link loop?)",
            dir.display()
        );
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if p.file_name()
            .is_some_and(|n| is_hidden_or_os(&n.to_string_lossy()))
        {
            hidden.add(&p.strip_prefix(top).unwrap_or(&p).to_string_lossy());
            continue;
        }
        if p.is_dir() {
            images_under(&p, top, is_image, depth + 1, out, hidden)?;
        } else if p.is_file() && is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The image files of `--images`: a directory (its jpg/jpeg/png files, recursively, sorted
/// by path; hidden or OS entries skipped with one note on stderr), one image file, or a text file with one path per line (relative to the list's
/// folder; blank lines and `#` comments skipped). A VTAB/NOAH list (`<path> <label>` per line, e.g. a task's
/// `test.txt`) is read too: when the whole line names no file but the line ends in a
/// non-negative integer label, the path before it is taken and the label ignored.
/// Errors: a listed image missing (naming list file, line and the paths tried).
pub fn list_images(spec: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(spec)
        .with_context(|| format!("--images {}: no such file or directory", spec.display()))?;
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
    };
    let files: Vec<PathBuf> = if meta.is_dir() {
        // Recursively, as an ImageFolder split (`test/<class>/<sub>/<image>`) is laid out.
        let mut v = Vec::new();
        let mut hidden = HiddenEntries::default();
        images_under(spec, spec, &is_image, 0, &mut v, &mut hidden)?;
        if let Some(w) = hidden.warning(&format!("{}/", spec.display())) {
            eprintln!("note: {w}");
        }
        v.sort();
        v
    } else if is_image(spec) {
        vec![spec.to_path_buf()]
    } else {
        let text = std::fs::read_to_string(spec)
            .with_context(|| format!("reading image list {}", spec.display()))?;
        let base = spec.parent().unwrap_or(Path::new("."));
        let mut v = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = base.join(line);
            if p.is_file() {
                v.push(p);
                continue;
            }
            // A VTAB/NOAH list line `<path> <label>`: the path, the label ignored.
            let labelled = line
                .rsplit_once(char::is_whitespace)
                .filter(|(_, label)| label.parse::<u32>().is_ok())
                .map(|(path, _)| base.join(path.trim_end()));
            match labelled {
                Some(q) if q.is_file() => v.push(q),
                Some(q) => bail!(
                    "{}:{}: image `{}` not found (read as a `<path> <label>` list line; looked \
                     at {} and {})",
                    spec.display(),
                    i + 1,
                    line.rsplit_once(char::is_whitespace)
                        .map_or(line, |(a, _)| a.trim_end()),
                    q.display(),
                    p.display()
                ),
                None => bail!(
                    "{}:{}: image `{line}` not found (looked at {}): expected one image path per \
                     line, or `<path> <label>` as in a VTAB list, relative to the list's folder",
                    spec.display(),
                    i + 1,
                    p.display()
                ),
            }
        }
        v
    };
    if files.is_empty() {
        bail!(
            "--images {}: no images (a directory of .jpg/.jpeg/.png files or a list file)",
            spec.display()
        );
    }
    Ok(files)
}

/// Decodes, resizes (bicubic) and normalises images into a `[B, 3, size, size]` f32 tensor.
pub fn preprocess(
    paths: &[PathBuf],
    size: usize,
    norm: &Normalize,
    dev: &Device,
) -> Result<Tensor> {
    let plane = size * size;
    let mut data = vec![0f32; paths.len() * 3 * plane];
    for (b, p) in paths.iter().enumerate() {
        let decoded = decode_rgb_noted(p)?;
        for n in &decoded.notes {
            eprintln!("note: {}: {n}", p.display());
        }
        let img = decoded.image;
        let img = if img.width() as usize == size && img.height() as usize == size {
            img
        } else {
            resize_bicubic(&img, size as u32, size as u32)
        };
        let out = &mut data[b * 3 * plane..(b + 1) * 3 * plane];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = norm.apply(px.0[c], c);
            }
        }
    }
    Ok(Tensor::from_vec(data, (paths.len(), 3, size, size), dev)?)
}

fn head_classes(t: &BTreeMap<String, Tensor>) -> Option<usize> {
    t.get("head.weight").map(|w| w.dims()[0])
}

/// Whether the checkpoint's own head can give this model's logits: it must exist with
/// `classes` rows, must not read a representation layer the model lacks (`pre_logits`,
/// dropped on load: its logits would be computed on the wrong features), and must not be
/// all zeros (the original ImageNet-21K release ships its head zeroed: every image would
/// get label 0). Each refusal says what to pass instead.
fn check_usable_head(
    weights: &Path,
    head: &BTreeMap<String, Tensor>,
    classes: usize,
    had_pre_logits: bool,
) -> Result<()> {
    let w = weights.display();
    match head_classes(head) {
        Some(c) if c == classes => {}
        Some(c) => bail!(
            "{w}: its head has {c} classes, not {classes}, and there is no --adapter \
             checkpoint: the classifier would be random (pass --num-classes {c}, or --adapter)"
        ),
        None => bail!("{w}: no head and no --adapter checkpoint: the classifier would be random"),
    }
    if had_pre_logits {
        bail!(
            "{w}: its head reads the output of a pre-logits (representation) layer, which \
             ViT models here do not have (timm drops it too): logits computed with this head \
             would be wrong. Pass --adapter with a trained student (a training entry's \
             student.safetensors) instead"
        );
    }
    let zero = head
        .values()
        .map(|t| Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? == 0.0))
        .collect::<Result<Vec<bool>>>()?
        .into_iter()
        .all(|z| z);
    if zero {
        bail!(
            "{w}: its head is all zeros (the original ImageNet-21K release ships its head \
             zeroed): every image would get label 0. Pass --adapter with a trained student \
             instead"
        );
    }
    Ok(())
}

/// Builds the model (backbone, head, adapter) described by `opts`.
pub fn build_model(opts: &InferOptions) -> Result<Vit> {
    build_model_with_classes(opts).map(|(v, _)| v)
}

/// [`build_model`], with the class names the adapter checkpoint carries (metadata
/// `class_names`: a JSON array with one name per class), if any.
pub fn build_model_with_classes(opts: &InferOptions) -> Result<(Vit, Option<Vec<String>>)> {
    let mut cfg = resolve_model(&opts.model)?;
    let model = format!("--model {}", opts.model);
    let trained = match &opts.adapter {
        Some(p) => {
            let t = read_trained(p, &opts.device)?;
            t.check_arch(&cfg, &model)?;
            Some(t)
        }
        None => None,
    };
    let loaded = load_weights(opts, &cfg)?;
    let head = &loaded.extra;
    let classes = opts
        .num_classes
        .or_else(|| trained.as_ref().and_then(|t| head_classes(&t.tensors)))
        .or_else(|| head_classes(head))
        .with_context(|| {
            format!(
                "cannot tell the number of classes: {} has no `head.weight`{}; pass \
                 --num-classes",
                opts.weights.display(),
                if opts.adapter.is_some() {
                    " and neither has the adapter checkpoint"
                } else {
                    ""
                }
            )
        })?;
    cfg.num_classes = classes;
    match trained {
        Some(t) => {
            if let Some(names) = &t.class_names {
                check_class_names(&t.file, names, classes)?;
            }
            let names = t.class_names.clone();
            let vit = t.into_vit(&cfg, loaded.tensors, &model, &opts.device)?;
            Ok((vit, names))
        }
        None => {
            check_usable_head(&opts.weights, head, classes, loaded.had_pre_logits)?;
            let vit = Vit::new(
                &cfg,
                &AdapterConfig::Linear,
                loaded.tensors,
                &opts.device,
                0,
            )?;
            vit.set_trainable(&loaded.extra)
                .with_context(|| format!("{}: head does not fit", opts.weights.display()))?;
            Ok((vit, None))
        }
    }
}

/// The backbone of `--weights` for the architecture `cfg`, with its head (of whatever size)
/// passed through in `extra`; notes of the loader printed on stderr.
fn load_weights(opts: &InferOptions, cfg: &VitConfig) -> Result<LoadedWeights> {
    let mut expected = cfg.expected_tensors();
    expected.retain(|(n, _)| !n.starts_with("head."));
    let check_model = format!(
        "check that --model {} is the architecture of --weights",
        opts.model
    );
    let lo = LoadOptions {
        allow_partial: false,
        allow_unexpected: false,
        ignore: Vec::new(),
        // The head, of whatever size, comes back as is (npz heads converted to timm's).
        pass_through: vec!["head.".into()],
        resample_pos_embed: true,
        hints: Hints {
            unexpected: Some(check_model.clone()),
            missing: Some(check_model.clone()),
            misshaped: Some(check_model),
        },
    };
    // Weights inside the cache (an entry's backbone) are checked against the entry's manifest.
    let loaded = load_backbone_with(
        &opts.weights,
        &expected,
        &lo,
        &opts.device,
        crate::cache::verified::read,
    )?;
    for n in &loaded.notes {
        eprintln!("note: {}: {n}", opts.weights.display());
    }
    Ok(loaded)
}

/// An error unless the adapter checkpoint `file` names one class per class of the model.
fn check_class_names(file: &Path, names: &[String], classes: usize) -> Result<()> {
    if names.len() != classes {
        bail!(
            "{}: metadata `class_names` has {} names for {classes} classes: expected one \
             per class",
            file.display(),
            names.len()
        );
    }
    Ok(())
}

/// Runs the model over the input in batches.
pub fn infer(opts: &InferOptions) -> Result<Vec<Prediction>> {
    if opts.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (vit, class_names) = build_model_with_classes(opts)?;
    let cfg = vit.config().clone();
    let mut rows = Vec::new();
    let mut push = |sources: Vec<String>, x: &Tensor| -> Result<()> {
        let logits = vit.forward(x, Mode::Eval)?.detach().to_dtype(DType::F32)?;
        let logits: Vec<Vec<f32>> = logits.to_device(&Device::Cpu)?.to_vec2()?;
        for (s, l) in sources.into_iter().zip(logits) {
            let bad = l.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                bail!(
                    "{s}: the model's output holds {bad} non-finite logit(s) of {} (inf/NaN); \
                     no label can be given (check the weights and the input)",
                    l.len()
                );
            }
            let label = l
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0;
            rows.push(Prediction {
                source: s,
                label,
                class_name: class_names.as_ref().map(|n| n[label].clone()),
                logits: l,
            });
        }
        Ok(())
    };
    match &opts.input {
        InferInput::Images(paths) => {
            for chunk in paths.chunks(opts.batch) {
                let x = preprocess(chunk, cfg.img_size, &opts.normalize, &opts.device)?;
                push(chunk.iter().map(|p| p.display().to_string()).collect(), &x)?;
            }
        }
        InferInput::Tensor { file, name } => {
            let (t, _) = load_tensors_with(file, &opts.device, crate::cache::verified::read)?;
            let x = t.get(name).with_context(|| {
                format!(
                    "{}: no tensor `{name}` (has: {:?})",
                    file.display(),
                    t.keys()
                )
            })?;
            let want = [cfg.in_chans, cfg.img_size, cfg.img_size];
            if x.rank() != 4 || x.dims()[1..] != want {
                bail!(
                    "{}: `{name}` has shape {:?}, expected [B, {}, {}, {}]",
                    file.display(),
                    x.dims(),
                    want[0],
                    want[1],
                    want[2]
                );
            }
            let x = x.to_dtype(DType::F32)?;
            let n = x.dims()[0];
            let mut i = 0;
            while i < n {
                let len = opts.batch.min(n - i);
                let sources = (i..i + len)
                    .map(|j| format!("{}#{j}", file.display()))
                    .collect();
                push(sources, &x.narrow(0, i, len)?)?;
                i += len;
            }
        }
    }
    Ok(rows)
}

/// Writes `source,label,logit_0,...` rows; with a `class_name` column after `label` when
/// the model carries class names.
pub fn write_csv(path: &Path, rows: &[Prediction]) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    let classes = rows.first().map_or(0, |r| r.logits.len());
    let named = rows.iter().any(|r| r.class_name.is_some());
    let mut header = vec!["source".to_string(), "label".to_string()];
    if named {
        header.push("class_name".to_string());
    }
    header.extend((0..classes).map(|i| format!("logit_{i}")));
    w.write_record(&header)?;
    for r in rows {
        let mut rec = vec![r.source.clone(), r.label.to_string()];
        if named {
            rec.push(r.class_name.clone().unwrap_or_default());
        }
        rec.extend(r.logits.iter().map(|v| format!("{v:e}")));
        w.write_record(&rec)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `idat-pipe infer` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct InferArgs {
    /// A preset (`vit_base_patch16_224`), or a JSON/YAML ViT config, or a model entry's model.json.
    #[arg(long)]
    pub model: String,
    /// Backbone weights: timm or Hugging Face transformers ViT .safetensors, a sharded
    /// checkpoint's model.safetensors.index.json (or its folder), or a Google .npz (see
    /// docs/checkpoints.md); its `head.*` is used without --adapter.
    #[arg(long, value_parser = cli_path)]
    pub weights: PathBuf,
    /// A training entry's student.safetensors (adapter + head, with `adapter`/`config` metadata).
    #[arg(long, value_parser = cli_path)]
    pub adapter: Option<PathBuf>,
    /// A directory of .jpg/.jpeg/.png images (searched recursively), one image, or a text
    /// file listing image paths (one per line, or `<path> <label>` as in a VTAB list;
    /// relative to the list's folder).
    #[arg(long, required_unless_present = "tensor", conflicts_with = "tensor", value_parser = cli_path)]
    pub images: Option<PathBuf>,
    /// Instead of images: `FILE.safetensors[:NAME]`, a normalised [B,C,H,W] tensor (NAME default `input`).
    #[arg(long, value_name = "FILE[:NAME]")]
    pub tensor: Option<String>,
    /// Output CSV: source, label, [class_name,] logit_0..logit_{C-1} (class_name when the
    /// --adapter checkpoint carries the task's class names).
    #[arg(long, value_parser = cli_path)]
    pub out: PathBuf,
    /// Number of classes (default: the adapter's or the weights' head).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Normalisation preset: `half` (mean = std = 0.5) or `imagenet`.
    #[arg(long, default_value = "half", value_parser = ["half", "imagenet"])]
    pub normalize: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `idat-pipe infer`.
pub fn cmd(a: InferArgs) -> Result<std::process::ExitCode> {
    use crate::data::image::NormalizeKind;
    let device = crate::kinds::common::device(&a.device)?;
    let input = match (&a.images, &a.tensor) {
        (Some(p), _) => InferInput::Images(list_images(p)?),
        (None, Some(t)) => {
            let (file, name) = match t.rsplit_once(':') {
                Some((f, n)) if !n.contains('/') && !f.is_empty() => (f, n),
                _ => (t.as_str(), "input"),
            };
            InferInput::Tensor {
                file: crate::config::paths::cli_path(file).map_err(anyhow::Error::msg)?,
                name: name.to_string(),
            }
        }
        (None, None) => bail!("give --images or --tensor"),
    };
    let opts = InferOptions {
        model: a.model,
        weights: a.weights,
        adapter: a.adapter,
        num_classes: a.num_classes,
        input,
        normalize: Normalize::from_kind(if a.normalize == "imagenet" {
            NormalizeKind::Imagenet
        } else {
            NormalizeKind::Half
        }),
        batch: a.batch,
        device,
    };
    let rows = infer(&opts)?;
    write_csv(&a.out, &rows)?;
    if rows.iter().any(|r| r.class_name.is_some()) {
        for r in &rows {
            println!(
                "{}\t{}\t{}",
                r.source,
                r.label,
                r.class_name.as_deref().unwrap_or("")
            );
        }
    }
    eprintln!("{} predictions written to {}", rows.len(), a.out.display());
    Ok(std::process::ExitCode::SUCCESS)
}
