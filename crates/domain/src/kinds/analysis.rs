//! `analysis/adapter-stats`: the paper's statistical analysis. For adapter-tuned models of
//! different sizes trained on one task, per block: the distributions of the adapter's
//! down- and up-projection weights (summary statistics, kernel density plots) and the
//! pairwise 1-D Wasserstein distances between model sizes; a table and plots.
use crate::entries::training::{self, Role};
use crate::entries::write_json;
use crate::report::adapter_stats::{analyze, blocks_from_named, plot_kde, BlockWeights};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use idat_engine::stages::{StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The `with:` of `analysis/adapter-stats`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Training stages (`train/adapt` or `train/idat`) whose adapters to compare; in `needs`.
    pub runs: Vec<StageRef>,
    /// Also take the teacher of `train/idat` runs (a second model size from one run).
    #[serde(default = "yes")]
    pub include_teachers: bool,
    /// Parameter-name suffix of the down-projections (default `adapter.fc1.weight`).
    #[serde(default = "down")]
    pub down_suffix: String,
    /// Parameter-name suffix of the up-projections (default `adapter.fc2.weight`).
    #[serde(default = "up")]
    pub up_suffix: String,
}

fn yes() -> bool {
    true
}
fn down() -> String {
    "adapter.fc1.weight".into()
}
fn up() -> String {
    "adapter.fc2.weight".into()
}

fn model_name(cfg: &crate::nn::vit::VitConfig) -> String {
    format!(
        "dim{}-depth{}-heads{}",
        cfg.embed_dim, cfg.depth, cfg.num_heads
    )
}

fn read_blocks(dir: &Path, role: Role, down: &str, up: &str) -> Result<Vec<BlockWeights>> {
    let tensors = training::restore_trained(dir, role, &Device::Cpu)?.tensors;
    let mut flat = BTreeMap::new();
    for (name, t) in tensors {
        if name.ends_with(down) || name.ends_with(up) {
            flat.insert(
                name,
                t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            );
        }
    }
    blocks_from_named(&flat, down, up)
        .with_context(|| format!("adapter weights in {}", dir.join(role.file()).display()))
}

/// The `analysis/adapter-stats` stage kind.
pub struct AdapterStats;

impl StageKind for AdapterStats {
    type Params = Params;
    const NAME: &'static str = "analysis/adapter-stats";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Per-block adapter weight distributions across model sizes: W1 distances, table, plots";

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let mut models: BTreeMap<String, Vec<BlockWeights>> = BTreeMap::new();
        for id in &p.runs {
            let inputs = ctx.inputs_of(id);
            if inputs.is_empty() {
                bail!("no runs from stage `{id}`: add it to `needs`");
            }
            for inp in inputs {
                let s = training::read_summary(&inp.dir)?;
                let mut add = |cfg: &crate::nn::vit::VitConfig, role: Role| -> Result<()> {
                    let name = model_name(cfg);
                    if models.contains_key(&name) {
                        ctx.log(format!(
                            "{}: a {name} model is already in the analysis; keeping the first",
                            inp.instance
                        ));
                        return Ok(());
                    }
                    models.insert(
                        name,
                        read_blocks(&inp.dir, role, &p.down_suffix, &p.up_suffix)?,
                    );
                    Ok(())
                };
                add(&s.student_config, Role::Student)?;
                if let (true, Some(tc)) = (p.include_teachers, &s.teacher_config) {
                    add(tc, Role::Teacher)?;
                }
            }
        }
        if models.len() < 2 {
            bail!("the analysis compares model sizes: found {} ({:?}); give runs of at least two sizes", models.len(), models.keys());
        }
        let stats = analyze(&models)?;
        stats.write_csv(&ctx.out_dir)?;
        std::fs::write(ctx.out_dir.join("adapter-stats.md"), stats.to_markdown())?;
        stats.plot_distances(&ctx.out_dir.join("wasserstein.png"))?;
        plot_kde(&models, &ctx.out_dir.join("kde.png"))?;
        write_json(
            &ctx.out_dir.join("models.json"),
            &models.keys().collect::<Vec<_>>(),
        )?;
        std::fs::write(
            ctx.out_dir.join(idat_engine::stages::SUMMARY_FILE),
            idat_engine::exec::record::plain_text(&stats.to_terminal()),
        )?;
        Ok(())
    }
}
