//! Resource accounting and budgets. A step attempt is measured by the step
//! runtime itself (`weir exec` is one process per attempt, wherever it
//! runs), priced at the configured prices, and recorded before its outcome,
//! so a failed attempt is paid for too. Budgets are checked before work
//! starts: the runner before each step, a study before each trial.

use std::time::Instant;

pub(crate) use weir_core::cost::Reserved;
use weir_core::cost::{Cost, Dollars};
use weir_core::pipeline::Step;
use weir_core::usage::Usage;
use weir_store::UsageRecord;

use crate::Context;

/// When a piece of work started, by the wall clock and by a monotonic one.
#[derive(Clone, Copy)]
pub(crate) struct Started {
    pub at_ms: i64,
    pub instant: Instant,
}

impl Started {
    pub fn now() -> Started {
        Started {
            at_ms: weir_core::now_ms(),
            instant: Instant::now(),
        }
    }
}

/// What `step` reserved: its resource request (a step asks for one CPU
/// unless it says otherwise).
pub(crate) fn reserved(ctx: &Context, step: &Step) -> Reserved {
    let request = ctx
        .config
        .capacity()
        .map(|c| step.request(&c))
        .unwrap_or(step.resources);
    Reserved {
        cpus: request.cpu,
        memory_bytes: request.memory_bytes,
        spot: step.preemptible,
        remote_store: ctx.artifacts.is_remote(),
    }
}

/// This process's usage since `started`: one step attempt.
pub(crate) fn attempt_usage(ctx: &Context, step: &Step, started: Started) -> Usage {
    let (cpu_ms, max_rss_bytes) = weir_core::usage::process();
    let (bytes_read, bytes_written) = ctx.artifacts.traffic();
    let gpus = ctx
        .config
        .capacity()
        .map(|c| step.request(&c).gpu)
        .unwrap_or(step.resources.gpu);
    Usage {
        wall_ms: started.instant.elapsed().as_millis() as u64,
        cpu_ms,
        max_rss_bytes,
        gpus,
        bytes_read,
        bytes_written,
    }
}

pub(crate) struct Subject<'a> {
    pub run_id: &'a str,
    pub step_run_id: &'a str,
    pub step: &'a Step,
    pub trial: Option<i64>,
    pub billed: bool,
    /// A trial's tracking run, where its usage is shown.
    pub tracking_run: Option<String>,
}

/// Prices `usage` and records it; accounting never fails the work it
/// measures, so an error is logged and the cost still returned.
pub(crate) async fn record(
    ctx: &Context,
    subject: Subject<'_>,
    status: &str,
    started: Started,
    usage: Usage,
    reserved: Reserved,
) -> Cost {
    let step = subject.step.name.clone();
    let record = priced(ctx, subject, status, started, usage, reserved);
    if let Err(e) = ctx.store.record_usage(&record).await {
        tracing::warn!(step = %step, error = %e, "cannot record resource usage");
    }
    record.cost
}

/// The usage record of `usage`, priced at the configured prices.
pub(crate) fn priced(
    ctx: &Context,
    subject: Subject<'_>,
    status: &str,
    started: Started,
    usage: Usage,
    reserved: Reserved,
) -> UsageRecord {
    let cost = ctx.config.prices.price(&usage, reserved);
    UsageRecord {
        run_id: subject.run_id.to_string(),
        step_run_id: subject.step_run_id.to_string(),
        step: subject.step.name.clone(),
        attempt: 1,
        trial: subject.trial,
        host: weir_core::process::hostname(),
        status: status.to_string(),
        started_at: started.at_ms,
        ended_at: weir_core::now_ms(),
        usage,
        cpus: reserved.cpus,
        memory_bytes: reserved.memory_bytes as i64,
        spot: reserved.spot,
        billed: subject.billed,
        cost,
        total: cost.total(),
        tracking_run: subject.tracking_run,
    }
}

/// Bytes as people read them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Why the next step of a run may not start: the run's budget would be
/// exceeded, given what the run has spent and what the step cost last time.
pub(crate) async fn step_over_budget(
    ctx: &Context,
    budget: f64,
    pipeline: &str,
    run_id: &str,
    step: &str,
) -> Result<Option<String>, crate::EngineError> {
    let spent = ctx.store.run_cost(run_id).await?;
    let expected = ctx
        .store
        .last_step_cost(pipeline, step, run_id)
        .await?
        .unwrap_or(0.0);
    if spent + expected <= budget && spent < budget {
        return Ok(None);
    }
    Ok(Some(if expected > 0.0 {
        format!(
            "not started: the run's budget is {} and it has spent {}; step '{step}' cost {} \
             last time, which would take the run to {}",
            Dollars(budget),
            Dollars(spent),
            Dollars(expected),
            Dollars(spent + expected)
        )
    } else {
        format!(
            "not started: the run's budget is {} and it has spent {} already",
            Dollars(budget),
            Dollars(spent)
        )
    }))
}

/// First day of the current month (UTC), in epoch milliseconds.
pub fn month_start_ms(now_ms: i64) -> i64 {
    let days = now_ms.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    days_from_civil(y, m, 1) * 86_400_000
}

// Howard Hinnant's calendar algorithms (public domain descriptions).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The monthly budget of `pipeline` (weir.toml `[budgets] monthly`): an
/// error once this month's spending has reached it, a warning from 80 %.
pub async fn check_monthly(
    ctx: &Context,
    pipeline: &str,
) -> Result<Option<String>, crate::EngineError> {
    let Some(&budget) = ctx.config.monthly_budgets.get(pipeline) else {
        return Ok(None);
    };
    let since = month_start_ms(weir_core::now_ms());
    let spent: f64 = ctx
        .store
        .costs_since(since, Some(pipeline))
        .await?
        .iter()
        .map(|r| r.cost)
        .sum();
    if spent >= budget {
        return Err(crate::EngineError::Budget(format!(
            "pipeline '{pipeline}' has spent {} this month, its whole monthly budget of {} \
             ([budgets] monthly in weir.toml); raise it or wait for next month",
            Dollars(spent),
            Dollars(budget)
        )));
    }
    Ok((spent >= 0.8 * budget).then(|| {
        format!(
            "warning: pipeline '{pipeline}' has spent {} this month, {:.0}% of its monthly budget of {}",
            Dollars(spent),
            100.0 * spent / budget,
            Dollars(budget)
        )
    }))
}

/// Prices applied to a trial measured inside its step's process.
pub(crate) fn trial_reserved(base: Reserved, threads: usize, parallel: usize) -> Reserved {
    Reserved {
        cpus: threads as f64,
        memory_bytes: base.memory_bytes / parallel.max(1) as u64,
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_on_the_first_utc() {
        // 2026-12-06T19:36:04Z
        assert_eq!(month_start_ms(1_796_585_764_000), 1_796_083_200_000);
        // 2024-03-01T00:00:00Z is its own month's start; leap February before it.
        assert_eq!(month_start_ms(1_709_251_200_000), 1_709_251_200_000);
        assert_eq!(month_start_ms(1_709_251_199_999), 1_706_745_600_000);
    }

    #[test]
    fn bytes_read_as_units() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
