//! The sampler benchmark of ../shared/peers/optuna_hpo.sh, against Weir's
//! samplers: the same objectives (Branin, Hartmann-6), trial counts and seed
//! numbers, an in-memory history, one trial at a time. Prints one JSON line
//! with the same keys as the peer script. Run by bench/hpo_compare.sh.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};
use weir_tune::{Goal, Random, Sampler, Space, Tpe, Trial, TrialState};

fn branin(x: &[f64]) -> f64 {
    let pi = std::f64::consts::PI;
    let (b, c, r, s, t) = (5.1 / (4.0 * pi * pi), 5.0 / pi, 6.0, 10.0, 1.0 / (8.0 * pi));
    (x[1] - b * x[0] * x[0] + c * x[0] - r).powi(2) + s * (1.0 - t) * x[0].cos() + s
}

const H_A: [[f64; 6]; 4] = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
];
const H_P: [[f64; 6]; 4] = [
    [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
    [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
    [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
    [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
];
const H_ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];

fn hartmann6(x: &[f64]) -> f64 {
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..6)
                .map(|j| H_A[i][j] * (x[j] - H_P[i][j] * 1e-4).powi(2))
                .sum();
            H_ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>()
}

fn space(spec: &str) -> Space {
    let map: BTreeMap<String, Value> = serde_json::from_str(spec).unwrap();
    Space::parse(&map, "space").unwrap()
}

/// Completion times (s since start) and best-so-far values per trial, and CPU s.
fn run(
    sampler: &mut dyn Sampler,
    space: &Space,
    f: fn(&[f64]) -> f64,
    n: usize,
) -> (Vec<f64>, Vec<f64>, f64) {
    let mut history: Vec<Trial> = Vec::with_capacity(n);
    let (mut stamps, mut best) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut best_value = f64::INFINITY;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for number in 0..n {
        let params = sampler.sample(space, &history, Goal::Minimize).unwrap();
        let x: Vec<f64> = space
            .params
            .iter()
            .map(|p| params[&p.name].as_f64().unwrap())
            .collect();
        let value = f(&x);
        history.push(Trial {
            number,
            params,
            state: TrialState::Complete,
            value: Some(value),
            intermediate: BTreeMap::new(),
        });
        best_value = best_value.min(value);
        stamps.push(t0.elapsed().as_secs_f64());
        best.push(best_value);
    }
    (stamps, best, cpu_seconds() - cpu0)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let (os, qs, nt) = (
        env("OVERHEAD_SEEDS", 3),
        env("QUALITY_SEEDS", 5),
        env("OVERHEAD_TRIALS", 1000),
    );
    type Objective = (&'static str, &'static str, fn(&[f64]) -> f64, f64);
    type MakeSampler = fn(u64) -> Box<dyn Sampler>;
    let objectives: [Objective; 2] = [
        (
            "branin",
            r#"{"x1": "uniform(-5, 10)", "x2": "uniform(0, 15)"}"#,
            branin,
            0.397887,
        ),
        (
            "hartmann6",
            r#"{"x0": "uniform(0, 1)", "x1": "uniform(0, 1)", "x2": "uniform(0, 1)",
                "x3": "uniform(0, 1)", "x4": "uniform(0, 1)", "x5": "uniform(0, 1)"}"#,
            hartmann6,
            -3.32237,
        ),
    ];
    let samplers: [(&str, MakeSampler); 2] = [
        ("tpe", |s| Box::new(Tpe::new(s))),
        ("random", |s| Box::new(Random::new(s))),
    ];
    let mut overhead = serde_json::Map::new();
    let mut quality = serde_json::Map::new();
    for (sname, make) in samplers {
        for (oname, spec, f, fmin) in objectives {
            let space = space(spec);
            let key = format!("{sname}/{oname}");
            let (mut first100, mut all, mut last100, mut cpu) = (vec![], vec![], vec![], vec![]);
            for seed in 0..os as u64 {
                let (st, _, c) = run(make(seed).as_mut(), &space, f, nt);
                first100.push(st[99.min(nt - 1)] / 100f64.min(nt as f64));
                all.push(st[nt - 1] / nt as f64);
                if nt > 100 {
                    last100.push((st[nt - 1] - st[nt - 101]) / 100.0);
                }
                cpu.push(c / nt as f64);
            }
            let mean_all = median(all);
            overhead.insert(
                key.clone(),
                json!({
                    "ms_per_trial_first100": round(median(first100) * 1e3, 4),
                    format!("ms_per_trial_mean_{nt}"): round(mean_all * 1e3, 4),
                    format!("ms_per_trial_trials_{}_{nt}", nt.saturating_sub(99)): round(median(last100) * 1e3, 4),
                    format!("cpu_ms_per_trial_mean_{nt}"): round(median(cpu) * 1e3, 4),
                    format!("total_s_{nt}"): round(mean_all * nt as f64, 3),
                }),
            );
            let (mut b50, mut b200) = (vec![], vec![]);
            let base = env("QUALITY_SEED_BASE", 100) as u64;
            for seed in base..base + qs as u64 {
                let (_, best, _) = run(make(seed).as_mut(), &space, f, 200);
                b50.push(best[49]);
                b200.push(best[199]);
            }
            quality.insert(
                key.clone(),
                json!({
                    "known_min": fmin,
                    "best_after_50_median": round(median(b50.clone()), 5),
                    "best_after_200_median": round(median(b200.clone()), 5),
                    "best_after_50_all": b50.iter().map(|x| round(*x, 4)).collect::<Vec<_>>(),
                    "best_after_200_all": b200.iter().map(|x| round(*x, 4)).collect::<Vec<_>>(),
                }),
            );
            eprintln!("{key} {} {}", overhead[&key], quality[&key]);
        }
    }
    println!(
        "{}",
        json!({
            "script": "weir_hpo",
            "overhead": overhead,
            "quality": quality,
            "settings": {"overhead_seeds": os, "quality_seeds": qs, "storage": "in-memory",
                         "tpe": "weir_tune::Tpe (multivariate, good trials weighted by rank, 10 startup trials, 24 candidates)"},
        })
    );
}
