//! Whole reports written into a folder: the VTAB results report (`report/vtab`) and the demo
//! AT vs iDAT report (issue 5). Each writes CSV tables, PNG plots and one `report.md` that links
//! them by relative paths, and returns the text to print on stdout.
use super::backbones::ModelStrength;
use super::compare::{compare, CompareOptions, Comparison};
use super::markdown::MarkdownReport;
use super::plot::{render, BarChart, LineChart};
use super::vtab::{build_table, mean_curves, CurveField, Metric, RunResult, Table, TaskMeta};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a report writer produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// The results table.
    pub table: Table,
    /// The paired comparison (demo report only).
    pub comparison: Option<Comparison>,
    /// Text for stdout.
    pub summary: String,
    /// Files written, relative to the output folder.
    pub files: Vec<PathBuf>,
}

/// A file-name-safe form of a label: ASCII letters, digits, `-` and `_` kept, others become `_`.
pub fn file_stem(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

fn bars(table: &Table, metric: Metric, methods: &[String]) -> BarChart {
    BarChart {
        title: format!("{} per task (mean ± std over seeds)", metric.label()),
        y_label: "accuracy (%)".into(),
        categories: table.tasks.iter().map(|t| t.name.clone()).collect(),
        series: methods
            .iter()
            .map(|m| {
                let vals = table
                    .tasks
                    .iter()
                    .map(|t| {
                        table.cell(&t.name, m).map(|c| {
                            let v = match metric {
                                Metric::Top1Best => c.best,
                                Metric::Top1Final => c.final_,
                            };
                            (v.mean, v.std)
                        })
                    })
                    .collect();
                (m.clone(), vals)
            })
            .collect(),
    }
}

/// Learning-curve plots per task (test top-1 and train loss, mean over seeds per method) into
/// `out/curves/`; adds them to `md`. Tasks without epoch logs get no plot.
fn curves(
    results: &[RunResult],
    table: &Table,
    out: &Path,
    md: &mut MarkdownReport,
    files: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut any = false;
    for t in &table.tasks {
        for (field, what, ylab) in [
            (CurveField::TestTop1, "test top-1", "accuracy (%)"),
            (CurveField::TrainLoss, "train loss", "loss"),
        ] {
            let series = mean_curves(results, &t.name, field)?;
            if series.is_empty() {
                continue;
            }
            if !any {
                std::fs::create_dir_all(out.join("curves"))
                    .with_context(|| format!("cannot create {}", out.join("curves").display()))?;
                md.heading(2, "Learning curves (mean over seeds)");
                any = true;
            }
            let rel = PathBuf::from("curves").join(format!(
                "{}_{}.png",
                file_stem(&t.name),
                if field == CurveField::TestTop1 {
                    "top1"
                } else {
                    "loss"
                }
            ));
            render(
                &LineChart {
                    title: format!("{}: {what}", t.name),
                    x_label: "epoch".into(),
                    y_label: ylab.into(),
                    series,
                },
                &out.join(&rel),
            )?;
            md.image(&format!("{} {what}", t.name), &rel)?;
            files.push(rel);
        }
    }
    Ok(())
}

/// The `report/vtab` report: `table.csv`, `table.md`, `bars_final.png`, `bars_best.png`,
/// learning curves and `report.md` in `out` (created if missing).
pub fn write_vtab_report(
    results: &[RunResult],
    tasks: &[TaskMeta],
    published_as: &BTreeMap<String, String>,
    out: &Path,
) -> Result<Written> {
    write_vtab_report_with(results, tasks, published_as, &ModelStrength::default(), out)
}

/// [`write_vtab_report`] with a "Backbones and teachers" section ([`ModelStrength`]) in
/// `report.md` and in the returned summary (nothing when `strength` is empty).
pub fn write_vtab_report_with(
    results: &[RunResult],
    tasks: &[TaskMeta],
    published_as: &BTreeMap<String, String>,
    strength: &ModelStrength,
    out: &Path,
) -> Result<Written> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let table = build_table(results, tasks, published_as)?;
    let mut files = Vec::new();
    table.write_csv(&out.join("table.csv"))?;
    files.push("table.csv".into());
    std::fs::write(out.join("table.md"), table.to_markdown())
        .with_context(|| format!("cannot write {}", out.join("table.md").display()))?;
    files.push("table.md".into());
    let mut md = MarkdownReport::new("VTAB-1K results");
    md.paragraph(
        "Top-1 accuracy (%) per task and method, mean ± sample std over seeds (n seeds in \
         brackets). *Final epoch* is the honest number; *best epoch* is the maximum test accuracy \
         over epochs (the SSF/FacT protocol) and is optimistic. Published numbers (ViT-B/16, \
         ImageNet-21K, from the original papers) are shown only for tasks run on the real \
         VTAB-1K split with a method mapped to a published row.",
    );
    md.raw(&table.to_markdown());
    strength_section(strength, &table, &mut md);
    md.heading(2, "Per-task accuracy");
    for (metric, name) in [
        (Metric::Top1Final, "bars_final.png"),
        (Metric::Top1Best, "bars_best.png"),
    ] {
        render(&bars(&table, metric, &table.methods), &out.join(name))?;
        md.image(metric.label(), Path::new(name))?;
        files.push(name.into());
    }
    curves(results, &table, out, &mut md, &mut files)?;
    md.write(&out.join("report.md"))?;
    files.push("report.md".into());
    Ok(Written {
        summary: with_strength(table.to_terminal(), strength, &table),
        table,
        comparison: None,
        files,
    })
}

/// The demo report: the paired comparison of `treatment` against `baseline` (final-epoch top-1),
/// `comparison.csv`, `table.csv`, `bars.png` (both methods per task), `diff.png` (per-task mean
/// difference ± std over seeds), learning curves and `report.md`, with a note that this is a small
/// experiment, not a claim about VTAB-1K.
pub fn write_demo_report(
    results: &[RunResult],
    tasks: &[TaskMeta],
    baseline: &str,
    treatment: &str,
    out: &Path,
) -> Result<Written> {
    write_demo_report_with(
        results,
        tasks,
        baseline,
        treatment,
        &ModelStrength::default(),
        out,
    )
}

/// [`write_demo_report`] with a "Backbones and teachers" section ([`ModelStrength`]) in
/// `report.md` (the summary stays the comparison alone).
pub fn write_demo_report_with(
    results: &[RunResult],
    tasks: &[TaskMeta],
    baseline: &str,
    treatment: &str,
    strength: &ModelStrength,
    out: &Path,
) -> Result<Written> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let table = build_table(results, tasks, &BTreeMap::new())?;
    let cmp = compare(results, baseline, treatment, &CompareOptions::default())?;
    let mut files = Vec::new();
    table.write_csv(&out.join("table.csv"))?;
    files.push("table.csv".into());
    write_comparison_csv(&cmp, &out.join("comparison.csv"))?;
    files.push("comparison.csv".into());
    let mut md = MarkdownReport::new(&format!("{treatment} vs {baseline}: demo report"));
    md.paragraph(
        "A small experiment on the data this run used; it is not a claim about VTAB-1K. \
         Differences are paired by seed (same data order and initialisation seed for both methods); \
         ± is the sample std over seeds, or over tasks in the last row.",
    );
    md.heading(2, "Verdict");
    md.paragraph(&cmp.verdict);
    md.heading(
        2,
        &format!("{treatment} - {baseline} per task (final-epoch top-1, %)"),
    );
    md.raw(&cmp.to_markdown());
    strength_section(strength, &table, &mut md);
    let pair = vec![baseline.to_string(), treatment.to_string()];
    render(
        &bars(&table, Metric::Top1Final, &pair),
        &out.join("bars.png"),
    )?;
    md.image("final-epoch top-1 per task", Path::new("bars.png"))?;
    files.push("bars.png".into());
    let diff = BarChart {
        title: format!("{treatment} - {baseline}, final-epoch top-1 (mean ± std over seeds)"),
        y_label: "difference (points)".into(),
        categories: cmp.tasks.iter().map(|t| t.task.clone()).collect(),
        series: vec![(
            format!("{treatment} - {baseline}"),
            cmp.tasks
                .iter()
                .map(|t| Some((t.mean_diff, t.std_diff)))
                .collect(),
        )],
    };
    render(&diff, &out.join("diff.png"))?;
    md.image("per-task difference", Path::new("diff.png"))?;
    files.push("diff.png".into());
    md.heading(2, "All methods");
    md.raw(&table.to_markdown());
    curves(results, &table, out, &mut md, &mut files)?;
    md.write(&out.join("report.md"))?;
    files.push("report.md".into());
    Ok(Written {
        summary: cmp.to_terminal(),
        table,
        comparison: Some(cmp),
        files,
    })
}

/// The "Backbones and teachers" section of a `report.md`, when there is something to show.
fn strength_section(strength: &ModelStrength, table: &Table, md: &mut MarkdownReport) {
    let text = strength.to_markdown(&table.tasks);
    if !text.is_empty() {
        md.heading(2, "Backbones and teachers");
        md.raw(&text);
    }
}

/// `summary` followed by the strength tables, when there are any.
fn with_strength(summary: String, strength: &ModelStrength, table: &Table) -> String {
    let text = strength.to_terminal(&table.tasks);
    if text.is_empty() {
        summary
    } else {
        format!("{summary}{text}")
    }
}

/// `comparison.csv`: one row per task then `all`, columns
/// `task,n_pairs,baseline_mean,baseline_std,treatment_mean,treatment_std,mean_diff,std_diff,wins,ties,losses,t,p_t,p_sign`.
pub fn write_comparison_csv(c: &Comparison, path: &Path) -> Result<()> {
    let mut w = csv::Writer::from_path(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    w.write_record([
        "task",
        "n_pairs",
        "baseline_mean",
        "baseline_std",
        "treatment_mean",
        "treatment_std",
        "mean_diff",
        "std_diff",
        "wins",
        "ties",
        "losses",
        "t",
        "p_t",
        "p_sign",
    ])?;
    let o = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    for t in &c.tasks {
        w.write_record([
            t.task.clone(),
            t.seeds.len().to_string(),
            o(Some(t.baseline_mean)),
            o(t.baseline_std),
            o(Some(t.treatment_mean)),
            o(t.treatment_std),
            o(Some(t.mean_diff)),
            o(t.std_diff),
            t.seeds_tally.wins.to_string(),
            t.seeds_tally.ties.to_string(),
            t.seeds_tally.losses.to_string(),
            o(t.t_test.map(|x| x.t)),
            o(t.t_test.map(|x| x.p)),
            o(Some(t.seeds_tally.sign_p())),
        ])?;
    }
    w.write_record([
        "all".to_string(),
        c.tasks.len().to_string(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        o(c.mean_diff),
        o(c.std_diff_tasks),
        c.tasks_tally.wins.to_string(),
        c.tasks_tally.ties.to_string(),
        c.tasks_tally.losses.to_string(),
        o(c.t_test.map(|x| x.t)),
        o(c.t_test.map(|x| x.p)),
        o(Some(c.sign_p)),
    ])?;
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
