//! A study's trials as Ray jobs of their own. When a study with `parallel`
//! above 1 runs on Ray, its step's job is only the study: it samples, starts
//! each trial as a Ray job (`weir exec-trial <step-run-id> <number>`, placed
//! by the step's `resources:` per trial), and records the results, so
//! `parallel: 16` spreads over as many nodes as have room.
//!
//! The store is how the two sides meet. The study records the trial (its
//! params) and the job that runs it before submitting; the trial job reads
//! its params from there, reports its values at ASHA's rungs there, and
//! decides at each rung whether it stops, from every trial's values as
//! stored (the rule ASHA applies in one process, over the same history);
//! its outcome is recorded only while the trial still names its job, so a
//! study that gave up on it (a restarted runtime) keeps what it recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use weir_core::pipeline::Action;
use weir_store::StoredTrial;
use weir_tune::TrialState;

use crate::exec::{Task, WorkDir, FENCE_VAR};
use crate::ops::{self, OpContext, StepLog};
use crate::ray::{self, RayCluster, StopOnDrop, Stopping};
use crate::tune::{self, TrialEnd, TuneSpec};
use crate::{Context, EngineError};

/// The variable that tells a study's runtime to run its trials on Ray.
pub const ENV: &str = "WEIR_RAY_TRIALS";

/// What the runner hands a study that spreads its trials: the cluster, the
/// `weir` binary on its nodes, and what each trial asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spread {
    pub address: String,
    pub weir: String,
    pub demand: BTreeMap<String, f64>,
}

impl Spread {
    pub fn to_env(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    pub fn from_env() -> Result<Option<Spread>, EngineError> {
        crate::ray::plan_from_env(ENV)
    }
}

/// The study's side: submits trials and follows them.
pub(crate) struct RayTrials {
    cluster: Arc<RayCluster>,
    store: weir_store::Store,
    weir: String,
    env: BTreeMap<String, String>,
    demand: BTreeMap<String, f64>,
    stopping: Stopping,
}

impl RayTrials {
    pub(crate) async fn connect(ctx: &Context, spread: Spread) -> Result<RayTrials, EngineError> {
        let cluster = Arc::new(RayCluster::connect(&spread.address).await?);
        Ok(RayTrials {
            cluster,
            store: ctx.store.clone(),
            env: ray::job_env(ctx, &spread.demand, &[]),
            weir: spread.weir,
            demand: spread.demand,
            stopping: Stopping::default(),
        })
    }

    pub(crate) fn address(&self) -> &str {
        self.cluster.address()
    }

    pub(crate) fn describe_demand(&self) -> String {
        ray::describe_demand(&self.demand)
    }

    /// Runs trial `number` (already stored as running) as a Ray job until
    /// it is recorded; a job that ends without recording it (its node lost,
    /// the process killed) is recorded as a failed trial here.
    pub(crate) async fn run_trial(
        self: Arc<Self>,
        run_id: String,
        step_run_id: String,
        step: String,
        number: usize,
        log_path: PathBuf,
    ) -> TrialEnd {
        let stored = self
            .follow(&run_id, &step_run_id, &step, number, &log_path)
            .await;
        TrialEnd::Remote { number, stored }
    }

    async fn follow(
        &self,
        run_id: &str,
        step_run_id: &str,
        step: &str,
        number: usize,
        log_path: &Path,
    ) -> Result<StoredTrial, EngineError> {
        let n = number as i64;
        let job = format!("weir-{step_run_id}-trial{number}-{}", weir_core::now_ms());
        self.store
            .set_trial_placement(run_id, step, n, Some(&job), None)
            .await?;
        let body = ray::job_request(
            ray::entrypoint(
                &self.weir,
                &["exec-trial", step_run_id, &number.to_string()],
                &job,
            )?,
            &job,
            &self.env,
            json!({
                "weir_run_id": run_id,
                "weir_step": step,
                "weir_step_run_id": step_run_id,
                "weir_trial": number.to_string(),
            }),
            &self.demand,
        );
        if let Err(e) = self.cluster.submit(&body).await {
            let why = format!(
                "cannot submit the trial to the Ray cluster at {}: {e}",
                self.cluster.address()
            );
            self.record_failure(run_id, step, n, &job, why).await?;
            return self.stored(run_id, step, n).await;
        }
        let mut guard = StopOnDrop {
            cluster: self.cluster.clone(),
            job: job.clone(),
            armed: true,
            stopping: self.stopping.clone(),
            trials_of: None,
        };
        let mut node_recorded = false;
        let mut next_job_poll = Instant::now();
        let mut unreachable_since: Option<Instant> = None;
        let ended = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = self.stored(run_id, step, n).await?;
            if t.state != "running" {
                break None;
            }
            if Instant::now() < next_job_poll {
                continue;
            }
            next_job_poll = Instant::now() + Duration::from_millis(500);
            match self.cluster.job(&job).await {
                Ok(d) => {
                    unreachable_since = None;
                    if let (false, Some(node)) = (node_recorded, &d.driver_node_id) {
                        self.store
                            .set_trial_placement(run_id, step, n, None, Some(node))
                            .await?;
                        node_recorded = true;
                    }
                    if d.is_terminal() {
                        break Some(d);
                    }
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(15) {
                        break Some(ray::JobDetails {
                            status: "FAILED".into(),
                            message: Some(format!("lost the Ray cluster: {e}")),
                            error_type: None,
                            driver_node_id: None,
                            driver_exit_code: None,
                            submission_id: None,
                            metadata: None,
                        });
                    }
                }
            }
        };
        guard.armed = false;
        if let Some(d) = ended {
            // The job may have recorded the trial as it ended.
            if self.stored(run_id, step, n).await?.state == "running" {
                let why = ray::ended_unrecorded(&d, &job, &format!("trial {number}"))
                    .map(|f| f.message)
                    .unwrap_or_else(|| {
                        format!("the Ray job {job} ended without recording the trial")
                    });
                self.record_failure(run_id, step, n, &job, why).await?;
            }
        }
        self.copy_log(&job, number, log_path).await;
        if !node_recorded {
            if let Ok(d) = self.cluster.job(&job).await {
                if let Some(node) = &d.driver_node_id {
                    self.store
                        .set_trial_placement(run_id, step, n, None, Some(node))
                        .await?;
                }
            }
        }
        self.stored(run_id, step, n).await
    }

    /// Records the trial as failed, if it still runs as `job`.
    async fn record_failure(
        &self,
        run_id: &str,
        step: &str,
        n: i64,
        job: &str,
        message: String,
    ) -> Result<(), EngineError> {
        let mut t = self.stored(run_id, step, n).await?;
        t.state = tune::state_name(TrialState::Failed).into();
        t.error = Some(message);
        t.ended_at = Some(weir_core::now_ms());
        self.store
            .finish_trial_fenced(run_id, step, job, &t)
            .await?;
        Ok(())
    }

    async fn stored(&self, run_id: &str, step: &str, n: i64) -> Result<StoredTrial, EngineError> {
        self.store
            .study_trial(run_id, step, n)
            .await?
            .ok_or_else(|| EngineError::corrupt("study_trials", "a running trial is gone"))
    }

    /// Appends the trial job's output to the step's log, each line marked
    /// with the trial, as the trials of a local study write theirs.
    async fn copy_log(&self, job: &str, number: usize, log_path: &Path) {
        let text = match self.cluster.logs(job).await {
            Ok(text) => text,
            Err(e) => format!("(the Ray job's log cannot be read: {e})"),
        };
        if let Ok(log) = StepLog::append(log_path) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                log.line(format!("[trial {number}] {line}"));
            }
        }
    }
}

/// The trial job's side (`weir exec-trial`): runs trial `number` of the
/// study of `step_run_id` with the params the study recorded, reports its
/// rungs' values, and records its outcome under its job's fence.
pub async fn exec_trial(
    ctx: &Context,
    step_run_id: &str,
    number: usize,
) -> Result<(), EngineError> {
    crate::exec::die_with_parent();
    let started = crate::accounting::Started::now();
    let fence = std::env::var(FENCE_VAR).ok().filter(|f| !f.is_empty()).ok_or_else(|| {
        EngineError::Executor(format!(
            "weir exec-trial runs a trial as a cluster job, and {FENCE_VAR} names that job; a study starts it"
        ))
    })?;
    let task = Task::load(ctx, step_run_id).await?;
    let Action::Builtin(op) = task.step.action else {
        return Err(EngineError::StepFailed(format!(
            "step '{}' is not a study of a built-in op",
            task.step.name
        )));
    };
    let spec = TuneSpec::parse(&task.step, op).map_err(EngineError::StepFailed)?;
    let (run_id, step_name, n) = (task.run_id.clone(), task.step.name.clone(), number as i64);
    let Some(mine) = ctx.store.study_trial(&run_id, &step_name, n).await? else {
        return Err(EngineError::StepFailed(format!(
            "the study of step '{step_name}' has no trial {number}"
        )));
    };
    if mine.state != "running" || mine.job.as_deref() != Some(fence.as_str()) {
        println!(
            "trial {number} is no longer this job's to run ({}): nothing to do",
            mine.state
        );
        return Ok(());
    }
    let params = tune::trial_of(&mine).params;

    let work = WorkDir(ctx.work_dir().join(format!("{step_run_id}-trial-{number}")));
    let _ = std::fs::remove_dir_all(&work.0);
    let (inputs_dir, outputs_dir) = (work.0.join("inputs"), work.0.join("outputs"));
    for dir in [&inputs_dir, &outputs_dir] {
        std::fs::create_dir_all(dir).map_err(EngineError::io("cannot create", dir))?;
    }
    let log = StepLog::create(&work.0.join("log.txt"))?;
    let staged = crate::exec::stage_inputs(ctx, &task.inputs, &inputs_dir, &log).await?;
    // The trainer uses the CPUs Ray granted this trial.
    let threads = ctx
        .config
        .capacity()
        .map_or(1, |c| (c.cpu.floor() as usize).max(1));
    let step = tune::trial_step(&task.step, op, &params, Some(threads));
    let base_dir = Path::new(&task.spec_file)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let input_digests = task
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.digest))
        .collect();

    let pruned = Arc::new(AtomicBool::new(false));
    let intermediate = Arc::new(Mutex::new(tune::trial_of(&mine).intermediate));
    let outcome = {
        let (store, handle) = (ctx.store.clone(), tokio::runtime::Handle::current());
        let (asha, judged) = (
            spec.asha.clone(),
            spec.asha_metric.trim_start_matches("valid.").to_string(),
        );
        let rungs = asha
            .as_ref()
            .map(|a| a.rungs_of(number))
            .unwrap_or_default();
        let (run_id, step_name, fence, pruned) = (
            run_id.clone(),
            step_name.clone(),
            fence.clone(),
            Arc::clone(&pruned),
        );
        let (outputs_dir, log_path) = (outputs_dir.clone(), log.path().to_path_buf());
        let intermediate = Arc::clone(&intermediate);
        let step_run_id = step_run_id.to_string();
        tokio::task::spawn_blocking(move || {
            let step_run_id = step_run_id.as_str();
            let log = StepLog::append(&log_path)?;
            // At each of its rungs the trial stores its value, then applies
            // ASHA's rule to every trial's values as stored.
            let report = |round: &weir_ml::Round| -> bool {
                let Some(asha) = &asha else {
                    return true;
                };
                let Some(value) = tune::rung_value(&rungs, &judged, round) else {
                    return true;
                };
                let at = round.number as i64;
                let json = {
                    let mut mine = intermediate.lock().expect("trial lock");
                    mine.insert(at, value);
                    serde_json::to_string(&*mine).expect("numbers serialize")
                };
                let decided = handle.block_on(async {
                    if !store
                        .set_trial_intermediate(&run_id, &step_name, n, &fence, &json)
                        .await?
                    {
                        // The study gave the trial up: stop.
                        return Ok::<_, weir_store::StoreError>(true);
                    }
                    let history: Vec<weir_tune::Trial> = store
                        .study_trials(&run_id, &step_name)
                        .await?
                        .iter()
                        .map(tune::trial_of)
                        .collect();
                    let me = history.iter().find(|t| t.number == number);
                    Ok(me.is_some_and(|me| asha.should_stop(me, at, &history)))
                });
                match decided {
                    Ok(stop) => {
                        if stop {
                            pruned.store(true, Ordering::SeqCst);
                        }
                        !stop
                    }
                    // Without the store the trial cannot be judged; it goes on.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot judge the trial at its rung");
                        true
                    }
                }
            };
            let octx = OpContext {
                step: &step,
                base_dir: &base_dir,
                inputs: staged,
                input_digests,
                outputs_dir: &outputs_dir,
                log: &log,
                run_id: &run_id,
                step_run_id,
                lineage: None,
                report: Some(&report),
                cache: None,
                ranks: None,
                previous_rows: None,
                champion: None,
            };
            ops::run(op, &octx)
        })
        .await
        .unwrap_or_else(|e| Err(EngineError::StepFailed(format!("the trial panicked: {e}"))))
    };
    let (state, value, metrics, outputs, error) = tune::judge_trial(
        ctx,
        &spec,
        op,
        &task.step.outputs,
        number,
        outcome,
        pruned.load(Ordering::SeqCst),
        &outputs_dir,
    )
    .await?;
    if let Some(e) = &error {
        log.line(format!("error: {e}"));
    }
    // A trial job is a process of its own: it is billed beside the study's
    // step attempt, and recorded before its outcome so the study's budget
    // check sees it.
    let reserved = crate::accounting::Reserved {
        cpus: threads as f64,
        ..crate::accounting::reserved(ctx, &task.step)
    };
    crate::accounting::record(
        ctx,
        crate::accounting::Subject {
            run_id: &run_id,
            step_run_id,
            step: &task.step,
            trial: Some(n),
            billed: true,
            tracking_run: None,
        },
        tune::state_name(state),
        started,
        crate::accounting::attempt_usage(ctx, &task.step, started),
        reserved,
    )
    .await;
    // Ray keeps the job's output: the study copies it into the step's log.
    if let Ok(text) = std::fs::read_to_string(log.path()) {
        print!("{text}");
    }
    let ended = StoredTrial {
        state: tune::state_name(state).into(),
        value: value.filter(|v| v.is_finite()),
        intermediate_json: serde_json::to_string(&*intermediate.lock().expect("trial lock"))
            .expect("numbers serialize"),
        metrics_json: serde_json::to_string(&metrics).expect("metrics serialize"),
        outputs_json: outputs,
        error,
        ended_at: Some(weir_core::now_ms()),
        ..mine
    };
    if !ctx
        .store
        .finish_trial_fenced(&run_id, &step_name, &fence, &ended)
        .await?
    {
        println!(
            "trial {number} was given up by its study before it ended: its outcome is not recorded"
        );
    }
    Ok(())
}
