//! Comparing two table profiles: how the schema changed (columns added,
//! dropped, retyped or renamed) and how far each shared column's
//! distribution moved.
//!
//! The measure per column follows Evidently's defaults: with a reference of
//! at most 1,000 rows, a test (Kolmogorov-Smirnov for numbers, chi-squared for
//! categories; drift when p < 0.05); above that, a distance (Wasserstein
//! normed by the reference's standard deviation for numbers, Jensen-Shannon
//! for categories; drift when it is at least 0.1). PSI is reported beside
//! both. Everything is read off the profiles: numbers compare through their
//! 101 percentiles, categories through their top values and the rest.

use serde::{Deserialize, Serialize};

use crate::profile::{ColumnProfile, Kind, Profile};

/// References up to this many rows are compared by a test, larger ones by a
/// distance (Evidently's rule).
pub const SMALL_REFERENCE: u64 = 1000;
pub const P_VALUE: f64 = 0.05;
pub const DISTANCE: f64 = 0.1;
/// PSI at or above this is drift (Evidently's default for `psi`).
pub const PSI: f64 = 0.1;

/// How a column's drift is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Evidently's rule: a test for a small reference, a distance otherwise.
    #[default]
    Auto,
    /// Kolmogorov-Smirnov for numbers, chi-squared for categories.
    Ks,
    /// Normed Wasserstein for numbers, Jensen-Shannon for categories.
    Wasserstein,
    /// The population stability index for both.
    Psi,
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "auto" => Ok(Method::Auto),
            "ks" => Ok(Method::Ks),
            "wasserstein" => Ok(Method::Wasserstein),
            "psi" => Ok(Method::Psi),
            _ => Err(format!(
                "unknown drift method '{s}'; use auto (Evidently's choice), ks, wasserstein or psi"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum SchemaChange {
    Added {
        column: String,
        dtype: String,
    },
    Dropped {
        column: String,
        dtype: String,
    },
    Retyped {
        column: String,
        from: String,
        to: String,
    },
    Renamed {
        from: String,
        to: String,
        dtype: String,
    },
}

impl SchemaChange {
    /// Whether a consumer written for the old schema may break: anything
    /// but an added column.
    pub fn breaking(&self) -> bool {
        !matches!(self, SchemaChange::Added { .. })
    }
}

impl std::fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaChange::Added { column, dtype } => write!(f, "added {column} ({dtype})"),
            SchemaChange::Dropped { column, dtype } => write!(f, "dropped {column} ({dtype})"),
            SchemaChange::Retyped { column, from, to } => {
                write!(f, "retyped {column} from {from} to {to}")
            }
            SchemaChange::Renamed { from, to, dtype } => {
                write!(f, "renamed {from} to {to} ({dtype})")
            }
        }
    }
}

/// How much schema change a new version may bring (`schema.evolution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evolution {
    /// No change at all.
    Strict,
    /// New columns only.
    Additive,
    /// Anything, reported.
    #[default]
    Any,
}

impl Evolution {
    /// The changes this policy refuses.
    pub fn refused<'a>(&self, changes: &'a [SchemaChange]) -> Vec<&'a SchemaChange> {
        match self {
            Evolution::Strict => changes.iter().collect(),
            Evolution::Additive => changes.iter().filter(|c| c.breaking()).collect(),
            Evolution::Any => Vec::new(),
        }
    }
}

/// The schema changes from `old` to `new`. A dropped column and an added one
/// of the same type whose values look the same (nulls, extremes and mean, or
/// top values) are one rename.
pub fn schema_changes(old: &Profile, new: &Profile) -> Vec<SchemaChange> {
    let mut changes = Vec::new();
    let mut dropped: Vec<&ColumnProfile> = Vec::new();
    for o in &old.columns {
        match new.column(&o.name) {
            Some(n) if n.dtype != o.dtype => changes.push(SchemaChange::Retyped {
                column: o.name.clone(),
                from: o.dtype.clone(),
                to: n.dtype.clone(),
            }),
            Some(_) => {}
            None => dropped.push(o),
        }
    }
    for n in new.columns.iter().filter(|n| old.column(&n.name).is_none()) {
        match dropped
            .iter()
            .position(|o| o.dtype == n.dtype && same_values(o, n))
        {
            Some(i) => {
                let o = dropped.remove(i);
                changes.push(SchemaChange::Renamed {
                    from: o.name.clone(),
                    to: n.name.clone(),
                    dtype: n.dtype.clone(),
                });
            }
            None => changes.push(SchemaChange::Added {
                column: n.name.clone(),
                dtype: n.dtype.clone(),
            }),
        }
    }
    changes.extend(dropped.into_iter().map(|o| SchemaChange::Dropped {
        column: o.name.clone(),
        dtype: o.dtype.clone(),
    }));
    changes
}

fn same_values(a: &ColumnProfile, b: &ColumnProfile) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
    a.null_rate == b.null_rate
        && a.distinct == b.distinct
        && match (&a.numeric, &b.numeric, &a.top, &b.top) {
            (Some(x), Some(y), _, _) => {
                close(x.min, y.min) && close(x.max, y.max) && close(x.mean, y.mean)
            }
            (None, None, Some(x), Some(y)) => x.values == y.values,
            (None, None, None, None) => true,
            _ => false,
        }
}

/// How one column's distribution moved between a reference and a current
/// profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnShift {
    pub column: String,
    pub kind: Kind,
    /// The measure that decides drift: `ks`, `chi2`, `wasserstein` or
    /// `jensen_shannon`.
    pub method: String,
    /// Its value: a p-value for tests, a distance otherwise.
    pub score: f64,
    pub threshold: f64,
    pub drifted: bool,
    pub psi: f64,
    pub null_rate: (f64, f64),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<(f64, f64)>,
}

/// The share of drifted columns past which a whole dataset counts as
/// drifted (Evidently's default).
pub const DATASET_SHARE: f64 = 0.5;

/// Every shared column's shift, and whether the dataset as a whole drifted:
/// the share of drifted columns is at least `share`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub columns: Vec<ColumnShift>,
    pub drifted_columns: usize,
    pub drifted_share: f64,
    pub share_threshold: f64,
    pub dataset_drift: bool,
}

pub fn drift(reference: &Profile, current: &Profile, share: f64) -> Drift {
    drift_by(reference, current, share, Method::Auto)
}

/// [`drift`] with each column judged by `method`.
pub fn drift_by(reference: &Profile, current: &Profile, share: f64, method: Method) -> Drift {
    let columns = shifts_by(reference, current, method);
    let drifted_columns = columns.iter().filter(|c| c.drifted).count();
    let drifted_share = match columns.len() {
        0 => 0.0,
        n => drifted_columns as f64 / n as f64,
    };
    Drift {
        dataset_drift: !columns.is_empty() && drifted_share >= share,
        columns,
        drifted_columns,
        drifted_share,
        share_threshold: share,
    }
}

/// The share of a distribution (given by its 101 percentiles) in each bin
/// between consecutive `edges`; values outside the edges are not counted.
pub fn shares_between(percentiles: &[f64], edges: &[f64]) -> Vec<f64> {
    // Below the lowest edge nothing is counted, so values tied at the
    // minimum land in the first bin rather than before it.
    let below = |x: f64| {
        if x <= percentiles[0] {
            0.0
        } else {
            cdf(percentiles, x)
        }
    };
    edges
        .windows(2)
        .map(|w| (cdf(percentiles, w[1]) - below(w[0])).max(0.0))
        .collect()
}

/// The distribution shift of every column both profiles share with the
/// same kind of values.
pub fn shifts(reference: &Profile, current: &Profile) -> Vec<ColumnShift> {
    shifts_by(reference, current, Method::Auto)
}

pub fn shifts_by(reference: &Profile, current: &Profile, method: Method) -> Vec<ColumnShift> {
    reference
        .columns
        .iter()
        .filter_map(|r| {
            let c = current.column(&r.name)?;
            (r.kind == c.kind).then(|| shift_by(r, reference.rows, c, current.rows, method))?
        })
        .collect()
}

/// One column's shift; `None` for columns with nothing to compare (all
/// null, or of a kind without a distribution).
pub fn shift(
    reference: &ColumnProfile,
    ref_rows: u64,
    current: &ColumnProfile,
    cur_rows: u64,
) -> Option<ColumnShift> {
    shift_by(reference, ref_rows, current, cur_rows, Method::Auto)
}

pub fn shift_by(
    reference: &ColumnProfile,
    ref_rows: u64,
    current: &ColumnProfile,
    cur_rows: u64,
    method: Method,
) -> Option<ColumnShift> {
    let method = match method {
        Method::Auto if ref_rows - reference.nulls <= SMALL_REFERENCE => Method::Ks,
        Method::Auto => Method::Wasserstein,
        m => m,
    };
    let null_rate = (reference.null_rate, current.null_rate);
    match (
        &reference.numeric,
        &current.numeric,
        &reference.top,
        &current.top,
    ) {
        (Some(r), Some(c), _, _) => {
            let (n, m) = (
                (ref_rows - reference.nulls) as f64,
                (cur_rows - current.nulls) as f64,
            );
            let psi = psi_numeric(&r.percentiles, &c.percentiles);
            let (method, score, threshold, drifted) = match method {
                Method::Ks => {
                    let p = ks_p_value(ks_statistic(&r.percentiles, &c.percentiles), n, m);
                    ("ks", p, P_VALUE, p < P_VALUE)
                }
                Method::Psi => ("psi", psi, PSI, psi >= PSI),
                _ => {
                    let w = wasserstein_normed(&r.percentiles, &c.percentiles, r.std);
                    ("wasserstein", w, DISTANCE, w >= DISTANCE)
                }
            };
            Some(ColumnShift {
                column: reference.name.clone(),
                kind: reference.kind,
                method: method.into(),
                score,
                threshold,
                drifted,
                psi,
                null_rate,
                mean: Some((r.mean, c.mean)),
            })
        }
        (None, None, Some(r), Some(c)) => {
            let (p, q) = category_counts(r, c);
            let index = psi(&shares(&p), &shares(&q));
            let (method, score, threshold, drifted) = match method {
                Method::Ks => {
                    let pv = chi2_p_value(&p, &q);
                    ("chi2", pv, P_VALUE, pv < P_VALUE)
                }
                Method::Psi => ("psi", index, PSI, index >= PSI),
                _ => {
                    let d = jensen_shannon(&shares(&p), &shares(&q));
                    ("jensen_shannon", d, DISTANCE, d >= DISTANCE)
                }
            };
            Some(ColumnShift {
                column: reference.name.clone(),
                kind: reference.kind,
                method: method.into(),
                score,
                threshold,
                drifted,
                psi: index,
                null_rate,
                mean: None,
            })
        }
        _ => None,
    }
}

/// The cumulative share at `x` of a distribution given by its 101
/// percentiles (piecewise linear between them).
fn cdf(percentiles: &[f64], x: f64) -> f64 {
    let last = percentiles.len() - 1;
    if x < percentiles[0] {
        return 0.0;
    }
    if x >= percentiles[last] {
        return 1.0;
    }
    // The last percentile at or below x: ties (a value holding many
    // percentiles) count whole, as a step in the true distribution would.
    let i = percentiles.partition_point(|p| *p <= x) - 1;
    let (lo, hi) = (percentiles[i], percentiles[i + 1]);
    let within = if hi > lo { (x - lo) / (hi - lo) } else { 0.0 };
    (i as f64 + within) / last as f64
}

/// Kolmogorov-Smirnov's statistic: the largest gap between the two
/// cumulative distributions, looked at every percentile of both.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .chain(b)
        .map(|&x| (cdf(a, x) - cdf(b, x)).abs())
        .fold(0.0, f64::max)
}

/// The two-sample test's p-value for statistic `d` over samples of `n` and
/// `m` values (the asymptotic Kolmogorov distribution, with Stephens'
/// small-sample correction).
pub fn ks_p_value(d: f64, n: f64, m: f64) -> f64 {
    let en = (n * m / (n + m)).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    for j in 1..=100 {
        let term = (-2.0 * (j * j) as f64 * lambda * lambda).exp();
        sum += if j % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// The Wasserstein-1 distance between the distributions, divided by the
/// reference's standard deviation (Evidently's normed form), from the mean
/// gap between their percentiles.
pub fn wasserstein_normed(reference: &[f64], current: &[f64], std: f64) -> f64 {
    // The trapezoid rule over the quantile functions' gap.
    let gaps: Vec<f64> = reference
        .iter()
        .zip(current)
        .map(|(r, c)| (r - c).abs())
        .collect();
    let n = gaps.len() - 1;
    let area = gaps.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / n as f64;
    if std > 0.0 {
        area / std
    } else if area > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// PSI over the reference's deciles.
fn psi_numeric(reference: &[f64], current: &[f64]) -> f64 {
    let mut edges: Vec<f64> = (1..10).map(|d| reference[d * 10]).collect();
    edges.dedup();
    let shares_of = |percentiles: &[f64]| {
        let mut cum = 0.0;
        let mut out = Vec::with_capacity(edges.len() + 1);
        for e in &edges {
            let at = cdf(percentiles, *e);
            out.push(at - cum);
            cum = at;
        }
        out.push(1.0 - cum);
        out
    };
    psi(&shares_of(reference), &shares_of(current))
}

/// The population stability index: sum over bins of (cur - ref) ln(cur/ref),
/// empty bins counted as 1e-4 so it stays finite.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    const FLOOR: f64 = 1e-4;
    reference
        .iter()
        .zip(current)
        .map(|(r, c)| {
            let (r, c) = (r.max(FLOOR), c.max(FLOOR));
            (c - r) * (c / r).ln()
        })
        .sum()
}

/// Counts over the union of both sides' top values, plus one "other" bin.
fn category_counts(
    reference: &crate::profile::TopValues,
    current: &crate::profile::TopValues,
) -> (Vec<f64>, Vec<f64>) {
    let keys = category_keys(reference, current);
    let count = |top: &crate::profile::TopValues| -> Vec<f64> {
        let mut counts: Vec<f64> = keys
            .iter()
            .map(|k| {
                top.values
                    .iter()
                    .find(|(v, _)| v == k)
                    .map_or(0.0, |(_, c)| *c as f64)
            })
            .collect();
        let listed: f64 = counts.iter().sum();
        let total = top.values.iter().map(|(_, c)| *c as f64).sum::<f64>() + top.other as f64;
        counts.push(total - listed);
        counts
    };
    (count(reference), count(current))
}

/// Both sides' top values, the reference's first; counts over them come
/// with one more bin for every other value.
pub(crate) fn category_keys<'a>(
    reference: &'a crate::profile::TopValues,
    current: &'a crate::profile::TopValues,
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = reference.values.iter().map(|(v, _)| v.as_str()).collect();
    for (v, _) in &current.values {
        if !keys.contains(&v.as_str()) {
            keys.push(v);
        }
    }
    keys
}

/// Each side's share of rows per category key, and the rest (see
/// [`category_keys`]).
pub(crate) fn category_shares(
    reference: &crate::profile::TopValues,
    current: &crate::profile::TopValues,
) -> (Vec<f64>, Vec<f64>) {
    let (p, q) = category_counts(reference, current);
    (shares(&p), shares(&q))
}

fn shares(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| if total > 0.0 { c / total } else { 0.0 })
        .collect()
}

/// The Jensen-Shannon distance (the square root of the divergence, natural
/// log), as scipy's `jensenshannon` gives it.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    ((kl(p, &m) + kl(q, &m)) / 2.0).max(0.0).sqrt()
}

/// The chi-squared test of the current counts against the reference's
/// shares (goodness of fit, as Evidently's `chisquare`), its p-value.
pub fn chi2_p_value(reference: &[f64], current: &[f64]) -> f64 {
    let total: f64 = current.iter().sum();
    let ref_shares = shares(reference);
    let mut statistic = 0.0;
    let mut bins = 0;
    for (share, observed) in ref_shares.iter().zip(current) {
        if *share == 0.0 {
            if *observed > 0.0 {
                // A category the reference never had: certain change.
                return 0.0;
            }
            continue;
        }
        let expected = share * total;
        statistic += (observed - expected).powi(2) / expected;
        bins += 1;
    }
    if bins < 2 {
        return 1.0;
    }
    upper_gamma_regularized((bins - 1) as f64 / 2.0, statistic / 2.0)
}

/// Q(a, x), the regularized upper incomplete gamma function: the series for
/// x < a + 1, the continued fraction (Lentz) above.
fn upper_gamma_regularized(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..500 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * log_prefix.exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (log_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::profile;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn table(columns: Vec<(&str, ArrayRef)>) -> Profile {
        let schema = Schema::new(
            columns
                .iter()
                .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        profile(
            &RecordBatch::try_new(
                Arc::new(schema),
                columns.into_iter().map(|(_, c)| c).collect(),
            )
            .unwrap(),
        )
        .unwrap()
    }

    fn numbers(values: impl Iterator<Item = f64>) -> ArrayRef {
        Arc::new(Float64Array::from(values.collect::<Vec<_>>()))
    }

    #[test]
    fn schema_changes_name_added_dropped_retyped_and_renamed_columns() {
        let old = table(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            ("dep", numbers([1.0, 2.0, 3.0].into_iter())),
            ("gone", numbers([5.0, 6.0, 7.0].into_iter())),
        ]);
        let new = table(vec![
            ("id", numbers([1.0, 2.0, 3.0].into_iter())),
            ("dep_time", numbers([1.0, 2.0, 3.0].into_iter())),
            (
                "extra",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
        ]);
        let changes = schema_changes(&old, &new);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "retyped id from Int64 to Float64",
                "renamed dep to dep_time (Float64)",
                "added extra (Utf8)",
                "dropped gone (Float64)",
            ]
        );
        assert_eq!(Evolution::Additive.refused(&changes).len(), 3);
        assert_eq!(Evolution::Strict.refused(&changes).len(), 4);
        assert!(Evolution::Any.refused(&changes).is_empty());
        assert!(schema_changes(&old, &old).is_empty());
    }

    #[test]
    fn large_samples_compare_by_distance_small_ones_by_test() {
        let base = table(vec![("x", numbers((0..5000).map(|i| (i % 100) as f64)))]);
        let same = table(vec![("x", numbers((0..4000).map(|i| (i % 100) as f64)))]);
        let moved = table(vec![(
            "x",
            numbers((0..4000).map(|i| (i % 100) as f64 + 30.0)),
        )]);
        let s = &shifts(&base, &same)[0];
        assert_eq!((s.method.as_str(), s.drifted), ("wasserstein", false));
        assert!(s.score < 0.01 && s.psi < 0.01, "{s:?}");
        let m = &shifts(&base, &moved)[0];
        // Shifted by 30 on a std of ~28.9: normed Wasserstein ~1.04.
        assert!((m.score - 30.0 / 28.866).abs() < 0.02, "{m:?}");
        assert!(m.drifted && m.psi > 1.0, "{m:?}");

        let small = table(vec![("x", numbers((0..500).map(|i| (i % 100) as f64)))]);
        let small_moved = table(vec![(
            "x",
            numbers((0..500).map(|i| (i % 100) as f64 + 10.0)),
        )]);
        let s = &shifts(&small, &small)[0];
        assert_eq!((s.method.as_str(), s.drifted), ("ks", false));
        assert!(s.score > 0.99, "{s:?}");
        let m = &shifts(&small, &small_moved)[0];
        // D = 0.1 at n = m = 500: p ~ 0.012 (scipy's asymptotic 0.0118).
        assert!(m.drifted && (m.score - 0.012).abs() < 0.004, "{m:?}");
    }

    #[test]
    fn categories_compare_by_jensen_shannon_or_chi_squared() {
        let col = |n: usize, b_share: usize| -> ArrayRef {
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| if i % 100 < b_share { "b" } else { "a" })
                    .collect::<Vec<_>>(),
            ))
        };
        let big = table(vec![("c", col(5000, 50))]);
        let big_moved = table(vec![("c", col(5000, 90))]);
        let s = &shifts(&big, &big_moved)[0];
        assert_eq!(s.method, "jensen_shannon");
        // p = (.5, .5), q = (.1, .9): scipy gives 0.3190.
        assert!((s.score - 0.3190).abs() < 1e-3 && s.drifted, "{s:?}");
        let small = table(vec![("c", col(200, 50))]);
        let small_moved = table(vec![("c", col(200, 60))]);
        let s = &shifts(&small, &small_moved)[0];
        assert_eq!(s.method, "chi2");
        // 120 vs 100 expected of 200: chi2 = 8, 1 dof: p = 0.004678.
        assert!((s.score - 0.004678).abs() < 1e-5 && s.drifted, "{s:?}");
    }

    #[test]
    fn the_incomplete_gamma_matches_known_values() {
        // Q(1, x) = e^-x; Q(2.5, 3) (chi2 sf of 6 at 5 dof: 0.3062).
        assert!((upper_gamma_regularized(1.0, 2.0) - (-2.0f64).exp()).abs() < 1e-12);
        assert!((upper_gamma_regularized(2.5, 3.0) - 0.306_218_4).abs() < 1e-6);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-10);
    }
}
