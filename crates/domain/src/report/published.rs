//! The published VTAB-1K top-1 numbers of docs/vtab.md (ViT-B/16, ImageNet-21K; collected in the
//! V-PETL Bench README from the original papers), with the method aliases. The task order and
//! groups are those of the task table, [`crate::data::vtab_tasks::TASKS`].
//!
//! Only the per-task numbers are stored; group means are computed from them (and checked in the
//! tests against the group-mean table of vtab.md).
use crate::data::vtab_tasks;

/// One published method row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedMethod {
    /// Row name as in vtab.md, e.g. `AdaptFormer (d=8)`.
    pub name: &'static str,
    /// Trainable parameters as published, e.g. `0.16M`.
    pub params: &'static str,
    /// Top-1 % per task, in the order of [`vtab_tasks::TASKS`].
    pub top1: [f64; 19],
}

impl PublishedMethod {
    /// Published top-1 % of a real VTAB-1K task folder name; `None` for other names.
    pub fn task(&self, task: &str) -> Option<f64> {
        vtab_tasks::column(task).map(|i| self.top1[i])
    }
}

/// Short aliases accepted for published rows (lower case), besides the exact row names.
const ALIASES: [(&str, &str); 12] = [
    ("full", "Full fine-tuning"),
    ("linear", "Linear probing"),
    ("adapter", "Adapter (d=8)"),
    ("vpt_shallow", "VPT-Shallow"),
    ("vpt_deep", "VPT-Deep"),
    ("bitfit", "BitFit"),
    ("lora", "LoRA (r=8)"),
    ("adaptformer", "AdaptFormer (d=8)"),
    ("ssf", "SSF"),
    ("noah", "NOAH"),
    ("fact", "FacT"),
    ("repadapter", "RepAdapter"),
];

/// All 12 published methods x 19 tasks of vtab.md.
pub fn published() -> &'static [PublishedMethod] {
    &PUBLISHED
}

/// A published row by exact row name or alias (case-insensitive); `None` when unknown.
pub fn find_published(name: &str) -> Option<&'static PublishedMethod> {
    let lower = name.to_ascii_lowercase();
    let row = ALIASES
        .iter()
        .find(|(a, _)| *a == lower)
        .map(|(_, r)| *r)
        .unwrap_or(name);
    PUBLISHED.iter().find(|m| m.name.eq_ignore_ascii_case(row))
}

/// The accepted names, for error messages: aliases then row names.
pub fn published_names() -> Vec<&'static str> {
    ALIASES
        .iter()
        .map(|(a, _)| *a)
        .chain(PUBLISHED.iter().map(|m| m.name))
        .collect()
}

static PUBLISHED: [PublishedMethod; 12] = [
    PublishedMethod {
        name: "Full fine-tuning",
        params: "85.8M",
        top1: [
            68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8, 79.7, 95.7, 84.2, 73.9, 56.3, 58.6, 41.7,
            65.5, 57.5, 46.7, 25.7, 29.1,
        ],
    },
    PublishedMethod {
        name: "Linear probing",
        params: "0M",
        top1: [
            63.4, 85.0, 63.2, 97.0, 86.3, 36.6, 51.0, 78.5, 87.5, 68.6, 74.0, 34.3, 30.6, 33.2,
            55.4, 12.5, 20.0, 9.6, 19.2,
        ],
    },
    PublishedMethod {
        name: "Adapter (d=8)",
        params: "0.16M",
        top1: [
            69.2, 90.1, 68.0, 98.8, 89.9, 82.8, 54.3, 84.0, 94.9, 81.9, 75.5, 80.9, 65.3, 48.6,
            78.3, 74.8, 48.5, 29.9, 41.6,
        ],
    },
    PublishedMethod {
        name: "VPT-Shallow",
        params: "0.08M",
        top1: [
            77.7, 86.9, 62.6, 97.5, 87.3, 74.5, 51.2, 78.2, 92.0, 75.6, 72.9, 50.5, 58.6, 40.5,
            67.1, 68.7, 36.1, 20.2, 34.1,
        ],
    },
    PublishedMethod {
        name: "VPT-Deep",
        params: "0.56M",
        top1: [
            78.8, 90.8, 65.8, 98.0, 88.3, 78.1, 49.6, 81.8, 96.1, 83.4, 68.4, 68.5, 60.0, 46.5,
            72.8, 73.6, 47.9, 32.9, 37.8,
        ],
    },
    PublishedMethod {
        name: "BitFit",
        params: "0.10M",
        top1: [
            72.8, 87.0, 59.2, 97.5, 85.3, 59.9, 51.4, 78.7, 91.6, 72.9, 69.8, 61.5, 55.6, 32.4,
            55.9, 66.6, 40.0, 15.7, 25.1,
        ],
    },
    PublishedMethod {
        name: "LoRA (r=8)",
        params: "0.29M",
        top1: [
            67.1, 91.4, 69.4, 98.8, 90.4, 85.3, 54.0, 84.9, 95.3, 84.4, 73.6, 82.9, 69.2, 49.8,
            78.5, 75.7, 47.1, 31.0, 44.0,
        ],
    },
    PublishedMethod {
        name: "AdaptFormer (d=8)",
        params: "0.16M",
        top1: [
            70.8, 91.2, 70.5, 99.1, 90.9, 86.6, 54.8, 83.0, 95.8, 84.4, 76.3, 81.9, 64.3, 49.3,
            80.3, 76.3, 45.7, 31.7, 41.1,
        ],
    },
    PublishedMethod {
        name: "SSF",
        params: "0.21M",
        top1: [
            69.0, 92.6, 75.1, 99.4, 91.8, 90.2, 52.9, 87.4, 95.9, 87.4, 75.5, 75.9, 62.3, 53.3,
            80.6, 77.3, 54.9, 29.5, 37.9,
        ],
    },
    PublishedMethod {
        name: "NOAH",
        params: "0.43M",
        top1: [
            69.6, 92.7, 70.2, 99.1, 90.4, 86.1, 53.7, 84.4, 95.4, 83.9, 75.8, 82.8, 68.9, 49.9,
            81.7, 81.8, 48.3, 32.8, 44.2,
        ],
    },
    PublishedMethod {
        name: "FacT",
        params: "0.07M",
        top1: [
            70.6, 90.6, 70.8, 99.1, 90.7, 88.6, 54.1, 84.8, 96.2, 84.5, 75.7, 82.6, 68.2, 49.8,
            80.7, 80.8, 47.4, 33.2, 43.0,
        ],
    },
    PublishedMethod {
        name: "RepAdapter",
        params: "0.22M",
        top1: [
            72.4, 91.6, 71.0, 99.2, 91.4, 90.7, 55.1, 85.3, 95.9, 84.6, 75.9, 82.3, 68.0, 50.4,
            79.9, 80.4, 49.2, 38.6, 41.0,
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::vtab_tasks::{Group, TASKS};

    /// The group-mean table of vtab.md: Natural, Specialized, Structured, mean of 19, mean of group means.
    const DOC_GROUP_MEANS: [(&str, [f64; 5]); 12] = [
        ("Full fine-tuning", [75.89, 83.38, 47.64, 65.57, 68.97]),
        ("Linear probing", [68.93, 77.15, 26.85, 52.94, 57.64]),
        ("Adapter (d=8)", [79.01, 84.08, 58.49, 71.44, 73.86]),
        ("VPT-Shallow", [76.81, 79.67, 46.98, 64.85, 67.82]),
        ("VPT-Deep", [78.49, 82.42, 55.00, 69.43, 71.97]),
        ("BitFit", [73.30, 78.25, 44.10, 62.05, 65.22]),
        ("LoRA (r=8)", [79.49, 84.55, 59.78, 72.25, 74.60]),
        ("AdaptFormer (d=8)", [80.56, 84.88, 58.83, 72.32, 74.75]),
        ("SSF", [81.57, 86.55, 58.96, 73.10, 75.69]),
        ("NOAH", [80.26, 84.88, 61.30, 73.25, 75.48]),
        ("FacT", [80.64, 85.30, 60.71, 73.23, 75.55]),
        ("RepAdapter", [81.63, 85.42, 61.23, 73.84, 76.09]),
    ];

    #[test]
    fn computed_group_means_match_vtab_md() {
        for (name, want) in DOC_GROUP_MEANS {
            let m = find_published(name).unwrap();
            // Group means over the table's groups: they match vtab.md only if the table's
            // task order is the published column order.
            let group_mean = |g: Group| {
                let v: Vec<f64> = TASKS
                    .iter()
                    .zip(m.top1)
                    .filter(|(t, _)| t.group == g)
                    .map(|(_, v)| v)
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            let nat = group_mean(Group::Natural);
            let spe = group_mean(Group::Specialized);
            let stru = group_mean(Group::Structured);
            let all = m.top1.iter().sum::<f64>() / 19.0;
            let gm = (nat + spe + stru) / 3.0;
            for (got, w) in [nat, spe, stru, all, gm].into_iter().zip(want) {
                assert!((got - w).abs() <= 0.006, "{name}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn lookup_by_alias_and_name() {
        assert_eq!(
            find_published("AdaptFormer").unwrap().name,
            "AdaptFormer (d=8)"
        );
        assert_eq!(find_published("lora (r=8)").unwrap().name, "LoRA (r=8)");
        assert!(find_published("idat").is_none());
        assert_eq!(find_published("ssf").unwrap().task("dtd"), Some(75.1));
        assert_eq!(find_published("ssf").unwrap().task("mini_dtd"), None);
        assert_eq!(
            find_published("ssf").unwrap().task("smallnorb_ele"),
            Some(37.9)
        );
        assert_eq!(published().len(), 12);
        assert_eq!(published_names().len(), 24);
    }
}
