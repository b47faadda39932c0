//! `mini_source`: the pretraining source task, none of the downstream tasks. 64 classes = 8 shapes
//! (disk, square, triangle, cross, star, ring, diamond, half-disc) x 8 fill patterns (solid,
//! stripes along / across the shape, diagonal stripes, checks, dots, rings, gradient). Each image:
//! one shape of random size (radius 7..12 px), position, rotation and pattern period (3..5 px),
//! in two random colours on a noisy random background, 32x32 RGB. Learning it needs shape,
//! orientation-invariant texture and colour-contrast features, which transfer to the downstream
//! tasks without being any of them.

use std::f32::consts::TAU;

use image::DynamicImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{mix, render_rgb, unrotate};
use super::{Generator, Item, Split};

/// Shape names, class = shape * 8 + pattern.
pub const SHAPES: [&str; 8] = [
    "disk",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "diamond",
    "half-disc",
];
/// Pattern names, class = shape * 8 + pattern.
pub const PATTERNS: [&str; 8] = [
    "solid",
    "stripes-across",
    "stripes-along",
    "diagonal",
    "checks",
    "dots",
    "rings",
    "gradient",
];
pub(crate) const NUM_CLASSES: usize = SHAPES.len() * PATTERNS.len();
const SIZE: u32 = 32;

pub(crate) struct Source;

/// Whether `(u, v)` (shape frame, unit radius, y down) is inside shape `s`.
fn inside(s: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match s {
        0 => r <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => v <= 0.6 && v >= 2.0 * u.abs() - 0.95,
        3 => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        4 => r <= 0.45 + 0.55 * (0.5 + 0.5 * (5.0 * v.atan2(u)).cos()).powi(2),
        5 => (0.55..=1.0).contains(&r),
        6 => u.abs() + v.abs() <= 1.0,
        _ => r <= 1.0 && v >= -0.1,
    }
}

/// Pattern `p` at pixel offsets `(x, y)` in the shape frame with period `period`: 0 or 1 (or a
/// blend for the gradient).
fn pattern(p: usize, x: f32, y: f32, radius: f32, period: f32) -> f32 {
    let parity = |t: f32| (t.floor() as i64).rem_euclid(2) as f32;
    match p {
        0 => 0.0,
        1 => parity(y / period),
        2 => parity(x / period),
        3 => parity((x + y) / (period * 1.2)),
        4 => (parity(x / period) + parity(y / period)) % 2.0,
        5 => {
            let (fx, fy) = (
                (x / period).rem_euclid(1.0) - 0.5,
                (y / period).rem_euclid(1.0) - 0.5,
            );
            if fx * fx + fy * fy < 0.09 {
                1.0
            } else {
                0.0
            }
        }
        6 => parity((x * x + y * y).sqrt() / period),
        _ => ((x / radius) * 0.5 + 0.5).clamp(0.0, 1.0),
    }
}

fn colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [rng.gen(), rng.gen(), rng.gen()]
}

impl Generator for Source {
    fn render(&self, _split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage {
        let (shape, pat) = (item.label as usize / 8, item.label as usize % 8);
        let radius = rng.gen_range(7.0..12.0f32);
        let (cx, cy) = (
            rng.gen_range(radius..SIZE as f32 - radius),
            rng.gen_range(radius..SIZE as f32 - radius),
        );
        let angle = rng.gen_range(0.0..TAU);
        let period = rng.gen_range(3.0..5.0f32);
        let bg = colour(rng);
        let c1 = colour(rng);
        // The second fill colour contrasts with the first: rotate its brightness by half a turn.
        let c2 = {
            let c = colour(rng);
            let l1 = (c1[0] + c1[1] + c1[2]) / 3.0;
            let l2 = (c[0] + c[1] + c[2]) / 3.0;
            let shift = if (l1 - l2).abs() < 0.3 {
                if l1 > 0.5 {
                    -0.45
                } else {
                    0.45
                }
            } else {
                0.0
            };
            c.map(|v| (v + shift).clamp(0.0, 1.0))
        };
        let bg = mix(bg, [0.5; 3], 0.4);
        let noise: Vec<f32> = (0..SIZE * SIZE)
            .map(|_| rng.gen_range(-0.06..0.06))
            .collect();
        render_rgb(SIZE, SIZE, 2, |x, y| {
            let (u, v) = unrotate(x - cx, y - cy, angle);
            if inside(shape, u / radius, v / radius) {
                mix(c1, c2, pattern(pat, u, v, radius, period))
            } else {
                let n = noise[(y as u32).min(SIZE - 1) as usize * SIZE as usize
                    + (x as u32).min(SIZE - 1) as usize];
                bg.map(|c| c + n)
            }
        })
    }
}
