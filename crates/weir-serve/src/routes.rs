//! HTTP routes. Both protocols decode into columns, go through the same
//! signature check and the same model call, and differ only in their shapes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use weir_ml::{InputKind, Task};

use crate::cache::ResponseCache;
use crate::metrics::Observation;
use crate::payload::{self, Columns};
use crate::{onnx, predlog, AppState, Loaded, Predictor, ServeError};

/// Batches above this many rows are scored on a blocking thread so the
/// reactor keeps answering other requests.
const INLINE_ROWS: usize = 512;

type Shared = State<Arc<AppState>>;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(version_stats),
        )
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .merge(
            Router::new()
                .route("/v2/models/{name}/infer", post(infer))
                .route(
                    "/v2/models/{name}/versions/{version}/infer",
                    post(infer_version),
                )
                .route("/invocations", post(invocations))
                .route_layer(middleware::from_fn_with_state(state.clone(), limits)),
        )
        .route("/v2/models/{name}/feedback", post(feedback))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route(
            "/v2/repository/models/{name}/unload",
            post(repository_unload),
        )
        .route("/metrics", get(metrics))
        .route("/ping", get(ping))
        .route("/health", get(ping))
        .fallback(|| async {
            oip_error(
                ServeError::BadRequest("no such endpoint; see /v2 and /invocations".into()),
                StatusCode::NOT_FOUND,
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), authorized))
        .with_state(state)
}

/// What a route needs once the store has API tokens: the repository
/// (loading and unloading versions) an admin, labels an editor, a private
/// model's or endpoint's inference and metadata a viewer; the rest nothing.
pub fn required(
    path: &str,
    private: &std::collections::BTreeSet<String>,
    primary: &str,
) -> Option<weir_store::tokens::Role> {
    use weir_store::tokens::Role;
    if path.starts_with("/v2/repository/") {
        return Some(Role::Admin);
    }
    if path.ends_with("/feedback") {
        return Some(Role::Editor);
    }
    let is_private = |name: &str| private.contains("*") || private.contains(name);
    let target = match path.strip_prefix("/v2/models/") {
        Some(rest) => rest.split('/').next().filter(|n| *n != "stats"),
        None if path == "/invocations" => Some(primary),
        None => None,
    };
    target.filter(|t| is_private(t)).map(|_| Role::Viewer)
}

async fn authorized(State(s): Shared, request: Request, next: Next) -> Response {
    let Some(need) = required(request.uri().path(), &s.private, &s.primary) else {
        return next.run(request).await;
    };
    let what = format!("{} {}", request.method(), request.uri().path());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.tokens.check(&s.store, authorization, need, &what).await {
        Ok(_) => next.run(request).await,
        Err(d) => {
            let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut response = (
                status,
                Json(json!({ "error": d.message, "error_code": d.code })),
            )
                .into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"weir\""),
                );
            }
            response
        }
    }
}

/// Inference requests beyond `max_concurrency` in flight get 429 at once
/// (queueing them would only move the wait into the client's timeout), and
/// one that takes longer than `request_timeout` from its first byte (a body
/// trickling in counts) gets 504.
async fn limits(State(s): Shared, request: Request, next: Next) -> Response {
    // Each protocol answers errors in its own shape.
    let error = if request.uri().path() == "/invocations" {
        |e: ServeError| MlflowError(e).into_response()
    } else {
        |e: ServeError| OipError(e).into_response()
    };
    let Ok(_permit) = s.inflight.clone().try_acquire_owned() else {
        s.metrics.rejected("busy");
        let mut response = error(ServeError::Busy {
            limit: s.max_concurrency,
        });
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    match tokio::time::timeout(s.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            s.metrics.rejected("timeout");
            error(ServeError::Timeout {
                seconds: s.request_timeout.as_secs_f64(),
            })
        }
    }
}

fn oip_error(e: ServeError, status: StatusCode) -> Response {
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

struct OipError(ServeError);
impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        oip_error(self.0, status)
    }
}
impl From<ServeError> for OipError {
    fn from(e: ServeError) -> Self {
        OipError(e)
    }
}

struct MlflowError(ServeError);
impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        (
            self.0.status(),
            Json(json!({"error_code": self.0.mlflow_code(), "message": self.0.to_string()})),
        )
            .into_response()
    }
}
impl From<ServeError> for MlflowError {
    fn from(e: ServeError) -> Self {
        MlflowError(e)
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ServeError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::TooLarge { limit }
        } else {
            ServeError::BadRequest(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ServeError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServeError::BadRequest(format!("malformed JSON body: {e}")))
}

async fn metrics(State(s): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// One inference request being timed; what it learns (the version that
/// answered, the rows scored) is filled in as the handler goes. A request
/// that never reaches a served model is counted under an empty model label:
/// names taken from request paths would let any client grow /metrics.
pub(crate) struct Timed {
    started: Instant,
    protocol: &'static str,
    model: String,
    version: String,
    rows: Option<usize>,
    /// The request is sampled for the prediction log...
    sample: bool,
    /// ...and this is its decoded input, once scored.
    capture: Option<predlog::Capture>,
    /// The answering version's statistics, and the request's phases.
    stats: Option<Arc<crate::stats::VersionStats>>,
    model_at: Option<Instant>,
    model_done: Option<Instant>,
    queue: Duration,
    infer: Duration,
    cache: Option<(bool, Duration)>,
    /// Set when this request is traced.
    traced: Option<crate::spans::Traced>,
}

impl Timed {
    fn start(protocol: &'static str) -> Timed {
        Timed {
            started: Instant::now(),
            protocol,
            model: String::new(),
            version: String::new(),
            rows: None,
            sample: false,
            capture: None,
            stats: None,
            model_at: None,
            model_done: None,
            queue: Duration::ZERO,
            infer: Duration::ZERO,
            cache: None,
            traced: None,
        }
    }

    /// Decides, from the caller's traceparent or the sample rate, whether
    /// this request is a trace.
    fn trace(&mut self, s: &AppState, headers: &HeaderMap) {
        self.traced = crate::spans::decide(headers, s.trace_sample, self.started);
    }

    fn answered_by(&mut self, loaded: &Loaded) {
        self.model = loaded.name.clone();
        self.version = loaded.version.to_string();
        self.stats = Some(Arc::clone(&loaded.stats));
    }

    /// The model is called now: what came before was compute_input.
    fn calling(&mut self) {
        self.model_at = Some(Instant::now());
    }

    /// The model answered, after waiting `queued` in its batcher; a call
    /// made without one is an execution of its own.
    fn called(&mut self, queued: Option<Duration>, rows: usize) {
        let now = Instant::now();
        let spent = self
            .model_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.queue = queued.unwrap_or_default();
        self.infer = spent.saturating_sub(self.queue);
        self.model_done = Some(now);
        if let (None, Some(stats)) = (queued, &self.stats) {
            stats.execution(rows, Duration::ZERO, self.infer, Duration::ZERO);
        }
    }

    /// A response-cache lookup that started at `at`.
    fn looked_up(&mut self, at: Instant, hit: bool) {
        self.cache = Some((hit, at.elapsed()));
    }

    pub(crate) fn finish(mut self, s: &AppState, status: StatusCode) {
        let now = Instant::now();
        if let Some(traced) = self.traced.take() {
            traced.finish(crate::spans::Phases {
                route: match self.protocol {
                    "v2" => "/v2/models/{name}/infer",
                    "grpc" => "/inference.GRPCInferenceService/ModelInfer",
                    _ => "/invocations",
                },
                model: &self.model,
                version: &self.version,
                code: status.as_u16(),
                rows: self.rows,
                model_at: self.model_at,
                queue: self.queue,
                model_done: self.model_done,
                ended: now,
            });
        }
        if let Some(stats) = &self.stats {
            stats.request(&crate::stats::RequestPhases {
                total: now.saturating_duration_since(self.started),
                ok: status.is_success(),
                rows: self.rows.unwrap_or(0),
                input: self
                    .model_at
                    .map(|t| t.saturating_duration_since(self.started)),
                queue: self.queue,
                infer: self.infer,
                output: self
                    .model_done
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
                cache: self.cache,
            });
        }
        s.metrics.observe(Observation {
            model: &self.model,
            version: &self.version,
            protocol: self.protocol,
            code: status.as_u16(),
            elapsed: self.started.elapsed(),
            rows: self.rows,
        });
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "weir", "version": weir_core::WEIR_VERSION, "extensions": EXTENSIONS}))
}

/// The protocol extensions both transports serve.
pub(crate) const EXTENSIONS: [&str; 3] = ["model_repository", "statistics", "binary_tensor_data"];

/// The version a repository request names: `{"parameters": {"version": "2"}}`
/// (the protocol's form) or `{"version": 2}`; none means the latest.
fn requested_version(body: &[u8]) -> Result<Option<i64>, ServeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let doc: Value = parse_json(body)?;
    let v = doc
        .get("parameters")
        .and_then(|p| p.get("version"))
        .or_else(|| doc.get("version"));
    let parsed = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(t)) => t.parse().ok(),
        Some(_) => None,
    };
    parsed.map(Some).ok_or_else(|| {
        ServeError::BadRequest(format!(
            "version: expected a whole number, got {}",
            v.expect("present")
        ))
    })
}

/// POST /v2/repository/index: every version loaded (READY) or that failed
/// to load (UNAVAILABLE, with the reason). `{"ready": true}` lists only READY.
async fn repository_index(State(s): Shared, body: Bytes) -> Result<Json<Value>, OipError> {
    let only_ready = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        parse_json::<Value>(&body)?["ready"]
            .as_bool()
            .unwrap_or(false)
    };
    let entries: Vec<Value> = s
        .index()
        .into_iter()
        .filter(|(_, _, failed)| !only_ready || failed.is_none())
        .map(|(name, version, failed)| match failed {
            None => json!({"name": name, "version": version.to_string(), "state": "READY", "reason": ""}),
            Some(why) => json!({"name": name, "version": version.to_string(), "state": "UNAVAILABLE", "reason": why}),
        })
        .collect();
    Ok(Json(Value::Array(entries)))
}

/// POST /v2/repository/models/{name}/load: loads (or reloads) a registered
/// version, warms it up and puts it in service beside the others. A version
/// that cannot load answers 422 and shows in the index; the server and the
/// models it serves carry on.
async fn repository_load(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, OipError> {
    let version = requested_version(&body)?;
    let (name, version) = load_version(&s, &name, version).await?;
    Ok(Json(
        json!({"name": name, "version": version.to_string(), "state": "READY"}),
    ))
}

/// Loads a registered version (the latest when `version` is `None`) into
/// service, for either transport's repository extension; returns the name
/// and version loaded.
pub(crate) async fn load_version(
    s: &AppState,
    name: &str,
    version: Option<i64>,
) -> Result<(String, i64), ServeError> {
    // An unknown name or version is the store's not-found: 404.
    let mv = s.store.model_version(name, version).await?;
    let loading = crate::load(s, &mv.name, mv.version).await;
    // Whatever stops a registered version from loading (a damaged or missing
    // file, a failed warm-up) is a failed load of that version.
    let loading = loading.map_err(|e| match e {
        ServeError::Load { .. } => e,
        other => ServeError::Load {
            model: format!("{}:{}", mv.name, mv.version),
            reason: other.to_string(),
        },
    });
    match loading {
        Ok(loaded) => {
            s.add(loaded);
            Ok((mv.name, mv.version))
        }
        Err(e) => {
            s.failed
                .write()
                .expect("failed lock")
                .insert((mv.name.clone(), mv.version), e.to_string());
            Err(e)
        }
    }
}

/// POST /v2/repository/models/{name}/unload: takes every version of the
/// model (or the one named) out of service.
async fn repository_unload(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, OipError> {
    let version = requested_version(&body)?;
    let removed = unload_version(&s, &name, version)?;
    Ok(Json(json!({
        "name": name,
        "unloaded": removed.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
    })))
}

/// Takes a model's versions (or the one named) out of service, for either
/// transport's repository extension; returns the versions unloaded.
pub(crate) fn unload_version(
    s: &AppState,
    name: &str,
    version: Option<i64>,
) -> Result<Vec<i64>, ServeError> {
    let removed = s.remove(name, version);
    if removed.is_empty() {
        return Err(ServeError::UnknownModel {
            name: match version {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            },
            served: s.names().join(", "),
        });
    }
    Ok(removed)
}

async fn server_ready(State(s): Shared) -> Response {
    let status = if s.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": s.is_ready()}))).into_response()
}

async fn ping(State(s): Shared) -> Response {
    if s.is_ready() {
        (StatusCode::OK, "\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response()
    }
}

fn datatype(kind: InputKind) -> &'static str {
    match kind {
        InputKind::Numeric => "FP64",
        // Date-times travel as RFC 3339 or "YYYY-MM-DD HH:MM:SS" text.
        InputKind::Text | InputKind::Datetime => "BYTES",
    }
}

fn output_names(task: Task) -> &'static [(&'static str, &'static str)] {
    match task {
        Task::Classification => &[("probability", "FP64"), ("label", "INT64")],
        Task::Regression => &[("prediction", "FP64")],
    }
}

fn metadata(s: &AppState, loaded: &Loaded) -> Value {
    let (inputs, outputs): (Vec<Value>, Vec<Value>) = match &loaded.predictor {
        Predictor::Native { model, inputs, .. } => (
            inputs
                .iter()
                .map(|i| json!({"name": i.name, "datatype": datatype(i.kind), "shape": [-1]}))
                .collect(),
            output_names(model.task())
                .iter()
                .map(|(n, t)| json!({"name": n, "datatype": t, "shape": [-1]}))
                .collect(),
        ),
        Predictor::Onnx { model, .. } => {
            (onnx::metadata_inputs(model), onnx::metadata_outputs(model))
        }
    };
    json!({
        "name": loaded.name,
        "versions": s.versions(&loaded.name).iter().map(|l| l.version.to_string()).collect::<Vec<_>>(),
        "platform": loaded.platform(),
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// The version metadata and readiness describe: for an endpoint, its
/// stable version.
pub(crate) fn ready_model(
    s: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<Loaded>, ServeError> {
    if !s.is_ready() {
        return Err(ServeError::NotReady);
    }
    if let (None, Some(d)) = (version, s.endpoint(name)) {
        let unavailable = |reason: &str| ServeError::Unavailable {
            model: name.to_string(),
            reason: reason.to_string(),
        };
        let stable = d
            .stable
            .ok_or_else(|| unavailable("the endpoint has no stable version yet"))?;
        return s
            .loaded_version(&d.model, stable)
            .ok_or_else(|| unavailable("its stable version is not loaded"));
    }
    s.model(name, version)
}

async fn model_metadata(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, OipError> {
    Ok(Json(metadata_of(&s, &name, None)?))
}

async fn version_metadata(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, OipError> {
    Ok(Json(metadata_of(&s, &name, Some(&version))?))
}

/// A model's (an endpoint's, a version's) metadata, for either transport.
pub(crate) fn metadata_of(
    s: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Value, ServeError> {
    let loaded = ready_model(s, name, version)?;
    let mut doc = metadata(s, &loaded);
    match version {
        Some(version) => doc["versions"] = json!([version]),
        None if s.endpoint(name).is_some() => {
            doc["name"] = json!(name);
            doc["endpoint"] =
                json!({"model": loaded.name, "stable_version": loaded.version.to_string()});
        }
        None => {}
    }
    Ok(doc)
}

fn stats_of(versions: &[Arc<Loaded>]) -> Json<Value> {
    let stats: Vec<Value> = versions
        .iter()
        .map(|l| l.stats.json(&l.name, l.version))
        .collect();
    Json(json!({ "model_stats": stats }))
}

/// Triton's statistics extension: every loaded version.
async fn all_stats(State(s): Shared) -> Json<Value> {
    let mut names = s.names();
    names.sort();
    let versions: Vec<Arc<Loaded>> = names.iter().flat_map(|n| s.versions(n)).collect();
    stats_of(&versions)
}

/// A model's versions, or the versions of the model an endpoint serves.
async fn model_stats(State(s): Shared, Path(name): Path<String>) -> Result<Json<Value>, OipError> {
    let model = s.endpoint(&name).map_or(name.clone(), |d| d.model.clone());
    let versions = s.versions(&model);
    if versions.is_empty() {
        // The same error (404 with what is served) as any unknown model.
        s.model(&model, None)?;
    }
    Ok(stats_of(&versions))
}

async fn version_stats(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, OipError> {
    let model = s.endpoint(&name).map_or(name.clone(), |d| d.model.clone());
    Ok(stats_of(&[s.model(&model, Some(&version))?]))
}

async fn model_ready(State(s): Shared, Path(name): Path<String>) -> Result<Json<Value>, OipError> {
    ready_model(&s, &name, None)?;
    Ok(Json(json!({"name": name, "ready": true})))
}

async fn version_ready(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, OipError> {
    ready_model(&s, &name, Some(&version))?;
    Ok(Json(
        json!({"name": name, "version": version, "ready": true}),
    ))
}

/// Checks columns against the model's inputs and scores them; a sampled
/// request's decoded input is kept in `timed` for the prediction log.
async fn predict(
    model: &Arc<weir_ml::Model>,
    inputs: &[weir_ml::InputSpec],
    batcher: Option<&crate::batch::Batcher<weir_ml::Model>>,
    columns: Columns,
    timed: &mut Timed,
) -> Result<Vec<f64>, ServeError> {
    let frame = payload::frame(inputs, columns)?;
    if timed.sample {
        timed.capture = Some(predlog::Capture {
            names: inputs.iter().map(|i| i.name.clone()).collect(),
            columns: frame.columns.clone(),
        });
    }
    let rows = frame.rows;
    timed.calling();
    if let Some(batcher) = batcher {
        let (scores, queued) = batcher.score(frame).await.map_err(ServeError::BadRequest)?;
        timed.called(Some(queued), rows);
        return Ok(scores);
    }
    let model = Arc::clone(model);
    let score = move || {
        model
            .predict(&frame)
            .map_err(|e| ServeError::BadRequest(e.to_string()))
    };
    let scores = off_reactor(rows, score).await?;
    timed.called(None, rows);
    Ok(scores)
}

/// Runs small calls in place; large ones on a blocking thread, so the
/// reactor keeps answering other requests.
async fn off_reactor<T: Send + 'static>(
    rows: usize,
    score: impl FnOnce() -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ServeError> {
    if rows <= INLINE_ROWS {
        score()
    } else {
        tokio::task::spawn_blocking(score)
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
    }
}

async fn infer(
    state: Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(state, name, None, headers, body).await
}

async fn infer_version(
    state: Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(state, name, Some(version), headers, body).await
}

/// Where a request goes: the version that answers it and, when an
/// endpoint routed it there, the endpoint (and a shadow to mirror it to).
struct Target {
    loaded: Arc<Loaded>,
    endpoint: Option<String>,
    shadow: Option<Arc<Loaded>>,
}

/// The header whose value keeps a client on one side of a rollout.
const ROUTE_KEY: &str = "x-weir-route-key";

/// A well-spread number per request, for weighted routing without a key.
fn draw() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // splitmix64 of a counter: uniform enough for percentages, no lock.
    let mut z = NEXT
        .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn resolve(
    s: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
) -> Result<Target, ServeError> {
    if !s.is_ready() {
        return Err(ServeError::NotReady);
    }
    if let (None, Some(d)) = (version, s.endpoint(name)) {
        let Some(stable) = d.stable else {
            return Err(ServeError::Unavailable {
                model: name.to_string(),
                reason: "the endpoint has no stable version yet".into(),
            });
        };
        let key = headers.get(ROUTE_KEY).map(|v| v.as_bytes());
        let shadowing = d.strategy == "shadow";
        let to_candidate = !shadowing
            && d.candidate.is_some()
            && crate::rollout::pick_candidate(d.weight, key, draw());
        let candidate = d.candidate.and_then(|c| s.loaded_version(&d.model, c));
        let loaded = match (to_candidate, &candidate) {
            (true, Some(c)) => c.clone(),
            _ => s.loaded_version(&d.model, stable).ok_or_else(|| {
                let reason = s
                    .failed
                    .read()
                    .expect("failed lock")
                    .get(&(d.model.clone(), stable))
                    .cloned()
                    .unwrap_or_else(|| "not loaded yet".into());
                ServeError::Unavailable {
                    model: format!("{}:{stable}", d.model),
                    reason,
                }
            })?,
        };
        return Ok(Target {
            loaded,
            endpoint: Some(d.endpoint.clone()),
            shadow: candidate.filter(|_| shadowing),
        });
    }
    Ok(Target {
        loaded: s.model(name, version)?,
        endpoint: None,
        shadow: None,
    })
}

async fn run_infer(
    State(s): Shared,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let payload =
        body_bytes(body, s.max_body_bytes).and_then(|bytes| Payload::http(bytes, &headers));
    let (result, timed) = oip_infer(&s, &name, version.as_deref(), &headers, payload, "v2").await;
    // Encoding the answer is part of the request (compute_output).
    let (response, status) = match result {
        Ok((answer, id)) => (with_request_id(oip_response(answer), id), StatusCode::OK),
        Err(e) => {
            let status = e.status();
            (OipError(e).into_response(), status)
        }
    };
    timed.finish(&s, status);
    response
}

/// An Open Inference Protocol request's payload, as its transport gave it.
#[derive(Clone)]
pub(crate) enum Payload {
    /// An HTTP body: JSON, or with the binary tensor extension `json_len`
    /// bytes of JSON and then binary tensors.
    Http {
        bytes: Bytes,
        json_len: Option<usize>,
    },
    /// A request decoded already (gRPC), with its encoded bytes when the
    /// response cache is on (its key).
    Decoded {
        request: Arc<payload::OipRequest>,
        encoded: Option<Bytes>,
    },
}

impl Payload {
    fn http(bytes: Bytes, headers: &HeaderMap) -> Result<Payload, ServeError> {
        let json_len = match headers.get(payload::HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ServeError::BadRequest(format!(
                            "Inference-Header-Content-Length must be the JSON's length in bytes, got {v:?}"
                        ))
                    })?,
            ),
        };
        Ok(Payload::Http { bytes, json_len })
    }

    /// The response cache's key for this payload sent to `loaded`.
    fn cache_key(&self, loaded: &Loaded) -> Option<crate::cache::Key> {
        let (protocol, bytes) = match self {
            Payload::Http {
                bytes,
                json_len: None,
            } => ("v2".to_string(), bytes),
            Payload::Http {
                bytes,
                json_len: Some(n),
            } => (format!("v2+binary:{n}"), bytes),
            Payload::Decoded {
                encoded: Some(bytes),
                ..
            } => ("grpc".to_string(), bytes),
            Payload::Decoded { encoded: None, .. } => return None,
        };
        Some(ResponseCache::key(
            &protocol,
            &loaded.name,
            loaded.version,
            bytes,
        ))
    }

    fn request(&self) -> Result<std::borrow::Cow<'_, payload::OipRequest>, ServeError> {
        Ok(match self {
            Payload::Http { bytes, json_len } => {
                std::borrow::Cow::Owned(payload::OipRequest::parse(bytes, *json_len)?)
            }
            Payload::Decoded { request, .. } => std::borrow::Cow::Borrowed(&**request),
        })
    }
}

/// An inference through the Open Inference Protocol, for either transport:
/// routes it (an endpoint's rollout, or the version named), scores it,
/// mirrors it to a shadow, counts it for the rollout and logs it. Returns
/// the answer (with the request id an endpoint's feedback refers to) for
/// the transport to encode, and the request's timing, to finish once it has.
pub(crate) async fn oip_infer(
    s: &Arc<AppState>,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    payload: Result<Payload, ServeError>,
    protocol: &'static str,
) -> (Result<(Value, Option<String>), ServeError>, Timed) {
    let mut timed = Timed::start(protocol);
    timed.trace(s, headers);
    let mut routed = None;
    let result = match resolve(s, name, version, headers) {
        Err(e) => Err(e),
        Ok(target) => {
            timed.answered_by(&target.loaded);
            routed = target.endpoint.clone().map(|e| (e, target.loaded.version));
            timed.sample = s.log.as_ref().is_some_and(|l| l.sampled(draw()));
            match payload {
                Err(e) => Err(e),
                Ok(payload) => {
                    let result = score_infer(s, &target.loaded, &payload, &mut timed).await;
                    if let (Some(shadow), Some(endpoint)) = (target.shadow, target.endpoint) {
                        let answer = result.as_ref().ok().map(|a| a["outputs"].clone());
                        mirror(s.clone(), endpoint, shadow, Mirrored::Oip(payload), answer);
                    }
                    result
                }
            }
        }
    };
    let status = result
        .as_ref()
        .map_or_else(|e| e.status(), |_| StatusCode::OK);
    if let Some((endpoint, version)) = &routed {
        s.record(endpoint, *version, status.as_u16(), timed.started.elapsed());
    }
    let logged = logged(&timed, &routed).zip(timed.capture.take());
    let result = result.map(|answer| {
        let labels = answer["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|t| t["name"] == "label"))
            .and_then(|t| t["data"].as_array().cloned());
        let id = answer["id"].as_str().map(str::to_string);
        let scores = oip_scores(&answer);
        let id = keep(s, routed, id, headers, scores, labels, logged);
        (answer, id)
    });
    (result, timed)
}

/// The HTTP response to an OIP answer: JSON, or with the binary tensor
/// extension, when the client asked for some outputs in binary, the JSON
/// (its length in `Inference-Header-Content-Length`) followed by those
/// outputs' bytes in order, each output saying its `binary_data_size`.
fn oip_response(mut answer: Value) -> Response {
    let mut binary = Vec::new();
    let mut any = false;
    for output in answer["outputs"].as_array_mut().into_iter().flatten() {
        if output["parameters"]["binary_data"] != true {
            continue;
        }
        any = true;
        let raw = crate::tensor::encode_raw(
            output["datatype"].as_str().unwrap_or_default(),
            &output["data"],
        );
        if let Some(o) = output.as_object_mut() {
            o.remove("data");
        }
        output["parameters"] = json!({"binary_data_size": raw.len()});
        binary.extend(raw);
    }
    if !any {
        return Json(answer).into_response();
    }
    let mut body = serde_json::to_vec(&answer).expect("a JSON value serializes");
    let json_len = body.len();
    body.extend(binary);
    (
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(payload::HEADER_LENGTH),
                header::HeaderValue::from(json_len),
            ),
        ],
        body,
    )
        .into_response()
}

/// What a sampled request is logged under: the endpoint that routed it,
/// else the model it named; with the version that answered.
fn logged(timed: &Timed, routed: &Option<(String, i64)>) -> Option<(String, String, i64)> {
    timed.capture.as_ref()?;
    let version = timed.version.parse().ok()?;
    let target = routed
        .as_ref()
        .map_or_else(|| timed.model.clone(), |(e, _)| e.clone());
    Some((target, timed.model.clone(), version))
}

/// What a scored request leaves behind. One an endpoint routed gets a
/// request id (returned, for `x-weir-request-id`), and what it predicted is
/// kept: its scores for drift, its labels for feedback under that id; a
/// sampled one goes to the prediction log.
fn keep(
    s: &AppState,
    routed: Option<(String, i64)>,
    id: Option<String>,
    headers: &HeaderMap,
    scores: Vec<f64>,
    labels: Option<Vec<Value>>,
    logged: Option<((String, String, i64), predlog::Capture)>,
) -> Option<String> {
    // A logged request needs an id for its feedback to find it.
    let id =
        (routed.is_some() || logged.is_some()).then(|| id.unwrap_or_else(|| request_id(headers)));
    if let (Some(log), Some(((target, model, version), capture)), Some(id)) = (&s.log, logged, &id)
    {
        log.push(predlog::Logged {
            target: &target,
            model: &model,
            version,
            request_id: id,
            capture,
            scores: &scores,
            labels: labels.as_deref(),
        });
    }
    if let (Some((endpoint, version)), Some(id)) = (routed, &id) {
        s.record_scores(&endpoint, version, &scores);
        if let Some(labels) = labels {
            let prediction = crate::Prediction {
                endpoint,
                version,
                labels,
            };
            s.remember(id.clone(), prediction);
        }
    }
    id
}

/// One score per row of an answer, for drift: the positive class's
/// probability of a binary classifier, or the value of a regressor.
pub(crate) fn oip_scores(answer: &Value) -> Vec<f64> {
    let Some(outputs) = answer["outputs"].as_array() else {
        return Vec::new();
    };
    let pick = ["probability", "prediction", "probabilities", "variable"];
    let Some(t) = pick
        .iter()
        .find_map(|n| outputs.iter().find(|o| o["name"] == *n))
    else {
        return Vec::new();
    };
    let data: Vec<f64> = t["data"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    match t["shape"].as_array().map(Vec::len) {
        Some(1) => data,
        Some(2) if t["shape"][1] == 1 => data,
        Some(2) if t["shape"][1] == 2 => data.into_iter().skip(1).step_by(2).collect(),
        _ => Vec::new(),
    }
}

fn mlflow_scores(answer: &Value) -> Vec<f64> {
    answer["predictions"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| match r {
                    Value::Number(n) => n.as_f64(),
                    Value::Object(o) => {
                        o.get("probability").and_then(Value::as_f64).or_else(|| {
                            o.get("probabilities")
                                .and_then(|p| p.get(1))
                                .and_then(Value::as_f64)
                        })
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The id feedback refers to: the client's `x-request-id`, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", draw()))
}

fn with_request_id(mut response: Response, id: Option<String>) -> Response {
    if let Some(value) = id.and_then(|id| header::HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("x-weir-request-id", value);
    }
    response
}

/// POST /v2/models/{endpoint}/feedback: the true label(s) of a request an
/// endpoint answered, `{"id": "...", "label": 1}` (or `"labels": [...]` for
/// a request of several rows); they count toward the answering version's
/// online accuracy, which a rollout can be judged on.
async fn feedback(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, OipError> {
    if s.endpoint(&name).is_none() {
        return Err(ServeError::BadRequest(format!(
            "'{name}' is not an endpoint; feedback is kept for endpoints (create one with `weir deploy`)"
        ))
        .into());
    }
    let doc: Value = parse_json(&body)?;
    let id = doc["id"].as_str().ok_or_else(|| {
        ServeError::BadRequest("feedback needs \"id\": the id of the request it labels".into())
    })?;
    let truth: Vec<Value> = match (&doc["label"], &doc["labels"]) {
        (Value::Null, Value::Array(many)) => many.clone(),
        (Value::Array(many), Value::Null) => many.clone(),
        (one, Value::Null) if !one.is_null() => vec![one.clone()],
        _ => {
            return Err(ServeError::BadRequest(
                "feedback needs \"label\" (one row) or \"labels\" (one per row)".into(),
            )
            .into())
        }
    };
    let scored = match s.feedback(&name, id, &truth) {
        Ok(scored) => Some(scored),
        // A request this replica no longer remembers (another replica
        // answered it, or this one restarted) may still be in the log.
        Err(ServeError::UnknownRequest { .. }) if s.log.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    // Kept for monitoring, which joins it to the logged request by id.
    s.store
        .add_feedback(&name, id, &Value::Array(truth).to_string())
        .await
        .map_err(ServeError::from)?;
    Ok(Json(match scored {
        Some((correct, labelled)) => json!({"id": id, "correct": correct, "labelled": labelled}),
        None => json!({"id": id, "stored": true}),
    }))
}

/// A request to mirror, in its protocol.
enum Mirrored {
    Oip(Payload),
    Mlflow(Bytes),
}

/// Sends a copy of a request to an endpoint's shadow after the stable
/// version has answered; the client never waits for it or sees it.
fn mirror(
    s: Arc<AppState>,
    endpoint: String,
    shadow: Arc<Loaded>,
    request: Mirrored,
    stable_answer: Option<Value>,
) {
    tokio::spawn(async move {
        let started = Instant::now();
        let (status, answer) = match request {
            Mirrored::Oip(payload) => {
                let mut timed = Timed::start("v2");
                match score_infer(&s, &shadow, &payload, &mut timed).await {
                    Ok(answer) => (StatusCode::OK, Some(answer["outputs"].clone())),
                    Err(e) => (e.status(), None),
                }
            }
            Mirrored::Mlflow(bytes) => {
                let mut timed = Timed::start("invocations");
                match score_mlflow(&s, &shadow, &bytes, &mut timed).await {
                    Ok(j) => (StatusCode::OK, Some(j.0["predictions"].clone())),
                    Err(e) => (e.0.status(), None),
                }
            }
        };
        s.record(
            &endpoint,
            shadow.version,
            status.as_u16(),
            started.elapsed(),
        );
        if let (Some(stable), Some(shadowed)) = (stable_answer, answer) {
            s.record_shadow(&endpoint, shadow.version, stable == shadowed);
        }
    });
}

async fn score_infer(
    s: &AppState,
    loaded: &Arc<Loaded>,
    payload: &Payload,
    timed: &mut Timed,
) -> Result<Value, ServeError> {
    let loaded = loaded.clone();
    // Hashing the body is only worth it when there is a cache to look in.
    let key = s
        .cache
        .enabled()
        .then(|| payload.cache_key(&loaded))
        .flatten();
    if let Some(k) = &key {
        let at = Instant::now();
        let hit = cached(s, &loaded, k);
        timed.looked_up(at, hit.is_some());
        if let Some(answer) = hit {
            return Ok(answer);
        }
    }
    let request = payload.request()?;
    let requested: Option<Vec<String>> = request
        .outputs
        .as_ref()
        .map(|o| o.iter().map(|o| o.name.clone()).collect());
    let (model, inputs, batcher) = match &loaded.predictor {
        Predictor::Native {
            model,
            inputs,
            batcher,
        } => (model, inputs, batcher.as_ref()),
        Predictor::Onnx {
            model: graph,
            heavy,
            batcher,
        } => {
            let outputs = score_onnx(
                graph,
                *heavy,
                batcher.as_ref(),
                &request,
                requested.as_deref(),
                timed,
                loaded.features.as_deref(),
            )
            .await?;
            return Ok(respond(s, &loaded, &request, outputs, key));
        }
    };
    let available = output_names(model.task());
    if let Some(names) = &requested {
        if let Some(bad) = names
            .iter()
            .find(|n| !available.iter().any(|(a, _)| a == n))
        {
            let known: Vec<&str> = available.iter().map(|(n, _)| *n).collect();
            return Err(ServeError::BadRequest(format!(
                "unknown output '{bad}'; the model produces: {}",
                known.join(", ")
            )));
        }
    }
    let columns = payload::oip_columns(&request)?;
    let scores = predict(model, inputs, batcher, columns, timed).await?;
    let n = scores.len();
    timed.rows = Some(n);
    let outputs: Vec<Value> = available
        .iter()
        .filter(|(out, _)| {
            requested
                .as_ref()
                .is_none_or(|r| r.iter().any(|x| x == out))
        })
        .map(|(out, dtype)| {
            let data: Value = match *out {
                "label" => json!(scores
                    .iter()
                    .map(|p| i64::from(*p >= 0.5))
                    .collect::<Vec<_>>()),
                _ => json!(scores),
            };
            json!({"name": out, "shape": [n], "datatype": dtype, "data": data})
        })
        .collect();
    Ok(respond(s, &loaded, &request, outputs, key))
}

/// The OIP answer, its outputs marked for binary as asked, cached when the
/// cache is on.
fn respond(
    s: &AppState,
    loaded: &Loaded,
    request: &payload::OipRequest,
    mut outputs: Vec<Value>,
    key: Option<crate::cache::Key>,
) -> Value {
    request.mark_binary_outputs(&mut outputs);
    let id = request.id.clone();
    let mut response = json!({
        "model_name": loaded.name,
        "model_version": loaded.version.to_string(),
        "outputs": outputs,
    });
    if let Some(id) = id {
        response["id"] = json!(id);
    }
    if let Some(key) = key {
        s.cache.put(key, &response);
    }
    response
}

/// A graph's input tensors as named columns for the prediction log: a
/// tensor of one value per row keeps its name; the columns of a wider one
/// take the names of the version's reference rows when they match in
/// number, else `NAME_0`, `NAME_1`, ...
fn onnx_capture(
    graph: &weir_onnx::OnnxModel,
    rows: usize,
    values: &[Vec<f64>],
    names: Option<&[String]>,
) -> predlog::Capture {
    let widths: Vec<usize> = values.iter().map(|v| v.len() / rows.max(1)).collect();
    let total: usize = widths.iter().sum();
    let mut named = names.filter(|n| n.len() == total).map(|n| n.iter());
    let mut capture = predlog::Capture {
        names: Vec::with_capacity(total),
        columns: Vec::with_capacity(total),
    };
    for ((spec, data), width) in graph.inputs().iter().zip(values).zip(widths) {
        for j in 0..width {
            let name = match (&mut named, width) {
                (Some(n), _) => n.next().cloned().unwrap_or_default(),
                (None, 1) => spec.name.clone(),
                (None, _) => format!("{}_{j}", spec.name),
            };
            capture.names.push(name);
            capture.columns.push(weir_ml::Column::Numeric(
                (0..rows).map(|r| data[r * width + j]).collect(),
            ));
        }
    }
    capture
}

#[allow(clippy::too_many_arguments)]
async fn score_onnx(
    graph: &Arc<weir_onnx::OnnxModel>,
    heavy: bool,
    batcher: Option<&crate::batch::Batcher<weir_onnx::OnnxModel>>,
    request: &payload::OipRequest,
    requested: Option<&[String]>,
    timed: &mut Timed,
    names: Option<&[String]>,
) -> Result<Vec<Value>, ServeError> {
    if let Some(bad) = requested.and_then(|names| {
        names
            .iter()
            .find(|n| !graph.outputs().iter().any(|o| &o.name == *n))
    }) {
        let known: Vec<&str> = graph.outputs().iter().map(|o| o.name.as_str()).collect();
        return Err(ServeError::BadRequest(format!(
            "unknown output '{bad}'; the model produces: {}",
            known.join(", ")
        )));
    }
    let (rows, values) = onnx::oip_inputs(graph, request)?;
    if timed.sample {
        timed.capture = Some(onnx_capture(graph, rows, &values, names));
    }
    timed.calling();
    let (outputs, queued) = run_graph(graph, heavy, batcher, rows, values).await?;
    timed.called(queued, rows);
    timed.rows = Some(rows);
    Ok(onnx::oip_outputs(&outputs, requested))
}

async fn run_graph(
    graph: &Arc<weir_onnx::OnnxModel>,
    heavy: bool,
    batcher: Option<&crate::batch::Batcher<weir_onnx::OnnxModel>>,
    rows: usize,
    values: Vec<Vec<f64>>,
) -> Result<(Vec<weir_onnx::Output>, Option<Duration>), ServeError> {
    if let Some(batcher) = batcher {
        let (outputs, queued) = batcher
            .score(crate::batch::GraphInput { rows, values })
            .await
            .map_err(ServeError::BadRequest)?;
        onnx::check_rows(&outputs, rows)?;
        return Ok((outputs, Some(queued)));
    }
    let run = move |graph: &weir_onnx::OnnxModel, values: &[Vec<f64>]| {
        graph
            .run(rows, values)
            .map_err(|e| ServeError::BadRequest(e.to_string()))
    };
    let outputs = if rows <= INLINE_ROWS && !heavy {
        run(graph, &values)?
    } else {
        let graph = Arc::clone(graph);
        tokio::task::spawn_blocking(move || run(&graph, &values))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??
    };
    onnx::check_rows(&outputs, rows)?;
    Ok((outputs, None))
}

async fn invocations(
    State(s): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut timed = Timed::start("invocations");
    timed.trace(&s, &headers);
    let mut routed = None;
    let result = async {
        if let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            if !ct.starts_with("application/json") {
                return Err(ServeError::UnsupportedMediaType(ct.to_string()).into());
            }
        }
        let target = resolve(&s, &s.primary, None, &headers)?;
        timed.answered_by(&target.loaded);
        routed = target.endpoint.clone().map(|e| (e, target.loaded.version));
        timed.sample = s.log.as_ref().is_some_and(|l| l.sampled(draw()));
        let bytes = body_bytes(body, s.max_body_bytes)?;
        let result = score_mlflow(&s, &target.loaded, &bytes, &mut timed).await;
        if let (Some(shadow), Some(endpoint)) = (target.shadow, target.endpoint) {
            let answer = result.as_ref().ok().map(|j| j.0["predictions"].clone());
            mirror(s.clone(), endpoint, shadow, Mirrored::Mlflow(bytes), answer);
        }
        result
    }
    .await;
    let status = result
        .as_ref()
        .map_or_else(|e| e.0.status(), |_| StatusCode::OK);
    if let Some((endpoint, version)) = &routed {
        s.record(endpoint, *version, status.as_u16(), timed.started.elapsed());
    }
    let logged = logged(&timed, &routed).zip(timed.capture.take());
    let response = match result {
        Ok(Json(answer)) => {
            let labels: Option<Vec<Value>> = answer["predictions"]
                .as_array()
                .and_then(|rows| rows.iter().map(|r| r.get("label").cloned()).collect());
            let scores = mlflow_scores(&answer);
            let id = keep(&s, routed, None, &headers, scores, labels, logged);
            with_request_id(Json(answer).into_response(), id)
        }
        Err(e) => e.into_response(),
    };
    timed.finish(&s, status);
    response
}

async fn score_mlflow(
    s: &AppState,
    loaded: &Arc<Loaded>,
    bytes: &Bytes,
    timed: &mut Timed,
) -> Result<Json<Value>, MlflowError> {
    let loaded = loaded.clone();
    // Hashing the body is only worth it when there is a cache to look in.
    let key = s
        .cache
        .enabled()
        .then(|| ResponseCache::key("invocations", &loaded.name, loaded.version, bytes));
    if let Some(k) = &key {
        let at = Instant::now();
        let hit = cached(s, &loaded, k);
        timed.looked_up(at, hit.is_some());
        if let Some(answer) = hit {
            return Ok(Json(answer));
        }
    }
    let request: Value = parse_json(bytes)?;
    let (model, inputs, batcher) = match &loaded.predictor {
        Predictor::Native {
            model,
            inputs,
            batcher,
        } => (model, inputs, batcher.as_ref()),
        Predictor::Onnx {
            model: graph,
            heavy,
            batcher,
        } => {
            let (rows, values) = onnx::mlflow_inputs(graph, &request)?;
            if timed.sample {
                timed.capture = Some(onnx_capture(
                    graph,
                    rows,
                    &values,
                    loaded.features.as_deref(),
                ));
            }
            timed.calling();
            let (outputs, queued) =
                run_graph(graph, *heavy, batcher.as_ref(), rows, values).await?;
            timed.called(queued, rows);
            timed.rows = Some(rows);
            let response = onnx::mlflow_predictions(&outputs, rows);
            if let Some(key) = key {
                s.cache.put(key, &response);
            }
            return Ok(Json(response));
        }
    };
    let columns = payload::mlflow_columns(&request)?;
    let scores = predict(model, inputs, batcher, columns, timed).await?;
    timed.rows = Some(scores.len());
    let predictions: Vec<Value> = match model.task() {
        Task::Classification => scores
            .iter()
            .map(|p| json!({"probability": p, "label": i64::from(*p >= 0.5)}))
            .collect(),
        Task::Regression => scores.iter().map(|p| json!(p)).collect(),
    };
    let response = json!({ "predictions": predictions });
    if let Some(key) = key {
        s.cache.put(key, &response);
    }
    Ok(Json(response))
}

/// The cached answer to this exact request, if the cache has it.
fn cached(s: &AppState, loaded: &Loaded, key: &crate::cache::Key) -> Option<Value> {
    let answer = s.cache.get(key)?;
    s.metrics.cache_hit(&loaded.name, loaded.version);
    Some(answer)
}
