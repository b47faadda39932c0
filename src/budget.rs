//! `idat-pipe budget`: how long each training and evaluation instance of a pipeline takes,
//! from rates measured by `idat-pipe bench --json`, and whether the stages' `resources.time`
//! limits cover it.
//!
//! An instance's time is its training steps plus its evaluations:
//!
//! - `train/adapt`, `train/idat`: `optim.total_epochs()` epochs of `n / batch_size` steps
//!   (the last partial batch is dropped, as the loop does; `n` = 1,000 VTAB-1K training
//!   images), each step `batch_size` images at the `at` / `idat` step rate; after every
//!   `eval_every`-th epoch and the last one, the test split through the student (AT) or the
//!   student and the teacher in one pass (iDAT) at the `eval_at` / `eval_idat` rate;
//! - `eval`: one pass over the test split at the `eval_at` rate.
//!
//! Test-split sizes come from the VTAB-1K task table ([`crate::data::vtab_tasks`]); an
//! instance whose task is not a VTAB-1K task is listed without a budget. Where the rates
//! hold no evaluation rate, the training step's rate of the same models bounds it (a
//! training step runs the same forward passes and a backward on as many images), so the
//! evaluation times are upper bounds and the output says so. Rates measured at another
//! batch size than an instance's are used as they are, and the output names the batch.
use crate::bench::{StepKind, StepReport};
use crate::config::resources::seconds;
use crate::config::{Instance, Loaded};
use crate::data::vtab_tasks::{task_info, SPLIT_SIZES};
use crate::train::{evaluates_after, steps_per_epoch, OptimConfig};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Measured rates by (kind, batch size), each the report it came from.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    by: BTreeMap<(&'static str, usize, usize), StepReport>,
}

impl Rates {
    /// The `idat-pipe bench --json` reports in `text` (`origin` names it in errors): every
    /// line that starts with `{` must be one; other lines (a table, log lines) are skipped.
    /// A later report of the same kind and batch replaces an earlier one.
    ///
    /// # Errors
    /// A `{` line that is not a bench report, named `origin:line`; no report at all.
    pub fn parse(text: &str, origin: &str) -> Result<Rates> {
        let mut r = Rates::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.starts_with('{') {
                continue;
            }
            let rep: StepReport = serde_json::from_str(line).with_context(|| {
                format!(
                    "{origin}:{}: not a report of `idat-pipe bench --json`",
                    i + 1
                )
            })?;
            if !(rep.images_per_s.is_finite()
                && rep.images_per_s >= 1e-3
                && rep.images_per_s <= 1e9)
            {
                bail!(
                    "{origin}:{}: images_per_s must be a number from 0.001 to 1e9, got {}",
                    i + 1,
                    rep.images_per_s
                );
            }
            if rep.batch == 0 || rep.img_size == 0 || rep.accum_steps == 0 {
                bail!(
                    "{origin}:{}: batch, img_size and accum_steps must be at least 1",
                    i + 1
                );
            }
            r.by.insert((rep.kind.name(), rep.batch, rep.accum_steps), rep);
        }
        if r.by.is_empty() {
            bail!("{origin}: no `idat-pipe bench --json` report in it (lines starting with `{{`)");
        }
        Ok(r)
    }

    /// Reads and merges the files (later files win, as later lines do).
    ///
    /// # Errors
    /// A file that cannot be read, or as [`Rates::parse`].
    pub fn read(files: &[impl AsRef<Path>]) -> Result<Rates> {
        let mut all = Rates::default();
        for f in files {
            let f = f.as_ref();
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            all.by
                .extend(Rates::parse(&text, &f.display().to_string())?.by);
        }
        Ok(all)
    }

    /// The report of `kind` at `batch` with `accum` micro-batches; else the nearest batch,
    /// the same accumulation first.
    fn get(&self, kind: StepKind, batch: usize, accum: usize) -> Option<&StepReport> {
        self.by
            .iter()
            .filter(|((k, _, _), _)| *k == kind.name())
            .min_by_key(|((_, b, a), _)| (*a != accum, b.abs_diff(batch)))
            .map(|(_, r)| r)
    }

    /// The distinct devices the reports were measured on.
    fn devices(&self) -> Vec<&str> {
        let mut d: Vec<&str> = self.by.values().map(|r| r.device.as_str()).collect();
        d.sort_unstable();
        d.dedup();
        d
    }
}

/// The rate one part of an instance runs at, and where it comes from.
#[derive(Debug, Clone, Serialize)]
pub struct PartRate {
    /// Images per second.
    pub images_per_s: f64,
    /// The bench kind measured (`at`, `idat`, `eval_at`, `eval_idat`).
    pub measured: String,
    /// The batch size it was measured at.
    pub batch: usize,
    /// Its gradient accumulation (training kinds; 1 for evaluations).
    pub accum_steps: usize,
    /// The image size it was measured at.
    pub img_size: usize,
    /// True when an evaluation rate is bounded by a training step's rate (no evaluation
    /// was measured): the time is an upper bound.
    pub bound: bool,
}

/// The time of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceBudget {
    /// The instance id (`idat[task=dtd,seed=42]`).
    pub id: String,
    /// Its stage.
    pub stage: String,
    /// Its stage kind.
    pub uses: String,
    /// Its task.
    pub task: String,
    /// Its adapter method (`idat-pipe bench` measures `seq_adapter`).
    pub adapter: String,
    /// Test images evaluated per evaluation.
    pub test_images: usize,
    /// Training steps (0 for `eval`).
    pub steps: usize,
    /// Evaluations of the test split.
    pub evaluations: usize,
    /// Seconds of training.
    pub train_s: f64,
    /// Seconds of evaluation.
    pub eval_s: f64,
    /// The training rate used (none for `eval`).
    pub train_rate: Option<PartRate>,
    /// The evaluation rate used.
    pub eval_rate: PartRate,
}

impl InstanceBudget {
    /// Training plus evaluation, seconds.
    pub fn total_s(&self) -> f64 {
        self.train_s + self.eval_s
    }
}

/// Per stage: its longest instance against its `resources.time`.
#[derive(Debug, Clone, Serialize)]
pub struct StageBudget {
    /// The stage id.
    pub stage: String,
    /// Its instances with a budget.
    pub instances: usize,
    /// The id of the longest one.
    pub longest: String,
    /// Its seconds.
    pub longest_s: f64,
    /// `longest_s * margin`, rounded up to the quarter hour, as a limit to write.
    pub suggested: String,
    /// The suggested limit in seconds.
    pub suggested_s: u64,
    /// The stage's `resources.time` as written, if any.
    pub limit: Option<String>,
    /// True when `limit` is below `longest_s * margin`.
    pub too_short: bool,
}

/// Everything `idat-pipe budget` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    /// One row per budgeted instance, in pipeline order.
    pub instances: Vec<InstanceBudget>,
    /// One row per stage with budgeted instances.
    pub stages: Vec<StageBudget>,
    /// Instances of training or evaluation kinds left out, with why.
    pub skipped: Vec<(String, String)>,
    /// The margin the suggestions use.
    pub margin: f64,
}

/// A year in seconds: no budget is longer.
const YEAR_S: f64 = 365.0 * 86_400.0;

/// VTAB-1K training images (`train800val200`), which training reads.
fn train_images() -> usize {
    SPLIT_SIZES
        .iter()
        .find(|(s, _)| *s == "train800val200")
        .map_or(1000, |(_, n)| *n)
}

/// The rate of `kind` at `batch` ([`PartRate`]); an evaluation kind that was not measured
/// falls back to `step` (bounded).
fn part_rate(
    rates: &Rates,
    kind: StepKind,
    step: StepKind,
    batch: usize,
    accum: usize,
) -> Result<PartRate> {
    let (rep, bound) = match rates.get(kind, batch, if kind.is_eval() { 1 } else { accum }) {
        Some(r) => (r, false),
        None => match rates.get(step, batch, accum) {
            Some(r) if kind.is_eval() => (r, true),
            _ => bail!(
                "the rates hold no `{}` report (run `idat-pipe bench --mode {} --json`)",
                step.name(),
                step.name()
            ),
        },
    };
    Ok(PartRate {
        images_per_s: rep.images_per_s,
        measured: rep.kind.name().into(),
        batch: rep.batch,
        accum_steps: rep.accum_steps,
        img_size: rep.img_size,
        bound,
    })
}

/// What budget reads of a training or evaluation instance, through the kind's own params
/// type (so its defaults are the kind's).
struct Reading {
    /// (training step, its evaluation, the optimiser, `eval_every`); `None` for `eval`.
    train: Option<(StepKind, StepKind, OptimConfig, usize)>,
    task: String,
    data: String,
    adapter: &'static str,
    /// `eval`'s batch size.
    eval_batch: usize,
}

/// The instance's params, `Ok(None)` for kinds without a budget (decoding, models,
/// reports).
fn read_params(inst: &Instance) -> Result<Option<Reading>> {
    use crate::kinds::{eval, train};
    let with = || inst.with.clone();
    Ok(Some(match inst.uses.as_str() {
        "train/adapt" => {
            let p: train::AdaptParams = serde_json::from_value(with()).context("its `with:`")?;
            Reading {
                train: Some((StepKind::At, StepKind::EvalAt, p.optim, p.eval_every)),
                task: p.task,
                data: p.data.to_string(),
                adapter: p.adapter.name(),
                eval_batch: 0,
            }
        }
        "train/idat" => {
            let p: train::IdatParams = serde_json::from_value(with()).context("its `with:`")?;
            Reading {
                train: Some((StepKind::Idat, StepKind::EvalIdat, p.optim, p.eval_every)),
                task: p.task,
                data: p.data.to_string(),
                adapter: p.adapter.name(),
                eval_batch: 0,
            }
        }
        "eval" => {
            let p: eval::Params = serde_json::from_value(with()).context("its `with:`")?;
            // `eval` names no task: its matrix cell does, as in the shipped pipelines.
            let task = inst
                .cell
                .iter()
                .find(|(k, _)| k == "task")
                .and_then(|(_, v)| v.as_str())
                .context("no `task` axis in its matrix")?;
            Reading {
                train: None,
                task: task.to_string(),
                data: p.data.to_string(),
                adapter: crate::nn::adapters::AdapterConfig::default().name(),
                eval_batch: p.batch_size,
            }
        }
        _ => return Ok(None),
    }))
}

/// The budget of one instance, `Ok(None)` for kinds without one (decoding, models,
/// reports).
///
/// # Errors
/// Its `with` cannot be read (named), its data are not VTAB-1K at the measured image size,
/// or a rate is missing.
fn instance_budget(
    inst: &Instance,
    pipeline: &Loaded,
    rates: &Rates,
) -> Result<Option<InstanceBudget>> {
    let Some(r) = read_params(inst)? else {
        return Ok(None);
    };
    let size = vtab_data(&r.data, pipeline, &r.task)?;
    let info = task_info(&r.task).with_context(|| {
        format!(
            "`{}` is not a VTAB-1K task: its test size is unknown",
            r.task
        )
    })?;
    let budget =
        |steps: usize, evaluations: usize, train_s: f64, eval_s: f64, train_rate, eval_rate| {
            InstanceBudget {
                id: inst.id.clone(),
                stage: inst.stage.clone(),
                uses: inst.uses.clone(),
                adapter: r.adapter.to_string(),
                task: r.task.clone(),
                test_images: info.test_size,
                steps,
                evaluations,
                train_s,
                eval_s,
                train_rate,
                eval_rate,
            }
        };
    let Some((train_kind, eval_kind, optim, eval_every)) = &r.train else {
        let rate = part_rate(rates, StepKind::EvalAt, StepKind::At, r.eval_batch, 1)?;
        same_size(&rate, size)?;
        let eval_s = info.test_size as f64 / rate.images_per_s;
        return Ok(Some(budget(0, 1, 0.0, eval_s, None, rate)));
    };
    let epochs = optim.total_epochs();
    let bs = optim.batch_size.max(1);
    let steps = epochs * steps_per_epoch(train_images(), bs);
    let evaluations = (0..epochs)
        .filter(|&e| evaluates_after(e, epochs, *eval_every))
        .count();
    let accum = optim.accum_steps.max(1);
    let train_rate = part_rate(rates, *train_kind, *train_kind, bs, accum)?;
    // The loop evaluates in micro-batches with accumulation.
    let eval_rate = part_rate(
        rates,
        *eval_kind,
        *train_kind,
        optim.micro_batch().max(1),
        accum,
    )?;
    same_size(&train_rate, size)?;
    same_size(&eval_rate, size)?;
    let train_s = (steps * bs) as f64 / train_rate.images_per_s;
    let eval_s = (evaluations * info.test_size) as f64 / eval_rate.images_per_s;
    Ok(Some(budget(
        steps,
        evaluations,
        train_s,
        eval_s,
        Some(train_rate),
        eval_rate,
    )))
}

/// The image size the data of stage `data` are decoded at, after checking that they are
/// VTAB-1K: `data` is a `data/decode` stage whose instance for `task` reads a
/// `dataset/vtab1k` stage (the only benchmark whose split sizes budget knows).
///
/// # Errors
/// Another source, named with its kind and stage; a chain that cannot be followed.
fn vtab_data(data: &str, pipeline: &Loaded, task: &str) -> Result<usize> {
    let decode = pipeline
        .instances
        .iter()
        .filter(|d| d.stage == data)
        .find(|d| d.with.get("task").and_then(|t| t.as_str()) == Some(task))
        .with_context(|| format!("stage `{data}` has no instance for task `{task}`"))?;
    let decode: crate::kinds::decode::Params = serde_json::from_value(decode.with.clone())
        .with_context(|| format!("stage `{data}` is not a `data/decode` stage"))?;
    let dataset = decode.dataset.to_string();
    let uses = pipeline
        .stages
        .iter()
        .find(|(id, _)| *id == dataset)
        .map(|(_, spec)| spec.uses.as_str())
        .unwrap_or("?");
    if uses != "dataset/vtab1k" {
        bail!(
            "its data come from `{uses}` (stage `{dataset}`): budget knows the split sizes of \
             VTAB-1K (`dataset/vtab1k`) only; time one of its epochs instead (its log's epoch lines)"
        );
    }
    Ok(decode.size)
}

/// An error unless `rate` was measured at the image size the instance's data has.
fn same_size(rate: &PartRate, size: usize) -> Result<()> {
    if rate.img_size != size {
        bail!(
            "the `{}` rate was measured at {}x{} images, its data is decoded at {size}x{size}: \
             run `idat-pipe bench` with models of that size",
            rate.measured,
            rate.img_size,
            rate.img_size
        );
    }
    Ok(())
}

/// `seconds` as a limit to write: rounded up to the quarter hour, `2h15m`-style.
pub fn limit_text(seconds: f64) -> (String, u64) {
    // Budgets are at most a year (checked by `budget`); the cast saturates anyway.
    let quarters = (seconds / 900.0).ceil().clamp(1.0, 1e12) as u64;
    let (h, m) = (quarters / 4, (quarters % 4) * 15);
    let text = match (h, m) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    };
    (text, quarters * 900)
}

/// The budget of every training and evaluation instance of `pipeline` at `rates`, and per
/// stage its longest instance against `resources.time` with `margin` (e.g. 1.5).
///
/// # Errors
/// A margin below 1.
pub fn budget(pipeline: &Loaded, rates: &Rates, margin: f64) -> Result<Budget> {
    if !(margin.is_finite() && (1.0..=100.0).contains(&margin)) {
        bail!("--margin must be a number from 1 to 100 (got {margin})");
    }
    let mut instances = Vec::new();
    let mut skipped = Vec::new();
    for inst in &pipeline.instances {
        match instance_budget(inst, pipeline, rates) {
            Ok(Some(b)) if b.total_s() * margin > YEAR_S => bail!(
                "`{}` would take {} at these rates (over a year): check the rates files",
                b.id,
                duration_text(b.total_s())
            ),
            Ok(Some(b)) => instances.push(b),
            Ok(None) => {}
            Err(e) => skipped.push((inst.id.clone(), format!("{e:#}"))),
        }
    }
    let mut stages: Vec<StageBudget> = Vec::new();
    for (stage, spec) in &pipeline.stages {
        let mine: Vec<&InstanceBudget> = instances.iter().filter(|b| &b.stage == stage).collect();
        // The first of the longest, in pipeline order.
        let Some(longest) =
            mine.iter()
                .copied()
                .reduce(|a, b| if b.total_s() > a.total_s() { b } else { a })
        else {
            continue;
        };
        let (suggested, suggested_s) = limit_text(longest.total_s() * margin);
        let limit = spec.resources.time.clone();
        let too_short = limit
            .as_deref()
            .and_then(|l| seconds(l).ok())
            .is_some_and(|l| (l as f64) < longest.total_s() * margin);
        stages.push(StageBudget {
            stage: stage.clone(),
            instances: mine.len(),
            longest: longest.id.clone(),
            longest_s: longest.total_s(),
            suggested,
            suggested_s,
            limit,
            too_short,
        });
    }
    Ok(Budget {
        instances,
        stages,
        skipped,
        margin,
    })
}

/// `seconds` as `1h02m`, `4m10s` or `12s`.
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// Where the rates come from, one line per report.
fn rates_text(rates: &Rates) -> String {
    let mut out = String::new();
    for ((kind, batch, accum), r) in &rates.by {
        let accum = if *accum > 1 {
            format!(", {accum} micro-batches")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "- `{kind}` batch {batch}{accum}, {s}x{s}: {:.1} images/s on {} ({}, threads: {})",
            r.images_per_s,
            // candle's `Device` Debug text for the CPU is `Cpu`.
            if r.device == "Cpu" { "cpu" } else { &r.device },
            r.precision,
            r.threads,
            s = r.img_size,
        );
    }
    out
}

/// What a reader of the numbers should know: bounded evaluations, rates from several
/// machines, an evaluation measured slower than its training step.
fn caveats(b: &Budget, rates: &Rates) -> Vec<String> {
    let mut out = Vec::new();
    if b.instances.iter().any(|i| i.eval_rate.bound) {
        out.push(
            "(at most): the rates hold no evaluation rate (`idat-pipe bench --mode eval`), so \
             evaluation is bounded by the training step's rate: a step runs the same forward \
             passes plus a backward on as many images."
                .to_string(),
        );
    }
    let mut others: Vec<&str> = b
        .instances
        .iter()
        .filter(|i| i.uses != "eval" && i.adapter != "seq_adapter")
        .map(|i| i.adapter.as_str())
        .collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        out.push(format!(
            "`idat-pipe bench` measures `seq_adapter`; the instances with {} take the same \
             rates here, though their adapters cost more or less (VPT adds prompt tokens).",
            others.join(", ")
        ));
    }
    let devices = rates.devices();
    if devices.len() > 1 {
        out.push(format!(
            "Warning: the rates come from {} different machines or devices ({}); a budget \
             mixes them.",
            devices.len(),
            devices.join("; ")
        ));
    }
    for (eval, step) in [
        (StepKind::EvalAt, StepKind::At),
        (StepKind::EvalIdat, StepKind::Idat),
    ] {
        let slower = rates.by.values().filter(|e| e.kind == eval).any(|e| {
            rates
                .by
                .values()
                .any(|t| t.kind == step && t.batch == e.batch && t.images_per_s > e.images_per_s)
        });
        if slower {
            out.push(format!(
                "Warning: `{}` was measured slower than the `{}` training step of the same \
                 batch, which runs the same forward passes and a backward: rerun `idat-pipe \
                 bench` with more `--steps` on a quiet machine.",
                eval.name(),
                step.name()
            ));
        }
    }
    out
}

/// The Markdown report: per instance, per stage, what was left out, and the rates used.
pub fn markdown(b: &Budget, rates: &Rates) -> String {
    let mut out = String::new();
    if b.instances.is_empty() {
        let _ = writeln!(
            out,
            "Nothing budgeted: no `train/adapt`, `train/idat` or `eval` instance with a budget."
        );
    } else {
        instance_table(&mut out, b);
        stage_table(&mut out, b);
    }
    for c in caveats(b, rates) {
        let _ = writeln!(out, "\n{c}");
    }
    // Instances left out, grouped by why.
    let mut why: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, reason) in &b.skipped {
        why.entry(reason).or_default().push(id);
    }
    for (reason, ids) in why {
        let shown: Vec<String> = ids.iter().take(3).map(|i| format!("`{i}`")).collect();
        let more = ids.len().saturating_sub(3);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let _ = writeln!(out, "\nNot budgeted: {}{more}: {reason}.", shown.join(", "));
    }
    let _ = write!(
        out,
        "\nRates (`idat-pipe bench --json`):\n{}",
        rates_text(rates)
    );
    out
}

fn instance_table(out: &mut String, b: &Budget) {
    let _ = writeln!(
        out,
        "| instance | test images | steps | evaluations | training | evaluation | total |\n|---|---|---|---|---|---|---|"
    );
    for i in &b.instances {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {}{} | {} |",
            i.id,
            i.test_images,
            i.steps,
            i.evaluations,
            duration_text(i.train_s),
            duration_text(i.eval_s),
            if i.eval_rate.bound { " (at most)" } else { "" },
            duration_text(i.total_s())
        );
    }
    let total: f64 = b.instances.iter().map(InstanceBudget::total_s).sum();
    let _ = writeln!(
        out,
        "\nAll instances, one after the other: {}.",
        duration_text(total)
    );
}

fn stage_table(out: &mut String, b: &Budget) {
    let _ = writeln!(
        out,
        "\n| stage | instances | longest | its time | x {} rounded up | `resources.time` |\n|---|---|---|---|---|---|",
        b.margin
    );
    for s in &b.stages {
        let verdict = match (&s.limit, s.too_short) {
            (None, _) => "not set".to_string(),
            (Some(l), true) => format!("{l} (too short)"),
            (Some(l), false) => format!("{l} (ok)"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | `{}` | {} | {} | {} |",
            s.stage,
            s.instances,
            s.longest,
            duration_text(s.longest_s),
            s.suggested,
            verdict
        );
    }
}

/// Runs `idat-pipe budget`: the report on stdout. Bad rates files or options exit 2 (as
/// an invalid pipeline does). With `check`, exit 1 when a stage's limit is too short, when a
/// training or evaluation instance could not be budgeted, or when nothing was (each named
/// on stderr).
pub fn cmd(
    pipeline: &Loaded,
    rates: &[std::path::PathBuf],
    margin: f64,
    json: bool,
    check: bool,
) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let computed = Rates::read(rates).and_then(|r| Ok((budget(pipeline, &r, margin)?, r)));
    let (b, rates) = match computed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(crate::cli::EXIT_INVALID));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        print!("{}", markdown(&b, &rates));
    }
    if !check {
        return Ok(ExitCode::SUCCESS);
    }
    let file = pipeline.file.display();
    let mut failed = false;
    for s in b.stages.iter().filter(|s| s.too_short) {
        failed = true;
        eprintln!(
            "{file}: stages.{}.resources.time is {} but its longest instance `{}` needs {} \
             (x {margin}): write `time: {}`",
            s.stage,
            s.limit.as_deref().unwrap_or("?"),
            s.longest,
            duration_text(s.longest_s),
            s.suggested
        );
    }
    for (id, why) in &b.skipped {
        failed = true;
        eprintln!("{file}: `{id}` was not budgeted: {why}");
    }
    if b.instances.is_empty() && b.skipped.is_empty() {
        failed = true;
        eprintln!("{file}: nothing to check: no train/adapt, train/idat or eval instance");
    }
    Ok(if failed {
        ExitCode::from(crate::cli::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: StepKind, batch: usize, images_per_s: f64) -> String {
        serde_json::json!({
            "kind": kind.name(), "device": "Cpu", "threads": 2, "batch": batch,
            "img_size": 224, "steps": 3, "median_ms": 1.0, "min_ms": 1.0,
            "images_per_s": images_per_s, "peak_rss_mib": null, "trainable": 1,
            "precision": "f32", "device_mem_mib": null, "cpu_gemm": "", "full_last_block": false,
            "products": ""
        })
        .to_string()
    }

    const PIPELINE: &str = r#"
version: 1
name: b
stages:
  data:
    uses: dataset/vtab1k
    with: {source: {kind: local, path: /nonexistent}, tasks: [dtd, dsprites_loc]}
  decode:
    uses: data/decode
    needs: [data]
    matrix: {task: [dtd, dsprites_loc]}
    with: {dataset: data, task: "${matrix.task}", size: 224}
  m:
    uses: model/vit
    with: {arch: vit_base_patch16_224, weights: {from: file, path: /nonexistent.safetensors}}
  at:
    uses: train/adapt
    needs: [decode, m]
    matrix: {task: [dtd, dsprites_loc]}
    with: {task: "${matrix.task}", data: decode, model: m,
           optim: {epochs: 10, cooldown_epochs: 2, batch_size: 64}, eval_every: 5}
    resources: {time: 1h}
  idat:
    uses: train/idat
    needs: [decode, m]
    matrix: {task: [dtd]}
    with: {task: dtd, data: decode, student: m, teacher: m, distill: {kind: mse},
           optim: {epochs: 10, cooldown_epochs: 2, batch_size: 64}}
  ev:
    uses: eval
    needs: [at, decode, m]
    matrix: {task: [dtd]}
    with: {train: at, data: decode, model: m}
"#;

    fn loaded() -> Loaded {
        crate::config::load_str("budget.yaml", PIPELINE, &[], &crate::builtin_registry())
            .unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn instance_times_follow_from_the_rates_by_hand() {
        let text = [
            report(StepKind::At, 64, 100.0),
            report(StepKind::Idat, 64, 50.0),
            report(StepKind::EvalAt, 64, 400.0),
        ]
        .join("\n");
        let rates = Rates::parse(&text, "r.jsonl").unwrap();
        let b = budget(&loaded(), &rates, 1.5).unwrap();
        let dtd = &b.instances[0];
        // 12 epochs x 15 steps (1,000 / 64, last batch dropped) x 64 images at 100/s.
        assert_eq!((dtd.steps, dtd.evaluations), (180, 3)); // epochs 5, 10, 12
        assert!((dtd.train_s - 180.0 * 64.0 / 100.0).abs() < 1e-9);
        // dtd: 1,880 test images, 3 evaluations at 400/s, measured.
        assert!((dtd.eval_s - 3.0 * 1880.0 / 400.0).abs() < 1e-9);
        assert!(!dtd.eval_rate.bound);
        // iDAT: no eval_idat rate, so the idat step's 50/s bounds it; 12 evaluations.
        let idat = b.instances.iter().find(|i| i.stage == "idat").unwrap();
        assert!(idat.eval_rate.bound && idat.evaluations == 12, "{idat:?}");
        assert!((idat.eval_s - 12.0 * 1880.0 / 50.0).abs() < 1e-9);
        // The eval stage: one pass at the eval_at rate.
        let ev = b.instances.iter().find(|i| i.stage == "ev").unwrap();
        assert!((ev.eval_s - 1880.0 / 400.0).abs() < 1e-9 && ev.steps == 0);
        // dsprites_loc (73,728 test images) is the longest `at`: 3 x 184.32 s + 115.2 s.
        let at = &b.stages[0];
        assert_eq!(at.longest, "at[task=dsprites_loc]");
        assert!((at.longest_s - (115.2 + 3.0 * 73728.0 / 400.0)).abs() < 1e-6);
        // x 1.5 = 1002.24 s -> 1,800 s; the 1h limit is enough.
        assert_eq!((at.suggested.as_str(), at.suggested_s), ("30m", 1800));
        assert!(!at.too_short);
        let md = markdown(&b, &rates);
        assert!(
            md.contains("(at most)") && md.contains("| at | 2 |"),
            "{md}"
        );
    }

    #[test]
    fn a_limit_below_the_budget_is_too_short() {
        let text = [
            report(StepKind::At, 64, 1.0),
            report(StepKind::Idat, 64, 1.0),
        ]
        .join("\n");
        let b = budget(&loaded(), &Rates::parse(&text, "r").unwrap(), 1.5).unwrap();
        assert!(b.stages[0].too_short && b.stages[0].limit.as_deref() == Some("1h"));
        assert!(b
            .stages
            .iter()
            .all(|s| s.suggested_s as f64 >= s.longest_s * 1.5));
    }

    #[test]
    fn bad_rates_are_refused_naming_the_line() {
        let e = Rates::parse("table\n{\"kind\": \"at\"}\n", "r.jsonl").unwrap_err();
        assert!(format!("{e:#}").contains("r.jsonl:2"), "{e:#}");
        let e = Rates::parse("no json here", "r.jsonl").unwrap_err();
        assert!(
            e.to_string().contains("no `idat-pipe bench --json` report"),
            "{e}"
        );
        let bad = report(StepKind::At, 64, 0.0);
        assert!(Rates::parse(&bad, "r").is_err());
        let text = report(StepKind::Idat, 64, 1.0);
        let e = budget(&loaded(), &Rates::parse(&text, "r").unwrap(), 1.5).unwrap();
        assert!(
            e.skipped.iter().any(|(_, why)| why.contains("--mode at")),
            "{:?}",
            e.skipped
        );
    }

    #[test]
    fn only_vtab_data_at_the_measured_size_is_budgeted() {
        // The same pipeline with the data from the mini benchmark, then decoded at 32 px.
        let mini = PIPELINE.replace(
            "uses: dataset/vtab1k\n    with: {source: {kind: local, path: /nonexistent}, tasks: [dtd, dsprites_loc]}",
            "uses: dataset/mini\n    with: {tasks: [dtd, dsprites_loc]}",
        );
        assert_ne!(mini, PIPELINE);
        let rates = [
            report(StepKind::At, 64, 10.0),
            report(StepKind::Idat, 64, 5.0),
        ]
        .join("\n");
        let rates = Rates::parse(&rates, "r").unwrap();
        let l = crate::config::load_str("m.yaml", &mini, &[], &crate::builtin_registry())
            .unwrap_or_else(|d| panic!("{d:?}"));
        let b = budget(&l, &rates, 1.5).unwrap();
        assert!(b.instances.is_empty(), "{:?}", b.instances);
        assert!(
            b.skipped[0].1.contains("`dataset/mini` (stage `data`)"),
            "{:?}",
            b.skipped
        );
        let small = PIPELINE.replace("size: 224", "size: 32");
        let l = crate::config::load_str("s.yaml", &small, &[], &crate::builtin_registry())
            .unwrap_or_else(|d| panic!("{d:?}"));
        let b = budget(&l, &rates, 1.5).unwrap();
        assert!(b.instances.is_empty());
        assert!(b.skipped[0]
            .1
            .contains("measured at 224x224 images, its data is decoded at 32x32"));
        let md = markdown(&b, &rates);
        // Grouped by reason: one line for the `at` rate's instances, one for `idat`'s.
        assert_eq!(md.matches("Not budgeted:").count(), 2, "{md}");
        assert!(md.contains("`ev[task=dtd]`: the `at` rate"), "{md}");
        assert!(md.starts_with("Nothing budgeted"), "{md}");
    }

    #[test]
    fn rates_with_the_same_accumulation_are_preferred_and_extremes_are_refused() {
        let mut acc = report(StepKind::At, 64, 50.0);
        acc = acc.replace("\"products\":\"\"", "\"products\":\"\",\"accum_steps\":2");
        assert!(acc.contains("accum_steps"));
        let text = [
            report(StepKind::At, 64, 100.0),
            acc,
            report(StepKind::Idat, 64, 50.0),
        ];
        let rates = Rates::parse(&text.join("\n"), "r").unwrap();
        let b = budget(&loaded(), &rates, 1.5).unwrap();
        let dtd = &b.instances[0];
        assert_eq!(dtd.train_rate.as_ref().unwrap().images_per_s, 100.0);
        let two = loaded_with(&["stages.at.with.optim.accum_steps=2"]);
        let b = budget(&two, &rates, 1.5).unwrap();
        let r = b.instances[0].train_rate.as_ref().unwrap();
        assert_eq!((r.images_per_s, r.accum_steps), (50.0, 2));
        // Margins outside 1..=100, and budgets over a year, are errors, not overflows.
        for m in [0.5, 101.0, f64::INFINITY, f64::NAN] {
            assert!(budget(&loaded(), &rates, m).is_err(), "{m}");
        }
        let slow = [
            report(StepKind::At, 64, 0.001),
            report(StepKind::Idat, 64, 0.001),
        ];
        let e = budget(
            &loaded(),
            &Rates::parse(&slow.join("\n"), "r").unwrap(),
            1.5,
        );
        assert!(e.unwrap_err().to_string().contains("over a year"));
        assert!(Rates::parse(&report(StepKind::At, 64, 1e300), "r").is_err());
    }

    fn loaded_with(sets: &[&str]) -> Loaded {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        crate::config::load_str("budget.yaml", PIPELINE, &sets, &crate::builtin_registry())
            .unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn limits_round_up_to_the_quarter_hour() {
        assert_eq!(limit_text(1.0), ("15m".into(), 900));
        assert_eq!(limit_text(3600.0), ("1h".into(), 3600));
        assert_eq!(limit_text(3601.0), ("1h15m".into(), 4500));
        assert_eq!(limit_text(1e300).1, 900_000_000_000_000);
        assert_eq!(duration_text(59.6), "1m00s");
        assert_eq!(duration_text(7322.0), "2h02m");
    }
}
