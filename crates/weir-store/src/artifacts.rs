//! Artifact records: the metadata half of an artifact. A record is inserted
//! only after the bytes are in the artifact store, never before.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
pub use weir_core::ArtifactKind;
use weir_core::Digest;

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArtifactRecord {
    pub digest: Digest,
    pub size: i64,
    pub kind: ArtifactKind,
    pub created_at: i64,
}

pub(crate) fn artifact_from_row(row: &AnyRow) -> Result<ArtifactRecord> {
    let digest: String = row.try_get("digest")?;
    let kind: String = row.try_get("kind")?;
    Ok(ArtifactRecord {
        digest: digest
            .parse()
            .map_err(|e: weir_core::DigestError| StoreError::Corrupt {
                what: "artifacts.digest".into(),
                reason: e.to_string(),
            })?,
        size: row.try_get("size")?,
        kind: ArtifactKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
            what: "artifacts.kind".into(),
            reason: format!("unknown kind '{kind}'"),
        })?,
        created_at: row.try_get("created_at")?,
    })
}

/// Content addressing makes a second insert of the same digest a no-op.
pub(crate) async fn insert_artifact(
    tx: &mut Transaction<'_, Any>,
    a: &ArtifactRecord,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO artifacts (digest, size, kind, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(a.digest.hex())
    .bind(a.size)
    .bind(a.kind.as_str())
    .bind(a.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Several artifacts in one statement (a step's outputs and its log).
pub(crate) async fn insert_artifacts(
    tx: &mut Transaction<'_, Any>,
    artifacts: &[&ArtifactRecord],
) -> Result<()> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let mut binds = crate::tracking::Binds::for_tx(tx);
    let rows: Vec<String> = artifacts
        .iter()
        .map(|a| {
            format!(
                "({}, {}, {}, {})",
                binds.text(a.digest.hex()),
                binds.push(crate::tracking::Bind::Int(a.size)),
                binds.text(a.kind.as_str()),
                binds.push(crate::tracking::Bind::Int(a.created_at))
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO artifacts (digest, size, kind, created_at) VALUES {} \
         ON CONFLICT (digest) DO NOTHING",
        rows.join(", ")
    );
    crate::tracking::bind_all(sqlx::query(&sql), binds.values())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    pub async fn artifact(&self, digest: &Digest) -> Result<ArtifactRecord> {
        let row =
            sqlx::query("SELECT digest, size, kind, created_at FROM artifacts WHERE digest = $1")
                .bind(digest.hex())
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "artifact",
                    id: digest.hex(),
                    hint: "artifacts are recorded by the steps that produce them".into(),
                })?;
        artifact_from_row(&row)
    }

    /// Records an artifact whose bytes are already stored.
    pub async fn record_artifact(&self, a: &ArtifactRecord) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_artifact(&mut tx, a).await?;
        tx.commit().await?;
        Ok(())
    }
}
