//! The Ray executor: each attempt of a step is a Ray job, submitted through
//! the Jobs REST API of the cluster's dashboard, whose entrypoint is
//! `weir exec <step-run-id>`. Ray places the job on a node with the step's
//! resources (`entrypoint_num_cpus`, `_num_gpus`, `_memory`, custom
//! resources); the step runtime there reads its task from the metadata
//! store and writes its outcome back, exactly as under the local executor.
//! The runner stays the scheduler of record: it decides what runs when,
//! records which job and node ran each attempt, and stops the jobs it gives
//! up on. Nothing of Weir's runs on the cluster but `weir exec`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;
use weir_core::pipeline::{ExecutorKind, Pipeline, Resources, SpecError, SpecIssue, Step};
use weir_store::Store;

use crate::{Context, EngineError};

/// How long the cluster may stay unreachable before a running attempt is
/// given up as lost with it (the dashboard restarting takes a few seconds).
const CLUSTER_LOST_AFTER: Duration = Duration::from_secs(15);
/// How often a job still waiting for resources is checked against the
/// nodes alive now: a node that left may have been the only one it fits.
const PENDING_RECHECK: Duration = Duration::from_secs(10);

/// A Ray cluster, reached through its dashboard's HTTP API.
pub struct RayCluster {
    address: String,
    client: reqwest::Client,
    /// The most CPUs one live node offered at the start of the run: a
    /// study's implicit request is capped by it.
    pub largest_cpu: f64,
}

/// A node of the cluster, with what it offers.
#[derive(Clone, Debug, Deserialize)]
pub struct RayNode {
    pub node_id: String,
    pub node_ip: String,
    pub state: String,
    pub resources_total: BTreeMap<String, f64>,
}

/// What the Jobs API says of one job.
#[derive(Clone, Debug, Deserialize)]
pub struct JobDetails {
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub driver_node_id: Option<String>,
    #[serde(default)]
    pub driver_exit_code: Option<i64>,
    #[serde(default)]
    pub submission_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl JobDetails {
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "SUCCEEDED" | "FAILED" | "STOPPED")
    }
}

impl RayCluster {
    /// Connects to the cluster at `address` (its dashboard, e.g.
    /// `http://head:8265`) and checks that it answers as a Ray cluster.
    pub async fn connect(address: &str) -> Result<RayCluster, EngineError> {
        let address = address.trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| EngineError::Executor(format!("cannot build an HTTP client: {e}")))?;
        let unreachable = |why: String| {
            EngineError::Executor(format!(
                "cannot reach the Ray cluster at {address}: {why}\n  hint: ray_address (WEIR_RAY_ADDRESS) is the dashboard's address, e.g. http://HEAD:8265; is the head node up? (`ray status` on it)"
            ))
        };
        let version: serde_json::Value = client
            .get(format!("{address}/api/version"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?
            .error_for_status()
            .map_err(|e| unreachable(e.to_string()))?
            .json()
            .await
            .map_err(|e| unreachable(format!("it does not answer as a Ray dashboard ({e})")))?;
        tracing::debug!(%address, ray = %version["ray_version"], "connected to the Ray cluster");
        Ok(RayCluster {
            address,
            client,
            largest_cpu: 0.0,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// GETs `path` of the dashboard as JSON; `what` names it in errors.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, String> {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .map_err(|e| error_chain(&e))?
            .error_for_status()
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| format!("unexpected {what}: {e}"))
    }

    /// The nodes alive now.
    pub async fn alive_nodes(&self) -> Result<Vec<RayNode>, String> {
        #[derive(Deserialize)]
        struct Page {
            data: Data,
        }
        #[derive(Deserialize)]
        struct Data {
            result: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            result: Vec<RayNode>,
        }
        let page: Page = self
            .get_json("/api/v0/nodes?limit=10000", "node list")
            .await?;
        Ok(page
            .data
            .result
            .result
            .into_iter()
            .filter(|n| n.state == "ALIVE")
            .collect())
    }

    pub(crate) async fn submit(&self, body: &serde_json::Value) -> Result<(), String> {
        // A head whose job agent is still starting (or restarting) answers
        // "No available agent"; that passes within seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = self
                .client
                .post(format!("{}/api/jobs/", self.address))
                .json(body)
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            if response.status().is_success() {
                return Ok(());
            }
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if text.contains("No available agent") && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            return Err(format!(
                "the cluster refused the job ({status}): {}",
                last_lines(&text, 5)
            ));
        }
    }

    pub async fn job(&self, id: &str) -> Result<JobDetails, String> {
        let response = self
            .client
            .get(format!("{}/api/jobs/{id}", self.address))
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("job {id}: {status} {}", last_lines(&text, 3)));
        }
        response
            .json()
            .await
            .map_err(|e| format!("unexpected job details: {e}"))
    }

    /// Every job the cluster knows of (running and ended).
    async fn jobs(&self) -> Result<Vec<JobDetails>, String> {
        self.get_json("/api/jobs/", "job list").await
    }

    /// A job's output (its driver's stdout and stderr).
    pub(crate) async fn logs(&self, id: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let logs: Logs = self
            .get_json(&format!("/api/jobs/{id}/logs"), "job logs")
            .await?;
        Ok(logs.logs)
    }

    /// Waits (up to 20 s) for the study's own job `job` to end, so it
    /// submits no more trials, then stops the trials it left running.
    pub(crate) async fn stop_trial_jobs_after(&self, job: &str, step_run_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.job(job).await {
                Ok(d) if !d.is_terminal() => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => break,
            }
        }
        self.stop_trial_jobs(step_run_id).await;
    }

    /// Stops the trial jobs a study of `step_run_id` left running (its
    /// runtime died or was stopped before it could stop them itself).
    pub(crate) async fn stop_trial_jobs(&self, step_run_id: &str) {
        let jobs = match self.jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(%step_run_id, error = %e, "cannot list the Ray jobs");
                return;
            }
        };
        for j in jobs {
            let of_step = j.metadata.as_ref().is_some_and(|m| {
                m.get("weir_step_run_id").map(String::as_str) == Some(step_run_id)
                    && m.contains_key("weir_trial")
            });
            if let (true, false, Some(id)) = (of_step, j.is_terminal(), &j.submission_id) {
                match self.stop(id).await {
                    Ok(()) => tracing::info!(job = %id, "stopped a trial's Ray job"),
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "cannot stop a trial's Ray job")
                    }
                }
            }
        }
    }

    /// Asks Ray to stop a job (SIGTERM to its entrypoint, SIGKILL after
    /// Ray's grace period). Stopping a finished job is not an error.
    pub async fn stop(&self, id: &str) -> Result<(), String> {
        let response = self
            .client
            .post(format!("{}/api/jobs/{id}/stop", self.address))
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(format!("cannot stop job {id}: {}", response.status()))
    }
}

/// reqwest's top-level error hides the cause (connection refused, timed out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A plan the runner hands a step runtime on a Ray node as JSON in `var`
/// (a study's spread of trials, a distributed step's group): absent or
/// empty is `None`.
pub(crate) fn plan_from_env<T: serde::de::DeserializeOwned>(
    var: &str,
) -> Result<Option<T>, EngineError> {
    match std::env::var(var) {
        Ok(json) if !json.is_empty() => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| EngineError::Executor(format!("{var} is not valid: {e}"))),
        _ => Ok(None),
    }
}

/// Where `step` runs: its own `executor:`, else the configured one.
pub fn executor_of(ctx: &Context, step: &Step) -> ExecutorKind {
    step.executor
        .or_else(|| ctx.config.executor().ok())
        .unwrap_or(ExecutorKind::Local)
}

/// What a step asks Ray for, in Ray's resource names. A study's implicit
/// CPU request is capped by the largest node, as it is by the machine
/// under the local executor.
pub fn demand(step: &Step, largest_cpu: f64) -> BTreeMap<String, f64> {
    // Its trials ask for the resources; the study itself only waits on them.
    if trial_demand(step).is_some() {
        return BTreeMap::from([("CPU".to_string(), 0.0)]);
    }
    // The job is rank 0: one worker's share; the others are a group's.
    if let Some(bundle) = group_bundle(step) {
        return bundle;
    }
    let Resources {
        cpu,
        memory_bytes,
        gpu,
    } = step.request(&Resources {
        cpu: largest_cpu.max(1.0),
        memory_bytes: 0,
        gpu: 0,
    });
    let mut d = BTreeMap::from([("CPU".to_string(), cpu)]);
    if gpu > 0 {
        d.insert("GPU".into(), f64::from(gpu));
    }
    if memory_bytes > 0 {
        d.insert("memory".into(), memory_bytes as f64);
    }
    for (k, v) in &step.custom_resources {
        d.insert(k.clone(), *v);
    }
    d
}

/// What each trial of a study asks for when the study spreads its trials
/// over the cluster as jobs of their own (`parallel` above 1 on Ray): the
/// step's `resources:` per trial (one CPU unless it says otherwise).
pub fn trial_demand(step: &Step) -> Option<BTreeMap<String, f64>> {
    let parallel = step
        .tune
        .as_ref()?
        .spec
        .get("parallel")
        .and_then(serde_json::Value::as_u64)?;
    if parallel < 2 || !matches!(step.action, weir_core::pipeline::Action::Builtin(_)) {
        return None;
    }
    Some(one_share(step))
}

/// The step's `resources:` as one share (a trial's, a worker's), in Ray's
/// names.
fn one_share(step: &Step) -> BTreeMap<String, f64> {
    let r = step.resources;
    let mut d = BTreeMap::from([("CPU".to_string(), r.cpu)]);
    if r.gpu > 0 {
        d.insert("GPU".into(), f64::from(r.gpu));
    }
    if r.memory_bytes > 0 {
        d.insert("memory".into(), r.memory_bytes as f64);
    }
    for (k, v) in &step.custom_resources {
        d.insert(k.clone(), *v);
    }
    d
}

/// What each worker of a distributed step asks for on Ray, where its
/// workers are a placement group: one bundle of the step's `resources:`
/// (per worker, one CPU unless it says otherwise).
pub fn group_bundle(step: &Step) -> Option<BTreeMap<String, f64>> {
    group_plan(step).map(|_| one_share(step))
}

/// How many processes a step runs as and how Ray places them: a
/// distributed `run:` step's `distributed:` block, or a built-in trainer's
/// `with.workers` (packed, as Ray Train packs its workers). `None` for one
/// process.
pub fn group_plan(step: &Step) -> Option<(u32, weir_core::pipeline::Placement)> {
    let workers = step.workers();
    (workers > 1).then(|| {
        (
            workers,
            step.distributed
                .as_ref()
                .map_or(weir_core::pipeline::Placement::Pack, |d| d.placement),
        )
    })
}

/// Whether the live nodes have room for `workers` bundles (rank 0's and
/// the group's) as `placement` puts them: whole bundles over all nodes for
/// PACK and SPREAD, all on one node for STRICT_PACK, and for STRICT_SPREAD
/// the group's on nodes of their own (rank 0 may share one).
fn group_fits(
    nodes: &[RayNode],
    bundle: &BTreeMap<String, f64>,
    workers: u32,
    placement: weir_core::pipeline::Placement,
) -> bool {
    use weir_core::pipeline::Placement;
    let n = f64::from(workers);
    match placement {
        Placement::StrictPack => {
            let all: BTreeMap<String, f64> =
                bundle.iter().map(|(k, v)| (k.clone(), v * n)).collect();
            nodes.iter().any(|node| fits(node, &all))
        }
        Placement::StrictSpread => {
            nodes.iter().filter(|node| fits(node, bundle)).count() + 1 >= workers as usize
        }
        // Whole bundles per node: half a CPU here and half there is no room.
        Placement::Pack | Placement::Spread => {
            nodes
                .iter()
                .map(|node| bundle_count(node, bundle))
                .sum::<f64>()
                >= n
        }
    }
}

/// How many whole bundles one node holds.
fn bundle_count(node: &RayNode, bundle: &BTreeMap<String, f64>) -> f64 {
    bundle
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (node.resources_total.get(k).copied().unwrap_or(0.0) / v + 1e-9).floor())
        .fold(f64::INFINITY, f64::min)
}

fn fits(node: &RayNode, demand: &BTreeMap<String, f64>) -> bool {
    demand
        .iter()
        .all(|(k, v)| node.resources_total.get(k).copied().unwrap_or(0.0) + 1e-9 >= *v)
}

fn largest_cpu(nodes: &[RayNode]) -> f64 {
    nodes
        .iter()
        .filter_map(|n| n.resources_total.get("CPU").copied())
        .fold(0.0, f64::max)
}

/// The nodes and what each offers, for messages: `127.0.0.3 (CPU 1, memory 1.0GiB, spot 1)`.
fn describe_capacity(nodes: &[RayNode]) -> String {
    if nodes.is_empty() {
        return "the cluster has no live node".into();
    }
    let describe = |(k, v): (&String, &f64)| match k.as_str() {
        "memory" | "object_store_memory" => {
            format!("{k} {:.1}GiB", v / (1u64 << 30) as f64)
        }
        _ => format!("{k} {v}"),
    };
    nodes
        .iter()
        .map(|n| {
            let offers: Vec<String> = n
                .resources_total
                .iter()
                .filter(|(k, _)| !k.starts_with("node:") && k.as_str() != "object_store_memory")
                .map(describe)
                .collect();
            format!("{} ({})", n.node_ip, offers.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn describe_demand(demand: &BTreeMap<String, f64>) -> String {
    demand
        .iter()
        .map(|(k, v)| match k.as_str() {
            "memory" => format!("memory {:.1}GiB", v / (1u64 << 30) as f64),
            _ => format!("{k} {v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks, before anything runs, that the steps meant for Ray can run
/// there: a cluster is configured and answers, the stores are ones its
/// nodes can reach, and every step fits on some live node. Returns the
/// connected cluster, or `None` when no step runs on Ray.
pub async fn preflight(
    ctx: &Context,
    pipeline: &Pipeline,
) -> Result<Option<Arc<RayCluster>>, EngineError> {
    let on_ray: Vec<&Step> = pipeline
        .steps
        .iter()
        .filter(|s| executor_of(ctx, s) == ExecutorKind::Ray)
        .collect();
    if on_ray.is_empty() {
        return Ok(None);
    }
    let names = on_ray
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(address) = ctx.config.ray_address() else {
        return Err(EngineError::Executor(format!(
            "steps {names} run on Ray, but no Ray cluster is configured\n  hint: set ray_address in weir.toml or WEIR_RAY_ADDRESS (the dashboard, e.g. http://HEAD:8265), or run them with executor: local"
        )));
    };
    let mut problems = Vec::new();
    if ctx.config.db().starts_with("sqlite:") {
        problems.push(format!(
            "the metadata store is a SQLite file on this machine ({}), which the step runtimes on Ray's nodes cannot share\n  hint: set db (WEIR_DB) to postgres://USER@HOST:PORT/DB",
            ctx.config.db()
        ));
    }
    let artifacts = ctx.config.artifacts();
    if !artifacts.contains("://") || artifacts.starts_with("file://") {
        problems.push(format!(
            "the artifact store is a directory on this machine ({artifacts}), which Ray's nodes cannot read or write\n  hint: set artifacts (WEIR_ARTIFACTS) to s3://BUCKET/PREFIX"
        ));
    }
    if !problems.is_empty() {
        return Err(EngineError::Executor(format!(
            "steps {names} run on Ray, but {}",
            problems.join("\n  and ")
        )));
    }
    let mut cluster = RayCluster::connect(address).await?;
    let nodes = cluster.alive_nodes().await.map_err(|e| {
        EngineError::Executor(format!(
            "cannot list the nodes of the Ray cluster at {address}: {e}"
        ))
    })?;
    let largest = largest_cpu(&nodes);
    cluster.largest_cpu = largest;
    let mut issues = Vec::new();
    for step in &on_ray {
        let d = trial_demand(step).unwrap_or_else(|| demand(step, largest));
        if !nodes.iter().any(|n| fits(n, &d)) {
            issues.push(SpecIssue {
                line: Some(step.line),
                field: format!("steps.{}.resources", step.name),
                message: format!(
                    "no node of the Ray cluster at {address} offers {}; its nodes: {}",
                    describe_demand(&d),
                    describe_capacity(&nodes)
                ),
                hint: Some(
                    "lower the request, add a node that offers it (`ray start --resources ...`), or run the step with executor: local"
                        .into(),
                ),
            });
            continue;
        }
        if let (Some(bundle), Some((workers, placement))) = (group_bundle(step), group_plan(step)) {
            if !group_fits(&nodes, &bundle, workers, placement) {
                let field = match step.distributed {
                    Some(_) => "distributed",
                    None => "with.workers",
                };
                issues.push(SpecIssue {
                    line: Some(step.line),
                    field: format!("steps.{}.{field}", step.name),
                    message: format!(
                        "the Ray cluster at {address} has no room for {workers} workers of {} placed {}; its nodes: {}",
                        describe_demand(&bundle),
                        placement.ray_strategy(),
                        describe_capacity(&nodes)
                    ),
                    hint: Some(
                        "lower the workers or their resources, choose another placement, or add nodes"
                            .into(),
                    ),
                });
            }
        }
    }
    SpecError::check(&pipeline.file, issues)?;
    Ok(Some(Arc::new(cluster)))
}

/// Jobs being stopped because the runner gave up on them (cancelled, timed
/// out): the runner waits for these before it finishes the run.
#[derive(Clone, Default)]
pub(crate) struct Stopping(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl Stopping {
    pub(crate) fn take(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.0.lock().expect("stop list lock"))
    }
}

/// Stops its job when dropped while armed: the attempt was cancelled or
/// hit its timeout, and the work must not go on on the cluster.
pub(crate) struct StopOnDrop {
    pub(crate) cluster: Arc<RayCluster>,
    pub(crate) job: String,
    pub(crate) armed: bool,
    pub(crate) stopping: Stopping,
    /// The step run whose trial jobs go too, once the job is stopped.
    pub(crate) trials_of: Option<String>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cluster, job) = (self.cluster.clone(), self.job.clone());
        let trials_of = self.trials_of.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let task = handle.spawn(async move {
                match cluster.stop(&job).await {
                    Ok(()) => tracing::info!(%job, "stopped the Ray job"),
                    Err(e) => tracing::warn!(%job, error = %e, "cannot stop the Ray job"),
                }
                if let Some(step_run_id) = trials_of {
                    cluster.stop_trial_jobs_after(&job, &step_run_id).await;
                }
            });
            self.stopping.0.lock().expect("stop list lock").push(task);
        }
    }
}

/// How often an attempt asks Ray about its job (its node, whether it died).
const JOB_POLL: Duration = Duration::from_millis(250);

/// Returns once step run `id`'s outcome is announced, or when announcements
/// may have been missed (the receiver lagged or closed: the caller then reads
/// the record, and a closed one is dropped so the caller polls instead).
/// Never returns without a receiver.
async fn announced(ended: &mut Option<tokio::sync::broadcast::Receiver<String>>, id: &str) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(receiver) = ended else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(ended_id) if ended_id == id => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => {
                *ended = None;
                return;
            }
        }
    }
}

/// How a Ray attempt ended, when the step runtime did not record it.
pub(crate) struct RayFailure {
    pub message: String,
    /// The node running it died: a preemption, retried on another node.
    pub lost_node: bool,
}

/// One attempt of a step as a Ray job.
pub(crate) struct RayAttempt {
    pub cluster: Arc<RayCluster>,
    pub store: Store,
    pub step_run_id: String,
    pub run_id: String,
    pub step: String,
    /// The `weir` binary on the nodes.
    pub weir: String,
    pub env: BTreeMap<String, String>,
    pub demand: BTreeMap<String, f64>,
    pub stopping: Stopping,
    /// The step is a study whose trials run as Ray jobs of their own.
    pub trials: bool,
    /// Ids of step runs whose outcome was just recorded; without it, the
    /// attempt polls its record often.
    pub ended: Option<tokio::sync::broadcast::Receiver<String>>,
}

impl RayAttempt {
    /// Runs the attempt ([`RayAttempt::follow`]); a study's trial jobs that
    /// outlive it (its runtime died before stopping them) are stopped after.
    pub(crate) async fn run(self) -> Result<Option<JoinHandle<()>>, RayFailure> {
        if !self.trials {
            return self.follow().await;
        }
        let (cluster, id) = (self.cluster.clone(), self.step_run_id.clone());
        match self.follow().await {
            Ok(Some(waiter)) => Ok(Some(tokio::spawn(async move {
                let _ = waiter.await;
                cluster.stop_trial_jobs(&id).await;
            }))),
            result => {
                cluster.stop_trial_jobs(&id).await;
                result
            }
        }
    }

    /// Submits the job and follows it until the step's outcome is recorded
    /// or the job ends. Like the local executor, returns early once the
    /// runtime recorded the outcome, with a task that waits for the job to
    /// end (it is left to finish, not stopped).
    pub(crate) async fn follow(mut self) -> Result<Option<JoinHandle<()>>, RayFailure> {
        let fail = |message: String| RayFailure {
            message,
            lost_node: false,
        };
        let job = format!("weir-{}-{}", self.step_run_id, weir_core::now_ms());
        let entrypoint = entrypoint(&self.weir, &["exec", &self.step_run_id], &job)
            .map_err(|e| fail(e.to_string()))?;
        let body = job_request(
            entrypoint,
            &job,
            &self.env,
            json!({
                "weir_run_id": self.run_id,
                "weir_step": self.step,
                "weir_step_run_id": self.step_run_id,
            }),
            &self.demand,
        );
        // Recorded before the submission: a runner that dies right after
        // submitting still leaves the job findable (and stoppable) by reapers.
        self.store
            .set_step_job(&self.step_run_id, "ray", self.cluster.address(), &job)
            .await
            .map_err(|e| fail(format!("cannot record the Ray job: {e}")))?;
        self.cluster.submit(&body).await.map_err(|e| {
            fail(format!(
                "cannot submit the step to the Ray cluster at {}: {e}",
                self.cluster.address()
            ))
        })?;
        let mut guard = StopOnDrop {
            cluster: self.cluster.clone(),
            job: job.clone(),
            armed: true,
            stopping: self.stopping.clone(),
            trials_of: self.trials.then(|| self.step_run_id.clone()),
        };
        tracing::info!(step = %self.step, %job, "submitted to Ray");

        let mut node_recorded = false;
        let mut unreachable_since: Option<Instant> = None;
        let mut pending_checked = Instant::now();
        let mut next_job_poll = Instant::now();
        let d = loop {
            // Woken when the runtime announces the outcome; the poll is for
            // what an announcement misses (a lost listener connection). Without
            // announcements, a primary-key read every 20 ms is cheap enough to
            // keep the runner's delay after a step ends at ~10 ms on average.
            let poll = match self.ended {
                Some(_) => JOB_POLL,
                None => Duration::from_millis(20),
            };
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = announced(&mut self.ended, &self.step_run_id) => {}
            }
            // The runtime's own record is the outcome; Ray's view of the job
            // is only needed when the runtime could not write one.
            match self.store.step_run(&self.step_run_id).await {
                Ok(record) if record.status.is_terminal() => {
                    guard.armed = false;
                    let (cluster, job, store, id) = (
                        self.cluster.clone(),
                        job.clone(),
                        self.store.clone(),
                        self.step_run_id.clone(),
                    );
                    let node = (!node_recorded).then_some((store, id));
                    return Ok(Some(tokio::spawn(async move {
                        finish_quietly(&cluster, &job, node).await;
                    })));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(step = %self.step, error = %e, "cannot read the step run"),
            }
            if Instant::now() < next_job_poll {
                continue;
            }
            next_job_poll = Instant::now() + JOB_POLL;
            match self.cluster.job(&job).await {
                Ok(d) => {
                    unreachable_since = None;
                    if !node_recorded {
                        if let Some(node) = &d.driver_node_id {
                            if let Err(e) = self.store.set_step_node(&self.step_run_id, node).await
                            {
                                tracing::warn!(step = %self.step, error = %e, "cannot record the node");
                            }
                            node_recorded = true;
                        }
                    }
                    if d.status == "PENDING" && pending_checked.elapsed() > PENDING_RECHECK {
                        pending_checked = Instant::now();
                        if let Ok(nodes) = self.cluster.alive_nodes().await {
                            if !nodes.iter().any(|n| fits(n, &self.demand)) {
                                return Err(fail(format!(
                                    "no live node of the Ray cluster offers {} any more; its nodes: {}",
                                    describe_demand(&self.demand),
                                    describe_capacity(&nodes)
                                )));
                            }
                        }
                    }
                    if d.is_terminal() {
                        break d;
                    }
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > CLUSTER_LOST_AFTER {
                        return Err(fail(format!(
                            "lost the Ray cluster at {} while the step ran as job {job}: {e}\n  hint: once the cluster is back (or with executor: local), `weir resume` continues the run",
                            self.cluster.address()
                        )));
                    }
                }
            }
        };
        guard.armed = false;
        // The runtime may have recorded the outcome as the job ended.
        if let Ok(record) = self.store.step_run(&self.step_run_id).await {
            if record.status.is_terminal() {
                return Ok(None);
            }
        }
        match ended_unrecorded(&d, &job, "the step") {
            None => Ok(None),
            Some(failure) => Err(failure),
        }
    }
}

/// The Jobs API request for one job: `entrypoint` with `env`, placed by
/// `demand` (Ray's names: CPU, GPU, memory, custom resources).
pub(crate) fn job_request(
    entrypoint: String,
    job: &str,
    env: &BTreeMap<String, String>,
    metadata: serde_json::Value,
    demand: &BTreeMap<String, f64>,
) -> serde_json::Value {
    let mut body = json!({
        "entrypoint": entrypoint,
        "submission_id": job,
        // The same for the run's steps that ask alike: Ray sets it up once.
        "runtime_env": { "env_vars": env },
        "metadata": metadata,
    });
    let mut custom = serde_json::Map::new();
    for (k, v) in demand {
        match k.as_str() {
            "CPU" => body["entrypoint_num_cpus"] = json!(v),
            "GPU" => body["entrypoint_num_gpus"] = json!(v),
            "memory" => body["entrypoint_memory"] = json!(*v as u64),
            _ => {
                custom.insert(k.clone(), json!(v));
            }
        }
    }
    if !custom.is_empty() {
        body["entrypoint_resources"] = serde_json::Value::Object(custom);
    }
    body
}

/// Why a job that ended without recording its outcome failed (`None`: Ray
/// says it succeeded). `what` names the work, for the message.
pub(crate) fn ended_unrecorded(d: &JobDetails, job: &str, what: &str) -> Option<RayFailure> {
    let message = d.message.clone().unwrap_or_default();
    match (d.status.as_str(), d.error_type.as_deref()) {
        ("SUCCEEDED", _) => None,
        ("FAILED", Some("JOB_SUPERVISOR_ACTOR_DIED")) => Some(RayFailure {
            message: format!(
                "the Ray node {} running job {job} was lost (preempted): {}",
                d.driver_node_id.as_deref().unwrap_or("?"),
                message.lines().next().unwrap_or("")
            ),
            lost_node: true,
        }),
        (status, _) => Some(RayFailure {
            message: match status {
                "STOPPED" => format!("the Ray job {job} was stopped"),
                _ => format!(
                    "the Ray job {job} running {what} failed{}: {}",
                    d.driver_exit_code
                        .map(|c| format!(" with exit code {c}"))
                        .unwrap_or_default(),
                    last_lines(&message, 12)
                ),
            },
            lost_node: false,
        }),
    }
}

/// Waits (a while) for a job whose step is recorded to end on its own;
/// stops it if it lingers, so no work outlives its run. Records the job's
/// node on the step run if the step ended before it was seen.
async fn finish_quietly(cluster: &RayCluster, job: &str, mut record_node: Option<(Store, String)>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let details = cluster.job(job).await;
        if let (
            Ok(JobDetails {
                driver_node_id: Some(node),
                ..
            }),
            Some((store, id)),
        ) = (&details, &record_node)
        {
            if let Err(e) = store.set_step_node(id, node).await {
                tracing::warn!(%job, error = %e, "cannot record the node");
            }
            record_node = None;
        }
        match details {
            Ok(d) if d.is_terminal() => return,
            Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let _ = cluster.stop(job).await;
}

/// Stops the Ray job of a step whose runner is gone, and its trials' jobs
/// (best effort: the cluster may be gone too).
pub async fn stop_orphaned_job(address: &str, job: &str, step_run_id: &str) {
    match RayCluster::connect(address).await {
        Ok(cluster) => {
            if let Err(e) = cluster.stop(job).await {
                tracing::warn!(%job, error = %e, "cannot stop an orphaned Ray job");
            }
            // A study's trials, if it ran them as jobs of their own.
            cluster.stop_trial_jobs_after(job, step_run_id).await;
        }
        Err(e) => tracing::warn!(%job, error = %e, "cannot stop an orphaned Ray job"),
    }
}

/// A job's entrypoint: `weir ARGS...` as a shell command line (Ray runs it
/// with a shell), fenced by the job it runs as.
pub(crate) fn entrypoint(weir: &str, args: &[&str], job: &str) -> Result<String, EngineError> {
    let quote = |words: &[&str]| {
        shlex::try_join(words.iter().copied()).map_err(|e| {
            EngineError::Executor(format!("cannot write the Ray entrypoint for {weir}: {e}"))
        })
    };
    Ok(format!(
        "export {}={}; exec {}",
        crate::exec::FENCE_VAR,
        quote(&[job])?,
        quote(&[&[weir], args].concat())?
    ))
}

/// The environment a step runtime on a Ray node gets: the runner's
/// configuration (stores, tracking), the object store's endpoint and
/// credentials when they come from the environment, and a scratch home of
/// the node's own.
pub(crate) fn job_env(
    ctx: &Context,
    demand: &BTreeMap<String, f64>,
    extra: &[(&'static str, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = ctx
        .config
        .child_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // The runner's home is a path on its machine; scratch space is the node's.
    env.insert("WEIR_HOME".into(), "/tmp/weir-ray".into());
    // What the step may use is what Ray granted it, not the runner's machine
    // (a study divides these CPUs between its trials).
    // A study that only follows its trials' jobs asks Ray for no CPU; it
    // still needs one to run on.
    let cpu = Some(demand["CPU"]).filter(|c| *c > 0.0).unwrap_or(1.0);
    env.insert("WEIR_CPUS".into(), cpu.to_string());
    env.insert(
        "WEIR_GPUS".into(),
        demand.get("GPU").map_or(0, |g| *g as u64).to_string(),
    );
    if let Some(memory) = demand.get("memory") {
        env.insert("WEIR_MEMORY".into(), (*memory as u64).to_string());
    }
    for var in [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ALLOW_HTTP",
        "WEIR_LOG",
        // The runtime on the node exports its own spans, where the runner does.
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ] {
        if let Ok(v) = std::env::var(var) {
            env.insert(var.into(), v);
        }
    }
    for (k, v) in extra {
        env.insert(k.to_string(), v.clone());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str, resources: &[(&str, f64)]) -> RayNode {
        RayNode {
            node_id: ip.into(),
            node_ip: ip.into(),
            state: "ALIVE".into(),
            resources_total: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_step_fits_only_a_node_that_offers_all_it_asks() {
        let nodes = [
            node("a", &[("CPU", 2.0), ("memory", 4e9)]),
            node("b", &[("CPU", 1.0), ("spot", 1.0)]),
        ];
        let ask = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        assert!(nodes.iter().any(|n| fits(n, &ask(&[("CPU", 2.0)]))));
        assert!(nodes
            .iter()
            .any(|n| fits(n, &ask(&[("CPU", 1.0), ("spot", 1.0)]))));
        // Two CPUs and spot: each node has one but not both.
        assert!(!nodes
            .iter()
            .any(|n| fits(n, &ask(&[("CPU", 2.0), ("spot", 1.0)]))));
        assert!(!nodes.iter().any(|n| fits(n, &ask(&[("GPU", 1.0)]))));
        let capacity = describe_capacity(&nodes);
        assert_eq!(capacity, "a (CPU 2, memory 3.7GiB); b (CPU 1, spot 1)");
    }

    #[test]
    fn a_group_fits_only_as_its_placement_places_it() {
        use weir_core::pipeline::Placement;
        let nodes = [
            node("127.0.0.3", &[("CPU", 2.0)]),
            node("127.0.0.4", &[("CPU", 1.5)]),
        ];
        let one_cpu = BTreeMap::from([("CPU".to_string(), 1.0)]);
        // Three whole CPUs: half of one here and half there is no bundle.
        assert!(group_fits(&nodes, &one_cpu, 3, Placement::Pack));
        assert!(!group_fits(&nodes, &one_cpu, 4, Placement::Spread));
        assert!(group_fits(&nodes, &one_cpu, 2, Placement::StrictPack));
        assert!(!group_fits(&nodes, &one_cpu, 3, Placement::StrictPack));
        // Rank 0 may share a node with one of the group's bundles.
        assert!(group_fits(&nodes, &one_cpu, 3, Placement::StrictSpread));
        assert!(!group_fits(&nodes, &one_cpu, 4, Placement::StrictSpread));
    }

    #[test]
    fn the_entrypoint_quotes_what_the_shell_would_split() {
        let line = entrypoint("/opt/my weir/weir", &["exec", "0193-ab'c"], "weir-0193-1").unwrap();
        let (fence, exec) = line.split_once("; ").unwrap();
        assert_eq!(fence, "export WEIR_EXEC_FENCE=weir-0193-1");
        assert_eq!(
            shlex::split(exec.strip_prefix("exec ").unwrap()).unwrap(),
            ["/opt/my weir/weir", "exec", "0193-ab'c"]
        );
    }
}
