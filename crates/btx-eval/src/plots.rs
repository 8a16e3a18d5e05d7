//! PNG plots (plotters): routing heatmaps, loss curves, per-domain bars. Text needs a TrueType
//! font, looked up at run time (`BTX_FONT`, then common system paths); without one the plots
//! are skipped and the report says so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::routing::RoutingReport;

const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a font for plotters once; false when none was found.
pub fn font_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let mut candidates: Vec<String> = std::env::var("BTX_FONT").into_iter().collect();
        candidates.extend(FONT_PATHS.iter().map(|s| s.to_string()));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (set BTX_FONT=/path/to/font.ttf); skipping plots");
        false
    })
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// White → dark blue.
fn heat(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let c = |a: f64, b: f64| (a + (b - a) * v) as u8;
    RGBColor(c(255.0, 8.0), c(255.0, 48.0), c(255.0, 107.0))
}

/// One panel per layer: rows are domains, columns experts, colour and number the top-k share.
pub fn routing_heatmap(
    r: &RoutingReport,
    experts: &[String],
    title: &str,
    path: &Path,
) -> PlotResult {
    let domains: Vec<&String> = r.domains.keys().collect();
    let layers = r.domains.values().next().map_or(0, |d| d.topk_share.len());
    if layers == 0 || !font_available() {
        return Ok(());
    }
    let cols = layers.min(4);
    let rows = layers.div_ceil(cols);
    let (pw, ph) = (
        90 + 70 * r.num_experts as u32,
        60 + 36 * domains.len() as u32,
    );
    let root =
        BitMapBackend::new(path, (pw * cols as u32, ph * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.draw_text(
        title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (10, 10),
    )?;
    let panels = body.split_evenly((rows, cols));
    let max = r
        .domains
        .values()
        .flat_map(|d| d.topk_share.iter().flatten())
        .fold(0f64, |a, &b| a.max(b))
        .max(1e-9);
    for (l, panel) in panels.iter().enumerate().take(layers) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("layer {l}"), ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(80)
            // A segmented range a..b has b - a + 1 segments.
            .build_cartesian_2d(
                (0..r.num_experts - 1).into_segmented(),
                (0..domains.len() - 1).into_segmented(),
            )?;
        let name = |v: &SegmentValue<usize>, names: &dyn Fn(usize) -> String| match v {
            SegmentValue::CenterOf(i) => names(*i),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(r.num_experts)
            .y_labels(domains.len())
            .x_label_formatter(&|x| {
                name(x, &|i| {
                    experts.get(i).cloned().unwrap_or_else(|| i.to_string())
                })
            })
            .y_label_formatter(&|y| {
                name(y, &|i| {
                    domains.get(i).map(|s| s.to_string()).unwrap_or_default()
                })
            })
            .label_style(("sans-serif", 11))
            .draw()?;
        for (di, d) in domains.iter().enumerate() {
            for e in 0..r.num_experts {
                let v = r.domains[*d].topk_share[l][e];
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(e), SegmentValue::Exact(di)),
                        (SegmentValue::Exact(e + 1), SegmentValue::Exact(di + 1)),
                    ],
                    heat(v / max).filled(),
                )))?;
                let color = if v / max > 0.5 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.0}%", 100.0 * v),
                    (SegmentValue::CenterOf(e), SegmentValue::CenterOf(di)),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&color)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

const PALETTE: [RGBColor; 14] = [
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
    RGBColor(0, 0, 0),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(174, 199, 232),
];

/// Exponential moving average (the raw per-step loss of small batches is noisy).
fn smooth(s: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(s.len());
    let mut m = None;
    for &(x, y) in s {
        let v = match m {
            None => y,
            Some(p) => alpha * y + (1.0 - alpha) * p,
        };
        m = Some(v);
        out.push((x, v));
    }
    out
}

/// Loss against step, one line per series (smoothed with an EMA of 0.1).
pub fn loss_curves(series: &[(String, Vec<(f64, f64)>)], title: &str, path: &Path) -> PlotResult {
    let series: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, s)| (n.clone(), smooth(s, 0.1)))
        .collect();
    let series = &series[..];
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if pts.is_empty() || !font_available() {
        return Ok(());
    }
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymin = pts
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .max(0.0);
    let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax, ymin * 0.95..ymax * 1.02)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("training loss (EMA)")
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, (name, s)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Grouped bars: for each domain (group), one bar per method.
pub fn grouped_bars(
    methods: &[String],
    groups: &[String],
    values: &[Vec<Option<f64>>],
    title: &str,
    ylabel: &str,
    path: &Path,
) -> PlotResult {
    if methods.is_empty() || groups.is_empty() || !font_available() {
        return Ok(());
    }
    let ymax = values
        .iter()
        .flatten()
        .flatten()
        .fold(0f64, |a, &b| a.max(b))
        .max(1e-6)
        * 1.1;
    let m = methods.len();
    let width = (groups.len() * (m + 1)) as f64;
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (main, legend) = root.split_horizontally(880);
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(54)
        .build_cartesian_2d(0.0..width, 0.0..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(ylabel)
        .label_style(("sans-serif", 12))
        .draw()?;
    for (gi, g) in groups.iter().enumerate() {
        let centre = (gi * (m + 1)) as f64 + 0.5 + m as f64 * 0.45;
        let (px, py) = chart.backend_coord(&(centre, 0.0));
        main.draw_text(
            g,
            &("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
            (px, py + 6),
        )?;
    }
    for (gi, _) in groups.iter().enumerate() {
        for (mi, _) in methods.iter().enumerate() {
            if let Some(v) = values[mi][gi] {
                let x0 = (gi * (m + 1) + mi) as f64 + 0.5;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.9, v)],
                    PALETTE[mi % PALETTE.len()].filled(),
                )))?;
            }
        }
    }
    for (mi, name) in methods.iter().enumerate() {
        let y = 40 + 22 * mi as i32;
        legend.draw(&Rectangle::new(
            [(8, y), (24, y + 14)],
            PALETTE[mi % PALETTE.len()].filled(),
        ))?;
        legend.draw_text(name, &("sans-serif", 13).into_font().color(&BLACK), (30, y))?;
    }
    root.present()?;
    Ok(())
}
