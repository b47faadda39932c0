//! `mini_source`: the pretraining source task, none of the downstream tasks. 64 classes =
//! 4 colours x 4 positions x 4 orientations. Each 32x32 RGB image holds one elongated, lightly
//! striped ellipse on a noisy grey background; the label is
//! `colour * 16 + quadrant * 4 + orientation` where
//! - colour: hue bin (red, yellow-green, cyan, violet; hue jittered by +-20 deg, random saturation
//!   and brightness);
//! - quadrant: which quarter of the image holds the ellipse's centre (top-left, top-right,
//!   bottom-left, bottom-right);
//! - orientation: the long axis's angle mod 180 deg, bins centred on 0, 45, 90 and 135 deg
//!   (+-15 deg jitter).
//!
//! Size, aspect ratio, stripe period and contrast, background level and noise vary freely.
//! Every factor has a cue a from-scratch ViT picks up within a few epochs (colour statistics,
//! which tokens hold the object, edge orientation inside a patch), so the backbone learns
//! colour, layout and oriented-edge features that the downstream tasks (location, orientation,
//! counting, pose, textures, garments) can reuse without being any of them. An earlier version
//! (8 shapes x 8 fill patterns) stayed at chance for tiny ViTs, in idat-pipe and in PyTorch + timm.

use std::f32::consts::PI;

use image::DynamicImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{mix, render_rgb, unrotate};
use super::{Generator, Item, Split};

/// Colour names, class = colour * 16 + quadrant * 4 + orientation.
pub const COLOURS: [&str; 4] = ["red", "yellow-green", "cyan", "violet"];
/// Quadrant names (where the object's centre lies).
pub const QUADRANTS: [&str; 4] = ["top-left", "top-right", "bottom-left", "bottom-right"];
/// Orientation names (long axis, mod 180 deg).
pub const ORIENTATIONS: [&str; 4] = ["0 deg", "45 deg", "90 deg", "135 deg"];
pub(crate) const NUM_CLASSES: usize = COLOURS.len() * QUADRANTS.len() * ORIENTATIONS.len();
const SIZE: u32 = 32;

pub(crate) struct Source;

/// Splits a label into (colour, quadrant, orientation).
pub(crate) fn factors(label: usize) -> (usize, usize, usize) {
    (label / 16, (label / 4) % 4, label % 4)
}

/// HSV (hue in turns, saturation, value in `[0, 1]`) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let k = |n: f32| (n + h6).rem_euclid(6.0);
    let f = |n: f32| v - v * s * k(n).min(4.0 - k(n)).clamp(0.0, 1.0);
    [f(5.0), f(3.0), f(1.0)]
}

impl Generator for Source {
    fn render(&self, _split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage {
        let (col, quad, ori) = factors(item.label as usize);
        let hue = col as f32 * 0.25 + rng.gen_range(-20.0..20.0f32) / 360.0;
        let c1 = hsv(hue, rng.gen_range(0.6..1.0), rng.gen_range(0.65..1.0));
        let c2 = mix(c1, [0.0; 3], rng.gen_range(0.15..0.35));
        let angle = (ori as f32 * 45.0 + rng.gen_range(-15.0..15.0f32)).to_radians()
            + if rng.gen_bool(0.5) { PI } else { 0.0 };
        let a = rng.gen_range(6.0..10.0f32);
        let b = a * rng.gen_range(0.25..0.45);
        // Centre inside its quadrant, at least 2 px away from the midlines.
        let half = SIZE as f32 / 2.0;
        let (qx, qy) = ((quad % 2) as f32 * half, (quad / 2) as f32 * half);
        let (cx, cy) = (
            qx + rng.gen_range(2.0..half - 2.0),
            qy + rng.gen_range(2.0..half - 2.0),
        );
        let period = rng.gen_range(2.5..4.5f32);
        let bg = rng.gen_range(0.1..0.5f32);
        let noise: Vec<f32> = (0..SIZE * SIZE)
            .map(|_| rng.gen_range(-0.07..0.07))
            .collect();
        render_rgb(SIZE, SIZE, 2, |x, y| {
            let (u, v) = unrotate(x - cx, y - cy, angle);
            if (u / a).powi(2) + (v / b).powi(2) <= 1.0 {
                let stripe = ((u / period).floor() as i64).rem_euclid(2) as f32;
                mix(c1, c2, stripe)
            } else {
                let n = noise[(y as u32).min(SIZE - 1) as usize * SIZE as usize
                    + (x as u32).min(SIZE - 1) as usize];
                [bg + n; 3]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_cover_every_class_once() {
        let mut seen = std::collections::HashSet::new();
        for l in 0..NUM_CLASSES {
            let (c, q, o) = factors(l);
            assert!(c < 4 && q < 4 && o < 4);
            assert!(seen.insert((c, q, o)));
        }
        assert_eq!(factors(37), (2, 1, 1));
    }

    #[test]
    fn hsv_primaries() {
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv(1.0 / 3.0, 1.0, 1.0), [0.0, 1.0, 0.0]));
        assert!(close(hsv(2.0 / 3.0, 1.0, 1.0), [0.0, 0.0, 1.0]));
        assert!(close(hsv(0.5, 0.5, 0.8), [0.4, 0.8, 0.8]));
        assert!(close(hsv(0.3, 0.0, 0.7), [0.7, 0.7, 0.7]));
    }
}
