//! Table profiles: what each column holds, computed when a table is made and
//! kept beside it. Two profiles compare without the tables they came from:
//! `weir datasets diff` reads two versions' profiles, and drift checks read a
//! reference's.
//!
//! Numeric (and temporal) columns keep their 101 percentiles: enough to draw
//! the distribution and to compare two of them (Kolmogorov-Smirnov's
//! statistic, the Wasserstein distance, PSI) within a percent. Text and
//! boolean columns keep their most frequent values with counts.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{DataError, Result};

/// Most frequent values kept per text column.
const TOP_K: usize = 20;
/// Distinct values counted exactly per text column; past it, new values are
/// no longer counted (the top values of a column that large are marked
/// approximate).
const TOP_TRACKED: usize = 100_000;
/// The distinct-count sketch keeps this many smallest hashes: exact below
/// it, about 3 % error above.
const SKETCH: usize = 1024;
/// Bins of the histogram kept for display.
const BINS: usize = 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub rows: u64,
    pub columns: Vec<ColumnProfile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Numeric,
    Temporal,
    Boolean,
    Text,
    Other,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    /// Arrow's name for the type, as the schema says.
    #[serde(rename = "type")]
    pub dtype: String,
    pub kind: Kind,
    pub nulls: u64,
    pub null_rate: f64,
    /// Distinct non-null values: exact up to 1,024, estimated above.
    pub distinct: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<TopValues>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    /// The 0th to 100th percentiles (linear interpolation) of the finite values.
    pub percentiles: Vec<f64>,
    /// `BINS` equal-width bins from min to max: `edges` has one more entry
    /// than `counts`.
    pub histogram: Histogram,
    /// Min and max as the column shows them (timestamps as dates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopValues {
    /// The most frequent values, most frequent first (ties by value).
    pub values: Vec<(String, u64)>,
    /// Non-null rows holding any other value.
    pub other: u64,
    /// False when the column had more distinct values than were counted.
    pub exact: bool,
}

impl Profile {
    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Profiles every column of `batch`.
pub fn profile(batch: &RecordBatch) -> Result<Profile> {
    let schema = batch.schema();
    // Columns are independent: profiled side by side, kept in order.
    let columns = schema
        .fields()
        .par_iter()
        .zip(batch.columns().par_iter())
        .map(|(field, column)| profile_column(field.name(), column))
        .collect::<Result<Vec<_>>>()?;
    Ok(Profile {
        rows: batch.num_rows() as u64,
        columns,
    })
}

/// What a column's type makes it, for profiling and comparison.
pub fn kind_of(dtype: &DataType) -> Kind {
    match dtype {
        t if t.is_numeric() => Kind::Numeric,
        t if t.is_temporal() => Kind::Temporal,
        DataType::Boolean => Kind::Boolean,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
        DataType::Dictionary(_, value) if kind_of(value) == Kind::Text => Kind::Text,
        _ => Kind::Other,
    }
}

fn profile_column(name: &str, column: &ArrayRef) -> Result<ColumnProfile> {
    let rows = column.len() as u64;
    let nulls = column.null_count() as u64;
    let kind = kind_of(column.data_type());
    let mut sketch = DistinctSketch::default();
    // Numbers are counted exactly off their sort; text through the sketch.
    let mut exact_distinct = None;
    let (numeric, top) = match kind {
        Kind::Numeric | Kind::Temporal => {
            let values = as_numbers(name, column)?;
            let (mut numeric, distinct) = numeric_profile(&values);
            exact_distinct = Some(distinct);
            if let (Some(n), Kind::Temporal) = (&mut numeric, kind) {
                n.shown = shown_extremes(column);
            }
            (numeric, None)
        }
        Kind::Boolean | Kind::Text | Kind::Other => {
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut exact = true;
            let mut count = |value: &str, sketch: &mut DistinctSketch| {
                sketch.add(hash_bytes(value.as_bytes()));
                if let Some(count) = counts.get_mut(value) {
                    *count += 1;
                } else if counts.len() < TOP_TRACKED {
                    counts.insert(value.to_string(), 1);
                } else {
                    exact = false;
                }
            };
            // Plain strings are counted in place; other types as Arrow shows them.
            if let Some(strings) = column.as_string_opt::<i32>() {
                strings.iter().flatten().for_each(|v| count(v, &mut sketch));
            } else if let Some(strings) = column.as_string_opt::<i64>() {
                strings.iter().flatten().for_each(|v| count(v, &mut sketch));
            } else {
                let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
                    .map_err(|e| DataError::invalid(format!("column {name}"), e.to_string()))?;
                for row in (0..column.len()).filter(|r| !column.is_null(*r)) {
                    count(&formatter.value(row).to_string(), &mut sketch);
                }
            }
            let top = (kind != Kind::Other).then(|| top_values(counts, rows - nulls, exact));
            (None, top)
        }
    };
    Ok(ColumnProfile {
        name: name.to_string(),
        dtype: column.data_type().to_string(),
        kind,
        nulls,
        null_rate: if rows == 0 {
            0.0
        } else {
            nulls as f64 / rows as f64
        },
        distinct: exact_distinct.unwrap_or_else(|| sketch.estimate()),
        numeric,
        top,
    })
}

/// A numeric or temporal column as f64 (temporal: its stored integer).
fn as_numbers(name: &str, column: &ArrayRef) -> Result<Float64Array> {
    let column = match column.data_type() {
        t if t.is_temporal() => cast(column, &DataType::Int64),
        _ => Ok(column.clone()),
    }
    .and_then(|c| cast(&c, &DataType::Float64))
    .map_err(|e| DataError::invalid(format!("column {name}"), e.to_string()))?;
    Ok(column
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("cast to Float64")
        .clone())
}

/// The profile of a column's finite values, and how many distinct values
/// (finite or not) it holds.
fn numeric_profile(values: &Float64Array) -> (Option<NumericProfile>, u64) {
    let mut sorted: Vec<f64> = Vec::with_capacity(values.len() - values.null_count());
    let (mut nan, mut pos_inf, mut neg_inf) = (false, false, false);
    for v in values.iter().flatten() {
        match v {
            v if v.is_finite() => sorted.push(v),
            v if v.is_nan() => nan = true,
            v if v > 0.0 => pos_inf = true,
            _ => neg_inf = true,
        }
    }
    let odd = u64::from(nan) + u64::from(pos_inf) + u64::from(neg_inf);
    if sorted.is_empty() {
        return (None, odd);
    }
    sorted.sort_unstable_by(f64::total_cmp);
    let distinct = 1 + sorted
        .windows(2)
        .filter(|w| w[0].to_bits() != w[1].to_bits())
        .count() as u64;
    let n = sorted.len() as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    let variance = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let percentiles = (0..=100)
        .map(|p| quantile(&sorted, p as f64 / 100.0))
        .collect();
    let profile = NumericProfile {
        min,
        max,
        mean,
        std: variance.sqrt(),
        percentiles,
        histogram: histogram(&sorted, min, max),
        shown: None,
    };
    (Some(profile), distinct + odd)
}

/// The `q` quantile of ascending `sorted`, interpolating between ranks.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (position - lo as f64)
}

fn histogram(sorted: &[f64], min: f64, max: f64) -> Histogram {
    if min == max {
        return Histogram {
            edges: vec![min, max],
            counts: vec![sorted.len() as u64],
        };
    }
    let width = (max - min) / BINS as f64;
    let edges = (0..=BINS).map(|i| min + width * i as f64).collect();
    let mut counts = vec![0u64; BINS];
    for v in sorted {
        counts[(((v - min) / width) as usize).min(BINS - 1)] += 1;
    }
    Histogram { edges, counts }
}

fn shown_extremes(column: &ArrayRef) -> Option<(String, String)> {
    let ints = cast(column, &DataType::Int64).ok()?;
    let ints = ints.as_any().downcast_ref::<arrow::array::Int64Array>()?;
    let (min, max) = (arrow::compute::min(ints)?, arrow::compute::max(ints)?);
    let at = |target: i64| (0..ints.len()).find(|&r| ints.is_valid(r) && ints.value(r) == target);
    let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default()).ok()?;
    Some((
        formatter.value(at(min)?).to_string(),
        formatter.value(at(max)?).to_string(),
    ))
}

fn top_values(counts: HashMap<String, u64>, non_null: u64, exact: bool) -> TopValues {
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP_K);
    let kept: u64 = all.iter().map(|(_, c)| c).sum();
    TopValues {
        values: all,
        other: non_null - kept,
        exact,
    }
}

/// FNV-1a, then a 64-bit finalizer (splitmix64's) so the low and high bits
/// both spread: stable across builds and platforms, unlike std's hasher.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// K minimum values (Bar-Yossef et al.): the `SKETCH` smallest distinct
/// hashes. Fewer than that many distinct values are counted exactly; past
/// it, the k-th smallest hash says how densely hashes fill [0, 2^64).
struct DistinctSketch {
    smallest: std::collections::BTreeSet<u64>,
    /// The largest kept hash once full: most values fail this one compare.
    bound: u64,
}

impl Default for DistinctSketch {
    fn default() -> Self {
        DistinctSketch {
            smallest: Default::default(),
            bound: u64::MAX,
        }
    }
}

impl DistinctSketch {
    fn add(&mut self, hash: u64) {
        if self.smallest.len() < SKETCH {
            self.smallest.insert(hash);
            if self.smallest.len() == SKETCH {
                self.bound = *self.smallest.last().expect("full");
            }
        } else if hash < self.bound && self.smallest.insert(hash) {
            self.smallest.pop_last();
            self.bound = *self.smallest.last().expect("full");
        }
    }

    fn estimate(&self) -> u64 {
        if self.smallest.len() < SKETCH {
            return self.smallest.len() as u64;
        }
        let kth = *self.smallest.last().expect("full") as f64 / u64::MAX as f64;
        ((SKETCH - 1) as f64 / kth).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int64Array, StringArray, TimestampSecondArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let schema = Schema::new(
            columns
                .iter()
                .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, c)| c).collect(),
        )
        .unwrap()
    }

    #[test]
    fn numeric_columns_keep_moments_percentiles_and_a_histogram() {
        let values: Vec<Option<i64>> = (0..=1000).map(Some).chain([None, None]).collect();
        let b = batch(vec![("x", Arc::new(Int64Array::from(values)) as ArrayRef)]);
        let p = profile(&b).unwrap();
        assert_eq!(p.rows, 1003);
        let x = p.column("x").unwrap();
        assert_eq!((x.kind, x.nulls), (Kind::Numeric, 2));
        assert!((x.null_rate - 2.0 / 1003.0).abs() < 1e-12);
        let n = x.numeric.as_ref().unwrap();
        assert_eq!((n.min, n.max, n.mean), (0.0, 1000.0, 500.0));
        assert!((n.std - 288.9637).abs() < 1e-3, "{}", n.std);
        assert_eq!(n.percentiles.len(), 101);
        assert_eq!(
            (n.percentiles[0], n.percentiles[50], n.percentiles[100]),
            (0.0, 500.0, 1000.0)
        );
        assert_eq!(n.histogram.counts.len(), 20);
        assert_eq!(n.histogram.counts.iter().sum::<u64>(), 1001);
        assert_eq!(n.histogram.counts[0], 50);
        // 1,001 distinct values: past the exact range, estimated within 5 %.
        assert_eq!(x.distinct, 1001);
    }

    #[test]
    fn distinct_counts_are_estimated_past_the_sketch() {
        let values: Vec<i64> = (0..50_000).map(|i| i % 20_000).collect();
        let b = batch(vec![("x", Arc::new(Int64Array::from(values)) as ArrayRef)]);
        let d = profile(&b).unwrap().columns[0].distinct as f64;
        assert!((d - 20_000.0).abs() / 20_000.0 < 0.08, "{d}");
    }

    #[test]
    fn text_and_boolean_columns_keep_their_top_values() {
        let text: Vec<Option<&str>> = ["a", "b", "a", "c", "a", "b"]
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        let flags = BooleanArray::from(vec![true, true, false, true, true, false, true]);
        let b = batch(vec![
            ("t", Arc::new(StringArray::from(text)) as ArrayRef),
            ("f", Arc::new(flags) as ArrayRef),
        ]);
        let p = profile(&b).unwrap();
        let t = p.column("t").unwrap();
        assert_eq!((t.kind, t.distinct, t.nulls), (Kind::Text, 3, 1));
        let top = t.top.as_ref().unwrap();
        assert_eq!(
            top.values,
            [
                ("a".to_string(), 3),
                ("b".to_string(), 2),
                ("c".to_string(), 1)
            ]
        );
        assert_eq!((top.other, top.exact), (0, true));
        let f = p.column("f").unwrap();
        assert_eq!(f.kind, Kind::Boolean);
        assert_eq!(f.top.as_ref().unwrap().values[0], ("true".to_string(), 5));
    }

    #[test]
    fn timestamps_profile_as_numbers_and_show_as_dates() {
        let ts = TimestampSecondArray::from(vec![Some(1_356_998_400), None, Some(1_388_534_399)]);
        let b = batch(vec![("when", Arc::new(ts) as ArrayRef)]);
        let p = profile(&b).unwrap();
        let when = p.column("when").unwrap();
        assert_eq!(when.kind, Kind::Temporal);
        let n = when.numeric.as_ref().unwrap();
        assert_eq!(n.min, 1_356_998_400.0);
        let (lo, hi) = n.shown.clone().unwrap();
        assert!(
            lo.starts_with("2013-01-01") && hi.starts_with("2013-12-31"),
            "{lo} {hi}"
        );
    }
}
