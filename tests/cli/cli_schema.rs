//! The real `idat-pipe` binary: schema, validate and argument errors.
use assert_cmd::Command;
use predicates::str::contains;

#[test]
fn committed_schema_equals_generated() {
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/pipeline.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        generated == committed,
        "schemas/pipeline.schema.json is stale: regenerate it with\n  cargo run -q -- schema > schemas/pipeline.schema.json"
    );
    assert_eq!(
        generated["properties"]["stages"]["propertyNames"]["pattern"],
        "^[A-Za-z0-9_-]+$"
    );
}

#[test]
fn schema_has_one_variant_per_kind() {
    // With test kinds registered, stages.* is a oneOf with `uses: {const: NAME}`.
    let mut r = idat_pipe::builtin_registry();
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct P {
        #[allow(dead_code)]
        n: u32,
    }
    struct K;
    impl idat_pipe::stages::StageKind for K {
        type Params = P;
        const NAME: &'static str = "x/k";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "k";
        fn run(_: P, _: &mut idat_pipe::stages::StageContext) -> anyhow::Result<()> {
            Ok(())
        }
    }
    r.register::<K>();
    let s = idat_pipe::config::schema::pipeline_schema(&r);
    let v = &s["properties"]["stages"]["additionalProperties"]["oneOf"];
    assert_eq!(v.as_array().unwrap().len(), r.names().count());
    assert_eq!(
        v[v.as_array().unwrap().len() - 1]["properties"]["uses"]["const"],
        "x/k"
    );
    let with = &v[v.as_array().unwrap().len() - 1]["properties"]["with"];
    assert_eq!(with["$ref"], "#/$defs/P");
    assert_eq!(s["$defs"]["P"]["required"][0], "n");
    // A pipeline valid for that kind validates against the schema; a wrong type does not.
    let val = jsonschema::validator_for(&s).unwrap();
    let good = serde_json::json!({"version": 1, "name": "p", "stages": {"a": {"uses": "x/k", "with": {"n": 1}}}});
    let bad = serde_json::json!({"version": 1, "name": "p", "stages": {"a": {"uses": "x/k", "with": {"n": "one"}}}});
    assert!(val.is_valid(&good));
    assert!(!val.is_valid(&bad));
    // A reference where a number is expected is fine for editors (validate resolves it).
    let with_ref = serde_json::json!({"version": 1, "name": "p", "stages": {"a": {"uses": "x/k", "with": {"n": "${params.n}"}}}});
    assert!(val.is_valid(&with_ref));
}

#[test]
fn validate_reports_every_error_with_position_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, "version: 1\nname: p\nstages:\n  a:\n    uses: nope\n  b:\n    uses: other\n    needs: [zz]\n").unwrap();
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .args(["validate", f.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains(
            "p.yaml:5:11: at `stages.a.uses`: unknown stage kind `nope`",
        ))
        .stderr(contains(
            "p.yaml:7:11: at `stages.b.uses`: unknown stage kind `other`",
        ))
        .stderr(contains(
            "p.yaml:8:13: at `stages.b.needs.0`: unknown stage `zz`",
        ))
        .stderr(contains("3 error(s)"));
}

#[test]
fn bad_arguments_and_missing_files_exit_2() {
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .args(["run"])
        .assert()
        .code(2);
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .args(["frobnicate"])
        .assert()
        .code(2);
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .args(["validate", "/nonexistent/p.yaml"])
        .assert()
        .code(2)
        .stderr(contains("/nonexistent/p.yaml: cannot read"));
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .args([
            "plan",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pipelines/five.yaml"),
            "--set",
            "novalue",
        ])
        .assert()
        .code(2)
        .stderr(contains("expected PATH=VALUE"));
}

#[test]
fn pipeline_files_carry_the_schema_comment() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["pipelines", "tests/pipelines"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                n += 1;
                let first = std::fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                assert!(
                    first.starts_with("# yaml-language-server: $schema=")
                        && first.ends_with("schemas/pipeline.schema.json"),
                    "{}: first line must be the yaml-language-server $schema comment",
                    p.display()
                );
            }
        }
    }
    assert!(n >= 4);
}

/// A pipeline whose `model/pretrain` and `train/adapt` (a matrix over the batch size) set
/// `optim.accum_steps`.
const ACCUM: &str = "version: 1
name: p
stages:
  data:
    uses: dataset/mini
    with: {tasks: [fashion10], seed: 0, n_train: 100, n_test: 50}
  decode:
    uses: data/decode
    needs: [data]
    with: {dataset: data, task: fashion10, size: 16}
  pre:
    uses: model/pretrain
    needs: [decode]
    with:
      arch: {img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 32, depth: 2, num_heads: 2}
      data: decode
      optim: {batch_size: 32, accum_steps: PRE}
  at:
    uses: train/adapt
    needs: [decode, pre]
    matrix: {bs: [64, 36]}
    with:
      task: fashion10
      data: decode
      model: pre
      optim: {batch_size: \"${matrix.bs}\", accum_steps: AT}
";

#[test]
fn accum_steps_that_does_not_divide_the_batch_is_refused_at_validate() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let validate = |pre: &str, at: &str| {
        std::fs::write(&f, ACCUM.replace("PRE", pre).replace("AT", at)).unwrap();
        Command::cargo_bin("idat-pipe")
            .unwrap()
            .args(["validate", f.to_str().unwrap()])
            .assert()
    };
    validate("2", "4").code(0);
    validate("3", "4")
        .code(2)
        .stderr(contains(
            "p.yaml:17:44: at `stages.pre.with.optim.accum_steps`: accum_steps 3 does not \
             divide batch_size 32: each optimiser step runs batch_size / accum_steps images at \
             a time; write a divisor of 32 (1, 2, 4, 8, 16, 32) or a batch_size that is a \
             multiple of 3",
        ))
        .stderr(contains("1 error(s)"));
    // Every matrix cell is checked: 8 divides 64, not 36.
    validate("1", "8")
        .code(2)
        .stderr(contains(
            "p.yaml:26:56: at `stages.at.with.optim.accum_steps`: in `at[bs=36]`: accum_steps \
             8 does not divide batch_size 36",
        ))
        .stderr(contains(
            "write a divisor of 36 (1, 2, 3, 4, 6, 9, 12, 18, 36)",
        ));
    validate("0", "1").code(2).stderr(contains(
        "at `stages.pre.with.optim.accum_steps`: expected an integer of at least 1, got 0",
    ));
}

#[test]
fn accum_steps_can_be_set_on_the_shipped_vtab_pipeline() {
    // What docs/vtab.md tells a card that cannot hold batch 64 to write.
    let vtab = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/vtab.yaml");
    let run = |set: &str| {
        Command::cargo_bin("idat-pipe")
            .unwrap()
            .args(["validate", vtab, "--set", set])
            .assert()
    };
    run("stages.idat.with.optim.accum_steps=2")
        .code(0)
        .stdout(contains("vtab.yaml: ok"));
    run("stages.eval_idat.with.batch_size=32").code(0);
    run("stages.at.with.optim.accum_steps=4").code(0);
    run("stages.idat.with.optim.accum_steps=3")
        .code(2)
        .stderr(contains(
            "--set: at `stages.idat.with.optim.accum_steps`: accum_steps 3 does not divide \
         batch_size 64",
        ));
}

const STAGES_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/pipelines/stages_data.yaml"
);

/// `idat-pipe --cache-dir D/cache run STAGES_DATA --runs-dir D/runs ARGS`: exit code, and
/// stdout then stderr.
fn run_in(d: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .args(["run", STAGES_DATA, "--runs-dir"])
        .arg(d.join("runs"))
        .args(args)
        .output()
        .unwrap();
    let text = [out.stdout, out.stderr].concat();
    (
        out.status.code(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_cpu_build_is_refused_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    for device in ["cuda", "cuda:1"] {
        for extra in [&[][..], &["--dry-run"], &["--gpus", "2"]] {
            let mut args = vec!["--device", device];
            args.extend_from_slice(extra);
            let (code, err) = run_in(d.path(), &args);
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!(
                    "device `{device}` asked for, but this idat-pipe was built without CUDA"
                )) && err.contains("scripts/cuda-build.sh"),
                "{args:?}: {err}"
            );
            // Nothing ran: no cache, no run record, no instance line.
            assert!(!err.contains("ran ") && !err.contains("FAILED"), "{err}");
            assert!(!d.path().join("cache").exists() && !d.path().join("runs").exists());
        }
    }
    // exec-stage (what each Slurm task runs) refuses it the same way.
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .arg("--cache-dir")
        .arg(d.path().join("cache"))
        .args([
            "exec-stage",
            STAGES_DATA,
            "--instance",
            "data",
            "--device",
            "cuda",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("was built without CUDA"), "{err}");
    assert!(!d.path().join("cache").exists());
}

#[test]
fn dry_run_refuses_the_placement_flags_the_real_run_refuses() {
    let d = tempfile::tempdir().unwrap();
    for (args, msg) in [
        (
            &["--device", "cuda:abc"][..],
            "device `cuda:abc`: expected `cpu`, `cuda` or `cuda:N`",
        ),
        (
            &["--device", "gpu"],
            "device `gpu`: expected `cpu`, `cuda` or `cuda:N`",
        ),
        (
            &["--device", "cuda:-1"],
            "device `cuda:-1`: expected `cpu`, `cuda` or `cuda:N`",
        ),
        (
            &["--executor", "nosuch"],
            "unknown executor `nosuch` (executors: local, slurm)",
        ),
        (
            &["--executor", "slurm", "--gpus", "2"],
            "--gpus places instances on this machine's GPUs",
        ),
    ] {
        let (real, real_err) = run_in(d.path(), args);
        let dry: Vec<&str> = args.iter().copied().chain(["--dry-run"]).collect();
        let (code, err) = run_in(d.path(), &dry);
        assert_eq!(
            (code, real),
            (Some(2), Some(2)),
            "{args:?}: {err} / {real_err}"
        );
        assert!(
            err.contains(msg) && real_err.contains(msg),
            "{args:?}: {err} / {real_err}"
        );
        assert!(!err.contains("will run"), "{args:?} printed a plan: {err}");
    }
    // Good flags still print the plan.
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .arg("--cache-dir")
        .arg(d.path().join("cache"))
        .args([
            "run",
            STAGES_DATA,
            "--dry-run",
            "--device",
            "cpu",
            "--gpus",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("will run"));
}

#[test]
fn run_help_says_what_gpus_does_as_gpu_md_does() {
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help: String = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for part in [
        "else one per `/dev/nvidiaN` file",
        "More than are visible is an error, except where only `/dev/nvidiaN` files tell (no NVML and no `CUDA_VISIBLE_DEVICES`",
        "At most 1 with `--device cuda:N`",
        "(with a unit, e.g. `80G`",
    ] {
        assert!(help.contains(part), "no `{part}` in:\n{help}");
    }
}

#[test]
fn a_comma_separated_set_for_a_list_says_what_to_write_and_nothing_else() {
    // What a Hydra user types for a sweep: `params.seeds=1,2`. One error per axis that uses
    // it, with the list to write; no follow-on "unresolved reference" for `${matrix.seed}`.
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["plan", "pipelines/demo.yaml", "--set", "params.seeds=1,2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("matrix axis `seed` must be a list, got \"1,2\"; a list is written in brackets: `[1, 2]`")
            && err.contains("--set 'NAME=[1,2]'"),
        "{err}"
    );
    assert!(!err.contains("unresolved reference"), "{err}");
    // What it says to write works.
    Command::cargo_bin("idat-pipe")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "validate",
            "pipelines/demo.yaml",
            "--set",
            "params.seeds=[1,2]",
        ])
        .assert()
        .success();
}

#[test]
fn completions_are_generated_for_each_shell_and_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef idat-pipe"),
        ("fish", "complete -c idat-pipe"),
    ] {
        let out = Command::cargo_bin("idat-pipe")
            .unwrap()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["run", "validate", "plan", "budget", "bench", "infer"] {
            assert!(text.contains(sub), "{shell} lacks {sub}");
        }
    }
    let out = Command::cargo_bin("idat-pipe")
        .unwrap()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
