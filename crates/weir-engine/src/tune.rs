//! Studies: a `tune:` block on a built-in training step runs the op as
//! trials inside the step runtime, `parallel` at a time, each with the
//! sampler's values laid over the step's `with:`. Every trial is stored as it
//! starts and ends (`study_trials`), with its outputs as artifacts, and is a
//! child run of the step in the tracking view; `weir resume` reads the
//! trials back and spends only what is left of the budget. The best complete
//! trial's outputs and metrics become the step's.
//!
//! ```yaml
//! tune:
//!   space: { learning_rate: loguniform(0.02, 0.3), num_leaves: int(8, 128, log) }
//!   objective: { metric: valid.auc, goal: maximize }
//!   budget: { trials: 40, time: 20m }   # `trials: 40` alone also works
//!   parallel: 2
//!   sampler: tpe                        # random | grid | tpe
//!   scheduler: asha                     # or { type: asha, min_resource, max_resource, reduction, brackets }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use weir_core::ops::BuiltinOp;
use weir_core::pipeline::Step;
use weir_core::{ArtifactKind, Digest};
use weir_store::tracking::NewTrackingRun;
use weir_store::{MetricPoint, StoredTrial};
use weir_tune::{Asha, Goal, ParamValue, SamplerKind, Space, Trial, TrialState};

use crate::ops::{self, OpContext, OpOutcome, StepLog};
use crate::{Context, EngineError};

/// A checked `tune:` block.
#[derive(Debug)]
pub struct TuneSpec {
    pub space: Space,
    pub metric: String,
    pub goal: Goal,
    pub trials: Option<usize>,
    pub time: Option<Duration>,
    pub parallel: usize,
    pub sampler: SamplerKind,
    pub seed: u64,
    /// ASHA, judging trials at its rungs by `asha_metric`.
    pub asha: Option<Asha>,
    /// The validation metric ASHA ranks trials by (`valid.auc`): the
    /// objective itself when the trainer can compute it after any round, so
    /// a trial is stopped for being behind on what the study maximises, not
    /// on a proxy (a slow learner's log loss lags long after its ranking
    /// is good); otherwise `valid.loss`.
    pub asha_metric: String,
    /// `budget: { cost: $5 }`: no new trial starts once the next one, at
    /// the trials' mean cost so far, would take the study past it.
    pub cost: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTune {
    space: BTreeMap<String, Value>,
    objective: RawObjective,
    #[serde(default)]
    trials: Option<usize>,
    #[serde(default)]
    budget: Option<RawBudget>,
    #[serde(default = "one")]
    parallel: usize,
    #[serde(default)]
    sampler: SamplerKind,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    scheduler: Option<Value>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjective {
    metric: String,
    goal: Goal,
}

/// What a study may spend. Money joins trials and time once cost accounting
/// lands; the first limit reached ends the study.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default)]
    trials: Option<usize>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    cost: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsha {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    min_resource: Option<i64>,
    #[serde(default)]
    max_resource: Option<i64>,
    #[serde(default)]
    reduction: Option<f64>,
    #[serde(default)]
    brackets: Option<usize>,
}

/// The option that caps an op's rounds (ASHA's resource), with its default,
/// for the ops that report every round to a scheduler.
fn round_resource(op: BuiltinOp) -> Option<(&'static str, i64)> {
    match op {
        BuiltinOp::TrainGbdt => Some(("num_rounds", 500)),
        BuiltinOp::TrainMlp => Some(("epochs", 30)),
        _ => None,
    }
}

/// The validation metrics a trainer can compute after any round (see
/// `weir_ml::Round::metric`), with the direction that is better.
fn per_round_metric(name: &str) -> Option<Goal> {
    match name.strip_prefix("valid.")? {
        "loss" | "log_loss" | "rmse" | "mae" => Some(Goal::Minimize),
        "auc" | "accuracy" | "precision" | "recall" | "f1" | "r2" => Some(Goal::Maximize),
        _ => None,
    }
}

impl TuneSpec {
    /// Reads and checks a step's `tune:` block; errors name the field.
    pub fn parse(step: &Step, op: BuiltinOp) -> Result<TuneSpec, String> {
        let block = step.tune.as_ref().ok_or("the step has no tune: block")?;
        let raw: RawTune = serde_json::from_value(block.spec.clone()).map_err(|e| e.to_string())?;
        let space = Space::parse(&raw.space, "tune.space").map_err(|e| e.to_string())?;
        for p in &space.params {
            if !step.with.contains_key(&p.name) && !known_option(op, &p.name) {
                return Err(format!(
                    "tune.space.{}: {op} has no option '{}'",
                    p.name, p.name
                ));
            }
        }
        let (mut trials, mut time, mut cost) = (raw.trials, None, None);
        if let Some(b) = raw.budget {
            trials = b.trials.or(trials);
            if let Some(c) = &b.cost {
                cost = Some(
                    weir_core::cost::parse_dollars(c)
                        .map_err(|e| format!("tune.budget.cost: {e}"))?,
                );
            }
            time = match b.time {
                Some(t) => Some(
                    humantime::parse_duration(&t)
                        .map_err(|e| format!("tune.budget.time: '{t}': {e}"))?,
                ),
                None => None,
            };
        }
        if trials.is_none() && time.is_none() && cost.is_none() && raw.sampler != SamplerKind::Grid
        {
            return Err(
                "tune.budget: give a budget: trials (`trials: 40`), wall time (`budget: { time: 20m }`) \
                 or money (`budget: { cost: $5 }`)"
                    .into(),
            );
        }
        if trials == Some(0) {
            return Err("tune.trials: must be at least 1".into());
        }
        if raw.parallel == 0 {
            return Err("tune.parallel: must be at least 1".into());
        }
        let mut asha_metric = String::from("valid.loss");
        let asha = match &raw.scheduler {
            None => None,
            Some(Value::String(s)) if s == "none" => None,
            Some(v) => {
                let raw_asha: RawAsha = match v {
                    Value::String(s) => RawAsha {
                        kind: s.clone(),
                        metric: None,
                        min_resource: None,
                        max_resource: None,
                        reduction: None,
                        brackets: None,
                    },
                    other => serde_json::from_value(other.clone())
                        .map_err(|e| format!("tune.scheduler: {e}"))?,
                };
                if raw_asha.kind != "asha" {
                    return Err(format!(
                        "tune.scheduler: unknown scheduler '{}': use asha or none",
                        raw_asha.kind
                    ));
                }
                let Some((resource, default_resource)) = round_resource(op) else {
                    return Err(format!(
                        "tune.scheduler: {op} reports no per-round metric for ASHA to judge; use scheduler: none"
                    ));
                };
                let objective = &raw.objective;
                let goal = match &raw_asha.metric {
                    Some(m) => {
                        let Some(goal) = per_round_metric(m) else {
                            return Err(format!(
                                "tune.scheduler.metric: {op} cannot compute '{m}' after every round; use valid.loss or one of the validation metrics it reports (valid.auc, valid.log_loss, valid.accuracy, valid.f1, valid.rmse, valid.mae, valid.r2 ...)"
                            ));
                        };
                        asha_metric = m.clone();
                        if *m == objective.metric {
                            objective.goal
                        } else {
                            goal
                        }
                    }
                    None if per_round_metric(&objective.metric).is_some() => {
                        asha_metric = objective.metric.clone();
                        objective.goal
                    }
                    None => Goal::Minimize,
                };
                let rounds = step
                    .with
                    .get(resource)
                    .and_then(Value::as_i64)
                    .unwrap_or(default_resource);
                Some(
                    Asha::new(
                        raw_asha.min_resource.unwrap_or(10),
                        raw_asha.max_resource.unwrap_or(rounds),
                        raw_asha.reduction.unwrap_or(3.0),
                        goal,
                    )
                    .and_then(|a| a.with_brackets(raw_asha.brackets.unwrap_or(1)))
                    .map_err(|e| e.to_string())?,
                )
            }
        };
        Ok(TuneSpec {
            space,
            metric: raw.objective.metric,
            goal: raw.objective.goal,
            trials,
            time,
            parallel: raw.parallel,
            sampler: raw.sampler,
            seed: raw.seed,
            asha,
            asha_metric,
            cost,
        })
    }
}

/// Whether `name` is an option of the op's `with:` (by asking its parser).
fn known_option(op: BuiltinOp, name: &str) -> bool {
    let probe = |value: Value| {
        let mut with = serde_json::Map::new();
        with.insert(name.to_string(), value);
        let err = match op {
            BuiltinOp::TrainGbdt => {
                serde_json::from_value::<weir_ml::GbdtParams>(Value::Object(with)).err()
            }
            BuiltinOp::TrainLinear => {
                serde_json::from_value::<weir_ml::LinearParams>(Value::Object(with)).err()
            }
            BuiltinOp::TrainMlp => {
                serde_json::from_value::<weir_ml::MlpParams>(Value::Object(with)).err()
            }
            _ => return false,
        };
        // Missing required fields are expected; an unknown one is the answer.
        err.is_none_or(|e| !e.to_string().contains("unknown field"))
    };
    probe(json!(1))
}

/// Checks a tuned step before the run starts.
pub fn preflight(step: &Step, op: BuiltinOp) -> Result<(), String> {
    if !op.trains() {
        return Err(format!("{op} cannot be tuned; only training ops can"));
    }
    TuneSpec::parse(step, op).map(drop)
}

struct Running {
    tracking_run: Option<String>,
    started_at: i64,
    threads: usize,
    span: Option<weir_trace::Context>,
}

/// What one trial produced.
pub(crate) struct TrialResult {
    number: usize,
    outcome: Result<OpOutcome, EngineError>,
    pruned: bool,
    outputs_dir: PathBuf,
    started: crate::accounting::Started,
    /// What the trial's thread and its trainer's pool used.
    usage: weir_core::usage::Usage,
}

/// How a trial ended.
pub(crate) enum TrialEnd {
    /// It ran in this process; the study records it.
    Here(TrialResult),
    /// It ran as a cluster job, which recorded it (or the study did, for a
    /// job that could not): the trial as stored.
    Remote {
        number: usize,
        stored: Result<StoredTrial, EngineError>,
    },
}

impl TrialEnd {
    fn number(&self) -> usize {
        match self {
            TrialEnd::Here(r) => r.number,
            TrialEnd::Remote { number, .. } => *number,
        }
    }
}

/// The error of a trial that reported no objective: it fails the study,
/// since no later trial would report it either.
pub(crate) const NO_OBJECTIVE: &str = "tune.objective.metric:";

/// The step one trial runs: the study's step with the trial's values laid
/// over its `with:`, and the trainer's threads when the study decides them.
pub(crate) fn trial_step(
    step: &Step,
    op: BuiltinOp,
    params: &BTreeMap<String, ParamValue>,
    threads: Option<usize>,
) -> Step {
    let mut step = step.clone();
    step.tune = None;
    for (k, v) in params {
        step.with.insert(k.clone(), v.to_json());
    }
    if let Some(threads) = threads {
        if matches!(op, BuiltinOp::TrainGbdt | BuiltinOp::TrainMlp)
            && !step.with.contains_key("threads")
        {
            step.with.insert("threads".into(), json!(threads));
        }
    }
    step
}

/// The value ASHA judges a trial by after `round`, when the round is one
/// of its rungs.
pub(crate) fn rung_value(rungs: &[i64], judged: &str, round: &weir_ml::Round) -> Option<f64> {
    rungs
        .binary_search(&(round.number as i64))
        .ok()
        .and_then(|_| round.metric(judged))
}

/// Everything a study needs of the step runtime.
pub(crate) struct StudyJob<'a> {
    pub ctx: &'a Context,
    pub run_id: &'a str,
    pub step_run_id: &'a str,
    pub step: &'a Step,
    pub op: BuiltinOp,
    pub base_dir: &'a Path,
    pub inputs: BTreeMap<String, PathBuf>,
    pub input_digests: BTreeMap<String, Digest>,
    pub work: &'a Path,
    pub outputs_dir: &'a Path,
    pub log: &'a StepLog,
    /// Shared by the study's trials: inputs read once, GBDT data binned once.
    pub cache: Arc<crate::ops::StudyCache>,
    /// The span trials are children of (the step's `execute`).
    pub trace: Option<weir_trace::Context>,
}

pub(crate) fn state_name(s: TrialState) -> &'static str {
    match s {
        TrialState::Running => "running",
        TrialState::Complete => "complete",
        TrialState::Pruned => "pruned",
        TrialState::Failed => "failed",
    }
}

fn state_of(s: &str) -> TrialState {
    match s {
        "complete" => TrialState::Complete,
        "pruned" => TrialState::Pruned,
        "running" => TrialState::Running,
        _ => TrialState::Failed,
    }
}

pub(crate) async fn run_study(job: StudyJob<'_>) -> Result<OpOutcome, EngineError> {
    let spec = TuneSpec::parse(job.step, job.op).map_err(EngineError::StepFailed)?;
    let store = &job.ctx.store;
    let step_name = job.step.name.as_str();
    // Trials of an earlier attempt: kept, except those it never finished.
    let mut stored: BTreeMap<usize, StoredTrial> = BTreeMap::new();
    for mut t in store.study_trials(job.run_id, step_name).await? {
        if t.state == "running" {
            t.state = "failed".into();
            t.error = Some("interrupted: the step stopped while the trial ran".into());
            t.ended_at = Some(weir_core::now_ms());
            store.save_trial(job.run_id, step_name, &t).await?;
        }
        stored.insert(t.number as usize, t);
    }
    let history: Vec<Trial> = stored.values().map(trial_of).collect();
    if !history.is_empty() {
        job.log.line(format!(
            "study: {} trials from an earlier attempt are kept",
            history.len()
        ));
    }
    let shared = Arc::new(Mutex::new(history));
    // A resumed study draws new values, not the first attempt's again.
    let mut sampler = spec
        .sampler
        .build(spec.seed.wrapping_add(stored.len() as u64));
    // The step's tracking run, parent of the trials' runs. Every step run
    // has one (the mirror creates it with the run); without it trials are
    // still stored, only not shown as child runs.
    let experiment = match store.run_info(job.step_run_id).await {
        Ok(info) => Some(info),
        Err(weir_store::StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let started = Instant::now();
    let mut running: BTreeMap<usize, Running> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut exhausted = false;
    // The trials running at once share the CPU slots the executor granted
    // the step (one per trial unless `resources.cpu` says more), so a study
    // never uses more of the machine than the scheduler reserved for it.
    let granted = job
        .ctx
        .config
        .capacity()
        .map(|c| job.step.request(&c).cpu)
        .unwrap_or(1.0);
    let threads_per_trial = ((granted / spec.parallel as f64).floor() as usize).max(1);
    // On Ray, with trials to run side by side, each is a Ray job of its own.
    let on_ray = match crate::ray_trials::Spread::from_env()? {
        Some(spread) => {
            let ray = crate::ray_trials::RayTrials::connect(job.ctx, spread).await?;
            job.log.line(format!(
                "study: trials run as Ray jobs on {}, each with {}",
                ray.address(),
                ray.describe_demand()
            ));
            Some(Arc::new(ray))
        }
        None => None,
    };
    let mut over_budget = None;
    loop {
        while !exhausted && running.len() < spec.parallel {
            let used = shared.lock().expect("study lock").len();
            let out_of_trials = spec.trials.is_some_and(|n| used >= n);
            let out_of_time = spec.time.is_some_and(|t| started.elapsed() >= t);
            if out_of_trials || out_of_time {
                exhausted = true;
                break;
            }
            if let Some(budget) = spec.cost {
                if let Some(stop) = budget_stop(&job, budget, running.len()).await? {
                    job.log.line(format!("study: {}", stop.message));
                    if stop.fatal {
                        over_budget = Some(stop.message);
                    }
                    exhausted = true;
                    break;
                }
            }
            let params = {
                let history = shared.lock().expect("study lock");
                sampler.sample(&spec.space, &history, spec.goal)
            };
            let Some(params) = params else {
                exhausted = true;
                break;
            };
            let number = used;
            let trial = Trial {
                number,
                params: params.clone(),
                state: TrialState::Running,
                value: None,
                intermediate: BTreeMap::new(),
            };
            shared.lock().expect("study lock").push(trial.clone());
            let tracking_run = match &experiment {
                Some(info) => Some(
                    start_child_run(
                        job.ctx,
                        info,
                        job.step_run_id,
                        job.run_id,
                        step_name,
                        &trial,
                    )
                    .await?,
                ),
                None => None,
            };
            let started_at = weir_core::now_ms();
            store
                .save_trial(
                    job.run_id,
                    step_name,
                    &stored_of(
                        &trial,
                        None,
                        None,
                        None,
                        tracking_run.clone(),
                        started_at,
                        None,
                    ),
                )
                .await?;
            job.log.line(format!(
                "trial {number}: {}",
                params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            match &on_ray {
                Some(ray) => {
                    tasks.spawn(Arc::clone(ray).run_trial(
                        job.run_id.to_string(),
                        job.step_run_id.to_string(),
                        step_name.to_string(),
                        number,
                        job.log.path().to_path_buf(),
                    ));
                }
                None => {
                    tasks.spawn_blocking(trial_task(
                        &job,
                        &spec,
                        &shared,
                        &trial,
                        threads_per_trial,
                    )?);
                }
            }
            let span = weir_trace::start(
                job.trace.as_ref(),
                &format!("trial {number}"),
                std::iter::once(weir_trace::KeyValue::new("weir.trial", number as i64))
                    .chain(params.iter().map(|(k, v)| {
                        weir_trace::KeyValue::new(format!("weir.param.{k}"), v.to_string())
                    }))
                    .collect(),
            );
            running.insert(
                number,
                Running {
                    tracking_run,
                    started_at,
                    threads: threads_per_trial,
                    span,
                },
            );
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let result =
            joined.map_err(|e| EngineError::StepFailed(format!("a trial panicked: {e}")))?;
        let r = running
            .remove(&result.number())
            .expect("every task is a running trial");
        if let Err(e) = finish_trial(&job, &spec, &shared, r, result).await {
            // Let the other trials end before failing the step.
            while tasks.join_next().await.is_some() {}
            return Err(e);
        }
    }
    if let Some(message) = over_budget {
        return Err(EngineError::Budget(message));
    }
    conclude(&job, &spec, &shared, started).await
}

struct BudgetStop {
    message: String,
    /// Not even one trial fits: the study cannot give a result.
    fatal: bool,
}

/// Whether a study must start no more trials: the next one, at the mean
/// cost of the trials so far (the ones still running counted at that mean
/// too), would take it past `budget`.
async fn budget_stop(
    job: &StudyJob<'_>,
    budget: f64,
    running: usize,
) -> Result<Option<BudgetStop>, EngineError> {
    use weir_core::cost::Dollars;
    let (spent, ended) = job.ctx.store.study_cost(job.step_run_id).await?;
    if ended == 0 {
        return Ok(None);
    }
    let mean = spent / ended as f64;
    if mean > budget {
        return Ok(Some(BudgetStop {
            message: format!(
                "tune.budget.cost {} is smaller than one trial, which costs {} ({ended} trial(s) \
                 ran for {}); raise the budget or make trials cheaper",
                Dollars(budget),
                Dollars(mean),
                Dollars(spent)
            ),
            fatal: true,
        }));
    }
    let projected = spent + mean * (running + 1) as f64;
    Ok((projected > budget).then(|| BudgetStop {
        message: format!(
            "budget {} reached: {ended} trial(s) cost {} ({} each on average); \
             another would take the study to {}",
            Dollars(budget),
            Dollars(spent),
            Dollars(mean),
            Dollars(projected)
        ),
        fatal: false,
    }))
}

/// The closure one trial runs on a blocking thread.
fn trial_task(
    job: &StudyJob<'_>,
    spec: &TuneSpec,
    shared: &Arc<Mutex<Vec<Trial>>>,
    trial: &Trial,
    threads: usize,
) -> Result<impl FnOnce() -> TrialEnd + Send + 'static, EngineError> {
    let step = trial_step(
        job.step,
        job.op,
        &trial.params,
        (spec.parallel > 1).then_some(threads),
    );
    let outputs_dir = job
        .work
        .join("trials")
        .join(trial.number.to_string())
        .join("outputs");
    std::fs::create_dir_all(&outputs_dir)
        .map_err(EngineError::io("cannot create", &outputs_dir))?;
    let (op, base_dir, inputs, digests) = (
        job.op,
        job.base_dir.to_path_buf(),
        job.inputs.clone(),
        job.input_digests.clone(),
    );
    let (run_id, step_run_id) = (job.run_id.to_string(), job.step_run_id.to_string());
    let log_path = job.log.path().to_path_buf();
    let (shared, asha, number) = (Arc::clone(shared), spec.asha.clone(), trial.number);
    let rungs = asha
        .as_ref()
        .map(|a| a.rungs_of(number))
        .unwrap_or_default();
    let judged = spec.asha_metric.trim_start_matches("valid.").to_string();
    let cache = Arc::clone(&job.cache);
    Ok(move || {
        let started = crate::accounting::Started::now();
        let own_cpu = weir_core::usage::thread_cpu_ns();
        let meter = weir_core::usage::Meter::default();
        let metered = meter.enter();
        let pruned = AtomicBool::new(false);
        // A trial that panics is a failed trial; the study goes on.
        let run_trial = std::panic::AssertUnwindSafe(|| {
            let log = StepLog::append(&log_path)?;
            let report = |round: &weir_ml::Round| -> bool {
                let Some(asha) = &asha else {
                    return true;
                };
                let at = round.number as i64;
                // Only the rungs' values are judged; computing one (an AUC
                // sorts the validation rows) happens outside the lock.
                let value = rung_value(&rungs, &judged, round);
                let mut history = shared.lock().expect("study lock");
                if let Some(v) = value {
                    history[number].intermediate.insert(at, v);
                }
                let stop = asha.should_stop(&history[number], at, &history);
                if stop {
                    pruned.store(true, Ordering::SeqCst);
                }
                !stop
            };
            let ctx = OpContext {
                step: &step,
                base_dir: &base_dir,
                inputs,
                input_digests: digests,
                outputs_dir: &outputs_dir,
                log: &log,
                run_id: &run_id,
                step_run_id: &step_run_id,
                lineage: None,
                report: Some(&report),
                cache: Some(&cache),
                ranks: None,
                previous_rows: None,
                champion: None,
            };
            ops::run(op, &ctx)
        });
        let outcome = std::panic::catch_unwind(run_trial).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(EngineError::StepFailed(format!(
                "the trial panicked: {what}"
            )))
        });
        drop(metered);
        let cpu_ns = weir_core::usage::thread_cpu_ns().saturating_sub(own_cpu) + meter.cpu_ns();
        // Trials share the process's memory; each is charged the peak.
        let (_, max_rss_bytes) = weir_core::usage::process();
        TrialEnd::Here(TrialResult {
            number,
            outcome,
            pruned: pruned.load(Ordering::SeqCst),
            outputs_dir,
            started,
            usage: weir_core::usage::Usage {
                wall_ms: started.instant.elapsed().as_millis() as u64,
                cpu_ms: cpu_ns / 1_000_000,
                max_rss_bytes,
                ..Default::default()
            },
        })
    })
}

async fn finish_trial(
    job: &StudyJob<'_>,
    spec: &TuneSpec,
    shared: &Arc<Mutex<Vec<Trial>>>,
    r: Running,
    result: TrialEnd,
) -> Result<(), EngineError> {
    let step_name = job.step.name.as_str();
    let (number, state, value, metrics, error, fatal) = match result {
        TrialEnd::Here(result) => {
            let number = result.number;
            let (started, usage) = (result.started, result.usage);
            let (state, value, metrics, outputs, error) = local_outcome(job, spec, result).await?;
            let reserved = crate::accounting::trial_reserved(
                crate::accounting::reserved(job.ctx, job.step),
                r.threads,
                spec.parallel,
            );
            crate::accounting::record(
                job.ctx,
                crate::accounting::Subject {
                    run_id: job.run_id,
                    step_run_id: job.step_run_id,
                    step: job.step,
                    trial: Some(number as i64),
                    billed: false,
                    tracking_run: r.tracking_run.clone(),
                },
                state_name(state),
                started,
                usage,
                reserved,
            )
            .await;
            let trial = {
                let mut history = shared.lock().expect("study lock");
                let t = &mut history[number];
                t.state = state;
                t.value = value;
                t.clone()
            };
            let saved = stored_of(
                &trial,
                Some(&metrics),
                outputs,
                error.clone(),
                r.tracking_run.clone(),
                r.started_at,
                Some(weir_core::now_ms()),
            );
            job.ctx
                .store
                .save_trial(job.run_id, step_name, &saved)
                .await?;
            let fatal = error.clone().filter(|e| e.starts_with(NO_OBJECTIVE));
            (number, state, value, metrics, error, fatal)
        }
        TrialEnd::Remote { number, stored } => {
            let stored = stored?;
            let metrics: Vec<MetricPoint> = serde_json::from_str(&stored.metrics_json)
                .map_err(|e| EngineError::corrupt("study_trials.metrics_json", e))?;
            let ended = trial_of(&stored);
            {
                let mut history = shared.lock().expect("study lock");
                let t = &mut history[number];
                t.state = ended.state;
                t.value = ended.value;
                t.intermediate = ended.intermediate;
            }
            let fatal = stored.error.clone().filter(|e| e.starts_with(NO_OBJECTIVE));
            (
                number,
                ended.state,
                ended.value,
                metrics,
                stored.error,
                fatal,
            )
        }
    };
    if let Some(child) = &r.tracking_run {
        finish_child_run(job.ctx, child, state, &metrics).await?;
    }
    weir_trace::set(
        r.span.as_ref(),
        weir_trace::KeyValue::new("weir.trial.state", state_name(state)),
    );
    if let Some(v) = value {
        weir_trace::set(
            r.span.as_ref(),
            weir_trace::KeyValue::new(format!("weir.{}", spec.metric), v),
        );
    }
    weir_trace::end(r.span.clone(), error.as_deref());
    let best =
        best_trial(&shared.lock().expect("study lock"), spec.goal).map(|b| (b.number, b.value));
    let shown = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.5}"));
    if let Some(message) = fatal {
        return Err(EngineError::StepFailed(message));
    }
    job.log.line(match (&error, state) {
        (Some(e), _) => format!("trial {number}: failed: {e}"),
        (None, TrialState::Pruned) => format!(
            "trial {number}: pruned by ASHA after {} rounds ({} {})",
            final_metric(&metrics, "train.iterations").unwrap_or(f64::NAN),
            spec.metric,
            shown(value)
        ),
        _ => format!(
            "trial {number}: {} {} (best: trial {} with {})",
            spec.metric,
            shown(value),
            best.map_or("-".into(), |b| b.0.to_string()),
            shown(best.and_then(|b| b.1))
        ),
    });
    Ok(())
}

/// What a trial that ran in this process comes to, its outputs stored.
async fn local_outcome(
    job: &StudyJob<'_>,
    spec: &TuneSpec,
    result: TrialResult,
) -> Result<Ended, EngineError> {
    let ended = judge_trial(
        job.ctx,
        spec,
        job.op,
        &job.step.outputs,
        result.number,
        result.outcome,
        result.pruned,
        &result.outputs_dir,
    )
    .await;
    let _ = std::fs::remove_dir_all(result.outputs_dir.parent().unwrap_or(&result.outputs_dir));
    ended
}

/// A finished trial: its state, objective value, metrics, stored outputs
/// (`{name: {digest, kind}}` of a complete trial) and error.
pub(crate) type Ended = (
    TrialState,
    Option<f64>,
    Vec<MetricPoint>,
    Option<String>,
    Option<String>,
);

/// Judges how a trial's op ended: complete (its outputs stored), pruned
/// (stopped by ASHA), or failed; a trial without the objective metric is
/// failed with an error that starts with [`NO_OBJECTIVE`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn judge_trial(
    ctx: &Context,
    spec: &TuneSpec,
    op: BuiltinOp,
    outputs: &[String],
    number: usize,
    outcome: Result<OpOutcome, EngineError>,
    pruned: bool,
    outputs_dir: &Path,
) -> Result<Ended, EngineError> {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            return Ok((
                TrialState::Failed,
                None,
                Vec::new(),
                None,
                Some(e.to_string()),
            ))
        }
    };
    let finals: BTreeMap<String, f64> = outcome
        .metrics
        .iter()
        .filter(|m| m.step == 0)
        .map(|m| (m.key.clone(), m.value))
        .collect();
    Ok(match finals.get(&spec.metric).copied() {
        None => {
            let message = format!(
                "{NO_OBJECTIVE} trial {number} reported no '{}'; {op} reports: {}",
                spec.metric,
                finals.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            (
                TrialState::Failed,
                None,
                outcome.metrics,
                None,
                Some(message),
            )
        }
        Some(value) if pruned => (TrialState::Pruned, Some(value), outcome.metrics, None, None),
        Some(value) => {
            let mut stored_outputs = serde_json::Map::new();
            for name in outputs {
                let stored = ctx.artifacts.put_path(&outputs_dir.join(name)).await?;
                stored_outputs.insert(
                    name.clone(),
                    json!({"digest": stored.digest, "kind": stored.kind.as_str()}),
                );
            }
            (
                TrialState::Complete,
                Some(value),
                outcome.metrics,
                Some(Value::Object(stored_outputs).to_string()),
                None,
            )
        }
    })
}

/// The complete trial with the best objective (the lowest number on ties).
pub fn best_trial(history: &[Trial], goal: Goal) -> Option<&Trial> {
    history
        .iter()
        .filter(|t| t.state == TrialState::Complete && t.value.is_some_and(|v| !v.is_nan()))
        .min_by(|a, b| {
            let key = |t: &Trial| match goal {
                Goal::Minimize => t.value.unwrap_or(f64::INFINITY),
                Goal::Maximize => -t.value.unwrap_or(f64::NEG_INFINITY),
            };
            key(a).total_cmp(&key(b)).then(a.number.cmp(&b.number))
        })
}

/// Puts the best trial's outputs and metrics in the step's place.
async fn conclude(
    job: &StudyJob<'_>,
    spec: &TuneSpec,
    shared: &Arc<Mutex<Vec<Trial>>>,
    started: Instant,
) -> Result<OpOutcome, EngineError> {
    let history = shared.lock().expect("study lock").clone();
    let count = |s: TrialState| history.iter().filter(|t| t.state == s).count();
    let (complete, pruned, failed) = (
        count(TrialState::Complete),
        count(TrialState::Pruned),
        count(TrialState::Failed),
    );
    let stored = job
        .ctx
        .store
        .study_trials(job.run_id, &job.step.name)
        .await?;
    let Some(best) = best_trial(&history, spec.goal) else {
        let first_error = stored
            .iter()
            .find_map(|t| t.error.clone())
            .unwrap_or_else(|| "every trial was pruned".into());
        return Err(EngineError::StepFailed(format!(
            "the study has no complete trial ({failed} failed, {pruned} pruned); first error: {first_error}"
        )));
    };
    let row = stored
        .iter()
        .find(|t| t.number as usize == best.number)
        .ok_or_else(|| EngineError::corrupt("study_trials", "the best trial is not stored"))?;
    let outputs: BTreeMap<String, Value> =
        serde_json::from_str(row.outputs_json.as_deref().unwrap_or("{}"))
            .map_err(|e| EngineError::corrupt("study_trials.outputs_json", e))?;
    for (name, o) in &outputs {
        let digest: Digest = serde_json::from_value(o["digest"].clone())
            .map_err(|e| EngineError::corrupt("study_trials.outputs_json", e))?;
        let kind = o["kind"]
            .as_str()
            .and_then(ArtifactKind::parse)
            .ok_or_else(|| EngineError::corrupt("study_trials.outputs_json", "no kind"))?;
        job.ctx
            .artifacts
            .fetch(&digest, kind, &job.outputs_dir.join(name))
            .await?;
    }
    let metrics: Vec<MetricPoint> = serde_json::from_str(&row.metrics_json)
        .map_err(|e| EngineError::corrupt("study_trials.metrics_json", e))?;
    let mut out = OpOutcome {
        metrics,
        ..Default::default()
    };
    out.metric("tune.trials", history.len() as f64);
    out.metric("tune.complete", complete as f64);
    out.metric("tune.pruned", pruned as f64);
    out.metric("tune.failed", failed as f64);
    out.metric("tune.best_trial", best.number as f64);
    out.metric("tune.best_value", best.value.unwrap_or(f64::NAN));
    out.metric("tune.wall_seconds", started.elapsed().as_secs_f64());
    // Best value so far after each trial: the study's progress curve.
    let mut best_so_far: Option<f64> = None;
    for t in &history {
        if t.state == TrialState::Complete {
            if let Some(v) = t.value {
                best_so_far = Some(match (best_so_far, spec.goal) {
                    (None, _) => v,
                    (Some(b), Goal::Maximize) => b.max(v),
                    (Some(b), Goal::Minimize) => b.min(v),
                });
            }
        }
        if let Some(b) = best_so_far {
            out.metric_at("tune.best_so_far", b, t.number as i64 + 1);
        }
    }
    job.log.line(format!(
        "study: {} trials ({complete} complete, {pruned} pruned, {failed} failed) in {:.1}s; best: trial {} with {} {}",
        history.len(),
        started.elapsed().as_secs_f64(),
        best.number,
        spec.metric,
        best.value.unwrap_or(f64::NAN)
    ));
    Ok(out)
}

/// A trial's final (not per-round) value of `key`.
fn final_metric(metrics: &[MetricPoint], key: &str) -> Option<f64> {
    metrics
        .iter()
        .find(|m| m.step == 0 && m.key == key)
        .map(|m| m.value)
}

/// The rounds (boosting rounds, epochs) a finished trial ran.
pub fn trial_rounds(t: &StoredTrial) -> Option<f64> {
    let metrics: Vec<MetricPoint> = serde_json::from_str(&t.metrics_json).ok()?;
    final_metric(&metrics, "train.iterations")
}

/// A stored trial as samplers and schedulers see it.
pub fn trial_of(t: &StoredTrial) -> Trial {
    Trial {
        number: t.number as usize,
        params: serde_json::from_str(&t.params_json).unwrap_or_default(),
        state: state_of(&t.state),
        value: t.value,
        intermediate: serde_json::from_str::<BTreeMap<i64, f64>>(&t.intermediate_json)
            .unwrap_or_default(),
    }
}

fn stored_of(
    t: &Trial,
    metrics: Option<&[MetricPoint]>,
    outputs_json: Option<String>,
    error: Option<String>,
    tracking_run_id: Option<String>,
    started_at: i64,
    ended_at: Option<i64>,
) -> StoredTrial {
    StoredTrial {
        number: t.number as i64,
        state: state_name(t.state).into(),
        params_json: serde_json::to_string(&t.params).expect("params serialize"),
        value: t.value.filter(|v| v.is_finite()),
        intermediate_json: serde_json::to_string(&t.intermediate).expect("numbers serialize"),
        metrics_json: serde_json::to_string(metrics.unwrap_or(&[])).expect("metrics serialize"),
        outputs_json,
        error,
        tracking_run_id,
        started_at,
        ended_at,
        job: None,
        node: None,
    }
}

async fn start_child_run(
    ctx: &Context,
    parent: &weir_store::tracking::RunInfo,
    step_run_id: &str,
    run_id: &str,
    step: &str,
    trial: &Trial,
) -> Result<String, EngineError> {
    let id = weir_core::new_id();
    ctx.store
        .create_tracking_run(&NewTrackingRun {
            run_id: id.clone(),
            experiment_id: parent.experiment_id,
            name: format!("{step}-trial-{}", trial.number),
            user_id: parent.user_id.clone(),
            start_time: Some(weir_core::now_ms()),
            tags: vec![
                ("mlflow.parentRunId".into(), step_run_id.to_string()),
                ("weir.run".into(), run_id.to_string()),
                ("weir.study".into(), step.to_string()),
                ("weir.trial".into(), trial.number.to_string()),
                ("weir.kind".into(), "trial".into()),
            ],
        })
        .await?;
    let params: Vec<(String, String)> = trial
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    ctx.store.log_batch(&id, &[], &params, &[]).await?;
    Ok(id)
}

async fn finish_child_run(
    ctx: &Context,
    id: &str,
    state: TrialState,
    metrics: &[MetricPoint],
) -> Result<(), EngineError> {
    let points: Vec<weir_store::tracking::Metric> = metrics
        .iter()
        .filter(|m| m.value.is_finite())
        .map(|m| weir_store::tracking::Metric {
            key: m.key.clone(),
            value: m.value,
            timestamp: m.ts,
            step: m.step,
        })
        .collect();
    for chunk in points.chunks(1000) {
        ctx.store.log_batch(id, chunk, &[], &[]).await?;
    }
    let status = match state {
        TrialState::Complete => "FINISHED",
        TrialState::Pruned => "KILLED",
        _ => "FAILED",
    };
    ctx.store
        .update_tracking_run(id, Some(status), Some(weir_core::now_ms()), None)
        .await?;
    Ok(())
}

/// Parameter values as text, for tables.
pub fn show_params(params_json: &str) -> String {
    serde_json::from_str::<BTreeMap<String, ParamValue>>(params_json)
        .map(|p| {
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(objective: &str, scheduler: &str) -> Result<TuneSpec, String> {
        let yaml = format!(
            "version: 1\nname: t\nsteps:\n  data:\n    uses: weir/ingest\n    with: {{ path: d.csv }}\n  train:\n    uses: weir/train-gbdt\n    inputs: {{ train: data.table }}\n    with: {{ target: y, num_rounds: 300 }}\n    tune:\n      space:\n        learning_rate: loguniform(0.01, 0.3)\n      objective: {objective}\n      trials: 4\n      scheduler: {scheduler}\n"
        );
        let pipeline = weir_core::pipeline::parse(Path::new("p.yaml"), &yaml, &[]).unwrap();
        let step = pipeline.steps.iter().find(|s| s.name == "train").unwrap();
        TuneSpec::parse(step, BuiltinOp::TrainGbdt)
    }

    #[test]
    fn asha_judges_the_objective_when_a_round_can_compute_it() {
        let s = spec("{ metric: valid.auc, goal: maximize }", "asha").unwrap();
        assert_eq!(s.asha_metric, "valid.auc");
        let asha = s.asha.unwrap();
        assert_eq!((asha.goal, asha.max_resource), (Goal::Maximize, 300));
        // An objective only known at the end: ASHA falls back to the loss.
        let s = spec("{ metric: train.fit_seconds, goal: minimize }", "asha").unwrap();
        assert_eq!(s.asha_metric, "valid.loss");
        assert_eq!(s.asha.unwrap().goal, Goal::Minimize);
        // Named explicitly, a metric brings its own direction.
        let s = spec(
            "{ metric: valid.auc, goal: maximize }",
            "{ type: asha, metric: valid.log_loss }",
        )
        .unwrap();
        assert_eq!(s.asha_metric, "valid.log_loss");
        assert_eq!(s.asha.unwrap().goal, Goal::Minimize);
        let err = spec(
            "{ metric: valid.auc, goal: maximize }",
            "{ type: asha, metric: train.loss }",
        )
        .unwrap_err();
        assert!(err.starts_with("tune.scheduler.metric:"), "{err}");
        // Rungs at 10, 30, 90 and 270: up to four brackets and one without.
        let s = spec(
            "{ metric: valid.auc, goal: maximize }",
            "{ type: asha, brackets: 2 }",
        )
        .unwrap();
        assert_eq!(s.asha.unwrap().brackets, 2);
        let err = spec(
            "{ metric: valid.auc, goal: maximize }",
            "{ type: asha, brackets: 6 }",
        )
        .unwrap_err();
        assert!(err.starts_with("tune.scheduler.brackets:"), "{err}");
        assert!(err.contains("between 1 and 5"), "{err}");
    }

    #[test]
    fn every_per_round_metric_is_one_a_trainer_reports() {
        let y = [0.0, 1.0, 1.0, 0.0];
        let p = [0.2, 0.7, 0.6, 0.4];
        let mut reported: Vec<String> = weir_ml::metrics::classification(&y, &p)
            .into_keys()
            .chain(weir_ml::metrics::regression(&y, &p).into_keys())
            .collect();
        reported.push("loss".into());
        for name in [
            "loss",
            "log_loss",
            "rmse",
            "mae",
            "auc",
            "accuracy",
            "precision",
            "recall",
            "f1",
            "r2",
        ] {
            assert!(per_round_metric(&format!("valid.{name}")).is_some());
            assert!(reported.iter().any(|r| r == name), "{name}");
        }
        assert!(per_round_metric("valid.rows").is_none());
        assert!(per_round_metric("auc").is_none());
    }
}
