//! The model registry: named models with auto-incremented versions. A
//! version registered by a pipeline points at a Weir model artifact and
//! carries its lineage and metrics; one registered through the MLflow API
//! points at MLflow-format files by source URI. Both have MLflow's tags,
//! aliases, descriptions and stages.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, Default)]
pub struct NewModelVersion {
    pub name: String,
    /// The Weir model file, for versions registered by a pipeline.
    pub digest: Option<weir_core::Digest>,
    /// Where the model's files are; derived from the digest when empty.
    pub source: String,
    pub run_id: Option<String>,
    pub step_run_id: Option<String>,
    /// The MLflow logged model it was registered from.
    pub model_id: Option<String>,
    pub metrics_json: String,
    pub lineage_json: String,
    pub description: Option<String>,
    pub user_id: Option<String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: i64,
    pub digest: Option<String>,
    pub source: String,
    pub run_id: Option<String>,
    pub step_run_id: Option<String>,
    pub model_id: Option<String>,
    pub metrics_json: String,
    pub lineage_json: String,
    pub status: String,
    pub stage: String,
    pub description: Option<String>,
    pub user_id: Option<String>,
    pub created_at: i64,
    pub last_updated_at: i64,
}

impl ModelVersion {
    /// The Weir model file, or why this version has none.
    pub fn weir_digest(&self) -> Result<&str> {
        self.digest.as_deref().ok_or_else(|| {
            StoreError::Invalid(format!(
                "version {} of model '{}' holds MLflow-format files ({}), not a Weir model",
                self.version, self.name, self.source
            ))
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub latest_version: i64,
    pub versions: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(crate) const VERSION_COLUMNS: &str =
    "name, version, digest, source, run_id, step_run_id, model_id, \
     metrics_json, lineage_json, status, stage, description, user_id, created_at, last_updated_at";

pub(crate) fn version_from_row(row: &AnyRow) -> Result<ModelVersion> {
    Ok(ModelVersion {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        source: row.try_get("source")?,
        run_id: row.try_get("run_id")?,
        step_run_id: row.try_get("step_run_id")?,
        model_id: row.try_get("model_id")?,
        metrics_json: row.try_get("metrics_json")?,
        lineage_json: row.try_get("lineage_json")?,
        status: row.try_get("status")?,
        stage: row.try_get("stage")?,
        description: row.try_get("description")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
        last_updated_at: row.try_get("last_updated_at")?,
    })
}

/// Allocates the next version under a lock on the model's row, so two
/// concurrent registrations get distinct versions on either backend.
pub(crate) async fn insert_model_version(
    tx: &mut Transaction<'_, Any>,
    new: &NewModelVersion,
    now: i64,
) -> Result<ModelVersion> {
    sqlx::query(
        "INSERT INTO models (name, created_at, last_updated_at) VALUES ($1, $2, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&new.name)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE models SET last_updated_at = $1 WHERE name = $2")
        .bind(now)
        .bind(&new.name)
        .execute(&mut **tx)
        .await?;
    let version: i64 = sqlx::query(
        "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM model_versions WHERE name = $1",
    )
    .bind(&new.name)
    .fetch_one(&mut **tx)
    .await?
    .try_get("next")?;
    let digest = new.digest.map(|d| d.hex());
    let source = match (&digest, new.source.is_empty()) {
        (Some(d), true) => format!("weir-model:{d}"),
        _ => new.source.clone(),
    };
    sqlx::query(&format!(
        "INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'READY', 'None', $10, $11, $12, $12)"
    ))
    .bind(&new.name)
    .bind(version)
    .bind(&digest)
    .bind(&source)
    .bind(&new.run_id)
    .bind(&new.step_run_id)
    .bind(&new.model_id)
    .bind(&new.metrics_json)
    .bind(&new.lineage_json)
    .bind(&new.description)
    .bind(&new.user_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    for (k, v) in &new.tags {
        sqlx::query(
            "INSERT INTO model_version_tags (name, version, key, value) VALUES ($1, $2, $3, $4)",
        )
        .bind(&new.name)
        .bind(version)
        .bind(k)
        .bind(v)
        .execute(&mut **tx)
        .await?;
    }
    crate::audit::append(
        tx,
        "model.register",
        &format!("{}:{version}", new.name),
        serde_json::Value::Null,
        serde_json::json!({
            "digest": digest, "source": source, "run_id": new.run_id,
            "step_run_id": new.step_run_id,
        }),
    )
    .await?;
    Ok(ModelVersion {
        name: new.name.clone(),
        version,
        digest,
        source,
        run_id: new.run_id.clone(),
        step_run_id: new.step_run_id.clone(),
        model_id: new.model_id.clone(),
        metrics_json: new.metrics_json.clone(),
        lineage_json: new.lineage_json.clone(),
        status: "READY".into(),
        stage: "None".into(),
        description: new.description.clone(),
        user_id: new.user_id.clone(),
        created_at: now,
        last_updated_at: now,
    })
}

impl Store {
    /// Registers a model version outside a pipeline step.
    pub async fn register_model_version(&self, new: &NewModelVersion) -> Result<ModelVersion> {
        let mut tx = self.write_tx().await?;
        let version = insert_model_version(&mut tx, new, weir_core::now_ms()).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Registers a version whose file was just stored: the artifact record
    /// and the version land in one transaction, or neither does.
    pub async fn register_model_file(
        &self,
        artifact: &crate::ArtifactRecord,
        new: &NewModelVersion,
    ) -> Result<ModelVersion> {
        let mut tx = self.write_tx().await?;
        crate::artifacts::insert_artifact(&mut tx, artifact).await?;
        let version = insert_model_version(&mut tx, new, weir_core::now_ms()).await?;
        tx.commit().await?;
        Ok(version)
    }

    pub async fn list_models(&self) -> Result<Vec<ModelSummary>> {
        let rows = sqlx::query(
            "SELECT m.name AS name, m.created_at AS created_at, MAX(v.version) AS latest, \
             COUNT(v.version) AS n, MAX(v.created_at) AS updated FROM models m \
             JOIN model_versions v ON v.name = m.name GROUP BY m.name, m.created_at ORDER BY m.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ModelSummary {
                    name: row.try_get("name")?,
                    latest_version: row.try_get("latest")?,
                    versions: row.try_get("n")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated")?,
                })
            })
            .collect()
    }

    /// All versions of a model, newest first.
    pub async fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = $1 ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(self.unknown_model(name).await);
        }
        rows.iter().map(version_from_row).collect()
    }

    /// One version of a model; the latest when `version` is `None`.
    pub async fn model_version(&self, name: &str, version: Option<i64>) -> Result<ModelVersion> {
        let row = match version {
            Some(v) => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = $1 AND version = $2"
                ))
                .bind(name)
                .bind(v)
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = $1 ORDER BY version DESC LIMIT 1"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        match (row, version) {
            (Some(row), _) => version_from_row(&row),
            (None, Some(v)) if self.model_versions(name).await.is_ok() => {
                Err(StoreError::NotFound {
                    kind: "model version",
                    id: format!("{name}/{v}"),
                    hint: format!("list the versions with `weir models show {name}`"),
                })
            }
            (None, _) => Err(self.unknown_model(name).await),
        }
    }

    /// Versions registered by one run.
    pub async fn model_versions_for_run(&self, run_id: &str) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE run_id = $1 ORDER BY name, version"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn unknown_model(&self, name: &str) -> StoreError {
        let known: Vec<String> = self
            .list_models()
            .await
            .map(|m| m.into_iter().map(|m| m.name).collect())
            .unwrap_or_default();
        StoreError::NotFound {
            kind: "model",
            id: name.to_string(),
            hint: if known.is_empty() {
                "no model is registered yet; a pipeline registers one with a `weir/register` step"
                    .into()
            } else {
                format!("registered models: {}", known.join(", "))
            },
        }
    }
}
