//! Samplers: random, grid, and TPE (the tree-structured Parzen estimator).
//!
//! TPE is multivariate: parameters that are active together form a group
//! (all unconditional ones; each set of parameters sharing one condition),
//! and a group is sampled jointly from kernels centred on whole past trials,
//! so correlated parameters are learnt together. Past trials are split into
//! the best `γ(n) = min(⌈n/10⌉, 25)` and the rest; 24 candidates are drawn
//! from the density of the best (better trials weigh more, linearly in
//! rank), and the one maximising l(x)/g(x) wins.
//! Running trials count among the rest (a "constant liar"), so trials
//! sampled while others run spread out instead of piling up.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::space::{Distribution, Param, ParamValue, Space};
use crate::{Goal, Trial, TrialState};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    Random,
    Grid,
    #[default]
    Tpe,
}

impl SamplerKind {
    pub fn build(self, seed: u64) -> Box<dyn Sampler> {
        match self {
            SamplerKind::Random => Box::new(Random::new(seed)),
            SamplerKind::Grid => Box::new(Grid::default()),
            SamplerKind::Tpe => Box::new(Tpe::new(seed)),
        }
    }
}

pub trait Sampler: Send {
    /// The next trial's parameters given every trial so far, or `None` when
    /// the sampler has nothing left to try (a finished grid).
    fn sample(
        &mut self,
        space: &Space,
        history: &[Trial],
        goal: Goal,
    ) -> Option<BTreeMap<String, ParamValue>>;
}

fn sample_uniform(dist: &Distribution, rng: &mut StdRng) -> ParamValue {
    match dist {
        Distribution::Choice(values) => values[rng.random_range(0..values.len())].clone(),
        d => {
            let (lo, hi) = d.range().expect("numeric");
            d.value_at(if hi > lo {
                rng.random_range(lo..hi)
            } else {
                lo
            })
        }
    }
}

pub struct Random {
    rng: StdRng,
}

impl Random {
    pub fn new(seed: u64) -> Self {
        Random {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Sampler for Random {
    fn sample(
        &mut self,
        space: &Space,
        _history: &[Trial],
        _goal: Goal,
    ) -> Option<BTreeMap<String, ParamValue>> {
        let mut chosen = BTreeMap::new();
        for p in &space.params {
            if space.active(p, &chosen) {
                chosen.insert(
                    p.name.clone(),
                    sample_uniform(&p.distribution, &mut self.rng),
                );
            }
        }
        Some(chosen)
    }
}

/// Every combination, in order: all values of choices and integers (up to
/// `points` evenly spaced ones for wide integer ranges) and `points` evenly
/// spaced values of floats (log-spaced on a log scale).
pub struct Grid {
    pub points: usize,
}

impl Default for Grid {
    fn default() -> Self {
        Grid { points: 5 }
    }
}

impl Grid {
    fn values(&self, dist: &Distribution) -> Vec<ParamValue> {
        match dist {
            Distribution::Choice(v) => v.clone(),
            Distribution::Int { low, high, .. } if ((high - low) as usize) < self.points => {
                (*low..=*high).map(ParamValue::Int).collect()
            }
            d => {
                let (lo, hi) = match d {
                    // Ends exactly on the bounds, not half a step outside.
                    Distribution::Int { low, high, log } => {
                        if *log {
                            ((*low as f64).ln(), (*high as f64).ln())
                        } else {
                            (*low as f64, *high as f64)
                        }
                    }
                    d => d.range().expect("numeric"),
                };
                let n = self.points.max(1);
                let mut out: Vec<ParamValue> = (0..n)
                    .map(|i| {
                        let t = if n == 1 {
                            0.5
                        } else {
                            i as f64 / (n - 1) as f64
                        };
                        d.value_at(lo + t * (hi - lo))
                    })
                    .collect();
                out.dedup();
                out
            }
        }
    }

    /// The grid's points in order, inactive parameters left out.
    pub fn grid(&self, space: &Space) -> Vec<BTreeMap<String, ParamValue>> {
        let mut points: Vec<BTreeMap<String, ParamValue>> = vec![BTreeMap::new()];
        for p in &space.params {
            let values = self.values(&p.distribution);
            let mut next = Vec::new();
            for point in points {
                if space.active(p, &point) {
                    for v in &values {
                        let mut q = point.clone();
                        q.insert(p.name.clone(), v.clone());
                        next.push(q);
                    }
                } else {
                    next.push(point);
                }
            }
            points = next;
        }
        points
    }
}

impl Sampler for Grid {
    fn sample(
        &mut self,
        space: &Space,
        history: &[Trial],
        _goal: Goal,
    ) -> Option<BTreeMap<String, ParamValue>> {
        // The first point no trial has taken: a resumed study picks up where it was.
        self.grid(space)
            .into_iter()
            .find(|point| !history.iter().any(|t| &t.params == point))
    }
}

pub struct Tpe {
    rng: StdRng,
    pub startup_trials: usize,
    pub candidates: usize,
    /// Sample parameters that are active together jointly (else one by one).
    pub multivariate: bool,
}

impl Tpe {
    pub fn new(seed: u64) -> Self {
        Tpe {
            rng: StdRng::seed_from_u64(seed),
            startup_trials: 10,
            candidates: 24,
            multivariate: true,
        }
    }
}

/// How many of `n` trials count as good.
fn gamma(n: usize) -> usize {
    (n.div_ceil(10)).min(25)
}

/// The bad trials' weights: older ones weigh less once there are more than
/// 25 (as in Optuna).
fn weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut w: Vec<f64> = (0..ramp)
        .map(|i| {
            let (a, b) = (1.0 / n as f64, 1.0);
            if ramp == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (ramp - 1) as f64
            }
        })
        .collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// The good trials' weights, given each one's rank among them (0 the
/// best): linear in rank, the best `n` times the worst, scaled to a mean of
/// one so the prior keeps its share. A better trial says more about where
/// the optimum is; on Branin and Hartmann-6 this found better values at 50
/// and 200 trials over 900 seeds than equal weights (BENCHMARKS.md).
fn rank_weights(ranks: &[usize]) -> Vec<f64> {
    let n = ranks.len();
    let mean = (n + 1) as f64 / 2.0;
    ranks.iter().map(|r| (n - r) as f64 / mean).collect()
}

/// A mixture of product kernels, one per observation plus the prior.
struct Parzen<'a> {
    params: &'a [&'a Param],
    /// Per component: weight, and per dimension its centre (coordinate).
    weights: Vec<f64>,
    centres: Vec<Vec<f64>>,
    /// Per component and numeric dimension: the kernel's width.
    sigmas: Vec<Vec<f64>>,
    /// Per component and numeric dimension: the log of the truncated
    /// kernel's normaliser (computed once; it does not depend on x).
    log_norm: Vec<Vec<f64>>,
    log_weights: Vec<f64>,
    n_obs: usize,
    /// The density's hot loop reads flat arrays: per component, its log
    /// weight plus every numeric normaliser, then per numeric dimension the
    /// centre and 1/width, then per choice dimension the log probabilities.
    flat: FlatDensity,
}

#[derive(Default)]
struct FlatDensity {
    numeric: Vec<usize>,
    constant: Vec<f64>,
    mu: Vec<f64>,
    inv_sigma: Vec<f64>,
    /// (dimension, values, per component × values log probabilities).
    choices: Vec<(usize, usize, Vec<f64>)>,
}

const PRIOR_WEIGHT: f64 = 1.0;

impl<'a> Parzen<'a> {
    /// `weights`: one per observation, relative to the prior's one.
    fn new(params: &'a [&'a Param], observations: &[Vec<f64>], mut weights: Vec<f64>) -> Self {
        let n = observations.len();
        let d = params.len();
        debug_assert_eq!(weights.len(), n);
        weights.push(PRIOR_WEIGHT);
        let total: f64 = weights.iter().sum();
        for w in &mut weights {
            *w /= total;
        }
        let mut centres: Vec<Vec<f64>> = observations.to_vec();
        // The prior: the middle of each range (its width set below).
        centres.push(
            params
                .iter()
                .map(|p| match p.distribution.range() {
                    Some((lo, hi)) => (lo + hi) / 2.0,
                    None => -1.0,
                })
                .collect(),
        );
        // Each kernel is as wide as the larger gap to its neighbours in
        // that dimension (hyperopt's rule, as Optuna's TPE): dense regions
        // of good trials get narrow kernels. The floor is range / min(100,
        // (n + 1)^(10 / (d + 2))): in two dimensions kernels may narrow as
        // fast as n^-2.5, in six as n^-1.25 (hyperopt's floor is n^-1), since
        // a low-dimensional space is covered with fewer trials. Measured on
        // Branin and Hartmann-6 (BENCHMARKS.md).
        let min_width_divisor = (100f64).min((n as f64 + 1.0).powf(10.0 / (d as f64 + 2.0)));
        let sigmas: Vec<Vec<f64>> = {
            let mut per_dim: Vec<Vec<f64>> = Vec::with_capacity(d);
            for (j, p) in params.iter().enumerate() {
                let Some((lo, hi)) = p.distribution.range() else {
                    per_dim.push(vec![0.0; n + 1]);
                    continue;
                };
                let width = (hi - lo).max(1e-12);
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|a, b| observations[*a][j].total_cmp(&observations[*b][j]));
                let at = |k: usize| observations[order[k]][j];
                let mut sig = vec![width; n + 1];
                for k in 0..n {
                    let left = if k == 0 {
                        None
                    } else {
                        Some(at(k) - at(k - 1))
                    };
                    let right = if k + 1 == n {
                        None
                    } else {
                        Some(at(k + 1) - at(k))
                    };
                    let s = match (left, right) {
                        (Some(l), Some(r)) => l.max(r),
                        (Some(g), None) | (None, Some(g)) => g,
                        (None, None) => width,
                    };
                    let min = width / min_width_divisor;
                    sig[order[k]] = s.clamp(min, width);
                }
                per_dim.push(sig);
            }
            (0..=n)
                .map(|c| per_dim.iter().map(|v| v[c]).collect())
                .collect()
        };
        let mut parzen = Parzen {
            params,
            weights,
            centres,
            sigmas,
            log_norm: Vec::new(),
            log_weights: Vec::new(),
            n_obs: n,
            flat: FlatDensity::default(),
        };
        parzen.log_weights = parzen.weights.iter().map(|w| w.ln()).collect();
        parzen.log_norm = (0..parzen.weights.len())
            .map(|c| {
                params
                    .iter()
                    .enumerate()
                    .map(|(j, p)| match p.distribution.range() {
                        Some((lo, hi)) => {
                            let (mu, s) = parzen.kernel(c, j, lo, hi);
                            let (upper, lower) = ((hi - mu) / s, (lo - mu) / s);
                            // Both tails below 1e-19: the mass is 1.0 in f64.
                            let mass = if upper > 9.0 && lower < -9.0 {
                                1.0
                            } else {
                                (norm_cdf(upper) - norm_cdf(lower)).max(1e-300)
                            };
                            -(s * (2.0 * std::f64::consts::PI).sqrt()).ln() - mass.ln()
                        }
                        None => 0.0,
                    })
                    .collect()
            })
            .collect();
        parzen.flat = parzen.flatten();
        parzen
    }

    fn flatten(&self) -> FlatDensity {
        let components = self.weights.len();
        let mut flat = FlatDensity::default();
        for (j, p) in self.params.iter().enumerate() {
            match &p.distribution {
                Distribution::Choice(values) => {
                    let k = values.len();
                    let mut table = Vec::with_capacity(components * k);
                    for c in 0..components {
                        table.extend(self.choice_probs(c, j, k).iter().map(|q| q.ln()));
                    }
                    flat.choices.push((j, k, table));
                }
                _ => flat.numeric.push(j),
            }
        }
        let ranges: Vec<(f64, f64)> = flat
            .numeric
            .iter()
            .map(|&j| self.params[j].distribution.range().expect("numeric"))
            .collect();
        for c in 0..components {
            let mut constant = self.log_weights[c];
            for (&j, &(lo, hi)) in flat.numeric.iter().zip(&ranges) {
                let (mu, s) = self.kernel(c, j, lo, hi);
                flat.mu.push(mu);
                flat.inv_sigma.push(1.0 / s);
                constant += self.log_norm[c][j];
            }
            flat.constant.push(constant);
        }
        flat
    }

    fn is_prior(&self, c: usize) -> bool {
        c == self.n_obs
    }

    fn sample(&self, rng: &mut StdRng) -> Vec<f64> {
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut c = self.weights.len() - 1;
        for (i, w) in self.weights.iter().enumerate() {
            acc += w;
            if u < acc {
                c = i;
                break;
            }
        }
        self.params
            .iter()
            .enumerate()
            .map(|(j, p)| match &p.distribution {
                Distribution::Choice(values) => {
                    let probs = self.choice_probs(c, j, values.len());
                    let u: f64 = rng.random();
                    let mut acc = 0.0;
                    for (k, pk) in probs.iter().enumerate() {
                        acc += pk;
                        if u < acc {
                            return k as f64;
                        }
                    }
                    (values.len() - 1) as f64
                }
                d => {
                    let (lo, hi) = d.range().expect("numeric");
                    let (mu, s) = self.kernel(c, j, lo, hi);
                    truncated_normal(rng, mu, s, lo, hi)
                }
            })
            .collect()
    }

    fn kernel(&self, c: usize, j: usize, lo: f64, hi: f64) -> (f64, f64) {
        if self.is_prior(c) {
            ((lo + hi) / 2.0, (hi - lo).max(1e-12))
        } else {
            (self.centres[c][j], self.sigmas[c][j])
        }
    }

    /// A component's distribution over a choice's values: uniform mass
    /// spread over all of them, plus one unit on the observed value.
    fn choice_probs(&self, c: usize, j: usize, k: usize) -> Vec<f64> {
        let spread = PRIOR_WEIGHT / (self.n_obs as f64 + 1.0);
        let mut p = vec![spread; k];
        if !self.is_prior(c) {
            p[self.centres[c][j] as usize] += 1.0;
        }
        let total: f64 = p.iter().sum();
        p.iter().map(|x| x / total).collect()
    }

    fn log_pdf(&self, x: &[f64], terms: &mut Vec<f64>) -> f64 {
        let f = &self.flat;
        let m = f.numeric.len();
        let point: Vec<f64> = f.numeric.iter().map(|&j| x[j]).collect();
        terms.clear();
        for c in 0..f.constant.len() {
            let mu = &f.mu[c * m..(c + 1) * m];
            let inv = &f.inv_sigma[c * m..(c + 1) * m];
            let mut sq = 0.0;
            for ((xj, mj), ij) in point.iter().zip(mu).zip(inv) {
                let z = (xj - mj) * ij;
                sq += z * z;
            }
            let mut lp = f.constant[c] - 0.5 * sq;
            for (j, k, table) in &f.choices {
                lp += table[c * k + x[*j] as usize];
            }
            terms.push(lp);
        }
        log_sum_exp(terms)
    }
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    // Terms more than 709 below the largest add nothing to a sum of at
    // least 1 (exp would underflow, slowly); far kernels are most terms.
    m + xs
        .iter()
        .filter(|x| **x - m > -709.0)
        .map(|x| (x - m).exp())
        .sum::<f64>()
        .ln()
}

/// Φ, the standard normal CDF, from erfc.
fn norm_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

fn truncated_normal(rng: &mut StdRng, mu: f64, s: f64, lo: f64, hi: f64) -> f64 {
    // Rejection from the normal; a kernel far outside the range falls back
    // to the nearest bound's side uniformly (rare: centres lie in range).
    for _ in 0..64 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let x = mu + s * z;
        if (lo..=hi).contains(&x) {
            return x;
        }
    }
    rng.random_range(lo..=hi)
}

impl Tpe {
    fn sample_group(
        &mut self,
        group: &[&Param],
        history: &[Trial],
        goal: Goal,
        chosen: &mut BTreeMap<String, ParamValue>,
    ) {
        // Trials that used every parameter of the group, in trial order.
        let coords = |t: &Trial| -> Option<Vec<f64>> {
            group
                .iter()
                .map(|p| p.distribution.coordinate(t.params.get(&p.name)?))
                .collect()
        };
        // Evaluated trials, ranked: complete ones by their value, then
        // pruned ones, those stopped later first (values at different
        // resources do not compare: a trial stopped at the second rung passed
        // the first), then by the value they had when stopped (as Optuna
        // does). A stopped trial says less, but it was evaluated: it counts
        // towards the startup trials, or a study under ASHA stays random for
        // twice as long.
        let mut done: Vec<((bool, i64, f64), Vec<f64>)> = Vec::new();
        let mut rest: Vec<Vec<f64>> = Vec::new();
        for t in history {
            let Some(x) = coords(t) else { continue };
            let loss = t.loss(goal).filter(|l| !l.is_nan());
            match (t.state, loss) {
                (TrialState::Complete, Some(loss)) => done.push(((false, 0, loss), x)),
                (TrialState::Pruned, Some(loss)) => {
                    let reached = t.intermediate.keys().next_back().copied().unwrap_or(0);
                    done.push(((true, -reached, loss), x))
                }
                (TrialState::Complete, None) | (TrialState::Failed, _) => {}
                // Running trials (and pruned ones without a value) count
                // as not good.
                (TrialState::Pruned, None) | (TrialState::Running, _) => rest.push(x),
            }
        }
        if done.len() < self.startup_trials {
            for p in group {
                chosen.insert(
                    p.name.clone(),
                    sample_uniform(&p.distribution, &mut self.rng),
                );
            }
            return;
        }
        let n_below = gamma(done.len() + rest.len()).max(1).min(done.len());
        let mut order: Vec<usize> = (0..done.len()).collect();
        order.sort_by(|a, b| {
            let (x, y) = (done[*a].0, done[*b].0);
            (x.0, x.1)
                .cmp(&(y.0, y.1))
                .then(x.2.total_cmp(&y.2))
                .then(a.cmp(b))
        });
        // The good trials in trial order (the order the kernels are drawn
        // from), each with its rank.
        let mut rank = vec![None; done.len()];
        for (r, &i) in order[..n_below].iter().enumerate() {
            rank[i] = Some(r);
        }
        let is_below: Vec<bool> = rank.iter().map(Option::is_some).collect();
        let below_ranks: Vec<usize> = rank.iter().flatten().copied().collect();
        let below: Vec<Vec<f64>> = (0..done.len())
            .filter(|i| is_below[*i])
            .map(|i| done[i].1.clone())
            .collect();
        let mut above: Vec<Vec<f64>> = (0..done.len())
            .filter(|i| !is_below[*i])
            .map(|i| done[i].1.clone())
            .collect();
        above.extend(rest);
        let l = Parzen::new(group, &below, rank_weights(&below_ranks));
        let g = Parzen::new(group, &above, weights(above.len()));
        let mut best: Option<(f64, Vec<f64>)> = None;
        let mut terms = Vec::new();
        for _ in 0..self.candidates {
            let x = l.sample(&mut self.rng);
            let score = l.log_pdf(&x, &mut terms) - g.log_pdf(&x, &mut terms);
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, x));
            }
        }
        let (_, x) = best.expect("at least one candidate");
        for (p, xi) in group.iter().zip(x) {
            chosen.insert(p.name.clone(), p.distribution.value_at(xi));
        }
    }
}

impl Sampler for Tpe {
    fn sample(
        &mut self,
        space: &Space,
        history: &[Trial],
        goal: Goal,
    ) -> Option<BTreeMap<String, ParamValue>> {
        let mut chosen = BTreeMap::new();
        // Groups by condition, in the space's order (parents first).
        type Group<'a> = (Option<&'a (String, ParamValue)>, Vec<&'a Param>);
        let mut groups: Vec<Group> = Vec::new();
        for p in &space.params {
            match groups
                .iter_mut()
                .find(|(w, _)| self.multivariate && *w == p.when.as_ref())
            {
                Some((_, members)) => members.push(p),
                None => groups.push((p.when.as_ref(), vec![p])),
            }
        }
        for (when, members) in groups {
            let active = match when {
                None => true,
                Some((parent, value)) => chosen.get(parent) == Some(value),
            };
            if active {
                self.sample_group(&members, history, goal, &mut chosen);
            }
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn space(yaml: &str) -> Space {
        let spec: BTreeMap<String, Value> = serde_saphyr::from_str(yaml).unwrap();
        Space::parse(&spec, "tune.space").unwrap()
    }

    fn run(sampler: &mut dyn Sampler, space: &Space, n: usize, f: impl Fn(&[f64]) -> f64) -> f64 {
        let mut history: Vec<Trial> = Vec::new();
        for number in 0..n {
            let params = sampler.sample(space, &history, Goal::Minimize).unwrap();
            let x: Vec<f64> = space
                .params
                .iter()
                .map(|p| params[&p.name].as_f64().unwrap())
                .collect();
            history.push(Trial {
                number,
                params,
                state: TrialState::Complete,
                value: Some(f(&x)),
                intermediate: BTreeMap::new(),
            });
        }
        history
            .iter()
            .filter_map(|t| t.value)
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        assert!((norm_cdf(1.959_964) - 0.975).abs() < 1e-6);
    }

    #[test]
    fn good_trials_weigh_by_rank_with_a_mean_of_one() {
        // Trial order, not rank order: the second trial is the best.
        assert_eq!(rank_weights(&[2, 0, 1]), vec![0.5, 1.5, 1.0]);
        assert_eq!(rank_weights(&[0]), vec![1.0]);
    }

    #[test]
    fn a_trial_stopped_at_a_later_rung_ranks_above_earlier_stops() {
        // Nine trials stopped at the first rung with the best values, near
        // x = 0.9; one stopped at the second rung, with a worse value, at
        // x = 0.1. Values at different rungs do not compare: the one that
        // passed the first rung is the good trial (γ(10) = 1).
        let s = space("{ x: 'uniform(0, 1)' }");
        let pruned = |number: usize, x: f64, curve: &[(i64, f64)]| Trial {
            number,
            params: BTreeMap::from([("x".to_string(), ParamValue::Float(x))]),
            state: TrialState::Pruned,
            value: curve.last().map(|(_, v)| *v),
            intermediate: curve.iter().copied().collect(),
        };
        let mut history: Vec<Trial> = (0..9)
            .map(|i| pruned(i, 0.85 + 0.01 * i as f64, &[(50, 0.1)]))
            .collect();
        history.push(pruned(9, 0.1, &[(50, 0.5), (150, 0.4)]));
        let mut tpe = Tpe::new(3);
        let near: usize = (0..20)
            .map(|_| {
                let p = tpe.sample(&s, &history, Goal::Minimize).unwrap();
                usize::from(p["x"].as_f64().unwrap() < 0.5)
            })
            .sum();
        assert!(near >= 15, "{near} of 20 samples near the later stop");
    }

    #[test]
    fn tpe_beats_random_on_a_quadratic() {
        let s = space("{ x: 'uniform(-10, 10)', y: 'uniform(-10, 10)' }");
        let f = |x: &[f64]| (x[0] - 3.0).powi(2) + (x[1] + 1.0).powi(2);
        let (mut tpe_wins, seeds) = (0, 5);
        for seed in 0..seeds {
            let t = run(&mut Tpe::new(seed), &s, 60, f);
            let r = run(&mut Random::new(seed), &s, 60, f);
            tpe_wins += usize::from(t < r);
        }
        assert!(tpe_wins >= 4, "TPE won {tpe_wins} of {seeds}");
    }

    #[test]
    fn pruned_trials_end_the_startup_and_rank_after_complete_ones() {
        let s = space("{ x: 'uniform(0, 1)' }");
        let trial = |number: usize, x: f64, state: TrialState, value: f64| Trial {
            number,
            params: BTreeMap::from([("x".to_string(), ParamValue::Float(x))]),
            state,
            value: Some(value),
            intermediate: BTreeMap::new(),
        };
        // Ten trials, all stopped by a scheduler; the best were near 0.1.
        let pruned: Vec<Trial> = (0..10)
            .map(|i| {
                let x = 0.05 + 0.1 * i as f64;
                trial(i, x, TrialState::Pruned, (x - 0.1).abs())
            })
            .collect();
        let mean_draw = |history: &[Trial]| {
            let mut tpe = Tpe::new(11);
            (0..40)
                .map(|_| {
                    tpe.sample(&s, history, Goal::Minimize).unwrap()["x"]
                        .as_f64()
                        .unwrap()
                })
                .sum::<f64>()
                / 40.0
        };
        // Past the startup, TPE draws near the best of them, not uniformly.
        assert!(mean_draw(&pruned) < 0.3, "{}", mean_draw(&pruned));
        // A complete trial ranks before every pruned one, whatever its value.
        let mut history = pruned.clone();
        history.push(trial(10, 0.9, TrialState::Complete, 5.0));
        history.push(trial(11, 0.92, TrialState::Complete, 6.0));
        assert!(mean_draw(&history) > 0.6, "{}", mean_draw(&history));
    }

    #[test]
    fn conditional_parameters_appear_only_when_their_parent_allows() {
        let s = space(
            "{ kind: 'choice(a, b)', x: { type: uniform, low: 0, high: 1, when: { kind: a } } }",
        );
        let mut tpe = Tpe::new(3);
        let mut history = Vec::new();
        for number in 0..40 {
            let params = tpe.sample(&s, &history, Goal::Minimize).unwrap();
            let is_a = params["kind"] == ParamValue::Text("a".into());
            assert_eq!(params.contains_key("x"), is_a, "{params:?}");
            let value = if is_a {
                params["x"].as_f64().unwrap()
            } else {
                0.5
            };
            history.push(Trial {
                number,
                params,
                state: TrialState::Complete,
                value: Some(value),
                intermediate: BTreeMap::new(),
            });
        }
    }

    #[test]
    fn grid_walks_every_point_once_then_stops() {
        let s = space("{ a: 'choice(1, 2)', b: 'int(0, 2)', c: 'loguniform(0.01, 1)' }");
        let mut grid = Grid { points: 3 };
        let points = grid.grid(&s);
        assert_eq!(points.len(), 2 * 3 * 3);
        let c: Vec<f64> = points[..3]
            .iter()
            .map(|p| p["c"].as_f64().unwrap())
            .collect();
        assert!(
            (c[0] - 0.01).abs() < 1e-12 && (c[1] - 0.1).abs() < 1e-9 && (c[2] - 1.0).abs() < 1e-12
        );
        let mut history = Vec::new();
        while let Some(params) = grid.sample(&s, &history, Goal::Minimize) {
            history.push(Trial {
                number: history.len(),
                params,
                state: TrialState::Complete,
                value: Some(0.0),
                intermediate: BTreeMap::new(),
            });
        }
        assert_eq!(history.len(), 18);
    }
}
