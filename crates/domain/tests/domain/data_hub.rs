//! The HF hub source against a local server standing in for the hub (the endpoints hf-hub 0.4
//! calls: `GET /api/datasets/{repo}/revision/{rev}` and `GET /datasets/{repo}/resolve/{rev}/{file}`
//! with `Range`, answering `ETag`/`X-Linked-Etag`, `X-Repo-Commit` and `Content-Range`).

use crate::data_support::http::{ranged, serve, Log, Response};
use crate::data_support::{write_task, SMALL_SPLITS};
use idat_domain::data::download::sha256_file;
use idat_domain::data::prepare::{prepare, PrepareOptions, VtabSource};
use idat_domain::data::vtab::TaskSpec;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Every file under `dir`, by repository path.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Serves `files` as dataset `owner/vtab`; binary files get an LFS sha256 etag (wrong for
/// names in `corrupt`), text files a git-style etag. Extra sibling names can be injected.
fn hub(
    files: BTreeMap<String, Vec<u8>>,
    corrupt: &'static [&'static str],
    extra: &'static [&'static str],
) -> (String, Log) {
    let mut siblings: Vec<serde_json::Value> = files
        .keys()
        .map(|k| serde_json::json!({ "rfilename": k }))
        .collect();
    siblings.extend(extra.iter().map(|k| serde_json::json!({ "rfilename": k })));
    let info = serde_json::json!({ "siblings": siblings, "sha": COMMIT }).to_string();
    serve(200, Duration::from_secs(60), move |req| {
        if req.path == "/api/datasets/owner/vtab/revision/main" {
            return Response::new(200, info.clone().into_bytes())
                .header("Content-Type", "application/json");
        }
        let Some(name) = req.path.strip_prefix("/datasets/owner/vtab/resolve/main/") else {
            return Response::new(404, b"Repository not found".to_vec());
        };
        let Some(body) = files.get(name) else {
            return Response::new(404, b"Entry not found".to_vec());
        };
        let r = ranged(req, body).header("X-Repo-Commit", COMMIT);
        if name.ends_with(".txt") {
            r.header(
                "ETag",
                &format!("\"{}\"", &blake3::hash(body).to_hex()[..40]),
            )
        } else {
            let mut sha = sha_of(body);
            if corrupt.contains(&name) {
                sha = "f".repeat(64);
            }
            r.header("X-Linked-Etag", &format!("\"{sha}\""))
                .header("ETag", "\"weak\"")
        }
    })
}

fn sha_of(bytes: &[u8]) -> String {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("b"), bytes).unwrap();
    sha256_file(&d.path().join("b")).unwrap()
}

fn source() -> VtabSource {
    VtabSource::Hub {
        repo: "owner/vtab".into(),
        revision: "main".into(),
    }
}

fn opts(endpoint: &str) -> PrepareOptions {
    PrepareOptions {
        hub_endpoint: Some(endpoint.to_string()),
        ..Default::default()
    }
}

#[test]
fn hub_folder_layout_is_fetched_verified_and_validated() {
    let src = tempfile::tempdir().unwrap();
    write_task(src.path(), "toy", 3, SMALL_SPLITS, 8);
    // A task that was not asked for is not fetched.
    write_task(src.path(), "other", 2, &[("test", 2)], 8);
    let (url, log) = hub(files_of(src.path()), &[], &[]);
    let cache = tempfile::tempdir().unwrap();
    let m = prepare(
        &source(),
        &[TaskSpec::custom("toy", "mini", 3)],
        cache.path(),
        &opts(&url),
    )
    .unwrap();
    assert_eq!(m.task("toy").unwrap().splits["test"].count, 5);
    let log = log.lock().unwrap();
    assert!(log.iter().all(|r| !r.path.contains("/other/")));
    assert!(log.iter().any(|r| r.header("range") == Some("bytes=0-0")));
}

#[test]
fn hub_archive_in_repo_is_extracted() {
    let src = tempfile::tempdir().unwrap();
    write_task(src.path(), "toy", 3, SMALL_SPLITS, 8);
    let zip_path = src.path().join("toy.zip");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for (name, bytes) in files_of(&src.path().join("toy")) {
            z.start_file(
                format!("toy/{name}"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            z.write_all(&bytes).unwrap();
            // As zips made on macOS are: an AppleDouble `._` file per file under
            // `__MACOSX/` (never extracted), and a `.DS_Store` beside the task folder
            // (which must not stop the task folder from being unwrapped).
            let (dir, file) = name
                .rsplit_once('/')
                .map_or(("", name.as_str()), |(d, f)| (d, f));
            let sep = if dir.is_empty() { "" } else { "/" };
            z.start_file(
                format!("__MACOSX/toy/{dir}{sep}._{file}"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            z.write_all(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
                .unwrap();
        }
        z.start_file(".DS_Store", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"\x00\x00\x00\x01Bud1").unwrap();
        z.finish().unwrap();
    }
    let files: BTreeMap<String, Vec<u8>> =
        [("toy.zip".to_string(), std::fs::read(&zip_path).unwrap())].into();
    let (url, _log) = hub(files, &[], &[]);
    let cache = tempfile::tempdir().unwrap();
    let m = prepare(
        &source(),
        &[TaskSpec::custom("toy", "mini", 3)],
        cache.path(),
        &opts(&url),
    )
    .unwrap();
    assert_eq!(m.task("toy").unwrap().splits["train800"].count, 4);
    assert!(m.root.starts_with(cache.path().join("hub-extracted")));
}

#[test]
fn hub_flat_task_archive_and_wrapped_folders() {
    // `flat.tar.gz` holds the task's files at its top level; `toy/` sits under `vtab-1k/`.
    let src = tempfile::tempdir().unwrap();
    write_task(src.path(), "flat", 2, SMALL_SPLITS, 8);
    let tgz = src.path().join("flat.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&tgz).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        b.append_dir_all(".", src.path().join("flat")).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let mut files: BTreeMap<String, Vec<u8>> =
        [("flat.tar.gz".to_string(), std::fs::read(&tgz).unwrap())].into();
    // An archive of a task that was not requested is not fetched.
    files.insert("dtd.zip".to_string(), b"never fetched".to_vec());
    let (url, log) = hub(files, &[], &[]);
    let cache = tempfile::tempdir().unwrap();
    let m = prepare(
        &source(),
        &[TaskSpec::custom("flat", "mini", 2)],
        cache.path(),
        &opts(&url),
    )
    .unwrap();
    assert_eq!(m.task("flat").unwrap().splits["test"].count, 5);
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|r| !r.path.ends_with("dtd.zip")));

    let wrapped = tempfile::tempdir().unwrap();
    write_task(&wrapped.path().join("vtab-1k"), "toy", 3, SMALL_SPLITS, 8);
    let (url, _log) = hub(files_of(wrapped.path()), &[], &[]);
    let cache = tempfile::tempdir().unwrap();
    let m = prepare(
        &source(),
        &[TaskSpec::custom("toy", "mini", 3)],
        cache.path(),
        &opts(&url),
    )
    .unwrap();
    assert!(m.root.ends_with("vtab-1k"));
    assert_eq!(m.task("toy").unwrap().splits["val200"].count, 2);
}

#[test]
fn hub_checksum_mismatch_unsafe_names_and_missing_repo_are_errors() {
    let src = tempfile::tempdir().unwrap();
    write_task(src.path(), "toy", 3, &[("test", 2)], 8);
    let mut o = opts("");
    o.splits = vec!["test".into()];
    let spec = [TaskSpec::custom("toy", "mini", 3)];

    let (url, _l) = hub(files_of(src.path()), &["toy/images/test/000001.png"], &[]);
    o.hub_endpoint = Some(url);
    let cache = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        prepare(&source(), &spec, cache.path(), &o).unwrap_err()
    );
    assert!(
        e.contains("checksum mismatch for hub file `toy/images/test/000001.png`")
            && e.contains(&"f".repeat(64)),
        "{e}"
    );

    let (url, _l) = hub(files_of(src.path()), &[], &["toy/../../evil.txt"]);
    o.hub_endpoint = Some(url);
    let e = format!(
        "{:#}",
        prepare(&source(), &spec, cache.path(), &o).unwrap_err()
    );
    assert!(
        e.contains("unsafe file path") && e.contains("contains `..`"),
        "{e}"
    );

    let (url, _l) = hub(files_of(src.path()), &[], &[]);
    o.hub_endpoint = Some(url);
    let missing = VtabSource::Hub {
        repo: "owner/missing".into(),
        revision: "main".into(),
    };
    let e = format!(
        "{:#}",
        prepare(&missing, &spec, cache.path(), &o).unwrap_err()
    );
    assert!(
        e.contains("cannot list dataset owner/missing@main") && e.contains("404"),
        "{e}"
    );
}

/// A model repo `owner/vit` serving `files` (LFS sha256 etags; `corrupt` gets a wrong one).
fn model_hub(files: BTreeMap<String, Vec<u8>>, corrupt: &'static str) -> (String, Log) {
    serve(200, Duration::from_secs(60), move |req| {
        let Some(name) = req.path.strip_prefix("/owner/vit/resolve/main/") else {
            return Response::new(404, b"Repository not found".to_vec());
        };
        let Some(body) = files.get(name) else {
            return Response::new(404, b"Entry not found".to_vec());
        };
        let sha = if name == corrupt {
            "f".repeat(64)
        } else {
            sha_of(body)
        };
        ranged(req, body)
            .header("X-Repo-Commit", COMMIT)
            .header("X-Linked-Etag", &format!("\"{sha}\""))
            .header("ETag", "\"weak\"")
    })
}

#[test]
fn a_sharded_model_on_the_hub_is_fetched_with_its_shards_and_loads() {
    use idat_domain::data::hub::fetch_model_file;
    use idat_domain::nn::checkpoint::{load_backbone, load_tensors, LoadOptions};
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nn/tests/fixtures/ckpt");
    let files = files_of(&fixture.join("hf_vit_sharded"));
    assert_eq!(files.len(), 4);
    let (url, log) = model_hub(files.clone(), "");
    let cache = tempfile::tempdir().unwrap();
    let index = fetch_model_file(
        "owner/vit",
        "main",
        "model.safetensors.index.json",
        &url,
        cache.path(),
    )
    .unwrap();
    let fetched: Vec<String> = log.lock().unwrap().iter().map(|r| r.path.clone()).collect();
    for name in files.keys() {
        assert!(
            fetched.iter().any(|p| p.ends_with(name.as_str())),
            "{name} not fetched: {fetched:?}"
        );
    }
    // The hub cache links snapshots/<commit>/ to blobs/: the loader follows those links.
    let cfg = idat_domain::nn::vit::VitConfig::preset("vit_tiny_patch16_224").unwrap();
    let cfg = idat_domain::nn::vit::VitConfig {
        img_size: 16,
        patch_size: 8,
        embed_dim: 8,
        depth: 1,
        num_heads: 2,
        ..cfg
    };
    let exp: Vec<(String, Vec<usize>)> = cfg
        .expected_tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect();
    let r = load_backbone(
        &index,
        &exp,
        &LoadOptions::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let want = load_tensors(
        &fixture.join("hf_vit_sharded_timm.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .0;
    assert_eq!(
        r.tensors.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );

    // A shard whose bytes do not match its sha256 is an error naming it.
    let (url, _l) = model_hub(files, "model-00002-of-00003.safetensors");
    let cache = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        fetch_model_file(
            "owner/vit",
            "main",
            "model.safetensors.index.json",
            &url,
            cache.path()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("checksum mismatch for hub file `model-00002-of-00003.safetensors`"),
        "{e}"
    );
    // The default file missing from a sharded repo: the error says what to fetch instead.
    let e = format!(
        "{:#}",
        fetch_model_file("owner/vit", "main", "model.safetensors", &url, cache.path()).unwrap_err()
    );
    assert!(
        e.contains("holds `model.safetensors.index.json` instead"),
        "{e}"
    );
}
