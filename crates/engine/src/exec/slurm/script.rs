//! The files of one job array: its task table (`<cache>/slurm/arrays/<name>.tsv`: key,
//! instance and log per task index, written before `sbatch` so a later run can always map a
//! queued task back to its cache key), its batch script, and the exit-code sentinels the
//! tasks write (`<cache>/slurm/exit/<key>.exit`: `<code> <ran|cached|-> <array>_<task>
//! <restarts>`). A task that Slurm requeued removes its earlier attempt's sentinel when it
//! starts again.
use std::path::{Path, PathBuf};

/// Prefix of every job name idat-pipe gives Slurm (`idat-<16 hex digits>`).
pub const NAME_PREFIX: &str = "idat-";

/// One array task as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Cache key of the instance's entry.
    pub key: String,
    /// Instance id.
    pub instance: String,
    /// The instance log the task appends to.
    pub log: PathBuf,
}

/// How `exec-stage` is called in every task (all paths absolute).
#[derive(Debug, Clone)]
pub struct Command {
    /// The idat-pipe binary.
    pub exe: PathBuf,
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// The run's `--set` overrides.
    pub overrides: Vec<String>,
    /// The cache directory (on a filesystem every node sees).
    pub cache_dir: PathBuf,
    /// `--device`.
    pub device: String,
}

/// The folder of the executor's files under the cache directory.
pub fn slurm_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("slurm")
}

/// The sentinel a task writes with its exit code when `exec-stage` has returned.
pub fn sentinel(cache_dir: &Path, key: &str) -> PathBuf {
    slurm_dir(cache_dir)
        .join("exit")
        .join(format!("{key}.exit"))
}

/// The job name of an array running these tasks: a digest of their keys, so the same keys
/// give the same name.
pub fn job_name(rows: &[TaskRow]) -> String {
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let h = blake3::hash(keys.join("\n").as_bytes()).to_hex();
    format!("{NAME_PREFIX}{}", &h[..16])
}

fn table_path(cache_dir: &Path, name: &str) -> PathBuf {
    slurm_dir(cache_dir)
        .join("arrays")
        .join(format!("{name}.tsv"))
}

/// Write (atomically: temporary file + rename) the task table of array `name`.
///
/// # Errors
/// The folder or file cannot be written.
pub fn write_table(cache_dir: &Path, name: &str, rows: &[TaskRow]) -> std::io::Result<()> {
    let text: String = rows
        .iter()
        .map(|r| format!("{}\t{}\t{}\n", r.key, r.instance, r.log.display()))
        .collect();
    write_atomic(&table_path(cache_dir, name), text.as_bytes())
}

/// The task table of array `name` (None when missing or unreadable).
pub fn read_table(cache_dir: &Path, name: &str) -> Option<Vec<TaskRow>> {
    let text = std::fs::read_to_string(table_path(cache_dir, name)).ok()?;
    text.lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            Some(TaskRow {
                key: f.next()?.to_string(),
                instance: f.next()?.to_string(),
                log: PathBuf::from(f.next()?),
            })
        })
        .collect()
}

/// Write `bytes` to `path` through a temporary file in the same folder (so on the same
/// filesystem) and a rename. Errors name the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let named = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{p}: {e}"))
    };
    std::fs::create_dir_all(dir).map_err(named(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(named(&tmp))?;
    std::fs::rename(&tmp, path).map_err(named(path))
}

/// `s` as one single-quoted shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The batch script of an array: task index -> instance (and whether `--force`d),
/// `exec-stage`, then the sentinel (temporary file + `mv`, atomic within the folder).
pub fn batch_script(cmd: &Command, stage: &str, rows: &[(TaskRow, bool)]) -> String {
    let q = |p: &Path| quote(&p.to_string_lossy());
    let mut s = format!(
        "#!/bin/bash\n# idat-pipe: stage {stage}, {} instance(s), one per array task\n\
         case \"$SLURM_ARRAY_TASK_ID\" in\n",
        rows.len()
    );
    for (i, (r, force)) in rows.iter().enumerate() {
        s += &format!(
            "  {i}) ID={}; KEY={}; LOG={}; F={} ;;\n",
            quote(&r.instance),
            quote(&r.key),
            q(&r.log),
            if *force { "--force" } else { "" }
        );
    }
    s += "  *) echo \"no instance for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n";
    let mut call = format!(
        "{} --cache-dir {} exec-stage {} --instance \"$ID\" --log \"$LOG\" $F --device {}",
        q(&cmd.exe),
        q(&cmd.cache_dir),
        q(&cmd.pipeline),
        quote(&cmd.device)
    );
    for o in &cmd.overrides {
        call += &format!(" --set {}", quote(o));
    }
    let exit_dir = q(&slurm_dir(&cmd.cache_dir).join("exit"));
    // Each attempt starts with a marker line in the output file (appended to: a requeued
    // task's attempts all stay there), and removes an earlier attempt's sentinel, which is
    // not this attempt's outcome.
    let marker = super::states::ATTEMPT_MARKER;
    s += &format!(
        "echo \"{marker}${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} (job id $SLURM_JOB_ID), \
         attempt $((${{SLURM_RESTART_COUNT:-0}} + 1)) on $(hostname)\"\n\
         EXIT={exit_dir}; rm -f \"$EXIT/$KEY.exit\"\nOUT=$({call})\nRC=$?\n\
         printf '%s\\n' \"$OUT\"\nW=${{OUT%% *}}; [ -n \"$W\" ] || W=-\n\
         TMP=\"$EXIT/.$KEY.exit.$SLURM_JOB_ID\"\n\
         printf '%s %s %s_%s %s\\n' \"$RC\" \"$W\" \"$SLURM_ARRAY_JOB_ID\" \"$SLURM_ARRAY_TASK_ID\" \
         \"${{SLURM_RESTART_COUNT:-0}}\" >\"$TMP\" && mv -f \"$TMP\" \"$EXIT/$KEY.exit\"\nexit $RC\n"
    );
    s
}

/// What a task wrote to its sentinel when `exec-stage` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// exec-stage's exit code.
    pub rc: i32,
    /// The first word exec-stage printed: `ran`, `cached`, or `-`.
    pub word: String,
    /// The task that wrote it, `<array>_<task>`.
    pub task: String,
    /// Slurm's restart count of the attempt that wrote it (0: the first attempt).
    pub restarts: u32,
}

/// A sentinel's content (None when missing or not in the format the script writes; the
/// restart count is absent in sentinels of earlier versions).
pub fn read_sentinel(path: &Path) -> Option<Sentinel> {
    let text = std::fs::read_to_string(path).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    let (rc, word, task, restarts) = match f[..] {
        [rc, word, task] => (rc, word, task, "0"),
        [rc, word, task, restarts] => (rc, word, task, restarts),
        _ => return None,
    };
    Some(Sentinel {
        rc: rc.parse().ok()?,
        word: word.to_string(),
        task: task.to_string(),
        restarts: restarts.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_runs_and_writes_its_sentinel() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("c it's");
        std::fs::create_dir_all(slurm_dir(&cache).join("exit")).unwrap();
        let rows = vec![TaskRow {
            key: "k1".into(),
            instance: "a[x='1']".into(),
            log: d.path().join("a.log"),
        }];
        // `echo` stands in for idat-pipe: it prints its arguments.
        let cmd = Command {
            exe: "/bin/echo".into(),
            pipeline: d.path().join("p.yaml"),
            overrides: vec!["params.a=b c".into()],
            cache_dir: cache.clone(),
            device: "cpu".into(),
        };
        let script = d.path().join("s.sh");
        let forced: Vec<_> = rows.iter().map(|r| (r.clone(), true)).collect();
        std::fs::write(&script, batch_script(&cmd, "a", &forced)).unwrap();
        let o = std::process::Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", "0")
            .env("SLURM_ARRAY_JOB_ID", "7")
            .env("SLURM_JOB_ID", "8")
            .output()
            .unwrap();
        assert!(o.status.success());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("--instance a[x='1']") && out.contains("--set params.a=b c"));
        assert!(out.contains(" --force --device cpu"), "{out}");
        let want = Sentinel {
            rc: 0,
            word: "--cache-dir".into(),
            task: "7_0".into(),
            restarts: 0,
        };
        assert_eq!(read_sentinel(&sentinel(&cache, "k1")).unwrap(), want);
        // A requeued attempt removes the earlier attempt's sentinel before it runs (the
        // stand-in fails if it still sees one), and writes its restart count.
        let fake = d.path().join("fake.sh");
        std::fs::write(
            &fake,
            "#!/bin/sh\ntest -e \"$SENT\" && { echo stale; exit 9; }\necho ran x\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cmd = Command { exe: fake, ..cmd };
        std::fs::write(&script, batch_script(&cmd, "a", &forced)).unwrap();
        let o = std::process::Command::new("bash")
            .arg(&script)
            .env("SENT", sentinel(&cache, "k1"))
            .env("SLURM_ARRAY_TASK_ID", "0")
            .env("SLURM_ARRAY_JOB_ID", "7")
            .env("SLURM_JOB_ID", "8")
            .env("SLURM_RESTART_COUNT", "2")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let s = read_sentinel(&sentinel(&cache, "k1")).unwrap();
        assert_eq!((s.rc, s.word.as_str(), s.restarts), (0, "ran", 2));
        std::fs::write(sentinel(&cache, "k1"), "1 - 7_0\n").unwrap();
        assert_eq!(read_sentinel(&sentinel(&cache, "k1")).unwrap().restarts, 0);
        write_table(&cache, "n", &rows).unwrap();
        assert_eq!(read_table(&cache, "n").unwrap(), rows);
        assert!(job_name(&rows).starts_with(NAME_PREFIX));
    }
}
