//! `executor:` checked against the registered executors: the name is one of them, its
//! settings (`executor.with`, or the `slurm:` section beside `executor: slurm`) match the
//! executor's schema, and the executor's own rules hold for the pipeline's stages.
use super::diagnostic::{join, Ctx};
use super::explain::check_schema;
use super::model::{ExecutorSpec, Pipeline, StageSpec};
use crate::stages::Registry;
use serde_json::Value;
use std::collections::BTreeMap;

/// The `slurm:` section: the Slurm executor's settings beside `executor: slurm`.
const SLURM_SECTION: &str = "slurm";

/// Settings given in the file, by executor name: (their dotted path, the value).
pub type ExecutorSettings = BTreeMap<String, (String, Value)>;

/// The executor the file selects (None: not set) and the settings it gives, by executor
/// name; every error is recorded in `cx`.
pub(super) fn check_executor(
    cx: &mut Ctx,
    registry: &Registry,
    top: &Pipeline,
    stages: &[(String, StageSpec)],
) -> (Option<String>, ExecutorSettings) {
    let mut given = ExecutorSettings::new();
    if let Some(v) = &top.slurm {
        given.insert(SLURM_SECTION.into(), (SLURM_SECTION.into(), v.clone()));
    }
    let chosen = top.executor.as_ref().map(|e| e.name().to_string());
    if let Some(ExecutorSpec::Use(u)) = &top.executor {
        if let Some(with) = &u.with {
            if top.slurm.is_some() && u.uses == SLURM_SECTION {
                cx.err(
                    SLURM_SECTION,
                    "the Slurm settings are given twice: keep them under `executor.with` \
                     and remove the `slurm:` section",
                );
            }
            given.insert(u.uses.clone(), ("executor.with".into(), with.clone()));
        }
    }
    if let Some(name) = &chosen {
        if registry.executor(name).is_none() {
            let known: Vec<&str> = registry.executor_names().collect();
            let at = match &top.executor {
                Some(ExecutorSpec::Use(_)) => "executor.uses",
                _ => "executor",
            };
            let mut m = format!(
                "unknown executor `{name}` (executors: {})",
                known.join(", ")
            );
            if let Some(d) = super::overrides::did_you_mean(name, known.iter().copied()) {
                m.push_str(&format!("; did you mean `{d}`?"));
            }
            cx.err(at, m);
        }
    }
    for (name, (at, value)) in &given {
        check_settings(
            cx,
            registry,
            name,
            at,
            value,
            chosen.as_deref() == Some(name),
            stages,
        );
    }
    (chosen, given)
}

/// One executor's settings against its schema; when the file selects it (`chosen`), its
/// rules for the stages too.
fn check_settings(
    cx: &mut Ctx,
    registry: &Registry,
    name: &str,
    at: &str,
    value: &Value,
    chosen: bool,
    stages: &[(String, StageSpec)],
) {
    let Some(plugin) = registry.executor(name) else {
        return;
    };
    let Some(schema) = super::schema::executor_settings(registry, name) else {
        return;
    };
    let own = super::paths::deref(&schema, &schema);
    let takes_none = own.get("properties").is_none()
        && own.get("additionalProperties") == Some(&Value::Bool(false));
    if let (true, Some(m)) = (takes_none, value.as_object()) {
        for k in m.keys() {
            cx.err_key(
                join(at, k),
                format!("unknown field `{k}`: the `{name}` executor takes no settings"),
            );
        }
        if !m.is_empty() {
            return;
        }
    }
    if !check_schema(cx, &schema, value, at) {
        return;
    }
    match plugin.check(value, stages) {
        Err(e) => cx.err(join(at, &e.path), e.message),
        Ok(problems) if chosen => {
            for (path, m) in problems {
                cx.err(path, m);
            }
        }
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, Diagnostic, Loaded};
    use crate::stages::Registry;
    use serde_json::json;

    const STAGES: &str = "stages: {}\n";

    fn load(extra: &str) -> Result<Loaded, Vec<Diagnostic>> {
        let text = format!("version: 1\nname: t\n{STAGES}{extra}");
        load_str("t.yaml", &text, &[], &Registry::empty())
    }

    fn errors(extra: &str) -> Vec<String> {
        load(extra)
            .err()
            .unwrap_or_default()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn both_spellings_select_an_executor_with_its_settings() {
        let l = load("executor: slurm\nslurm: {partition: gpu, max_jobs: 4}\n").unwrap();
        assert_eq!(l.executor.as_deref(), Some("slurm"));
        let (at, v) = &l.executor_settings["slurm"];
        assert_eq!(
            (at.as_str(), v),
            ("slurm", &json!({"partition": "gpu", "max_jobs": 4}))
        );
        let l = load("executor: {uses: slurm, with: {partition: gpu}}\n").unwrap();
        assert_eq!(l.executor.as_deref(), Some("slurm"));
        assert_eq!(l.executor_settings["slurm"].0, "executor.with");
        let l = load("executor: {uses: local}\n").unwrap();
        assert_eq!(l.executor.as_deref(), Some("local"));
        let l = load("").unwrap();
        assert!(l.executor.is_none() && l.executor_settings.is_empty());
    }

    #[test]
    fn bad_names_and_settings_are_named_where_they_are() {
        let e = errors("executor: slurmm\n");
        assert!(e[0].contains("t.yaml:4:11: at `executor`: unknown executor `slurmm` (executors: local, slurm); did you mean `slurm`?"), "{e:?}");
        let e = errors("executor: {uses: pbs}\n");
        assert!(
            e[0].contains("at `executor.uses`: unknown executor `pbs`"),
            "{e:?}"
        );
        let e = errors("executor: {uses: slurm, with: {partitio: gpu}}\n");
        assert!(
            e[0].contains("at `executor.with.partitio`: unknown field `partitio`")
                && e[0].contains("did you mean `partition`?"),
            "{e:?}"
        );
        let e = errors("executor: {uses: slurm, with: {max_jobs: many}}\n");
        assert!(
            e[0].contains("at `executor.with.max_jobs`: expected"),
            "{e:?}"
        );
        // The legacy section is checked even when another executor is selected (a typo
        // there would otherwise surface only at `run --executor slurm`).
        let e = errors("executor: local\nslurm: {qos: [a]}\n");
        assert!(e[0].contains("at `slurm.qos`"), "{e:?}");
        let e = errors("executor: {uses: slurm, with: {qos: normal}}\nslurm: {qos: high}\n");
        assert!(e[0].contains("the Slurm settings are given twice"), "{e:?}");
        let e = errors("executor: {uses: local, with: {jobs: 3}}\n");
        assert!(
            e[0].contains("at `executor.with.jobs`: unknown field `jobs`"),
            "{e:?}"
        );
    }

    #[test]
    fn an_executor_s_own_rules_hold_when_it_is_selected() {
        let text = "version: 1\nname: t\nstages:\n  g: {uses: x, with: {}, resources: {gpus: 2}}\n";
        let mut reg = Registry::empty();
        reg.register::<Free>();
        let with = |extra: &str| {
            load_str(
                "t.yaml",
                &format!("{}{extra}", text.replace("uses: x", "uses: test/free")),
                &[],
                &reg,
            )
        };
        let e = with("executor: {uses: slurm, with: {gpu_request: none}}\n")
            .err()
            .unwrap();
        assert!(e[0].to_string().contains("at `stages.g.resources.gpus`: needs 2 GPU(s) but the Slurm setting `gpu_request` is `none`"), "{e:?}");
        // Not selected: the rule does not apply (run --executor slurm checks it then).
        assert!(with("slurm: {gpu_request: none}\n").is_ok());
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct FreeParams {}
    struct Free;
    impl crate::stages::StageKind for Free {
        type Params = FreeParams;
        const NAME: &'static str = "test/free";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "nothing";
        fn run(_: FreeParams, _: &mut crate::stages::StageContext) -> anyhow::Result<()> {
            Ok(())
        }
    }
}
