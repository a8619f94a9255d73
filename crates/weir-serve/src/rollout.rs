//! Endpoints and rollouts: an endpoint is a name clients call that routes to
//! a model's stable version and, during a rollout, a candidate. The state
//! lives in the metadata store (`deployments`); this module holds the rules
//! that change it, used by the server's controller (each analysis interval)
//! and by `weir deploy` / `weir rollout` alike.

use std::time::Duration;

use serde_json::json;
use weir_ml::ScoreReference;
use weir_store::Deployment;

use crate::ServeError;

pub const STRATEGIES: &[&str] = &["canary", "bluegreen", "shadow", "direct"];

/// Phases: `Healthy` (stable only), `Progressing` (a candidate is being
/// judged), `Paused` (too little traffic to judge; judged again next
/// interval), `RolledBack` (the candidate was withdrawn; `reason` says why).
pub mod phase {
    pub const HEALTHY: &str = "Healthy";
    pub const PROGRESSING: &str = "Progressing";
    pub const PAUSED: &str = "Paused";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const ALL: &[&str] = &[HEALTHY, PROGRESSING, PAUSED, ROLLED_BACK];
}

/// When the candidate is judged and what it must meet.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub interval: Duration,
    /// The candidate's error rate may exceed the stable's by at most this.
    pub max_error_rate: f64,
    /// The candidate's p99 latency may be at most this.
    pub max_p99: Option<Duration>,
    /// Fewer candidate requests than this in an interval: pause, not judge.
    pub min_requests: u64,
    /// The candidate's online accuracy (from label feedback) may be at most
    /// this far below the stable's, once each has `min_labels` labels.
    pub max_accuracy_drop: Option<f64>,
    pub min_labels: u64,
    /// The largest population stability index allowed between the
    /// candidate's predictions in the interval and its training reference
    /// (the stable version's predictions when it has none).
    pub max_drift: Option<f64>,
}

impl Analysis {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "interval_ms": self.interval.as_millis() as u64,
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99.map(|d| d.as_secs_f64() * 1e3),
            "min_requests": self.min_requests,
            "max_accuracy_drop": self.max_accuracy_drop,
            "min_labels": self.min_labels,
            "max_drift": self.max_drift,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Analysis {
        Analysis {
            interval: Duration::from_millis(v["interval_ms"].as_u64().unwrap_or(30_000).max(10)),
            max_error_rate: v["max_error_rate"].as_f64().unwrap_or(0.01),
            max_p99: v["max_p99_ms"]
                .as_f64()
                .map(|ms| Duration::from_secs_f64(ms / 1e3)),
            min_requests: v["min_requests"].as_u64().unwrap_or(20),
            max_accuracy_drop: v["max_accuracy_drop"].as_f64(),
            min_labels: v["min_labels"].as_u64().unwrap_or(20),
            max_drift: v["max_drift"].as_f64(),
        }
    }
}

/// What one version answered through an endpoint during an interval.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub requests: u64,
    /// Answers of 5xx, or of 4xx that the other version did not give for
    /// the same share of traffic: counted raw here, compared in [`judge`].
    pub errors: u64,
    pub latencies_us: Vec<u32>,
    /// Predictions whose true label came back, and how many were right.
    pub labelled: u64,
    pub correct: u64,
    /// The score of each row answered (probability of the positive class,
    /// or the regression value), for drift.
    pub scores: Vec<f32>,
}

/// Fewer scores than this in an interval say nothing about drift.
pub const MIN_DRIFT_SCORES: usize = 10;

/// Latency samples kept per version per interval (enough for a p99).
const MAX_SAMPLES: usize = 200_000;

impl Window {
    pub fn record(&mut self, error: bool, latency: Duration) {
        self.requests += 1;
        self.errors += u64::from(error);
        if self.latencies_us.len() < MAX_SAMPLES {
            self.latencies_us
                .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }

    /// Adds another replica's counts for the same version and interval.
    pub fn merge(&mut self, other: Window) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.labelled += other.labelled;
        self.correct += other.correct;
        let room = MAX_SAMPLES.saturating_sub(self.latencies_us.len());
        self.latencies_us
            .extend(other.latencies_us.into_iter().take(room));
        let room = MAX_SAMPLES.saturating_sub(self.scores.len());
        self.scores.extend(other.scores.into_iter().take(room));
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.labelled == 0 && self.scores.is_empty()
    }

    pub fn scored(&mut self, scores: &[f64]) {
        let room = MAX_SAMPLES.saturating_sub(self.scores.len());
        self.scores
            .extend(scores.iter().take(room).map(|s| *s as f32));
    }

    pub fn label(&mut self, correct: bool) {
        self.labelled += 1;
        self.correct += u64::from(correct);
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    pub fn p99(&mut self) -> Option<Duration> {
        self.quantile(99)
    }

    /// The latency at `percent` by nearest rank over the samples kept.
    fn quantile(&mut self, percent: usize) -> Option<Duration> {
        if self.latencies_us.is_empty() {
            return None;
        }
        if !self.latencies_us.is_sorted() {
            self.latencies_us.sort_unstable();
        }
        let ix = (self.latencies_us.len() * percent)
            .div_ceil(100)
            .saturating_sub(1);
        Some(Duration::from_micros(u64::from(self.latencies_us[ix])))
    }

    /// What an interval's record keeps beside the counts: latency quantiles
    /// and histogram (over the samples kept), and online accuracy.
    pub fn stats(&mut self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let mut counts = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
        for us in &self.latencies_us {
            let ms = f64::from(*us) / 1e3;
            counts[LATENCY_BUCKETS_MS.partition_point(|le| *le < ms)] += 1;
        }
        serde_json::json!({
            "p50_ms": ms(self.quantile(50)),
            "p90_ms": ms(self.quantile(90)),
            "p99_ms": ms(self.quantile(99)),
            "latency_le_ms": LATENCY_BUCKETS_MS,
            "latency_counts": counts,
            "labelled": self.labelled,
            "accuracy": self.accuracy(),
        })
    }
}

/// Upper bounds (ms) of the latency histogram kept per interval; a last
/// bucket holds what is slower than all of them.
pub const LATENCY_BUCKETS_MS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0,
];

/// The verdict on an interval.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pass,
    TooLittleTraffic(String),
    Violation(String),
}

/// `reference` is the candidate's prediction reference from training.
pub fn judge(
    a: &Analysis,
    stable: &mut Window,
    candidate: &mut Window,
    reference: Option<&ScoreReference>,
) -> Verdict {
    // A violation is judged even on little traffic: a candidate failing
    // every request it got must not wait for more.
    let excess = candidate.error_rate() - stable.error_rate();
    if candidate.requests > 0 && excess > a.max_error_rate && candidate.errors >= 3 {
        return Verdict::Violation(format!(
            "error rate {:.1}% ({} of {}) against the stable version's {:.1}%, over the allowed {:.1} points",
            candidate.error_rate() * 100.0,
            candidate.errors,
            candidate.requests,
            stable.error_rate() * 100.0,
            a.max_error_rate * 100.0
        ));
    }
    if let (Some(drop), Some(cand), Some(stab)) =
        (a.max_accuracy_drop, candidate.accuracy(), stable.accuracy())
    {
        if candidate.labelled >= a.min_labels
            && stable.labelled >= a.min_labels
            && cand < stab - drop
        {
            return Verdict::Violation(format!(
                "online accuracy {:.1}% ({} of {} labelled) against the stable version's {:.1}%, more than {:.1} points lower",
                cand * 100.0,
                candidate.correct,
                candidate.labelled,
                stab * 100.0,
                drop * 100.0
            ));
        }
    }
    // Likewise a candidate so slow that it completes few requests: enough
    // of them over the limit is a violation however few it answered.
    if let Some(limit) = a.max_p99 {
        let limit_us = limit.as_micros().min(u128::from(u32::MAX)) as u32;
        let slow = candidate
            .latencies_us
            .iter()
            .filter(|l| **l > limit_us)
            .count() as u64;
        if slow >= 3 && slow * 100 > candidate.requests {
            return Verdict::Violation(format!(
                "p99 latency over the limit of {:.1} ms ({slow} of {} requests slower)",
                limit.as_secs_f64() * 1e3,
                candidate.requests
            ));
        }
    }
    if let Some(limit) = a.max_drift {
        let enough = (a.min_requests as usize).max(MIN_DRIFT_SCORES);
        let live = || candidate.scores.iter().map(|s| f64::from(*s));
        let drift = match reference {
            Some(r) if candidate.scores.len() >= enough => Some((
                r.stability(live()),
                format!("its training reference ({} scores)", r.rows),
            )),
            None if candidate.scores.len() >= enough && stable.scores.len() >= enough => {
                let stable_scores: Vec<f64> = stable.scores.iter().map(|s| f64::from(*s)).collect();
                ScoreReference::from_scores(&stable_scores).map(|r| {
                    (
                        r.stability(live()),
                        format!(
                            "the stable version's {} predictions (the candidate has no training reference)",
                            stable.scores.len()
                        ),
                    )
                })
            }
            _ => None,
        };
        if let Some((psi, against)) = drift {
            if psi > limit {
                return Verdict::Violation(format!(
                    "prediction drift: population stability index {psi:.3} of the candidate's {} predictions against {against} (limit {limit})",
                    candidate.scores.len(),
                ));
            }
        }
    }
    if candidate.requests < a.min_requests {
        return Verdict::TooLittleTraffic(format!(
            "too little traffic to judge: {} candidate requests, {} needed per interval",
            candidate.requests, a.min_requests
        ));
    }
    if let (Some(limit), Some(p99)) = (a.max_p99, candidate.p99()) {
        if p99 > limit {
            return Verdict::Violation(format!(
                "p99 latency {:.1} ms over the limit of {:.1} ms",
                p99.as_secs_f64() * 1e3,
                limit.as_secs_f64() * 1e3
            ));
        }
    }
    Verdict::Pass
}

fn bad(message: impl Into<String>) -> ServeError {
    ServeError::BadRequest(message.into())
}

/// A new rollout of `version` on `current` (or a new endpoint when `None`).
/// The first version of an endpoint is deployed directly, whatever the
/// strategy: there is nothing to compare it with.
pub fn start(
    current: Option<&Deployment>,
    endpoint: &str,
    model: &str,
    version: i64,
    strategy: &str,
    steps: Vec<i64>,
    analysis: &Analysis,
) -> Result<(Deployment, String), ServeError> {
    if !STRATEGIES.contains(&strategy) {
        return Err(bad(format!(
            "unknown strategy '{strategy}'; use one of {}",
            STRATEGIES.join(", ")
        )));
    }
    if steps.is_empty()
        || steps.iter().any(|s| !(1..=100).contains(s))
        || steps.windows(2).any(|w| w[0] >= w[1])
        || steps.last() != Some(&100)
    {
        return Err(bad(format!(
            "--steps {steps:?}: canary steps are increasing percentages ending at 100, e.g. 5,25,50,100"
        )));
    }
    if let Some(c) = current {
        if c.model != model {
            return Err(bad(format!(
                "endpoint '{endpoint}' serves model '{}'; deploy a version of it, or use another endpoint for '{model}'",
                c.model
            )));
        }
        if let Some(cand) = c.candidate {
            return Err(bad(format!(
                "endpoint '{endpoint}' is rolling out version {cand}; `weir rollout promote {endpoint}` or `weir rollout rollback {endpoint}` first"
            )));
        }
        if c.stable == Some(version) {
            return Err(bad(format!(
                "version {version} is already the stable version of '{endpoint}'"
            )));
        }
    }
    let base = Deployment {
        endpoint: endpoint.to_string(),
        model: model.to_string(),
        stable: current.and_then(|c| c.stable),
        candidate: None,
        strategy: strategy.to_string(),
        steps: steps.clone(),
        step_index: 0,
        weight: 0,
        phase: phase::HEALTHY.into(),
        analysis: analysis.to_json(),
        reason: String::new(),
        revision: current.map_or(0, |c| c.revision),
        updated_at: 0,
    };
    if base.stable.is_none() || strategy == "direct" {
        let from = base
            .stable
            .map(|v| format!(" (was {v})"))
            .unwrap_or_default();
        return Ok((
            Deployment {
                stable: Some(version),
                ..base
            },
            format!("version {version} deployed directly{from}"),
        ));
    }
    let weight = if strategy == "canary" { steps[0] } else { 0 };
    Ok((
        Deployment {
            candidate: Some(version),
            weight,
            phase: phase::PROGRESSING.into(),
            ..base
        },
        format!(
            "{strategy} rollout of version {version} started{}",
            if strategy == "canary" {
                format!(" at {weight}%")
            } else {
                String::new()
            }
        ),
    ))
}

/// The next step of a rollout: the next canary weight, or the candidate
/// becoming the stable version. Returns the new state and what happened.
pub fn promote(d: &Deployment) -> Result<(Deployment, String), ServeError> {
    let Some(cand) = d.candidate else {
        return Err(bad(format!(
            "endpoint '{}' has no rollout in progress",
            d.endpoint
        )));
    };
    let next = d.step_index as usize + 1;
    if d.strategy == "canary" && next < d.steps.len() && d.steps[next] < 100 {
        let weight = d.steps[next];
        return Ok((
            Deployment {
                step_index: next as i64,
                weight,
                phase: phase::PROGRESSING.into(),
                reason: String::new(),
                ..d.clone()
            },
            format!("version {cand} promoted to {weight}%"),
        ));
    }
    Ok((
        Deployment {
            stable: Some(cand),
            candidate: None,
            weight: 0,
            step_index: 0,
            phase: phase::HEALTHY.into(),
            reason: String::new(),
            ..d.clone()
        },
        format!(
            "version {cand} is stable{}",
            d.stable.map(|v| format!(" (was {v})")).unwrap_or_default()
        ),
    ))
}

pub fn rollback(d: &Deployment, why: &str) -> Result<(Deployment, String), ServeError> {
    let Some(cand) = d.candidate else {
        return Err(bad(format!(
            "endpoint '{}' has no rollout in progress",
            d.endpoint
        )));
    };
    Ok((
        Deployment {
            candidate: None,
            weight: 0,
            step_index: 0,
            phase: phase::ROLLED_BACK.into(),
            reason: format!("version {cand}: {why}"),
            ..d.clone()
        },
        format!("version {cand} rolled back: {why}"),
    ))
}

pub fn pause(d: &Deployment, why: &str) -> Deployment {
    Deployment {
        phase: phase::PAUSED.into(),
        reason: why.to_string(),
        ..d.clone()
    }
}

/// Which version answers a request: the candidate for `weight` percent of
/// keys. A routing key (`x-weir-route-key`) always lands on the same side
/// for a given weight; without one, `draw` (uniform) decides.
pub fn pick_candidate(weight: i64, key: Option<&[u8]>, draw: u64) -> bool {
    if weight <= 0 {
        return false;
    }
    let bucket = match key {
        Some(k) => {
            let h = blake3::hash(k);
            u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % 100
        }
        None => draw % 100,
    };
    (bucket as i64) < weight
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis() -> Analysis {
        Analysis {
            interval: Duration::from_secs(1),
            max_error_rate: 0.01,
            max_p99: Some(Duration::from_millis(50)),
            min_requests: 20,
            max_accuracy_drop: Some(0.05),
            min_labels: 10,
            max_drift: Some(0.2),
        }
    }

    fn window(requests: u64, errors: u64, latency_ms: u64) -> Window {
        let mut w = Window::default();
        for i in 0..requests {
            w.record(i < errors, Duration::from_millis(latency_ms));
        }
        w
    }

    #[test]
    fn a_canary_walks_its_steps_then_becomes_stable() {
        let (d, _) = start(None, "e", "m", 1, "canary", vec![5, 50, 100], &analysis()).unwrap();
        assert_eq!(
            (d.stable, d.candidate, d.phase.as_str()),
            (Some(1), None, "Healthy")
        );
        let d = Deployment { revision: 1, ..d };
        let (d, what) = start(
            Some(&d),
            "e",
            "m",
            2,
            "canary",
            vec![5, 50, 100],
            &analysis(),
        )
        .unwrap();
        assert_eq!((d.candidate, d.weight), (Some(2), 5), "{what}");
        let (d, _) = promote(&d).unwrap();
        assert_eq!(d.weight, 50);
        let (d, what) = promote(&d).unwrap();
        assert_eq!(
            (d.stable, d.candidate, d.weight),
            (Some(2), None, 0),
            "{what}"
        );
        assert!(promote(&d).is_err());
    }

    #[test]
    fn bad_steps_strategies_and_overlapping_rollouts_are_refused() {
        let a = analysis();
        for steps in [
            vec![],
            vec![50, 25, 100],
            vec![5, 50],
            vec![0, 100],
            vec![5, 200],
        ] {
            assert!(start(None, "e", "m", 1, "canary", steps, &a).is_err());
        }
        assert!(start(None, "e", "m", 1, "yolo", vec![100], &a).is_err());
        let (d, _) = start(None, "e", "m", 1, "canary", vec![100], &a).unwrap();
        let (d, _) = start(Some(&d), "e", "m", 2, "canary", vec![10, 100], &a).unwrap();
        let e = start(Some(&d), "e", "m", 3, "canary", vec![100], &a).unwrap_err();
        assert!(e.to_string().contains("is rolling out version 2"), "{e}");
        let e = start(Some(&d), "e", "other", 3, "canary", vec![100], &a).unwrap_err();
        assert!(e.to_string().contains("serves model 'm'"), "{e}");
    }

    #[test]
    fn an_intervals_stats_hold_quantiles_and_a_latency_histogram() {
        let mut w = Window::default();
        for ms in 1..=100u64 {
            w.record(false, Duration::from_millis(ms));
        }
        w.record(false, Duration::from_secs(10));
        w.label(true);
        let s = w.stats();
        assert_eq!(s["p50_ms"], 51.0);
        assert_eq!(s["p99_ms"], 100.0);
        let counts: Vec<u64> = serde_json::from_value(s["latency_counts"].clone()).unwrap();
        assert_eq!(counts.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(counts.iter().sum::<u64>(), 101);
        // 1 ms is in the bucket whose bound is 1 ms; 10 s in the last.
        assert_eq!(counts[3], 1);
        assert_eq!(counts[LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(s["accuracy"], 1.0);
    }

    #[test]
    fn judging_rolls_back_on_errors_or_latency_and_pauses_on_little_traffic() {
        let a = analysis();
        assert_eq!(
            judge(&a, &mut window(100, 0, 1), &mut window(50, 0, 2), None),
            Verdict::Pass
        );
        // Errors both versions give (bad client input) are not the candidate's fault.
        assert_eq!(
            judge(&a, &mut window(100, 10, 1), &mut window(50, 5, 2), None),
            Verdict::Pass
        );
        assert!(matches!(
            judge(&a, &mut window(100, 0, 1), &mut window(50, 10, 2), None),
            Verdict::Violation(why) if why.contains("error rate 20.0%")
        ));
        assert!(matches!(
            judge(&a, &mut window(100, 0, 1), &mut window(50, 0, 80), None),
            Verdict::Violation(why) if why.contains("over the limit of 50.0 ms (50 of 50")
        ));
        let mut two_slow = window(50, 0, 1);
        two_slow.record(false, Duration::from_millis(90));
        two_slow.record(false, Duration::from_millis(90));
        assert!(matches!(
            judge(&a, &mut window(100, 0, 1), &mut two_slow, None),
            Verdict::Violation(why) if why.contains("p99 latency 90.0 ms")
        ));
        assert!(matches!(
            judge(&a, &mut window(100, 0, 1), &mut window(5, 0, 1), None),
            Verdict::TooLittleTraffic(_)
        ));
        // A candidate failing everything it got is judged without waiting,
        // and so is one too slow to answer much.
        assert!(matches!(
            judge(&a, &mut window(100, 0, 1), &mut window(5, 5, 1), None),
            Verdict::Violation(_)
        ));
        assert!(matches!(
            judge(&a, &mut window(100, 0, 1), &mut window(4, 0, 300), None),
            Verdict::Violation(why) if why.contains("4 of 4 requests slower")
        ));
    }

    #[test]
    fn a_candidate_less_accurate_on_fed_back_labels_is_rolled_back() {
        let a = analysis();
        let labelled = |right: u64, of: u64| {
            let mut w = window(100, 0, 1);
            (0..of).for_each(|i| w.label(i < right));
            w
        };
        assert_eq!(
            judge(&a, &mut labelled(90, 100), &mut labelled(88, 100), None),
            Verdict::Pass
        );
        assert!(matches!(
            judge(&a, &mut labelled(90, 100), &mut labelled(70, 100), None),
            Verdict::Violation(why) if why.contains("online accuracy 70.0%")
        ));
        // Too few labels to say.
        assert_eq!(
            judge(&a, &mut labelled(90, 100), &mut labelled(0, 5), None),
            Verdict::Pass
        );
    }

    #[test]
    fn predictions_that_drift_from_the_reference_roll_back() {
        let a = analysis();
        let scored = |f: &dyn Fn(usize) -> f64| {
            let mut w = window(100, 0, 1);
            w.scored(&(0..500).map(f).collect::<Vec<_>>());
            w
        };
        let spread = |i: usize| (i % 100) as f64 / 100.0;
        assert_eq!(
            judge(
                &a,
                &mut scored(&spread),
                &mut scored(&|i| spread(i + 37)),
                None
            ),
            Verdict::Pass
        );
        assert!(matches!(
            judge(&a, &mut scored(&spread), &mut scored(&|i| 0.5 + spread(i) / 2.0), None),
            Verdict::Violation(why) if why.contains("population stability index")
        ));
        // With a training reference, drift is measured against it: a
        // candidate whose scores moved the same way as the stable version's
        // has still drifted from what it was trained to give.
        let trained = ScoreReference::from_scores(&(0..500).map(spread).collect::<Vec<_>>());
        let shifted = |i: usize| 0.5 + spread(i) / 2.0;
        assert!(matches!(
            judge(&a, &mut scored(&shifted), &mut scored(&shifted), trained.as_ref()),
            Verdict::Violation(why) if why.contains("its training reference (500 scores)")
        ));
        assert_eq!(
            judge(
                &a,
                &mut scored(&shifted),
                &mut scored(&|i| spread(i + 37)),
                trained.as_ref()
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn routing_keys_are_sticky_and_weights_are_honoured() {
        let key = b"user-42".as_slice();
        let first = pick_candidate(50, Some(key), 0);
        assert!((0..100).all(|d| pick_candidate(50, Some(key), d) == first));
        let share = (0..10_000u64)
            .filter(|d| pick_candidate(25, None, *d))
            .count();
        assert_eq!(share, 2_500);
        assert!(!pick_candidate(0, Some(key), 0));
        assert!(pick_candidate(100, Some(key), 0));
    }
}
