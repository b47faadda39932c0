//! The one VTAB-1K task table: the 19 tasks in the column order of the published tables
//! (docs/vtab.md), each with its folder name (NOAH layout), group, class count, test-split
//! size and the per-task recipe of the official iDAT/SSF scripts; the folder-name aliases;
//! the list files of a task and the sizes VTAB-1K enforces. The data reader
//! ([`crate::data::vtab`]), the report ([`crate::report`]) and the stage kinds read it.

use serde::{Deserialize, Serialize};

/// The four list files of a VTAB-1K task, in canonical order.
pub const SPLITS: [&str; 4] = ["train800", "val200", "train800val200", "test"];

/// The lines a VTAB-1K list file must have, per split (`test` is counted, not enforced).
pub const SPLIT_SIZES: [(&str, usize); 3] =
    [("train800", 800), ("val200", 200), ("train800val200", 1000)];

/// VTAB task group.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Natural images (7 VTAB tasks).
    Natural,
    /// Specialized: medical and remote sensing (4 tasks).
    Specialized,
    /// Structured: counting, distance, orientation (8 tasks).
    Structured,
}

impl Group {
    /// All groups in table order.
    pub const ALL: [Group; 3] = [Group::Natural, Group::Specialized, Group::Structured];

    /// Display name (`Natural`).
    pub fn label(self) -> &'static str {
        match self {
            Group::Natural => "Natural",
            Group::Specialized => "Specialized",
            Group::Structured => "Structured",
        }
    }

    /// The name as written in configs, manifests and `eval.json` (`natural`).
    pub const fn name(self) -> &'static str {
        match self {
            Group::Natural => "natural",
            Group::Specialized => "specialized",
            Group::Structured => "structured",
        }
    }

    /// The group written `name` (exactly as [`Group::name`] gives it); `None` otherwise.
    pub fn from_name(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == name)
    }
}

/// The group names as written in configs, in table order.
pub const GROUPS: [&str; 3] = [
    Group::Natural.name(),
    Group::Specialized.name(),
    Group::Structured.name(),
];

/// One row of the VTAB-1K task table (classes and the iDAT/SSF per-task recipe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskInfo {
    /// Folder name in the NOAH layout.
    pub name: &'static str,
    /// Its group.
    pub group: Group,
    /// Number of classes; labels are `0..num_classes`.
    pub num_classes: usize,
    /// Test-split size from the VPT appendix (unverified; the list file is authoritative).
    pub test_size: usize,
    /// Learning rate of the per-task recipe.
    pub lr: f64,
    /// Weight decay of the per-task recipe.
    pub weight_decay: f64,
    /// Drop-path rate of the per-task recipe.
    pub drop_path: f64,
}

const fn t(
    name: &'static str,
    group: Group,
    num_classes: usize,
    test_size: usize,
    lr: f64,
    weight_decay: f64,
    drop_path: f64,
) -> TaskInfo {
    TaskInfo {
        name,
        group,
        num_classes,
        test_size,
        lr,
        weight_decay,
        drop_path,
    }
}

/// The 19 VTAB-1K tasks (docs/vtab.md), in the column order of the published tables:
/// 7 natural, 4 specialized, 8 structured.
pub const TASKS: &[TaskInfo] = &[
    t("cifar", Group::Natural, 100, 10_000, 5e-3, 5e-5, 0.0),
    t("caltech101", Group::Natural, 102, 6_084, 1e-3, 5e-2, 0.1),
    t("dtd", Group::Natural, 47, 1_880, 5e-3, 5e-5, 0.0),
    t(
        "oxford_flowers102",
        Group::Natural,
        102,
        6_149,
        5e-3,
        5e-5,
        0.0,
    ),
    t(
        "oxford_iiit_pet",
        Group::Natural,
        37,
        3_669,
        5e-3,
        5e-5,
        0.0,
    ),
    t("svhn", Group::Natural, 10, 26_032, 1e-2, 5e-5, 0.0),
    t("sun397", Group::Natural, 397, 21_750, 5e-3, 5e-5, 0.0),
    t(
        "patch_camelyon",
        Group::Specialized,
        2,
        32_768,
        5e-3,
        5e-5,
        0.0,
    ),
    t("eurosat", Group::Specialized, 10, 5_400, 3e-3, 5e-2, 0.2),
    t("resisc45", Group::Specialized, 45, 6_300, 2e-3, 5e-5, 0.1),
    t(
        "diabetic_retinopathy",
        Group::Specialized,
        5,
        42_670,
        5e-3,
        5e-5,
        0.2,
    ),
    t("clevr_count", Group::Structured, 8, 15_000, 2e-3, 5e-2, 0.1),
    t("clevr_dist", Group::Structured, 6, 15_000, 5e-2, 5e-2, 0.1),
    t("dmlab", Group::Structured, 6, 22_735, 5e-3, 5e-5, 0.1),
    t("kitti", Group::Structured, 4, 711, 1e-2, 5e-5, 0.0),
    t(
        "dsprites_loc",
        Group::Structured,
        16,
        73_728,
        1e-2,
        5e-5,
        0.0,
    ),
    t(
        "dsprites_ori",
        Group::Structured,
        16,
        73_728,
        5e-3,
        5e-5,
        0.2,
    ),
    t(
        "smallnorb_azi",
        Group::Structured,
        18,
        12_150,
        2e-2,
        5e-5,
        0.1,
    ),
    t(
        "smallnorb_ele",
        Group::Structured,
        9,
        12_150,
        5e-3,
        5e-2,
        0.2,
    ),
];

/// Folder-name aliases used by the iDAT scripts: `(alias, folder name)`.
pub const ALIASES: &[(&str, &str)] = &[
    ("cifar100", "cifar"),
    ("flowers102", "oxford_flowers102"),
    ("pets", "oxford_iiit_pet"),
];

/// Maps an alias (`cifar100`, `flowers102`, `pets`) to its folder name; other names pass through.
pub fn canonical_name(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, folder)| *folder)
        .unwrap_or(name)
}

/// Looks a task up in [`TASKS`] by folder name or alias.
pub fn task_info(name: &str) -> Option<&'static TaskInfo> {
    by_folder(canonical_name(name))
}

/// Looks a task up in [`TASKS`] by its exact folder name (no alias): what a results table
/// names a task by.
pub fn by_folder(name: &str) -> Option<&'static TaskInfo> {
    TASKS.iter().find(|t| t.name == name)
}

/// The column of a task (exact folder name) in the published tables, i.e. its index in
/// [`TASKS`]; `None` for any other name.
pub fn column(name: &str) -> Option<usize> {
    TASKS.iter().position(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published tables give each group as one run of columns, natural first; group
    /// means and table order rely on it.
    #[test]
    fn groups_are_contiguous_in_table_order() {
        let mut groups: Vec<Group> = TASKS.iter().map(|t| t.group).collect();
        groups.dedup();
        assert_eq!(groups, Group::ALL);
        let per_group = Group::ALL.map(|g| TASKS.iter().filter(|t| t.group == g).count());
        assert_eq!(per_group, [7, 4, 8]);
        for g in Group::ALL {
            assert_eq!(Group::from_name(g.name()), Some(g));
        }
        assert_eq!(Group::from_name("Natural"), None);
    }

    /// Every alias leads to a task of the table and shadows no folder name (else
    /// [`canonical_name`] would silently pass a misspelt target through).
    #[test]
    fn aliases_name_tasks_and_no_folder() {
        for (alias, folder) in ALIASES {
            assert!(by_folder(folder).is_some(), "alias {alias} -> {folder}");
            assert!(by_folder(alias).is_none(), "alias {alias} is a folder name");
            assert_eq!(task_info(alias).unwrap().name, *folder);
        }
        assert_eq!(column("kitti"), Some(14));
        assert_eq!(column("cifar100"), None);
        assert_eq!(by_folder("eurosat").unwrap().group, Group::Specialized);
    }
}
