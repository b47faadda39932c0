//! Paired comparison of a treatment (iDAT) against a baseline (AT): per task, the per-seed
//! differences treatment - baseline (paired by seed); over tasks, wins/ties/losses of the per-task
//! mean differences, an exact two-sided sign test and a paired t-test; and a plain-language verdict
//! produced by the rules of docs/report.md (implemented in [`verdict`]).
use super::stats::{mean, paired_t_test, sample_std, sign_test_p, TTest};
use super::vtab::{markdown_table, text_table, Metric, RunResult};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Significance level of the verdict rules.
pub const ALPHA: f64 = 0.05;

/// Options of the comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompareOptions {
    /// Which accuracy to compare (default: final epoch, the honest one).
    pub metric: Metric,
    /// |difference| at or below this many points counts as a tie (default 0.005: equal at the
    /// two decimals the tables print).
    pub tie_tolerance: f64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            metric: Metric::Top1Final,
            tie_tolerance: 0.005,
        }
    }
}

/// Win, tie or loss of the treatment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Treatment higher by more than the tolerance.
    Win,
    /// Within the tolerance.
    Tie,
    /// Treatment lower by more than the tolerance.
    Loss,
}

fn outcome(d: f64, tol: f64) -> Outcome {
    if d > tol {
        Outcome::Win
    } else if d < -tol {
        Outcome::Loss
    } else {
        Outcome::Tie
    }
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Tally {
    /// Treatment better.
    pub wins: usize,
    /// Equal within tolerance.
    pub ties: usize,
    /// Treatment worse.
    pub losses: usize,
}

impl Tally {
    fn of(diffs: &[f64], tol: f64) -> Tally {
        let mut t = Tally::default();
        for &d in diffs {
            match outcome(d, tol) {
                Outcome::Win => t.wins += 1,
                Outcome::Tie => t.ties += 1,
                Outcome::Loss => t.losses += 1,
            }
        }
        t
    }
    /// Exact two-sided sign test p-value with ties dropped.
    pub fn sign_p(&self) -> f64 {
        sign_test_p(self.wins, self.losses)
    }
}

/// The paired comparison on one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskComparison {
    /// Task name.
    pub task: String,
    /// Seeds present for both methods.
    pub seeds: Vec<u64>,
    /// Baseline mean and std over the paired seeds.
    pub baseline_mean: f64,
    /// Baseline sample std.
    pub baseline_std: Option<f64>,
    /// Treatment mean over the paired seeds.
    pub treatment_mean: f64,
    /// Treatment sample std.
    pub treatment_std: Option<f64>,
    /// Per-seed differences treatment - baseline, in seed order.
    pub diffs: Vec<f64>,
    /// Mean of the differences.
    pub mean_diff: f64,
    /// Sample std of the differences.
    pub std_diff: Option<f64>,
    /// Outcomes over seeds.
    pub seeds_tally: Tally,
    /// Paired t-test over seeds.
    pub t_test: Option<TTest>,
    /// Outcome of the mean difference.
    pub outcome: Outcome,
}

/// The comparison over all tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Baseline method label.
    pub baseline: String,
    /// Treatment method label.
    pub treatment: String,
    /// Metric compared.
    pub metric: Metric,
    /// Per task, in the order the tasks first appear in the results.
    pub tasks: Vec<TaskComparison>,
    /// (task, method, seed) runs without a partner, left out.
    pub unpaired: Vec<(String, String, u64)>,
    /// Outcomes of the per-task mean differences.
    pub tasks_tally: Tally,
    /// Mean over tasks of the per-task mean differences.
    pub mean_diff: Option<f64>,
    /// Std over tasks of the per-task mean differences.
    pub std_diff_tasks: Option<f64>,
    /// Std of all per-(task, seed) differences pooled.
    pub std_diff_pooled: Option<f64>,
    /// Sign test over tasks (ties dropped).
    pub sign_p: f64,
    /// Paired t-test over the per-task mean differences.
    pub t_test: Option<TTest>,
    /// The plain-language verdict.
    pub verdict: String,
}

/// Compare `treatment` against `baseline` over the runs in `results` (other methods ignored).
/// Errors when either method has no runs or no (task, seed) pair exists.
pub fn compare(
    results: &[RunResult],
    baseline: &str,
    treatment: &str,
    opts: &CompareOptions,
) -> Result<Comparison> {
    for m in [baseline, treatment] {
        if !results.iter().any(|r| r.method == m) {
            let known: BTreeSet<&str> = results.iter().map(|r| r.method.as_str()).collect();
            bail!(
                "no results for method `{m}` (methods present: {})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut task_order: Vec<String> = Vec::new();
    let mut runs: BTreeMap<(String, String, u64), f64> = BTreeMap::new();
    for r in results
        .iter()
        .filter(|r| r.method == baseline || r.method == treatment)
    {
        if !task_order.contains(&r.task) {
            task_order.push(r.task.clone());
        }
        if runs
            .insert(
                (r.task.clone(), r.method.clone(), r.seed),
                opts.metric.of(r),
            )
            .is_some()
        {
            bail!(
                "duplicate result for task {}, method {}, seed {}",
                r.task,
                r.method,
                r.seed
            );
        }
    }
    let mut unpaired = Vec::new();
    for (t, m, s) in runs.keys() {
        let other = if m == baseline { treatment } else { baseline };
        if !runs.contains_key(&(t.clone(), other.to_string(), *s)) {
            unpaired.push((t.clone(), m.clone(), *s));
        }
    }
    let mut tasks = Vec::new();
    for task in &task_order {
        let mut seeds = Vec::new();
        let (mut b, mut tr) = (Vec::new(), Vec::new());
        for ((t, m, s), v) in &runs {
            if t == task && m == baseline {
                if let Some(v2) = runs.get(&(t.clone(), treatment.to_string(), *s)) {
                    seeds.push(*s);
                    b.push(*v);
                    tr.push(*v2);
                }
            }
        }
        if seeds.is_empty() {
            continue;
        }
        let diffs: Vec<f64> = tr.iter().zip(&b).map(|(x, y)| x - y).collect();
        let mean_diff = mean(&diffs).expect("non-empty");
        tasks.push(TaskComparison {
            task: task.clone(),
            seeds,
            baseline_mean: mean(&b).expect("non-empty"),
            baseline_std: sample_std(&b),
            treatment_mean: mean(&tr).expect("non-empty"),
            treatment_std: sample_std(&tr),
            seeds_tally: Tally::of(&diffs, opts.tie_tolerance),
            t_test: paired_t_test(&diffs),
            std_diff: sample_std(&diffs),
            outcome: outcome(mean_diff, opts.tie_tolerance),
            mean_diff,
            diffs,
        });
    }
    if tasks.is_empty() {
        bail!("no task has a seed run by both `{baseline}` and `{treatment}`: nothing to compare");
    }
    let task_means: Vec<f64> = tasks.iter().map(|t| t.mean_diff).collect();
    let pooled: Vec<f64> = tasks.iter().flat_map(|t| t.diffs.clone()).collect();
    let tasks_tally = Tally::of(&task_means, opts.tie_tolerance);
    let mut c = Comparison {
        baseline: baseline.to_string(),
        treatment: treatment.to_string(),
        metric: opts.metric,
        mean_diff: mean(&task_means),
        std_diff_tasks: sample_std(&task_means),
        std_diff_pooled: sample_std(&pooled),
        sign_p: tasks_tally.sign_p(),
        t_test: paired_t_test(&task_means),
        tasks_tally,
        tasks,
        unpaired,
        verdict: String::new(),
    };
    c.verdict = verdict(&c);
    Ok(c)
}

fn signed(x: f64) -> String {
    format!("{x:+.2}")
}

/// The verdict sentence. Rules (docs/report.md, "Verdict rules"):
/// 1. Count tasks where the treatment's mean difference is a win, tie or loss.
/// 2. Significance is the exact two-sided sign test over tasks at [`ALPHA`]; with fewer than 6
///    non-tied tasks it can never reach p < 0.05, and the verdict says so.
/// 3. "helped" needs p < ALPHA, more wins than losses and a positive mean difference;
///    "hurt" the mirror image; otherwise "no clear difference".
/// 4. The sentence always states wins/N, the mean difference ± the std over tasks, p, the metric
///    and the number of unpaired runs left out.
pub fn verdict(c: &Comparison) -> String {
    let t = c.tasks_tally;
    let n = c.tasks.len();
    let decided = t.wins + t.losses;
    let md = c.mean_diff.unwrap_or(0.0);
    let spread = match c.std_diff_tasks {
        Some(s) => format!("{} ± {:.2} points (std over tasks)", signed(md), s),
        None => match c.std_diff_pooled {
            Some(s) => format!("{} ± {:.2} points (std over seeds)", signed(md), s),
            None => format!("{} points", signed(md)),
        },
    };
    let p = c.sign_p;
    let head = if p < ALPHA && t.wins > t.losses && md > 0.0 {
        format!("{} helped here", c.treatment)
    } else if p < ALPHA && t.losses > t.wins && md < 0.0 {
        format!("{} hurt here", c.treatment)
    } else if decided < 6 {
        format!(
            "no conclusion: {decided} non-tied task(s) are too few for the sign test to reach p < {ALPHA} (smallest possible p = {:.3})",
            sign_test_p(decided, 0)
        )
    } else {
        format!(
            "no clear difference: {} did not reliably help here",
            c.treatment
        )
    };
    let mut s = format!(
        "{head}. {} beat {} on {}/{n} tasks ({} worse, {} tied) on {}; mean difference {spread}; sign test p={:.3}{}.",
        c.treatment,
        c.baseline,
        t.wins,
        t.losses,
        t.ties,
        c.metric.label(),
        p,
        if p < ALPHA { ", significant at 0.05" } else { ", not significant at 0.05" }
    );
    if !c.unpaired.is_empty() {
        s.push_str(&format!(
            " {} run(s) without a partner seed were left out.",
            c.unpaired.len()
        ));
    }
    s
}

impl Comparison {
    /// Header and rows: per task then an `all tasks` row.
    pub fn grid(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let f = |m: f64, s: Option<f64>| match s {
            Some(s) => format!("{m:.2} ± {s:.2}"),
            None => format!("{m:.2}"),
        };
        let header: Vec<String> = [
            "task".to_string(),
            "seeds".into(),
            self.baseline.clone(),
            self.treatment.clone(),
            format!(
                "{} - {} (per-seed mean ± std)",
                self.treatment, self.baseline
            ),
            "seeds W/T/L".into(),
            "paired t (p)".into(),
        ]
        .into();
        let mut rows: Vec<Vec<String>> = self
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.task.clone(),
                    t.seeds.len().to_string(),
                    f(t.baseline_mean, t.baseline_std),
                    f(t.treatment_mean, t.treatment_std),
                    format!(
                        "{}{}",
                        signed(t.mean_diff),
                        t.std_diff.map(|s| format!(" ± {s:.2}")).unwrap_or_default()
                    ),
                    format!(
                        "{}/{}/{}",
                        t.seeds_tally.wins, t.seeds_tally.ties, t.seeds_tally.losses
                    ),
                    t.t_test
                        .map(|x| format!("{:.2} ({:.3})", x.t, x.p))
                        .unwrap_or_else(|| "—".into()),
                ]
            })
            .collect();
        rows.push(vec![
            "all tasks".into(),
            format!("{} tasks", self.tasks.len()),
            String::new(),
            String::new(),
            format!(
                "{}{}",
                signed(self.mean_diff.unwrap_or(0.0)),
                self.std_diff_tasks
                    .map(|s| format!(" ± {s:.2}"))
                    .unwrap_or_default()
            ),
            format!(
                "tasks {}/{}/{} (sign p={:.3})",
                self.tasks_tally.wins, self.tasks_tally.ties, self.tasks_tally.losses, self.sign_p
            ),
            self.t_test
                .map(|x| format!("{:.2} ({:.3})", x.t, x.p))
                .unwrap_or_else(|| "—".into()),
        ]);
        (header, rows)
    }

    /// Plain-text summary for stdout: the table and the verdict.
    pub fn to_terminal(&self) -> String {
        let (h, r) = self.grid();
        format!(
            "{} vs {} ({} %)\n{}\n{}\n",
            self.treatment,
            self.baseline,
            self.metric.label(),
            text_table(&h, &r),
            self.verdict
        )
    }

    /// Markdown table and verdict.
    pub fn to_markdown(&self) -> String {
        let (h, r) = self.grid();
        format!(
            "{}\n**Verdict:** {}\n",
            markdown_table(&h, &r),
            self.verdict
        )
    }
}
