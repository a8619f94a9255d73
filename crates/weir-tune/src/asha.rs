//! ASHA: asynchronous successive halving. Rungs sit at `min_resource · η^k`
//! (boosting rounds, epochs); a trial reaching a rung goes on only if its
//! intermediate value there ranks in the best `max(1, ⌊n/η⌋)` of the `n`
//! trials that reached that rung so far. No trial waits for another, so
//! parallel trials never idle. Nothing is stopped at a rung until
//! `bootstrap` trials (η by default) have reached it: judging the second
//! trial against the first alone stopped most of a small study.

use crate::{Goal, Result, Trial, TrialState, TuneError};

#[derive(Clone, Debug, PartialEq)]
pub struct Asha {
    pub min_resource: i64,
    pub max_resource: i64,
    pub reduction: f64,
    /// The direction of the intermediate metric (a loss falls, an AUC rises).
    pub goal: Goal,
    /// Trials that must reach a rung before it stops any.
    pub bootstrap: usize,
}

impl Asha {
    pub fn new(min_resource: i64, max_resource: i64, reduction: f64, goal: Goal) -> Result<Asha> {
        if min_resource < 1 {
            return Err(TuneError::invalid(
                "tune.scheduler.min_resource",
                format!("must be at least 1, got {min_resource}"),
            ));
        }
        if max_resource < min_resource {
            return Err(TuneError::invalid(
                "tune.scheduler.max_resource",
                format!("must be at least min_resource ({min_resource}), got {max_resource}"),
            ));
        }
        if !(reduction >= 2.0 && reduction.is_finite()) {
            return Err(TuneError::invalid(
                "tune.scheduler.reduction",
                format!("must be at least 2, got {reduction}"),
            ));
        }
        Ok(Asha {
            min_resource,
            max_resource,
            reduction,
            goal,
            bootstrap: reduction.ceil() as usize,
        })
    }

    /// Rung resources below the maximum, ascending.
    pub fn rungs(&self) -> Vec<i64> {
        let mut out = Vec::new();
        let mut r = self.min_resource as f64;
        while (r.round() as i64) < self.max_resource {
            let rung = r.round() as i64;
            if out.last() != Some(&rung) {
                out.push(rung);
            }
            r *= self.reduction;
        }
        out
    }

    /// Whether `trial` should stop, now that it has reported up to
    /// `resource`: decided at the highest rung it has reached.
    pub fn should_stop(&self, trial: &Trial, resource: i64, history: &[Trial]) -> bool {
        let Some(rung) = self.rungs().into_iter().rev().find(|r| *r <= resource) else {
            return false;
        };
        let Some(mine) = value_at(trial, rung) else {
            return false;
        };
        let key = |v: f64| match self.goal {
            Goal::Minimize => v,
            Goal::Maximize => -v,
        };
        let mut competing: Vec<f64> = history
            .iter()
            .filter(|t| t.number != trial.number && t.state != TrialState::Failed)
            .filter_map(|t| value_at(t, rung))
            .map(key)
            .filter(|v| !v.is_nan())
            .collect();
        competing.push(key(mine));
        if competing.len() < self.bootstrap {
            return false;
        }
        competing.sort_by(f64::total_cmp);
        let keep = ((competing.len() as f64 / self.reduction).floor() as usize).max(1);
        key(mine).is_nan() || key(mine) > competing[keep - 1]
    }
}

/// A trial's intermediate value at `rung`: the last one reported at or
/// before it, if the trial got that far.
fn value_at(t: &Trial, rung: i64) -> Option<f64> {
    let (&last, _) = t.intermediate.last_key_value()?;
    if last < rung {
        return None;
    }
    t.intermediate.range(..=rung).next_back().map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn trial(number: usize, curve: &[(i64, f64)]) -> Trial {
        Trial {
            number,
            params: BTreeMap::new(),
            state: TrialState::Running,
            value: None,
            intermediate: curve.iter().copied().collect(),
        }
    }

    #[test]
    fn rungs_grow_by_the_reduction_factor() {
        let a = Asha::new(10, 500, 3.0, Goal::Minimize).unwrap();
        assert_eq!(a.rungs(), vec![10, 30, 90, 270]);
        assert!(Asha::new(0, 10, 3.0, Goal::Minimize).is_err());
        assert!(Asha::new(10, 5, 3.0, Goal::Minimize).is_err());
    }

    #[test]
    fn only_the_best_third_passes_a_rung() {
        let a = Asha::new(10, 100, 3.0, Goal::Minimize).unwrap();
        let history: Vec<Trial> = (0..6)
            .map(|i| trial(i, &[(10, 0.1 * (i + 1) as f64)]))
            .collect();
        // Six trials reached rung 10 with losses 0.1..0.6: the best two go on.
        assert!(!a.should_stop(&history[0], 10, &history));
        assert!(!a.should_stop(&history[1], 10, &history));
        assert!(a.should_stop(&history[2], 10, &history));
        assert!(a.should_stop(&history[5], 12, &history));
        // Too few trials at a rung: nothing is decided yet.
        assert!(!a.should_stop(&history[2], 10, &history[1..3]));
        // Before the first rung nothing is decided.
        let early = trial(9, &[(5, 9.0)]);
        assert!(!a.should_stop(&early, 5, &history));
        // The first trial at a rung always goes on.
        let first = trial(0, &[(10, 5.0)]);
        assert!(!a.should_stop(&first, 10, &[]));
    }

    #[test]
    fn maximised_metrics_rank_the_other_way() {
        let a = Asha::new(1, 9, 3.0, Goal::Maximize).unwrap();
        let history: Vec<Trial> = (0..3).map(|i| trial(i, &[(1, i as f64)])).collect();
        assert!(!a.should_stop(&history[2], 1, &history));
        assert!(a.should_stop(&history[0], 1, &history));
    }
}
