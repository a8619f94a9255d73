//! Quality rules. Every rule is checked, and the report lists each violated
//! rule with its count and a few example rows, so one run shows everything
//! that is wrong with the data.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DataError, Result};

const EXAMPLES: usize = 5;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub column: Option<String>,
    #[serde(rename = "type")]
    pub dtype: Option<String>,
    #[serde(default)]
    pub not_null: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `true` with `column:`; or, for the table, the columns whose values
    /// together must be unique: `unique: [origin, time_hour]`.
    #[serde(default)]
    pub unique: Unique,
    pub allowed: Option<Vec<Value>>,
    /// Table-level: `{ rows: { min: 1000, max: 1000000, change: 10% } }`.
    pub rows: Option<Bounds>,
    /// Table-level: a condition every row must meet, over any columns:
    /// `arr_time >= dep_time or arr_time is null`.
    pub expr: Option<String>,
    /// With a timestamp or date `column:`: its newest value is at most
    /// this old (`2h`, `1d`) when the step runs.
    pub freshness: Option<String>,
    /// With `column:`: every non-null value appears in this column of the
    /// step's `reference` input.
    pub references: Option<String>,
    /// `warn` reports the violation without failing the step.
    #[serde(default)]
    pub severity: Severity,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Unique {
    Flag(bool),
    Columns(Vec<String>),
    #[default]
    #[serde(skip)]
    No,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min: Option<u64>,
    pub max: Option<u64>,
    /// The most the row count may move from the input's previous version,
    /// in percent: `10%` (or `10`).
    pub change: Option<Value>,
}

/// What some rules compare with, beyond the table itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleContext<'a> {
    /// The step's `reference` input, for `references:`.
    pub reference: Option<&'a RecordBatch>,
    /// Rows of the previous version of the input's dataset, for
    /// `rows.change` (none: the first version, nothing to compare).
    pub previous_rows: Option<u64>,
    /// Now, in milliseconds since the epoch, for `freshness:`.
    pub now_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub rule: String,
    pub column: Option<String>,
    pub count: usize,
    /// Example offending rows: `{"row": index, "value": "..."}`.
    pub examples: Vec<Value>,
    pub severity: Severity,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidationReport {
    pub rows: usize,
    pub rules_checked: usize,
    pub violations: Vec<Violation>,
}

impl ValidationReport {
    /// No rule of severity `error` is violated (warnings may be).
    pub fn passed(&self) -> bool {
        self.violations.iter().all(|v| v.severity == Severity::Warn)
    }

    pub fn warnings(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Warn)
            .count()
    }

    /// A human summary listing every violated rule.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} of {} rules violated on {} rows:",
            self.violations.len(),
            self.rules_checked,
            self.rows
        );
        for v in &self.violations {
            let examples: Vec<String> = v
                .examples
                .iter()
                .map(|e| format!("row {} = {}", e["row"], e["value"]))
                .collect();
            let level = match v.severity {
                Severity::Error => "",
                Severity::Warn => " [warn]",
            };
            out.push_str(&format!("\n  - {}{level}: {} rows", v.rule, v.count));
            if !examples.is_empty() {
                out.push_str(&format!(" (e.g. {})", examples.join(", ")));
            }
        }
        out
    }
}

/// Checks `rules` against `batch`. A rule that is itself wrong (unknown
/// column, unknown type, empty rule, a condition that does not parse) is an
/// error, not a violation.
pub fn validate(batch: &RecordBatch, rules: &[Rule], cx: &RuleContext) -> Result<ValidationReport> {
    let mut conditions = Vec::new();
    let mut freshness = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("with.rules[{i}]");
        let table_level =
            rule.rows.is_some() || rule.expr.is_some() || matches!(rule.unique, Unique::Columns(_));
        match &rule.column {
            Some(c) => {
                crate::column(batch, c, &field)?;
            }
            None if table_level => {}
            None => {
                return Err(DataError::invalid(
                    field,
                    "a rule needs `column:`, or one of `rows:`, `expr:` or `unique: [columns]`",
                ));
            }
        }
        if let Some(t) = &rule.dtype {
            type_matches(&DataType::Null, t)
                .map_err(|m| DataError::invalid(format!("{field}.type"), m))?;
        }
        if let Unique::Columns(columns) = &rule.unique {
            if columns.is_empty() {
                return Err(DataError::invalid(
                    format!("{field}.unique"),
                    "list the columns whose values together must be unique",
                ));
            }
            for c in columns {
                crate::column(batch, c, &format!("{field}.unique"))?;
            }
        }
        conditions.push(match &rule.expr {
            Some(text) => {
                let condition = crate::rule_expr::Condition::parse(text).map_err(|m| {
                    DataError::invalid(format!("{field}.expr"), format!("{m} in `{text}`"))
                })?;
                for c in condition.columns() {
                    crate::column(batch, &c, &format!("{field}.expr"))?;
                }
                Some(condition)
            }
            None => None,
        });
        freshness.push(match &rule.freshness {
            Some(window) => {
                let ms = humantime::parse_duration(window)
                    .map_err(|e| {
                        DataError::invalid(
                            format!("{field}.freshness"),
                            format!("'{window}' is not a duration ({e}); write e.g. 2h or 1d"),
                        )
                    })?
                    .as_millis() as i64;
                let column = rule.column.as_deref().ok_or_else(|| {
                    DataError::invalid(
                        format!("{field}.freshness"),
                        "name the timestamp or date column it applies to with `column:`",
                    )
                })?;
                Some((ms, newest_ms(batch, column, &field)?))
            }
            None => None,
        });
        if rule.references.is_some() {
            let Some(reference) = cx.reference else {
                return Err(DataError::invalid(
                    format!("{field}.references"),
                    "the step has no `reference` input to look values up in; add `inputs: { reference: STEP.OUTPUT }`",
                ));
            };
            let c = rule.references.as_deref().expect("checked");
            crate::column(
                reference,
                c,
                &format!("{field}.references (in the reference input)"),
            )?;
        }
        if let Some(Bounds {
            change: Some(change),
            ..
        }) = &rule.rows
        {
            percent(change).map_err(|m| DataError::invalid(format!("{field}.rows.change"), m))?;
        }
        if rule.column.is_some()
            && !rule.not_null
            && matches!(rule.unique, Unique::No | Unique::Flag(false))
            && rule.min.is_none()
            && rule.max.is_none()
            && rule.allowed.is_none()
            && rule.dtype.is_none()
            && rule.freshness.is_none()
            && rule.references.is_none()
        {
            return Err(DataError::invalid(
                field,
                "the rule checks nothing; add type, not_null, min, max, unique, allowed, freshness or references",
            ));
        }
    }

    let mut violations = Vec::new();
    let mut checked = 0;
    for ((rule, condition), fresh) in rules.iter().zip(&conditions).zip(&freshness) {
        let severity = rule.severity;
        let mut table_violation =
            |rule: String, column: Option<String>, count: usize, examples: Vec<Value>| {
                violations.push(Violation {
                    rule,
                    column,
                    count,
                    examples,
                    severity,
                });
            };
        if let Some(bounds) = &rule.rows {
            checked += 1;
            let n = batch.num_rows() as u64;
            if bounds.min.is_some_and(|m| n < m) || bounds.max.is_some_and(|m| n > m) {
                table_violation(
                    format!(
                        "row count {} outside [{}, {}]",
                        n,
                        bounds.min.map_or("-".into(), |v| v.to_string()),
                        bounds.max.map_or("-".into(), |v| v.to_string())
                    ),
                    None,
                    1,
                    vec![],
                );
            }
            if let (Some(change), Some(previous)) = (&bounds.change, cx.previous_rows) {
                let limit = percent(change).expect("checked above");
                let moved = (n as f64 - previous as f64) / (previous.max(1) as f64) * 100.0;
                if moved.abs() > limit {
                    table_violation(
                        format!(
                            "row count {n} moved {moved:+.1}% from the previous version's {previous} (at most ±{limit}%)"
                        ),
                        None,
                        1,
                        vec![],
                    );
                }
            }
        }
        if let Some(condition) = condition {
            checked += 1;
            let text = rule.expr.as_deref().expect("parsed from it");
            let bad = condition
                .failing_rows(batch)
                .map_err(|m| DataError::invalid("with.rules.expr", format!("{m} in `{text}`")))?;
            if !bad.is_empty() {
                let columns = condition.columns();
                let texts = columns
                    .iter()
                    .map(|c| Texts::new(batch.column_by_name(c).expect("checked")))
                    .collect::<Result<Vec<_>>>()?;
                let examples = bad
                    .iter()
                    .take(EXAMPLES)
                    .map(|&r| {
                        let shown: Vec<String> = columns
                            .iter()
                            .zip(&texts)
                            .map(|(c, t)| format!("{c}={}", t.get(r)))
                            .collect();
                        serde_json::json!({"row": r, "value": shown.join(" ")})
                    })
                    .collect();
                table_violation(format!("expr: {text}"), None, bad.len(), examples);
            }
        }
        if let Unique::Columns(columns) = &rule.unique {
            checked += 1;
            let texts = columns
                .iter()
                .map(|c| Texts::new(batch.column_by_name(c).expect("checked")))
                .collect::<Result<Vec<_>>>()?;
            let mut first: HashMap<Vec<String>, usize> = HashMap::new();
            let mut bad = Vec::new();
            for r in 0..batch.num_rows() {
                let key: Vec<String> = texts.iter().map(|t| t.get(r)).collect();
                if first.insert(key, r).is_some() {
                    bad.push(r);
                }
            }
            if !bad.is_empty() {
                let examples = bad
                    .iter()
                    .take(EXAMPLES)
                    .map(|&r| {
                        let key: Vec<String> = texts.iter().map(|t| t.get(r)).collect();
                        serde_json::json!({"row": r, "value": key.join(", ")})
                    })
                    .collect();
                table_violation(
                    format!("unique together: [{}]", columns.join(", ")),
                    None,
                    bad.len(),
                    examples,
                );
            }
        }
        let Some(name) = &rule.column else { continue };
        let col = batch.column_by_name(name).expect("checked above");
        let text = Texts::new(col)?;
        if let Some((window, newest)) = fresh {
            checked += 1;
            let age = newest.map(|t| cx.now_ms - t);
            if age.is_none_or(|a| a > *window) {
                violations.push(Violation {
                    rule: format!(
                        "{name}: newest value {} (at most {} old)",
                        match age {
                            Some(a) => format!("is {} old", age_text(a)),
                            None => "missing: the column is empty".into(),
                        },
                        rule.freshness.as_deref().expect("parsed from it")
                    ),
                    column: Some(name.clone()),
                    count: 1,
                    examples: vec![],
                    severity,
                });
            }
        }
        if let Some(dtype) = &rule.dtype {
            checked += 1;
            if !type_matches(col.data_type(), dtype).unwrap_or(false) {
                violations.push(Violation {
                    rule: format!("{name}: type is {}, expected {dtype}", col.data_type()),
                    column: Some(name.clone()),
                    count: col.len(),
                    examples: vec![],
                    severity,
                });
            }
        }
        let mut check = |label: String, bad: Vec<usize>| {
            checked += 1;
            if !bad.is_empty() {
                violations.push(Violation {
                    rule: format!("{name}: {label}"),
                    column: Some(name.clone()),
                    count: bad.len(),
                    examples: bad
                        .iter()
                        .take(EXAMPLES)
                        .map(|&r| serde_json::json!({"row": r, "value": text.get(r)}))
                        .collect(),
                    severity,
                });
            }
        };
        if rule.not_null {
            let bad = (0..col.len()).filter(|&r| col.is_null(r)).collect();
            check("not_null".into(), bad);
        }
        if rule.min.is_some() || rule.max.is_some() {
            let numbers = as_f64(col, name)?;
            let (lo, hi) = (
                rule.min.unwrap_or(f64::NEG_INFINITY),
                rule.max.unwrap_or(f64::INFINITY),
            );
            let bad = (0..numbers.len())
                .filter(|&r| numbers.is_valid(r) && !(lo..=hi).contains(&numbers.value(r)))
                .collect();
            let label = match (rule.min, rule.max) {
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!(">= {a}"),
                (None, Some(b)) => format!("<= {b}"),
                (None, None) => unreachable!(),
            };
            check(label, bad);
        }
        if matches!(rule.unique, Unique::Flag(true)) {
            let mut first: HashMap<String, usize> = HashMap::new();
            let mut bad = Vec::new();
            for r in 0..col.len() {
                if col.is_null(r) {
                    continue;
                }
                if first.insert(text.get(r), r).is_some() {
                    bad.push(r);
                }
            }
            check("unique".into(), bad);
        }
        if let Some(allowed) = &rule.allowed {
            let allowed: Vec<String> = allowed
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let bad = (0..col.len())
                .filter(|&r| col.is_valid(r) && !allowed.contains(&text.get(r)))
                .collect();
            check(format!("allowed values [{}]", allowed.join(", ")), bad);
        }
        if let (Some(target), Some(reference)) = (&rule.references, cx.reference) {
            let values = reference.column_by_name(target).expect("checked above");
            let known = Texts::new(values)?;
            let known: std::collections::HashSet<String> = (0..values.len())
                .filter(|&r| values.is_valid(r))
                .map(|r| known.get(r))
                .collect();
            let bad = (0..col.len())
                .filter(|&r| col.is_valid(r) && !known.contains(&text.get(r)))
                .collect();
            check(format!("references reference.{target}"), bad);
        }
    }
    Ok(ValidationReport {
        rows: batch.num_rows(),
        rules_checked: checked,
        violations,
    })
}

/// An age in whole days past two days, else to the second.
fn age_text(ms: i64) -> String {
    const DAY: i64 = 86_400_000;
    match ms {
        ms if ms >= 2 * DAY => format!("{} days", ms / DAY),
        ms => humantime::format_duration(std::time::Duration::from_secs((ms / 1000).max(0) as u64))
            .to_string(),
    }
}

/// `10%`, `10` or `"10"` as a percentage.
fn percent(value: &Value) -> std::result::Result<f64, String> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('%').trim().parse().ok(),
        _ => None,
    };
    parsed
        .filter(|p| p.is_finite() && *p >= 0.0)
        .ok_or_else(|| format!("{value} is not a percentage; write e.g. 10%"))
}

/// The newest value of a timestamp or date column, in ms since the epoch.
fn newest_ms(batch: &RecordBatch, column: &str, field: &str) -> Result<Option<i64>> {
    let col = batch.column_by_name(column).expect("checked above");
    let as_ms = match col.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => arrow::compute::cast(
            col,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
        )?,
        other => {
            return Err(DataError::invalid(
                format!("{field}.freshness"),
                format!("column '{column}' is {other}, not a timestamp or date"),
            ))
        }
    };
    let ints = arrow::compute::cast(&as_ms, &DataType::Int64)?;
    let ints = ints
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("cast to i64");
    Ok(arrow::compute::max(ints))
}

fn type_matches(actual: &DataType, expected: &str) -> std::result::Result<bool, String> {
    use DataType::*;
    Ok(match expected {
        "int" | "int64" | "integer" => matches!(
            actual,
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        ),
        "float" | "float64" | "double" => matches!(actual, Float16 | Float32 | Float64),
        "number" | "numeric" => actual.is_numeric(),
        "string" | "str" | "utf8" => matches!(actual, Utf8 | LargeUtf8 | Utf8View),
        "bool" | "boolean" => matches!(actual, Boolean),
        "date" => matches!(actual, Date32 | Date64),
        "timestamp" | "datetime" => matches!(actual, Timestamp(_, _)),
        other => {
            return Err(format!(
            "unknown type '{other}'; use int64, float64, number, string, bool, date or timestamp"
        ))
        }
    })
}

pub(crate) fn as_f64(col: &ArrayRef, name: &str) -> Result<Float64Array> {
    if !col.data_type().is_numeric() {
        return Err(DataError::invalid(
            name,
            format!("column '{name}' is {}, not numeric", col.data_type()),
        ));
    }
    let cast = arrow::compute::cast(col, &DataType::Float64)?;
    Ok(cast
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("cast to f64")
        .clone())
}

/// Row values as text, for examples, uniqueness and allowed values.
struct Texts<'a>(ArrayFormatter<'a>);

impl<'a> Texts<'a> {
    fn new(col: &'a ArrayRef) -> Result<Self> {
        static OPTIONS: std::sync::LazyLock<FormatOptions<'static>> =
            std::sync::LazyLock::new(|| FormatOptions::default().with_null("null"));
        Ok(Texts(ArrayFormatter::try_new(col.as_ref(), &OPTIONS)?))
    }

    fn get(&self, row: usize) -> String {
        self.0.value(row).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 2, 4])) as ArrayRef,
            ),
            (
                "delay",
                Arc::new(Int64Array::from(vec![Some(5), None, Some(-900), Some(30)])) as ArrayRef,
            ),
            (
                "carrier",
                Arc::new(StringArray::from(vec!["UA", "AA", "ZZ", "UA"])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn rules(yaml: &str) -> Vec<Rule> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn reports_every_violated_rule_with_examples() {
        let r = validate(
            &batch(),
            &rules(
                "- { column: id, unique: true }\n- { column: delay, not_null: true, min: -60, max: 600 }\n\
                 - { column: carrier, allowed: [UA, AA], type: string }\n- { rows: { min: 10 } }\n",
            ),
            &RuleContext::default(),
        )
        .unwrap();
        assert!(!r.passed());
        let names: Vec<&str> = r.violations.iter().map(|v| v.rule.as_str()).collect();
        assert_eq!(
            names,
            [
                "id: unique",
                "delay: not_null",
                "delay: between -60 and 600",
                "carrier: allowed values [UA, AA]",
                "row count 4 outside [10, -]"
            ]
        );
        assert_eq!(
            r.violations[0].examples[0],
            serde_json::json!({"row": 2, "value": "2"})
        );
        assert_eq!(r.violations[3].count, 1);
        assert!(
            r.summary().contains("5 of 6 rules violated on 4 rows"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn passing_data_passes() {
        let r = validate(&batch(), &rules("- { column: carrier, not_null: true, type: string }\n- { rows: { min: 1, max: 4 } }"), &RuleContext::default()).unwrap();
        assert!(r.passed(), "{}", r.summary());
    }

    #[test]
    fn a_rule_naming_an_unknown_column_is_an_error() {
        let err = validate(
            &batch(),
            &rules("- { column: dealy, not_null: true }"),
            &RuleContext::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("with.rules[0]: unknown column 'dealy'"),
            "{err}"
        );
        assert!(
            err.contains("available columns: id, delay, carrier"),
            "{err}"
        );
    }

    #[test]
    fn range_rules_on_text_columns_are_an_error() {
        let err = validate(
            &batch(),
            &rules("- { column: carrier, min: 1 }"),
            &RuleContext::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not numeric"), "{err}");
    }
}
