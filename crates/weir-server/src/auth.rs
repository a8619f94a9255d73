//! Who may call the server: once any API token exists in the store, every
//! route but the health checks and the dashboard's page needs one
//! (`Authorization: Bearer weir_...`, which the MLflow client sends from
//! `MLFLOW_TRACKING_TOKEN`), with a role that covers the route: reading
//! (viewer), logging (editor), or changing the registry (admin). A server
//! whose store has no token is open, as MLflow's is.
//!
//! Tokens are checked by the store's `TokenCache`, shared with `weir serve`.

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use weir_store::tokens::Role;
pub use weir_store::tokens::TokenCache as Auth;

use crate::App;

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

/// The middleware: lets a request through with the role its route needs,
/// recording its token as who acts; refuses it otherwise.
pub async fn authorized(
    axum::extract::State(app): axum::extract::State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(need) = required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let what = format!("{} {}", req.method(), req.uri().path());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match app.auth.check(&app.store, authorization, need, &what).await {
        Ok(t) => t,
        Err(d) => {
            return refuse(
                StatusCode::from_u16(d.status).unwrap_or(StatusCode::UNAUTHORIZED),
                d.code,
                d.message,
            )
        }
    };
    let mut req = req;
    if let Some(token) = token {
        req.extensions_mut().insert(Caller(format!(
            "{} (token {}, weir server)",
            token.name,
            &token.id[..12]
        )));
    }
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
