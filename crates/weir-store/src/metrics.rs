//! Metric points, recorded per step run and read per run.

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub key: String,
    pub value: f64,
    #[serde(default)]
    pub step: i64,
    #[serde(default)]
    pub ts: i64,
}

pub(crate) async fn insert_metrics(
    tx: &mut Transaction<'_, Any>,
    run_id: &str,
    step_run_id: &str,
    metrics: &[MetricPoint],
) -> Result<()> {
    for m in metrics {
        sqlx::query(
            "INSERT INTO metrics (run_id, step_run_id, key, value, step, ts) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(run_id)
        .bind(step_run_id)
        .bind(&m.key)
        .bind(m.value)
        .bind(m.step)
        .bind(m.ts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// The latest value of every metric in a run, per step run:
    /// `(step_run_id, point)` ordered by step run and key.
    pub async fn latest_metrics(&self, run_id: &str) -> Result<Vec<(String, MetricPoint)>> {
        let rows = sqlx::query(
            "SELECT step_run_id, key, value, step, ts FROM metrics WHERE run_id = $1 \
             ORDER BY step_run_id, key, step, ts",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, MetricPoint)> = Vec::new();
        for row in rows {
            let step_run: String = row.try_get("step_run_id")?;
            let point = MetricPoint {
                key: row.try_get("key")?,
                value: row.try_get("value")?,
                step: row.try_get("step")?,
                ts: row.try_get("ts")?,
            };
            match out.last_mut() {
                Some((s, last)) if *s == step_run && last.key == point.key => *last = point,
                _ => out.push((step_run, point)),
            }
        }
        Ok(out)
    }
}
