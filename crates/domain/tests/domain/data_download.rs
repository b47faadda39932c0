//! Verified downloads and the archive source, against a local HTTP server on 127.0.0.1:
//! success, resume after a truncated transfer, wrong checksum, 404, size bound.

use crate::data_support::http::{ranged, serve, Response};
use crate::data_support::{write_task, SMALL_SPLITS};
use idat_domain::data::download::{download_verified, sha256_file, DownloadOptions};
use idat_domain::data::prepare::{prepare, PrepareOptions, VtabSource};
use idat_domain::data::vtab::TaskSpec;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn sha_hex(bytes: &[u8]) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    sha256_file(&p).unwrap()
}

fn opts() -> DownloadOptions {
    DownloadOptions {
        max_bytes: 1 << 20,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
    }
}

#[test]
fn truncated_transfer_is_reported_then_resumed_with_range() {
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = sha_hex(&body);
    let calls = Arc::new(AtomicUsize::new(0));
    let (c2, b2) = (calls.clone(), body.clone());
    let (url, log) = serve(4, Duration::from_secs(30), move |req| {
        if c2.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut r = Response::new(200, b2.clone());
            r.send_only = Some(20_000);
            r
        } else {
            ranged(req, &b2)
        }
    });
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("data.bin");
    let e = format!(
        "{:#}",
        download_verified(&format!("{url}/data.bin"), &sha, &dest, &opts()).unwrap_err()
    );
    assert!(
        e.contains("truncated download") && e.contains("expected 50000 bytes, got 20000"),
        "{e}"
    );
    assert!(!dest.exists());
    download_verified(&format!("{url}/data.bin"), &sha, &dest, &opts()).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let log = log.lock().unwrap();
    assert_eq!(log[1].header("range"), Some("bytes=20000-"));
    drop(log);
    // Already present with the right hash: nothing fetched.
    let before = calls.load(Ordering::SeqCst);
    download_verified(&format!("{url}/data.bin"), &sha, &dest, &opts()).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

#[test]
fn wrong_checksum_404_and_size_bound() {
    let body = b"some archive bytes".to_vec();
    let b2 = body.clone();
    let (url, _log) = serve(5, Duration::from_secs(30), move |req| {
        if req.path == "/missing.zip" {
            Response::new(404, b"nope".to_vec())
        } else if req.path == "/big" {
            Response::new(200, vec![0u8; 2 << 20])
        } else {
            ranged(req, &b2)
        }
    });
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("a.zip");
    let wrong = "0".repeat(64);
    let e = format!(
        "{:#}",
        download_verified(&format!("{url}/a.zip"), &wrong, &dest, &opts()).unwrap_err()
    );
    assert!(
        e.contains("checksum mismatch") && e.contains(&wrong) && e.contains(&sha_hex(&body)),
        "{e}"
    );
    assert!(!dest.exists() && !d.path().join("a.zip.part").exists());
    let e = format!(
        "{:#}",
        download_verified(&format!("{url}/missing.zip"), &wrong, &dest, &opts()).unwrap_err()
    );
    assert!(e.contains("HTTP 404") && e.contains("/missing.zip"), "{e}");
    let e = format!(
        "{:#}",
        download_verified(&format!("{url}/big"), &wrong, &dest, &opts()).unwrap_err()
    );
    assert!(e.contains("more than the limit 1048576"), "{e}");
    let e = format!(
        "{:#}",
        download_verified(&format!("{url}/a.zip"), "xyz", &dest, &opts()).unwrap_err()
    );
    assert!(e.contains("expected 64 hexadecimal digits"), "{e}");
}

/// `dir/vtab.tar.gz`: a tiny dataset (task `toy`, 3 classes) wrapped in `vtab-1k/`.
fn tiny_vtab_tgz(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("vtab-1k");
    write_task(&root, "toy", 3, SMALL_SPLITS, 8);
    let tgz = dir.join("vtab.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&tgz).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    b.append_dir_all("vtab-1k", &root).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    tgz
}

#[test]
fn archive_source_downloads_extracts_and_validates() {
    let src = tempfile::tempdir().unwrap();
    let tgz = tiny_vtab_tgz(src.path());
    let bytes = std::fs::read(&tgz).unwrap();
    let sha = sha_hex(&bytes);
    let (url, log) = serve(4, Duration::from_secs(30), move |req| ranged(req, &bytes));
    let cache = tempfile::tempdir().unwrap();
    let source: VtabSource = serde_json::from_value(serde_json::json!({
        "kind": "archive", "url": format!("{url}/vtab.tar.gz"), "sha256": sha
    }))
    .unwrap();
    let specs = [TaskSpec::custom("toy", "mini", 3)];
    let m = prepare(&source, &specs, cache.path(), &PrepareOptions::default()).unwrap();
    assert_eq!(m.task("toy").unwrap().splits["train800val200"].count, 6);
    assert!(m.root.ends_with("vtab-1k"));
    // A second prepare reuses the extracted copy (no new request).
    let n = log.lock().unwrap().len();
    let m2 = prepare(&source, &specs, cache.path(), &PrepareOptions::default()).unwrap();
    assert_eq!(m2, m);
    assert_eq!(log.lock().unwrap().len(), n);
}

#[test]
fn an_archive_on_this_machine_is_a_file_url_checked_like_a_download() {
    let src = tempfile::tempdir().unwrap();
    let tgz = tiny_vtab_tgz(src.path());
    let sha = sha_hex(&std::fs::read(&tgz).unwrap());
    let specs = [TaskSpec::custom("toy", "mini", 3)];
    let source = |url: String, sha: &str| -> VtabSource {
        serde_json::from_value(serde_json::json!({"kind": "archive", "url": url, "sha256": sha}))
            .unwrap()
    };
    let cache = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tgz.display());
    let m = prepare(
        &source(url.clone(), &sha),
        &specs,
        cache.path(),
        &PrepareOptions::default(),
    )
    .unwrap();
    assert_eq!(m.task("toy").unwrap().splits["train800val200"].count, 6);
    // The checksum is checked as for a download.
    let other = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        prepare(
            &source(url, &"0".repeat(64)),
            &specs,
            other.path(),
            &PrepareOptions::default()
        )
        .unwrap_err()
    );
    assert!(e.contains("checksum mismatch"), "{e}");
    // A relative file URL is refused with the form to use.
    let e = format!(
        "{:#}",
        prepare(
            &source("file://v.tar.gz".into(), &sha),
            &specs,
            other.path(),
            &PrepareOptions::default()
        )
        .unwrap_err()
    );
    assert!(e.contains("file:///data/vtab-1k.zip"), "{e}");
    // The archive given as a local folder: the error gives the archive form, which works.
    let local: VtabSource =
        serde_json::from_value(serde_json::json!({"kind": "local", "path": tgz})).unwrap();
    let e = format!(
        "{:#}",
        prepare(&local, &specs, other.path(), &PrepareOptions::default()).unwrap_err()
    );
    assert!(
        e.contains("is a file, not a dataset folder")
            && e.contains(&format!("url: \"file://{}\"", tgz.display())),
        "{e}"
    );
}

#[test]
fn source_params_reject_unknown_fields() {
    let e = serde_json::from_value::<VtabSource>(serde_json::json!({
        "kind": "local", "path": "/data", "pth": 1
    }))
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `pth`"), "{e}");
    let s: VtabSource =
        serde_json::from_value(serde_json::json!({"kind": "hub", "repo": "a/b"})).unwrap();
    assert_eq!(
        s,
        VtabSource::Hub {
            repo: "a/b".into(),
            revision: "main".into()
        }
    );
    let schema = serde_json::to_value(schemars::schema_for!(VtabSource))
        .unwrap()
        .to_string();
    assert!(
        schema.contains("sha256") && schema.contains("revision") && schema.contains("archive"),
        "{schema}"
    );
}
