//! The plots that say at a glance what the report's text says when a study has twenty
//! methods: a forest plot of paired differences against reference methods, methods grouped,
//! and the share of the experts' gains each method keeps as a heatmap.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{font_available, PlotResult, WithCi};

/// One row of a forest plot or heatmap: a method, the group it is listed under, a value per
/// column (a paired difference per reference; a share per domain).
pub struct Row {
    pub label: String,
    pub group: String,
    pub values: Vec<Option<WithCi>>,
}

/// Rows in order with a header before each new group: `(Some(group), None)` for a header,
/// `(None, Some(row))` for a row.
fn with_headers(rows: &[Row]) -> Vec<(Option<&str>, Option<&Row>)> {
    let mut out = vec![];
    let mut last: Option<&str> = None;
    for r in rows {
        if last != Some(r.group.as_str()) {
            out.push((Some(r.group.as_str()), None));
            last = Some(r.group.as_str());
        }
        out.push((None, Some(r)));
    }
    out
}

const LINE: u32 = 22;
const LABELS: u32 = 250;

/// Each method's paired difference (with its 95% interval) against each reference in
/// `columns` (one panel each), rows grouped under headers. Blue: lower beyond noise; red:
/// higher beyond noise; grey: the interval holds 0.
pub fn forest(rows: &[Row], columns: &[String], title: &str, path: &Path) -> PlotResult {
    if rows.is_empty() || columns.is_empty() || !font_available() {
        return Ok(());
    }
    let lines = with_headers(rows);
    let n = lines.len() as u32;
    let panel_w = 420u32;
    let (w, h) = (
        LABELS + panel_w * columns.len() as u32 + 20,
        90 + LINE * n + 50,
    );
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw_text(
        title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (10, 10),
    )?;
    let body = root.margin(40, 10, 10, 10);
    let (labels, panels) = body.split_horizontally(LABELS - 10);
    let panels = panels.split_evenly((1, columns.len()));
    for (c, (panel, col)) in panels.iter().zip(columns).enumerate() {
        let vals: Vec<&WithCi> = rows.iter().filter_map(|r| r.values[c].as_ref()).collect();
        let lo = vals.iter().map(|v| v.1[0]).fold(0f64, f64::min);
        let hi = vals.iter().map(|v| v.1[1]).fold(0f64, f64::max);
        let pad = (hi - lo).max(1e-4) * 0.08;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("method − {col} (avg loss, nats)"),
                ("sans-serif", 15),
            )
            .margin_right(16)
            .x_label_area_size(36)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:+.3}"))
            .label_style(("sans-serif", 12))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, n as f64)],
            BLACK.stroke_width(1),
        )))?;
        for (i, (_, row)) in lines.iter().enumerate() {
            let Some(row) = row else { continue };
            let Some((v, ci)) = row.values[c] else {
                continue;
            };
            let y = n as f64 - i as f64 - 0.5;
            let colour = if ci[1] < 0.0 {
                RGBColor(31, 90, 180)
            } else if ci[0] > 0.0 {
                RGBColor(200, 40, 40)
            } else {
                RGBColor(120, 120, 120)
            };
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(ci[0], y), (ci[1], y)],
                colour.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(Circle::new((v, y), 4, colour.filled())))?;
        }
        // The labels, once, level with the first panel's rows.
        if c == 0 {
            for (i, (group, row)) in lines.iter().enumerate() {
                let (_, py) = chart.backend_coord(&(0.0, n as f64 - i as f64 - 0.5));
                let (text, style) = match (group, row) {
                    (Some(g), _) => (g.to_string(), ("sans-serif", 14).into_font()),
                    (_, Some(r)) => (format!("  {}", r.label), ("sans-serif", 13).into_font()),
                    _ => continue,
                };
                let (_, ly) = labels.get_base_pixel();
                labels.draw_text(
                    &text,
                    &style.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
                    (0, py - ly),
                )?;
            }
        }
    }
    root.present()?;
    Ok(())
}

/// White → blue for 0..1 (the whole gain), darker past it; white → red below 0 (worse than
/// the seed).
fn diverging(v: f64) -> RGBColor {
    let mix = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        let t = t.clamp(0.0, 1.0);
        RGBColor(
            (a.0 + (b.0 - a.0) * t) as u8,
            (a.1 + (b.1 - a.1) * t) as u8,
            (a.2 + (b.2 - a.2) * t) as u8,
        )
    };
    if v >= 1.0 {
        mix((33.0, 102.0, 172.0), (5.0, 48.0, 97.0), v - 1.0)
    } else if v >= 0.0 {
        mix((255.0, 255.0, 255.0), (33.0, 102.0, 172.0), v)
    } else {
        mix((255.0, 255.0, 255.0), (178.0, 24.0, 43.0), -v)
    }
}

/// The share of the experts' in-domain gains each method keeps (rows) per domain (columns),
/// as coloured cells holding the percentage; `None` cells are left blank.
pub fn kept_heatmap(rows: &[Row], columns: &[String], title: &str, path: &Path) -> PlotResult {
    if rows.is_empty() || columns.is_empty() || !font_available() {
        return Ok(());
    }
    let lines = with_headers(rows);
    let (cell_w, top) = (110u32, 80u32);
    let (w, h) = (
        LABELS + cell_w * columns.len() as u32 + 20,
        top + LINE * lines.len() as u32 + 40,
    );
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw_text(
        title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (10, 10),
    )?;
    let centre = |s: u32| ("sans-serif", s).into_font().color(&BLACK);
    for (c, col) in columns.iter().enumerate() {
        let x = (LABELS + cell_w * c as u32 + cell_w / 2) as i32;
        root.draw_text(
            col,
            &centre(14).pos(Pos::new(HPos::Center, VPos::Center)),
            (x, top as i32 - 14),
        )?;
    }
    for (i, (group, row)) in lines.iter().enumerate() {
        let y = (top + LINE * i as u32) as i32;
        match (group, row) {
            (Some(g), _) => {
                root.draw_text(
                    g,
                    &centre(14).pos(Pos::new(HPos::Left, VPos::Center)),
                    (10, y + LINE as i32 / 2),
                )?;
            }
            (_, Some(r)) => {
                root.draw_text(
                    &format!("  {}", r.label),
                    &centre(13).pos(Pos::new(HPos::Left, VPos::Center)),
                    (10, y + LINE as i32 / 2),
                )?;
                for (c, v) in r.values.iter().enumerate() {
                    let x = (LABELS + cell_w * c as u32) as i32;
                    let Some((v, _)) = v else { continue };
                    let fill = diverging(*v);
                    root.draw(&Rectangle::new(
                        [(x + 1, y + 1), (x + cell_w as i32 - 1, y + LINE as i32 - 1)],
                        fill.filled(),
                    ))?;
                    let dark = (fill.0 as u32 + fill.1 as u32 + fill.2 as u32) < 330;
                    let text = format!("{:.0}%", 100.0 * v);
                    let font = ("sans-serif", 13)
                        .into_font()
                        .color(if dark { &WHITE } else { &BLACK })
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw_text(&text, &font, (x + cell_w as i32 / 2, y + LINE as i32 / 2))?;
                }
            }
            _ => {}
        }
    }
    root.present()?;
    Ok(())
}
