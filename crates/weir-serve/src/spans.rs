//! An inference request as a trace: `POST /v2/models/{name}/infer` (or
//! `/invocations`) with `decode`, `batch wait`, `model` and `encode` under
//! it, joined to the caller's trace when it sends a W3C `traceparent`.
//! Whether to trace is decided once, as the request arrives (the caller's
//! sampled flag, else `--trace-sample`); the spans are built when it has
//! been answered, from the times the request kept anyway, so a request that
//! is not traced pays for one random draw and nothing else.

use std::time::{Duration, Instant, SystemTime};

use weir_trace::opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use weir_trace::{Context, KeyValue};

/// A traced request: its caller's context and when it arrived.
pub(crate) struct Traced {
    parent: Context,
    wall: SystemTime,
    started: Instant,
}

/// Decides whether to trace a request that arrived at `started`.
pub(crate) fn decide(
    headers: &axum::http::HeaderMap,
    ratio: f64,
    started: Instant,
) -> Option<Traced> {
    weir_trace::tracer()?;
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(weir_trace::from_traceparent);
    if !weir_trace::sample(parent.as_ref(), ratio) {
        return None;
    }
    Some(Traced {
        parent: parent.unwrap_or_default(),
        wall: SystemTime::now() - started.elapsed(),
        started,
    })
}

/// What the request went through, for its spans.
pub(crate) struct Phases<'a> {
    pub route: &'static str,
    pub model: &'a str,
    pub version: &'a str,
    pub code: u16,
    pub rows: Option<usize>,
    pub model_at: Option<Instant>,
    pub queue: Duration,
    pub model_done: Option<Instant>,
    pub ended: Instant,
}

impl Traced {
    fn at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.started)
    }

    pub(crate) fn finish(self, p: Phases<'_>) {
        let Some(tracer) = weir_trace::tracer() else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", p.route),
            KeyValue::new("http.response.status_code", i64::from(p.code)),
            KeyValue::new("weir.model", p.model.to_string()),
            KeyValue::new("weir.version", p.version.to_string()),
        ];
        if let Some(rows) = p.rows {
            attributes.push(KeyValue::new("weir.rows", rows as i64));
        }
        let mut root = tracer
            .span_builder(format!("POST {}", p.route))
            .with_kind(SpanKind::Server)
            .with_start_time(self.wall)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.parent);
        if p.code >= 500 {
            root.set_status(Status::error(format!("HTTP {}", p.code)));
        }
        let cx = self.parent.with_span(root);
        let child = |name: &str, from: Instant, to: Instant| {
            let mut span = tracer
                .span_builder(name.to_string())
                .with_start_time(self.at(from))
                .start_with_context(tracer, &cx);
            span.end_with_timestamp(self.at(to));
        };
        match (p.model_at, p.model_done) {
            (Some(called), Some(done)) => {
                child("decode", self.started, called);
                let batched = called + p.queue;
                if !p.queue.is_zero() {
                    child("batch wait", called, batched);
                }
                child("model", batched, done);
                child("encode", done, p.ended);
            }
            // Refused before the model was called: all of it was decoding.
            _ => child("decode", self.started, p.ended),
        }
        cx.span().end_with_timestamp(self.at(p.ended));
    }
}
