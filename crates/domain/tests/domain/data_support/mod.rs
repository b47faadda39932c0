//! Shared helpers of the data tests: a tiny NOAH-layout dataset written on the fly.
#![allow(dead_code)]

pub mod http;

use std::path::Path;

/// Writes task `name` under `root`: `n` images per split (`split_sizes`), labels `i % classes`,
/// images alternating JPEG and PNG of `side x side` pixels (gray every third image), each
/// split's pixels distinct. As in VTAB-1K, `train800val200` lists the images of `train800`
/// then `val200` (its own size is ignored) when both are written first.
pub fn write_task(root: &Path, name: &str, classes: u32, split_sizes: &[(&str, usize)], side: u32) {
    let dir = root.join(name);
    let mut lists: Vec<(&str, String)> = Vec::new();
    for (s, (split, n)) in split_sizes.iter().enumerate() {
        let union = *split == "train800val200"
            && ["train800", "val200"]
                .iter()
                .all(|p| lists.iter().any(|(l, _)| l == p));
        if union {
            let text: String = ["train800", "val200"]
                .iter()
                .map(|p| lists.iter().find(|(l, _)| l == p).unwrap().1.clone())
                .collect();
            std::fs::write(dir.join("train800val200.txt"), &text).unwrap();
            lists.push((split, text));
            continue;
        }
        let img_dir = dir.join("images").join(split);
        std::fs::create_dir_all(&img_dir).unwrap();
        let mut list = String::new();
        for i in 0..*n {
            let ext = if i % 2 == 0 { "jpg" } else { "png" };
            let rel = format!("images/{split}/{i:06}.{ext}");
            let v = ((i + 61 * s) * 37 % 256) as u8;
            let path = dir.join(&rel);
            if i % 3 == 2 {
                let img = image::GrayImage::from_fn(side, side, |x, y| {
                    image::Luma([v.wrapping_add((x * 5 + y * 3) as u8)])
                });
                img.save(&path).unwrap();
            } else {
                let img = image::RgbImage::from_fn(side, side, |x, y| {
                    image::Rgb([v, (x * 8) as u8, (y * 8) as u8])
                });
                img.save(&path).unwrap();
            }
            list.push_str(&format!("{rel} {}\n", i as u32 % classes));
        }
        std::fs::write(dir.join(format!("{split}.txt")), &list).unwrap();
        lists.push((split, list));
    }
}

/// The four VTAB splits with small sizes.
pub const SMALL_SPLITS: &[(&str, usize)] = &[
    ("train800", 4),
    ("val200", 2),
    ("train800val200", 6),
    ("test", 5),
];
