//! PNG and SVG plots with `plotters`: line charts (learning curves), grouped bars with error bars,
//! small-multiple line panels (adapter weight KDEs) and annotated heatmaps (Wasserstein distances).
//!
//! Text is drawn with the DejaVu Sans font shipped in `assets/fonts/` (registered on first use),
//! so plots render the same on a machine without system fonts. The format follows the file
//! extension: `.png` (encoded with the `image` crate) or `.svg`.
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the embedded DejaVu Sans font could not be parsed")
    }
}

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Series colours (the matplotlib "tab10" palette).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Something drawable at a fixed size onto any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draw onto `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Render `fig` to `path` (`.png` or `.svg`), creating nothing on error.
pub fn render(fig: &impl Figure, path: &Path) -> Result<()> {
    ensure_font()?;
    let (w, h) = fig.size();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => {
            let mut buf = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(pe)?;
                fig.draw(&root)?;
                root.present().map_err(pe)?;
            }
            image::save_buffer(path, &buf, w, h, image::ExtendedColorType::Rgb8)
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Some("svg") => {
            let mut out = String::new();
            {
                let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(pe)?;
                fig.draw(&root)?;
                root.present().map_err(pe)?;
            }
            std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
        }
        _ => bail!("{}: plot files must end in .png or .svg", path.display()),
    }
}

/// A named series of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

fn finite_range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 0.0 { lo.abs() * 0.05 } else { 1.0 };
        return Some((lo - pad, hi + pad));
    }
    let pad = (hi - lo) * 0.05;
    Some((lo - pad, hi + pad))
}

/// Lines, one per series (e.g. accuracy vs epoch per method), with a legend.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Series; each drawn in its palette colour.
    pub series: Vec<Series>,
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lc: &LineChart,
    color_of: &dyn Fn(usize) -> RGBColor,
    legend: bool,
    title_size: u32,
) -> Result<()> {
    let (title, x_label, y_label, series) = (
        lc.title.as_str(),
        lc.x_label.as_str(),
        lc.y_label.as_str(),
        &lc.series,
    );
    let (x0, x1) =
        finite_range(series.iter().flat_map(|s| s.1.iter().map(|p| p.0))).unwrap_or((0.0, 1.0));
    let (y0, y1) =
        finite_range(series.iter().flat_map(|s| s.1.iter().map(|p| p.1))).unwrap_or((0.0, 1.0));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, title_size))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .x_labels(6)
        .y_labels(6)
        .draw()
        .map_err(pe)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color_of(i);
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let s = chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(pe)?;
        if legend {
            s.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
        }
    }
    if legend && !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(pe)?;
    }
    Ok(())
}

impl Figure for LineChart {
    fn size(&self) -> (u32, u32) {
        (800, 500)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        draw_lines(root, self, &color, true, 20)
    }
}

/// Per category, `Some((value, error))` or `None` (no bar).
pub type BarValues = Vec<Option<(f64, Option<f64>)>>;

/// Grouped bars with optional error bars: one group per category, one bar per series.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Title.
    pub title: String,
    /// Y axis label.
    pub y_label: String,
    /// Category names (x axis), e.g. tasks.
    pub categories: Vec<String>,
    /// Per series: name and, per category, `Some((value, error))` or `None` (no bar).
    pub series: Vec<(String, BarValues)>,
}

impl Figure for BarChart {
    fn size(&self) -> (u32, u32) {
        let per = (28 * self.series.len().max(1) as u32).max(90);
        ((140 + per * self.categories.len() as u32).max(640), 520)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let ncat = self.categories.len();
        let nser = self.series.len().max(1);
        let vals = self.series.iter().flat_map(|s| {
            s.1.iter().flatten().flat_map(|(v, e)| {
                let e = e.unwrap_or(0.0);
                [v - e, v + e]
            })
        });
        let (mut y0, mut y1) = finite_range(vals.chain([0.0])).unwrap_or((0.0, 1.0));
        if y0 > -1e-9 {
            y0 = 0.0;
        }
        y1 = y1.max(y0 + 1e-6);
        let (area, legend_area) = root.split_vertically(root.dim_in_pixel().1 - 40);
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, (FAMILY, 20))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..ncat.max(1) as f64, y0..y1)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_label.as_str())
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(pe)?;
        let width = 0.8 / nser as f64;
        for (k, (_, vals)) in self.series.iter().enumerate() {
            let c = color(k);
            for (i, v) in vals.iter().enumerate().take(ncat) {
                let Some((v, err)) = v else { continue };
                if !v.is_finite() {
                    continue;
                }
                let xa = i as f64 + 0.1 + k as f64 * width;
                let xb = xa + width * 0.92;
                chart
                    .draw_series([Rectangle::new([(xa, 0.0f64.max(y0)), (xb, *v)], c.filled())])
                    .map_err(pe)?;
                if let Some(e) = err.filter(|e| e.is_finite()) {
                    let xm = (xa + xb) / 2.0;
                    chart
                        .draw_series([ErrorBar::new_vertical(
                            xm,
                            v - e,
                            *v,
                            v + e,
                            BLACK.stroke_width(1),
                            6,
                        )])
                        .map_err(pe)?;
                }
            }
        }
        // category labels under each group
        for (i, name) in self.categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, y0));
            let style = TextStyle::from((FAMILY, 13).into_font())
                .pos(Pos::new(HPos::Center, VPos::Top))
                .color(&BLACK);
            area.draw_text(name, &style, (px, py + 6)).map_err(pe)?;
        }
        // legend in a row below
        let mut x = 60;
        for (k, (name, _)) in self.series.iter().enumerate() {
            legend_area
                .draw(&Rectangle::new([(x, 12), (x + 16, 28)], color(k).filled()))
                .map_err(pe)?;
            let style =
                TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            legend_area
                .draw_text(name, &style, (x + 22, 20))
                .map_err(pe)?;
            x += 40 + 9 * name.chars().count() as i32;
        }
        Ok(())
    }
}

/// One small line chart of a [`PanelChart`].
#[derive(Debug, Clone)]
pub struct Panel {
    /// Panel title, e.g. `block 3 down`.
    pub title: String,
    /// Series; colours follow the series name's position in [`PanelChart::legend`].
    pub series: Vec<Series>,
}

/// A grid of small line charts sharing one legend (e.g. weight densities per block).
#[derive(Debug, Clone)]
pub struct PanelChart {
    /// Overall title.
    pub title: String,
    /// X axis label of every panel.
    pub x_label: String,
    /// Y axis label of every panel.
    pub y_label: String,
    /// Panels per row.
    pub ncols: usize,
    /// Series names in colour order (shown once at the top).
    pub legend: Vec<String>,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
}

impl Figure for PanelChart {
    fn size(&self) -> (u32, u32) {
        let ncols = self.ncols.max(1);
        let nrows = self.panels.len().div_ceil(ncols).max(1);
        (ncols as u32 * 360, 80 + nrows as u32 * 260)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let ncols = self.ncols.max(1);
        let nrows = self.panels.len().div_ceil(ncols).max(1);
        let (head, body) = root.split_vertically(80);
        let title =
            TextStyle::from((FAMILY, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        let w = head.dim_in_pixel().0 as i32;
        head.draw_text(&self.title, &title, (w / 2, 8))
            .map_err(pe)?;
        let mut x = 20;
        for (k, name) in self.legend.iter().enumerate() {
            head.draw(&Rectangle::new([(x, 48), (x + 24, 52)], color(k).filled()))
                .map_err(pe)?;
            let style =
                TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            head.draw_text(name, &style, (x + 30, 50)).map_err(pe)?;
            x += 50 + 9 * name.chars().count() as i32;
        }
        let cells = body.split_evenly((nrows, ncols));
        for (panel, cell) in self.panels.iter().zip(cells.iter()) {
            let legend = &self.legend;
            let names: Vec<String> = panel.series.iter().map(|s| s.0.clone()).collect();
            let color_of = move |i: usize| {
                let k = legend.iter().position(|l| *l == names[i]).unwrap_or(i);
                color(k)
            };
            let lc = LineChart {
                title: panel.title.clone(),
                x_label: self.x_label.clone(),
                y_label: self.y_label.clone(),
                series: panel.series.clone(),
            };
            draw_lines(cell, &lc, &color_of, false, 15)?;
        }
        Ok(())
    }
}

/// A table of numbers drawn as coloured cells (white = smallest, dark blue = largest), with the
/// value printed in each cell; `None` cells are grey and print `—`.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Title.
    pub title: String,
    /// Row labels.
    pub rows: Vec<String>,
    /// Column labels.
    pub cols: Vec<String>,
    /// Values, `values[row][col]`.
    pub values: Vec<Vec<Option<f64>>>,
    /// Decimal places printed.
    pub decimals: usize,
}

impl Figure for Heatmap {
    fn size(&self) -> (u32, u32) {
        let label_w = 20
            + 8 * self
                .rows
                .iter()
                .map(|r| r.chars().count())
                .max()
                .unwrap_or(4) as u32;
        let col_w = self
            .cols
            .iter()
            .map(|c| 8 * c.chars().count() as u32 + 16)
            .max()
            .unwrap_or(60)
            .max(70);
        (
            (label_w + col_w * self.cols.len() as u32 + 20).max(400),
            90 + 28 * self.rows.len() as u32 + 20,
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let label_w = 20
            + 8 * self
                .rows
                .iter()
                .map(|r| r.chars().count())
                .max()
                .unwrap_or(4) as i32;
        let col_w = self
            .cols
            .iter()
            .map(|c| 8 * c.chars().count() as i32 + 16)
            .max()
            .unwrap_or(60)
            .max(70);
        let w = root.dim_in_pixel().0 as i32;
        let title =
            TextStyle::from((FAMILY, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw_text(&self.title, &title, (w / 2, 10))
            .map_err(pe)?;
        let (lo, hi) = match finite_range(self.values.iter().flatten().flatten().copied()) {
            Some(_) => {
                let vals: Vec<f64> = self
                    .values
                    .iter()
                    .flatten()
                    .flatten()
                    .copied()
                    .filter(|v| v.is_finite())
                    .collect();
                (
                    vals.iter().copied().fold(f64::INFINITY, f64::min),
                    vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            }
            None => (0.0, 1.0),
        };
        let center =
            |h: HPos| TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(h, VPos::Center));
        let top = 60;
        for (j, c) in self.cols.iter().enumerate() {
            let x = label_w + j as i32 * col_w + col_w / 2;
            root.draw_text(c, &center(HPos::Center), (x, top + 10))
                .map_err(pe)?;
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y0 = top + 24 + i as i32 * 28;
            root.draw_text(r, &center(HPos::Right), (label_w - 8, y0 + 14))
                .map_err(pe)?;
            for j in 0..self.cols.len() {
                let v = self
                    .values
                    .get(i)
                    .and_then(|row| row.get(j))
                    .copied()
                    .flatten();
                let x0 = label_w + j as i32 * col_w;
                let (fill, text, dark) = match v {
                    Some(v) if v.is_finite() => {
                        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                        let mixc = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t) as u8;
                        (
                            RGBColor(mixc(247, 8), mixc(251, 48), mixc(255, 107)),
                            format!("{v:.*}", self.decimals),
                            t > 0.55,
                        )
                    }
                    _ => (RGBColor(220, 220, 220), "—".to_string(), false),
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + col_w, y0 + 28)],
                    fill.filled(),
                ))
                .map_err(pe)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + col_w, y0 + 28)],
                    RGBColor(255, 255, 255).stroke_width(1),
                ))
                .map_err(pe)?;
                let style = center(HPos::Center).color(if dark { &WHITE } else { &BLACK });
                root.draw_text(&text, &style, (x0 + col_w / 2, y0 + 14))
                    .map_err(pe)?;
            }
        }
        Ok(())
    }
}
