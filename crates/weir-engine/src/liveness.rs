//! Whether a run's runner is still alive, and cleaning up after one that is
//! not. A runner is identified as `host/pid/start-time`: on the same host
//! any Weir command can tell at once whether that exact process still
//! exists; from another host, a heartbeat older than [`STALE_AFTER`] says it
//! is gone. The runner refreshes its heartbeat every [`HEARTBEAT_EVERY`].

use std::time::Duration;

use crate::{Context, EngineError};

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
pub const STALE_AFTER: Duration = Duration::from_secs(30);

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// When a process started (clock ticks since boot), which tells a live
/// process from a later one that reused its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ";
    // the start time is field 22, the 20th after that point.
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process, as a run records its runner.
pub fn runner_identity() -> String {
    let pid = std::process::id();
    format!("{}/{pid}/{}", hostname(), start_time(pid).unwrap_or(0))
}

/// Whether the runner `identity` (with its last heartbeat) is alive.
pub fn is_alive(identity: Option<&str>, heartbeat_at: Option<i64>) -> bool {
    let fresh =
        heartbeat_at.is_some_and(|t| weir_core::now_ms() - t < STALE_AFTER.as_millis() as i64);
    let Some((host, pid, start)) = identity.and_then(|i| {
        let mut parts = i.rsplitn(3, '/');
        let start: u64 = parts.next()?.parse().ok()?;
        let pid: u32 = parts.next()?.parse().ok()?;
        Some((parts.next()?.to_string(), pid, start))
    }) else {
        return fresh;
    };
    if host == hostname() {
        start_time(pid) == Some(start)
    } else {
        fresh
    }
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
                crate::ray::stop_orphaned_job(address, job).await;
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
