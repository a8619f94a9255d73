//! `weir backup DEST` and `weir restore SRC`. A backup location is laid out
//! as an artifact store (a directory or `s3://`): the blobs, shared by every
//! snapshot taken there (so each backup copies only what is new), and per
//! snapshot `snapshots/ID/metadata.{sqlite,pgdump}` and
//! `snapshots/ID/manifest.json`. The manifest is written last: a snapshot
//! without one never finished and is not offered for restore.
//!
//! A backup snapshots the metadata first, then copies every blob the store
//! names at that point or later (a superset of what the snapshot names, as
//! blobs are never changed). A restore copies the blobs first, then makes
//! the metadata store from its snapshot, so a restore cut short leaves no
//! metadata and can simply be run again.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use weir_artifacts::ArtifactStore;
use weir_core::config::Config;
use weir_core::Digest;

use crate::{Context, EngineError};

const PARALLEL_COPIES: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub weir_backup: u32,
    pub id: String,
    pub created_at: i64,
    pub weir_version: String,
    /// `snapshots/ID/metadata.sqlite` or `.pgdump`.
    pub metadata: String,
    pub metadata_digest: Digest,
    pub metadata_bytes: u64,
    pub blobs: Vec<Digest>,
    /// Blobs the store named but did not have when the backup was taken.
    pub missing: Vec<Digest>,
}

#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub location: String,
    pub metadata_bytes: u64,
    pub blobs: usize,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub missing: Vec<Digest>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub created_at: i64,
    pub blobs: usize,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub seconds: f64,
}

fn failed(reason: impl Into<String>) -> EngineError {
    EngineError::Maintenance(reason.into())
}

/// Copies `blobs` from `from` to `to`, skipping those `to` has; returns
/// (copied, bytes copied, missing from `from`).
async fn copy_blobs(
    from: &ArtifactStore,
    to: &ArtifactStore,
    blobs: &BTreeSet<Digest>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, u64, Vec<Digest>), EngineError> {
    let total = blobs.len() as u64;
    let mut copies = futures::stream::iter(blobs.iter())
        .map(|digest| async move { (*digest, to.copy_from(from, digest).await) })
        .buffer_unordered(PARALLEL_COPIES);
    let (mut done, mut copied, mut missing) = (0, 0, Vec::new());
    let written_at_start = to.traffic().1;
    while let Some((digest, result)) = copies.next().await {
        done += 1;
        progress(done, total);
        match result {
            Ok(true) => copied += 1,
            Ok(false) => {}
            Err(weir_artifacts::ArtifactError::Missing { .. }) => missing.push(digest),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((copied, to.traffic().1 - written_at_start, missing))
}

pub async fn backup(
    ctx: &Context,
    dest: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<BackupReport, EngineError> {
    let started = Instant::now();
    let to = ArtifactStore::open(dest)?;
    let id = weir_core::new_id();
    let scratch = ctx.config.home().join("tmp").join(format!("backup-{id}"));
    std::fs::create_dir_all(&scratch).map_err(EngineError::io("cannot create", &scratch))?;
    let result = async {
        let file = ctx.store.snapshot(&scratch).await?;
        let bytes = std::fs::read(&file).map_err(EngineError::io("cannot read", &file))?;
        let (blobs, mut missing) = crate::gc::referenced(ctx).await?;
        let (copied, bytes_copied, gone) =
            copy_blobs(&ctx.artifacts, &to, &blobs, &mut progress).await?;
        missing.extend(gone);
        let name = format!(
            "snapshots/{id}/{}",
            file.file_name().expect("a file").to_string_lossy()
        );
        let metadata_bytes = bytes.len() as u64;
        let metadata_digest = Digest::of_bytes(&bytes);
        to.put_named(&name, bytes.into()).await?;
        let blob_list: Vec<Digest> = blobs.into_iter().filter(|d| !missing.contains(d)).collect();
        let manifest = Manifest {
            weir_backup: 1,
            id: id.clone(),
            created_at: weir_core::now_ms(),
            weir_version: weir_core::WEIR_VERSION.to_string(),
            metadata: name,
            metadata_digest,
            metadata_bytes,
            blobs: blob_list,
            missing: missing.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("serializes");
        to.put_named(&format!("snapshots/{id}/manifest.json"), json.into())
            .await?;
        Ok::<_, EngineError>(BackupReport {
            id: id.clone(),
            location: to.location().to_string(),
            metadata_bytes,
            blobs: manifest.blobs.len(),
            blobs_copied: copied,
            bytes_copied,
            missing,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The finished backups at `src` (a directory or s3://), oldest first.
pub async fn list(src: &str) -> Result<Vec<Manifest>, EngineError> {
    snapshots(&ArtifactStore::open(src)?).await
}

/// The finished snapshots at `src`, oldest first.
async fn snapshots(src: &ArtifactStore) -> Result<Vec<Manifest>, EngineError> {
    let mut out = Vec::new();
    for name in src.list_named("snapshots").await? {
        if name.ends_with("/manifest.json") {
            let bytes = src.get_named(&name).await?;
            let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                failed(format!(
                    "{name} in {} is not a backup manifest: {e}",
                    src.location()
                ))
            })?;
            out.push(manifest);
        }
    }
    out.sort_by_key(|m| m.created_at);
    Ok(out)
}

/// Restores the snapshot `id` (a prefix will do; the latest by default)
/// from `src` into the stores `config` names.
pub async fn restore(
    config: &Config,
    src: &str,
    id: Option<&str>,
    mut progress: impl FnMut(u64, u64),
) -> Result<RestoreReport, EngineError> {
    let started = Instant::now();
    let from = ArtifactStore::open(src)?;
    let all = snapshots(&from).await?;
    let manifest = match id {
        None => all.into_iter().last().ok_or_else(|| {
            failed(format!(
                "{} holds no finished backup\n  hint: take one with `weir backup {src}`",
                from.location()
            ))
        })?,
        Some(prefix) => {
            let ids: Vec<String> = all.iter().map(|m| m.id.clone()).collect();
            let mut matching: Vec<Manifest> = all
                .into_iter()
                .filter(|m| m.id.starts_with(prefix))
                .collect();
            match matching.len() {
                1 => matching.remove(0),
                0 => {
                    return Err(failed(format!(
                        "no backup '{prefix}' in {}; it has: {}",
                        from.location(),
                        if ids.is_empty() {
                            "none".into()
                        } else {
                            ids.join(", ")
                        }
                    )))
                }
                _ => {
                    return Err(failed(format!(
                        "'{prefix}' matches several backups; type more of the id"
                    )))
                }
            }
        }
    };
    // Checked before anything is copied: the right kind of store, empty.
    let file_name = Path::new(&manifest.metadata)
        .file_name()
        .expect("a file")
        .to_owned();
    weir_store::snapshot::check_target(config.db(), Path::new(&file_name)).await?;
    let to = ArtifactStore::open(config.artifacts())?;
    let blobs: BTreeSet<Digest> = manifest.blobs.iter().copied().collect();
    let (copied, bytes_copied, missing) = copy_blobs(&from, &to, &blobs, &mut progress).await?;
    if let Some(first) = missing.first() {
        return Err(failed(format!(
            "the backup {} lacks {} of its blobs (e.g. {first}); nothing was restored to the metadata store\n  hint: restore an earlier backup (`weir restore SRC --list`), or take a new one from a store `weir fsck` finds whole",
            from.location(),
            missing.len()
        )));
    }
    let bytes = from.get_named(&manifest.metadata).await?;
    if Digest::of_bytes(&bytes) != manifest.metadata_digest {
        return Err(failed(format!(
            "{} in {} does not match its manifest's digest; the backup is damaged",
            manifest.metadata,
            from.location()
        )));
    }
    let scratch = config
        .home()
        .join("tmp")
        .join(format!("restore-{}", manifest.id));
    std::fs::create_dir_all(&scratch).map_err(EngineError::io("cannot create", &scratch))?;
    let file = scratch.join(&file_name);
    let result = async {
        std::fs::write(&file, &bytes).map_err(EngineError::io("cannot write", &file))?;
        weir_store::snapshot::restore(config.db(), &file).await?;
        // Brings a snapshot taken by an older Weir up to this one's schema.
        weir_store::Store::open(config.db()).await?;
        Ok::<_, EngineError>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    Ok(RestoreReport {
        id: manifest.id,
        created_at: manifest.created_at,
        blobs: blobs.len(),
        blobs_copied: copied,
        bytes_copied,
        seconds: started.elapsed().as_secs_f64(),
    })
}
