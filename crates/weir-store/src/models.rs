//! The model registry: named models with auto-incremented versions, each
//! pointing at a model artifact and carrying its lineage and metrics.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug)]
pub struct NewModelVersion {
    pub name: String,
    pub digest: weir_core::Digest,
    pub run_id: Option<String>,
    pub step_run_id: Option<String>,
    pub metrics_json: String,
    pub lineage_json: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: i64,
    pub digest: String,
    pub run_id: Option<String>,
    pub step_run_id: Option<String>,
    pub metrics_json: String,
    pub lineage_json: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub latest_version: i64,
    pub versions: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const VERSION_COLUMNS: &str =
    "name, version, digest, run_id, step_run_id, metrics_json, lineage_json, created_at";

fn version_from_row(row: &AnyRow) -> Result<ModelVersion> {
    Ok(ModelVersion {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        run_id: row.try_get("run_id")?,
        step_run_id: row.try_get("step_run_id")?,
        metrics_json: row.try_get("metrics_json")?,
        lineage_json: row.try_get("lineage_json")?,
        created_at: row.try_get("created_at")?,
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
        "INSERT INTO models (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&new.name)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE models SET created_at = created_at WHERE name = $1")
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
    sqlx::query(&format!(
        "INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&new.name)
    .bind(version)
    .bind(new.digest.hex())
    .bind(&new.run_id)
    .bind(&new.step_run_id)
    .bind(&new.metrics_json)
    .bind(&new.lineage_json)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(ModelVersion {
        name: new.name.clone(),
        version,
        digest: new.digest.hex(),
        run_id: new.run_id.clone(),
        step_run_id: new.step_run_id.clone(),
        metrics_json: new.metrics_json.clone(),
        lineage_json: new.lineage_json.clone(),
        created_at: now,
    })
}

impl Store {
    /// Registers a model version outside a pipeline step.
    pub async fn register_model_version(&self, new: &NewModelVersion) -> Result<ModelVersion> {
        let mut tx = self.pool.begin().await?;
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
