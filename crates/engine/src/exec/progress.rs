//! Run progress: indicatif bars on a terminal, plain lines otherwise, nothing with `--quiet`.
use super::eta::Eta;
use crate::stages::{NoProgress, Progress};
use anstream::eprintln;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the executor tells the user while running.
pub trait Reporter: Send + Sync {
    /// An instance started on `place` (its cards, e.g. `cuda:1 (GPU 5)`; empty for the CPU
    /// or where nothing was placed); the returned sink receives its own progress.
    fn started(&self, id: &str, place: &str) -> Arc<dyn Progress>;
    /// An instance ended with `status` (`ran`, `cached`, `failed`, `skipped`).
    fn finished(&self, id: &str, status: &str, seconds: f64);
    /// Print a line without breaking the bars.
    fn line(&self, msg: &str);
}

/// Choose bars, plain lines or silence, for the instances `(id, stage kind)` run on `slots`
/// CPU slots.
pub fn reporter(instances: &[(&str, &str)], slots: usize, quiet: bool) -> Arc<dyn Reporter> {
    let total = instances.len() as u64;
    let eta = Eta::new(instances.iter().copied(), slots);
    if quiet {
        Arc::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bars::new(total, eta))
    } else {
        let secs = std::env::var("IDAT_PROGRESS_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PLAIN_PROGRESS_SECS);
        Arc::new(Plain::new(total, eta, Duration::from_secs(secs)))
    }
}

/// `ETA 3m10s`, or `ETA ?` while nothing has finished or reported progress.
fn eta_text(eta: &Eta) -> String {
    match eta.seconds_left() {
        Some(s) => format!("ETA {}", human_duration(s)),
        None => "ETA ?".into(),
    }
}

/// Prints nothing.
pub struct Quiet;
impl Reporter for Quiet {
    fn started(&self, _: &str, _: &str) -> Arc<dyn Progress> {
        Arc::new(NoProgress)
    }
    fn finished(&self, _: &str, _: &str, _: f64) {}
    fn line(&self, _: &str) {}
}

/// Seconds between `progress:` lines in plain mode (`IDAT_PROGRESS_SECS` overrides).
pub const PLAIN_PROGRESS_SECS: u64 = 30;

/// `1h02m`, `2m10s`, `7s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Counts behind the plain-mode progress line.
struct PlainState {
    done: u64,
    eta: Eta,
    /// Last message of each running instance.
    messages: std::collections::BTreeMap<String, String>,
}

/// One line per event on stderr, plus a `progress:` line every few seconds.
pub struct Plain {
    state: Arc<Mutex<PlainState>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Plain {
    /// Plain reporter for `total` instances, printing progress every `every` (zero: never).
    pub fn new(total: u64, eta: Eta, every: Duration) -> Self {
        let start = std::time::Instant::now();
        let p = Plain {
            state: Arc::new(Mutex::new(PlainState {
                done: 0,
                eta,
                messages: Default::default(),
            })),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            ticker: Mutex::new(None),
        };
        if !every.is_zero() {
            let (state, stop) = (p.state.clone(), p.stop.clone());
            let handle = std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || loop {
                    let (lock, cv) = &*stop;
                    let Ok(g) = lock.lock() else { return };
                    let Ok((g, _)) = cv.wait_timeout_while(g, every, |stopped| !*stopped) else {
                        return;
                    };
                    if *g {
                        return;
                    }
                    drop(g);
                    if let Ok(s) = state.lock() {
                        eprintln!(
                            "{}",
                            progress_line(&s, total, start.elapsed().as_secs_f64())
                        );
                    }
                })
                .ok();
            if let Ok(mut t) = p.ticker.lock() {
                *t = handle;
            }
        }
        p
    }
}

/// `progress: 12/54 instances, elapsed 2m10s, ETA 4m00s` plus running instances' messages.
fn progress_line(s: &PlainState, total: u64, elapsed: f64) -> String {
    let eta = if s.done >= total {
        "ETA 0s".to_string()
    } else {
        eta_text(&s.eta)
    };
    let mut line = format!(
        "progress: {}/{} instances, elapsed {}, {}",
        s.done,
        total,
        human_duration(elapsed),
        eta
    );
    for (id, m) in &s.messages {
        if !m.is_empty() {
            line.push_str(&format!("\n  {id}: {m}"));
        }
    }
    line
}

struct PlainProgress {
    id: String,
    state: Arc<Mutex<PlainState>>,
    total: AtomicU64,
}
impl Progress for PlainProgress {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn set_position(&self, pos: u64) {
        let total = self.total.load(Ordering::Relaxed);
        if let (true, Ok(mut s)) = (total > 0, self.state.lock()) {
            s.eta.progress(&self.id, pos as f64 / total as f64);
        }
    }
    fn set_message(&self, msg: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.messages.insert(self.id.clone(), msg.to_string());
        }
    }
}

impl Reporter for Plain {
    fn started(&self, id: &str, place: &str) -> Arc<dyn Progress> {
        match place {
            "" => eprintln!("start   {id}"),
            p => eprintln!("start   {id} on {p}"),
        }
        if let Ok(mut s) = self.state.lock() {
            s.messages.insert(id.to_string(), place.to_string());
            s.eta.started(id);
        }
        Arc::new(PlainProgress {
            id: id.to_string(),
            state: self.state.clone(),
            total: AtomicU64::new(0),
        })
    }
    fn finished(&self, id: &str, status: &str, seconds: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.messages.remove(id);
            s.done += 1;
            s.eta.finished(id, status, seconds);
        }
        eprintln!("{status:<7} {id} ({seconds:.2}s)");
    }
    fn line(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        if let Ok(mut g) = lock.lock() {
            *g = true;
        }
        cv.notify_all();
        if let Some(h) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

/// The bars being drawn, if any: log messages are printed above them.
static DRAWN_BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// stderr for log messages (the tracing subscriber's writer). While progress bars are drawn
/// each message is printed above them (written past the bars, the next refresh overdrew it);
/// with `colour` false, escape codes are removed (see `cli::stderr_colour`).
#[derive(Debug, Clone, Copy)]
pub struct LogStderr {
    /// Keep ANSI escape codes (stderr shows colour); `false` removes them before writing.
    pub colour: bool,
}

impl std::io::Write for LogStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let plain;
        let bytes = if self.colour {
            buf
        } else {
            plain = anstream::adapter::strip_bytes(buf).into_vec();
            &plain[..]
        };
        let bars = DRAWN_BARS.lock().ok().and_then(|b| b.clone());
        match bars {
            Some(m) => m.suspend(|| std::io::stderr().write_all(bytes))?,
            None => std::io::stderr().write_all(bytes)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// An overall bar with ETA plus one bar per running instance.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    running: std::sync::Mutex<std::collections::HashMap<String, ProgressBar>>,
    eta: Arc<Mutex<Eta>>,
}

impl Bars {
    fn new(total: u64, eta: Eta) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} instances  {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.set_message("ETA ?");
        if let Ok(mut b) = DRAWN_BARS.lock() {
            *b = Some(multi.clone());
        }
        Self {
            multi,
            overall,
            running: Default::default(),
            eta: Arc::new(Mutex::new(eta)),
        }
    }
}

struct InstanceBar {
    id: String,
    bar: ProgressBar,
    overall: ProgressBar,
    eta: Arc<Mutex<Eta>>,
}
impl Progress for InstanceBar {
    fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        let total = self.bar.length().unwrap_or(0);
        if let (true, Ok(mut e)) = (total > 0, self.eta.lock()) {
            e.progress(&self.id, pos as f64 / total as f64);
            self.overall.set_message(eta_text(&e));
        }
    }
    fn set_message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

impl Reporter for Bars {
    fn started(&self, id: &str, place: &str) -> Arc<dyn Progress> {
        let b = self.multi.insert_before(&self.overall, ProgressBar::new(0));
        b.set_message(place.to_string());
        b.set_style(
            ProgressStyle::with_template("  {prefix} {bar:20} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(id.to_string());
        if let Ok(mut m) = self.running.lock() {
            m.insert(id.to_string(), b.clone());
        }
        if let Ok(mut e) = self.eta.lock() {
            e.started(id);
        }
        Arc::new(InstanceBar {
            id: id.to_string(),
            bar: b,
            overall: self.overall.clone(),
            eta: self.eta.clone(),
        })
    }
    fn finished(&self, id: &str, status: &str, seconds: f64) {
        if let Some(b) = self.running.lock().ok().and_then(|mut m| m.remove(id)) {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        self.overall.inc(1);
        if let Ok(mut e) = self.eta.lock() {
            e.finished(id, status, seconds);
            self.overall.set_message(eta_text(&e));
        }
        if status != "cached" {
            let _ = self
                .multi
                .println(format!("{status:<7} {id} ({seconds:.2}s)"));
        }
    }
    fn line(&self, msg: &str) {
        let _ = self.multi.println(msg);
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Ok(mut b) = DRAWN_BARS.lock() {
            *b = None;
        }
        self.overall.finish();
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_eta_line() {
        assert_eq!(human_duration(7.4), "7s");
        assert_eq!(human_duration(130.0), "2m10s");
        assert_eq!(human_duration(3720.0), "1h02m");
        let ids: Vec<String> = (0..54).map(|i| format!("at[seed={i}]")).collect();
        let mut s = PlainState {
            done: 0,
            eta: Eta::new(ids.iter().map(|i| (i.as_str(), "train/adapt")), 1),
            messages: Default::default(),
        };
        assert!(progress_line(&s, 54, 1.0).contains("ETA ?"));
        for id in &ids[..12] {
            s.eta.started(id);
            s.eta.finished(id, "ran", 10.0);
            s.done += 1;
        }
        // 10 s each on one slot, 42 left.
        assert_eq!(
            progress_line(&s, 54, 100.0),
            "progress: 12/54 instances, elapsed 1m40s, ETA 7m00s"
        );
        s.messages
            .insert("at[seed=1]".into(), "epoch 2/5 loss 0.5".into());
        assert!(progress_line(&s, 54, 100.0).ends_with("\n  at[seed=1]: epoch 2/5 loss 0.5"));
    }
}
