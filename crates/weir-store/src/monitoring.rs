//! What monitoring keeps: the prediction log's segments, feedback labels,
//! and each monitor's checks and alerts.

use serde::Serialize;
use sqlx::Row;

use crate::artifacts::insert_artifact;
use crate::{ArtifactRecord, Result, Store};

/// Monitor checks are kept this long (as rollout intervals are).
const CHECK_RETENTION_MS: i64 = 30 * 24 * 3_600_000;

/// One Parquet segment of the prediction log.
#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    pub id: String,
    /// The endpoint that routed the requests, or the model served directly.
    pub target: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub bytes: i64,
    pub rows: i64,
    /// When the first and the last of its requests were answered (epoch ms).
    pub first_at: i64,
    pub last_at: i64,
}

/// A monitor's conclusion at one check.
#[derive(Clone, Debug, Serialize)]
pub struct MonitorCheck {
    pub monitor: String,
    pub target: String,
    pub checked_at: i64,
    pub status: String,
    pub reason: String,
    #[serde(skip)]
    pub report_json: String,
}

/// An alert a monitor fired, with what each of its actions did.
#[derive(Clone, Debug, Serialize)]
pub struct MonitorAlert {
    pub id: String,
    pub monitor: String,
    pub target: String,
    pub fired_at: i64,
    pub reason: String,
    pub actions: serde_json::Value,
}

impl Store {
    /// Records a segment written to the artifact store, then drops the
    /// oldest of its target's segments until they fit in `keep_bytes`;
    /// returns the digests dropped, for the caller to delete.
    pub async fn add_segment(
        &self,
        artifact: &ArtifactRecord,
        segment: &Segment,
        keep_bytes: i64,
    ) -> Result<Vec<String>> {
        let mut tx = self.write_tx().await?;
        insert_artifact(&mut tx, artifact).await?;
        sqlx::query(
            "INSERT INTO prediction_segments \
             (id, target, model, version, digest, bytes, row_count, first_at, last_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&segment.id)
        .bind(&segment.target)
        .bind(&segment.model)
        .bind(segment.version)
        .bind(&segment.digest)
        .bind(segment.bytes)
        .bind(segment.rows)
        .bind(segment.first_at)
        .bind(segment.last_at)
        .bind(weir_core::now_ms())
        .execute(&mut *tx)
        .await?;
        let newest_first = sqlx::query(
            "SELECT id, digest, bytes FROM prediction_segments WHERE target = $1 \
             ORDER BY last_at DESC, id DESC",
        )
        .bind(&segment.target)
        .fetch_all(&mut *tx)
        .await?;
        let mut kept = 0i64;
        let mut dropped = Vec::new();
        for row in newest_first {
            let bytes: i64 = row.try_get("bytes")?;
            kept += bytes;
            // The newest segment is always kept, whatever its size.
            if kept > keep_bytes && kept != bytes {
                let id: String = row.try_get("id")?;
                sqlx::query("DELETE FROM prediction_segments WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                let digest: String = row.try_get("digest")?;
                sqlx::query("DELETE FROM artifacts WHERE digest = $1")
                    .bind(&digest)
                    .execute(&mut *tx)
                    .await?;
                dropped.push(digest);
            }
        }
        tx.commit().await?;
        Ok(dropped)
    }

    /// A target's segments holding requests answered in `[since, until]`
    /// (epoch ms), oldest first.
    pub async fn segments(&self, target: &str, since: i64, until: i64) -> Result<Vec<Segment>> {
        let rows = sqlx::query(
            "SELECT id, target, model, version, digest, bytes, row_count, first_at, last_at \
             FROM prediction_segments WHERE target = $1 AND last_at >= $2 AND first_at <= $3 \
             ORDER BY first_at, id",
        )
        .bind(target)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Segment {
                    id: r.try_get("id")?,
                    target: r.try_get("target")?,
                    model: r.try_get("model")?,
                    version: r.try_get("version")?,
                    digest: r.try_get("digest")?,
                    bytes: r.try_get("bytes")?,
                    rows: r.try_get("row_count")?,
                    first_at: r.try_get("first_at")?,
                    last_at: r.try_get("last_at")?,
                })
            })
            .collect()
    }

    /// Keeps the true labels of request `request_id`; labels sent again
    /// for the same request replace the first.
    pub async fn add_feedback(
        &self,
        target: &str,
        request_id: &str,
        labels_json: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO prediction_feedback (target, request_id, labels_json, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (target, request_id) \
             DO UPDATE SET labels_json = excluded.labels_json, received_at = excluded.received_at",
        )
        .bind(target)
        .bind(request_id)
        .bind(labels_json)
        .bind(weir_core::now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The labels received for `target` since `since` (epoch ms), by request id.
    pub async fn feedback_since(
        &self,
        target: &str,
        since: i64,
    ) -> Result<std::collections::HashMap<String, String>> {
        let rows = sqlx::query(
            "SELECT request_id, labels_json FROM prediction_feedback \
             WHERE target = $1 AND received_at >= $2",
        )
        .bind(target)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("request_id")?, r.try_get("labels_json")?)))
            .collect()
    }

    /// Keeps a monitor's check; its checks older than `CHECK_RETENTION_MS`
    /// go as new ones come (a monitor checking every minute writes half a
    /// million a year).
    pub async fn record_check(&self, check: &MonitorCheck) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO monitor_checks (id, monitor, target, checked_at, status, reason, report_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(weir_core::new_id())
        .bind(&check.monitor)
        .bind(&check.target)
        .bind(check.checked_at)
        .bind(&check.status)
        .bind(&check.reason)
        .bind(&check.report_json)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM monitor_checks WHERE monitor = $1 AND checked_at < $2")
            .bind(&check.monitor)
            .bind(check.checked_at - CHECK_RETENTION_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest check of each monitor watching `target`.
    pub async fn latest_checks(&self, target: &str) -> Result<Vec<MonitorCheck>> {
        let rows = sqlx::query(
            "SELECT monitor, target, checked_at, status, reason, report_json FROM monitor_checks c \
             WHERE target = $1 AND checked_at = (SELECT MAX(checked_at) FROM monitor_checks \
             WHERE monitor = c.monitor AND target = $1) ORDER BY monitor",
        )
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MonitorCheck {
                    monitor: r.try_get("monitor")?,
                    target: r.try_get("target")?,
                    checked_at: r.try_get("checked_at")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason")?,
                    report_json: r.try_get("report_json")?,
                })
            })
            .collect()
    }

    pub async fn record_alert(&self, alert: &MonitorAlert) -> Result<()> {
        sqlx::query(
            "INSERT INTO monitor_alerts (id, monitor, target, fired_at, reason, actions_json) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&alert.id)
        .bind(&alert.monitor)
        .bind(&alert.target)
        .bind(alert.fired_at)
        .bind(&alert.reason)
        .bind(alert.actions.to_string())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Replaces what an alert's actions did (they finish after it fires).
    pub async fn update_alert_actions(&self, id: &str, actions: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE monitor_alerts SET actions_json = $1 WHERE id = $2")
            .bind(actions.to_string())
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Alerts fired for `target` (every target when empty), newest first.
    pub async fn alerts(&self, target: &str, limit: i64) -> Result<Vec<MonitorAlert>> {
        let rows = sqlx::query(
            "SELECT id, monitor, target, fired_at, reason, actions_json FROM monitor_alerts \
             WHERE target = $1 OR $1 = '' ORDER BY fired_at DESC, id DESC LIMIT $2",
        )
        .bind(target)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let actions: String = r.try_get("actions_json")?;
                Ok(MonitorAlert {
                    id: r.try_get("id")?,
                    monitor: r.try_get("monitor")?,
                    target: r.try_get("target")?,
                    fired_at: r.try_get("fired_at")?,
                    reason: r.try_get("reason")?,
                    actions: serde_json::from_str(&actions).unwrap_or_default(),
                })
            })
            .collect()
    }
}
