//! Epoch checkpoints inside the stage's checkpoint directory: trainable weights and
//! optimizer state of every member plus the metric rows so far, in one safetensors file
//! written atomically. Only the latest is kept.
use super::cotrain::{EpochRow, Member};
use crate::nn::checkpoint::{load_tensors, save_tensors};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(super) struct Saved {
    pub epoch: usize,
    pub rows: Vec<EpochRow>,
    pub path: PathBuf,
}

fn file_for(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch-{epoch:04}.safetensors"))
}

pub(super) fn save(dir: &Path, epoch: usize, members: &[Member], rows: &[EpochRow]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for m in members {
        for (name, var) in m.vit.trainable() {
            tensors.insert(format!("{}/param/{name}", m.name), var.as_tensor().clone());
        }
        for (k, t) in m.opt.state() {
            tensors.insert(format!("{}/opt/{k}", m.name), t);
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("rows".to_string(), serde_json::to_string(rows)?);
    let path = file_for(dir, epoch);
    save_tensors(&path, &tensors, &meta)?;
    // Drop older checkpoints only once the new one is complete.
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let is_ckpt = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("epoch-"));
        if is_ckpt && p != path {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

pub(super) fn load_latest(
    dir: &Path,
    members: &mut [Member],
    dev: &Device,
) -> Result<Option<Saved>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut latest: Option<PathBuf> = None;
    for e in rd {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("epoch-")
            && name.ends_with(".safetensors")
            && latest.as_ref().is_none_or(|l| &p > l)
        {
            latest = Some(p);
        }
    }
    let Some(path) = latest else { return Ok(None) };
    let (tensors, meta) = load_tensors(&path, dev)
        .with_context(|| format!("reading epoch checkpoint {}", path.display()))?;
    let epoch: usize = meta
        .get("epoch")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{}: no `epoch` in metadata", path.display()))?;
    let rows: Vec<EpochRow> =
        serde_json::from_str(meta.get("rows").map(String::as_str).unwrap_or("[]"))
            .with_context(|| format!("{}: bad `rows` metadata", path.display()))?;
    if rows.len() != epoch + 1 {
        bail!(
            "{}: {} metric rows for epoch {}",
            path.display(),
            rows.len(),
            epoch + 1
        );
    }
    for m in members.iter_mut() {
        let pre_p = format!("{}/param/", m.name);
        let pre_o = format!("{}/opt/", m.name);
        let params: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&pre_p).map(|n| (n.to_string(), t.clone())))
            .collect();
        let opt: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&pre_o).map(|n| (n.to_string(), t.clone())))
            .collect();
        m.vit
            .set_trainable(&params)
            .with_context(|| format!("{}: restoring {} weights", path.display(), m.name))?;
        m.opt
            .load_state(&opt)
            .with_context(|| format!("{}: restoring {} optimizer", path.display(), m.name))?;
    }
    Ok(Some(Saved { epoch, rows, path }))
}
