//! `textures`: which of 8 photographed surfaces a patch shows (a small DTD stand-in). The
//! photographs are 192x128 crops of GPL-2+ MATE wallpapers shipped in data/textures (see NOTICE).
//! Training patches come from the left 128 columns of each photograph, test patches from the right
//! 64 columns, so no test pixel was seen in training.

use anyhow::{ensure, Context, Result};
use image::imageops::{self, FilterType};
use image::{DynamicImage, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Generator, Item, Split};

/// Class names, index = label.
pub const CLASSES: [&str; 8] = [
    "leaf_veins",
    "dry_grass",
    "orange_petals",
    "green_grass",
    "wet_leaf",
    "storm_clouds",
    "weathered_wood",
    "yellow_petals",
];
pub(crate) const NUM_CLASSES: usize = CLASSES.len();

const PNGS: [&[u8]; NUM_CLASSES] = [
    include_bytes!("../../../../../data/textures/leaf_veins.png"),
    include_bytes!("../../../../../data/textures/dry_grass.png"),
    include_bytes!("../../../../../data/textures/orange_petals.png"),
    include_bytes!("../../../../../data/textures/green_grass.png"),
    include_bytes!("../../../../../data/textures/wet_leaf.png"),
    include_bytes!("../../../../../data/textures/storm_clouds.png"),
    include_bytes!("../../../../../data/textures/weathered_wood.png"),
    include_bytes!("../../../../../data/textures/yellow_petals.png"),
];

const SRC_W: u32 = 192;
const SRC_H: u32 = 128;
const TRAIN_W: u32 = 128;
const OUT: u32 = 32;
const MIN_PATCH: u32 = 32;
const MAX_PATCH: u32 = 64;

pub(crate) struct Textures {
    photos: Vec<RgbImage>,
}

impl Textures {
    pub(crate) fn new() -> Result<Self> {
        let photos = PNGS
            .iter()
            .zip(CLASSES)
            .map(|(bytes, name)| {
                let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
                    .with_context(|| format!("decoding embedded data/textures/{name}.png"))?
                    .to_rgb8();
                ensure!(
                    img.dimensions() == (SRC_W, SRC_H),
                    "embedded data/textures/{name}.png is {:?}, expected {SRC_W}x{SRC_H}",
                    img.dimensions()
                );
                Ok(img)
            })
            .collect::<Result<_>>()?;
        Ok(Textures { photos })
    }
}

impl Generator for Textures {
    /// A random square patch (32..=64 px) of the split's region, resized to 32x32, randomly
    /// mirrored, with brightness scaled by 0.85..1.15.
    fn render(&self, split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage {
        let photo = &self.photos[item.label as usize];
        let (x0, x1) = match split {
            Split::Train => (0, TRAIN_W),
            Split::Test => (TRAIN_W, SRC_W),
        };
        let size = rng.gen_range(MIN_PATCH..=MAX_PATCH).min(x1 - x0);
        let x = rng.gen_range(x0..=x1 - size);
        let y = rng.gen_range(0..=SRC_H - size);
        let crop = imageops::crop_imm(photo, x, y, size, size).to_image();
        let mut patch = imageops::resize(&crop, OUT, OUT, FilterType::Triangle);
        if rng.gen_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut patch);
        }
        let gain: f32 = rng.gen_range(0.85..1.15);
        for p in patch.pixels_mut() {
            for c in p.0.iter_mut() {
                *c = (*c as f32 * gain).round().clamp(0.0, 255.0) as u8;
            }
        }
        DynamicImage::ImageRgb8(patch)
    }
}
