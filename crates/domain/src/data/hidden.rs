//! Hidden and operating-system entries in users' folders: dot-files and dot-folders
//! (`.DS_Store`, `.ipynb_checkpoints`, macOS AppleDouble sidecars `._x.jpg`, `.git`),
//! `__MACOSX` (the AppleDouble folder of zips made on macOS), Windows' `Thumbs.db`,
//! `ehthumbs.db`, `desktop.ini`, `$RECYCLE.BIN`, `System Volume Information`, Synology's
//! `@eaDir` thumbnail folders and macOS' `Icon\r`. They are never classes or images: every
//! walk of a user's folder (ImageFolder trees, `infer --images`, finding a dataset root,
//! archive extraction) skips them and counts them in one warning per tree
//! ([`HiddenEntries::warning`]); a list file that names one is an error
//! ([`os_metadata_kind`]).

/// OS entry names that do not start with a dot, compared ASCII case-insensitively
/// (Windows names are case-insensitive).
pub const OS_NAMES: &[&str] = &[
    "__MACOSX",
    "Thumbs.db",
    "ehthumbs.db",
    "ehthumbs_vista.db",
    "desktop.ini",
    "$RECYCLE.BIN",
    "System Volume Information",
    "@eaDir",
    "Icon\r",
];

/// Whether a file or folder name (one path component) is a hidden or OS entry: it starts
/// with `.` or is one of [`OS_NAMES`].
pub fn is_hidden_or_os(name: &str) -> bool {
    name.starts_with('.') || OS_NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// What kind of OS metadata a list path (`/`-separated, normalised) names, if any: a macOS
/// AppleDouble sidecar (`._x.jpg`, or anything under `__MACOSX/`), a Finder or Windows
/// Explorer file (`.DS_Store`, `Thumbs.db`, `desktop.ini`), or a Synology thumbnail (under
/// `@eaDir/`). Other dot-names (`.hidden/x.jpg`) are not metadata: a list may name them.
pub fn os_metadata_kind(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    let file = parts.last().copied().unwrap_or(path);
    let any = |n: &str| parts.iter().any(|p| p.eq_ignore_ascii_case(n));
    if any("__MACOSX") || file.starts_with("._") {
        Some("a macOS AppleDouble metadata file (resource fork and Finder attributes)")
    } else if any("@eaDir") {
        Some("a Synology NAS thumbnail or metadata file")
    } else if file.eq_ignore_ascii_case(".DS_Store") {
        Some("a macOS Finder metadata file")
    } else if [
        "Thumbs.db",
        "ehthumbs.db",
        "ehthumbs_vista.db",
        "desktop.ini",
    ]
    .iter()
    .any(|n| file.eq_ignore_ascii_case(n))
    {
        Some("a Windows Explorer metadata file")
    } else {
        None
    }
}

/// How many examples a warning shows.
const EXAMPLES: usize = 3;

/// Hidden or OS entries met while walking one tree: how many, and the first few (paths
/// relative to the tree's root, invisible characters escaped). A skipped folder counts
/// once; nothing inside it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HiddenEntries {
    /// Entries skipped.
    pub count: usize,
    /// Up to 3 of them, relative to the tree's root.
    pub examples: Vec<String>,
}

impl HiddenEntries {
    /// Counts one skipped entry at `rel` (relative to the tree's root).
    pub fn add(&mut self, rel: &str) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(idat_engine::text::escape_invisible(rel));
        }
    }

    /// The one warning for tree `tree` (as shown to the user, e.g. `train/`), None when
    /// nothing was skipped: `skipped 7 hidden or OS entries under train/ (.ipynb_checkpoints,
    /// cat/._a.jpg, cat/.DS_Store, ...): never classes or images`.
    pub fn warning(&self, tree: &str) -> Option<String> {
        (self.count > 0).then(|| {
            let more = if self.count > self.examples.len() {
                ", ..."
            } else {
                ""
            };
            format!(
                "skipped {} hidden or OS {} under {tree} ({}{more}): dot-files and dot-folders, \
                 __MACOSX, Thumbs.db, desktop.ini and the like are never classes or images",
                self.count,
                if self.count == 1 { "entry" } else { "entries" },
                self.examples.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_os_names() {
        for n in [
            ".DS_Store",
            ".ipynb_checkpoints",
            "._cat.jpg",
            ".git",
            "__MACOSX",
            "__macosx",
            "Thumbs.db",
            "thumbs.db",
            "desktop.ini",
            "Desktop.ini",
            "@eaDir",
            "$RECYCLE.BIN",
            "System Volume Information",
            "Icon\r",
            ".",
        ] {
            assert!(is_hidden_or_os(n), "{n:?}");
        }
        for n in [
            "cat",
            "a.jpg",
            "_cat",
            "Thumbs",
            "Icon",
            "x.DS_Store",
            "macosx",
        ] {
            assert!(!is_hidden_or_os(n), "{n:?}");
        }
    }

    #[test]
    fn metadata_in_list_paths() {
        assert!(os_metadata_kind("images/._0001.jpg")
            .unwrap()
            .contains("AppleDouble"));
        assert!(os_metadata_kind("__MACOSX/images/0001.jpg")
            .unwrap()
            .contains("AppleDouble"));
        assert!(
            os_metadata_kind("images/@eaDir/0001.jpg/SYNOPHOTO_THUMB_M.jpg")
                .unwrap()
                .contains("Synology")
        );
        assert!(os_metadata_kind("images/Thumbs.db")
            .unwrap()
            .contains("Windows"));
        assert!(os_metadata_kind("images/.DS_Store")
            .unwrap()
            .contains("Finder"));
        assert_eq!(os_metadata_kind("images/0001.jpg"), None);
        assert_eq!(os_metadata_kind(".hidden/0001.jpg"), None);
        assert_eq!(os_metadata_kind("images/a._b.jpg"), None);
    }

    #[test]
    fn one_warning_counts_all_and_shows_three() {
        let mut h = HiddenEntries::default();
        assert_eq!(h.warning("train/"), None);
        for p in [
            ".ipynb_checkpoints",
            "cat/._a.jpg",
            "cat/.DS_Store",
            "dog/Thumbs.db",
        ] {
            h.add(p);
        }
        let w = h.warning("train/").unwrap();
        assert!(
            w.starts_with(
                "skipped 4 hidden or OS entries under train/ (.ipynb_checkpoints, \
                 cat/._a.jpg, cat/.DS_Store, ...)"
            ),
            "{w}"
        );
        let mut one = HiddenEntries::default();
        one.add("Icon\r");
        let w = one.warning("test/").unwrap();
        assert!(
            w.starts_with("skipped 1 hidden or OS entry under test/ (Icon"),
            "{w}"
        );
        assert!(!w.contains('\r'), "{w:?}");
    }
}
