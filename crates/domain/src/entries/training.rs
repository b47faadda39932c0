//! The training entry of `train/adapt` and `train/idat`.
//!
//! - `student.safetensors`: the trainable weights (adapters and head) of the kept, large
//!   model under their parameter names, with metadata `adapter` (the [`AdapterConfig`] as
//!   JSON), `config` (the [`VitConfig`] as JSON) and, when the task has class names,
//!   `class_names` (a JSON array in label order); `idat-pipe infer --adapter` reads it;
//! - `teacher.safetensors` (`train/idat` only): the same for the small teacher;
//! - `summary.json` ([`TrainSummary`]): what the run did and its accuracies (percent);
//! - `metrics.csv`: one [`EpochRow`] per epoch (1-based epochs, mean training losses, accuracies
//!   in percent).
//!
//! Every file is a function of the inputs alone: a recomputation writes the same bytes, so
//! what depends on the entry stays cached. How the run went is in the entry's manifest
//! (`info`, see [`record_run`]): `train_seconds`, `epoch_seconds` (`[epoch, seconds]` of each
//! epoch this run trained) and `resumed_from_epoch`. Entries written before issue 25 also
//! have a `seconds` column and `train_seconds` / `resumed_from_epoch` in the summary; the
//! readers here ignore them.
//!
//! `eval` reads the summary, the student and the metrics; `analysis/adapter-stats` the
//! summary and both models' weights; both restore a model through [`restore_trained`], as
//! `idat-pipe infer --adapter` does through [`read_trained`].
use super::{read_json, write_json};
use crate::nn::adapters::AdapterConfig;
use crate::nn::checkpoint::{load_tensors_with, save_tensors};
use crate::nn::vit::{Vit, VitConfig};
use crate::report::backbones::Backbone;
use crate::train::EpochRow;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The kept (large) model's trainable weights.
pub const STUDENT_FILE: &str = "student.safetensors";
/// The teacher's trainable weights (`train/idat` only).
pub const TEACHER_FILE: &str = "teacher.safetensors";
/// The run's [`TrainSummary`].
pub const SUMMARY_FILE: &str = "summary.json";
/// The per-epoch [`EpochRow`]s.
pub const METRICS_FILE: &str = "metrics.csv";
/// Metadata key of the saved weights holding the adapter config (JSON).
pub const ADAPTER_META: &str = "adapter";
/// Metadata key of the saved weights holding the ViT config (JSON).
pub const CONFIG_META: &str = "config";
/// Metadata key of the saved weights holding the task's class names (a JSON array in label
/// order), when the task has them; `idat-pipe infer` prints them beside the labels.
pub const CLASS_NAMES_META: &str = "class_names";

/// Which of a training entry's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The kept, large model (`student.safetensors`).
    Student,
    /// The small model of `train/idat` (`teacher.safetensors`).
    Teacher,
}

impl Role {
    /// The file of this model in the entry.
    pub fn file(self) -> &'static str {
        match self {
            Role::Student => STUDENT_FILE,
            Role::Teacher => TEACHER_FILE,
        }
    }
}

/// `summary.json` of a training entry: what the eval and analysis stages read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Task name as the stage was given it.
    pub task: String,
    /// Row label in reports, e.g. `at` or `idat-mse`.
    pub label: String,
    /// Training seed.
    pub seed: u64,
    /// Adapter method of the student (and teacher).
    pub adapter: AdapterConfig,
    /// The student's ViT config (its `num_classes` is the task's).
    pub student_config: VitConfig,
    /// The teacher's ViT config (`train/idat` only).
    pub teacher_config: Option<VitConfig>,
    /// The student backbone's label (`model.json`).
    pub student_model: String,
    /// The teacher backbone's label (`train/idat` only).
    pub teacher_model: Option<String>,
    /// Trainable parameters of the student (count).
    pub trainable_student: usize,
    /// Trainable parameters of the teacher (count, `train/idat` only).
    pub trainable_teacher: Option<usize>,
    /// Epochs trained (warm-up and cool-down included).
    pub epochs: usize,
    /// Best test top-1 (percent) over evaluated epochs.
    pub best_top1: f64,
    /// The 1-based epoch of `best_top1`.
    pub best_epoch: usize,
    /// Test top-1 (percent) after the last epoch.
    pub final_top1: f64,
    /// Test top-5 (percent) after the last epoch.
    pub final_top5: f64,
    /// The teacher's test top-1 (percent) after the last epoch (`train/idat` only).
    pub final_teacher_top1: Option<f64>,
    // How the run went (its wall-clock time, the checkpoint it resumed after) is not a
    // result: it is in the entry's manifest (`info`), so a recomputation with identical
    // weights writes an identical summary and its dependents stay cached (issue 25).
    // Summaries written before have `train_seconds` and `resumed_from_epoch`, ignored here.
    /// The student's backbone: where it came from, its source-task top-1.
    #[serde(default)]
    pub student_backbone: Option<Backbone>,
    /// The teacher's backbone (iDAT only).
    #[serde(default)]
    pub teacher_backbone: Option<Backbone>,
}

/// Writes the trainable weights of `vit` as the `role` model of the entry `dir`, with its
/// adapter and ViT configs and the task's class names (if any) as metadata.
///
/// # Errors
/// When the configs do not serialize or the file cannot be written (named).
pub fn write_weights(
    dir: &Path,
    role: Role,
    vit: &Vit,
    class_names: Option<&[String]>,
) -> Result<()> {
    let t = vit
        .trainable()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert(ADAPTER_META.into(), serde_json::to_string(vit.adapter())?);
    meta.insert(CONFIG_META.into(), serde_json::to_string(vit.config())?);
    if let Some(names) = class_names {
        meta.insert(CLASS_NAMES_META.into(), serde_json::to_string(names)?);
    }
    save_tensors(&dir.join(role.file()), &t, &meta)
}

/// A trained model as a training entry keeps it (`student.safetensors`,
/// `teacher.safetensors`): what `eval`, `analysis/adapter-stats` and `idat-pipe infer`
/// restore.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The file it was read from.
    pub file: PathBuf,
    /// The trainable tensors (adapters and head, or whatever the method trains) by
    /// parameter name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The adapter method they belong to (metadata `adapter`).
    pub adapter: AdapterConfig,
    /// The ViT they were trained on (metadata `config`; absent from files written by
    /// versions that did not record it).
    pub config: Option<VitConfig>,
    /// The task's class names in label order (metadata `class_names`), where it has them.
    pub class_names: Option<Vec<String>>,
}

/// The `role` model of the training entry `dir`, its tensors on `dev` (see
/// [`read_trained`]).
///
/// # Errors
/// As [`read_trained`].
pub fn restore_trained(dir: &Path, role: Role, dev: &Device) -> Result<Trained> {
    read_trained(&dir.join(role.file()), dev)
}

/// The trained model in `file` (a training entry's `student.safetensors` or
/// `teacher.safetensors`), its tensors on `dev`.
///
/// # Errors
/// Each names the file: it is missing or not safetensors; it has no `adapter` metadata (not
/// a training entry's weights); a metadata value does not parse (`adapter` as an adapter
/// config, `config` as a ViT config, `class_names` as a JSON array of strings).
pub fn read_trained(file: &Path, dev: &Device) -> Result<Trained> {
    // Checked against the entry's manifest as it is read (a flipped bit fails here).
    let (tensors, meta) = load_tensors_with(file, dev, idat_engine::cache::verified::read)?;
    let f = file.display();
    let adapter = meta.get(ADAPTER_META).with_context(|| {
        format!("{f}: no `adapter` metadata (expected a training entry's student.safetensors)")
    })?;
    let adapter: AdapterConfig = serde_json::from_str(adapter)
        .with_context(|| format!("{f}: metadata `adapter` is not an adapter config"))?;
    let config = meta
        .get(CONFIG_META)
        .map(|c| serde_json::from_str::<VitConfig>(c))
        .transpose()
        .with_context(|| format!("{f}: metadata `config` is not a ViT config"))?;
    let class_names = meta
        .get(CLASS_NAMES_META)
        .map(|c| serde_json::from_str::<Vec<String>>(c))
        .transpose()
        .with_context(|| format!("{f}: metadata `class_names` is not a JSON array of strings"))?;
    Ok(Trained {
        file: file.to_path_buf(),
        tensors,
        adapter,
        config,
        class_names,
    })
}

impl Trained {
    /// Checks that `cfg` has the architecture the model was trained on (width, depth,
    /// patch), where the file records it; `model` names where `cfg` comes from.
    ///
    /// # Errors
    /// The architectures differ (both given).
    pub fn check_arch(&self, cfg: &VitConfig, model: &str) -> Result<()> {
        let Some(c) = &self.config else {
            return Ok(());
        };
        if (c.embed_dim, c.depth, c.patch_size) != (cfg.embed_dim, cfg.depth, cfg.patch_size) {
            anyhow::bail!(
                "{} was trained on a ViT with dim {}, depth {}, patch {}; {model} has dim {}, \
                 depth {}, patch {}",
                self.file.display(),
                c.embed_dim,
                c.depth,
                c.patch_size,
                cfg.embed_dim,
                cfg.depth,
                cfg.patch_size
            );
        }
        Ok(())
    }

    /// The model: the frozen `backbone` of architecture `cfg` (`model` names its source in
    /// errors) with the trained method and its trainable tensors set, on `dev`.
    ///
    /// # Errors
    /// The architecture is not the one trained on ([`Trained::check_arch`]); the backbone
    /// does not fit `cfg`; the tensors do not fit the model (every mismatch named).
    pub fn into_vit(
        self,
        cfg: &VitConfig,
        backbone: BTreeMap<String, Tensor>,
        model: &str,
        dev: &Device,
    ) -> Result<Vit> {
        self.check_arch(cfg, model)?;
        let vit = Vit::new(cfg, &self.adapter, backbone, dev, 0)?;
        vit.set_trainable(&self.tensors)
            .with_context(|| format!("{} does not fit {model}", self.file.display()))?;
        Ok(vit)
    }
}

/// Writes `summary.json` into the entry `dir`.
///
/// # Errors
/// When the file cannot be written (named).
pub fn write_summary(dir: &Path, summary: &TrainSummary) -> Result<()> {
    write_json(&dir.join(SUMMARY_FILE), summary)
}

/// `summary.json` of the training entry `dir`.
///
/// # Errors
/// A missing file or one that is not a training summary, naming it.
pub fn read_summary(dir: &Path) -> Result<TrainSummary> {
    read_json(
        &dir.join(SUMMARY_FILE),
        "a training summary (summary.json as train/adapt or train/idat writes it)",
    )
}

/// Records how a training run went in the entry's manifest (`ctx.info`, not hashed):
/// `train_seconds` (wall-clock seconds of this process's training), `epoch_seconds`
/// (`[epoch, seconds]` per epoch it trained; 1-based epochs) and `resumed_from_epoch` (the
/// 0-based epoch index of the checkpoint it resumed after, or null).
pub fn record_run(
    info: &mut serde_json::Map<String, serde_json::Value>,
    train_seconds: f64,
    out: &crate::train::TrainOutcome,
) {
    use serde_json::json;
    info.insert("train_seconds".into(), json!(train_seconds));
    info.insert("epoch_seconds".into(), json!(out.epoch_seconds));
    info.insert("resumed_from_epoch".into(), json!(out.resumed_from_epoch));
}

/// Writes `metrics.csv` (one row per epoch, a header line first) into `dir`.
///
/// # Errors
/// When the file cannot be written (named).
pub fn write_metrics(dir: &Path, rows: &[EpochRow]) -> Result<()> {
    let path = dir.join(METRICS_FILE);
    let mut w =
        csv::Writer::from_path(&path).with_context(|| format!("writing {}", path.display()))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The rows of `metrics.csv` in `dir` (a training entry, or an eval entry's copy).
///
/// # Errors
/// A missing file or a row that is not an epoch row, naming the file.
pub fn read_metrics(dir: &Path) -> Result<Vec<EpochRow>> {
    let path = dir.join(METRICS_FILE);
    let mut r = csv::Reader::from_reader(idat_engine::cache::verified::open(&path)?);
    r.deserialize::<EpochRow>()
        .map(|row| row.with_context(|| format!("{}: bad row", path.display())))
        .collect()
}

/// Copies `metrics.csv` of the entry `from` into the folder `to` (the eval entry keeps the
/// learning curves beside its result).
///
/// # Errors
/// When the file cannot be copied (the error names the source).
pub fn copy_metrics(from: &Path, to: &Path) -> Result<()> {
    // Read (and checked against its entry's manifest), then written: a corrupt source is
    // never copied into a new entry.
    let bytes = idat_engine::cache::verified::read(&from.join(METRICS_FILE))
        .with_context(|| format!("copying {}", from.join(METRICS_FILE).display()))?;
    std::fs::write(to.join(METRICS_FILE), bytes)
        .with_context(|| format!("writing {}", to.join(METRICS_FILE).display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::adapters::{LoraConfig, SeqAdapterConfig};

    fn tiny() -> VitConfig {
        VitConfig {
            img_size: 16,
            patch_size: 8,
            num_classes: 3,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            ..VitConfig::preset("vit_tiny_patch16_224").unwrap()
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// What `write_weights` wrote comes back through `restore_trained` (tensors bit for
    /// bit, the adapter, the config, the class names) and gives the same model.
    #[test]
    fn a_trained_model_is_restored_as_it_was_written() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, dev) = (tiny(), Device::Cpu);
        let adapter = AdapterConfig::SeqAdapter(SeqAdapterConfig { hidden: 3 });
        let backbone = || Vit::random_backbone(&cfg, &dev, 1).unwrap();
        let vit = Vit::new(&cfg, &adapter, backbone(), &dev, 7).unwrap();
        let names = ["a".to_string(), "b".into(), "c".into()];
        write_weights(d.path(), Role::Student, &vit, Some(&names)).unwrap();
        let t = restore_trained(d.path(), Role::Student, &dev).unwrap();
        assert_eq!(t.file, d.path().join(STUDENT_FILE));
        assert_eq!((&t.adapter, t.config.as_ref()), (&adapter, Some(&cfg)));
        assert_eq!(t.class_names.as_deref(), Some(&names[..]));
        let trained = vit.trainable();
        assert_eq!(t.tensors.len(), trained.len());
        for (n, v) in &trained {
            assert_eq!(bits(&t.tensors[n]), bits(v.as_tensor()), "{n}");
        }
        let back = t
            .into_vit(&cfg, backbone(), "the test backbone", &dev)
            .unwrap();
        for ((n, a), (_, b)) in trained.iter().zip(back.trainable()) {
            assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "{n}");
        }
    }

    /// Bad metadata, another architecture or another method: each error names the file and
    /// what was expected.
    #[test]
    fn a_trained_file_that_does_not_fit_is_refused_with_its_name() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, dev) = (tiny(), Device::Cpu);
        let file = d.path().join("w.safetensors");
        let t = BTreeMap::from([(
            "head.bias".to_string(),
            Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap(),
        )]);
        let write = |meta: &[(&str, &str)]| {
            let meta = meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            save_tensors(&file, &t, &meta).unwrap();
        };
        let err = |file: &Path| format!("{:#}", read_trained(file, &dev).unwrap_err());
        write(&[]);
        let e = err(&file);
        assert!(e.contains("w.safetensors: no `adapter` metadata"), "{e}");
        write(&[(ADAPTER_META, "{\"method\":\"nope\"}")]);
        assert!(err(&file).contains("metadata `adapter` is not an adapter config"));
        let seq = serde_json::to_string(&AdapterConfig::default()).unwrap();
        write(&[(ADAPTER_META, &seq), (CLASS_NAMES_META, "[1, 2]")]);
        assert!(err(&file).contains("metadata `class_names` is not a JSON array of strings"));
        write(&[(ADAPTER_META, &seq), (CONFIG_META, "{}")]);
        assert!(err(&file).contains("metadata `config` is not a ViT config"));
        let wide = serde_json::to_string(&VitConfig {
            embed_dim: 32,
            ..cfg.clone()
        })
        .unwrap();
        write(&[(ADAPTER_META, &seq), (CONFIG_META, &wide)]);
        let e = format!(
            "{:#}",
            read_trained(&file, &dev)
                .unwrap()
                .check_arch(&cfg, "--model x")
                .unwrap_err()
        );
        assert!(
            e.contains("trained on a ViT with dim 32, depth 2, patch 8; --model x has dim 16"),
            "{e}"
        );
        // The method's tensors are not the file's: every mismatch is named.
        let lora = serde_json::to_string(&AdapterConfig::Lora(LoraConfig::default())).unwrap();
        write(&[
            (ADAPTER_META, &lora),
            (CONFIG_META, &serde_json::to_string(&cfg).unwrap()),
        ]);
        let bb = Vit::random_backbone(&cfg, &dev, 1).unwrap();
        let e = format!(
            "{:#}",
            read_trained(&file, &dev)
                .unwrap()
                .into_vit(&cfg, bb, "the test backbone", &dev)
                .err()
                .expect("refused")
        );
        assert!(
            e.contains("w.safetensors does not fit the test backbone")
                && e.contains("missing `head.weight`"),
            "{e}"
        );
    }
}
