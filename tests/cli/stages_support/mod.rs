//! Helpers of the stage end-to-end tests: a tiny VTAB-layout dataset and tiny timm-named
//! backbones written on the fly, and running the real `idat-pipe` binary.
#![allow(dead_code)]

use candle_core::Device;
use idat_pipe::nn::checkpoint::save_tensors;
use idat_pipe::nn::vit::{Vit, VitConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Side of the generated images (decode resizes them to 16).
pub const SIDE: u32 = 12;
/// Test images per task.
pub const N_TEST: usize = 60;

/// Path of a pipeline under `tests/pipelines/`.
pub fn pipeline(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pipelines")
        .join(name)
        .display()
        .to_string()
}

/// Path of a shipped pipeline under `pipelines/`.
pub fn shipped(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name)
        .display()
        .to_string()
}

/// Image file of sample `i` of a split (every fifth one is a JPEG, the rest PNG).
pub fn image_rel(split_dir: &str, i: usize) -> String {
    let ext = if i.is_multiple_of(5) { "jpg" } else { "png" };
    format!("images/{split_dir}/{i:05}.{ext}")
}

/// Writes the VTAB-1K task `name` (`classes` classes) under `root` in the NOAH layout:
/// 1000 train images (`train800` = first 800, `val200` = last 200, `train800val200` =
/// all) and [`N_TEST`] test images, label `i % classes`, colour depending on the label
/// so that the task is learnable.
pub fn write_vtab_task(root: &Path, name: &str, classes: usize) {
    let dir = root.join(name);
    let write = |split_dir: &str, n: usize, offset: usize| -> Vec<String> {
        std::fs::create_dir_all(dir.join("images").join(split_dir)).unwrap();
        (0..n)
            .map(|i| {
                let label = i % classes;
                let rel = image_rel(split_dir, i);
                let base = [
                    (label * 37 % 256) as u8,
                    (label * 91 % 256) as u8,
                    (label * 53 % 256) as u8,
                ];
                let seed = i + offset;
                let img = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
                    let noise = ((seed as u32 * 13 + x * 7 + y * 3) % 23) as u8;
                    image::Rgb(base.map(|b| b.wrapping_add(noise)))
                });
                img.save(dir.join(&rel)).unwrap();
                format!("{rel} {label}\n")
            })
            .collect()
    };
    let train = write("train", 1000, 0);
    let test = write("test", N_TEST, 5000);
    std::fs::write(dir.join("train800.txt"), train[..800].concat()).unwrap();
    std::fs::write(dir.join("val200.txt"), train[800..].concat()).unwrap();
    std::fs::write(dir.join("train800val200.txt"), train.concat()).unwrap();
    std::fs::write(dir.join("test.txt"), test.concat()).unwrap();
}

/// The student (larger) and teacher (smaller) test architectures, as in the test pipelines.
pub fn arch(embed_dim: usize) -> VitConfig {
    VitConfig {
        img_size: 16,
        patch_size: 8,
        in_chans: 3,
        num_classes: 5,
        embed_dim,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4.0,
        qkv_bias: true,
        drop_rate: 0.0,
        attn_drop_rate: 0.0,
        drop_path_rate: 0.0,
    }
}

/// Writes a random timm-named backbone (with a 5-class head that the loader must ignore).
pub fn write_backbone(path: &Path, embed_dim: usize, seed: u64) {
    let t = Vit::random_backbone(&arch(embed_dim), &Device::Cpu, seed).unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_tensors(path, &t, &meta).unwrap();
}

/// A temp workspace: dataset root, backbones, cache and runs dirs.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    /// Dataset with `tasks` ((name, classes)) and both backbones.
    pub fn new(tasks: &[(&str, usize)]) -> Work {
        let dir = tempfile::tempdir().unwrap();
        for (t, c) in tasks {
            write_vtab_task(&dir.path().join("vtab-1k"), t, *c);
        }
        write_backbone(&dir.path().join("student.safetensors"), 32, 1);
        write_backbone(&dir.path().join("teacher.safetensors"), 16, 2);
        Work { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.path().join("vtab-1k")
    }

    /// `--set` overrides pointing a test pipeline at this workspace's files.
    pub fn sets(&self) -> Vec<String> {
        let p = self.path();
        vec![
            format!("params.root={}", self.root().display()),
            format!(
                "params.student_weights={}",
                p.join("student.safetensors").display()
            ),
            format!(
                "params.teacher_weights={}",
                p.join("teacher.safetensors").display()
            ),
        ]
    }

    /// `idat-pipe run FILE` with this workspace's sets plus `extra` sets, cache `cache`.
    pub fn run_cmd(&self, file: &str, cache: &str, extra: &[&str]) -> Command {
        let mut args: Vec<String> = vec![
            "run".into(),
            file.into(),
            "-q".into(),
            "--jobs".into(),
            "1".into(),
            "--cache-dir".into(),
            self.path().join(cache).display().to_string(),
            "--runs-dir".into(),
            self.path()
                .join(format!("runs-{cache}"))
                .display()
                .to_string(),
        ];
        for s in self
            .sets()
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            args.push("--set".into());
            args.push(s.to_string());
        }
        bin(self.path(), &args)
    }

    pub fn run(&self, file: &str, cache: &str, extra: &[&str]) -> Output {
        self.run_cmd(file, cache, extra).output().unwrap()
    }

    /// Committed entries of cache `cache`.
    pub fn entries(&self, cache: &str) -> Vec<PathBuf> {
        entries(&self.path().join(cache))
    }

    /// The committed entries of cache `cache` that hold `file`.
    pub fn entries_with(&self, cache: &str, file: &str) -> Vec<PathBuf> {
        self.entries(cache)
            .into_iter()
            .filter(|e| e.join(file).is_file())
            .collect()
    }

    /// Every instance log of the runs recorded for cache `cache`, concatenated.
    pub fn logs(&self, cache: &str) -> String {
        let mut out = String::new();
        let runs = self.path().join(format!("runs-{cache}"));
        for run in sorted_dir(&runs) {
            for log in sorted_dir(&run.join("logs")) {
                out.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
            }
        }
        out
    }
}

/// The `idat-pipe` binary with `args`, working directory `dir`.
pub fn bin(dir: &Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_idat-pipe"));
    c.env_remove("IDAT_CACHE_DIR").current_dir(dir).args(args);
    c
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts success; returns (stdout, stderr).
pub fn ok(o: &Output) -> (String, String) {
    let t = text(o);
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        t.0,
        t.1
    );
    t
}

/// Asserts the run failed with exit code 1; returns stderr.
pub fn failed(o: &Output) -> String {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a failed run\nstdout:\n{out}\nstderr:\n{err}"
    );
    err
}

pub fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Committed entries of the cache at `cache`.
pub fn entries(cache: &Path) -> Vec<PathBuf> {
    sorted_dir(&cache.join("entries"))
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap()
}
