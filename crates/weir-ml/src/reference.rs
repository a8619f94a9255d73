//! A model's prediction reference: how its scores (the positive class's
//! probability, or the regression value) were spread over held-out rows when
//! it was made. Serving compares live scores with it to tell drift, so the
//! reference keeps only what that needs: the decile cut points and the share
//! of the reference rows between each pair.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreReference {
    /// How many scores the reference was taken from.
    pub rows: u64,
    /// Ascending cut points (the deciles, ties merged); bin `i` holds the
    /// scores `s` with `edges[i-1] < s <= edges[i]`.
    pub edges: Vec<f64>,
    /// The reference's share of scores in each of the `edges.len() + 1` bins.
    pub shares: Vec<f64>,
}

/// Bins with no scores count as this share, so the index stays finite.
const FLOOR: f64 = 1e-4;

impl ScoreReference {
    /// The reference of `scores`, or `None` when there are too few finite
    /// ones for deciles to mean anything.
    pub fn from_scores(scores: &[f64]) -> Option<ScoreReference> {
        let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.len() < 10 {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (1..10).map(|d| sorted[d * sorted.len() / 10]).collect();
        edges.dedup();
        let mut reference = ScoreReference {
            rows: sorted.len() as u64,
            edges,
            shares: Vec::new(),
        };
        reference.shares = reference.spread(sorted.iter().copied());
        Some(reference)
    }

    /// The share of `scores` in each bin; non-finite scores are skipped.
    fn spread(&self, scores: impl Iterator<Item = f64>) -> Vec<f64> {
        let mut counts = vec![0u64; self.edges.len() + 1];
        let mut n = 0u64;
        for s in scores.filter(|s| s.is_finite()) {
            counts[self.edges.partition_point(|e| *e < s)] += 1;
            n += 1;
        }
        counts
            .into_iter()
            .map(|c| (c as f64 / n.max(1) as f64).max(FLOOR))
            .collect()
    }

    /// The population stability index of `scores` against this reference
    /// (0 for the same spread; above 0.2 is commonly read as a shift).
    pub fn stability(&self, scores: impl Iterator<Item = f64>) -> f64 {
        self.spread(scores)
            .iter()
            .zip(&self.shares)
            .map(|(a, e)| {
                let e = e.max(FLOOR);
                (a - e) * (a / e).ln()
            })
            .sum()
    }

    /// A reference read back from JSON, checked for shape.
    pub fn from_json(value: &serde_json::Value) -> Option<ScoreReference> {
        let r: ScoreReference = serde_json::from_value(value.clone()).ok()?;
        (r.shares.len() == r.edges.len() + 1 && r.edges.windows(2).all(|w| w[0] < w[1]))
            .then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(n: usize, shift: f64) -> Vec<f64> {
        (0..n).map(|i| i as f64 / n as f64 + shift).collect()
    }

    #[test]
    fn the_same_spread_is_stable_and_a_shift_is_not() {
        let r = ScoreReference::from_scores(&uniform(1000, 0.0)).unwrap();
        assert_eq!(r.edges.len(), 9);
        assert!((r.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(r.stability(uniform(500, 0.0).into_iter()) < 0.01);
        assert!(r.stability(uniform(500, 0.3).into_iter()) > 0.5);
    }

    #[test]
    fn few_or_tied_scores() {
        assert!(ScoreReference::from_scores(&[0.5; 5]).is_none());
        let tied = ScoreReference::from_scores(&[1.0; 100]).unwrap();
        assert_eq!(tied.edges, vec![1.0]);
        assert!(tied.stability([1.0; 20].into_iter()) < 1e-9);
        assert!(tied.stability([2.0; 20].into_iter()) > 1.0);
        let json = serde_json::to_value(&tied).unwrap();
        assert_eq!(ScoreReference::from_json(&json), Some(tied));
        assert_eq!(
            ScoreReference::from_json(&serde_json::json!({"rows": 1})),
            None
        );
    }
}
