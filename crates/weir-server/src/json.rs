//! MLflow's JSON shapes for the tracking entities. Absent optional fields
//! are left out, as protobuf's JSON mapping does; int64 times are numbers.

use serde_json::{json, Map, Value};
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
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v == f64::INFINITY {
        Value::String("Infinity".into())
    } else if v == f64::NEG_INFINITY {
        Value::String("-Infinity".into())
    } else {
        json!(v)
    }
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

pub fn run(r: &TrackingRun) -> Value {
    let inputs: Vec<Value> = r
        .inputs
        .iter()
        .map(|d| {
            json!({
                "tags": serde_json::from_str::<Value>(&d.tags_json).unwrap_or(json!([])),
                "dataset": serde_json::from_str::<Value>(&d.dataset_json).unwrap_or(json!({})),
            })
        })
        .collect();
    json!({
        "info": run_info(&r.info),
        "data": {
            "metrics": r.metrics.iter().map(metric).collect::<Vec<_>>(),
            "params": key_values(&r.params),
            "tags": key_values(&r.tags),
        },
        "inputs": {
            "dataset_inputs": inputs,
            "model_inputs": r.models.iter().filter(|m| m.1 == "input")
                .map(|m| json!({ "model_id": m.0 })).collect::<Vec<_>>(),
        },
        "outputs": {
            "model_outputs": r.models.iter().filter(|m| m.1 == "output")
                .map(|m| json!({ "model_id": m.0, "step": m.2 })).collect::<Vec<_>>(),
        },
    })
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
