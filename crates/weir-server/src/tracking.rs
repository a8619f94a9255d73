//! `/api/2.0/mlflow/experiments/*`, `/runs/*`, `/metrics/*`, `/artifacts/list`:
//! MLflow's tracking API with its validation rules and limits.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use weir_store::filter;
use weir_store::tracking::{self, Metric, NewTrackingRun, RunSearch, ViewType};

use crate::error::{ApiError, ApiResult};
use crate::params::{self, Loose, MetricIn, Params};
use crate::{json as shape, App};

// MLflow's limits (mlflow/utils/validation.py).
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
const MAX_ENTITIES_PER_BATCH: usize = 1000;
const MAX_PARAM_VALUE_LENGTH: usize = 6000;
const MAX_TAG_VALUE_LENGTH: usize = 8000;
const MAX_KEY_LENGTH: usize = 250;
const MAX_RESULTS_DEFAULT: i64 = 1000;
const MAX_RESULTS_LIMIT: i64 = 50000;

type Reply = ApiResult<Json<Value>>;

fn ok(v: Value) -> Reply {
    Ok(Json(v))
}

pub(crate) fn page_token(offset: i64) -> String {
    base64::engine::general_purpose::STANDARD.encode(json!({ "offset": offset }).to_string())
}

pub(crate) fn offset_of(p: &Params) -> ApiResult<i64> {
    let Some(token) = p.opt_str("page_token").filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    base64::engine::general_purpose::STANDARD
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("offset").and_then(Value::as_i64))
        .filter(|o| *o >= 0)
        .ok_or_else(|| ApiError::InvalidParameter(format!("invalid page token '{token}'")))
}

fn max_results(p: &Params, default: i64) -> ApiResult<i64> {
    let n = p.opt_i64("max_results")?.unwrap_or(default);
    if !(1..=MAX_RESULTS_LIMIT).contains(&n) {
        return Err(ApiError::InvalidParameter(format!(
            "Invalid value {n} for parameter 'max_results' supplied. It must be a positive integer at most {MAX_RESULTS_LIMIT}."
        )));
    }
    Ok(n)
}

fn view_type(p: &Params, field: &str) -> ApiResult<ViewType> {
    Ok(match p.opt_str(field).as_deref() {
        None | Some("ACTIVE_ONLY") | Some("1") => ViewType::ActiveOnly,
        Some("DELETED_ONLY") | Some("2") => ViewType::DeletedOnly,
        Some("ALL") | Some("3") => ViewType::All,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "invalid {field} '{other}'; use ACTIVE_ONLY, DELETED_ONLY or ALL"
            )))
        }
    })
}

/// Keys are path-like names: MLflow's rule, so a key is also a safe file name.
fn check_key(kind: &str, key: &str) -> ApiResult<()> {
    let allowed = key
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '/' | ':'));
    if key.is_empty() || !allowed || key.starts_with('/') || key.split('/').any(|s| s == "..") {
        return Err(ApiError::InvalidParameter(format!(
            "Invalid {kind} name: '{key}'. Names may only contain alphanumerics, underscores (_), \
             dashes (-), periods (.), spaces ( ), colon(:) and slashes (/), and may not start with '/' or contain '..'."
        )));
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err(ApiError::InvalidParameter(format!(
            "{kind} '{key}' had length {}, which exceeded length limit of {MAX_KEY_LENGTH}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(kind: &str, key: &str, value: &str, limit: usize) -> ApiResult<()> {
    if value.len() > limit {
        return Err(ApiError::InvalidParameter(format!(
            "{kind} '{key}' had value length {}, which exceeded length limit of {limit}",
            value.len()
        )));
    }
    Ok(())
}

// ---- experiments -------------------------------------------------------

pub async fn create_experiment(State(app): State<App>, p: Params) -> Reply {
    let name = p.str("name")?;
    if name.trim().is_empty() {
        return Err(ApiError::InvalidParameter(
            "experiment name must not be empty".into(),
        ));
    }
    let tags = p.key_values("tags")?;
    let location = p.opt_str("artifact_location").filter(|l| !l.is_empty());
    let id = app
        .store
        .create_experiment(&name, location.as_deref(), &tags)
        .await?;
    ok(json!({ "experiment_id": id.to_string() }))
}

pub async fn get_experiment(State(app): State<App>, p: Params) -> Reply {
    let e = app
        .store
        .experiment(p.experiment_id("experiment_id")?)
        .await?;
    ok(json!({ "experiment": shape::experiment(&e) }))
}

pub async fn get_experiment_by_name(State(app): State<App>, p: Params) -> Reply {
    let name = p.str("experiment_name")?;
    let e = app
        .store
        .experiment_by_name(&name)
        .await
        .map_err(|e| match e {
            weir_store::StoreError::NotFound { .. } => {
                ApiError::NotFound(format!("Could not find experiment with name '{name}'"))
            }
            other => other.into(),
        })?;
    ok(json!({ "experiment": shape::experiment(&e) }))
}

pub async fn search_experiments(State(app): State<App>, p: Params) -> Reply {
    let max = max_results(&p, MAX_RESULTS_DEFAULT)?;
    let offset = offset_of(&p)?;
    let filter = filter::parse_experiment_filter(&p.opt_str("filter").unwrap_or_default())
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let mut order = Vec::new();
    for o in p.strings("order_by") {
        let mut parts = o.split_whitespace();
        let column = parts.next().unwrap_or("").trim_start_matches("attributes.");
        let ascending = !matches!(parts.next(), Some(d) if d.eq_ignore_ascii_case("DESC"));
        if !matches!(
            column,
            "name" | "experiment_id" | "creation_time" | "last_update_time"
        ) {
            return Err(ApiError::InvalidParameter(format!(
                "invalid order_by '{o}': experiments sort by name, experiment_id, creation_time or last_update_time"
            )));
        }
        order.push((column.to_string(), ascending));
    }
    let found = app
        .store
        .search_experiments(
            view_type(&p, "view_type")?,
            &filter,
            &order,
            max + 1,
            offset,
        )
        .await?;
    let more = found.len() as i64 > max;
    let experiments: Vec<Value> = found
        .iter()
        .take(max as usize)
        .map(shape::experiment)
        .collect();
    let mut out = json!({ "experiments": experiments });
    if more {
        out["next_page_token"] = json!(page_token(offset + max));
    }
    ok(out)
}

pub async fn update_experiment(State(app): State<App>, p: Params) -> Reply {
    let id = p.experiment_id("experiment_id")?;
    let name = p.str("new_name")?;
    app.store.rename_experiment(id, &name).await?;
    ok(json!({}))
}

pub async fn delete_experiment(State(app): State<App>, p: Params) -> Reply {
    let id = p.experiment_id("experiment_id")?;
    app.store
        .set_experiment_lifecycle(id, tracking::DELETED)
        .await?;
    ok(json!({}))
}

pub async fn restore_experiment(State(app): State<App>, p: Params) -> Reply {
    let id = p.experiment_id("experiment_id")?;
    app.store
        .set_experiment_lifecycle(id, tracking::ACTIVE)
        .await?;
    ok(json!({}))
}

pub async fn set_experiment_tag(State(app): State<App>, p: Params) -> Reply {
    let id = p.experiment_id("experiment_id")?;
    let key = p.str("key")?;
    let value = p.str("value")?;
    check_key("tag", &key)?;
    check_value("Tag", &key, &value, MAX_TAG_VALUE_LENGTH)?;
    app.store.set_experiment_tag(id, &key, &value).await?;
    ok(json!({}))
}

pub async fn delete_experiment_tag(State(app): State<App>, p: Params) -> Reply {
    let id = p.experiment_id("experiment_id")?;
    app.store.delete_experiment_tag(id, &p.str("key")?).await?;
    ok(json!({}))
}

// ---- runs --------------------------------------------------------------

fn run_name() -> String {
    use rand::seq::IndexedRandom;
    const ADJECTIVES: &[&str] = &[
        "amber", "brisk", "calm", "clever", "crisp", "dapper", "eager", "gentle", "golden",
        "hardy", "keen", "lucid", "merry", "nimble", "quiet", "rapid", "sturdy", "vivid",
    ];
    const NOUNS: &[&str] = &[
        "badger", "crane", "falcon", "fox", "heron", "ibis", "lark", "lynx", "otter", "owl",
        "panda", "raven", "salmon", "seal", "stoat", "swift", "trout", "wren",
    ];
    let mut rng = rand::rng();
    format!(
        "{}-{}-{}",
        ADJECTIVES.choose(&mut rng).expect("not empty"),
        NOUNS.choose(&mut rng).expect("not empty"),
        rand::Rng::random_range(&mut rng, 100..1000)
    )
}

pub async fn create_run(State(app): State<App>, p: Params) -> Reply {
    let experiment_id = match p.opt_str("experiment_id") {
        Some(_) => p.experiment_id("experiment_id")?,
        None => 0,
    };
    let tags = p.key_values("tags")?;
    for (k, v) in &tags {
        check_key("tag", k)?;
        check_value("Tag", k, v, MAX_TAG_VALUE_LENGTH)?;
    }
    let name = p
        .opt_str("run_name")
        .filter(|n| !n.is_empty())
        .or_else(|| {
            tags.iter()
                .find(|(k, _)| k == "mlflow.runName")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(run_name);
    let user_id = p
        .opt_str("user_id")
        .or_else(|| {
            tags.iter()
                .find(|(k, _)| k == "mlflow.user")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default();
    let new = NewTrackingRun {
        run_id: weir_core::new_id(),
        experiment_id,
        name,
        user_id,
        start_time: p
            .opt_i64("start_time")?
            .or_else(|| Some(weir_core::now_ms())),
        tags,
    };
    let run = app.store.create_tracking_run(&new).await?;
    ok(json!({ "run": shape::run(&run) }))
}

pub async fn get_run(State(app): State<App>, p: Params) -> Reply {
    let run = app.store.tracking_run(&p.run_id()?).await?;
    ok(json!({ "run": shape::run(&run) }))
}

const RUN_STATUSES: &[&str] = &["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];

pub async fn update_run(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let status = p.opt_str("status");
    if let Some(s) = &status {
        if !RUN_STATUSES.contains(&s.as_str()) {
            return Err(ApiError::InvalidParameter(format!(
                "invalid run status '{s}'; use one of {}",
                RUN_STATUSES.join(", ")
            )));
        }
    }
    let info = app
        .store
        .update_tracking_run(
            &run_id,
            status.as_deref(),
            p.opt_i64("end_time")?,
            p.opt_str("run_name").filter(|n| !n.is_empty()).as_deref(),
        )
        .await?;
    ok(json!({ "run_info": shape::run_info(&info) }))
}

pub async fn delete_run(State(app): State<App>, p: Params) -> Reply {
    app.store
        .set_run_lifecycle(&p.run_id()?, tracking::DELETED)
        .await?;
    ok(json!({}))
}

pub async fn restore_run(State(app): State<App>, p: Params) -> Reply {
    app.store
        .set_run_lifecycle(&p.run_id()?, tracking::ACTIVE)
        .await?;
    ok(json!({}))
}

fn parse_metric(m: MetricIn) -> ApiResult<Metric> {
    let key = m.key.ok_or_else(|| params::missing("metrics[].key"))?;
    check_key("metric", &key)?;
    let int = |field: &str, v: &Loose| -> ApiResult<Option<i64>> {
        match v {
            Loose::Absent => Ok(None),
            Loose::Int(n) => Ok(Some(*n)),
            Loose::Float(f) => Ok(Some(*f as i64)),
            Loose::Text(s) => s.parse().map(Some).map_err(|_| {
                ApiError::InvalidParameter(format!("metric '{key}': {field} must be an integer"))
            }),
            Loose::Other => Err(ApiError::InvalidParameter(format!(
                "metric '{key}': {field} must be an integer"
            ))),
        }
    };
    Ok(Metric {
        value: params::metric_value(&m.value)?,
        timestamp: int("timestamp", &m.timestamp)?.ok_or_else(|| params::missing("timestamp"))?,
        step: int("step", &m.step)?.unwrap_or(0),
        key,
    })
}

pub async fn log_metric(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let metric = parse_metric(p.as_metric())?;
    app.store.log_batch(&run_id, &[metric], &[], &[]).await?;
    ok(json!({}))
}

pub async fn log_param(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let key = p.str("key")?;
    let value = p.str("value")?;
    check_key("param", &key)?;
    check_value("Param", &key, &value, MAX_PARAM_VALUE_LENGTH)?;
    app.store
        .log_batch(&run_id, &[], &[(key, value)], &[])
        .await?;
    ok(json!({}))
}

pub async fn set_tag(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let key = p.str("key")?;
    let value = p.str("value")?;
    check_key("tag", &key)?;
    check_value("Tag", &key, &value, MAX_TAG_VALUE_LENGTH)?;
    app.store
        .log_batch(&run_id, &[], &[], &[(key, value)])
        .await?;
    ok(json!({}))
}

pub async fn delete_tag(State(app): State<App>, p: Params) -> Reply {
    app.store
        .delete_run_tag(&p.run_id()?, &p.str("key")?)
        .await?;
    ok(json!({}))
}

pub async fn log_batch(State(app): State<App>, mut p: Params) -> Reply {
    let run_id = p.run_id()?;
    let metrics = p.take_metrics();
    let params = p.key_values("params")?;
    let tags = p.key_values("tags")?;
    if metrics.len() > MAX_METRICS_PER_BATCH {
        return Err(ApiError::InvalidParameter(format!(
            "A batch logging request can contain at most {MAX_METRICS_PER_BATCH} metrics. Got {} metrics. \
             Please split up metrics across multiple requests and try again.",
            metrics.len()
        )));
    }
    for (what, n) in [("params", params.len()), ("tags", tags.len())] {
        if n > MAX_PARAMS_TAGS_PER_BATCH {
            return Err(ApiError::InvalidParameter(format!(
                "A batch logging request can contain at most {MAX_PARAMS_TAGS_PER_BATCH} {what}. Got {n} {what}. \
                 Please split up {what} across multiple requests and try again."
            )));
        }
    }
    let total = metrics.len() + params.len() + tags.len();
    if total > MAX_ENTITIES_PER_BATCH {
        return Err(ApiError::InvalidParameter(format!(
            "A batch logging request can contain at most {MAX_ENTITIES_PER_BATCH} total metrics, params, and tags. \
             Got {total} in total. Please split up the entities across multiple requests and try again."
        )));
    }
    for (k, v) in &params {
        check_key("param", k)?;
        check_value("Param", k, v, MAX_PARAM_VALUE_LENGTH)?;
    }
    for (k, v) in &tags {
        check_key("tag", k)?;
        check_value("Tag", k, v, MAX_TAG_VALUE_LENGTH)?;
    }
    let metrics = metrics
        .into_iter()
        .map(parse_metric)
        .collect::<ApiResult<Vec<_>>>()?;
    app.store
        .log_batch(&run_id, &metrics, &params, &tags)
        .await?;
    ok(json!({}))
}

pub async fn log_inputs(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let mut datasets = Vec::new();
    for input in p.list("datasets") {
        let dataset = input.get("dataset").cloned().unwrap_or(json!({}));
        let name = dataset
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| params::missing("datasets[].dataset.name"))?
            .to_string();
        let digest = dataset
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| params::missing("datasets[].dataset.digest"))?
            .to_string();
        let tags = input.get("tags").cloned().unwrap_or(json!([]));
        datasets.push((name, digest, dataset.to_string(), tags.to_string()));
    }
    app.store.log_inputs(&run_id, &datasets).await?;
    let models = p.model_refs()?;
    if !models.is_empty() {
        app.store.log_run_models(&run_id, "input", &models).await?;
    }
    ok(json!({}))
}

pub async fn search_runs(State(app): State<App>, p: Params) -> ApiResult<Response> {
    let max = max_results(&p, MAX_RESULTS_DEFAULT)?;
    let offset = offset_of(&p)?;
    let experiment_ids = p.experiment_ids()?;
    let filter = filter::parse(&p.opt_str("filter").unwrap_or_default())
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let order_by = p
        .strings("order_by")
        .iter()
        .map(|o| filter::parse_order_by(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let (runs, more) = app
        .store
        .search_tracking_runs_json(&RunSearch {
            experiment_ids,
            filter,
            view: view_type(&p, "run_view_type")?,
            order_by,
            max_results: max,
            offset,
        })
        .await?;
    // Each run's body comes from the store already in MLflow's JSON (an
    // object whose members follow the info's), so it is copied, not re-encoded.
    let mut out = Vec::with_capacity(64 + runs.iter().map(|(_, b)| b.len() + 400).sum::<usize>());
    out.extend_from_slice(br#"{"runs":["#);
    for (i, (info, body)) in runs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"info":"#);
        serde_json::to_writer(&mut out, &shape::run_info_json(info))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        out.push(b',');
        out.extend_from_slice(&body.as_bytes()[1..]);
    }
    out.push(b']');
    if more {
        out.extend_from_slice(br#","next_page_token":"#);
        serde_json::to_writer(&mut out, &page_token(offset + max))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    out.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

pub async fn metric_history(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let key = p.str("metric_key")?;
    let max = max_results(&p, 25000)?;
    let offset = offset_of(&p)?;
    let points = app
        .store
        .metric_history(&run_id, &key, max + 1, offset)
        .await?;
    let more = points.len() as i64 > max;
    let mut out = json!({
        "metrics": points.iter().take(max as usize).map(shape::metric).collect::<Vec<_>>()
    });
    if more {
        out["next_page_token"] = json!(page_token(offset + max));
    }
    ok(out)
}

/// `runs/log-model` (the 2.x clients' record of a logged model): appended to
/// the run's `mlflow.log-model.history` tag, as MLflow's server does.
pub async fn log_model(State(app): State<App>, p: Params) -> Reply {
    let run_id = p.run_id()?;
    let model_json = p.str("model_json")?;
    let model: Value = serde_json::from_str(&model_json)
        .map_err(|e| ApiError::InvalidParameter(format!("model_json is not valid JSON: {e}")))?;
    let run = app.store.tracking_run(&run_id).await?;
    const HISTORY: &str = "mlflow.log-model.history";
    let mut history: Vec<Value> = run
        .tags
        .iter()
        .find(|(k, _)| k == HISTORY)
        .and_then(|(_, v)| serde_json::from_str(v).ok())
        .unwrap_or_default();
    history.push(model);
    app.store
        .log_batch(
            &run_id,
            &[],
            &[],
            &[(HISTORY.to_string(), Value::Array(history).to_string())],
        )
        .await?;
    ok(json!({}))
}
