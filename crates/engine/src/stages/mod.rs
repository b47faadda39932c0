//! Stage kinds: one file per kind behind one trait, [`StageKind`].
//!
//! A kind declares its typed `with:` parameters (serde + schemars), a name, a version
//! (part of the cache key) and `run`. The [`Registry`] maps `uses:` names to kinds;
//! the JSON Schema of a pipeline gets one variant per registered kind from it.
//! The engine names no kind: the domain crate's kinds are registered by the binary that
//! wires them; test-only kinds are registered by tests.

mod context;
mod registry;
mod stage_ref;

pub use context::{Input, NoProgress, Progress, StageContext};
pub use registry::{parse_params, DynStage, Registry};
pub use stage_ref::{StageRef, STAGE_REF_FORMAT};

/// The file a kind may write into its `out_dir` to have `run` print it at the end of a run
/// (with the paths of the entry's Markdown files): report and analysis stages do.
pub const SUMMARY_FILE: &str = "summary.txt";

/// A semantic error in `with:` ([`StageKind::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Dotted path below `with`, e.g. `tasks.2` (empty: the whole `with:`).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ParamError {
    /// An error at `path` (dotted, below `with`; empty for the whole `with:`) saying `message`.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// What a `uses:` name does.
pub trait StageKind: Send + Sync + 'static {
    /// Typed `with:` parameters. Unknown fields should be refused (`deny_unknown_fields`).
    type Params: serde::de::DeserializeOwned + schemars::JsonSchema + Send;
    /// The `uses:` name, e.g. `train/idat`.
    const NAME: &'static str;
    /// Bump when outputs change for the same params: part of every cache key of this kind.
    const VERSION: u32;
    /// Top-level `with:` fields that do not affect outputs (log level, worker counts):
    /// left out of the cache key.
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &[];
    /// One line for `idat-pipe schema` descriptions and docs.
    const SUMMARY: &'static str;

    /// Files or folders outside the cache that the outputs depend on (a local dataset
    /// folder, a weights file). The runner hashes their content (folders recursively,
    /// through symlinks) into the cache key, so editing them reruns the stage.
    /// Paths that hold a `${stages...}` reference are upstream outputs and are skipped.
    fn external_inputs(_params: &Self::Params) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// Checks of `with:` beyond its types, run by `validate` (and before `run`): an error
    /// names the offending field as a dotted path below `with` (`tasks.2`; empty for the
    /// whole `with:`), so the message points at its line in the pipeline file.
    fn check(_params: &Self::Params) -> Result<(), ParamError> {
        Ok(())
    }

    /// What a rerun resumes from, given the checkpoint directory a killed or crashed run of
    /// this kind left (`plan` and `run` say it): e.g. `Ok(Some("resumes after epoch 3"))`.
    /// `Ok(None)`: nothing more specific than "resumes from its checkpoint"; `Err`: the
    /// checkpoint cannot be resumed from (the message says why).
    fn resume_point(_checkpoint_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    /// Produce the outputs in `ctx.out_dir`. Long stages checkpoint into
    /// `ctx.checkpoint_dir` and resume from it; they call `ctx.check_cancel()` often.
    fn run(params: Self::Params, ctx: &mut StageContext) -> anyhow::Result<()>;
}
