//! Verified HTTP(S) downloads: streamed to `<dest>.part`, resumed with `Range` when the server
//! supports it, size-bounded, sha256-checked before the file is renamed into place.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bounds and timeouts of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Largest accepted file, in bytes.
    pub max_bytes: u64,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read.
    pub read_timeout: Duration,
}

impl Default for DownloadOptions {
    /// 32 GiB, 30 s connect, 120 s per read.
    fn default() -> Self {
        Self {
            max_bytes: 32 << 30,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// Parses and lower-cases a sha256 given as 64 hex digits.
pub fn parse_sha256(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256 `{s}` is not valid: expected 64 hexadecimal digits");
    }
    Ok(s)
}

/// sha256 (lower-case hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Checks that the file at `path` has the sha256 `expected` (64 hex digits) before it is used.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let want = parse_sha256(expected)?;
    let got = sha256_file(path)?;
    if got != want {
        bail!(
            "checksum mismatch for {}: expected sha256 {want}, got {got}",
            path.display()
        );
    }
    Ok(())
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// A `file:///absolute/path` URL: the archive already on this machine (a disk, a shared
/// filesystem), copied to `part` with the same size bound as a download; the caller then
/// verifies its sha256 as for any download.
fn copy_local(url: &str, src: &Path, part: &Path, opts: &DownloadOptions) -> Result<()> {
    if !src.is_absolute() {
        bail!(
            "{url}: a file URL takes an absolute path, `file:///data/vtab-1k.zip` \
             (three slashes), not a host or a relative path"
        );
    }
    let n = std::fs::metadata(src)
        .with_context(|| format!("{url}: cannot read {}", src.display()))?
        .len();
    if n > opts.max_bytes {
        bail!(
            "{url}: {n} bytes, larger than the {} bytes accepted",
            opts.max_bytes
        );
    }
    std::fs::copy(src, part)
        .with_context(|| format!("{url}: cannot copy to {}", part.display()))?;
    Ok(())
}

/// Downloads `url` to `dest` and checks its sha256 (64 hex digits). If `dest` already exists
/// with the right hash nothing is fetched; a `<dest>.part` left by an interrupted transfer is
/// resumed with a `Range` request (restarted if the server ignores it). On a checksum mismatch
/// the partial file is removed and the error gives expected and actual hashes; a short body
/// gives expected and received byte counts (the partial file is kept for resuming).
pub fn download_verified(
    url: &str,
    sha256: &str,
    dest: &Path,
    opts: &DownloadOptions,
) -> Result<PathBuf> {
    let want = parse_sha256(sha256)?;
    if dest.is_file() && sha256_file(dest)? == want {
        return Ok(dest.to_path_buf());
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let part = part_path(dest);
    fetch_to_part(url, &part, opts)?;
    let got = sha256_file(&part)?;
    if got != want {
        let _ = std::fs::remove_file(&part);
        bail!("checksum mismatch for {url}: expected sha256 {want}, got {got}");
    }
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
    Ok(dest.to_path_buf())
}

fn fetch_to_part(url: &str, part: &Path, opts: &DownloadOptions) -> Result<()> {
    if let Some(local) = url.strip_prefix("file://") {
        return copy_local(url, Path::new(local), part, opts);
    }
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(opts.connect_timeout)
        .timeout_read(opts.read_timeout)
        .build();
    // Byte counts and Range offsets must refer to the stored bytes: no transfer compression.
    let mut req = agent.get(url).set("Accept-Encoding", "identity");
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // Resuming a file that is already complete: the server says the range is empty.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            bail!("download failed: HTTP {code} {} for {url}", r.status_text())
        }
        Err(e) => return Err(anyhow::anyhow!("download failed for {url}: {e}")),
    };
    let resumed = have > 0 && resp.status() == 206;
    let start = if resumed { have } else { 0 };
    let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let total = length.map(|l| l + start);
    if let Some(total) = total {
        if total > opts.max_bytes {
            bail!(
                "download refused: {url} is {total} bytes, more than the limit {}",
                opts.max_bytes
            );
        }
    }
    let mut file = if resumed {
        OpenOptions::new().append(true).open(part)?
    } else {
        File::create(part)?
    };
    let mut reader = resp
        .into_reader()
        .take(opts.max_bytes.saturating_sub(start) + 1);
    let mut got = start;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                file.flush()?;
                bail!(
                    "truncated download from {url}: expected {} bytes, got {got} \
                     (partial file kept at {} for resuming)",
                    total.map_or("more".to_string(), |t| t.to_string()),
                    part.display()
                );
            }
            Err(e) => {
                file.flush()?;
                return Err(anyhow::anyhow!(
                    "download from {url} interrupted after {got} bytes: {e}"
                ));
            }
        };
        if n == 0 {
            break;
        }
        got += n as u64;
        if got > opts.max_bytes {
            drop(file);
            let _ = std::fs::remove_file(part);
            bail!(
                "download refused: {url} exceeds the limit of {} bytes",
                opts.max_bytes
            );
        }
        file.write_all(&buf[..n])?;
    }
    file.flush()?;
    if let Some(total) = total {
        if got != total {
            bail!("truncated download from {url}: expected {total} bytes, got {got}");
        }
    }
    Ok(())
}
