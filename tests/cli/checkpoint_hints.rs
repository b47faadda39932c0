//! `model/vit` on the checkpoint layouts found in the field, and the rule that every fix
//! an error suggests exists: the `with.NAME` options named by checkpoint errors (produced
//! here, and written anywhere in the crates' sources) are checked against the generated schema, and the
//! `--flags` named by `infer`'s messages against its command line.

use candle_core::{DType, Device, Tensor};
use idat_pipe::config::schema;
use idat_pipe::nn::checkpoint::{load_tensors, save_tensors};
use idat_pipe::stages::StageContext;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/nn/tests/fixtures/ckpt")
        .join(name)
}

/// The fixture ViT (dim 32, depth 2, heads 2, patch 8, img 32), with overrides.
fn arch(overrides: Value) -> Value {
    let mut a = json!({
        "img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 32, "depth": 2,
        "num_heads": 2, "mlp_ratio": 4.0, "qkv_bias": true, "drop_rate": 0.0,
        "attn_drop_rate": 0.0, "drop_path_rate": 0.0, "in_chans": 3
    });
    for (k, v) in overrides.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

/// Runs `model/vit` with `with`; on success returns the notes of its model.json.
fn model_vit(with: Value) -> anyhow::Result<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut ctx = StageContext::new("student", out.clone(), dir.path().join("ckpt"));
    idat_pipe::builtin_registry()
        .get("model/vit")
        .unwrap()
        .run(&with, &mut ctx)?;
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    Ok(info["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect())
}

fn with_file(path: &Path, extra: Value) -> Value {
    let mut w = json!({"arch": arch(json!({})), "weights": {"from": "file", "path": path}});
    for (k, v) in extra.as_object().unwrap() {
        w[k] = v.clone();
    }
    w
}

fn reference() -> BTreeMap<String, Tensor> {
    load_tensors(&fixture("tiny_vit.safetensors"), &Device::Cpu)
        .unwrap()
        .0
}

fn save(dir: &Path, name: &str, m: &BTreeMap<String, Tensor>) -> PathBuf {
    let p = dir.join(name);
    save_tensors(&p, m, &BTreeMap::new()).unwrap();
    p
}

/// Every `with.NAME` written in `text`.
fn with_options(text: &str) -> BTreeSet<String> {
    text.match_indices("`with.")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        // `with.{p}` in a format string names no option.
        .filter(|name| !name.is_empty())
        .collect()
}

/// The property names of an object schema, following `$ref`s into `defs` and the
/// variants of `oneOf`/`anyOf`/`allOf`.
fn props(v: &Value, defs: &Value, out: &mut BTreeSet<String>) {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        props(&defs[name], defs, out);
    }
    if let Some(p) = v.get("properties").and_then(Value::as_object) {
        out.extend(p.keys().cloned());
    }
    for k in ["oneOf", "anyOf", "allOf"] {
        for s in v.get(k).and_then(Value::as_array).into_iter().flatten() {
            props(s, defs, out);
        }
    }
}

/// The `with:` options of `kind`, from its params schema and, the same, from the
/// pipeline schema `idat-pipe schema` prints.
fn schema_options(kind: &str) -> BTreeSet<String> {
    let reg = idat_pipe::builtin_registry();
    let k = schema::kind_params(&reg, kind).unwrap_or_else(|| panic!("no kind {kind}"));
    let mut from_kind = BTreeSet::new();
    props(&k, &k["$defs"], &mut from_kind);
    let full = schema::pipeline_schema(&reg);
    let variant = full["properties"]["stages"]["additionalProperties"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["title"] == kind)
        .unwrap()
        .clone();
    let mut from_full = BTreeSet::new();
    props(
        &variant["properties"]["with"],
        &full["$defs"],
        &mut from_full,
    );
    assert_eq!(from_kind, from_full, "{kind}");
    from_kind
}

#[test]
fn published_and_wrapped_layouts_load_and_every_suggested_option_exists() {
    let dir = tempfile::tempdir().unwrap();
    let known = schema_options("model/vit");
    let mut errors = Vec::new();

    // The original in21k layout under `opt/target/` (pre_logits, a head), next to
    // optimizer entries and a step counter: loads, with notes.
    let mut zr =
        zip::ZipArchive::new(std::fs::File::open(fixture("tiny_vit_opt_target_f16.npz")).unwrap())
            .unwrap();
    let npz = dir.path().join("ViT-B_16.npz");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for i in 0..zr.len() {
        let mut e = zr.by_index(i).unwrap();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        zw.start_file(e.name(), opts).unwrap();
        zw.write_all(&b).unwrap();
    }
    let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (), }\n";
    let mut step = b"\x93NUMPY\x01\x00".to_vec();
    step.extend_from_slice(&(header.len() as u16).to_le_bytes());
    step.extend_from_slice(header.as_bytes());
    step.extend_from_slice(&100i64.to_le_bytes());
    zw.start_file("opt/state/step.npy", opts).unwrap();
    zw.write_all(&step).unwrap();
    zw.finish().unwrap();
    let notes = model_vit(with_file(&npz, json!({}))).unwrap();
    let notes = notes.join("\n");
    assert!(notes.contains("opt/target/pre_logits/kernel"), "{notes}");
    assert!(notes.contains("opt/state/step ('<i8')"), "{notes}");

    // DDP / Lightning / nested prefixes: removed with one note.
    for prefix in ["module.", "model.", "backbone.", "module.model."] {
        let m: BTreeMap<String, Tensor> = reference()
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect();
        let p = save(dir.path(), "ddp.safetensors", &m);
        let notes = model_vit(with_file(&p, json!({}))).unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("removed the prefix `{prefix}` that all"))),
            "{notes:?}"
        );
    }

    // Tensors the model lacks (layer scale): refused, and both suggested fixes work.
    let mut m = reference();
    m.insert(
        "blocks.0.ls1.gamma".into(),
        Tensor::ones(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = save(dir.path(), "ls.safetensors", &m);
    let e = format!("{:#}", model_vit(with_file(&p, json!({}))).unwrap_err());
    assert!(
        e.contains("1 unexpected") && e.contains("blocks.0.ls1.gamma [32]"),
        "{e}"
    );
    assert!(
        with_options(&e).contains("allow_unexpected") && with_options(&e).contains("ignore"),
        "{e}"
    );
    errors.push(e);
    let notes = model_vit(with_file(&p, json!({"allow_unexpected": true}))).unwrap();
    assert!(
        notes.iter().any(|n| n.contains("dropped 1 unexpected")),
        "{notes:?}"
    );
    let notes = model_vit(with_file(&p, json!({"ignore": ["blocks.0.ls1."]}))).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("ignored 3") && n.contains("blocks.0.ls1.gamma")),
        "{notes:?}"
    );

    // An `ignore` that would drop a tensor the backbone needs is refused.
    let e = format!(
        "{:#}",
        model_vit(with_file(&p, json!({"ignore": ["blocks.1.*"]}))).unwrap_err()
    );
    assert!(e.contains("`blocks.1.*` covers 12 tensor(s)"), "{e}");
    errors.push(e);

    // Missing tensors (a deeper arch) and mis-shaped ones (a wider arch).
    let r = fixture("tiny_vit.safetensors");
    for over in [json!({"depth": 3}), json!({"embed_dim": 64})] {
        let w = json!({"arch": arch(over.clone()), "weights": {"from": "file", "path": r}});
        let e = format!("{:#}", model_vit(w).unwrap_err());
        assert!(with_options(&e).contains("arch"), "{over}: {e}");
        errors.push(e);
    }

    // A non-finite weight: refused, naming the tensor.
    let mut m = reference();
    let w = m["norm.weight"].to_dtype(DType::F16).unwrap();
    let mut v = w.to_vec1::<half::f16>().unwrap();
    v[0] = half::f16::INFINITY;
    m.insert(
        "norm.weight".into(),
        Tensor::from_vec(v, 32, &Device::Cpu).unwrap(),
    );
    let p = save(dir.path(), "inf.safetensors", &m);
    let e = format!("{:#}", model_vit(with_file(&p, json!({}))).unwrap_err());
    assert!(
        e.contains("norm.weight [32] F16: 1 inf of 32 values"),
        "{e}"
    );

    // Every option named by those errors is in the schema.
    for e in &errors {
        let named = with_options(e);
        assert!(!named.is_empty(), "no fix named in: {e}");
        for o in named {
            assert!(
                known.contains(&o),
                "`with.{o}` is not a model/vit option ({known:?}): {e}"
            );
        }
    }
}

/// The layouts of issue 22 through `model/vit`: a transformers ViT, a sharded folder (keyed by
/// the index and every shard), a PyTorch pickle (refused with the command converting it) and a
/// backbone inside a larger model (its fix, `with.ignore`, exists and works).
#[test]
fn model_vit_reads_transformers_and_sharded_files_and_refuses_pickles_with_fixes_that_exist() {
    let known = schema_options("model/vit");
    let dir = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();

    let notes = model_vit(with_file(&fixture("hf_vit/model.safetensors"), json!({}))).unwrap();
    let notes = notes.join("\n");
    assert!(
        notes.contains("converted 38 tensors from the Hugging Face transformers ViT layout"),
        "{notes}"
    );
    assert!(
        notes.contains("dropped the pooler") && notes.contains("layer_norm_eps 1e-12"),
        "{notes}"
    );
    assert!(!notes.contains("wrapped"), "{notes}");

    let sharded = fixture("hf_vit_sharded");
    let small = json!({"embed_dim": 8, "depth": 1, "img_size": 16});
    let w = json!({"arch": arch(small.clone()), "weights": {"from": "file", "path": sharded}});
    let notes = model_vit(w.clone()).unwrap().join("\n");
    assert!(notes.contains("from the 3 shards listed by"), "{notes}");
    let inputs = idat_pipe::builtin_registry()
        .get("model/vit")
        .unwrap()
        .external_inputs(&w);
    let names: Vec<String> = inputs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "model.safetensors.index.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors"
        ],
        "the cache key covers the index and every shard"
    );

    let e = format!(
        "{:#}",
        model_vit(with_file(&fixture("torch_zip.pth"), json!({}))).unwrap_err()
    );
    assert!(
        e.contains("refused, because reading it means unpickling") && e.contains("python -c"),
        "{e}"
    );

    let mut dino: BTreeMap<String, Tensor> = reference()
        .into_iter()
        .map(|(k, v)| (format!("module.backbone.{k}"), v))
        .collect();
    dino.insert(
        "module.head.mlp.0.weight".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = save(dir.path(), "dino.safetensors", &dino);
    let e = format!("{:#}", model_vit(with_file(&p, json!({}))).unwrap_err());
    assert!(
        e.contains("do not carry that prefix") && with_options(&e).contains("ignore"),
        "{e}"
    );
    errors.push(e);
    let notes = model_vit(with_file(&p, json!({"ignore": ["module.head."]}))).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("removed the prefix `module.backbone.` that all")),
        "{notes:?}"
    );
    for e in &errors {
        for o in with_options(e) {
            assert!(
                known.contains(&o),
                "`with.{o}` is not a model/vit option: {e}"
            );
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `with.NAME` options written anywhere in the crates' sources: a stage kind's file may only name
/// its own options, other files an option of some kind.
#[test]
fn every_with_option_named_in_src_is_in_the_schema() {
    let reg = idat_pipe::builtin_registry();
    let all: BTreeSet<String> = reg
        .names()
        .flat_map(|k| schema_options(k).into_iter())
        .collect();
    let mut files = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in [
        "src",
        "crates/engine/src",
        "crates/nn/src",
        "crates/domain/src",
    ] {
        rust_files(&root.join(d), &mut files);
    }
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let named = with_options(&text);
        if named.is_empty() {
            continue;
        }
        let kind = text
            .split("const NAME: &'static str = \"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let known = match kind {
            Some(k) => schema_options(k),
            None => all.clone(),
        };
        for o in named {
            assert!(
                known.contains(&o),
                "{}: `with.{o}` is not an option of {}",
                f.display(),
                kind.unwrap_or("any kind")
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "only {checked} options found: the scan is broken"
    );
}

/// The `--flags` written in infer's messages and docs are flags of `idat-pipe infer`.
#[test]
fn every_flag_named_by_infer_exists() {
    use clap::Args;
    let cmd = idat_pipe::infer::InferArgs::augment_args(clap::Command::new("infer"));
    let flags: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/infer.rs"))
        .unwrap();
    let mut named = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        if !name.is_empty() && text[..i].ends_with(|c: char| !c.is_ascii_alphanumeric()) {
            named.insert(name.trim_end_matches('-').to_string());
        }
    }
    assert!(
        named.contains("model") && named.contains("num-classes"),
        "{named:?}"
    );
    for n in named {
        assert!(
            flags.contains(&n),
            "src/infer.rs names --{n}, not a flag of infer ({flags:?})"
        );
    }
}

/// Options a message tells the user to `set` (`set skip_bad_images: true`, `set optim.lr`)
/// in the messages of the stage kinds and the data layer are options of some kind.
#[test]
fn every_option_a_message_says_to_set_exists() {
    let reg = idat_pipe::builtin_registry();
    let all: BTreeSet<String> = reg
        .names()
        .flat_map(|k| schema_options(k).into_iter())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut files = Vec::new();
    for d in ["domain/src/kinds", "domain/src/data", "nn/src/checkpoint"] {
        rust_files(&root.join(d), &mut files);
    }
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Message text only: lines holding a string literal, outside comments.
        for line in text.lines().filter(|l| l.contains('"')) {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("set ") {
                // The word `set`, not the end of `dataset` or `reset`.
                if code[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                let rest = code[i + 4..].trim_start_matches('`');
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == '.')
                    .collect();
                let after = &rest[name.len()..];
                let name = name.trim_end_matches('.');
                // An option looks like `snake_case`, `a.b` or `name: value`.
                if name.is_empty()
                    || !(name.contains('_') || name.contains('.') || after.starts_with(':'))
                {
                    continue;
                }
                let first = name.split('.').next().unwrap();
                assert!(
                    all.contains(first),
                    "{}: a message says to set `{name}`, which no stage kind has: {line}",
                    f.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 1, "the scan found nothing: it is broken");
}
