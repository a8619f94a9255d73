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
    #[serde(default)]
    pub unique: bool,
    pub allowed: Option<Vec<Value>>,
    /// Table-level: `{ rows: { min: 1000, max: 1000000 } }`.
    pub rows: Option<Bounds>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub rule: String,
    pub column: Option<String>,
    pub count: usize,
    /// Example offending rows: `{"row": index, "value": "..."}`.
    pub examples: Vec<Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidationReport {
    pub rows: usize,
    pub rules_checked: usize,
    pub violations: Vec<Violation>,
}

impl ValidationReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
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
            out.push_str(&format!("\n  - {}: {} rows", v.rule, v.count));
            if !examples.is_empty() {
                out.push_str(&format!(" (e.g. {})", examples.join(", ")));
            }
        }
        out
    }
}

/// Checks `rules` against `batch`. A rule that is itself wrong (unknown
/// column, unknown type, empty rule) is an error, not a violation.
pub fn validate(batch: &RecordBatch, rules: &[Rule]) -> Result<ValidationReport> {
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("with.rules[{i}]");
        match (&rule.column, &rule.rows) {
            (Some(c), _) => {
                crate::column(batch, c, &field)?;
            }
            (None, Some(_)) => {}
            (None, None) => {
                return Err(DataError::invalid(
                    field,
                    "a rule needs `column:` or `rows:`",
                ));
            }
        }
        if let Some(t) = &rule.dtype {
            type_matches(&DataType::Null, t)
                .map_err(|m| DataError::invalid(format!("{field}.type"), m))?;
        }
        if rule.column.is_some()
            && !rule.not_null
            && !rule.unique
            && rule.min.is_none()
            && rule.max.is_none()
            && rule.allowed.is_none()
            && rule.dtype.is_none()
        {
            return Err(DataError::invalid(
                field,
                "the rule checks nothing; add type, not_null, min, max, unique or allowed",
            ));
        }
    }

    let mut violations = Vec::new();
    let mut checked = 0;
    for rule in rules {
        if let Some(bounds) = &rule.rows {
            checked += 1;
            let n = batch.num_rows() as u64;
            if bounds.min.is_some_and(|m| n < m) || bounds.max.is_some_and(|m| n > m) {
                violations.push(Violation {
                    rule: format!(
                        "row count {} outside [{}, {}]",
                        n,
                        bounds.min.map_or("-".into(), |v| v.to_string()),
                        bounds.max.map_or("-".into(), |v| v.to_string())
                    ),
                    column: None,
                    count: 1,
                    examples: vec![],
                });
            }
        }
        let Some(name) = &rule.column else { continue };
        let col = batch.column_by_name(name).expect("checked above");
        let text = Texts::new(col)?;
        if let Some(t) = &rule.dtype {
            checked += 1;
            if !type_matches(col.data_type(), t).unwrap_or(false) {
                violations.push(Violation {
                    rule: format!("{name}: type is {}, expected {t}", col.data_type()),
                    column: Some(name.clone()),
                    count: col.len(),
                    examples: vec![],
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
        if rule.unique {
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
    }
    Ok(ValidationReport {
        rows: batch.num_rows(),
        rules_checked: checked,
        violations,
    })
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
        let r = validate(&batch(), &rules("- { column: carrier, not_null: true, type: string }\n- { rows: { min: 1, max: 4 } }")).unwrap();
        assert!(r.passed(), "{}", r.summary());
    }

    #[test]
    fn a_rule_naming_an_unknown_column_is_an_error() {
        let err = validate(&batch(), &rules("- { column: dealy, not_null: true }"))
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
        let err = validate(&batch(), &rules("- { column: carrier, min: 1 }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not numeric"), "{err}");
    }
}
