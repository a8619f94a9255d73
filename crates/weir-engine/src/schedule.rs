//! Schedules: pipelines run on a cron schedule by `weir scheduler`, a
//! long-running process of which one is active per store (it holds a
//! lease; others stand by and take over when it goes). Each firing starts
//! `weir run` as a child process against the same stores and is recorded
//! with its outcome. Firings missed while no scheduler ran are caught up by
//! the schedule's policy: `skip` them, or run `once` for all of them.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use weir_store::{Firing, Schedule};

use crate::{Context, EngineError};

/// The lease a scheduler holds while it is the active one.
pub const LEASE: &str = "scheduler";
/// By default a firing no later than this after its time is on time; older
/// ones were missed (no scheduler was running) and are caught up by policy.
pub const ON_TIME: Duration = Duration::from_secs(60);
/// Missed firings looked at per schedule and tick at most.
const MAX_DUE: usize = 10_000;

/// Parses a cron expression: five fields (minute to weekday, UTC), or six
/// with seconds first.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!(
                "cron expression '{expr}' is invalid: {e}\n  hint: five fields, minute hour day-of-month month day-of-week (UTC), e.g. \"0 3 * * *\"; a sixth, first, gives seconds"
            )
        })
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The schedule's next time after `after_ms` (epoch ms).
pub fn next_after(cron: &croner::Cron, after_ms: i64) -> Option<i64> {
    cron.find_next_occurrence(&at(after_ms), false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// What a scheduler does about one schedule now.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// The firing to run now (its scheduled time), if any.
    pub run: Option<i64>,
    /// Missed firings skipped.
    pub skipped: Vec<i64>,
    /// Missed firings the run catches up on.
    pub caught_up: usize,
    /// The last firing time dealt with.
    pub through: i64,
}

/// Plans `s` at `now_ms`: nothing when no firing is due. A firing more than
/// `grace` late was missed.
pub fn plan(s: &Schedule, cron: &croner::Cron, now_ms: i64, grace: Duration) -> Option<Plan> {
    let mut due = Vec::new();
    let mut t = s.last_fire_at;
    while let Some(next) = next_after(cron, t) {
        if next > now_ms || due.len() >= MAX_DUE {
            break;
        }
        due.push(next);
        t = next;
    }
    let latest = *due.last()?;
    let on_time = now_ms - latest <= grace.as_millis() as i64;
    let missed: Vec<i64> = if on_time {
        due[..due.len() - 1].to_vec()
    } else {
        due.clone()
    };
    let (run, skipped, caught_up) = match (on_time, s.catch_up.as_str()) {
        (true, "once") => (Some(latest), Vec::new(), missed.len()),
        (true, _) => (Some(latest), missed, 0),
        (false, "once") => (Some(latest), Vec::new(), missed.len()),
        (false, _) => (None, missed, 0),
    };
    Some(Plan {
        run,
        skipped,
        caught_up,
        through: latest,
    })
}

pub struct SchedulerOptions {
    pub tick: Duration,
    /// How late a firing may start and still be on time.
    pub grace: Duration,
    /// The `weir` binary firings run.
    pub exe: PathBuf,
    /// Who this scheduler is, for the lease.
    pub me: String,
}

/// Runs schedules until SIGTERM or Ctrl-C.
pub async fn run_scheduler(ctx: &Context, options: SchedulerOptions) -> Result<(), EngineError> {
    let stop = weir_core::signals::terminated();
    tokio::pin!(stop);
    let mut leading: Option<bool> = None;
    let in_flight = InFlight::default();
    let mut ticker = tokio::time::interval(options.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut stop => break,
        }
        let lease_ms = (options.tick.as_millis() as i64 * 5).max(5_000);
        let held = ctx
            .store
            .acquire_lease(LEASE, &options.me, lease_ms)
            .await
            .unwrap_or_else(|e| {
                eprintln!("warning: cannot renew the scheduler's lease: {e}");
                false
            });
        if leading != Some(held) {
            leading = Some(held);
            if held {
                eprintln!("scheduler {}: active", options.me);
            } else {
                let holder = ctx.store.lease(LEASE).await.ok().flatten().map(|l| l.0);
                eprintln!(
                    "scheduler {}: standing by ({} is active)",
                    options.me,
                    holder.as_deref().unwrap_or("another scheduler")
                );
            }
        }
        if !held {
            continue;
        }
        let schedules = match ctx.store.schedules().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: cannot read the schedules: {e}");
                continue;
            }
        };
        for s in schedules {
            if let Err(e) = fire_due(ctx, &options, &s, &in_flight).await {
                eprintln!("warning: schedule '{}': {e}", s.name);
            }
        }
    }
    // Runs still going keep going (they are runs like any other); their
    // firings say the scheduler no longer follows them.
    let detached: Vec<String> = in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for id in detached {
        let detail = "the scheduler stopped while the run was going; its outcome is the run's own (weir runs list)";
        if let Err(e) = ctx.store.finish_firing(&id, "detached", None, detail).await {
            eprintln!("warning: cannot record firing {id}: {e}");
        }
    }
    let _ = ctx.store.release_lease(LEASE, &options.me).await;
    Ok(())
}

/// The firings whose runs this scheduler is following.
type InFlight = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

async fn fire_due(
    ctx: &Context,
    options: &SchedulerOptions,
    s: &Schedule,
    in_flight: &InFlight,
) -> Result<(), EngineError> {
    let cron = parse_cron(&s.cron).map_err(EngineError::StepFailed)?;
    let now = weir_core::now_ms();
    let Some(plan) = plan(s, &cron, now, options.grace) else {
        return Ok(());
    };
    let mut firings: Vec<Firing> = plan
        .skipped
        .iter()
        .map(|t| Firing {
            id: weir_core::new_id(),
            schedule: s.name.clone(),
            scheduled_for: *t,
            fired_at: now,
            outcome: "skipped".into(),
            run_id: None,
            detail: "missed while no scheduler ran (catch_up: skip)".into(),
        })
        .collect();
    let started = plan.run.map(|t| Firing {
        id: weir_core::new_id(),
        schedule: s.name.clone(),
        scheduled_for: t,
        fired_at: now,
        outcome: "started".into(),
        run_id: None,
        detail: if plan.caught_up > 0 {
            format!(
                "catches up {} missed firing(s) (catch_up: once)",
                plan.caught_up
            )
        } else {
            String::new()
        },
    });
    firings.extend(started.clone());
    // Recorded before the run starts, and only by the scheduler that moved
    // the schedule on: a firing runs once even if two schedulers raced.
    if !ctx
        .store
        .advance_schedule(&s.name, s.last_fire_at, plan.through, &firings)
        .await?
    {
        return Ok(());
    }
    if let Some(firing) = started {
        launch(ctx, options, s, firing, in_flight.clone());
    }
    Ok(())
}

/// Starts `weir run` for a firing and records how it ends.
fn launch(
    ctx: &Context,
    options: &SchedulerOptions,
    s: &Schedule,
    firing: Firing,
    in_flight: InFlight,
) {
    let params: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&s.params_json).unwrap_or_default();
    let mut command = tokio::process::Command::new(&options.exe);
    command
        .arg("run")
        .arg(&s.spec_file)
        .arg("--json")
        .envs(ctx.config.child_env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(false);
    for (k, v) in &params {
        command.arg("-p").arg(format!("{k}={v}"));
    }
    if let Some(window) = &s.off_peak {
        command.arg("--off-peak").arg(window);
    }
    let store = ctx.store.clone();
    let name = s.name.clone();
    in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(firing.id.clone());
    tokio::spawn(async move {
        let (outcome, run_id, detail) = match command.output().await {
            Err(e) => (
                "failed".to_string(),
                None,
                format!("cannot start weir run: {e}"),
            ),
            Ok(out) => {
                let doc: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                let run_id = doc["run_id"].as_str().map(str::to_string);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                match (out.status.success(), doc["status"].as_str()) {
                    (true, _) => ("succeeded".to_string(), run_id, String::new()),
                    (false, Some(_)) => (
                        "failed".to_string(),
                        run_id,
                        doc["error"].as_str().unwrap_or(last).to_string(),
                    ),
                    (false, None) => ("failed".to_string(), run_id, last.to_string()),
                }
            }
        };
        eprintln!(
            "schedule '{name}': run {} {outcome}",
            run_id.as_deref().unwrap_or("(none)")
        );
        // A scheduler stopping meanwhile has recorded it as detached.
        if !in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&firing.id)
        {
            return;
        }
        if let Err(e) = store
            .finish_firing(&firing.id, &outcome, run_id.as_deref(), &detail)
            .await
        {
            eprintln!("warning: schedule '{name}': cannot record the firing: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, catch_up: &str, last: i64) -> (Schedule, croner::Cron) {
        (
            Schedule {
                name: "nightly".into(),
                spec_file: "p.yaml".into(),
                cron: cron.into(),
                off_peak: None,
                params_json: "{}".into(),
                catch_up: catch_up.into(),
                created_at: last,
                last_fire_at: last,
            },
            parse_cron(cron).unwrap(),
        )
    }

    const DAY: i64 = 86_400_000;
    // 2026-12-06T00:00:00Z
    const MIDNIGHT: i64 = 1_796_515_200_000;

    #[test]
    fn on_time_firings_run_and_missed_ones_follow_the_policy() {
        let three = MIDNIGHT + 3 * 3_600_000;
        let (s, cron) = schedule("0 3 * * *", "skip", MIDNIGHT);
        assert_eq!(plan(&s, &cron, three - 1, ON_TIME), None);
        let p = plan(&s, &cron, three + 5_000, ON_TIME).unwrap();
        assert_eq!((p.run, p.skipped.len(), p.through), (Some(three), 0, three));
        // Down for three days: skip runs nothing and records three skips...
        let late = three + 2 * DAY + 3_600_000;
        let p = plan(&s, &cron, late, ON_TIME).unwrap();
        assert_eq!((p.run, p.skipped.len()), (None, 3));
        assert_eq!(p.through, three + 2 * DAY);
        // ...once runs once for all of them.
        let (s, cron) = schedule("0 3 * * *", "once", MIDNIGHT);
        let p = plan(&s, &cron, late, ON_TIME).unwrap();
        assert_eq!(
            (p.run, p.caught_up, p.skipped.len()),
            (Some(three + 2 * DAY), 3, 0)
        );
    }

    #[test]
    fn seconds_are_optional_and_bad_expressions_are_named() {
        let (s, cron) = schedule("*/2 * * * * *", "skip", MIDNIGHT);
        assert_eq!(
            plan(&s, &cron, MIDNIGHT + 2_500, ON_TIME).unwrap().run,
            Some(MIDNIGHT + 2_000)
        );
        let e = parse_cron("61 * * * *").unwrap_err();
        assert!(e.contains("cron expression '61 * * * *' is invalid"), "{e}");
        assert!(parse_cron("every day").is_err());
    }
}
