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
        let mut tx = self.write_tx().await?;
        let before = match event {
            Some(_) => sqlx::query(
                "SELECT model, stable_version, candidate_version, weight, phase FROM deployments \
                 WHERE endpoint = $1",
            )
            .bind(&d.endpoint)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| -> Result<serde_json::Value> {
                Ok(serde_json::json!({
                    "model": r.try_get::<String, _>("model")?,
                    "stable": r.try_get::<Option<i64>, _>("stable_version")?,
                    "candidate": r.try_get::<Option<i64>, _>("candidate_version")?,
                    "weight": r.try_get::<i64, _>("weight")?,
                    "phase": r.try_get::<String, _>("phase")?,
                }))
            })
            .transpose()?,
            None => None,
        };
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
            // Every step of a rollout (deploy, weight changes, promotion,
            // rollback, whoever made it: a person or the controller).
            crate::audit::append(
                &mut tx,
                &format!("deployment.{}", event.replace(' ', "_")),
                &d.endpoint,
                before.unwrap_or(serde_json::Value::Null),
                serde_json::json!({
                    "model": d.model, "stable": d.stable, "candidate": d.candidate,
                    "weight": d.weight, "phase": d.phase, "detail": detail,
                }),
            )
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

/// One replica's part of an endpoint version's analysis window.
#[derive(Clone, Debug)]
pub struct WindowPart {
    pub endpoint: String,
    pub version: i64,
    /// The endpoint's revision (its routing) the traffic was answered under.
    pub revision: i64,
    pub replica: String,
    /// The counts, as the serving crate encodes them.
    pub window_json: String,
}

impl Store {
    /// Takes or keeps the lease `name` for `holder` until `ttl_ms` from now:
    /// granted when nobody holds it, `holder` holds it, or its holder let it
    /// expire. Returns whether `holder` holds it now. One statement, so two
    /// replicas racing for an expired lease cannot both win.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let now = weir_core::now_ms();
        let granted = sqlx::query(
            "INSERT INTO serve_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE serve_leases.holder = excluded.holder OR serve_leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(granted == 1)
    }

    /// Who holds the lease `name` and until when (epoch ms), if anyone ever did.
    pub async fn lease(&self, name: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT holder, expires_at FROM serve_leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("holder")?, r.try_get("expires_at")?)))
            .transpose()
    }

    /// Gives the lease up (a replica shutting down), so another takes over
    /// at once instead of waiting for it to expire.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM serve_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records a replica's counts for an interval's part.
    pub async fn push_window(&self, part: &WindowPart) -> Result<()> {
        sqlx::query(
            "INSERT INTO serve_windows (id, endpoint, version, revision, replica, window_json, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(weir_core::new_id())
        .bind(&part.endpoint)
        .bind(part.version)
        .bind(part.revision)
        .bind(&part.replica)
        .bind(&part.window_json)
        .bind(weir_core::now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Removes and returns every part recorded for an endpoint's version.
    pub async fn take_windows(&self, endpoint: &str, version: i64) -> Result<Vec<WindowPart>> {
        let rows = sqlx::query(
            "DELETE FROM serve_windows WHERE endpoint = $1 AND version = $2 \
             RETURNING endpoint, version, revision, replica, window_json",
        )
        .bind(endpoint)
        .bind(version)
        .fetch_all(&self.writer)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WindowPart {
                    endpoint: r.try_get("endpoint")?,
                    version: r.try_get("version")?,
                    revision: r.try_get("revision")?,
                    replica: r.try_get("replica")?,
                    window_json: r.try_get("window_json")?,
                })
            })
            .collect()
    }
}

/// What one version of an endpoint answered during one judged interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub endpoint: String,
    pub version: i64,
    pub started_at: i64,
    pub ended_at: i64,
    /// The version's share of the endpoint's traffic then, in percent.
    pub weight: i64,
    pub requests: i64,
    pub errors: i64,
    /// Latency quantiles and histogram, drift, online accuracy: as the
    /// serving crate computes them.
    pub stats: serde_json::Value,
}

/// How long judged intervals are kept.
const INTERVAL_RETENTION_MS: i64 = 30 * 24 * 3_600_000;

impl Store {
    /// Records an interval, and forgets the endpoint's intervals older than
    /// the retention (30 days), so the history stays bounded without a
    /// separate clean-up job.
    pub async fn record_interval(&self, i: &Interval) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO deployment_intervals \
             (endpoint, version, started_at, ended_at, weight, requests, errors, stats_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&i.endpoint)
        .bind(i.version)
        .bind(i.started_at)
        .bind(i.ended_at)
        .bind(i.weight)
        .bind(i.requests)
        .bind(i.errors)
        .bind(i.stats.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM deployment_intervals WHERE endpoint = $1 AND ended_at < $2")
            .bind(&i.endpoint)
            .bind(i.ended_at - INTERVAL_RETENTION_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An endpoint's intervals that ended after `since` (epoch ms), oldest
    /// first, at most `limit` of the newest.
    pub async fn deployment_intervals(
        &self,
        endpoint: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<Interval>> {
        let rows = sqlx::query(
            "SELECT endpoint, version, started_at, ended_at, weight, requests, errors, stats_json \
             FROM deployment_intervals WHERE endpoint = $1 AND ended_at > $2 \
             ORDER BY ended_at DESC LIMIT $3",
        )
        .bind(endpoint)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let stats: String = r.try_get("stats_json")?;
                Ok(Interval {
                    endpoint: r.try_get("endpoint")?,
                    version: r.try_get("version")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    weight: r.try_get("weight")?,
                    requests: r.try_get("requests")?,
                    errors: r.try_get("errors")?,
                    stats: serde_json::from_str(&stats).map_err(|e| StoreError::Corrupt {
                        what: "deployment_intervals.stats_json".into(),
                        reason: e.to_string(),
                    })?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }
}

impl Store {
    /// Removes counts older than `age_ms` that no controller took (versions
    /// no longer routed to, a controller that died with them unread).
    pub async fn prune_windows(&self, age_ms: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM serve_windows WHERE created_at < $1")
                .bind(weir_core::now_ms() - age_ms)
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }
}
