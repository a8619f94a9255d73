//! MLflow's JSON shapes for the tracking entities. Absent optional fields
//! are left out, as protobuf's JSON mapping does; int64 times are numbers.

use serde::Serialize;
use serde_json::{json, Map, Value};
use weir_store::run_json::{Double, RunBody};
use weir_store::tracking::{Experiment, LoggedModel, Metric, RunInfo, TrackingRun};

pub fn key_values(items: &[(String, String)]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect(),
    )
}

pub fn experiment(e: &Experiment) -> Value {
    json!({
        "experiment_id": e.experiment_id.to_string(),
        "name": e.name,
        "artifact_location": e.artifact_location,
        "lifecycle_stage": e.lifecycle_stage,
        "creation_time": e.creation_time,
        "last_update_time": e.last_update_time,
        "tags": key_values(&e.tags),
    })
}

/// A double as protobuf writes it: JSON has no NaN.
pub fn double(v: f64) -> Value {
    serde_json::to_value(Double(v)).expect("a double serializes")
}

pub fn metric(m: &Metric) -> Value {
    json!({ "key": m.key, "value": double(m.value), "timestamp": m.timestamp, "step": m.step })
}

pub fn run_info(i: &RunInfo) -> Value {
    let mut o = Map::new();
    o.insert("run_id".into(), json!(i.run_id));
    o.insert("run_uuid".into(), json!(i.run_id));
    o.insert("run_name".into(), json!(i.name));
    o.insert("experiment_id".into(), json!(i.experiment_id.to_string()));
    o.insert("user_id".into(), json!(i.user_id));
    o.insert("status".into(), json!(i.status));
    if let Some(t) = i.start_time {
        o.insert("start_time".into(), json!(t));
    }
    if let Some(t) = i.end_time {
        o.insert("end_time".into(), json!(t));
    }
    o.insert("artifact_uri".into(), json!(i.artifact_uri));
    o.insert("lifecycle_stage".into(), json!(i.lifecycle_stage));
    Value::Object(o)
}

/// A run as MLflow's JSON has it: its info, then the store's rendering of
/// its data, inputs and outputs (the form a search copies from its cache).
#[derive(Serialize)]
pub struct RunJson<'a> {
    info: RunInfoJson<'a>,
    #[serde(flatten)]
    body: RunBody<'a>,
}

#[derive(Serialize)]
pub struct RunInfoJson<'a> {
    run_id: &'a str,
    run_uuid: &'a str,
    run_name: &'a str,
    experiment_id: String,
    user_id: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<i64>,
    artifact_uri: &'a str,
    lifecycle_stage: &'a str,
}

pub fn run_info_json(i: &RunInfo) -> RunInfoJson<'_> {
    RunInfoJson {
        run_id: &i.run_id,
        run_uuid: &i.run_id,
        run_name: &i.name,
        experiment_id: i.experiment_id.to_string(),
        user_id: &i.user_id,
        status: &i.status,
        start_time: i.start_time,
        end_time: i.end_time,
        artifact_uri: &i.artifact_uri,
        lifecycle_stage: &i.lifecycle_stage,
    }
}

pub fn run(r: &TrackingRun) -> RunJson<'_> {
    RunJson {
        info: run_info_json(&r.info),
        body: RunBody::new(&r.params, &r.tags, &r.metrics, &r.inputs, &r.models),
    }
}

pub fn logged_model(m: &LoggedModel) -> Value {
    let mut info = Map::new();
    info.insert("model_id".into(), json!(m.model_id));
    info.insert("experiment_id".into(), json!(m.experiment_id.to_string()));
    info.insert("name".into(), json!(m.name));
    info.insert("creation_timestamp_ms".into(), json!(m.creation_time));
    info.insert(
        "last_updated_timestamp_ms".into(),
        json!(m.last_updated_time),
    );
    info.insert("artifact_uri".into(), json!(m.artifact_uri));
    info.insert("status".into(), json!(m.status));
    for (k, v) in [
        ("creator_id", &m.creator_id),
        ("model_type", &m.model_type),
        ("source_run_id", &m.source_run_id),
        ("status_message", &m.status_message),
    ] {
        if let Some(v) = v {
            info.insert(k.into(), json!(v));
        }
    }
    info.insert("tags".into(), key_values(&m.tags));
    json!({
        "info": Value::Object(info),
        "data": { "params": key_values(&m.params), "metrics": [] },
    })
}
