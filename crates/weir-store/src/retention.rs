//! Removing pipeline runs for good (`[retention]`, `weir gc`): a run, its
//! step runs and everything recorded under them, and the tracking runs that
//! mirror them (the run, its steps, its trials), in one transaction and
//! audited. What a run's artifacts were is then named by nothing, and the
//! next `weir gc` collects the blobs.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::json;
use sqlx::Row;

use crate::{Result, Store};

#[derive(Clone, Debug, Serialize)]
pub struct Expired {
    pub run_id: String,
    pub pipeline: String,
    pub started_at: i64,
}

/// Tables keyed by a tracking run's id, children first.
const TRACKING_TABLES: &[&str] = &[
    "run_params",
    "run_tags",
    "run_metrics",
    "latest_metrics",
    "metric_chunks",
    "run_inputs",
    "run_models",
];

impl Store {
    /// Finished pipeline runs outside the policy: not among their
    /// pipeline's `keep_last` newest and started before `older_than`
    /// (milliseconds), and needed neither by a model version (a rollout's
    /// versions are among them) nor as the maker of a dataset's latest
    /// version. Older dataset versions go with the runs that made them.
    pub async fn runs_past_retention(
        &self,
        keep_last: Option<u64>,
        older_than: Option<i64>,
    ) -> Result<Vec<Expired>> {
        let needed: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT run_id FROM model_versions WHERE run_id IS NOT NULL \
             UNION SELECT run_id FROM dataset_versions v WHERE version = \
             (SELECT MAX(version) FROM dataset_versions m WHERE m.name = v.name)",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let rows = sqlx::query(
            "SELECT id, pipeline, started_at, status FROM runs ORDER BY pipeline, started_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        let (mut pipeline, mut rank) = (String::new(), 0u64);
        for r in rows {
            let (id, name, started_at, status): (String, String, i64, String) = (
                r.try_get("id")?,
                r.try_get("pipeline")?,
                r.try_get("started_at")?,
                r.try_get("status")?,
            );
            if name != pipeline {
                (pipeline, rank) = (name.clone(), 0);
            }
            rank += 1;
            let recent = keep_last.is_some_and(|n| rank <= n);
            let young = older_than.is_some_and(|t| started_at >= t);
            if recent || young || status == "running" || needed.contains(&id) {
                continue;
            }
            out.push(Expired {
                run_id: id,
                pipeline: name,
                started_at,
            });
        }
        Ok(out)
    }

    /// Removes the pipeline run `run_id` and all it recorded.
    pub async fn purge_run(&self, run_id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let steps: Vec<String> = sqlx::query_scalar("SELECT id FROM step_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_all(&mut *tx)
            .await?;
        let trials: Vec<String> = sqlx::query_scalar(
            "SELECT tracking_run_id FROM study_trials WHERE run_id = $1 AND tracking_run_id IS NOT NULL",
        )
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await?;
        let pipeline: Option<String> =
            sqlx::query_scalar("SELECT pipeline FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
        let in_step = "step_run_id IN (SELECT id FROM step_runs WHERE run_id = $1)";
        for sql in [
            format!("DELETE FROM step_log_chunks WHERE {in_step}"),
            "DELETE FROM resource_usage WHERE run_id = $1".into(),
            "DELETE FROM metrics WHERE run_id = $1".into(),
            format!("DELETE FROM step_outputs WHERE {in_step}"),
            "DELETE FROM dataset_versions WHERE run_id = $1".into(),
            "DELETE FROM study_trials WHERE run_id = $1".into(),
            "DELETE FROM step_runs WHERE run_id = $1".into(),
            "DELETE FROM runs WHERE id = $1".into(),
        ] {
            sqlx::query(&sql).bind(run_id).execute(&mut *tx).await?;
        }
        for id in std::iter::once(run_id.to_string())
            .chain(steps.iter().cloned())
            .chain(trials)
        {
            purge_tracking_run(&mut tx, &id).await?;
        }
        crate::audit::append(
            &mut tx,
            "run.purge",
            run_id,
            json!({ "pipeline": pipeline, "steps": steps.len() }),
            serde_json::Value::Null,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Removes a tracking run and what was logged to it, artifacts' paths
/// included (their blobs go with the next gc).
async fn purge_tracking_run(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<()> {
    let uri: Option<String> =
        sqlx::query_scalar("SELECT artifact_uri FROM tracking_runs WHERE run_id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(uri) = uri else {
        return Ok(());
    };
    // The proxy keeps `EXPERIMENT/RUN/artifacts/PATH` for
    // `mlflow-artifacts:/EXPERIMENT/RUN/artifacts`.
    if let Some(prefix) = uri.strip_prefix("mlflow-artifacts:/") {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            let escaped = prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            sqlx::query("DELETE FROM artifact_paths WHERE path LIKE $1 ESCAPE '\\'")
                .bind(format!("{escaped}/%"))
                .execute(&mut **tx)
                .await?;
        }
    }
    for table in TRACKING_TABLES {
        sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM tracking_runs WHERE run_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
