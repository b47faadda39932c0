//! The reports say how strong the models were: every backbone's source-task top-1 and, for iDAT
//! runs, the teacher's downstream top-1 beside the student's, with hand-computed means.
use idat_domain::report::backbones::{Backbone, ModelStrength, TeacherRun};
use idat_domain::report::vtab::{Group, RunResult, TaskMeta};
use idat_domain::report::writers::{write_demo_report_with, write_vtab_report_with};
use std::collections::BTreeMap;

fn tasks() -> Vec<TaskMeta> {
    ["mini_a", "mini_b"]
        .iter()
        .map(|t| TaskMeta {
            name: t.to_string(),
            group: Group::Natural,
            vtab1k: false,
        })
        .collect()
}

/// AT and iDAT runs over 2 tasks x 2 seeds; the iDAT teacher is 20 points below its student on
/// mini_a (students 60, 64; teachers 40, 44) and level on mini_b (50, 52 against 50, 52).
fn runs() -> (Vec<RunResult>, ModelStrength) {
    let mut results = Vec::new();
    let mut strength = ModelStrength::default();
    strength.add_backbone(Backbone {
        role: "student".into(),
        source: "trained from scratch on `mini_source` (seed 0)".into(),
        source_top1: Some(97.3),
    });
    strength.add_backbone(Backbone {
        role: "teacher".into(),
        source: "trained from scratch on `mini_source` (seed 0)".into(),
        source_top1: Some(88.15),
    });
    // Every eval record repeats its backbones: they are listed once.
    strength.add_backbone(strength.backbones[0].clone());
    for (task, student, teacher) in [
        ("mini_a", [60.0, 64.0], [40.0, 44.0]),
        ("mini_b", [50.0, 52.0], [50.0, 52.0]),
    ] {
        for (i, seed) in [1u64, 2].into_iter().enumerate() {
            for (method, top1) in [("at", student[i] - 1.0), ("idat", student[i])] {
                results.push(RunResult {
                    task: task.into(),
                    method: method.into(),
                    seed,
                    top1_best: top1,
                    top1_final: top1,
                    top5_final: None,
                    epochs: None,
                });
            }
            strength.teachers.push(TeacherRun {
                task: task.into(),
                method: "idat".into(),
                seed,
                student_top1: student[i],
                teacher_top1: teacher[i],
            });
        }
    }
    (results, strength)
}

#[test]
fn reports_show_source_top1_and_teacher_beside_student() {
    let (results, strength) = runs();
    assert_eq!(strength.backbones.len(), 2);
    let dir = tempfile::tempdir().unwrap();

    let out = dir.path().join("vtab");
    let w = write_vtab_report_with(&results, &tasks(), &BTreeMap::new(), &strength, &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for text in [&w.summary, &md] {
        assert!(text.contains("97.30") && text.contains("88.15"), "{text}");
        assert!(
            text.contains("trained from scratch on `mini_source`"),
            "{text}"
        );
    }
    // mini_a: student 62.00 ± 2.83, teacher 42.00 ± 2.83, difference -20.00 ± 0.00.
    let row = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("mini_a") && l.contains("42.00"))
            .unwrap_or_else(|| panic!("no teacher row for mini_a in\n{t}"))
            .to_string()
    };
    let line = row(&w.summary);
    for v in ["62.00 ± 2.83 (2)", "42.00 ± 2.83 (2)", "-20.00 ± 0.00"] {
        assert!(line.contains(v), "{line}");
    }
    assert!(md.contains("| mini_a | idat | 62.00 ± 2.83 (2) | 42.00 ± 2.83 (2) | -20.00 ± 0.00 |"));
    assert!(md.contains("| mini_b | idat | 51.00 ± 1.41 (2) | 51.00 ± 1.41 (2) | 0.00 ± 0.00 |"));
    // The table comes after the results and before the plots.
    let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("no `{s}` in\n{md}"));
    assert!(at("top-1 final epoch") < at("Backbones and teachers"));
    assert!(at("Backbones and teachers") < at("Per-task accuracy"));

    let sub = dir.path().join("demo");
    write_demo_report_with(
        &results,
        &tasks(),
        "at",
        "idat",
        &strength.for_method("idat"),
        &sub,
    )
    .unwrap();
    let md = std::fs::read_to_string(sub.join("report.md")).unwrap();
    assert!(
        md.contains("88.15") && md.contains("| mini_a | idat | 62.00 ± 2.83 (2) |"),
        "{md}"
    );
    // Another treatment's sub-report lists the backbones but no teacher rows of `idat`.
    assert!(strength.for_method("idat-kl").teachers.is_empty());

    // No backbones and no teachers: no section at all.
    let plain = dir.path().join("plain");
    let w = write_vtab_report_with(
        &results,
        &tasks(),
        &BTreeMap::new(),
        &ModelStrength::default(),
        &plain,
    )
    .unwrap();
    let md = std::fs::read_to_string(plain.join("report.md")).unwrap();
    assert!(!md.contains("Backbones and teachers") && !w.summary.contains("Backbones"));
}

#[test]
fn downloaded_backbones_say_they_were_not_trained_here() {
    let mut s = ModelStrength::default();
    s.add_backbone(Backbone {
        role: "student".into(),
        source: "timm vit_base_patch16_224.augreg2_in21k_ft_in1k".into(),
        source_top1: None,
    });
    let (_, rows) = s.backbone_grid();
    assert_eq!(rows[0][2], "— (not trained here)");
    assert!(s.to_terminal(&tasks()).contains("not trained here"));
}
