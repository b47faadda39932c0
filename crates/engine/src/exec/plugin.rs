//! Executors as registered plugins: each is a type implementing [`ExecutorPlugin`] with its
//! own settings type and checks, registered under a name in the [`Registry`] (as stage
//! kinds are). A pipeline selects one with `executor: NAME` or `executor: {uses: NAME, with:
//! SETTINGS}`; `run --executor NAME` wins. The engine registers its own
//! ([`register_builtin`]); a test registers a test-only one the same way.
//!
//! A new executor is one folder under `exec/` (a type implementing [`super::Executor`] and
//! one implementing [`ExecutorPlugin`]) and one line in [`register_builtin`].
use super::executor::Executor;
use crate::cache::Cache;
use crate::config::StageSpec;
use crate::stages::{ParamError, Registry};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What a run gives an executor to build itself from (besides its settings).
pub struct RunSetup<'a> {
    /// The cache the run uses.
    pub cache: &'a Cache,
    /// The pipeline file as given on the command line.
    pub pipeline: &'a Path,
    /// The run's `--set` overrides, as given.
    pub overrides: &'a [String],
    /// `--device` (`cpu`, `cuda`, `cuda:N`).
    pub device: &'a str,
    /// `--jobs`: CPU slots of this machine for the run.
    pub jobs: usize,
    /// `--gpus` when given: the first N visible cards (declared where no driver lists them).
    pub gpus: Option<usize>,
    /// `--gpu-mem` when given: bytes each card offers to `resources.gpu_mem`.
    pub gpu_mem: Option<u64>,
    /// `--per-gpu` when given: instances per card at most.
    pub per_gpu: Option<usize>,
    /// Set by Ctrl-C: executors that run stages in this process stop them.
    pub cancel: Arc<AtomicBool>,
}

/// An executor as a pipeline names it.
pub trait ExecutorPlugin: 'static {
    /// Its settings (`executor: {uses: NAME, with: SETTINGS}`); the defaults when none are
    /// given. Unknown fields should be refused (`deny_unknown_fields`).
    type Settings: serde::de::DeserializeOwned + JsonSchema + Default;
    /// The name `executor:` and `run --executor` use, e.g. `slurm`.
    const NAME: &'static str;
    /// One line for `idat-pipe schema` and `run --help`.
    const SUMMARY: &'static str;

    /// Rules beyond the settings' types, for a pipeline run on this executor: `(dotted path
    /// in the pipeline file, message)`, e.g. a stage asking for GPUs this executor cannot
    /// ask for. Checked at `validate` when the file selects it, and when `run` does.
    fn check(_settings: &Self::Settings, _stages: &[(String, StageSpec)]) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The executor for one run.
    ///
    /// # Errors
    /// What keeps it from running here (a command-line option it cannot honour, a missing
    /// binary), naming the option.
    fn build(settings: Self::Settings, run: &RunSetup) -> Result<Box<dyn Executor>, String>;
}

/// An executor plugin with its settings type erased, as the registry holds it.
pub trait DynExecutor: Send + Sync {
    /// [`ExecutorPlugin::NAME`].
    fn name(&self) -> &'static str;
    /// [`ExecutorPlugin::SUMMARY`].
    fn summary(&self) -> &'static str;
    /// JSON Schema of the settings (subschemas go to the generator's definitions).
    fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// Deserialize the settings and run [`ExecutorPlugin::check`]; a settings error names
    /// its field below the settings (`ParamError::path`).
    ///
    /// # Errors
    /// The settings do not deserialize.
    fn check(
        &self,
        settings: &Value,
        stages: &[(String, StageSpec)],
    ) -> Result<Vec<(String, String)>, ParamError>;
    /// Deserialize the settings and [`ExecutorPlugin::build`].
    ///
    /// # Errors
    /// The settings do not deserialize, or the executor cannot run here.
    fn build(&self, settings: &Value, run: &RunSetup) -> Result<Box<dyn Executor>, String>;
}

struct Erased<E>(PhantomData<fn() -> E>);

fn settings<E: ExecutorPlugin>(v: &Value) -> Result<E::Settings, ParamError> {
    if v.is_null() {
        return Ok(E::Settings::default());
    }
    crate::stages::parse_params::<E::Settings>(v)
}

impl<E: ExecutorPlugin> DynExecutor for Erased<E> {
    fn name(&self) -> &'static str {
        E::NAME
    }
    fn summary(&self) -> &'static str {
        E::SUMMARY
    }
    fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<E::Settings>()
    }
    fn check(
        &self,
        v: &Value,
        stages: &[(String, StageSpec)],
    ) -> Result<Vec<(String, String)>, ParamError> {
        Ok(E::check(&settings::<E>(v)?, stages))
    }
    fn build(&self, v: &Value, run: &RunSetup) -> Result<Box<dyn Executor>, String> {
        let s = settings::<E>(v).map_err(|e| match e.path.as_str() {
            "" => format!("executor `{}`: {}", E::NAME, e.message),
            p => format!("executor `{}`: at `{p}`: {}", E::NAME, e.message),
        })?;
        E::build(s, run)
    }
}

/// The type-erased plugin of `E` (for [`Registry::register_executor`]).
pub fn erased<E: ExecutorPlugin>() -> Arc<dyn DynExecutor> {
    Arc::new(Erased::<E>(PhantomData))
}

/// Register the engine's executors: `local` and `slurm`. A new executor adds its line here.
pub fn register_builtin(registry: &mut Registry) {
    registry.register_executor::<super::local::Local>();
    registry.register_executor::<super::slurm::Slurm>();
}

/// The executor of a run: `chosen` (`run --executor`), else the pipeline's, else `local`,
/// with the settings the pipeline gives it (its defaults otherwise), checked and built.
///
/// # Errors
/// An unknown name (with the registered ones), settings that do not deserialize or fail the
/// executor's check (each with its path in the file), or what keeps it from running here.
pub fn build(
    registry: &Registry,
    loaded: &crate::config::Loaded,
    chosen: Option<&str>,
    run: &RunSetup,
) -> Result<Box<dyn Executor>, String> {
    let name = chosen.or(loaded.executor.as_deref()).unwrap_or("local");
    let plugin = registry.executor(name).ok_or_else(|| {
        let known: Vec<&str> = registry.executor_names().collect();
        format!(
            "unknown executor `{name}` (executors: {})",
            known.join(", ")
        )
    })?;
    let (at, settings) = match loaded.executor_settings.get(name) {
        Some((at, v)) => (at.as_str(), v.clone()),
        None => ("", Value::Null),
    };
    let problems = plugin.check(&settings, &loaded.stages).map_err(|e| {
        let path = [at, e.path.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        format!("{}: at `{path}`: {}", loaded.file.display(), e.message)
    })?;
    if let Some((path, m)) = problems.into_iter().next() {
        return Err(format!(
            "{}: at `{path}`: {m} (with executor `{name}`)",
            loaded.file.display()
        ));
    }
    plugin.build(&settings, run)
}
