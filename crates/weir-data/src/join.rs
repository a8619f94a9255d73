//! Many-to-one joins: enrich each row of a table with the matching row of a
//! lookup table (e.g. the weather at a flight's origin and hour). The lookup
//! side must have at most one row per key, so a join never multiplies rows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, UInt32Array};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Deserialize;

use crate::{DataError, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinHow {
    /// Keep every left row; unmatched rows get nulls.
    #[default]
    Left,
    /// Keep only left rows that have a match.
    Inner,
}

/// `with:` of `weir/join`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Key columns, present in both tables with the same type.
    pub on: Vec<String>,
    #[serde(default)]
    pub how: JoinHow,
    /// Right-hand columns to add; all non-key columns by default.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct Joined {
    pub table: RecordBatch,
    pub matched: usize,
    pub unmatched: usize,
}

/// One text key per row: the key columns' values joined by a separator that
/// cannot appear in formatted values; `None` when any key part is null.
fn keys(batch: &RecordBatch, on: &[String], side: &str) -> Result<Vec<Option<String>>> {
    let options = FormatOptions::default();
    let mut columns = Vec::with_capacity(on.len());
    for name in on {
        columns.push(crate::column(batch, name, &format!("with.on ({side} table)"))?.clone());
    }
    let mut formatters = Vec::with_capacity(on.len());
    for col in &columns {
        formatters.push(ArrayFormatter::try_new(col.as_ref(), &options)?);
    }
    Ok((0..batch.num_rows())
        .map(|r| {
            if columns.iter().any(|c| c.is_null(r)) {
                return None;
            }
            let parts: Vec<String> = formatters.iter().map(|f| f.value(r).to_string()).collect();
            Some(parts.join("\u{1f}"))
        })
        .collect())
}

pub fn join(left: &RecordBatch, right: &RecordBatch, spec: &JoinSpec) -> Result<Joined> {
    if spec.on.is_empty() {
        return Err(DataError::invalid(
            "with.on",
            "name at least one key column",
        ));
    }
    for key in &spec.on {
        let l = crate::column(left, key, "with.on (left table)")?;
        let r = crate::column(right, key, "with.on (right table)")?;
        if l.data_type() != r.data_type() {
            return Err(DataError::invalid(
                "with.on",
                format!(
                    "key '{key}' is {} on the left but {} on the right; give it the same type in both (ingest `schema:`)",
                    l.data_type(),
                    r.data_type()
                ),
            ));
        }
    }
    let added: Vec<String> = match &spec.columns {
        Some(cols) => cols.clone(),
        None => right
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !spec.on.contains(n))
            .collect(),
    };
    for name in &added {
        crate::column(right, name, "with.columns (right table)")?;
        if left.column_by_name(name).is_some() {
            return Err(DataError::invalid(
                "with.columns",
                format!("'{name}' is in both tables; list the right-hand columns to add in `columns:` without it"),
            ));
        }
    }

    let mut lookup: HashMap<String, u32> = HashMap::with_capacity(right.num_rows());
    for (r, key) in keys(right, &spec.on, "right")?.into_iter().enumerate() {
        if let Some(key) = key {
            if lookup.insert(key.clone(), r as u32).is_some() {
                return Err(DataError::invalid(
                    "inputs.right",
                    format!(
                        "the right table has several rows for key ({}); a join adds one row's values, so deduplicate it first",
                        key.replace('\u{1f}', ", ")
                    ),
                ));
            }
        }
    }
    let matches: Vec<Option<u32>> = keys(left, &spec.on, "left")?
        .into_iter()
        .map(|k| k.and_then(|k| lookup.get(&k).copied()))
        .collect();
    let matched = matches.iter().filter(|m| m.is_some()).count();
    let unmatched = matches.len() - matched;

    let (left_rows, right_rows): (Vec<u32>, Vec<Option<u32>>) = match spec.how {
        JoinHow::Left => ((0..left.num_rows() as u32).collect(), matches),
        JoinHow::Inner => matches
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|m| (i as u32, Some(m))))
            .unzip(),
    };
    let left_part = match spec.how {
        JoinHow::Left => left.clone(),
        JoinHow::Inner => arrow::compute::take_record_batch(left, &UInt32Array::from(left_rows))?,
    };
    let right_index = UInt32Array::from(right_rows);
    let mut fields: Vec<Field> = left_part
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = left_part.columns().to_vec();
    for name in &added {
        let col = right.column_by_name(name).expect("checked above");
        columns.push(arrow::compute::take(col.as_ref(), &right_index, None)?);
        fields.push(Field::new(name, col.data_type().clone(), true));
    }
    let table = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(Joined {
        table,
        matched,
        unmatched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};

    fn flights() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "origin",
                Arc::new(StringArray::from(vec![
                    Some("EWR"),
                    Some("JFK"),
                    Some("EWR"),
                    None,
                ])) as ArrayRef,
            ),
            (
                "hour",
                Arc::new(Int64Array::from(vec![5, 5, 6, 5])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn weather(origins: Vec<&str>) -> RecordBatch {
        let n = origins.len();
        RecordBatch::try_from_iter(vec![
            ("origin", Arc::new(StringArray::from(origins)) as ArrayRef),
            ("hour", Arc::new(Int64Array::from(vec![5; n])) as ArrayRef),
            (
                "temp",
                Arc::new(Float64Array::from(
                    (0..n).map(|i| i as f64 + 10.0).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn spec(yaml: &str) -> JoinSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn left_join_keeps_every_row_and_fills_nulls() {
        let j = join(
            &flights(),
            &weather(vec!["EWR", "JFK"]),
            &spec("{ on: [origin, hour] }"),
        )
        .unwrap();
        assert_eq!((j.table.num_rows(), j.matched, j.unmatched), (4, 2, 2));
        let temp = j
            .table
            .column_by_name("temp")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        assert_eq!(
            temp.iter().collect::<Vec<_>>(),
            vec![Some(10.0), Some(11.0), None, None]
        );
    }

    #[test]
    fn inner_join_drops_unmatched_rows() {
        let j = join(
            &flights(),
            &weather(vec!["EWR"]),
            &spec("{ on: [origin, hour], how: inner }"),
        )
        .unwrap();
        assert_eq!(j.table.num_rows(), 1);
    }

    #[test]
    fn duplicate_right_keys_and_type_mismatches_are_errors() {
        let err = join(
            &flights(),
            &weather(vec!["EWR", "EWR"]),
            &spec("{ on: [origin, hour] }"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("several rows for key (EWR, 5)"), "{err}");
        let err = join(
            &flights(),
            &weather(vec!["EWR"]),
            &spec("{ on: [origin, day] }"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown column 'day'"), "{err}");
    }
}
