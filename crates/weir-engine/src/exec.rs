//! The step runtime (`weir exec <step-run-id>`), the same on every executor:
//! stage the inputs, run the built-in op or the command, upload the outputs
//! and the log, and record the result in one transaction. Outputs are
//! uploaded only after the step succeeded, and recorded only after upload.
//!
//! The contract a command sees: `WEIR_INPUTS_DIR/<name>`,
//! `WEIR_OUTPUTS_DIR/<name>`, `WEIR_PARAMS` (a JSON file with the step's
//! `with:` and the pipeline params) and `WEIR_METRICS_FILE` (JSON lines of
//! `{"key": ..., "value": ..., "step": ...}`), plus `WEIR_RUN_ID` and `WEIR_STEP`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use weir_core::pipeline::{Action, Step};
use weir_core::{ArtifactKind, Digest};
use weir_store::{ArtifactRecord, MetricPoint, StepCompletion};

use crate::ops::{self, OpContext, OpOutcome, StepLog};
use crate::{Context, EngineError};

/// An input as the runner hands it to the step runtime.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StagedInput {
    pub digest: Digest,
    pub kind: ArtifactKind,
    /// `step.output` it came from.
    pub from: String,
}

/// How often a running preemptible step's checkpoint directory is saved, so
/// even a hard kill loses at most this much of it.
const CHECKPOINT_SYNC: std::time::Duration = std::time::Duration::from_secs(2);

/// The checkpoint directory of a preemptible step: restored from the step
/// run's last saved checkpoint, saved as a directory artifact. A save
/// records the new checkpoint only after every file of it is stored, so a
/// failed save leaves the previous one in place.
struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    async fn restore(
        ctx: &Context,
        step_run_id: &str,
        work: &Path,
        log: &StepLog,
    ) -> Result<Checkpoint, EngineError> {
        let dir = work.join("checkpoint");
        let record = ctx.store.step_run(step_run_id).await?;
        match record.checkpoint_digest {
            Some(hex) => {
                let digest: weir_core::Digest = hex
                    .parse()
                    .map_err(|e| EngineError::corrupt("step_runs.checkpoint_digest", e))?;
                ctx.artifacts
                    .fetch(&digest, weir_core::ArtifactKind::Dir, &dir)
                    .await?;
                log.line(format!(
                    "restored checkpoint {} into $WEIR_CHECKPOINT_DIR",
                    digest.short()
                ));
            }
            None => {
                std::fs::create_dir_all(&dir).map_err(EngineError::io("cannot create", &dir))?
            }
        }
        Ok(Checkpoint { dir })
    }

    async fn save(&self, ctx: &Context, step_run_id: &str) -> Result<(), EngineError> {
        let stored = ctx.artifacts.put_dir(&self.dir).await?;
        let current = ctx.store.step_run(step_run_id).await?.checkpoint_digest;
        if current.as_deref() != Some(stored.digest.hex().as_str()) {
            ctx.store
                .set_checkpoint(step_run_id, &artifact_record(stored))
                .await?;
        }
        Ok(())
    }
}

/// Sends `signal` to this step runtime's process group: the command and all
/// it started (the runtime itself handles the signal).
fn signal_group(signal: i32) {
    // SAFETY: getpgrp and kill take and return plain integers.
    unsafe {
        libc::kill(-libc::getpgrp(), signal);
    }
}

/// SIGKILLs every other process of this runtime's group, keeping the runtime
/// alive to save the checkpoint and record the outcome.
fn kill_rest_of_group() {
    // SAFETY: getpgrp takes no arguments.
    let group = unsafe { libc::getpgrp() };
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 5 (the process group) is the third after the command name.
        let pgrp = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<i32>().ok());
        if pid != me && pgrp == Some(group) {
            // SAFETY: kill takes plain integers.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A step runtime must not outlive its runner: the kernel kills it when the
/// runner dies, even by SIGKILL (set here rather than between fork and exec
/// in the runner, so the runner can spawn with posix_spawn).
pub(crate) fn die_with_parent() {
    // SAFETY: prctl and getppid take and return plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() == 1 {
            // The runner died before the setting took effect.
            std::process::exit(1);
        }
    }
}

pub(crate) struct WorkDir(pub(crate) PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The metadata record of a blob just stored.
pub fn artifact_record(stored: weir_artifacts::Stored) -> ArtifactRecord {
    ArtifactRecord {
        digest: stored.digest,
        size: stored.size as i64,
        kind: stored.kind,
        created_at: weir_core::now_ms(),
    }
}

/// What a step runtime runs: the step with its resolved inputs and what it
/// needs of its run. The local executor hands it over on stdin, so the
/// runtime can start before its database connection is up; elsewhere the
/// runtime reads it from the metadata store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    pub run_id: String,
    pub step: Step,
    pub inputs: BTreeMap<String, StagedInput>,
    pub params: BTreeMap<String, serde_json::Value>,
    /// The pipeline file: commands run in its directory.
    pub spec_file: String,
}

impl Task {
    pub async fn load(ctx: &Context, step_run_id: &str) -> Result<Task, EngineError> {
        let task = ctx.store.step_task(step_run_id).await?;
        Ok(Task {
            run_id: task.step.run_id,
            step: serde_json::from_str(&task.step.spec_json)
                .map_err(|e| EngineError::corrupt("step_runs.spec_json", e))?,
            inputs: serde_json::from_str(&task.step.inputs_json)
                .map_err(|e| EngineError::corrupt("step_runs.inputs_json", e))?,
            params: serde_json::from_str(&task.params_json)
                .map_err(|e| EngineError::corrupt("runs.params_json", e))?,
            spec_file: task.spec_file,
        })
    }
}

/// Runs one step run to completion and records its outcome. The returned
/// error has already been recorded on the step run. Without a `task`, the
/// runtime reads it from the metadata store.
#[tracing::instrument(skip(ctx, task))]
pub async fn exec_step(
    ctx: &Context,
    step_run_id: &str,
    task: Option<Task>,
) -> Result<(), EngineError> {
    die_with_parent();
    let started = crate::accounting::Started::now();
    let task = match task {
        Some(task) => task,
        None => Task::load(ctx, step_run_id).await?,
    };
    let Task {
        run_id,
        step,
        inputs,
        params,
        spec_file,
    } = task;
    let base_dir = Path::new(&spec_file)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();

    // One scratch directory per step run, named by its id, so the processes
    // and files of a step whose runner died can be found and removed.
    let work = WorkDir(ctx.work_dir().join(step_run_id));
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(&work.0).map_err(EngineError::io("cannot create", &work.0))?;
    let log = StepLog::create(&work.0.join("log.txt"))?;
    let shipper = LogShipper::start(ctx.store.clone(), step_run_id, log.path());

    let heartbeat = {
        let (store, id) = (ctx.store.clone(), step_run_id.to_string());
        // Starting the step recorded its first heartbeat; beating at once
        // would open a second database connection in most short steps.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::liveness::HEARTBEAT_EVERY).await;
                if let Err(e) = store.heartbeat_step(&id).await {
                    tracing::warn!(step_run_id = %id, error = %e, "cannot record a heartbeat");
                }
            }
        })
    };
    let trace = weir_trace::inherited();
    let job = Job {
        ctx,
        run_id: &run_id,
        step_run_id,
        step: &step,
        params: &params,
        base_dir: &base_dir,
        work: &work.0,
        log: &log,
        trace: trace.as_ref(),
    };
    let mut result = run_step(&job, &inputs).await;
    heartbeat.abort();
    if let Ok(completion) = &mut result {
        let upload = weir_trace::start(job.trace, "upload outputs", Vec::new());
        let stored = store_outputs_and_log(&job, completion).await;
        weir_trace::end(
            upload,
            stored.as_ref().err().map(|e| e.to_string()).as_deref(),
        );
        if let Err(e) = stored {
            log.line(format!("error: cannot store the outputs: {e}"));
            result = Err((e, None));
        }
    }
    // Recorded with a success, in its transaction; before a failure, so
    // that a runner (or a budget check) that sees the step ended also sees
    // what it cost.
    let usage = crate::accounting::priced(
        ctx,
        crate::accounting::Subject {
            run_id: &run_id,
            step_run_id,
            step: &step,
            trial: None,
            billed: true,
            tracking_run: None,
        },
        if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        },
        started,
        crate::accounting::attempt_usage(ctx, &step, started),
        crate::accounting::reserved(ctx, &step),
    );
    match &mut result {
        Ok(completion) => completion.usage = Some(usage),
        Err(_) => {
            if let Err(e) = ctx.store.record_usage(&usage).await {
                tracing::warn!(step = %step.name, error = %e, "cannot record resource usage");
            }
        }
    }
    // On a cluster, the attempt's job: its outcome is recorded only while
    // the step run still names that job.
    let fence = std::env::var(FENCE_VAR).ok().filter(|f| !f.is_empty());
    let outcome = match result {
        Ok(mut completion) => {
            tracing::info!(step = %step.name, outputs = completion.outputs.len(), metrics = completion.metrics.len(), "step succeeded");
            completion.fence = fence;
            ctx.store
                .retrying(|| ctx.store.complete_step(step_run_id, &completion))
                .await?;
            Ok(())
        }
        Err((error, exit_code)) => {
            let log_record = store_log(&job).await;
            let message = error.to_string();
            ctx.store
                .retrying(|| {
                    ctx.store.fail_step_fenced(
                        step_run_id,
                        fence.as_deref(),
                        &message,
                        exit_code,
                        log_record.as_ref(),
                    )
                })
                .await?;
            Err(error)
        }
    };
    say_recorded();
    shipper.finish().await;
    outcome
}

/// How often a running step's new log lines go to the metadata store.
const LOG_SHIP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// At most this much of the log goes in one piece.
const LOG_CHUNK_MAX: u64 = 1 << 20;

/// Ships what the step's log file gains, every second, to the metadata
/// store, so `weir logs` shows a running step wherever it runs (a Ray node,
/// another host). A step that ends within a second ships nothing; once the
/// whole log is stored as an artifact, the shipped pieces are dropped.
struct LogShipper {
    task: tokio::task::JoinHandle<()>,
    shipped_any: std::sync::Arc<std::sync::atomic::AtomicBool>,
    store: weir_store::Store,
    step_run_id: String,
}

impl LogShipper {
    fn start(store: weir_store::Store, step_run_id: &str, path: &Path) -> LogShipper {
        let shipped_any = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (store, id, path) = (store.clone(), step_run_id.to_string(), path.to_path_buf());
            let shipped_any = shipped_any.clone();
            tokio::spawn(async move {
                let (mut shipped, mut attempt) = (0u64, None);
                loop {
                    tokio::time::sleep(LOG_SHIP_EVERY).await;
                    match ship_log(&store, &id, &path, shipped, &mut attempt).await {
                        Ok(Some(end)) => {
                            shipped = end;
                            shipped_any.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(step_run_id = %id, error = %e, "cannot ship the step log")
                        }
                    }
                }
            })
        };
        LogShipper {
            task,
            shipped_any,
            store,
            step_run_id: step_run_id.to_string(),
        }
    }

    /// Stops shipping; drops the pieces if any went out (the step's outcome,
    /// with its whole log, is recorded by now).
    async fn finish(self) {
        self.task.abort();
        if self.shipped_any.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = self.store.drop_log_chunks(&self.step_run_id).await;
        }
    }
}

/// Ships the log's complete lines past byte `from`; returns the new end.
async fn ship_log(
    store: &weir_store::Store,
    step_run_id: &str,
    path: &Path,
    from: u64,
    attempt: &mut Option<i64>,
) -> Result<Option<u64>, EngineError> {
    use std::io::{Read, Seek};
    let len = std::fs::metadata(path)
        .map_err(EngineError::io("cannot read", path))?
        .len();
    if len <= from {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let mut file = std::fs::File::open(path).map_err(EngineError::io("cannot read", path))?;
    file.seek(std::io::SeekFrom::Start(from))
        .and_then(|_| file.take(LOG_CHUNK_MAX).read_to_end(&mut bytes))
        .map_err(EngineError::io("cannot read", path))?;
    // Whole lines only, unless one line fills a piece on its own.
    let cut = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if bytes.len() as u64 >= LOG_CHUNK_MAX => bytes.len(),
        None => return Ok(None),
    };
    let attempt = match attempt {
        Some(a) => *a,
        None => *attempt.insert(store.step_run(step_run_id).await?.attempt),
    };
    let end = from + cut as u64;
    store
        .push_log_chunk(
            step_run_id,
            attempt,
            &weir_store::LogChunk {
                start: from as i64,
                end: end as i64,
                body: String::from_utf8_lossy(&bytes[..cut]).into_owned(),
            },
        )
        .await?;
    Ok(Some(end))
}

/// The variable that names the cluster job a step runtime runs as.
pub const FENCE_VAR: &str = "WEIR_EXEC_FENCE";

/// The line a step runtime prints on stdout once the step's outcome is in
/// the metadata store: the executor may go on from there, without waiting
/// for this process to clean up and exit.
pub const RECORDED: &str = "weir-exec: recorded";

fn say_recorded() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Nobody listening (a runtime started by hand) is not an error. The
    // spans go first: the runner stops reading at "recorded".
    let spans = weir_trace::relayed();
    let _ = spans
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| writeln!(out, "{RECORDED}"))
        .and_then(|()| out.flush());
}

/// One attempt of a step, as the runtime executes it.
struct Job<'a> {
    ctx: &'a Context,
    run_id: &'a str,
    step_run_id: &'a str,
    step: &'a Step,
    params: &'a BTreeMap<String, serde_json::Value>,
    /// The pipeline file's directory: where commands run and paths resolve.
    base_dir: &'a Path,
    work: &'a Path,
    log: &'a StepLog,
    /// The step attempt's span (the runner's, from `TRACEPARENT`).
    trace: Option<&'a weir_trace::Context>,
}

async fn run_step(
    job: &Job<'_>,
    inputs: &BTreeMap<String, StagedInput>,
) -> Result<StepCompletion, (EngineError, Option<i64>)> {
    let Job {
        ctx,
        step,
        work,
        log,
        ..
    } = *job;
    let fail = |e: EngineError| (e, None);
    let inputs_dir = work.join("inputs");
    let outputs_dir = work.join("outputs");
    for dir in [&inputs_dir, &outputs_dir] {
        std::fs::create_dir_all(dir)
            .map_err(EngineError::io("cannot create", dir))
            .map_err(fail)?;
    }
    let stage = weir_trace::start(
        job.trace,
        "stage inputs",
        vec![weir_trace::KeyValue::new(
            "weir.inputs",
            inputs.len() as i64,
        )],
    );
    let staged = stage_inputs(ctx, inputs, &inputs_dir, log).await;
    weir_trace::end(
        stage,
        staged.as_ref().err().map(|e| e.to_string()).as_deref(),
    );
    let staged = staged.map_err(fail)?;

    let execute = weir_trace::start(job.trace, "execute", Vec::new());
    let outcome = execute_step(
        job,
        inputs,
        staged,
        &inputs_dir,
        &outputs_dir,
        execute.as_ref(),
    )
    .await;
    weir_trace::end(
        execute,
        outcome
            .as_ref()
            .err()
            .map(|(e, _)| e.to_string())
            .as_deref(),
    );
    let outcome = outcome?;

    let mut completion = StepCompletion {
        metrics: finite_metrics(outcome.metrics, log),
        registrations: outcome.registrations,
        sources: outcome.sources,
        ..Default::default()
    };
    for name in &step.outputs {
        let path = outputs_dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Err(fail(EngineError::StepFailed(format!(
                "step '{}' declared the output '{name}' but did not write it\n  hint: write the file or directory $WEIR_OUTPUTS_DIR/{name}",
                step.name
            ))));
        };
        match meta.is_dir() {
            true => log.line(format!("output {name} (a directory)")),
            false => log.line(format!("output {name} ({} bytes)", meta.len())),
        }
    }
    completion.datasets = crate::datasets::versions(ctx, step, &outputs_dir, outcome.profiles, log)
        .await
        .inspect_err(|e| log.line(format!("error: {e}")))
        .map_err(fail)?;
    Ok(completion)
}

/// Runs the step's op, study or command on its staged inputs.
async fn execute_step(
    job: &Job<'_>,
    inputs: &BTreeMap<String, StagedInput>,
    staged: BTreeMap<String, PathBuf>,
    inputs_dir: &Path,
    outputs_dir: &Path,
    trace: Option<&weir_trace::Context>,
) -> Result<OpOutcome, (EngineError, Option<i64>)> {
    let Job {
        ctx,
        run_id,
        step_run_id,
        step,
        base_dir,
        work,
        log,
        ..
    } = *job;
    let fail = |e: EngineError| (e, None);
    let outputs_dir = outputs_dir.to_path_buf();
    let outcome = match &step.action {
        Action::Builtin(op) if step.tune.is_some() => {
            let input_digests = inputs.iter().map(|(k, v)| (k.clone(), v.digest)).collect();
            crate::tune::run_study(crate::tune::StudyJob {
                ctx,
                run_id,
                step_run_id,
                step,
                op: *op,
                base_dir,
                inputs: staged,
                input_digests,
                work,
                outputs_dir: &outputs_dir,
                log,
                cache: Default::default(),
                trace: trace.cloned(),
            })
            .await
            .inspect_err(|e| log.line(format!("error: {e}")))
            .map_err(fail)?
        }
        Action::Builtin(op) => {
            let lineage = match op {
                weir_core::ops::BuiltinOp::Register => {
                    let run = ctx.store.run(run_id).await.map_err(|e| fail(e.into()))?;
                    Some(
                        crate::lineage::lineage(ctx, &run, step)
                            .await
                            .map_err(fail)?,
                    )
                }
                _ => None,
            };
            // On Ray, a data-parallel trainer's other ranks are placed on
            // the cluster before it starts (it waits for them to connect).
            let ranks = match (op, crate::ray::group_plan(step)) {
                (
                    weir_core::ops::BuiltinOp::TrainGbdt | weir_core::ops::BuiltinOp::TrainMlp,
                    Some((workers, _)),
                ) => match crate::ray_group::Group::from_env().map_err(fail)? {
                    Some(group) => Some(
                        crate::ray_group::RemoteRanks::start(
                            ctx,
                            &group,
                            workers,
                            step_run_id,
                            work,
                            log,
                        )
                        .await
                        .map_err(fail)?,
                    ),
                    None => None,
                },
                _ => None,
            };
            let previous_rows = match (op, inputs.get("table")) {
                (weir_core::ops::BuiltinOp::Validate, Some(table)) => ctx
                    .store
                    .previous_dataset_rows(&table.digest.hex())
                    .await
                    .map_err(|e| fail(e.into()))?,
                _ => None,
            };
            let champion = match op {
                weir_core::ops::BuiltinOp::Register => {
                    champion_for(ctx, step, work).await.map_err(fail)?
                }
                _ => None,
            };
            let op = *op;
            let (step, base_dir, outputs_dir) =
                (step.clone(), base_dir.to_path_buf(), outputs_dir.clone());
            let input_digests = inputs.iter().map(|(k, v)| (k.clone(), v.digest)).collect();
            let (run_id, step_run_id) = (run_id.to_string(), step_run_id.to_string());
            let log_path = log.path().to_path_buf();
            tokio::task::spawn_blocking(move || {
                let log = StepLog::append(&log_path)?;
                let ctx = OpContext {
                    step: &step,
                    base_dir: &base_dir,
                    inputs: staged,
                    input_digests,
                    outputs_dir: &outputs_dir,
                    log: &log,
                    run_id: &run_id,
                    step_run_id: &step_run_id,
                    lineage,
                    report: None,
                    cache: None,
                    ranks: ranks.as_ref(),
                    previous_rows,
                    champion,
                };
                let result = ops::run(op, &ctx);
                if let Err(e) = &result {
                    log.line(format!("error: {e}"));
                }
                result
            })
            .await
            .map_err(|e| fail(EngineError::StepFailed(format!("the op panicked: {e}"))))?
            .map_err(fail)?
        }
        Action::Command(command) => {
            run_command(job, command, inputs_dir, &outputs_dir, trace).await?
        }
    };
    Ok(outcome)
}

/// For a register step whose gates compare with the champion: the version
/// holding the `champion` alias, with its model fetched into `work`.
async fn champion_for(
    ctx: &Context,
    step: &Step,
    work: &Path,
) -> Result<Option<crate::ops::gates::Champion>, EngineError> {
    let name = step.with.get("name").and_then(|v| v.as_str());
    let gates: Vec<crate::ops::gates::Gate> = step
        .with
        .get("gates")
        .and_then(|g| g.as_array())
        .map(|g| {
            g.iter()
                .filter_map(|t| t.as_str())
                .filter_map(|t| crate::ops::gates::parse(t).ok())
                .collect()
        })
        .unwrap_or_default();
    let Some(name) = name.filter(|_| gates.iter().any(|g| g.needs_champion())) else {
        return Ok(None);
    };
    let detail = match ctx.store.version_by_alias(name, "champion").await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = detail.version;
    let Some(digest) = v.digest.as_deref() else {
        return Err(EngineError::StepFailed(format!(
            "the champion, version {} of {name}, has no Weir model file to score ({}); gates cannot compare with it",
            v.version, v.source
        )));
    };
    let digest: weir_core::Digest = digest
        .parse()
        .map_err(|e| EngineError::corrupt("model_versions.digest", e))?;
    let path = work.join("champion.model");
    ctx.artifacts
        .fetch(&digest, weir_core::ArtifactKind::File, &path)
        .await?;
    Ok(Some(crate::ops::gates::Champion {
        version: v.version,
        model: path,
        report: serde_json::from_str(&v.metrics_json).unwrap_or_default(),
    }))
}

/// Fetches the step's inputs into `inputs_dir`; their paths by name.
pub(crate) async fn stage_inputs(
    ctx: &Context,
    inputs: &BTreeMap<String, StagedInput>,
    inputs_dir: &Path,
    log: &StepLog,
) -> Result<BTreeMap<String, PathBuf>, EngineError> {
    let mut staged = BTreeMap::new();
    for (name, input) in inputs {
        let dest = inputs_dir.join(name);
        ctx.artifacts
            .fetch(&input.digest, input.kind, &dest)
            .await?;
        log.line(format!(
            "input {name} <- {} ({})",
            input.from,
            input.digest.short()
        ));
        staged.insert(name.clone(), dest);
    }
    Ok(staged)
}

/// Stores a succeeded step's outputs and its log side by side (their disk
/// flushes overlap); an output that cannot be stored fails the step.
async fn store_outputs_and_log(
    job: &Job<'_>,
    completion: &mut StepCompletion,
) -> Result<(), EngineError> {
    let outputs_dir = job.work.join("outputs");
    let outputs = async {
        let mut stored = Vec::new();
        for name in &job.step.outputs {
            let s = job.ctx.artifacts.put_path(&outputs_dir.join(name)).await?;
            stored.push((name.clone(), artifact_record(s)));
        }
        Ok::<_, weir_artifacts::ArtifactError>(stored)
    };
    let (outputs, log) = tokio::join!(outputs, store_log(job));
    completion.outputs = outputs?;
    completion.log = log;
    Ok(())
}

async fn store_log(job: &Job<'_>) -> Option<ArtifactRecord> {
    match job.ctx.artifacts.put_file(job.log.path()).await {
        Ok(stored) => Some(artifact_record(stored)),
        Err(e) => {
            tracing::warn!(step = %job.step.name, error = %e, "cannot store the step log");
            None
        }
    }
}

/// SQLite cannot store NaN; a metric that is not a number is logged, not recorded.
fn finite_metrics(metrics: Vec<MetricPoint>, log: &StepLog) -> Vec<MetricPoint> {
    metrics
        .into_iter()
        .filter(|m| {
            let ok = m.value.is_finite();
            if !ok {
                log.line(format!("metric {} is {}; not recorded", m.key, m.value));
            }
            ok
        })
        .collect()
}

async fn run_command(
    job: &Job<'_>,
    command: &str,
    inputs_dir: &Path,
    outputs_dir: &Path,
    trace: Option<&weir_trace::Context>,
) -> Result<OpOutcome, (EngineError, Option<i64>)> {
    let Job {
        ctx,
        run_id,
        step_run_id,
        step,
        params,
        base_dir,
        work,
        log,
        ..
    } = *job;
    // The command's own spans (through any OpenTelemetry SDK) join the step's.
    let traceparent = trace.and_then(weir_trace::traceparent);
    let fail = |e: EngineError| (e, None);
    let params_file = work.join("params.json");
    let contract = serde_json::json!({ "with": step.with, "params": params });
    std::fs::write(&params_file, contract.to_string())
        .map_err(EngineError::io("cannot write", &params_file))
        .map_err(fail)?;
    let metrics_file = work.join("metrics.jsonl");
    std::fs::File::create(&metrics_file)
        .map_err(EngineError::io("cannot create", &metrics_file))
        .map_err(fail)?;

    log.line(format!("$ {command}"));
    let stdout = log
        .try_clone()
        .map_err(EngineError::io("cannot open", log.path()))
        .map_err(fail)?;
    let stderr = log
        .try_clone()
        .map_err(EngineError::io("cannot open", log.path()))
        .map_err(fail)?;
    let checkpoint = match step.preemptible {
        true => Some(
            Checkpoint::restore(ctx, step_run_id, work, log)
                .await
                .map_err(fail)?,
        ),
        false => None,
    };
    // A preemptible step's runtime outlives the SIGTERM of a preemption long
    // enough to let the command checkpoint and to save what it wrote.
    let mut sigterm = match step.preemptible {
        true => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(
                |e| {
                    fail(EngineError::StepFailed(format!(
                        "cannot watch for SIGTERM: {e}"
                    )))
                },
            )?,
        ),
        false => None,
    };
    // One worker, or `distributed.workers` of them: each `sh -c command` in
    // this runtime's process group (so stopping the step stops them all).
    // On Ray, ranks 1..N-1 are a placement group's (crate::ray_group) and
    // only rank 0 runs here.
    let workers = step.distributed.as_ref().map_or(1, |d| d.workers);
    let master_port = match workers {
        1 => None,
        _ => Some(free_port().map_err(fail)?),
    };
    let group = match workers {
        1 => None,
        _ => crate::ray_group::Group::from_env().map_err(fail)?,
    };
    let mut driver = match (&group, master_port) {
        (Some(group), Some(port)) => Some(
            crate::ray_group::start_driver(ctx, group, workers, step_run_id, port, work, log)
                .await
                .map_err(fail)?,
        ),
        _ => None,
    };
    let (master_addr, local_workers) = match &driver {
        Some(d) => (d.master_addr.clone(), d.local_world_size),
        None => ("127.0.0.1".to_string(), workers),
    };
    let here = if driver.is_some() { 1 } else { workers };
    let mut running = tokio::task::JoinSet::new();
    let mut readers = Vec::new();
    for rank in 0..here {
        // Outputs and metrics are rank 0's; the other ranks get scratch ones.
        let (outputs, metrics) = if rank == 0 {
            (outputs_dir.to_path_buf(), metrics_file.clone())
        } else {
            let scratch = work.join(format!("rank-{rank}"));
            std::fs::create_dir_all(scratch.join("outputs"))
                .map_err(EngineError::io("cannot create", &scratch))
                .map_err(fail)?;
            (scratch.join("outputs"), scratch.join("metrics.jsonl"))
        };
        let mut command_line = tokio::process::Command::new("sh");
        command_line
            .arg("-c")
            .arg(command)
            .current_dir(base_dir)
            .envs(&step.env)
            .env("WEIR_INPUTS_DIR", inputs_dir)
            .env("WEIR_OUTPUTS_DIR", &outputs)
            .env("WEIR_PARAMS", &params_file)
            .env("WEIR_METRICS_FILE", &metrics)
            .envs(gpu_env())
            .envs(
                checkpoint
                    .as_ref()
                    .map(|c| ("WEIR_CHECKPOINT_DIR", c.dir.clone())),
            )
            .envs(tracking_env(step_run_id).into_iter().filter(|_| rank == 0))
            .env("WEIR_RUN_ID", run_id)
            .env("WEIR_STEP", &step.name)
            .envs(traceparent.iter().map(|t| (weir_trace::TRACEPARENT, t)))
            // A command's own tracing exports; relaying is for this runtime.
            .env_remove(weir_trace::RELAY_VAR)
            .stdin(Stdio::null());
        if let Some(port) = master_port {
            // torchrun's contract; rank 0's node is the group's first.
            command_line
                .env("MASTER_ADDR", &master_addr)
                .env("MASTER_PORT", port.to_string())
                .env("WORLD_SIZE", workers.to_string())
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", local_workers.to_string())
                .env("GROUP_RANK", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        } else {
            command_line
                .stdout(Stdio::from(
                    stdout
                        .try_clone()
                        .map_err(EngineError::io("cannot open", log.path()))
                        .map_err(fail)?,
                ))
                .stderr(Stdio::from(
                    stderr
                        .try_clone()
                        .map_err(EngineError::io("cannot open", log.path()))
                        .map_err(fail)?,
                ));
        }
        let mut child = command_line.spawn().map_err(|e| {
            fail(EngineError::StepFailed(format!(
                "cannot start `sh -c {command}`: {e}"
            )))
        })?;
        if master_port.is_some() {
            // Each line of a worker's output is marked with its rank.
            for pipe in [
                child
                    .stdout
                    .take()
                    .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                child
                    .stderr
                    .take()
                    .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ]
            .into_iter()
            .flatten()
            {
                let log = StepLog::append(log.path()).map_err(fail)?;
                readers.push(tokio::spawn(async move {
                    use tokio::io::AsyncBufReadExt;
                    let mut lines = tokio::io::BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        log.line(format!("[rank {rank}] {line}"));
                    }
                }));
            }
        }
        running.spawn(async move { (rank, child.wait().await) });
    }
    if let Some(crate::ray_group::Driver {
        mut child, lines, ..
    }) = driver.take()
    {
        // The driver stands for ranks 1..N-1: it ends when they all did, or
        // with the status of the first that failed (named by its relay).
        let log = StepLog::append(log.path()).map_err(fail)?;
        let relay = tokio::spawn(crate::ray_group::relay(lines, log));
        running.spawn(async move {
            let status = child.wait().await;
            let failed = relay.await.ok().flatten();
            (failed.unwrap_or(1), status)
        });
    }
    drop((stdout, stderr));
    let mut preempted = false;
    // The first worker to fail, and how; the others are stopped then.
    let mut failed: Option<(u32, std::process::ExitStatus)> = None;
    let mut last_status = None;
    let mut sync = tokio::time::interval(CHECKPOINT_SYNC);
    sync.tick().await;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let grace_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { break };
                let (rank, status) = joined
                    .map_err(|e| fail(EngineError::StepFailed(format!("lost a worker of `{command}`: {e}"))))?;
                let status = status
                    .map_err(|e| fail(EngineError::StepFailed(format!("lost the command `{command}`: {e}"))))?;
                if !status.success() && failed.is_none() && !preempted {
                    failed = Some((rank, status));
                    if workers > 1 {
                        // One worker failing stops the others: they would
                        // wait for it forever in their next collective.
                        log.line(format!("worker {rank} of {workers} failed ({status}); stopping the others"));
                        kill_rest_of_group();
                    }
                }
                last_status = Some(status);
            }
            _ = sync.tick(), if checkpoint.is_some() => {
                if let Some(c) = &checkpoint {
                    if let Err(e) = c.save(ctx, step_run_id).await {
                        log.line(format!("warning: cannot save the checkpoint yet: {e}"));
                    }
                }
            }
            _ = async { sigterm.as_mut().expect("guarded").recv().await }, if sigterm.is_some() && !preempted => {
                preempted = true;
                let grace = std::time::Duration::from_millis(step.grace_ms);
                log.line(format!("preempted (SIGTERM): the command has {} to checkpoint", humantime::format_duration(grace)));
                signal_group(libc::SIGTERM);
                deadline = Some(tokio::time::Instant::now() + grace);
            }
            _ = grace_over => {
                log.line("the grace period is over: stopping the command (SIGKILL)");
                kill_rest_of_group();
                deadline = None;
            }
        }
    }
    for reader in readers {
        let _ = reader.await;
    }
    let status = match failed {
        Some((_, status)) => status,
        None => last_status.expect("at least one worker ran"),
    };
    if let Some(c) = &checkpoint {
        c.save(ctx, step_run_id).await.map_err(|e| {
            fail(EngineError::StepFailed(format!(
                "cannot save the checkpoint in $WEIR_CHECKPOINT_DIR: {e}\n  hint: the previous checkpoint is kept; write checkpoint files atomically (write, then rename)"
            )))
        })?;
    }
    if preempted {
        return Err((
            EngineError::StepFailed(
                "preempted (SIGTERM); the checkpoint was saved and the next attempt resumes from it".into(),
            ),
            Some(143),
        ));
    }
    if !status.success() {
        let code = status.code().map(i64::from);
        let mut how = match code {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".to_string(),
        };
        if let Some((rank, _)) = failed.filter(|_| workers > 1) {
            how = format!("{how} in worker {rank} of {workers} (the others were stopped)");
        }
        return Err((
            EngineError::StepFailed(format!(
                "command `{command}` {how}; last lines of its output:\n{}\n  hint: see the whole log with `weir logs {} {}`",
                indent(&log.tail(15)),
                &run_id[..12],
                step.name
            )),
            code,
        ));
    }
    let metrics = read_metrics_file(&metrics_file).map_err(fail)?;
    Ok(OpOutcome {
        metrics,
        ..Default::default()
    })
}

/// A loopback port free now, for a distributed step's rank 0 to listen on.
pub(crate) fn free_port() -> Result<u16, EngineError> {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            EngineError::StepFailed(format!("cannot find a free port for MASTER_PORT: {e}"))
        })
}

/// With a tracking server, the command's mlflow client logs to this step's
/// tracking run (`mlflow.log_metric` without `start_run`).
fn tracking_env(step_run_id: &str) -> Vec<(&'static str, String)> {
    match std::env::var("WEIR_STEP_TRACKING_URI") {
        Ok(uri) => vec![
            ("MLFLOW_TRACKING_URI", uri),
            ("MLFLOW_RUN_ID", step_run_id.to_string()),
        ],
        Err(_) => vec![],
    }
}

/// The GPUs the runner gave this step, as CUDA sees them. Only when GPU
/// scheduling is on (a `gpus` capacity is configured) are the others hidden.
fn gpu_env() -> Vec<(&'static str, String)> {
    match std::env::var("WEIR_GPU_IDS") {
        Ok(ids) => vec![("CUDA_VISIBLE_DEVICES", ids.clone()), ("WEIR_GPU_IDS", ids)],
        Err(_) => vec![],
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_metrics_file(path: &Path) -> Result<Vec<MetricPoint>, EngineError> {
    #[derive(Deserialize)]
    struct Line {
        #[serde(alias = "name")]
        key: String,
        value: f64,
        #[serde(default)]
        step: i64,
        #[serde(default)]
        timestamp: Option<i64>,
    }
    let text = std::fs::read_to_string(path).map_err(EngineError::io("cannot read", path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| {
            EngineError::StepFailed(format!(
                "WEIR_METRICS_FILE line {}: {e}\n  hint: write one JSON object per line: {{\"key\": \"loss\", \"value\": 0.25, \"step\": 1}}",
                i + 1
            ))
        })?;
        out.push(MetricPoint {
            key: parsed.key,
            value: parsed.value,
            step: parsed.step,
            ts: parsed.timestamp.unwrap_or_else(weir_core::now_ms),
        });
    }
    Ok(out)
}
