//! The slot-utilisation picture, written as SVG text: calls in progress over time as a step
//! line, the cap as a dashed horizontal line, the ideal makespan as a dashed vertical one.

use std::fmt::Write as _;

pub struct Chart<'a> {
    pub title: String,
    /// (seconds, calls in progress), in time order.
    pub points: &'a [(f64, f64)],
    pub cap: f64,
    pub ideal_seconds: f64,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

pub fn in_progress_chart(chart: &Chart<'_>) -> String {
    let last_x = chart.points.iter().map(|p| p.0).fold(0.0, f64::max);
    let top_y = chart.points.iter().map(|p| p.1).fold(0.0, f64::max);
    let x_step = nice_step(last_x.max(chart.ideal_seconds).max(1.0), 10.0);
    let x_max = ((last_x.max(chart.ideal_seconds) * 1.02) / x_step)
        .ceil()
        .max(1.0)
        * x_step;
    let y_step = nice_step(top_y.max(chart.cap).max(1.0), 6.0);
    let y_max = ((top_y.max(chart.cap) * 1.15) / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(&chart.title)
    );

    // Grid and tick labels.
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            label(x)
        );
        x += x_step;
    }
    let mut y = 0.0;
    while y <= y_max + 1e-9 {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            py + 4.0,
            label(y)
        );
        y += y_step;
    }

    // Axes and their labels.
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + plot_h,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0,
        escape(chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(chart.y_label)
    );

    // The cap and the ideal makespan.
    let cap_y = sy(chart.cap);
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{cap_y:.1}" x2="{:.1}" y2="{cap_y:.1}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d62728">cap = {}</text>"##,
        LEFT + plot_w,
        LEFT + plot_w - 4.0,
        cap_y - 6.0,
        label(chart.cap)
    );
    let ideal_x = sx(chart.ideal_seconds);
    let _ = writeln!(
        svg,
        r##"<line x1="{ideal_x:.1}" y1="{TOP}" x2="{ideal_x:.1}" y2="{:.1}" stroke="#7f7f7f" stroke-dasharray="4 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#7f7f7f">ideal makespan {} s</text>"##,
        TOP + plot_h,
        ideal_x - 4.0,
        TOP + 14.0,
        label(chart.ideal_seconds)
    );

    // The measured line, as steps: a sample's value holds until the next sample.
    if let Some(&(x0, y0)) = chart.points.first() {
        let mut path = format!("M{:.1},{:.1}", sx(x0), sy(y0));
        let mut previous_y = y0;
        for &(x, y) in &chart.points[1..] {
            let _ = write!(
                path,
                " L{:.1},{:.1} L{:.1},{:.1}",
                sx(x),
                sy(previous_y),
                sx(x),
                sy(y)
            );
            previous_y = y;
        }
        let _ = writeln!(
            svg,
            r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A step of 1, 2 or 5 × 10^k giving about `ticks` ticks over `range`.
fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = range / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(f64::MIN_POSITIVE)
}

fn label(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{}", value.round() as i64)
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_the_cap_and_the_line() {
        let points = [(0.0, 0.0), (0.1, 30.0), (40.0, 30.0), (41.0, 0.0)];
        let svg = in_progress_chart(&Chart {
            title: "a & b".to_owned(),
            points: &points,
            cap: 30.0,
            ideal_seconds: 40.0,
            x_label: "seconds",
            y_label: "calls",
        });
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("cap = 30"));
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains("<path d=\"M"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(42.0, 10.0), 5.0);
        assert_eq!(nice_step(30.0, 6.0), 5.0);
        assert_eq!(nice_step(7.0, 6.0), 2.0);
    }
}
