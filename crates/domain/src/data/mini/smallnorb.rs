//! `smallnorb_azi` / `smallnorb_ele`: smallNORB-like 48x48 grey renders of toys made of boxes
//! (5 categories like NORB: four-legged animal, human figure, airplane, truck, car; every image a
//! new instance with randomly stretched parts), seen from one of NORB's 18 azimuths (0..340 deg,
//! step 20) and 9 elevations (30..70 deg, step 5) under one of 6 lightings. The label is the
//! azimuth (18 classes) or the elevation (9 classes); the other factors are drawn uniformly.
//! Rendering: orthographic projection, z-buffered triangles, Lambert shading, 2x2 supersampling.

use image::{DynamicImage, GrayImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::to_u8;
use super::{Generator, Item, Split};

const SIZE: usize = 48;
const SS: usize = 2;
const AZIMUTHS: u32 = 18;
const ELEVATIONS: u32 = 9;

/// Which viewpoint factor is the label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Factor {
    Azimuth,
    Elevation,
}

pub(crate) struct SmallNorb {
    pub(crate) factor: Factor,
}

/// A box part: centre and half-extents, object frame (x forward, y up, z left).
type Part = ([f32; 3], [f32; 3]);

fn category(k: usize) -> Vec<Part> {
    let wheels = |xs: [f32; 2], y: f32| {
        let mut v = Vec::new();
        for x in xs {
            for z in [-0.5, 0.5] {
                v.push(([x, y, z], [0.2, 0.15, 0.08]));
            }
        }
        v
    };
    match k {
        // four-legged animal
        0 => {
            let mut v = vec![
                ([0.0, 0.0, 0.0], [0.7, 0.25, 0.25]),
                ([0.85, 0.35, 0.0], [0.22, 0.18, 0.15]),
                ([-0.85, 0.15, 0.0], [0.22, 0.04, 0.04]),
            ];
            for x in [-0.5, 0.5] {
                for z in [-0.17, 0.17] {
                    v.push(([x, -0.5, z], [0.08, 0.27, 0.08]));
                }
            }
            v
        }
        // human figure
        1 => vec![
            ([0.0, 0.2, 0.0], [0.18, 0.4, 0.3]),
            ([0.0, 0.82, 0.0], [0.15, 0.17, 0.15]),
            ([0.18, 0.82, 0.0], [0.05, 0.04, 0.04]),
            ([0.0, -0.6, -0.14], [0.1, 0.42, 0.1]),
            ([0.0, -0.6, 0.14], [0.1, 0.42, 0.1]),
            ([0.15, 0.25, -0.4], [0.25, 0.08, 0.08]),
            ([0.0, 0.2, 0.4], [0.08, 0.35, 0.08]),
        ],
        // airplane
        2 => vec![
            ([0.0, 0.0, 0.0], [1.2, 0.15, 0.15]),
            ([0.15, 0.0, 0.0], [0.3, 0.04, 1.1]),
            ([-1.05, 0.05, 0.0], [0.15, 0.03, 0.45]),
            ([-1.05, 0.35, 0.0], [0.15, 0.3, 0.03]),
        ],
        // truck
        3 => {
            let mut v = vec![
                ([0.85, -0.1, 0.0], [0.3, 0.4, 0.5]),
                ([-0.35, 0.05, 0.0], [0.8, 0.55, 0.55]),
            ];
            v.extend(wheels([0.8, -0.6], -0.6));
            v
        }
        // car
        _ => {
            let mut v = vec![
                ([0.0, -0.25, 0.0], [1.1, 0.25, 0.5]),
                ([-0.2, 0.15, 0.0], [0.55, 0.2, 0.45]),
            ];
            v.extend(wheels([0.7, -0.7], -0.55));
            v
        }
    }
}

/// The 12 triangles of a box with their outward normals.
fn box_triangles(c: [f32; 3], h: [f32; 3]) -> Vec<([[f32; 3]; 3], [f32; 3])> {
    let mut out = Vec::with_capacity(12);
    for axis in 0..3 {
        for sign in [-1.0f32, 1.0] {
            let (a, b) = ((axis + 1) % 3, (axis + 2) % 3);
            let corner = |sa: f32, sb: f32| {
                let mut p = c;
                p[axis] += sign * h[axis];
                p[a] += sa * h[a];
                p[b] += sb * h[b];
                p
            };
            let mut n = [0.0; 3];
            n[axis] = sign;
            let q = [
                corner(-1.0, -1.0),
                corner(1.0, -1.0),
                corner(1.0, 1.0),
                corner(-1.0, 1.0),
            ];
            out.push(([q[0], q[1], q[2]], n));
            out.push(([q[0], q[2], q[3]], n));
        }
    }
    out
}

/// Object frame -> camera frame (x right, y up, z towards the viewer).
fn view(p: [f32; 3], azimuth: f32, elevation: f32) -> [f32; 3] {
    let (sa, ca) = azimuth.sin_cos();
    let (se, ce) = elevation.sin_cos();
    let (x, y, z) = (p[0] * ca + p[2] * sa, p[1], -p[0] * sa + p[2] * ca);
    [x, y * ce - z * se, y * se + z * ce]
}

impl Generator for SmallNorb {
    fn render(&self, _split: Split, item: Item, rng: &mut ChaCha8Rng) -> DynamicImage {
        let (azi, ele) = match self.factor {
            Factor::Azimuth => (item.label, rng.gen_range(0..ELEVATIONS)),
            Factor::Elevation => (rng.gen_range(0..AZIMUTHS), item.label),
        };
        let azimuth = (20.0 * azi as f32).to_radians();
        let elevation = (30.0 + 5.0 * ele as f32).to_radians();
        let light_idx = rng.gen_range(0..6);
        let light = {
            let (lx, ly) = [
                (-0.6, 0.6),
                (0.6, 0.6),
                (0.0, 0.9),
                (-0.8, 0.1),
                (0.8, 0.1),
                (0.0, 0.2),
            ][light_idx];
            let n = (lx * lx + ly * ly + 1.0f32).sqrt();
            [lx / n, ly / n, 1.0 / n]
        };
        let overall = rng.gen_range(0.9..1.1f32);
        let mut tris = Vec::new();
        for (c, h) in category(rng.gen_range(0..5)) {
            let c = c.map(|v| v * overall);
            let h = h.map(|v| v * overall * rng.gen_range(0.85..1.15f32));
            tris.extend(box_triangles(c, h));
        }
        let background = rng.gen_range(0.25..0.4f32);
        let albedo = rng.gen_range(0.75..0.95f32);

        let n = SIZE * SS;
        let k = 14.5 * SS as f32; // pixels per object unit
        let centre = n as f32 / 2.0;
        let mut depth = vec![f32::NEG_INFINITY; n * n];
        let mut value = vec![background; n * n];
        for (tri, normal) in &tris {
            let v = tri.map(|p| view(p, azimuth, elevation));
            let nn = view(*normal, azimuth, elevation);
            let lam = (nn[0] * light[0] + nn[1] * light[1] + nn[2] * light[2]).max(0.0);
            let shade = albedo * (0.25 + 0.75 * lam);
            let s = v.map(|p| [centre + k * p[0], centre - k * p[1], p[2]]);
            let area = (s[1][0] - s[0][0]) * (s[2][1] - s[0][1])
                - (s[2][0] - s[0][0]) * (s[1][1] - s[0][1]);
            if area.abs() < 1e-6 {
                continue;
            }
            let lo = |d: usize| {
                s.iter()
                    .map(|p| p[d])
                    .fold(f32::INFINITY, f32::min)
                    .floor()
                    .max(0.0) as usize
            };
            let hi = |d: usize| {
                (s.iter()
                    .map(|p| p[d])
                    .fold(f32::NEG_INFINITY, f32::max)
                    .ceil()
                    .max(0.0) as usize)
                    .min(n)
            };
            for py in lo(1)..hi(1) {
                for px in lo(0)..hi(0) {
                    let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
                    let w0 = ((s[1][0] - x) * (s[2][1] - y) - (s[2][0] - x) * (s[1][1] - y)) / area;
                    let w1 = ((s[2][0] - x) * (s[0][1] - y) - (s[0][0] - x) * (s[2][1] - y)) / area;
                    let w2 = 1.0 - w0 - w1;
                    if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                        continue;
                    }
                    let z = w0 * s[0][2] + w1 * s[1][2] + w2 * s[2][2];
                    let at = py * n + px;
                    if z > depth[at] {
                        depth[at] = z;
                        value[at] = shade;
                    }
                }
            }
        }
        let img = GrayImage::from_fn(SIZE as u32, SIZE as u32, |i, j| {
            let mut acc = 0.0;
            for dy in 0..SS {
                for dx in 0..SS {
                    acc += value[(j as usize * SS + dy) * n + i as usize * SS + dx];
                }
            }
            image::Luma([to_u8(acc / (SS * SS) as f32)])
        });
        DynamicImage::ImageLuma8(img)
    }
}
