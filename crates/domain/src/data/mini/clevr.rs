//! `clevr_count`: CLEVR-like 48x48 scenes of 3 to 10 objects (label = count - 3, 8 classes, as
//! VTAB's CLEVR count). Objects are spheres, cubes or cylinders in the 8 CLEVR colours, small or
//! large, matte or shiny, placed on a grey floor with perspective shrinking, soft shadows and
//! simple shading; they may overlap a little but never hide each other.

use image::DynamicImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{mix, render_rgb};
use super::{Generator, Item, Split};

const SIZE: u32 = 48;
const MIN_COUNT: u32 = 3;

/// CLEVR's 8 colours (gray, red, blue, green, brown, purple, cyan, yellow).
const COLOURS: [[u8; 3]; 8] = [
    [87, 87, 87],
    [173, 35, 35],
    [42, 75, 215],
    [29, 105, 20],
    [129, 74, 25],
    [129, 38, 192],
    [41, 208, 208],
    [255, 238, 51],
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sphere,
    Cube,
    Cylinder,
}

#[derive(Debug, Clone, Copy)]
struct Object {
    kind: Kind,
    x: f32,
    y: f32,
    r: f32,
    colour: [f32; 3],
    shiny: bool,
}

pub(crate) struct ClevrCount;

fn place(n: usize, rng: &mut ChaCha8Rng) -> Vec<Object> {
    let mut shrink = 1.0f32;
    loop {
        let mut objs: Vec<Object> = Vec::with_capacity(n);
        let mut tries = 0;
        while objs.len() < n && tries < 400 {
            tries += 1;
            let y = rng.gen_range(14.0..42.0f32);
            let depth = 0.7 + 0.3 * (y - 14.0) / 28.0;
            let r = if rng.gen_bool(0.5) { 3.0 } else { 4.6 } * depth * shrink;
            let x = rng.gen_range(r + 1.0..SIZE as f32 - r - 1.0);
            let ok = objs.iter().all(|o| {
                let d2 = (o.x - x).powi(2) + (o.y - y).powi(2);
                d2 >= (0.95 * (o.r + r)).powi(2)
            });
            if ok {
                let c = COLOURS[rng.gen_range(0..COLOURS.len())];
                objs.push(Object {
                    kind: [Kind::Sphere, Kind::Cube, Kind::Cylinder][rng.gen_range(0..3)],
                    x,
                    y,
                    r,
                    colour: c.map(|v| v as f32 / 255.0),
                    shiny: rng.gen_bool(0.5),
                });
            }
        }
        if objs.len() == n {
            // Back to front.
            objs.sort_by(|a, b| a.y.total_cmp(&b.y));
            return objs;
        }
        shrink *= 0.9;
    }
}

/// The colour of `o` at `(x, y)`, or `None` outside it.
fn shade(o: &Object, x: f32, y: f32, light: f32) -> Option<[f32; 3]> {
    let (dx, dy, r) = (x - o.x, y - o.y, o.r);
    if dx.abs() > 1.5 * r || dy.abs() > 1.5 * r {
        return None;
    }
    let lit = |k: f32| o.colour.map(|c| c * k * light);
    match o.kind {
        Kind::Sphere => {
            let (u, v) = (dx / r, dy / r);
            let d2 = u * u + v * v;
            if d2 > 1.0 {
                return None;
            }
            let nz = (1.0 - d2).sqrt();
            let lam = ((-0.45 * u - 0.55 * v + 0.7 * nz) / 1.0).max(0.0);
            let mut c = lit(0.3 + 0.7 * lam);
            if o.shiny {
                c = mix(c, [1.0; 3], 0.7 * lam.powi(24));
            }
            Some(c)
        }
        Kind::Cube => {
            let top = -0.5 * r;
            if dy >= top && dy <= r && dx.abs() <= r {
                return Some(lit(0.7 - 0.15 * (dx / r)));
            }
            let t = (top - dy) / (0.6 * r);
            if (0.0..=1.0).contains(&t) {
                let sx = dx - 0.4 * r * t;
                if sx.abs() <= r {
                    let c = lit(1.0);
                    return Some(if o.shiny {
                        mix(c, [1.0; 3], 0.25 * (1.0 - t))
                    } else {
                        c
                    });
                }
            }
            None
        }
        Kind::Cylinder => {
            let w = 0.85 * r;
            let (top, bottom) = (-0.6 * r, 0.8 * r);
            let u = dx / w;
            let in_top = u * u + ((dy - top) / (0.35 * r)).powi(2) <= 1.0;
            if in_top {
                return Some(lit(1.05));
            }
            let in_body = u.abs() <= 1.0
                && dy >= top
                && (dy <= bottom || u * u + ((dy - bottom) / (0.35 * r)).powi(2) <= 1.0);
            if in_body {
                let lam = (1.0 - (u + 0.4).powi(2)).max(0.0);
                let c = lit(0.35 + 0.55 * lam);
                return Some(if o.shiny {
                    mix(c, [1.0; 3], 0.5 * lam.powi(16))
                } else {
                    c
                });
            }
            None
        }
    }
}

impl Generator for ClevrCount {
    fn render(&self, _split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage {
        let objs = place((item.label + MIN_COUNT) as usize, rng);
        let light: f32 = rng.gen_range(0.85..1.1);
        let floor_top: f32 = rng.gen_range(0.38..0.48);
        render_rgb(SIZE, SIZE, 2, |x, y| {
            let g = floor_top + 0.18 * y / SIZE as f32;
            let mut c = [g, g, g * 1.02];
            // Soft shadows to the lower right of every object.
            for o in &objs {
                if (x - o.x).abs() > 2.2 * o.r || (y - o.y).abs() > 2.0 * o.r {
                    continue;
                }
                let (sx, sy) = (
                    (x - o.x - 0.5 * o.r) / (1.1 * o.r),
                    (y - o.y - 0.6 * o.r) / (0.6 * o.r),
                );
                let d2 = sx * sx + sy * sy;
                if d2 < 1.0 {
                    c = c.map(|v| v * (0.75 + 0.25 * d2));
                }
            }
            for o in &objs {
                if let Some(oc) = shade(o, x, y, light) {
                    c = oc;
                }
            }
            c
        })
    }
}
