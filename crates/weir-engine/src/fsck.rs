//! `weir fsck`: is what the metadata says true of the stores? Every blob
//! metadata names is read whole and hashed (a directory's manifest and
//! every file it lists), every run that says it is running has a live
//! runner, and every endpoint's versions exist. `--repair` quarantines
//! corrupt blobs (a run that needs one makes it again) and fails orphaned
//! runs so `weir resume` can continue them; a missing blob is reported with
//! everything that names it, since only a backup or a re-run brings it back.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use serde::Serialize;
use weir_artifacts::ArtifactError;
use weir_core::Digest;

use crate::{Context, EngineError};

/// Blobs read at once: enough to hide an object store's latency.
const PARALLEL_READS: usize = 8;

#[derive(Debug, Serialize)]
pub struct Problem {
    /// missing, corrupt, orphaned-run, rollout.
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
    /// What names the blob (blob problems).
    pub referenced_by: Vec<String>,
    /// What --repair did about it.
    pub repaired: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub references: usize,
    pub blobs_verified: u64,
    pub bytes_verified: u64,
    pub runs_checked: usize,
    pub endpoints_checked: usize,
    pub problems: Vec<Problem>,
}

/// What names a blob, and whether it is a directory.
struct Named {
    dir: bool,
    by: Vec<String>,
}

pub async fn check(
    ctx: &Context,
    repair: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, EngineError> {
    let mut report = Report::default();
    let references = ctx.store.artifact_references().await?;
    report.references = references.len();
    let mut named: BTreeMap<String, Named> = BTreeMap::new();
    for r in references {
        let entry = named.entry(r.digest).or_insert(Named {
            dir: false,
            by: Vec::new(),
        });
        entry.dir |= r.kind.as_deref() == Some("dir");
        entry.by.push(r.by);
    }

    // Level by level: a directory's files are checked after its manifest.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut level: Vec<(String, Named)> = named.into_iter().collect();
    let mut done = 0;
    while !level.is_empty() {
        let mut next = Vec::new();
        level.retain(|(d, _)| seen.insert(d.clone()));
        let total = done + level.len() as u64;
        let results: Vec<_> = futures::stream::iter(level)
            .map(|(hex, named)| async move {
                let result = match hex.parse::<Digest>() {
                    Ok(digest) => verify(ctx, &digest, named.dir).await,
                    Err(_) => Ok(Err((
                        "missing",
                        "the digest recorded is not a digest".into(),
                    ))),
                };
                (hex, named, result)
            })
            .buffer_unordered(PARALLEL_READS)
            .collect()
            .await;
        for (hex, named, result) in results {
            done += 1;
            progress(done, total);
            match result {
                Ok(Ok((size, children))) => {
                    report.blobs_verified += 1;
                    report.bytes_verified += size;
                    for (path, child) in children {
                        let by = named
                            .by
                            .iter()
                            .map(|b| format!("file {path} of {b}"))
                            .collect();
                        next.push((child.hex(), Named { dir: false, by }));
                    }
                }
                Err(e) => return Err(e.into()),
                Ok(Err((kind, mut detail))) => {
                    let mut repaired = None;
                    let digest = hex.parse::<Digest>().ok();
                    if let (Some(digest), "missing") = (&digest, kind) {
                        if ctx.artifacts.in_trash(digest).await? {
                            detail = "weir gc moved it to the trash while nothing named it".into();
                            if repair && ctx.artifacts.rescue(digest).await? {
                                repaired = Some("moved back from the trash".into());
                            }
                        }
                    }
                    if repair && kind == "corrupt" {
                        let digest: Digest = hex.parse().expect("parsed to be read");
                        ctx.artifacts.quarantine(&digest).await?;
                        repaired =
                            Some("moved to quarantine/; a run that needs it makes it again".into());
                    }
                    report.problems.push(Problem {
                        kind,
                        subject: format!("blob {hex}"),
                        detail,
                        referenced_by: named.by,
                        repaired,
                    });
                }
            }
        }
        level = next;
    }

    let running = ctx.store.running_runs().await?;
    report.runs_checked = running.len();
    let orphaned: Vec<_> = running
        .iter()
        .filter(|r| !crate::liveness::is_alive(r.runner.as_deref(), r.heartbeat_at))
        .collect();
    let reaped = match repair && !orphaned.is_empty() {
        true => crate::liveness::reap_orphaned_runs(ctx).await?,
        false => Vec::new(),
    };
    for run in orphaned {
        report.problems.push(Problem {
            kind: "orphaned-run",
            subject: format!("run {}", run.id),
            detail: format!(
                "it says it is running, but its runner ({}) is gone",
                run.runner.as_deref().unwrap_or("unknown")
            ),
            referenced_by: Vec::new(),
            repaired: reaped.contains(&run.id).then(|| {
                format!(
                    "recorded as failed; `weir resume {}` continues it",
                    &run.id[..12]
                )
            }),
        });
    }

    let deployments = ctx.store.deployments().await?;
    report.endpoints_checked = deployments.len();
    for d in deployments {
        let mut wrong = Vec::new();
        for (role, version) in [("stable", d.stable), ("candidate", d.candidate)] {
            if let Some(v) = version {
                match ctx.store.model_version(&d.model, Some(v)).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {
                        wrong.push(format!("its {role} version {}:{v} does not exist", d.model))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !(0..=100).contains(&d.weight) {
            wrong.push(format!("its candidate weight is {}%", d.weight));
        }
        if d.candidate.is_none() && d.weight != 0 && d.stable.is_some() {
            wrong.push(format!(
                "it has no candidate but sends it {}% of requests",
                d.weight
            ));
        }
        for detail in wrong {
            report.problems.push(Problem {
                kind: "rollout",
                subject: format!("endpoint {}", d.endpoint),
                detail,
                referenced_by: Vec::new(),
                repaired: None,
            });
        }
    }
    Ok(report)
}

/// What is wrong with a blob: missing or corrupt, and how.
type Fault = (&'static str, String);

/// The blob's size and a directory's files, or what is wrong with it; an
/// error only when the store itself cannot be read.
async fn verify(
    ctx: &Context,
    digest: &Digest,
    dir: bool,
) -> Result<Result<(u64, Vec<(String, Digest)>), Fault>, ArtifactError> {
    let fault = |e: ArtifactError| match e {
        ArtifactError::Missing { location, .. } => Ok(("missing", format!("not in {location}"))),
        ArtifactError::Corrupt { actual, .. } => {
            Ok(("corrupt", format!("its bytes hash to {actual}")))
        }
        ArtifactError::BadManifest { reason, .. } => {
            Ok(("corrupt", format!("its manifest does not parse: {reason}")))
        }
        other => Err(other),
    };
    let size = match ctx.artifacts.verify(digest).await {
        Ok(size) => size,
        Err(e) => return fault(e).map(Err),
    };
    let children = match dir {
        true => match ctx.artifacts.children(digest).await {
            Ok(children) => children,
            Err(e) => return fault(e).map(Err),
        },
        false => Vec::new(),
    };
    Ok(Ok((size, children)))
}
