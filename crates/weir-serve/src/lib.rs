//! The inference server: registered models behind the Open Inference
//! Protocol v2 (`/v2/...`) and MLflow's scoring protocol (`/invocations`,
//! `/ping`) on one port.
//!
//! Start-up: model versions are resolved from the registry before the port
//! opens (an unknown model is an immediate error); then the server listens,
//! answering live but not ready, while each model is fetched from the
//! artifact store, verified, loaded and warmed up; only then is it ready.

pub mod alerts;
mod batch;
mod cache;
mod costing;
mod error;
mod grpc;
pub use grpc::pb as proto;
mod metrics;
pub mod monitor;
mod onnx;
mod payload;
mod predlog;
mod register;
pub mod rollout;
mod routes;
pub mod slo;
mod spans;
mod stats;
mod tensor;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use weir_artifacts::ArtifactStore;
use weir_ml::{InputKind, InputSpec, Model};
use weir_store::Store;

pub use batch::BatchOptions;
pub use error::ServeError;
pub use payload::{decode as decode_payload, Protocol};
pub use predlog::LogOptions;
pub use register::{register_file, Registered};

/// `NAME` (the latest version) or `NAME:VERSION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    pub version: Option<i64>,
}

impl ModelRef {
    pub fn parse(text: &str) -> Result<ModelRef, ServeError> {
        match text.rsplit_once(':') {
            Some((name, v)) => {
                let version = v
                    .parse::<i64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| ServeError::BadModelRef(text.to_string()))?;
                Ok(ModelRef {
                    name: name.to_string(),
                    version: Some(version),
                })
            }
            None if !text.is_empty() => Ok(ModelRef {
                name: text.to_string(),
                version: None,
            }),
            None => Err(ServeError::BadModelRef(text.to_string())),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: String,
    /// Where the OIP gRPC service listens, if anywhere.
    pub grpc_addr: Option<String>,
    pub max_body_bytes: usize,
    /// Inference requests answered at once; more get 429.
    pub max_concurrency: usize,
    /// Longest an inference request may take, body included; then 504.
    pub request_timeout: std::time::Duration,
    /// Bytes of answers the response cache may hold; 0 turns it off.
    pub response_cache_bytes: usize,
    /// Adaptive batching of each model version's requests.
    pub batch: BatchOptions,
    /// Batching for particular models, over `batch`.
    pub batch_by_model: BTreeMap<String, BatchOptions>,
    /// The prediction log (off at rate 0).
    pub log: LogOptions,
    /// How often every logging endpoint is checked for /metrics, and over
    /// what window (monitors have their own).
    pub check_every: Duration,
    pub check_window: Duration,
    pub monitors: Vec<alerts::Monitor>,
    /// What the replica's CPU and memory cost (`[prices]` in weir.toml).
    pub prices: weir_core::cost::Prices,
    /// The share of requests traced when tracing is on (a caller's
    /// traceparent decides for its own requests).
    pub trace_sample: f64,
    /// Objectives per endpoint (`slos:` beside the monitors).
    pub slos: Vec<slo::Slo>,
    /// Models and endpoints whose inference (and metadata) needs a token
    /// once the store has any (`*`: all); the rest are public.
    pub private: Vec<String>,
    /// Serve HTTPS with this certificate and key (PEM) instead of HTTP.
    pub tls: Option<weir_tls::TlsFiles>,
}

/// A model version loaded and warmed up.
pub(crate) struct Loaded {
    pub name: String,
    pub version: i64,
    pub predictor: Predictor,
    /// How the version's scores were spread when it was made (registered
    /// with it); rollouts measure its drift against this.
    pub reference: Option<weir_ml::ScoreReference>,
    /// The feature names of the version's training profile, which name an
    /// ONNX graph's input columns in the prediction log.
    pub features: Option<Vec<String>>,
    /// What it has done since it was loaded (`/v2/models/NAME/stats`).
    pub stats: Arc<stats::VersionStats>,
}

pub(crate) enum Predictor {
    /// A Weir model: named feature columns in, its fitted transforms applied.
    Native {
        model: Arc<Model>,
        inputs: Vec<InputSpec>,
        /// The queue that batches this version's requests, when batching is on.
        batcher: Option<batch::Batcher<Model>>,
    },
    /// An ONNX graph: tensors in, tensors out.
    Onnx {
        model: Arc<weir_onnx::OnnxModel>,
        /// A one-row call takes long enough that every call runs on a
        /// blocking thread rather than holding up the reactor.
        heavy: bool,
        batcher: Option<batch::Batcher<weir_onnx::OnnxModel>>,
    },
}

impl Loaded {
    pub fn platform(&self) -> String {
        match &self.predictor {
            Predictor::Native { model, .. } => format!("weir_{}", model.kind()),
            Predictor::Onnx { .. } => "onnx".into(),
        }
    }

    fn input_count(&self) -> usize {
        match &self.predictor {
            Predictor::Native { inputs, .. } => inputs.len(),
            Predictor::Onnx { model, .. } => model.inputs().len(),
        }
    }
}

pub(crate) struct AppState {
    pub private: std::collections::BTreeSet<String>,
    pub tokens: weir_store::tokens::TokenCache,
    /// Versions per model name, ascending; the last is the default.
    models: RwLock<BTreeMap<String, Vec<Arc<Loaded>>>>,
    /// The first model named on the command line answers /invocations.
    pub primary: String,
    ready: AtomicBool,
    pub max_body_bytes: usize,
    pub metrics: Arc<metrics::Metrics>,
    pub batch: batch::BatchOptions,
    pub batch_by_model: BTreeMap<String, batch::BatchOptions>,
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub max_concurrency: usize,
    pub request_timeout: std::time::Duration,
    /// Where the repository extension loads versions from.
    pub store: Store,
    pub artifacts: ArtifactStore,
    /// Versions whose last load failed, with why (shown by the index).
    pub failed: RwLock<BTreeMap<(String, i64), String>>,
    /// Versions the controller loaded because an endpoint routed to them,
    /// with when it found no endpoint routing to them any more. Only these
    /// are unloaded on their own: a version named on the command line or
    /// loaded through the repository extension stays until unloaded there.
    for_endpoints: std::sync::Mutex<BTreeMap<(String, i64), Option<Instant>>>,
    pub cache: cache::ResponseCache,
    /// Endpoints (from the store's deployments), by name.
    endpoints: RwLock<BTreeMap<String, Arc<weir_store::Deployment>>>,
    /// What each version answered through each endpoint this interval.
    windows: std::sync::Mutex<BTreeMap<(String, i64), rollout::Window>>,
    /// Mirrored requests whose answers agreed / all, per endpoint, this rollout.
    shadow_agreement: std::sync::Mutex<BTreeMap<String, (u64, u64)>>,
    /// Objectives by endpoint, and this replica's counts per (endpoint,
    /// minute) not yet added to the store.
    slos: BTreeMap<String, slo::Slo>,
    slo_counts: std::sync::Mutex<BTreeMap<(String, i64), slo::Minute>>,
    /// Sampled requests waiting to be written to the prediction log.
    pub log: Option<predlog::PredictionLog>,
    /// This replica holds the controller's lease: it also runs the monitors.
    leading: AtomicBool,
    pub trace_sample: f64,
    /// Recent endpoint predictions by request id, for label feedback.
    predictions: std::sync::Mutex<lru::LruCache<String, Prediction>>,
    /// This replica, as it holds the controller's lease and signs its counts.
    replica: String,
    /// Replicas share a PostgreSQL store: each flushes its counts there and
    /// the controller judges their sum. One process on SQLite keeps its own.
    shared_windows: bool,
}

/// What an endpoint answered to one request, kept until its label arrives.
pub(crate) struct Prediction {
    pub endpoint: String,
    pub version: i64,
    /// The predicted label of each row.
    pub labels: Vec<serde_json::Value>,
}

/// Predictions remembered for feedback (the oldest are forgotten first).
const PREDICTIONS_KEPT: usize = 20_000;

impl AppState {
    /// Puts a loaded version in service (replacing the same version), to
    /// stay until it is unloaded by name.
    pub(crate) fn add(&self, loaded: Loaded) {
        self.for_endpoints
            .lock()
            .expect("endpoint versions lock")
            .remove(&(loaded.name.clone(), loaded.version));
        self.put(loaded);
    }

    /// Puts a version an endpoint routes to in service, to stay only while
    /// an endpoint routes to it (see [`AppState::unload_unrouted`]).
    fn add_for_endpoint(&self, loaded: Loaded) {
        let key = (loaded.name.clone(), loaded.version);
        self.put(loaded);
        self.for_endpoints
            .lock()
            .expect("endpoint versions lock")
            .insert(key, None);
    }

    fn put(&self, loaded: Loaded) {
        self.metrics.loaded(&loaded.name, loaded.version);
        self.failed
            .write()
            .expect("failed lock")
            .remove(&(loaded.name.clone(), loaded.version));
        let mut map = self.models.write().expect("models lock");
        let versions = map.entry(loaded.name.clone()).or_default();
        versions.retain(|l| l.version != loaded.version);
        versions.push(Arc::new(loaded));
        versions.sort_by_key(|l| l.version);
    }

    /// Takes a model's versions (or one of them) out of service; in-flight
    /// requests finish on the version they hold. Returns what was removed.
    pub(crate) fn remove(&self, name: &str, version: Option<i64>) -> Vec<i64> {
        let mut map = self.models.write().expect("models lock");
        let Some(versions) = map.get_mut(name) else {
            return Vec::new();
        };
        let removed: Vec<i64> = versions
            .iter()
            .map(|l| l.version)
            .filter(|v| version.is_none_or(|want| *v == want))
            .collect();
        versions.retain(|l| !removed.contains(&l.version));
        if versions.is_empty() {
            map.remove(name);
        }
        for v in &removed {
            self.metrics.unloaded(name, *v);
        }
        removed
    }

    /// Unloads the versions loaded for endpoints that no endpoint has routed
    /// to for `grace` (a promoted-away stable, a rolled-back candidate), so
    /// a long-lived server holds what it serves, not every version it ever
    /// served. The grace lets a request that read the endpoint's old routing
    /// just before the change still find its version. Returns what went.
    fn unload_unrouted(
        &self,
        endpoints: &[weir_store::Deployment],
        grace: Duration,
    ) -> Vec<(String, i64)> {
        let routed = |(name, version): &(String, i64)| {
            endpoints.iter().any(|d| {
                d.model == *name && (d.stable == Some(*version) || d.candidate == Some(*version))
            })
        };
        let mut expired = Vec::new();
        {
            let mut tracked = self.for_endpoints.lock().expect("endpoint versions lock");
            for (key, since) in tracked.iter_mut() {
                if routed(key) {
                    *since = None;
                } else if since.get_or_insert_with(Instant::now).elapsed() >= grace {
                    expired.push(key.clone());
                }
            }
            for key in &expired {
                tracked.remove(key);
            }
        }
        for (name, version) in &expired {
            self.remove(name, Some(*version));
        }
        expired
    }

    /// Every version this server has loaded or failed to load.
    pub(crate) fn index(&self) -> Vec<(String, i64, Option<String>)> {
        let mut out: Vec<(String, i64, Option<String>)> = self
            .models
            .read()
            .expect("models lock")
            .values()
            .flatten()
            .map(|l| (l.name.clone(), l.version, None))
            .collect();
        out.extend(
            self.failed
                .read()
                .expect("failed lock")
                .iter()
                .map(|((n, v), why)| (n.clone(), *v, Some(why.clone()))),
        );
        out.sort();
        out
    }

    pub fn endpoint(&self, name: &str) -> Option<Arc<weir_store::Deployment>> {
        self.endpoints
            .read()
            .expect("endpoints lock")
            .get(name)
            .cloned()
    }

    /// Puts an endpoint's (new) state in service; a changed revision starts
    /// a fresh analysis window.
    pub(crate) fn set_endpoint(&self, d: weir_store::Deployment) -> bool {
        let changed = self
            .endpoint(&d.endpoint)
            .is_none_or(|old| old.revision != d.revision);
        if !changed {
            return false;
        }
        let mut shares = Vec::new();
        if let Some(stable) = d.stable {
            let cand_share = if d.strategy == "shadow" { 0 } else { d.weight };
            shares.push((
                stable,
                100 - if d.candidate.is_some() { cand_share } else { 0 },
            ));
            if let Some(c) = d.candidate {
                shares.push((c, cand_share));
            }
        }
        // Versions this endpoint no longer routes to show 0.
        if let Some(old) = self.endpoint(&d.endpoint) {
            for v in [old.stable, old.candidate].into_iter().flatten() {
                if !shares.iter().any(|(s, _)| *s == v) {
                    shares.push((v, 0));
                }
            }
        }
        self.metrics.rollout(&d.endpoint, &shares, &d.phase);
        self.windows
            .lock()
            .expect("windows lock")
            .retain(|(e, _), _| *e != d.endpoint);
        if d.candidate.is_none() {
            self.shadow_agreement
                .lock()
                .expect("shadow lock")
                .remove(&d.endpoint);
        }
        self.endpoints
            .write()
            .expect("endpoints lock")
            .insert(d.endpoint.clone(), Arc::new(d));
        true
    }

    /// Counts a request an endpoint routed to `version`.
    pub(crate) fn record(&self, endpoint: &str, version: i64, code: u16, elapsed: Duration) {
        self.metrics
            .endpoint_request(endpoint, version, code, elapsed);
        // 429 is the server's own limit, not the version's doing.
        let error = code >= 400 && code != 429;
        if let Some(objective) = self.slos.get(endpoint) {
            let minute = weir_core::now_ms() / 60_000;
            let mut counts = self.slo_counts.lock().expect("slo lock");
            let m = counts.entry((endpoint.to_string(), minute)).or_default();
            m.total += 1;
            m.failed += u64::from(error);
            m.slow += u64::from(objective.latency_p99.is_some_and(|limit| elapsed > limit));
        }
        self.windows
            .lock()
            .expect("windows lock")
            .entry((endpoint.to_string(), version))
            .or_default()
            .record(error, elapsed);
    }

    /// Keeps the scores a version gave through an endpoint, for drift.
    pub(crate) fn record_scores(&self, endpoint: &str, version: i64, scores: &[f64]) {
        if scores.is_empty() {
            return;
        }
        self.windows
            .lock()
            .expect("windows lock")
            .entry((endpoint.to_string(), version))
            .or_default()
            .scored(scores);
    }

    pub(crate) fn remember(&self, id: String, prediction: Prediction) {
        self.predictions
            .lock()
            .expect("predictions lock")
            .put(id, prediction);
    }

    /// Scores fed-back labels against what was predicted for request `id`;
    /// returns how many rows were right, of how many.
    pub(crate) fn feedback(
        &self,
        endpoint: &str,
        id: &str,
        truth: &[serde_json::Value],
    ) -> Result<(u64, u64), ServeError> {
        let (version, labels) = {
            let mut log = self.predictions.lock().expect("predictions lock");
            let p = log
                .get(id)
                .filter(|p| p.endpoint == endpoint)
                .ok_or_else(|| ServeError::UnknownRequest {
                    endpoint: endpoint.to_string(),
                    id: id.to_string(),
                })?;
            (p.version, p.labels.clone())
        };
        if labels.len() != truth.len() {
            return Err(ServeError::BadRequest(format!(
                "request '{id}' scored {} rows; send one label per row ({} given)",
                labels.len(),
                truth.len()
            )));
        }
        // Labels compare as numbers when both are numbers (1 == 1.0).
        let same = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        };
        let right = labels.iter().zip(truth).filter(|(p, t)| same(p, t)).count() as u64;
        let mut windows = self.windows.lock().expect("windows lock");
        let window = windows.entry((endpoint.to_string(), version)).or_default();
        for i in 0..truth.len() as u64 {
            window.label(i < right);
        }
        Ok((right, truth.len() as u64))
    }

    pub(crate) fn record_shadow(&self, endpoint: &str, version: i64, agree: bool) {
        self.metrics.shadow(endpoint, version, agree);
        let mut map = self.shadow_agreement.lock().expect("shadow lock");
        let entry = map.entry(endpoint.to_string()).or_default();
        entry.0 += u64::from(agree);
        entry.1 += 1;
    }

    /// Every version's counts of this interval so far, leaving none behind.
    fn drain_windows(&self) -> Vec<((String, i64), rollout::Window)> {
        std::mem::take(&mut *self.windows.lock().expect("windows lock"))
            .into_iter()
            .collect()
    }

    fn take_window(&self, endpoint: &str, version: Option<i64>) -> rollout::Window {
        version
            .and_then(|v| {
                self.windows
                    .lock()
                    .expect("windows lock")
                    .remove(&(endpoint.to_string(), v))
            })
            .unwrap_or_default()
    }

    /// A loaded version, if this server has it.
    pub fn loaded_version(&self, name: &str, version: i64) -> Option<Arc<Loaded>> {
        self.versions(name)
            .into_iter()
            .find(|l| l.version == version)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn versions(&self, name: &str) -> Vec<Arc<Loaded>> {
        self.models
            .read()
            .expect("models lock")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .expect("models lock")
            .keys()
            .cloned()
            .collect()
    }

    /// A version of a model, the newest loaded when `version` is `None`.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<Loaded>, ServeError> {
        let versions = self.versions(name);
        if versions.is_empty() {
            if let Some(((_, v), why)) = self
                .failed
                .read()
                .expect("failed lock")
                .iter()
                .find(|((n, v), _)| n == name && version.is_none_or(|want| want == v.to_string()))
            {
                return Err(ServeError::Unavailable {
                    model: format!("{name}:{v}"),
                    reason: why.clone(),
                });
            }
            return Err(ServeError::UnknownModel {
                name: name.to_string(),
                served: self.names().join(", "),
            });
        }
        match version {
            None => Ok(versions.last().expect("non-empty").clone()),
            Some(v) => versions
                .iter()
                .find(|l| l.version.to_string() == v)
                .cloned()
                .ok_or_else(|| ServeError::UnknownVersion {
                    name: name.to_string(),
                    version: v.to_string(),
                    served: versions
                        .iter()
                        .map(|l| l.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }
}

/// The batching queue of a loaded version, when batching is on for it.
fn batcher_for<M: batch::Batched>(
    state: &AppState,
    options: BatchOptions,
    model: &Arc<M>,
    (name, version): (&str, i64),
    stats: &Arc<stats::VersionStats>,
) -> Option<batch::Batcher<M>> {
    (options.max_rows > 0).then(|| {
        batch::Batcher::start(
            Arc::clone(model),
            options,
            Arc::clone(&state.metrics),
            (name.to_string(), version),
            Arc::clone(stats),
        )
    })
}

/// A warm-up call slower than this marks a model heavy (see `Predictor`).
const HEAVY_CALL: Duration = Duration::from_millis(2);

/// Loads a model version's artifact and checks it predicts.
pub(crate) async fn load(state: &AppState, name: &str, version: i64) -> Result<Loaded, ServeError> {
    let (store, artifacts) = (&state.store, &state.artifacts);
    let mv = store.model_version(name, Some(version)).await?;
    let failed = |reason: String| ServeError::Load {
        model: format!("{name}:{version}"),
        reason,
    };
    let digest = mv
        .weir_digest()?
        .parse()
        .map_err(|e: weir_core::DigestError| failed(e.to_string()))?;
    let bytes = artifacts.get(&digest).await?;
    let lineage = serde_json::from_str::<serde_json::Value>(&mv.lineage_json).unwrap_or_default();
    let reference = weir_ml::ScoreReference::from_json(&lineage["prediction_reference"]);
    let features = lineage["feature_reference"]["columns"].as_array().map(|c| {
        c.iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    });
    let options = state
        .batch_by_model
        .get(name)
        .copied()
        .unwrap_or(state.batch);
    let stats = Arc::new(stats::VersionStats::default());
    if register::is_onnx(&mv) {
        // Parsing and optimising a graph is CPU work; keep it off the reactor.
        let (model, warm_up) = tokio::task::spawn_blocking(move || {
            let model = weir_onnx::OnnxModel::from_bytes(&bytes)?;
            // Twice: the first call pays one-off costs.
            register::warm_up_onnx(&model)?;
            let started = Instant::now();
            register::warm_up_onnx(&model)?;
            Ok::<_, weir_onnx::OnnxError>((model, started.elapsed()))
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
        return Ok(Loaded {
            name: name.to_string(),
            version,
            reference,
            features,
            predictor: {
                let model = Arc::new(model);
                Predictor::Onnx {
                    batcher: batcher_for(state, options, &model, (name, version), &stats),
                    model,
                    heavy: warm_up > HEAVY_CALL,
                }
            },
            stats,
        });
    }
    let model = Model::from_bytes(&bytes).map_err(|e| failed(e.to_string()))?;
    let inputs = model.inputs();
    // Warm-up: one row of missing values exercises every transform.
    let frame = weir_ml::Frame {
        rows: 1,
        columns: inputs
            .iter()
            .map(|i| match i.kind {
                InputKind::Numeric | InputKind::Datetime => {
                    weir_ml::Column::Numeric(vec![f64::NAN])
                }
                InputKind::Text => weir_ml::Column::Text(vec![None]),
            })
            .collect(),
    };
    model
        .predict(&frame)
        .map_err(|e| failed(format!("warm-up failed: {e}")))?;
    let model = Arc::new(model);
    let batcher = batcher_for(state, options, &model, (name, version), &stats);
    Ok(Loaded {
        name: name.to_string(),
        version,
        reference,
        features,
        predictor: Predictor::Native {
            model,
            inputs,
            batcher,
        },
        stats,
    })
}

/// Keeps endpoints current: picks up changes made with `weir deploy` and
/// `weir rollout` (polling the store), loads the versions they route to,
/// and, on the one replica that holds the controller's lease, judges each
/// rollout once per analysis interval.
#[derive(Default)]
struct Controller {
    /// When each endpoint's current analysis window opened.
    opened: BTreeMap<String, Instant>,
    /// This replica holds the lease: it judges and moves rollouts.
    leader: bool,
    lease_checked: Option<Instant>,
    flushed: Option<Instant>,
    pruned: Option<Instant>,
}

/// How often the store is polled for endpoint changes.
const CONTROL_TICK: Duration = Duration::from_millis(200);
/// How long a version no endpoint routes to any more stays loaded.
const UNLOAD_GRACE: Duration = Duration::from_secs(5);
/// The controller's lease: held for LEASE_TTL, renewed every LEASE_RENEW, so
/// a replica that dies is replaced within about LEASE_TTL + LEASE_RENEW.
const LEASE: &str = "rollout-controller";
const LEASE_TTL: Duration = Duration::from_secs(2);
const LEASE_RENEW: Duration = Duration::from_millis(500);
/// How often a replica sends its counts to the store (shared windows).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Counts nobody took (a version no longer judged) are removed after this.
const WINDOW_PARTS_KEPT: Duration = Duration::from_secs(600);

impl Controller {
    async fn run(mut self, state: Arc<AppState>) {
        let mut tick = tokio::time::interval(CONTROL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.keep_lease(&state).await;
            if state.shared_windows && self.flushed.is_none_or(|t| t.elapsed() >= FLUSH_EVERY) {
                self.flushed = Some(Instant::now());
                flush_windows(&state).await;
            }
            if self.leader && self.pruned.is_none_or(|t| t.elapsed() >= WINDOW_PARTS_KEPT) {
                self.pruned = Some(Instant::now());
                if let Err(e) = state
                    .store
                    .prune_windows(WINDOW_PARTS_KEPT.as_millis() as i64)
                    .await
                {
                    eprintln!("warning: cannot prune old window counts: {e}");
                }
            }
            match state.store.deployments().await {
                Ok(all) => {
                    for d in &all {
                        self.step(&state, d.clone()).await;
                    }
                    // Judged on what was read before the steps: a version a
                    // step moved away from is unrouted from the next tick,
                    // and the grace runs from then.
                    for (name, version) in state.unload_unrouted(&all, UNLOAD_GRACE) {
                        eprintln!("unloaded {name}:{version}: no endpoint routes to it");
                    }
                }
                Err(e) => eprintln!("warning: cannot read endpoints: {e}"),
            }
        }
    }

    /// Takes or renews the controller's lease (every LEASE_RENEW). A
    /// replica that cannot reach the store stops judging: its lease may have
    /// gone to another.
    async fn keep_lease(&mut self, state: &AppState) {
        if self
            .lease_checked
            .is_some_and(|t| t.elapsed() < LEASE_RENEW)
        {
            return;
        }
        self.lease_checked = Some(Instant::now());
        let leads = match state
            .store
            .acquire_lease(LEASE, &state.replica, LEASE_TTL.as_millis() as i64)
            .await
        {
            Ok(leads) => leads,
            Err(e) => {
                eprintln!("warning: cannot renew the rollout controller's lease: {e}");
                false
            }
        };
        if leads != self.leader {
            if leads {
                eprintln!(
                    "this replica runs the rollout controller ({})",
                    state.replica
                );
            } else {
                eprintln!("another replica runs the rollout controller now");
            }
            // A new controller's windows open now: it judges only what it
            // (and the replicas) counted from here on.
            self.opened.clear();
        }
        self.leader = leads;
        state.leading.store(leads, Ordering::Release);
        state.metrics.controller(leads);
    }

    /// What `version` answered through `d` since its window was last taken:
    /// this replica's counts and, with shared windows, every replica's
    /// parts recorded under `d`'s current routing.
    async fn take_window(
        &self,
        state: &AppState,
        d: &weir_store::Deployment,
        version: Option<i64>,
    ) -> rollout::Window {
        let mut window = state.take_window(&d.endpoint, version);
        let (Some(version), true) = (version, state.shared_windows) else {
            return window;
        };
        match state.store.take_windows(&d.endpoint, version).await {
            Ok(parts) => {
                for part in parts.into_iter().filter(|p| p.revision == d.revision) {
                    match serde_json::from_str(&part.window_json) {
                        Ok(w) => window.merge(w),
                        Err(e) => eprintln!(
                            "warning: endpoint {}: unreadable counts from replica {}: {e}",
                            d.endpoint, part.replica
                        ),
                    }
                }
            }
            Err(e) => eprintln!(
                "warning: endpoint {}: cannot read the replicas' counts: {e}",
                d.endpoint
            ),
        }
        window
    }

    /// Saves a transition; someone else's newer change wins (it is picked
    /// up on the next tick).
    async fn save(&mut self, state: &AppState, d: weir_store::Deployment, event: &str, what: &str) {
        match state.store.save_deployment(&d, event, what).await {
            Ok(saved) => {
                eprintln!("endpoint {}: {what}", saved.endpoint);
                self.opened.insert(saved.endpoint.clone(), Instant::now());
                state.set_endpoint(saved);
            }
            Err(weir_store::StoreError::Conflict(_)) => {}
            Err(e) => eprintln!(
                "warning: endpoint {}: cannot save ({what}): {e}",
                d.endpoint
            ),
        }
    }

    async fn step(&mut self, state: &AppState, d: weir_store::Deployment) {
        use rollout::phase;
        // Every version the endpoint routes to must be loaded first; a
        // candidate that cannot load is rolled back before it sees traffic.
        for v in [d.stable, d.candidate].into_iter().flatten() {
            if state.loaded_version(&d.model, v).is_some() {
                continue;
            }
            let key = (d.model.clone(), v);
            if d.stable == Some(v) && state.failed.read().expect("failed lock").contains_key(&key) {
                continue;
            }
            match load(state, &d.model, v).await {
                Ok(loaded) => {
                    eprintln!("loaded {}:{v} for endpoint {}", d.model, d.endpoint);
                    state.add_for_endpoint(loaded);
                }
                Err(e) => {
                    eprintln!("error: endpoint {}: {e}", d.endpoint);
                    state
                        .failed
                        .write()
                        .expect("failed lock")
                        .insert(key, e.to_string());
                    if d.candidate == Some(v) {
                        if let Ok((next, what)) =
                            rollout::rollback(&d, &format!("cannot load: {e}"))
                        {
                            self.save(state, next, "rolled back", &what).await;
                        }
                        return;
                    }
                }
            }
        }
        if state.set_endpoint(d.clone()) {
            // New routing, new window: traffic answered under the old one
            // (before a rollout started, say) is not this one's to judge.
            // (Other replicas' parts carry the routing's revision.)
            self.opened.insert(d.endpoint.clone(), Instant::now());
            state.take_window(&d.endpoint, d.stable);
            state.take_window(&d.endpoint, d.candidate);
        }
        // Routing is every replica's; judging is the controller's alone.
        if !self.leader {
            return;
        }
        let analysis = rollout::Analysis::from_json(&d.analysis);
        if d.candidate.is_none() || d.phase == phase::ROLLED_BACK || d.phase == phase::HEALTHY {
            // Nothing to judge: the stable version's interval still closes,
            // for its drift on /metrics.
            let opened = *self
                .opened
                .entry(d.endpoint.clone())
                .or_insert_with(Instant::now);
            if opened.elapsed() >= analysis.interval {
                self.opened.insert(d.endpoint.clone(), Instant::now());
                let mut stable = self.take_window(state, &d, d.stable).await;
                let drift = publish_drift(state, &d, d.stable, &stable);
                record_interval(state, &d, d.stable, 100, opened, &mut stable, drift).await;
            }
            return;
        }
        if d.strategy == "bluegreen" || d.strategy == "direct" {
            // The candidate is loaded and answered its warm-up: switch.
            if let Ok((next, what)) = rollout::promote(&d) {
                self.save(state, next, "promoted", &what).await;
            }
            return;
        }
        let opened = *self
            .opened
            .entry(d.endpoint.clone())
            .or_insert_with(Instant::now);
        if opened.elapsed() < analysis.interval {
            return;
        }
        let mut stable = self.take_window(state, &d, d.stable).await;
        let mut candidate = self.take_window(state, &d, d.candidate).await;
        self.opened.insert(d.endpoint.clone(), Instant::now());
        let drift = publish_drift(state, &d, d.stable, &stable);
        record_interval(
            state,
            &d,
            d.stable,
            100 - d.weight,
            opened,
            &mut stable,
            drift,
        )
        .await;
        let drift = publish_drift(state, &d, d.candidate, &candidate);
        record_interval(
            state,
            &d,
            d.candidate,
            d.weight,
            opened,
            &mut candidate,
            drift,
        )
        .await;
        let reference = d
            .candidate
            .and_then(|v| state.loaded_version(&d.model, v))
            .and_then(|l| l.reference.clone());
        // An endpoint burning its error budget fast is a violation
        // whatever the candidate's own figures say; judged now, on this
        // replica's latest counts too.
        let burning = match state.slos.get(&d.endpoint) {
            Some(objective) => {
                flush_slo_counts(state).await;
                match slo::check(&state.store, objective).await {
                    Ok(status) => {
                        state.metrics.slo(&status);
                        status.fast_burn()
                    }
                    Err(e) => {
                        eprintln!("warning: cannot judge the SLO of {}: {e}", d.endpoint);
                        None
                    }
                }
            }
            None => None,
        };
        let verdict = match burning {
            Some(why) => rollout::Verdict::Violation(why),
            None => rollout::judge(&analysis, &mut stable, &mut candidate, reference.as_ref()),
        };
        match verdict {
            rollout::Verdict::Violation(why) => {
                if let Ok((next, what)) = rollout::rollback(&d, &why) {
                    self.save(state, next, "rolled back", &what).await;
                }
            }
            rollout::Verdict::TooLittleTraffic(why) => {
                if d.phase != phase::PAUSED || d.reason != why {
                    self.save(state, rollout::pause(&d, &why), "paused", &why)
                        .await;
                }
            }
            rollout::Verdict::Pass if d.strategy == "shadow" => {
                // A shadow is promoted by hand; passing keeps it progressing.
                let agreement = state
                    .shadow_agreement
                    .lock()
                    .expect("shadow lock")
                    .get(&d.endpoint)
                    .copied()
                    .unwrap_or_default();
                let reason = format!(
                    "shadow agreed on {} of {} mirrored requests",
                    agreement.0, agreement.1
                );
                let next = weir_store::Deployment {
                    phase: phase::PROGRESSING.into(),
                    reason: reason.clone(),
                    ..d.clone()
                };
                if d.phase != phase::PROGRESSING {
                    self.save(state, next, "analysed", &reason).await;
                } else if d.reason != reason {
                    // The tally moves every interval: kept current in the
                    // status, not written into the history each time.
                    match state.store.save_deployment_quietly(&next).await {
                        Ok(saved) => {
                            state.set_endpoint(saved);
                        }
                        Err(weir_store::StoreError::Conflict(_)) => {}
                        Err(e) => eprintln!(
                            "warning: endpoint {}: cannot save the shadow's tally: {e}",
                            d.endpoint
                        ),
                    }
                }
            }
            rollout::Verdict::Pass => {
                if let Ok((next, what)) = rollout::promote(&d) {
                    self.save(state, next, "promoted", &what).await;
                }
            }
        }
    }
}

/// Sends this replica's counts to the store, each under the revision of
/// its endpoint's routing, for the controller to sum.
async fn flush_windows(state: &AppState) {
    for ((endpoint, version), window) in state.drain_windows() {
        if window.is_empty() {
            continue;
        }
        let Some(d) = state.endpoint(&endpoint) else {
            continue;
        };
        let part = weir_store::WindowPart {
            endpoint: endpoint.clone(),
            version,
            revision: d.revision,
            replica: state.replica.clone(),
            window_json: serde_json::to_string(&window).expect("a window serializes"),
        };
        if let Err(e) = state.store.push_window(&part).await {
            eprintln!("warning: endpoint {endpoint}: cannot send this replica's counts: {e}");
        }
    }
}

/// Puts a version's drift over the interval against its prediction
/// reference on /metrics, when it has a reference and scored enough rows;
/// returns it.
fn publish_drift(
    state: &AppState,
    d: &weir_store::Deployment,
    version: Option<i64>,
    window: &rollout::Window,
) -> Option<f64> {
    let version = version?;
    let loaded = state.loaded_version(&d.model, version)?;
    let reference = loaded.reference.as_ref()?;
    if window.scores.len() < rollout::MIN_DRIFT_SCORES {
        return None;
    }
    let psi = reference.stability(window.scores.iter().map(|s| f64::from(*s)));
    state.metrics.drift(&d.endpoint, version, psi);
    Some(psi)
}

/// Keeps what a version answered over a judged interval (every replica's
/// counts), for the dashboard's history; an interval without traffic is
/// not kept. A store that cannot take it costs the history a point, not
/// the rollout its judgement.
async fn record_interval(
    state: &AppState,
    d: &weir_store::Deployment,
    version: Option<i64>,
    weight: i64,
    opened: Instant,
    window: &mut rollout::Window,
    drift: Option<f64>,
) {
    let Some(version) = version else { return };
    if window.is_empty() {
        return;
    }
    let ended_at = weir_core::now_ms();
    let mut stats = window.stats();
    stats["drift_psi"] = drift.into();
    stats["scored"] = window.scores.len().into();
    let interval = weir_store::Interval {
        endpoint: d.endpoint.clone(),
        version,
        started_at: ended_at - opened.elapsed().as_millis() as i64,
        ended_at,
        weight,
        requests: window.requests as i64,
        errors: window.errors as i64,
        stats,
    };
    if let Err(e) = state.store.record_interval(&interval).await {
        eprintln!(
            "warning: endpoint {}: cannot record the interval: {e}",
            d.endpoint
        );
    }
}

/// Serves until Ctrl-C or SIGTERM, then drains in-flight requests.
pub async fn serve(
    store: &Store,
    artifacts: &ArtifactStore,
    models: &[ModelRef],
    options: ServeOptions,
) -> Result<(), ServeError> {
    let mut resolved = Vec::new();
    for m in models {
        let mv = store.model_version(&m.name, m.version).await?;
        resolved.push((mv.name, mv.version));
    }
    let replica = weir_core::process::identity();
    let shared_windows = store.backend() == weir_store::Backend::Postgres;
    if !shared_windows {
        refuse_second_server(store, &replica).await?;
    }
    let deployments = store.deployments().await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let watch = Watch::new(&options);
    let state = Arc::new(AppState {
        private: options.private.iter().cloned().collect(),
        tokens: Default::default(),
        log: predlog::PredictionLog::new(options.log.clone(), metrics.clone()),
        leading: AtomicBool::new(false),
        trace_sample: options.trace_sample,
        replica,
        shared_windows,
        models: RwLock::new(BTreeMap::new()),
        primary: resolved
            .first()
            .map(|(n, _)| n.clone())
            .or_else(|| deployments.first().map(|d| d.endpoint.clone()))
            .unwrap_or_default(),
        ready: AtomicBool::new(false),
        max_body_bytes: options.max_body_bytes,
        metrics,
        batch: options.batch,
        batch_by_model: options.batch_by_model,
        inflight: Arc::new(tokio::sync::Semaphore::new(options.max_concurrency.max(1))),
        max_concurrency: options.max_concurrency.max(1),
        request_timeout: options.request_timeout,
        store: store.clone(),
        artifacts: artifacts.clone(),
        failed: RwLock::new(BTreeMap::new()),
        cache: cache::ResponseCache::new(options.response_cache_bytes),
        endpoints: RwLock::new(BTreeMap::new()),
        windows: std::sync::Mutex::new(BTreeMap::new()),
        for_endpoints: std::sync::Mutex::new(BTreeMap::new()),
        shadow_agreement: std::sync::Mutex::new(BTreeMap::new()),
        slos: options
            .slos
            .iter()
            .map(|s| (s.endpoint.clone(), s.clone()))
            .collect(),
        slo_counts: std::sync::Mutex::new(BTreeMap::new()),
        predictions: std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(PREDICTIONS_KEPT).expect("non-zero"),
        )),
    });
    let listener = weir_tls::Listener::bind(&options.addr, options.tls.as_ref())
        .await
        .map_err(|e| bind_error(&options.addr, e))?;
    let url = listener.url().map_err(|e| ServeError::Bind {
        addr: options.addr.clone(),
        reason: e.to_string(),
    })?;
    eprintln!("listening on {url}");

    let grpc = match &options.grpc_addr {
        None => None,
        Some(addr) => {
            let listener = weir_tls::Listener::bind_grpc(addr, options.tls.as_ref())
                .await
                .map_err(|e| bind_error(addr, e))?;
            let at = listener.local_addr().map_err(|e| ServeError::Bind {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            eprintln!(
                "gRPC (inference.GRPCInferenceService) on {}{at}",
                if options.tls.is_some() { "TLS " } else { "" }
            );
            Some(tokio::spawn(weir_tls::serve(
                listener,
                grpc::router(state.clone()),
                weir_core::signals::terminated(),
            )))
        }
    };
    let app = routes::router(state.clone());
    let server = tokio::spawn(weir_tls::serve(
        listener,
        app,
        weir_core::signals::terminated(),
    ));

    // A version that cannot load is reported and the server serves the
    // rest (as KServe does); only when nothing loads is there nothing to run.
    let mut first_failure = None;
    for (name, version) in &resolved {
        match load(&state, name, *version).await {
            Ok(loaded) => {
                eprintln!(
                    "loaded {name}:{version} ({}, {} inputs)",
                    loaded.platform(),
                    loaded.input_count()
                );
                state.add(loaded);
            }
            Err(e) => {
                eprintln!("error: {e}");
                state
                    .failed
                    .write()
                    .expect("failed lock")
                    .insert((name.clone(), *version), e.to_string());
                first_failure.get_or_insert(e);
            }
        }
    }
    // Endpoints: their versions are loaded and their routing set before the
    // server says it is ready; the controller keeps them current after.
    let mut control = Controller::default();
    control.keep_lease(&state).await;
    for d in deployments {
        control.step(&state, d).await;
    }
    if let (Some(e), true) = (first_failure, state.names().is_empty()) {
        return Err(e);
    }
    if state.names().is_empty() {
        return Err(ServeError::BadRequest(
            "nothing to serve: name models (NAME or NAME:VERSION) or create an endpoint with `weir deploy`".into(),
        ));
    }
    let controlled = state.clone();
    tokio::spawn(async move { control.run(controlled).await });
    let watched = state.clone();
    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel();
    let watching = tokio::spawn(async move { watch.run(watched, watch_stopped).await });
    state.ready.store(true, Ordering::Release);
    eprintln!("ready");
    let served = server.await;
    if let Some(grpc) = grpc {
        // Stopped by the same signal, its in-flight calls finishing first;
        // if the HTTP server failed instead, no signal is coming.
        if matches!(served, Ok(Ok(()))) {
            let _ = grpc.await;
        } else {
            grpc.abort();
        }
    }
    // The replica's last usage is recorded before it goes.
    let _ = stop_watch.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), watching).await;
    if let Some(log) = &state.log {
        log.flush(&state.store, &state.artifacts, true, None).await;
    }
    // Handing the controller over at once, rather than when the lease runs out.
    if let Err(e) = state.store.release_lease(LEASE, &state.replica).await {
        eprintln!("warning: cannot release the rollout controller's lease: {e}");
    }
    served
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    eprintln!("stopped");
    Ok(())
}

fn bind_error(addr: &str, e: weir_tls::TlsError) -> ServeError {
    match e {
        weir_tls::TlsError::Bind { source, .. } => ServeError::Bind {
            addr: addr.to_string(),
            reason: source.to_string(),
        },
        e => ServeError::Tls(e.to_string()),
    }
}

/// On SQLite, one `weir serve` serves a store: a second would count its
/// traffic where the controller cannot see it. Replicas need PostgreSQL.
async fn refuse_second_server(store: &Store, me: &str) -> Result<(), ServeError> {
    let Some((holder, expires_at)) = store.lease(LEASE).await? else {
        return Ok(());
    };
    let live = expires_at > weir_core::now_ms()
        && holder != me
        && weir_core::process::alive_here(&holder) != Some(false);
    if live {
        return Err(ServeError::BadRequest(format!(
            "another weir serve ({holder}) is serving this store ({}) and running its rollouts\n  hint: serving replicas share a PostgreSQL store (WEIR_DB=postgres://...) and S3 artifacts; on SQLite, stop the other server first",
            store.url()
        )));
    }
    Ok(())
}

/// Writes the prediction log out and runs the monitoring checks: every
/// monitor on its own schedule, and every endpoint that logs on
/// `check_every` for /metrics. Checks run on the replica that holds the
/// controller's lease; each replica writes its own log.
struct Watch {
    costing: costing::Costing,
    slo_flushed: Option<Instant>,
    slo_judged: Option<Instant>,
    monitors: Vec<(Arc<alerts::Monitor>, alerts::MonitorState)>,
    every: Duration,
    window: Duration,
    checked: BTreeMap<String, Instant>,
}

/// How often the log's buffers are looked at, and checks' schedules.
const WATCH_TICK: Duration = Duration::from_millis(250);

impl Watch {
    fn new(options: &ServeOptions) -> Watch {
        Watch {
            costing: costing::Costing::new(options.prices.clone()),
            slo_flushed: None,
            slo_judged: None,
            monitors: options
                .monitors
                .iter()
                .map(|m| (Arc::new(m.clone()), alerts::MonitorState::default()))
                .collect(),
            every: options.check_every,
            window: options.check_window,
            checked: BTreeMap::new(),
        }
    }

    async fn run(mut self, state: Arc<AppState>, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(WATCH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => {
                    self.record_usage(&state, true).await;
                    flush_slo_counts(&state).await;
                    return;
                }
            }
            if self.slo_flushed.is_none_or(|t| t.elapsed() >= SLO_FLUSH) {
                self.slo_flushed = Some(Instant::now());
                flush_slo_counts(&state).await;
            }
            if state.leading.load(Ordering::Acquire)
                && self.slo_judged.is_none_or(|t| t.elapsed() >= SLO_JUDGE)
            {
                self.slo_judged = Some(Instant::now());
                judge_slos(&state).await;
            }
            if let Some(log) = &state.log {
                log.flush(&state.store, &state.artifacts, false, None).await;
            }
            self.record_usage(&state, false).await;
            if !state.leading.load(Ordering::Acquire) {
                continue;
            }
            for i in 0..self.monitors.len() {
                let due = self.monitors[i]
                    .1
                    .last_check
                    .is_none_or(|t| t.elapsed() >= self.monitors[i].0.every);
                if due {
                    self.monitors[i].1.last_check = Some(Instant::now());
                    let monitor = self.monitors[i].0.clone();
                    let options = monitor::CheckOptions {
                        share: monitor.share,
                        min_rows: monitor.min_rows,
                        method: monitor.method,
                        ..monitor::CheckOptions::new(monitor.window)
                    };
                    if let Some(report) = checked(&state, &monitor.target, &options).await {
                        let verdict = alerts::judge(&monitor, &mut self.monitors[i].1, &report);
                        conclude(&state, &monitor, verdict, report).await;
                    }
                }
            }
            if state.log.is_none() {
                continue;
            }
            let endpoints: Vec<String> = state
                .endpoints
                .read()
                .expect("endpoints lock")
                .keys()
                .cloned()
                .collect();
            for endpoint in endpoints {
                if self.monitors.iter().any(|(m, _)| m.target == endpoint)
                    || self
                        .checked
                        .get(&endpoint)
                        .is_some_and(|t| t.elapsed() < self.every)
                {
                    continue;
                }
                self.checked.insert(endpoint.clone(), Instant::now());
                checked(&state, &endpoint, &monitor::CheckOptions::new(self.window)).await;
            }
        }
    }
}

/// How often a replica adds its SLO counts to the store, and how often the
/// controller's replica judges the objectives.
const SLO_FLUSH: Duration = Duration::from_secs(2);
const SLO_JUDGE: Duration = Duration::from_secs(3);

async fn flush_slo_counts(state: &AppState) {
    let counts = std::mem::take(&mut *state.slo_counts.lock().expect("slo lock"));
    if counts.is_empty() {
        return;
    }
    let rows: Vec<(String, i64, i64, i64, i64)> = counts
        .iter()
        .map(|((e, m), c)| {
            (
                e.clone(),
                *m,
                c.total as i64,
                c.failed as i64,
                c.slow as i64,
            )
        })
        .collect();
    let keep = (slo::MAX_WINDOW.as_secs() / 60) as i64;
    if let Err(e) = state
        .store
        .add_slo_minutes(&state.replica, &rows, keep)
        .await
    {
        eprintln!("warning: cannot record SLO counts: {e}");
        // Kept for the next flush rather than lost.
        let mut pending = state.slo_counts.lock().expect("slo lock");
        for (key, c) in counts {
            let m = pending.entry(key).or_default();
            m.total += c.total;
            m.failed += c.failed;
            m.slow += c.slow;
        }
    }
}

/// Judges every objective on the counts of every replica and publishes the
/// budgets and burn rates (the rollout controller judges its endpoint's
/// afresh when it judges an interval).
async fn judge_slos(state: &AppState) {
    for objective in state.slos.values() {
        match slo::check(&state.store, objective).await {
            Ok(status) => state.metrics.slo(&status),
            Err(e) => eprintln!(
                "warning: cannot judge the SLO of {}: {e}",
                objective.endpoint
            ),
        }
    }
}

impl Watch {
    /// Publishes what the replica has cost and, every few seconds (or
    /// `now`), records it in the store.
    async fn record_usage(&mut self, state: &AppState, now: bool) {
        let targets = {
            let mut names: Vec<String> = state
                .endpoints
                .read()
                .expect("endpoints lock")
                .keys()
                .cloned()
                .collect();
            if names.is_empty() {
                names = state
                    .models
                    .read()
                    .expect("models lock")
                    .keys()
                    .cloned()
                    .collect();
            }
            names.join(",")
        };
        let answered = state.metrics.answered();
        let Some(usage) = self.costing.tick(&state.replica, targets, answered, now) else {
            return;
        };
        state
            .metrics
            .costed(usage.cost, costing::per_1000(usage.cost, usage.requests));
        if let Err(e) = state.store.record_serve_usage(&usage).await {
            eprintln!("warning: cannot record the replica's usage: {e}");
        }
    }
}

/// Runs a check of `target` (after writing out its buffered requests) and
/// publishes it on /metrics.
async fn checked(
    state: &AppState,
    target: &str,
    options: &monitor::CheckOptions,
) -> Option<monitor::Report> {
    if let Some(log) = &state.log {
        log.flush(&state.store, &state.artifacts, false, Some(target))
            .await;
    }
    let options = monitor::CheckOptions {
        now_ms: weir_core::now_ms(),
        ..options.clone()
    };
    match monitor::check(&state.store, &state.artifacts, target, &options).await {
        Ok(report) => {
            for v in &report.versions {
                state.metrics.monitored(target, v);
            }
            Some(report)
        }
        Err(e) => {
            eprintln!("warning: monitoring {target}: {e}");
            None
        }
    }
}

/// Records a monitor's check and, when it fired, the alert; its actions
/// run in a task of their own so that a slow webhook or a retraining run
/// holds up neither serving nor the other monitors.
async fn conclude(
    state: &Arc<AppState>,
    monitor: &Arc<alerts::Monitor>,
    verdict: alerts::Verdict,
    report: monitor::Report,
) {
    let check = weir_store::MonitorCheck {
        monitor: monitor.name.clone(),
        target: monitor.target.clone(),
        checked_at: report.until,
        status: verdict.status.into(),
        reason: verdict.reason.clone(),
        report_json: serde_json::to_string(&report).unwrap_or_default(),
    };
    if let Err(e) = state.store.record_check(&check).await {
        eprintln!(
            "warning: monitor {}: cannot record its check: {e}",
            monitor.name
        );
    }
    if verdict.status != "fired" {
        return;
    }
    state.metrics.alert(&monitor.name);
    let alert = weir_store::MonitorAlert {
        id: weir_core::new_id(),
        monitor: monitor.name.clone(),
        target: monitor.target.clone(),
        fired_at: weir_core::now_ms(),
        reason: verdict.reason,
        actions: serde_json::json!([]),
    };
    if let Err(e) = state.store.record_alert(&alert).await {
        eprintln!(
            "warning: monitor {}: cannot record its alert: {e}",
            monitor.name
        );
    }
    let state = state.clone();
    let monitor = monitor.clone();
    tokio::spawn(async move {
        let body = alerts::payload(&monitor, &alert.id, alert.fired_at, &alert.reason, &report);
        let mut done = Vec::new();
        for action in &monitor.actions {
            let outcome = match action {
                alerts::Action::Log => {
                    eprintln!(
                        "alert {}: monitor {}: {}",
                        alert.id, monitor.name, alert.reason
                    );
                    serde_json::json!({"action": "log", "status": "logged"})
                }
                alerts::Action::Webhook(hook) => alerts::deliver(hook, &alert.id, &body).await,
                alerts::Action::Retrain(r) => {
                    alerts::retrain(
                        &state.store,
                        state.artifacts.location(),
                        r,
                        &monitor,
                        &report,
                        &alert.id,
                    )
                    .await
                }
            };
            if outcome["status"] == "failed" {
                eprintln!(
                    "warning: alert {}: {} failed: {}",
                    alert.id, outcome["action"], outcome
                );
            }
            done.push(outcome);
            if let Err(e) = state
                .store
                .update_alert_actions(&alert.id, &serde_json::Value::Array(done.clone()))
                .await
            {
                eprintln!(
                    "warning: alert {}: cannot record its actions: {e}",
                    alert.id
                );
            }
        }
    });
}
