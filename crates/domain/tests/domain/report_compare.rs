//! Paired AT vs iDAT comparison and the verdict rules of docs/report.md.
use idat_domain::report::compare::*;
use idat_domain::report::vtab::{Metric, RunResult};

fn run(task: &str, method: &str, seed: u64, fin: f64) -> RunResult {
    RunResult {
        task: task.into(),
        method: method.into(),
        seed,
        top1_best: fin + 1.0,
        top1_final: fin,
        top5_final: None,
        epochs: None,
    }
}

/// `n_tasks` tasks, 3 seeds each; on task i, idat = at + diff(i) for every seed.
fn uniform(n_tasks: usize, diff: impl Fn(usize) -> f64) -> Vec<RunResult> {
    let mut v = Vec::new();
    for i in 0..n_tasks {
        for s in 1..=3u64 {
            let base = 50.0 + s as f64;
            v.push(run(&format!("t{i}"), "at", s, base));
            v.push(run(
                &format!("t{i}"),
                "idat",
                s,
                base + diff(i) + 0.1 * s as f64,
            ));
        }
    }
    v
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn per_task_hand_values() {
    let mut r = vec![];
    for (s, a, i) in [(1, 50.0, 52.0), (2, 60.0, 61.0), (3, 70.0, 70.0)] {
        r.push(run("A", "at", s, a));
        r.push(run("A", "idat", s, i));
    }
    for (s, a, i) in [(1, 40.0, 39.0), (2, 40.0, 38.0), (3, 40.0, 40.0)] {
        r.push(run("B", "at", s, a));
        r.push(run("B", "idat", s, i));
    }
    r.push(run("B", "idat", 4, 99.0)); // no partner
    r.push(run("A", "other", 1, 99.0)); // ignored
    let c = compare(&r, "at", "idat", &CompareOptions::default()).unwrap();
    let a = &c.tasks[0];
    assert_eq!(a.task, "A");
    assert_eq!(a.diffs, vec![2.0, 1.0, 0.0]);
    assert!(close(a.mean_diff, 1.0) && close(a.std_diff.unwrap(), 1.0));
    assert_eq!(
        (a.seeds_tally.wins, a.seeds_tally.ties, a.seeds_tally.losses),
        (2, 1, 0)
    );
    assert!(close(a.t_test.unwrap().t, 3f64.sqrt()));
    assert!(close(a.baseline_mean, 60.0) && close(a.treatment_mean, 61.0));
    assert!(close(c.tasks[1].mean_diff, -1.0));
    assert_eq!(c.unpaired, vec![("B".to_string(), "idat".to_string(), 4)]);
    assert_eq!((c.tasks_tally.wins, c.tasks_tally.losses), (1, 1));
    assert!(close(c.mean_diff.unwrap(), 0.0));
    assert!(close(c.std_diff_tasks.unwrap(), 2f64.sqrt()));
    assert!(close(c.sign_p, 1.0));
    assert!(
        c.verdict
            .starts_with("no conclusion: 2 non-tied task(s) are too few"),
        "{}",
        c.verdict
    );
    assert!(c
        .verdict
        .contains("idat beat at on 1/2 tasks (1 worse, 0 tied)"));
    assert!(c.verdict.contains("+0.00 ± 1.41 points (std over tasks)"));
    assert!(c
        .verdict
        .contains("1 run(s) without a partner seed were left out"));
    let term = c.to_terminal();
    assert!(term.contains("tasks 1/0/1 (sign p=1.000)"), "{term}");
    assert!(c
        .to_markdown()
        .contains("| A | 3 | 60.00 ± 10.00 | 61.00 ± 9.00 | +1.00 ± 1.00 | 2/1/0 |"));
}

#[test]
fn best_metric_is_selectable() {
    let r = vec![run("A", "at", 1, 10.0), run("A", "idat", 1, 12.0)];
    let opts = CompareOptions {
        metric: Metric::Top1Best,
        ..Default::default()
    };
    let c = compare(&r, "at", "idat", &opts).unwrap();
    assert!(close(c.tasks[0].baseline_mean, 11.0));
    assert!(c.verdict.contains("top-1 best epoch"));
}

#[test]
fn verdict_helped_when_six_of_six_tasks_win() {
    let c = compare(
        &uniform(6, |_| 1.0),
        "at",
        "idat",
        &CompareOptions::default(),
    )
    .unwrap();
    assert!(close(c.sign_p, 2.0 / 64.0));
    assert!(c.verdict.starts_with("idat helped here."), "{}", c.verdict);
    assert!(c.verdict.contains("significant at 0.05"));
    assert!(c.verdict.contains("on 6/6 tasks"));
}

#[test]
fn verdict_hurt_when_six_of_six_tasks_lose() {
    let c = compare(
        &uniform(6, |_| -1.0),
        "at",
        "idat",
        &CompareOptions::default(),
    )
    .unwrap();
    assert!(c.verdict.starts_with("idat hurt here."), "{}", c.verdict);
}

#[test]
fn verdict_no_clear_difference_for_split_tasks() {
    // 4 wins, 3 losses of 7: sign p = 1
    let c = compare(
        &uniform(7, |i| if i < 4 { 2.0 } else { -1.0 }),
        "at",
        "idat",
        &CompareOptions::default(),
    )
    .unwrap();
    assert_eq!((c.tasks_tally.wins, c.tasks_tally.losses), (4, 3));
    assert!(
        c.verdict
            .starts_with("no clear difference: idat did not reliably help here."),
        "{}",
        c.verdict
    );
    assert!(c.verdict.contains("not significant at 0.05"));
}

#[test]
fn five_wins_cannot_be_significant_and_say_so() {
    let c = compare(
        &uniform(5, |_| 3.0),
        "at",
        "idat",
        &CompareOptions::default(),
    )
    .unwrap();
    assert!(close(c.sign_p, 2.0 / 32.0));
    assert!(
        c.verdict.contains("smallest possible p = 0.062"),
        "{}",
        c.verdict
    );
}

#[test]
fn ties_use_the_tolerance() {
    // per-task mean diff of 0.2 (0.1*s averages 0.2) with tolerance 0.5 -> ties
    let opts = CompareOptions {
        tie_tolerance: 0.5,
        ..Default::default()
    };
    let c = compare(&uniform(3, |_| 0.0), "at", "idat", &opts).unwrap();
    assert_eq!(c.tasks_tally.ties, 3);
}

#[test]
fn errors_name_the_problem() {
    let r = vec![run("A", "at", 1, 10.0)];
    let e = compare(&r, "at", "idat", &CompareOptions::default()).unwrap_err();
    assert!(e
        .to_string()
        .contains("no results for method `idat` (methods present: at)"));
    let r = vec![run("A", "at", 1, 10.0), run("A", "idat", 2, 10.0)];
    let e = compare(&r, "at", "idat", &CompareOptions::default()).unwrap_err();
    assert!(e.to_string().contains("nothing to compare"));
    let r = vec![
        run("A", "at", 1, 10.0),
        run("A", "at", 1, 11.0),
        run("A", "idat", 1, 1.0),
    ];
    assert!(compare(&r, "at", "idat", &CompareOptions::default())
        .unwrap_err()
        .to_string()
        .contains("duplicate result for task A, method at, seed 1"));
}
