//! ASHA: asynchronous successive halving. Rungs sit at `min_resource · η^k`
//! (boosting rounds, epochs); a trial reaching a rung goes on only if its
//! intermediate value there ranks in the best `max(1, ⌊n/η⌋)` of the `n`
//! trials that reached that rung so far. No trial waits for another, so
//! parallel trials never idle. Nothing is stopped at a rung until
//! `bootstrap` trials (η by default) have reached it: judging the second
//! trial against the first alone stopped most of a small study.
//!
//! With `brackets > 1` (as in Hyperband, and Ray Tune's ASHA) trials are
//! dealt to brackets whose first rung lies further out: bracket `b` skips the
//! first `b` rungs, and a trial is judged only against its own bracket. That
//! hedges against short-horizon bias: a slow learner (a low learning rate)
//! is behind at the first rung and best at the end, and every bracket but the
//! first gives such trials a longer look. Brackets get trials in proportion
//! to `η^-b`, dealt by trial number, so a resumed study deals them the same.

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
    /// How many brackets trials are dealt to (1: plain ASHA).
    pub brackets: usize,
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
            brackets: 1,
        })
    }

    /// Deals trials to `brackets` brackets; the last may have no rung at
    /// all (its trials always run to the end), so at most one more than
    /// there are rungs.
    pub fn with_brackets(mut self, brackets: usize) -> Result<Asha> {
        let most = self.rungs().len() + 1;
        if !(1..=most).contains(&brackets) {
            return Err(TuneError::invalid(
                "tune.scheduler.brackets",
                format!(
                    "must be between 1 and {most} (one more than the rungs {:?}), got {brackets}",
                    self.rungs()
                ),
            ));
        }
        self.brackets = brackets;
        Ok(self)
    }

    /// The brackets of trials `0..n`: a smooth weighted round robin, each
    /// trial going to the bracket furthest behind its share `η^-b / Σ`.
    fn deal(&self, n: usize) -> Vec<usize> {
        if self.brackets == 1 {
            return vec![0; n];
        }
        let weights: Vec<f64> = (0..self.brackets)
            .map(|b| self.reduction.powi(-(b as i32)))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut dealt = vec![0usize; self.brackets];
        (0..n)
            .map(|i| {
                let behind = |b: usize| weights[b] / total * (i + 1) as f64 - dealt[b] as f64;
                // Ties go to the lower bracket.
                let b = (1..self.brackets).fold(0, |best, b| {
                    if behind(b) > behind(best) + 1e-9 {
                        b
                    } else {
                        best
                    }
                });
                dealt[b] += 1;
                b
            })
            .collect()
    }

    /// The bracket of trial `number`.
    pub fn bracket(&self, number: usize) -> usize {
        self.deal(number + 1)[number]
    }

    /// The rungs trial `number` is judged at: its bracket's.
    pub fn rungs_of(&self, number: usize) -> Vec<i64> {
        self.bracket_rungs(self.bracket(number))
    }

    /// Bracket `b`'s rungs: all but the first `b`.
    fn bracket_rungs(&self, b: usize) -> Vec<i64> {
        let mut rungs = self.rungs();
        rungs.drain(..b.min(rungs.len()));
        rungs
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
        let last = history.iter().map(|t| t.number).chain([trial.number]).max();
        let dealt = self.deal(last.unwrap_or(0) + 1);
        let bracket = dealt[trial.number];
        let Some(rung) = self
            .bracket_rungs(bracket)
            .into_iter()
            .rev()
            .find(|r| *r <= resource)
        else {
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
            .filter(|t| dealt[t.number] == bracket)
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
    fn brackets_deal_trials_by_share_and_judge_each_apart() {
        let a = Asha::new(10, 100, 3.0, Goal::Minimize).unwrap();
        assert_eq!(a.rungs(), vec![10, 30, 90]);
        assert!(a.clone().with_brackets(0).is_err());
        let err = a.clone().with_brackets(5).unwrap_err().to_string();
        assert!(err.contains("tune.scheduler.brackets"), "{err}");
        let two = a.clone().with_brackets(2).unwrap();
        // Shares 3/4 and 1/4, dealt the same way every time.
        let dealt: Vec<usize> = (0..8).map(|n| two.bracket(n)).collect();
        assert_eq!(dealt, vec![0, 0, 1, 0, 0, 0, 1, 0]);
        assert_eq!(two.rungs_of(2), vec![30, 90]);
        let four = a.clone().with_brackets(4).unwrap();
        let counts = (0..400).fold([0; 4], |mut c, n| {
            c[four.bracket(n)] += 1;
            c
        });
        assert_eq!(counts, [270, 90, 30, 10]);
        let last = (0..400).find(|&n| four.bracket(n) == 3).unwrap();
        assert!(four.rungs_of(last).is_empty());

        // Trials 0, 1, 3 (bracket 0) and 2, 6 (bracket 1): at round 10
        // only bracket 0 is judged, and only against itself.
        let history = vec![
            trial(0, &[(10, 0.1), (30, 0.1)]),
            trial(1, &[(10, 0.2)]),
            trial(2, &[(10, 0.9), (30, 0.9)]),
            trial(3, &[(10, 0.3)]),
        ];
        assert!(!two.should_stop(&history[2], 10, &history));
        assert!(two.should_stop(&history[3], 10, &history));
        // Trial 2's first rung is 30; two trials of its bracket are too few.
        assert!(!two.should_stop(&history[2], 30, &history));
        let mut more = history.clone();
        more.push(trial(6, &[(30, 0.5)]));
        more.push(trial(10, &[(30, 0.4)]));
        assert_eq!(two.bracket(10), 1);
        assert!(two.should_stop(&more[2], 30, &more));
        assert!(!two.should_stop(&more[5], 30, &more));
    }

    #[test]
    fn maximised_metrics_rank_the_other_way() {
        let a = Asha::new(1, 9, 3.0, Goal::Maximize).unwrap();
        let history: Vec<Trial> = (0..3).map(|i| trial(i, &[(1, i as f64)])).collect();
        assert!(!a.should_stop(&history[2], 1, &history));
        assert!(a.should_stop(&history[0], 1, &history));
    }
}
