//! Test-only stage kinds. They are registered by the test binaries, never by
//! `idat_pipe::builtin_registry()`, so users never see them.
use idat_pipe::stages::{Registry, StageContext, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;
use std::io::Write;
use std::time::Duration;

fn count(path: &Option<String>, line: &str) -> anyhow::Result<()> {
    if let Some(p) = path.as_deref().filter(|p| !p.is_empty()) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?;
        // One write call per line: O_APPEND keeps a single small write whole, whereas
        // `writeln!` may split it into two writes that concurrent instances interleave.
        f.write_all(format!("{line}\n").as_bytes())?;
    }
    Ok(())
}

/// Writes `text` to out.txt.
pub struct Write_;
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// The text written.
    pub text: String,
    /// A number that only changes the output.
    #[serde(default = "one")]
    pub scale: f64,
    /// Milliseconds to sleep (not part of the output).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Append `<instance> ran` here on every run (not part of the output).
    #[serde(default)]
    pub count_file: Option<String>,
}
fn one() -> f64 {
    1.0
}
impl StageKind for Write_ {
    type Params = WriteParams;
    const NAME: &'static str = "test/write";
    const VERSION: u32 = 1;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["sleep_ms", "count_file"];
    const SUMMARY: &'static str = "test: write a text file";
    fn run(p: WriteParams, ctx: &mut StageContext) -> anyhow::Result<()> {
        count(&p.count_file, &format!("{} ran", ctx.instance_id))?;
        ctx.log(format!(
            "writing {:?} on {} threads",
            p.text,
            rayon::current_num_threads()
        ));
        std::thread::sleep(Duration::from_millis(p.sleep_ms));
        ctx.check_cancel()?;
        std::fs::write(
            ctx.out_dir.join("out.txt"),
            format!("{} x{}", p.text, p.scale),
        )?;
        Ok(())
    }
}

/// Concatenates every input's out.txt (in input order) with a separator.
pub struct Concat;
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatParams {
    pub sep: String,
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub count_file: Option<String>,
}
impl StageKind for Concat {
    type Params = ConcatParams;
    const NAME: &'static str = "test/concat";
    const VERSION: u32 = 1;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["sleep_ms", "count_file"];
    const SUMMARY: &'static str = "test: concatenate the inputs";
    fn run(p: ConcatParams, ctx: &mut StageContext) -> anyhow::Result<()> {
        count(&p.count_file, &format!("{} ran", ctx.instance_id))?;
        std::thread::sleep(Duration::from_millis(p.sleep_ms));
        let mut parts = Vec::new();
        for i in &ctx.inputs {
            // Checked against the upstream entry's manifest as it is read, as the
            // product's kinds read theirs.
            let bytes = idat_pipe::cache::verified::read(&i.dir.join("out.txt"))?;
            parts.push(String::from_utf8(bytes)?);
        }
        let ids: Vec<&str> = ctx.inputs.iter().map(|i| i.instance.as_str()).collect();
        std::fs::write(ctx.out_dir.join("inputs.txt"), ids.join("\n"))?;
        std::fs::write(ctx.out_dir.join("out.txt"), parts.join(&p.sep))?;
        Ok(())
    }
}

/// Counts `steps` steps of `step_ms` each, checkpointing after every step; resumes.
pub struct Steps;
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepsParams {
    pub steps: u32,
    #[serde(default)]
    pub step_ms: u64,
    #[serde(default)]
    pub count_file: Option<String>,
    /// Megabytes to allocate, touch and hold while stepping (a memory limit's test).
    #[serde(default)]
    pub alloc_mb: usize,
}
impl StageKind for Steps {
    type Params = StepsParams;
    const NAME: &'static str = "test/steps";
    const VERSION: u32 = 1;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["step_ms", "count_file", "alloc_mb"];
    const SUMMARY: &'static str = "test: a long stage that checkpoints every step";
    fn run(p: StepsParams, ctx: &mut StageContext) -> anyhow::Result<()> {
        let ck = ctx.checkpoint_dir.join("step");
        let start: u32 = std::fs::read_to_string(&ck)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        count(&p.count_file, &format!("{} start={start}", ctx.instance_id))?;
        ctx.log(format!("resuming at step {start}"));
        // Touched page by page, so the memory is resident, not only reserved.
        let held = vec![1u8; p.alloc_mb << 20];
        ctx.progress.set_total(p.steps as u64);
        for s in start..p.steps {
            ctx.check_cancel()?;
            std::thread::sleep(Duration::from_millis(p.step_ms));
            let tmp = ctx.checkpoint_dir.join("step.tmp");
            std::fs::write(&tmp, (s + 1).to_string())?;
            std::fs::rename(&tmp, &ck)?;
            ctx.progress.set_position(s as u64 + 1);
            ctx.log(format!("step {}", s + 1));
        }
        std::fs::write(
            ctx.out_dir.join("out.txt"),
            format!("steps={} resumed_from={start}", p.steps),
        )?;
        drop(std::hint::black_box(held));
        Ok(())
    }
}

/// Logs 25 lines, then fails (or panics).
pub struct Fail;
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailParams {
    pub message: String,
    #[serde(default)]
    pub panic: bool,
}
impl StageKind for Fail {
    type Params = FailParams;
    const NAME: &'static str = "test/fail";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "test: always fails";
    fn run(p: FailParams, ctx: &mut StageContext) -> anyhow::Result<()> {
        for i in 1..=25 {
            ctx.log(format!("log line {i}"));
        }
        std::fs::write(ctx.out_dir.join("partial.txt"), "partial")?;
        if p.panic {
            panic!("{}", p.message);
        }
        anyhow::bail!("{}", p.message)
    }
}

/// Reads every file of a folder outside the cache (an external input) into out.txt and
/// writes a summary.txt and report.md (what `run` prints at its end).
pub struct ReadDir;
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadDirParams {
    pub path: String,
    #[serde(default)]
    pub count_file: Option<String>,
}
impl StageKind for ReadDir {
    type Params = ReadDirParams;
    const NAME: &'static str = "test/read_dir";
    const VERSION: u32 = 1;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["count_file"];
    const SUMMARY: &'static str = "test: read a folder outside the cache";
    fn external_inputs(p: &ReadDirParams) -> Vec<std::path::PathBuf> {
        vec![p.path.clone().into()]
    }
    fn run(p: ReadDirParams, ctx: &mut StageContext) -> anyhow::Result<()> {
        count(&p.count_file, &format!("{} ran", ctx.instance_id))?;
        let mut names: Vec<_> = std::fs::read_dir(&p.path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        names.sort();
        let mut text = String::new();
        for n in &names {
            text.push_str(&std::fs::read_to_string(n)?);
        }
        std::fs::write(ctx.out_dir.join("out.txt"), &text)?;
        std::fs::write(
            ctx.out_dir.join("summary.txt"),
            format!("read {} files: {text}\n", names.len()),
        )?;
        std::fs::write(ctx.out_dir.join("report.md"), "# report\n")?;
        Ok(())
    }
}

/// A test-only executor, registered as a plugin the way the engine registers its own:
/// it runs each submitted instance in the scheduler's thread at the next poll and appends
/// `<instance> <outcome>` to `with.trace`.
pub struct Inline;

/// The `inline` executor's settings.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct InlineSettings {
    /// A file to append one line per instance it ran to.
    pub trace: Option<String>,
}

struct InlineExecutor {
    trace: Option<String>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pending: Vec<(usize, idat_pipe::exec::StageJob)>,
}

impl idat_pipe::exec::ExecutorPlugin for Inline {
    type Settings = InlineSettings;
    const NAME: &'static str = "inline";
    const SUMMARY: &'static str = "test: runs instances one by one in the scheduler's thread";
    fn build(
        s: InlineSettings,
        run: &idat_pipe::exec::RunSetup,
    ) -> Result<Box<dyn idat_pipe::exec::Executor>, String> {
        Ok(Box::new(InlineExecutor {
            trace: s.trace,
            cancel: run.cancel.clone(),
            pending: Vec::new(),
        }))
    }
}

impl idat_pipe::exec::Executor for InlineExecutor {
    fn capacity(&self) -> idat_pipe::exec::Capacity {
        idat_pipe::exec::Capacity {
            cpus: 1,
            gpus: 0,
            jobs: 1,
        }
    }
    fn admits(&self, _: &idat_pipe::config::Resources) -> Result<(), String> {
        Ok(())
    }
    fn submit(&mut self, index: usize, job: idat_pipe::exec::StageJob) -> Result<(), String> {
        self.pending.push((index, job));
        Ok(())
    }
    fn poll(&mut self, _: Duration) -> Vec<idat_pipe::exec::Event> {
        use idat_pipe::exec::{exec_stage, Event, Finished, Outcome};
        let mut out = Vec::new();
        for (index, job) in std::mem::take(&mut self.pending) {
            let progress = std::sync::Arc::new(idat_pipe::stages::NoProgress);
            let outcome = exec_stage(&job, progress, self.cancel.clone());
            let word = match &outcome {
                Outcome::Ran(_) => "ran",
                Outcome::Cached(_) => "cached",
                Outcome::Failed(_) => "failed",
            };
            let _ = count(&self.trace, &format!("{} {word}", job.instance.id));
            out.push(Event::Finished(Finished {
                index,
                outcome,
                start: 0.0,
                end: 0.0,
            }));
        }
        out
    }
    fn cancel(&mut self) {}
}

/// The registry of the test binary: built-in kinds plus the test kinds and executor. It has
/// no device check (unlike `idat_pipe::builtin_registry()`): the test kinds run on any
/// `--device`, so `--device cuda --gpus N` places them on the CPU-only build.
pub fn registry() -> Registry {
    let mut r = idat_pipe::kinds::registry();
    r.register::<Write_>()
        .register::<Concat>()
        .register::<Steps>()
        .register::<Fail>()
        .register::<ReadDir>()
        .register::<Device>()
        .register_executor::<Inline>();
    r
}

/// Appends `<instance> <device> <start> <end>` (Unix seconds) to `record` after sleeping
/// `sleep_ms`: where the scheduler placed it, and when it ran.
pub struct Device;
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceParams {
    /// A number that only changes the key.
    pub n: u32,
    /// Milliseconds to sleep.
    #[serde(default)]
    pub sleep_ms: u64,
    /// The file lines are appended to.
    pub record: String,
}
impl StageKind for Device {
    type Params = DeviceParams;
    const NAME: &'static str = "test/device";
    const VERSION: u32 = 1;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["sleep_ms", "record"];
    const SUMMARY: &'static str = "test: records its device and when it ran";
    fn run(p: DeviceParams, ctx: &mut StageContext) -> anyhow::Result<()> {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let start = now();
        ctx.progress.set_message("working");
        std::thread::sleep(Duration::from_millis(p.sleep_ms));
        let line = format!("{} {} {start} {}", ctx.instance_id, ctx.device, now());
        count(&Some(p.record), &line)?;
        std::fs::write(ctx.out_dir.join("out.txt"), p.n.to_string())?;
        Ok(())
    }
}
