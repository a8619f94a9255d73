//! Gates on registration: conditions a new model version must meet, on its
//! own metrics or against the version holding the `champion` alias, scored
//! on the same test rows. A version that fails one is still registered, as
//! rejected, with the reasons, so the attempt and why it failed stay on
//! record; a rejected version cannot become champion or be deployed.
//!
//! ```text
//! gate   := metric OP bound
//! metric := [PREFIX.]NAME          (an overall metric, e.g. test.auc or auc)
//!         | slice_gap.NAME         (its largest gap between slices)
//! OP     := >= | <= | > | <
//! bound  := NUMBER | champion [(+|-) NUMBER] | champion * NUMBER
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// A slice with fewer rows than this is left out of gaps: its figures swing
/// by chance.
pub const SMALL_SLICE: f64 = 100.0;

/// The version a new one is compared with.
pub struct Champion {
    pub version: i64,
    /// Its model file, fetched for scoring on the new version's test rows.
    pub model: std::path::PathBuf,
    /// The metrics it was registered with (used when no test rows are wired).
    pub report: Value,
}

#[derive(Clone, Debug, PartialEq)]
enum Metric {
    Overall {
        prefix: Option<String>,
        name: String,
    },
    SliceGap(String),
    /// `latency_p50_ms` or `latency_p99_ms`: one row scored at a time.
    Latency(&'static str),
}

/// Rows scored one at a time to measure a model's latency.
pub const LATENCY_ROWS: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Ge,
    Le,
    Gt,
    Lt,
}

#[derive(Clone, Debug, PartialEq)]
enum Bound {
    Number(f64),
    /// champion + offset, or champion * factor.
    Champion {
        offset: f64,
        factor: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    text: String,
    metric: Metric,
    op: Op,
    bound: Bound,
}

/// How one gate went.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verdict {
    pub gate: String,
    pub value: f64,
    /// The bound it was held to (None: no champion to compare with).
    pub bound: Option<f64>,
    pub passed: bool,
    pub note: String,
}

pub fn parse(text: &str) -> Result<Gate, String> {
    let bad = |why: &str| {
        format!(
            "gate '{text}': {why}; e.g. 'test.auc >= champion - 0.002', 'slice_gap.auc <= 0.05', 'test.log_loss < 0.6'"
        )
    };
    let (at, op, width) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
        .iter()
        .filter_map(|(s, op)| text.find(s).map(|i| (i, *op, s.len())))
        .min_by_key(|(i, _, w)| (*i, usize::MAX - w))
        .ok_or_else(|| bad("no comparison (>=, <=, > or <)"))?;
    let (lhs, rhs) = (text[..at].trim(), text[at + width..].trim());
    if lhs.is_empty() || rhs.is_empty() {
        return Err(bad("a side of the comparison is empty"));
    }
    if !lhs
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(bad(&format!("'{lhs}' is not a metric name")));
    }
    let metric = match (lhs, lhs.strip_prefix("slice_gap.")) {
        ("latency_p50_ms", _) => Metric::Latency("p50_ms"),
        ("latency_p99_ms", _) => Metric::Latency("p99_ms"),
        (_, Some(name)) if !name.is_empty() => Metric::SliceGap(name.to_string()),
        (_, Some(_)) => return Err(bad("slice_gap needs a metric: slice_gap.auc")),
        (_, None) => match lhs.rsplit_once('.') {
            Some((prefix, name)) => Metric::Overall {
                prefix: Some(prefix.to_string()),
                name: name.to_string(),
            },
            None => Metric::Overall {
                prefix: None,
                name: lhs.to_string(),
            },
        },
    };
    let bound = match rhs.strip_prefix("champion") {
        Some(rest) => {
            let rest = rest.trim();
            let number = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(&format!("'{}' is not a number", s.trim())))
            };
            if rest.is_empty() {
                Bound::Champion {
                    offset: 0.0,
                    factor: 1.0,
                }
            } else if let Some(x) = rest.strip_prefix('+') {
                Bound::Champion {
                    offset: number(x)?,
                    factor: 1.0,
                }
            } else if let Some(x) = rest.strip_prefix('-') {
                Bound::Champion {
                    offset: -number(x)?,
                    factor: 1.0,
                }
            } else if let Some(x) = rest.strip_prefix('*') {
                Bound::Champion {
                    offset: 0.0,
                    factor: number(x)?,
                }
            } else {
                return Err(bad(&format!("cannot read '{rest}' after champion")));
            }
        }
        None => Bound::Number(
            rhs.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(&format!("'{rhs}' is neither a number nor champion")))?,
        ),
    };
    Ok(Gate {
        text: text.trim().to_string(),
        metric,
        op,
        bound,
    })
}

/// The largest gap of each metric between the slices of one column:
/// (metric, gap, lowest slice, highest slice), largest first.
pub fn slice_gaps(values: &serde_json::Map<String, Value>) -> Vec<(String, f64, String, String)> {
    let num = |v: &Value| v.as_f64().filter(|x| x.is_finite());
    let kept: Vec<(&String, &Value)> = values
        .iter()
        .filter(|(_, m)| num(&m["rows"]).is_none_or(|r| r >= SMALL_SLICE))
        .collect();
    let mut metrics: Vec<&String> = kept
        .iter()
        .filter_map(|(_, m)| m.as_object())
        .flat_map(|m| m.keys())
        .filter(|k| *k != "rows")
        .collect();
    metrics.sort();
    metrics.dedup();
    let mut out = Vec::new();
    for metric in metrics {
        let scored: Vec<(&String, f64)> = kept
            .iter()
            .filter_map(|(slice, m)| num(&m[metric.as_str()]).map(|x| (*slice, x)))
            .collect();
        let lo = scored.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let hi = scored.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(lo), Some(hi), true) = (lo, hi, scored.len() > 1) {
            out.push((metric.clone(), hi.1 - lo.1, lo.0.clone(), hi.0.clone()));
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// A metric of a report (`{"prefix", "overall", "slices"}`, as
/// weir/evaluate writes it).
fn value_of(metric: &Metric, report: &Value, whose: &str) -> Result<f64, String> {
    match metric {
        Metric::Latency(which) => report["latency"][*which].as_f64().ok_or_else(|| {
            format!("{whose} has no latency measured: latency gates need the test rows wired in as `table:`")
        }),
        Metric::Overall { prefix, name } => {
            if let (Some(p), Some(theirs)) = (prefix, report["prefix"].as_str()) {
                if p != theirs {
                    return Err(format!(
                        "{whose} metrics are of the '{theirs}' set, not '{p}': write {theirs}.{name}"
                    ));
                }
            }
            report["overall"][name.as_str()].as_f64().ok_or_else(|| {
                let known: Vec<&String> = report["overall"]
                    .as_object()
                    .map(|m| m.keys().collect())
                    .unwrap_or_default();
                format!(
                    "{whose} has no metric '{name}' (it has {})",
                    if known.is_empty() {
                        "none: wire weir/evaluate's metrics into the register step".to_string()
                    } else {
                        known
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )
            })
        }
        Metric::SliceGap(name) => {
            let slices = report["slices"]
                .as_object()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!("{whose} has no per-slice metrics: give weir/evaluate slice_by")
                })?;
            let mut largest: Option<f64> = None;
            for values in slices.values().filter_map(Value::as_object) {
                for (metric, gap, _, _) in slice_gaps(values) {
                    if &metric == name {
                        largest = Some(largest.map_or(gap, |l: f64| l.max(gap)));
                    }
                }
            }
            largest.ok_or_else(|| format!("{whose} has no slice metric '{name}'"))
        }
    }
}

impl Gate {
    pub fn needs_latency(&self) -> bool {
        matches!(self.metric, Metric::Latency(_))
    }

    pub fn needs_champion(&self) -> bool {
        matches!(self.bound, Bound::Champion { .. })
    }

    /// Holds `candidate`'s report to the gate; `champion` is the champion's
    /// report on the same rows (None when no version is champion yet).
    pub fn judge(
        &self,
        candidate: &Value,
        champion: Option<(i64, &Value)>,
    ) -> Result<Verdict, String> {
        let value = value_of(&self.metric, candidate, "the new version")
            .map_err(|e| format!("gate '{}': {e}", self.text))?;
        let (bound, note) = match (&self.bound, champion) {
            (Bound::Number(x), _) => (Some(*x), String::new()),
            (Bound::Champion { .. }, None) => {
                (None, "no version is champion yet: passed".to_string())
            }
            (Bound::Champion { offset, factor }, Some((version, report))) => {
                let theirs = value_of(
                    &self.metric,
                    report,
                    &format!("champion (version {version})"),
                )
                .map_err(|e| format!("gate '{}': {e}", self.text))?;
                (
                    Some(theirs * factor + offset),
                    format!("champion is version {version} at {theirs:.6} on the same rows"),
                )
            }
        };
        let passed = match bound {
            None => true,
            Some(b) => match self.op {
                Op::Ge => value >= b,
                Op::Le => value <= b,
                Op::Gt => value > b,
                Op::Lt => value < b,
            },
        };
        Ok(Verdict {
            gate: self.text.clone(),
            value,
            bound,
            passed,
            note,
        })
    }
}

/// One line for a verdict: "test.auc = 0.701 < 0.742 (champion ...)".
pub fn describe(v: &Verdict) -> String {
    match v.bound {
        None => format!("{}: {:.6} ({})", v.gate, v.value, v.note),
        Some(b) => format!(
            "{}: {:.6} against {:.6}{}{}",
            v.gate,
            v.value,
            b,
            if v.passed { ", passed" } else { ", FAILED" },
            if v.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.note)
            }
        ),
    }
}

/// How long `model` takes to score one row, over the first
/// [`LATENCY_ROWS`] rows of `table`: p50 and p99 in milliseconds, as a
/// request of one row would see it (without the HTTP around it).
pub(crate) fn latency(
    model: &weir_ml::Model,
    table: &arrow::record_batch::RecordBatch,
) -> Result<Value, crate::EngineError> {
    let (rows, _) = model.labelled(table)?;
    let n = rows.num_rows().min(LATENCY_ROWS);
    if n == 0 {
        return Err(crate::EngineError::StepFailed(
            "latency gates need test rows; the table is empty".into(),
        ));
    }
    // One pass first: lazy set-up is not what a gate judges.
    model.predict_batch(&rows.slice(0, 1))?;
    let mut ms: Vec<f64> = (0..n)
        .map(|i| {
            let one = rows.slice(i, 1);
            let started = std::time::Instant::now();
            model
                .predict_batch(&one)
                .map(|_| started.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * (n - 1) as f64).round() as usize).min(n - 1)];
    Ok(serde_json::json!({ "p50_ms": at(0.5), "p99_ms": at(0.99), "rows": n }))
}

/// A report made of a scored model, in weir/evaluate's shape.
pub(crate) fn report_of(scored: &super::evaluate::Scored, prefix: &str) -> Value {
    let overall: BTreeMap<&String, Option<f64>> = scored
        .overall
        .iter()
        .map(|(k, v)| (k, v.is_finite().then_some(*v)))
        .collect();
    serde_json::json!({ "prefix": prefix, "overall": overall, "slices": scored.slices })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_judge() {
        let g = parse("test.auc >= champion - 0.002").unwrap();
        let mine = serde_json::json!({"prefix": "test", "overall": {"auc": 0.70}, "slices": {}});
        let theirs = serde_json::json!({"prefix": "test", "overall": {"auc": 0.71}});
        let v = g.judge(&mine, Some((3, &theirs))).unwrap();
        assert!(
            !v.passed && (v.bound.unwrap() - 0.708).abs() < 1e-12,
            "{v:?}"
        );
        assert!(g.judge(&mine, None).unwrap().passed);
        assert!(
            parse("auc > 0.6")
                .unwrap()
                .judge(&mine, None)
                .unwrap()
                .passed
        );
        let e = parse("test.f2 >= 0.5")
            .unwrap()
            .judge(&mine, None)
            .unwrap_err();
        assert!(e.contains("no metric 'f2' (it has auc)"), "{e}");
        let e = parse("valid.auc >= 0.5")
            .unwrap()
            .judge(&mine, None)
            .unwrap_err();
        assert!(e.contains("write test.auc"), "{e}");
        assert!(parse("auc = 1").unwrap_err().contains("no comparison"));
        assert!(parse("auc => 1")
            .unwrap_err()
            .contains("'auc =' is not a metric name"));
        assert!(parse("auc >= champion / 2")
            .unwrap_err()
            .contains("after champion"));
        assert!(parse("auc >= lots")
            .unwrap_err()
            .contains("neither a number"));
        let sliced = serde_json::json!({"overall": {}, "slices": {"carrier": {
            "UA": {"auc": 0.8, "rows": 500}, "DL": {"auc": 0.7, "rows": 500},
            "HA": {"auc": 0.1, "rows": 5}}}});
        let gap = parse("slice_gap.auc <= 0.05")
            .unwrap()
            .judge(&sliced, None)
            .unwrap();
        assert!(!gap.passed && (gap.value - 0.1).abs() < 1e-12, "{gap:?}");
        let timed = serde_json::json!({"overall": {}, "latency": {"p99_ms": 0.2}});
        let g = parse("latency_p99_ms <= champion * 1.5").unwrap();
        let slower = serde_json::json!({"latency": {"p99_ms": 0.1}});
        assert!(!g.judge(&timed, Some((1, &slower))).unwrap().passed);
        let e = parse("latency_p99_ms <= 1")
            .unwrap()
            .judge(&mine, None)
            .unwrap_err();
        assert!(e.contains("table:"), "{e}");
        assert_eq!(
            parse("x <= 1").unwrap().op,
            Op::Le,
            "<= is read whole, not as <"
        );
    }
}
