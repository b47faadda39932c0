//! The run record: `runs/<YYYYMMDD-HHMMSS-mmm>-<short>/` with the resolved config, the overrides,
//! `trace.csv` and a log per instance.
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One row of `trace.csv`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceRow {
    /// Instance id, e.g. `tune[task=dtd,seed=1]`.
    pub instance: String,
    /// Cache key (64 hex digits) it was run or found under; empty when it was skipped or
    /// failed before it started.
    pub key: String,
    /// `cached`, `ran`, `failed` or `skipped`.
    pub status: String,
    /// Unix time, seconds.
    pub start: f64,
    /// Unix time, seconds, when it ended (equal to `start` when it never ran).
    pub end: f64,
    /// `end - start`, in seconds.
    pub seconds: f64,
    /// Where it ran: `cpu`, its cards (`cuda:1 (GPU 5)`, several joined by ` + `), or the
    /// run's `--device` where the executor placed nothing (Slurm); empty when it did not run.
    pub device: String,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time.
pub fn stamp(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A run's record directory.
pub struct RunRecord {
    /// The record directory, `runs/<YYYYMMDD-HHMMSS-mmm>-<short>/`: `config.yaml`,
    /// `overrides.txt`, `trace.csv` and `logs/<instance>.log`.
    pub dir: PathBuf,
}

impl RunRecord {
    /// Create `runs_dir/<YYYYMMDD-HHMMSS-mmm>-<short>/` (names sort by start time) with `config.yaml`, `overrides.txt` and `logs/`.
    pub fn create(
        runs_dir: &Path,
        resolved: &serde_json::Value,
        overrides: &[String],
    ) -> Result<RunRecord> {
        let now = unix_now();
        let short = blake3::hash(format!("{now}-{}", std::process::id()).as_bytes()).to_hex();
        let millis = ((now.fract() * 1000.0) as u32).min(999);
        let dir = runs_dir.join(format!("{}-{millis:03}-{}", stamp(now as u64), &short[..6]));
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let yaml = serde_saphyr::to_string(resolved).unwrap_or_else(|_| resolved.to_string());
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        write("config.yaml", &yaml)?;
        let mut o = overrides.join("\n");
        if !o.is_empty() {
            o.push('\n');
        }
        write("overrides.txt", &o)?;
        Ok(RunRecord { dir })
    }

    /// Where the log of an instance goes.
    pub fn log_path(&self, instance: &str) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{}.log", crate::cache::store::sanitize(instance)))
    }

    /// Write `trace.csv`.
    pub fn write_trace(&self, rows: &[TraceRow]) -> Result<()> {
        let p = self.dir.join("trace.csv");
        let write = || -> Result<()> {
            let mut w = csv::Writer::from_path(&p)?;
            for r in rows {
                let mut r = r.clone();
                r.instance = plain_text(&r.instance);
                w.serialize(r)?;
            }
            w.flush()?;
            Ok(())
        };
        write().with_context(|| format!("writing {}", p.display()))
    }
}

/// `text` without ANSI escape sequences (colours, cursor movement, OSC titles): what goes
/// into files (instance logs, trace, summaries), whatever the terminal or colour settings.
pub fn plain_text(text: &str) -> String {
    anstream::adapter::strip_str(text).to_string()
}

/// The last `n` lines of a file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_text_drops_escape_sequences_only() {
        assert_eq!(
            super::plain_text("\x1b[33m WARN\x1b[0m \x1b[1;31mboom\x1b[m: x\ty é"),
            " WARN boom: x\ty é"
        );
        assert_eq!(super::plain_text("\x1b]0;title\x07done"), "done");
    }

    #[test]
    fn stamp_formats_utc() {
        assert_eq!(super::stamp(0), "19700101-000000");
        assert_eq!(super::stamp(1_700_000_000), "20231114-221320");
    }
}
