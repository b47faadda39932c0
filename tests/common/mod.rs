//! Shared helpers of the runner's end-to-end tests.
#![allow(dead_code)]
pub mod kinds;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The variable that makes a harness-less test binary act as the `idat-pipe` CLI with the
/// test kinds (see tests/runner_e2e.rs).
pub const CLI_ENV: &str = "IDAT_TESTKIT_CLI";

/// A pipeline under tests/pipelines/, as an absolute path.
pub fn pipeline(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pipelines")
        .join(name)
        .display()
        .to_string()
}

/// This test binary as the CLI (with the test kinds), run in `dir`, without the user's
/// `IDAT_CACHE_DIR`.
pub fn cli_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env(CLI_ENV, "1")
        .env_remove("IDAT_CACHE_DIR")
        .current_dir(dir)
        .args(args);
    c
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (s(&o.stdout), s(&o.stderr))
}
