//! Train/validation/test splits: random, stratified by a column, or by a
//! time column with explicit boundaries.

use std::collections::BTreeMap;

use arrow::array::{Array, Int64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use crate::{DataError, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMethod {
    #[default]
    Random,
    Stratified,
    Time,
}

/// `with:` of `weir/split`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    #[serde(default)]
    pub method: SplitMethod,
    /// Fractions for random and stratified splits; train gets the rest.
    #[serde(default)]
    pub valid: f64,
    #[serde(default)]
    pub test: f64,
    #[serde(default)]
    pub seed: u64,
    /// The column to stratify by.
    pub stratify: Option<String>,
    /// The time column for `method: time`.
    pub column: Option<String>,
    /// Two instants for `method: time`: train is before the first, valid
    /// between them, test from the second on (e.g. ["2013-10-01", "2013-12-01"]).
    #[serde(default)]
    pub boundaries: Vec<String>,
}

pub struct Splits {
    pub train: RecordBatch,
    pub valid: RecordBatch,
    pub test: RecordBatch,
    /// Rows left out (a null time or stratification value).
    pub dropped: usize,
}

pub fn split(batch: &RecordBatch, spec: &SplitSpec) -> Result<Splits> {
    let (parts, dropped) = match spec.method {
        SplitMethod::Random => {
            check_fractions(spec)?;
            let rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
            (random_parts(rows, spec), 0)
        }
        SplitMethod::Stratified => {
            check_fractions(spec)?;
            let name = spec.stratify.as_deref().ok_or_else(|| {
                DataError::invalid(
                    "with.stratify",
                    "method: stratified needs `stratify: COLUMN`",
                )
            })?;
            let col = crate::column(batch, name, "with.stratify")?;
            let text = arrow::compute::cast(col, &DataType::Utf8)?;
            let text = text.as_any().downcast_ref::<StringArray>().expect("utf8");
            let mut groups: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            let mut dropped = 0;
            for r in 0..text.len() {
                if text.is_null(r) {
                    dropped += 1;
                } else {
                    groups.entry(text.value(r)).or_default().push(r as u32);
                }
            }
            let mut parts: [Vec<u32>; 3] = Default::default();
            for rows in groups.into_values() {
                for (all, part) in parts.iter_mut().zip(random_parts(rows, spec)) {
                    all.extend(part);
                }
            }
            for p in &mut parts {
                p.sort_unstable();
            }
            (parts, dropped)
        }
        SplitMethod::Time => time_parts(batch, spec)?,
    };
    let take = |rows: &[u32]| -> Result<RecordBatch> {
        Ok(arrow::compute::take_record_batch(
            batch,
            &UInt32Array::from(rows.to_vec()),
        )?)
    };
    Ok(Splits {
        train: take(&parts[0])?,
        valid: take(&parts[1])?,
        test: take(&parts[2])?,
        dropped,
    })
}

fn check_fractions(spec: &SplitSpec) -> Result<()> {
    for (name, v) in [("valid", spec.valid), ("test", spec.test)] {
        if !(0.0..1.0).contains(&v) {
            return Err(DataError::invalid(
                format!("with.{name}"),
                format!("{v} is not a fraction in [0, 1)"),
            ));
        }
    }
    if spec.valid + spec.test >= 1.0 {
        return Err(DataError::invalid(
            "with",
            "valid + test must leave rows for training (sum < 1)",
        ));
    }
    Ok(())
}

fn random_parts(mut rows: Vec<u32>, spec: &SplitSpec) -> [Vec<u32>; 3] {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    rows.shuffle(&mut rng);
    let n = rows.len() as f64;
    let n_test = (n * spec.test).round() as usize;
    let n_valid = (n * spec.valid).round() as usize;
    let test = rows.split_off(rows.len() - n_test);
    let valid = rows.split_off(rows.len() - n_valid);
    let mut parts = [rows, valid, test];
    for p in &mut parts {
        p.sort_unstable();
    }
    parts
}

fn to_millis(col: &dyn Array, field: &str) -> Result<Int64Array> {
    let ts = arrow::compute::cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(
        |e| {
            DataError::invalid(
                field,
                format!("cannot read as a time ({e}); use ISO dates like 2013-10-01"),
            )
        },
    )?;
    Ok(arrow::compute::cast(&ts, &DataType::Int64)?
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int64")
        .clone())
}

fn time_parts(batch: &RecordBatch, spec: &SplitSpec) -> Result<([Vec<u32>; 3], usize)> {
    let name = spec.column.as_deref().ok_or_else(|| {
        DataError::invalid("with.column", "method: time needs `column: TIME_COLUMN`")
    })?;
    if spec.boundaries.len() != 2 {
        return Err(DataError::invalid(
            "with.boundaries",
            "method: time needs two boundaries, e.g. [\"2013-10-01\", \"2013-12-01\"]",
        ));
    }
    let col = crate::column(batch, name, "with.column")?;
    let times = to_millis(col.as_ref(), &format!("column '{name}'"))?;
    let bounds = to_millis(
        &StringArray::from(spec.boundaries.clone()),
        "with.boundaries",
    )?;
    let (b1, b2) = (bounds.value(0), bounds.value(1));
    if bounds.is_null(0) || bounds.is_null(1) || b1 >= b2 {
        return Err(DataError::invalid(
            "with.boundaries",
            "boundaries must be two increasing instants",
        ));
    }
    let mut parts: [Vec<u32>; 3] = Default::default();
    let mut dropped = 0;
    for r in 0..times.len() {
        if times.is_null(r) {
            dropped += 1;
            continue;
        }
        let t = times.value(r);
        let part = if t < b1 {
            0
        } else if t < b2 {
            1
        } else {
            2
        };
        parts[part].push(r as u32);
    }
    Ok((parts, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ArrayRef;
    use std::sync::Arc;

    fn spec(yaml: &str) -> SplitSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn random_split_is_seeded_and_complete() {
        let b = RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(Int64Array::from_iter_values(0..1000)) as ArrayRef,
        )])
        .unwrap();
        let s = split(&b, &spec("{ valid: 0.2, test: 0.1, seed: 7 }")).unwrap();
        assert_eq!(
            (s.train.num_rows(), s.valid.num_rows(), s.test.num_rows()),
            (700, 200, 100)
        );
        let again = split(&b, &spec("{ valid: 0.2, test: 0.1, seed: 7 }")).unwrap();
        assert_eq!(s.test, again.test);
    }

    #[test]
    fn stratified_split_keeps_class_shares() {
        let labels: Vec<&str> = (0..1000)
            .map(|i| if i % 10 == 0 { "rare" } else { "common" })
            .collect();
        let b = RecordBatch::try_from_iter(vec![(
            "y",
            Arc::new(StringArray::from(labels)) as ArrayRef,
        )])
        .unwrap();
        let s = split(&b, &spec("{ method: stratified, stratify: y, test: 0.2 }")).unwrap();
        let col = s
            .test
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let rare = col.iter().filter(|v| *v == Some("rare")).count();
        assert_eq!((s.test.num_rows(), rare), (200, 20));
    }

    #[test]
    fn time_split_uses_boundaries() {
        let times = StringArray::from(vec![
            Some("2013-01-05 10:00:00"),
            Some("2013-10-02 00:00:00"),
            None,
            Some("2013-12-31 23:00:00"),
        ]);
        let b = RecordBatch::try_from_iter(vec![("t", Arc::new(times) as ArrayRef)]).unwrap();
        let s = split(
            &b,
            &spec("{ method: time, column: t, boundaries: ['2013-10-01', '2013-12-01'] }"),
        )
        .unwrap();
        assert_eq!(
            (
                s.train.num_rows(),
                s.valid.num_rows(),
                s.test.num_rows(),
                s.dropped
            ),
            (1, 1, 1, 1)
        );
        let err = split(
            &b,
            &spec("{ method: time, column: t, boundaries: ['2013-12-01', '2013-10-01'] }"),
        );
        assert!(err.is_err());
    }
}
