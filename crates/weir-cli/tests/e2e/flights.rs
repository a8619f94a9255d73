//! The quickstart: the flights example end to end, then `weir serve` over
//! both protocols, with training-time and serving-time predictions compared
//! bit for bit, and every kind of bad request.

use serde_json::{json, Value};

use crate::common::Sandbox;

const FEATURES: [&str; 15] = [
    "carrier",
    "origin",
    "dest",
    "hour",
    "distance",
    "sched_dep_time",
    "sched_arr_time",
    "temp",
    "dewp",
    "humid",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
];

fn example() -> String {
    format!(
        "{}/../../examples/flights/pipeline.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn records(batch: &arrow::record_batch::RecordBatch) -> Vec<Value> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    serde_json::from_slice(&writer.into_inner()).unwrap()
}

#[test]
fn flights_example_trains_registers_and_serves_identical_predictions() {
    let sb = Sandbox::new();
    let out = sb.weir(&["run", &example()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test.auc"), "{stdout}");
    assert!(
        stdout.contains("registered model flights-delay version 1"),
        "{stdout}"
    );

    let run_id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run_id]);
    let steps = show["steps"].as_array().unwrap();
    let by_name = |n: &str| steps.iter().find(|s| s["step"] == n).unwrap().clone();
    let split = by_name("split");
    assert_eq!(split["metrics"]["train_rows"], 252484.0);
    let join = by_name("join");
    assert_eq!(join["metrics"]["rows"], 336776.0);
    assert!(
        join["metrics"]["matched_rows"].as_f64().unwrap() > 330000.0,
        "{join}"
    );
    let evaluate = by_name("evaluate");
    let auc = evaluate["metrics"]["test.auc"].as_f64().unwrap();
    assert!(auc > 0.6 && auc < 0.9, "test auc {auc}");

    // The registry has the version with metrics per slice and full lineage.
    let models = sb.json(&["models", "list"]);
    assert_eq!(
        (
            models[0]["name"].as_str(),
            models[0]["latest_version"].as_i64()
        ),
        (Some("flights-delay"), Some(1))
    );
    let version = sb.json(&["models", "show", "flights-delay", "--version", "1"]);
    assert_eq!(version["metrics"]["overall"]["auc"].as_f64(), Some(auc));
    assert!(version["metrics"]["slices"]["carrier"]["UA"]["auc"].is_number());
    let lineage = &version["lineage"];
    assert_eq!(lineage["run_id"], run_id.as_str());
    assert_eq!(lineage["params"]["model_name"], "flights-delay");
    assert!(lineage["weir_version"].is_string());
    let ingest = lineage["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "ingest")
        .unwrap();
    assert_eq!(ingest["sources"][0]["path"], "data/flights.csv.gz");
    assert_eq!(ingest["sources"][0]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(
        lineage["model"]["inputs"].as_array().unwrap().len(),
        FEATURES.len()
    );
    // The validation scores' spread, kept for drift during rollouts.
    let reference = &lineage["prediction_reference"];
    assert!(reference["rows"].as_u64().unwrap() > 1000, "{reference}");
    assert_eq!(
        reference["shares"].as_array().unwrap().len(),
        reference["edges"].as_array().unwrap().len() + 1
    );

    let err = sb.fails(&["serve", "no-such-model"]);
    assert!(
        err.contains("model 'no-such-model' does not exist") && err.contains("flights-delay"),
        "{err}"
    );

    let server = sb.serve(&["flights-delay"]);
    assert_eq!(server.get("/v2/health/live").0, 200);
    assert_eq!(
        server.get("/v2/models/flights-delay/ready"),
        (200, json!({"name": "flights-delay", "ready": true}))
    );
    let (status, meta) = server.get("/v2/models/flights-delay");
    assert_eq!(status, 200);
    assert_eq!(meta["inputs"].as_array().unwrap().len(), FEATURES.len());
    assert_eq!(server.get("/v2").1["name"], "weir");
    assert_eq!(server.get("/ping").0, 200);

    // Training-time predictions, as the evaluate step computed them.
    let digest = evaluate["outputs"]["predictions"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let batch = weir_data::read_parquet(&sb.blob(&digest))
        .unwrap()
        .slice(0, 200);
    let rows = records(&batch);
    let expected: Vec<f64> = rows
        .iter()
        .map(|r| r["prediction"].as_f64().unwrap())
        .collect();

    // MLflow dataframe_split.
    let data: Vec<Vec<Value>> = rows
        .iter()
        .map(|r| FEATURES.iter().map(|f| r[*f].clone()).collect())
        .collect();
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_split": {"columns": FEATURES, "data": data}}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let served: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    assert_eq!(
        served, expected,
        "serving must reproduce training-time predictions bit for bit"
    );

    // MLflow dataframe_records and inputs.
    let recs: Vec<Value> = rows
        .iter()
        .map(|r| {
            FEATURES
                .iter()
                .map(|f| (f.to_string(), r[*f].clone()))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    let (_, body) = server.post(
        "/invocations",
        json!({"dataframe_records": recs[..3]}).to_string(),
    );
    assert_eq!(
        body["predictions"][2]["probability"].as_f64(),
        Some(expected[2])
    );
    let cols: serde_json::Map<String, Value> = FEATURES
        .iter()
        .map(|f| {
            (
                f.to_string(),
                Value::Array(rows[..2].iter().map(|r| r[*f].clone()).collect()),
            )
        })
        .collect();
    let (_, body) = server.post("/invocations", json!({"inputs": cols}).to_string());
    assert_eq!(
        body["predictions"][1]["probability"].as_f64(),
        Some(expected[1])
    );

    // Open Inference Protocol v2, latest and explicit version.
    let tensor = |f: &str| {
        let values: Vec<Value> = rows.iter().map(|r| r[f].clone()).collect();
        let datatype = if values.iter().any(Value::is_string) {
            "BYTES"
        } else if values.iter().all(|v| v.is_i64() || v.is_null()) {
            "INT64"
        } else {
            "FP64"
        };
        json!({"name": f, "shape": [values.len()], "datatype": datatype, "data": values})
    };
    let request =
        json!({"id": "req-1", "inputs": FEATURES.iter().map(|f| tensor(f)).collect::<Vec<_>>()});
    for path in [
        "/v2/models/flights-delay/infer",
        "/v2/models/flights-delay/versions/1/infer",
    ] {
        let (status, body) = server.post(path, request.to_string());
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["id"].as_str(), body["model_version"].as_str()),
            (Some("req-1"), Some("1"))
        );
        let probs: Vec<f64> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(probs, expected);
        assert_eq!(body["outputs"][1]["name"], "label");
    }

    // Bad requests: each a 4xx with a JSON error saying what is wrong.
    let mut wrong_name = recs[0].clone();
    let v = wrong_name
        .as_object_mut()
        .unwrap()
        .remove("carrier")
        .unwrap();
    wrong_name["carier"] = v;
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_records": [wrong_name]}).to_string(),
    );
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown input 'carier'"),
        "{body}"
    );
    assert_eq!(body["error_code"], "BAD_REQUEST");

    let mut wrong_type = recs[0].clone();
    wrong_type["distance"] = json!("far");
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_records": [wrong_type]}).to_string(),
    );
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("input 'distance' row 0: expected a number, got the string \"far\""),
        "{body}"
    );

    let mut missing = recs[0].clone();
    missing.as_object_mut().unwrap().remove("dest");
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_records": [missing]}).to_string(),
    );
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("missing input dest"),
        "{body}"
    );

    let (status, body) = server.post("/invocations", "{\"dataframe_split\": ");
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    let (status, body) = server.post_alone("/invocations", vec![b' '; 17 << 20]);
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{body}"
    );

    let mut bad_tensor = request.clone();
    bad_tensor["inputs"][4]["datatype"] = json!("FP64");
    bad_tensor["inputs"][4]["data"][0] = json!("x");
    let (status, body) = server.post("/v2/models/flights-delay/infer", bad_tensor.to_string());
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("datatype FP64 but element 0 is the string \"x\""),
        "{body}"
    );

    let mut bad_shape = request.clone();
    bad_shape["inputs"][0]["shape"] = json!([3]);
    let (status, body) = server.post("/v2/models/flights-delay/infer", bad_shape.to_string());
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("shape [3] says 3 values but data has 200"),
        "{body}"
    );

    let (status, body) = server.post("/v2/models/other/infer", request.to_string());
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("model 'other' is not served here"),
        "{body}"
    );
    let (status, _) = server.post(
        "/v2/models/flights-delay/versions/7/infer",
        request.to_string(),
    );
    assert_eq!(status, 404);
}
