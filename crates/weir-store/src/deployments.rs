//! Serving endpoints and their rollouts (migration 0010). The server's
//! rollout controller and the `weir rollout` commands both write a row; each
//! write names the revision it read, so neither overwrites a change it has
//! not seen.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub endpoint: String,
    pub model: String,
    /// The version taking traffic; `None` before the first deploy lands.
    pub stable: Option<i64>,
    /// The version being rolled out, if any.
    pub candidate: Option<i64>,
    pub strategy: String,
    /// Canary weights in percent, e.g. `[5, 25, 50, 100]`.
    pub steps: Vec<i64>,
    pub step_index: i64,
    /// The candidate's share of traffic now, in percent.
    pub weight: i64,
    pub phase: String,
    /// The analysis settings (interval, thresholds), as JSON.
    pub analysis: serde_json::Value,
    /// Why the phase is what it is (the violation, the pause).
    pub reason: String,
    pub revision: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeploymentEvent {
    pub seq: i64,
    pub at: i64,
    pub event: String,
    pub detail: String,
}

const COLUMNS: &str = "endpoint, model, stable_version, candidate_version, strategy, steps_json, \
     step_index, weight, phase, analysis_json, reason, revision, updated_at";

fn from_row(row: &AnyRow) -> Result<Deployment> {
    let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt {
        what: format!("deployments.{what}"),
        reason: e.to_string(),
    };
    let steps: String = row.try_get("steps_json")?;
    let analysis: String = row.try_get("analysis_json")?;
    Ok(Deployment {
        endpoint: row.try_get("endpoint")?,
        model: row.try_get("model")?,
        stable: row.try_get("stable_version")?,
        candidate: row.try_get("candidate_version")?,
        strategy: row.try_get("strategy")?,
        steps: serde_json::from_str(&steps).map_err(|e| corrupt("steps_json", e))?,
        step_index: row.try_get("step_index")?,
        weight: row.try_get("weight")?,
        phase: row.try_get("phase")?,
        analysis: serde_json::from_str(&analysis).map_err(|e| corrupt("analysis_json", e))?,
        reason: row.try_get("reason")?,
        revision: row.try_get("revision")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    pub async fn deployments(&self) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM deployments ORDER BY endpoint"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn deployment(&self, endpoint: &str) -> Result<Deployment> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM deployments WHERE endpoint = $1"
        ))
        .bind(endpoint)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => from_row(&row),
            None => Err(StoreError::NotFound {
                kind: "endpoint",
                id: endpoint.to_string(),
                hint: format!("create it with `weir deploy {endpoint} --model NAME --version V`"),
            }),
        }
    }

    /// Writes `d` (a new endpoint when `d.revision` is 0, else the change of
    /// the row at that revision) and appends `event`, in one transaction.
    /// Someone else's change since that revision is a conflict.
    pub async fn save_deployment(
        &self,
        d: &Deployment,
        event: &str,
        detail: &str,
    ) -> Result<Deployment> {
        self.write_deployment(d, Some((event, detail))).await
    }

    /// Saves a change of the reason alone (a running tally, such as a
    /// shadow's agreement), which is no event worth a line of history.
    pub async fn save_deployment_quietly(&self, d: &Deployment) -> Result<Deployment> {
        self.write_deployment(d, None).await
    }

    async fn write_deployment(
        &self,
        d: &Deployment,
        event: Option<(&str, &str)>,
    ) -> Result<Deployment> {
        let now = weir_core::now_ms();
        let mut tx = self.writer.begin().await?;
        let steps = serde_json::to_string(&d.steps).expect("numbers serialise");
        let analysis = d.analysis.to_string();
        let changed = if d.revision == 0 {
            sqlx::query(&format!(
                "INSERT INTO deployments ({COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12) \
                 ON CONFLICT (endpoint) DO NOTHING"
            ))
            .bind(&d.endpoint)
            .bind(&d.model)
            .bind(d.stable)
            .bind(d.candidate)
            .bind(&d.strategy)
            .bind(&steps)
            .bind(d.step_index)
            .bind(d.weight)
            .bind(&d.phase)
            .bind(&analysis)
            .bind(&d.reason)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE deployments SET model = $1, stable_version = $2, candidate_version = $3, \
                 strategy = $4, steps_json = $5, step_index = $6, weight = $7, phase = $8, \
                 analysis_json = $9, reason = $10, revision = revision + 1, updated_at = $11 \
                 WHERE endpoint = $12 AND revision = $13",
            )
            .bind(&d.model)
            .bind(d.stable)
            .bind(d.candidate)
            .bind(&d.strategy)
            .bind(&steps)
            .bind(d.step_index)
            .bind(d.weight)
            .bind(&d.phase)
            .bind(&analysis)
            .bind(&d.reason)
            .bind(now)
            .bind(&d.endpoint)
            .bind(d.revision)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "endpoint '{}' changed while this change was being made (another `weir rollout` or the server's controller); read its status and try again",
                d.endpoint
            )));
        }
        if let Some((event, detail)) = event {
            sqlx::query(
                "INSERT INTO deployment_events (endpoint, seq, at, event, detail) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM deployment_events WHERE endpoint = $1",
            )
            .bind(&d.endpoint)
            .bind(now)
            .bind(event)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Deployment {
            revision: d.revision + 1,
            updated_at: now,
            ..d.clone()
        })
    }

    /// An endpoint's events, oldest first.
    pub async fn deployment_events(&self, endpoint: &str) -> Result<Vec<DeploymentEvent>> {
        self.deployment(endpoint).await?;
        let rows = sqlx::query(
            "SELECT seq, at, event, detail FROM deployment_events WHERE endpoint = $1 ORDER BY seq",
        )
        .bind(endpoint)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeploymentEvent {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    event: r.try_get("event")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
