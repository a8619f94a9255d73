//! Pipeline runs and their step runs. A step run's completion (status,
//! outputs, metrics, log and model registrations) commits in one transaction.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::artifacts::{insert_artifact, insert_artifacts, ArtifactRecord};
use crate::metrics::{insert_metrics, MetricPoint};
use crate::mirror;
use crate::models::{insert_model_version, ModelVersion, NewModelVersion};
use crate::{Result, Store, StoreError};

macro_rules! status_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            fn parse(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(StoreError::Corrupt {
                        what: stringify!($name).into(),
                        reason: format!("unknown status '{other}'"),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum!(RunStatus {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

status_enum!(StepStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Skipped => "skipped",
});

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub spec_file: String,
    pub spec_json: String,
    pub params_json: String,
    pub status: RunStatus,
    pub git_rev: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub error: Option<String>,
    /// The runner process (`host/pid/start-time`) while the run is running.
    pub runner: Option<String>,
    pub heartbeat_at: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct NewStepRun {
    pub id: String,
    pub run_id: String,
    pub step: String,
    pub kind: String,
    pub spec_json: String,
    pub inputs_json: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepRunRecord {
    pub id: String,
    pub run_id: String,
    pub step: String,
    pub kind: String,
    pub status: StepStatus,
    pub spec_json: String,
    pub inputs_json: String,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub log_digest: Option<String>,
    pub sources_json: String,
    pub cache_key: Option<String>,
    /// The step run whose outputs this one reused, on a cache hit.
    pub cached_from: Option<String>,
    /// Why it ran instead, on a miss.
    pub cache_miss: Option<String>,
    pub attempt: i64,
    /// The host and process group of the step's runtime, while it runs.
    pub host: Option<String>,
    pub pgid: Option<i64>,
    /// The last checkpoint saved by a preemptible step.
    pub checkpoint_digest: Option<String>,
    /// When the step runtime last said it was alive.
    pub heartbeat_at: Option<i64>,
    /// A step sent to a cluster: the executor (`ray`) and the cluster's
    /// address, the node that runs it and the cluster's id for the attempt.
    pub executor: Option<String>,
    pub executor_address: Option<String>,
    pub node: Option<String>,
    pub job: Option<String>,
}

impl StepRunRecord {
    pub fn sources(&self) -> Vec<SourceFile> {
        serde_json::from_str(&self.sources_json).unwrap_or_default()
    }
}

/// What a step runtime needs to run a step: the step run and, of its run,
/// the params and the pipeline file (not the whole pipeline spec, which grows
/// with the number of steps and would make each step's start-up grow too).
#[derive(Clone, Debug)]
pub struct StepTask {
    pub step: StepRunRecord,
    pub params_json: String,
    pub spec_file: String,
}

/// An external file a step read (e.g. the CSV an ingest step loaded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub digest: String,
    pub size: u64,
}

/// What a step starts with: its inputs and the cache key it runs under.
#[derive(Clone, Debug, Default)]
pub struct StepStart {
    pub inputs_json: String,
    pub cache_key: Option<String>,
    /// JSON object of the parts the key was computed from.
    pub cache_components: Option<String>,
    /// Why the step runs instead of reusing a cached run's outputs.
    pub cache_miss: Option<String>,
}

/// Everything a successful step leaves behind, recorded atomically. Artifact
/// bytes must already be durably stored when this is committed.
#[derive(Clone, Debug, Default)]
pub struct StepCompletion {
    pub outputs: Vec<(String, ArtifactRecord)>,
    pub metrics: Vec<MetricPoint>,
    pub log: Option<ArtifactRecord>,
    pub registrations: Vec<NewModelVersion>,
    pub sources: Vec<SourceFile>,
    /// The cluster job this attempt ran as: the completion applies only
    /// while the step run still names it, so a lost attempt that finishes
    /// after a new one started cannot write over it.
    pub fence: Option<String>,
    /// Outputs that are new versions of datasets.
    pub datasets: Vec<crate::datasets::NewDatasetVersion>,
    /// What the attempt used and cost, recorded with its outcome.
    pub usage: Option<crate::usage::UsageRecord>,
}

const RUN_COLUMNS: &str =
    "id, pipeline, spec_file, spec_json, params_json, status, git_rev, started_at, \
     ended_at, error, runner, heartbeat_at";
const STEP_COLUMNS: &str = "id, run_id, step, kind, status, spec_json, inputs_json, started_at, \
     ended_at, exit_code, error, log_digest, sources_json, cache_key, cached_from, attempt, host, pgid, checkpoint_digest, heartbeat_at, \
     executor, executor_address, node, job, cache_miss";

fn step_not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "step run",
        id: id.to_string(),
        hint: "step runs are created by `weir run`; see `weir runs show RUN`".into(),
    }
}

fn run_from_row(row: &AnyRow) -> Result<RunRecord> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        pipeline: row.try_get("pipeline")?,
        spec_file: row.try_get("spec_file")?,
        spec_json: row.try_get("spec_json")?,
        params_json: row.try_get("params_json")?,
        status: RunStatus::parse(&row.try_get::<String, _>("status")?)?,
        git_rev: row.try_get("git_rev")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        error: row.try_get("error")?,
        runner: row.try_get("runner")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
    })
}

fn step_from_row(row: &AnyRow) -> Result<StepRunRecord> {
    Ok(StepRunRecord {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        step: row.try_get("step")?,
        kind: row.try_get("kind")?,
        status: StepStatus::parse(&row.try_get::<String, _>("status")?)?,
        spec_json: row.try_get("spec_json")?,
        inputs_json: row.try_get("inputs_json")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        exit_code: row.try_get("exit_code")?,
        error: row.try_get("error")?,
        log_digest: row.try_get("log_digest")?,
        sources_json: row.try_get("sources_json")?,
        cache_key: row.try_get("cache_key")?,
        cached_from: row.try_get("cached_from")?,
        cache_miss: row.try_get("cache_miss")?,
        attempt: row.try_get("attempt")?,
        host: row.try_get("host")?,
        pgid: row.try_get("pgid")?,
        checkpoint_digest: row.try_get("checkpoint_digest")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        executor: row.try_get("executor")?,
        executor_address: row.try_get("executor_address")?,
        node: row.try_get("node")?,
        job: row.try_get("job")?,
    })
}

impl Store {
    /// Records a new run together with all of its step runs (pending), so a
    /// run is never visible with only some of its steps.
    pub async fn create_run(&self, run: &RunRecord, steps: &[NewStepRun]) -> Result<()> {
        let experiment_id = self.ensure_experiment(&run.pipeline).await?;
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO runs (id, pipeline, spec_file, spec_json, params_json, status, git_rev, started_at, \
             runner, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&run.id)
        .bind(&run.pipeline)
        .bind(&run.spec_file)
        .bind(&run.spec_json)
        .bind(&run.params_json)
        .bind(run.status.as_str())
        .bind(&run.git_rev)
        .bind(run.started_at)
        .bind(&run.runner)
        .bind(run.heartbeat_at)
        .execute(&mut *tx)
        .await?;
        for step in steps {
            sqlx::query(
                "INSERT INTO step_runs (id, run_id, step, kind, status, spec_json, inputs_json) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&step.id)
            .bind(&step.run_id)
            .bind(&step.step)
            .bind(&step.kind)
            .bind(StepStatus::Pending.as_str())
            .bind(&step.spec_json)
            .bind(&step.inputs_json)
            .execute(&mut *tx)
            .await?;
        }
        mirror::open_run(&mut tx, experiment_id, run, steps).await?;
        let params: serde_json::Value = serde_json::from_str(&run.params_json).unwrap_or_default();
        crate::audit::append(
            &mut tx,
            "run.create",
            &run.id,
            serde_json::Value::Null,
            serde_json::json!({
                "pipeline": run.pipeline, "spec_file": run.spec_file, "params": params,
                "git_rev": run.git_rev, "steps": steps.len(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The runner of a running run says it is alive.
    pub async fn heartbeat_run(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET heartbeat_at = $1 WHERE id = $2 AND status = $3")
            .bind(weir_core::now_ms())
            .bind(id)
            .bind(RunStatus::Running.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Runs recorded as running, for liveness checks.
    pub async fn running_runs(&self) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = $1"))
            .bind(RunStatus::Running.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records a run whose runner is gone as failed, in one transaction: its
    /// running steps fail and its pending steps are skipped. Returns the
    /// step runs that were running, so their processes can be stopped. Does
    /// nothing (and returns `None`) if the run is no longer running.
    pub async fn fail_orphaned_run(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Option<Vec<StepRunRecord>>> {
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE runs SET status = $1, ended_at = $2, error = $3 WHERE id = $4 AND status = $5",
        )
        .bind(RunStatus::Failed.as_str())
        .bind(now)
        .bind(reason)
        .bind(id)
        .bind(RunStatus::Running.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        let running = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS} FROM step_runs WHERE run_id = $1 AND status = $2"
        ))
        .bind(id)
        .bind(StepStatus::Running.as_str())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(step_from_row)
        .collect::<Result<Vec<_>>>()?;
        sqlx::query("UPDATE step_runs SET status = $1, ended_at = $2, error = $3 WHERE run_id = $4 AND status = $5")
            .bind(StepStatus::Failed.as_str())
            .bind(now)
            .bind(reason)
            .bind(id)
            .bind(StepStatus::Running.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE step_runs SET status = $1, error = $2 WHERE run_id = $3 AND status = $4",
        )
        .bind(StepStatus::Skipped.as_str())
        .bind(reason)
        .bind(id)
        .bind(StepStatus::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(running))
    }

    /// Reopens a failed run for `weir resume`: the run is running again under
    /// `runner`, and every step that did not succeed is pending again. One
    /// transaction; fails if the run is not failed.
    pub async fn reopen_run(&self, id: &str, runner: &str) -> Result<()> {
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE runs SET status = $1, ended_at = NULL, error = NULL, runner = $2, heartbeat_at = $3 \
             WHERE id = $4 AND status = $5",
        )
        .bind(RunStatus::Running.as_str())
        .bind(runner)
        .bind(now)
        .bind(id)
        .bind(RunStatus::Failed.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Conflict(format!(
                "run {id} is not failed, so it cannot be resumed"
            )));
        }
        sqlx::query(
            "UPDATE step_runs SET status = $1, started_at = NULL, ended_at = NULL, exit_code = NULL, error = NULL, \
             attempt = 1, cached_from = NULL WHERE run_id = $2 AND status <> $3",
        )
        .bind(StepStatus::Pending.as_str())
        .bind(id)
        .bind(StepStatus::Succeeded.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The step runtime of a running step says it is alive.
    pub async fn heartbeat_step(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE step_runs SET heartbeat_at = $1 WHERE id = $2 AND status = $3")
            .bind(weir_core::now_ms())
            .bind(id)
            .bind(StepStatus::Running.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records a saved checkpoint (a directory artifact whose bytes are stored).
    pub async fn set_checkpoint(&self, id: &str, checkpoint: &ArtifactRecord) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE step_runs SET checkpoint_digest = $1 WHERE id = $2")
            .bind(checkpoint.digest.hex())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_artifact(&mut tx, checkpoint).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where a step's runtime process group is, to stop it if its run is orphaned.
    pub async fn set_step_process(&self, id: &str, host: &str, pgid: i64) -> Result<()> {
        sqlx::query(
            "UPDATE step_runs SET host = $1, pgid = $2, executor = 'local', executor_address = NULL, \
             node = $1, job = NULL WHERE id = $3",
        )
            .bind(host)
            .bind(pgid)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Where a step attempt was sent on a cluster: `job` is the cluster's id
    /// for it; the node is not known until the cluster places it.
    pub async fn set_step_job(
        &self,
        id: &str,
        executor: &str,
        address: &str,
        job: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE step_runs SET executor = $1, executor_address = $2, job = $3, node = NULL, \
             host = NULL, pgid = NULL WHERE id = $4",
        )
        .bind(executor)
        .bind(address)
        .bind(job)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The cluster node a step attempt was placed on.
    pub async fn set_step_node(&self, id: &str, node: &str) -> Result<()> {
        sqlx::query("UPDATE step_runs SET node = $1 WHERE id = $2")
            .bind(node)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn finish_run(&self, id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE runs SET status = $1, ended_at = $2, error = $3 WHERE id = $4")
            .bind(status.as_str())
            .bind(weir_core::now_ms())
            .bind(error)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // What the run cost, where the tracking view shows its metrics.
        crate::usage::mirror_run_totals(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finds a run by id or unique id prefix.
    pub async fn run(&self, id_or_prefix: &str) -> Result<RunRecord> {
        // Ids are lowercase hex, so every id that starts with the prefix lies
        // in [prefix, prefix + "g"): a range the primary key index answers,
        // where LIKE would scan every run.
        let prefix = id_or_prefix.to_ascii_lowercase();
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id >= $1 AND id < $2 ORDER BY id LIMIT 5"
        ))
        .bind(&prefix)
        .bind(format!("{prefix}g"))
        .fetch_all(&self.pool)
        .await?;
        match rows.len() {
            0 => Err(StoreError::NotFound {
                kind: "run",
                id: id_or_prefix.to_string(),
                hint: "list runs with `weir runs list`".into(),
            }),
            1 => run_from_row(&rows[0]),
            _ => Err(StoreError::Ambiguous {
                kind: "run",
                prefix: id_or_prefix.to_string(),
                matches: rows
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>("id").ok())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The most recent runs first.
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn step_runs(&self, run_id: &str) -> Result<Vec<StepRunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS} FROM step_runs WHERE run_id = $1 ORDER BY id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_from_row).collect()
    }

    pub async fn step_run(&self, id: &str) -> Result<StepRunRecord> {
        let row = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS} FROM step_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| step_not_found(id))?;
        step_from_row(&row)
    }

    /// A step run with what its runtime needs of the run, in one query.
    pub async fn step_task(&self, id: &str) -> Result<StepTask> {
        let columns = STEP_COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "SELECT {columns}, r.params_json AS run_params_json, r.spec_file AS run_spec_file \
             FROM step_runs s JOIN runs r ON r.id = s.run_id WHERE s.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| step_not_found(id))?;
        Ok(StepTask {
            step: step_from_row(&row)?,
            params_json: row.try_get("run_params_json")?,
            spec_file: row.try_get("run_spec_file")?,
        })
    }

    /// Marks a step running with the artifacts it was given and the cache
    /// key it runs under (valid once the step has succeeded).
    ///
    /// Only a pending step of a running run starts: a runner killed while its
    /// statement was in flight (PostgreSQL may still execute it) cannot revive
    /// a step that another command has since failed or skipped.
    pub async fn start_step(&self, id: &str, start: &StepStart) -> Result<()> {
        // On PostgreSQL the run row is locked while this is decided: the
        // subquery would otherwise read the run as running while a reap that
        // already failed it is still committing, and a step could start
        // between the reap failing the running steps and skipping the
        // pending ones (found by the crash trials). SQLite has one writer.
        let lock = match self.backend {
            crate::Backend::Postgres => " FOR SHARE",
            crate::Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE step_runs SET status = $1, started_at = $2, heartbeat_at = $2, inputs_json = $3, \
             cache_key = $4, cache_components = $5, cache_miss = $9 WHERE id = $6 AND status = $7 \
             AND run_id IN (SELECT id FROM runs WHERE status = $8{lock})"
        );
        let updated = sqlx::query(&sql)
            .bind(StepStatus::Running.as_str())
            .bind(weir_core::now_ms())
            .bind(&start.inputs_json)
            .bind(&start.cache_key)
            .bind(&start.cache_components)
            .bind(id)
            .bind(StepStatus::Pending.as_str())
            .bind(RunStatus::Running.as_str())
            .bind(&start.cache_miss)
            .execute(&self.writer)
            .await?
            .rows_affected();
        self.expect_transition(id, updated, "start").await
    }

    /// A runtime's outcome that no longer applies: its step is no longer
    /// running, or running as another attempt.
    async fn superseded(&self, id: &str, what: &str) -> StoreError {
        match self.step_run(id).await {
            Ok(step) if step.status == StepStatus::Running => StoreError::Conflict(format!(
                "cannot {what} step '{}': another attempt of it is running now (job {})",
                step.step,
                step.job.as_deref().unwrap_or("local")
            )),
            Ok(step) => match self.run(&step.run_id).await {
                Ok(run) => StoreError::Conflict(format!(
                    "cannot {what} step '{}': it is {} and its run is {}",
                    step.step, step.status, run.status
                )),
                Err(e) => e,
            },
            Err(e) => e,
        }
    }

    /// A guarded status change that matched no row: the step or its run was
    /// changed by someone else (typically: the run was reaped or cancelled).
    async fn expect_transition(&self, id: &str, updated: u64, what: &str) -> Result<()> {
        if updated == 1 {
            return Ok(());
        }
        let step = self.step_run(id).await?;
        let run = self.run(&step.run_id).await?;
        Err(StoreError::Conflict(format!(
            "cannot {what} step '{}': it is {} and its run is {}",
            step.step, step.status, run.status
        )))
    }

    /// The most recent successful step run recorded under `cache_key`.
    pub async fn cached_step_run(&self, cache_key: &str) -> Result<Option<StepRunRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS} FROM step_runs WHERE cache_key = $1 AND status = $2 \
             ORDER BY ended_at DESC LIMIT 1"
        ))
        .bind(cache_key)
        .bind(StepStatus::Succeeded.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(step_from_row).transpose()
    }

    /// The cache components of the last successful run of a pipeline's step,
    /// to explain why a step runs again.
    pub async fn previous_cache_components(
        &self,
        pipeline: &str,
        step: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT s.cache_components AS components FROM step_runs s JOIN runs r ON r.id = s.run_id \
             WHERE r.pipeline = $1 AND s.step = $2 AND s.status = $3 AND s.cache_components IS NOT NULL \
             ORDER BY s.ended_at DESC LIMIT 1",
        )
        .bind(pipeline)
        .bind(step)
        .bind(StepStatus::Succeeded.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("components")).transpose()?)
    }

    /// Completes a step from an earlier execution with the same cache key:
    /// the same outputs, metrics, log and sources, in one transaction.
    pub async fn complete_from_cache(
        &self,
        id: &str,
        start: &StepStart,
        source: &StepRunRecord,
    ) -> Result<()> {
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE step_runs SET status = $1, started_at = $2, ended_at = $2, exit_code = 0, inputs_json = $3, \
             cache_key = $4, cache_components = $5, cached_from = $6, log_digest = $7, sources_json = $8 \
             WHERE id = $9",
        )
        .bind(StepStatus::Succeeded.as_str())
        .bind(now)
        .bind(&start.inputs_json)
        .bind(&start.cache_key)
        .bind(&start.cache_components)
        .bind(&source.id)
        .bind(&source.log_digest)
        .bind(&source.sources_json)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO step_outputs (step_run_id, name, digest) \
             SELECT $1, name, digest FROM step_outputs WHERE step_run_id = $2",
        )
        .bind(id)
        .bind(&source.id)
        .execute(&mut *tx)
        .await?;
        let run_id: String = sqlx::query("SELECT run_id FROM step_runs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("run_id")?;
        sqlx::query(
            "INSERT INTO metrics (run_id, step_run_id, key, value, step, ts) \
             SELECT $1, $2, key, value, step, ts FROM metrics WHERE step_run_id = $3",
        )
        .bind(&run_id)
        .bind(id)
        .bind(&source.id)
        .execute(&mut *tx)
        .await?;
        mirror::mark_cache_hit(&mut tx, &run_id, id, &source.id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts the next attempt of a failed step.
    pub async fn retry_step(&self, id: &str, attempt: i64) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE step_runs SET status = $1, attempt = $2, started_at = $3, heartbeat_at = $3, ended_at = NULL, \
             exit_code = NULL, error = NULL WHERE id = $4 AND status = $5 \
             AND run_id IN (SELECT id FROM runs WHERE status = $6)",
        )
        .bind(StepStatus::Running.as_str())
        .bind(attempt)
        .bind(weir_core::now_ms())
        .bind(id)
        .bind(StepStatus::Failed.as_str())
        .bind(RunStatus::Running.as_str())
        .execute(&self.writer)
        .await?
        .rows_affected();
        self.expect_transition(id, updated, "retry").await
    }

    /// Marks steps that will never run because something upstream failed.
    pub async fn mark_step_skipped(&self, id: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE step_runs SET status = $1, error = $2 WHERE id = $3")
            .bind(StepStatus::Skipped.as_str())
            .bind(reason)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Commits a successful step: status, outputs, metrics, log and model
    /// registrations, all or nothing. Returns the model versions created.
    pub async fn complete_step(
        &self,
        step_run_id: &str,
        completion: &StepCompletion,
    ) -> Result<Vec<ModelVersion>> {
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        let fence = match completion.fence {
            Some(_) => " AND job = $7",
            None => "",
        };
        let sql = format!(
            "UPDATE step_runs SET status = $1, ended_at = $2, exit_code = 0, error = NULL, log_digest = $3, \
             sources_json = $4 WHERE id = $5 AND status = $6{fence} RETURNING run_id"
        );
        let mut query = sqlx::query(&sql)
            .bind(StepStatus::Succeeded.as_str())
            .bind(now)
            .bind(completion.log.as_ref().map(|l| l.digest.hex()))
            .bind(serde_json::to_string(&completion.sources).expect("sources serialize"))
            .bind(step_run_id)
            .bind(StepStatus::Running.as_str());
        if let Some(job) = &completion.fence {
            query = query.bind(job);
        }
        let run_id = query.fetch_optional(&mut *tx).await?;
        // Only a running step completes: an attempt the runner has given up
        // on (its node was lost, its run was cancelled or reaped) must not
        // turn the step back into a success behind the runner's back.
        let Some(run_id) = run_id else {
            drop(tx);
            return Err(self.superseded(step_run_id, "complete").await);
        };
        let run_id: String = run_id.try_get("run_id")?;
        if completion.fence.is_some() {
            crate::events::announce_step_ended(self.backend, &mut tx, step_run_id).await?;
        }
        // Distinct digests only: one statement cannot insert the same key twice.
        let mut records: Vec<&ArtifactRecord> = completion.log.iter().collect();
        for (_, artifact) in &completion.outputs {
            if !records.iter().any(|r| r.digest == artifact.digest) {
                records.push(artifact);
            }
        }
        insert_artifacts(&mut tx, &records).await?;
        if let Some(usage) = &completion.usage {
            crate::usage::insert_usage(&mut tx, usage).await?;
        }
        for (name, artifact) in &completion.outputs {
            sqlx::query("INSERT INTO step_outputs (step_run_id, name, digest) VALUES ($1, $2, $3)")
                .bind(step_run_id)
                .bind(name)
                .bind(artifact.digest.hex())
                .execute(&mut *tx)
                .await?;
        }
        for dataset in &completion.datasets {
            let Some((_, artifact)) = completion
                .outputs
                .iter()
                .find(|(name, _)| *name == dataset.output)
            else {
                return Err(StoreError::Invalid(format!(
                    "dataset {} names output '{}', which the step did not store",
                    dataset.name, dataset.output
                )));
            };
            crate::datasets::insert_dataset_version(
                &mut tx,
                dataset,
                &artifact.digest.hex(),
                step_run_id,
                &run_id,
                now,
            )
            .await?;
        }
        insert_metrics(&mut tx, &run_id, step_run_id, &completion.metrics).await?;
        mirror::log_step_metrics(&mut tx, &run_id, step_run_id, &completion.metrics).await?;
        let mut versions = Vec::new();
        for registration in &completion.registrations {
            versions.push(insert_model_version(&mut tx, registration, now).await?);
        }
        tx.commit().await?;
        Ok(versions)
    }

    /// Records a failed step with its error and, when there is one, its log.
    pub async fn fail_step(
        &self,
        step_run_id: &str,
        error: &str,
        exit_code: Option<i64>,
        log: Option<&ArtifactRecord>,
    ) -> Result<()> {
        self.fail_step_fenced(step_run_id, None, error, exit_code, log)
            .await
    }

    /// [`Store::fail_step`] by the runtime of cluster job `fence`: applies
    /// only while the step is running as that job (see
    /// [`StepCompletion::fence`]).
    pub async fn fail_step_fenced(
        &self,
        step_run_id: &str,
        fence: Option<&str>,
        error: &str,
        exit_code: Option<i64>,
        log: Option<&ArtifactRecord>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let guard = match fence {
            Some(_) => " AND status = $7 AND job = $8",
            None => "",
        };
        let sql = format!(
            "UPDATE step_runs SET status = $1, ended_at = $2, exit_code = $3, error = $4, log_digest = $5 \
             WHERE id = $6{guard}"
        );
        let mut query = sqlx::query(&sql)
            .bind(StepStatus::Failed.as_str())
            .bind(weir_core::now_ms())
            .bind(exit_code)
            .bind(error)
            .bind(log.map(|l| l.digest.hex()))
            .bind(step_run_id);
        if let Some(job) = fence {
            query = query.bind(StepStatus::Running.as_str()).bind(job);
        }
        if query.execute(&mut *tx).await?.rows_affected() == 0 && fence.is_some() {
            drop(tx);
            return Err(self.superseded(step_run_id, "fail").await);
        }
        if let Some(log) = log {
            insert_artifact(&mut tx, log).await?;
        }
        if fence.is_some() {
            crate::events::announce_step_ended(self.backend, &mut tx, step_run_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Outputs of a step run by name.
    pub async fn step_outputs(&self, step_run_id: &str) -> Result<Vec<(String, ArtifactRecord)>> {
        let rows = sqlx::query(
            "SELECT o.name, a.digest, a.size, a.kind, a.created_at FROM step_outputs o \
             JOIN artifacts a ON a.digest = o.digest WHERE o.step_run_id = $1 ORDER BY o.name",
        )
        .bind(step_run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("name")?,
                    crate::artifacts::artifact_from_row(row)?,
                ))
            })
            .collect()
    }
}
