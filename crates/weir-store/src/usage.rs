//! Resource accounting: what each step attempt and trial used and cost,
//! and what each serving replica used over the requests it answered.

use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store};

/// One step attempt's (`trial` = None) or one trial's usage and cost.
#[derive(Clone, Debug, Serialize)]
pub struct UsageRecord {
    pub run_id: String,
    pub step_run_id: String,
    pub step: String,
    pub attempt: i64,
    pub trial: Option<i64>,
    pub host: String,
    /// How the attempt or trial ended: succeeded, failed, pruned, ...
    pub status: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub usage: weir_core::usage::Usage,
    pub cpus: f64,
    pub memory_bytes: i64,
    pub spot: bool,
    /// False for a trial measured inside its step's process, whose usage
    /// the step attempt's record already counts.
    pub billed: bool,
    pub cost: weir_core::cost::Cost,
    pub total: f64,
    /// The tracking run a trial's usage is shown on (a step attempt's is
    /// its step run's own); not stored with the record.
    #[serde(skip)]
    pub tracking_run: Option<String>,
}

/// A billed usage record with the pipeline it belongs to, for sums.
#[derive(Clone, Debug, Serialize)]
pub struct CostRow {
    pub pipeline: String,
    pub run_id: String,
    pub step: String,
    pub trial: Option<i64>,
    pub ended_at: i64,
    pub cpu_ms: i64,
    pub wall_ms: i64,
    pub cost: f64,
}

/// One `weir serve` replica's usage so far.
#[derive(Clone, Debug, Serialize)]
pub struct ServeUsage {
    pub replica: String,
    /// The endpoints and models it serves, comma-separated.
    pub targets: String,
    pub host: String,
    pub started_at: i64,
    pub updated_at: i64,
    pub cpu_ms: i64,
    pub rss_bytes: i64,
    pub requests: i64,
    pub cost: f64,
}

const USAGE_COLUMNS: &str = "run_id, step_run_id, step, attempt, trial, host, status, started_at, \
     ended_at, wall_ms, cpu_ms, max_rss_bytes, cpus, memory_bytes, gpus, bytes_read, \
     bytes_written, spot, billed, cost, cost_json";

fn usage_of(row: &sqlx::any::AnyRow) -> Result<UsageRecord> {
    let trial: i64 = row.try_get("trial")?;
    let cost_json: String = row.try_get("cost_json")?;
    Ok(UsageRecord {
        run_id: row.try_get("run_id")?,
        step_run_id: row.try_get("step_run_id")?,
        step: row.try_get("step")?,
        attempt: row.try_get("attempt")?,
        trial: (trial >= 0).then_some(trial),
        host: row.try_get("host")?,
        status: row.try_get("status")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        usage: weir_core::usage::Usage {
            wall_ms: row.try_get::<i64, _>("wall_ms")?.max(0) as u64,
            cpu_ms: row.try_get::<i64, _>("cpu_ms")?.max(0) as u64,
            max_rss_bytes: row.try_get::<i64, _>("max_rss_bytes")?.max(0) as u64,
            gpus: row.try_get::<i64, _>("gpus")?.max(0) as u32,
            bytes_read: row.try_get::<i64, _>("bytes_read")?.max(0) as u64,
            bytes_written: row.try_get::<i64, _>("bytes_written")?.max(0) as u64,
        },
        cpus: row.try_get("cpus")?,
        memory_bytes: row.try_get("memory_bytes")?,
        spot: row.try_get::<i64, _>("spot")? != 0,
        billed: row.try_get::<i64, _>("billed")? != 0,
        cost: serde_json::from_str(&cost_json).unwrap_or_default(),
        total: row.try_get("cost")?,
        tracking_run: None,
    })
}

impl Store {
    /// Records (or, for the same attempt and trial, replaces) a usage record.
    /// The attempt is the step run's current one, whatever `r.attempt` says:
    /// the runtime that measured it need not have read it.
    pub async fn record_usage(&self, r: &UsageRecord) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_usage(&mut tx, r).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every usage record of a run: step attempts first, then trials.
    pub async fn run_usage(&self, run_id: &str) -> Result<Vec<UsageRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USAGE_COLUMNS} FROM resource_usage WHERE run_id = $1 \
             ORDER BY trial, started_at, step"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(usage_of).collect()
    }

    /// What a run has cost so far (its billed records).
    pub async fn run_cost(&self, run_id: &str) -> Result<f64> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(cost), 0.0) AS total FROM resource_usage \
             WHERE run_id = $1 AND billed = 1",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("total")?)
    }

    /// What each of `run_ids` has cost (runs without records are absent):
    /// a model version's training cost, for a model's whole history at once.
    pub async fn costs_of_runs(
        &self,
        run_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, f64>> {
        let mut costs = std::collections::HashMap::new();
        // In pieces: SQLite takes at most 32,766 parameters in a statement.
        for chunk in run_ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT run_id, SUM(cost) AS total FROM resource_usage \
                 WHERE billed = 1 AND run_id IN ({}) GROUP BY run_id",
                marks.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for r in query.fetch_all(&self.pool).await? {
                costs.insert(r.try_get("run_id")?, r.try_get("total")?);
            }
        }
        Ok(costs)
    }

    /// What the trials of a study (the step run's, every attempt's) have
    /// cost, and how many have ended.
    pub async fn study_cost(&self, step_run_id: &str) -> Result<(f64, i64)> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(cost), 0.0) AS total, COUNT(*) AS n FROM resource_usage \
             WHERE step_run_id = $1 AND trial >= 0",
        )
        .bind(step_run_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("total")?, row.try_get("n")?))
    }

    /// The cost of the most recent attempt of `step` in another run of the
    /// same pipeline: what starting it again is expected to cost.
    pub async fn last_step_cost(
        &self,
        pipeline: &str,
        step: &str,
        other_than: &str,
    ) -> Result<Option<f64>> {
        let row = sqlx::query(
            "SELECT u.cost FROM resource_usage u JOIN runs r ON r.id = u.run_id \
             WHERE r.pipeline = $1 AND u.step = $2 AND u.trial = -1 AND u.run_id <> $3 \
             AND u.status = 'succeeded' ORDER BY u.ended_at DESC LIMIT 1",
        )
        .bind(pipeline)
        .bind(step)
        .bind(other_than)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("cost")?),
            None => None,
        })
    }

    /// Billed usage that ended at or after `since_ms`, optionally of one
    /// pipeline, with each record's pipeline.
    pub async fn costs_since(&self, since_ms: i64, pipeline: Option<&str>) -> Result<Vec<CostRow>> {
        let rows = sqlx::query(
            "SELECT r.pipeline, u.run_id, u.step, u.trial, u.ended_at, u.cpu_ms, u.wall_ms, u.cost \
             FROM resource_usage u JOIN runs r ON r.id = u.run_id \
             WHERE u.ended_at >= $1 AND u.billed = 1 AND ($2 = '' OR r.pipeline = $2) \
             ORDER BY u.ended_at",
        )
        .bind(since_ms)
        .bind(pipeline.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let trial: i64 = row.try_get("trial")?;
                Ok(CostRow {
                    pipeline: row.try_get("pipeline")?,
                    run_id: row.try_get("run_id")?,
                    step: row.try_get("step")?,
                    trial: (trial >= 0).then_some(trial),
                    ended_at: row.try_get("ended_at")?,
                    cpu_ms: row.try_get("cpu_ms")?,
                    wall_ms: row.try_get("wall_ms")?,
                    cost: row.try_get("cost")?,
                })
            })
            .collect()
    }

    /// Records a serving replica's usage so far.
    pub async fn record_serve_usage(&self, u: &ServeUsage) -> Result<()> {
        sqlx::query(
            "INSERT INTO serve_usage (replica, targets, host, started_at, updated_at, cpu_ms, \
             rss_bytes, requests, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (replica) DO UPDATE SET targets = excluded.targets, \
             updated_at = excluded.updated_at, cpu_ms = excluded.cpu_ms, \
             rss_bytes = excluded.rss_bytes, requests = excluded.requests, cost = excluded.cost",
        )
        .bind(&u.replica)
        .bind(&u.targets)
        .bind(&u.host)
        .bind(u.started_at)
        .bind(u.updated_at)
        .bind(u.cpu_ms)
        .bind(u.rss_bytes)
        .bind(u.requests)
        .bind(u.cost)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Serving replicas that were running at or after `since_ms`.
    pub async fn serve_usage_since(&self, since_ms: i64) -> Result<Vec<ServeUsage>> {
        let rows = sqlx::query(
            "SELECT replica, targets, host, started_at, updated_at, cpu_ms, rss_bytes, requests, \
             cost FROM serve_usage WHERE updated_at >= $1 ORDER BY started_at",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ServeUsage {
                    replica: row.try_get("replica")?,
                    targets: row.try_get("targets")?,
                    host: row.try_get("host")?,
                    started_at: row.try_get("started_at")?,
                    updated_at: row.try_get("updated_at")?,
                    cpu_ms: row.try_get("cpu_ms")?,
                    rss_bytes: row.try_get("rss_bytes")?,
                    requests: row.try_get("requests")?,
                    cost: row.try_get("cost")?,
                })
            })
            .collect()
    }

    /// Adds one replica's per-minute endpoint counts (minute, total,
    /// failed, slow) and drops rows older than `keep_minutes`.
    pub async fn add_slo_minutes(
        &self,
        replica: &str,
        rows: &[(String, i64, i64, i64, i64)],
        keep_minutes: i64,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (endpoint, minute, total, failed, slow) in rows {
            sqlx::query(
                "INSERT INTO slo_minutes (endpoint, minute, replica, total, failed, slow) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (endpoint, minute, replica) DO UPDATE \
                 SET total = slo_minutes.total + excluded.total, \
                 failed = slo_minutes.failed + excluded.failed, slow = slo_minutes.slow + excluded.slow",
            )
            .bind(endpoint)
            .bind(minute)
            .bind(replica)
            .bind(total)
            .bind(failed)
            .bind(slow)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(newest) = rows.iter().map(|r| r.1).max() {
            sqlx::query("DELETE FROM slo_minutes WHERE minute < $1")
                .bind(newest - keep_minutes)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An endpoint's counts per minute since `since_minute`, summed over
    /// replicas: (minute, total, failed, slow).
    pub async fn slo_minutes(
        &self,
        endpoint: &str,
        since_minute: i64,
    ) -> Result<Vec<(i64, i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT minute, CAST(SUM(total) AS BIGINT) AS total, CAST(SUM(failed) AS BIGINT) AS failed, \
             CAST(SUM(slow) AS BIGINT) AS slow \
             FROM slo_minutes WHERE endpoint = $1 AND minute >= $2 GROUP BY minute ORDER BY minute",
        )
        .bind(endpoint)
        .bind(since_minute)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("minute")?,
                    r.try_get("total")?,
                    r.try_get("failed")?,
                    r.try_get("slow")?,
                ))
            })
            .collect()
    }
}

/// Inserts a usage record on `conn` (a transaction's, to record it with
/// the step's outcome).
/// Records `r` and shows it in the tracking view, in the caller's
/// transaction.
pub(crate) async fn insert_usage(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    r: &UsageRecord,
) -> Result<()> {
    let cost_json = serde_json::to_string(&r.cost).expect("a cost serializes");
    let row = sqlx::query(&format!(
        "INSERT INTO resource_usage ({USAGE_COLUMNS}) SELECT \
         $1, $2, $3, COALESCE((SELECT attempt FROM step_runs WHERE id = $2), $4), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 WHERE 1 = 1 \
         ON CONFLICT (step_run_id, attempt, trial) DO UPDATE SET status = excluded.status, \
         ended_at = excluded.ended_at, wall_ms = excluded.wall_ms, cpu_ms = excluded.cpu_ms, \
         max_rss_bytes = excluded.max_rss_bytes, bytes_read = excluded.bytes_read, \
         bytes_written = excluded.bytes_written, cost = excluded.cost, cost_json = excluded.cost_json \
         RETURNING attempt"
    ))
    .bind(&r.run_id)
    .bind(&r.step_run_id)
    .bind(&r.step)
    .bind(r.attempt)
    .bind(r.trial.unwrap_or(-1))
    .bind(&r.host)
    .bind(&r.status)
    .bind(r.started_at)
    .bind(r.ended_at)
    .bind(r.usage.wall_ms as i64)
    .bind(r.usage.cpu_ms as i64)
    .bind(r.usage.max_rss_bytes as i64)
    .bind(r.cpus)
    .bind(r.memory_bytes)
    .bind(i64::from(r.usage.gpus))
    .bind(r.usage.bytes_read as i64)
    .bind(r.usage.bytes_written as i64)
    .bind(i64::from(r.spot))
    .bind(i64::from(r.billed))
    .bind(r.total)
    .bind(cost_json)
    .fetch_one(&mut **tx)
    .await?;
    let attempt: i64 = row.try_get("attempt")?;
    mirror_usage(tx, r, attempt).await
}

/// What an attempt or trial used, as `system/*` metrics (MLflow's prefix
/// for a run's system metrics) on its tracking run, one point per attempt.
/// The pipeline run's totals are written when it finishes
/// ([`mirror_run_totals`]): one more set of statements per step would cost
/// every step of every run.
async fn mirror_usage(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    r: &UsageRecord,
    attempt: i64,
) -> Result<()> {
    use crate::tracking::{self, Metric};
    const MB: f64 = 1024.0 * 1024.0;
    let now = weir_core::now_ms();
    let target = match (&r.tracking_run, r.trial) {
        (Some(run), _) => Some(run.as_str()),
        (None, None) => Some(r.step_run_id.as_str()),
        (None, Some(_)) => None,
    };
    let point = |key: &str, value: f64, step: i64| Metric {
        key: format!("system/{key}"),
        value,
        timestamp: now,
        step,
    };
    if let Some(target) = target {
        if tracking::tracked(tx, target).await? {
            let u = &r.usage;
            let points = [
                point("wall_seconds", u.wall_ms as f64 / 1000.0, attempt),
                point("cpu_seconds", u.cpu_ms as f64 / 1000.0, attempt),
                point("max_rss_megabytes", u.max_rss_bytes as f64 / MB, attempt),
                point("gpus", f64::from(u.gpus), attempt),
                point("artifact_read_megabytes", u.bytes_read as f64 / MB, attempt),
                point(
                    "artifact_written_megabytes",
                    u.bytes_written as f64 / MB,
                    attempt,
                ),
                point("cost_dollars", r.total, attempt),
            ];
            tracking::stale_data(tx, &[target]).await?;
            tracking::insert_metric_points(tx, target, &points).await?;
        }
    }
    Ok(())
}

/// A pipeline run's billed totals so far (`system/cost_dollars`,
/// `system/cpu_seconds`) on its tracking run, one point per finish (step =
/// the number of billed records), in the caller's transaction.
pub(crate) async fn mirror_run_totals(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: &str,
) -> Result<()> {
    use crate::tracking::{self, Metric};
    if !tracking::tracked(tx, run_id).await? {
        return Ok(());
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(cost), 0.0) AS cost, \
         CAST(COALESCE(SUM(cpu_ms), 0) AS BIGINT) AS cpu_ms FROM resource_usage \
         WHERE run_id = $1 AND billed = 1",
    )
    .bind(run_id)
    .fetch_one(&mut **tx)
    .await?;
    let n: i64 = row.try_get("n")?;
    if n == 0 {
        return Ok(());
    }
    let cost: f64 = row.try_get("cost")?;
    let cpu_ms: i64 = row.try_get("cpu_ms")?;
    let now = weir_core::now_ms();
    let points = [
        Metric {
            key: "system/cost_dollars".into(),
            value: cost,
            timestamp: now,
            step: n,
        },
        Metric {
            key: "system/cpu_seconds".into(),
            value: cpu_ms as f64 / 1000.0,
            timestamp: now,
            step: n,
        },
    ];
    tracking::stale_data(tx, &[run_id]).await?;
    tracking::insert_metric_points(tx, run_id, &points).await?;
    Ok(())
}
