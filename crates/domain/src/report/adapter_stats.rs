//! The paper's statistical analysis of adapter weights across model sizes: per block, summary
//! statistics of the flattened down- and up-projection weights of each model, the pairwise 1-D
//! Wasserstein distances between models, tables (CSV, Markdown) and plots (KDE panels, heatmap).
//!
//! Blocks are matched by index: a block index is compared between two models only when both
//! have it (ViT-L's blocks 12..23 have no ViT-S/B partner and appear only in the summaries).
use super::plot::{render, Heatmap, Panel, PanelChart};
use super::stats::{
    excess_kurtosis, gaussian_kde, linspace, mean, sample_std, wasserstein_1d, Bandwidth,
};
use super::vtab::{markdown_table, text_table};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The flattened adapter weights of one block of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlockWeights {
    /// Block index (0-based).
    pub block: usize,
    /// Down-projection weights, flattened.
    pub down: Vec<f32>,
    /// Up-projection weights, flattened.
    pub up: Vec<f32>,
}

/// Down- or up-projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    /// Down-projection (d -> r).
    Down,
    /// Up-projection (r -> d).
    Up,
}

impl Proj {
    /// `down` or `up`.
    pub fn label(self) -> &'static str {
        match self {
            Proj::Down => "down",
            Proj::Up => "up",
        }
    }
    fn of(self, b: &BlockWeights) -> &[f32] {
        match self {
            Proj::Down => &b.down,
            Proj::Up => &b.up,
        }
    }
}

/// Summary statistics of one weight set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightSummary {
    /// Model name.
    pub model: String,
    /// Block index.
    pub block: usize,
    /// Projection.
    pub proj: Proj,
    /// Number of weights.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample std (n-1); `None` for fewer than 2 weights.
    pub std: Option<f64>,
    /// Excess kurtosis; `None` for a constant set.
    pub kurtosis: Option<f64>,
}

/// One pairwise distance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distance {
    /// Block index.
    pub block: usize,
    /// Projection.
    pub proj: Proj,
    /// First model (name order).
    pub model_a: String,
    /// Second model.
    pub model_b: String,
    /// 1-D Wasserstein distance between the two weight distributions.
    pub w1: f64,
}

/// The analysis result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterStats {
    /// Models in name order.
    pub models: Vec<String>,
    /// Per model, block and projection.
    pub summaries: Vec<WeightSummary>,
    /// Per block, projection and model pair (a < b in name order).
    pub distances: Vec<Distance>,
}

/// Collect per-block weights from named flattened parameters: a name `blocks.<i>.<rest>` is the
/// down-projection of block i when it ends with `down_suffix`, the up-projection when it ends
/// with `up_suffix` (e.g. `adapter.fc1.weight`, `adapter.fc2.weight`). Errors on a block with
/// only one of the two, or two tensors for the same slot.
pub fn blocks_from_named(
    params: &BTreeMap<String, Vec<f32>>,
    down_suffix: &str,
    up_suffix: &str,
) -> Result<Vec<BlockWeights>> {
    type Slot<'a> = (Option<&'a Vec<f32>>, Option<&'a Vec<f32>>);
    let mut slots: BTreeMap<usize, Slot> = BTreeMap::new();
    for (name, w) in params {
        let Some(rest) = name.strip_prefix("blocks.") else {
            continue;
        };
        let Some((idx, _)) = rest.split_once('.') else {
            continue;
        };
        let Ok(block) = idx.parse::<usize>() else {
            continue;
        };
        let slot = slots.entry(block).or_default();
        let target = if name.ends_with(down_suffix) {
            &mut slot.0
        } else if name.ends_with(up_suffix) {
            &mut slot.1
        } else {
            continue;
        };
        if target.is_some() {
            bail!("block {block}: more than one tensor matches (second: `{name}`)");
        }
        *target = Some(w);
    }
    let mut out = Vec::new();
    for (block, (d, u)) in slots {
        match (d, u) {
            (Some(d), Some(u)) => out.push(BlockWeights {
                block,
                down: d.clone(),
                up: u.clone(),
            }),
            (None, None) => {}
            (None, Some(_)) => bail!("block {block}: no tensor ending in `{down_suffix}`"),
            (Some(_), None) => bail!("block {block}: no tensor ending in `{up_suffix}`"),
        }
    }
    if out.is_empty() {
        bail!("no `blocks.<i>.*` tensors end in `{down_suffix}` / `{up_suffix}`");
    }
    Ok(out)
}

/// Analyse `weights` (model name -> blocks). Errors name the model and block: fewer than 2 models,
/// a block listed twice, an empty or non-finite weight set.
pub fn analyze(weights: &BTreeMap<String, Vec<BlockWeights>>) -> Result<AdapterStats> {
    if weights.len() < 2 {
        bail!(
            "adapter statistics compare model sizes: need at least 2 models, got {}",
            weights.len()
        );
    }
    let mut by_model: BTreeMap<&str, BTreeMap<usize, &BlockWeights>> = BTreeMap::new();
    let mut summaries = Vec::new();
    for (model, blocks) in weights {
        let map = by_model.entry(model).or_default();
        for b in blocks {
            if map.insert(b.block, b).is_some() {
                bail!("model {model}: block {} is listed twice", b.block);
            }
            for proj in [Proj::Down, Proj::Up] {
                let w = proj.of(b);
                if w.is_empty() {
                    bail!(
                        "model {model}, block {}: {} weights are empty",
                        b.block,
                        proj.label()
                    );
                }
                if let Some(i) = w.iter().position(|x| !x.is_finite()) {
                    bail!(
                        "model {model}, block {}: {} weight {i} is not finite ({})",
                        b.block,
                        proj.label(),
                        w[i]
                    );
                }
            }
        }
        for (&block, b) in map.iter() {
            for proj in [Proj::Down, Proj::Up] {
                let xs: Vec<f64> = proj.of(b).iter().map(|&x| x as f64).collect();
                summaries.push(WeightSummary {
                    model: model.clone(),
                    block,
                    proj,
                    n: xs.len(),
                    mean: mean(&xs).expect("checked non-empty"),
                    std: sample_std(&xs),
                    kurtosis: excess_kurtosis(&xs),
                });
            }
        }
    }
    let models: Vec<String> = weights.keys().cloned().collect();
    let mut distances = Vec::new();
    let blocks: std::collections::BTreeSet<usize> =
        by_model.values().flat_map(|m| m.keys().copied()).collect();
    for block in blocks {
        for proj in [Proj::Down, Proj::Up] {
            for (i, a) in models.iter().enumerate() {
                for b in &models[i + 1..] {
                    let (Some(wa), Some(wb)) = (
                        by_model[a.as_str()].get(&block),
                        by_model[b.as_str()].get(&block),
                    ) else {
                        continue;
                    };
                    let w1 = wasserstein_1d(proj.of(wa), proj.of(wb))
                        .with_context(|| format!("block {block} {}: {a} vs {b}", proj.label()))?;
                    distances.push(Distance {
                        block,
                        proj,
                        model_a: a.clone(),
                        model_b: b.clone(),
                        w1,
                    });
                }
            }
        }
    }
    Ok(AdapterStats {
        models,
        summaries,
        distances,
    })
}

fn opt(v: Option<f64>, d: usize) -> String {
    v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "—".into())
}

impl AdapterStats {
    /// Distance columns: `<a> vs <b> down`, `... up` for each model pair; rows are blocks.
    pub fn distance_grid(&self) -> (Vec<String>, Vec<usize>, Vec<Vec<Option<f64>>>) {
        let mut cols: Vec<(Proj, String, String)> = Vec::new();
        for proj in [Proj::Down, Proj::Up] {
            for (i, a) in self.models.iter().enumerate() {
                for b in &self.models[i + 1..] {
                    cols.push((proj, a.clone(), b.clone()));
                }
            }
        }
        let mut blocks: Vec<usize> = self.distances.iter().map(|d| d.block).collect();
        blocks.dedup();
        let values = blocks
            .iter()
            .map(|&blk| {
                cols.iter()
                    .map(|(p, a, b)| {
                        self.distances
                            .iter()
                            .find(|d| {
                                d.block == blk && d.proj == *p && &d.model_a == a && &d.model_b == b
                            })
                            .map(|d| d.w1)
                    })
                    .collect()
            })
            .collect();
        let names = cols
            .iter()
            .map(|(p, a, b)| format!("{a} vs {b} {}", p.label()))
            .collect();
        (names, blocks, values)
    }

    fn distance_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let (cols, blocks, values) = self.distance_grid();
        let header = std::iter::once("block".to_string()).chain(cols).collect();
        let rows = blocks
            .iter()
            .zip(&values)
            .map(|(b, vs)| {
                std::iter::once(b.to_string())
                    .chain(vs.iter().map(|v| opt(*v, 5)))
                    .collect()
            })
            .collect();
        (header, rows)
    }

    fn summary_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = [
            "model",
            "block",
            "proj",
            "n",
            "mean",
            "std",
            "excess kurtosis",
        ]
        .map(String::from)
        .to_vec();
        let rows = self
            .summaries
            .iter()
            .map(|s| {
                vec![
                    s.model.clone(),
                    s.block.to_string(),
                    s.proj.label().to_string(),
                    s.n.to_string(),
                    format!("{:.5}", s.mean),
                    opt(s.std, 5),
                    opt(s.kurtosis, 3),
                ]
            })
            .collect();
        (header, rows)
    }

    /// Markdown: the W1 distance table (blocks x model pairs) and the summary table.
    pub fn to_markdown(&self) -> String {
        let (h, r) = self.distance_rows();
        let (h2, r2) = self.summary_rows();
        format!(
            "**1-D Wasserstein distances between adapter weight distributions**\n\n{}\n**Weight summaries**\n\n{}",
            markdown_table(&h, &r),
            markdown_table(&h2, &r2)
        )
    }

    /// Plain text of the distance table.
    pub fn to_terminal(&self) -> String {
        let (h, r) = self.distance_rows();
        text_table(&h, &r)
    }

    /// `distances.csv` (block,proj,model_a,model_b,w1) and `summaries.csv`
    /// (model,block,proj,n,mean,std,kurtosis) in `dir`.
    pub fn write_csv(&self, dir: &Path) -> Result<()> {
        let p = dir.join("distances.csv");
        let mut w =
            csv::Writer::from_path(&p).with_context(|| format!("cannot create {}", p.display()))?;
        w.write_record(["block", "proj", "model_a", "model_b", "w1"])?;
        for d in &self.distances {
            w.write_record([
                d.block.to_string(),
                d.proj.label().to_string(),
                d.model_a.clone(),
                d.model_b.clone(),
                format!("{:.8}", d.w1),
            ])?;
        }
        w.flush()?;
        let p = dir.join("summaries.csv");
        let mut w =
            csv::Writer::from_path(&p).with_context(|| format!("cannot create {}", p.display()))?;
        w.write_record(["model", "block", "proj", "n", "mean", "std", "kurtosis"])?;
        for s in &self.summaries {
            w.write_record([
                s.model.clone(),
                s.block.to_string(),
                s.proj.label().to_string(),
                s.n.to_string(),
                format!("{:.8}", s.mean),
                s.std.map(|x| format!("{x:.8}")).unwrap_or_default(),
                s.kurtosis.map(|x| format!("{x:.6}")).unwrap_or_default(),
            ])?;
        }
        w.flush()?;
        Ok(())
    }

    /// Heatmap of the W1 distance table (`.png` or `.svg`).
    pub fn plot_distances(&self, path: &Path) -> Result<()> {
        let (cols, blocks, values) = self.distance_grid();
        render(
            &Heatmap {
                title: "1-D Wasserstein distance of adapter weights".into(),
                rows: blocks.iter().map(|b| format!("block {b}")).collect(),
                cols,
                values,
                decimals: 4,
            },
            path,
        )
    }
}

/// KDE panels: one panel per block and projection (down, up side by side), one line per model,
/// Scott bandwidth, 200 grid points spanning each panel's weights ± 3 bandwidths. A weight set
/// whose density cannot be estimated (constant, e.g. zero-initialised and untrained) is left out
/// of its panel and named in the panel title.
pub fn plot_kde(weights: &BTreeMap<String, Vec<BlockWeights>>, path: &Path) -> Result<()> {
    let models: Vec<String> = weights.keys().cloned().collect();
    let blocks: std::collections::BTreeSet<usize> =
        weights.values().flatten().map(|b| b.block).collect();
    let mut panels = Vec::new();
    for block in blocks {
        for proj in [Proj::Down, Proj::Up] {
            let sets: Vec<(&String, &[f32])> = weights
                .iter()
                .filter_map(|(m, bs)| {
                    bs.iter()
                        .find(|b| b.block == block)
                        .map(|b| (m, proj.of(b)))
                })
                .collect();
            let mut lo = f64::INFINITY;
            let mut hi = f64::NEG_INFINITY;
            let mut pad: f64 = 0.0;
            for (_, w) in &sets {
                for &x in w.iter() {
                    lo = lo.min(x as f64);
                    hi = hi.max(x as f64);
                }
                if let Ok(h) = super::stats::kde_bandwidth(w, Bandwidth::Scott) {
                    pad = pad.max(3.0 * h);
                }
            }
            let grid = linspace(lo - pad, hi + pad, 200);
            let mut series = Vec::new();
            let mut skipped = Vec::new();
            for (m, w) in sets {
                match gaussian_kde(w, &grid, Bandwidth::Scott) {
                    Ok(d) => series.push((m.clone(), grid.iter().copied().zip(d).collect())),
                    Err(_) => skipped.push(m.clone()),
                }
            }
            let mut title = format!("block {block} {}", proj.label());
            if !skipped.is_empty() {
                title.push_str(&format!(" (constant: {})", skipped.join(", ")));
            }
            panels.push(Panel { title, series });
        }
    }
    render(
        &PanelChart {
            title: "Adapter weight densities (Gaussian KDE, Scott bandwidth)".into(),
            x_label: "weight".into(),
            y_label: "density".into(),
            ncols: 4,
            legend: models,
            panels,
        },
        path,
    )
}
