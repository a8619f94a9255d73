//! Whether a run's runner is still alive, and cleaning up after one that is
//! not. A runner is identified as `host/pid/start-time`: on the same host
//! any Weir command can tell at once whether that exact process still
//! exists; from another host, a heartbeat older than [`STALE_AFTER`] says it
//! is gone. The runner refreshes its heartbeat every [`HEARTBEAT_EVERY`].

use std::time::Duration;

use crate::{Context, EngineError};

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
pub const STALE_AFTER: Duration = Duration::from_secs(30);

pub use weir_core::process::hostname;

/// This process, as a run records its runner.
pub fn runner_identity() -> String {
    weir_core::process::identity()
}

/// Whether the runner `identity` (with its last heartbeat) is alive.
pub fn is_alive(identity: Option<&str>, heartbeat_at: Option<i64>) -> bool {
    let fresh =
        heartbeat_at.is_some_and(|t| weir_core::now_ms() - t < STALE_AFTER.as_millis() as i64);
    identity
        .and_then(weir_core::process::alive_here)
        .unwrap_or(fresh)
}

/// Kills a process group; a group that no longer exists is not an error.
pub(crate) fn kill_group(pgid: i64) {
    if let Ok(pgid) = i32::try_from(pgid) {
        if pgid > 1 {
            // SAFETY: kill(2) takes plain integers.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Records every running run whose runner is gone as failed, stops the
/// processes its steps left on this host and removes their scratch
/// directories. Returns the ids of the runs it failed.
pub async fn reap_orphaned_runs(ctx: &Context) -> Result<Vec<String>, EngineError> {
    let mut reaped = Vec::new();
    let here = hostname();
    for run in ctx.store.running_runs().await? {
        if is_alive(run.runner.as_deref(), run.heartbeat_at) {
            continue;
        }
        let reason = "the run's runner stopped without finishing it (no heartbeat); `weir resume` continues it";
        let Some(stopped) = ctx.store.fail_orphaned_run(&run.id, reason).await? else {
            continue;
        };
        for step in stopped {
            // A step on a cluster keeps running there without its runner.
            if let (Some("ray"), Some(address), Some(job)) = (
                step.executor.as_deref(),
                step.executor_address.as_deref(),
                step.job.as_deref(),
            ) {
                crate::ray::stop_orphaned_job(address, job, &step.id).await;
                continue;
            }
            if step.host.as_deref() == Some(here.as_str()) {
                if let Some(pgid) = step.pgid {
                    kill_group(pgid);
                }
            }
            let _ = std::fs::remove_dir_all(ctx.work_dir().join(&step.id));
        }
        tracing::info!(run_id = %run.id, "failed a run whose runner is gone");
        reaped.push(run.id);
    }
    Ok(reaped)
}
