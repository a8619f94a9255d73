//! OpenTelemetry traces, exported over OTLP/HTTP when an endpoint is set
//! (`otlp_endpoint` in weir.toml, `WEIR_OTLP_ENDPOINT`, or the standard
//! `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`). Without one, nothing here does
//! any work: [`tracer`] is `None` and callers skip their spans.
//!
//! Spans are exported in batches from a thread of the SDK's own, so a slow
//! or absent collector never holds up a step or a request; a batch that
//! cannot be delivered is dropped and counted ([`dropped_spans`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub use opentelemetry;
use opentelemetry::propagation::TextMapPropagator;
pub use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData};

/// The variable a child process finds its parent span in (W3C
/// traceparent), as `weir exec` and a `run:` step's command do.
pub const TRACEPARENT: &str = "TRACEPARENT";

static TRACING: OnceLock<Tracing> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
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
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot export traces to {url}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| service.to_string()),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        // Callers decide which requests are traced; a caller's decision
        // (its traceparent's sampled flag) is followed.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_batch_exporter(Counting(exporter))
        .with_resource(resource)
        .build();
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("weir");
    let _ = TRACING.set(Tracing { provider, tracer });
    Ok(())
}

/// Sends what is buffered, waiting at most `timeout`; called as the
/// process ends.
pub fn shutdown(timeout: Duration) {
    if let Some(t) = TRACING.get() {
        let _ = t.provider.force_flush();
        let _ = t.provider.shutdown_with_timeout(timeout);
    }
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
