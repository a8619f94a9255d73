//! The pipeline specification: YAML in, a validated, topologically ordered
//! [`Pipeline`] out. Every problem found is reported with the file, line and
//! field, and all of them are reported at once, before anything runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::ops::BuiltinOp;

/// A validated pipeline with params resolved and steps in execution order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// The file the spec came from; relative paths in steps resolve against its directory.
    pub file: PathBuf,
    pub params: BTreeMap<String, Value>,
    /// Steps in a topological order: every step comes after the steps it reads from.
    pub steps: Vec<Step>,
    /// `budget: { cost: $5 }`: dollars one run may spend; a step that would
    /// take the run past it is not started.
    #[serde(default)]
    pub budget: Option<f64>,
    /// What the pipeline is for: a model card's intended use.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Where the step is declared, for errors found after parsing.
    pub line: u64,
    pub action: Action,
    /// The `with:` block after `${{ params.x }}` substitution.
    pub with: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, InputRef>,
    pub outputs: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Globs of files (relative to the pipeline file) whose content is part of the cache key.
    #[serde(default)]
    pub code: Vec<String>,
    /// `cache: false` always runs the step.
    #[serde(default = "yes")]
    pub cache: bool,
    /// Bump to invalidate the step's cache by hand.
    #[serde(default)]
    pub cache_version: Option<String>,
    /// An attempt running longer than this is stopped and counts as failed.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub resources: Resources,
    /// The step gets WEIR_CHECKPOINT_DIR, saved while it runs and restored
    /// on its next attempt.
    #[serde(default)]
    pub preemptible: bool,
    /// `run_in: off_peak`: started only inside the off-peak window.
    #[serde(default)]
    pub off_peak: bool,
    /// How long a preempted step may take to checkpoint after SIGTERM.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// `tune:`: a hyper-parameter study over the op's `with:` options,
    /// checked by the engine (weir-tune reads it), not here.
    #[serde(default)]
    pub tune: Option<TuneBlock>,
    /// `executor:` where this step runs; the configured executor when absent.
    #[serde(default)]
    pub executor: Option<ExecutorKind>,
    /// `distributed:` a `run:` step as several cooperating processes.
    #[serde(default)]
    pub distributed: Option<Distributed>,
    /// Resources beyond cpu, memory and gpu (`resources: { spot: 1 }`): a
    /// cluster executor asks for them (Ray custom resources); one machine
    /// has none to count, so the local executor ignores them.
    #[serde(default)]
    pub custom_resources: BTreeMap<String, f64>,
    /// Outputs kept as dataset versions (output name -> dataset name), each
    /// with its schema and profile: `datasets: { table: flights }`. An
    /// ingest's table is one by default, named `PIPELINE.STEP`.
    #[serde(default)]
    pub datasets: BTreeMap<String, String>,
    /// `schema: { evolution: strict|additive|any }`: what schema change a
    /// new version of the step's datasets may bring (`any` when absent).
    #[serde(default)]
    pub schema_evolution: Option<String>,
}

/// `schema.evolution`'s values.
pub const SCHEMA_EVOLUTIONS: [&str; 3] = ["strict", "additive", "any"];

/// `distributed: { workers: N, backend: torch }`: the step's command runs as
/// N processes that find each other through the torchrun environment
/// (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK). `resources:`
/// are per worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distributed {
    pub workers: u32,
    pub backend: String,
    /// On a cluster, how the workers are spread over its nodes.
    #[serde(default)]
    pub placement: Placement,
}

/// `distributed.placement`: a Ray placement group's strategy for the
/// workers beside rank 0 (one bundle of the step's `resources:` each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// As few nodes as will hold them (Ray Train's default): collectives
    /// stay on one machine where they can.
    #[default]
    Pack,
    /// Over as many nodes as possible.
    Spread,
    /// All on one node, or not at all.
    StrictPack,
    /// Each on a node of its own, or not at all (rank 0, the job, may
    /// share one with them).
    StrictSpread,
}

impl Placement {
    pub const NAMES: [&'static str; 4] = ["pack", "spread", "strict_pack", "strict_spread"];

    pub fn parse(text: &str) -> Option<Placement> {
        match text {
            "pack" => Some(Placement::Pack),
            "spread" => Some(Placement::Spread),
            "strict_pack" => Some(Placement::StrictPack),
            "strict_spread" => Some(Placement::StrictSpread),
            _ => None,
        }
    }

    /// The strategy's name in Ray's API.
    pub fn ray_strategy(self) -> &'static str {
        match self {
            Placement::Pack => "PACK",
            Placement::Spread => "SPREAD",
            Placement::StrictPack => "STRICT_PACK",
            Placement::StrictSpread => "STRICT_SPREAD",
        }
    }
}

/// The most workers one distributed step may start.
pub const MAX_WORKERS: u32 = 256;

/// Where a step attempt runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// A `weir exec` child process of the runner.
    Local,
    /// A job on a Ray cluster that runs `weir exec` on one of its nodes.
    Ray,
}

impl ExecutorKind {
    pub fn parse(text: &str) -> Option<ExecutorKind> {
        match text {
            "local" => Some(ExecutorKind::Local),
            "ray" => Some(ExecutorKind::Ray),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Ray => "ray",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneBlock {
    /// Where the block starts, for errors found when it is read.
    pub line: u64,
    pub spec: Value,
    /// CPU slots the executor reserves for the study when the step gives no
    /// `resources.cpu`: one per trial running at once (`parallel`).
    #[serde(default)]
    pub reserve_cpu: Option<f64>,
}

impl TuneBlock {
    /// The study's objective as written: the metric and whether a larger
    /// value is better (`goal: maximize`; anything else minimizes).
    pub fn objective(&self) -> (String, bool) {
        let field = |name: &str| {
            self.spec
                .get("objective")
                .and_then(|o| o.get(name))
                .and_then(|v| v.as_str())
        };
        (
            field("metric").unwrap_or("objective").to_string(),
            field("goal") == Some("maximize"),
        )
    }
}

impl Step {
    /// How many cooperating processes the step runs as, each asking for
    /// its `resources:`: `distributed.workers`, or a built-in trainer's
    /// `with.workers` (outside a study, whose trials train in one process
    /// each).
    pub fn workers(&self) -> u32 {
        if let Some(d) = &self.distributed {
            return d.workers.max(1);
        }
        match self.action {
            Action::Builtin(BuiltinOp::TrainGbdt | BuiltinOp::TrainMlp) if self.tune.is_none() => {
                self.with
                    .get("workers")
                    .and_then(Value::as_u64)
                    .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32)
            }
            _ => 1,
        }
    }

    /// What the step asks the executor for, given the machine's capacity: a
    /// study's implicit request is capped by the machine, so `parallel: 8`
    /// on 2 cores still runs (2 trials' worth of slots, 8 trials at once).
    pub fn request(&self, capacity: &Resources) -> Resources {
        let mut r = self.resources;
        let n = self.workers();
        if n > 1 {
            r.cpu *= f64::from(n);
            r.memory_bytes *= u64::from(n);
            r.gpu *= n;
        }
        if let Some(cpu) = self.tune.as_ref().and_then(|t| t.reserve_cpu) {
            r.cpu = cpu.min(capacity.cpu);
        }
        r
    }
}

fn default_grace_ms() -> u64 {
    30_000
}

/// `resources: { cpu, memory, gpu }`: what a step needs while it runs. The
/// scheduler only starts steps whose requests fit beside the running ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: f64,
    pub memory_bytes: u64,
    pub gpu: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: 1.0,
            memory_bytes: 0,
            gpu: 0,
        }
    }
}

/// A size written `512MiB`, `2GiB`, `1.5GB`, `100k` or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size; write e.g. 512MiB or 2GiB"))?;
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
            "'{text}' has an unknown unit '{unit}'; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
        ))
        }
    };
    Ok((n * factor).round() as u64)
}

/// `retry: { attempts, backoff, max_backoff, on }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles for each later one.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Exit codes to retry on; all failures when `None`.
    pub exit_codes: Option<Vec<i64>>,
    /// Whether a timed-out attempt is retried.
    pub on_timeout: bool,
}

impl RetryPolicy {
    /// Whether a failed attempt (`exit_code` when the command exited,
    /// `timed_out` when it was stopped) should be tried again.
    pub fn retries(&self, exit_code: Option<i64>, timed_out: bool) -> bool {
        if timed_out {
            return self.on_timeout;
        }
        match (&self.exit_codes, exit_code) {
            (None, _) => true,
            (Some(codes), Some(code)) => codes.contains(&code),
            (Some(_), None) => false,
        }
    }

    /// The wait after attempt `attempt` (1-based) failed, before jitter.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        std::time::Duration::from_millis(
            self.backoff_ms
                .saturating_mul(factor)
                .min(self.max_backoff_ms),
        )
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Builtin(BuiltinOp),
    Command(String),
}

/// `inputs: { name: step.output }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub step: String,
    pub output: String,
    /// For a `foreach` step: the instances whose outputs are gathered, one
    /// directory entry each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.step, self.output)
    }
}

impl Pipeline {
    pub fn base_dir(&self) -> &Path {
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

impl Step {
    /// Steps this one reads from, each once.
    pub fn upstream(&self) -> BTreeSet<&str> {
        self.inputs
            .values()
            .flat_map(|r| match r.instances.is_empty() {
                true => vec![r.step.as_str()],
                false => r.instances.iter().map(String::as_str).collect(),
            })
            .collect()
    }
}

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecIssue {
    pub line: Option<u64>,
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read pipeline file {file}: {source}\n  hint: check the path; it is resolved against the current directory")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_issues(file, issues))]
    Invalid {
        file: PathBuf,
        issues: Vec<SpecIssue>,
    },
}

impl SpecError {
    /// `Ok` when there are no issues, else all of them as one error.
    pub fn check(file: &Path, issues: Vec<SpecIssue>) -> Result<(), SpecError> {
        if issues.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid {
                file: file.to_path_buf(),
                issues,
            })
        }
    }

    pub fn issues(&self) -> &[SpecIssue] {
        match self {
            SpecError::Read { .. } => &[],
            SpecError::Invalid { issues, .. } => issues,
        }
    }
}

fn render_issues(file: &Path, issues: &[SpecIssue]) -> String {
    let mut out = format!(
        "pipeline {} is invalid ({} problem{})",
        file.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        let at = match issue.line {
            Some(line) => format!("{}:{}", file.display(), line),
            None => file.display().to_string(),
        };
        out.push_str(&format!("\n  {at}: {}: {}", issue.field, issue.message));
        if let Some(hint) = &issue.hint {
            out.push_str(&format!("\n    hint: {hint}"));
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    version: Spanned<u32>,
    name: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Value>,
    steps: Spanned<IndexMap<String, Spanned<RawStep>>>,
    #[serde(default)]
    budget: Option<Spanned<RawRunBudget>>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunBudget {
    cost: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    uses: Option<Spanned<String>>,
    run: Option<Spanned<String>>,
    #[serde(default)]
    with: Option<Spanned<BTreeMap<String, Value>>>,
    #[serde(default)]
    inputs: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    outputs: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    code: Vec<Spanned<String>>,
    #[serde(default)]
    cache: Option<bool>,
    #[serde(default)]
    cache_version: Option<Spanned<Value>>,
    #[serde(default)]
    timeout: Option<Spanned<Value>>,
    #[serde(default)]
    retry: Option<Spanned<RawRetry>>,
    #[serde(default)]
    resources: Option<Spanned<RawResources>>,
    #[serde(default)]
    foreach: Option<Spanned<Value>>,
    #[serde(default)]
    preemptible: Option<bool>,
    #[serde(default)]
    run_in: Option<Spanned<String>>,
    #[serde(default)]
    grace: Option<Spanned<Value>>,
    #[serde(default)]
    tune: Option<Spanned<Value>>,
    #[serde(default)]
    executor: Option<Spanned<String>>,
    #[serde(default)]
    distributed: Option<Spanned<RawDistributed>>,
    #[serde(default)]
    datasets: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    schema: Option<Spanned<RawSchema>>,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    evolution: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDistributed {
    workers: u32,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    placement: Option<String>,
}

#[derive(Deserialize)]
struct RawResources {
    #[serde(default)]
    cpu: Option<f64>,
    #[serde(default)]
    memory: Option<Value>,
    #[serde(default)]
    gpu: Option<u32>,
    /// Every other key is a custom resource (Ray's `resources={...}`).
    #[serde(flatten)]
    custom: BTreeMap<String, Value>,
}

/// Keys that look like a misspelt cpu, memory or gpu rather than a custom
/// resource: refused so that a typo is not silently ignored on one machine.
const RESOURCE_TYPOS: &[(&str, &str)] = &[
    ("cpus", "cpu"),
    ("num_cpus", "cpu"),
    ("CPU", "cpu"),
    ("mem", "memory"),
    ("ram", "memory"),
    ("gpus", "gpu"),
    ("num_gpus", "gpu"),
    ("GPU", "gpu"),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    #[serde(default)]
    backoff: Option<Value>,
    #[serde(default)]
    max_backoff: Option<Value>,
    /// `[timeout, 137, ...]`; every failure when absent.
    #[serde(default)]
    on: Option<Vec<Value>>,
}

/// A duration written `500ms`, `10s`, `5m`, `1h 30m`, or a number of seconds.
fn duration_ms(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| *s >= 0.0 && s.is_finite())
            .map(|s| (s * 1000.0).round() as u64)
            .ok_or_else(|| format!("{n} is not a duration")),
        Value::String(s) => humantime::parse_duration(s)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 30s, 5m or 1h")),
        other => Err(format!(
            "{other} is not a duration; write e.g. 30s, 5m or 1h"
        )),
    }
}

/// Reads, parses and validates a pipeline file. `overrides` are `-p key=value`
/// pairs; each must name a declared param.
pub fn load(file: &Path, overrides: &[(String, String)]) -> Result<Pipeline, SpecError> {
    let text = std::fs::read_to_string(file).map_err(|source| SpecError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(file, &text, overrides)
}

pub fn parse(
    file: &Path,
    text: &str,
    overrides: &[(String, String)],
) -> Result<Pipeline, SpecError> {
    let invalid = |issues: Vec<SpecIssue>| SpecError::Invalid {
        file: file.to_path_buf(),
        issues,
    };
    let raw: RawPipeline =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
            let line = e.location().map(|l| l.line());
            let message = first_line(&e.to_string());
            invalid(vec![SpecIssue {
                line,
                field: "yaml".into(),
                hint: Some(yaml_hint(&message)),
                message,
            }])
        })?;

    let mut issues = Vec::new();
    if raw.version.value != 1 {
        issues.push(SpecIssue {
            line: Some(raw.version.referenced.line()),
            field: "version".into(),
            message: format!("unsupported version {}", raw.version.value),
            hint: Some("this Weir reads `version: 1`".into()),
        });
    }

    let mut params = raw.params.clone();
    for (key, value) in overrides {
        if !params.contains_key(key) {
            let declared: Vec<&str> = raw.params.keys().map(String::as_str).collect();
            issues.push(SpecIssue {
                line: None,
                field: format!("-p {key}"),
                message: format!("'{key}' is not a param of this pipeline"),
                hint: Some(format!("declared params: [{}]", declared.join(", "))),
            });
            continue;
        }
        params.insert(key.clone(), parse_scalar(value));
    }

    let budget = match &raw.budget {
        Some(b) => match crate::cost::parse_dollars(&b.value.cost) {
            Ok(dollars) => Some(dollars),
            Err(message) => {
                issues.push(SpecIssue {
                    line: Some(b.referenced.line()),
                    field: "budget.cost".into(),
                    message,
                    hint: Some("a run's budget in dollars, e.g. `budget: { cost: $5 }`".into()),
                });
                None
            }
        },
        None => None,
    };

    let name = raw
        .name
        .as_ref()
        .map(|n| n.value.clone())
        .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "pipeline".into());

    if raw.steps.value.is_empty() {
        issues.push(SpecIssue {
            line: Some(raw.steps.referenced.line()),
            field: "steps".into(),
            message: "a pipeline needs at least one step".into(),
            hint: None,
        });
    }

    let mut steps = Vec::new();
    let mut step_lines = HashMap::new();
    let mut fanouts: HashMap<String, Vec<String>> = HashMap::new();
    for (step_name, raw_step) in &raw.steps.value {
        let line = raw_step.referenced.line();
        step_lines.insert(step_name.clone(), line);
        match &raw_step.value.foreach {
            None => {
                if let Some(step) =
                    build_step(step_name, None, &raw_step.value, line, &params, &mut issues)
                {
                    steps.push((step, raw_step));
                }
            }
            Some(foreach) => match foreach_items(&foreach.value) {
                Ok(items) => {
                    let mut names = Vec::new();
                    for item in &items {
                        if let Some(step) = build_step(
                            step_name,
                            Some(item),
                            &raw_step.value,
                            line,
                            &params,
                            &mut issues,
                        ) {
                            names.push(step.name.clone());
                            steps.push((step, raw_step));
                        }
                    }
                    fanouts.insert(step_name.clone(), names);
                }
                Err(message) => issues.push(SpecIssue {
                    line: Some(foreach.referenced.line()),
                    field: format!("steps.{step_name}.foreach"),
                    message,
                    hint: None,
                }),
            },
        }
    }
    // A reference to a foreach step gathers the output of every instance.
    for (step, _) in steps.iter_mut() {
        for r in step.inputs.values_mut() {
            if let Some(names) = fanouts.get(&r.step) {
                r.instances = names.clone();
            }
        }
    }

    // An ingest's table is a dataset unless the step names it otherwise.
    for (step, _) in steps.iter_mut() {
        if step.action == Action::Builtin(crate::ops::BuiltinOp::Ingest) && step.datasets.is_empty()
        {
            step.datasets
                .insert("table".into(), format!("{name}.{}", step.name));
        }
    }
    check_references(&steps, &fanouts, &mut issues);
    if !issues.is_empty() {
        return Err(invalid(issues));
    }
    let ordered = match topological_order(steps.into_iter().map(|(s, _)| s).collect()) {
        Ok(ordered) => ordered,
        Err(cycle) => {
            return Err(invalid(vec![SpecIssue {
                line: cycle.first().and_then(|s| step_lines.get(s).copied()),
                field: format!(
                    "steps.{}.inputs",
                    cycle.first().cloned().unwrap_or_default()
                ),
                message: format!("steps form a cycle: {}", cycle.join(" -> ")),
                hint: Some(
                    "a step cannot read, directly or indirectly, from its own outputs".into(),
                ),
            }]))
        }
    };
    Ok(Pipeline {
        name,
        file: file.to_path_buf(),
        params,
        steps: ordered,
        budget,
        description: raw.description.clone().filter(|d| !d.trim().is_empty()),
    })
}

fn build_step(
    name: &str,
    item: Option<&(String, Value)>,
    raw: &RawStep,
    line: u64,
    params: &BTreeMap<String, Value>,
    issues: &mut Vec<SpecIssue>,
) -> Option<Step> {
    let field = |f: &str| format!("steps.{name}.{f}");
    let scope = Scope {
        params,
        item: item.map(|(_, v)| v),
    };
    if !is_identifier(name) {
        issues.push(SpecIssue {
            line: Some(line),
            field: format!("steps.{name}"),
            message: format!("'{name}' is not a valid step name"),
            hint: Some("use letters, digits, '_' and '-', starting with a letter".into()),
        });
    }
    let action = match (&raw.uses, &raw.run) {
        (Some(_), Some(_)) | (None, None) => {
            issues.push(SpecIssue {
                line: Some(line),
                field: format!("steps.{name}"),
                message:
                    "a step needs exactly one of `uses:` (a built-in op) or `run:` (a command)"
                        .into(),
                hint: None,
            });
            return None;
        }
        (Some(uses), None) => match BuiltinOp::from_name(&uses.value) {
            Some(op) => Action::Builtin(op),
            None => {
                let known: Vec<&str> = BuiltinOp::ALL.iter().map(|o| o.name()).collect();
                issues.push(SpecIssue {
                    line: Some(uses.referenced.line()),
                    field: field("uses"),
                    message: format!("unknown op '{}'", uses.value),
                    hint: Some(format!("built-in ops: {}", known.join(", "))),
                });
                return None;
            }
        },
        (None, Some(run)) => {
            let command = substitute_str(&run.value, &scope)
                .map_err(|m| {
                    issues.push(SpecIssue {
                        line: Some(run.referenced.line()),
                        field: field("run"),
                        message: m,
                        hint: Some(param_hint(params)),
                    })
                })
                .ok()?;
            if command.trim().is_empty() {
                issues.push(SpecIssue {
                    line: Some(run.referenced.line()),
                    field: field("run"),
                    message: "the command is empty".into(),
                    hint: None,
                });
            }
            Action::Command(command)
        }
    };

    let mut with = BTreeMap::new();
    if let Some(raw_with) = &raw.with {
        for (key, value) in &raw_with.value {
            match substitute(value, &scope) {
                Ok(v) => {
                    with.insert(key.clone(), v);
                }
                Err(m) => issues.push(SpecIssue {
                    line: Some(raw_with.referenced.line()),
                    field: field(&format!("with.{key}")),
                    message: m,
                    hint: Some(param_hint(params)),
                }),
            }
        }
    }

    let tune = raw
        .tune
        .as_ref()
        .and_then(|t| match substitute(&t.value, &scope) {
            Ok(spec) => Some((t.referenced.line(), spec)),
            Err(m) => {
                issues.push(SpecIssue {
                    line: Some(t.referenced.line()),
                    field: field("tune"),
                    message: m,
                    hint: Some(param_hint(params)),
                });
                None
            }
        });

    let mut env = BTreeMap::new();
    for (key, value) in &raw.env {
        match substitute_str(&value.value, &scope) {
            Ok(v) => {
                env.insert(key.clone(), v);
            }
            Err(m) => issues.push(SpecIssue {
                line: Some(value.referenced.line()),
                field: field(&format!("env.{key}")),
                message: m,
                hint: Some(param_hint(params)),
            }),
        }
    }

    let mut inputs = BTreeMap::new();
    for (input, reference) in &raw.inputs {
        match reference.value.split_once('.') {
            Some((step, output)) if !step.is_empty() && !output.is_empty() => {
                inputs.insert(
                    input.clone(),
                    InputRef {
                        step: step.to_string(),
                        output: output.to_string(),
                        instances: Vec::new(),
                    },
                );
            }
            _ => issues.push(SpecIssue {
                line: Some(reference.referenced.line()),
                field: field(&format!("inputs.{input}")),
                message: format!("'{}' is not a reference", reference.value),
                hint: Some(
                    "write inputs as `name: step.output`, e.g. `table: ingest.table`".into(),
                ),
            }),
        }
    }

    let declared: Vec<String> = raw.outputs.iter().map(|o| o.value.clone()).collect();
    let outputs = match action {
        Action::Builtin(op) => {
            for out in &raw.outputs {
                if !op.outputs().contains(&out.value.as_str()) {
                    issues.push(SpecIssue {
                        line: Some(out.referenced.line()),
                        field: field("outputs"),
                        message: format!("{op} has no output '{}'", out.value),
                        hint: Some(format!("{op} produces: [{}]", op.outputs().join(", "))),
                    });
                }
            }
            for input in raw.inputs.keys() {
                if !op.known_inputs().contains(&input.as_str()) {
                    issues.push(SpecIssue {
                        line: Some(raw.inputs[input].referenced.line()),
                        field: field(&format!("inputs.{input}")),
                        message: format!("{op} takes no input '{input}'"),
                        hint: Some(format!("{op} takes: [{}]", op.known_inputs().join(", "))),
                    });
                }
            }
            for required in op.required_inputs() {
                if !raw.inputs.contains_key(*required) {
                    issues.push(SpecIssue {
                        line: Some(line),
                        field: field("inputs"),
                        message: format!("{op} needs the input '{required}'"),
                        hint: Some(format!("add `inputs: {{ {required}: <step>.<output> }}`")),
                    });
                }
            }
            op.outputs().iter().map(|s| s.to_string()).collect()
        }
        Action::Command(_) => {
            for out in &raw.outputs {
                if !is_identifier(&out.value) {
                    issues.push(SpecIssue {
                        line: Some(out.referenced.line()),
                        field: field("outputs"),
                        message: format!("'{}' is not a valid output name", out.value),
                        hint: Some(
                            "use letters, digits, '_' and '-', starting with a letter".into(),
                        ),
                    });
                }
            }
            declared
        }
    };

    let mut code = Vec::new();
    for pattern in &raw.code {
        if pattern.value.trim().is_empty()
            || Path::new(&pattern.value).is_absolute()
            || pattern.value.contains("..")
        {
            issues.push(SpecIssue {
                line: Some(pattern.referenced.line()),
                field: field("code"),
                message: format!(
                    "'{}' is not a relative glob inside the project",
                    pattern.value
                ),
                hint: Some("write globs relative to the pipeline file, e.g. scripts/*.py".into()),
            });
        }
        code.push(pattern.value.clone());
    }
    let mut duration = |value: &Spanned<Value>, name: &str| match duration_ms(&value.value) {
        Ok(ms) => Some(ms),
        Err(message) => {
            issues.push(SpecIssue {
                line: Some(value.referenced.line()),
                field: field(name),
                message,
                hint: None,
            });
            None
        }
    };
    let timeout_ms = raw.timeout.as_ref().and_then(|t| duration(t, "timeout"));
    let grace_ms = raw
        .grace
        .as_ref()
        .and_then(|g| duration(g, "grace"))
        .unwrap_or_else(default_grace_ms);
    if timeout_ms == Some(0) {
        issues.push(SpecIssue {
            line: raw.timeout.as_ref().map(|t| t.referenced.line()),
            field: field("timeout"),
            message: "a timeout must be longer than zero".into(),
            hint: None,
        });
    }
    let retry = raw.retry.as_ref().and_then(|r| {
        let line = r.referenced.line();
        let raw = &r.value;
        let backoff_ms = match &raw.backoff {
            Some(v) => duration_ms(v),
            None => Ok(1000),
        };
        let max_backoff_ms = match &raw.max_backoff {
            Some(v) => duration_ms(v),
            None => Ok(300_000),
        };
        let mut exit_codes = Vec::new();
        let mut on_timeout = raw.on.is_none();
        let mut problems = Vec::new();
        for item in raw.on.iter().flatten() {
            match item {
                Value::String(s) if s == "timeout" => on_timeout = true,
                Value::Number(n) if n.as_i64().is_some_and(|c| (0..=255).contains(&c)) => {
                    exit_codes.push(n.as_i64().unwrap_or(0))
                }
                other => problems.push(format!(
                    "{other} is neither `timeout` nor an exit code (0-255)"
                )),
            }
        }
        if !(1..=100).contains(&raw.attempts) {
            problems.push(format!(
                "attempts is {}; use 1 to 100 (attempts in all, the first included)",
                raw.attempts
            ));
        }
        for (name, v) in [("backoff", &backoff_ms), ("max_backoff", &max_backoff_ms)] {
            if let Err(e) = v {
                problems.push(format!("{name}: {e}"));
            }
        }
        if !problems.is_empty() {
            for message in problems {
                issues.push(SpecIssue {
                    line: Some(line),
                    field: field("retry"),
                    message,
                    hint: None,
                });
            }
            return None;
        }
        Some(RetryPolicy {
            attempts: raw.attempts,
            backoff_ms: backoff_ms.unwrap_or(1000),
            max_backoff_ms: max_backoff_ms.unwrap_or(300_000),
            exit_codes: raw.on.as_ref().map(|_| exit_codes),
            on_timeout,
        })
    });
    if let (Some(t), Action::Command(_)) = (&raw.tune, &action) {
        issues.push(SpecIssue {
            line: Some(t.referenced.line()),
            field: field("tune"),
            message: "only built-in training ops can be tuned".into(),
            hint: Some("use weir/train-gbdt, weir/train-linear or weir/train-mlp".into()),
        });
    }
    if let Some(run_in) = &raw.run_in {
        if !matches!(run_in.value.as_str(), "off_peak" | "any") {
            issues.push(SpecIssue {
                line: Some(run_in.referenced.line()),
                field: field("run_in"),
                message: format!("'{}' is not a time to run in", run_in.value),
                hint: Some("use off_peak (inside the off-peak window) or any (the default)".into()),
            });
        }
    }
    if raw.preemptible == Some(true) && matches!(action, Action::Builtin(_)) {
        issues.push(SpecIssue {
            line: Some(line),
            field: field("preemptible"),
            message: "only `run:` steps can be preemptible: built-in ops do not checkpoint".into(),
            hint: None,
        });
    }
    let mut resources = Resources::default();
    let mut custom_resources = BTreeMap::new();
    if let Some(r) = &raw.resources {
        let line = Some(r.referenced.line());
        if let Some(cpu) = r.value.cpu {
            if cpu > 0.0 && cpu.is_finite() {
                resources.cpu = cpu;
            } else {
                issues.push(SpecIssue {
                    line,
                    field: field("resources.cpu"),
                    message: format!(
                        "{cpu} is not a CPU count; use a positive number such as 0.5 or 2"
                    ),
                    hint: None,
                });
            }
        }
        if let Some(memory) = &r.value.memory {
            let parsed = match memory {
                Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a size")),
                Value::String(text) => parse_bytes(text),
                other => Err(format!("{other} is not a size; write e.g. 512MiB or 2GiB")),
            };
            match parsed {
                Ok(bytes) => resources.memory_bytes = bytes,
                Err(message) => issues.push(SpecIssue {
                    line,
                    field: field("resources.memory"),
                    message,
                    hint: None,
                }),
            }
        }
        if let Some(gpu) = r.value.gpu {
            resources.gpu = gpu;
        }
        for (key, value) in &r.value.custom {
            if let Some((_, meant)) = RESOURCE_TYPOS.iter().find(|(typo, _)| typo == key) {
                issues.push(SpecIssue {
                    line,
                    field: field(&format!("resources.{key}")),
                    message: format!("unknown resource '{key}'"),
                    hint: Some(format!("did you mean `{meant}`?")),
                });
                continue;
            }
            match value.as_f64().filter(|v| v.is_finite() && *v > 0.0) {
                Some(amount) => {
                    custom_resources.insert(key.clone(), amount);
                }
                None => issues.push(SpecIssue {
                    line,
                    field: field(&format!("resources.{key}")),
                    message: format!(
                        "{value} is not an amount; a custom resource takes a positive number such as 1"
                    ),
                    hint: None,
                }),
            }
        }
    }
    let distributed = raw.distributed.as_ref().and_then(|d| {
        let line = Some(d.referenced.line());
        let mut ok = true;
        if matches!(action, Action::Builtin(_)) {
            issues.push(SpecIssue {
                line,
                field: field("distributed"),
                message: "only `run:` steps can be distributed".into(),
                hint: Some("a `run:` step's command runs once per worker".into()),
            });
            ok = false;
        }
        if d.value.workers == 0 || d.value.workers > MAX_WORKERS {
            issues.push(SpecIssue {
                line,
                field: field("distributed.workers"),
                message: format!(
                    "{} workers is not a worker count; use 1 to {MAX_WORKERS}",
                    d.value.workers
                ),
                hint: None,
            });
            ok = false;
        }
        let backend = d.value.backend.clone().unwrap_or_else(|| "torch".into());
        if backend != "torch" {
            issues.push(SpecIssue {
                line,
                field: field("distributed.backend"),
                message: format!("'{backend}' is not a backend"),
                hint: Some(
                    "use `torch`: the torchrun environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK), which any framework can read"
                        .into(),
                ),
            });
            ok = false;
        }
        let placement = match d.value.placement.as_deref() {
            None => Some(Placement::default()),
            Some(text) => Placement::parse(text),
        };
        if placement.is_none() {
            issues.push(SpecIssue {
                line,
                field: field("distributed.placement"),
                message: format!(
                    "'{}' is not a placement",
                    d.value.placement.as_deref().unwrap_or_default()
                ),
                hint: Some(format!("use one of {}", Placement::NAMES.join(", "))),
            });
            ok = false;
        }
        ok.then(|| Distributed {
            workers: d.value.workers,
            backend,
            placement: placement.unwrap_or_default(),
        })
    });
    let executor = raw.executor.as_ref().and_then(|e| {
        let kind = ExecutorKind::parse(&e.value);
        if kind.is_none() {
            issues.push(SpecIssue {
                line: Some(e.referenced.line()),
                field: field("executor"),
                message: format!("'{}' is not an executor", e.value),
                hint: Some("use `local` or `ray`".into()),
            });
        }
        kind
    });
    let mut datasets = BTreeMap::new();
    for (output, dataset) in &raw.datasets {
        if !outputs.contains(output) {
            issues.push(SpecIssue {
                line: Some(dataset.referenced.line()),
                field: field(&format!("datasets.{output}")),
                message: format!("'{output}' is not an output of this step"),
                hint: Some(format!("its outputs: [{}]", outputs.join(", "))),
            });
        } else if dataset.value.is_empty()
            || !dataset
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        {
            issues.push(SpecIssue {
                line: Some(dataset.referenced.line()),
                field: field(&format!("datasets.{output}")),
                message: format!("'{}' is not a dataset name", dataset.value),
                hint: Some("use letters, digits, '.', '_', '-' and '/'".into()),
            });
        } else {
            datasets.insert(output.clone(), dataset.value.clone());
        }
    }
    let schema_evolution = raw.schema.as_ref().and_then(|schema| {
        let evolution = &schema.value.evolution;
        if !SCHEMA_EVOLUTIONS.contains(&evolution.as_str()) {
            issues.push(SpecIssue {
                line: Some(schema.referenced.line()),
                field: field("schema.evolution"),
                message: format!("'{evolution}' is not a schema evolution policy"),
                hint: Some(
                    "use strict (no change), additive (new columns only) or any (report only)"
                        .into(),
                ),
            });
            return None;
        }
        let ingest = action == Action::Builtin(crate::ops::BuiltinOp::Ingest);
        if raw.datasets.is_empty() && !ingest {
            issues.push(SpecIssue {
                line: Some(schema.referenced.line()),
                field: field("schema"),
                message: "the step keeps no dataset for the policy to apply to".into(),
                hint: Some("mark an output as a dataset: `datasets: { OUTPUT: NAME }`".into()),
            });
            return None;
        }
        Some(evolution.clone())
    });
    let cache_version = raw.cache_version.as_ref().map(|v| match &v.value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });

    Some(Step {
        name: match item {
            Some((label, _)) => format!("{name}[{label}]"),
            None => name.to_string(),
        },
        line,
        action,
        with,
        inputs,
        outputs,
        env,
        code,
        cache: raw.cache.unwrap_or(true),
        cache_version,
        timeout_ms,
        retry: match (retry, raw.preemptible.unwrap_or(false)) {
            // A preempted attempt is worth retrying: it resumes from its checkpoint.
            (None, true) => Some(RetryPolicy {
                attempts: 3,
                backoff_ms: 1000,
                max_backoff_ms: 60_000,
                exit_codes: None,
                on_timeout: true,
            }),
            (retry, _) => retry,
        },
        resources,
        preemptible: raw.preemptible.unwrap_or(false),
        off_peak: raw.run_in.as_ref().is_some_and(|r| r.value == "off_peak"),
        grace_ms,
        tune: tune.map(|(line, spec)| TuneBlock {
            line,
            reserve_cpu: match raw.resources.as_ref().and_then(|r| r.value.cpu) {
                Some(_) => None,
                None => spec
                    .get("parallel")
                    .and_then(Value::as_f64)
                    .filter(|p| *p >= 1.0),
            },
            spec,
        }),
        executor,
        distributed,
        custom_resources,
        datasets,
        schema_evolution,
    })
}

fn check_references(
    steps: &[(Step, &Spanned<RawStep>)],
    fanouts: &HashMap<String, Vec<String>>,
    issues: &mut Vec<SpecIssue>,
) {
    let mut by_name: HashMap<&str, &Step> =
        steps.iter().map(|(s, _)| (s.name.as_str(), s)).collect();
    // A foreach step is referred to by its own name; its instances share outputs.
    for (base, names) in fanouts {
        if let Some(first) = names.first().and_then(|n| by_name.get(n.as_str()).copied()) {
            by_name.insert(base.as_str(), first);
        }
    }
    for (step, raw) in steps {
        for (input, reference) in &step.inputs {
            let line = raw.value.inputs.get(input).map(|r| r.referenced.line());
            let field = format!("steps.{}.inputs.{input}", step.name);
            match by_name.get(reference.step.as_str()) {
                None => {
                    let mut known: Vec<&str> = by_name.keys().copied().collect();
                    known.sort();
                    issues.push(SpecIssue {
                        line,
                        field,
                        message: format!("unknown step '{}'", reference.step),
                        hint: Some(format!("steps in this pipeline: [{}]", known.join(", "))),
                    });
                }
                Some(upstream) if !upstream.outputs.contains(&reference.output) => {
                    issues.push(SpecIssue {
                        line,
                        field,
                        message: format!(
                            "step '{}' has no output '{}'",
                            reference.step, reference.output
                        ),
                        hint: Some(format!(
                            "'{}' produces: [{}]",
                            reference.step,
                            upstream.outputs.join(", ")
                        )),
                    });
                }
                Some(_) => {}
            }
        }
    }
}

/// Kahn's algorithm, keeping declaration order among ready steps so runs are
/// predictable. On a cycle, returns the steps that form it.
fn topological_order(steps: Vec<Step>) -> Result<Vec<Step>, Vec<String>> {
    let mut remaining: Vec<Step> = steps;
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(remaining.len());
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|s| s.upstream().iter().all(|u| done.contains(*u)));
        match ready {
            Some(i) => {
                let step = remaining.remove(i);
                done.insert(step.name.clone());
                ordered.push(step);
            }
            None => return Err(find_cycle(&remaining)),
        }
    }
    Ok(ordered)
}

fn find_cycle(stuck: &[Step]) -> Vec<String> {
    let by_name: HashMap<&str, &Step> = stuck.iter().map(|s| (s.name.as_str(), s)).collect();
    // Every stuck step has a stuck upstream, so walking upstream must revisit a step.
    let mut path: Vec<&str> = vec![stuck[0].name.as_str()];
    loop {
        let current = by_name[path.last().unwrap()];
        let next = current
            .upstream()
            .into_iter()
            .find(|u| by_name.contains_key(u))
            .expect("a stuck step has a stuck upstream");
        if let Some(start) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> =
                path[start..].iter().rev().map(|s| s.to_string()).collect();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        path.push(next);
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn yaml_hint(message: &str) -> String {
    if message.contains("unknown field") {
        "remove or correct the field; see README.md for the pipeline fields".into()
    } else {
        "fix the YAML syntax at that line (indentation, quoting, ':' after keys)".into()
    }
}

fn param_hint(params: &BTreeMap<String, Value>) -> String {
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    format!(
        "declared params: [{}]; reference one as ${{{{ params.NAME }}}}",
        names.join(", ")
    )
}

/// YAML 1.2 booleans only: a column named `y` or `no` stays a string.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// Parses a `-p key=value` value the way YAML would read it, so `-p lr=0.1`
/// gives a number and `-p name=x` a string.
fn parse_scalar(value: &str) -> Value {
    serde_saphyr::from_str_with_options::<Value>(value, yaml_options())
        .ok()
        .filter(|v| !v.is_object() && !v.is_array() && !v.is_null())
        .unwrap_or_else(|| Value::String(value.to_string()))
}

/// What `${{ ... }}` can refer to: `params.NAME`, and in a `foreach` step
/// `item` (or `item.KEY` for a matrix).
struct Scope<'a> {
    params: &'a BTreeMap<String, Value>,
    item: Option<&'a Value>,
}

/// Substitutes `${{ params.x }}` in a value. A string that is exactly one
/// reference takes the param's type (so numbers stay numbers).
fn substitute(value: &Value, params: &Scope) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            let trimmed = s.trim();
            if let Some(name) = whole_reference(trimmed) {
                lookup(name, params)?.clone()
            } else {
                Value::String(substitute_str(s, params)?)
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, params))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, params)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn whole_reference(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${{")?.strip_suffix("}}")?;
    if inner.contains("${{") {
        return None;
    }
    Some(inner.trim())
}

fn substitute_str(s: &str, params: &Scope) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unterminated '${{{{' in '{s}'"))?;
        let value = lookup(after[..end].trim(), params)?;
        match value {
            Value::String(v) => out.push_str(v),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup<'a>(expr: &str, scope: &Scope<'a>) -> Result<&'a Value, String> {
    if expr == "item" || expr.starts_with("item.") {
        let item = scope.item.ok_or_else(|| {
            format!("'${{{{ {expr} }}}}' is only defined in a step with `foreach:`")
        })?;
        return match expr.strip_prefix("item.") {
            None => Ok(item),
            Some(key) => item
                .get(key)
                .ok_or_else(|| format!("the foreach item has no '{key}'")),
        };
    }
    let name = expr
        .strip_prefix("params.")
        .ok_or_else(|| format!("'${{{{ {expr} }}}}' is not a param reference"))?;
    scope
        .params
        .get(name)
        .ok_or_else(|| format!("unknown param '{name}'"))
}

/// A `foreach:` list, or a map of lists (a matrix: every combination), as
/// (label, item) pairs. Labels name the instances: `train[0.1]`, `train[lr=0.1,depth=3]`.
fn foreach_items(value: &Value) -> Result<Vec<(String, Value)>, String> {
    let label_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let items: Vec<Value> = match value {
        Value::Array(items) => items.clone(),
        Value::Object(axes) => {
            let mut combos = vec![serde_json::Map::new()];
            for (key, values) in axes {
                let Value::Array(values) = values else {
                    return Err(format!("matrix axis '{key}' is {values}, not a list"));
                };
                if values.is_empty() {
                    return Err(format!("matrix axis '{key}' is empty"));
                }
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.insert(key.clone(), v.clone());
                            c
                        })
                    })
                    .collect();
            }
            combos.into_iter().map(Value::Object).collect()
        }
        other => {
            return Err(format!(
                "foreach is {other}; give a list (`[a, b]`) or a map of lists (a matrix)"
            ))
        }
    };
    if items.is_empty() {
        return Err("foreach is empty; give at least one item".into());
    }
    let mut labels: Vec<String> = items
        .iter()
        .map(|i| label_of(i).replace(['/', ' ', '\n'], "_"))
        .collect();
    let mut unique = labels.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != labels.len() {
        labels = (0..items.len()).map(|i| i.to_string()).collect();
    }
    Ok(labels.into_iter().zip(items).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(yaml: &str) -> Pipeline {
        parse(Path::new("p.yaml"), yaml, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(yaml: &str) -> String {
        parse(Path::new("p.yaml"), yaml, &[])
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"
version: 1
name: demo
params: { lr: 0.1, target: late }
steps:
  train:
    uses: weir/train-linear
    inputs: { train: prep.data }
    with: { target: "${{ params.target }}", l2: "${{ params.lr }}" }
  prep:
    run: python prep.py --lr ${{ params.lr }}
    outputs: [data]
"#;

    #[test]
    fn orders_steps_and_substitutes_params() {
        let p = parse_ok(GOOD);
        assert_eq!(p.name, "demo");
        let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["prep", "train"]);
        assert_eq!(
            p.steps[0].action,
            Action::Command("python prep.py --lr 0.1".into())
        );
        assert_eq!(p.steps[1].with["l2"], serde_json::json!(0.1));
        assert_eq!(p.steps[1].with["target"], serde_json::json!("late"));
    }

    #[test]
    fn a_study_reserves_a_cpu_per_parallel_trial_unless_told_otherwise() {
        let yaml = |resources: &str| {
            format!(
                r#"
version: 1
name: study
steps:
  train:
    uses: weir/train-gbdt
    inputs: {{ train: prep.data }}
    with: {{ target: y, features: [x] }}
    {resources}
    tune: {{ space: {{ num_leaves: int(8, 64) }}, objective: {{ metric: valid.auc, goal: maximize }}, trials: 4, parallel: 3 }}
  prep:
    run: python prep.py
    outputs: [data]
"#
            )
        };
        let machine = |cpu: f64| Resources {
            cpu,
            memory_bytes: 1 << 30,
            gpu: 0,
        };
        let p = parse_ok(&yaml(""));
        let train = p.steps.iter().find(|s| s.name == "train").unwrap();
        assert_eq!(train.request(&machine(8.0)).cpu, 3.0);
        assert_eq!(
            train.request(&machine(2.0)).cpu,
            2.0,
            "capped by the machine"
        );
        let prep = p.steps.iter().find(|s| s.name == "prep").unwrap();
        assert_eq!(prep.request(&machine(8.0)).cpu, 1.0);
        let p = parse_ok(&yaml("resources: { cpu: 1 }"));
        let train = p.steps.iter().find(|s| s.name == "train").unwrap();
        assert_eq!(
            train.request(&machine(8.0)).cpu,
            1.0,
            "an explicit request wins"
        );
    }

    #[test]
    fn params_are_substituted_inside_tune_blocks() {
        let yaml = r#"
version: 1
name: study
params: { trials: 12, seed: 3 }
steps:
  train:
    uses: weir/train-gbdt
    inputs: { train: prep.data }
    with: { target: y, features: [x] }
    tune: { space: { num_leaves: int(8, 64) }, objective: { metric: valid.auc, goal: maximize }, trials: "${{ params.trials }}", seed: "${{ params.seed }}" }
  prep:
    run: python prep.py
    outputs: [data]
"#;
        let p = parse(Path::new("p.yaml"), yaml, &[("seed".into(), "9".into())]).unwrap();
        let train = p.steps.iter().find(|s| s.name == "train").unwrap();
        let spec = &train.tune.as_ref().unwrap().spec;
        assert_eq!(spec["trials"], serde_json::json!(12));
        assert_eq!(spec["seed"], serde_json::json!(9));
        let err = parse_err(&yaml.replace("params.seed", "params.sead"));
        assert!(
            err.contains("steps.train.tune") && err.contains("sead"),
            "{err}"
        );
    }

    #[test]
    fn overrides_keep_yaml_types_and_reject_unknown_params() {
        let p = parse(Path::new("p.yaml"), GOOD, &[("lr".into(), "0.5".into())]).unwrap();
        assert_eq!(p.steps[1].with["l2"], serde_json::json!(0.5));
        let err = parse(Path::new("p.yaml"), GOOD, &[("nope".into(), "1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'nope' is not a param"), "{err}");
        assert!(err.contains("declared params: [lr, target]"), "{err}");
    }

    #[test]
    fn retry_and_timeout_parse_and_validate() {
        let p = parse_ok(
            "version: 1\nsteps:\n  a:\n    run: x\n    timeout: 1m 30s\n    retry: { attempts: 3, backoff: 2s, max_backoff: 5s, on: [timeout, 137] }\n",
        );
        let step = &p.steps[0];
        assert_eq!(step.timeout_ms, Some(90_000));
        let retry = step.retry.as_ref().unwrap();
        assert!(
            retry.retries(Some(137), false)
                && retry.retries(None, true)
                && !retry.retries(Some(1), false)
        );
        assert_eq!(
            [1, 2, 3].map(|a| retry.backoff(a).as_millis()),
            [2000, 4000, 5000]
        );
        let any = parse_ok("version: 1\nsteps:\n  a:\n    run: x\n    retry: { attempts: 2 }\n");
        assert!(any.steps[0].retry.as_ref().unwrap().retries(Some(1), false));
        let err = parse_err("version: 1\nsteps:\n  a:\n    run: x\n    timeout: soon\n    retry: { attempts: 0, on: [oom] }\n");
        assert!(
            err.contains("p.yaml:5: steps.a.timeout: 'soon' is not a duration"),
            "{err}"
        );
        assert!(err.contains("attempts is 0"), "{err}");
        assert!(
            err.contains("\"oom\" is neither `timeout` nor an exit code"),
            "{err}"
        );
    }

    #[test]
    fn resources_parse_with_units() {
        let p = parse_ok("version: 1\nsteps:\n  a:\n    run: x\n    resources: { cpu: 0.5, memory: 2GiB, gpu: 1 }\n  b:\n    run: y\n");
        assert_eq!(
            p.steps[0].resources,
            Resources {
                cpu: 0.5,
                memory_bytes: 2 << 30,
                gpu: 1
            }
        );
        assert_eq!(p.steps[1].resources, Resources::default());
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        let err = parse_err(
            "version: 1\nsteps:\n  a:\n    run: x\n    resources: { cpu: -1, memory: 2 lots }\n",
        );
        assert!(
            err.contains("steps.a.resources.cpu: -1 is not a CPU count"),
            "{err}"
        );
        assert!(
            err.contains("steps.a.resources.memory: '2 lots' has an unknown unit 'lots'"),
            "{err}"
        );
    }

    #[test]
    fn data_parallel_trainers_ask_per_worker_but_not_in_a_study() {
        let yaml = "version: 1\nsteps:\n  t:\n    uses: weir/train-gbdt\n    inputs: { train: x.table }\n    with: { target: y, workers: 3 }\n    resources: { cpu: 2 }\n  x:\n    uses: weir/ingest\n    with: { path: x.csv }\n";
        let p = parse_ok(yaml);
        let t = p.steps.iter().find(|s| s.name == "t").unwrap();
        assert_eq!(t.workers(), 3);
        assert_eq!(t.request(&Resources::default()).cpu, 6.0);
        // `workers` means nothing to other ops.
        let x = p.steps.iter().find(|s| s.name == "x").unwrap();
        assert_eq!(x.workers(), 1);
        let tuned = yaml.replace(
            "    resources: { cpu: 2 }\n",
            "    resources: { cpu: 2 }\n    tune:\n      space: { num_leaves: randint(4, 8) }\n      trials: 2\n",
        );
        let p = parse_ok(&tuned);
        let t = p.steps.iter().find(|s| s.name == "t").unwrap();
        assert_eq!(t.workers(), 1);
    }

    #[test]
    fn distributed_steps_parse_and_ask_per_worker() {
        let p = parse_ok("version: 1\nsteps:\n  a:\n    run: python ddp.py\n    distributed: { workers: 4, backend: torch }\n    resources: { cpu: 0.5, memory: 1GiB }\n");
        let step = &p.steps[0];
        assert_eq!(
            step.distributed,
            Some(Distributed {
                workers: 4,
                backend: "torch".into(),
                placement: Placement::Pack,
            })
        );
        let r = step.request(&Resources::default());
        assert_eq!((r.cpu, r.memory_bytes), (2.0, 4 << 30));
        let err = parse_err("version: 1\nsteps:\n  a:\n    uses: weir/ingest\n    with: { path: x.csv }\n    distributed: { workers: 0, backend: mpi, placement: everywhere }\n");
        assert!(
            err.contains("steps.a.distributed: only `run:` steps can be distributed"),
            "{err}"
        );
        assert!(
            err.contains("steps.a.distributed.workers: 0 workers is not a worker count"),
            "{err}"
        );
        assert!(
            err.contains("steps.a.distributed.backend: 'mpi' is not a backend"),
            "{err}"
        );
        assert!(
            err.contains("steps.a.distributed.placement: 'everywhere' is not a placement"),
            "{err}"
        );
        let p = parse_ok("version: 1\nsteps:\n  a:\n    run: python ddp.py\n    distributed: { workers: 2, placement: strict_spread }\n");
        assert_eq!(
            p.steps[0].distributed.as_ref().unwrap().placement,
            Placement::StrictSpread
        );
    }

    #[test]
    fn executors_and_custom_resources_parse_and_validate() {
        let p = parse_ok("version: 1\nsteps:\n  a:\n    run: x\n    executor: ray\n    resources: { cpu: 1, spot: 1, accelerator_type_a100: 0.5 }\n  b:\n    run: y\n");
        assert_eq!(p.steps[0].executor, Some(ExecutorKind::Ray));
        assert_eq!(
            p.steps[0].custom_resources,
            BTreeMap::from([
                ("accelerator_type_a100".to_string(), 0.5),
                ("spot".to_string(), 1.0)
            ])
        );
        assert_eq!(p.steps[0].resources.cpu, 1.0);
        assert_eq!(p.steps[1].executor, None);
        assert!(p.steps[1].custom_resources.is_empty());
        let err = parse_err("version: 1\nsteps:\n  a:\n    run: x\n    executor: k8s\n    resources: { cpus: 2, spot: yes, gpus: 1 }\n");
        assert!(
            err.contains("steps.a.executor: 'k8s' is not an executor")
                && err.contains("use `local` or `ray`"),
            "{err}"
        );
        assert!(
            err.contains("steps.a.resources.cpus: unknown resource 'cpus'")
                && err.contains("did you mean `cpu`?")
                && err.contains("did you mean `gpu`?"),
            "{err}"
        );
        assert!(
            err.contains("steps.a.resources.spot: \"yes\" is not an amount"),
            "{err}"
        );
    }

    #[test]
    fn foreach_expands_lists_and_matrices_and_gathers() {
        let p = parse_ok(
            "version: 1\nsteps:\n  train:\n    run: fit --lr ${{ item.lr }} --depth ${{ item.depth }}\n    foreach: { lr: [0.1, 0.01], depth: [3, 5] }\n    outputs: [model]\n  pick:\n    run: ls\n    inputs: { models: train.model }\n  each:\n    run: echo ${{ item }}\n    foreach: [a, b]\n",
        );
        let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"train[depth=3,lr=0.1]") && names.contains(&"each[b]"),
            "{names:?}"
        );
        assert_eq!(names.len(), 4 + 1 + 2);
        let t = p.step("train[depth=5,lr=0.01]").unwrap();
        assert_eq!(t.action, Action::Command("fit --lr 0.01 --depth 5".into()));
        let pick = p.step("pick").unwrap();
        assert_eq!(pick.inputs["models"].instances.len(), 4);
        assert_eq!(pick.upstream().len(), 4);
        let pick_at = names.iter().position(|n| *n == "pick").unwrap();
        assert!(
            names[..pick_at]
                .iter()
                .filter(|n| n.starts_with("train["))
                .count()
                == 4,
            "gathering waits for every instance"
        );

        let err = parse_err("version: 1\nsteps:\n  a:\n    run: echo ${{ item }}\n    foreach: 3\n  b:\n    run: echo ${{ item }}\n");
        assert!(
            err.contains("p.yaml:5: steps.a.foreach: foreach is 3; give a list"),
            "{err}"
        );
        assert!(
            err.contains("steps.b.run: '${{ item }}' is only defined in a step with `foreach:`"),
            "{err}"
        );
    }

    #[test]
    fn only_yaml_12_booleans_are_booleans() {
        let p = parse_ok("version: 1\nsteps:\n  a:\n    run: echo\n    with: { target: y, flag: no, on: true }\n");
        assert_eq!(p.steps[0].with["target"], serde_json::json!("y"));
        assert_eq!(p.steps[0].with["flag"], serde_json::json!("no"));
        assert_eq!(p.steps[0].with["on"], serde_json::json!(true));
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let err = parse_err("version: 1\nsteps:\n  a:\n    run: [unclosed\n");
        assert!(err.contains("p.yaml:"), "{err}");
        assert!(err.contains("yaml"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = parse_err("version: 1\nsteps:\n  a:\n    run: echo\n    retries: 3\n");
        assert!(err.contains("retries"), "{err}");
        assert!(err.contains("p.yaml:5"), "{err}");
    }

    #[test]
    fn unknown_references_name_line_and_field() {
        let err = parse_err(
            "version: 1\nsteps:\n  a:\n    run: echo\n    outputs: [x]\n  b:\n    run: cat\n    inputs: { i: c.x, j: a.y }\n",
        );
        assert!(
            err.contains("p.yaml:8: steps.b.inputs.i: unknown step 'c'"),
            "{err}"
        );
        assert!(
            err.contains("steps.b.inputs.j: step 'a' has no output 'y'"),
            "{err}"
        );
        assert!(err.contains("2 problems"), "{err}");
    }

    #[test]
    fn cycles_are_rejected_before_running() {
        let err = parse_err(
            "version: 1\nsteps:\n  a:\n    run: x\n    inputs: { i: c.o }\n    outputs: [o]\n  b:\n    run: y\n    inputs: { i: a.o }\n    outputs: [o]\n  c:\n    run: z\n    inputs: { i: b.o }\n    outputs: [o]\n",
        );
        assert!(err.contains("steps form a cycle"), "{err}");
        assert!(
            err.contains("a -> b -> c -> a")
                || err.contains("b -> c -> a -> b")
                || err.contains("c -> a -> b -> c"),
            "{err}"
        );
    }

    #[test]
    fn builtin_ops_check_inputs_and_outputs() {
        let err = parse_err(
            "version: 1\nsteps:\n  s:\n    uses: weir/split\n    outputs: [nope]\n  t:\n    uses: weir/teleport\n",
        );
        assert!(err.contains("weir/split needs the input 'table'"), "{err}");
        assert!(err.contains("weir/split has no output 'nope'"), "{err}");
        assert!(err.contains("unknown op 'weir/teleport'"), "{err}");
    }

    #[test]
    fn unknown_param_reference_is_an_error() {
        let err = parse_err("version: 1\nsteps:\n  a:\n    run: echo ${{ params.missing }}\n");
        assert!(
            err.contains("p.yaml:4: steps.a.run: unknown param 'missing'"),
            "{err}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any text, however broken, gives a spec or an error: never a panic.
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
                let _ = parse(Path::new("p.yaml"), &text, &[]);
            }

            /// Cutting or corrupting a valid spec anywhere gives an error with a
            /// location, or a spec: never a panic.
            #[test]
            fn damaged_specs_never_panic(cut in 0usize..GOOD.len(), byte in any::<u8>()) {
                let mut bytes = GOOD.as_bytes()[..cut].to_vec();
                bytes.push(byte);
                bytes.extend_from_slice(&GOOD.as_bytes()[cut..]);
                let text = String::from_utf8_lossy(&bytes);
                let _ = parse(Path::new("p.yaml"), &text, &[]);
                let _ = parse(Path::new("p.yaml"), &GOOD[..cut], &[("lr".into(), text.to_string())]);
            }
        }
    }
}
