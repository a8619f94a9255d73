//! `/metrics` in Prometheus text format: per model and version, requests by
//! protocol and status, their latency, and the rows each request scored.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    /// `v2` (Open Inference Protocol) or `invocations` (MLflow).
    protocol: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    /// `busy` (429: over the concurrency limit) or `timeout` (504).
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointCodeLabels {
    endpoint: String,
    version: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    endpoint: String,
    version: String,
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnlineLabels {
    endpoint: String,
    version: String,
    /// `accuracy`, `auc` or `rmse`.
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogLabels {
    /// `written` or `dropped`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    monitor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    endpoint: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    endpoint: String,
    version: String,
    /// `agree` or `disagree` with the stable version's answer.
    result: String,
}

/// One request's outcome, as the handlers report it.
pub(crate) struct Observation<'a> {
    /// Both empty when the request never reached a served version (an
    /// unknown model), so client-chosen names never become labels.
    pub model: &'a str,
    pub version: &'a str,
    pub protocol: &'static str,
    pub code: u16,
    pub elapsed: Duration,
    /// Rows scored; none when the request failed before scoring.
    pub rows: Option<usize>,
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VersionLabels, Histogram>,
    rows: Family<VersionLabels, Histogram>,
    loaded: Family<VersionLabels, Gauge>,
    rejected: Family<RejectLabels, Counter>,
    cache_hits: Family<VersionLabels, Counter>,
    model_calls: Family<VersionLabels, Histogram>,
    endpoint_requests: Family<EndpointCodeLabels, Counter>,
    endpoint_latency: Family<EndpointLabels, Histogram>,
    rollout_weight: Family<EndpointLabels, Gauge>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    prediction_drift: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    shadow: Family<ShadowLabels, Counter>,
    controller: Gauge,
    feature_drift: Family<FeatureLabels, Gauge<f64, AtomicU64>>,
    feature_drifted: Family<FeatureLabels, Gauge>,
    drift_share: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    online: Family<OnlineLabels, Gauge<f64, AtomicU64>>,
    logged: Family<LogLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    /// Requests answered (any status), for the cost per 1,000.
    answered: Arc<std::sync::atomic::AtomicU64>,
    cost: Gauge<f64, AtomicU64>,
    cost_per_1k: Gauge<f64, AtomicU64>,
    slo_budget: Family<SloLabels, Gauge<f64, AtomicU64>>,
    slo_burn: Family<BurnLabels, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SloLabels {
    endpoint: String,
    sli: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BurnLabels {
    endpoint: String,
    sli: String,
    window: String,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weir_serve");
        registry.register_collector(Box::new(DroppedSpans));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Inference requests by model, version, protocol and HTTP status",
            requests.clone(),
        );
        // 25 µs to ~0.8 s: the model call alone is microseconds for one row.
        let latency = Family::<VersionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(25e-6, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to response, scoring included",
            latency.clone(),
        );
        let rows = Family::<VersionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 4.0, 10))
        });
        registry.register("batch_rows", "Rows scored per request", rows.clone());
        let loaded = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "model_loaded",
            "1 for each model version loaded and warmed up, 0 once unloaded",
            loaded.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejected",
            "Inference requests refused before an answer: over the concurrency limit, or too slow",
            rejected.clone(),
        );
        let cache_hits = Family::<VersionLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Requests answered from the response cache",
            cache_hits.clone(),
        );
        let model_calls = Family::<VersionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 12))
        });
        registry.register(
            "model_call_rows",
            "Rows per model call when requests are batched",
            model_calls.clone(),
        );
        let endpoint_requests = Family::<EndpointCodeLabels, Counter>::default();
        registry.register(
            "endpoint_requests",
            "Requests to an endpoint by the version that answered and HTTP status",
            endpoint_requests.clone(),
        );
        let endpoint_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(25e-6, 2.0, 16))
        });
        registry.register(
            "endpoint_request_duration_seconds",
            "Time from request to response through an endpoint, by version",
            endpoint_latency.clone(),
        );
        let rollout_weight = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "rollout_weight",
            "Percent of an endpoint's traffic each version answers",
            rollout_weight.clone(),
        );
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rollout_phase",
            "1 for an endpoint's current rollout phase, 0 for the others",
            rollout_phase.clone(),
        );
        let prediction_drift = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "prediction_drift",
            "Population stability index of a version's scores over the last analysis interval against its prediction reference",
            prediction_drift.clone(),
        );
        let shadow = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_comparisons",
            "Mirrored requests whose shadow answer agreed or disagreed with the stable one",
            shadow.clone(),
        );
        let controller = Gauge::default();
        registry.register(
            "rollout_controller",
            "1 when this replica runs the rollout controller (holds the lease), else 0",
            controller.clone(),
        );
        let feature_drift = Family::<FeatureLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "feature_drift",
            "Drift score of each feature of an endpoint's logged requests against the version's training profile, over the monitoring window: a p-value (ks, chi2) or a distance (wasserstein, jensen_shannon)",
            feature_drift.clone(),
        );
        let feature_drifted = Family::<FeatureLabels, Gauge>::default();
        registry.register(
            "feature_drifted",
            "1 when a feature drifted over the monitoring window, else 0",
            feature_drifted.clone(),
        );
        let drift_share = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "feature_drift_share",
            "Share of an endpoint version's features that drifted over the monitoring window",
            drift_share.clone(),
        );
        let online = Family::<OnlineLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "online_metric",
            "Accuracy, AUC or RMSE of logged predictions against feedback labels over the monitoring window",
            online.clone(),
        );
        let logged = Family::<LogLabels, Counter>::default();
        registry.register(
            "prediction_log_rows",
            "Rows of sampled requests written to the prediction log, or dropped (buffer full, store unreachable)",
            logged.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "monitor_alerts",
            "Alerts each monitor fired",
            alerts.clone(),
        );
        let cost = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "cost_dollars",
            "What this replica has cost since it started: its CPU time and memory at the price table's prices",
            cost.clone(),
        );
        let cost_per_1k = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "cost_per_1000_inferences_dollars",
            "This replica's cost over the requests it answered, per 1,000",
            cost_per_1k.clone(),
        );
        let slo_budget = Family::<SloLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "slo_error_budget_remaining",
            "Share of the SLO window's error budget left (negative once overspent)",
            slo_budget.clone(),
        );
        let slo_burn = Family::<BurnLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "slo_burn_rate",
            "Bad requests over those the objective allows, per window (1 spends the budget in exactly the SLO window)",
            slo_burn.clone(),
        );
        Metrics {
            slo_budget,
            slo_burn,
            answered: Arc::default(),
            cost,
            cost_per_1k,
            feature_drift,
            feature_drifted,
            drift_share,
            online,
            logged,
            alerts,
            controller,
            endpoint_requests,
            endpoint_latency,
            rollout_weight,
            rollout_phase,
            prediction_drift,
            shadow,
            registry,
            rejected,
            cache_hits,
            model_calls,
            requests,
            latency,
            rows,
            loaded,
        }
    }

    pub(crate) fn loaded(&self, model: &str, version: i64) {
        self.loaded
            .get_or_create(&VersionLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .set(1);
    }

    pub(crate) fn unloaded(&self, model: &str, version: i64) {
        self.loaded
            .get_or_create(&VersionLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .set(0);
    }

    pub(crate) fn observe(&self, o: Observation) {
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.requests
            .get_or_create(&RequestLabels {
                model: o.model.to_string(),
                version: o.version.to_string(),
                protocol: o.protocol.to_string(),
                code: o.code,
            })
            .inc();
        let version = VersionLabels {
            model: o.model.to_string(),
            version: o.version.to_string(),
        };
        self.latency
            .get_or_create(&version)
            .observe(o.elapsed.as_secs_f64());
        if let Some(rows) = o.rows {
            self.rows.get_or_create(&version).observe(rows as f64);
        }
    }

    pub(crate) fn model_call(&self, model: &str, version: i64, rows: usize) {
        self.model_calls
            .get_or_create(&VersionLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .observe(rows as f64);
    }

    pub(crate) fn cache_hit(&self, model: &str, version: i64) {
        self.cache_hits
            .get_or_create(&VersionLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .inc();
    }

    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub(crate) fn endpoint_request(
        &self,
        endpoint: &str,
        version: i64,
        code: u16,
        elapsed: Duration,
    ) {
        let version = version.to_string();
        self.endpoint_requests
            .get_or_create(&EndpointCodeLabels {
                endpoint: endpoint.to_string(),
                version: version.clone(),
                code,
            })
            .inc();
        self.endpoint_latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
                version,
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn controller(&self, leads: bool) {
        self.controller.set(i64::from(leads));
    }

    /// Publishes an endpoint's routing: each version's share and the phase.
    pub(crate) fn rollout(&self, endpoint: &str, shares: &[(i64, i64)], phase: &str) {
        for (version, share) in shares {
            self.rollout_weight
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint.to_string(),
                    version: version.to_string(),
                })
                .set(*share);
        }
        for p in crate::rollout::phase::ALL {
            self.rollout_phase
                .get_or_create(&PhaseLabels {
                    endpoint: endpoint.to_string(),
                    phase: p.to_string(),
                })
                .set(i64::from(*p == phase));
        }
    }

    pub(crate) fn drift(&self, endpoint: &str, version: i64, psi: f64) {
        self.prediction_drift
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
                version: version.to_string(),
            })
            .set(psi);
    }

    pub(crate) fn shadow(&self, endpoint: &str, version: i64, agree: bool) {
        self.shadow
            .get_or_create(&ShadowLabels {
                endpoint: endpoint.to_string(),
                version: version.to_string(),
                result: if agree { "agree" } else { "disagree" }.into(),
            })
            .inc();
    }

    /// Publishes a monitoring check of an endpoint's version.
    pub(crate) fn monitored(&self, endpoint: &str, v: &crate::monitor::VersionReport) {
        let version = v.version.to_string();
        if let Some(drift) = &v.drift {
            for c in &drift.columns {
                let labels = FeatureLabels {
                    endpoint: endpoint.to_string(),
                    version: version.clone(),
                    feature: c.column.clone(),
                };
                self.feature_drift.get_or_create(&labels).set(c.score);
                self.feature_drifted
                    .get_or_create(&labels)
                    .set(i64::from(c.drifted));
            }
            self.drift_share
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint.to_string(),
                    version: version.clone(),
                })
                .set(drift.drifted_share);
        }
        for (metric, value) in [
            ("accuracy", v.online.accuracy),
            ("auc", v.online.auc),
            ("rmse", v.online.rmse),
        ] {
            if let Some(value) = value {
                self.online
                    .get_or_create(&OnlineLabels {
                        endpoint: endpoint.to_string(),
                        version: version.clone(),
                        metric: metric.into(),
                    })
                    .set(value);
            }
        }
    }

    /// Counts rows of sampled requests `written` to the log or `dropped`.
    pub(crate) fn log_rows(&self, outcome: &str, rows: u64) {
        self.logged
            .get_or_create(&LogLabels {
                outcome: outcome.into(),
            })
            .inc_by(rows);
    }

    pub(crate) fn alert(&self, monitor: &str) {
        self.alerts
            .get_or_create(&AlertLabels {
                monitor: monitor.to_string(),
            })
            .inc();
    }

    pub(crate) fn slo(&self, status: &crate::slo::Status) {
        for o in &status.objectives {
            self.slo_budget
                .get_or_create(&SloLabels {
                    endpoint: status.endpoint.clone(),
                    sli: o.sli.clone(),
                })
                .set(o.budget_remaining);
            for (window, rate) in &o.burn {
                self.slo_burn
                    .get_or_create(&BurnLabels {
                        endpoint: status.endpoint.clone(),
                        sli: o.sli.clone(),
                        window: window.clone(),
                    })
                    .set(*rate);
            }
        }
    }

    pub(crate) fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn costed(&self, dollars: f64, per_1k: Option<f64>) {
        self.cost.set(dollars);
        if let Some(c) = per_1k {
            self.cost_per_1k.set(c);
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Spans the OTLP endpoint never got (`weir_serve_otlp_spans_dropped_total`).
#[derive(Debug)]
struct DroppedSpans;

impl prometheus_client::collector::Collector for DroppedSpans {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let dropped =
            prometheus_client::metrics::counter::ConstCounter::new(weir_trace::dropped_spans());
        dropped.encode(encoder.encode_descriptor(
            "otlp_spans_dropped",
            "Spans that could not be delivered to the OTLP endpoint",
            None,
            dropped.metric_type(),
        )?)
    }
}
