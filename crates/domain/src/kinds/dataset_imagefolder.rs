//! `dataset/imagefolder`: one's own dataset in the torchvision ImageFolder layout
//! (`<root>/{train,test[,val]}/<class name>/<image>`), from a local folder, an archive URL or
//! an HF hub dataset repo, optionally subsampled VTAB-1K style (`n_train`), validated into
//! the same manifest as `dataset/vtab1k` (one task, class names stored; docs/own-dataset.md).
use crate::data::imagefolder::{
    find_imagefolder_root, read_imagefolder, ImageFolderOptions, SampleMethod, SPLIT_FOLDERS,
};
use crate::data::prepare::{
    check_group, check_task_name, resolve_source, Manifest, PrepareOptions, VtabSource,
};
use crate::entries::dataset;
use anyhow::{Context, Result};
use idat_engine::stages::{ParamError, StageContext, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `with:` of `dataset/imagefolder`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Where the ImageFolder tree comes from (same forms as `dataset/vtab1k`'s `source`);
    /// the root is the folder holding `train/` and `test/`, found up to two levels down.
    pub source: VtabSource,
    /// The task's name, what `data/decode`'s `task:` refers to (default: the name of the
    /// folder holding `train/` and `test/`). Not a VTAB-1K task name.
    #[serde(default)]
    pub name: Option<String>,
    /// `natural` (default), `specialized` or `structured`: the group `report/vtab` puts
    /// the task in.
    #[serde(default)]
    pub group: Option<String>,
    /// Draw this many training images from `train` (VTAB-1K uses 1000); default: all.
    #[serde(default)]
    pub n_train: Option<usize>,
    /// How `n_train` images are drawn: `balanced` (equal per class, as far as the classes
    /// allow) or `stratified` (proportional to class frequency).
    #[serde(default)]
    pub sampling: SampleMethod,
    /// Seed of the draw (recorded in dataset.json with the per-class counts).
    #[serde(default)]
    pub seed: u64,
    /// HF hub endpoint (default: `HF_ENDPOINT`, else huggingface.co).
    #[serde(default)]
    pub hub_endpoint: Option<String>,
}

/// The checks of a task name for `dataset/imagefolder`: a plain folder name, not a VTAB-1K
/// task (whose recipe and published numbers would be taken for it).
fn check_name(name: &str) -> std::result::Result<(), String> {
    check_task_name(name)?;
    if let Some(info) = crate::data::vtab::task_info(name) {
        return Err(format!(
            "task name `{name}` is the VTAB-1K task `{}`: give your dataset another `name:`",
            info.name
        ));
    }
    Ok(())
}

/// The `dataset/imagefolder` stage kind.
pub struct DatasetImageFolder;

impl StageKind for DatasetImageFolder {
    type Params = Params;
    const NAME: &'static str = "dataset/imagefolder";
    // 2: hidden and OS entries (`.ipynb_checkpoints`, `._x.jpg`, `__MACOSX`, ...) are no
    // longer classes or images: an entry made before may hold a wrong class list.
    const VERSION: u32 = 2;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["hub_endpoint"];
    const SUMMARY: &'static str =
        "One's own ImageFolder dataset (train/test/<class>/...), optionally few-shot subsampled, validated into a manifest";

    /// A local folder is keyed by the content of its split folders (`train`, `test`, `val`)
    /// where the stage finds them, not of the folder above them, which may hold the cache
    /// and run records; nothing when they are not found (the stage then says where it
    /// looked, and commits nothing).
    fn external_inputs(p: &Params) -> Vec<std::path::PathBuf> {
        let VtabSource::Local { path } = &p.source else {
            return Vec::new();
        };
        let Ok(root) = find_imagefolder_root(path) else {
            return Vec::new();
        };
        SPLIT_FOLDERS
            .iter()
            .map(|(folder, _, _)| root.join(folder))
            .filter(|d| d.is_dir())
            .collect()
    }

    fn check(p: &Params) -> Result<(), ParamError> {
        if let Some(n) = &p.name {
            check_name(n).map_err(|m| ParamError::at("name", m))?;
        }
        if let Some(g) = &p.group {
            check_group(g).map_err(|m| ParamError::at("group", m))?;
        }
        if p.n_train == Some(0) {
            return Err(ParamError::at(
                "n_train",
                "n_train 0: expected at least 1 (or leave it out to keep all of `train`)",
            ));
        }
        Ok(())
    }

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let opts = PrepareOptions {
            hub_endpoint: p.hub_endpoint.clone(),
            ..PrepareOptions::default()
        };
        let root = resolve_source(&p.source, &[], &ctx.out_dir, &opts, &find_imagefolder_root)?;
        let name = match &p.name {
            Some(n) => n.clone(),
            None => {
                let n = root
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| {
                        format!(
                            "{}: cannot take the task name from this folder: give `name:`",
                            root.display()
                        )
                    })?
                    .to_string();
                check_name(&n).map_err(|m| {
                    anyhow::anyhow!("{m} (the default name is the folder's: {})", root.display())
                })?;
                n
            }
        };
        let task = read_imagefolder(
            &root,
            &ImageFolderOptions {
                name,
                group: p.group.clone().unwrap_or_else(|| "natural".into()),
                n_train: p.n_train,
                method: p.sampling,
                seed: p.seed,
            },
        )?;
        let m = Manifest {
            root,
            tasks: vec![task],
        };
        let t = &m.tasks[0];
        ctx.log(format!(
            "task `{}`: {} classes under {}; {}",
            t.name,
            t.num_classes,
            m.root.display(),
            t.splits
                .iter()
                .map(|(s, l)| format!("{s}: {} images", l.count))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(r) = &t.imagefolder {
            if r.skipped_files > 0 {
                ctx.log(format!(
                    "skipped {} files without an image extension (e.g. {})",
                    r.skipped_files,
                    r.skipped_examples.join(", ")
                ));
            }
            for w in r.warnings() {
                ctx.warn(w);
            }
        }
        for w in m.warnings() {
            ctx.warn(w);
        }
        dataset::write(&ctx.out_dir, m)
    }
}
