//! Evaluation metrics. Classification metrics take labels in {0, 1} and
//! positive-class probabilities; the decision threshold is 0.5.

use std::collections::BTreeMap;

use crate::Task;

/// One training round (a boosting round, an epoch) as a tuner's scheduler
/// sees it: the validation loss, and any other validation metric on demand,
/// so a scheduler can judge a trial by the study's own objective.
pub struct Round<'a> {
    pub number: usize,
    /// The validation loss (log loss, or squared error); NaN without a
    /// validation set.
    pub loss: f64,
    task: Task,
    y: &'a [f64],
    /// The model's raw validation outputs after this round (margins for
    /// classification), computed only when a metric is asked for.
    raw: &'a (dyn Fn() -> Vec<f64> + Sync),
}

impl<'a> Round<'a> {
    pub fn new(
        number: usize,
        loss: f64,
        task: Task,
        y: &'a [f64],
        raw: &'a (dyn Fn() -> Vec<f64> + Sync),
    ) -> Round<'a> {
        Round {
            number,
            loss,
            task,
            y,
            raw,
        }
    }

    /// The validation metric `name` after this round, under the name the
    /// trainer reports it once done (`loss`, `auc`, `log_loss`, `rmse` ...).
    /// Costs a pass over the validation rows (a sort, for `auc`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        if name == "loss" {
            return Some(self.loss).filter(|v| !v.is_nan());
        }
        if self.y.is_empty() {
            return None;
        }
        let mut p = (self.raw)();
        if self.task == Task::Classification {
            p.iter_mut().for_each(|s| *s = crate::linear::sigmoid(*s));
        }
        for_task(self.task, self.y, &p).remove(name)
    }
}

pub fn for_task(task: Task, y: &[f64], p: &[f64]) -> BTreeMap<String, f64> {
    match task {
        Task::Classification => classification(y, p),
        Task::Regression => regression(y, p),
    }
}

pub fn classification(y: &[f64], p: &[f64]) -> BTreeMap<String, f64> {
    let (mut tp, mut fp, mut tn, mut fn_) = (0.0, 0.0, 0.0, 0.0);
    let mut log_loss = 0.0;
    for (&label, &prob) in y.iter().zip(p) {
        let predicted = prob >= 0.5;
        match (label == 1.0, predicted) {
            (true, true) => tp += 1.0,
            (false, true) => fp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fn_ += 1.0,
        }
        let q = prob.clamp(1e-15, 1.0 - 1e-15);
        log_loss -= if label == 1.0 { q.ln() } else { (1.0 - q).ln() };
    }
    let n = y.len() as f64;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    BTreeMap::from([
        ("rows".into(), n),
        ("positive_rate".into(), ratio(tp + fn_, n)),
        ("accuracy".into(), ratio(tp + tn, n)),
        ("precision".into(), precision),
        ("recall".into(), recall),
        (
            "f1".into(),
            ratio(2.0 * precision * recall, precision + recall),
        ),
        ("auc".into(), roc_auc(y, p)),
        ("log_loss".into(), ratio(log_loss, n)),
    ])
}

pub fn regression(y: &[f64], p: &[f64]) -> BTreeMap<String, f64> {
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let sse: f64 = y.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum();
    let sae: f64 = y.iter().zip(p).map(|(a, b)| (a - b).abs()).sum();
    let sst: f64 = y.iter().map(|a| (a - mean).powi(2)).sum();
    BTreeMap::from([
        ("rows".into(), n),
        ("rmse".into(), (sse / n).sqrt()),
        ("mae".into(), sae / n),
        ("r2".into(), if sst > 0.0 { 1.0 - sse / sst } else { 0.0 }),
    ])
}

/// Area under the ROC curve by the rank-sum formula, with tied scores
/// sharing their average rank. NaN when only one class is present.
pub fn roc_auc(y: &[f64], p: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let positives = y.iter().filter(|&&v| v == 1.0).count() as f64;
    let negatives = y.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && p[order[j + 1]] == p[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| y[k] == 1.0).count() as f64 * average_rank;
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_handles_ties_and_perfect_ranking() {
        assert_eq!(roc_auc(&[0.0, 0.0, 1.0, 1.0], &[0.1, 0.2, 0.8, 0.9]), 1.0);
        assert_eq!(roc_auc(&[0.0, 1.0], &[0.5, 0.5]), 0.5);
        assert_eq!(roc_auc(&[0.0, 1.0, 0.0, 1.0], &[0.1, 0.4, 0.5, 0.8]), 0.75);
        assert!(roc_auc(&[1.0, 1.0], &[0.1, 0.2]).is_nan());
    }

    #[test]
    fn classification_counts() {
        let m = classification(&[1.0, 0.0, 1.0, 0.0], &[0.9, 0.6, 0.4, 0.1]);
        assert_eq!(m["accuracy"], 0.5);
        assert_eq!(m["precision"], 0.5);
        assert_eq!(m["recall"], 0.5);
        assert_eq!(m["f1"], 0.5);
    }

    #[test]
    fn a_round_computes_metrics_only_when_asked() {
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let raw = || {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            vec![-2.0, 1.0, 3.0, -1.0]
        };
        let y = [0.0, 1.0, 1.0, 0.0];
        let round = Round::new(7, 0.25, Task::Classification, &y, &raw);
        assert_eq!(round.metric("loss"), Some(0.25));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(round.metric("auc"), Some(1.0));
        assert_eq!(round.metric("accuracy"), Some(1.0));
        assert_eq!(round.metric("no_such_metric"), None);
        let none = Round::new(1, f64::NAN, Task::Regression, &[], &raw);
        assert_eq!(none.metric("loss"), None);
        assert_eq!(none.metric("rmse"), None);
    }

    #[test]
    fn regression_metrics() {
        let m = regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
        assert!((m["rmse"] - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m["mae"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["r2"] - 0.5).abs() < 1e-12);
    }
}
