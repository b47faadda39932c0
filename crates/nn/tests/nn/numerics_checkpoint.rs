//! Checkpoint loading (timm safetensors, Google npz in three layouts), mismatch
//! reports, position-embedding resampling against timm, bounded parsing of
//! corrupted files, and the save/load round trip. Fixtures: scripts/ckpt_fixtures.py.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use idat_nn::checkpoint::{
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
fn opt_target_npz_in_f16_equals_rounded_safetensors_and_drops_pre_logits() {
    // The fixture carries `opt/target/pre_logits/{kernel,bias}` like the original
    // ImageNet-21k ViT-B_16.npz: timm drops them, so do we, with a note.
    let exp = expected(32, CLASSES);
    let r = load("tiny_vit_opt_target_f16.npz", &exp, &LoadOptions::default()).unwrap();
    assert_same(&r.tensors, &reference(), true, "opt/target npz");
    assert!(
        r.notes.iter().any(|n| n.contains("pre-logits")
            && n.contains("opt/target/pre_logits/kernel")
            && n.contains("opt/target/pre_logits/bias")),
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

// ---- Published layouts, wrapped state dicts, non-parameter entries, non-finite values ----

/// The entries of an `.npz`: (key without `.npy`, the raw `.npy` bytes), in file order.
fn npz_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).unwrap();
            let name = e.name().strip_suffix(".npy").unwrap().to_string();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (name, b)
        })
        .collect()
}

fn write_npz(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut zw = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (k, b) in entries {
        zw.start_file(format!("{k}.npy"), zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(b).unwrap();
    }
    zw.finish().unwrap();
}

/// A version-1 `.npy` with the given header fields and data.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Offset of the data and the item size of a version-1 float `.npy`.
fn npy_layout(b: &[u8]) -> (usize, usize) {
    let n = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + n]).unwrap();
    let size = if header.contains("f2'") {
        2
    } else if header.contains("f4'") {
        4
    } else {
        8
    };
    (10 + n, size)
}

/// The bytes of `v` as a little-endian float of `size` bytes.
fn float_le(v: f64, size: usize) -> Vec<u8> {
    match size {
        2 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        4 => (v as f32).to_le_bytes().to_vec(),
        _ => v.to_le_bytes().to_vec(),
    }
}

/// Sets element `i` of the float `.npy` `b` to `v`.
fn poison_npy(b: &mut [u8], i: usize, v: f64) {
    let (off, size) = npy_layout(b);
    b[off + i * size..off + (i + 1) * size].copy_from_slice(&float_le(v, size));
}

/// The original ImageNet-21k layout: the fixture's vit_jax weights plus `pre_logits/*`
/// and a 21843-class head, optionally under `prefix` next to optimizer entries, a
/// step counter and a pickled object.
fn in21k_npz(dir: &Path, prefix: &str, with_optimizer: bool) -> PathBuf {
    let mut entries: Vec<(String, Vec<u8>)> = npz_entries(&fixture("tiny_vit_google.npz"))
        .into_iter()
        .filter(|(k, _)| !k.starts_with("head/"))
        .map(|(k, b)| (format!("{prefix}{k}"), b))
        .collect();
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
            .collect()
    };
    entries.push((
        format!("{prefix}pre_logits/kernel"),
        npy("'<f4'", &[DIM, DIM], &f32s(DIM * DIM)),
    ));
    entries.push((
        format!("{prefix}pre_logits/bias"),
        npy("'<f4'", &[DIM], &f32s(DIM)),
    ));
    entries.push((
        format!("{prefix}head/kernel"),
        npy("'<f4'", &[DIM, 21843], &f32s(DIM * 21843)),
    ));
    entries.push((
        format!("{prefix}head/bias"),
        npy("'<f4'", &[21843], &f32s(21843)),
    ));
    if with_optimizer {
        entries.push((
            "opt/state/step".into(),
            npy("'<i8'", &[], &7i64.to_le_bytes()),
        ));
        entries.push((
            "opt/state/param_states/embedding/bias/grad_ema".into(),
            npy("'<f4'", &[DIM], &f32s(DIM)),
        ));
        // A pickled object (np.savez of a dict): never unpickled, only skipped.
        entries.push((
            "opt/hparams".into(),
            npy("'|O'", &[], b"\x80\x02}q\x00.".as_slice()),
        ));
        // A structured record (its descr is a list).
        entries.push((
            "opt/state/record".into(),
            npy("[('a', '<i4'), ('b', '<f8', (2,))]", &[1], &[0u8; 20]),
        ));
    }
    let p = dir.join(format!(
        "in21k{}{}.npz",
        prefix.replace('/', "_"),
        if with_optimizer { "_opt" } else { "" }
    ));
    write_npz(&p, &entries);
    p
}

/// What `model/vit` asks of a pretrained file: the backbone, head ignored.
fn backbone_expected() -> Vec<(String, Vec<usize>)> {
    expected(32, CLASSES)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect()
}

fn without_head(m: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    m.iter()
        .filter(|(k, _)| !k.starts_with("head."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn original_in21k_npz_loads_with_pre_logits_dropped_under_any_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        ignore: vec!["head.".into()],
        ..Default::default()
    };
    let want = without_head(&reference());
    for (prefix, with_opt) in [("", false), ("opt/target/", false), ("opt/target/", true)] {
        let p = in21k_npz(dir.path(), prefix, with_opt);
        let r = load_backbone(&p, &backbone_expected(), &opts, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{prefix} {with_opt}: {e:#}"));
        assert_same(&r.tensors, &want, false, prefix);
        let notes = r.notes.join("\n");
        assert!(
            notes.contains(&format!("{prefix}pre_logits/kernel")) && notes.contains("pre-logits"),
            "{notes}"
        );
        assert!(
            notes.contains("ignored 2") && notes.contains("head.weight"),
            "{notes}"
        );
        if with_opt {
            // Optimizer entries outside the prefix: set aside, not required to carry it.
            assert!(
                notes.contains("outside the parameters under `opt/target/`")
                    && notes.contains("opt/state/param_states/embedding/bias/grad_ema"),
                "{notes}"
            );
            // Non-float entries: skipped with their dtype, the pickle never unpickled.
            assert!(notes.contains("skipped 3 non-parameter"), "{notes}");
            assert!(notes.contains("opt/state/step ('<i8')"), "{notes}");
            assert!(
                notes.contains("opt/hparams ('|O', a pickled object"),
                "{notes}"
            );
            assert!(notes.contains("opt/state/record ([('a', '<i4')"), "{notes}");
        }
        // The 21843-class head itself is converted and returned on request (infer).
        let r = load_backbone(
            &p,
            &backbone_expected(),
            &LoadOptions {
                pass_through: vec!["head.".into()],
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(r.extra["head.weight"].dims(), &[21843, DIM]);
        assert_eq!(r.extra["head.bias"].dims(), &[21843]);
        let w = r.extra["head.weight"].to_vec2::<f32>().unwrap();
        // head/kernel [D, C] row-major value at (d, c) is ((d * C + c) % 7) * 0.01.
        assert_eq!(w[5][3], ((3 * 21843 + 5) % 7) as f32 * 0.01);
    }
}

#[test]
fn an_integer_array_at_a_parameter_key_is_an_error_naming_it() {
    // A step counter is skipped; the same dtype where a weight should be leaves the
    // weight missing, and the error says which entry was skipped and why.
    let dir = tempfile::tempdir().unwrap();
    let mut entries = npz_entries(&fixture("tiny_vit_google.npz"));
    for (k, b) in entries.iter_mut() {
        if k == "embedding/bias" {
            *b = npy("'<i8'", &[DIM], &[0u8; DIM * 8]);
        }
    }
    let p = dir.path().join("int.npz");
    write_npz(&p, &entries);
    let err = format!(
        "{:#}",
        load_backbone(
            &p,
            &expected(32, CLASSES),
            &LoadOptions::default(),
            &Device::Cpu
        )
        .unwrap_err()
    );
    assert!(
        err.contains("1 missing") && err.contains("patch_embed.proj.bias [32]"),
        "{err}"
    );
    assert!(err.contains("embedding/bias ('<i8')"), "{err}");
}

#[test]
fn wrapped_state_dicts_lose_their_common_prefix_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference();
    for (prefix, wrapper) in [
        ("module.", "DDP / DataParallel"),
        ("model.", "a Lightning module or training wrapper"),
        ("backbone.", "a model holding the ViT as a submodule"),
        ("module.model.", "DDP / DataParallel"),
        ("_orig_mod.encoder.", "torch.compile"),
    ] {
        let prefixed: BTreeMap<String, Tensor> = want
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
            .collect();
        let p = dir.path().join(format!("{prefix}safetensors"));
        save_tensors(&p, &prefixed, &BTreeMap::new()).unwrap();
        let r = load_backbone(
            &p,
            &expected(32, CLASSES),
            &LoadOptions::default(),
            &Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("{prefix}: {e:#}"));
        assert_same(&r.tensors, &want, false, prefix);
        assert_eq!(
            r.notes,
            vec![format!(
                "removed the prefix `{prefix}` that all {} tensor names carry (a wrapped \
                 state dict: {wrapper}), as timm's clean_state_dict does",
                want.len()
            )]
        );
    }
}

#[test]
fn mismatch_reports_give_counts_and_a_few_names_not_hundreds_of_lines() {
    let dir = tempfile::tempdir().unwrap();
    // 300 names of another architecture, all under `module.`.
    let mut other = BTreeMap::new();
    for i in 0..300 {
        other.insert(
            format!("module.layer{}.{}.conv.weight", i / 10, i % 10),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let p = dir.path().join("resnet.safetensors");
    save_tensors(&p, &other, &BTreeMap::new()).unwrap();
    let exp = expected(32, CLASSES);
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu).unwrap_err()
    );
    assert!(
        err.lines().count() < 30,
        "{} lines:\n{err}",
        err.lines().count()
    );
    assert!(
        err.contains("all 300 checkpoint names start with `module.`"),
        "{err}"
    );
    assert!(err.contains("300 unexpected tensor(s)"), "{err}");
    assert!(err.contains("... and 292 more"), "{err}");
    assert!(
        err.contains(&format!("{} missing tensor(s)", exp.len())),
        "{err}"
    );
    assert!(
        err.contains(&format!("... and {} more", exp.len() - 8)),
        "{err}"
    );
    // A prefixed checkpoint of the right names but another width: the prefix is
    // removed and the mis-shaped list is cut short too.
    let wide: Vec<(String, Vec<usize>)> = expected(32, CLASSES)
        .into_iter()
        .map(|(n, s)| {
            (
                n,
                s.iter().map(|&d| if d == DIM { 48 } else { d }).collect(),
            )
        })
        .collect();
    let prefixed: BTreeMap<String, Tensor> = reference()
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let p = dir.path().join("ddp.safetensors");
    save_tensors(&p, &prefixed, &BTreeMap::new()).unwrap();
    let err = format!(
        "{:#}",
        load_backbone(&p, &wide, &LoadOptions::default(), &Device::Cpu).unwrap_err()
    );
    assert!(err.lines().count() < 20, "{err}");
    assert!(
        err.contains("mis-shaped tensor(s)") && err.contains("... and"),
        "{err}"
    );
    assert!(err.contains("removed the prefix `module.`"), "{err}");
}

/// The fixture's timm tensors in `dtype`, with element 3 of `poisoned` set to `v`.
fn poisoned_safetensors(dir: &Path, dtype: DType, prefix: &str, poisoned: &str, v: f64) -> PathBuf {
    let mut m = BTreeMap::new();
    for (k, t) in reference() {
        let mut t = t.to_dtype(DType::F64).unwrap();
        if k == poisoned {
            let mut vals = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            vals[3] = v;
            t = Tensor::from_vec(vals, t.dims(), &Device::Cpu).unwrap();
        }
        m.insert(format!("{prefix}{k}"), t.to_dtype(dtype).unwrap());
    }
    let p = dir.join(format!("{dtype:?}_{v:e}.safetensors"));
    save_tensors(&p, &m, &BTreeMap::new()).unwrap();
    p
}

#[test]
fn non_finite_safetensors_are_refused_naming_the_tensor_in_every_float_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let exp = expected(32, CLASSES);
    let name = "blocks.1.mlp.fc1.weight";
    for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
        // Finite: loads, values equal the rounded reference.
        let p = poisoned_safetensors(dir.path(), dtype, "", name, 0.5);
        let r = load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu).unwrap();
        assert_eq!(r.tensors[name].dtype(), DType::F32);
        assert_eq!(vals(&r.tensors[name])[3], 0.5, "{dtype:?}");
        assert_eq!(
            vals(&r.tensors["blocks.0.attn.qkv.weight"]),
            vals(
                &reference()["blocks.0.attn.qkv.weight"]
                    .to_dtype(dtype)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            ),
            "{dtype:?}"
        );
        for (v, word) in [
            (f64::INFINITY, "1 inf of"),
            (f64::NEG_INFINITY, "1 -inf of"),
            (f64::NAN, "1 NaN of"),
        ] {
            for prefix in ["", "module."] {
                let p = poisoned_safetensors(dir.path(), dtype, prefix, name, v);
                for err in [
                    load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu)
                        .map(|_| ())
                        .unwrap_err(),
                    load_tensors(&p, &Device::Cpu).map(|_| ()).unwrap_err(),
                ] {
                    let err = format!("{err:#}");
                    assert!(
                        err.contains(&format!("{prefix}{name} [128, 32]"))
                            && err.contains(word)
                            && err.contains("non-finite")
                            && err.contains(&p.display().to_string()),
                        "{dtype:?} {v}: {err}"
                    );
                }
            }
        }
    }
    // A finite float64 value too large for float32 is refused, not turned into inf.
    let p = poisoned_safetensors(dir.path(), DType::F64, "", name, 1e300);
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains(name) && err.contains("too large for float32"),
        "{err}"
    );
}

#[test]
fn non_finite_npz_arrays_are_refused_naming_file_key_and_timm_name() {
    let dir = tempfile::tempdir().unwrap();
    let exp = expected(32, CLASSES);
    // (fixture, the file's key, the timm tensor made from it)
    let cases = [
        (
            "tiny_vit_google.npz",
            "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/kernel",
            "blocks.1.attn.qkv.weight",
        ),
        (
            "tiny_vit_opt_target_f16.npz",
            "opt/target/Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias",
            "blocks.0.mlp.fc2.bias",
        ),
        (
            "tiny_vit_big_vision_f16.npz",
            "params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel",
            "blocks.1.mlp.fc1.weight",
        ),
        (
            "tiny_vit_opt_target_f16.npz",
            "opt/target/pre_logits/bias",
            "not a model tensor",
        ),
    ];
    for (fx, key, timm) in cases {
        for (v, word) in [
            (f64::INFINITY, "1 inf of"),
            (f64::NEG_INFINITY, "1 -inf of"),
            (f64::NAN, "1 NaN of"),
        ] {
            let mut entries = npz_entries(&fixture(fx));
            let (_, b) = entries.iter_mut().find(|(k, _)| k == key).unwrap();
            poison_npy(b, 1, v);
            let p = dir.path().join(format!("bad_{v}.npz"));
            write_npz(&p, &entries);
            let err = format!(
                "{:#}",
                load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu).unwrap_err()
            );
            assert!(
                err.contains(key) && err.contains(timm) && err.contains(word),
                "{fx} {key} {v}: {err}"
            );
        }
    }
    // Every float width: the entry `embedding/bias` rewritten as f16/f32/f64.
    for (descr, size) in [("'<f2'", 2), ("'<f4'", 4), ("'<f8'", 8)] {
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.25] {
            let mut entries = npz_entries(&fixture("tiny_vit_google.npz"));
            let data: Vec<u8> = (0..DIM)
                .flat_map(|i| float_le(if i == 2 { v } else { 0.5 }, size))
                .collect();
            for (k, b) in entries.iter_mut() {
                if k == "embedding/bias" {
                    *b = npy(descr, &[DIM], &data);
                }
            }
            let p = dir.path().join("width.npz");
            write_npz(&p, &entries);
            let r = load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu);
            if v.is_finite() {
                assert_eq!(vals(&r.unwrap().tensors["patch_embed.proj.bias"])[2], 0.25);
            } else {
                let err = format!("{:#}", r.unwrap_err());
                assert!(
                    err.contains("embedding/bias (timm patch_embed.proj.bias)"),
                    "{descr} {v}: {err}"
                );
            }
        }
    }
    // A finite float64 beyond float32's range overflows on conversion: refused too.
    let mut entries = npz_entries(&fixture("tiny_vit_google.npz"));
    for (k, b) in entries.iter_mut() {
        if k == "embedding/bias" {
            let data: Vec<u8> = (0..DIM).flat_map(|_| 1e300f64.to_le_bytes()).collect();
            *b = npy("'<f8'", &[DIM], &data);
        }
    }
    let p = dir.path().join("big.npz");
    write_npz(&p, &entries);
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains("embedding/bias") && err.contains("32 inf of 32"),
        "{err}"
    );
}

#[test]
fn non_float_and_pre_logits_safetensors_entries_are_dropped_with_notes() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = tempfile::tempdir().unwrap();
    let exp = expected(32, CLASSES);
    for prefix in ["", "module."] {
        // The fixture's tensors as f32 bytes, plus a step counter (i64), a mask (bool)
        // and an old-timm representation layer (pre_logits.fc.*).
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = reference()
            .into_iter()
            .map(|(k, t)| {
                let b = vals(&t).iter().flat_map(|v| v.to_le_bytes()).collect();
                (format!("{prefix}{k}"), Dtype::F32, t.dims().to_vec(), b)
            })
            .collect();
        owned.push((
            format!("{prefix}step"),
            Dtype::I64,
            vec![],
            9i64.to_le_bytes().to_vec(),
        ));
        owned.push((
            format!("{prefix}attn_mask"),
            Dtype::BOOL,
            vec![2],
            vec![1, 0],
        ));
        owned.push((
            format!("{prefix}pre_logits.fc.weight"),
            Dtype::F32,
            vec![2, 2],
            [0.5f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let bytes = safetensors::tensor::serialize(views, None).unwrap();
        let p = write(dir.path(), "extras.safetensors", &bytes);
        let r = load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{prefix}: {e:#}"));
        assert_same(&r.tensors, &reference(), false, prefix);
        let notes = r.notes.join("\n");
        assert!(
            notes.contains(&format!(
                "skipped 2 non-parameter tensor(s) (not floats): {prefix}attn_mask (BOOL), {prefix}step (I64)"
            )),
            "{notes}"
        );
        assert!(
            notes.contains("dropped the pre-logits layer (pre_logits.fc.weight)"),
            "{notes}"
        );
    }
    // An integer tensor where the model needs a float one is an error naming it.
    let mut m = reference();
    m.insert(
        "norm.bias".into(),
        Tensor::zeros(DIM, DType::I64, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("int.safetensors");
    save_tensors(&p, &m, &BTreeMap::new()).unwrap();
    let err = format!(
        "{:#}",
        load_backbone(&p, &exp, &LoadOptions::default(), &Device::Cpu).unwrap_err()
    );
    assert!(
        err.contains("tensor norm.bias has dtype I64, not a float type"),
        "{err}"
    );
}

// ---- Layouts from the field: transformers ViT, sharded checkpoints, foreign formats ----
// Fixtures: scripts/foreign_ckpt_fixtures.py (transformers, timm and torch).

use idat_nn::adapters::AdapterConfig;
use idat_nn::checkpoint::{TORCHSCRIPT_TO_SAFETENSORS, TORCH_TO_SAFETENSORS};
use idat_nn::vit::{Mode, Vit, VitConfig};

/// A ViT config of the given size (patch 8, MLP 4x, qkv bias), one class.
fn vit_cfg(dim: usize, depth: usize, heads: usize, img: usize) -> VitConfig {
    VitConfig {
        img_size: img,
        patch_size: 8,
        in_chans: 3,
        num_classes: 1,
        embed_dim: dim,
        depth,
        num_heads: heads,
        mlp_ratio: 4.0,
        qkv_bias: true,
        drop_rate: 0.0,
        attn_drop_rate: 0.0,
        drop_path_rate: 0.0,
    }
}

/// The backbone tensors (no head) of `cfg`.
fn backbone_of(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    cfg.expected_tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = vals(&(a - b).unwrap());
    let scale = vals(b).iter().fold(0f32, |m, v| m.max(v.abs()));
    d.iter().fold(0f32, |m, v| m.max(v.abs())) / scale
}

fn err_of(r: anyhow::Result<LoadedWeights>) -> String {
    match r {
        Ok(l) => panic!("loaded, notes: {:?}", l.notes),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn transformers_vit_model_gives_the_features_of_timm_and_of_transformers() {
    // A real ViTModel.save_pretrained (f16, pooler, config.json with layer_norm_eps 1e-12).
    let cfg = vit_cfg(32, 2, 2, 32);
    let p = fixture("hf_vit/model.safetensors");
    let r = load_backbone(
        &p,
        &backbone_of(&cfg),
        &LoadOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("converted 38 tensors from the Hugging Face transformers ViT layout"),
        "{notes}"
    );
    assert!(
        notes.contains("dropped the pooler (pooler.dense.bias, pooler.dense.weight"),
        "{notes}"
    );
    assert!(
        notes.contains("config.json sets layer_norm_eps 1e-12; this model uses timm's 1e-6"),
        "{notes}"
    );
    assert!(!notes.contains("wrapped"), "no prefix was removed: {notes}");
    assert!(
        r.had_pre_logits,
        "the pooler is the in21k representation layer"
    );
    let vit = Vit::new(&cfg, &AdapterConfig::Linear, r.tensors, &Device::Cpu, 0).unwrap();
    let io = load_tensors(&fixture("hf_vit_io.safetensors"), &Device::Cpu)
        .unwrap()
        .0;
    let f = vit.forward_features(&io["input"], Mode::Eval).unwrap();
    let (to_timm, to_hf6, to_hf) = (
        rel_err(&f, &io["timm"]),
        rel_err(&f, &io["hf_eps6"]),
        rel_err(&f, &io["hf"]),
    );
    // transformers with its own eps (1e-12) differs from eps 1e-6 by this much, no more.
    let eps_gap = rel_err(&io["hf_eps6"], &io["hf"]);
    println!("timm {to_timm:.2e}, transformers eps 1e-6 {to_hf6:.2e}, eps 1e-12 {to_hf:.2e} (gap {eps_gap:.2e})");
    assert!(to_timm < 1e-5, "features vs timm: rel err {to_timm}");
    assert!(
        to_hf6 < 1e-5,
        "features vs transformers (eps 1e-6): {to_hf6}"
    );
    assert!(to_hf < eps_gap + 1e-5, "features vs transformers: {to_hf}");
}

/// The tensors of the transformers fixture under the names of one of the other layouts
/// transformers writes (recorded by the script), `wrap` in front; classifier tensors made here.
fn hf_layout(variant: &str, wrap: &str) -> (BTreeMap<String, Tensor>, bool) {
    let base = load_tensors(&fixture("hf_vit/model.safetensors"), &Device::Cpu)
        .unwrap()
        .0;
    let text = std::fs::read_to_string(fixture("hf_vit_layouts.json")).unwrap();
    let layouts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let l = &layouts[variant];
    let mut m = BTreeMap::new();
    for (src, dst) in l["rename"].as_object().unwrap() {
        m.insert(
            format!("{wrap}{}", dst.as_str().unwrap()),
            base[src].clone(),
        );
    }
    let added: Vec<&str> = l["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for a in &added {
        let t = match *a {
            "classifier.weight" => Tensor::arange(0f32, 160., &Device::Cpu)
                .unwrap()
                .reshape((5, 32))
                .unwrap(),
            "classifier.bias" => Tensor::new(&[1f32, 2., 3., 4., 5.], &Device::Cpu).unwrap(),
            other => panic!("the script recorded an unknown added tensor {other}"),
        };
        m.insert(format!("{wrap}{a}"), t);
    }
    (m, !added.is_empty())
}

#[test]
fn every_layout_transformers_writes_loads_to_the_same_tensors() {
    let cfg = vit_cfg(32, 2, 2, 32);
    let exp = backbone_of(&cfg);
    let want = load_backbone(
        &fixture("hf_vit/model.safetensors"),
        &exp,
        &LoadOptions::default(),
        &Device::Cpu,
    )
    .unwrap()
    .tensors;
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        pass_through: vec!["head.".into()],
        ..Default::default()
    };
    for (variant, wrap) in [
        ("vit_for_image_classification", ""),
        ("vit_model_v5", ""),
        ("vit_for_image_classification_v5", ""),
        ("vit_for_image_classification", "module."),
        ("vit_model_v5", "_orig_mod."),
    ] {
        let what = format!("{wrap}{variant}");
        let (m, has_head) = hf_layout(variant, wrap);
        let p = dir.path().join(format!("{what}.safetensors"));
        save_tensors(&p, &m, &BTreeMap::new()).unwrap();
        let r = load_backbone(&p, &exp, &opts, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_same(&r.tensors, &want, false, &what);
        let notes = r.notes.join("\n");
        assert!(
            notes.contains("from the Hugging Face transformers ViT layout"),
            "{what}: {notes}"
        );
        assert_eq!(
            notes.contains("removed the prefix"),
            !wrap.is_empty(),
            "{what}: {notes}"
        );
        if has_head {
            assert_eq!(
                vals(&r.extra["head.weight"]),
                vals(&m[&format!("{wrap}classifier.weight")])
            );
            assert_eq!(vals(&r.extra["head.bias"]), [1., 2., 3., 4., 5.]);
            assert!(notes.contains("classifier as head"), "{what}: {notes}");
        }
    }
}

/// Expected tensors of the sharded fixture's model (dim 8, 1 block, img 16).
fn sharded_expected() -> Vec<(String, Vec<usize>)> {
    backbone_of(&vit_cfg(8, 1, 2, 16))
}

#[test]
fn sharded_checkpoints_load_through_their_index_or_its_folder() {
    let want = load_tensors(&fixture("hf_vit_sharded_timm.safetensors"), &Device::Cpu)
        .unwrap()
        .0;
    let dir = fixture("hf_vit_sharded");
    for p in [dir.join("model.safetensors.index.json"), dir.clone()] {
        let r = load_backbone(
            &p,
            &sharded_expected(),
            &LoadOptions::default(),
            &Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert_same(&r.tensors, &want, false, &p.display().to_string());
        let notes = r.notes.join("\n");
        assert!(
            notes.contains("read 24 tensors from the 3 shards listed by")
                && notes.contains("model.safetensors.index.json"),
            "{notes}"
        );
    }
    // A shard passed alone names the index beside it.
    let shard = dir.join("model-00001-of-00003.safetensors");
    let e = err_of(load_backbone(
        &shard,
        &sharded_expected(),
        &LoadOptions::default(),
        &Device::Cpu,
    ));
    assert!(
        e.contains(
            "model-00001-of-00003.safetensors: one shard of the 3-shard checkpoint indexed by"
        ) && e.contains("pass the index (or its folder) instead"),
        "{e}"
    );
    // Without an index beside it, the mismatch report says what the name tells.
    let tmp = tempfile::tempdir().unwrap();
    let alone = tmp.path().join("model-00002-of-00003.safetensors");
    std::fs::copy(dir.join("model-00002-of-00003.safetensors"), &alone).unwrap();
    let e = err_of(load_backbone(
        &alone,
        &sharded_expected(),
        &LoadOptions::default(),
        &Device::Cpu,
    ));
    assert!(
        e.contains("missing tensor(s)") && e.contains("shard 2 of 3"),
        "{e}"
    );
}

/// A copy of the sharded fixture folder in `dir`, with its index's weight_map.
fn sharded_copy(dir: &Path) -> (PathBuf, serde_json::Value) {
    let d = dir.join("ckpt");
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(fixture("hf_vit_sharded")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap();
    (d, serde_json::from_str(&text).unwrap())
}

fn write_index(d: &Path, index: &serde_json::Value) -> PathBuf {
    let p = d.join("model.safetensors.index.json");
    std::fs::write(&p, serde_json::to_vec_pretty(index).unwrap()).unwrap();
    p
}

fn load_index(p: &Path) -> anyhow::Result<LoadedWeights> {
    load_backbone(
        p,
        &sharded_expected(),
        &LoadOptions::default(),
        &Device::Cpu,
    )
}

#[test]
fn untrusted_indexes_stay_in_their_folder_and_must_match_their_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, index) = sharded_copy(tmp.path());
    let first = "model-00001-of-00003.safetensors";
    std::fs::copy(d.join(first), tmp.path().join("outside.safetensors")).unwrap();
    let retarget = |shard: &str| {
        let mut i = index.clone();
        for v in i["weight_map"].as_object_mut().unwrap().values_mut() {
            if v == first {
                *v = serde_json::Value::from(shard);
            }
        }
        i
    };
    for (shard, needle) in [
        ("../outside.safetensors", "contains `..`"),
        ("/etc/passwd", "is absolute"),
        ("a/../../outside.safetensors", "contains `..`"),
        ("sub\\..\\x.safetensors", "holds `\\`"),
    ] {
        let p = write_index(&d, &retarget(shard));
        let e = err_of(load_index(&p));
        assert!(
            e.contains("model.safetensors.index.json: `weight_map` entry")
                && e.contains(needle)
                && e.contains("refused"),
            "{shard}: {e}"
        );
    }
    // A listed shard that is a symlink leaving the folder.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(
            tmp.path().join("outside.safetensors"),
            d.join("link.safetensors"),
        )
        .unwrap();
        let p = write_index(&d, &retarget("link.safetensors"));
        let e = err_of(load_index(&p));
        assert!(
            e.contains("shard link.safetensors resolves to")
                && e.contains("outside the index's folder"),
            "{e}"
        );
        std::fs::remove_file(d.join("link.safetensors")).unwrap();
    }
    // A shard that is not there, a tensor not in its shard, pickle shards, no tensors.
    let p = write_index(&d, &retarget("model-00009-of-00009.safetensors"));
    let e = err_of(load_index(&p));
    assert!(
        e.contains("shard model-00009-of-00009.safetensors (holding")
            && e.contains("every shard must sit beside the index"),
        "{e}"
    );
    let mut ghost = index.clone();
    ghost["weight_map"]["ghost.weight"] = first.into();
    let e = err_of(load_index(&write_index(&d, &ghost)));
    assert!(
        e.contains(&format!(
            "1 tensor(s) the index maps to shard {first} are not in it: ghost.weight"
        )),
        "{e}"
    );
    let e = err_of(load_index(&write_index(
        &d,
        &retarget("pytorch_model-00001-of-00002.bin"),
    )));
    assert!(
        e.contains("not .safetensors files (pytorch_model-00001-of-00002.bin)")
            && e.contains("PyTorch pickle"),
        "{e}"
    );
    let e = err_of(load_index(&write_index(
        &d,
        &serde_json::json!({"weight_map": {}}),
    )));
    assert!(e.contains("the `weight_map` lists no tensors"), "{e}");
    // A shard that is an LFS pointer is named as one.
    let lfs = d.join("model-00003-of-00003.safetensors");
    let saved = std::fs::read(&lfs).unwrap();
    std::fs::write(
        &lfs,
        "version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 376\n",
    )
    .unwrap();
    let e = err_of(load_index(&write_index(&d, &index)));
    assert!(
        e.contains("shard model-00003-of-00003.safetensors of")
            && e.contains("a Git LFS pointer file"),
        "{e}"
    );
    std::fs::write(&lfs, saved).unwrap();
    // Metadata long enough to push `weight_map` past the first kilobyte: the name tells.
    let mut long = serde_json::json!({"metadata": {"note": "x".repeat(3000)}});
    long["weight_map"] = index["weight_map"].clone();
    let r = load_index(&write_index(&d, &long)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.tensors.len(), sharded_expected().len());
    // Tensors a shard holds that the index does not list, and shards it does not list, are
    // not loaded, with notes.
    let mut fewer = index.clone();
    fewer["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("pooler.dense.bias");
    std::fs::copy(d.join(first), d.join("model-00001-of-00004.safetensors")).unwrap();
    let r = load_index(&write_index(&d, &fewer)).unwrap();
    let notes = r.notes.join("\n");
    assert!(notes.contains("not loaded: 1 tensor(s) in the shards that the index's weight_map does not list: pooler.dense.bias (in model-"), "{notes}");
    assert!(notes.contains("not read: 1 shard-like file(s) beside the index that it does not list: model-00001-of-00004.safetensors"), "{notes}");
}

#[cfg(unix)]
#[test]
fn an_index_in_the_hugging_face_cache_layout_reaches_its_blobs() {
    // <repo>/snapshots/<commit>/ holds links to <repo>/blobs/, as hf-hub and huggingface_hub write.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--owner--vit");
    let (blobs, snap) = (repo.join("blobs"), repo.join("snapshots/0123abc"));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (i, e) in std::fs::read_dir(fixture("hf_vit_sharded"))
        .unwrap()
        .enumerate()
    {
        let e = e.unwrap();
        let blob = blobs.join(format!("{i:064x}"));
        std::fs::copy(e.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{i:064x}"), snap.join(e.file_name()))
            .unwrap();
    }
    let want = load_tensors(&fixture("hf_vit_sharded_timm.safetensors"), &Device::Cpu)
        .unwrap()
        .0;
    for p in [snap.join("model.safetensors.index.json"), snap.clone()] {
        let r = load_index(&p).unwrap_or_else(|e| panic!("{e:#}"));
        assert_same(&r.tensors, &want, false, "hf cache");
    }
    // Links out of the repo are still refused.
    std::fs::copy(
        fixture("hf_vit_sharded/model-00001-of-00003.safetensors"),
        tmp.path().join("x"),
    )
    .unwrap();
    std::fs::remove_file(snap.join("model-00001-of-00003.safetensors")).unwrap();
    std::os::unix::fs::symlink(
        tmp.path().join("x"),
        snap.join("model-00001-of-00003.safetensors"),
    )
    .unwrap();
    let e = err_of(load_index(&snap));
    assert!(e.contains("outside the index's folder"), "{e}");
}

#[test]
fn checkpoints_over_the_size_limit_are_refused_unread() {
    // Sparse files: nothing is allocated on disk.
    let tmp = tempfile::tempdir().unwrap();
    let big = |name: &str, len: u64| {
        let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let p = tmp.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len)
            .unwrap();
        p
    };
    let p = big("huge.safetensors", 33 << 30);
    let e = err_of(load_backbone(
        &p,
        &sharded_expected(),
        &LoadOptions::default(),
        &Device::Cpu,
    ));
    assert!(
        e.contains("huge.safetensors: 35433480192 bytes, more than the 34359738368"),
        "{e}"
    );
    big("a.safetensors", 17 << 30);
    big("b.safetensors", 17 << 30);
    let idx = write_index(
        tmp.path(),
        &serde_json::json!({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}),
    );
    let e = err_of(load_index(&idx));
    assert!(
        e.contains("its 2 shards hold 36507222016 bytes, more than the 34359738368"),
        "{e}"
    );
}

/// The two conversion commands, as scripts/foreign_ckpt_fixtures.py ran them.
fn recorded_snippets() -> (String, String) {
    let text = std::fs::read_to_string(fixture("torch_convert.txt")).unwrap();
    let mut l = text.lines();
    (l.next().unwrap().to_string(), l.next().unwrap().to_string())
}

/// A zip holding `entries` (name, bytes), stored.
fn zip_of(p: &Path, entries: &[(&str, &[u8])]) {
    let mut zw = zip::ZipWriter::new(std::fs::File::create(p).unwrap());
    for (n, b) in entries {
        zw.start_file(*n, zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(b).unwrap();
    }
    zw.finish().unwrap();
}

#[test]
fn pytorch_files_are_refused_by_content_with_the_command_that_converts_them() {
    let (torch_cmd, script_cmd) = recorded_snippets();
    assert_eq!(
        TORCH_TO_SAFETENSORS, torch_cmd,
        "rerun scripts/foreign_ckpt_fixtures.py"
    );
    assert_eq!(
        TORCHSCRIPT_TO_SAFETENSORS, script_cmd,
        "rerun scripts/foreign_ckpt_fixtures.py"
    );
    let tmp = tempfile::tempdir().unwrap();
    // Built here, as torch writes them: a zip archive, a protocol-4 legacy stream, a plain
    // pickle, a TorchScript archive.
    let built_zip = tmp.path().join("built_zip");
    zip_of(
        &built_zip,
        &[
            ("archive/data.pkl", b"\x80\x02}q\x00."),
            ("archive/byteorder", b"little"),
            ("archive/data/0", &[0; 8]),
            ("archive/version", b"3\n"),
            ("archive/.data/serialization_id", b"123"),
        ],
    );
    let framed = tmp.path().join("framed");
    std::fs::write(&framed, b"\x80\x04\x95\x0c\x00\x00\x00\x00\x00\x00\x00\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap();
    let plain = tmp.path().join("plain");
    std::fs::write(
        &plain,
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.",
    )
    .unwrap();
    let built_ts = tmp.path().join("built_ts");
    zip_of(
        &built_ts,
        &[
            ("m/data.pkl", b"\x80\x02."),
            ("m/code/__torch__/m.py", b"class M: pass"),
            ("m/constants.pkl", b"\x80\x02)."),
        ],
    );
    for (src, what, cmd) in [
        (
            fixture("torch_zip.pth"),
            "written by torch.save (a zip archive holding the pickle `torch_zip/data.pkl`)",
            &torch_cmd,
        ),
        (
            fixture("torch_legacy.pth"),
            "in torch.save's legacy format",
            &torch_cmd,
        ),
        (
            fixture("torchscript.pt"),
            "a TorchScript archive written by torch.jit.save",
            &script_cmd,
        ),
        (
            built_zip,
            "holding the pickle `archive/data.pkl`",
            &torch_cmd,
        ),
        (framed, "in torch.save's legacy format", &torch_cmd),
        (plain, "a Python pickle stream (protocol 4", &torch_cmd),
        (built_ts, "a TorchScript archive", &script_cmd),
    ] {
        // The content decides, whatever the name.
        for name in [
            "vit.pth",
            "pytorch_model.bin",
            "last.ckpt",
            "model.safetensors",
            "w.npz",
            "my model's.pt",
        ] {
            let p = tmp.path().join(name);
            std::fs::copy(&src, &p).unwrap();
            let e = err_of(load_backbone(
                &p,
                &sharded_expected(),
                &LoadOptions::default(),
                &Device::Cpu,
            ));
            let out = if name == "model.safetensors" {
                tmp.path().join("model.converted.safetensors")
            } else {
                p.with_extension("safetensors")
            };
            let quote = |q: &Path| {
                let s = q.display().to_string();
                if s.contains('\'') || s.contains(' ') {
                    format!("'{}'", s.replace('\'', r"'\''"))
                } else {
                    s
                }
            };
            let full = format!("python -c \"{cmd}\" {} {}", quote(&p), quote(&out));
            assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
            assert!(e.contains(what), "{name} from {}: {e}", src.display());
            assert!(
                e.contains(
                    "refused, because reading it means unpickling, which can run arbitrary code"
                ),
                "{e}"
            );
            assert!(e.contains(&full), "expected {full} in: {e}");
            assert!(e.contains(&format!("then pass {}", quote(&out))), "{e}");
        }
    }
}

#[test]
fn other_formats_users_hold_are_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let keras = tmp.path().join("k");
    zip_of(
        &keras,
        &[
            ("metadata.json", b"{}"),
            ("config.json", b"{}"),
            ("model.weights.h5", b"\x89HDF\r\n\x1a\n"),
        ],
    );
    let other_zip = tmp.path().join("z");
    zip_of(
        &other_zip,
        &[("vit/README.md", b"weights"), ("vit/notes.txt", b"x")],
    );
    let mut tar = vec![0u8; 1024];
    tar[..8].copy_from_slice(b"vit.pth\0");
    tar[257..263].copy_from_slice(b"ustar\0");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n";
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    npy.extend_from_slice(&[0; 4]);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty.safetensors", vec![], vec!["empty file (0 bytes)", "Download it again"]),
        (
            "lfs.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 346286016\n".to_vec(),
            vec!["a Git LFS pointer file (134 bytes)", "(346286016 bytes, sha256 4d7a2146", "`git lfs install` then `git lfs pull`"],
        ),
        (
            "vit.pth",
            b"<!DOCTYPE html>\n<html lang=en><head><title>Sign in - Hugging Face</title></head><body></body></html>".to_vec(),
            vec!["an HTML page (title \"Sign in - Hugging Face\")", "a failed download", "/resolve/"],
        ),
        ("ViT-B_16.npz", b"404: Not Found".to_vec(), vec!["a text file", "it starts with: 404: Not Found"]),
        (
            "model.bin",
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code></Error>".to_vec(),
            vec!["an XML file", "<Code>AccessDenied</Code>"],
        ),
        ("w.safetensors", br#"{"model_type": "vit", "hidden_size": 768}"#.to_vec(), vec!["a JSON file", "config.json", "\"model_type\": \"vit\""]),
        ("tf_model.h5", b"\x89HDF\r\n\x1a\n\0\0\0\0".to_vec(), vec!["an HDF5 file", "model.safetensors", "from_tf=True"]),
        ("flax_model.msgpack", b"\x81\xa6params\x81\xa3vit\x80".to_vec(), vec!["a Flax msgpack state", "from_flax=True"]),
        ("pos.npy", npy, vec!["a single NumPy array (.npy)"]),
        ("vit.tar.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec(), vec!["a gzip-compressed file", "tar xzf"]),
        ("vit.tar.xz", b"\xfd7zXZ\x00\x00\x04".to_vec(), vec!["an xz-compressed file", "xz -d"]),
        ("vit.tar", tar, vec!["a tar archive", "tar xf"]),
        ("vit.zip", std::fs::read(&other_zip).unwrap(), vec!["neither a NumPy .npz", "2 entries include vit/README.md, vit/notes.txt", "unzip"]),
        ("vit.keras", std::fs::read(&keras).unwrap(), vec!["a Keras 3 `.keras` archive"]),
        ("vit.gguf", b"GGUF\x03\x00\x00\x00".to_vec(), vec!["a GGUF file"]),
        ("x.bin", vec![0, 1, 2, 3, 0xff, 0xfe, 7, 8, 9, 10], vec!["unknown checkpoint format (first bytes 00010203fffe0708090a)", "a sharded checkpoint's index"]),
        ("y.safetensors", vec![9, 0, 0, 0, 0, 0, 0, 0, b'x', 0xff], vec!["not a safetensors file: no JSON header after the 8-byte length"]),
    ];
    for (name, bytes, needles) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = err_of(load_backbone(
            &p,
            &sharded_expected(),
            &LoadOptions::default(),
            &Device::Cpu,
        ));
        assert!(e.starts_with(&format!("{}: ", p.display())), "{name}: {e}");
        for n in needles {
            assert!(e.contains(n), "{name}: expected {n:?} in: {e}");
        }
    }
}

#[test]
fn a_prefix_carried_by_only_part_of_the_file_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let exp = expected(32, CLASSES);
    let zeros = || Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    // DINO: the backbone next to its projection head, both under `module.`.
    let mut dino: BTreeMap<String, Tensor> = reference()
        .into_iter()
        .map(|(k, v)| (format!("module.backbone.{k}"), v))
        .collect();
    dino.insert("module.head.mlp.0.weight".into(), zeros());
    dino.insert("module.head.last_layer.weight".into(), zeros());
    let p = dir.path().join("dino.safetensors");
    save_tensors(&p, &dino, &BTreeMap::new()).unwrap();
    let e = err_of(load_backbone(
        &p,
        &exp,
        &LoadOptions::default(),
        &Device::Cpu,
    ));
    assert!(
        e.contains(&format!(
            "{} of the {} tensor names are timm names after `module.backbone.`, but 2 names do not carry that prefix (e.g. module.head.last_layer.weight, module.head.mlp.0.weight), so it was not removed",
            exp.len(),
            exp.len() + 2
        )),
        "{e}"
    );
    assert!(!e.contains("removed the prefix"), "{e}");
    // Ignoring the head by its name in the file makes the rest a wrapped state dict.
    let opts = LoadOptions {
        ignore: vec!["module.head.".into()],
        ..Default::default()
    };
    let r = load_backbone(&p, &exp, &opts, &Device::Cpu).unwrap_or_else(|e| panic!("{e:#}"));
    assert_same(&r.tensors, &reference(), false, "dino");
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("removed the prefix `module.backbone.` that all"),
        "{notes}"
    );
    assert!(notes.contains("ignored 2 checkpoint tensor(s): module.head.last_layer.weight, module.head.mlp.0.weight"), "{notes}");
    // Two copies (a model and its EMA): which one is the backbone is the user's choice.
    let mut ema: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, v) in reference() {
        ema.insert(format!("model.{k}"), v.clone());
        ema.insert(format!("model_ema.{k}"), (v * 0.5).unwrap());
    }
    let p = dir.path().join("ema.safetensors");
    save_tensors(&p, &ema, &BTreeMap::new()).unwrap();
    let e = err_of(load_backbone(
        &p,
        &exp,
        &LoadOptions::default(),
        &Device::Cpu,
    ));
    assert!(
        e.contains("do not carry that prefix") && !e.contains("removed the prefix"),
        "{e}"
    );
    for (ignore, scale) in [("model_ema.", 1.0), ("model.", 0.5)] {
        let opts = LoadOptions {
            ignore: vec![ignore.into()],
            ..Default::default()
        };
        let r = load_backbone(&p, &exp, &opts, &Device::Cpu).unwrap_or_else(|e| panic!("{e:#}"));
        let want: BTreeMap<String, Tensor> = reference()
            .into_iter()
            .map(|(k, v)| (k, (v * scale).unwrap()))
            .collect();
        assert_same(&r.tensors, &want, false, ignore);
    }
}
