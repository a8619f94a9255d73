//! The drift report as one self-contained HTML page: the verdict, a table of
//! every column's measure, and per column the reference's and the current
//! distribution drawn over each other (inline SVG, no scripts, nothing
//! fetched), so it can be mailed, archived as an artifact or opened offline.

use std::fmt::Write;

use crate::compare::{shares_between, Drift};
use crate::profile::{ColumnProfile, Profile};

const BINS: usize = 20;
const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 120.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Both sides' shares over common bins: equal-width bins spanning both for
/// numbers, the union of the top values (and "other") for categories.
fn bars(
    reference: &ColumnProfile,
    current: &ColumnProfile,
) -> Option<(Vec<String>, Vec<f64>, Vec<f64>)> {
    match (
        &reference.numeric,
        &current.numeric,
        &reference.top,
        &current.top,
    ) {
        (Some(r), Some(c), _, _) => {
            let (lo, hi) = (r.min.min(c.min), r.max.max(c.max));
            let edges: Vec<f64> = match hi > lo {
                true => (0..=BINS)
                    .map(|i| lo + (hi - lo) * i as f64 / BINS as f64)
                    .collect(),
                false => vec![lo, hi],
            };
            let labels = edges[..edges.len() - 1]
                .iter()
                .map(|e| format!("{e:.4}"))
                .collect();
            Some((
                labels,
                shares_between(&r.percentiles, &edges),
                shares_between(&c.percentiles, &edges),
            ))
        }
        (None, None, Some(r), Some(c)) => {
            let mut labels: Vec<String> = crate::compare::category_keys(r, c)
                .into_iter()
                .map(str::to_string)
                .collect();
            labels.push("(other)".into());
            let (rs, cs) = crate::compare::category_shares(r, c);
            Some((labels, rs, cs))
        }
        _ => None,
    }
}

fn chart(labels: &[String], reference: &[f64], current: &[f64]) -> String {
    let top = reference
        .iter()
        .chain(current)
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9);
    let slot = WIDTH / labels.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg width="{WIDTH}" height="{}" role="img" aria-label="reference and current distributions">"#,
        HEIGHT + 4.0
    );
    for (i, label) in labels.iter().enumerate() {
        for (side, shares, class) in [(0.0, reference, "ref"), (0.5, current, "cur")] {
            let h = shares[i] / top * HEIGHT;
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{}: {} {:.1}%</title></rect>"#,
                i as f64 * slot + side * slot * 0.9,
                HEIGHT - h,
                slot * 0.45,
                h,
                escape(label),
                if class == "ref" {
                    "reference"
                } else {
                    "current"
                },
                shares[i] * 100.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The report of `drift` between `reference` and `current` (their profiles),
/// titled `title`, naming the two sides `names`.
pub fn drift_html(
    title: &str,
    names: (&str, &str),
    reference: &Profile,
    current: &Profile,
    drift: &Drift,
) -> String {
    let mut html = String::new();
    let verdict = match drift.dataset_drift {
        true => "Dataset drift detected",
        false => "No dataset drift",
    };
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }}
.drift {{ color: #b00020; font-weight: 600; }}
.ref {{ fill: #4e79a7; }} .cur {{ fill: #f28e2b; }}
.legend span {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }}
section {{ display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }}
</style></head><body>
<h1>{title}</h1>
<p class="{}">{verdict}: {} of {} columns drifted ({:.0}%; the threshold is {:.0}%).</p>
<p>Reference: {} ({} rows). Current: {} ({} rows).</p>
<table><thead><tr><th>column</th><th>kind</th><th>method</th><th>score</th><th>threshold</th><th>drift</th><th>PSI</th><th>nulls (reference → current)</th></tr></thead><tbody>"#,
        if drift.dataset_drift { "drift" } else { "" },
        drift.drifted_columns,
        drift.columns.len(),
        drift.drifted_share * 100.0,
        drift.share_threshold * 100.0,
        escape(names.0),
        reference.rows,
        escape(names.1),
        current.rows,
        title = escape(title),
    );
    for c in &drift.columns {
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{:.4}</td><td>{}</td><td class="{}">{}</td><td>{:.4}</td><td>{:.1}% → {:.1}%</td></tr>"#,
            escape(&c.column),
            c.kind,
            c.method,
            c.score,
            c.threshold,
            if c.drifted { "drift" } else { "" },
            if c.drifted { "drift" } else { "no" },
            c.psi,
            c.null_rate.0 * 100.0,
            c.null_rate.1 * 100.0,
        );
    }
    html.push_str(r#"</tbody></table><p class="legend"><span class="ref" style="background:#4e79a7"></span>reference<span style="background:#f28e2b"></span>current</p>"#);
    for c in &drift.columns {
        let (Some(r), Some(cur)) = (reference.column(&c.column), current.column(&c.column)) else {
            continue;
        };
        if let Some((labels, rs, cs)) = bars(r, cur) {
            let _ = write!(
                html,
                r#"<section><h3 class="{}">{}</h3>{}</section>"#,
                if c.drifted { "drift" } else { "" },
                escape(&c.column),
                chart(&labels, &rs, &cs)
            );
        }
    }
    html.push_str("</body></html>\n");
    html
}
