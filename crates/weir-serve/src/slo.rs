//! Service level objectives per endpoint, with error budgets and burn rates
//! as the Google SRE workbook computes them. Every replica counts its
//! endpoint requests per minute (total, failed, slower than the latency
//! objective's threshold) and adds them to the store; the budget and burn
//! rates are read back from there, so they cover every replica and survive
//! restarts. A fast burn (both the 1 h and the 5 min windows over 14.4x)
//! during a rollout rolls the rollout back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ServeError;

/// One endpoint's objectives.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    pub endpoint: String,
    /// Share of requests that must succeed (0.999 for "99.9").
    pub availability: Option<f64>,
    /// Requests must take at most this long, 99 % of them.
    pub latency_p99: Option<Duration>,
    /// The window the error budget is spent over.
    pub window: Duration,
}

/// The share of requests the latency objective lets be slower.
const LATENCY_OBJECTIVE: f64 = 0.99;
/// The SRE workbook's multiwindow, multi-burn-rate alerts: (long window,
/// short window, burn rate) for the fast page and the slow ticket.
pub const FAST_BURN: (Duration, Duration, f64) =
    (Duration::from_secs(3600), Duration::from_secs(300), 14.4);
pub const SLOW_BURN: (Duration, Duration, f64) = (
    Duration::from_secs(6 * 3600),
    Duration::from_secs(1800),
    6.0,
);
/// Minute rows are kept a little longer than the longest window allowed.
pub const MAX_WINDOW: Duration = Duration::from_secs(35 * 86_400);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    endpoint: String,
    #[serde(default)]
    availability: Option<f64>,
    #[serde(default)]
    latency_p99: Option<String>,
    #[serde(default)]
    window: Option<String>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    slos: Vec<RawSlo>,
}

fn bad(file: &Path, message: impl std::fmt::Display) -> ServeError {
    ServeError::BadRequest(format!("{}: {message}", file.display()))
}

/// Reads the `slos:` of a monitors file (or weir.toml's `[[slos]]`).
pub fn load(file: &Path) -> Result<Vec<Slo>, ServeError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| bad(file, format!("cannot read it: {e}")))?;
    let raw: Vec<RawSlo> = match file.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| bad(file, e.message().to_string()))?;
            table
                .remove("slos")
                .unwrap_or(toml::Value::Array(Vec::new()))
                .try_into()
                .map_err(|e: toml::de::Error| bad(file, e.message().to_string()))?
        }
        _ => {
            let raw: RawFile = serde_saphyr::from_str(&text).map_err(|e| bad(file, e))?;
            raw.slos
        }
    };
    let mut out: Vec<Slo> = Vec::new();
    for r in raw {
        let at = |m: String| bad(file, format!("slo of endpoint '{}': {m}", r.endpoint));
        if out.iter().any(|s| s.endpoint == r.endpoint) {
            return Err(at(
                "the endpoint has two SLOs; give one with both objectives".into(),
            ));
        }
        let availability = match r.availability {
            None => None,
            Some(a) if a > 0.0 && a < 100.0 => Some(a / 100.0),
            Some(a) => {
                return Err(at(format!(
                    "availability {a} is not a percentage below 100 (e.g. 99.9)"
                )))
            }
        };
        let latency_p99 = match &r.latency_p99 {
            None => None,
            Some(t) => Some(
                humantime::parse_duration(t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        at(format!("latency_p99 '{t}' is not a duration such as 50ms"))
                    })?,
            ),
        };
        if availability.is_none() && latency_p99.is_none() {
            return Err(at(
                "give an objective: availability (e.g. 99.9) and/or latency_p99 (e.g. 50ms)".into(),
            ));
        }
        let window = match &r.window {
            None => Duration::from_secs(30 * 86_400),
            Some(w) => humantime::parse_duration(w)
                .ok()
                .filter(|d| {
                    *d >= Duration::from_secs(3600)
                        && *d <= MAX_WINDOW - Duration::from_secs(5 * 86_400)
                })
                .ok_or_else(|| at(format!("window '{w}' must be a duration from 1h to 30d")))?,
        };
        out.push(Slo {
            endpoint: r.endpoint.clone(),
            availability,
            latency_p99,
            window,
        });
    }
    Ok(out)
}

/// One minute of one endpoint's requests (summed over replicas).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Minute {
    pub total: u64,
    pub failed: u64,
    pub slow: u64,
}

/// How one objective stands.
#[derive(Clone, Debug, Serialize)]
pub struct Objective {
    /// `availability` or `latency`.
    pub sli: String,
    /// The target share of good requests (0.999).
    pub target: f64,
    pub requests: u64,
    pub bad: u64,
    /// Share of the window's error budget left (negative once overspent).
    pub budget_remaining: f64,
    /// Burn rate per window (5m, 30m, 1h, 6h): the bad share over the
    /// share the objective allows. 1.0 spends the budget exactly in the window.
    pub burn: BTreeMap<String, f64>,
    /// ok, slow burn, fast burn or exhausted.
    pub state: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub endpoint: String,
    pub window_s: u64,
    pub objectives: Vec<Objective>,
}

impl Status {
    /// Why a rollout must stop, when an objective burns fast.
    pub fn fast_burn(&self) -> Option<String> {
        // Judged on the burn rates themselves: an exhausted budget that is
        // still burning fast is a fast burn too.
        let fast = |o: &&Objective| o.burn["1h"] > FAST_BURN.2 && o.burn["5m"] > FAST_BURN.2;
        self.objectives.iter().find(fast).map(|o| {
            format!(
                "SLO fast burn on {}: burn rate {:.1}x over 1h and {:.1}x over 5m (over {}x), {:.0}% of the error budget left",
                o.sli,
                o.burn["1h"],
                o.burn["5m"],
                FAST_BURN.2,
                o.budget_remaining * 100.0
            )
        })
    }
}

/// An indicator: its name, its target, and what counts as bad in a minute.
type Sli = (&'static str, Option<f64>, fn(&Minute) -> u64);

const WINDOWS: [(&str, u64); 4] = [("5m", 5), ("30m", 30), ("1h", 60), ("6h", 360)];

/// Judges `slo` on its per-minute counts (minute index -> counts), at the
/// minute `now_minute`.
pub fn status(slo: &Slo, minutes: &BTreeMap<i64, Minute>, now_minute: i64) -> Status {
    let sum = |span: u64, pick: fn(&Minute) -> u64| -> (u64, u64) {
        let from = now_minute - span as i64 + 1;
        minutes
            .range(from..=now_minute)
            .fold((0, 0), |(t, b), (_, m)| (t + m.total, b + pick(m)))
    };
    let mut objectives = Vec::new();
    let kinds: [Sli; 2] = [
        ("availability", slo.availability, |m| m.failed),
        ("latency", slo.latency_p99.map(|_| LATENCY_OBJECTIVE), |m| {
            m.slow
        }),
    ];
    for (sli, target, pick) in kinds {
        let Some(target) = target else {
            continue;
        };
        let allowed = 1.0 - target;
        let rate = |(total, bad): (u64, u64)| {
            if total == 0 {
                0.0
            } else {
                bad as f64 / total as f64 / allowed
            }
        };
        let burn: BTreeMap<String, f64> = WINDOWS
            .iter()
            .map(|(name, span)| (name.to_string(), rate(sum(*span, pick))))
            .collect();
        let (requests, bad) = sum(slo.window.as_secs() / 60, pick);
        let budget_remaining = 1.0 - rate((requests, bad));
        let state = if budget_remaining <= 0.0 && requests > 0 {
            "exhausted"
        } else if burn["1h"] > FAST_BURN.2 && burn["5m"] > FAST_BURN.2 {
            "fast burn"
        } else if burn["6h"] > SLOW_BURN.2 && burn["30m"] > SLOW_BURN.2 {
            "slow burn"
        } else {
            "ok"
        };
        objectives.push(Objective {
            sli: sli.into(),
            target,
            requests,
            bad,
            budget_remaining,
            burn,
            state: state.into(),
        });
    }
    Status {
        endpoint: slo.endpoint.clone(),
        window_s: slo.window.as_secs(),
        objectives,
    }
}

/// Reads the counts of `slo`'s endpoint and judges them now.
pub async fn check(store: &weir_store::Store, slo: &Slo) -> Result<Status, ServeError> {
    let now_minute = weir_core::now_ms() / 60_000;
    let since = now_minute - (slo.window.as_secs() / 60) as i64 + 1;
    let minutes = store
        .slo_minutes(&slo.endpoint, since)
        .await?
        .into_iter()
        .map(|(m, total, failed, slow)| {
            (
                m,
                Minute {
                    total: total as u64,
                    failed: failed as u64,
                    slow: slow as u64,
                },
            )
        })
        .collect();
    Ok(status(slo, &minutes, now_minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo() -> Slo {
        Slo {
            endpoint: "web".into(),
            availability: Some(0.999),
            latency_p99: Some(Duration::from_millis(50)),
            window: Duration::from_secs(30 * 86_400),
        }
    }

    #[test]
    fn burn_rates_follow_the_workbook() {
        let now = 1_000_000;
        let mut minutes = BTreeMap::new();
        // A quiet month: 1,000 requests a minute for 30 days, none bad...
        for m in (now - 30 * 1440 + 1)..=now {
            minutes.insert(
                m,
                Minute {
                    total: 1000,
                    failed: 0,
                    slow: 0,
                },
            );
        }
        let s = status(&slo(), &minutes, now);
        assert!(s
            .objectives
            .iter()
            .all(|o| o.state == "ok" && o.budget_remaining == 1.0));
        // ...then the last hour fails 2 % of requests: 20x the 0.1 % allowed.
        for m in (now - 59)..=now {
            minutes.insert(
                m,
                Minute {
                    total: 1000,
                    failed: 20,
                    slow: 0,
                },
            );
        }
        let s = status(&slo(), &minutes, now);
        let a = &s.objectives[0];
        assert_eq!(a.sli, "availability");
        assert!((a.burn["1h"] - 20.0).abs() < 1e-9 && (a.burn["5m"] - 20.0).abs() < 1e-9);
        assert_eq!(a.state, "fast burn");
        // An hour of 20x spends 20/720 of a 30-day budget.
        assert!(
            (a.budget_remaining - (1.0 - 20.0 / 720.0)).abs() < 1e-9,
            "{}",
            a.budget_remaining
        );
        assert!(s.fast_burn().unwrap().contains("availability"));
        assert_eq!(s.objectives[1].state, "ok");
        // Only the last five minutes bad: the long window keeps it from paging.
        let mut spike = BTreeMap::new();
        for m in (now - 59)..=now {
            let failed = if m > now - 5 { 100 } else { 0 };
            spike.insert(
                m,
                Minute {
                    total: 1000,
                    failed,
                    slow: 0,
                },
            );
        }
        let s = status(&slo(), &spike, now);
        assert!(s.objectives[0].burn["5m"] > FAST_BURN.2);
        assert!(s.objectives[0].burn["1h"] < FAST_BURN.2);
        assert_ne!(s.objectives[0].state, "fast burn");
    }

    #[test]
    fn bad_slos_are_named() {
        let dir = std::env::temp_dir().join(format!("weir-slo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.yaml");
        for (text, want) in [
            ("slos:\n  - endpoint: web\n    availability: 100\n", "not a percentage"),
            ("slos:\n  - endpoint: web\n", "give an objective"),
            ("slos:\n  - endpoint: web\n    latency_p99: fast\n", "not a duration"),
            ("slos:\n  - endpoint: web\n    availability: 99\n    window: 90d\n", "from 1h to 30d"),
            ("slos:\n  - endpoint: web\n    availability: 99\n  - endpoint: web\n    latency_p99: 5ms\n", "two SLOs"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = load(&file).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::write(&file, "monitors: []\nslos:\n  - endpoint: web\n    availability: 99.5\n    latency_p99: 20ms\n").unwrap();
        let s = load(&file).unwrap();
        assert_eq!(s[0].availability, Some(0.995));
        assert_eq!(s[0].latency_p99, Some(Duration::from_millis(20)));
    }
}
