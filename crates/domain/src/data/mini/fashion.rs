//! `fashion10` and `fashion_coarse`: real Fashion-MNIST images from the subset shipped in
//! data/fashion-mnist (MIT licence; see its LICENSE), embedded in the binary.

use std::io::Read;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use image::{DynamicImage, GrayImage};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::{Generator, Item, Split};

/// Shipped training images (120 per class).
pub(crate) const POOL_TRAIN: usize = 1200;
/// Shipped test images (100 per class).
pub(crate) const POOL_TEST: usize = 1000;

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../../../../../data/fashion-mnist/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../../../../../data/fashion-mnist/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../../../../data/fashion-mnist/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../../../../data/fashion-mnist/t10k-labels-idx1-ubyte.gz");

/// Fashion-MNIST class names, index = label.
pub const FINE_CLASSES: [&str; 10] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];
/// The coarse grouping of `fashion_coarse`, index = label.
pub const COARSE_CLASSES: [&str; 4] = ["upper-body garment", "trouser or dress", "footwear", "bag"];
/// Fine label -> coarse label: t-shirt, pullover, coat, shirt -> upper body; trouser, dress ->
/// lower/full body; sandal, sneaker, ankle boot -> footwear; bag -> bag.
pub const COARSE_OF_FINE: [u32; 10] = [0, 1, 0, 1, 0, 2, 0, 2, 3, 2];

/// One decoded IDX pair: `n` images of 28x28 bytes and their labels.
pub(crate) struct Pool {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

fn gunzip(what: &str, gz: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(gz)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("decompressing embedded {what}"))?;
    ensure!(
        out.len() <= limit,
        "embedded {what} is larger than {limit} bytes"
    );
    Ok(out)
}

/// Parses an IDX file: big-endian magic `0x0000_08_NN` (unsigned bytes, NN dimensions), the
/// dimensions, then the payload, which must have exactly the declared size.
fn parse_idx<'a>(what: &str, data: &'a [u8], want_dims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    ensure!(
        data.len() >= 4,
        "{what}: IDX file shorter than its 4-byte magic"
    );
    let magic = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    ensure!(
        magic >> 8 == 0x08,
        "{what}: IDX magic {magic:#010x} is not unsigned-byte data (0x000008NN)"
    );
    let nd = (magic & 0xff) as usize;
    ensure!(
        nd == want_dims,
        "{what}: IDX has {nd} dimensions, expected {want_dims}"
    );
    let header = 4 + 4 * nd;
    ensure!(data.len() >= header, "{what}: IDX header truncated");
    let dims: Vec<usize> = (0..nd)
        .map(|k| {
            u32::from_be_bytes(data[4 + 4 * k..8 + 4 * k].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let size = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let payload = &data[header..];
    match size {
        Some(s) if s == payload.len() => Ok((dims, payload)),
        _ => bail!(
            "{what}: IDX declares dimensions {dims:?} but holds {} payload bytes",
            payload.len()
        ),
    }
}

impl Pool {
    fn load(split: &str, images: &[u8], labels: &[u8], n: usize) -> Result<Self> {
        let img_raw = gunzip(&format!("{split} images"), images, 16 + n * 784)?;
        let lab_raw = gunzip(&format!("{split} labels"), labels, 8 + n)?;
        let (idims, pixels) = parse_idx(&format!("fashion-mnist {split} images"), &img_raw, 3)?;
        let (ldims, labels) = parse_idx(&format!("fashion-mnist {split} labels"), &lab_raw, 1)?;
        ensure!(
            idims == [n, 28, 28] && ldims == [n],
            "fashion-mnist {split}: expected {n} images of 28x28, found image dims {idims:?}, label dims {ldims:?}"
        );
        ensure!(
            labels.iter().all(|&l| l < 10),
            "fashion-mnist {split}: a label is not in 0..10"
        );
        Ok(Pool {
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
        })
    }

    fn image(&self, i: usize) -> GrayImage {
        GrayImage::from_raw(28, 28, self.pixels[i * 784..(i + 1) * 784].to_vec())
            .expect("784 bytes")
    }
}

/// The generator of both Fashion-MNIST tasks.
pub(crate) struct Fashion {
    coarse: bool,
    train: Pool,
    test: Pool,
}

impl Fashion {
    pub(crate) fn new(coarse: bool) -> Result<Self> {
        Ok(Fashion {
            coarse,
            train: Pool::load("train", TRAIN_IMAGES, TRAIN_LABELS, POOL_TRAIN)?,
            test: Pool::load("test", TEST_IMAGES, TEST_LABELS, POOL_TEST)?,
        })
    }

    fn pool(&self, split: Split) -> &Pool {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

impl Generator for Fashion {
    /// Picks `n` pool images balanced over the 10 fine classes (so `fashion_coarse` follows the
    /// natural 4:2:3:1 proportions of its groups), in a shuffled order.
    fn plan(
        &self,
        split: Split,
        n: usize,
        _num_classes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Item>> {
        let pool = self.pool(split);
        let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); 10];
        for (i, &l) in pool.labels.iter().enumerate() {
            by_class[l as usize].push(i as u32);
        }
        for list in &mut by_class {
            list.shuffle(rng);
        }
        // Round-robin over classes, so each class gets n/10 or n/10 + 1 images.
        let mut chosen = Vec::with_capacity(n);
        let mut k = 0;
        while chosen.len() < n {
            for list in &by_class {
                if chosen.len() < n && k < list.len() {
                    chosen.push(list[k]);
                }
            }
            ensure!(
                k < pool.labels.len(),
                "fashion-mnist {}: cannot pick {n} images",
                split.as_str()
            );
            k += 1;
        }
        chosen.shuffle(rng);
        Ok(chosen
            .into_iter()
            .map(|i| {
                let fine = pool.labels[i as usize] as usize;
                let label = if self.coarse {
                    COARSE_OF_FINE[fine]
                } else {
                    fine as u32
                };
                Item { label, source: i }
            })
            .collect())
    }

    fn render(&self, split: Split, item: Item, _rng: &mut ChaCha8Rng) -> DynamicImage {
        DynamicImage::ImageLuma8(self.pool(split).image(item.source as usize))
    }
}
