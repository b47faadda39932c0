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
    for prefix in [
        "module.",
        "model.",
        "backbone.",
        "module.model.",
        "_orig_mod.encoder.",
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
                "removed the prefix `{prefix}` that all of the {} tensor names carry (a wrapped \
                 state dict: DDP, Lightning, ...), as timm's clean_state_dict does",
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
