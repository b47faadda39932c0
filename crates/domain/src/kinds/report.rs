//! `report/vtab`: every `eval` result it needs, as a task x method table (CSV, Markdown),
//! group means, mean of group means, plain mean, mean ± std over seeds, published numbers
//! beside ours where the setting matches, plots; with `compare`, the paired AT vs iDAT
//! analysis and a plain verdict (the demo report).
use crate::entries::{eval, training, write_json};
use crate::report::backbones::{ModelStrength, TeacherRun};
use crate::report::vtab::{EpochRow, Epochs, Group, RunResult, TaskMeta};
use crate::report::writers::{write_demo_report_with, write_vtab_report_with};
use anyhow::{bail, Context, Result};
use idat_engine::stages::{StageContext, StageKind, StageRef};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A paired comparison of two labels of runs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    /// Label of the baseline runs, e.g. `at`.
    pub baseline: String,
    /// Label of the treatment runs, e.g. `idat-mse`.
    pub treatment: String,
}

/// The `with:` of `report/vtab`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The `eval` stages whose results to collect (every instance); must be in `needs`.
    pub evals: Vec<StageRef>,
    /// Report title.
    #[serde(default = "title")]
    pub title: String,
    /// The results are real VTAB-1K with the official recipe: show published numbers beside ours.
    #[serde(default)]
    pub vtab1k: bool,
    /// Our label -> published method name (see docs/report.md), e.g. `at: Adapter (d=8)`.
    #[serde(default)]
    pub published_as: BTreeMap<String, String>,
    /// Paired comparisons (baseline vs treatment), each in its own sub-report.
    #[serde(default)]
    pub compare: Vec<Compare>,
}

fn title() -> String {
    "VTAB results".into()
}

/// The group an `eval.json` names (any case), from the task table's group names.
fn group_of(name: &str) -> Result<Group> {
    let name = name.to_ascii_lowercase();
    Group::from_name(&name).with_context(|| {
        format!("unknown task group `{name}` (expected natural, specialized or structured)")
    })
}

/// The learning curves an eval entry carries (its copy of the training `metrics.csv`).
fn curves(dir: &Path) -> Result<Vec<EpochRow>> {
    let rows = training::read_metrics(dir)?;
    Ok(rows
        .into_iter()
        .map(|row| EpochRow {
            epoch: row.epoch.saturating_sub(1),
            train_loss: Some(row.loss),
            test_top1: row.test_top1_student,
            lr: Some(row.lr),
        })
        .collect())
}

/// The `report/vtab` stage kind.
pub struct ReportVtab;

impl StageKind for ReportVtab {
    type Params = Params;
    const NAME: &'static str = "report/vtab";
    const VERSION: u32 = 2;
    const SUMMARY: &'static str = "Tables, group means, spread over seeds, published numbers, plots; optional AT vs iDAT verdict";

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let mut results = Vec::new();
        let mut strength = ModelStrength::default();
        let mut tasks: BTreeMap<String, TaskMeta> = BTreeMap::new();
        for id in &p.evals {
            let inputs = ctx.inputs_of(id);
            if inputs.is_empty() {
                bail!("no results from stage `{id}`: add it to `needs`");
            }
            for inp in inputs {
                let rec = eval::read(&inp.dir)?;
                tasks.entry(rec.task.clone()).or_insert(TaskMeta {
                    name: rec.task.clone(),
                    group: group_of(&rec.group)?,
                    vtab1k: p.vtab1k,
                });
                results.push(RunResult {
                    task: rec.task.clone(),
                    method: rec.label.clone(),
                    seed: rec.seed,
                    top1_best: rec.top1_best_epoch,
                    top1_final: rec.top1_final,
                    top5_final: Some(rec.top5_final),
                    epochs: Some(Epochs::Rows(curves(&inp.dir)?)),
                });
                for b in [&rec.student_backbone, &rec.teacher_backbone]
                    .into_iter()
                    .flatten()
                {
                    strength.add_backbone(b.clone());
                }
                if let Some(t) = rec.teacher_top1_final {
                    strength.teachers.push(TeacherRun {
                        task: rec.task.clone(),
                        method: rec.label.clone(),
                        seed: rec.seed,
                        student_top1: rec.top1_final,
                        teacher_top1: t,
                    });
                }
            }
        }
        // Table order: by group, then name.
        let mut tasks: Vec<TaskMeta> = tasks.into_values().collect();
        tasks.sort_by_key(|t| {
            (
                Group::ALL.iter().position(|g| *g == t.group),
                t.name.clone(),
            )
        });

        let mut summary = String::new();
        let main =
            write_vtab_report_with(&results, &tasks, &p.published_as, &strength, &ctx.out_dir)?;
        summary.push_str(&format!("{}\n\n{}", p.title, main.summary));
        for c in &p.compare {
            let sub = ctx
                .out_dir
                .join(format!("{}-vs-{}", c.treatment, c.baseline));
            let w = write_demo_report_with(
                &results,
                &tasks,
                &c.baseline,
                &c.treatment,
                &strength.for_method(&c.treatment),
                &sub,
            )?;
            summary.push_str(&format!(
                "\n{} vs {}\n{}",
                c.treatment, c.baseline, w.summary
            ));
        }
        write_json(&ctx.out_dir.join("results.json"), &results)?;
        let summary = idat_engine::exec::record::plain_text(&summary);
        std::fs::write(
            ctx.out_dir.join(idat_engine::stages::SUMMARY_FILE),
            &summary,
        )?;
        ctx.log(summary);
        Ok(())
    }
}
