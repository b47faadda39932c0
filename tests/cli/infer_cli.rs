//! `idat-pipe infer` through the binary: a tiny random model and tiny images; the CSV's
//! logits must equal a direct library forward of the same preprocessing.
use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use idat_pipe::data::image::{decode_rgb, resize_bicubic, Normalize};
use idat_pipe::nn::adapters::{AdapterConfig, SeqAdapterConfig};
use idat_pipe::nn::checkpoint::save_tensors;
use idat_pipe::nn::vit::{Mode, Vit, VitConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A small ViT (the nn tests' `tiny_config`) with `classes` classes.
fn cfg(classes: usize) -> VitConfig {
    VitConfig {
        img_size: 16,
        patch_size: 8,
        in_chans: 3,
        num_classes: classes,
        embed_dim: 32,
        depth: 2,
        num_heads: 4,
        mlp_ratio: 2.0,
        qkv_bias: true,
        drop_rate: 0.0,
        attn_drop_rate: 0.0,
        drop_path_rate: 0.0,
    }
}

/// Writes images of assorted sizes (so the bicubic resize runs) and returns their paths.
fn images(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for (i, (w, h)) in [(16u32, 16u32), (23, 19), (40, 32)].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 13 + y * 7 + i as u32 * 40) as u8,
                (x * y + 3 * i as u32) as u8,
                (255 - x * 5) as u8,
            ])
        });
        let p = dir.join(format!("img{i}.png"));
        img.save(&p).unwrap();
        out.push(p);
    }
    out
}

/// The reference: decode + resize + normalise by hand, one library forward.
fn reference(vit: &Vit, paths: &[PathBuf]) -> Vec<Vec<f32>> {
    let s = vit.config().img_size;
    let norm = Normalize::default();
    let mut data = Vec::new();
    for p in paths {
        let img = resize_bicubic(&decode_rgb(p).unwrap(), s as u32, s as u32);
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    data.push(norm.apply(img.get_pixel(x as u32, y as u32).0[c], c));
                }
            }
        }
    }
    let x = Tensor::from_vec(data, (paths.len(), 3, s, s), &Device::Cpu).unwrap();
    vit.forward(&x, Mode::Eval).unwrap().to_vec2().unwrap()
}

/// (source, label, logits) rows of an infer CSV.
fn read_csv(p: &Path) -> Vec<(String, usize, Vec<f32>)> {
    let mut r = csv::Reader::from_path(p).unwrap();
    let h = r.headers().unwrap().clone();
    assert_eq!(&h[0], "source");
    assert_eq!(&h[1], "label");
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[0].to_string(),
                rec[1].parse().unwrap(),
                rec.iter().skip(2).map(|v| v.parse().unwrap()).collect(),
            )
        })
        .collect()
}

fn check(rows: &[(String, usize, Vec<f32>)], paths: &[PathBuf], want: &[Vec<f32>]) {
    assert_eq!(rows.len(), paths.len());
    for ((src, label, got), (p, w)) in rows.iter().zip(paths.iter().zip(want)) {
        assert_eq!(src, &p.display().to_string());
        assert_eq!(got.len(), w.len());
        for (a, b) in got.iter().zip(w) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{src}: {a} vs {b}");
        }
        let argmax = w
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |m, (i, &v)| if v > m.1 { (i, v) } else { m },
            )
            .0;
        assert_eq!(*label, argmax);
    }
}

fn infer(args: &[&str]) -> assert_cmd::assert::Assert {
    infer_with_env(&[], args)
}

fn infer_with_env(env: &[(&str, &str)], args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .envs(env.iter().copied())
        .arg("infer")
        .args(args)
        .assert()
}

/// A random backbone with a 5-class head saved in `dir`: the weights' path and the same
/// model built by the library.
fn head_model(dir: &Path, c: &VitConfig) -> (PathBuf, Vit) {
    let dev = Device::Cpu;
    let mut weights = Vit::random_backbone(c, &dev, 3).unwrap();
    weights.insert(
        "head.weight".into(),
        Tensor::randn(0f32, 0.5, (5, c.embed_dim), &dev).unwrap(),
    );
    weights.insert(
        "head.bias".into(),
        Tensor::randn(0f32, 0.5, 5, &dev).unwrap(),
    );
    let wpath = dir.join("w.safetensors");
    save_tensors(&wpath, &weights, &BTreeMap::new()).unwrap();
    let vit = Vit::new(c, &AdapterConfig::Linear, weights.clone(), &dev, 0).unwrap();
    let head: BTreeMap<String, Tensor> = weights
        .into_iter()
        .filter(|(k, _)| k.starts_with("head."))
        .collect();
    vit.set_trainable(&head).unwrap();
    (wpath, vit)
}

#[test]
fn backbone_with_head_from_preset_file_matches_library_forward() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(5);
    let (wpath, vit) = head_model(dir.path(), &c);
    // The config file says 1000 classes; the head in the weights decides (5).
    let mut file_cfg = c.clone();
    file_cfg.num_classes = 1000;
    let cpath = dir.path().join("vit.yaml");
    std::fs::write(
        &cpath,
        serde_saphyr::to_string(&serde_json::to_value(&file_cfg).unwrap()).unwrap(),
    )
    .unwrap();
    let paths = images(&dir.path().join("imgs"));
    let out = dir.path().join("out.csv");
    infer(&[
        "--model",
        cpath.to_str().unwrap(),
        "--weights",
        wpath.to_str().unwrap(),
        "--images",
        dir.path().join("imgs").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "2",
    ])
    .success();
    check(&read_csv(&out), &paths, &reference(&vit, &paths));
}

/// `IDAT_BLAS` picks the CPU GEMM backend: both give the library's logits, and a value that
/// cannot be used stops the command before it writes anything.
#[test]
fn gemm_backend_is_chosen_by_idat_blas() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(5);
    let (wpath, vit) = head_model(dir.path(), &c);
    let paths = images(&dir.path().join("imgs"));
    let want = reference(&vit, &paths);
    let cjson = serde_json::to_string(&c).unwrap();
    let out = dir.path().join("out.csv");
    let imgs = dir.path().join("imgs");
    let args = [
        "--model",
        &cjson,
        "--weights",
        wpath.to_str().unwrap(),
        "--images",
        imgs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let with = |blas: &str| infer_with_env(&[("IDAT_BLAS", blas)], &args);
    for blas in ["off", "auto"] {
        with(blas).success();
        check(&read_csv(&out), &paths, &want);
        std::fs::remove_file(&out).unwrap();
    }
    let e = with("/nonexistent/libopenblas.so.0")
        .code(2)
        .get_output()
        .stderr
        .clone();
    let e = String::from_utf8_lossy(&e);
    assert!(
        e.contains("IDAT_BLAS=/nonexistent/libopenblas.so.0: cannot load"),
        "{e}"
    );
    let e = with("fastest").code(2).get_output().stderr.clone();
    let e = String::from_utf8_lossy(&e);
    assert!(e.contains("IDAT_BLAS=\"fastest\" is not understood"), "{e}");
    assert!(!out.exists());
}

#[test]
fn adapter_checkpoint_with_model_json_and_image_list() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let c = cfg(4);
    let backbone = Vit::random_backbone(&c, &dev, 7).unwrap();
    let wpath = dir.path().join("backbone.safetensors");
    save_tensors(&wpath, &backbone, &BTreeMap::new()).unwrap();
    let adapter = AdapterConfig::SeqAdapter(SeqAdapterConfig { hidden: 3 });
    let vit = Vit::new(&c, &adapter, backbone, &dev, 11).unwrap();
    // Non-trivial trained values (fc2 starts at zero).
    let trained: BTreeMap<String, Tensor> = vit
        .trainable()
        .into_iter()
        .map(|(n, v)| (n, Tensor::randn(0f32, 0.3, v.dims(), &dev).unwrap()))
        .collect();
    vit.set_trainable(&trained).unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("adapter".into(), serde_json::to_string(&adapter).unwrap());
    meta.insert("config".into(), serde_json::to_string(&c).unwrap());
    let apath = dir.path().join("student.safetensors");
    save_tensors(&apath, &trained, &meta).unwrap();
    // A model entry's model.json (num_classes 0: stored without a head).
    let mut mc = c.clone();
    mc.num_classes = 0;
    let mpath = dir.path().join("model.json");
    std::fs::write(
        &mpath,
        serde_json::json!({"config": mc, "source": "test", "label": "t", "notes": []}).to_string(),
    )
    .unwrap();
    let paths = images(&dir.path().join("imgs"));
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "# two images\nimgs/img2.png\n\nimgs/img0.png\n").unwrap();
    let out = dir.path().join("out.csv");
    infer(&[
        "--model",
        mpath.to_str().unwrap(),
        "--weights",
        wpath.to_str().unwrap(),
        "--adapter",
        apath.to_str().unwrap(),
        "--images",
        list.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .success();
    let listed = vec![
        dir.path().join("imgs/img2.png"),
        dir.path().join("imgs/img0.png"),
    ];
    let rows = read_csv(&out);
    assert_eq!(rows[0].0, listed[0].display().to_string());
    let want = reference(&vit, &[paths[2].clone(), paths[0].clone()]);
    check(&rows, &listed, &want);
}

#[test]
fn tensor_input_matches_timm_fixture_logits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/nn/tests/fixtures/timm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.csv");
    infer(&[
        "--model",
        root.join("s1.json").to_str().unwrap(),
        "--weights",
        root.join("s1.safetensors").to_str().unwrap(),
        "--tensor",
        &format!("{}:input", root.join("s1_io.safetensors").display()),
        "--out",
        out.to_str().unwrap(),
    ])
    .success();
    let (io, _) =
        idat_pipe::nn::checkpoint::load_tensors(&root.join("s1_io.safetensors"), &Device::Cpu)
            .unwrap();
    let want: Vec<Vec<f32>> = io["logits"].to_vec2().unwrap();
    let rows = read_csv(&out);
    assert_eq!(rows.len(), want.len());
    for (r, w) in rows.iter().zip(&want) {
        for (a, b) in r.2.iter().zip(w) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs timm {b}");
        }
    }
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let c = cfg(3);
    let wpath = dir.path().join("nohead.safetensors");
    save_tensors(
        &wpath,
        &Vit::random_backbone(&c, &dev, 1).unwrap(),
        &BTreeMap::new(),
    )
    .unwrap();
    let cjson = serde_json::to_string(&c).unwrap();
    images(&dir.path().join("imgs"));
    let imgs = dir.path().join("imgs");
    let out = dir.path().join("o.csv");
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = vec![
            "--model".into(),
            cjson.clone(),
            "--weights".into(),
            wpath.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = infer(&a).failure().get_output().stderr.clone();
        String::from_utf8_lossy(&o).into_owned()
    };
    let e = run(base(&["--images", imgs.to_str().unwrap()]));
    assert!(
        e.contains("has no `head.weight`") && e.contains("--num-classes"),
        "{e}"
    );
    let e = run(base(&[
        "--images",
        imgs.to_str().unwrap(),
        "--num-classes",
        "3",
    ]));
    assert!(e.contains("classifier would be random"), "{e}");
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "imgs/img0.png\nmissing.png\n").unwrap();
    let e = run(base(&[
        "--images",
        list.to_str().unwrap(),
        "--num-classes",
        "3",
    ]));
    assert!(e.contains("l.txt:2") && e.contains("missing.png"), "{e}");
    let e = run(base(&[
        "--images",
        imgs.to_str().unwrap(),
        "--device",
        "cuda",
    ]));
    if !cfg!(feature = "cuda") {
        assert!(e.contains("built without CUDA"), "{e}");
    }
    let mut args = base(&["--images", imgs.to_str().unwrap()]);
    args[1] = "vit_nonexistent".into();
    let e = run(args);
    assert!(e.contains("unknown ViT preset"), "{e}");
    assert!(!out.exists());
}

/// The fixture ViT of crates/nn/tests/fixtures/ckpt (timm names in tiny_vit.safetensors, the same
/// weights as Google .npz files, converted by scripts/ckpt_fixtures.py and checked there
/// against timm's own `_load_weights`).
fn ckpt_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/nn/tests/fixtures/ckpt")
        .join(name)
}

fn ckpt_config() -> String {
    serde_json::json!({
        "img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 32, "depth": 2,
        "num_heads": 2, "mlp_ratio": 4.0, "qkv_bias": true, "drop_rate": 0.0,
        "attn_drop_rate": 0.0, "drop_path_rate": 0.0, "in_chans": 3
    })
    .to_string()
}

/// Runs infer on a fixed [4, 3, 32, 32] input tensor; returns the CSV rows and stderr.
fn infer_tensor(dir: &Path, weights: &Path, ok: bool) -> (Vec<(String, usize, Vec<f32>)>, String) {
    let input = dir.join("x.safetensors");
    if !input.exists() {
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
        save_tensors(
            &input,
            &BTreeMap::from([("input".to_string(), x)]),
            &BTreeMap::new(),
        )
        .unwrap();
    }
    let out = dir.join("out.csv");
    let _ = std::fs::remove_file(&out);
    let cfg = ckpt_config();
    let a = infer(&[
        "--model",
        &cfg,
        "--weights",
        weights.to_str().unwrap(),
        "--tensor",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let a = if ok { a.success() } else { a.failure() };
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    let rows = if ok { read_csv(&out) } else { Vec::new() };
    if !ok {
        assert!(!out.exists(), "a failed run wrote {}", out.display());
    }
    (rows, err)
}

#[test]
fn google_npz_head_is_used_and_gives_the_safetensors_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = infer_tensor(dir.path(), &ckpt_fixture("tiny_vit.safetensors"), true);
    assert_eq!(want.len(), 4);
    let (got, _) = infer_tensor(dir.path(), &ckpt_fixture("tiny_vit_google.npz"), true);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.1, w.1, "label of {}", g.0);
        assert_eq!(g.2.len(), 10);
        for (a, b) in g.2.iter().zip(&w.2) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{}: {a} vs {b}",
                g.0
            );
        }
    }
    // The big_vision layout gives the same logits (f16-rounded weights).
    let f = "tiny_vit_big_vision_f16.npz";
    let (got, _) = infer_tensor(dir.path(), &ckpt_fixture(f), true);
    assert_eq!(got.len(), 4, "{f}");
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.2.iter().zip(&w.2) {
            assert!(
                (a - b).abs() <= 0.05 * (1.0 + b.abs()),
                "{f} {}: {a} vs {b}",
                g.0
            );
        }
    }
    // The optimizer-wrapped file carries a pre-logits layer: its head reads that layer's
    // output, which the model does not have, so its head is refused (the backbone alone
    // loads, with a note, for training: crates/nn/tests/nn/numerics_checkpoint.rs).
    let (_, err) = infer_tensor(
        dir.path(),
        &ckpt_fixture("tiny_vit_opt_target_f16.npz"),
        false,
    );
    assert!(
        err.contains("pre-logits (representation) layer") && err.contains("--adapter"),
        "{err}"
    );
}

#[test]
fn a_head_that_cannot_give_the_logits_is_refused_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = idat_pipe::nn::checkpoint::load_tensors(
        &ckpt_fixture("tiny_vit.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let write = |name: &str, m: &BTreeMap<String, Tensor>| {
        let p = dir.path().join(name);
        save_tensors(&p, m, &BTreeMap::new()).unwrap();
        p
    };
    // The original ImageNet-21K release ships its head zeroed: all logits 0, label 0.
    let mut zero = m.clone();
    for k in ["head.weight", "head.bias"] {
        zero.insert(k.into(), m[k].zeros_like().unwrap());
    }
    let (_, err) = infer_tensor(dir.path(), &write("zero.safetensors", &zero), false);
    assert!(err.contains("head is all zeros"), "{err}");
    // An old-timm representation layer before the head (pre_logits.fc.*).
    let mut pre = m.clone();
    let d = m["head.weight"].dims()[1];
    pre.insert(
        "pre_logits.fc.weight".into(),
        Tensor::ones((d, d), DType::F32, &Device::Cpu).unwrap(),
    );
    pre.insert(
        "pre_logits.fc.bias".into(),
        Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap(),
    );
    let (_, err) = infer_tensor(dir.path(), &write("pre.safetensors", &pre), false);
    assert!(err.contains("pre-logits (representation) layer"), "{err}");
}

#[test]
fn non_finite_outputs_and_inputs_never_become_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = idat_pipe::nn::checkpoint::load_tensors(
        &ckpt_fixture("tiny_vit.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // Finite but huge head weights: the logits overflow to inf/NaN in the forward pass.
    let h = m["head.weight"].clone();
    let huge = (h.sign().unwrap() * 3e38f64).unwrap();
    m.insert("head.weight".into(), huge);
    let w = dir.path().join("huge.safetensors");
    save_tensors(&w, &m, &BTreeMap::new()).unwrap();
    let (_, err) = infer_tensor(dir.path(), &w, false);
    assert!(
        err.contains("x.safetensors#0") && err.contains("non-finite logit"),
        "{err}"
    );
    // A NaN in the input tensor is refused when the tensor file is read.
    let mut x: Vec<f32> = vec![0.1; 4 * 3 * 32 * 32];
    x[5] = f32::NAN;
    let input = dir.path().join("x.safetensors");
    let x = Tensor::from_vec(x, (4, 3, 32, 32), &Device::Cpu).unwrap();
    save_tensors(
        &input,
        &BTreeMap::from([("input".to_string(), x)]),
        &BTreeMap::new(),
    )
    .unwrap();
    let (_, err) = infer_tensor(dir.path(), &ckpt_fixture("tiny_vit.safetensors"), false);
    assert!(
        err.contains("input [4, 3, 32, 32] F32: 1 NaN of 12288"),
        "{err}"
    );
}

/// `--images` reads a VTAB/NOAH list (`<path> <label>`, relative to the list's folder) as
/// well as plain path lists; names with spaces still work; a missing image names the line.
#[test]
fn image_list_reads_vtab_lines_with_labels() {
    use idat_pipe::infer::list_images;
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    std::fs::create_dir_all(task.join("images/test")).unwrap();
    for n in ["00000.jpg", "00001.png", "with space 7.png"] {
        std::fs::write(task.join("images/test").join(n), b"x").unwrap();
    }
    let list = task.join("test.txt");
    std::fs::write(
        &list,
        "images/test/00000.jpg 0\r\nimages/test/00001.png 12\nimages/test/with space 7.png\nimages/test/with space 7.png 3\n",
    )
    .unwrap();
    let got = list_images(&list).unwrap();
    let want: Vec<PathBuf> = [
        "00000.jpg",
        "00001.png",
        "with space 7.png",
        "with space 7.png",
    ]
    .iter()
    .map(|n| task.join("images/test").join(n))
    .collect();
    assert_eq!(got, want);
    std::fs::write(&list, "images/test/00000.jpg 0\nimages/test/gone.jpg 4\n").unwrap();
    let e = format!("{:#}", list_images(&list).unwrap_err());
    assert!(
        e.contains("test.txt:2: image `images/test/gone.jpg` not found")
            && e.contains("`<path> <label>`"),
        "{e}"
    );
    std::fs::write(&list, "images/test/nothing.jpg\n").unwrap();
    let e = format!("{:#}", list_images(&list).unwrap_err());
    assert!(
        e.contains("test.txt:1: image `images/test/nothing.jpg` not found")
            && e.contains("or `<path> <label>` as in a VTAB list"),
        "{e}"
    );
}

#[test]
fn images_are_one_file_or_every_image_below_a_folder_but_hidden_ones() {
    use idat_pipe::infer::list_images;
    let dir = tempfile::tempdir().unwrap();
    // An ImageFolder split: class folders, one with a sub-folder.
    let test = dir.path().join("my-images/test");
    // Hidden and OS entries (macOS sidecars, Jupyter checkpoints, Synology thumbnails,
    // Windows' Thumbs.db) are skipped, never taken as images.
    for f in [
        "kitty/000.jpg",
        "kitty/sub/001.png",
        "pup/002.PNG",
        "pup/notes.txt",
        "kitty/._000.jpg",
        ".ipynb_checkpoints/003-checkpoint.png",
        "pup/@eaDir/002.PNG/SYNOPHOTO_THUMB_S.jpg",
        "Thumbs.db",
        "__MACOSX/kitty/._000.jpg",
    ] {
        let p = test.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
    }
    let got = list_images(&test).unwrap();
    let want: Vec<PathBuf> = ["kitty/000.jpg", "kitty/sub/001.png", "pup/002.PNG"]
        .iter()
        .map(|f| test.join(f))
        .collect();
    assert_eq!(got, want);
    // One image file is that image, not a list to read as text.
    let one = test.join("kitty/000.jpg");
    assert_eq!(list_images(&one).unwrap(), vec![one.clone()]);
}

/// tiny_vit.safetensors (timm names, 10-class head) in the names `ViTForImageClassification`
/// writes: `vit.` + transformers names, q/k/v split, `classifier.*`.
fn as_transformers_classifier(m: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, t: &Tensor| out.insert(k.to_string(), t.clone());
    for (timm, hf) in [
        ("cls_token", "vit.embeddings.cls_token"),
        ("pos_embed", "vit.embeddings.position_embeddings"),
        (
            "patch_embed.proj.weight",
            "vit.embeddings.patch_embeddings.projection.weight",
        ),
        (
            "patch_embed.proj.bias",
            "vit.embeddings.patch_embeddings.projection.bias",
        ),
        ("norm.weight", "vit.layernorm.weight"),
        ("norm.bias", "vit.layernorm.bias"),
        ("head.weight", "classifier.weight"),
        ("head.bias", "classifier.bias"),
    ] {
        put(hf, &m[timm]);
    }
    for i in 0..2 {
        let (b, l) = (format!("blocks.{i}."), format!("vit.encoder.layer.{i}."));
        for p in ["weight", "bias"] {
            for (timm, hf) in [
                ("norm1", "layernorm_before"),
                ("norm2", "layernorm_after"),
                ("attn.proj", "attention.output.dense"),
                ("mlp.fc1", "intermediate.dense"),
                ("mlp.fc2", "output.dense"),
            ] {
                put(&format!("{l}{hf}.{p}"), &m[&format!("{b}{timm}.{p}")]);
            }
            let qkv = &m[&format!("{b}attn.qkv.{p}")];
            for (j, part) in ["query", "key", "value"].iter().enumerate() {
                put(
                    &format!("{l}attention.attention.{part}.{p}"),
                    &qkv.narrow(0, j * 32, 32).unwrap().contiguous().unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn transformers_classifier_files_single_or_sharded_give_the_timm_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = infer_tensor(dir.path(), &ckpt_fixture("tiny_vit.safetensors"), true);
    let (m, _) = idat_pipe::nn::checkpoint::load_tensors(
        &ckpt_fixture("tiny_vit.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let hf = as_transformers_classifier(&m);
    // The names are the ones transformers writes (recorded by scripts/foreign_ckpt_fixtures.py).
    let text = std::fs::read_to_string(ckpt_fixture("hf_vit_layouts.json")).unwrap();
    let layouts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let l = &layouts["vit_for_image_classification"];
    let mut recorded: Vec<String> = l["rename"]
        .as_object()
        .unwrap()
        .values()
        .chain(l["added"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    recorded.sort();
    assert_eq!(hf.keys().cloned().collect::<Vec<_>>(), recorded);
    let single = dir.path().join("model.safetensors");
    save_tensors(&single, &hf, &BTreeMap::new()).unwrap();
    // The same tensors in two shards with their index, passed as the folder.
    let sharded = dir.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    let mut map = serde_json::Map::new();
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    for (i, (k, v)) in hf.iter().enumerate() {
        let shard = if i % 2 == 0 { &mut a } else { &mut b };
        shard.insert(k.clone(), v.clone());
        let name = format!("model-0000{}-of-00002.safetensors", 1 + i % 2);
        map.insert(k.clone(), name.into());
    }
    save_tensors(
        &sharded.join("model-00001-of-00002.safetensors"),
        &a,
        &BTreeMap::new(),
    )
    .unwrap();
    save_tensors(
        &sharded.join("model-00002-of-00002.safetensors"),
        &b,
        &BTreeMap::new(),
    )
    .unwrap();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    for weights in [single, sharded] {
        let (got, err) = infer_tensor(dir.path(), &weights, true);
        assert!(
            err.contains("Hugging Face transformers ViT layout"),
            "{err}"
        );
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.1, w.1, "label of {}", g.0);
            for (x, y) in g.2.iter().zip(&w.2) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{}: {x} vs {y}",
                    weights.display()
                );
            }
        }
    }
}
