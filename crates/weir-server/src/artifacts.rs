//! The artifact proxy MLflow clients use for `mlflow-artifacts:` URIs
//! (`/api/2.0/mlflow-artifacts/artifacts/...`), and `/api/2.0/mlflow/artifacts/list`.
//! Bytes go to Weir's content-addressed artifact store; the metadata store
//! maps each path to its digest. Paths never leave the proxy's namespace.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::App;

/// A relative path of plain segments: no `..`, no absolute paths, no empty
/// or `.` segments, no backslashes or NULs.
pub fn safe_path(path: &str) -> ApiResult<String> {
    let invalid = || {
        ApiError::InvalidParameter(format!(
            "Invalid path '{path}': artifact paths are relative and may not contain '..', '.', \
             empty segments, backslashes or NUL"
        ))
    };
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err(invalid());
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid());
    }
    Ok(trimmed.to_string())
}

/// Removes the scratch file of an upload however the upload ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn upload(
    State(app): State<App>,
    Path(path): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let path = safe_path(&path)?;
    if path.is_empty() {
        return Err(ApiError::InvalidParameter(
            "an artifact path is required".into(),
        ));
    }
    std::fs::create_dir_all(&app.scratch)
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", app.scratch.display())))?;
    let scratch = Scratch(app.scratch.join(format!("upload-{}", weir_core::new_id())));
    let mut file = tokio::fs::File::create(&scratch.0)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", scratch.0.display())))?;
    let mut body = req.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot write the upload: {e}")))?;
    drop(file);
    let stored = app.artifacts.put_file(&scratch.0).await?;
    app.store
        .put_artifact_path(&path, &stored.digest.hex(), stored.size as i64)
        .await?;
    Ok(Json(json!({})))
}

pub async fn download(State(app): State<App>, Path(path): Path<String>) -> ApiResult<Response> {
    let path = safe_path(&path)?;
    let Some((digest, size)) = app.store.artifact_path(&path).await? else {
        return Err(ApiError::NotFound(format!(
            "artifact '{path}' does not exist"
        )));
    };
    let digest: weir_core::Digest = digest
        .parse()
        .map_err(|e| ApiError::Internal(format!("corrupt digest for '{path}': {e}")))?;
    // Streamed, not read whole: a model can be gigabytes. A blob that fails
    // its digest check ends the stream with an error, which aborts the
    // response, so the client sees a failed download, never a wrong file.
    let stream = app.artifacts.get_stream(&digest).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn delete(State(app): State<App>, Path(path): Path<String>) -> ApiResult<Json<Value>> {
    let path = safe_path(&path)?;
    if app.store.delete_artifact_paths(&path).await? == 0 {
        return Err(ApiError::NotFound(format!(
            "artifact '{path}' does not exist"
        )));
    }
    Ok(Json(json!({})))
}

/// The entries directly under `prefix`: files with sizes, directories once.
async fn entries(app: &App, prefix: &str) -> ApiResult<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    let strip = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let mut last_dir: Option<String> = None;
    for (path, size) in app.store.artifact_paths_under(prefix).await? {
        let rest = &path[strip.len()..];
        match rest.split_once('/') {
            Some((dir, _)) => {
                if last_dir.as_deref() != Some(dir) {
                    out.push(json!({ "path": dir, "is_dir": true }));
                    last_dir = Some(dir.to_string());
                }
            }
            None => out.push(json!({ "path": rest, "is_dir": false, "file_size": size })),
        }
    }
    Ok(out)
}

/// `GET /api/2.0/mlflow-artifacts/artifacts?path=...`: names relative to `path`.
pub async fn list(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let prefix = safe_path(&p.opt_str("path").unwrap_or_default())?;
    Ok(Json(json!({ "files": entries(&app, &prefix).await? })))
}

/// The proxy path of a run's artifact root, when the run stores through the proxy.
fn proxied_root(artifact_uri: &str) -> Option<String> {
    artifact_uri.strip_prefix("mlflow-artifacts:").map(|rest| {
        rest.trim_start_matches('/')
            .trim_end_matches('/')
            .to_string()
    })
}

/// The entries under `rel` of an artifact root URI, with paths relative to
/// the root; nothing when the root is not stored through the proxy.
pub async fn list_under_uri(app: &App, root_uri: &str, rel: &str) -> ApiResult<Vec<Value>> {
    let Some(root) = proxied_root(root_uri) else {
        return Ok(Vec::new());
    };
    let prefix = if rel.is_empty() {
        root
    } else {
        format!("{root}/{rel}")
    };
    Ok(entries(app, &prefix)
        .await?
        .into_iter()
        .map(|mut e| {
            if !rel.is_empty() {
                let name = e["path"].as_str().unwrap_or_default().to_string();
                e["path"] = json!(format!("{rel}/{name}"));
            }
            e
        })
        .collect())
}

/// `GET /api/2.0/mlflow/artifacts/list?run_id=...&path=...`: paths relative
/// to the run's artifact root.
pub async fn list_run(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let info = app.store.run_info(&p.run_id()?).await?;
    let rel = safe_path(&p.opt_str("path").unwrap_or_default())?;
    let files = list_under_uri(&app, &info.artifact_uri, &rel).await?;
    Ok(Json(
        json!({ "root_uri": info.artifact_uri, "files": files }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_rejected() {
        for bad in [
            "../x",
            "a/../b",
            "/etc/passwd",
            "a/./b",
            "a\\b",
            "a//b",
            "..",
        ] {
            assert!(safe_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            safe_path("0/abc/artifacts/model/MLmodel").unwrap(),
            "0/abc/artifacts/model/MLmodel"
        );
        assert_eq!(safe_path("").unwrap(), "");
        assert_eq!(safe_path("dir/").unwrap(), "dir");
    }
}
