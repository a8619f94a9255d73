//! Prometheus metrics of `weir server` and the runner (`weir run
//! --metrics-addr`): the server's HTTP traffic, the metadata store's
//! latency, and the process's own figures under the standard `process_*`
//! names. Store latency comes from the statements themselves: sqlx reports
//! each one it runs (inside transactions too) as a `sqlx::query` event with
//! its elapsed time, and the direct SQLite write path reports its writes;
//! [`StoreLatencyLayer`] turns those events into a histogram.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    /// The statement's verb (select, insert, update, delete, begin, commit,
    /// ...), or `transaction` for a direct write: a bounded set.
    statement: String,
}

/// Every store statement's time, process-wide (the store is shared by
/// whatever this process serves).
fn store_latency() -> &'static Family<StatementLabels, Histogram> {
    static LATENCY: OnceLock<Family<StatementLabels, Histogram>> = OnceLock::new();
    LATENCY.get_or_init(|| {
        // 20 µs to ~5 s.
        Family::new_with_constructor(|| Histogram::new(exponential_buckets(20e-6, 2.0, 18)))
    })
}

const VERBS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "begin",
    "commit",
    "rollback",
    "with",
    "create",
    "alter",
    "pragma",
    "savepoint",
    "release",
];

/// Records sqlx's statement events (and the direct writes') in the store
/// latency histogram. Install it with a filter that lets `sqlx::query` and
/// `weir_store::direct` through at debug ([`StoreLatencyLayer::targets`]).
pub struct StoreLatencyLayer;

impl StoreLatencyLayer {
    pub fn targets() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::TRACE)
            .with_target("weir_store::direct", tracing::Level::DEBUG)
    }
}

#[derive(Default)]
struct StatementVisit {
    verb: Option<String>,
    elapsed: Option<f64>,
}

impl Visit for StatementVisit {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            let first = value
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            self.verb = Some(if VERBS.contains(&first.as_str()) {
                first
            } else {
                "other".into()
            });
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StoreLatencyLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        let direct = target == "weir_store::direct";
        if !direct && target != "sqlx::query" {
            return;
        }
        let mut visit = StatementVisit::default();
        event.record(&mut visit);
        let Some(elapsed) = visit.elapsed else {
            return;
        };
        let statement = if direct {
            "transaction".to_string()
        } else {
            visit.verb.unwrap_or_else(|| "other".into())
        };
        store_latency()
            .get_or_create(&StatementLabels { statement })
            .observe(elapsed);
    }
}

/// The process's CPU time, memory, open files and start time, as the
/// official clients name them, and the spans it could not export.
#[derive(Debug)]
pub struct ProcessCollector {
    started: f64,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        ProcessCollector {
            started: weir_core::now_ms() as f64 / 1000.0,
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (cpu_ms, _) = weir_core::usage::process();
        let cpu = ConstCounter::new(cpu_ms as f64 / 1000.0);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(weir_core::usage::resident_bytes() as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
        let fds = ConstGauge::new(fds);
        fds.encode(encoder.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            fds.metric_type(),
        )?)?;
        // Traces the collector never got (down, refusing, too slow).
        let dropped = ConstCounter::new(weir_trace::dropped_spans());
        dropped.encode(encoder.encode_descriptor(
            "weir_otlp_spans_dropped",
            "Spans that could not be delivered to the OTLP endpoint",
            None,
            dropped.metric_type(),
        )?)?;
        let started = ConstGauge::new(self.started);
        started.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            started.metric_type(),
        )?)?;
        Ok(())
    }
}

/// A registry with the process's figures and the store's latency
/// (`weir_store_statement_duration_seconds`); callers add their own under
/// their prefix.
pub fn base_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::new()));
    registry.register(
        "weir_store_statement_duration_seconds",
        "Time the metadata store took per statement (queueing for a connection included for direct writes)",
        store_latency().clone(),
    );
    registry
}

/// The OpenMetrics text of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route's template (`/api/2.0/mlflow/runs/log-batch`), never the
    /// raw path, so clients cannot grow the label set.
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// `weir server`'s metrics.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    connections: Family<PoolLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: String,
}

impl ServerMetrics {
    pub fn new() -> ServerMetrics {
        let mut registry = base_registry();
        let sub = registry.sub_registry_with_prefix("weir_server");
        let requests = Family::<RequestLabels, Counter>::default();
        sub.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(50e-6, 2.0, 18))
        });
        sub.register(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            latency.clone(),
        );
        let in_flight = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        sub.register(
            "http_requests_in_flight",
            "Requests being answered now",
            in_flight.clone(),
        );
        let connections = Family::<PoolLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        sub.register(
            "store_connections",
            "The metadata store's pooled connections, idle or in use",
            connections.clone(),
        );
        ServerMetrics {
            registry,
            requests,
            latency,
            in_flight,
            connections,
        }
    }

    pub(crate) fn started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight {
            metrics: self,
            at: Instant::now(),
        }
    }

    pub(crate) fn render(&self, store: &weir_store::Store) -> String {
        let (size, idle) = store.pool_state();
        self.connections
            .get_or_create(&PoolLabels {
                state: "idle".into(),
            })
            .set(idle as i64);
        self.connections
            .get_or_create(&PoolLabels {
                state: "used".into(),
            })
            .set((size as usize).saturating_sub(idle) as i64);
        render(&self.registry)
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One request being answered; counted when it is.
pub(crate) struct InFlight<'a> {
    metrics: &'a ServerMetrics,
    at: Instant,
}

impl InFlight<'_> {
    pub(crate) fn done(self, method: &str, route: &str, code: u16) {
        self.metrics.in_flight.dec();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                code,
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(self.at.elapsed().as_secs_f64());
    }
}

/// The runner's metrics (`weir run --metrics-addr`): steps by state, step
/// durations by outcome, cache hits, retries.
pub struct RunnerMetrics {
    registry: Registry,
    steps: Family<StateLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    finished: Family<StateLabels, Histogram>,
    cache: Family<StateLabels, Counter>,
    retries: Counter,
    cost: Gauge<f64, AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

impl RunnerMetrics {
    pub fn new() -> RunnerMetrics {
        let mut registry = base_registry();
        let sub = registry.sub_registry_with_prefix("weir_runner");
        let steps = Family::<StateLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        sub.register(
            "steps",
            "Steps of the runs in progress by state: queued, running, succeeded, failed, skipped",
            steps.clone(),
        );
        let finished = Family::<StateLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 20))
        });
        sub.register(
            "step_duration_seconds",
            "Wall time of finished steps, by outcome",
            finished.clone(),
        );
        let cache = Family::<StateLabels, Counter>::default();
        sub.register(
            "cache_lookups",
            "Steps whose cache key was looked up, by result (hit or miss)",
            cache.clone(),
        );
        let retries = Counter::default();
        sub.register(
            "step_retries",
            "Step attempts started again",
            retries.clone(),
        );
        let cost = Gauge::<f64, AtomicU64>::default();
        sub.register(
            "run_cost_dollars",
            "What the run has cost so far at the price table's prices",
            cost.clone(),
        );
        RunnerMetrics {
            registry,
            steps,
            finished,
            cache,
            retries,
            cost,
        }
    }

    fn state(&self, state: &str) -> Gauge<i64, std::sync::atomic::AtomicI64> {
        self.steps
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .clone()
    }

    pub fn run_started(&self, steps: usize) {
        self.state("queued").inc_by(steps as i64);
    }

    pub fn step_running(&self) {
        self.state("queued").dec();
        self.state("running").inc();
        self.cache
            .get_or_create(&StateLabels {
                state: "miss".into(),
            })
            .inc();
    }

    pub fn step_cached(&self) {
        self.state("queued").dec();
        self.state("succeeded").inc();
        self.cache
            .get_or_create(&StateLabels {
                state: "hit".into(),
            })
            .inc();
    }

    pub fn step_done_earlier(&self) {
        self.state("queued").dec();
        self.state("succeeded").inc();
    }

    pub fn step_retrying(&self) {
        self.retries.inc();
    }

    /// A step ended: `was_running` says whether it had started.
    pub fn step_finished(&self, state: &str, seconds: f64, was_running: bool) {
        self.state(if was_running { "running" } else { "queued" })
            .dec();
        self.state(state).inc();
        if was_running {
            self.finished
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .observe(seconds);
        }
    }

    pub fn cost(&self, dollars: f64) {
        self.cost.set(dollars);
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for RunnerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` from `render` on `listener` until the process ends.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = Arc::clone(&render);
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }
        }),
    );
    axum::serve(listener, app).await
}
