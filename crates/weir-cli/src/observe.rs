//! What a process tells operators about itself: logs (text or JSON lines,
//! `WEIR_LOG_FORMAT`) and, for `weir run --metrics-addr`, the runner's
//! Prometheus metrics, fed by the run's progress events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing_subscriber::prelude::*;
use weir_engine::progress::Progress;
use weir_server::telemetry::{RunnerMetrics, StoreLatencyLayer};
use weir_store::{StepStatus, Store};

/// Installs the process's log output: WEIR_LOG filters it, WEIR_LOG_FORMAT
/// (`text` or `json`) shapes it. `store_metrics` also feeds the store's
/// statement times to the metrics this process serves.
pub fn init_logging(store_metrics: bool) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tract_onnx=error"));
    let format = std::env::var("WEIR_LOG_FORMAT").unwrap_or_default();
    let fmt = match format.as_str() {
        "" | "text" => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        // One JSON object per line, with the fields of the spans it happened in.
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        other => {
            return Err(format!(
                "WEIR_LOG_FORMAT='{other}' is not a log format: use text (the default) or json"
            ))
        }
    };
    let latency =
        store_metrics.then(|| StoreLatencyLayer.with_filter(StoreLatencyLayer::targets()));
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(latency)
        .init();
    Ok(())
}

/// Serves the runner's metrics on `addr` and returns a progress that
/// reports to them as well as to `inner`.
pub async fn runner_metrics(
    addr: &str,
    store: Store,
    inner: Box<dyn Progress>,
) -> anyhow::Result<Box<dyn Progress>> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen there"))?;
    eprintln!(
        "runner metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let metrics = Arc::new(RunnerMetrics::new());
    let render = {
        let m = Arc::clone(&metrics);
        Arc::new(move || m.render()) as Arc<dyn Fn() -> String + Send + Sync>
    };
    tokio::spawn(async move {
        if let Err(e) = weir_server::telemetry::serve_metrics(listener, render).await {
            eprintln!("warning: the runner's metrics stopped: {e}");
        }
    });
    Ok(Box::new(MetricsProgress {
        inner,
        metrics,
        store,
        run: Mutex::new(None),
        running: Mutex::new(HashSet::new()),
    }))
}

struct MetricsProgress {
    inner: Box<dyn Progress>,
    metrics: Arc<RunnerMetrics>,
    store: Store,
    run: Mutex<Option<String>>,
    running: Mutex<HashSet<String>>,
}

impl MetricsProgress {
    /// The run's cost so far, read after each step ends (the step recorded
    /// its usage before its outcome).
    fn refresh_cost(&self) {
        let Some(run) = self.run.lock().expect("run lock").clone() else {
            return;
        };
        let (store, metrics) = (self.store.clone(), Arc::clone(&self.metrics));
        tokio::spawn(async move {
            if let Ok(cost) = store.run_cost(&run).await {
                metrics.cost(cost);
            }
        });
    }
}

impl Progress for MetricsProgress {
    fn run_started(&self, run_id: &str, steps: &[String]) {
        *self.run.lock().expect("run lock") = Some(run_id.to_string());
        self.metrics.run_started(steps.len());
        self.inner.run_started(run_id, steps);
    }

    fn step_running(&self, step: &str, reason: &str) {
        self.running
            .lock()
            .expect("running lock")
            .insert(step.to_string());
        self.metrics.step_running();
        self.inner.step_running(step, reason);
    }

    fn step_cached(&self, step: &str, from_run: &str) {
        self.metrics.step_cached();
        self.inner.step_cached(step, from_run);
    }

    fn warning(&self, text: &str) {
        self.inner.warning(text);
    }

    fn step_done_earlier(&self, step: &str) {
        self.metrics.step_done_earlier();
        self.inner.step_done_earlier(step);
    }

    fn step_retrying(&self, step: &str, attempt: i64, attempts: u32, wait: Duration, why: &str) {
        self.metrics.step_retrying();
        self.inner.step_retrying(step, attempt, attempts, wait, why);
    }

    fn step_finished(&self, step: &str, status: StepStatus, seconds: f64, error: Option<&str>) {
        let was_running = self.running.lock().expect("running lock").remove(step);
        self.metrics
            .step_finished(&status.to_string(), seconds, was_running);
        self.refresh_cost();
        self.inner.step_finished(step, status, seconds, error);
    }
}
