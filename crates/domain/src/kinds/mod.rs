//! The ML stage kinds the product ships, one file per kind (see docs/stages.md).
pub mod analysis;
pub mod common;
pub mod dataset_imagefolder;
pub mod dataset_mini;
pub mod dataset_vtab;
pub mod decode;
pub mod eval;
pub mod model_pretrain;
pub mod model_vit;
pub mod report;
pub mod train;

use idat_engine::stages::Registry;

/// A registry of every kind the product ships.
pub fn registry() -> Registry {
    let mut r = Registry::empty();
    register_all(&mut r);
    r
}

/// Register every shipped kind.
pub fn register_all(r: &mut Registry) {
    r.register::<dataset_vtab::DatasetVtab>()
        .register::<dataset_mini::DatasetMini>()
        .register::<dataset_imagefolder::DatasetImageFolder>()
        .register::<decode::Decode>()
        .register::<model_vit::ModelVit>()
        .register::<model_pretrain::ModelPretrain>()
        .register::<train::TrainAdapt>()
        .register::<train::TrainIdat>()
        .register::<eval::Eval>()
        .register::<analysis::AdapterStats>()
        .register::<report::ReportVtab>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use idat_engine::cache::keys::{external_paths, key_parts};
    use idat_engine::cache::Cache;
    use idat_engine::config::Instance;
    use idat_engine::exec::plan::resume_reason;
    use serde_json::json;
    use std::path::PathBuf;

    fn inst(uses: &str, with: serde_json::Value) -> Instance {
        Instance {
            id: "x".into(),
            stage: "x".into(),
            uses: uses.into(),
            cell: vec![],
            with,
            resources: Default::default(),
        }
    }

    #[test]
    fn training_kinds_resume_after_their_newest_epoch_checkpoint() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path().join(".idat")).unwrap();
        let reg = registry();
        let dir = cache.checkpoint_dir("k").unwrap();
        let f = dir.join("epoch-0003.safetensors");
        std::fs::write(&f, b"xyz").unwrap();
        // A broken epoch checkpoint: the run would fail, and how to start over.
        let want = format!(
            "will fail: epoch checkpoint {}: 3 bytes, too short for a safetensors header \
             (delete {} to start over)",
            f.display(),
            dir.display()
        );
        for kind in ["train/adapt", "train/idat", "model/pretrain"] {
            let k = reg.get(kind).map(|k| k.as_ref());
            assert_eq!(
                resume_reason(&cache, "k", k).as_deref(),
                Some(&*want),
                "{kind}"
            );
        }
        // Kinds without epoch checkpoints say only that they resume from the folder.
        let k = reg.get("data/decode").map(|k| k.as_ref());
        assert_eq!(
            resume_reason(&cache, "k", k),
            Some(format!("resumes from its checkpoint ({})", dir.display()))
        );
    }

    #[test]
    fn builtin_kinds_declare_their_external_inputs() {
        let reg = registry();
        let t = tempfile::tempdir().unwrap();
        let root = t.path().display().to_string();
        std::fs::create_dir_all(t.path().join("cifar")).unwrap();
        // Local VTAB: the requested task folders (aliases resolved) that exist.
        let v = inst(
            "dataset/vtab1k",
            json!({"source": {"kind": "local", "path": root}, "tasks": ["cifar100"]}),
        );
        assert_eq!(external_paths(&v, &reg), vec![t.path().join("cifar")]);
        // None of them exists: nothing (the stage says where it looked, commits nothing);
        // never the root, which may hold the cache and runs folders.
        let v = inst(
            "dataset/vtab1k",
            json!({"source": {"kind": "local", "path": root}, "tasks": ["dtd"]}),
        );
        assert!(external_paths(&v, &reg).is_empty());
        // A root one or two levels above the task folders (an unpacked `vtab-1k/vtab-1k/`):
        // the task folders where the stage finds them, not the folder above.
        let up = t.path().join("up");
        std::fs::create_dir_all(up.join("vtab-1k/vtab-1k/dtd")).unwrap();
        std::fs::create_dir_all(up.join("vtab-1k/vtab-1k/eurosat")).unwrap();
        let v = inst(
            "dataset/vtab1k",
            json!({"source": {"kind": "local", "path": up}, "tasks": ["eurosat", "dtd"]}),
        );
        assert_eq!(
            external_paths(&v, &reg),
            vec![
                up.join("vtab-1k/vtab-1k/eurosat"),
                up.join("vtab-1k/vtab-1k/dtd")
            ]
        );
        // A weights file; an upstream output path is not external.
        let m = |path: &str| {
            inst(
                "model/vit",
                json!({"arch": "vit_tiny_patch16_224", "weights": {"from": "file", "path": path}}),
            )
        };
        assert_eq!(
            external_paths(&m("w.safetensors"), &reg),
            vec![PathBuf::from("w.safetensors")]
        );
        assert!(external_paths(&m("${stages.p.outputs}/model.safetensors"), &reg).is_empty());
        let r = inst(
            "model/vit",
            json!({"arch": "vit_tiny_patch16_224", "weights": {"from": "random", "seed": 1}}),
        );
        assert!(external_paths(&r, &reg).is_empty());
        // The key carries the hash; a missing file is an error naming it.
        let cache = Cache::open(t.path().join(".idat")).unwrap();
        let e = key_parts(&m("nope.safetensors"), &reg, &cache, vec![]).unwrap_err();
        assert!(e.contains("nope.safetensors"), "{e}");
        std::fs::write(t.path().join("w.bin"), b"w").unwrap();
        let w = t.path().join("w.bin").display().to_string();
        let p = key_parts(&m(&w), &reg, &cache, vec![]).unwrap();
        assert_eq!(p.external.len(), 1);
        assert_eq!(p.external[0].path, w);
    }
}
