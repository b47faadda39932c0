//! The per task x method results table: mean ± std over seeds (best-epoch and final-epoch
//! top-1 labelled separately), the three VTAB group means, the mean of group means and the plain
//! mean, with the published numbers beside ours only where the setting matches.
//!
//! Accuracies are percentages in [0, 100]. Rules for summaries (see docs/report.md):
//! a summary of a method is given only when the method has results for every task of its scope;
//! its spread is the std over seeds of the per-seed summary, over the seeds that are complete.
use super::published::{find_published, published_names, PublishedMethod};
use super::stats::{mean, sample_std};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

pub use crate::data::vtab_tasks::Group;

/// A task of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskMeta {
    /// Task name, e.g. `dtd` (real VTAB-1K folder names) or a mini task's name.
    pub name: String,
    /// Its group.
    pub group: Group,
    /// True only when the results come from the real VTAB-1K split of this task with the official
    /// recipe: only then are published numbers shown beside ours. Default false.
    #[serde(default)]
    pub vtab1k: bool,
}

/// One row of a per-epoch log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EpochRow {
    /// 0-based epoch index.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    #[serde(default)]
    pub train_loss: Option<f64>,
    /// Test top-1 % after the epoch.
    #[serde(default)]
    pub test_top1: Option<f64>,
    /// Learning rate of the epoch.
    #[serde(default)]
    pub lr: Option<f64>,
}

/// The per-epoch curves of a run: inline rows or a CSV file (see [`read_epochs_csv`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Epochs {
    /// Rows given inline.
    Rows(Vec<EpochRow>),
    /// Path of a CSV with an `epoch` column and optional `train_loss`, `test_top1`, `lr`.
    Csv(std::path::PathBuf),
}

/// The outcome of one training run (one task, method and seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    /// Task name (must be one of the table's tasks).
    pub task: String,
    /// Method label, e.g. `at` or `idat`.
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// Best test top-1 % over all epochs (the SSF/FacT protocol; optimistic).
    pub top1_best: f64,
    /// Test top-1 % after the last epoch (the honest number).
    pub top1_final: f64,
    /// Test top-5 % after the last epoch, when measured.
    #[serde(default)]
    pub top5_final: Option<f64>,
    /// Per-epoch log, when available.
    #[serde(default)]
    pub epochs: Option<Epochs>,
}

/// Which accuracy of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Best-epoch top-1.
    Top1Best,
    /// Final-epoch top-1.
    Top1Final,
}

impl Metric {
    /// The value of this metric in a run.
    pub fn of(self, r: &RunResult) -> f64 {
        match self {
            Metric::Top1Best => r.top1_best,
            Metric::Top1Final => r.top1_final,
        }
    }
    /// Display label.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Top1Best => "top-1 best epoch",
            Metric::Top1Final => "top-1 final epoch",
        }
    }
}

/// Mean and sample std over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Sample std (n-1); `None` when fewer than 2 values.
    pub std: Option<f64>,
    /// Number of values.
    pub n: usize,
}

impl MeanStd {
    /// From values; `None` when empty.
    pub fn of(xs: &[f64]) -> Option<MeanStd> {
        Some(MeanStd {
            mean: mean(xs)?,
            std: sample_std(xs),
            n: xs.len(),
        })
    }
    /// `78.30 ± 0.41` (or `78.30` with no spread).
    pub fn fmt(&self) -> String {
        match self.std {
            Some(s) => format!("{:.2} ± {:.2}", self.mean, s),
            None => format!("{:.2}", self.mean),
        }
    }
}

/// One task x method cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Seeds in this cell, sorted.
    pub seeds: Vec<u64>,
    /// Best-epoch top-1 over seeds.
    pub best: MeanStd,
    /// Final-epoch top-1 over seeds.
    pub final_: MeanStd,
    /// Final-epoch top-5 over the seeds that have it.
    pub top5_final: Option<MeanStd>,
    /// Published top-1 when the setting matches (method mapped, task real VTAB-1K).
    pub published: Option<f64>,
}

/// Scope of a summary row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SummaryKind {
    /// Mean over the tasks of one group.
    Group(Group),
    /// Mean of the group means (over groups that have tasks in the table).
    MeanOfGroupMeans,
    /// Plain mean over all tasks.
    PlainMean,
}

impl SummaryKind {
    /// Display label, e.g. `Natural mean (3 tasks)` is built by the caller from this.
    pub fn label(self) -> String {
        match self {
            SummaryKind::Group(g) => format!("{} mean", g.label()),
            SummaryKind::MeanOfGroupMeans => "mean of group means".into(),
            SummaryKind::PlainMean => "plain mean".into(),
        }
    }
}

/// One summary value of one method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Mean over tasks of per-task means (best-epoch); `None` when a task of the scope is missing.
    pub best: Option<f64>,
    /// Same for final-epoch.
    pub final_: Option<f64>,
    /// Std over complete seeds of the per-seed best-epoch summary.
    pub best_std: Option<f64>,
    /// Std over complete seeds of the per-seed final-epoch summary.
    pub final_std: Option<f64>,
    /// Published summary over the same tasks, when every task of the scope is real VTAB-1K.
    pub published: Option<f64>,
}

/// The results table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// Rows: tasks in the given order.
    pub tasks: Vec<TaskMeta>,
    /// Columns: methods in order of first appearance in the results.
    pub methods: Vec<String>,
    /// Published row name per method, where mapped.
    pub published_as: BTreeMap<String, String>,
    /// Cells keyed by (task, method).
    pub cells: BTreeMap<(String, String), Cell>,
    /// Summary rows: kind and, per method, the summary.
    pub summaries: Vec<(SummaryKind, Vec<Summary>)>,
}

fn check_pct(v: f64, field: &str, r: &RunResult, i: usize) -> Result<()> {
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        bail!(
            "result {i} (task {}, method {}, seed {}): {field} = {v} is not a percentage in [0, 100]",
            r.task,
            r.method,
            r.seed
        );
    }
    Ok(())
}

/// Build the table. `published_as` maps our method labels to a published row (exact vtab.md name or
/// alias such as `adaptformer`); unmapped methods show no published numbers.
/// Errors name the offending result: unknown task, duplicate (task, method, seed), accuracy outside
/// [0, 100], duplicate task names, unknown published row.
pub fn build_table(
    results: &[RunResult],
    tasks: &[TaskMeta],
    published_as: &BTreeMap<String, String>,
) -> Result<Table> {
    let mut task_names = BTreeSet::new();
    for t in tasks {
        if !task_names.insert(t.name.as_str()) {
            bail!("task `{}` is listed twice", t.name);
        }
        if t.vtab1k {
            match crate::data::vtab_tasks::by_folder(&t.name).map(|v| v.group) {
                None => bail!(
                    "task `{}` is marked vtab1k but is not a VTAB-1K folder name",
                    t.name
                ),
                Some(g) if g != t.group => bail!(
                    "task `{}` is in group {} in VTAB-1K, not {}",
                    t.name,
                    g.label(),
                    t.group.label()
                ),
                _ => {}
            }
        }
    }
    let mut methods: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut by_cell: BTreeMap<(String, String), Vec<&RunResult>> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        if !task_names.contains(r.task.as_str()) {
            bail!(
                "result {i} (method {}, seed {}): task `{}` is not one of the table's tasks ({})",
                r.method,
                r.seed,
                r.task,
                tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !seen.insert((r.task.clone(), r.method.clone(), r.seed)) {
            bail!(
                "result {i}: duplicate result for task {}, method {}, seed {}",
                r.task,
                r.method,
                r.seed
            );
        }
        check_pct(r.top1_best, "top1_best", r, i)?;
        check_pct(r.top1_final, "top1_final", r, i)?;
        if let Some(t5) = r.top5_final {
            check_pct(t5, "top5_final", r, i)?;
        }
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
        by_cell
            .entry((r.task.clone(), r.method.clone()))
            .or_default()
            .push(r);
    }
    let mut pub_rows: BTreeMap<String, &PublishedMethod> = BTreeMap::new();
    let mut pub_names = BTreeMap::new();
    for (ours, theirs) in published_as {
        let row = find_published(theirs).with_context(|| {
            format!(
                "published_as.{ours}: `{theirs}` is not a published method; expected one of: {}",
                published_names().join(", ")
            )
        })?;
        pub_rows.insert(ours.clone(), row);
        pub_names.insert(ours.clone(), row.name.to_string());
    }
    let meta: BTreeMap<&str, &TaskMeta> = tasks.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut cells = BTreeMap::new();
    for ((task, method), mut runs) in by_cell {
        runs.sort_by_key(|r| r.seed);
        let best: Vec<f64> = runs.iter().map(|r| r.top1_best).collect();
        let fin: Vec<f64> = runs.iter().map(|r| r.top1_final).collect();
        let t5: Vec<f64> = runs.iter().filter_map(|r| r.top5_final).collect();
        let published = if meta[task.as_str()].vtab1k {
            pub_rows.get(&method).and_then(|p| p.task(&task))
        } else {
            None
        };
        let cell = Cell {
            seeds: runs.iter().map(|r| r.seed).collect(),
            best: MeanStd::of(&best).expect("non-empty cell"),
            final_: MeanStd::of(&fin).expect("non-empty cell"),
            top5_final: MeanStd::of(&t5),
            published,
        };
        cells.insert((task, method), cell);
    }
    let mut table = Table {
        tasks: tasks.to_vec(),
        methods,
        published_as: pub_names,
        cells,
        summaries: vec![],
    };
    let mut summaries = Vec::new();
    for g in Group::ALL {
        let scope: Vec<&TaskMeta> = tasks.iter().filter(|t| t.group == g).collect();
        if !scope.is_empty() {
            let per_method = table
                .methods
                .iter()
                .map(|m| summarize(&table, results, m, &pub_rows, std::slice::from_ref(&scope)))
                .collect();
            summaries.push((SummaryKind::Group(g), per_method));
        }
    }
    let scopes: Vec<Vec<&TaskMeta>> = Group::ALL
        .iter()
        .map(|g| tasks.iter().filter(|t| t.group == *g).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    if scopes.len() > 1 {
        let per_method = table
            .methods
            .iter()
            .map(|m| summarize(&table, results, m, &pub_rows, &scopes))
            .collect();
        summaries.push((SummaryKind::MeanOfGroupMeans, per_method));
    }
    if !tasks.is_empty() {
        let all: Vec<&TaskMeta> = tasks.iter().collect();
        let per_method = table
            .methods
            .iter()
            .map(|m| summarize(&table, results, m, &pub_rows, std::slice::from_ref(&all)))
            .collect();
        summaries.push((SummaryKind::PlainMean, per_method));
    }
    table.summaries = summaries;
    Ok(table)
}

/// Mean over `scopes` of (mean over the scope's tasks of `value(task)`); `None` if any is missing.
fn mean_of_means(
    scopes: &[Vec<&TaskMeta>],
    value: &dyn Fn(&TaskMeta) -> Option<f64>,
) -> Option<f64> {
    let mut means = Vec::new();
    for scope in scopes {
        let vals: Option<Vec<f64>> = scope.iter().map(|t| value(t)).collect();
        means.push(mean(&vals?)?);
    }
    mean(&means)
}

fn summarize(
    table: &Table,
    results: &[RunResult],
    method: &str,
    pub_rows: &BTreeMap<String, &PublishedMethod>,
    scopes: &[Vec<&TaskMeta>],
) -> Summary {
    let cell = |t: &TaskMeta| table.cells.get(&(t.name.clone(), method.to_string()));
    let best = mean_of_means(scopes, &|t| cell(t).map(|c| c.best.mean));
    let final_ = mean_of_means(scopes, &|t| cell(t).map(|c| c.final_.mean));
    // per-seed summaries over seeds present in every task of the scopes
    let mut seeds: Option<BTreeSet<u64>> = None;
    for t in scopes.iter().flatten() {
        let s: BTreeSet<u64> = cell(t)
            .map(|c| c.seeds.iter().copied().collect())
            .unwrap_or_default();
        seeds = Some(match seeds {
            None => s,
            Some(prev) => prev.intersection(&s).copied().collect(),
        });
    }
    let seeds = seeds.unwrap_or_default();
    let run = |t: &TaskMeta, seed: u64| {
        results
            .iter()
            .find(|r| r.task == t.name && r.method == method && r.seed == seed)
    };
    let per_seed = |metric: Metric| -> Vec<f64> {
        seeds
            .iter()
            .filter_map(|&s| mean_of_means(scopes, &|t| run(t, s).map(|r| metric.of(r))))
            .collect()
    };
    let all_vtab = scopes.iter().flatten().all(|t| t.vtab1k);
    let published = if all_vtab {
        pub_rows
            .get(method)
            .and_then(|p| mean_of_means(scopes, &|t| p.task(&t.name)))
    } else {
        None
    };
    Summary {
        best,
        final_,
        best_std: sample_std(&per_seed(Metric::Top1Best)),
        final_std: sample_std(&per_seed(Metric::Top1Final)),
        published,
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into())
}

fn fmt_summary(v: Option<f64>, s: Option<f64>) -> String {
    match (v, s) {
        (Some(v), Some(s)) => format!("{v:.2} ± {s:.2}"),
        (Some(v), None) => format!("{v:.2}"),
        _ => "—".into(),
    }
}

impl Table {
    /// The cell of a task and method.
    pub fn cell(&self, task: &str, method: &str) -> Option<&Cell> {
        self.cells.get(&(task.to_string(), method.to_string()))
    }

    /// The summary of a kind for a method.
    pub fn summary(&self, kind: SummaryKind, method: &str) -> Option<&Summary> {
        let i = self.methods.iter().position(|m| m == method)?;
        self.summaries
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| &v[i])
    }

    fn has_published(&self, method: &str) -> bool {
        self.published_as.contains_key(method)
            && (self
                .cells
                .iter()
                .any(|((_, m), c)| m == method && c.published.is_some()))
    }

    /// Header and rows of the wide table for one metric: task, group, then per method our
    /// `mean ± std` and, for methods with published numbers in this table, a published column.
    pub fn grid(&self, metric: Metric) -> (Vec<String>, Vec<Vec<String>>) {
        let mut header = vec!["task".to_string(), "group".to_string()];
        for m in &self.methods {
            header.push(format!("{m} (n seeds)"));
            if self.has_published(m) {
                header.push(format!("{m}: published {}", self.published_as[m]));
            }
        }
        let mut rows = Vec::new();
        for t in &self.tasks {
            let mut row = vec![t.name.clone(), t.group.label().to_string()];
            for m in &self.methods {
                let c = self.cell(&t.name, m);
                row.push(match c {
                    Some(c) => {
                        let v = match metric {
                            Metric::Top1Best => c.best,
                            Metric::Top1Final => c.final_,
                        };
                        format!("{} ({})", v.fmt(), v.n)
                    }
                    None => "—".into(),
                });
                if self.has_published(m) {
                    row.push(fmt_opt(c.and_then(|c| c.published)));
                }
            }
            rows.push(row);
        }
        for (kind, sums) in &self.summaries {
            let ntasks = match kind {
                SummaryKind::Group(g) => self.tasks.iter().filter(|t| t.group == *g).count(),
                _ => self.tasks.len(),
            };
            let mut row = vec![kind.label(), format!("{ntasks} tasks")];
            for (m, s) in self.methods.iter().zip(sums) {
                row.push(match metric {
                    Metric::Top1Best => fmt_summary(s.best, s.best_std),
                    Metric::Top1Final => fmt_summary(s.final_, s.final_std),
                });
                if self.has_published(m) {
                    row.push(fmt_opt(s.published));
                }
            }
            rows.push(row);
        }
        (header, rows)
    }

    /// GitHub Markdown: one table for final-epoch top-1 (the honest number) and one for best-epoch
    /// top-1 (the literature protocol), each labelled.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        for metric in [Metric::Top1Final, Metric::Top1Best] {
            let _ = writeln!(s, "**{} (%), mean ± std over seeds**\n", metric.label());
            let (h, rows) = self.grid(metric);
            s.push_str(&markdown_table(&h, &rows));
            s.push('\n');
        }
        s
    }

    /// Aligned plain text for stdout (both metrics).
    pub fn to_terminal(&self) -> String {
        let mut s = String::new();
        for metric in [Metric::Top1Final, Metric::Top1Best] {
            let _ = writeln!(s, "{} (%), mean ± std over seeds", metric.label());
            let (h, rows) = self.grid(metric);
            s.push_str(&text_table(&h, &rows));
            s.push('\n');
        }
        s
    }

    /// Long-format CSV: one row per task x method and per summary x method, columns
    /// `kind,task,group,method,n_seeds,best_mean,best_std,final_mean,final_std,top5_final_mean,top5_final_std,published`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut w = csv::Writer::from_path(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        w.write_record([
            "kind",
            "task",
            "group",
            "method",
            "n_seeds",
            "best_mean",
            "best_std",
            "final_mean",
            "final_std",
            "top5_final_mean",
            "top5_final_std",
            "published",
        ])?;
        let num = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
        for t in &self.tasks {
            for m in &self.methods {
                if let Some(c) = self.cell(&t.name, m) {
                    w.write_record([
                        "task".to_string(),
                        t.name.clone(),
                        t.group.label().to_string(),
                        m.clone(),
                        c.seeds.len().to_string(),
                        num(Some(c.best.mean)),
                        num(c.best.std),
                        num(Some(c.final_.mean)),
                        num(c.final_.std),
                        num(c.top5_final.map(|x| x.mean)),
                        num(c.top5_final.and_then(|x| x.std)),
                        num(c.published),
                    ])?;
                }
            }
        }
        for (kind, sums) in &self.summaries {
            let (k, g) = match kind {
                SummaryKind::Group(g) => ("group_mean", g.label()),
                SummaryKind::MeanOfGroupMeans => ("mean_of_group_means", ""),
                SummaryKind::PlainMean => ("plain_mean", ""),
            };
            for (m, s) in self.methods.iter().zip(sums) {
                w.write_record([
                    k.to_string(),
                    String::new(),
                    g.to_string(),
                    m.clone(),
                    String::new(),
                    num(s.best),
                    num(s.best_std),
                    num(s.final_),
                    num(s.final_std),
                    String::new(),
                    String::new(),
                    num(s.published),
                ])?;
            }
        }
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// A GitHub Markdown table (`|` in cells escaped).
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let esc = |c: &String| c.replace('|', "\\|");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| {} |",
        header.iter().map(esc).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} |",
            r.iter().map(esc).collect::<Vec<_>>().join(" | ")
        );
    }
    s
}

/// A plain-text table with columns padded to their widest cell (by characters).
pub fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let ncol = header.len();
    let mut width = vec![0usize; ncol];
    for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
        for (i, c) in r.iter().enumerate().take(ncol) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |r: &[String]| -> String {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(width[i] - c.chars().count())))
            .collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut s = line(header);
    s.push_str(
        &(width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
            + "\n"),
    );
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// Read a per-epoch CSV: a header with an `epoch` column and optionally `train_loss`,
/// `test_top1`, `lr` (other columns ignored; empty cells are missing values). Errors name the
/// file, line and column.
pub fn read_epochs_csv(path: &Path) -> Result<Vec<EpochRow>> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(
        idat_engine::cache::verified::open(path)
            .with_context(|| format!("cannot open epoch log {}", path.display()))?,
    );
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: cannot read the header line", path.display()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let epoch_col = col("epoch").with_context(|| {
        format!(
            "{}: line 1: no `epoch` column (found: {})",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        )
    })?;
    let (loss_c, top1_c, lr_c) = (col("train_loss"), col("test_top1"), col("lr"));
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("{}: line {line}: malformed CSV", path.display()))?;
        let field = |c: Option<usize>, name: &str| -> Result<Option<f64>> {
            let Some(c) = c else { return Ok(None) };
            let v = rec.get(c).unwrap_or("");
            if v.is_empty() {
                return Ok(None);
            }
            let x: f64 = v.parse().with_context(|| {
                format!(
                    "{}: line {line}: column `{name}`: `{v}` is not a number",
                    path.display()
                )
            })?;
            if !x.is_finite() {
                bail!(
                    "{}: line {line}: column `{name}`: `{v}` is not finite",
                    path.display()
                );
            }
            Ok(Some(x))
        };
        let ev = rec.get(epoch_col).unwrap_or("");
        let epoch: usize = ev.parse().with_context(|| {
            format!(
                "{}: line {line}: column `epoch`: `{ev}` is not a non-negative integer",
                path.display()
            )
        })?;
        rows.push(EpochRow {
            epoch,
            train_loss: field(loss_c, "train_loss")?,
            test_top1: field(top1_c, "test_top1")?,
            lr: field(lr_c, "lr")?,
        });
    }
    Ok(rows)
}

/// The epoch rows of a run (reading its CSV when given as a path); `None` when it has none.
pub fn epochs_of(r: &RunResult) -> Result<Option<Vec<EpochRow>>> {
    match &r.epochs {
        None => Ok(None),
        Some(Epochs::Rows(rows)) => Ok(Some(rows.clone())),
        Some(Epochs::Csv(p)) => Ok(Some(read_epochs_csv(p)?)),
    }
}

/// Which per-epoch quantity to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurveField {
    /// Training loss.
    TrainLoss,
    /// Test top-1 %.
    TestTop1,
}

/// Per method, the mean over seeds of `field` at each epoch for `task`: points
/// `(epoch, mean)` at epochs where at least one seed has a value. Methods without epoch logs are
/// left out.
pub fn mean_curves(
    results: &[RunResult],
    task: &str,
    field: CurveField,
) -> Result<Vec<super::plot::Series>> {
    let mut methods: Vec<String> = Vec::new();
    let mut acc: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.task == task) {
        let Some(rows) = epochs_of(r)? else { continue };
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
        let per_epoch = acc.entry(r.method.clone()).or_default();
        for row in rows {
            let v = match field {
                CurveField::TrainLoss => row.train_loss,
                CurveField::TestTop1 => row.test_top1,
            };
            if let Some(v) = v {
                per_epoch.entry(row.epoch).or_default().push(v);
            }
        }
    }
    Ok(methods
        .into_iter()
        .map(|m| {
            let pts = acc[&m]
                .iter()
                .filter_map(|(e, vs)| mean(vs).map(|v| (*e as f64, v)))
                .collect();
            (m, pts)
        })
        .filter(|(_, pts): &(String, Vec<(f64, f64)>)| !pts.is_empty())
        .collect())
}
