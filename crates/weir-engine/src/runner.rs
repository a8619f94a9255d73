//! The runner: validates, records a run with all of its step runs, then
//! walks the DAG, launching every step whose inputs are ready (up to
//! `max_parallel` at once) as a `weir exec` child process. A failed step
//! stops new launches; steps that can no longer run are marked skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::{JoinHandle, JoinSet};
use weir_core::pipeline::{Action, ExecutorKind, Pipeline, Resources, SpecError, SpecIssue};
use weir_store::{
    MetricPoint, ModelVersion, NewStepRun, RunRecord, RunStatus, StepStart, StepStatus,
};

use crate::exec::{StagedInput, Task};
use crate::progress::Progress;
use crate::ray::{self, RayAttempt, RayCluster};
use crate::{cache, liveness, ops, Context, EngineError};

/// Attempts of a step whose cluster node was lost, when its own retry
/// policy does not say: a lost node is the cluster's failure, not the step's.
const LOST_NODE_ATTEMPTS: i64 = 3;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub max_parallel: usize,
    /// The `weir` binary that runs `weir exec`; the current executable by default.
    pub exec_binary: Option<PathBuf>,
    /// Run every step, ignoring earlier results with the same cache key.
    pub no_cache: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepOutcome {
    pub step: String,
    pub step_run_id: String,
    pub status: StepStatus,
    pub seconds: f64,
    pub error: Option<String>,
    /// The step run whose outputs were reused, on a cache hit.
    pub cached_from: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    pub pipeline: String,
    pub status: RunStatus,
    pub seconds: f64,
    pub steps: Vec<StepOutcome>,
    /// The latest value of each metric, by step.
    pub metrics: Vec<(String, MetricPoint)>,
    pub models: Vec<ModelVersion>,
    pub error: Option<String>,
}

fn kind_of(action: &Action) -> String {
    match action {
        Action::Builtin(op) => op.name().to_string(),
        Action::Command(_) => "command".to_string(),
    }
}

/// The current commit, with `-dirty` when the work tree has changes; `None`
/// outside a git repository.
fn git_revision(dir: &std::path::Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

#[tracing::instrument(skip_all, fields(pipeline = %pipeline.name, trace_id = tracing::field::Empty))]
pub async fn run_pipeline(
    ctx: &Context,
    pipeline: &Pipeline,
    options: &RunOptions,
    progress: &dyn Progress,
) -> Result<RunOutcome, EngineError> {
    ops::preflight(pipeline)?;
    check_off_peak(ctx, pipeline)?;
    crate::openlineage::check(&ctx.config)?;
    if let Some(warning) = crate::accounting::check_monthly(ctx, &pipeline.name).await? {
        progress.warning(&warning);
    }
    check_capacity(
        ctx,
        pipeline,
        ctx.config
            .capacity()
            .map_err(|e| EngineError::StepFailed(e.to_string()))?,
    )?;
    let cluster = ray::preflight(ctx, pipeline).await?;
    let started = Instant::now();
    let base_dir = pipeline
        .base_dir()
        .canonicalize()
        .map_err(EngineError::io("cannot resolve", pipeline.base_dir()))?;
    let mut pipeline = pipeline.clone();
    pipeline.file = base_dir.join(pipeline.file.file_name().unwrap_or_default());

    let run = RunRecord {
        id: weir_core::new_id(),
        pipeline: pipeline.name.clone(),
        spec_file: pipeline.file.display().to_string(),
        spec_json: serde_json::to_string(&pipeline).expect("pipeline serializes"),
        params_json: serde_json::to_string(&pipeline.params).expect("params serialize"),
        status: RunStatus::Running,
        git_rev: git_revision(&base_dir),
        started_at: weir_core::now_ms(),
        ended_at: None,
        error: None,
        runner: Some(liveness::runner_identity()),
        heartbeat_at: Some(weir_core::now_ms()),
    };
    let step_runs: Vec<NewStepRun> = pipeline
        .steps
        .iter()
        .map(|s| NewStepRun {
            id: weir_core::new_id(),
            run_id: run.id.clone(),
            step: s.name.clone(),
            kind: kind_of(&s.action),
            spec_json: serde_json::to_string(s).expect("step serializes"),
            inputs_json: "{}".into(),
        })
        .collect();
    ctx.store.create_run(&run, &step_runs).await?;
    drive(ctx, &run.id, &pipeline, options, cluster, progress, started).await
}

/// A step that runs off-peak needs a window to wait for.
fn check_off_peak(ctx: &Context, pipeline: &Pipeline) -> Result<(), EngineError> {
    let window = ctx
        .config
        .off_peak()
        .map_err(|e| EngineError::StepFailed(e.to_string()))?;
    match pipeline.steps.iter().find(|s| s.off_peak) {
        Some(step) if window.is_none() => Err(EngineError::StepFailed(format!(
            "step '{}' runs off-peak (run_in: off_peak), but no off-peak window is set\n  hint: set off_peak = \"22:00-06:00\" in weir.toml, WEIR_OFF_PEAK, or --off-peak",
            step.name
        ))),
        _ => Ok(()),
    }
}

/// Continues a failed run (one that failed, was cancelled, or whose runner
/// died): every step that succeeded keeps its results, the others run again.
#[tracing::instrument(skip_all, fields(run, trace_id = tracing::field::Empty))]
pub async fn resume_run(
    ctx: &Context,
    run: &str,
    options: &RunOptions,
    progress: &dyn Progress,
) -> Result<RunOutcome, EngineError> {
    let started = Instant::now();
    liveness::reap_orphaned_runs(ctx).await?;
    let run = ctx.store.run(run).await?;
    match run.status {
        RunStatus::Succeeded => {
            return Err(EngineError::StepFailed(format!(
                "run {} already succeeded; there is nothing to resume",
                run.id
            )))
        }
        RunStatus::Running => {
            return Err(EngineError::StepFailed(format!(
                "run {} is still running ({})\n  hint: stop it first with `weir cancel {}`",
                run.id,
                run.runner.as_deref().unwrap_or("unknown runner"),
                &run.id[..12]
            )))
        }
        RunStatus::Failed => {}
    }
    let pipeline: Pipeline = serde_json::from_str(&run.spec_json)
        .map_err(|e| EngineError::corrupt("runs.spec_json", e))?;
    ops::preflight(&pipeline)?;
    check_off_peak(ctx, &pipeline)?;
    if let Some(warning) = crate::accounting::check_monthly(ctx, &pipeline.name).await? {
        progress.warning(&warning);
    }
    check_capacity(
        ctx,
        &pipeline,
        ctx.config
            .capacity()
            .map_err(|e| EngineError::StepFailed(e.to_string()))?,
    )?;
    let cluster = ray::preflight(ctx, &pipeline).await?;
    ctx.store
        .reopen_run(&run.id, &liveness::runner_identity())
        .await?;
    drive(ctx, &run.id, &pipeline, options, cluster, progress, started).await
}

/// Stops a running run from another process: its runner (on this host) is
/// asked to stop with SIGTERM, which it handles like Ctrl-C; a runner that
/// is already gone is cleaned up after. Returns the run as it ends.
pub async fn cancel_run(ctx: &Context, run: &str) -> Result<RunRecord, EngineError> {
    liveness::reap_orphaned_runs(ctx).await?;
    let record = ctx.store.run(run).await?;
    if record.status != RunStatus::Running {
        return Err(EngineError::StepFailed(format!(
            "run {} is not running (it {})",
            record.id, record.status
        )));
    }
    let identity = record.runner.clone().unwrap_or_default();
    let mut parts = identity.splitn(3, '/');
    let (host, pid) = (
        parts.next().unwrap_or(""),
        parts.next().and_then(|p| p.parse::<i32>().ok()),
    );
    let Some(pid) = pid.filter(|_| host == liveness::hostname()) else {
        return Err(EngineError::StepFailed(format!(
            "run {} is run by {identity}, not on this host\n  hint: run `weir cancel` on that host",
            record.id
        )));
    };
    // SAFETY: kill(2) takes plain integers.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = ctx.store.run(&record.id).await?;
        if now.status != RunStatus::Running {
            return Ok(now);
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            liveness::reap_orphaned_runs(ctx).await?;
            return Ok(ctx.store.run(&record.id).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Walks the DAG of a recorded run until every step has finished, starting
/// from the statuses in the store (all pending for a new run).
async fn drive(
    ctx: &Context,
    run_id: &str,
    pipeline: &Pipeline,
    options: &RunOptions,
    cluster: Option<Arc<RayCluster>>,
    progress: &dyn Progress,
    started: Instant,
) -> Result<RunOutcome, EngineError> {
    let records = ctx.store.step_runs(run_id).await?;
    let ids: HashMap<String, String> = records
        .iter()
        .map(|r| (r.step.clone(), r.id.clone()))
        .collect();
    let mut status: HashMap<String, StepStatus> =
        records.iter().map(|r| (r.step.clone(), r.status)).collect();
    let mut outputs: HashMap<String, BTreeMap<String, StagedInput>> = HashMap::new();
    for r in records.iter().filter(|r| r.status == StepStatus::Succeeded) {
        outputs.insert(r.step.clone(), produced(ctx, &r.step, &r.id).await?);
    }
    let run = ctx.store.run(run_id).await?;
    progress.run_started(
        &run.id,
        &pipeline
            .steps
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>(),
    );
    for r in records.iter().filter(|r| r.status == StepStatus::Succeeded) {
        progress.step_done_earlier(&r.step);
    }
    let heartbeat = {
        let (store, id) = (ctx.store.clone(), run.id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(liveness::HEARTBEAT_EVERY).await;
                if let Err(e) = store.heartbeat_run(&id).await {
                    tracing::warn!(run_id = %id, error = %e, "cannot record a heartbeat");
                }
            }
        })
    };
    let lineage = crate::openlineage::Emitter::start(ctx)?;
    // A resumed run carries on the run its first START began.
    let resumed = records.iter().any(|r| r.status.is_terminal());
    lineage.run_event(if resumed { "RUNNING" } else { "START" }, &run, None);
    // The run is a trace (or joins the one this runner was started under);
    // each step attempt is a span in it, handed to its runtime.
    let trace = weir_trace::start(
        weir_trace::inherited().as_ref(),
        &format!("run {}", pipeline.name),
        vec![
            weir_trace::KeyValue::new("weir.run_id", run.id.clone()),
            weir_trace::KeyValue::new("weir.pipeline", pipeline.name.clone()),
        ],
    );
    if let Some(cx) = &trace {
        tracing::Span::current().record("trace_id", weir_trace::trace_id(cx));
    }
    let outcome = walk(
        ctx,
        &run,
        pipeline,
        options,
        cluster,
        progress,
        &ids,
        &mut status,
        &mut outputs,
        started,
        trace.as_ref(),
        &lineage,
    )
    .await;
    heartbeat.abort();
    let failure = match &outcome {
        Ok(o) => o.error.clone(),
        Err(e) => Some(e.to_string()),
    };
    weir_trace::end(trace, failure.as_deref());
    let kind = match failure.as_deref() {
        None => "COMPLETE",
        Some(f) if f.contains("was cancelled") => "ABORT",
        Some(_) => "FAIL",
    };
    lineage.run_event(kind, &run, failure.as_deref());
    let dropped = lineage.finish(Duration::from_secs(5)).await;
    if dropped > 0 {
        progress.warning(&format!(
            "{dropped} OpenLineage event(s) could not be delivered to {} (the run is not affected)",
            ctx.config.openlineage_url().unwrap_or_default()
        ));
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn walk(
    ctx: &Context,
    run: &RunRecord,
    pipeline: &Pipeline,
    options: &RunOptions,
    cluster: Option<Arc<RayCluster>>,
    progress: &dyn Progress,
    ids: &HashMap<String, String>,
    status: &mut HashMap<String, StepStatus>,
    outputs: &mut HashMap<String, BTreeMap<String, StagedInput>>,
    started: Instant,
    trace: Option<&weir_trace::Context>,
    lineage: &crate::openlineage::Emitter,
) -> Result<RunOutcome, EngineError> {
    let mut step_spans: HashMap<String, weir_trace::Context> = HashMap::new();
    // Each launched step's inputs, for the event that says how it ended.
    let mut launched: HashMap<String, BTreeMap<String, StagedInput>> = HashMap::new();
    let step_span = |name: &str, id: &str, attempt: i64, cause: &str| {
        weir_trace::start(
            trace,
            &format!("step {name}"),
            vec![
                weir_trace::KeyValue::new("weir.step", name.to_string()),
                weir_trace::KeyValue::new("weir.step_run_id", id.to_string()),
                weir_trace::KeyValue::new("weir.attempt", attempt),
                weir_trace::KeyValue::new("weir.cache", cause.to_string()),
            ],
        )
    };
    let exe = match &options.exec_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(EngineError::io("cannot locate", "the weir executable"))?,
    };
    // Steps on Ray report their end through the store: listen for it, or
    // fall back on polling their records.
    let step_ended = match &cluster {
        Some(_) => ctx.store.step_ended_events().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot listen for steps ending; polling their records instead");
            None
        }),
        None => None,
    };
    let launcher = Launcher {
        step_ended,
        ray_weir: ctx
            .config
            .ray_weir_bin()
            .map_or_else(|| exe.display().to_string(), str::to_string),
        exe,
        tracking: tracking_server(ctx, &run.id).await,
        cluster,
        stopping: ray::Stopping::default(),
        run_id: run.id.clone(),
    };
    let mut running: JoinSet<Attempt> = JoinSet::new();
    let mut slots = Slots::new(
        ctx.config
            .capacity()
            .map_err(|e| EngineError::StepFailed(e.to_string()))?,
    );
    let mut first_failure: Option<String> = None;
    // On Ctrl-C or SIGTERM the runner stops its step runtimes (each in its own
    // process group) and records the run as failed rather than leaving it running.
    let interrupted = weir_core::signals::terminated();
    tokio::pin!(interrupted);
    let mut was_interrupted = false;
    let mut exiting: Vec<JoinHandle<()>> = Vec::new();
    let params: BTreeMap<String, serde_json::Value> = serde_json::from_str(&run.params_json)
        .map_err(|e| EngineError::corrupt("runs.params_json", e))?;

    let off_peak = ctx
        .config
        .off_peak()
        .map_err(|e| EngineError::StepFailed(e.to_string()))?;
    let mut told_waiting: HashSet<String> = HashSet::new();
    loop {
        // When the only steps ready wait for the off-peak window: how long.
        let mut deferred: Option<Duration> = None;
        if first_failure.is_none() {
            for step in &pipeline.steps {
                if running.len() >= options.max_parallel.max(1) {
                    break;
                }
                if status[&step.name] != StepStatus::Pending {
                    continue;
                }
                if !step
                    .upstream()
                    .iter()
                    .all(|u| status[*u] == StepStatus::Succeeded)
                {
                    continue;
                }
                if let (true, Some(window)) = (step.off_peak, off_peak) {
                    let wait = window.opens_in(weir_core::now_ms());
                    if !wait.is_zero() {
                        if told_waiting.insert(step.name.clone()) {
                            progress.warning(&format!(
                                "step '{}' waits for the off-peak window {window} UTC (opens in {})",
                                step.name,
                                humantime::format_duration(Duration::from_secs(wait.as_secs()))
                            ));
                        }
                        deferred = Some(deferred.map_or(wait, |d| d.min(wait)));
                        continue;
                    }
                }
                // Wait for slots before any work: gathering and hashing inputs
                // would otherwise be repeated each time the loop comes round.
                // A cluster keeps its own count: Ray queues what does not fit.
                let on_ray = ray::executor_of(ctx, step) == ExecutorKind::Ray;
                if !on_ray && !slots.fits(step.request(&slots.capacity)) {
                    continue;
                }
                let mut inputs = BTreeMap::new();
                for (name, r) in &step.inputs {
                    if !r.instances.is_empty() {
                        inputs.insert(name.clone(), gather(ctx, r, outputs).await?);
                        continue;
                    }
                    let produced = outputs
                        .get(&r.step)
                        .and_then(|o| o.get(&r.output))
                        .cloned()
                        .ok_or_else(|| {
                            EngineError::corrupt(
                                format!("outputs of step '{}'", r.step),
                                format!("'{}' was not recorded", r.output),
                            )
                        })?;
                    inputs.insert(name.clone(), produced);
                }
                let id = ids[step.name.as_str()].to_string();
                let key = cache::compute(step, pipeline.base_dir(), &inputs)?;
                for warning in &key.warnings {
                    progress.warning(warning);
                }
                let mut start = StepStart {
                    inputs_json: serde_json::to_string(&inputs).expect("inputs serialize"),
                    cache_key: Some(key.key.clone()),
                    cache_components: Some(key.components_json()),
                    cache_miss: None,
                };
                let reason = if options.no_cache {
                    "--no-cache".to_string()
                } else if !cache::cacheable(step) {
                    "caching is off for this step".to_string()
                } else {
                    match ctx.store.cached_step_run(&key.key).await? {
                        Some(hit) if outputs_present(ctx, &hit).await? => {
                            ctx.store.complete_from_cache(&id, &start, &hit).await?;
                            let made = produced(ctx, &step.name, &id).await?;
                            for kind in ["START", "COMPLETE"] {
                                lineage
                                    .step_event(
                                        ctx,
                                        kind,
                                        run,
                                        &step.name,
                                        &id,
                                        &inputs,
                                        (kind == "COMPLETE").then_some(&made),
                                        None,
                                    )
                                    .await;
                            }
                            outputs.insert(step.name.clone(), made);
                            status.insert(step.name.clone(), StepStatus::Succeeded);
                            tracing::info!(run_id = %run.id, step = %step.name, from = %hit.id, "cache hit");
                            weir_trace::end(
                                step_span(&step.name, &id, 0, &format!("hit: run {}", hit.run_id)),
                                None,
                            );
                            progress.step_cached(&step.name, &hit.run_id);
                            continue;
                        }
                        Some(_) => {
                            "its cached outputs are missing from the artifact store".to_string()
                        }
                        None => cache::explain(
                            ctx.store
                                .previous_cache_components(&pipeline.name, &step.name)
                                .await?
                                .as_deref(),
                            &key.components,
                        ),
                    }
                };
                if let Some(budget) = pipeline.budget {
                    let over = crate::accounting::step_over_budget(
                        ctx,
                        budget,
                        &pipeline.name,
                        &run.id,
                        &step.name,
                    )
                    .await?;
                    if let Some(why) = over {
                        ctx.store.mark_step_skipped(&id, &why).await?;
                        status.insert(step.name.clone(), StepStatus::Skipped);
                        progress.step_finished(&step.name, StepStatus::Skipped, 0.0, Some(&why));
                        first_failure = Some(format!("budget: step '{}' {why}", step.name));
                        break;
                    }
                }
                let gpus = if on_ray {
                    Vec::new()
                } else {
                    match slots.try_take(&step.name, step.request(&slots.capacity)) {
                        Some(gpus) => gpus,
                        None => continue,
                    }
                };
                start.cache_miss = Some(reason.clone());
                ctx.store
                    .retrying(|| ctx.store.start_step(&id, &start))
                    .await?;
                status.insert(step.name.clone(), StepStatus::Running);
                tracing::info!(run_id = %run.id, step = %step.name, step_run_id = %id, %reason, "launching step");
                progress.step_running(&step.name, &reason);
                lineage
                    .step_event(ctx, "START", run, &step.name, &id, &inputs, None, None)
                    .await;
                if lineage.on() {
                    launched.insert(step.name.clone(), inputs.clone());
                }
                let task = Task {
                    run_id: run.id.clone(),
                    step: step.clone(),
                    inputs,
                    params: params.clone(),
                    spec_file: run.spec_file.clone(),
                };
                let span = step_span(&step.name, &id, 1, &reason);
                let parent = span.as_ref().and_then(weir_trace::traceparent);
                if let Some(span) = span {
                    step_spans.insert(step.name.clone(), span);
                }
                launch(
                    &mut running,
                    &launcher,
                    ctx,
                    step,
                    id,
                    Some(task),
                    &gpus,
                    Duration::ZERO,
                    parent,
                );
            }
        }
        // A deferred step is looked at again when its window opens (a
        // little after, so the window is open by every clock reading).
        let window_opens = deferred.map(|d| d + Duration::from_millis(50));
        let nothing_running = running.is_empty();
        let joined = tokio::select! {
            joined = running.join_next(), if !(nothing_running && window_opens.is_some()) => joined,
            _ = tokio::time::sleep(window_opens.unwrap_or_default()), if window_opens.is_some() => continue,
            _ = &mut interrupted, if !was_interrupted => {
                was_interrupted = true;
                cancel_running(ctx, &mut running, status, ids, progress).await?;
                first_failure.get_or_insert_with(|| "the run was cancelled (interrupted)".into());
                continue;
            }
        };
        let Some(joined) = joined else {
            break;
        };
        let mut attempt =
            joined.map_err(|e| EngineError::StepFailed(format!("step task failed: {e}")))?;
        exiting.extend(attempt.exiting.take());
        let name = attempt.step.clone();
        let id = ids[name.as_str()].as_str();
        // The step runtime records its own outcome; if it could not (it
        // crashed, timed out or could not reach the store), record it here.
        let mut record = ctx.store.retrying(|| ctx.store.step_run(id)).await?;
        if !record.status.is_terminal() {
            let message = attempt
                .result
                .clone()
                .err()
                .unwrap_or_else(|| "the step runtime exited without recording a result".into());
            ctx.store
                .retrying(|| ctx.store.fail_step(id, &message, None, None))
                .await?;
            record = ctx.store.retrying(|| ctx.store.step_run(id)).await?;
        }
        let step = pipeline
            .step(&name)
            .expect("a launched step is in the pipeline");
        if record.status == StepStatus::Failed && first_failure.is_none() {
            // A lost cluster node is a preemption: the step runs again
            // (from its checkpoint) whatever its policy retries on.
            let retry = match step.retry.as_ref() {
                Some(p)
                    if record.attempt < i64::from(p.attempts)
                        && (attempt.lost_node
                            || p.retries(record.exit_code, attempt.timed_out)) =>
                {
                    Some((p.attempts, p.backoff(record.attempt as u32)))
                }
                None if attempt.lost_node && record.attempt < LOST_NODE_ATTEMPTS => {
                    Some((LOST_NODE_ATTEMPTS as u32, Duration::from_secs(1)))
                }
                _ => None,
            };
            if let Some((attempts, backoff)) = retry {
                let wait = jittered(backoff);
                let why = record
                    .error
                    .as_deref()
                    .unwrap_or("failed")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                progress.step_retrying(&name, record.attempt + 1, attempts, wait, &why);
                tracing::info!(run_id = %run.id, step = %name, attempt = record.attempt + 1, ?wait, "retrying step");
                ctx.store.retry_step(id, record.attempt + 1).await?;
                let gpus = slots.gpus_of(&name);
                weir_trace::end(step_spans.remove(&name), Some(&why));
                let span = step_span(&name, id, record.attempt + 1, "retry");
                let parent = span.as_ref().and_then(weir_trace::traceparent);
                if let Some(span) = span {
                    step_spans.insert(name.clone(), span);
                }
                // A retry reads its task from the store, as a remote runtime would.
                launch(
                    &mut running,
                    &launcher,
                    ctx,
                    step,
                    id.to_string(),
                    None,
                    &gpus,
                    wait,
                    parent,
                );
                continue;
            }
        }
        if record.status == StepStatus::Succeeded {
            outputs.insert(name.clone(), produced(ctx, &name, id).await?);
        } else if first_failure.is_none() {
            let attempts = if record.attempt > 1 {
                format!(" after {} attempts", record.attempt)
            } else {
                String::new()
            };
            first_failure = Some(format!(
                "step '{name}' failed{attempts}: {}",
                record.error.clone().unwrap_or_default()
            ));
        }
        weir_trace::end(
            step_spans.remove(&name),
            (record.status != StepStatus::Succeeded)
                .then(|| record.error.as_deref().unwrap_or("failed")),
        );
        let kind = match (record.status, was_interrupted) {
            (StepStatus::Succeeded, _) => "COMPLETE",
            (_, true) => "ABORT",
            _ => "FAIL",
        };
        lineage
            .step_event(
                ctx,
                kind,
                run,
                &name,
                id,
                &launched.remove(&name).unwrap_or_default(),
                outputs.get(&name).filter(|_| kind == "COMPLETE"),
                (kind != "COMPLETE").then(|| record.error.as_deref().unwrap_or("failed")),
            )
            .await;
        status.insert(name.clone(), record.status);
        slots.release(&name);
        progress.step_finished(
            &name,
            record.status,
            attempt.seconds,
            record.error.as_deref(),
        );
    }

    for step in &pipeline.steps {
        if status[&step.name] == StepStatus::Pending {
            let reason = if was_interrupted {
                "the run was cancelled"
            } else {
                "an upstream step failed"
            };
            let id = ids[step.name.as_str()].as_str();
            ctx.store.mark_step_skipped(id, reason).await?;
            progress.step_finished(&step.name, StepStatus::Skipped, 0.0, Some(reason));
        }
    }
    // A finished run leaves no process, and no cluster job, behind.
    for process in exiting.into_iter().chain(launcher.stopping.take()) {
        let _ = process.await;
    }
    let final_status = if first_failure.is_some() {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    ctx.store
        .retrying(|| {
            ctx.store
                .finish_run(&run.id, final_status, first_failure.as_deref())
        })
        .await?;

    let names: HashMap<&str, &str> = ids
        .iter()
        .map(|(step, id)| (id.as_str(), step.as_str()))
        .collect();
    let metrics = ctx
        .store
        .retrying(|| ctx.store.latest_metrics(&run.id))
        .await?
        .into_iter()
        .map(|(id, m)| {
            (
                names.get(id.as_str()).map_or(id.clone(), |s| s.to_string()),
                m,
            )
        })
        .collect();
    Ok(RunOutcome {
        run_id: run.id.clone(),
        pipeline: pipeline.name.clone(),
        status: final_status,
        seconds: started.elapsed().as_secs_f64(),
        steps: ctx
            .store
            .retrying(|| ctx.store.step_runs(&run.id))
            .await?
            .into_iter()
            .map(|r| StepOutcome {
                seconds: match (r.started_at, r.ended_at) {
                    (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
                    _ => 0.0,
                },
                step: r.step,
                step_run_id: r.id,
                status: r.status,
                error: r.error,
                cached_from: r.cached_from,
            })
            .collect(),
        metrics,
        models: ctx
            .store
            .retrying(|| ctx.store.model_versions_for_run(&run.id))
            .await?,
        error: first_failure,
    })
}

/// Stops every running step runtime (dropping a task kills its child) and
/// records those steps as failed.
async fn cancel_running(
    ctx: &Context,
    running: &mut JoinSet<Attempt>,
    status: &mut HashMap<String, StepStatus>,
    ids: &HashMap<String, String>,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    running.abort_all();
    while running.join_next().await.is_some() {}
    for (name, state) in status.iter_mut() {
        if *state == StepStatus::Running {
            let id = ids[name.as_str()].as_str();
            if !ctx.store.step_run(id).await?.status.is_terminal() {
                ctx.store
                    .fail_step(id, "cancelled: the run was interrupted", None, None)
                    .await?;
            }
            *state = StepStatus::Failed;
            progress.step_finished(name, StepStatus::Failed, 0.0, Some("cancelled"));
        }
    }
    Ok(())
}

/// The machine's capacity, shared among running steps: CPUs and memory are
/// counted, GPUs are handed out by index.
struct Slots {
    capacity: Resources,
    cpu: f64,
    memory: u64,
    free_gpus: Vec<u32>,
    held: HashMap<String, (Resources, Vec<u32>)>,
}

impl Slots {
    fn new(capacity: Resources) -> Slots {
        Slots {
            capacity,
            cpu: 0.0,
            memory: 0,
            free_gpus: (0..capacity.gpu).collect(),
            held: HashMap::new(),
        }
    }

    /// Whether `request` fits beside what is held now. A step alone always
    /// fits: requests larger than the machine are rejected before the run.
    fn fits(&self, request: Resources) -> bool {
        let cpu = request.cpu.min(self.capacity.cpu);
        let gpus_free = request.gpu as usize <= self.free_gpus.len();
        gpus_free
            && (self.held.is_empty()
                || (self.cpu + cpu <= self.capacity.cpu + 1e-9
                    && (request.memory_bytes == 0
                        || self.memory + request.memory_bytes <= self.capacity.memory_bytes)))
    }

    /// Reserves `request` for `step` if it fits now; returns the GPUs it gets.
    fn try_take(&mut self, step: &str, request: Resources) -> Option<Vec<u32>> {
        if !self.fits(request) {
            return None;
        }
        let cpu = request.cpu.min(self.capacity.cpu);
        let gpus: Vec<u32> = self.free_gpus.drain(..request.gpu as usize).collect();
        self.cpu += cpu;
        self.memory += request.memory_bytes;
        self.held.insert(
            step.to_string(),
            (Resources { cpu, ..request }, gpus.clone()),
        );
        Some(gpus)
    }

    fn gpus_of(&self, step: &str) -> Vec<u32> {
        self.held
            .get(step)
            .map(|(_, g)| g.clone())
            .unwrap_or_default()
    }

    fn release(&mut self, step: &str) {
        if let Some((r, gpus)) = self.held.remove(step) {
            self.cpu -= r.cpu;
            self.memory -= r.memory_bytes;
            self.free_gpus.extend(gpus);
            self.free_gpus.sort_unstable();
        }
    }
}

/// Rejects, before anything runs, a step that could never fit this machine
/// (steps for a cluster are checked against its nodes instead).
fn check_capacity(
    ctx: &Context,
    pipeline: &Pipeline,
    capacity: Resources,
) -> Result<(), EngineError> {
    let mut issues = Vec::new();
    let gib = |b: u64| format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64);
    for step in pipeline
        .steps
        .iter()
        .filter(|s| ray::executor_of(ctx, s) == ExecutorKind::Local)
    {
        let r = step.request(&capacity);
        let mut push = |field: &str, message: String, hint: &str| {
            issues.push(SpecIssue {
                line: Some(step.line),
                field: format!("steps.{}.resources.{field}", step.name),
                message,
                hint: Some(hint.to_string()),
            })
        };
        if r.cpu > capacity.cpu {
            push(
                "cpu",
                format!(
                    "{} CPUs is more than this machine offers ({})",
                    r.cpu, capacity.cpu
                ),
                "lower the request, or set WEIR_CPUS / `cpus` in weir.toml",
            );
        }
        if r.memory_bytes > capacity.memory_bytes {
            push(
                "memory",
                format!(
                    "{} is more than this machine offers ({})",
                    gib(r.memory_bytes),
                    gib(capacity.memory_bytes)
                ),
                "lower the request, or set WEIR_MEMORY / `memory` in weir.toml",
            );
        }
        if r.gpu > capacity.gpu {
            push(
                "gpu",
                format!(
                    "{} GPUs is more than this machine offers ({})",
                    r.gpu, capacity.gpu
                ),
                "lower the request, or set WEIR_GPUS / `gpus` in weir.toml",
            );
        }
    }
    Ok(SpecError::check(&pipeline.file, issues)?)
}

/// One finished attempt of a step, as the runner sees it.
struct Attempt {
    step: String,
    seconds: f64,
    /// What the step runtime printed when it failed.
    result: Result<(), String>,
    /// The runner stopped it at its `timeout:`.
    timed_out: bool,
    /// The cluster node running it died.
    lost_node: bool,
    /// The runtime process, still exiting after it recorded the outcome.
    exiting: Option<JoinHandle<()>>,
}

/// How this run starts step runtimes.
struct Launcher {
    exe: PathBuf,
    /// A tracking server that holds this run's tracking runs: steps log to it.
    tracking: Option<String>,
    /// The Ray cluster, when some step runs there, and the `weir` its nodes run.
    cluster: Option<Arc<RayCluster>>,
    ray_weir: String,
    /// Ray jobs being stopped, waited for before the run ends.
    stopping: ray::Stopping,
    run_id: String,
    /// Announcements of steps ending (PostgreSQL), for attempts on Ray.
    step_ended: Option<weir_store::StepEnded>,
}

/// The configured tracking server, if it answers and serves this run's
/// store (it knows the run), so `mlflow.log_metric` in a step lands in the
/// step's run. Anything else leaves steps without MLFLOW_RUN_ID.
async fn tracking_server(ctx: &Context, run_id: &str) -> Option<String> {
    let uri = ctx.config.tracking_uri()?.to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .ok()?;
    let url = format!("{uri}/api/2.0/mlflow/runs/get?run_id={run_id}");
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => Some(uri),
        Ok(r) => {
            tracing::warn!(%uri, status = %r.status(), "the tracking server does not know this run; steps will not log to it");
            None
        }
        Err(e) => {
            tracing::warn!(%uri, error = %e, "the tracking server is not reachable; steps will not log to it");
            None
        }
    }
}

/// Starts an attempt of `step` after `delay`, stopped at the step's timeout.
#[allow(clippy::too_many_arguments)]
fn launch(
    running: &mut JoinSet<Attempt>,
    launcher: &Launcher,
    ctx: &Context,
    step: &weir_core::pipeline::Step,
    id: String,
    task: Option<Task>,
    gpus: &[u32],
    delay: Duration,
    traceparent: Option<String>,
) {
    let tracking: Vec<(&'static str, String)> = launcher
        .tracking
        .iter()
        .map(|uri| ("WEIR_STEP_TRACKING_URI", uri.clone()))
        .chain(traceparent.map(|t| (weir_trace::TRACEPARENT, t)))
        .collect();
    let runtime = match (ray::executor_of(ctx, step), &launcher.cluster) {
        (ExecutorKind::Ray, Some(cluster)) => {
            let demand = ray::demand(step, cluster.largest_cpu);
            Runtime::Ray(RayAttempt {
                cluster: cluster.clone(),
                store: ctx.store.clone(),
                run_id: launcher.run_id.clone(),
                step_run_id: id,
                step: step.name.clone(),
                weir: launcher.ray_weir.clone(),
                // Ray gives a job with GPUs its own CUDA_VISIBLE_DEVICES.
                env: {
                    let mut env = ray::job_env(ctx, &demand, &tracking);
                    if let Some(per_trial) = ray::trial_demand(step) {
                        let spread = crate::ray_trials::Spread {
                            address: cluster.address().to_string(),
                            weir: launcher.ray_weir.clone(),
                            demand: per_trial,
                        };
                        env.insert(crate::ray_trials::ENV.into(), spread.to_env());
                    }
                    if let (Some(bundle), Some((_, placement))) =
                        (ray::group_bundle(step), ray::group_plan(step))
                    {
                        let group = crate::ray_group::Group {
                            bundle,
                            strategy: placement.ray_strategy().into(),
                        };
                        env.insert(crate::ray_group::ENV.into(), group.to_env());
                    }
                    if let Ok(python) = std::env::var(crate::ray_group::PYTHON_ENV) {
                        env.insert(crate::ray_group::PYTHON_ENV.into(), python);
                    }
                    env
                },
                trials: ray::trial_demand(step).is_some(),
                demand,
                stopping: launcher.stopping.clone(),
                ended: launcher.step_ended.as_ref().map(|e| e.subscribe()),
            })
        }
        (ExecutorKind::Ray, None) => {
            Runtime::Refused("the step runs on Ray, but no cluster is connected".into())
        }
        (ExecutorKind::Local, _) => {
            let mut env = ctx.config.child_env();
            if ctx.config.capacity().is_ok_and(|c| c.gpu > 0) {
                let ids: Vec<String> = gpus.iter().map(u32::to_string).collect();
                env.push(("WEIR_GPU_IDS", ids.join(",")));
            }
            // This runner exports the runtime's spans in its own batches.
            if tracking.iter().any(|(k, _)| *k == weir_trace::TRACEPARENT) {
                env.push((weir_trace::RELAY_VAR, "1".into()));
            }
            env.extend(tracking);
            Runtime::Local(Exec {
                exe: launcher.exe.clone(),
                env,
                store: ctx.store.clone(),
                id,
                task: task.map(|t| serde_json::to_vec(&t).expect("a task serializes")),
            })
        }
    };
    let name = step.name.clone();
    let timeout = step.timeout_ms.map(Duration::from_millis);
    running.spawn(async move {
        // Even a zero sleep waits for the timer's next millisecond tick.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let started = Instant::now();
        let (result, timed_out) = match timeout {
            None => (runtime.run().await, false),
            // Dropping the runtime's future kills its process group, or
            // stops its Ray job.
            Some(limit) => match tokio::time::timeout(limit, runtime.run()).await {
                Ok(result) => (result, false),
                Err(_) => (
                    Err((
                        format!("timed out after {}", humantime::format_duration(limit)),
                        false,
                    )),
                    true,
                ),
            },
        };
        let (result, exiting, lost_node) = match result {
            Ok(exiting) => (Ok(()), exiting, false),
            Err((e, lost)) => (Err(e), None, lost),
        };
        Attempt {
            step: name,
            seconds: started.elapsed().as_secs_f64(),
            result,
            timed_out,
            lost_node,
            exiting,
        }
    });
}

/// Spreads retries of many steps apart: ±20 % of the wait.
fn jittered(wait: Duration) -> Duration {
    use rand::Rng;
    wait.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// The outputs of every instance of a `foreach` step, as one directory with
/// an entry per instance (named by its label).
async fn gather(
    ctx: &Context,
    r: &weir_core::pipeline::InputRef,
    outputs: &HashMap<String, BTreeMap<String, StagedInput>>,
) -> Result<StagedInput, EngineError> {
    let mut parts = Vec::with_capacity(r.instances.len());
    for instance in &r.instances {
        let produced = outputs
            .get(instance)
            .and_then(|o| o.get(&r.output))
            .ok_or_else(|| {
                EngineError::corrupt(
                    format!("outputs of step '{instance}'"),
                    format!("'{}' was not recorded", r.output),
                )
            })?;
        let label = instance
            .strip_prefix(&format!("{}[", r.step))
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or(instance);
        parts.push((label.to_string(), produced.digest, produced.kind));
    }
    let stored = ctx.artifacts.compose_dir(&parts).await?;
    ctx.store
        .record_artifact(&crate::exec::artifact_record(stored))
        .await?;
    Ok(StagedInput {
        digest: stored.digest,
        kind: stored.kind,
        from: format!("{}[*].{}", r.step, r.output),
    })
}

/// A succeeded step's outputs, as inputs for the steps that read them.
async fn produced(
    ctx: &Context,
    step: &str,
    id: &str,
) -> Result<BTreeMap<String, StagedInput>, EngineError> {
    Ok(ctx
        .store
        .step_outputs(id)
        .await?
        .into_iter()
        .map(|(output, a)| {
            let from = format!("{step}.{output}");
            (
                output,
                StagedInput {
                    digest: a.digest,
                    kind: a.kind,
                    from,
                },
            )
        })
        .collect())
}

/// A cache entry is usable only if every output is still in the artifact
/// store; one `weir gc` has moved to its trash comes back (gc never empties
/// the trash of what is named again, and this names it again at once).
async fn outputs_present(
    ctx: &Context,
    hit: &weir_store::StepRunRecord,
) -> Result<bool, EngineError> {
    for (_, artifact) in ctx.store.step_outputs(&hit.id).await? {
        if !ctx
            .artifacts
            .ensure_complete(&artifact.digest, artifact.kind)
            .await?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Kills a step runtime's whole process group when dropped: on cancellation
/// (the task is aborted) and after it exits (stray background processes a
/// command left behind). Each `weir exec` leads its own group, so the user's
/// command and anything it started are in it.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            liveness::kill_group(i64::from(pid));
        }
    }
}

/// One attempt's step runtime, wherever it runs.
enum Runtime {
    Local(Exec),
    Ray(RayAttempt),
    /// It cannot start; the reason becomes the attempt's error.
    Refused(String),
}

impl Runtime {
    /// As [`Exec::run`]; an error says whether the attempt's node was lost.
    async fn run(self) -> Result<Option<JoinHandle<()>>, (String, bool)> {
        match self {
            Runtime::Local(exec) => exec.run().await.map_err(|e| (e, false)),
            Runtime::Ray(attempt) => attempt.run().await.map_err(|f| (f.message, f.lost_node)),
            Runtime::Refused(why) => Err((why, false)),
        }
    }
}

/// One `weir exec <id>` to start.
struct Exec {
    exe: PathBuf,
    env: Vec<(&'static str, String)>,
    store: weir_store::Store,
    id: String,
    /// The task as JSON, handed over on stdin.
    task: Option<Vec<u8>>,
}

impl Exec {
    /// Runs the step runtime until it has recorded the step's outcome; on
    /// failure returns what it printed to stderr. A runtime that said it
    /// recorded the outcome is left to exit in the returned task (which then
    /// stops what its command left behind), so its teardown overlaps the next
    /// step instead of delaying it.
    async fn run(self) -> Result<Option<JoinHandle<()>>, String> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("exec")
            .arg(&self.id)
            .args(self.task.is_some().then_some("--task-on-stdin"))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(match self.task {
                Some(_) => Stdio::piped(),
                None => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {} exec: {e}", self.exe.display()))?;
        let group = ProcessGroup(child.id());
        if let (Some(task), Some(mut stdin)) = (self.task, child.stdin.take()) {
            // Written beside the rest: the runtime reads it while it starts.
            tokio::spawn(async move {
                let _ = stdin.write_all(&task).await;
            });
        }
        if let Some(pid) = child.id() {
            if let Err(e) = self
                .store
                .set_step_process(&self.id, &liveness::hostname(), i64::from(pid))
                .await
            {
                tracing::warn!(step_run_id = %self.id, error = %e, "cannot record the step's process");
            }
        }
        // Read stderr all along: a runtime blocked on a full pipe (verbose
        // WEIR_LOG) would never get to record its outcome.
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text).await;
            text
        });
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(spans) = line.strip_prefix(weir_trace::SPANS_LINE) {
                if let Err(e) = weir_trace::relay(spans) {
                    tracing::warn!(step_run_id = %self.id, error = %e, "cannot export the step's spans");
                }
                continue;
            }
            if line == crate::exec::RECORDED {
                return Ok(Some(tokio::spawn(async move {
                    let _ = child.wait().await;
                    drop(group);
                })));
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("lost the step runtime: {e}"))?;
        let stderr = stderr.await.unwrap_or_default();
        if status.success() {
            return Ok(None);
        }
        let mut said = String::from_utf8_lossy(&stderr).trim().to_string();
        // A runtime killed from outside (the OOM killer, an operator) says
        // nothing itself: name the signal, so the step's error is not blank.
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
            if !said.is_empty() {
                said.push('\n');
            }
            said.push_str(&format!(
                "the step runtime (weir exec, pid {}) was killed by signal {signal}{}",
                group.0.unwrap_or_default(),
                match signal {
                    9 => " (SIGKILL: the OOM killer or an operator)",
                    15 => " (SIGTERM)",
                    _ => "",
                }
            ));
        }
        Err(said)
    }
}
