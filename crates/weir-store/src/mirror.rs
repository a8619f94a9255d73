//! Pipeline runs as tracking runs: every pipeline run is an MLflow run in the
//! experiment named after its pipeline, and every step run a child run of it
//! (same ids), so the MLflow API, its clients and `weir runs search` see
//! pipelines and notebooks as one world. Runs, params, tags and metrics are
//! written here, in the transaction of the pipeline change they mirror; the
//! status and times of these runs are not copied but read from the
//! pipeline's own records (see `tracking::RUN_INFO_COLUMNS`), so the two
//! can never disagree.

use sqlx::{Any, Row, Transaction};

use crate::runs::{NewStepRun, RunRecord};
use crate::tracking::{self, Metric};
use crate::{MetricPoint, Result, Store, StoreError};

const SCHEDULED: &str = "SCHEDULED";
const RUNNING: &str = "RUNNING";

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
    // Its searches order by the pipeline's start times from now on.
    sqlx::query(
        "INSERT INTO pipeline_experiments (experiment_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(experiment_id)
    .execute(&mut **tx)
    .await?;
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
        // The environment, for lineage: which Weir ran it.
        (
            "weir.version".to_string(),
            weir_core::WEIR_VERSION.to_string(),
        ),
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
    // Every step's run in a few multi-row statements: a 200-step pipeline
    // must not pay hundreds of round trips before it starts.
    for chunk in steps.chunks(100) {
        let mut binds = tracking::Binds::for_tx(tx);
        let rows: Vec<String> = chunk
            .iter()
            .map(|step| {
                format!(
                    "({}, {}, {}, '', '{SCHEDULED}', NULL, 'active', {})",
                    binds.text(&step.id),
                    binds.push(tracking::Bind::Int(experiment_id)),
                    binds.text(&step.step),
                    binds.text(format!("{location}/{}/artifacts", step.id)),
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, start_time, \
             lifecycle_stage, artifact_uri) VALUES {}",
            rows.join(", ")
        );
        tracking::bind_all(sqlx::query(&sql), binds.values())
            .execute(&mut **tx)
            .await?;
    }
    let mut tags: Vec<(&str, &str, &str)> = Vec::new();
    for step in steps {
        tags.extend([
            (step.id.as_str(), "mlflow.runName", step.step.as_str()),
            (step.id.as_str(), "mlflow.parentRunId", run.id.as_str()),
            (step.id.as_str(), "weir.pipeline", run.pipeline.as_str()),
            (step.id.as_str(), "weir.step", step.step.as_str()),
            (step.id.as_str(), "weir.kind", step.kind.as_str()),
            (step.id.as_str(), "weir.cache_hit", "false"),
        ]);
    }
    tracking::upsert_tags_of_runs(tx, &tags).await?;
    Ok(())
}

/// Tags a step run completed from the cache and copies the reused metrics.
pub(crate) async fn mark_cache_hit(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    step_run_id: &str,
    source: &str,
) -> Result<()> {
    if !tracking::tracked(tx, step_run_id).await? {
        return Ok(());
    }
    tracking::stale_data(tx, &[step_run_id]).await?;
    tracking::upsert_run_tags(
        tx,
        step_run_id,
        &[
            ("weir.cache_hit".to_string(), "true".to_string()),
            ("weir.cached_from".to_string(), source.to_string()),
        ],
    )
    .await?;
    let reused: Vec<MetricPoint> = sqlx::query(
        "SELECT key, value, step, ts FROM metrics WHERE step_run_id = $1 ORDER BY step, ts",
    )
    .bind(step_run_id)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        Ok(MetricPoint {
            key: r.try_get("key")?,
            value: r.try_get("value")?,
            step: r.try_get("step")?,
            ts: r.try_get("ts")?,
        })
    })
    .collect::<Result<_>>()?;
    log_step_metrics(tx, run_id, step_run_id, &reused).await
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
        tracking::stale_data(tx, &[step_run_id]).await?;
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
        tracking::stale_data(tx, &[run_id]).await?;
        tracking::insert_metric_points(tx, run_id, &prefixed).await?;
    }
    Ok(())
}
