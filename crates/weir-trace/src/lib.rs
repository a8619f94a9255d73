//! OpenTelemetry traces, exported over OTLP/HTTP when an endpoint is set
//! (`otlp_endpoint` in weir.toml, `WEIR_OTLP_ENDPOINT`, or the standard
//! `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`). Without one, nothing here does
//! any work: [`tracer`] is `None` and callers skip their spans.
//!
//! Spans are exported in batches from a thread of the SDK's own, so a slow
//! or absent collector never holds up a step or a request; a batch that
//! cannot be delivered is dropped and counted ([`dropped_spans`]).
//!
//! A step runtime started by a local runner does not export at all: it
//! keeps its spans ([`init_relay`]) and hands them to the runner on the
//! stdout pipe the runner already reads ([`relayed`]), and the runner sends
//! them in its own batches ([`relay`]). Starting an HTTP client and sending
//! one request per step cost each step several milliseconds on two cores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use opentelemetry;
use opentelemetry::propagation::TextMapPropagator;
pub use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _,
    SpanProcessor,
};

/// The variable a child process finds its parent span in (W3C
/// traceparent), as `weir exec` and a `run:` step's command do.
pub const TRACEPARENT: &str = "TRACEPARENT";

/// Set by a runner on the step runtimes it starts on this machine: keep
/// your spans and print them ([`relayed`]) instead of exporting them.
pub const RELAY_VAR: &str = "WEIR_TRACE_RELAY";

/// How a step runtime's spans start on its stdout.
pub const SPANS_LINE: &str = "weir-trace: spans ";

/// The service relayed spans are exported as.
const RELAYED_SERVICE: &str = "weir-exec";

static TRACING: OnceLock<Tracing> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
static KEPT: Mutex<Vec<SpanData>> = Mutex::new(Vec::new());

pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Where spans go (none in a relaying step runtime).
    url: Option<String>,
    /// The batches relayed spans go out in, started by the first relay.
    relay: OnceLock<BatchSpanProcessor>,
}

/// The process's tracer, when tracing is on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACING.get().map(|t| &t.tracer)
}

/// Spans that could not be delivered (the collector was down or refused).
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where spans go: the explicit endpoint, else the standard variables.
/// Returns the traces URL (`.../v1/traces`).
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    let explicit = configured.filter(|e| !e.is_empty()).map(str::to_string);
    let traces = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    if let Some(url) = traces.filter(|_| explicit.is_none()) {
        return Some(url);
    }
    let base = explicit.or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
    })?;
    let base = base.trim_end_matches('/');
    Some(if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    })
}

/// Counts the spans of every batch that fails to export.
#[derive(Debug)]
struct Counting<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counting<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.0.export(batch).await;
        if result.is_err() {
            DROPPED.fetch_add(n, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Starts exporting to `url` as `service`. An endpoint that is not a URL
/// is an error; one that is down is not (its spans are dropped and counted).
pub fn init(url: &str, service: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "otlp endpoint '{url}' is not an http(s) URL: give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318"
        ));
    }
    let provider = provider()
        .with_batch_exporter(exporter(url)?)
        .with_resource(resource(service))
        .build();
    install(provider, Some(url.to_string()));
    Ok(())
}

/// Starts keeping this process's spans for [`relayed`], exporting nothing:
/// a step runtime whose runner (on this machine) exports them.
pub fn init_relay() {
    #[derive(Debug)]
    struct Keep;
    impl SpanProcessor for Keep {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(span);
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }
    install(provider().with_span_processor(Keep).build(), None);
}

fn provider() -> opentelemetry_sdk::trace::TracerProviderBuilder {
    // Callers decide which requests are traced; a caller's decision (its
    // traceparent's sampled flag) is followed.
    SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
}

fn install(provider: SdkTracerProvider, url: Option<String>) {
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("weir");
    let _ = TRACING.set(Tracing {
        provider,
        tracer,
        url,
        relay: OnceLock::new(),
    });
}

fn exporter(url: &str) -> Result<Counting<opentelemetry_otlp::SpanExporter>, String> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(2))
        .build()
        .map(Counting)
        .map_err(|e| format!("cannot export traces to {url}: {e}"))
}

fn resource(service: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| service.to_string()),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends what is buffered, waiting at most `timeout`; called as the
/// process ends.
pub fn shutdown(timeout: Duration) {
    if let Some(t) = TRACING.get() {
        let _ = t.provider.force_flush();
        let _ = t.provider.shutdown_with_timeout(timeout);
        if let Some(relay) = t.relay.get() {
            let _ = relay.force_flush();
            let _ = relay.shutdown_with_timeout(timeout);
        }
    }
}

/// One span as it crosses the pipe from a step runtime to its runner.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    name: String,
    trace: String,
    span: String,
    parent: String,
    parent_remote: bool,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<(String, serde_json::Value)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The spans this process kept since the last call, as the one line a
/// runner reads ([`SPANS_LINE`] and JSON); `None` when there are none.
pub fn relayed() -> Option<String> {
    use opentelemetry::trace::Status;
    use opentelemetry::Value;
    let spans = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|e| e.into_inner()));
    if spans.is_empty() {
        return None;
    }
    let wire: Vec<Wire> = spans
        .into_iter()
        .map(|s| Wire {
            name: s.name.into_owned(),
            trace: s.span_context.trace_id().to_string(),
            span: s.span_context.span_id().to_string(),
            parent: s.parent_span_id.to_string(),
            parent_remote: s.parent_span_is_remote,
            start_ns: nanos(s.start_time),
            end_ns: nanos(s.end_time),
            attributes: s
                .attributes
                .into_iter()
                .map(|kv| {
                    let value = match kv.value {
                        Value::Bool(b) => serde_json::Value::Bool(b),
                        Value::I64(i) => i.into(),
                        Value::F64(f) => serde_json::Number::from_f64(f)
                            .map(serde_json::Value::Number)
                            .unwrap_or_else(|| f.to_string().into()),
                        other => other.to_string().into(),
                    };
                    (kv.key.to_string(), value)
                })
                .collect(),
            ok: matches!(s.status, Status::Ok).then_some(true),
            error: match s.status {
                Status::Error { description } => Some(description.into_owned()),
                _ => None,
            },
        })
        .collect();
    let json = serde_json::to_string(&wire).ok()?;
    Some(format!("{SPANS_LINE}{json}"))
}

/// Exports the spans a step runtime relayed (the JSON after
/// [`SPANS_LINE`]) in this process's batches, as their own service; a
/// no-op when this process does not export. Returns how many were taken.
pub fn relay(json: &str) -> Result<usize, String> {
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
    let Some(t) = TRACING.get() else {
        return Ok(0);
    };
    let Some(url) = &t.url else {
        return Ok(0);
    };
    let wire: Vec<Wire> =
        serde_json::from_str(json).map_err(|e| format!("malformed relayed spans: {e}"))?;
    let relay = match t.relay.get() {
        Some(r) => r,
        None => {
            let mut exporter = exporter(url)?;
            exporter.set_resource(&resource(RELAYED_SERVICE));
            t.relay
                .get_or_init(|| BatchSpanProcessor::builder(exporter).build())
        }
    };
    let scope = opentelemetry::InstrumentationScope::builder("weir").build();
    let n = wire.len();
    for w in wire {
        let id = |hex: &str, what: &str| format!("relayed span '{}': bad {what} '{hex}'", w.name);
        let trace = TraceId::from_hex(&w.trace).map_err(|_| id(&w.trace, "trace id"))?;
        let span = SpanId::from_hex(&w.span).map_err(|_| id(&w.span, "span id"))?;
        let parent = SpanId::from_hex(&w.parent).map_err(|_| id(&w.parent, "parent id"))?;
        relay.on_end(SpanData {
            span_context: SpanContext::new(
                trace,
                span,
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: w.parent_remote,
            span_kind: SpanKind::Internal,
            name: w.name.into(),
            start_time: UNIX_EPOCH + Duration::from_nanos(w.start_ns),
            end_time: UNIX_EPOCH + Duration::from_nanos(w.end_ns),
            attributes: w
                .attributes
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::Bool(b) => KeyValue::new(k, b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => KeyValue::new(k, i),
                        None => KeyValue::new(k, n.as_f64().unwrap_or(f64::NAN)),
                    },
                    serde_json::Value::String(s) => KeyValue::new(k, s),
                    other => KeyValue::new(k, other.to_string()),
                })
                .collect(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: match (w.error, w.ok) {
                (Some(e), _) => Status::error(e),
                (None, Some(true)) => Status::Ok,
                _ => Status::Unset,
            },
            instrumentation_scope: scope.clone(),
        });
    }
    Ok(n)
}

/// The W3C traceparent of `cx`'s span, for a child process or a request.
pub fn traceparent(cx: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The context a traceparent names (an empty one when it is malformed, so
/// a bad header starts a new trace rather than failing the request).
pub fn from_traceparent(value: &str) -> Context {
    let carrier = HashMap::from([("traceparent".to_string(), value.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The parent this process was started under (`TRACEPARENT`), if any.
pub fn inherited() -> Option<Context> {
    let value = std::env::var(TRACEPARENT).ok()?;
    let cx = from_traceparent(&value);
    use opentelemetry::trace::TraceContextExt;
    cx.span().span_context().is_valid().then_some(cx)
}

/// Whether to trace a request: as its caller decided (a valid traceparent
/// carries the decision), else with probability `ratio`.
pub fn sample(parent: Option<&Context>, ratio: f64) -> bool {
    use opentelemetry::trace::TraceContextExt;
    match parent.map(|cx| cx.span().span_context().clone()) {
        Some(sc) if sc.is_valid() => sc.is_sampled(),
        _ => ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio),
    }
}

/// Starts a span named `name` under `parent` (a new trace without one);
/// `None` when tracing is off.
pub fn start(parent: Option<&Context>, name: &str, attributes: Vec<KeyValue>) -> Option<Context> {
    use opentelemetry::trace::{TraceContextExt, Tracer};
    let tracer = tracer()?;
    let parent = parent.cloned().unwrap_or_default();
    let span = tracer
        .span_builder(name.to_string())
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// Ends the span `start` began, as failed with `error` or as ok.
pub fn end(span: Option<Context>, error: Option<&str>) {
    use opentelemetry::trace::{Status, TraceContextExt};
    let Some(cx) = span else {
        return;
    };
    let span = cx.span();
    span.set_status(match error {
        Some(e) => Status::error(e.lines().next().unwrap_or("").to_string()),
        None => Status::Ok,
    });
    span.end();
}

/// Sets an attribute on a span `start` began.
pub fn set(span: Option<&Context>, attribute: KeyValue) {
    use opentelemetry::trace::TraceContextExt;
    if let Some(cx) = span {
        cx.span().set_attribute(attribute);
    }
}

/// The trace id of `cx`'s span, as logs print it.
pub fn trace_id(cx: &Context) -> String {
    use opentelemetry::trace::TraceContextExt;
    cx.span().span_context().trace_id().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_start_afresh() {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = from_traceparent(value);
        assert_eq!(traceparent(&cx).as_deref(), Some(value));
        assert_eq!(trace_id(&cx), "0af7651916cd43dd8448eb211c80319c");
        assert!(sample(Some(&cx), 0.0));
        let unsampled = from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        assert!(!sample(Some(&unsampled), 1.0));
        let bad = from_traceparent("garbage");
        assert!(traceparent(&bad).is_none());
        assert!(sample(Some(&bad), 1.0));
        assert!(!sample(None, 0.0));
    }

    #[test]
    fn relayed_spans_keep_their_ids_parents_attributes_and_status() {
        init_relay();
        let parent = from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let outer = start(
            Some(&parent),
            "execute",
            vec![
                KeyValue::new("weir.trial", 3i64),
                KeyValue::new("weir.auc", 0.5f64),
                KeyValue::new("weir.ok", true),
                KeyValue::new("weir.name", "x"),
            ],
        );
        let inner = start(outer.as_ref(), "trial 3", Vec::new());
        let inner_id = traceparent(inner.as_ref().unwrap()).unwrap();
        end(inner, Some("boom\nmore"));
        end(outer, None);
        let line = relayed().expect("two spans kept");
        assert!(relayed().is_none(), "taken once");
        let json = line.strip_prefix(SPANS_LINE).unwrap();
        let wire: Vec<Wire> = serde_json::from_str(json).unwrap();
        assert_eq!(wire.len(), 2);
        let (trial, execute) = (&wire[0], &wire[1]);
        assert_eq!(execute.trace, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(execute.parent, "b7ad6b7169203331");
        assert!(execute.parent_remote);
        assert_eq!(trial.parent, execute.span);
        assert!(inner_id.contains(&trial.span));
        assert_eq!(trial.error.as_deref(), Some("boom"));
        assert_eq!(execute.ok, Some(true));
        assert!(execute.start_ns <= trial.start_ns && trial.end_ns <= execute.end_ns);
        assert_eq!(
            execute.attributes[0],
            ("weir.trial".to_string(), serde_json::json!(3))
        );
        assert_eq!(execute.attributes[1].1, serde_json::json!(0.5));
        // This process exports nothing, so relaying is a no-op; a malformed
        // line is an error only where spans are exported.
        assert_eq!(relay(json).unwrap(), 0);
    }

    #[test]
    fn endpoints_get_the_traces_path() {
        assert_eq!(
            endpoint(Some("http://c:4318")).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            endpoint(Some("http://c:4318/v1/traces/")).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert!(init("c:4318", "t")
            .unwrap_err()
            .contains("not an http(s) URL"));
    }
}
