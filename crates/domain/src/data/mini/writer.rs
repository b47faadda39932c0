//! Writes a generated task in the NOAH VTAB-1K layout, atomically (temporary folder + rename).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::codecs::png::PngEncoder;
use image::{DynamicImage, ImageEncoder};
use rayon::prelude::*;

use super::{stream, Generator, Item, MiniTask, Split};

/// What one `generate` call wrote.
#[derive(Debug, Clone)]
pub struct GenReport {
    /// Task name.
    pub task: String,
    /// The task folder, `<root>/<task>`.
    pub dir: PathBuf,
    /// Number of classes of the task.
    pub num_classes: usize,
    /// Images per class in the training split (`train800val200.txt`).
    pub train_counts: Vec<usize>,
    /// Images per class in `test.txt`.
    pub test_counts: Vec<usize>,
    /// Total bytes of PNG written.
    pub bytes: u64,
    /// Wall-clock seconds taken.
    pub seconds: f64,
}

pub(crate) fn write_task(
    t: &MiniTask,
    gen: &dyn Generator,
    root: &Path,
    seed: u64,
    n_train: usize,
    n_test: usize,
) -> Result<GenReport> {
    let start = Instant::now();
    let dest = super::task_dir(root, t.name);
    if dest.exists() {
        bail!(
            "cannot generate mini task `{}`: {} already exists",
            t.name,
            dest.display()
        );
    }
    fs::create_dir_all(root)
        .with_context(|| format!("creating dataset root {}", root.display()))?;
    let tmp = root.join(format!(".{}.tmp-{}", t.name, std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    let result = write_into(t, gen, &tmp, seed, n_train, n_test).and_then(|counts| {
        fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok(counts)
    });
    match result {
        Ok((train_counts, test_counts, bytes)) => Ok(GenReport {
            task: t.name.to_string(),
            dir: dest,
            num_classes: t.num_classes,
            train_counts,
            test_counts,
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

type Counts = (Vec<usize>, Vec<usize>, u64);

fn write_into(
    t: &MiniTask,
    gen: &dyn Generator,
    dir: &Path,
    seed: u64,
    n_train: usize,
    n_test: usize,
) -> Result<Counts> {
    let (train, train_bytes) = write_split(t, gen, dir, seed, Split::Train, n_train)?;
    let (test, test_bytes) = write_split(t, gen, dir, seed, Split::Test, n_test)?;
    let n800 = n_train * 4 / 5;
    write_list(&dir.join("train800.txt"), Split::Train, &train[..n800], 0)?;
    write_list(&dir.join("val200.txt"), Split::Train, &train[n800..], n800)?;
    write_list(&dir.join("train800val200.txt"), Split::Train, &train, 0)?;
    write_list(&dir.join("test.txt"), Split::Test, &test, 0)?;
    Ok((
        counts(&train, t.num_classes),
        counts(&test, t.num_classes),
        train_bytes + test_bytes,
    ))
}

fn write_split(
    t: &MiniTask,
    gen: &dyn Generator,
    dir: &Path,
    seed: u64,
    split: Split,
    n: usize,
) -> Result<(Vec<Item>, u64)> {
    let img_dir = dir.join("images").join(split.as_str());
    fs::create_dir_all(&img_dir).with_context(|| format!("creating {}", img_dir.display()))?;
    let items = gen.plan(
        split,
        n,
        t.num_classes,
        &mut stream(t.name, seed, split, "plan"),
    )?;
    debug_assert_eq!(items.len(), n);
    let bytes = items
        .par_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut rng = stream(t.name, seed, split, &format!("image{i}"));
            let img = gen.render(split, *item, &mut rng);
            let png = encode_png(&img)?;
            let path = img_dir.join(format!("{i:06}.png"));
            fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
            Ok(png.len() as u64)
        })
        .collect::<Result<Vec<u64>>>()?;
    Ok((items, bytes.iter().sum()))
}

fn encode_png(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            img.as_bytes(),
            img.width(),
            img.height(),
            img.color().into(),
        )
        .context("encoding PNG")?;
    Ok(out)
}

fn write_list(path: &Path, split: Split, items: &[Item], first: usize) -> Result<()> {
    let mut text = String::new();
    for (k, item) in items.iter().enumerate() {
        writeln!(
            text,
            "images/{}/{:06}.png {}",
            split.as_str(),
            first + k,
            item.label
        )
        .expect("writing to a String");
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn counts(items: &[Item], c: usize) -> Vec<usize> {
    let mut v = vec![0; c];
    for it in items {
        v[it.label as usize] += 1;
    }
    v
}
