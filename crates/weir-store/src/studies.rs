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
    /// The cluster job that runs the trial, when it runs as one; its outcome
    /// is recorded only while the trial still names it.
    pub job: Option<String>,
    /// The cluster node that ran it.
    pub node: Option<String>,
}

const COLUMNS: &str = "number, state, params_json, value, intermediate_json, metrics_json, \
     outputs_json, error, tracking_run_id, started_at, ended_at, job, node";

fn trial_of_row(r: &sqlx::any::AnyRow) -> Result<StoredTrial> {
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
        job: r.try_get("job")?,
        node: r.try_get("node")?,
    })
}

impl Store {
    /// The trials of a step's study in a run, by number.
    pub async fn study_trials(&self, run_id: &str, step: &str) -> Result<Vec<StoredTrial>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM study_trials WHERE run_id = $1 AND step = $2 ORDER BY number"
        ))
        .bind(run_id)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(trial_of_row).collect()
    }

    /// One trial of a step's study, if it was started.
    pub async fn study_trial(
        &self,
        run_id: &str,
        step: &str,
        number: i64,
    ) -> Result<Option<StoredTrial>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM study_trials WHERE run_id = $1 AND step = $2 AND number = $3"
        ))
        .bind(run_id)
        .bind(step)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(trial_of_row).transpose()
    }

    /// Records the job and node of a running trial (either may be unknown yet).
    pub async fn set_trial_placement(
        &self,
        run_id: &str,
        step: &str,
        number: i64,
        job: Option<&str>,
        node: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE study_trials SET job = COALESCE($4, job), node = COALESCE($5, node) \
             WHERE run_id = $1 AND step = $2 AND number = $3",
        )
        .bind(run_id)
        .bind(step)
        .bind(number)
        .bind(job)
        .bind(node)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Replaces a running trial's intermediate values, if `job` still runs
    /// it; false when the trial ended or was given to another job.
    pub async fn set_trial_intermediate(
        &self,
        run_id: &str,
        step: &str,
        number: i64,
        job: &str,
        intermediate_json: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE study_trials SET intermediate_json = $5 \
             WHERE run_id = $1 AND step = $2 AND number = $3 AND state = 'running' AND job = $4",
        )
        .bind(run_id)
        .bind(step)
        .bind(number)
        .bind(job)
        .bind(intermediate_json)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how a trial that ran as cluster job `job` ended, only while
    /// it is still running as that job: a study that gave up on the trial
    /// (its coordinator restarted) keeps what it recorded instead. Returns
    /// whether the outcome was recorded.
    pub async fn finish_trial_fenced(
        &self,
        run_id: &str,
        step: &str,
        job: &str,
        t: &StoredTrial,
    ) -> Result<bool> {
        // See save_trial on NULL doubles.
        let value = match t.value {
            Some(_) => "$5",
            None => "NULL",
        };
        let sql = format!(
            "UPDATE study_trials SET state = $4, value = {value}, intermediate_json = $6, \
             metrics_json = $7, outputs_json = $8, error = $9, ended_at = $10, \
             node = COALESCE($11, node) \
             WHERE run_id = $1 AND step = $2 AND number = $3 AND state = 'running' AND job = $12"
        );
        let q = sqlx::query(&sql)
            .bind(run_id)
            .bind(step)
            .bind(t.number)
            .bind(&t.state);
        let q = match t.value {
            Some(v) => q.bind(v),
            None => q.bind(0i64),
        };
        let done = q
            .bind(&t.intermediate_json)
            .bind(&t.metrics_json)
            .bind(&t.outputs_json)
            .bind(&t.error)
            .bind(t.ended_at)
            .bind(&t.node)
            .bind(job)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Writes a trial, replacing what was stored under its number.
    pub async fn save_trial(&self, run_id: &str, step: &str, t: &StoredTrial) -> Result<()> {
        let mut tx = self.write_tx().await?;
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
             ended_at, job, node) \
             VALUES ($1, $2, $3, $4, $5, {value}, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
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
            .bind(&t.job)
            .bind(&t.node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
