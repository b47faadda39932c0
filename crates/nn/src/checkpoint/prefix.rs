//! Wrapped state dicts: a prefix in front of every timm name (`module.` of DDP,
//! `model.` of Lightning, `_orig_mod.` of `torch.compile`, `backbone.`, nested ones).
//!
//! A prefix is removed only when it explains the whole file: every tensor name carries
//! it (after the names the caller ignores), and removing it makes more names timm names
//! than before. A prefix in front of timm names in only part of the file (a backbone
//! inside a larger model: `module.backbone.` next to `module.head.`; two copies such as
//! `model.` and `model_ema.`) is not removed: the mismatch report names it, how many
//! names carry it and which do not.

use std::collections::{BTreeMap, HashSet};

/// What the prefix search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefix {
    /// No prefix makes more names timm names.
    None,
    /// Every name carries it: a wrapped state dict; remove it.
    Wrapped(String),
    /// The best prefix, carried by only `carried` of `total` names (`others`: the names
    /// without it): not removed.
    Partial {
        /// The prefix.
        prefix: String,
        /// Names that become timm names once it is removed.
        matching: usize,
        /// Names that carry it.
        carried: usize,
        /// Names in all.
        total: usize,
        /// The names that do not carry it.
        others: Vec<String>,
    },
}

/// Searches `names` for the prefix (ending in `.`) whose removal makes the most of them
/// names in `want`; see the module doc for when it counts as a wrapper.
pub fn find<'a>(names: impl Iterator<Item = &'a String> + Clone, want: &HashSet<&str>) -> Prefix {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut plain = 0;
    let mut total = 0;
    for k in names.clone() {
        total += 1;
        if want.contains(k.as_str()) {
            plain += 1;
        }
        for (i, _) in k.match_indices('.') {
            let (p, rest) = k.split_at(i + 1);
            if want.contains(rest) {
                *counts.entry(p).or_default() += 1;
            }
        }
    }
    let carried = |p: &str| names.clone().filter(|k| k.starts_with(p)).count();
    let best = |full: bool| {
        counts
            .iter()
            .filter(|&(p, &n)| n > plain && (carried(p) == total) == full)
            .max_by_key(|&(p, &n)| (n, std::cmp::Reverse(p.len())))
            .map(|(p, n)| (p.to_string(), *n))
    };
    if let Some((p, _)) = best(true) {
        return Prefix::Wrapped(p);
    }
    match best(false) {
        None => Prefix::None,
        Some((prefix, matching)) => {
            let carried = carried(&prefix);
            let others: Vec<String> = names.filter(|k| !k.starts_with(&prefix)).cloned().collect();
            Prefix::Partial {
                carried,
                prefix,
                matching,
                total,
                others,
            }
        }
    }
}

/// What usually writes names under `prefix`, for the note.
pub fn wrapper_of(prefix: &str) -> &'static str {
    let first = prefix.split('.').next().unwrap_or("");
    match first {
        "module" => "DDP / DataParallel",
        "_orig_mod" => "torch.compile",
        "model" => "a Lightning module or training wrapper",
        "backbone" | "encoder" | "vit" | "visual" => "a model holding the ViT as a submodule",
        _ => "a wrapper module",
    }
}

/// The note for a removed prefix carried by all `total` names.
pub fn wrapped_note(prefix: &str, total: usize) -> String {
    format!(
        "removed the prefix `{prefix}` that all {total} tensor names carry (a wrapped state \
         dict: {}), as timm's clean_state_dict does",
        wrapper_of(prefix)
    )
}

/// The note explaining why a prefix that explains only part of the file was kept.
pub fn partial_note(p: &Prefix) -> Option<String> {
    let Prefix::Partial {
        prefix,
        matching,
        carried,
        total,
        others,
    } = p
    else {
        return None;
    };
    Some(format!(
        "{matching} of the {total} tensor names are timm names after `{prefix}`, but {} names \
         do not carry that prefix (e.g. {}), so it was not removed: a prefix is removed only \
         when every name carries it (a wrapped state dict) once the ignored names are left out; \
         if those names are not part of the ViT, ignoring them (by their names in the file) \
         makes `{prefix}` removable",
        total - carried,
        super::list_excerpt(others, ", ")
    ))
}

/// The longest prefix ending in `.` that every name carries, if any.
pub fn common_dot_prefix<'a>(names: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut prefix: Option<&str> = None;
    for n in names {
        let cut = match prefix {
            None => n.rfind('.').map_or("", |i| &n[..=i]),
            Some(p) => {
                let common = p
                    .char_indices()
                    .zip(n.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((i, a), _)| i + a.len_utf8());
                p[..common].rfind('.').map_or("", |i| &p[..=i])
            }
        };
        if cut.is_empty() {
            return None;
        }
        prefix = Some(cut);
    }
    prefix.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_prefix_counts_as_a_wrapper_only_when_every_name_carries_it() {
        let want: HashSet<&str> = ["cls_token", "pos_embed", "norm.weight"].into();
        let all = names(&["module.cls_token", "module.pos_embed", "module.norm.weight"]);
        assert_eq!(find(all.iter(), &want), Prefix::Wrapped("module.".into()));
        // Nested wrappers: the longest prefix that makes the names timm names.
        let nested = names(&["module.model.cls_token", "module.model.pos_embed"]);
        assert_eq!(
            find(nested.iter(), &want),
            Prefix::Wrapped("module.model.".into())
        );
        // A backbone next to a head: carried by part of the file only.
        let dino = names(&[
            "module.backbone.cls_token",
            "module.backbone.pos_embed",
            "module.head.mlp.0.weight",
        ]);
        match find(dino.iter(), &want) {
            Prefix::Partial {
                prefix,
                matching,
                carried,
                total,
                others,
            } => {
                assert_eq!(prefix, "module.backbone.");
                assert_eq!((matching, carried, total), (2, 2, 3));
                assert_eq!(others, names(&["module.head.mlp.0.weight"]));
            }
            other => panic!("{other:?}"),
        }
        // One name that happens to end in a timm name is no wrapper either.
        let hf = names(&["vit.embeddings.cls_token", "vit.encoder.layer.0.x"]);
        assert!(matches!(find(hf.iter(), &want), Prefix::Partial { .. }));
        let plain = names(&["cls_token", "pos_embed"]);
        assert_eq!(find(plain.iter(), &want), Prefix::None);
    }
}
