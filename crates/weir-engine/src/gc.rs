//! `weir gc`: removes the pipeline runs `[retention]` lets go, then deletes
//! the blobs nothing names, safely while runs write.
//!
//! A blob is collected in two steps, one `weir gc` apart. First it is moved
//! to the store's trash, if nothing names it and it is older than the grace
//! period (a step writes its outputs before it records them; the grace
//! covers that gap). The references are then read again, and whatever was
//! named meanwhile is moved back. A later `weir gc`, once the blob has been
//! in the trash for the grace period too, deletes it if it is still
//! unnamed. A cache hit that wants a trashed blob moves it back before it
//! names it ([`weir_artifacts::ArtifactStore::ensure_complete`]), so
//! between the two there is no moment at which a named blob can be deleted
//! short of a cache hit taking longer than the grace period to record.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use weir_core::Digest;

use crate::{Context, EngineError};

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Pipeline runs removed by `[retention]` (or, with --dry-run, that
    /// would be).
    pub runs_removed: Vec<weir_store::retention::Expired>,
    /// Blobs metadata names (directories' files included).
    pub referenced: usize,
    pub blobs: usize,
    /// Unnamed, but younger than the grace period: kept.
    pub young: usize,
    /// Moved to the trash now (or, with --dry-run, would be).
    pub trashed: usize,
    pub trashed_bytes: u64,
    /// Named again while this gc ran: moved back.
    pub rescued: usize,
    /// Deleted from the trash for good (or would be).
    pub deleted: usize,
    pub bytes_freed: u64,
}

/// Every blob the store names, directories' files included, and the
/// directories whose manifests could not be read.
pub(crate) async fn referenced(
    ctx: &Context,
) -> Result<(BTreeSet<Digest>, Vec<Digest>), EngineError> {
    let mut all = BTreeSet::new();
    let mut missing = Vec::new();
    let mut dirs = Vec::new();
    for r in ctx.store.artifact_references().await? {
        let Ok(digest) = r.digest.parse::<Digest>() else {
            continue;
        };
        if all.insert(digest) && r.kind.as_deref() == Some("dir") {
            dirs.push(digest);
        }
    }
    while let Some(dir) = dirs.pop() {
        match ctx.artifacts.children(&dir).await {
            Ok(children) => all.extend(children.into_iter().map(|(_, d)| d)),
            Err(weir_artifacts::ArtifactError::Missing { .. }) => missing.push(dir),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((all, missing))
}

pub async fn collect(
    ctx: &Context,
    grace: Duration,
    dry_run: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<GcReport, EngineError> {
    let now = weir_core::now_ms();
    let cutoff = now - grace.as_millis() as i64;
    let mut report = GcReport {
        dry_run,
        ..Default::default()
    };
    let retention = &ctx.config.retention;
    if retention.is_set() {
        let older_than = retention.keep_for.map(|d| now - d.as_millis() as i64);
        report.runs_removed = ctx
            .store
            .runs_past_retention(retention.keep_last, older_than)
            .await?;
        if !dry_run {
            for run in &report.runs_removed {
                ctx.store.purge_run(&run.run_id).await?;
            }
        }
    }
    // A directory whose manifest is gone names files nobody can list:
    // collecting anything then could take one of them.
    let (named, missing) = referenced(ctx).await?;
    if let Some(dir) = missing.first() {
        return Err(EngineError::Maintenance(format!(
            "the manifest of directory artifact {dir} is missing, so the files it names are unknown; nothing was collected\n  hint: run `weir fsck` and repair or restore it first"
        )));
    }
    report.referenced = named.len();
    let blobs = ctx.artifacts.list_blobs().await?;
    report.blobs = blobs.len();
    let mut candidates = Vec::new();
    for (digest, size, written) in blobs {
        if named.contains(&digest) {
            continue;
        }
        if written > cutoff {
            report.young += 1;
            continue;
        }
        candidates.push((digest, size));
    }
    report.trashed = candidates.len();
    report.trashed_bytes = candidates.iter().map(|(_, s)| s).sum();
    // What already waited its time in the trash.
    let expired: Vec<(Digest, u64)> = ctx
        .artifacts
        .list_trash()
        .await?
        .into_iter()
        .filter(|(_, _, moved)| *moved <= cutoff)
        .map(|(d, size, _)| (d, size))
        .collect();
    if dry_run {
        let (deleted, freed) = expired
            .iter()
            .filter(|(d, _)| !named.contains(d))
            .fold((0, 0), |(n, b), (_, s)| (n + 1, b + s));
        report.deleted = deleted;
        report.bytes_freed = freed;
        return Ok(report);
    }
    let total = (candidates.len() + expired.len()) as u64;
    let mut done = 0;
    for (digest, _) in &candidates {
        ctx.artifacts.trash(digest).await?;
        done += 1;
        progress(done, total);
    }
    // Named while the blobs were being moved: back they go.
    let (named_now, _) = referenced(ctx).await?;
    for (digest, _) in &candidates {
        if named_now.contains(digest) && ctx.artifacts.rescue(digest).await? {
            report.rescued += 1;
        }
    }
    report.trashed -= report.rescued;
    for (digest, size) in &expired {
        if named_now.contains(digest) {
            // Named while in the trash (a restore, or a record made by hand):
            // it was never really garbage.
            if ctx.artifacts.rescue(digest).await? {
                report.rescued += 1;
            }
        } else {
            ctx.artifacts.purge(digest).await?;
            report.deleted += 1;
            report.bytes_freed += size;
        }
        done += 1;
        progress(done, total);
    }
    Ok(report)
}
