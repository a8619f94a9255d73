//! What the dashboard's study, model and deployment pages read that no
//! MLflow endpoint gives: a tuned step's trials with their objective, a
//! model's versions with their metrics and lineage and the endpoints that
//! serve them, and an endpoint's rollout with its traffic history.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use weir_store::StoreError;

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::App;

/// A stored JSON document, or null when it does not parse (a page shows
/// what it can rather than failing on one bad column).
fn doc(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// `GET /api/ui/study?run_id=R&step=S`: the study of step S in pipeline run
/// R: its objective and direction, the scheduler's rungs, and every trial
/// with its params, value, intermediate values by step, and tracking run.
pub async fn study(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let run = app.store.run(&p.run_id()?).await?;
    let step = p.str("step")?;
    let pipeline: weir_core::pipeline::Pipeline =
        serde_json::from_str(&run.spec_json).map_err(|e| StoreError::Corrupt {
            what: "runs.spec_json".into(),
            reason: e.to_string(),
        })?;
    let Some(tune) = pipeline
        .steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.tune.as_ref())
    else {
        return Err(ApiError::NotFound(format!(
            "step '{step}' of run {} has no tune: block, so no study",
            run.id
        )));
    };
    let (metric, maximize) = tune.objective();
    let trials = app.store.study_trials(&run.id, &step).await?;
    let trials: Vec<Value> = trials
        .iter()
        .map(|t| {
            json!({
                "number": t.number,
                "state": t.state,
                "value": t.value,
                "params": doc(&t.params_json),
                "intermediate": doc(&t.intermediate_json),
                "error": t.error,
                "tracking_run_id": t.tracking_run_id,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "node": t.node,
            })
        })
        .collect();
    Ok(Json(json!({
        "run_id": run.id,
        "pipeline": run.pipeline,
        "status": run.status,
        "step": step,
        "metric": metric,
        "goal": if maximize { "maximize" } else { "minimize" },
        "sampler": tune.spec.get("sampler"),
        "scheduler": tune.spec.get("scheduler"),
        "trials": trials,
    })))
}

/// `GET /api/ui/model?name=M`: a registered model with every version's
/// metrics, lineage, aliases and status, and the endpoints serving it.
pub async fn model(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let name = p.str("name")?;
    let model = app.store.registered_model(&name).await?;
    // A model registered without versions yet is a model with none.
    let versions = match app.store.model_versions(&name).await {
        Ok(v) => v,
        Err(StoreError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let runs: Vec<&str> = versions
        .iter()
        .filter_map(|v| v.run_id.as_deref())
        .collect();
    let costs = app.store.costs_of_runs(&runs).await?;
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let aliases: Vec<&str> = model
                .aliases
                .iter()
                .filter(|(_, n)| *n == v.version)
                .map(|(a, _)| a.as_str())
                .collect();
            json!({
                "version": v.version,
                "aliases": aliases,
                "status": v.status,
                "stage": v.stage,
                "source": v.source,
                "digest": v.digest,
                "run_id": v.run_id,
                "step_run_id": v.step_run_id,
                "description": v.description,
                "user_id": v.user_id,
                "created_at": v.created_at,
                "metrics": doc(&v.metrics_json),
                "lineage": doc(&v.lineage_json),
                // What the run that trained it cost, at the prices it ran at.
                "training_cost": v.run_id.as_deref().and_then(|r| costs.get(r)),
            })
        })
        .collect();
    let deployments: Vec<Value> = app
        .store
        .deployments()
        .await?
        .into_iter()
        .filter(|d| d.model == name)
        .map(|d| json!(d))
        .collect();
    Ok(Json(json!({
        "name": model.name,
        "description": model.description,
        "created_at": model.created_at,
        "updated_at": model.last_updated_at,
        "tags": model.tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        "aliases": model.aliases.iter().map(|(a, v)| json!({"alias": a, "version": v})).collect::<Vec<_>>(),
        "versions": versions,
        "deployments": deployments,
    })))
}

/// How far back an endpoint's page reads its intervals by default.
const DEFAULT_HOURS: i64 = 24;
/// The most intervals one page draws.
const MAX_INTERVALS: i64 = 5_000;

/// `GET /api/ui/deployments`: every endpoint's rollout state and its last
/// interval per version.
pub async fn deployments(State(app): State<App>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for d in app.store.deployments().await? {
        let recent = app.store.deployment_intervals(&d.endpoint, 0, 4).await?;
        out.push(json!({ "deployment": d, "recent": recent }));
    }
    Ok(Json(json!({ "deployments": out })))
}

/// `GET /api/ui/deployment?endpoint=E&hours=H`: an endpoint's rollout
/// state, its history of events, and what each version answered interval by
/// interval over the last H hours (24 by default).
pub async fn deployment(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let endpoint = p.str("endpoint")?;
    let hours = p
        .opt_i64("hours")?
        .unwrap_or(DEFAULT_HOURS)
        .clamp(1, 24 * 30);
    let d = app.store.deployment(&endpoint).await?;
    let events = app.store.deployment_events(&endpoint).await?;
    let since = weir_core::now_ms() - hours * 3_600_000;
    let intervals = app
        .store
        .deployment_intervals(&endpoint, since, MAX_INTERVALS)
        .await?;
    Ok(Json(json!({
        "deployment": d,
        "events": events,
        "intervals": intervals,
        "hours": hours,
        "now": weir_core::now_ms(),
    })))
}
