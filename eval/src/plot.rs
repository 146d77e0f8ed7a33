//! The picture: each ingredient's validation against test accuracy, with the uniform soup, the
//! greedy soup and the ensemble marked, in the style of the model-soups paper's figures; or,
//! without a test split (an external scorer), every model's validation score in a column.

use plotters::prelude::*;

use super::error::{Error, Result};
use super::greedy::Goal;
use super::report::{Kind, Report, Row};
use super::score::{Measure, Metric};

/// Renders `report` as an SVG document. Rows without both a val and a test score are left out;
/// when no row has both, the plot is [`ranking_svg`]'s.
pub fn svg(report: &Report, title: &str) -> Result<String> {
    if !report
        .rows()
        .iter()
        .any(|r| r.val.is_some() && r.test.is_some())
    {
        return ranking_svg(report, title);
    }
    let mut text = String::new();
    draw(report, title, &mut text).map_err(|e| Error::Plot(e.to_string()))?;
    // The mark lets a later --force tell this plot from a file it must not replace.
    Ok(format!("{}{text}", model_soup::format::PLOT_MARK))
}

/// Renders every row's validation score as a dot on one axis, a row per model, best on top
/// under the report's greedy goal: the picture for a scorer's single number.
pub fn ranking_svg<M: Measure>(report: &Report<M>, title: &str) -> Result<String> {
    let mut text = String::new();
    draw_ranking(report, title, &mut text).map_err(|e| Error::Plot(e.to_string()))?;
    // The mark lets a later --force tell this plot from a file it must not replace.
    Ok(format!("{}{text}", model_soup::format::PLOT_MARK))
}

fn draw_ranking<M: Measure>(
    report: &Report<M>,
    title: &str,
    text: &mut String,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut rows: Vec<&Row<M>> = report
        .rows()
        .into_iter()
        .filter(|r| r.val.is_some())
        .collect();
    let value = |r: &Row<M>| r.val.map_or(f64::NAN, |v| v.value());
    rows.sort_by(|a, b| value(a).total_cmp(&value(b)));
    let minimize = report
        .greedy
        .as_ref()
        .is_some_and(|g| g.goal == crate::greedy::Goal::Minimize);
    if minimize {
        rows.reverse();
    }
    let (mut lo, mut hi) = rows
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(value(r)), hi.max(value(r)))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08)
        .max(hi.abs().max(lo.abs()) * 1e-6)
        .max(1e-12);
    let (lo, hi) = (lo - pad, hi + pad);
    let n = rows.len().max(1);
    let height = 120 + 28 * n as u32;
    let root = SVGBackend::with_string(text, (820, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(10)
        .build_cartesian_2d(lo..hi, -0.5..n as f64 - 0.5)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(if minimize {
            "validation score (lower is better)"
        } else {
            "validation score (higher is better)"
        })
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        let color = match row.kind {
            Kind::Ingredient => RGBColor(90, 120, 200),
            Kind::UniformSoup => RGBColor(60, 160, 90),
            Kind::GreedySoup => RGBColor(210, 60, 50),
            Kind::Ensemble => RGBColor(150, 90, 180),
        };
        let at = (value(row), i as f64);
        let font = ("sans-serif", 11).into_font().color(&BLACK.mix(0.75));
        let label = format!(
            "{}  {}",
            row.name.trim_end_matches(".safetensors"),
            row.val.map_or_else(String::new, |v| v.show(value(row)))
        );
        chart.draw_series(std::iter::once(
            EmptyElement::at(at)
                + Circle::new((0, 0), 5, color.filled())
                + Text::new(label, (9, -4), font),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn draw(
    report: &Report,
    title: &str,
    text: &mut String,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    // The metric that ranked (accuracy for images): fractions in percent, losses as they are.
    let metric = report
        .rows()
        .iter()
        .find_map(|r| r.val.map(|v| v.metric))
        .unwrap_or(Metric::Accuracy);
    if metric.goal() == Goal::Minimize || metric == Metric::AccNorm {
        return draw_metric(report, title, metric, text);
    }
    let points: Vec<(Kind, String, f64, f64)> = report
        .rows()
        .into_iter()
        .filter_map(|r| Some((r.kind, r.name.clone(), r.val?.percent(), r.test?.percent())))
        .collect();
    // The window covers the points within FOCUS percentage points of the best row, as the
    // paper's figures do; a point further down (a broken soup, say) is drawn on the window's
    // edge, hollow, with its real accuracies in its label.
    const FOCUS: f64 = 6.0;
    let best = points
        .iter()
        .fold(f64::NEG_INFINITY, |m, p| m.max(p.2.max(p.3)));
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, _, v, t) in &points {
        for x in [*v, *t] {
            if x >= best - FOCUS {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 100.0);
    }
    let pad = ((hi - lo) * 0.08).max(0.25);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(100.0));
    let inside = |v: f64, t: f64| v >= lo && t >= lo;
    let clamp = |v: f64, t: f64| (v.max(lo), t.max(lo));

    let root = SVGBackend::with_string(text, (820, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("validation accuracy (%)")
        .y_desc("test accuracy (%)")
        .draw()?;

    let style = |kind: Kind| match kind {
        Kind::Ingredient => RGBColor(90, 120, 200),
        Kind::UniformSoup => RGBColor(60, 160, 90),
        Kind::GreedySoup => RGBColor(210, 60, 50),
        Kind::Ensemble => RGBColor(150, 90, 180),
    };
    let ingredients: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.0 == Kind::Ingredient)
        .map(|p| (p.2, p.3))
        .collect();
    let marker = |v: f64, t: f64, color: RGBColor| {
        if inside(v, t) {
            color.filled()
        } else {
            color.stroke_width(2)
        }
    };
    chart
        .draw_series(
            ingredients
                .iter()
                .map(|&(v, t)| Circle::new(clamp(v, t), 5, marker(v, t, style(Kind::Ingredient)))),
        )?
        .label("ingredients")
        .legend(move |(x, y)| Circle::new((x, y), 5, style(Kind::Ingredient).filled()));
    for (kind, label) in [
        (Kind::UniformSoup, "uniform soup"),
        (Kind::GreedySoup, "greedy soup"),
        (Kind::Ensemble, "ensemble"),
    ] {
        let marked: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.0 == kind)
            .map(|p| (p.2, p.3))
            .collect();
        if marked.is_empty() {
            continue;
        }
        let color = style(kind);
        match kind {
            Kind::UniformSoup => chart
                .draw_series(
                    marked
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 9, color.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| TriangleMarker::new((x, y), 7, color.filled())),
            Kind::GreedySoup => chart
                .draw_series(marked.iter().map(|&(v, t)| {
                    EmptyElement::at(clamp(v, t))
                        + Rectangle::new([(-6, -6), (6, 6)], marker(v, t, color))
                }))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], color.filled())
                }),
            _ => chart
                .draw_series(
                    marked
                        .iter()
                        .map(|&p| Cross::new(p, 8, color.stroke_width(3))),
                )?
                .label(label)
                .legend(move |(x, y)| Cross::new((x, y), 6, color.stroke_width(3))),
        };
    }
    let mut off_scale = 0;
    for (kind, name, v, t) in &points {
        let short = name.trim_end_matches(".safetensors");
        let mut label = match kind {
            Kind::Ingredient => short.to_string(),
            _ => short.split(" (").next().unwrap_or(short).to_string(),
        };
        // Off-scale points pile up in a corner: their labels are stacked upwards.
        let mut lift = 0;
        if !inside(*v, *t) {
            label = format!("{label} (off scale: val {v:.1}%, test {t:.1}%)");
            lift = 14 * off_scale;
            off_scale += 1;
        }
        let font = ("sans-serif", 11).into_font().color(&BLACK.mix(0.75));
        chart.draw_series(std::iter::once(
            EmptyElement::at(clamp(*v, *t)) + Text::new(label, (9, -4 - lift), font),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// [`draw`] for a metric other than accuracy (a loss, a perplexity, `acc_norm`): each row's
/// validation against test value of the metric, on axes that hold every point.
fn draw_metric(
    report: &Report,
    title: &str,
    metric: Metric,
    text: &mut String,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let scale = if metric.goal() == Goal::Maximize {
        100.0
    } else {
        1.0
    };
    let points: Vec<(Kind, String, f64, f64)> = report
        .rows()
        .into_iter()
        .filter_map(|r| {
            let (v, t) = (r.val?.get(metric), r.test?.get(metric));
            (v.is_finite() && t.is_finite()).then(|| (r.kind, r.name.clone(), scale * v, scale * t))
        })
        .collect();
    let (mut lo, mut hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.2.min(p.3)), hi.max(p.2.max(p.3)))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 1e-3).max(1e-9);
    let (lo, hi) = (lo - pad, hi + pad);
    let root = SVGBackend::with_string(text, (820, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, lo..hi)?;
    let unit = if scale == 100.0 { " (%)" } else { "" };
    let better = match metric.goal() {
        Goal::Maximize => "higher is better",
        Goal::Minimize => "lower is better",
    };
    chart
        .configure_mesh()
        .x_desc(format!("validation {}{unit}, {better}", metric.name()))
        .y_desc(format!("test {}{unit}", metric.name()))
        .draw()?;
    for (kind, name, v, t) in &points {
        let color = match kind {
            Kind::Ingredient => RGBColor(90, 120, 200),
            Kind::UniformSoup => RGBColor(60, 160, 90),
            Kind::GreedySoup => RGBColor(210, 60, 50),
            Kind::Ensemble => RGBColor(150, 90, 180),
        };
        let short = name.trim_end_matches(".safetensors");
        let font = ("sans-serif", 11).into_font().color(&BLACK.mix(0.75));
        chart.draw_series(std::iter::once(
            EmptyElement::at((*v, *t))
                + Circle::new((0, 0), 5, color.filled())
                + Text::new(short.to_string(), (9, -4), font),
        ))?;
    }
    root.present()?;
    Ok(())
}
