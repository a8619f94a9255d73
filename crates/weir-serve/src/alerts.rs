//! Monitors: conditions on a monitoring check that, held for N checks in a
//! row, fire an alert whose actions are a log line, a signed webhook and a
//! retraining run whose model can roll out as a canary.
//!
//! ```yaml
//! monitors:
//!   - name: flights-inputs
//!     endpoint: flights
//!     window: 1h          # the requests each check looks at
//!     every: 1m           # how often it checks
//!     when: ["feature_drift_share > 0.3", "online_auc < 0.7"]   # any of
//!     for: 2              # checks in a row
//!     actions:
//!       - log
//!       - webhook: { url: "https://hooks.example/weir", secret_env: WEIR_ALERT_SECRET }
//!       - retrain:
//!           pipeline: retrain.yaml
//!           params: { since: "${window_start}" }
//!           deploy: { strategy: canary, steps: [25, 100], interval: 1m }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::monitor::{Report, VersionReport};
use crate::ServeError;

fn bad(file: &Path, message: impl std::fmt::Display) -> ServeError {
    ServeError::BadRequest(format!("{}: {message}", file.display()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    monitors: Vec<RawMonitor>,
    /// Read by `slo::load`.
    #[serde(default)]
    #[allow(dead_code)]
    slos: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    name: String,
    endpoint: String,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    every: Option<String>,
    #[serde(default)]
    min_rows: Option<usize>,
    /// The share of drifted features that makes the inputs drift.
    #[serde(default)]
    share: Option<f64>,
    /// How each feature is judged: auto, ks, wasserstein or psi.
    #[serde(default)]
    method: Option<String>,
    when: Vec<String>,
    #[serde(default, rename = "for")]
    for_checks: Option<u32>,
    actions: Vec<RawAction>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAction {
    Named(String),
    Webhook { webhook: RawWebhook },
    Retrain { retrain: RawRetrain },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    /// The environment variable holding the HMAC key (never the key itself).
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetrain {
    pipeline: PathBuf,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    deploy: Option<RawDeploy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    steps: Option<Vec<i64>>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    max_error_rate: Option<f64>,
    #[serde(default)]
    min_requests: Option<u64>,
    #[serde(default)]
    max_accuracy_drop: Option<f64>,
    #[serde(default)]
    min_labels: Option<u64>,
    #[serde(default)]
    max_drift: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Monitor {
    pub name: String,
    pub target: String,
    pub window: Duration,
    pub every: Duration,
    pub min_rows: usize,
    pub share: f64,
    pub method: weir_data::Method,
    pub conditions: Vec<Condition>,
    pub for_checks: u32,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub metric: Metric,
    pub above: bool,
    pub inclusive: bool,
    pub value: f64,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    FeatureDriftShare,
    DatasetDrift,
    DriftedFeatures,
    MissingFeatures,
    PredictionPsi,
    OnlineAccuracy,
    OnlineAuc,
    OnlineRmse,
}

const METRICS: &[(&str, Metric)] = &[
    ("feature_drift_share", Metric::FeatureDriftShare),
    ("dataset_drift", Metric::DatasetDrift),
    ("drifted_features", Metric::DriftedFeatures),
    ("missing_features", Metric::MissingFeatures),
    ("prediction_psi", Metric::PredictionPsi),
    ("online_accuracy", Metric::OnlineAccuracy),
    ("online_auc", Metric::OnlineAuc),
    ("online_rmse", Metric::OnlineRmse),
];

#[derive(Clone, Debug)]
pub enum Action {
    Log,
    Webhook(Webhook),
    Retrain(Retrain),
}

#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
}

#[derive(Clone, Debug)]
pub struct Retrain {
    pub pipeline: PathBuf,
    pub params: BTreeMap<String, String>,
    pub deploy: Option<(String, Vec<i64>, crate::rollout::Analysis)>,
}

fn duration(
    file: &Path,
    what: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ServeError> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                bad(
                    file,
                    format!("{what}: '{t}' is not a duration; write e.g. 30s, 5m or 1h"),
                )
            }),
    }
}

impl Condition {
    /// `METRIC > NUMBER` (or <, >=, <=); `dataset_drift` alone means
    /// the inputs as a whole drifted.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let names = || {
            METRICS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (name, op, value) = match words.as_slice() {
            [name] => (*name, ">=", "1"),
            [name, op, value] => (*name, *op, *value),
            _ => {
                return Err(format!(
                    "condition '{text}': write METRIC OP NUMBER, e.g. 'feature_drift_share > 0.3'"
                ))
            }
        };
        let metric = METRICS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!(
                    "condition '{text}': unknown metric '{name}'; use one of {}",
                    names()
                )
            })?;
        let (above, inclusive) = match op {
            ">" => (true, false),
            ">=" => (true, true),
            "<" => (false, false),
            "<=" => (false, true),
            _ => {
                return Err(format!(
                    "condition '{text}': unknown comparison '{op}'; use >, >=, < or <="
                ))
            }
        };
        let value: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("condition '{text}': '{value}' is not a number"))?;
        Ok(Condition {
            metric,
            above,
            inclusive,
            value,
            text: text.to_string(),
        })
    }

    /// The metric's value in a check, when the check measured it.
    pub fn measure(&self, v: &VersionReport) -> Option<f64> {
        let drift = v.drift.as_ref();
        match self.metric {
            Metric::FeatureDriftShare => drift.map(|d| d.drifted_share),
            Metric::DatasetDrift => drift.map(|d| f64::from(u8::from(d.dataset_drift))),
            Metric::DriftedFeatures => drift.map(|d| d.drifted_columns as f64),
            Metric::MissingFeatures => Some(v.missing.len() as f64),
            Metric::PredictionPsi => v.prediction_psi,
            Metric::OnlineAccuracy => v.online.accuracy,
            Metric::OnlineAuc => v.online.auc,
            Metric::OnlineRmse => v.online.rmse,
        }
    }

    pub fn holds(&self, x: f64) -> bool {
        match (self.above, self.inclusive) {
            (true, false) => x > self.value,
            (true, true) => x >= self.value,
            (false, false) => x < self.value,
            (false, true) => x <= self.value,
        }
    }
}

/// Reads a monitors file; paths in it are relative to the file.
pub fn load(file: &Path) -> Result<Vec<Monitor>, ServeError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| bad(file, format!("cannot read it: {e}")))?;
    let raw: RawFile = match file.extension().and_then(|e| e.to_str()) {
        // weir.toml's `[[monitors]]` tables, beside its other keys.
        Some("toml") => {
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| bad(file, e.message().to_string()))?;
            let monitors = table
                .remove("monitors")
                .unwrap_or(toml::Value::Array(Vec::new()));
            RawFile {
                monitors: monitors
                    .try_into()
                    .map_err(|e: toml::de::Error| bad(file, e.message().to_string()))?,
                slos: None,
            }
        }
        _ => serde_saphyr::from_str(&text).map_err(|e| bad(file, e))?,
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for m in raw.monitors {
        let at = |message: String| bad(file, format!("monitor '{}': {message}", m.name));
        if out.iter().any(|o: &Monitor| o.name == m.name) {
            return Err(at("the name is used twice".into()));
        }
        if m.when.is_empty() {
            return Err(at("'when' is empty; give at least one condition".into()));
        }
        let conditions = m
            .when
            .iter()
            .map(|c| Condition::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        let share = m.share.unwrap_or(weir_data::DATASET_SHARE);
        if !(0.0..=1.0).contains(&share) {
            return Err(at(format!("share {share} is not between 0 and 1")));
        }
        let method = match &m.method {
            None => weir_data::Method::Auto,
            Some(text) => text.parse().map_err(at)?,
        };
        let mut actions = Vec::new();
        for a in m.actions {
            actions.push(match a {
                RawAction::Named(n) if n == "log" => Action::Log,
                RawAction::Named(n) => {
                    return Err(at(format!(
                        "unknown action '{n}'; use log, webhook: {{...}} or retrain: {{...}}"
                    )))
                }
                RawAction::Webhook { webhook: w } => {
                    if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                        return Err(at(format!("webhook url '{}' is not an http(s) URL", w.url)));
                    }
                    let secret = match &w.secret_env {
                        None => None,
                        Some(var) => Some(std::env::var(var).map_err(|_| {
                            at(format!(
                                "webhook secret_env: the environment variable {var} is not set"
                            ))
                        })?),
                    };
                    Action::Webhook(Webhook {
                        url: w.url,
                        secret,
                        timeout: duration(
                            file,
                            "webhook timeout",
                            w.timeout.as_deref(),
                            Duration::from_secs(5),
                        )?,
                        retries: w.retries.unwrap_or(3),
                        backoff: duration(
                            file,
                            "webhook backoff",
                            w.backoff.as_deref(),
                            Duration::from_millis(500),
                        )?,
                    })
                }
                RawAction::Retrain { retrain: r } => {
                    let pipeline = dir.join(&r.pipeline);
                    if !pipeline.is_file() {
                        return Err(at(format!(
                            "retrain pipeline {} does not exist",
                            pipeline.display()
                        )));
                    }
                    let deploy = match r.deploy {
                        None => None,
                        Some(d) => {
                            let analysis = crate::rollout::Analysis {
                                interval: duration(
                                    file,
                                    "deploy interval",
                                    d.interval.as_deref(),
                                    Duration::from_secs(30),
                                )?,
                                max_error_rate: d.max_error_rate.unwrap_or(0.01),
                                max_p99: None,
                                min_requests: d.min_requests.unwrap_or(20),
                                max_accuracy_drop: d.max_accuracy_drop,
                                min_labels: d.min_labels.unwrap_or(20),
                                max_drift: d.max_drift,
                            };
                            let strategy = d.strategy.unwrap_or_else(|| "canary".into());
                            if !crate::rollout::STRATEGIES.contains(&strategy.as_str()) {
                                return Err(at(format!(
                                    "deploy strategy '{strategy}' is unknown; use one of {}",
                                    crate::rollout::STRATEGIES.join(", ")
                                )));
                            }
                            Some((
                                strategy,
                                d.steps.unwrap_or_else(|| vec![5, 25, 50, 100]),
                                analysis,
                            ))
                        }
                    };
                    Action::Retrain(Retrain {
                        pipeline,
                        params: r.params,
                        deploy,
                    })
                }
            });
        }
        if actions.is_empty() {
            return Err(at("'actions' is empty; give log, webhook or retrain".into()));
        }
        out.push(Monitor {
            target: m.endpoint,
            window: duration(
                file,
                "window",
                m.window.as_deref(),
                Duration::from_secs(3600),
            )?,
            every: duration(file, "every", m.every.as_deref(), Duration::from_secs(60))?,
            min_rows: m.min_rows.unwrap_or(crate::monitor::MIN_ROWS),
            share,
            method,
            conditions,
            for_checks: m.for_checks.unwrap_or(1).max(1),
            actions,
            name: m.name,
        });
    }
    Ok(out)
}

/// Where a monitor stands between checks.
#[derive(Default)]
pub struct MonitorState {
    pub last_check: Option<Instant>,
    /// Breaching checks in a row.
    pub streak: u32,
    /// Fired for the current breach: no new alert until a check passes.
    pub firing: bool,
}

/// What a check concluded for a monitor.
pub struct Verdict {
    /// `ok`, `breached`, `fired` or `not_enough_data`.
    pub status: &'static str,
    pub reason: String,
}

/// Judges one check, moving the monitor's streak.
pub fn judge(monitor: &Monitor, state: &mut MonitorState, report: &Report) -> Verdict {
    let Some(v) = report.main() else {
        state.streak = 0;
        return Verdict {
            status: "not_enough_data",
            reason: format!(
                "not enough data: no requests logged for {} in the window",
                report.target
            ),
        };
    };
    let breached: Vec<String> = monitor
        .conditions
        .iter()
        .filter_map(|c| {
            let x = c.measure(v)?;
            c.holds(x).then(|| format!("{} (is {})", c.text, round(x)))
        })
        .collect();
    if v.status == "not_enough_data" && breached.is_empty() {
        // Too few rows to say there is no drift either: the streak breaks.
        state.streak = 0;
        return Verdict {
            status: "not_enough_data",
            reason: format!(
                "not enough data: {} rows of {}:{} in the window, {} needed",
                v.rows, report.model, v.version, monitor.min_rows
            ),
        };
    }
    if breached.is_empty() {
        state.streak = 0;
        state.firing = false;
        return Verdict {
            status: "ok",
            reason: format!(
                "{} rows of {}:{}; no condition holds",
                v.rows, report.model, v.version
            ),
        };
    }
    state.streak += 1;
    let reason = format!(
        "{}:{} on {}: {} ({} of {} checks)",
        report.model,
        v.version,
        report.target,
        breached.join("; "),
        state.streak.min(monitor.for_checks),
        monitor.for_checks
    );
    if state.streak >= monitor.for_checks && !state.firing {
        state.firing = true;
        return Verdict {
            status: "fired",
            reason,
        };
    }
    Verdict {
        status: "breached",
        reason,
    }
}

fn round(x: f64) -> String {
    format!("{:.4}", x)
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

/// The alert's payload: what a webhook receives.
pub fn payload(
    monitor: &Monitor,
    alert_id: &str,
    fired_at: i64,
    reason: &str,
    report: &Report,
) -> Value {
    let main = report.main();
    json!({
        "alert_id": alert_id,
        "monitor": monitor.name,
        "target": report.target,
        "model": report.model,
        "version": main.map(|v| v.version),
        "fired_at": fired_at,
        "reason": reason,
        "window": {"since": report.since, "until": report.until},
        "rows": main.map(|v| v.rows),
        "drifted_share": main.and_then(|v| v.drift.as_ref()).map(|d| d.drifted_share),
        "drifted_features": main
            .and_then(|v| v.drift.as_ref())
            .map(|d| d.columns.iter().filter(|c| c.drifted).map(|c| c.column.clone()).collect::<Vec<_>>()),
        "online": main.map(|v| json!(v.online)),
    })
}

/// The signature header's value: HMAC-SHA256 of the exact body.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs the alert, retrying timeouts, refused connections, 429 and 5xx
/// with doubling waits; returns what happened, attempt by attempt.
pub async fn deliver(hook: &Webhook, alert_id: &str, body: &Value) -> Value {
    let bytes = body.to_string().into_bytes();
    let client = match reqwest::Client::builder().timeout(hook.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            return json!({"action": "webhook", "url": hook.url, "status": "failed", "error": e.to_string()})
        }
    };
    let mut attempts = Vec::new();
    let mut wait = hook.backoff;
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        let mut request = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-weir-alert-id", alert_id)
            .body(bytes.clone());
        if let Some(secret) = &hook.secret {
            request = request.header("x-weir-signature", sign(secret, &bytes));
        }
        let (outcome, retry) = match request.send().await {
            Ok(r) if r.status().is_success() => {
                attempts.push(r.status().as_u16().to_string());
                return json!({"action": "webhook", "url": hook.url, "status": "delivered", "attempts": attempts});
            }
            Ok(r) => {
                let code = r.status().as_u16();
                (code.to_string(), code == 429 || code >= 500)
            }
            Err(e) if e.is_timeout() => (format!("timed out after {:?}", hook.timeout), true),
            Err(e) => (e.to_string(), true),
        };
        attempts.push(outcome);
        if !retry {
            break;
        }
    }
    json!({"action": "webhook", "url": hook.url, "status": "failed", "attempts": attempts})
}

/// `${window_start}` and friends in a retraining run's params.
pub fn expand(text: &str, report: &Report, alert_id: &str) -> String {
    let iso = |ms: i64| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
        )
        .to_string()
    };
    text.replace("${window_start_ms}", &report.since.to_string())
        .replace("${window_end_ms}", &report.until.to_string())
        .replace("${window_start}", &iso(report.since))
        .replace("${window_end}", &iso(report.until))
        .replace("${target}", &report.target)
        .replace("${alert_id}", alert_id)
}

/// Runs the retraining pipeline with this binary (`weir run`) against the
/// same store and, when its model has a new version and a deploy policy is
/// given, starts that version's rollout on the endpoint.
pub async fn retrain(
    store: &weir_store::Store,
    artifacts_location: &str,
    retrain: &Retrain,
    monitor: &Monitor,
    report: &Report,
    alert_id: &str,
) -> Value {
    let mut out = json!({"action": "retrain", "pipeline": retrain.pipeline.display().to_string()});
    let before = store
        .model_version(&report.model, None)
        .await
        .map(|mv| mv.version)
        .unwrap_or(0);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            out["status"] = "failed".into();
            out["error"] = format!("cannot find the weir binary: {e}").into();
            return out;
        }
    };
    let mut command = tokio::process::Command::new(exe);
    command.arg("run").arg(&retrain.pipeline).arg("--json");
    for (k, v) in &retrain.params {
        command
            .arg("-p")
            .arg(format!("{k}={}", expand(v, report, alert_id)));
    }
    command
        .env("WEIR_DB", store.url())
        .env("WEIR_ARTIFACTS", artifacts_location)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = match command.output().await {
        Ok(o) => o,
        Err(e) => {
            out["status"] = "failed".into();
            out["error"] = format!("cannot start weir run: {e}").into();
            return out;
        }
    };
    out["seconds"] = json!(started.elapsed().as_secs_f64());
    if let Ok(run) = serde_json::from_slice::<Value>(&output.stdout) {
        out["run_id"] = run["run_id"].clone();
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        out["status"] = "failed".into();
        out["error"] = format!("weir run exited with {}: {}", output.status, tail.trim()).into();
        return out;
    }
    let after = match store.model_version(&report.model, None).await {
        Ok(mv) => mv.version,
        Err(e) => {
            out["status"] = "failed".into();
            out["error"] =
                format!("the run succeeded but {} cannot be read: {e}", report.model).into();
            return out;
        }
    };
    if after <= before {
        out["status"] = "no_new_version".into();
        out["error"] = format!(
            "the run registered no new version of {} (the latest is still {before}); does the pipeline end in weir/register?",
            report.model
        )
        .into();
        return out;
    }
    out["version"] = after.into();
    out["status"] = "registered".into();
    let Some((strategy, steps, analysis)) = &retrain.deploy else {
        return out;
    };
    let current = match store.deployment(&report.target).await {
        Ok(d) => Some(d),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            out["status"] = "failed".into();
            out["error"] = format!("cannot read endpoint {}: {e}", report.target).into();
            return out;
        }
    };
    let started = crate::rollout::start(
        current.as_ref(),
        &report.target,
        &report.model,
        after,
        strategy,
        steps.clone(),
        analysis,
    );
    let saved = match started {
        Ok((next, what)) => store
            .save_deployment(
                &next,
                "deployed",
                &format!(
                    "{what} (retrained by monitor {}, alert {alert_id})",
                    monitor.name
                ),
            )
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match saved {
        Ok(d) => {
            out["status"] = "deployed".into();
            out["rollout"] =
                json!({"endpoint": d.endpoint, "strategy": d.strategy, "phase": d.phase});
        }
        Err(e) => {
            out["status"] = "failed".into();
            out["error"] = format!(
                "registered {}:{after} but cannot start its rollout: {e}",
                report.model
            )
            .into();
        }
    }
    out
}

/// Everything the actions need, shared with their task.
pub struct Firing {
    pub monitor: Arc<Monitor>,
    pub alert_id: String,
    pub fired_at: i64,
    pub reason: String,
    pub report: Report,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{Online, VersionReport};

    fn report(share: Option<f64>, rows: usize, status: &str) -> Report {
        let drift = share.map(|s| weir_data::Drift {
            columns: Vec::new(),
            drifted_columns: 0,
            drifted_share: s,
            share_threshold: 0.5,
            dataset_drift: s >= 0.5,
        });
        Report {
            target: "web".into(),
            model: "m".into(),
            since: 0,
            until: 1,
            window_s: 1.0,
            versions: vec![VersionReport {
                version: 1,
                rows,
                requests: rows,
                status: status.into(),
                drift,
                missing: Vec::new(),
                all_null: Vec::new(),
                unseen: Default::default(),
                prediction_psi: None,
                online: Online::default(),
                reference: None,
                current: None,
            }],
        }
    }

    fn monitor(when: &str, for_checks: u32) -> Monitor {
        Monitor {
            name: "m".into(),
            target: "web".into(),
            window: Duration::from_secs(60),
            every: Duration::from_secs(1),
            min_rows: 100,
            share: 0.5,
            method: weir_data::Method::Auto,
            conditions: vec![Condition::parse(when).unwrap()],
            for_checks,
            actions: vec![Action::Log],
        }
    }

    #[test]
    fn conditions_parse_and_compare() {
        let c = Condition::parse("online_auc < 0.7").unwrap();
        assert!(c.holds(0.69) && !c.holds(0.7));
        let c = Condition::parse("feature_drift_share >= 0.5").unwrap();
        assert!(c.holds(0.5) && !c.holds(0.49));
        assert!(Condition::parse("dataset_drift").unwrap().holds(1.0));
        for (bad, says) in [
            ("auc < 1", "unknown metric 'auc'"),
            ("online_auc ~ 1", "unknown comparison '~'"),
            ("online_auc < x", "'x' is not a number"),
            ("online_auc <", "write METRIC OP NUMBER"),
        ] {
            let e = Condition::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn an_alert_fires_once_after_n_breaches_in_a_row_and_rearms_when_clear() {
        let m = monitor("feature_drift_share > 0.3", 2);
        let mut state = MonitorState::default();
        let status = |state: &mut MonitorState, r: &Report| judge(&m, state, r).status;
        assert_eq!(
            status(&mut state, &report(Some(0.6), 500, "ok")),
            "breached"
        );
        // A window without enough data breaks the streak.
        assert_eq!(
            status(&mut state, &report(None, 5, "not_enough_data")),
            "not_enough_data"
        );
        assert_eq!(
            status(&mut state, &report(Some(0.6), 500, "ok")),
            "breached"
        );
        assert_eq!(status(&mut state, &report(Some(0.6), 500, "ok")), "fired");
        assert_eq!(
            status(&mut state, &report(Some(0.6), 500, "ok")),
            "breached"
        );
        assert_eq!(status(&mut state, &report(Some(0.1), 500, "ok")), "ok");
        assert_eq!(
            status(&mut state, &report(Some(0.6), 500, "ok")),
            "breached"
        );
        assert_eq!(status(&mut state, &report(Some(0.6), 500, "ok")), "fired");
        let empty = Report {
            versions: Vec::new(),
            ..report(None, 0, "ok")
        };
        let v = judge(&m, &mut state, &empty);
        assert_eq!(v.status, "not_enough_data");
        assert!(v.reason.contains("not enough data"), "{}", v.reason);
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
