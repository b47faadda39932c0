//! `dataset/vtab1k`: VTAB-1K from a local NOAH-layout folder, an archive URL (sha256,
//! resumable, extracted atomically) or an HF hub dataset repo; every task folder is
//! validated and a manifest is written.
use crate::data::prepare::{
    local_task_dirs, prepare, task_specs, PrepareOptions, TaskEntry, VtabSource,
};
use crate::data::vtab::{TaskSpec, TASKS};
use crate::entries::dataset;
use anyhow::Result;
use idat_engine::stages::{ParamError, StageContext, StageKind};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `with:` of `dataset/vtab1k`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Where the VTAB-1K tree comes from: a local folder (NOAH layout), an archive
    /// (downloaded, sha256-verified) or a dataset repository on the HF hub.
    pub source: VtabSource,
    /// Tasks: VTAB-1K folder names (aliases allowed), or tasks of one's own in the NOAH
    /// layout as `{name, num_classes, class_names?, group?}`; default: all 19.
    #[serde(default)]
    pub tasks: Vec<TaskEntry>,
    /// HF hub endpoint (default: `HF_ENDPOINT`, else huggingface.co).
    #[serde(default)]
    pub hub_endpoint: Option<String>,
}

/// The `dataset/vtab1k` stage kind.
pub struct DatasetVtab;

impl StageKind for DatasetVtab {
    type Params = Params;
    const NAME: &'static str = "dataset/vtab1k";
    /// 2: dataset checks (duplicates, train800val200 = train800 + val200, test apart from
    /// training) and their findings in the manifest.
    const VERSION: u32 = 2;
    const NON_OUTPUT_PARAMS: &'static [&'static str] = &["hub_endpoint"];
    const SUMMARY: &'static str =
        "VTAB-1K from a folder, an archive URL or the HF hub, validated into a manifest";

    /// A local dataset is keyed by the content of the requested task folders (every
    /// file, recursively, through symlinks), found as the stage finds them; nothing when
    /// none is found (the stage then says where it looked, and commits nothing).
    fn external_inputs(p: &Params) -> Vec<std::path::PathBuf> {
        let VtabSource::Local { path } = &p.source else {
            return Vec::new();
        };
        specs(p)
            .map(|specs| local_task_dirs(path, &specs))
            .unwrap_or_default()
    }

    fn check(p: &Params) -> Result<(), ParamError> {
        task_specs(&p.tasks)
            .map(|_| ())
            .map_err(|(i, m)| ParamError::at(format!("tasks.{i}"), m))
    }

    fn run(p: Params, ctx: &mut StageContext) -> Result<()> {
        let specs = specs(&p)?;
        let opts = PrepareOptions {
            hub_endpoint: p.hub_endpoint.clone(),
            ..PrepareOptions::default()
        };
        // Downloads go to the checkpoint dir (kept across a crash, so they resume), the
        // extracted data into the entry itself.
        let manifest = prepare(&p.source, &specs, &ctx.out_dir, &opts)?;
        ctx.log(format!(
            "{} tasks validated under {}",
            manifest.tasks.len(),
            manifest.root.display()
        ));
        for w in manifest.warnings() {
            tracing::warn!("{w}");
            ctx.log(format!("warning: {w}"));
        }
        dataset::write(&ctx.out_dir, manifest)
    }
}

/// The specs of `tasks:` (all 19 VTAB-1K tasks when empty).
fn specs(p: &Params) -> Result<Vec<TaskSpec>> {
    if p.tasks.is_empty() {
        return TASKS.iter().map(|t| TaskSpec::vtab(t.name)).collect();
    }
    task_specs(&p.tasks).map_err(|(i, m)| anyhow::anyhow!("tasks[{i}]: {m}"))
}
