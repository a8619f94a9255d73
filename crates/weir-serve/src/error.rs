//! Serving errors, and their HTTP status, in one place.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "'{0}' is not a model reference\n  hint: use NAME or NAME:VERSION, e.g. flights-delay:1"
    )]
    BadModelRef(String),
    #[error("cannot listen on {addr}: {reason}\n  hint: pick another address with --addr or WEIR_SERVE_ADDR")]
    Bind { addr: String, reason: String },
    #[error("{0}\n  hint: --tls-cert takes the PEM certificate chain (server's first), --tls-key its PEM private key")]
    Tls(String),
    #[error("cannot load model {model}: {reason}")]
    Load { model: String, reason: String },
    #[error(transparent)]
    Store(#[from] weir_store::StoreError),
    #[error(transparent)]
    Artifact(#[from] weir_artifacts::ArtifactError),
    #[error("model '{name}' is not served here; served models: {served}")]
    UnknownModel { name: String, served: String },
    #[error("model '{name}' has no version '{version}' here; served versions: {served}")]
    UnknownVersion {
        name: String,
        version: String,
        served: String,
    },
    #[error("model {model} is registered but could not be loaded ({reason}); fix it and load it again with POST /v2/repository/models/NAME/load")]
    Unavailable { model: String, reason: String },
    #[error("no prediction of endpoint '{endpoint}' has request id '{id}' (feedback is kept for the most recent 20000 endpoint predictions; the id is the request's OIP \"id\" or its x-weir-request-id response header)")]
    UnknownRequest { endpoint: String, id: String },
    #[error("the server is still loading its models; retry when /v2/health/ready answers 200")]
    NotReady,
    /// A request the client must fix; the message says what and where.
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported content type '{0}'; send application/json")]
    UnsupportedMediaType(String),
    #[error("the server is answering {limit} inference requests already; retry shortly")]
    Busy { limit: usize },
    #[error("the request took longer than the server's limit of {seconds} s (body and scoring)")]
    Timeout { seconds: f64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) | ServeError::BadModelRef(_) => StatusCode::BAD_REQUEST,
            ServeError::UnknownModel { .. }
            | ServeError::UnknownVersion { .. }
            | ServeError::UnknownRequest { .. } => StatusCode::NOT_FOUND,
            ServeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::NotReady | ServeError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // The version exists but cannot be put in service (corrupt, unreadable).
            ServeError::Load { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Store(e) if e.is_not_found() => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// MLflow's error code for the same condition.
    pub fn mlflow_code(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE => "BAD_REQUEST",
            StatusCode::NOT_FOUND => "RESOURCE_DOES_NOT_EXIST",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                "TEMPORARILY_UNAVAILABLE"
            }
            StatusCode::GATEWAY_TIMEOUT => "DEADLINE_EXCEEDED",
            _ => "INTERNAL_ERROR",
        }
    }
}
