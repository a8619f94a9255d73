//! MLflow 3's logged models (`/api/2.0/mlflow/logged-models/...`), which the
//! 3.x client creates in `log_model` before uploading the model's files to
//! the model's artifact URI, and `runs/outputs`.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use weir_store::filter;
use weir_store::tracking::NewLoggedModel;

use crate::artifacts;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::{json as shape, App};

type Reply = ApiResult<Json<Value>>;

pub async fn create(State(app): State<App>, p: Params) -> Reply {
    let experiment_id = p.experiment_id("experiment_id")?;
    let name = p
        .opt_str("name")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".to_string());
    let model = app
        .store
        .create_logged_model(&NewLoggedModel {
            model_id: format!("m-{}", weir_core::new_id()),
            experiment_id,
            name,
            model_type: p.opt_str("model_type"),
            source_run_id: p.opt_str("source_run_id").filter(|r| !r.is_empty()),
            params: p.key_values("params")?,
            tags: p.key_values("tags")?,
        })
        .await?;
    Ok(Json(json!({ "model": shape::logged_model(&model) })))
}

pub async fn get(State(app): State<App>, Path(id): Path<String>) -> Reply {
    let model = app.store.logged_model(&id).await?;
    Ok(Json(json!({ "model": shape::logged_model(&model) })))
}

const STATUSES: &[&str] = &[
    "LOGGED_MODEL_PENDING",
    "LOGGED_MODEL_READY",
    "LOGGED_MODEL_UPLOAD_FAILED",
];

pub async fn finalize(State(app): State<App>, Path(id): Path<String>, p: Params) -> Reply {
    let status = p.str("status")?;
    let status = match status.as_str() {
        "1" => "LOGGED_MODEL_PENDING".to_string(),
        "2" => "LOGGED_MODEL_READY".to_string(),
        "3" => "LOGGED_MODEL_UPLOAD_FAILED".to_string(),
        s if STATUSES.contains(&s) => s.to_string(),
        other => {
            return Err(ApiError::InvalidParameter(format!(
                "invalid status '{other}'; use one of {}",
                STATUSES.join(", ")
            )))
        }
    };
    let model = app.store.finalize_logged_model(&id, &status).await?;
    Ok(Json(json!({ "model": shape::logged_model(&model) })))
}

pub async fn delete(State(app): State<App>, Path(id): Path<String>) -> Reply {
    app.store.delete_logged_model(&id).await?;
    Ok(Json(json!({})))
}

pub async fn set_tags(State(app): State<App>, Path(id): Path<String>, p: Params) -> Reply {
    let tags = p.key_values("tags")?;
    app.store.set_logged_model_pairs(&id, true, &tags).await?;
    let model = app.store.logged_model(&id).await?;
    Ok(Json(json!({ "model": shape::logged_model(&model) })))
}

pub async fn delete_tag(State(app): State<App>, Path((id, key)): Path<(String, String)>) -> Reply {
    app.store.delete_logged_model_tag(&id, &key).await?;
    Ok(Json(json!({})))
}

pub async fn log_params(State(app): State<App>, Path(id): Path<String>, p: Params) -> Reply {
    let params = p.key_values("params")?;
    app.store
        .set_logged_model_pairs(&id, false, &params)
        .await?;
    Ok(Json(json!({})))
}

pub async fn search(State(app): State<App>, p: Params) -> Reply {
    let experiment_ids = p.experiment_ids()?;
    let filter = filter::parse_logged_model_filter(&p.opt_str("filter").unwrap_or_default())
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let max = p.opt_i64("max_results")?.unwrap_or(100).clamp(1, 50000);
    let offset = crate::tracking::offset_of(&p)?;
    let (models, more) = app
        .store
        .search_logged_models(&experiment_ids, &filter, max, offset)
        .await?;
    let mut out = json!({ "models": models.iter().map(shape::logged_model).collect::<Vec<_>>() });
    if more {
        out["next_page_token"] = json!(crate::tracking::page_token(offset + max));
    }
    Ok(Json(out))
}

/// Lists a logged model's files (used when its artifact store is not proxied).
pub async fn list_artifacts(State(app): State<App>, Path(id): Path<String>, p: Params) -> Reply {
    let model = app.store.logged_model(&id).await?;
    let rel = artifacts::safe_path(&p.opt_str("artifact_directory_path").unwrap_or_default())?;
    let files = artifacts::list_under_uri(&app, &model.artifact_uri, &rel).await?;
    Ok(Json(
        json!({ "root_uri": model.artifact_uri, "files": files }),
    ))
}

/// `runs/outputs`: the models a run produced.
pub async fn log_outputs(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let models = p.model_refs()?;
    app.store.log_run_models(&run_id, "output", &models).await?;
    Ok(Json(json!({})))
}
