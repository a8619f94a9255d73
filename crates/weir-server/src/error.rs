//! Errors in MLflow's shape: `{"error_code": ..., "message": ...}` with the
//! HTTP status MLflow gives each code. This is the one place errors become
//! statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use weir_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    EndpointNotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidParameter(_) => "INVALID_PARAMETER_VALUE",
            ApiError::NotFound(_) => "RESOURCE_DOES_NOT_EXIST",
            ApiError::AlreadyExists(_) => "RESOURCE_ALREADY_EXISTS",
            ApiError::BadRequest(_) => "BAD_REQUEST",
            ApiError::EndpointNotFound(_) => "ENDPOINT_NOT_FOUND",
            ApiError::PermissionDenied(_) => "PERMISSION_DENIED",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter(_)
            | ApiError::AlreadyExists(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::EndpointNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id, .. } => {
                ApiError::NotFound(format!("{kind} '{id}' does not exist"))
            }
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(e.to_string()),
            StoreError::Invalid(m) => ApiError::InvalidParameter(m),
            other => {
                tracing::error!(error = %other, "metadata store error");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl From<weir_artifacts::ArtifactError> for ApiError {
    fn from(e: weir_artifacts::ArtifactError) -> Self {
        match e {
            weir_artifacts::ArtifactError::Missing { .. } => ApiError::NotFound(e.to_string()),
            other => {
                tracing::error!(error = %other, "artifact store error");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code(), "message": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
