//! Command-line interface (clap). One enum variant per subcommand, each dispatching
//! to a function here that drives the module doing the work. Other subcommands
//! (`infer`, `bench`) add a variant and a function.
use crate::cache::gc::{gc, status};
use crate::cache::Cache;
use crate::config::{load, Diagnostic, Loaded};
use crate::exec::run::{check, exec_one, run, OneRequest, RunError, RunRequest};
use crate::exec::{plan, Decision, Failure, Outcome, RunSummary};
use crate::graph::Graph;
use crate::stages::Registry;
// Through anstream: escape sequences (e.g. from a message) are removed where the stream gets
// no colour (a pipe, a file, NO_COLOR), so redirected output is plain text.
use crate::config::paths::cli_path;
use anstream::{eprintln, print, println};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Exit code: a stage failed (or the run was interrupted).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: invalid input (pipeline errors, bad arguments).
pub const EXIT_INVALID: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "idat-pipe",
    version,
    about = "Declarative, cached pipeline runner for iDAT on VTAB-1K"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
    /// Print nothing but errors (no progress).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More log output (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Cache directory (default `.idat` in the working directory).
    #[arg(long, global = true, env = "IDAT_CACHE_DIR", value_parser = cli_path)]
    cache_dir: Option<PathBuf>,
}

/// Options shared by commands that read a pipeline.
#[derive(clap::Args, Debug, Clone)]
struct PipelineArgs {
    /// Pipeline file.
    #[arg(value_parser = cli_path)]
    file: PathBuf,
    /// Override a value: `--set params.lr=0.01`, `--set stages.tune.matrix.seed=[1,2]`.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    p: PipelineArgs,
    /// Show the plan and run nothing (same as `plan`).
    #[arg(long)]
    dry_run: bool,
    /// CPU slots: independent instances run in parallel up to this many.
    #[arg(long, short, default_value_t = default_jobs())]
    jobs: usize,
    /// Use only the first N visible GPUs: those `CUDA_VISIBLE_DEVICES` lists, else every
    /// card the driver (NVML) lists, else one per `/dev/nvidiaN` file. More than are visible
    /// is an error, except where only `/dev/nvidiaN` files tell (no NVML and no
    /// `CUDA_VISIBLE_DEVICES`, as on a CPU-only machine): there it declares N cards. Each
    /// running instance with `resources.gpus: k` gets k cards of its own. At most 1 with
    /// `--device cuda:N`. With `--device cpu`: N slots that bound GPU instances, any N
    /// (default: none counted).
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// GPU memory each card offers to instances that state `resources.gpu_mem` (with a unit,
    /// e.g. `80G`;
    /// default: the card's total, from NVML): several such instances share a card while
    /// their `gpu_mem` fits.
    #[arg(long, value_name = "SIZE", value_parser = gpu_mem_arg)]
    gpu_mem: Option<u64>,
    /// At most N instances on one card; with it, instances without `resources.gpu_mem`
    /// share cards too (default: they take a card alone).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    per_gpu: Option<u32>,
    /// Keep running independent instances after a failure.
    #[arg(long)]
    keep_going: bool,
    /// Recompute this stage's instances (repeatable). What depends on them reruns only if
    /// their recomputed outputs differ; name a downstream stage too to recompute it anyway.
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Where run records go.
    #[arg(long, default_value = "runs", value_parser = cli_path)]
    runs_dir: PathBuf,
    /// Where stages run: `cpu`; `cuda` (each instance with `resources.gpus` on cards of its
    /// own among the visible GPUs, `cuda:K` in its log); `cuda:N` (every GPU instance on card
    /// N). Instances without `resources.gpus` run on the CPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where instances run: an executor's name (default: the file's `executor:`, else
    /// `local`); `slurm` submits job arrays (docs/slurm.md).
    #[arg(long, value_name = "NAME")]
    executor: Option<String>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum DagFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: reuse cached instances, run the rest.
    Run(RunArgs),
    /// Check pipeline files (schema + semantics); every error with file:line:column.
    Validate {
        #[arg(required = true, value_parser = cli_path)]
        files: Vec<PathBuf>,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
    /// Say for every instance whether it is cached or will run, and why.
    Plan {
        #[command(flatten)]
        p: PipelineArgs,
        /// As `run --force`: say what recomputing this stage's instances would do.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
    },
    /// Print the instance graph.
    Dag {
        #[command(flatten)]
        p: PipelineArgs,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: DagFormat,
    },
    /// Print the JSON Schema of pipeline files.
    Schema,
    /// Print a shell completion script: `idat-pipe completions bash >
    /// ~/.local/share/bash-completion/completions/idat-pipe` (zsh: a file `_idat-pipe` in a
    /// folder of `$fpath`; fish: `~/.config/fish/completions/idat-pipe.fish`).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Summarise the cache.
    Status,
    /// Remove superseded entries, stale temporary files and quarantined entries.
    Gc {
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash cached entries against their manifests (every entry, or a pipeline's);
    /// exit 1 when one is corrupt. `plan` and `run` trust a file whose size, times and
    /// inode are unchanged; this reads every byte.
    Verify {
        /// Verify only the entries this pipeline's instances use (default: every entry).
        #[arg(value_parser = cli_path)]
        file: Option<PathBuf>,
        /// Overrides for the pipeline, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
    /// Logits and predicted label per image with a backbone (+ a trained adapter checkpoint).
    Infer(crate::infer::InferArgs),
    /// Time one iDAT and one AT training step and their evaluations: images/s and peak memory.
    Bench(crate::bench::BenchArgs),
    /// How long each training and evaluation instance takes at measured rates (`bench
    /// --json` lines), and whether each stage's `resources.time` covers its longest one.
    Budget {
        #[command(flatten)]
        p: PipelineArgs,
        /// Files of `idat-pipe bench --json` lines (a later report of the same kind and
        /// batch wins).
        #[arg(long, required = true, value_parser = cli_path)]
        rates: Vec<PathBuf>,
        /// A stage's limit must cover its longest instance times this (at least 1).
        #[arg(long, default_value_t = 1.5)]
        margin: f64,
        /// Print JSON instead of Markdown.
        #[arg(long)]
        json: bool,
        /// Exit 1 when a stage's `resources.time` is below its longest instance x margin.
        #[arg(long)]
        check: bool,
    },
    /// Run one instance (what every executor runs); its upstreams must be cached.
    #[command(hide = true)]
    ExecStage {
        #[command(flatten)]
        p: PipelineArgs,
        #[arg(long)]
        instance: String,
        /// Log file (default: `<cache>/logs/<instance>.log`).
        #[arg(long, value_parser = cli_path)]
        log: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Recompute even when a valid entry exists.
        #[arg(long)]
        force: bool,
        /// CPU threads of the instance, 1 to 1024 (default: `$SLURM_CPUS_PER_TASK`, else every
        /// core). Every thread is started up front, so the bound keeps a typo from spawning
        /// tens of thousands of OS threads.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        threads: Option<u32>,
    },
}

/// `--gpu-mem`: `resources.mem`'s syntax, in bytes.
fn gpu_mem_arg(text: &str) -> Result<u64, String> {
    crate::config::resources::gpu_bytes(text, "--gpu-mem")
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The product binary: built-in stage kinds.
pub fn main() -> ExitCode {
    main_with(crate::builtin_registry(), std::env::args_os().collect())
}

/// The CLI with a given registry (tests register test-only kinds and call this).
pub fn main_with(registry: Registry, args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_INVALID } else { 0 });
        }
    };
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let colour = stderr_colour();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IDAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(move || crate::exec::progress::LogStderr { colour })
        .with_ansi(colour)
        .with_target(false)
        .without_time()
        .try_init();
    let cache_dir = Cache::resolve_dir(cli.cache_dir.as_deref());
    let resume = shell_join(&args);
    if matches!(
        cli.cmd,
        Command::Run(_) | Command::ExecStage { .. } | Command::Bench(_)
    ) {
        single_thread_elementwise();
    }
    if matches!(
        cli.cmd,
        Command::Run(_) | Command::ExecStage { .. } | Command::Bench(_) | Command::Infer(_)
    ) {
        // Choose the CPU GEMM backend now, so a bad IDAT_BLAS stops the command before any work.
        match crate::nn::ops::cpu_gemm() {
            Ok(b) => tracing::info!("CPU GEMM backend: {b}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        }
    }
    let r = match cli.cmd {
        Command::Run(a) => cmd_run(&registry, &cache_dir, a, cli.quiet, &resume),
        Command::Validate { files, set } => cmd_validate(&registry, &files, &set, cli.quiet),
        Command::Plan { p, force } => cmd_plan(&registry, &cache_dir, &p, &force),
        Command::Dag { p, format } => with_loaded(&registry, &p, |l| {
            let g = Graph::build(l);
            print!(
                "{}",
                match format {
                    DagFormat::Mermaid => g.mermaid(),
                    DagFormat::Dot => g.dot(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "idat-pipe",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            let s = crate::config::schema::pipeline_schema(&registry);
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => cmd_status(&cache_dir),
        Command::Gc { dry_run } => cmd_gc(&cache_dir, dry_run),
        Command::Verify { file, set } => cmd_verify(&registry, &cache_dir, file, set, cli.quiet),
        Command::Infer(a) => crate::infer::cmd(a),
        Command::Bench(a) => crate::bench::cmd(a),
        Command::Budget {
            p,
            rates,
            margin,
            json,
            check,
        } => with_loaded(&registry, &p, |l| {
            crate::budget::cmd(l, &rates, margin, json, check)
        }),
        Command::ExecStage {
            p,
            instance,
            log,
            device,
            force,
            threads,
        } => cmd_exec_stage(
            &registry,
            &cache_dir,
            &p,
            &instance,
            log,
            (device, force, threads),
        ),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Whether messages on stderr get colour: a terminal does (unless `NO_COLOR`, `CLICOLOR=0` or
/// `TERM=dumb`); a pipe or file does not (unless `CLICOLOR_FORCE`). tracing-subscriber on its
/// own colours whenever `NO_COLOR` is unset, which wrote escape codes into redirected logs.
pub fn stderr_colour() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
}

fn shell_join(args: &[OsString]) -> String {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            let s = a.to_string_lossy();
            let s = if i == 0 {
                Path::new(&*s)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                s.into_owned()
            };
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                s
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_diags(d: &[Diagnostic]) {
    for x in d {
        eprintln!("error: {x}");
    }
}

fn with_loaded(
    registry: &Registry,
    p: &PipelineArgs,
    f: impl FnOnce(&Loaded) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match load(&p.file, &p.set, registry) {
        Ok(l) => f(&l),
        Err(d) => {
            print_diags(&d);
            eprintln!("{}: {} error(s)", p.file.display(), d.len());
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

fn cmd_validate(
    registry: &Registry,
    files: &[PathBuf],
    set: &[String],
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let mut bad = false;
    for f in files {
        match load(f, set, registry) {
            Ok(l) => {
                if !quiet {
                    println!(
                        "{}: ok ({} stages, {} instances)",
                        f.display(),
                        l.stages.len(),
                        l.instances.len()
                    );
                }
            }
            Err(d) => {
                bad = true;
                print_diags(&d);
                eprintln!("{}: {} error(s)", f.display(), d.len());
            }
        }
    }
    Ok(if bad {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_plan(graph: &Graph, decisions: &[Decision]) {
    let (mut c, mut r) = (0, 0);
    for &i in &graph.order {
        match &decisions[i] {
            Decision::Cached { .. } => {
                c += 1;
                println!("cached    {}", graph.instances[i].id);
            }
            Decision::Run { reasons, .. } => {
                r += 1;
                println!(
                    "will run  {}: {}",
                    graph.instances[i].id,
                    reasons.join("; ")
                );
            }
        }
    }
    println!("{c} cached, {r} will run");
}

fn cmd_plan(
    registry: &Registry,
    cache_dir: &Path,
    p: &PipelineArgs,
    force: &[String],
) -> anyhow::Result<ExitCode> {
    with_loaded(registry, p, |l| {
        let g = Graph::build(l);
        let f = match g.forced(l, force) {
            Ok(f) => f,
            Err(m) => {
                eprintln!("error: {m}");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        };
        // Reading only: `plan` works on a read-only (shared) cache and creates none.
        let cache = Cache::open_read_only(cache_dir);
        print_plan(&g, &plan(&g, &cache, registry, &f));
        Ok(ExitCode::SUCCESS)
    })
}

static CANCEL: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The process-wide cancel flag, set by the first Ctrl-C (the second one exits at once).
fn cancel_flag() -> Arc<AtomicBool> {
    CANCEL
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            let _ = ctrlc::set_handler(move || {
                if f.swap(true, Ordering::SeqCst) {
                    eprintln!("second interrupt: exiting now (no partial entry was committed)");
                    std::process::exit(130);
                }
            });
            flag
        })
        .clone()
}

fn cmd_run(
    registry: &Registry,
    cache_dir: &Path,
    a: RunArgs,
    quiet: bool,
    resume: &str,
) -> anyhow::Result<ExitCode> {
    with_loaded(registry, &a.p, |l| {
        let req = RunRequest {
            cache_dir,
            runs_dir: &a.runs_dir,
            force: &a.force,
            keep_going: a.keep_going,
            device: &a.device,
            jobs: a.jobs,
            gpus: a.gpus,
            gpu_mem: a.gpu_mem,
            per_gpu: a.per_gpu.map(|n| n as usize),
            executor: a.executor.as_deref(),
            quiet,
            cancel: cancel_flag(),
        };
        if a.dry_run {
            // The options the real run would refuse are refused here too, with its messages.
            let f = match check(l, registry, &req) {
                Ok(f) => f,
                Err(e) => return invalid_or_failed(e),
            };
            let g = Graph::build(l);
            let cache = Cache::open_read_only(cache_dir);
            print_plan(&g, &plan(&g, &cache, registry, &f));
            return Ok(ExitCode::SUCCESS);
        }
        match run(l, registry, &req) {
            Ok(o) => {
                // Results first (stdout), the tally last (stderr).
                print!("{}", o.summaries);
                Ok(report_run(&o.summary, &o.record_dir, quiet, resume))
            }
            Err(e) => invalid_or_failed(e),
        }
    })
}

/// A [`RunError`] as the command's result: bad input prints `error:` and exits 2.
fn invalid_or_failed(e: RunError) -> anyhow::Result<ExitCode> {
    match e {
        RunError::Invalid(m) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(EXIT_INVALID))
        }
        RunError::Failed(e) => Err(e),
    }
}

/// The tally, then every failure with its error, log tail and log path, and how to resume;
/// the exit code of the run.
fn report_run(s: &RunSummary, record_dir: &Path, quiet: bool, resume: &str) -> ExitCode {
    if !quiet {
        eprintln!(
            "{} ran, {} cached, {} failed, {} skipped; run record {}",
            s.ran,
            s.cached,
            s.failed.len(),
            s.skipped,
            record_dir.display()
        );
    }
    for group in failure_groups(&s.failed) {
        let fl = group[0];
        if group.len() == 1 {
            eprintln!("\nFAILED {}\n  error: {}", fl.instance, fl.error);
        } else {
            eprintln!(
                "\nFAILED {} instances with the same error: {}\n  error: {}",
                group.len(),
                instance_list(&group),
                fl.error
            );
        }
        if !fl.log_tail.is_empty() {
            let of = if group.len() > 1 {
                format!(" of {}", fl.instance)
            } else {
                String::new()
            };
            eprintln!("  last {} log lines{of}:", fl.log_tail.len());
            for line in &fl.log_tail {
                eprintln!("    | {line}");
            }
        }
        if !fl.log.as_os_str().is_empty() {
            match group.len() {
                1 => eprintln!("  log: {}", fl.log.display()),
                _ => eprintln!(
                    "  logs: {}",
                    fl.log.parent().unwrap_or(Path::new(".")).display()
                ),
            }
        }
    }
    if s.interrupted || !s.failed.is_empty() {
        if s.interrupted {
            eprintln!("\ninterrupted: committed entries are kept; nothing partial was committed.");
        }
        eprintln!("resume with: {resume}");
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

/// Failures grouped by their error text, in the order each text first failed: a whole
/// array refused by sbatch is one message, not one per instance.
fn failure_groups(failed: &[Failure]) -> Vec<Vec<&Failure>> {
    let mut groups: Vec<Vec<&Failure>> = Vec::new();
    for f in failed {
        match groups.iter_mut().find(|g| g[0].error == f.error) {
            Some(g) => g.push(f),
            None => groups.push(vec![f]),
        }
    }
    groups
}

/// `a, b, c and 997 more (all in trace.csv)`.
fn instance_list(group: &[&Failure]) -> String {
    const SHOWN: usize = 3;
    let names: Vec<&str> = group
        .iter()
        .take(SHOWN)
        .map(|f| f.instance.as_str())
        .collect();
    match group.len().saturating_sub(SHOWN) {
        0 => names.join(", "),
        more => format!(
            "{} and {more} more (the run record's trace.csv lists them all)",
            names.join(", ")
        ),
    }
}

fn cmd_status(cache_dir: &Path) -> anyhow::Result<ExitCode> {
    // Reading only: works on a read-only (shared) cache, and creates none.
    let cache = Cache::open_read_only(cache_dir);
    let s = status(&cache)?;
    if cache.root.exists() {
        println!("cache {}", cache.root.display());
    } else {
        println!("cache {} (does not exist yet)", cache.root.display());
    }
    println!(
        "  entries:   {} ({:.1} MiB)",
        s.entries,
        s.entry_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  instances: {} recorded, {} failed",
        s.instances,
        s.failed.len()
    );
    println!(
        "  pending checkpoints: {}, running (locked): {}, quarantined corrupt: {}",
        s.pending, s.locked, s.corrupt
    );
    if !s.per_stage.is_empty() {
        println!("  per stage (last outcome of each recorded instance):");
        for (stage, c) in &s.per_stage {
            println!(
                "    {stage}: {} ok, {} failed, {} entry missing",
                c.ok, c.failed, c.missing
            );
        }
    }
    for (id, err) in &s.failed {
        println!("  failed {id}: {err}");
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(cache_dir: &Path, dry_run: bool) -> anyhow::Result<ExitCode> {
    // `--dry-run` writes nothing: it works on a read-only cache.
    let cache = if dry_run {
        Cache::open_read_only(cache_dir)
    } else {
        Cache::open(cache_dir)?
    };
    let r = gc(&cache, dry_run)?;
    println!(
        "{} {} entries, {} temporary dirs, {} checkpoints, {} corrupt entries, {} stale \
         external-input memos, {} stale stat records ({:.1} MiB)",
        if dry_run { "would remove" } else { "removed" },
        r.entries.len(),
        r.tmp,
        r.pending,
        r.corrupt,
        r.external,
        r.stat,
        r.bytes as f64 / (1 << 20) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_exec_stage(
    registry: &Registry,
    cache_dir: &Path,
    p: &PipelineArgs,
    instance: &str,
    log: Option<PathBuf>,
    (device, force, threads): (String, bool, Option<u32>),
) -> anyhow::Result<ExitCode> {
    with_loaded(registry, p, |l| {
        let req = OneRequest {
            cache_dir,
            instance,
            log,
            device,
            force,
            threads: threads.map(|t| t as usize),
            cancel: cancel_flag(),
        };
        let (outcome, log) = match exec_one(l, registry, req) {
            Ok(o) => o,
            Err(RunError::Invalid(m)) => {
                eprintln!("error: {m}");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            Err(RunError::Failed(e)) => return Err(e),
        };
        match outcome {
            Outcome::Cached(m) => println!("cached {instance} {}", m.key),
            Outcome::Ran(m) => println!("ran {instance} {}", m.key),
            Outcome::Failed(e) => {
                eprintln!("FAILED {instance}: {e}\n  log: {}", log.display());
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Pipeline runs bound each instance's kernels to its own rayon pool (`resources.cpus`
/// threads; `exec::stage`). candle 0.11 runs large element-wise ops on one process-wide
/// spin-waiting pool behind a lock, so two concurrent instances serialise on it and burn a
/// core spinning (measured: each ran ~2.7x slower than alone). One thread there makes those
/// ops run inline on the instance's own thread. `bench` does the same, so it times what a
/// training stage runs (candle's spinning pool also competed with the GEMM threads there).
/// `CANDLE_NUM_THREADS`, if set, wins.
fn single_thread_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Set before any tensor op: candle reads it once, when its pool is first used.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// `verify`: the entries of the pipeline `file` (those `plan` finds, cached or not), else
/// every entry of the cache, re-hashed.
fn cmd_verify(
    registry: &Registry,
    cache_dir: &Path,
    file: Option<PathBuf>,
    set: Vec<String>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    // Reading only (a corrupt entry's stat record is dropped when the cache is writable).
    let cache = Cache::open_read_only(cache_dir);
    let keys = match file {
        None => cache.entry_keys(),
        Some(file) => {
            let p = PipelineArgs { file, set };
            let mut keys = None;
            let code = with_loaded(registry, &p, |l| {
                keys = Some(crate::exec::plan::entry_keys(l, &cache, registry));
                Ok(ExitCode::SUCCESS)
            })?;
            match keys {
                Some(k) => k,
                None => return Ok(code),
            }
        }
    };
    let n = keys.len();
    let rep = crate::cache::gc::verify(&cache, &keys, |i| {
        if !quiet && (i % 50 == 0) && i < n {
            eprintln!("verified {i}/{n} entries");
        }
    });
    for (_, why) in &rep.corrupt {
        println!("corrupt {why}");
    }
    for key in &rep.missing {
        println!("missing entry {key} (removed meanwhile)");
    }
    println!(
        "{} entries verified ({:.1} MiB read): {} ok, {} corrupt",
        n,
        rep.bytes as f64 / (1 << 20) as f64,
        rep.ok,
        rep.corrupt.len()
    );
    if rep.corrupt.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "the next `run` moves corrupt entries aside (corrupt/) and recomputes them; \
         `plan` lists them"
    );
    Ok(ExitCode::from(EXIT_FAILED))
}
