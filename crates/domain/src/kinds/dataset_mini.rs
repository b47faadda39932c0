//! `dataset/mini`: the embedded mini-VTAB (see docs/mini-vtab.md), generated
//! deterministically from a seed into the NOAH VTAB-1K layout and validated by the same
//! reader as real VTAB-1K. Nothing is downloaded.
use crate::data::mini;
use crate::data::prepare::validate;
use crate::data::vtab::TaskSpec;
use crate::entries::dataset;
use anyhow::Result;
use idat_engine::stages::{StageContext, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;

/// The `with:` of `dataset/mini`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Task names (default: every downstream task). `mini_source` is the pretraining task.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Seed of the generated images (the same seed gives the same dataset).
    #[serde(default)]
    pub seed: u64,
    /// Training images per task (800 train + 200 val at 1,000, as VTAB-1K).
    #[serde(default = "n_train")]
    pub n_train: usize,
    /// Test images per task (default 500).
    #[serde(default = "n_test")]
    pub n_test: usize,
}

fn n_train() -> usize {
    1000
}
fn n_test() -> usize {
    500
}

/// The `dataset/mini` stage kind.
pub struct DatasetMini;

/// Folder (inside the entry) holding the task folders.
pub const DATA_DIR: &str = "vtab";

impl StageKind for DatasetMini {
    type Params = Params;
    const NAME: &'static str = "dataset/mini";
    const VERSION: u32 = 2;
    const SUMMARY: &'static str =
        "The embedded mini-VTAB: real and procedural tasks in the VTAB-1K layout, no download";

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let names: Vec<String> = if p.tasks.is_empty() {
            mini::tasks().iter().map(|t| t.name.to_string()).collect()
        } else {
            p.tasks.clone()
        };
        let root = ctx.out_dir.join(DATA_DIR);
        std::fs::create_dir_all(&root)?;
        let mut specs = Vec::new();
        for name in &names {
            ctx.check_cancel()?;
            let t = mini::task(name)?;
            let r = mini::generate(name, &root, p.seed, p.n_train, p.n_test)?;
            ctx.log(format!(
                "{name}: {} train + {} test images, {} classes, {:.1}s",
                r.train_counts.iter().sum::<usize>(),
                r.test_counts.iter().sum::<usize>(),
                r.num_classes,
                r.seconds
            ));
            specs.push(TaskSpec::custom(t.name, t.group, t.num_classes));
        }
        let splits: Vec<String> = ["train800", "val200", "train800val200", "test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut manifest = validate(&root, &specs, &splits)?;
        // Relative to the entry, which is renamed into the cache after this run.
        manifest.root = PathBuf::from(DATA_DIR);
        dataset::write(&ctx.out_dir, manifest)
    }
}
