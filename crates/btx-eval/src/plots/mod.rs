//! PNG plots (plotters): routing heatmaps, loss curves, per-domain bars. Text needs a TrueType
//! font, looked up at run time (`BTX_FONT`, then common system paths); without one the plots
//! are skipped and the report says so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

pub mod summary;

use crate::render::fmt_big;
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

/// One panel per layer: rows are domains (in `rows` order: the experts' domains first, in
/// expert order, so own-expert cells form the diagonal), columns experts, colour and number
/// the top-k share. Every heatmap of a report uses the same colour scale, 0..`scale_max`,
/// drawn as a colour bar.
pub fn routing_heatmap(
    r: &RoutingReport,
    experts: &[String],
    rows: &[String],
    scale_max: f64,
    title: &str,
    path: &Path,
) -> PlotResult {
    let domains: Vec<&String> = rows.iter().filter(|d| r.domains.contains_key(*d)).collect();
    let layers = r.domains.values().next().map_or(0, |d| d.topk_share.len());
    if layers == 0 || domains.is_empty() || !font_available() {
        return Ok(());
    }
    let cols = layers.min(4);
    let nrows = layers.div_ceil(cols);
    let (pw, ph) = (
        90 + 70 * r.num_experts as u32,
        60 + 36 * domains.len() as u32,
    );
    let bar_w = 90;
    let root = BitMapBackend::new(path, (pw * cols as u32 + bar_w, ph * nrows as u32 + 40))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.draw_text(
        title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (10, 10),
    )?;
    let (grid, bar) = body.split_horizontally(pw * cols as u32);
    let max = scale_max.max(1e-9);
    colour_bar(&bar, max)?;
    let panels = grid.split_evenly((nrows, cols));
    for (l, panel) in panels.iter().enumerate().take(layers) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("layer {l}"), ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(80)
            // A segmented range a..b has b - a + 1 segments; rows run top to bottom.
            .build_cartesian_2d(
                (0..r.num_experts - 1).into_segmented(),
                (0..domains.len() - 1).into_segmented(),
            )?;
        let name = |v: &SegmentValue<usize>, names: &dyn Fn(usize) -> String| match v {
            SegmentValue::CenterOf(i) => names(*i),
            _ => String::new(),
        };
        let top = |i: usize| domains.len() - 1 - i;
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
                    domains
                        .get(top(i))
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                })
            })
            .label_style(("sans-serif", 11))
            .draw()?;
        for (di, d) in domains.iter().enumerate() {
            let y = top(di);
            for e in 0..r.num_experts {
                let v = r.domains[*d].topk_share[l][e];
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(e), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(e + 1), SegmentValue::Exact(y + 1)),
                    ],
                    heat(v / max).filled(),
                )))?;
                let color = if v / max > 0.5 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.0}%", 100.0 * v),
                    (SegmentValue::CenterOf(e), SegmentValue::CenterOf(y)),
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

/// A vertical colour bar for `heat`, 0 at the bottom, `max` (a share) at the top.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    max: f64,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (x0, x1) = (10i32, 26i32);
    let (y0, y1) = (30i32, h as i32 - 30);
    let steps = 64;
    for i in 0..steps {
        let a = y1 - (y1 - y0) * i / steps;
        let b = y1 - (y1 - y0) * (i + 1) / steps;
        area.draw(&Rectangle::new(
            [(x0, b), (x1, a)],
            heat((i as f64 + 0.5) / steps as f64).filled(),
        ))?;
    }
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1)))?;
    for k in 0..=4 {
        let y = y1 - (y1 - y0) * k / 4;
        area.draw_text(
            &format!("{:.0}%", 100.0 * max * k as f64 / 4.0),
            &("sans-serif", 11)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
            (x1 + 4, y),
        )?;
    }
    let _ = w;
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

/// Colour of series i: the palette, then hues around the wheel.
fn colour(i: usize) -> RGBColor {
    if i < PALETTE.len() {
        return PALETTE[i];
    }
    let h = (i as f64 * 0.618_033_988_75).fract() * 6.0;
    let x = (1.0 - (h % 2.0 - 1.0).abs()) * 200.0;
    let (r, g, b) = match h as u32 {
        0 => (200.0, x, 0.0),
        1 => (x, 200.0, 0.0),
        2 => (0.0, 200.0, x),
        3 => (0.0, x, 200.0),
        4 => (x, 0.0, 200.0),
        _ => (200.0, 0.0, x),
    };
    RGBColor(r as u8, g as u8, b as u8)
}

/// The axis range that shows `lo..hi` with a margin, instead of starting at zero (where
/// differences of a few hundredths vanish).
fn zoomed(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).max(1e-6);
    (lo - 0.08 * span, hi + 0.08 * span)
}

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

/// Loss against `xlabel` (steps, or training FLOPs), one line per series (smoothed with an
/// EMA of 0.1).
pub fn loss_curves(
    series: &[(String, Vec<(f64, f64)>)],
    title: &str,
    xlabel: &str,
    path: &Path,
) -> PlotResult {
    let series: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, s)| (n.clone(), smooth(s, 0.1)))
        .collect();
    let series = &series[..];
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if pts.is_empty() || !font_available() {
        return Ok(());
    }
    let xmin = pts
        .iter()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
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
        .build_cartesian_2d(xmin..xmax, ymin * 0.95..ymax * 1.02)?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .x_label_formatter(&|x| fmt_big(*x))
        .y_desc("training loss (EMA)")
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, (name, s)) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    // Training curves fall from the upper left: the lower left is where they are not.
    legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present()?;
    Ok(())
}

/// The legend of a line chart, on a translucent box at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

/// A value with its 95% interval.
pub type WithCi = (f64, [f64; 2]);

/// Draws an error bar (vertical line with caps) in data coordinates.
fn error_bar<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x: f64,
    cap: f64,
    ci: [f64; 2],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let style = BLACK.stroke_width(1);
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(x, ci[0]), (x, ci[1])],
        style,
    )))?;
    for y in ci {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x - cap, y), (x + cap, y)],
            style,
        )))?;
    }
    Ok(())
}

/// Grouped bars: for each domain (group), one bar per method, with its 95% interval. With
/// `from_zero` the axis starts at 0 (accuracy); otherwise it is zoomed to the data (loss).
#[allow(clippy::too_many_arguments)]
pub fn grouped_bars(
    methods: &[String],
    groups: &[String],
    values: &[Vec<Option<WithCi>>],
    title: &str,
    ylabel: &str,
    from_zero: bool,
    path: &Path,
) -> PlotResult {
    if methods.is_empty() || groups.is_empty() || !font_available() {
        return Ok(());
    }
    let all: Vec<&WithCi> = values.iter().flatten().flatten().collect();
    if all.is_empty() {
        return Ok(());
    }
    let lo = all
        .iter()
        .map(|v| v.1[0].min(v.0))
        .fold(f64::INFINITY, f64::min);
    let hi = all
        .iter()
        .map(|v| v.1[1].max(v.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let (ymin, ymax) = if from_zero {
        (0.0, (hi * 1.1).max(1e-6))
    } else {
        zoomed(lo, hi)
    };
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
        .build_cartesian_2d(0.0..width, ymin..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(ylabel)
        .label_style(("sans-serif", 12))
        .draw()?;
    for (gi, g) in groups.iter().enumerate() {
        let centre = (gi * (m + 1)) as f64 + 0.5 + m as f64 * 0.45;
        let (px, py) = chart.backend_coord(&(centre, ymin));
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
            if let Some((v, ci)) = values[mi][gi] {
                let x0 = (gi * (m + 1) + mi) as f64 + 0.5;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, ymin), (x0 + 0.9, v)],
                    colour(mi).filled(),
                )))?;
                error_bar(&mut chart, x0 + 0.45, 0.2, ci)?;
            }
        }
    }
    for (mi, name) in methods.iter().enumerate() {
        let y = 40 + 22 * mi as i32;
        legend.draw(&Rectangle::new([(8, y), (24, y + 14)], colour(mi).filled()))?;
        legend.draw_text(name, &("sans-serif", 13).into_font().color(&BLACK), (30, y))?;
    }
    root.present()?;
    Ok(())
}

/// The paper's view: average held-out loss (with its 95% interval) against the training
/// FLOPs a method spent after the seed, one line per method (one point per budget).
pub fn loss_vs_flops(
    series: &[(String, Vec<(f64, WithCi)>)],
    title: &str,
    path: &Path,
) -> PlotResult {
    let pts: Vec<&(f64, WithCi)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if pts.is_empty() || !font_available() {
        return Ok(());
    }
    let (x_lo, x_hi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (xmin, xmax) = zoomed(x_lo, x_hi);
    let lo = pts.iter().map(|p| p.1 .1[0]).fold(f64::INFINITY, f64::min);
    let hi = pts
        .iter()
        .map(|p| p.1 .1[1])
        .fold(f64::NEG_INFINITY, f64::max);
    let (ymin, ymax) = zoomed(lo, hi);
    // The legend goes beside the chart, not over the points: a study has twenty methods.
    let legend_w = 260u32;
    let rows = series.len() as u32;
    let root =
        BitMapBackend::new(path, (1000 + legend_w, 560.max(60 + 20 * rows))).into_drawing_area();
    root.fill(&WHITE)?;
    let (main, side) = root.split_horizontally(1000);
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(xmin..xmax, ymin..ymax)?;
    chart
        .configure_mesh()
        .x_desc("training FLOPs after the seed")
        .x_label_formatter(&|x| fmt_big(*x))
        .y_desc("average held-out loss")
        .label_style(("sans-serif", 12))
        .draw()?;
    let cap = (xmax - xmin) * 0.006;
    for (i, (name, s)) in series.iter().enumerate() {
        let c = colour(i);
        let mut s = s.clone();
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(x, (_, ci)) in &s {
            error_bar(&mut chart, x, cap, ci)?;
        }
        // A line joins a method's budgets; a method run at one budget is a point.
        if s.len() > 1 {
            chart.draw_series(LineSeries::new(
                s.iter().map(|&(x, (y, _))| (x, y)),
                c.stroke_width(2),
            ))?;
        }
        chart.draw_series(
            s.iter()
                .map(|&(x, (y, _))| Circle::new((x, y), 5, c.filled())),
        )?;
        let ly = 50 + 20 * i as i32;
        side.draw(&Circle::new((14, ly + 7), 5, c.filled()))?;
        if s.len() > 1 {
            side.draw(&PathElement::new(
                vec![(4, ly + 7), (24, ly + 7)],
                c.stroke_width(2),
            ))?;
        }
        side.draw_text(
            &format!(
                "{name}{}",
                if s.len() > 1 {
                    format!(" ({} budgets)", s.len())
                } else {
                    String::new()
                }
            ),
            &("sans-serif", 13).into_font().color(&BLACK),
            (30, ly),
        )?;
    }
    root.present()?;
    Ok(())
}
