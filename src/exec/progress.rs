//! Run progress: indicatif bars on a terminal, plain lines otherwise, nothing with `--quiet`.
use crate::stages::{NoProgress, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;

/// What the executor tells the user while running.
pub trait Reporter: Send + Sync {
    /// An instance started; the returned sink receives its own progress.
    fn started(&self, id: &str) -> Arc<dyn Progress>;
    /// An instance ended with `status` (`ran`, `cached`, `failed`, `skipped`).
    fn finished(&self, id: &str, status: &str, seconds: f64);
    /// Print a line without breaking the bars.
    fn line(&self, msg: &str);
}

/// Choose bars, plain lines or silence.
pub fn reporter(total: u64, quiet: bool) -> Arc<dyn Reporter> {
    if quiet {
        Arc::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bars::new(total))
    } else {
        Arc::new(Plain)
    }
}

/// Prints nothing.
pub struct Quiet;
impl Reporter for Quiet {
    fn started(&self, _: &str) -> Arc<dyn Progress> {
        Arc::new(NoProgress)
    }
    fn finished(&self, _: &str, _: &str, _: f64) {}
    fn line(&self, _: &str) {}
}

/// One line per event on stderr.
pub struct Plain;
impl Reporter for Plain {
    fn started(&self, id: &str) -> Arc<dyn Progress> {
        eprintln!("start   {id}");
        Arc::new(NoProgress)
    }
    fn finished(&self, id: &str, status: &str, seconds: f64) {
        eprintln!("{status:<7} {id} ({seconds:.2}s)");
    }
    fn line(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

/// An overall bar with ETA plus one bar per running instance.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    running: std::sync::Mutex<std::collections::HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new(total: u64) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} instances  {elapsed} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            multi,
            overall,
            running: Default::default(),
        }
    }
}

struct InstanceBar(ProgressBar);
impl Progress for InstanceBar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos);
    }
    fn set_message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
}

impl Reporter for Bars {
    fn started(&self, id: &str) -> Arc<dyn Progress> {
        let b = self.multi.insert_before(&self.overall, ProgressBar::new(0));
        b.set_style(
            ProgressStyle::with_template("  {prefix} {bar:20} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(id.to_string());
        if let Ok(mut m) = self.running.lock() {
            m.insert(id.to_string(), b.clone());
        }
        Arc::new(InstanceBar(b))
    }
    fn finished(&self, id: &str, status: &str, seconds: f64) {
        if let Some(b) = self.running.lock().ok().and_then(|mut m| m.remove(id)) {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        self.overall.inc(1);
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
        self.overall.finish();
        let _ = self.multi.clear();
    }
}
