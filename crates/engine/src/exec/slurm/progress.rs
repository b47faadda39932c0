//! Progress across processes: `exec-stage` appends `progress: POS/TOTAL MESSAGE` lines to the
//! instance log ([`LogProgress`], at most one a second), and the Slurm executor reads new
//! lines of the log back into [`ProgressUpdate`]s ([`LogTail`]).
use crate::exec::ProgressUpdate;
use crate::stages::Progress;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Marker of a progress line in an instance log.
pub const PREFIX: &str = "progress: ";
/// Least time between two progress lines (the last position is always written at the end).
const EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    total: u64,
    pos: u64,
    msg: String,
    last: Option<Instant>,
}

/// A [`Progress`] that appends `progress: POS/TOTAL MESSAGE` lines to a log file.
pub struct LogProgress {
    path: PathBuf,
    state: Mutex<State>,
}

impl LogProgress {
    /// Progress lines go to `path` (appended).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let Ok(mut s) = self.state.lock() else { return };
        f(&mut s);
        let due = s.last.is_none_or(|t| t.elapsed() >= EVERY) || (s.total > 0 && s.pos >= s.total);
        if !due {
            return;
        }
        s.last = Some(Instant::now());
        let line = format!("{PREFIX}{}/{} {}\n", s.pos, s.total, s.msg);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            // One write: O_APPEND keeps it whole next to the stage's own log lines.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

impl Progress for LogProgress {
    fn set_total(&self, total: u64) {
        self.update(|s| s.total = total);
    }
    fn set_position(&self, pos: u64) {
        self.update(|s| s.pos = pos);
    }
    fn set_message(&self, msg: &str) {
        let msg = msg.replace('\n', " ");
        self.update(|s| s.msg = msg);
    }
}

/// A progress line's updates (total, position, and the message when there is one).
pub fn parse_line(line: &str) -> Option<Vec<ProgressUpdate>> {
    let rest = line.strip_prefix(PREFIX)?;
    let (frac, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    let (pos, total) = frac.split_once('/')?;
    let mut u = vec![
        ProgressUpdate::Total(total.parse().ok()?),
        ProgressUpdate::Position(pos.parse().ok()?),
    ];
    if !msg.trim().is_empty() {
        u.push(ProgressUpdate::Message(msg.trim().to_string()));
    }
    Some(u)
}

/// Reads what was appended to a log since the last look.
#[derive(Debug, Clone)]
pub struct LogTail {
    /// The log file.
    pub path: PathBuf,
    offset: u64,
}

impl LogTail {
    /// Start at the log's current end (earlier attempts' lines are not this job's).
    pub fn at_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Self {
            path: path.to_path_buf(),
            offset,
        }
    }

    /// The progress updates of the complete lines appended since the last call.
    pub fn updates(&mut self) -> Vec<ProgressUpdate> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return vec![];
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return vec![];
        }
        // Only whole lines: a line being written is read next time.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return vec![];
        };
        self.offset += end as u64 + 1;
        String::from_utf8_lossy(&buf[..end])
            .lines()
            .filter_map(parse_line)
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lines_are_read_back() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        std::fs::write(&log, "progress: 9/9 an earlier attempt\n").unwrap();
        let mut tail = LogTail::at_end(&log);
        let p = LogProgress::new(&log);
        p.set_total(10);
        p.set_position(3); // within a second of the first line: not written
        p.set_message("epoch 1");
        p.set_position(10); // the end is always written
        let u = tail.updates();
        assert_eq!(
            u,
            vec![
                ProgressUpdate::Total(10),
                ProgressUpdate::Position(0),
                ProgressUpdate::Total(10),
                ProgressUpdate::Position(10),
                ProgressUpdate::Message("epoch 1".into()),
            ]
        );
        assert!(tail.updates().is_empty());
        assert!(parse_line("progress: x/2").is_none());
    }
}
