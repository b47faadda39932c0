//! The embedded mini-VTAB benchmark: small downstream tasks in the three VTAB groups plus a
//! pretraining source task, written to disk in the NOAH VTAB-1K layout so that the same loader
//! reads them as real VTAB-1K (see docs/mini-vtab.md).
//!
//! Real images (a Fashion-MNIST subset and texture crops) are embedded in the binary with
//! `include_bytes!`; the structured tasks are rendered procedurally. Every image is drawn from its
//! own ChaCha8 stream derived from `(task, seed, split, index)`, so output is byte-identical for the
//! same seed whatever the number of rayon threads.

mod clevr;
mod dsprites;
mod fashion;
mod raster;
mod smallnorb;
mod source;
mod textures;
mod writer;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use image::DynamicImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use writer::GenReport;

/// One task of the mini benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniTask {
    /// Folder name under the dataset root, e.g. `clevr_count`.
    pub name: &'static str,
    /// VTAB group: `"natural"`, `"specialized"` or `"structured"` (`"source"` for pretraining).
    pub group: &'static str,
    /// Number of classes; labels are `0..num_classes`.
    pub num_classes: usize,
    /// Native image side in pixels (images are square).
    pub image_size: u32,
    /// Most training images the task can provide (`None`: unbounded, procedural).
    pub max_train: Option<usize>,
    /// Most test images the task can provide (`None`: unbounded, procedural).
    pub max_test: Option<usize>,
    /// One-line description: what the label means.
    pub description: &'static str,
}

const TASKS: &[MiniTask] = &[
    MiniTask {
        name: "fashion10",
        group: "natural",
        num_classes: 10,
        image_size: 28,
        max_train: Some(fashion::POOL_TRAIN),
        max_test: Some(fashion::POOL_TEST),
        description: "Fashion-MNIST, the 10 garment classes (grayscale 28x28 photographs)",
    },
    MiniTask {
        name: "fashion_coarse",
        group: "natural",
        num_classes: 4,
        image_size: 28,
        max_train: Some(fashion::POOL_TRAIN),
        max_test: Some(fashion::POOL_TEST),
        description: "Fashion-MNIST grouped: upper-body garment / trouser+dress / footwear / bag",
    },
    MiniTask {
        name: "textures",
        group: "specialized",
        num_classes: textures::NUM_CLASSES,
        image_size: 32,
        max_train: None,
        max_test: None,
        description: "which of 8 photographed surfaces a 32x32 patch was cut from (DTD-like)",
    },
    MiniTask {
        name: "dsprites_loc",
        group: "structured",
        num_classes: 16,
        image_size: 64,
        max_train: None,
        max_test: None,
        description: "dSprites-like sprite, x-position binned into 16 classes",
    },
    MiniTask {
        name: "dsprites_ori",
        group: "structured",
        num_classes: 16,
        image_size: 64,
        max_train: None,
        max_test: None,
        description: "dSprites-like sprite, orientation binned into 16 classes",
    },
    MiniTask {
        name: "clevr_count",
        group: "structured",
        num_classes: 8,
        image_size: 48,
        max_train: None,
        max_test: None,
        description: "CLEVR-like scene, number of objects (3..10) as 8 classes",
    },
    MiniTask {
        name: "smallnorb_azi",
        group: "structured",
        num_classes: 18,
        image_size: 48,
        max_train: None,
        max_test: None,
        description: "smallNORB-like toy render, azimuth (0..340 deg, step 20) as 18 classes",
    },
    MiniTask {
        name: "smallnorb_ele",
        group: "structured",
        num_classes: 9,
        image_size: 48,
        max_train: None,
        max_test: None,
        description: "smallNORB-like toy render, elevation (30..70 deg, step 5) as 9 classes",
    },
];

const SOURCE: MiniTask = MiniTask {
    name: "mini_source",
    group: "source",
    num_classes: source::NUM_CLASSES,
    image_size: 32,
    max_train: None,
    max_test: None,
    description: "pretraining source: 4 colours x 4 quadrants x 4 orientations = 64 classes",
};

/// The downstream tasks of the mini benchmark, in report order.
pub fn tasks() -> &'static [MiniTask] {
    TASKS
}

/// The pretraining source task (`mini_source`); it is none of the downstream tasks.
pub fn source_task() -> MiniTask {
    SOURCE
}

/// Looks a task (downstream or source) up by name; the error lists the known names.
pub fn task(name: &str) -> Result<MiniTask> {
    if name == SOURCE.name {
        return Ok(SOURCE);
    }
    match TASKS.iter().find(|t| t.name == name) {
        Some(t) => Ok(*t),
        None => {
            let known: Vec<&str> = TASKS.iter().map(|t| t.name).chain([SOURCE.name]).collect();
            bail!(
                "unknown mini task `{name}`: expected one of {}",
                known.join(", ")
            )
        }
    }
}

/// Which split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    Train,
    Test,
}

impl Split {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// One planned image: its label and, for pool-based tasks, which pool image it shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub label: u32,
    pub source: u32,
}

/// What each generator implements: choose the items of a split, then render one item.
pub(crate) trait Generator: Sync {
    /// Chooses the `n` items of `split`; the default balances labels exactly and shuffles them.
    fn plan(
        &self,
        _split: Split,
        n: usize,
        num_classes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Item>> {
        Ok(balanced_labels(n, num_classes, rng)
            .into_iter()
            .map(|label| Item { label, source: 0 })
            .collect())
    }
    /// Renders one item with its own random stream.
    fn render(&self, split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage;
}

/// `n` labels with every class `n / c` or `n / c + 1` times, in a shuffled order.
pub(crate) fn balanced_labels(n: usize, c: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let mut labels: Vec<u32> = (0..n).map(|i| (i % c) as u32).collect();
    labels.shuffle(rng);
    labels
}

/// A ChaCha8 stream for `(task, seed, split, what)`, independent of every other such stream.
pub(crate) fn stream(task: &str, seed: u64, split: Split, what: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"idat-pipe/mini/v1\0");
    h.update(task.as_bytes());
    h.update(b"\0");
    h.update(&seed.to_le_bytes());
    h.update(split.as_str().as_bytes());
    h.update(b"\0");
    h.update(what.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

fn generator(name: &str) -> Result<Box<dyn Generator>> {
    Ok(match name {
        "fashion10" => Box::new(fashion::Fashion::new(false)?),
        "fashion_coarse" => Box::new(fashion::Fashion::new(true)?),
        "textures" => Box::new(textures::Textures::new()?),
        "dsprites_loc" => Box::new(dsprites::DSprites {
            factor: dsprites::Factor::PosX,
        }),
        "dsprites_ori" => Box::new(dsprites::DSprites {
            factor: dsprites::Factor::Orientation,
        }),
        "clevr_count" => Box::new(clevr::ClevrCount),
        "smallnorb_azi" => Box::new(smallnorb::SmallNorb {
            factor: smallnorb::Factor::Azimuth,
        }),
        "smallnorb_ele" => Box::new(smallnorb::SmallNorb {
            factor: smallnorb::Factor::Elevation,
        }),
        "mini_source" => Box::new(source::Source),
        other => bail!("no generator for mini task `{other}`"),
    })
}

/// Generates `task` into `<root>/<task>/` in the NOAH VTAB-1K layout: `images/{train,test}/NNNNNN.png`
/// and the lists `train800.txt` (first 80% of train), `val200.txt` (last 20%), `train800val200.txt`
/// (all of train) and `test.txt`, each line `images/train/000000.png 3`.
///
/// Deterministic in `seed`. The task is written in a temporary folder under `root` and renamed into
/// place, so `<root>/<task>` either is complete or does not exist; it is an error if it already
/// exists.
pub fn generate(
    task_name: &str,
    root: &Path,
    seed: u64,
    n_train: usize,
    n_test: usize,
) -> Result<GenReport> {
    let t = task(task_name)?;
    check_count(&t, "n_train", n_train, t.max_train)?;
    check_count(&t, "n_test", n_test, t.max_test)?;
    let gen = generator(t.name)?;
    writer::write_task(&t, gen.as_ref(), root, seed, n_train, n_test)
}

fn check_count(t: &MiniTask, field: &str, n: usize, max: Option<usize>) -> Result<()> {
    if n == 0 {
        bail!("mini task `{}`: {field} must be at least 1, got 0", t.name);
    }
    if let Some(max) = max {
        if n > max {
            bail!(
                "mini task `{}`: {field} = {n} but the shipped data holds only {max} images for this split",
                t.name
            );
        }
    }
    Ok(())
}

/// Human-readable class names of a task, index = label (e.g. `"count 3"`, `"azimuth 40"`).
pub fn class_names(task_name: &str) -> Result<Vec<String>> {
    let t = task(task_name)?;
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Ok(match t.name {
        "fashion10" => owned(&fashion::FINE_CLASSES),
        "fashion_coarse" => owned(&fashion::COARSE_CLASSES),
        "textures" => owned(&textures::CLASSES),
        "dsprites_loc" => (0..16)
            .map(|k| format!("x in [{}/16, {}/16)", k, k + 1))
            .collect(),
        "dsprites_ori" => (0..16)
            .map(|k| format!("angle in [{}, {}) deg", k * 45 / 2, (k + 1) * 45 / 2))
            .collect(),
        "clevr_count" => (3..=10).map(|k| format!("count {k}")).collect(),
        "smallnorb_azi" => (0..18).map(|k| format!("azimuth {}", 20 * k)).collect(),
        "smallnorb_ele" => (0..9)
            .map(|k| format!("elevation {}", 30 + 5 * k))
            .collect(),
        _ => (0..source::NUM_CLASSES)
            .map(|l| {
                let (c, q, o) = source::factors(l);
                format!(
                    "{} {} {}",
                    source::COLOURS[c],
                    source::QUADRANTS[q],
                    source::ORIENTATIONS[o]
                )
            })
            .collect(),
    })
}

/// Where a task's folder goes under a dataset root.
pub fn task_dir(root: &Path, task: &str) -> PathBuf {
    root.join(task)
}
