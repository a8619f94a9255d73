//! Trials of hyper-parameter studies, stored as they finish so a resumed run
//! continues its study instead of starting it again.

use sqlx::Row;

use crate::{Result, Store};

/// One trial as stored. Params, intermediate values, metrics and outputs are
/// JSON documents: the study's shape is the tuner's business, not the schema's.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTrial {
    pub number: i64,
    /// `running`, `complete`, `pruned` or `failed`.
    pub state: String,
    pub params_json: String,
    pub value: Option<f64>,
    pub intermediate_json: String,
    pub metrics_json: String,
    /// `{output name: {digest, kind}}` of a complete trial.
    pub outputs_json: Option<String>,
    pub error: Option<String>,
    pub tracking_run_id: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

impl Store {
    /// The trials of a step's study in a run, by number.
    pub async fn study_trials(&self, run_id: &str, step: &str) -> Result<Vec<StoredTrial>> {
        let rows = sqlx::query(
            "SELECT number, state, params_json, value, intermediate_json, metrics_json, \
             outputs_json, error, tracking_run_id, started_at, ended_at \
             FROM study_trials WHERE run_id = $1 AND step = $2 ORDER BY number",
        )
        .bind(run_id)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredTrial {
                    number: r.try_get("number")?,
                    state: r.try_get("state")?,
                    params_json: r.try_get("params_json")?,
                    value: r.try_get("value")?,
                    intermediate_json: r.try_get("intermediate_json")?,
                    metrics_json: r.try_get("metrics_json")?,
                    outputs_json: r.try_get("outputs_json")?,
                    error: r.try_get("error")?,
                    tracking_run_id: r.try_get("tracking_run_id")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                })
            })
            .collect()
    }

    /// Writes a trial, replacing what was stored under its number.
    pub async fn save_trial(&self, run_id: &str, step: &str, t: &StoredTrial) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM study_trials WHERE run_id = $1 AND step = $2 AND number = $3")
            .bind(run_id)
            .bind(step)
            .bind(t.number)
            .execute(&mut *tx)
            .await?;
        // A NULL double does not bind through the Any driver on PostgreSQL
        // ("incorrect binary data format"), so a missing value is written
        // as the literal NULL.
        let value = match t.value {
            Some(_) => "$6",
            None => "NULL",
        };
        let sql = format!(
            "INSERT INTO study_trials (run_id, step, number, state, params_json, value, \
             intermediate_json, metrics_json, outputs_json, error, tracking_run_id, started_at, \
             ended_at) VALUES ($1, $2, $3, $4, $5, {value}, $7, $8, $9, $10, $11, $12, $13)"
        );
        let mut q = sqlx::query(&sql)
            .bind(run_id)
            .bind(step)
            .bind(t.number)
            .bind(&t.state)
            .bind(&t.params_json);
        // Placeholders are numbered: a filler in sixth place keeps the later
        // arguments at their numbers when $6 is not in the text.
        q = match t.value {
            Some(v) => q.bind(v),
            None => q.bind(0i64),
        };
        q.bind(&t.intermediate_json)
            .bind(&t.metrics_json)
            .bind(&t.outputs_json)
            .bind(&t.error)
            .bind(&t.tracking_run_id)
            .bind(t.started_at)
            .bind(t.ended_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
