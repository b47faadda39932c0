//! The formats of the cache entries the stage kinds write and read, one module per format,
//! each with its file names, its fields (with units) and a writer and a reader that the
//! producing kind and every consuming kind (and `idat-pipe infer`) share:
//!
//! - [`dataset`]: `dataset.json`, the validated manifest a `dataset/*` kind writes and
//!   `data/decode` reads;
//! - [`decoded`]: `decoded.json` and one `<split>.safetensors` per split, written by
//!   `data/decode`, read by `model/pretrain`, `train/*` and `eval`;
//! - [`model`]: `backbone.safetensors` and `model.json`, written by `model/vit` and
//!   `model/pretrain`, read by `train/*` and `eval`;
//! - [`training`]: `student.safetensors`, `teacher.safetensors`, `summary.json` and
//!   `metrics.csv`, written by `train/adapt` and `train/idat`, read by `eval`,
//!   `analysis/adapter-stats` and `idat-pipe infer`;
//! - [`eval`]: `eval.json` (and a copy of the training `metrics.csv`), written by `eval`,
//!   read by `report/vtab`.
//!
//! An entry is renamed into the cache only after its kind returns, so a reader never sees
//! a half-written entry; the readers still check every file and name it in their errors.
//! Every reader reads through `idat_engine::cache::verified`: the bytes of a file in a
//! cache entry are checked against the entry's manifest as they are read, and a corrupt
//! entry fails the reading stage and is moved aside to be recomputed.

pub mod dataset;
pub mod decoded;
pub mod eval;
pub mod model;
pub mod training;

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// Writes `v` as pretty JSON with a final newline to `path`.
///
/// # Errors
/// When `v` does not serialize or `path` cannot be written (the error names `path`).
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Reads JSON written by [`write_json`]; `what` says what the file should hold, e.g.
/// "a training summary (summary.json of train/adapt or train/idat)".
///
/// # Errors
/// A missing or unreadable file, or content that is not `what`, naming `path` and `what`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    // Checked against the entry's manifest as it is read (a flipped bit fails here).
    let bytes = idat_engine::cache::verified::read(path)?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{}: not UTF-8, expected {what}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: unexpected content, expected {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::decoded::{self, DecodedInfo};
    use super::{eval, training};
    use crate::data::loader::DecodedSplit;
    use std::collections::BTreeMap;

    #[test]
    fn a_decoded_entry_reads_back_what_its_writer_wrote() {
        let d = tempfile::tempdir().unwrap();
        let split = DecodedSplit {
            images: (0..2 * 2 * 2 * 3).map(|i| i as u8).collect(),
            labels: vec![1, 0],
            size: 2,
        };
        let file = decoded::write_split(d.path(), "test", &split).unwrap();
        assert_eq!(file, "test.safetensors");
        let info = DecodedInfo {
            task: "toy".into(),
            group: "natural".into(),
            num_classes: 2,
            size: 2,
            splits: BTreeMap::from([("test".to_string(), file)]),
            skipped: BTreeMap::new(),
            class_names: None,
        };
        decoded::write_info(d.path(), &info).unwrap();
        let (got, s) = decoded::read(d.path(), "test").unwrap();
        assert_eq!((got.task.as_str(), got.num_classes), ("toy", 2));
        assert_eq!(s, split);
        // A split the entry lacks: the error lists the ones it has.
        let e = format!("{:#}", decoded::read(d.path(), "train").unwrap_err());
        assert!(
            e.contains("no split `train`") && e.contains("\"test\""),
            "{e}"
        );
    }

    /// Commits an entry of kind `kind` whose files `fill` writes; its folder in `cache`.
    fn committed(
        cache: &idat_engine::cache::Cache,
        kind: &str,
        fill: impl FnOnce(&std::path::Path),
    ) -> std::path::PathBuf {
        let parts = idat_engine::cache::KeyParts {
            format: idat_engine::cache::CACHE_FORMAT,
            kind: kind.into(),
            kind_version: 1,
            params: serde_json::json!({}),
            upstream: vec![],
            external: vec![],
        };
        let key = parts.key();
        let tmp = cache.fresh_tmp(&key).unwrap();
        fill(&tmp);
        cache
            .commit(&tmp, "m[seed=1]", &parts, 0.0, &Default::default())
            .unwrap();
        cache.entry_dir(&key)
    }

    /// Flips one bit of the last f32 of a committed file's data section (the value stays
    /// finite, the size and the header stay as they were: only the entry's manifest can tell).
    fn flip_last_value(file: &std::path::Path) {
        let mut perm = std::fs::metadata(file).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(file, perm).unwrap();
        let mut b = std::fs::read(file).unwrap();
        let n = b.len();
        b[n - 4] ^= 1;
        std::fs::write(file, b).unwrap();
    }

    /// nn's loaders read the weights of a cache entry through the engine's verified reader
    /// (the seam `nn::checkpoint::ReadFile`): a flipped bit in `backbone.safetensors` or
    /// `student.safetensors`, which still parses, fails the read naming the entry's file, and
    /// the entry is moved aside.
    #[test]
    fn weights_in_a_cache_entry_are_checked_against_its_manifest() {
        use crate::nn::adapters::{AdapterConfig, SeqAdapterConfig};
        use crate::nn::vit::{Vit, VitConfig};
        use candle_core::Device;
        let d = tempfile::tempdir().unwrap();
        let cache = idat_engine::cache::Cache::open(d.path().join("c")).unwrap();
        let dev = Device::Cpu;
        let cfg = VitConfig {
            img_size: 16,
            patch_size: 8,
            num_classes: 3,
            embed_dim: 16,
            depth: 1,
            num_heads: 2,
            ..VitConfig::preset("vit_tiny_patch16_224").unwrap()
        };
        let backbone = Vit::random_backbone(&cfg, &dev, 1).unwrap();
        let model_dir = committed(&cache, "model/vit", |dir| {
            let info = super::model::ModelInfo {
                config: cfg.clone(),
                source: "random".into(),
                label: "toy".into(),
                source_top1: None,
                notes: vec![],
            };
            super::model::write(dir, &info, &backbone).unwrap();
        });
        let adapter = AdapterConfig::SeqAdapter(SeqAdapterConfig { hidden: 2 });
        let vit = Vit::new(&cfg, &adapter, backbone.clone(), &dev, 7).unwrap();
        let train_dir = committed(&cache, "train/adapt", |dir| {
            training::write_weights(dir, training::Role::Student, &vit, None).unwrap();
        });
        // Intact: both read.
        super::model::read(&model_dir, 3, 0.0, &dev).unwrap();
        training::restore_trained(&train_dir, training::Role::Student, &dev).unwrap();
        // One bit flipped: both refused, naming the file, and quarantined.
        flip_last_value(&model_dir.join(super::model::BACKBONE_FILE));
        let e = format!(
            "{:#}",
            super::model::read(&model_dir, 3, 0.0, &dev).unwrap_err()
        );
        assert!(
            e.contains("file `backbone.safetensors`: content hash differs"),
            "{e}"
        );
        flip_last_value(&train_dir.join(training::STUDENT_FILE));
        let e = format!(
            "{:#}",
            training::restore_trained(&train_dir, training::Role::Student, &dev).unwrap_err()
        );
        assert!(
            e.contains("file `student.safetensors`: content hash differs"),
            "{e}"
        );
        assert!(!model_dir.exists() && !train_dir.exists(), "moved aside");
        let corrupt = std::fs::read_dir(d.path().join("c/corrupt")).unwrap();
        assert_eq!(corrupt.count(), 2);
    }

    #[test]
    fn readers_name_the_file_and_what_they_expected() {
        let d = tempfile::tempdir().unwrap();
        // Missing: the path is named.
        let e = format!("{:#}", training::read_summary(d.path()).unwrap_err());
        assert!(e.contains("summary.json"), "{e}");
        // Wrong content: the file and the expected format are named.
        std::fs::write(d.path().join(eval::EVAL_FILE), "{\"task\": 1}").unwrap();
        let e = format!("{:#}", eval::read(d.path()).unwrap_err());
        assert!(
            e.contains("eval.json") && e.contains("expected an evaluation result"),
            "{e}"
        );
        std::fs::write(d.path().join(decoded::DECODED_INFO_FILE), "[]").unwrap();
        let e = format!("{:#}", decoded::read_info(d.path()).unwrap_err());
        assert!(
            e.contains("decoded.json") && e.contains("as data/decode writes it"),
            "{e}"
        );
    }

    #[test]
    fn metrics_round_trip_and_bad_rows_are_named() {
        let d = tempfile::tempdir().unwrap();
        let row = crate::train::EpochRow {
            epoch: 1,
            lr: 1e-3,
            loss: 0.5,
            ce_student: 0.5,
            ce_teacher: None,
            distill: None,
            train_top1_student: 50.0,
            test_top1_student: Some(40.0),
            test_top5_student: Some(90.0),
            test_top1_teacher: None,
        };
        training::write_metrics(d.path(), std::slice::from_ref(&row)).unwrap();
        assert_eq!(training::read_metrics(d.path()).unwrap(), vec![row]);
        let to = d.path().join("eval");
        std::fs::create_dir(&to).unwrap();
        training::copy_metrics(d.path(), &to).unwrap();
        assert_eq!(training::read_metrics(&to).unwrap().len(), 1);
        std::fs::write(d.path().join(training::METRICS_FILE), "epoch,lr\nx,1\n").unwrap();
        let e = format!("{:#}", training::read_metrics(d.path()).unwrap_err());
        assert!(e.contains("metrics.csv: bad row"), "{e}");
    }

    /// Entries written before timings left the hashed files (issue 25) still read: a
    /// `seconds` column in metrics.csv, `train_seconds` and `resumed_from_epoch` in the
    /// summary.
    #[test]
    fn entries_written_with_timings_still_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(training::METRICS_FILE),
            "epoch,lr,loss,ce_student,ce_teacher,distill,train_top1_student,\
             test_top1_student,test_top5_student,test_top1_teacher,seconds\n\
             1,0.001,0.5,0.5,,,50.0,40.0,90.0,,12.75\n",
        )
        .unwrap();
        let rows = training::read_metrics(d.path()).unwrap();
        assert_eq!((rows.len(), rows[0].test_top1_student), (1, Some(40.0)));
        let cfg = crate::nn::vit::VitConfig {
            num_classes: 3,
            ..crate::nn::vit::VitConfig::preset("vit_tiny_patch16_224").unwrap()
        };
        let summary = training::TrainSummary {
            task: "dtd".into(),
            label: "at".into(),
            seed: 1,
            adapter: crate::nn::adapters::AdapterConfig::Linear,
            student_config: cfg,
            teacher_config: None,
            student_model: "s".into(),
            teacher_model: None,
            trainable_student: 51,
            trainable_teacher: None,
            epochs: 1,
            best_top1: 40.0,
            best_epoch: 1,
            final_top1: 40.0,
            final_top5: 90.0,
            final_teacher_top1: None,
            student_backbone: None,
            teacher_backbone: None,
        };
        let mut old = serde_json::to_value(&summary).unwrap();
        old["train_seconds"] = serde_json::json!(12.75);
        old["resumed_from_epoch"] = serde_json::json!(0);
        std::fs::write(
            d.path().join("summary.json"),
            serde_json::to_string(&old).unwrap(),
        )
        .unwrap();
        let back = training::read_summary(d.path()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&summary).unwrap()
        );
    }
}
