//! `data/decode`: decode one task's images once, resized to the model size (PIL-exact
//! bicubic), stored as u8 tensors, so that no epoch ever decodes again.
use super::common::input_dir;
use crate::data::loader::decode_task_split;
use crate::entries::{dataset, decoded, decoded::DecodedInfo};
use anyhow::{bail, Result};
use idat_engine::stages::{StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The `with:` of `data/decode`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The dataset stage (`dataset/vtab1k`, `dataset/imagefolder` or `dataset/mini`) to
    /// read; must be in `needs`.
    pub dataset: StageRef,
    /// Task name, e.g. `dtd` (a `dataset/imagefolder` task: its `name:`).
    pub task: String,
    /// Side length images are resized to (the model's `img_size`).
    pub size: usize,
    /// Splits to decode (list file stems).
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// Skip undecodable images (counted in `decoded.json`) instead of failing.
    #[serde(default)]
    pub skip_bad_images: bool,
}

fn default_splits() -> Vec<String> {
    vec!["train800val200".into(), "test".into()]
}

/// The `data/decode` stage kind.
pub struct Decode;

impl StageKind for Decode {
    type Params = Params;
    const NAME: &'static str = "data/decode";
    // 2: JPEGs decode through libjpeg-turbo as PIL does (zune-jpeg differed by up to 4 levels).
    // 3: PNG and JPEG files are accepted and refused as PIL does (CRC errors before the image
    // data refused, in IDAT and later accepted; truncation after the last row accepted;
    // damaged JPEG scan data decoded gray), and no limit on a side (20000x8 decodes).
    const VERSION: u32 = 3;
    const SUMMARY: &'static str =
        "Decode and resize one task's images once (cached u8 tensors per task and size)";

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        if p.size == 0 {
            bail!("`size` must be > 0");
        }
        let manifest = dataset::read(input_dir(ctx, &p.dataset)?)?;
        let tm = manifest.task(&p.task)?;
        let task = manifest.load_task(&p.task)?;
        let mut info = DecodedInfo {
            task: tm.name.clone(),
            group: tm.group.clone(),
            num_classes: tm.num_classes,
            size: p.size,
            splits: BTreeMap::new(),
            skipped: BTreeMap::new(),
            class_names: tm.class_names.clone(),
        };
        for split in &p.splits {
            ctx.check_cancel()?;
            let (images, report) = decode_task_split(&task, split, p.size, p.skip_bad_images)?;
            for s in &report.skipped {
                ctx.log(format!("skipped {} ({}): {}", s.path, s.location, s.error));
            }
            if let Some(w) = report.noted_warning(split) {
                ctx.warn(w);
            }
            ctx.log(format!(
                "{split}: {} images decoded at {}x{}",
                images.len(),
                p.size,
                p.size
            ));
            let file = decoded::write_split(&ctx.out_dir, split, &images)?;
            info.splits.insert(split.clone(), file);
            info.skipped.insert(split.clone(), report.skipped.len());
        }
        decoded::write_info(&ctx.out_dir, &info)
    }
}
