//! `idat-pipe gc` and `idat-pipe status`: what the cache holds and what can go.
use super::store::{dir_size, remove_tree, Cache, KeyLock};
use anyhow::{Context as _, Result};
use std::collections::HashSet;
use std::fs;

/// What `gc` removed (or would remove with `dry_run`).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Keys (64 hex digits) of the committed entries removed: no instance record points at
    /// them and no live run holds their lock.
    pub entries: Vec<String>,
    /// Temporary output directories (`tmp/<key>.<pid>`, and `entries/.<key>...` moved aside or
    /// half copied in) removed: left by writers that died, their key not locked.
    pub tmp: usize,
    /// Checkpoint directories (`pending/<key>`) removed: their key is not locked, and no
    /// instance record points at it or its entry exists.
    pub pending: usize,
    /// Quarantined corrupt entries (`corrupt/<key>.<time>.<pid>`) removed.
    pub corrupt: usize,
    /// External-input hash memos whose input is gone (or unreadable memos).
    pub external: usize,
    /// Stat records (`stat/<key>.json`, see [`super::freshness`]) whose entry is gone.
    pub stat: usize,
    /// Bytes freed (or that would be freed under `dry_run`): the sizes of the files of
    /// everything counted above.
    pub bytes: u64,
}

/// The entries of the cache folder `sub` (none when it is missing: a read-only cache may
/// lack one). Errors name the folder.
fn listing(cache: &Cache, sub: &str) -> Result<Vec<fs::DirEntry>> {
    let dir = cache.root.join(sub);
    match fs::read_dir(&dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// While removing, the lock of `key` if no live run holds it (held until dropped); for a
/// dry run, whether no live run holds it, found without writing (so a read-only cache can
/// be inspected). None: a live run holds it, leave its files alone.
fn unless_locked(cache: &Cache, key: &str, dry_run: bool) -> Result<Option<Option<KeyLock>>> {
    if dry_run {
        return Ok((!cache.is_locked(key)?).then_some(None));
    }
    Ok(cache.try_lock(key)?.map(Some))
}

/// Remove entries that no instance record points at (superseded results), temporary
/// directories and checkpoints whose key is not locked by a live run, quarantined
/// corrupt entries, and hash memos of external inputs that no longer exist. Entries a
/// record points at are kept. `dry_run` writes nothing (it works on a read-only cache).
pub fn gc(cache: &Cache, dry_run: bool) -> Result<GcReport> {
    let live: HashSet<String> = cache.records().into_iter().map(|r| r.key).collect();
    let mut rep = GcReport::default();
    for key in cache.entry_keys() {
        if live.contains(&key) {
            continue;
        }
        let Some(_lock) = unless_locked(cache, &key, dry_run)? else {
            continue;
        };
        let d = cache.entry_dir(&key);
        rep.bytes += dir_size(&d);
        if !dry_run {
            remove_tree(&d)?;
        }
        rep.entries.push(key);
    }
    // Moved aside or half copied in by a process that died (its key's lock is free), and
    // temporary output directories of writers that died.
    let tmp = listing(cache, "tmp")?.into_iter().map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        (
            name.split('.').next().unwrap_or_default().to_string(),
            e.path(),
        )
    });
    for (key, dir) in cache.entries_aside().into_iter().chain(tmp) {
        let Some(_lock) = unless_locked(cache, &key, dry_run)? else {
            continue;
        };
        rep.bytes += dir_size(&dir);
        rep.tmp += 1;
        if !dry_run {
            remove_tree(&dir)?;
        }
    }
    for e in listing(cache, "pending")? {
        let key = e.file_name().to_string_lossy().into_owned();
        // A checkpoint is worth keeping while its instance still wants this key and has no entry.
        if live.contains(&key) && !cache.entry_dir(&key).exists() {
            continue;
        }
        let Some(_lock) = unless_locked(cache, &key, dry_run)? else {
            continue;
        };
        rep.bytes += dir_size(&e.path());
        rep.pending += 1;
        if !dry_run {
            remove_tree(&e.path())?;
        }
    }
    for e in listing(cache, "corrupt")? {
        rep.bytes += dir_size(&e.path());
        rep.corrupt += 1;
        if !dry_run {
            remove_tree(&e.path())?;
        }
    }
    let stale = super::external::stale_memos(&cache.root);
    // Stat records are listed after the entries removed above are gone (a dry run lists
    // those of the entries it would remove too).
    let mut stats = cache.stale_stat_records();
    if dry_run {
        stats.extend(
            rep.entries
                .iter()
                .map(|k| cache.root.join("stat").join(format!("{k}.json")))
                .filter(|p| p.exists()),
        );
    }
    let n_stale = stale.len();
    for (i, p) in stale.into_iter().chain(stats).enumerate() {
        rep.bytes += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if i < n_stale {
            rep.external += 1;
        } else {
            rep.stat += 1;
        }
        if !dry_run {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(rep)
}

/// What `idat-pipe verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Entries whose every file matched its manifest.
    pub ok: usize,
    /// Bytes re-hashed (the files of every entry verified).
    pub bytes: u64,
    /// `(key, message)` of every corrupt entry: the message names the entry, its instance
    /// and every file that differs, as a corrupt lookup does.
    pub corrupt: Vec<(String, String)>,
    /// Keys asked for that have no entry.
    pub missing: Vec<String>,
}

/// Re-hash every file of the entries `keys` against their manifests (whatever the recorded
/// stats say: [`Cache::verify`]). A corrupt entry's stats are forgotten, so the next `plan`
/// or `run` finds it corrupt too (and `run` moves it aside and recomputes it); nothing is
/// moved or removed here. `each` is called after every entry (progress).
pub fn verify(cache: &Cache, keys: &[String], mut each: impl FnMut(usize)) -> VerifyReport {
    let mut rep = VerifyReport::default();
    for (i, key) in keys.iter().enumerate() {
        match cache.verify(key) {
            super::Lookup::Hit(m) => {
                rep.ok += 1;
                rep.bytes += m.files.iter().map(|f| f.size).sum::<u64>();
            }
            super::Lookup::Corrupt(why) => rep.corrupt.push((key.clone(), why)),
            super::Lookup::Missing => rep.missing.push(key.clone()),
        }
        each(i + 1);
    }
    rep
}

/// Summary for `idat-pipe status`.
#[derive(Debug, Default)]
pub struct Status {
    /// Committed entries under `entries/`.
    pub entries: usize,
    /// Total size of those entries in bytes (their files, manifests included).
    pub entry_bytes: u64,
    /// Instance records under `instances/`: one per instance id, written when it ran, failed
    /// or was found cached.
    pub instances: usize,
    /// (instance id, error) of every instance whose last outcome was a failure, sorted; the
    /// error is the first line of its message (empty when none was recorded).
    pub failed: Vec<(String, String)>,
    /// Checkpoint directories under `pending/`: computations that failed, were killed or
    /// crashed, or are running now.
    pub pending: usize,
    /// Keys whose lock a live process holds now: entries being computed by a `run` or
    /// `exec-stage`.
    pub locked: usize,
    /// Entries quarantined under `corrupt/` after failing verification (`gc` removes them).
    pub corrupt: usize,
    /// Per stage id (the instance id before `[`): instance records by outcome.
    pub per_stage: std::collections::BTreeMap<String, StageCounts>,
}

/// Instance records of one stage by outcome.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StageCounts {
    /// Last outcome ok and the entry is present.
    pub ok: usize,
    /// Last outcome failed.
    pub failed: usize,
    /// Last outcome ok but the entry is gone (removed by gc or by hand).
    pub missing: usize,
}

/// Count what the cache holds. Writes nothing: a read-only cache works; a missing folder
/// counts as empty.
pub fn status(cache: &Cache) -> Result<Status> {
    let mut s = Status::default();
    for key in cache.entry_keys() {
        s.entries += 1;
        s.entry_bytes += dir_size(&cache.entry_dir(&key));
    }
    for r in cache.records() {
        s.instances += 1;
        let stage = r.instance.split('[').next().unwrap_or_default().to_string();
        let c = s.per_stage.entry(stage).or_default();
        if r.status == "failed" {
            c.failed += 1;
        } else if cache.entry_dir(&r.key).join("manifest.json").is_file() {
            c.ok += 1;
        } else {
            c.missing += 1;
        }
        if r.status == "failed" {
            s.failed.push((r.instance, r.error.unwrap_or_default()));
        }
    }
    s.failed.sort();
    s.pending = listing(cache, "pending")?.len();
    s.corrupt = listing(cache, "corrupt")?.len();
    for e in listing(cache, "locks")? {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_suffix(".lock") {
            if cache.is_locked(key)? {
                s.locked += 1;
            }
        }
    }
    Ok(s)
}
