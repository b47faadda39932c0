//! `dsprites_loc` / `dsprites_ori`: dSprites-like 64x64 images of one white sprite on black,
//! with the generative factors of dSprites (shape in {square, ellipse, heart}, scale in 6 steps
//! 0.5..1, orientation 0..2pi, x and y position 0..1). As in VTAB, one factor is binned into 16
//! classes: x-position (`loc`) or orientation (`ori`); the others are drawn uniformly.

use std::f32::consts::TAU;

use image::DynamicImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{render_gray, unrotate};
use super::{Generator, Item, Split};

const SIZE: u32 = 64;
const BINS: f32 = 16.0;

/// Which factor is the label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Factor {
    PosX,
    Orientation,
}

pub(crate) struct DSprites {
    pub(crate) factor: Factor,
}

/// The sprite's shape.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Square,
    Ellipse,
    Heart,
}

/// Whether the point `(u, v)` (sprite frame, in units of the sprite radius, y down) is inside.
fn inside(shape: Shape, u: f32, v: f32) -> bool {
    match shape {
        Shape::Square => u.abs() <= 0.8 && v.abs() <= 0.8,
        Shape::Ellipse => u * u + 4.0 * v * v <= 1.0,
        Shape::Heart => {
            let (a, b) = (u / 0.9, -v / 0.9 + 0.1);
            let q = a * a + b * b - 1.0;
            q * q * q - a * a * b * b * b <= 0.0
        }
    }
}

impl Generator for DSprites {
    fn render(&self, _split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage {
        let shape = [Shape::Square, Shape::Ellipse, Shape::Heart][rng.gen_range(0..3)];
        let scale = 0.5 + 0.1 * rng.gen_range(0..6) as f32;
        let in_bin = (item.label as f32 + rng.gen::<f32>()) / BINS;
        let (pos_x, angle) = match self.factor {
            Factor::PosX => (in_bin, rng.gen::<f32>() * TAU),
            Factor::Orientation => (rng.gen::<f32>(), in_bin * TAU),
        };
        let pos_y: f32 = rng.gen();
        let radius = 12.0 * scale;
        let (cx, cy) = (8.0 + 48.0 * pos_x, 8.0 + 48.0 * pos_y);
        render_gray(SIZE, SIZE, 2, |x, y| {
            let (u, v) = unrotate(x - cx, y - cy, angle);
            if inside(shape, u / radius, v / radius) {
                1.0
            } else {
                0.0
            }
        })
    }
}
