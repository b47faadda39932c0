//! Epoch checkpoints inside the stage's checkpoint directory: trainable weights and
//! optimizer state of every member plus the metric rows so far, in one safetensors file
//! written atomically. Only the latest is kept.
use super::epoch::EpochRow;
use super::member::Member;
use crate::nn::checkpoint::{load_tensors_with, save_tensors};
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

/// The newest epoch checkpoint in `dir` (the one [`load_latest`] resumes from).
fn latest_path(dir: &Path) -> Result<Option<PathBuf>> {
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
    Ok(latest)
}

/// What a training stage resumes from, for [`idat_engine::stages::StageKind::resume_point`]:
/// `resumes after epoch N` (N counted from 1) when `dir` holds an epoch checkpoint.
///
/// # Errors
/// The newest epoch checkpoint cannot be read (see [`resume_epoch`]).
pub fn resume_point(dir: &Path) -> Result<Option<String>> {
    Ok(resume_epoch(dir)?.map(|(epoch, _)| format!("resumes after epoch {epoch}")))
}

/// Largest safetensors header read by [`resume_epoch`] (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// How many epochs a run resuming from `dir` (a stage's checkpoint directory) skips: the
/// 1-based number of the last completed epoch of its newest epoch checkpoint, or None when
/// it holds none. Reads only the file's header: its `epoch` and `rows` metadata must agree
/// and its tensors' data must end where the file does (what `plan` needs to say
/// `resumes after epoch N`; the run itself loads and checks every tensor).
/// Error: the newest checkpoint is unreadable or inconsistent (naming the file), which makes
/// the resuming run fail too.
pub fn resume_epoch(dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    use std::io::Read;
    let Some(path) = latest_path(dir)? else {
        return Ok(None);
    };
    let bad = |why: String| anyhow::anyhow!("epoch checkpoint {}: {why}", path.display());
    let mut f = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
    let file_len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        bad(format!(
            "{file_len} bytes, too short for a safetensors header"
        ))
    })?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > file_len - 8 {
        return Err(bad(format!(
            "header of {n} bytes does not fit the file ({file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header does not parse: {e}")))?;
    let mut data_end = 0u64;
    for (name, t) in &header {
        if name == "__metadata__" {
            continue;
        }
        let end = t["data_offsets"][1]
            .as_u64()
            .ok_or_else(|| bad(format!("tensor {name} has no data offsets")))?;
        data_end = data_end.max(end);
    }
    if 8 + n + data_end != file_len {
        return Err(bad(format!(
            "truncated or padded: its tensors end at byte {}, the file has {file_len}",
            8 + n + data_end
        )));
    }
    let meta = header.get("__metadata__");
    let text = |k: &str| meta.and_then(|m| m[k].as_str());
    let epoch: usize = text("epoch")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("no `epoch` in metadata".into()))?;
    let rows: Vec<EpochRow> = serde_json::from_str(text("rows").unwrap_or("[]"))
        .map_err(|e| bad(format!("bad `rows` metadata: {e}")))?;
    if rows.len() != epoch + 1 {
        return Err(bad(format!(
            "{} metric rows for epoch {}",
            rows.len(),
            epoch + 1
        )));
    }
    Ok(Some((epoch + 1, path)))
}

/// The newest epoch checkpoint in `dir` restored into `members` (weights and optimizer
/// state), or None when there is none. Errors: an unreadable or mismatched checkpoint, with
/// the way out (only the newest is kept, so there is nothing older to fall back on: the
/// same words `plan` prints).
pub(super) fn load_latest(
    dir: &Path,
    members: &mut [Member],
    dev: &Device,
) -> Result<Option<Saved>> {
    let Some(path) = latest_path(dir)? else {
        return Ok(None);
    };
    restore(path, members, dev).map(Some).with_context(|| {
        format!(
            "cannot resume from the checkpoint (delete {} to start over)",
            dir.display()
        )
    })
}

fn restore(path: PathBuf, members: &mut [Member], dev: &Device) -> Result<Saved> {
    let (tensors, meta) = load_tensors_with(&path, dev, idat_engine::cache::verified::read)
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
    Ok(Saved { epoch, rows, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize) -> EpochRow {
        EpochRow {
            epoch,
            lr: 1e-3,
            loss: 0.5,
            ce_student: 0.5,
            ce_teacher: None,
            distill: None,
            train_top1_student: 50.0,
            test_top1_student: None,
            test_top5_student: None,
            test_top1_teacher: None,
        }
    }

    /// An epoch checkpoint as [`save`] writes it, for epoch index `epoch` (0-based).
    fn write(dir: &Path, epoch: usize, rows: usize) -> PathBuf {
        let t = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let tensors = BTreeMap::from([("student/param/x".to_string(), t)]);
        let rows: Vec<EpochRow> = (1..=rows).map(row).collect();
        let meta = BTreeMap::from([
            ("epoch".to_string(), epoch.to_string()),
            ("rows".to_string(), serde_json::to_string(&rows).unwrap()),
        ]);
        let path = file_for(dir, epoch);
        save_tensors(&path, &tensors, &meta).unwrap();
        path
    }

    #[test]
    fn resume_epoch_reads_the_newest_checkpoint_header() {
        let d = tempfile::tempdir().unwrap();
        assert!(resume_epoch(&d.path().join("absent")).unwrap().is_none());
        assert!(resume_epoch(d.path()).unwrap().is_none());
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        assert!(resume_epoch(d.path()).unwrap().is_none());
        // Index 2 = three completed epochs: the run resumes after epoch 3.
        let p2 = write(d.path(), 2, 3);
        assert_eq!(resume_epoch(d.path()).unwrap(), Some((3, p2.clone())));
        // A newer one wins; epoch 10 (index 9) sorts after index 2.
        let p9 = write(d.path(), 9, 10);
        assert_eq!(resume_epoch(d.path()).unwrap(), Some((10, p9.clone())));
        // Truncated: named, with where its data should end.
        let bytes = std::fs::read(&p9).unwrap();
        std::fs::write(&p9, &bytes[..bytes.len() - 1]).unwrap();
        let e = format!("{:#}", resume_epoch(d.path()).unwrap_err());
        assert_eq!(
            e,
            format!(
                "epoch checkpoint {}: truncated or padded: its tensors end at byte {}, the \
                 file has {}",
                p9.display(),
                bytes.len(),
                bytes.len() - 1
            )
        );
        // Rows that disagree with the epoch.
        std::fs::remove_file(&p9).unwrap();
        let p4 = write(d.path(), 4, 3);
        let e = format!("{:#}", resume_epoch(d.path()).unwrap_err());
        assert_eq!(
            e,
            format!(
                "epoch checkpoint {}: 3 metric rows for epoch 5",
                p4.display()
            )
        );
        std::fs::write(&p4, b"abc").unwrap();
        let e = format!("{:#}", resume_epoch(d.path()).unwrap_err());
        assert!(
            e.contains("3 bytes, too short for a safetensors header"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_newest_checkpoint_says_how_to_start_over() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("epoch-0069.safetensors"), [7u8; 1000]).unwrap();
        let e = match load_latest(t.path(), &mut [], &Device::Cpu) {
            Ok(_) => panic!("a truncated checkpoint was restored"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains(&format!("delete {} to start over", t.path().display()))
                && e.contains("epoch-0069.safetensors"),
            "{e}"
        );
        assert!(load_latest(&t.path().join("none"), &mut [], &Device::Cpu)
            .unwrap()
            .is_none());
    }
}
