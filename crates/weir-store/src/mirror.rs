//! Pipeline runs as tracking runs: every pipeline run is an MLflow run in the
//! experiment named after its pipeline, and every step run a child run of it
//! (same ids), so the MLflow API, its clients and `weir runs search` see
//! pipelines and notebooks as one world. Each change here is made in the
//! transaction of the pipeline change it mirrors.

use sqlx::{Any, Transaction};

use crate::runs::{NewStepRun, RunRecord};
use crate::tracking::{self, Metric};
use crate::{MetricPoint, Result, Store, StoreError};

pub(crate) const SCHEDULED: &str = "SCHEDULED";
pub(crate) const RUNNING: &str = "RUNNING";
pub(crate) const FINISHED: &str = "FINISHED";
pub(crate) const FAILED: &str = "FAILED";
pub(crate) const KILLED: &str = "KILLED";

impl Store {
    /// The id of the experiment named `name`, created if missing.
    pub async fn ensure_experiment(&self, name: &str) -> Result<i64> {
        match self.experiment_by_name(name).await {
            Ok(e) => return Ok(e.experiment_id),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match self.create_experiment(name, None, &[]).await {
            Ok(id) => Ok(id),
            // Created by someone else meanwhile.
            Err(StoreError::AlreadyExists { .. }) => {
                Ok(self.experiment_by_name(name).await?.experiment_id)
            }
            Err(e) => Err(e),
        }
    }
}

/// The tracking runs of a new pipeline run and its steps.
pub(crate) async fn open_run(
    tx: &mut Transaction<'_, Any>,
    experiment_id: i64,
    run: &RunRecord,
    steps: &[NewStepRun],
) -> Result<()> {
    let location: String =
        sqlx::query_scalar("SELECT artifact_location FROM experiments WHERE experiment_id = $1")
            .bind(experiment_id)
            .fetch_one(&mut **tx)
            .await?;
    let location = location.trim_end_matches('/');
    let insert =
        "INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, start_time, \
         lifecycle_stage, artifact_uri) VALUES ($1, $2, $3, '', $4, $5, 'active', $6)";
    sqlx::query(insert)
        .bind(&run.id)
        .bind(experiment_id)
        .bind(&run.pipeline)
        .bind(RUNNING)
        .bind(run.started_at)
        .bind(format!("{location}/{}/artifacts", run.id))
        .execute(&mut **tx)
        .await?;
    let mut tags = vec![
        ("mlflow.runName".to_string(), run.pipeline.clone()),
        ("mlflow.source.name".to_string(), run.spec_file.clone()),
        ("weir.pipeline".to_string(), run.pipeline.clone()),
        ("weir.kind".to_string(), "pipeline".to_string()),
    ];
    if let Some(rev) = &run.git_rev {
        tags.push(("mlflow.source.git.commit".to_string(), rev.clone()));
    }
    tracking::upsert_run_tags(tx, &run.id, &tags).await?;
    let params: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&run.params_json).unwrap_or_default();
    let params: Vec<(String, String)> = params
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    if !params.is_empty() {
        tracking::insert_params(tx, &run.id, &params).await?;
    }
    for step in steps {
        sqlx::query(insert)
            .bind(&step.id)
            .bind(experiment_id)
            .bind(&step.step)
            .bind(SCHEDULED)
            .bind(None::<i64>)
            .bind(format!("{location}/{}/artifacts", step.id))
            .execute(&mut **tx)
            .await?;
        let tags = [
            ("mlflow.runName".to_string(), step.step.clone()),
            ("mlflow.parentRunId".to_string(), run.id.clone()),
            ("weir.pipeline".to_string(), run.pipeline.clone()),
            ("weir.step".to_string(), step.step.clone()),
            ("weir.kind".to_string(), step.kind.clone()),
            ("weir.cache_hit".to_string(), "false".to_string()),
        ];
        tracking::upsert_run_tags(tx, &step.id, &tags).await?;
    }
    Ok(())
}

/// Sets the status of one tracking run, with its start or end time.
pub(crate) async fn set_status(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    status: &str,
    start: Option<i64>,
    end: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE tracking_runs SET status = $1, start_time = COALESCE($2, start_time), end_time = $3 \
         WHERE run_id = $4",
    )
    .bind(status)
    .bind(start)
    .bind(end)
    .bind(run_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets the status of the step runs of `run_id` that are in `step_status`
/// (call before changing their pipeline status).
pub(crate) async fn set_steps_status(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    step_status: &str,
    status: &str,
    end: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE tracking_runs SET status = $1, end_time = $2 \
         WHERE run_id IN (SELECT id FROM step_runs WHERE run_id = $3 AND status = $4)",
    )
    .bind(status)
    .bind(end)
    .bind(run_id)
    .bind(step_status)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A step's metrics, on the step's run and, prefixed with the step's name,
/// on the pipeline's.
pub(crate) async fn log_step_metrics(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    step_run_id: &str,
    metrics: &[MetricPoint],
) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let step: Option<String> = sqlx::query_scalar("SELECT step FROM step_runs WHERE id = $1")
        .bind(step_run_id)
        .fetch_optional(&mut **tx)
        .await?;
    let points: Vec<Metric> = metrics
        .iter()
        .map(|m| Metric {
            key: m.key.clone(),
            value: m.value,
            timestamp: m.ts,
            step: m.step,
        })
        .collect();
    if tracking::tracked(tx, step_run_id).await? {
        tracking::insert_metric_points(tx, step_run_id, &points).await?;
    }
    if let (Some(step), true) = (step, tracking::tracked(tx, run_id).await?) {
        let prefixed: Vec<Metric> = points
            .into_iter()
            .map(|m| Metric {
                key: format!("{step}.{}", m.key),
                ..m
            })
            .collect();
        tracking::insert_metric_points(tx, run_id, &prefixed).await?;
    }
    Ok(())
}
