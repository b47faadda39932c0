//! Checkpoint loading (timm safetensors, Google npz in three layouts), mismatch
//! reports, position-embedding resampling against timm, bounded parsing of
//! corrupted files, and the save/load round trip. Fixtures: scripts/ckpt_fixtures.py.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use idat_pipe::nn::checkpoint::{
    load_backbone, load_tensors, resample_abs_pos_embed, save_tensors, LoadOptions, LoadedWeights,
};

const DIM: usize = 32;
const DEPTH: usize = 2;
const CLASSES: usize = 10;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ckpt")
        .join(name)
}

/// timm names and shapes of the fixture ViT (dim 32, depth 2, patch 8) at `img` pixels.
fn expected(img: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
    let tokens = 1 + (img / 8) * (img / 8);
    let mut e = vec![
        ("cls_token".to_string(), vec![1, 1, DIM]),
        ("pos_embed".to_string(), vec![1, tokens, DIM]),
        ("patch_embed.proj.weight".to_string(), vec![DIM, 3, 8, 8]),
        ("patch_embed.proj.bias".to_string(), vec![DIM]),
    ];
    for i in 0..DEPTH {
        let b = format!("blocks.{i}.");
        for (n, s) in [
            ("norm1.weight", vec![DIM]),
            ("norm1.bias", vec![DIM]),
            ("attn.qkv.weight", vec![3 * DIM, DIM]),
            ("attn.qkv.bias", vec![3 * DIM]),
            ("attn.proj.weight", vec![DIM, DIM]),
            ("attn.proj.bias", vec![DIM]),
            ("norm2.weight", vec![DIM]),
            ("norm2.bias", vec![DIM]),
            ("mlp.fc1.weight", vec![4 * DIM, DIM]),
            ("mlp.fc1.bias", vec![4 * DIM]),
            ("mlp.fc2.weight", vec![DIM, 4 * DIM]),
            ("mlp.fc2.bias", vec![DIM]),
        ] {
            e.push((format!("{b}{n}"), s));
        }
    }
    e.push(("norm.weight".into(), vec![DIM]));
    e.push(("norm.bias".into(), vec![DIM]));
    e.push(("head.weight".into(), vec![classes, DIM]));
    e.push(("head.bias".into(), vec![classes]));
    e
}

fn load(
    name: &str,
    exp: &[(String, Vec<usize>)],
    opts: &LoadOptions,
) -> anyhow::Result<LoadedWeights> {
    load_backbone(&fixture(name), exp, opts, &Device::Cpu)
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn reference() -> BTreeMap<String, Tensor> {
    load(
        "tiny_vit.safetensors",
        &expected(32, CLASSES),
        &LoadOptions::default(),
    )
    .unwrap()
    .tensors
}

fn assert_same(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
    f16: bool,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, w) in want {
        let w = if f16 {
            w.to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        } else {
            w.clone()
        };
        assert_eq!(got[k].dims(), w.dims(), "{what}: {k}");
        assert_eq!(vals(&got[k]), vals(&w), "{what}: {k}");
    }
}

#[test]
fn safetensors_loads_every_expected_tensor() {
    let exp = expected(32, CLASSES);
    let r = load("tiny_vit.safetensors", &exp, &LoadOptions::default()).unwrap();
    assert_eq!(r.tensors.len(), exp.len());
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    for (n, s) in &exp {
        assert_eq!(r.tensors[n].dims(), s.as_slice(), "{n}");
        assert_eq!(r.tensors[n].dtype(), DType::F32);
    }
    // Random non-trivial values (biases and norms were perturbed by the script).
    assert!(vals(&r.tensors["blocks.1.attn.qkv.bias"])
        .iter()
        .any(|v| v.abs() > 1e-3));
}

#[test]
fn google_npz_equals_safetensors() {
    let r = load(
        "tiny_vit_google.npz",
        &expected(32, CLASSES),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_same(&r.tensors, &reference(), false, "vit_jax npz");
}

#[test]
fn opt_target_npz_in_f16_equals_rounded_safetensors_and_reports_extras() {
    let exp = expected(32, CLASSES);
    let err = format!(
        "{:#}",
        load("tiny_vit_opt_target_f16.npz", &exp, &LoadOptions::default()).unwrap_err()
    );
    assert!(err.contains("2 unexpected"), "{err}");
    assert!(
        err.contains("opt/target/pre_logits/kernel [32, 32]"),
        "{err}"
    );
    assert!(err.contains("opt/target/pre_logits/bias [32]"), "{err}");
    assert!(err.contains("tiny_vit_opt_target_f16.npz"), "{err}");
    let opts = LoadOptions {
        allow_unexpected: true,
        ..Default::default()
    };
    let r = load("tiny_vit_opt_target_f16.npz", &exp, &opts).unwrap();
    assert_same(&r.tensors, &reference(), true, "opt/target npz");
    assert!(
        r.notes.iter().any(|n| n.contains("dropped 2 unexpected")),
        "{:?}",
        r.notes
    );
}

#[test]
fn big_vision_scanned_npz_equals_rounded_safetensors() {
    let r = load(
        "tiny_vit_big_vision_f16.npz",
        &expected(32, CLASSES),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_same(&r.tensors, &reference(), true, "big_vision npz");
}

#[test]
fn one_error_lists_every_missing_and_misshaped_tensor() {
    let mut exp = expected(32, 5); // head of 5 classes vs 10 in the file
    exp.push(("blocks.2.norm1.weight".into(), vec![DIM]));
    exp.push(("blocks.2.norm1.bias".into(), vec![DIM]));
    let err = format!(
        "{:#}",
        load("tiny_vit.safetensors", &exp, &LoadOptions::default()).unwrap_err()
    );
    for needle in [
        "2 missing",
        "blocks.2.norm1.weight [32]",
        "blocks.2.norm1.bias [32]",
        "2 mis-shaped",
        "head.weight: checkpoint [10, 32] vs model [5, 32]",
        "head.bias: checkpoint [10] vs model [5]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    // Partial load allowed + new head ignored: loads the rest, notes say what happened.
    let opts = LoadOptions {
        allow_partial: true,
        ignore: vec!["head.*".into()],
        ..Default::default()
    };
    let r = load("tiny_vit.safetensors", &exp, &opts).unwrap();
    assert!(!r.tensors.contains_key("head.weight") && r.tensors.contains_key("norm.weight"));
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("ignored 2") && n.contains("head.weight")),
        "{:?}",
        r.notes
    );
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("partial load") && n.contains("blocks.2.norm1.bias")),
        "{:?}",
        r.notes
    );
}

#[test]
fn unexpected_tensors_are_refused_unless_allowed() {
    let exp: Vec<_> = expected(32, CLASSES)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect();
    let err = format!(
        "{:#}",
        load("tiny_vit.safetensors", &exp, &LoadOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("2 unexpected") && err.contains("head.weight [10, 32]"),
        "{err}"
    );
    let r = load(
        "tiny_vit.safetensors",
        &exp,
        &LoadOptions {
            allow_unexpected: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.tensors.len(), exp.len());
}

fn resampled_fixture() -> BTreeMap<String, Tensor> {
    load_tensors(&fixture("pos_embed_resampled.safetensors"), &Device::Cpu)
        .unwrap()
        .0
}

fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let worst = vals(got)
        .iter()
        .zip(vals(want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: max difference {worst}");
}

#[test]
fn pos_embed_is_resampled_like_timm_when_the_grid_differs() {
    let fx = resampled_fixture();
    for (img, key) in [(48, "grid6x6_aa"), (24, "grid3x3_aa")] {
        let exp = expected(img, CLASSES);
        let err = format!(
            "{:#}",
            load("tiny_vit.safetensors", &exp, &LoadOptions::default()).unwrap_err()
        );
        assert!(err.contains("pos_embed: checkpoint [1, 17, 32]"), "{err}");
        let opts = LoadOptions {
            resample_pos_embed: true,
            ..Default::default()
        };
        let r = load("tiny_vit.safetensors", &exp, &opts).unwrap();
        assert_close(&r.tensors["pos_embed"], &fx[key], 1e-5, key);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("resampled pos_embed 17 ->")),
            "{:?}",
            r.notes
        );
        // The same through the npz path.
        let r = load("tiny_vit_google.npz", &exp, &opts).unwrap();
        assert_close(&r.tensors["pos_embed"], &fx[key], 1e-5, key);
    }
}

#[test]
fn resample_function_matches_timm_with_and_without_antialias() {
    let fx = resampled_fixture();
    let pe = reference()["pos_embed"].clone();
    for (key, grid) in [("6x6", (6, 6)), ("3x3", (3, 3)), ("3x5", (3, 5))] {
        for aa in [true, false] {
            let name = format!("grid{key}_{}", if aa { "aa" } else { "noaa" });
            let got = resample_abs_pos_embed(&pe, grid, None, 1, aa).unwrap();
            assert_close(&got, &fx[&name], 1e-5, &name);
        }
    }
    // The class token is carried over unchanged.
    let got = resample_abs_pos_embed(&pe, (6, 6), None, 1, true).unwrap();
    assert_eq!(
        vals(&got.narrow(1, 0, 1).unwrap()),
        vals(&pe.narrow(1, 0, 1).unwrap())
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn corrupted_safetensors_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("tiny_vit.safetensors")).unwrap();
    let exp = expected(32, CLASSES);
    let opts = LoadOptions::default();
    let truncated = write(dir.path(), "trunc.safetensors", &good[..good.len() - 100]);
    let err = format!(
        "{:#}",
        load_backbone(&truncated, &exp, &opts, &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains("trunc.safetensors") && err.contains("truncated"),
        "{err}"
    );
    // A header declaring a huge tensor is refused from the header alone.
    let header = br#"{"x":{"dtype":"F32","shape":[100000000000,100000],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    let lying = write(dir.path(), "lying.safetensors", &bytes);
    let err = format!("{:#}", load_tensors(&lying, &Device::Cpu).unwrap_err());
    assert!(err.contains("lying.safetensors"), "{err}");
    // A header length larger than the file.
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.push(b'{');
    let huge = write(dir.path(), "huge.safetensors", &bytes);
    assert!(load_tensors(&huge, &Device::Cpu).is_err());
    let pth = write(dir.path(), "model.pth", b"\x80\x02garbage");
    let err = format!(
        "{:#}",
        load_backbone(&pth, &exp, &opts, &Device::Cpu).unwrap_err()
    );
    assert!(err.contains("pickle"), "{err}");
}

/// A zip holding one `.npy` entry with the given header text and data bytes.
fn npz_with(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    zw.start_file(
        "embedding/bias.npy",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(data);
    zw.write_all(&npy).unwrap();
    zw.finish().unwrap();
    p
}

#[test]
fn corrupted_npz_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let exp = expected(32, CLASSES);
    let opts = LoadOptions::default();
    // Declared shape larger than the stored data: refused before reading the data.
    let p = npz_with(
        dir.path(),
        "lie.npz",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }\n",
        &[0; 16],
    );
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &opts, &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains("lie.npz")
            && err.contains("embedding/bias.npy")
            && err.contains("[1000000000]"),
        "{err}"
    );
    let p = npz_with(
        dir.path(),
        "dtype.npz",
        "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n",
        &[0; 16],
    );
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &opts, &Device::Cpu).unwrap_err()
    );
    assert!(err.contains("'<i8'") || err.contains("\"<i8\""), "{err}");
    // A valid 4-element entry loads and is then reported as mis-shaped against the model.
    let data: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let p = npz_with(
        dir.path(),
        "ok.npz",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n",
        &data,
    );
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &opts, &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains("patch_embed.proj.bias: checkpoint [4] vs model [32]"),
        "{err}"
    );
    // Truncated archive.
    let good = std::fs::read(fixture("tiny_vit_google.npz")).unwrap();
    let p = write(dir.path(), "trunc.npz", &good[..good.len() / 2]);
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &opts, &Device::Cpu).unwrap_err()
    );
    assert!(err.contains("trunc.npz"), "{err}");
}

#[test]
fn save_and_load_round_trip_keeps_dtypes_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trainable.safetensors");
    let dev = Device::Cpu;
    let mut m = BTreeMap::new();
    m.insert(
        "head.weight".to_string(),
        Tensor::new(&[[1f32, -2.5], [3.0, 0.25]], &dev).unwrap(),
    );
    m.insert("step".to_string(), Tensor::new(&[7f64], &dev).unwrap());
    m.insert(
        "half".to_string(),
        Tensor::new(&[1.5f32], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap(),
    );
    let meta = BTreeMap::from([("format".to_string(), "idat-pipe".to_string())]);
    save_tensors(&path, &m, &meta).unwrap();
    // Atomic write leaves no temporary file behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let (back, bmeta) = load_tensors(&path, &dev).unwrap();
    assert_eq!(bmeta, meta);
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        m.keys().collect::<Vec<_>>()
    );
    for (k, v) in &m {
        assert_eq!(back[k].dtype(), v.dtype(), "{k}");
        assert_eq!(
            vals(&back[k].to_dtype(DType::F32).unwrap()),
            vals(&v.to_dtype(DType::F32).unwrap()),
            "{k}"
        );
    }
    let err = format!(
        "{:#}",
        save_tensors(&dir.path().join("no/such/dir/x.safetensors"), &m, &meta).unwrap_err()
    );
    assert!(err.contains("no/such/dir"), "{err}");
}

#[test]
fn saving_is_byte_deterministic_with_metadata() {
    // Identical tensors + metadata must give identical bytes: entry hashes (and so
    // downstream cache keys) depend on them.
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "b.weight".to_string(),
        Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap(),
    );
    tensors.insert(
        "a.bias".to_string(),
        Tensor::new(&[1u8, 2, 3], &Device::Cpu).unwrap(),
    );
    let meta: BTreeMap<String, String> = (0..12)
        .map(|i| (format!("key{i}"), format!("value {i}")))
        .collect();
    let mut files = Vec::new();
    for i in 0..4 {
        let p = dir.path().join(format!("t{i}.safetensors"));
        save_tensors(&p, &tensors, &meta).unwrap();
        files.push(std::fs::read(&p).unwrap());
    }
    assert!(
        files.windows(2).all(|w| w[0] == w[1]),
        "same content gave different bytes"
    );
    let (back, back_meta) = load_tensors(&dir.path().join("t0.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(back_meta, meta);
    assert_eq!(vals(&back["b.weight"]), vec![0., 1., 2., 3., 4., 5.]);
    assert_eq!(back["a.bias"].to_vec1::<u8>().unwrap(), vec![1, 2, 3]);
}
