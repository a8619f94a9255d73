//! The dashboard: a single-page app embedded in the binary and served at
//! `/`, on the tracking server's port. The page reads the same MLflow REST
//! API the clients use (`/ajax-api/2.0/mlflow/...`), plus what no MLflow
//! endpoint gives cheaply: a metric's history downsampled on the server, so
//! a chart of 100,000 points sends and draws ~1,000.
//!
//! Hash routes match MLflow's, so the URLs its clients print open here:
//! `/#/experiments/E`, `/#/experiments/E/runs/R`, `/#/compare-runs?runs=[...]`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::App;

const INDEX: &str = include_str!("../ui/index.html");

/// The embedded files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/app.css"),
    ),
    (
        "uPlot-iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot-iife.min.js"),
    ),
    (
        "uPlot-min.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot-min.css"),
    ),
];

/// Scripts only from this server, never inline: a run name that smuggles
/// markup past the page's escaping still cannot run.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The most points one downsampled series may ask for.
const MAX_POINTS: usize = 5_000;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(index))
        .route("/static/{version}/{name}", get(asset))
        .route("/api/ui/metric-history", get(metric_history))
        .route("/api/ui/pipeline-run", get(pipeline_run))
        .route("/api/ui/study", get(crate::dashboard::study))
        .route("/api/ui/model", get(crate::dashboard::model))
        .route("/api/ui/deployments", get(crate::dashboard::deployments))
        .route("/api/ui/deployment", get(crate::dashboard::deployment))
        .route("/api/2.0/weir/lineage", get(lineage))
}

/// `GET /api/2.0/weir/lineage?ref=MODEL[:V]|DATASET[@V]|RUN[&direction=upstream|downstream|both]`:
/// the lineage graph as `weir lineage --json` gives it.
async fn lineage(State(app): State<App>, p: Params) -> ApiResult<Json<weir_store::lineage::Graph>> {
    use weir_store::lineage::Direction;
    let reference = p.str("ref")?;
    let direction = match p.opt_str("direction").as_deref() {
        None | Some("both") => Direction::Both,
        Some("upstream") => Direction::Upstream,
        Some("downstream") => Direction::Downstream,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "direction '{other}': expected upstream, downstream or both"
            )))
        }
    };
    let start = app.store.lineage_start(&reference).await?;
    Ok(Json(app.store.lineage(&start, direction).await?))
}

async fn index() -> Response {
    // Asset URLs carry the version: cached for good, replaced on upgrade.
    let html = INDEX.replace("{{version}}", env!("CARGO_PKG_VERSION"));
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let found = ASSETS.iter().find(|(n, _, _)| *n == name);
    match found {
        Some((_, content_type, bytes)) if version == env!("CARGO_PKG_VERSION") => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
    }
}

/// `GET /api/ui/metric-history?run_id=R&metric_key=K&max_points=N`: the
/// metric's points by step, at most N (default 1,000) picked by LTTB from
/// all of them, with how many there were. NaN and infinities are left out
/// of the series (JSON has no NaN) and counted.
async fn metric_history(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let run_id = p.run_id()?;
    let key = p.str("metric_key")?;
    let max_points = p
        .opt_i64("max_points")?
        .map_or(1_000, |n| n.clamp(3, MAX_POINTS as i64) as usize);
    let points = app.store.metric_history(&run_id, &key, i64::MAX, 0).await?;
    let total = points.len();
    let finite: Vec<(f64, f64, i64)> = points
        .iter()
        .filter(|m| m.value.is_finite())
        .map(|m| (m.step as f64, m.value, m.timestamp))
        .collect();
    let skipped = total - finite.len();
    let kept = lttb(&finite, max_points);
    Ok(Json(json!({
        "key": key,
        "total": total,
        "not_finite": skipped,
        "steps": kept.iter().map(|i| finite[*i].0).collect::<Vec<_>>(),
        "values": kept.iter().map(|i| finite[*i].1).collect::<Vec<_>>(),
        "timestamps": kept.iter().map(|i| finite[*i].2).collect::<Vec<_>>(),
    })))
}

/// `GET /api/ui/pipeline-run?run_id=R`: a pipeline run as a graph: each
/// step's state, timing, attempt, where it ran, whether its outputs came
/// from the cache (and from which step run), and the steps it reads from.
/// A tracking run that is not a pipeline run is a 404.
async fn pipeline_run(State(app): State<App>, p: Params) -> ApiResult<Json<Value>> {
    let run = app.store.run(&p.run_id()?).await?;
    let steps = app.store.step_runs(&run.id).await?;
    let usage = app.store.run_usage(&run.id).await?;
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            let usage = step_usage(&usage, &s.id);
            let spec: weir_core::pipeline::Step = match serde_json::from_str(&s.spec_json) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!(step_run = %s.id, error = %e, "a step's stored spec does not parse");
                    return json!({ "name": s.step, "step_run_id": s.id, "status": s.status, "after": [] });
                }
            };
            let mut after: Vec<&str> = spec.inputs.values().map(|i| i.step.as_str()).collect();
            after.sort_unstable();
            after.dedup();
            json!({
                "name": s.step,
                "step_run_id": s.id,
                "kind": s.kind,
                "status": s.status,
                "started_at": s.started_at,
                "ended_at": s.ended_at,
                "attempt": s.attempt,
                "cached_from": s.cached_from,
                "cache_miss": s.cache_miss,
                "tuned": spec.tune.is_some(),
                "executor": s.executor.as_deref().unwrap_or("local"),
                "node": s.node,
                "error": s.error,
                "after": after,
                "usage": usage,
            })
        })
        .collect();
    let cost: f64 = usage.iter().filter(|u| u.billed).map(|u| u.total).sum();
    Ok(Json(json!({
        "id": run.id,
        "pipeline": run.pipeline,
        "status": run.status,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "error": run.error,
        "cost": cost,
        "steps": steps,
    })))
}

/// What a step used: its latest attempt's CPU, peak memory and wall time,
/// and the cost of every attempt and billed trial; null before it is
/// measured (queued, or cached).
fn step_usage(usage: &[weir_store::UsageRecord], step_run_id: &str) -> Value {
    let mine: Vec<_> = usage
        .iter()
        .filter(|u| u.step_run_id == step_run_id)
        .collect();
    let Some(last) = mine
        .iter()
        .filter(|u| u.trial.is_none())
        .max_by_key(|u| (u.attempt, u.ended_at))
    else {
        return Value::Null;
    };
    json!({
        "attempt": last.attempt,
        "cpu_seconds": last.usage.cpu_ms as f64 / 1000.0,
        "wall_seconds": last.usage.wall_ms as f64 / 1000.0,
        "max_rss_bytes": last.usage.max_rss_bytes,
        "gpus": last.usage.gpus,
        "bytes_read": last.usage.bytes_read,
        "bytes_written": last.usage.bytes_written,
        "cost": mine.iter().filter(|u| u.billed).map(|u| u.total).sum::<f64>(),
        "trials": mine.iter().filter(|u| u.trial.is_some()).count(),
    })
}

/// Largest-Triangle-Three-Buckets (Steinarsson, 2013): the indices of at
/// most `threshold` points that keep a line's visual shape: the first and
/// last, and from each of the buckets between, the point that makes the
/// largest triangle with the point kept before it and the next bucket's
/// average. A dozen lines; the crates that offer it are unmaintained.
fn lttb(points: &[(f64, f64, i64)], threshold: usize) -> Vec<usize> {
    let n = points.len();
    if threshold >= n || threshold < 3 {
        return (0..n).collect();
    }
    let mut kept = Vec::with_capacity(threshold);
    kept.push(0);
    let every = (n - 2) as f64 / (threshold - 2) as f64;
    let mut a = 0;
    for bucket in 0..threshold - 2 {
        let start = (bucket as f64 * every) as usize + 1;
        let end = (((bucket + 1) as f64 * every) as usize + 1).min(n - 1);
        let next_end = (((bucket + 2) as f64 * every) as usize + 1).min(n);
        let next = &points[end..next_end.max(end + 1)];
        let (ax, ay) = (points[a].0, points[a].1);
        let cx = next.iter().map(|p| p.0).sum::<f64>() / next.len() as f64;
        let cy = next.iter().map(|p| p.1).sum::<f64>() / next.len() as f64;
        let mut best = (start, -1.0);
        for (i, p) in points.iter().enumerate().take(end).skip(start) {
            let area = ((ax - cx) * (p.1 - ay) - (ax - p.0) * (cy - ay)).abs();
            if area > best.1 {
                best = (i, area);
            }
        }
        kept.push(best.0);
        a = best.0;
    }
    kept.push(n - 1);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> Vec<(f64, f64, i64)> {
        (0..n)
            .map(|i| (i as f64, (i as f64 / 50.0).sin() * 10.0, i as i64))
            .collect()
    }

    #[test]
    fn lttb_keeps_the_ends_the_budget_and_the_order() {
        let points = series(100_000);
        let kept = lttb(&points, 1_000);
        assert_eq!(kept.len(), 1_000);
        assert_eq!((kept[0], kept[999]), (0, 99_999));
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        // The extremes of a sine survive downsampling.
        let max = kept.iter().map(|i| points[*i].1).fold(f64::MIN, f64::max);
        assert!(max > 9.99, "{max}");
    }

    #[test]
    fn lttb_keeps_short_series_whole() {
        assert_eq!(lttb(&series(10), 1_000), (0..10).collect::<Vec<_>>());
        assert_eq!(lttb(&series(0), 1_000), Vec::<usize>::new());
    }

    #[test]
    fn a_spike_in_one_bucket_is_kept() {
        let mut points = series(10_000);
        points[5_003].1 = 1_000.0;
        let kept = lttb(&points, 100);
        assert!(kept.contains(&5_003));
    }
}
