//! The tracking server (`weir server`): MLflow's REST API over Weir's
//! metadata store, so the official `mlflow` client works unchanged against
//! the same data the pipeline engine writes, and an artifact proxy over
//! Weir's artifact store. The dashboard is served at `/` (`ui.rs`).

mod artifacts;
pub mod auth;
mod dashboard;
mod error;
mod json;
mod models;
mod params;
mod registry;
pub mod telemetry;
mod tracking;
mod ui;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use axum::Router;
use weir_artifacts::ArtifactStore;
use weir_store::Store;

pub use error::ApiError;

#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub artifacts: ArtifactStore,
    /// Where uploads are staged before they are stored.
    pub scratch: PathBuf,
    pub metrics: telemetry::ServerMetrics,
    pub auth: auth::Auth,
    /// Changes this server holds for a second person (`[approvals]`).
    pub approvals: weir_core::config::Approvals,
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl App {
    pub fn new(store: Store, artifacts: ArtifactStore, scratch: PathBuf) -> App {
        App(Arc::new(Inner {
            store,
            artifacts,
            scratch,
            metrics: telemetry::ServerMetrics::new(),
            auth: auth::Auth::default(),
            approvals: Default::default(),
        }))
    }

    /// Holds changes to these aliases for approval, as `weir models alias`
    /// does, so the MLflow API is no way around a second person.
    pub fn with_approvals(mut self, approvals: weir_core::config::Approvals) -> App {
        Arc::get_mut(&mut self.0)
            .expect("set up before the app is shared")
            .approvals = approvals;
        self
    }
}

/// The largest JSON request: a full log-batch is well under 1 MiB.
const MAX_JSON_BODY: usize = 16 << 20;

/// Every route; MLflow's clients call both the 2.0 and the 3.0 prefixes.
pub fn router(app: App) -> Router {
    use registry as r;
    use tracking as t;
    let mlflow = Router::new()
        .route("/experiments/create", post(t::create_experiment))
        .route("/experiments/get", get(t::get_experiment))
        .route("/experiments/get-by-name", get(t::get_experiment_by_name))
        .route(
            "/experiments/search",
            get(t::search_experiments).post(t::search_experiments),
        )
        .route("/experiments/update", post(t::update_experiment))
        .route("/experiments/delete", post(t::delete_experiment))
        .route("/experiments/restore", post(t::restore_experiment))
        .route(
            "/experiments/set-experiment-tag",
            post(t::set_experiment_tag),
        )
        .route(
            "/experiments/delete-experiment-tag",
            post(t::delete_experiment_tag),
        )
        .route("/runs/create", post(t::create_run))
        .route("/runs/get", get(t::get_run))
        .route("/runs/update", post(t::update_run))
        .route("/runs/delete", post(t::delete_run))
        .route("/runs/restore", post(t::restore_run))
        .route("/runs/log-metric", post(t::log_metric))
        .route("/runs/log-parameter", post(t::log_param))
        .route("/runs/set-tag", post(t::set_tag))
        .route("/runs/delete-tag", post(t::delete_tag))
        .route("/runs/log-batch", post(t::log_batch))
        .route("/runs/log-inputs", post(t::log_inputs))
        .route("/runs/log-model", post(t::log_model))
        .route("/runs/search", get(t::search_runs).post(t::search_runs))
        .route("/metrics/get-history", get(t::metric_history))
        .route("/artifacts/list", get(artifacts::list_run))
        .route("/runs/outputs", post(models::log_outputs))
        .route("/registered-models/create", post(r::create_model))
        .route("/registered-models/get", get(r::get_model))
        .route("/registered-models/rename", post(r::rename_model))
        .route("/registered-models/update", patch(r::update_model))
        .route("/registered-models/delete", delete(r::delete_model))
        .route(
            "/registered-models/search",
            get(r::search_models).post(r::search_models),
        )
        .route(
            "/registered-models/get-latest-versions",
            get(r::latest_versions).post(r::latest_versions),
        )
        .route("/registered-models/set-tag", post(r::set_model_tag))
        .route("/registered-models/delete-tag", delete(r::delete_model_tag))
        .route(
            "/registered-models/alias",
            get(r::get_by_alias)
                .post(r::set_alias)
                .delete(r::delete_alias),
        )
        .route("/model-versions/create", post(r::create_version))
        .route("/model-versions/get", get(r::get_version))
        .route("/model-versions/update", patch(r::update_version))
        .route("/model-versions/delete", delete(r::delete_version))
        .route(
            "/model-versions/search",
            get(r::search_versions).post(r::search_versions),
        )
        .route("/model-versions/get-download-uri", get(r::download_uri))
        .route(
            "/model-versions/transition-stage",
            post(r::transition_stage),
        )
        .route("/model-versions/set-tag", post(r::set_version_tag))
        .route("/model-versions/delete-tag", delete(r::delete_version_tag))
        .route("/logged-models", post(models::create))
        .route("/logged-models/search", post(models::search))
        .route(
            "/logged-models/{model_id}",
            get(models::get)
                .patch(models::finalize)
                .delete(models::delete),
        )
        .route("/logged-models/{model_id}/tags", patch(models::set_tags))
        .route(
            "/logged-models/{model_id}/tags/{tag_key}",
            delete(models::delete_tag),
        )
        .route("/logged-models/{model_id}/params", post(models::log_params))
        .route(
            "/logged-models/{model_id}/artifacts/directories",
            get(models::list_artifacts),
        )
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    let proxy = Router::new()
        .route("/artifacts", get(artifacts::list))
        .route(
            "/artifacts/{*path}",
            get(artifacts::download)
                .put(artifacts::upload)
                .delete(artifacts::delete),
        )
        // Artifacts can be large; they are streamed to disk, not held in memory.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .nest("/api/2.0/mlflow", mlflow.clone())
        .nest("/ajax-api/2.0/mlflow", mlflow.clone())
        .nest("/api/3.0/mlflow", mlflow)
        .nest("/api/2.0/mlflow-artifacts", proxy)
        .merge(ui::routes())
        .route("/health", get(|| async { "OK" }))
        .route("/metrics", get(metrics))
        .route("/version", get(|| async { env!("CARGO_PKG_VERSION") }))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::EndpointNotFound(format!("no endpoint {uri} on this Weir server"))
        })
        .layer(axum::middleware::from_fn(same_origin_writes))
        .layer(axum::middleware::from_fn(audited))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::authorized,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observed))
        .with_state(app)
}

async fn metrics(axum::extract::State(app): axum::extract::State<App>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        app.metrics.render(&app.store),
    )
        .into_response()
}

/// Counts and times every request by its route's template; a path no
/// route matches counts as `unmatched`.
async fn observed(
    axum::extract::State(app): axum::extract::State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let in_flight = app.metrics.started();
    let response = next.run(req).await;
    in_flight.done(&method, &route, response.status().as_u16());
    response
}

/// Changes made through the server are the audit log's: made by whom the
/// request came from (no credentials yet: its address).
async fn audited(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::extract::ConnectInfo;
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return next.run(req).await;
    }
    let actor = match req.extensions().get::<auth::Caller>() {
        Some(caller) => caller.0.clone(),
        None => {
            let from = req
                .extensions()
                .get::<ConnectInfo<weir_tls::Peer>>()
                .map_or("an unknown address".to_string(), |c| {
                    c.0 .0.ip().to_string()
                });
            format!("anonymous@{from} (weir server)")
        }
    };
    weir_store::audit::acting_as(actor, next.run(req)).await
}

/// The defence against cross-site request forgery: a request that changes
/// something (any method but GET, HEAD and OPTIONS: logging, deleting runs,
/// setting aliases) is refused when a browser says another site sent it. A
/// page elsewhere could otherwise make a visitor's browser post a form to
/// this server (`runs/delete?run_id=...` needs no body). Clients that are
/// not browsers (mlflow, curl, the runner) send neither header and pass.
async fn same_origin_writes(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    use axum::response::IntoResponse;
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        if let Some(why) = cross_site(req.headers()) {
            return ApiError::PermissionDenied(format!(
                "{} {} was sent by a page on another site ({why}); changes are accepted from this server's own pages and from clients that are not browsers",
                req.method(),
                req.uri().path()
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Why a request's headers say a page of another origin sent it, if they
/// do. The browser's own `Sec-Fetch-Site` decides where it is sent (every
/// current browser sends it, and it survives a reverse proxy rewriting
/// `Host`); else `Origin` must name the `Host` (or `X-Forwarded-Host`).
fn cross_site(headers: &axum::http::HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    match text("sec-fetch-site") {
        Some("same-origin" | "none") => return None,
        Some(site) => return Some(format!("Sec-Fetch-Site: {site}")),
        None => {}
    }
    let origin = text("origin")?;
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    let hosts = [text("host"), text("x-forwarded-host")];
    let same = !origin_host.is_empty()
        && hosts
            .iter()
            .flatten()
            .any(|h| h.eq_ignore_ascii_case(origin_host));
    (!same).then(|| format!("Origin {origin}, Host {}", text("host").unwrap_or("")))
}

/// Serves until Ctrl-C or SIGTERM, then lets in-flight requests finish.
/// Serves on a bound listener (bound by the caller, who may want its
/// address first: `weir server --open`), plain or TLS.
pub async fn serve(app: App, listener: weir_tls::Listener) -> std::io::Result<()> {
    let url = listener.url()?;
    tracing::info!(%url, "tracking server listening");
    eprintln!(
        "weir server: MLflow tracking API on {url} (MLFLOW_TRACKING_URI), dashboard at {url}/"
    );
    weir_tls::serve(listener, router(app), weir_core::signals::terminated()).await
}

#[cfg(test)]
mod tests {
    use super::cross_site;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_pages_of_other_origins_are_cross_site() {
        // Not a browser, or this server's own page.
        assert_eq!(cross_site(&headers(&[("host", "127.0.0.1:5000")])), None);
        assert_eq!(
            cross_site(&headers(&[
                ("host", "127.0.0.1:5000"),
                ("origin", "http://127.0.0.1:5000"),
                ("sec-fetch-site", "same-origin"),
            ])),
            None
        );
        // Behind a proxy that rewrote Host: the browser's word, or the
        // forwarded host.
        assert_eq!(
            cross_site(&headers(&[
                ("host", "127.0.0.1:5000"),
                ("origin", "https://weir.example"),
                ("sec-fetch-site", "same-origin"),
            ])),
            None
        );
        assert_eq!(
            cross_site(&headers(&[
                ("host", "127.0.0.1:5000"),
                ("x-forwarded-host", "weir.example"),
                ("origin", "https://weir.example"),
            ])),
            None
        );
        // Another site, another port of the same host, an opaque origin.
        for h in [
            headers(&[
                ("host", "127.0.0.1:5000"),
                ("origin", "https://evil.example"),
            ]),
            headers(&[
                ("host", "127.0.0.1:5000"),
                ("origin", "http://127.0.0.1:3000"),
            ]),
            headers(&[("host", "127.0.0.1:5000"), ("origin", "null")]),
            headers(&[("host", "127.0.0.1:5000"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "127.0.0.1:5000"), ("sec-fetch-site", "same-site")]),
            headers(&[
                ("host", "127.0.0.1:5000"),
                ("origin", "http://127.0.0.1:5000"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ] {
            assert!(cross_site(&h).is_some(), "{h:?}");
        }
    }
}
