//! The map from `uses:` names to stage kinds, type-erased.
use super::{ParamError, StageContext, StageKind};
use crate::exec::plugin::{DynExecutor, ExecutorPlugin};
use schemars::{Schema, SchemaGenerator};
use serde_json::Value;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// A stage kind with its parameter type erased, as the runner sees it.
pub trait DynStage: Send + Sync {
    /// [`StageKind::NAME`]: the `uses:` name.
    fn name(&self) -> &'static str;
    /// [`StageKind::VERSION`]: part of every cache key of the kind.
    fn version(&self) -> u32;
    /// [`StageKind::SUMMARY`]: one line for the schema and docs.
    fn summary(&self) -> &'static str;
    /// [`StageKind::NON_OUTPUT_PARAMS`]: top-level `with:` fields left out of the cache key.
    fn non_output_params(&self) -> &'static [&'static str];
    /// JSON Schema of `with:` (subschemas go to the generator's definitions).
    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// Deserialize `with:` into the typed params and run [`StageKind::check`]; the error
    /// names the field (`path` below `with`; empty for the whole `with:`).
    fn check_params(&self, with: &Value) -> Result<(), ParamError>;
    /// The params that determine the output: `with:` less the non-output fields.
    fn key_params(&self, with: &Value) -> Value;
    /// [`StageKind::external_inputs`] of `with:` (none when `with:` does not parse).
    fn external_inputs(&self, with: &Value) -> Vec<std::path::PathBuf>;
    /// [`StageKind::resume_point`].
    fn resume_point(&self, checkpoint_dir: &std::path::Path) -> anyhow::Result<Option<String>>;
    /// Deserialize `with:` (its `${stages...}` references already replaced by paths), run
    /// [`StageKind::check`], then [`StageKind::run`].
    ///
    /// # Errors
    /// `with:` does not deserialize (serde's message), fails [`StageKind::check`] (the
    /// message names the field by its dotted path below `with` when it has one), or the kind's `run` failed.
    fn run(&self, with: &Value, ctx: &mut StageContext) -> anyhow::Result<()>;
}

struct Erased<K>(PhantomData<fn() -> K>);

impl<K: StageKind> DynStage for Erased<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn version(&self) -> u32 {
        K::VERSION
    }
    fn summary(&self) -> &'static str {
        K::SUMMARY
    }
    fn non_output_params(&self) -> &'static [&'static str] {
        K::NON_OUTPUT_PARAMS
    }
    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<K::Params>()
    }
    fn check_params(&self, with: &Value) -> Result<(), ParamError> {
        let p = parse_params::<K::Params>(with)?;
        K::check(&p)
    }
    fn key_params(&self, with: &Value) -> Value {
        let mut v = with.clone();
        if let Value::Object(map) = &mut v {
            for k in K::NON_OUTPUT_PARAMS {
                map.remove(*k);
            }
        }
        v
    }
    fn external_inputs(&self, with: &Value) -> Vec<std::path::PathBuf> {
        parse_params::<K::Params>(with)
            .map(|p| K::external_inputs(&p))
            .unwrap_or_default()
    }
    fn resume_point(&self, checkpoint_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
        K::resume_point(checkpoint_dir)
    }
    fn run(&self, with: &Value, ctx: &mut StageContext) -> anyhow::Result<()> {
        let at = |e: ParamError| match e.path.as_str() {
            "" => anyhow::anyhow!("{}", e.message),
            p => anyhow::anyhow!("at `with.{p}`: {}", e.message),
        };
        let params = parse_params::<K::Params>(with).map_err(at)?;
        K::check(&params).map_err(at)?;
        K::run(params, ctx)
    }
}

/// `with:` as the kind's params (or an executor's settings); an error names the field it is
/// at (dotted below `with`, list items by index: `tasks.2`), not the whole map.
pub fn parse_params<P: serde::de::DeserializeOwned>(with: &Value) -> Result<P, ParamError> {
    serde_path_to_error::deserialize(with).map_err(|e| {
        use serde_path_to_error::Segment;
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(index.to_string()),
                Segment::Map { key } => Some(key.clone()),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        ParamError::at(path.join("."), e.into_inner().to_string())
    })
}

/// Whether this build can run stages on a `--device` (`cpu`, `cuda`, `cuda:N`): `Err` with
/// why not and what to do instead. Checks the spelling and the build, opens no device.
pub type DeviceCheck = fn(&str) -> Result<(), String>;

/// What the names in a pipeline resolve to: `uses:` names to stage kinds, and
/// `executor:` names to executors ([`crate::exec::plugin`]).
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn DynStage>>,
    executors: BTreeMap<&'static str, Arc<dyn DynExecutor>>,
    device_check: Option<DeviceCheck>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::empty()
    }
}

impl Registry {
    /// No stage kinds (the binary registers the domain's kinds, tests their own), and the
    /// engine's executors (`local`, `slurm`).
    pub fn empty() -> Self {
        let mut r = Self {
            kinds: BTreeMap::new(),
            executors: BTreeMap::new(),
            device_check: None,
        };
        crate::exec::plugin::register_builtin(&mut r);
        r
    }

    /// Register kind `K` under its [`StageKind::NAME`] (replacing a kind of the same name);
    /// returns `self` for chaining.
    pub fn register<K: StageKind>(&mut self) -> &mut Self {
        self.kinds
            .insert(K::NAME, Arc::new(Erased::<K>(PhantomData)));
        self
    }

    /// Register executor `E` under its [`ExecutorPlugin::NAME`] (replacing one of the same
    /// name); returns `self` for chaining.
    pub fn register_executor<E: ExecutorPlugin>(&mut self) -> &mut Self {
        self.executors
            .insert(E::NAME, crate::exec::plugin::erased::<E>());
        self
    }

    /// Set the check that `run` and `exec-stage` apply to their `--device` before anything
    /// runs (the binary sets the ML kinds' own: a CPU-only build refuses `cuda`). Without
    /// one (test registries), every device the placement accepts is run.
    pub fn set_device_check(&mut self, check: DeviceCheck) -> &mut Self {
        self.device_check = Some(check);
        self
    }

    /// [`Registry::set_device_check`]'s check of `device` (`Ok` when none is set).
    ///
    /// # Errors
    /// The check's message: the device is misspelt or this build cannot run on it.
    pub fn check_device(&self, device: &str) -> Result<(), String> {
        self.device_check.map_or(Ok(()), |check| check(device))
    }

    /// The kind registered under the `uses:` name `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynStage>> {
        self.kinds.get(name)
    }

    /// The registered `uses:` names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// The registered kinds, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn DynStage>> {
        self.kinds.values()
    }

    /// The executor registered under `name`, if any.
    pub fn executor(&self, name: &str) -> Option<&Arc<dyn DynExecutor>> {
        self.executors.get(name)
    }

    /// The registered executor names, sorted.
    pub fn executor_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.executors.keys().copied()
    }

    /// The registered executors, sorted by name.
    pub fn executors(&self) -> impl Iterator<Item = &Arc<dyn DynExecutor>> {
        self.executors.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Optim {
        epochs: u32,
    }
    #[derive(Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct P {
        optim: Optim,
        tasks: Vec<String>,
    }
    struct K;
    impl StageKind for K {
        type Params = P;
        const NAME: &'static str = "t/k";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "test";
        fn run(_: P, _: &mut StageContext) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_device_check_is_applied_only_when_set() {
        let mut r = Registry::empty();
        assert_eq!(r.check_device("cuda"), Ok(()));
        r.set_device_check(|d| match d {
            "cpu" => Ok(()),
            d => Err(format!("no {d} here")),
        });
        assert_eq!(r.check_device("cpu"), Ok(()));
        assert_eq!(r.check_device("cuda:1"), Err("no cuda:1 here".into()));
        assert_eq!(r.clone().check_device("cuda"), Err("no cuda here".into()));
    }

    #[test]
    fn a_value_that_does_not_deserialize_is_named_by_its_field() {
        let mut r = Registry::empty();
        r.register::<K>();
        let k = r.get("t/k").unwrap();
        let e = k
            .check_params(&json!({"optim": {"epochs": 10.5}, "tasks": []}))
            .unwrap_err();
        assert_eq!(e.path, "optim.epochs");
        assert!(e.message.contains("10.5"), "{e:?}");
        let e = k
            .check_params(&json!({"optim": {"epochs": 1}, "tasks": ["a", 7]}))
            .unwrap_err();
        assert_eq!(e.path, "tasks.1");
        let e = k.check_params(&json!({"tasks": []})).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("", "missing field `optim`")
        );
    }
}
