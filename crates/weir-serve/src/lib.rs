//! The inference server: registered models behind the Open Inference
//! Protocol v2 (`/v2/...`) and MLflow's scoring protocol (`/invocations`,
//! `/ping`) on one port.
//!
//! Start-up: model versions are resolved from the registry before the port
//! opens (an unknown model is an immediate error); then the server listens,
//! answering live but not ready, while each model is fetched from the
//! artifact store, verified, loaded and warmed up; only then is it ready.

mod batch;
mod cache;
mod error;
mod metrics;
mod onnx;
mod payload;
mod register;
mod routes;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use weir_artifacts::ArtifactStore;
use weir_ml::{InputKind, InputSpec, Model};
use weir_store::Store;

pub use batch::BatchOptions;
pub use error::ServeError;
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
    pub max_body_bytes: usize,
    /// Inference requests answered at once; more get 429.
    pub max_concurrency: usize,
    /// Longest an inference request may take, body included; then 504.
    pub request_timeout: std::time::Duration,
    /// Bytes of answers the response cache may hold; 0 turns it off.
    pub response_cache_bytes: usize,
    /// Adaptive batching of each model version's requests.
    pub batch: BatchOptions,
}

/// A model version loaded and warmed up.
pub(crate) struct Loaded {
    pub name: String,
    pub version: i64,
    pub predictor: Predictor,
}

pub(crate) enum Predictor {
    /// A Weir model: named feature columns in, its fitted transforms applied.
    Native {
        model: Arc<Model>,
        inputs: Vec<InputSpec>,
        /// The queue that batches this version's requests, when batching is on.
        batcher: Option<batch::Batcher>,
    },
    /// An ONNX graph: tensors in, tensors out.
    Onnx(Arc<weir_onnx::OnnxModel>),
}

impl Loaded {
    pub fn platform(&self) -> String {
        match &self.predictor {
            Predictor::Native { model, .. } => format!("weir_{}", model.kind()),
            Predictor::Onnx(_) => "onnx".into(),
        }
    }

    fn input_count(&self) -> usize {
        match &self.predictor {
            Predictor::Native { inputs, .. } => inputs.len(),
            Predictor::Onnx(m) => m.inputs().len(),
        }
    }
}

pub(crate) struct AppState {
    /// Versions per model name, ascending; the last is the default.
    models: RwLock<BTreeMap<String, Vec<Arc<Loaded>>>>,
    /// The first model named on the command line answers /invocations.
    pub primary: String,
    ready: AtomicBool,
    pub max_body_bytes: usize,
    pub metrics: Arc<metrics::Metrics>,
    pub batch: batch::BatchOptions,
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub max_concurrency: usize,
    pub request_timeout: std::time::Duration,
    /// Where the repository extension loads versions from.
    pub store: Store,
    pub artifacts: ArtifactStore,
    /// Versions whose last load failed, with why (shown by the index).
    pub failed: RwLock<BTreeMap<(String, i64), String>>,
    pub cache: cache::ResponseCache,
}

impl AppState {
    /// Puts a loaded version in service (replacing the same version).
    pub(crate) fn add(&self, loaded: Loaded) {
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
    if register::is_onnx(&mv) {
        // Parsing and optimising a graph is CPU work; keep it off the reactor.
        let model = tokio::task::spawn_blocking(move || {
            let model = weir_onnx::OnnxModel::from_bytes(&bytes)?;
            register::warm_up_onnx(&model)?;
            Ok::<_, weir_onnx::OnnxError>(model)
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
        return Ok(Loaded {
            name: name.to_string(),
            version,
            predictor: Predictor::Onnx(Arc::new(model)),
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
    let batcher = (state.batch.max_rows > 0).then(|| {
        batch::Batcher::start(
            Arc::clone(&model),
            state.batch,
            Arc::clone(&state.metrics),
            (name.to_string(), version),
        )
    });
    Ok(Loaded {
        name: name.to_string(),
        version,
        predictor: Predictor::Native {
            model,
            inputs,
            batcher,
        },
    })
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
    let state = Arc::new(AppState {
        models: RwLock::new(BTreeMap::new()),
        primary: resolved.first().map(|(n, _)| n.clone()).unwrap_or_default(),
        ready: AtomicBool::new(false),
        max_body_bytes: options.max_body_bytes,
        metrics: Arc::new(metrics::Metrics::new()),
        batch: options.batch,
        inflight: Arc::new(tokio::sync::Semaphore::new(options.max_concurrency.max(1))),
        max_concurrency: options.max_concurrency.max(1),
        request_timeout: options.request_timeout,
        store: store.clone(),
        artifacts: artifacts.clone(),
        failed: RwLock::new(BTreeMap::new()),
        cache: cache::ResponseCache::new(options.response_cache_bytes),
    });
    let listener = tokio::net::TcpListener::bind(&options.addr)
        .await
        .map_err(|e| ServeError::Bind {
            addr: options.addr.clone(),
            reason: e.to_string(),
        })?;
    let local = listener.local_addr().map_err(|e| ServeError::Bind {
        addr: options.addr.clone(),
        reason: e.to_string(),
    })?;
    eprintln!("listening on http://{local}");

    let app = routes::router(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(weir_core::signals::terminated())
            .await
    });

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
    if let (Some(e), true) = (first_failure, state.names().is_empty()) {
        return Err(e);
    }
    state.ready.store(true, Ordering::Release);
    eprintln!("ready");
    server
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    eprintln!("stopped");
    Ok(())
}
