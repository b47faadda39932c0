//! Results table: hand-computed means, spreads, group summaries and published columns.
use idat_domain::report::vtab::*;
use std::collections::BTreeMap;

fn run(task: &str, method: &str, seed: u64, best: f64, fin: f64) -> RunResult {
    RunResult {
        task: task.into(),
        method: method.into(),
        seed,
        top1_best: best,
        top1_final: fin,
        top5_final: None,
        epochs: None,
    }
}

fn task(name: &str, group: Group, vtab1k: bool) -> TaskMeta {
    TaskMeta {
        name: name.into(),
        group,
        vtab1k,
    }
}

fn fixture() -> (Vec<RunResult>, Vec<TaskMeta>) {
    let tasks = vec![
        task("cifar", Group::Natural, true),
        task("dtd", Group::Natural, true),
        task("eurosat", Group::Specialized, true),
        task("kitti", Group::Structured, true),
    ];
    let results = vec![
        run("cifar", "at", 1, 55.0, 50.0),
        run("cifar", "at", 2, 55.0, 52.0),
        run("dtd", "at", 1, 70.0, 68.0),
        run("dtd", "at", 2, 72.0, 70.0),
        run("eurosat", "at", 1, 90.0, 88.0),
        run("eurosat", "at", 2, 94.0, 92.0),
        run("kitti", "at", 1, 80.0, 78.0),
        run("kitti", "at", 2, 80.0, 80.0),
        run("dtd", "idat", 1, 73.0, 71.0),
    ];
    (results, tasks)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn pub_map() -> BTreeMap<String, String> {
    BTreeMap::from([("at".to_string(), "adaptformer".to_string())])
}

#[test]
fn cells_and_summaries_match_hand_values() {
    let (results, tasks) = fixture();
    let t = build_table(&results, &tasks, &pub_map()).unwrap();
    assert_eq!(t.methods, vec!["at", "idat"]);
    let c = t.cell("eurosat", "at").unwrap();
    assert!(close(c.best.mean, 92.0) && close(c.final_.mean, 90.0));
    assert!(close(c.final_.std.unwrap(), 8f64.sqrt()));
    assert_eq!(c.seeds, vec![1, 2]);
    assert_eq!(c.published, Some(95.8));
    let one = t.cell("dtd", "idat").unwrap();
    assert_eq!(one.final_.std, None);
    assert_eq!(one.published, None, "idat is not mapped to a published row");

    let nat = t.summary(SummaryKind::Group(Group::Natural), "at").unwrap();
    // final: (69 + 51) / 2 = 60; per seed: (68+50)/2 = 59, (70+52)/2 = 61 -> std sqrt 2
    assert!(close(nat.final_.unwrap(), 60.0));
    assert!(close(nat.final_std.unwrap(), 2f64.sqrt()));
    // best: (55 + 71)/2 = 63
    assert!(close(nat.best.unwrap(), 63.0));
    // published AdaptFormer cifar 70.8, dtd 70.5
    assert!(close(nat.published.unwrap(), 70.65));
    let mog = t.summary(SummaryKind::MeanOfGroupMeans, "at").unwrap();
    assert!(close(mog.final_.unwrap(), (60.0 + 90.0 + 79.0) / 3.0));
    let plain = t.summary(SummaryKind::PlainMean, "at").unwrap();
    assert!(close(
        plain.final_.unwrap(),
        (69.0 + 51.0 + 90.0 + 79.0) / 4.0
    ));
    assert!(close(
        plain.published.unwrap(),
        (70.8 + 70.5 + 95.8 + 80.3) / 4.0
    ));
    // idat lacks tasks: no summaries
    let inat = t
        .summary(SummaryKind::Group(Group::Natural), "idat")
        .unwrap();
    assert_eq!(inat.final_, None);
    assert_eq!(inat.final_std, None);
}

#[test]
fn mini_tasks_show_no_published_numbers() {
    let tasks = vec![task("dtd", Group::Natural, false)];
    let results = vec![run("dtd", "at", 1, 50.0, 40.0)];
    let t = build_table(&results, &tasks, &pub_map()).unwrap();
    assert_eq!(t.cell("dtd", "at").unwrap().published, None);
    assert_eq!(
        t.summary(SummaryKind::PlainMean, "at").unwrap().published,
        None
    );
    assert!(!t.to_markdown().contains("published"));
    // only one group: no mean of group means row
    assert!(t
        .summaries
        .iter()
        .all(|(k, _)| *k != SummaryKind::MeanOfGroupMeans));
}

#[test]
fn markdown_terminal_and_csv() {
    let (results, tasks) = fixture();
    let t = build_table(&results, &tasks, &pub_map()).unwrap();
    let md = t.to_markdown();
    assert!(
        md.contains("| dtd | Natural | 69.00 ± 1.41 (2) | 70.50 | 71.00 (1) |"),
        "{md}"
    );
    assert!(md.contains("top-1 final epoch"));
    assert!(md.contains("top-1 best epoch"));
    assert!(md.contains("at: published AdaptFormer (d=8)"));
    let term = t.to_terminal();
    let lines: Vec<&str> = term.lines().collect();
    // the column after `task` starts at the same offset on header and rows
    let off = lines[1].find("group").unwrap();
    let row = lines.iter().find(|l| l.starts_with("kitti")).unwrap();
    assert_eq!(row.find("Structured").unwrap(), off);

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    t.write_csv(&p).unwrap();
    let mut rdr = csv::Reader::from_path(&p).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    // 5 cells + (3 groups + mog + plain) x 2 methods
    assert_eq!(rows.len(), 5 + 5 * 2);
    let kitti = rows.iter().find(|r| &r[1] == "kitti").unwrap();
    assert_eq!(&kitti[7], "79.0000");
    assert_eq!(&kitti[8], "1.4142");
    assert_eq!(&kitti[11], "80.3000");
}

#[test]
fn bad_inputs_are_named() {
    let (mut results, tasks) = fixture();
    let e = build_table(
        &results,
        &tasks,
        &BTreeMap::from([("at".into(), "nope".into())]),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("published_as.at: `nope`"));
    results.push(run("svhn", "at", 1, 1.0, 1.0));
    let e = build_table(&results, &tasks, &pub_map()).unwrap_err();
    assert!(e
        .to_string()
        .contains("task `svhn` is not one of the table's tasks"));
    results.pop();
    results.push(run("dtd", "at", 1, 1.0, 1.0));
    let e = build_table(&results, &tasks, &pub_map()).unwrap_err();
    assert!(e
        .to_string()
        .contains("duplicate result for task dtd, method at, seed 1"));
    results.pop();
    results.push(run("dtd", "at", 3, 100.5, 1.0));
    let e = build_table(&results, &tasks, &pub_map()).unwrap_err();
    assert!(e.to_string().contains("top1_best = 100.5"));
    let e = build_table(&[], &[task("kitti", Group::Natural, true)], &pub_map()).unwrap_err();
    assert!(e.to_string().contains("group Structured"));
    let e = build_table(&[], &[task("mini", Group::Natural, true)], &pub_map()).unwrap_err();
    assert!(e.to_string().contains("not a VTAB-1K folder name"));
}

#[test]
fn epoch_csv_and_mean_curves() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = dir.path().join("a.csv");
    std::fs::write(
        &p1,
        "epoch,train_loss,test_top1,extra\n0,2.0,10,x\n1,1.0,20,y\n",
    )
    .unwrap();
    let rows = read_epochs_csv(&p1).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].train_loss, Some(1.0));
    assert_eq!(rows[0].lr, None);
    let mut a = run("dtd", "at", 1, 20.0, 20.0);
    a.epochs = Some(Epochs::Csv(p1));
    let mut b = run("dtd", "at", 2, 30.0, 30.0);
    b.epochs = Some(Epochs::Rows(vec![
        EpochRow {
            epoch: 0,
            train_loss: Some(4.0),
            test_top1: Some(20.0),
            lr: None,
        },
        EpochRow {
            epoch: 1,
            train_loss: Some(3.0),
            test_top1: Some(30.0),
            lr: None,
        },
    ]));
    let c = run("dtd", "idat", 1, 1.0, 1.0);
    let curves = mean_curves(&[a, b, c], "dtd", CurveField::TestTop1).unwrap();
    assert_eq!(curves.len(), 1, "idat has no epoch log");
    assert_eq!(curves[0].0, "at");
    assert_eq!(curves[0].1, vec![(0.0, 15.0), (1.0, 25.0)]);

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "epoch,test_top1\n0,1\n1,abc\n").unwrap();
    let e = read_epochs_csv(&bad).unwrap_err().to_string();
    assert!(
        e.contains("line 3") && e.contains("test_top1") && e.contains("abc"),
        "{e}"
    );
    let noep = dir.path().join("noep.csv");
    std::fs::write(&noep, "step,loss\n").unwrap();
    let e = read_epochs_csv(&noep).unwrap_err().to_string();
    assert!(
        e.contains("no `epoch` column") && e.contains("step, loss"),
        "{e}"
    );
}

#[test]
fn run_result_is_plain_json() {
    let r: RunResult = serde_json::from_str(
        r#"{"task":"dtd","method":"idat","seed":3,"top1_best":70.1,"top1_final":69.5,"epochs":"e.csv"}"#,
    )
    .unwrap();
    assert_eq!(r.epochs, Some(Epochs::Csv("e.csv".into())));
    let e = serde_json::from_str::<RunResult>(
        r#"{"task":"dtd","method":"m","seed":1,"top1_best":1,"top1_final":1,"acc":2}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `acc`"));
}
