//! `--set` overrides and schema messages of `config::load_str`: a typo is refused with a
//! suggestion, `+` adds, a broken flow value is an error, an error a `--set` value causes is
//! reported at `--set`, tagged-enum errors name the field, sha256 fields are checked and
//! lower-cased.
use idat_engine::config::{load_str, Diagnostic, Loaded};

const P: &str = "version: 1
name: p
params:
  root: vtab-1k
  weights: student.safetensors
  student: {img_size: 16, patch_size: 8, num_classes: 0, embed_dim: 32, depth: 2, num_heads: 2}
  sha: \"ABCDEF0000000000000000000000000000000000000000000000000000000000\"
stages:
  data:
    uses: dataset/vtab1k
    with:
      source: {kind: local, path: \"${params.root}\"}
      tasks: [eurosat]
  student:
    uses: model/vit
    with:
      arch: \"${params.student}\"
      weights: {from: file, path: \"${params.weights}\", sha256: \"${params.sha}\"}
";

fn load(sets: &[&str]) -> Result<Loaded, Vec<Diagnostic>> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str("p.yaml", P, &sets, &idat_domain::kinds::registry())
}

/// The one error of a load, as printed.
fn error(sets: &[&str]) -> String {
    let e = load(sets).expect_err("must fail");
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].to_string()
}

#[test]
fn a_set_of_a_param_the_file_lacks_is_an_error_with_a_suggestion() {
    assert_eq!(
        error(&["params.rot=../data/vtab-1k"]),
        "--set: at `params.rot`: --set params.rot=../data/vtab-1k: the pipeline has no param \
         `rot` (params: root, weights, student, sha); did you mean `root`?; to add it, write \
         `--set +params.rot=../data/vtab-1k`"
    );
    assert_eq!(
        error(&["stages.dta.with.tasks=[dtd]"]),
        "--set: at `stages.dta.with.tasks`: --set stages.dta.with.tasks=[dtd]: the pipeline \
         has no stage `dta` (stages: data, student); did you mean `data`?; to add it, write \
         `--set +stages.dta.with.tasks=[dtd]`"
    );
    // `+` adds a param; the same `+` of an existing one is refused.
    let l = load(&["+params.extra=1"]).unwrap();
    assert_eq!(l.resolved["params"]["extra"], 1);
    assert!(error(&["+params.root=x"]).contains("`params.root` exists already"));
    // Inside a stage, a field its `with:` lacks may be set (the kind's schema checks it).
    let l = load(&[
        "stages.data.with.tasks=[dtd]",
        "stages.data.with.revision=main",
    ]);
    assert!(
        l.is_err(),
        "the kind's schema still checks a field set in `with:`"
    );
    let l = load(&[
        "stages.data.with.tasks=[dtd]",
        "+stages.student.needs=[data]",
    ]);
    assert!(l.is_ok(), "{l:?}");
}

#[test]
fn a_broken_flow_value_is_an_error() {
    assert_eq!(
        error(&["params.student={img_size: 16, patch_size: 8"]),
        "--set: at `params.student`: --set `params.student={img_size: 16, patch_size: 8`: the \
         value starts with `{` but is not valid as a YAML flow mapping: unclosed bracket '{' \
         (quote the whole value in the shell, e.g. --set 'PATH={a: 1, b: 2}')"
    );
}

#[test]
fn an_error_a_set_value_causes_is_reported_at_the_set() {
    let e: Vec<String> = load(&["stages.data.with.source={kind: local, pth: x}"])
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        e,
        [
            "--set: at `stages.data.with.source`: missing field `path` (from \
             `--set stages.data.with.source={kind: local, pth: x}`)",
            "--set: at `stages.data.with.source.pth`: unknown field `pth` (expected: kind, \
             path); did you mean `path`? (from `--set stages.data.with.source={kind: local, \
             pth: x}`)"
        ]
    );
    assert_eq!(
        error(&["+stages.dta.with.tasks=[dtd]"]),
        "--set: at `stages.dta`: missing field `uses` (from `--set +stages.dta.with.tasks=[dtd]`)"
    );
    // A param set by `--set` and used through a reference: the error is the override's.
    assert_eq!(
        error(&["params.student.embed_dim=abc"]),
        "--set: at `stages.student.with.arch.embed_dim`: expected an integer, got \"abc\" \
         (at `params.student.embed_dim`, from `--set params.student.embed_dim=abc`)"
    );
    // The same bad value written in the file: at the reference in the file.
    let text = P.replace("embed_dim: 32", "embed_dim: abc");
    let e = load_str("p.yaml", &text, &[], &idat_domain::kinds::registry()).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "p.yaml:17:13: at `stages.student.with.arch.embed_dim`: expected an integer, got \"abc\""
    );
}

#[test]
fn tagged_enum_errors_name_the_field_of_the_selected_variant() {
    assert_eq!(
        error(&["stages.student.with.weights={from: hub}"]),
        "--set: at `stages.student.with.weights`: missing field `repo` (from \
         `--set stages.student.with.weights={from: hub}`)"
    );
    assert_eq!(
        error(&["stages.data.with.source={kind: lcoal, path: x}"]),
        "--set: at `stages.data.with.source.kind`: kind: `lcoal` is not one of local, archive, \
         hub; did you mean `local`? (from `--set stages.data.with.source={kind: lcoal, path: x}`)"
    );
    assert_eq!(
        error(&["stages.data.with.source={path: x}"]),
        "--set: at `stages.data.with.source`: missing field `kind` (one of local, archive, hub) \
         (from `--set stages.data.with.source={path: x}`)"
    );
}

#[test]
fn sha256_is_checked_at_load_and_lower_cased() {
    assert_eq!(
        error(&["params.sha=abc"]),
        "--set: at `stages.student.with.weights.sha256`: `abc` is not a sha256: expected 64 hex \
         digits (0-9, a-f; either case), got 3 characters (at `params.sha`, from \
         `--set params.sha=abc`)"
    );
    let text = P.replace("${params.sha}", "abc");
    let e = load_str("p.yaml", &text, &[], &idat_domain::kinds::registry()).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "p.yaml:18:64: at `stages.student.with.weights.sha256`: `abc` is not a sha256: expected \
         64 hex digits (0-9, a-f; either case), got 3 characters"
    );
    let l = load(&[]).unwrap();
    let inst = l.instances.iter().find(|i| i.stage == "student").unwrap();
    assert_eq!(
        inst.with["weights"]["sha256"],
        "abcdef0000000000000000000000000000000000000000000000000000000000"
    );
    // A case-only change is the same `with:` (the cache key's input).
    let lower =
        load(&["params.sha=abcdef0000000000000000000000000000000000000000000000000000000000"])
            .unwrap();
    let inst2 = lower
        .instances
        .iter()
        .find(|i| i.stage == "student")
        .unwrap();
    assert_eq!(inst.with, inst2.with);
}

#[test]
fn an_unknown_top_level_key_is_reported_at_the_key() {
    let text = "version: 1\nname: p\nstagse:\n  a: {uses: eval}\nstages: {}\n";
    let e = load_str("q.yaml", text, &[], &idat_domain::kinds::registry()).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "q.yaml:3:1: at `stagse`: unknown field `stagse` (expected: version, name, params, \
         stages, executor, slurm); did you mean `stages`?"
    );
}

/// The errors of loading `text` (labelled `r.yaml`) with `sets`, as printed.
fn errors_of(text: &str, sets: &[&str]) -> Vec<String> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str("r.yaml", text, &sets, &idat_domain::kinds::registry())
        .expect_err("must fail")
        .iter()
        .map(|d| d.to_string())
        .collect()
}

/// The `source.path` of the `data` instance.
fn data_root(l: &Loaded) -> String {
    let inst = l.instances.iter().find(|i| i.stage == "data").unwrap();
    inst.with["source"]["path"].as_str().unwrap().to_string()
}

#[test]
fn references_inside_params_resolve_through_chains_and_sets() {
    // A chain a -> b -> c, inside a longer string, reaching a path field.
    let text = P.replace(
        "  root: vtab-1k\n",
        "  base: /data\n  shared: \"${params.base}/shared\"\n  root: \"${params.shared}/vtab-1k\"\n",
    );
    let l = load_str("p.yaml", &text, &[], &idat_domain::kinds::registry()).unwrap();
    assert_eq!(data_root(&l), "/data/shared/vtab-1k");
    // A `--set` value holding a reference resolves the same way, in either place.
    let sets = ["params.base=/mnt/${params.weights}".to_string()];
    let l = load_str("p.yaml", &text, &sets, &idat_domain::kinds::registry()).unwrap();
    assert_eq!(data_root(&l), "/mnt/student.safetensors/shared/vtab-1k");
    let l = load(&["+params.disk=/scratch", "params.root=${params.disk}/v"]).unwrap();
    assert_eq!(data_root(&l), "/scratch/v");
    let l = load(&["stages.data.with.source.path=${params.root}/../x"]).unwrap();
    assert!(data_root(&l).ends_with("/x"), "{}", data_root(&l));
}

#[test]
fn a_cycle_in_params_is_refused_at_load_with_the_cycle_named() {
    let text = "version: 1\nname: p\nparams: {a: \"${params.b}\", b: \"${params.a}\"}\n\
                stages:\n  d:\n    uses: dataset/mini\n    \
                with: {tasks: [\"${params.a}\"], seed: 0, n_train: 10, n_test: 10}\n";
    // Once, at the param, not again at the stage that uses it.
    assert_eq!(
        errors_of(text, &[]),
        ["r.yaml:3:13: at `params.a`: cycle: params.a -> params.b -> params.a"]
    );
    // A cycle made by a `--set` is the override's.
    assert_eq!(
        error(&[
            "params.root=x/${params.weights}",
            "params.weights=${params.root}"
        ]),
        "--set: at `params.root`: cycle: params.root -> params.weights -> params.root (from \
         `--set params.root=x/${params.weights}`)"
    );
    // A reference to a param that does not exist, in a list inside params.
    let text = P.replace(
        "  root: vtab-1k\n",
        "  root: vtab-1k\n  l: [a, \"${params.rot}\"]\n",
    );
    let e = load_str("p.yaml", &text, &[], &idat_domain::kinds::registry()).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "p.yaml:5:10: at `params.l.1`: unresolved reference `${params.rot}`: no such param \
         (params: root, l, weights, student, sha)"
    );
}

#[test]
fn environment_variables_are_not_expanded_and_the_error_says_what_to_do() {
    // `${VAR}` anywhere: not a reference.
    let e = error(&["stages.data.with.source.path=${IDAT_NO_SUCH_VAR}/vtab"]);
    assert_eq!(
        e,
        "--set: at `stages.data.with.source.path`: `${IDAT_NO_SUCH_VAR}` is not a reference \
         (those are `${params.NAME}`, `${matrix.AXIS}` and `${stages.ID.outputs[.FILE]}`); \
         environment variables are not expanded in pipeline files: give the value on the \
         command line, where your shell expands `$IDAT_NO_SUCH_VAR`: `--set \
         \"stages.data.with.source.path=${IDAT_NO_SUCH_VAR}/vtab\"`; or write \
         `$${IDAT_NO_SUCH_VAR}` for the text `${IDAT_NO_SUCH_VAR}` (from `--set \
         stages.data.with.source.path=${IDAT_NO_SUCH_VAR}/vtab`)"
    );
    // `$VAR` in a path field, written in a param: the hint names the param.
    let text = P.replace("root: vtab-1k", "root: $IDAT_NO_SUCH_VAR/vtab-1k");
    let e = load_str("p.yaml", &text, &[], &idat_domain::kinds::registry()).unwrap_err();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        e[0].to_string(),
        format!(
            "p.yaml:12:35: at `stages.data.with.source.path`: `$IDAT_NO_SUCH_VAR/vtab-1k` holds \
             `$IDAT_NO_SUCH_VAR`, and no file or folder `{}/$IDAT_NO_SUCH_VAR/vtab-1k` exists; \
             environment variables are not expanded in pipeline files: give the value on the \
             command line, where your shell expands `$IDAT_NO_SUCH_VAR`: `--set \
             \"params.root=$IDAT_NO_SUCH_VAR/vtab-1k\"`",
            cwd.display()
        )
    );
    // A folder whose name really holds a `$` is a path like any other once it exists.
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("$HOME");
    std::fs::create_dir(&real).unwrap();
    let l = load(&[&format!("params.root={}", real.display())]).unwrap();
    assert_eq!(data_root(&l), real.display().to_string());
    // `$${` is the escape for a literal `${` (here in a path that exists).
    let braced = d.path().join("${HOME}");
    std::fs::create_dir(&braced).unwrap();
    let l = load(&[&format!("params.root={}/$${{HOME}}", d.path().display())]).unwrap();
    let inst = l.instances.iter().find(|i| i.stage == "data").unwrap();
    // Kept escaped until the stage runs (the run-time substitution makes it `${HOME}`).
    assert_eq!(
        inst.with["source"]["path"],
        format!("{}/$${{HOME}}", d.path().display())
    );
}

#[test]
fn a_reference_outside_params_with_and_matrix_is_an_error() {
    let text = "version: 1\nname: \"${params.n}\"\nparams: {n: x}\nstages:\n  d:\n    \
                uses: dataset/mini\n    resources: {mem: \"${params.n}\"}\n    \
                with: {tasks: [fashion10], seed: 0, n_train: 10, n_test: 10}\n";
    let e = errors_of(text, &[]);
    assert!(
        e.iter().any(|e| e.starts_with(
            "r.yaml:2:7: at `name`: references (`${...}`) are resolved only in `params`, a \
             stage's `with:` and its `matrix:`"
        )),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("at `stages.d.resources.mem`")),
        "{e:?}"
    );
    // Not even escaped: these fields are taken as written.
    let e = errors_of(
        &text.replace("name: \"${params.n}\"", "name: \"$${params.n}\""),
        &[],
    );
    assert!(e.iter().any(|e| e.contains("at `name`")), "{e:?}");
}

/// A `dataset/mini` stage whose `with:` is `WITH`.
fn mini(with: &str) -> String {
    format!("version: 1\nname: n\nstages:\n  d:\n    uses: dataset/mini\n    with: {with}\n")
}

#[test]
fn yaml_1_2_integers_are_accepted_and_integral_floats_become_integers() {
    let load_with = |with: &str, sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let l = load_str(
            "n.yaml",
            &mini(with),
            &sets,
            &idat_domain::kinds::registry(),
        )
        .unwrap_or_else(|e| panic!("{with}: {e:?}"));
        l.instances[0].with.clone()
    };
    let want = serde_json::json!({"tasks": ["fashion10"], "seed": 7, "n_train": 1000, "n_test": 5});
    // Leading zeros (decimal in YAML 1.2), `+`, hex and octal, and floats with no fraction.
    for with in [
        "{tasks: [fashion10], seed: 007, n_train: 1000, n_test: 5}",
        "{tasks: [fashion10], seed: +7, n_train: 1e3, n_test: 0o5}",
        "{tasks: [fashion10], seed: 7.0, n_train: 0x3E8, n_test: 005}",
    ] {
        let got = load_with(with, &[]);
        assert_eq!(got, want, "{with}");
        // Integers, not floats: the cache key of `7.0` is the key of `7`.
        assert!(
            got["seed"].is_u64() && got["n_train"].is_u64(),
            "{with}: {got}"
        );
    }
    // The same through `--set` and through a param.
    let with = "{tasks: [fashion10], seed: 1, n_train: \"${params.n}\", n_test: 5}";
    let text = mini(with).replace("stages:", "params: {n: 010}\nstages:");
    let l = load_str(
        "n.yaml",
        &text,
        &["stages.d.with.seed=007".into()],
        &idat_domain::kinds::registry(),
    )
    .unwrap();
    assert_eq!(l.instances[0].with["seed"], 7);
    assert_eq!(l.instances[0].with["n_train"], 10);
    // A fraction is refused at the field, as is a negative count.
    let e = errors_of(
        &mini("{tasks: [fashion10], seed: 1, n_train: 2.5, n_test: -1}"),
        &[],
    );
    assert_eq!(
        e,
        [
            "r.yaml:6:50: at `stages.d.with.n_train`: expected an integer, got 2.5 (a number \
             with a fractional part)",
            "r.yaml:6:63: at `stages.d.with.n_test`: expected an integer of at least 0, got -1"
        ]
    );
}
