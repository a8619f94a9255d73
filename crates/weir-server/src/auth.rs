//! Who may call the server: once any API token exists in the store, every
//! route but the health checks and the dashboard's page needs one
//! (`Authorization: Bearer weir_...`, which the MLflow client sends from
//! `MLFLOW_TRACKING_TOKEN`), with a role that covers the route: reading
//! (viewer), logging (editor), or changing the registry (admin). A server
//! whose store has no token is open, as MLflow's is.
//!
//! Validated tokens and the "any token yet?" answer are cached for a few
//! seconds, so the hot logging routes pay a map lookup, not a query; a
//! revocation takes effect within that time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use weir_store::tokens::{Role, Token};

use crate::App;

/// How long a validated token, or the answer that no token exists, is trusted.
const CACHE_FOR: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Auth {
    locked: AtomicBool,
    /// When the store was last asked whether any token exists (ms since the
    /// server's start), while none did.
    checked_at: AtomicI64,
    valid: Mutex<HashMap<String, (Token, Instant)>>,
}

/// What a route needs: nothing, or at least a role.
pub fn required(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/health" | "/version" | "/") || path.starts_with("/static/") {
        return None;
    }
    let last = path.rsplit('/').next().unwrap_or("");
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        // MLflow searches are POSTs that change nothing.
        || (*method == Method::POST && matches!(last, "search" | "get-latest-versions"));
    if reads {
        return Some(Role::Viewer);
    }
    let registry = ["/registered-models/", "/model-versions/"]
        .iter()
        .any(|p| path.contains(p));
    Some(if registry { Role::Admin } else { Role::Editor })
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    let mut r = (
        status,
        axum::Json(serde_json::json!({ "error_code": code, "message": message })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"weir\""),
        );
    }
    r
}

impl Auth {
    async fn locked(&self, app: &App, started: Instant) -> bool {
        if self.locked.load(Ordering::Relaxed) {
            return true;
        }
        let now = started.elapsed().as_millis() as i64;
        let last = self.checked_at.load(Ordering::Relaxed);
        if last != 0 && now - last < CACHE_FOR.as_millis() as i64 {
            return false;
        }
        self.checked_at.store(now.max(1), Ordering::Relaxed);
        // Tokens are revoked, never deleted: once locked, locked for good.
        let any = app.store.any_tokens().await.unwrap_or(true);
        self.locked.store(any, Ordering::Relaxed);
        any
    }

    async fn token(&self, app: &App, text: &str) -> Result<Token, Response> {
        let key = weir_core::Digest::of_bytes(text.as_bytes()).hex();
        if let Some((t, at)) = self.valid.lock().expect("auth cache").get(&key) {
            if at.elapsed() < CACHE_FOR && t.expires_at.is_none_or(|e| e > weir_core::now_ms()) {
                return Ok(t.clone());
            }
        }
        match app.store.authenticate(text).await {
            Ok(Ok(t)) => {
                self.valid
                    .lock()
                    .expect("auth cache")
                    .insert(key, (t.clone(), Instant::now()));
                Ok(t)
            }
            Ok(Err(why)) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                why.to_string(),
            )),
            Err(e) => Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "TEMPORARILY_UNAVAILABLE",
                format!("cannot check the token: {e}"),
            )),
        }
    }
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The middleware: lets a request through with the role its route needs,
/// recording its token as who acts; refuses it otherwise.
pub async fn authorized(
    axum::extract::State(app): axum::extract::State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = *STARTED.get_or_init(Instant::now);
    let Some(need) = required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if !app.auth.locked(&app, started).await {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(text) = bearer else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "this server needs an API token: send `Authorization: Bearer weir_...` (MLflow clients: set MLFLOW_TRACKING_TOKEN); an admin makes one with `weir tokens create`".into(),
        );
    };
    let token = match app.auth.token(&app, text).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if token.role < need {
        return refuse(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "token '{}' is a {} token; {} {} needs {}",
                token.name,
                token.role.as_str(),
                req.method(),
                req.uri().path(),
                need.as_str()
            ),
        );
    }
    let mut req = req;
    req.extensions_mut().insert(Caller(format!(
        "{} (token {}, weir server)",
        token.name,
        &token.id[..12]
    )));
    next.run(req).await
}

/// Who a request's token says made it, for the audit log.
#[derive(Clone)]
pub struct Caller(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_role_their_effect_does() {
        let need = |m: Method, p: &str| required(&m, p);
        assert_eq!(need(Method::GET, "/health"), None);
        assert_eq!(need(Method::GET, "/static/0.1.0/app.js"), None);
        assert_eq!(
            need(Method::GET, "/api/2.0/mlflow/runs/get"),
            Some(Role::Viewer)
        );
        assert_eq!(
            need(Method::POST, "/api/2.0/mlflow/runs/search"),
            Some(Role::Viewer)
        );
        assert_eq!(
            need(Method::POST, "/api/2.0/mlflow/runs/log-batch"),
            Some(Role::Editor)
        );
        assert_eq!(
            need(Method::PUT, "/api/2.0/mlflow-artifacts/artifacts/1/a/b.txt"),
            Some(Role::Editor)
        );
        assert_eq!(
            need(Method::POST, "/api/2.0/mlflow/registered-models/alias"),
            Some(Role::Admin)
        );
        assert_eq!(
            need(Method::DELETE, "/api/2.0/mlflow/model-versions/delete"),
            Some(Role::Admin)
        );
        assert_eq!(need(Method::GET, "/metrics"), Some(Role::Viewer));
        assert_eq!(
            need(
                Method::POST,
                "/api/2.0/mlflow/registered-models/get-latest-versions"
            ),
            Some(Role::Viewer)
        );
    }
}
