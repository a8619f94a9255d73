//! The `weir` binary: argument parsing and wiring only. Every command calls
//! into the library crates and prints through `output`.

mod card;
mod governance;
mod lineage;
mod observe;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use weir_core::config::Config;
use weir_engine::{progress, Context, RunOptions};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir: ML pipelines from raw data to a served model, in one binary"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by every command; each also reads its WEIR_* variable and weir.toml.
#[derive(Args)]
struct Global {
    /// Directory for the embedded database and artifacts [env: WEIR_HOME] [default: .weir]
    #[arg(long, global = true)]
    home: Option<String>,
    /// Metadata store: sqlite://PATH or postgres://USER@HOST:PORT/DB [env: WEIR_DB]
    #[arg(long, global = true)]
    db: Option<String>,
    /// Artifact store: a directory or s3://BUCKET/PREFIX [env: WEIR_ARTIFACTS]
    #[arg(long, global = true)]
    artifacts: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline
    Run {
        /// The pipeline file
        file: PathBuf,
        /// Override a pipeline param: -p key=value (repeatable)
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Steps run at once [env: WEIR_MAX_PARALLEL] [default: number of CPUs]
        #[arg(long)]
        max_parallel: Option<u32>,
        /// Where steps without their own `executor:` run: local or ray [env: WEIR_EXECUTOR] [default: local]
        #[arg(long)]
        executor: Option<String>,
        /// Run every step, ignoring earlier results with the same inputs [env: WEIR_NO_CACHE]
        #[arg(long, env = "WEIR_NO_CACHE")]
        no_cache: bool,
        /// Print the outcome as JSON instead of the live display
        #[arg(long)]
        json: bool,
        /// Serve the runner's Prometheus metrics on this address while the run goes on
        #[arg(long, env = "WEIR_METRICS_ADDR")]
        metrics_addr: Option<String>,
        /// The off-peak window (UTC, e.g. 22:00-06:00) that `run_in: off_peak` steps wait for [env: WEIR_OFF_PEAK]
        #[arg(long)]
        off_peak: Option<String>,
    },
    /// Continue a failed, cancelled or crashed run; steps that succeeded are not run again
    Resume {
        /// Run id (or a unique prefix)
        run: String,
        /// Steps run at once [env: WEIR_MAX_PARALLEL] [default: number of CPUs]
        #[arg(long)]
        max_parallel: Option<u32>,
        /// Where steps without their own `executor:` run: local or ray (e.g. local when the cluster is gone) [env: WEIR_EXECUTOR]
        #[arg(long)]
        executor: Option<String>,
        #[arg(long)]
        json: bool,
        /// Serve the runner's Prometheus metrics on this address while the run goes on
        #[arg(long, env = "WEIR_METRICS_ADDR")]
        metrics_addr: Option<String>,
        /// The off-peak window (UTC) that `run_in: off_peak` steps wait for [env: WEIR_OFF_PEAK]
        #[arg(long)]
        off_peak: Option<String>,
    },
    /// Stop a running run: its steps are stopped and the run is recorded as failed
    Cancel {
        /// Run id (or a unique prefix)
        run: String,
    },
    /// Pipeline runs
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Print the captured output of a step
    Logs {
        /// Run id (or a unique prefix)
        run: String,
        /// Step name
        step: String,
        /// Keep printing while the step runs (through its retries), until it ends
        #[arg(long, short)]
        follow: bool,
    },
    /// Dataset versions, their schemas and profiles
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// Compare two tables (CSV, CSV.gz, Parquet or JSON lines): schema changes and each
    /// column's distribution shift, as `weir datasets diff` does for versions
    Drift {
        /// The reference: a table, or `model:NAME[:VERSION]` for the inputs the model
        /// version was trained on (the profile kept with it)
        reference: String,
        /// The table compared with it
        current: std::path::PathBuf,
        /// The share of drifted columns at which the whole table counts as drifted
        #[arg(long, default_value_t = weir_data::DATASET_SHARE)]
        share: f64,
        /// How each column is judged: auto (Evidently's choice: a test for a reference of
        /// up to 1,000 rows, a distance above), ks (KS / chi-squared), wasserstein
        /// (normed Wasserstein / Jensen-Shannon) or psi
        #[arg(long, default_value = "auto")]
        method: weir_data::Method,
        /// Also write the report, with each column's distributions drawn, as HTML
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The model registry
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Tracking experiments
    #[command(subcommand)]
    Experiments(ExperimentsCommand),
    /// Hyper-parameter studies (steps with a `tune:` block)
    #[command(subcommand)]
    Study(StudyCommand),
    /// Deploy a model version to an endpoint; after the first, versions roll out by strategy
    Deploy {
        endpoint: String,
        #[arg(long)]
        model: String,
        /// The version to deploy [default: the latest]
        #[arg(long)]
        version: Option<i64>,
        /// canary (weighted steps, judged each interval), bluegreen (switch once warm),
        /// shadow (mirror traffic, promote by hand), direct (switch now)
        #[arg(long, default_value = "canary")]
        strategy: String,
        /// Canary weights in percent
        #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
        steps: Vec<i64>,
        /// How often the candidate is judged against the stable version
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Roll back when the candidate's error rate exceeds the stable's by more than this
        #[arg(long, default_value_t = 0.01)]
        max_error_rate: f64,
        /// Roll back when the candidate's p99 latency exceeds this (e.g. 50ms)
        #[arg(long, value_parser = humantime::parse_duration)]
        max_p99: Option<std::time::Duration>,
        /// Fewer candidate requests than this in an interval: pause instead of judging
        #[arg(long, default_value_t = 20)]
        min_requests: u64,
        /// Roll back when the candidate's online accuracy (labels sent to
        /// POST /v2/models/ENDPOINT/feedback) is this much below the stable's (e.g. 0.02)
        #[arg(long)]
        max_accuracy_drop: Option<f64>,
        /// Labels each version needs in an interval before accuracy is judged
        #[arg(long, default_value_t = 20)]
        min_labels: u64,
        /// Roll back when the candidate's predictions drift from the stable version's
        /// over the interval: population stability index above this (e.g. 0.2)
        #[arg(long)]
        max_drift: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Rollouts of an endpoint: status, promote, rollback, history
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// API tokens for `weir server`: once one exists, every call but the health checks needs
    /// one (MLflow clients: MLFLOW_TRACKING_TOKEN), with a role that covers it
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Changes held for a second person ([approvals] in weir.toml: protected aliases and
    /// endpoints): list them, approve (applies the change) or reject
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Serve registered models over the Open Inference Protocol v2 and MLflow's /invocations
    Serve {
        /// Models to serve: NAME (latest version) or NAME:VERSION. Endpoints made with
        /// `weir deploy` are served as well, with their rollouts.
        models: Vec<String>,
        /// Address to listen on [env: WEIR_SERVE_ADDR] [default: 127.0.0.1:8080]
        #[arg(long)]
        addr: Option<String>,
        /// Also serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService,
        /// as tritonclient.grpc and KServe's clients speak it) on this address, e.g.
        /// 127.0.0.1:8081; over TLS too when --tls-cert is given
        #[arg(long, env = "WEIR_SERVE_GRPC_ADDR", value_name = "ADDR")]
        grpc_addr: Option<String>,
        /// Largest request body (gRPC: message) accepted, in bytes
        #[arg(long, env = "WEIR_SERVE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
        max_body_bytes: usize,
        /// Share of requests traced when an OTLP endpoint is set (a caller's traceparent
        /// decides for its own requests)
        #[arg(long, env = "WEIR_TRACE_SAMPLE", default_value_t = 0.01, value_parser = rate)]
        trace_sample: f64,
        /// A model or endpoint whose inference and metadata need an API token (viewer or
        /// above) once the store has any; repeat it, or `*` for all. Loading and unloading
        /// versions always needs an admin token, labels an editor's.
        #[arg(long, value_name = "NAME")]
        private: Vec<String>,
        #[command(flatten)]
        tls: TlsArgs,
        /// Inference requests answered at once; more get 429 Too Many Requests
        #[arg(long, env = "WEIR_SERVE_MAX_CONCURRENCY", default_value_t = 256)]
        max_concurrency: usize,
        /// Longest an inference request may take, body included (e.g. 10s, 500ms); then 504
        #[arg(long, env = "WEIR_SERVE_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        request_timeout: std::time::Duration,
        /// Memory for cached answers, in MiB (answers keyed by model, version and the exact body); 0: off
        #[arg(long, env = "WEIR_SERVE_RESPONSE_CACHE_MB", default_value_t = 0)]
        response_cache_mb: usize,
        /// Batch each model's concurrent requests into calls of at most this many rows; 0: off
        #[arg(long, env = "WEIR_SERVE_MAX_BATCH_ROWS", default_value_t = 0)]
        max_batch_rows: usize,
        /// How long the first request of a batch waits for others (e.g. 2ms)
        #[arg(long, env = "WEIR_SERVE_MAX_BATCH_DELAY", default_value = "2ms", value_parser = humantime::parse_duration)]
        max_batch_delay: std::time::Duration,
        /// One model's batching, over the two above: NAME=ROWS[:DELAY] (e.g. flights=64:5ms;
        /// ROWS 0 turns it off for that model); repeatable
        #[arg(long = "batch", value_parser = weir_serve::BatchOptions::parse_override)]
        batch_by_model: Vec<(String, weir_serve::BatchOptions)>,
        /// Threads answering requests [default: one per core]. On a machine shared with
        /// other busy processes (a load generator, say), fewer threads than cores keep the
        /// tail latency down: a thread preempted mid-request is what makes a slow p99
        #[arg(long, env = "WEIR_SERVE_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Log this share of requests (0 to 1) with their features and predictions, as
        /// Parquet segments in the artifact store, for `weir monitor` and drift checks
        #[arg(long, env = "WEIR_SERVE_LOG_PREDICTIONS", default_value_t = 0.0, value_parser = rate)]
        log_predictions: f64,
        /// Write a log segment once it has this many rows...
        #[arg(long, default_value_t = 10_000)]
        log_segment_rows: usize,
        /// ...or its first row has waited this long
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        log_flush: std::time::Duration,
        /// Keep at most this many MiB of log segments per endpoint (the oldest go first)
        #[arg(long, default_value_t = 1024)]
        log_keep_mb: u64,
        /// Monitors to run (YAML) [env: WEIR_MONITORS]; see README "Monitoring"
        #[arg(long)]
        monitors: Option<PathBuf>,
        /// How often each logging endpoint's feature drift is checked for /metrics
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        check_every: std::time::Duration,
        /// The window of requests those checks look at
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        check_window: std::time::Duration,
    },
    /// Feature drift and online accuracy of an endpoint's (or a model's) logged requests
    /// over a window, against the training profile; with the alerts its monitors fired
    Monitor {
        /// An endpoint, or a model served directly
        target: String,
        /// The requests answered this long ago or since
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        window: std::time::Duration,
        /// Fewer logged rows than this: "not enough data"
        #[arg(long, default_value_t = weir_serve::monitor::MIN_ROWS)]
        min_rows: usize,
        /// Share of drifted features at which the inputs as a whole drift
        #[arg(long, default_value_t = weir_data::DATASET_SHARE)]
        share: f64,
        /// How each feature is judged: auto, ks, wasserstein or psi (see `weir drift`)
        #[arg(long, default_value = "auto")]
        method: weir_data::Method,
        /// Also write an HTML report with per-feature histograms to this file
        #[arg(long)]
        html: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Pipelines run on a cron schedule by `weir scheduler`
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Run the schedules: fire each pipeline on time, catch up missed firings by policy
    /// (one active scheduler per store; others stand by)
    Scheduler {
        /// How often the schedules are looked at
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        tick: std::time::Duration,
        /// A firing started later than this after its time was missed (caught up by policy)
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Service level objectives: each endpoint's error budget and burn rates
    #[command(subcommand)]
    Slo(SloCommand),
    /// What work cost: a run's steps and trials, or everything since a time, by pipeline,
    /// run, step, model or endpoint (at the prices of `[prices]` in weir.toml)
    Cost {
        /// A run (id or unique prefix); without it, everything that ended within --since
        run: Option<String>,
        /// Work that ended this long ago or since
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// How to group: pipeline, run, step, model (training cost of each version) or
        /// endpoint (serving cost per 1,000 inferences)
        #[arg(long, value_enum, default_value = "pipeline")]
        by: output::CostBy,
        /// Show the price table in force and where it comes from
        #[arg(long, conflicts_with = "run")]
        prices: bool,
        #[arg(long)]
        json: bool,
    },
    /// Where a model, dataset version or run came from (upstream: datasets, source files
    /// with digests, code revision, params, Weir version) and what was made from it
    /// (downstream: models and the endpoints serving them)
    Lineage {
        /// MODEL[:VERSION], DATASET[@VERSION] or a run id (or unique prefix)
        reference: String,
        /// Only what it came from
        #[arg(long, conflicts_with = "downstream")]
        upstream: bool,
        /// Only what was made from it (impact analysis)
        #[arg(long)]
        downstream: bool,
        #[arg(long, conflicts_with = "dot")]
        json: bool,
        /// Graphviz, for `dot -Tsvg`
        #[arg(long)]
        dot: bool,
    },
    /// The audit log: every change to runs, model versions and aliases, deployments and
    /// schedules, who made it and what it changed; --verify checks its hash chain
    Audit {
        /// Entries this recent or newer
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Recompute the whole chain; exit 1 if any entry was changed, removed or reordered
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve experiment tracking over MLflow's REST API (MLFLOW_TRACKING_URI=http://ADDR)
    Server {
        /// Address to listen on
        #[arg(long, env = "WEIR_SERVER_ADDR", default_value = "127.0.0.1:5000")]
        addr: String,
        /// Open the dashboard in the default browser once listening
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Check the stores against the metadata: every blob it names is read whole and
    /// hashed, every running run has a live runner, every endpoint's versions exist.
    /// Exits 1 while a problem remains.
    Fsck {
        /// Quarantine corrupt blobs (a run that needs one makes it again) and record
        /// orphaned runs as failed (so `weir resume` continues them)
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete the artifact blobs nothing names: unnamed blobs older than the grace period
    /// go to the store's trash, and a later gc deletes what stayed unnamed there for
    /// the grace period too. Safe while runs write.
    Gc {
        /// Say what would be moved and deleted, and change nothing
        #[arg(long)]
        dry_run: bool,
        /// How old an unnamed blob must be, and how long it stays in the trash (e.g. 1h, 10m)
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Back up the metadata store (a consistent snapshot) and every blob it names to a
    /// directory or s3://bucket/prefix; blobs already there are not copied again
    Backup {
        /// A directory or s3://bucket/prefix
        dest: String,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup onto an empty store (WEIR_DB must not exist yet or hold no
    /// tables); artifacts are copied into WEIR_ARTIFACTS, every one verified
    Restore {
        /// Where `weir backup` wrote
        src: String,
        /// The backup to restore (an id or its prefix); default: the latest
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        /// List the backups there instead
        #[arg(long)]
        list: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the effective configuration and where each value comes from
    Config {
        #[arg(long)]
        json: bool,
    },
    /// Run one step run (the step runtime; started by `weir run`)
    #[command(hide = true)]
    Exec {
        step_run_id: String,
        /// Read the task (JSON) from stdin instead of the metadata store
        #[arg(long)]
        task_on_stdin: bool,
    },
    /// Run one trial of a study as a cluster job (started by the study)
    #[command(hide = true)]
    ExecTrial { step_run_id: String, number: usize },
    /// Run one rank of a distributed step beside rank 0 (started on Ray)
    #[command(hide = true)]
    ExecRank {
        step_run_id: String,
        #[arg(long)]
        rank: u32,
    },
    /// Run one worker of a data-parallel trainer (started by its step)
    #[command(hide = true)]
    TrainWorker { spec: std::path::PathBuf },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Schedule a pipeline
    Add {
        /// The pipeline file
        file: PathBuf,
        /// When: five fields, minute hour day-of-month month day-of-week, in UTC
        /// (e.g. "0 3 * * *"); a sixth, first, gives seconds
        #[arg(long)]
        cron: String,
        /// The off-peak window (UTC, e.g. 22:00-06:00) its `run_in: off_peak` steps wait for
        #[arg(long)]
        window: Option<String>,
        /// A pipeline param for its runs: -p key=value (repeatable)
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Firings missed while no scheduler ran: skip them, or run once for all of them
        #[arg(long, default_value = "skip", value_parser = ["skip", "once"])]
        catch_up: String,
        /// The schedule's name (default: the pipeline's)
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Schedules with their next firing
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule and its history
    Remove { name: String },
    /// What each firing of a schedule did
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SloCommand {
    /// Error budget left and burn rates (5m, 30m, 1h, 6h) of each objective, from every
    /// replica's counts; the objectives are the `slos:` of the monitors file or weir.toml
    Status {
        /// One endpoint (default: every endpoint with an SLO)
        endpoint: Option<String>,
        /// The file with the `slos:` (default: the `monitors` setting)
        #[arg(long)]
        monitors: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Recent runs, newest first
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// A run's steps, timings, outputs and metrics
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Tracked runs (pipelines, their steps and MLflow runs) matching a filter,
    /// e.g. "metrics.auc > 0.7 AND params.model = 'gbdt'"
    Search {
        /// MLflow's search grammar; empty matches every run
        #[arg(default_value = "")]
        filter: String,
        /// Experiments to search (names); all active ones when omitted
        #[arg(long = "experiment", short = 'e')]
        experiments: Vec<String>,
        /// Sort keys, e.g. "metrics.auc DESC" (repeatable)
        #[arg(long)]
        order_by: Vec<String>,
        #[arg(long, default_value_t = 50)]
        max_results: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ExperimentsCommand {
    /// Experiments (one per pipeline, plus those made by MLflow clients)
    List {
        /// Include deleted experiments
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenRole {
    /// Read runs, models, artifacts, metrics
    Viewer,
    /// Also log runs, params, metrics and artifacts
    Editor,
    /// Also change the registry: models, versions, aliases, stages
    Admin,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Make a token; its text is printed once, and only its hash is kept
    Create {
        /// Who or what uses it (shown in the audit log)
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: TokenRole,
        /// It stops working this long from now (e.g. 90d)
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Tokens with their roles, expiry and whether revoked (never their text)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a token working (within 5 s on a running server)
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending requests, newest first
    List {
        /// Decided ones too
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request someone else made, and apply its change
    Approve {
        /// The request's id (or a unique prefix)
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Reject a request someone else made; nothing changes
    Reject {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// The endpoint's versions, weights, phase and why
    Status {
        endpoint: String,
        #[arg(long)]
        json: bool,
    },
    /// Advance the rollout one step now (the last step makes the candidate stable)
    Promote {
        endpoint: String,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw the candidate now
    Rollback {
        endpoint: String,
        #[arg(long)]
        json: bool,
    },
    /// Everything that happened to the endpoint, oldest first
    History {
        endpoint: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StudyCommand {
    /// The trials of a tuned step, best first marked with *
    Show {
        /// Run id (or a unique prefix)
        run: String,
        /// The tuned step
        step: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// Datasets with their latest version
    List {
        #[arg(long)]
        json: bool,
    },
    /// A dataset's versions and one version's schema and profile: NAME (the latest)
    /// or NAME@VERSION
    Show {
        #[arg(value_name = "NAME[@VERSION]")]
        dataset: String,
        #[arg(long)]
        json: bool,
    },
    /// Schema changes and each column's distribution shift from one version to
    /// another (default: the last two)
    Diff {
        name: String,
        from: Option<i64>,
        to: Option<i64>,
        /// Also write the report, with each column's distributions drawn, as HTML
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Registered models
    List {
        #[arg(long)]
        json: bool,
    },
    /// Register a model file as the next version of NAME: an ONNX graph (e.g. from skl2onnx)
    /// or a Weir model file. The file must load and run before it gets a version.
    Register {
        name: String,
        file: std::path::PathBuf,
        #[arg(long)]
        description: Option<String>,
        /// Rows like those the model will serve (CSV, Parquet or JSON lines): the model
        /// scores them and their spread becomes the version's prediction reference, which
        /// rollouts measure drift against (`weir deploy --max-drift`). A Weir model file
        /// from a pipeline carries its own, from the validation rows.
        #[arg(long, value_name = "ROWS")]
        reference: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The version's model card (Markdown on stdout; --html FILE for a page): intended use,
    /// data, metrics, per-slice metrics with the largest gaps flagged, lineage, known limits.
    /// Both forms are stored as artifacts of the version (tags weir.card.markdown/html).
    Card {
        /// NAME or NAME:VERSION (the latest without one)
        model: String,
        /// Also write the card as one self-contained HTML page
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Point an alias (e.g. champion) at a version, or --delete it; a version its gates
    /// rejected cannot become champion
    Alias {
        name: String,
        alias: String,
        #[arg(required_unless_present = "delete")]
        version: Option<i64>,
        #[arg(long, conflicts_with = "version")]
        delete: bool,
    },
    /// A model's versions, or one version with its lineage and metrics
    Show {
        name: String,
        #[arg(long)]
        version: Option<i64>,
        #[arg(long)]
        json: bool,
    },
}

fn config(global: &Global, extra: &[(&str, Option<String>)]) -> Result<Config> {
    let mut flags = vec![
        ("home", global.home.clone()),
        ("db", global.db.clone()),
        ("artifacts", global.artifacts.clone()),
    ];
    flags.extend(extra.iter().cloned());
    let dir = std::env::current_dir().context("cannot read the current directory")?;
    Ok(Config::resolve(&dir, &|k| std::env::var(k).ok(), &flags)?)
}

fn parse_params(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("-p {p}: expected KEY=VALUE, e.g. -p seed=7"))
        })
        .collect()
}

/// Starts exporting traces when an OTLP endpoint is configured.
fn start_tracing(config: &Config, service: &str) -> Result<()> {
    if let Some(url) = weir_trace::endpoint(config.otlp_endpoint()) {
        weir_trace::init(&url, service).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The progress display, reporting to the runner's metrics too when
/// `--metrics-addr` asks for them.
async fn with_metrics(
    addr: Option<&str>,
    ctx: &Context,
    progress: Box<dyn progress::Progress>,
) -> Result<Box<dyn progress::Progress>> {
    match addr {
        Some(addr) => observe::runner_metrics(addr, ctx.store.clone(), progress).await,
        None => Ok(progress),
    }
}

/// The live display for people, nothing for `--json`.
fn progress_for(json: bool) -> Box<dyn progress::Progress> {
    if json {
        Box::new(progress::Quiet)
    } else {
        Box::new(progress::Display::new())
    }
}

/// Prints a run's outcome; the exit code says whether it succeeded.
/// A share between 0 and 1.
fn rate(text: &str) -> std::result::Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| {
            format!("'{text}' is not a share between 0 and 1 (e.g. 0.1 logs one request in ten)")
        })
}

fn finish(outcome: &weir_engine::RunOutcome, json: bool) -> ExitCode {
    output::run_outcome(outcome, json);
    if outcome.status == weir_store::RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Records runs whose runner died as failed, and says so.
async fn reap(ctx: &Context) -> Result<()> {
    for id in weir_engine::liveness::reap_orphaned_runs(ctx).await? {
        eprintln!("note: run {id} lost its runner and is recorded as failed; continue it with `weir resume {}`", &id[..12]);
    }
    Ok(())
}

fn default_actor() -> String {
    // The subcommand as clap reads it (global flags may come first).
    let command = {
        use clap::CommandFactory;
        Cli::command()
            .try_get_matches_from(std::env::args_os())
            .ok()
            .and_then(|m| m.subcommand_name().map(str::to_string))
            .unwrap_or_default()
    };
    format!(
        "{}@{} (weir {command})",
        current_user(),
        weir_core::process::hostname()
    )
}

/// Who runs this command: the login name (approvals are decided by name).
fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(login_name)
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

/// The account's name from the password database, when no variable says it
/// (a service or a container often sets neither USER nor LOGNAME).
fn login_name() -> Option<String> {
    // SAFETY: getpwuid returns null or a pointer to a static record that
    // stays valid until the next call; the name is copied out at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

async fn main_async(cli: Cli) -> Result<ExitCode> {
    // Whom the audit log names for this process's changes (worked out only
    // if it makes one).
    weir_store::audit::set_default_actor(default_actor);
    match cli.command {
        Command::Run {
            file,
            params,
            max_parallel,
            executor,
            no_cache,
            json,
            metrics_addr,
            off_peak,
        } => {
            let config = config(
                &cli.global,
                &[
                    ("max_parallel", max_parallel.map(|v| v.to_string())),
                    ("executor", executor),
                    ("off_peak", off_peak),
                ],
            )?;
            let pipeline = weir_core::pipeline::load(&file, &parse_params(&params)?)?;
            start_tracing(&config, "weir-runner")?;
            let ctx = Context::open(config.clone()).await?;
            reap(&ctx).await?;
            let options = RunOptions {
                max_parallel: config.max_parallel()?,
                exec_binary: None,
                no_cache,
            };
            let progress = with_metrics(metrics_addr.as_deref(), &ctx, progress_for(json)).await?;
            let outcome = weir_engine::run_pipeline(&ctx, &pipeline, &options, &*progress).await?;
            Ok(finish(&outcome, json))
        }
        Command::Resume {
            run,
            max_parallel,
            executor,
            json,
            metrics_addr,
            off_peak,
        } => {
            let config = config(
                &cli.global,
                &[
                    ("max_parallel", max_parallel.map(|v| v.to_string())),
                    ("executor", executor),
                    ("off_peak", off_peak),
                ],
            )?;
            start_tracing(&config, "weir-runner")?;
            let ctx = Context::open(config.clone()).await?;
            reap(&ctx).await?;
            let options = RunOptions {
                max_parallel: config.max_parallel()?,
                exec_binary: None,
                no_cache: false,
            };
            let progress = with_metrics(metrics_addr.as_deref(), &ctx, progress_for(json)).await?;
            let outcome = weir_engine::resume_run(&ctx, &run, &options, &*progress).await?;
            Ok(finish(&outcome, json))
        }
        Command::Cancel { run } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let ended = weir_engine::cancel_run(&ctx, &run).await?;
            println!(
                "run {} {}: {}",
                ended.id,
                ended.status,
                ended.error.unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            step_run_id,
            task_on_stdin,
        } => {
            let config = config(&cli.global, &[])?;
            // A step's runtime traces only as part of its runner's trace;
            // a runner on this machine exports its spans for it.
            if weir_trace::inherited().is_some() {
                if std::env::var(weir_trace::RELAY_VAR).is_ok_and(|v| v == "1") {
                    weir_trace::init_relay();
                } else {
                    start_tracing(&config, "weir-exec")?;
                }
            }
            let ctx = Context::open_for_step(config)?;
            let task = match task_on_stdin {
                true => {
                    use tokio::io::AsyncReadExt;
                    let mut json = String::new();
                    tokio::io::stdin()
                        .read_to_string(&mut json)
                        .await
                        .context("cannot read the task from stdin")?;
                    Some(serde_json::from_str(&json).context("the task on stdin is not valid")?)
                }
                false => None,
            };
            weir_engine::exec::exec_step(&ctx, &step_run_id, task).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExecRank { step_run_id, rank } => {
            let ctx = Context::open_for_step(config(&cli.global, &[])?)?;
            let status = weir_engine::ray_group::exec_rank(&ctx, &step_run_id, rank).await?;
            Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
        }
        Command::TrainWorker { spec } => {
            weir_engine::group::train_worker(&spec)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExecTrial {
            step_run_id,
            number,
        } => {
            let ctx = Context::open_for_step(config(&cli.global, &[])?)?;
            weir_engine::ray_trials::exec_trial(&ctx, &step_run_id, number).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(RunsCommand::List { limit, json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            reap(&ctx).await?;
            output::runs(&ctx.store.list_runs(limit).await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(RunsCommand::Show { run, json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            reap(&ctx).await?;
            output::run_detail(&ctx.store, &run, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { run, step, follow } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::logs(&ctx, &run, &step, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(RunsCommand::Search {
            filter,
            experiments,
            order_by,
            max_results,
            json,
        }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            reap(&ctx).await?;
            output::search_runs(
                &ctx.store,
                &filter,
                &experiments,
                &order_by,
                max_results,
                json,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Study(StudyCommand::Show { run, step, json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::study(&ctx, &run, &step, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Experiments(ExperimentsCommand::List { all, json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::experiments(&ctx.store, all, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drift {
            reference,
            current,
            share,
            method,
            html,
            json,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&share) && share > 0.0,
                "--share {share} is not a share of columns; give a number in (0, 1], e.g. 0.5"
            );
            let profile = |path: &std::path::Path| -> Result<weir_data::Profile> {
                let table = weir_data::read_table(
                    path,
                    &weir_data::IngestOptions::new(path.display().to_string()),
                )?;
                Ok(weir_data::profile(&table)?)
            };
            // The current table is read while the reference is being profiled.
            let reading = {
                let current = current.clone();
                std::thread::spawn(move || {
                    weir_data::read_table(
                        &current,
                        &weir_data::IngestOptions::new(current.display().to_string()),
                    )
                })
            };
            let a = match reference.strip_prefix("model:") {
                Some(model) => {
                    let ctx = Context::open(config(&cli.global, &[])?).await?;
                    let (name, version) = match model.rsplit_once(':') {
                        Some((name, v)) => (
                            name,
                            Some(v.parse::<i64>().with_context(|| {
                                format!("'{v}' in {reference} is not a version number; write model:NAME:3")
                            })?),
                        ),
                        None => (model, None),
                    };
                    let mv = ctx.store.model_version(name, version).await?;
                    let lineage: serde_json::Value =
                        serde_json::from_str(&mv.lineage_json).unwrap_or_default();
                    serde_json::from_value(lineage["feature_reference"].clone()).map_err(|_| {
                        anyhow::anyhow!(
                            "{name}:{} keeps no profile of its training inputs\n  hint: models trained by this Weir keep one; for an ONNX file, register it with `weir models register {name} FILE --reference ROWS`",
                            mv.version
                        )
                    })?
                }
                None => profile(std::path::Path::new(&reference))?,
            };
            let b = {
                let table = reading
                    .join()
                    .map_err(|_| anyhow::anyhow!("reading {} panicked", current.display()))??;
                // Against a model, only the columns it reads count.
                let keep: Vec<usize> = match reference.starts_with("model:") {
                    true => a
                        .columns
                        .iter()
                        .filter_map(|c| table.schema().index_of(&c.name).ok())
                        .collect(),
                    false => (0..table.num_columns()).collect(),
                };
                weir_data::profile(&table.project(&keep)?)?
            };
            let names = (reference.clone(), current.display().to_string());
            output::drift(
                &format!("{} against {}", names.1, names.0),
                (&names.0, &names.1),
                &a,
                &b,
                (share, method),
                html.as_deref(),
                json,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Datasets(DatasetsCommand::List { json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::datasets(&ctx.store.list_datasets().await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Datasets(DatasetsCommand::Show { dataset, json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let (name, version) = match dataset.rsplit_once('@') {
                Some((name, v)) => (
                    name,
                    Some(v.parse::<i64>().with_context(|| {
                        format!("'{v}' in {dataset} is not a version number; write NAME@3")
                    })?),
                ),
                None => (dataset.as_str(), None),
            };
            let versions = ctx.store.dataset_versions(name).await?;
            let shown = ctx.store.dataset_version(name, version).await?;
            output::dataset(&versions, &shown, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Datasets(DatasetsCommand::Diff {
            name,
            from,
            to,
            html,
            json,
        }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let versions = ctx.store.dataset_versions(&name).await?;
            let last = versions.last().expect("a dataset has a version").version;
            let (from, to) = match (from, to) {
                (Some(a), Some(b)) => (a, b),
                (Some(a), None) => (a, last),
                (None, _) if versions.len() < 2 => anyhow::bail!(
                    "{name} has one version; there is nothing to compare it with\n  hint: `weir datasets show {name}` shows it"
                ),
                (None, _) => (last - 1, last),
            };
            let a = ctx.store.dataset_version(&name, Some(from)).await?;
            let b = ctx.store.dataset_version(&name, Some(to)).await?;
            output::dataset_diff(&a, &b, html.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::List { json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::models(&ctx.store.list_models().await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::Register {
            name,
            file,
            description,
            reference,
            json,
        }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let registered = weir_serve::register_file(
                &ctx.store,
                &ctx.artifacts,
                &name,
                &file,
                description,
                reference.as_deref(),
            )
            .await?;
            output::registered(&registered, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::Card { model, html }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let (name, version) = match model.rsplit_once(':') {
                Some((name, v)) => (
                    name.to_string(),
                    Some(v.parse::<i64>().map_err(|_| {
                        anyhow::anyhow!("'{model}': version '{v}' is not a number; e.g. {name}:2")
                    })?),
                ),
                None => (model.clone(), None),
            };
            let card = card::build(&ctx.store, &name, version).await?;
            let version = ctx.store.model_version(&name, version).await?.version;
            let (markdown, page) = (card.markdown(), card.html());
            // Kept with the version: the card as it was when asked for.
            for (form, text) in [("markdown", &markdown), ("html", &page)] {
                let stored = ctx
                    .artifacts
                    .put_bytes(text.clone().into_bytes().into())
                    .await?;
                let digest = stored.digest;
                ctx.store
                    .record_artifact(&weir_engine::exec::artifact_record(stored))
                    .await?;
                ctx.store
                    .set_model_version_tag(
                        &name,
                        version,
                        &format!("weir.card.{form}"),
                        &digest.hex(),
                    )
                    .await?;
            }
            if let Some(path) = html {
                std::fs::write(&path, &page)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            print!("{markdown}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::Alias {
            name,
            alias,
            version,
            delete,
        }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            match version.filter(|_| !delete) {
                Some(v) if ctx.config.approvals.aliases.contains(&alias) => {
                    // Refused now if it could never be applied (e.g. a rejected version).
                    weir_store::registry::refuse_rejected(
                        &ctx.store.version_detail(&name, v).await?,
                        &format!("become {alias}"),
                    )?;
                    let payload = serde_json::json!({ "name": name, "alias": alias, "version": v });
                    let a = ctx
                        .store
                        .request_approval(
                            "alias.set",
                            &format!("{name}@{alias}"),
                            &payload,
                            &current_user(),
                        )
                        .await?;
                    output::approval_requested(&a, false);
                }
                Some(v) => {
                    ctx.store.set_model_alias(&name, &alias, v).await?;
                    println!("{name}@{alias} -> version {v}");
                }
                None => {
                    ctx.store.delete_model_alias(&name, &alias).await?;
                    println!("{name}@{alias} deleted");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::Show {
            name,
            version,
            json,
        }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::model_detail(&ctx.store, &name, version, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy {
            endpoint,
            model,
            version,
            strategy,
            steps,
            interval,
            max_error_rate,
            max_p99,
            min_requests,
            max_accuracy_drop,
            min_labels,
            max_drift,
            json,
        } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let mv = ctx.store.model_version(&model, version).await?;
            let request = governance::DeployRequest {
                endpoint,
                model: mv.name.clone(),
                version: mv.version,
                strategy,
                steps,
                interval_ms: interval.as_millis() as u64,
                max_error_rate,
                max_p99_ms: max_p99.map(|d| d.as_millis() as u64),
                min_requests,
                max_accuracy_drop,
                min_labels,
                max_drift,
            };
            if ctx.config.approvals.endpoints.contains(&request.endpoint) {
                // Checked now too, so a request that could never be applied is not made.
                request.check(&ctx).await?;
                let payload = serde_json::to_value(&request)?;
                let a = ctx
                    .store
                    .request_approval("deploy", &request.endpoint, &payload, &current_user())
                    .await?;
                output::approval_requested(&a, json);
                return Ok(ExitCode::SUCCESS);
            }
            let (saved, what) = request.apply(&ctx).await?;
            output::rollout_changed(&saved, &what, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokens(command) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            match command {
                TokensCommand::Create {
                    name,
                    role,
                    expires,
                    json,
                } => {
                    let role = match role {
                        TokenRole::Viewer => weir_store::tokens::Role::Viewer,
                        TokenRole::Editor => weir_store::tokens::Role::Editor,
                        TokenRole::Admin => weir_store::tokens::Role::Admin,
                    };
                    let expires_at = expires.map(|d| weir_core::now_ms() + d.as_millis() as i64);
                    let (token, text) = ctx
                        .store
                        .create_token(&name, role, expires_at, &current_user())
                        .await?;
                    output::token_created(&token, &text, json);
                }
                TokensCommand::List { json } => output::tokens(&ctx.store.tokens().await?, json),
                TokensCommand::Revoke { id } => {
                    if ctx.store.revoke_token(&id).await? {
                        println!("revoked {id}");
                    } else {
                        println!("{id} was already revoked");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approvals(command) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            match command {
                ApprovalsCommand::List { all, json } => {
                    output::approvals(&ctx.store.approvals(all).await?, json);
                }
                ApprovalsCommand::Approve { id, comment, json } => {
                    let user = current_user();
                    let a = ctx.store.check_decision(&id, &user).await?;
                    // Applied first: a change that cannot be made leaves the request pending.
                    let done = governance::apply(&ctx, &a).await?;
                    let a = ctx
                        .store
                        .decide_approval(&a, true, &user, comment.as_deref())
                        .await?;
                    output::approval_decided(&a, Some(&done), json);
                }
                ApprovalsCommand::Reject { id, comment, json } => {
                    let user = current_user();
                    let a = ctx.store.check_decision(&id, &user).await?;
                    let a = ctx
                        .store
                        .decide_approval(&a, false, &user, comment.as_deref())
                        .await?;
                    output::approval_decided(&a, None, json);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollout(command) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            match command {
                RolloutCommand::Status { endpoint, json } => {
                    output::rollout_status(&ctx.store.deployment(&endpoint).await?, json);
                }
                RolloutCommand::History { endpoint, json } => {
                    output::rollout_history(&ctx.store.deployment_events(&endpoint).await?, json);
                }
                RolloutCommand::Promote { endpoint, json } => {
                    let d = ctx.store.deployment(&endpoint).await?;
                    let (next, what) = weir_serve::rollout::promote(&d)?;
                    let saved = ctx
                        .store
                        .save_deployment(&next, "promoted", &format!("{what} (by hand)"))
                        .await?;
                    output::rollout_changed(&saved, &what, json);
                }
                RolloutCommand::Rollback { endpoint, json } => {
                    let d = ctx.store.deployment(&endpoint).await?;
                    let (next, what) = weir_serve::rollout::rollback(&d, "rolled back by hand")?;
                    let saved = ctx
                        .store
                        .save_deployment(&next, "rolled back", &what)
                        .await?;
                    output::rollout_changed(&saved, &what, json);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            models,
            addr,
            grpc_addr,
            max_body_bytes,
            max_concurrency,
            request_timeout,
            response_cache_mb,
            max_batch_rows,
            max_batch_delay,
            batch_by_model,
            threads: _, // taken when the runtime was built
            log_predictions,
            trace_sample,
            private,
            tls,
            log_segment_rows,
            log_flush,
            log_keep_mb,
            monitors,
            check_every,
            check_window,
        } => {
            let config = config(
                &cli.global,
                &[
                    ("serve_addr", addr),
                    ("monitors", monitors.map(|m| m.display().to_string())),
                ],
            )?;
            let (monitors, slos) = match config.monitors() {
                Some(file) => (
                    weir_serve::alerts::load(std::path::Path::new(file))?,
                    weir_serve::slo::load(std::path::Path::new(file))?,
                ),
                None => (Vec::new(), Vec::new()),
            };
            start_tracing(&config, "weir-serve")?;
            let ctx = Context::open(config.clone()).await?;
            let mut selected = Vec::new();
            for m in &models {
                selected.push(weir_serve::ModelRef::parse(m)?);
            }
            let options = weir_serve::ServeOptions {
                addr: config.serve_addr().to_string(),
                grpc_addr,
                max_body_bytes,
                max_concurrency,
                request_timeout,
                response_cache_bytes: response_cache_mb << 20,
                batch: weir_serve::BatchOptions {
                    max_rows: max_batch_rows,
                    max_delay: max_batch_delay,
                },
                batch_by_model: batch_by_model.into_iter().collect(),
                log: weir_serve::LogOptions {
                    rate: log_predictions,
                    segment_rows: log_segment_rows.max(1),
                    flush_every: log_flush,
                    keep_bytes: log_keep_mb << 20,
                },
                check_every,
                check_window,
                monitors,
                prices: ctx.config.prices.clone(),
                trace_sample,
                slos,
                private,
                tls: tls.files(),
            };
            weir_serve::serve(&ctx.store, &ctx.artifacts, &selected, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Monitor {
            target,
            window,
            min_rows,
            share,
            method,
            html,
            json,
        } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let options = weir_serve::monitor::CheckOptions {
                min_rows,
                share,
                method,
                ..weir_serve::monitor::CheckOptions::new(window)
            };
            let report =
                weir_serve::monitor::check(&ctx.store, &ctx.artifacts, &target, &options).await?;
            let checks = ctx.store.latest_checks(&target).await?;
            let alerts = ctx.store.alerts(&target, 20).await?;
            output::monitor(&report, (&checks, &alerts), html.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule(ScheduleCommand::Add {
            file,
            cron,
            window,
            params,
            catch_up,
            name,
            json,
        }) => {
            weir_engine::schedule::parse_cron(&cron).map_err(anyhow::Error::msg)?;
            if let Some(w) = &window {
                w.parse::<weir_core::window::Window>()
                    .map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            }
            let params = parse_params(&params)?;
            // A schedule that cannot run is refused now, not at 3 a.m.
            let pipeline = weir_core::pipeline::load(&file, &params)?;
            if window.is_none() {
                if let Some(step) = pipeline.steps.iter().find(|s| s.off_peak) {
                    let config = config(&cli.global, &[])?;
                    if config.off_peak()?.is_none() {
                        anyhow::bail!(
                            "step '{}' runs off-peak (run_in: off_peak): give the schedule a --window (e.g. 22:00-06:00) or set off_peak in weir.toml",
                            step.name
                        );
                    }
                }
            }
            let spec_file = file
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", file.display()))?;
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let now = weir_core::now_ms();
            let schedule = weir_store::Schedule {
                name: name.unwrap_or_else(|| pipeline.name.clone()),
                spec_file: spec_file.display().to_string(),
                cron,
                off_peak: window,
                params_json: serde_json::to_string(
                    &params
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )?,
                catch_up,
                created_at: now,
                last_fire_at: now,
            };
            ctx.store.add_schedule(&schedule).await?;
            output::schedule_added(&schedule, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule(ScheduleCommand::List { json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            output::schedules(&ctx.store.schedules().await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule(ScheduleCommand::Remove { name }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            if !ctx.store.remove_schedule(&name).await? {
                let names: Vec<String> = ctx
                    .store
                    .schedules()
                    .await?
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                anyhow::bail!(
                    "no schedule named '{name}'; schedules: {}",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                );
            }
            println!("removed schedule '{name}'");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule(ScheduleCommand::History { name, limit, json }) => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            if !ctx.store.schedules().await?.iter().any(|s| s.name == name) {
                anyhow::bail!("no schedule named '{name}'; see `weir schedule list`");
            }
            output::firings(&ctx.store.firings(&name, limit).await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Scheduler { tick, grace } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let options = weir_engine::schedule::SchedulerOptions {
                tick,
                grace,
                exe: std::env::current_exe().context("cannot locate the weir executable")?,
                me: weir_core::process::identity(),
            };
            eprintln!(
                "scheduler {}: watching the schedules of {}",
                options.me,
                ctx.store.url()
            );
            weir_engine::schedule::run_scheduler(&ctx, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Slo(SloCommand::Status {
            endpoint,
            monitors,
            json,
        }) => {
            let config = config(
                &cli.global,
                &[("monitors", monitors.map(|m| m.display().to_string()))],
            )?;
            let Some(file) = config.monitors() else {
                anyhow::bail!(
                    "no SLOs: write them as `slos:` in a monitors file (--monitors FILE, `monitors` in weir.toml) or as [[slos]] tables in weir.toml"
                );
            };
            let slos = weir_serve::slo::load(std::path::Path::new(file))?;
            let chosen: Vec<_> = slos
                .iter()
                .filter(|s| endpoint.as_ref().is_none_or(|e| &s.endpoint == e))
                .collect();
            if chosen.is_empty() {
                let known: Vec<&str> = slos.iter().map(|s| s.endpoint.as_str()).collect();
                anyhow::bail!(
                    "no SLO for endpoint '{}' in {file}; SLOs are set for: {}",
                    endpoint.unwrap_or_default(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
            let ctx = Context::open(config).await?;
            let mut statuses = Vec::new();
            for s in chosen {
                statuses.push(weir_serve::slo::check(&ctx.store, s).await?);
            }
            output::slo_status(&statuses, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cost {
            run,
            since,
            by,
            prices,
            json,
        } => {
            let config = config(&cli.global, &[])?;
            if prices {
                output::prices(&config, json);
                return Ok(ExitCode::SUCCESS);
            }
            let ctx = Context::open(config).await?;
            let since_ms = weir_core::now_ms() - since.as_millis() as i64;
            output::cost(&ctx, run.as_deref(), since_ms, by, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            since,
            verify,
            json,
        } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            if verify {
                let v = ctx.store.verify_audit().await?;
                if json {
                    output::print_json(&v);
                } else if let (Some(seq), Some(reason)) = (v.broken_at, &v.reason) {
                    eprintln!("error: the audit log is broken at entry {seq}: {reason}");
                } else {
                    println!("audit log verified: {} entries, chain intact", v.entries);
                }
                return Ok(if v.broken_at.is_some() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
            let since_ms = weir_core::now_ms() - since.as_millis() as i64;
            output::audit(&ctx.store.audit_entries(since_ms).await?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage {
            reference,
            upstream,
            downstream,
            json,
            dot,
        } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let direction = match (upstream, downstream) {
                (true, _) => weir_store::lineage::Direction::Upstream,
                (_, true) => weir_store::lineage::Direction::Downstream,
                _ => weir_store::lineage::Direction::Both,
            };
            let start = ctx.store.lineage_start(&reference).await?;
            let graph = ctx.store.lineage(&start, direction).await?;
            if json {
                output::print_json(&graph);
            } else if dot {
                print!("{}", graph.to_dot());
            } else {
                print!("{}", lineage::render(&graph, direction));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Server { addr, open, tls } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let scratch = ctx.config.home().join("tmp");
            let app = weir_server::App::new(ctx.store.clone(), ctx.artifacts.clone(), scratch)
                .with_approvals(ctx.config.approvals.clone());
            let listener = weir_tls::Listener::bind(&addr, tls.files().as_ref()).await?;
            if open {
                let url = format!("{}/", listener.url()?);
                // No browser (a server over ssh) is no reason not to serve.
                if let Err(e) = open::that_detached(&url) {
                    eprintln!("warning: cannot open a browser ({e}); the dashboard is at {url}");
                }
            }
            weir_server::serve(app, listener)
                .await
                .with_context(|| format!("cannot serve on {addr}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fsck { repair, json } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let bar = weir_engine::progress::counter("verifying blobs", json);
            let report =
                weir_engine::fsck::check(&ctx, repair, weir_engine::progress::advance(&bar))
                    .await?;
            bar.finish_and_clear();
            output::fsck(&report, json);
            let clean = report.problems.iter().all(|p| p.repaired.is_some());
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Gc {
            dry_run,
            grace,
            json,
        } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let bar = weir_engine::progress::counter("collecting", json);
            let report = weir_engine::gc::collect(
                &ctx,
                grace,
                dry_run,
                weir_engine::progress::advance(&bar),
            )
            .await?;
            bar.finish_and_clear();
            output::gc(&report, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { dest, json } => {
            let ctx = Context::open(config(&cli.global, &[])?).await?;
            let bar = weir_engine::progress::counter("copying blobs", json);
            let report =
                weir_engine::backup::backup(&ctx, &dest, weir_engine::progress::advance(&bar))
                    .await?;
            bar.finish_and_clear();
            output::backup(&report, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            src,
            snapshot,
            list,
            json,
        } => {
            let config = config(&cli.global, &[])?;
            if list {
                output::backups(&weir_engine::backup::list(&src).await?, json);
                return Ok(ExitCode::SUCCESS);
            }
            let bar = weir_engine::progress::counter("copying blobs", json);
            let report = weir_engine::backup::restore(
                &config,
                &src,
                snapshot.as_deref(),
                weir_engine::progress::advance(&bar),
            )
            .await?;
            bar.finish_and_clear();
            output::restored(&report, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { json } => {
            output::config(&config(&cli.global, &[])?, json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// HTTPS for `weir server` and `weir serve`.
#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first)
    #[arg(long, env = "WEIR_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, env = "WEIR_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<weir_tls::TlsFiles> {
        Some(weir_tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Serve { .. }
            | Command::Server { .. }
            | Command::Exec { .. }
            | Command::ExecTrial { .. }
            | Command::ExecRank { .. }
            | Command::TrainWorker { .. }
    ) {
        // A command whose output goes to a reader that stops early
        // (`weir runs search ... | head`) ends quietly, as Unix tools do,
        // instead of failing on the write. Servers and step runtimes keep
        // Rust's default (the signal ignored, the write an error).
        // SAFETY: no other thread exists yet to race the handler change.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Only processes that serve metrics pay for timing store statements.
    let store_metrics = match &cli.command {
        Command::Server { .. } => true,
        Command::Run { metrics_addr, .. } | Command::Resume { metrics_addr, .. } => {
            metrics_addr.is_some()
        }
        _ => false,
    };
    if let Err(e) = observe::init_logging(store_metrics) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // A step runtime is one short-lived process per step: a single-threaded
    // runtime starts faster; everything else gets the multi-threaded one.
    let runtime = match &cli.command {
        Command::Exec { .. }
        | Command::ExecTrial { .. }
        | Command::ExecRank { .. }
        | Command::TrainWorker { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Serve {
            threads: Some(n), ..
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(*n))
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(main_async(cli));
    // Spans still buffered go now; a collector that is down costs at most this.
    weir_trace::shutdown(std::time::Duration::from_secs(2));
    // Everything the command does has been awaited; waiting for idle worker
    // threads to wind down would only delay the exit (of every step runtime).
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
