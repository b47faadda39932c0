//! Plots decode as images of the declared size with drawn content; adapter statistics and the
//! report writers produce the hand-computed numbers and the files their Markdown links to.
use idat_domain::report::adapter_stats::*;
use idat_domain::report::markdown::MarkdownReport;
use idat_domain::report::plot::*;
use idat_domain::report::vtab::{Group, RunResult, TaskMeta};
use idat_domain::report::writers::{file_stem, write_demo_report, write_vtab_report};
use std::collections::BTreeMap;
use std::path::Path;

/// Decode a PNG and return (width, height, pixels that are not white, has a pixel of `c`).
fn inspect(path: &Path, c: plotters::style::RGBColor) -> (u32, u32, usize, bool) {
    let img = image::open(path).unwrap().to_rgb8();
    let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let has = img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
    (img.width(), img.height(), non_white, has)
}

#[test]
fn line_and_bar_charts_render_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let lc = LineChart {
        title: "curves".into(),
        x_label: "epoch".into(),
        y_label: "acc".into(),
        series: vec![
            ("at".into(), vec![(0.0, 10.0), (1.0, 20.0), (2.0, 25.0)]),
            ("idat".into(), vec![(0.0, 12.0), (1.0, 22.0), (2.0, 27.0)]),
        ],
    };
    let p = dir.path().join("lc.png");
    render(&lc, &p).unwrap();
    let (w, h, ink, has) = inspect(&p, PALETTE[1]);
    assert_eq!((w, h), lc.size());
    assert!(ink > 2000 && has, "ink {ink}");
    let svg = dir.path().join("lc.svg");
    render(&lc, &svg).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(
        s.contains("<svg") && s.contains("idat\n</text>"),
        "legend text in the SVG"
    );

    let bc = BarChart {
        title: "bars".into(),
        y_label: "acc".into(),
        categories: vec!["dtd".into(), "svhn".into()],
        series: vec![
            (
                "at".into(),
                vec![Some((50.0, Some(2.0))), Some((60.0, None))],
            ),
            ("idat".into(), vec![None, Some((62.0, Some(1.0)))]),
        ],
    };
    let p = dir.path().join("bc.png");
    render(&bc, &p).unwrap();
    let (w, h, _, has) = inspect(&p, PALETTE[0]);
    assert_eq!((w, h), bc.size());
    assert!(has);
    assert!(render(&bc, &dir.path().join("bc.jpg"))
        .unwrap_err()
        .to_string()
        .contains("must end in .png or .svg"));
}

fn weights() -> BTreeMap<String, Vec<BlockWeights>> {
    BTreeMap::from([
        (
            "vit_base".to_string(),
            vec![BlockWeights {
                block: 0,
                down: vec![0.0, 0.0, 1.0, 1.0],
                up: vec![3.0, 0.0],
            }],
        ),
        (
            "vit_small".to_string(),
            vec![
                BlockWeights {
                    block: 0,
                    down: vec![0.0, 1.0],
                    up: vec![0.0, 1.0, 2.0],
                },
                BlockWeights {
                    block: 1,
                    down: vec![-1.0, 1.0],
                    up: vec![0.0, 0.0],
                },
            ],
        ),
    ])
}

#[test]
fn adapter_stats_hand_values_tables_and_plots() {
    let w = weights();
    let s = analyze(&w).unwrap();
    assert_eq!(s.models, vec!["vit_base", "vit_small"]);
    // only block 0 is shared
    assert_eq!(s.distances.len(), 2);
    let down = s.distances.iter().find(|d| d.proj == Proj::Down).unwrap();
    assert_eq!(
        (down.model_a.as_str(), down.model_b.as_str()),
        ("vit_base", "vit_small")
    );
    assert!(down.w1.abs() < 1e-12);
    let up = s.distances.iter().find(|d| d.proj == Proj::Up).unwrap();
    assert!((up.w1 - 5.0 / 6.0).abs() < 1e-12);
    let b1 = s
        .summaries
        .iter()
        .find(|x| x.model == "vit_small" && x.block == 1 && x.proj == Proj::Down)
        .unwrap();
    assert_eq!(b1.mean, 0.0);
    assert!((b1.std.unwrap() - 2f64.sqrt()).abs() < 1e-12);
    assert!((b1.kurtosis.unwrap() + 2.0).abs() < 1e-12);
    let upc = s
        .summaries
        .iter()
        .find(|x| x.model == "vit_small" && x.block == 1 && x.proj == Proj::Up)
        .unwrap();
    assert_eq!(upc.kurtosis, None, "constant set");

    let md = s.to_markdown();
    assert!(
        md.contains("| block | vit_base vs vit_small down | vit_base vs vit_small up |"),
        "{md}"
    );
    assert!(md.contains("| 0 | 0.00000 | 0.83333 |"), "{md}");
    let dir = tempfile::tempdir().unwrap();
    s.write_csv(dir.path()).unwrap();
    let d = std::fs::read_to_string(dir.path().join("distances.csv")).unwrap();
    assert!(d.contains("0,up,vit_base,vit_small,0.83333333"), "{d}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("summaries.csv"))
            .unwrap()
            .lines()
            .count(),
        7
    );

    let hm = dir.path().join("w1.png");
    s.plot_distances(&hm).unwrap();
    let (_, _, ink, _) = inspect(&hm, PALETTE[0]);
    assert!(ink > 500);
    // dark end of the colour scale is used for the largest value
    let img = image::open(&hm).unwrap().to_rgb8();
    assert!(img.pixels().any(|p| p.0 == [8, 48, 107]));

    let kde = dir.path().join("kde.png");
    plot_kde(&w, &kde).unwrap(); // block 1 up is constant: left out, not an error
    if let Ok(keep) = std::env::var("REPORT_KEEP_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&kde, Path::new(&keep).join("kde.png")).unwrap();
        std::fs::copy(&hm, Path::new(&keep).join("w1.png")).unwrap();
    }
    let (kw, kh, ink, has) = inspect(&kde, PALETTE[1]);
    assert_eq!((kw, kh), (4 * 360, 80 + 260));
    assert!(ink > 5000 && has);
}

#[test]
fn adapter_stats_errors_and_named_extraction() {
    let mut one = weights();
    one.remove("vit_base");
    assert!(analyze(&one)
        .unwrap_err()
        .to_string()
        .contains("need at least 2 models, got 1"));
    let mut bad = weights();
    bad.get_mut("vit_base").unwrap()[0].up[1] = f32::NAN;
    let e = analyze(&bad).unwrap_err().to_string();
    assert!(
        e.contains("model vit_base, block 0: up weight 1 is not finite"),
        "{e}"
    );

    let named = BTreeMap::from([
        ("blocks.0.adapter.fc1.weight".to_string(), vec![1.0f32, 2.0]),
        ("blocks.0.adapter.fc2.weight".to_string(), vec![3.0f32]),
        ("blocks.10.adapter.fc1.weight".to_string(), vec![4.0f32]),
        ("blocks.10.adapter.fc2.weight".to_string(), vec![5.0f32]),
        ("head.weight".to_string(), vec![9.0f32]),
    ]);
    let b = blocks_from_named(&named, "adapter.fc1.weight", "adapter.fc2.weight").unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[1].block, b[1].down.clone(), b[1].up.clone()),
        (10, vec![4.0], vec![5.0])
    );
    let mut half = named.clone();
    half.remove("blocks.10.adapter.fc2.weight");
    let e = blocks_from_named(&half, "adapter.fc1.weight", "adapter.fc2.weight").unwrap_err();
    assert!(e
        .to_string()
        .contains("block 10: no tensor ending in `adapter.fc2.weight`"));
}

#[test]
fn markdown_links_are_relative() {
    let mut md = MarkdownReport::new("T");
    md.heading(2, "Section").paragraph("text");
    md.image("plot a", Path::new("curves/a b.png")).unwrap();
    assert_eq!(
        md.as_str(),
        "# T\n\n## Section\n\ntext\n\n![plot a](curves/a%20b.png)\n\n"
    );
    assert!(md.image("x", Path::new("/etc/x.png")).is_err());
    assert!(md.image("x", Path::new("../x.png")).is_err());
    assert_eq!(file_stem("a/b c"), "a_b_c");
}

fn demo_results() -> (Vec<RunResult>, Vec<TaskMeta>) {
    let mut r = Vec::new();
    let tasks = vec![
        TaskMeta {
            name: "mini_a".into(),
            group: Group::Natural,
            vtab1k: false,
        },
        TaskMeta {
            name: "mini_b".into(),
            group: Group::Structured,
            vtab1k: false,
        },
    ];
    for (ti, t) in ["mini_a", "mini_b"].iter().enumerate() {
        for s in 1..=3u64 {
            for (m, off) in [("at", 0.0), ("idat", 1.0 - ti as f64 * 2.0)] {
                let fin = 40.0 + 5.0 * s as f64 + off;
                let rows = (0..4)
                    .map(|e| idat_domain::report::vtab::EpochRow {
                        epoch: e,
                        train_loss: Some(2.0 / (e + 1) as f64),
                        test_top1: Some(fin * (e + 1) as f64 / 4.0),
                        lr: None,
                    })
                    .collect();
                r.push(RunResult {
                    task: t.to_string(),
                    method: m.into(),
                    seed: s,
                    top1_best: fin + 0.5,
                    top1_final: fin,
                    top5_final: None,
                    epochs: Some(idat_domain::report::vtab::Epochs::Rows(rows)),
                });
            }
        }
    }
    (r, tasks)
}

#[test]
fn demo_and_vtab_reports_write_linked_files() {
    let (r, tasks) = demo_results();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let w = write_demo_report(&r, &tasks, "at", "idat", &out).unwrap();
    let c = w.comparison.as_ref().unwrap();
    assert_eq!((c.tasks_tally.wins, c.tasks_tally.losses), (1, 1));
    assert!(w.summary.contains(&c.verdict));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("not a claim about VTAB-1K"));
    for f in &w.files {
        assert!(out.join(f).is_file(), "{}", f.display());
    }
    for link in md.split("](").skip(1).map(|s| &s[..s.find(')').unwrap()]) {
        assert!(out.join(link).is_file(), "broken link {link}");
        let (_, _, ink, _) = inspect(&out.join(link), PALETTE[0]);
        assert!(ink > 1000, "{link} looks blank");
    }
    assert!(md.contains("curves/mini_a_top1.png"));
    let cmp = std::fs::read_to_string(out.join("comparison.csv")).unwrap();
    assert!(
        cmp.contains("mini_a,3,50.0000,5.0000,51.0000,5.0000,1.0000,0.0000,3,0,0"),
        "{cmp}"
    );

    if let Ok(keep) = std::env::var("REPORT_KEEP_DIR") {
        let k = Path::new(&keep);
        std::fs::create_dir_all(k).unwrap();
        for f in ["bars.png", "diff.png", "curves/mini_a_top1.png"] {
            std::fs::copy(out.join(f), k.join(file_stem(f) + ".png")).unwrap();
        }
    }
    let out2 = dir.path().join("vtab");
    let w2 = write_vtab_report(&r, &tasks, &BTreeMap::new(), &out2).unwrap();
    assert!(w2.summary.contains("mini_b"));
    assert!(out2.join("bars_final.png").is_file() && out2.join("table.csv").is_file());
}
