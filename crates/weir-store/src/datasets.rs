//! Dataset versions: the distinct tables a step produced under a dataset's
//! name, numbered in order, each with its profile and the schema changes it
//! brought. Written with the step's outputs (see [`Store::complete_step`]).

use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store, StoreError};

/// A version to record with a step's completion: the output it is, and
/// what the runtime learned of it.
#[derive(Clone, Debug, Default)]
pub struct NewDatasetVersion {
    pub name: String,
    /// The step output holding the table.
    pub output: String,
    pub rows: i64,
    pub columns: i64,
    pub profile_json: String,
    pub changes_json: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatasetVersion {
    pub name: String,
    pub version: i64,
    pub digest: String,
    pub output: String,
    pub step_run_id: String,
    pub run_id: String,
    pub rows: i64,
    pub columns: i64,
    #[serde(skip)]
    pub profile_json: String,
    #[serde(skip)]
    pub changes_json: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatasetSummary {
    pub name: String,
    pub versions: i64,
    pub latest: DatasetVersion,
}

const COLUMNS: &str = "name, version, digest, output, step_run_id, run_id, row_count, \
     column_count, profile_json, changes_json, created_at";

fn version_of(row: &sqlx::any::AnyRow) -> Result<DatasetVersion> {
    Ok(DatasetVersion {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        output: row.try_get("output")?,
        step_run_id: row.try_get("step_run_id")?,
        run_id: row.try_get("run_id")?,
        rows: row.try_get("row_count")?,
        columns: row.try_get("column_count")?,
        profile_json: row.try_get("profile_json")?,
        changes_json: row.try_get("changes_json")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Records `new` as the next version of its dataset, unless a version with
/// the same content exists (then nothing changes: that version is the
/// table). `digest` is the output's stored digest.
pub(crate) async fn insert_dataset_version(
    tx: &mut Transaction<'_, Any>,
    new: &NewDatasetVersion,
    digest: &str,
    step_run_id: &str,
    run_id: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO datasets (name, created_at, last_updated_at) VALUES ($1, $2, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&new.name)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    // Updating the dataset's row first makes concurrent writers of one
    // dataset take turns (PostgreSQL's row lock), so each numbers its
    // version after the other's.
    sqlx::query("UPDATE datasets SET last_updated_at = $1 WHERE name = $2")
        .bind(now)
        .bind(&new.name)
        .execute(&mut **tx)
        .await?;
    let known = sqlx::query("SELECT version FROM dataset_versions WHERE name = $1 AND digest = $2")
        .bind(&new.name)
        .bind(digest)
        .fetch_optional(&mut **tx)
        .await?;
    if known.is_some() {
        return Ok(());
    }
    let version: i64 = sqlx::query(
        "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM dataset_versions WHERE name = $1",
    )
    .bind(&new.name)
    .fetch_one(&mut **tx)
    .await?
    .try_get("next")?;
    sqlx::query(&format!(
        "INSERT INTO dataset_versions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&new.name)
    .bind(version)
    .bind(digest)
    .bind(&new.output)
    .bind(step_run_id)
    .bind(run_id)
    .bind(new.rows)
    .bind(new.columns)
    .bind(&new.profile_json)
    .bind(&new.changes_json)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Every dataset with its latest version, by name.
    pub async fn list_datasets(&self) -> Result<Vec<DatasetSummary>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, (SELECT COUNT(*) FROM dataset_versions c WHERE c.name = v.name) AS n \
             FROM dataset_versions v \
             WHERE version = (SELECT MAX(version) FROM dataset_versions m WHERE m.name = v.name) \
             ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DatasetSummary {
                    name: row.try_get("name")?,
                    versions: row.try_get("n")?,
                    latest: version_of(row)?,
                })
            })
            .collect()
    }

    /// A dataset's versions, oldest first; an unknown name is an error that
    /// lists the known ones.
    pub async fn dataset_versions(&self, name: &str) -> Result<Vec<DatasetVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dataset_versions WHERE name = $1 ORDER BY version"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            let known: Vec<String> = self
                .list_datasets()
                .await?
                .into_iter()
                .map(|d| d.name)
                .collect();
            return Err(StoreError::NotFound {
                kind: "dataset",
                id: name.to_string(),
                hint: match known.is_empty() {
                    true => "no dataset has a version yet: a `weir/ingest` step, or an output marked `datasets: { OUTPUT: NAME }`, makes one".into(),
                    false => format!("known datasets: {}", known.join(", ")),
                },
            });
        }
        rows.iter().map(version_of).collect()
    }

    /// One version of a dataset (`None`: the latest).
    pub async fn dataset_version(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<DatasetVersion> {
        let versions = self.dataset_versions(name).await?;
        let last = versions.last().map_or(0, |v| v.version);
        match version {
            None => Ok(versions.into_iter().next_back().expect("not empty")),
            Some(v) => versions
                .into_iter()
                .find(|d| d.version == v)
                .ok_or_else(|| StoreError::NotFound {
                    kind: "dataset version",
                    id: format!("{name}@{v}"),
                    hint: format!("{name} has versions 1 to {last}"),
                }),
        }
    }

    /// The dataset version whose content is `digest` (the first made), if any.
    pub async fn dataset_version_of_digest(&self, digest: &str) -> Result<Option<DatasetVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dataset_versions WHERE digest = $1 ORDER BY created_at LIMIT 1"
        ))
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_of).transpose()
    }

    /// The latest version of a dataset, if it has one.
    pub async fn latest_dataset_version(&self, name: &str) -> Result<Option<DatasetVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dataset_versions WHERE name = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_of).transpose()
    }

    /// For a table that is a dataset version: the row count of the version
    /// before it (none for a first version, or a table of no dataset).
    pub async fn previous_dataset_rows(&self, digest: &str) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT p.row_count FROM dataset_versions v JOIN dataset_versions p \
             ON p.name = v.name AND p.version = v.version - 1 \
             WHERE v.digest = $1 ORDER BY v.created_at DESC LIMIT 1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => Some(row.try_get::<i64, _>("row_count")?.max(0) as u64),
            None => None,
        })
    }

    /// The dataset versions a step run produced.
    pub async fn step_dataset_versions(&self, step_run_id: &str) -> Result<Vec<DatasetVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM dataset_versions WHERE step_run_id = $1 ORDER BY name"
        ))
        .bind(step_run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_of).collect()
    }
}
