//! Tiny software rendering helpers shared by the procedural generators.

use image::{DynamicImage, GrayImage, RgbImage};

/// Renders a `w x h` RGB image by averaging `ss x ss` samples per pixel of `colour(x, y)`, where
/// `x, y` are continuous pixel coordinates (pixel `(i, j)` covers `[i, i+1) x [j, j+1)`).
/// Colours are in `[0, 1]`.
pub(crate) fn render_rgb(
    w: u32,
    h: u32,
    ss: u32,
    colour: impl Fn(f32, f32) -> [f32; 3],
) -> DynamicImage {
    let inv = 1.0 / (ss * ss) as f32;
    let img = RgbImage::from_fn(w, h, |i, j| {
        let mut acc = [0.0f32; 3];
        for sy in 0..ss {
            for sx in 0..ss {
                let x = i as f32 + (sx as f32 + 0.5) / ss as f32;
                let y = j as f32 + (sy as f32 + 0.5) / ss as f32;
                let c = colour(x, y);
                for k in 0..3 {
                    acc[k] += c[k];
                }
            }
        }
        image::Rgb(acc.map(|a| to_u8(a * inv)))
    });
    DynamicImage::ImageRgb8(img)
}

/// Like [`render_rgb`] for one grey channel.
pub(crate) fn render_gray(
    w: u32,
    h: u32,
    ss: u32,
    value: impl Fn(f32, f32) -> f32,
) -> DynamicImage {
    let inv = 1.0 / (ss * ss) as f32;
    let img = GrayImage::from_fn(w, h, |i, j| {
        let mut acc = 0.0f32;
        for sy in 0..ss {
            for sx in 0..ss {
                acc += value(
                    i as f32 + (sx as f32 + 0.5) / ss as f32,
                    j as f32 + (sy as f32 + 0.5) / ss as f32,
                );
            }
        }
        image::Luma([to_u8(acc * inv)])
    });
    DynamicImage::ImageLuma8(img)
}

/// `[0, 1]` to a byte, clamped and rounded.
pub(crate) fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Rotates `(x, y)` by `-angle` radians (maps image offsets into a shape's own frame).
pub(crate) fn unrotate(x: f32, y: f32, angle: f32) -> (f32, f32) {
    let (s, c) = angle.sin_cos();
    (c * x + s * y, -s * x + c * y)
}

/// Linear mix of two colours.
pub(crate) fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}
