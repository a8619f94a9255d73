//! ONNX models registered from files and served over both protocols, with
//! onnxruntime's answers (crates/weir-onnx/tests/data) as the reference.

use serde_json::{json, Value};

use crate::common::Sandbox;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../weir-onnx/tests/data");

fn expected(model: &str) -> Value {
    let text = std::fs::read_to_string(format!("{DATA}/expected.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()[model].clone()
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "value {i}: {g} vs {w}"
        );
    }
}

/// The sandbox with both test graphs registered (`bc`: a binary tree
/// ensemble, `diabetes`: a dense regressor).
fn registered() -> Sandbox {
    let sb = Sandbox::new();
    let r = sb.json(&[
        "models",
        "register",
        "bc",
        &format!("{DATA}/gbdt_classifier.onnx"),
    ]);
    assert_eq!(
        (r["version"].clone(), r["format"].clone()),
        (json!(1), json!("onnx")),
        "{r}"
    );
    assert_eq!(
        r["inputs"],
        json!([{"name": "X", "datatype": "FP32", "shape": [-1, 30]}])
    );
    let out = sb.ok(&[
        "models",
        "register",
        "diabetes",
        &format!("{DATA}/mlp_regressor.onnx"),
    ]);
    assert!(out.contains("registered diabetes:1 (onnx model"), "{out}");
    sb
}

#[test]
fn an_onnx_file_registers_and_serves_onnxruntime_answers_over_both_protocols() {
    let sb = registered();
    // One worker thread (as on a host shared with a load generator) serves the same.
    let server = sb.serve(&["bc", "diabetes", "--threads", "1"]);
    let (status, meta) = server.get("/v2/models/bc");
    assert_eq!(status, 200);
    assert_eq!(meta["platform"], "onnx");
    assert_eq!(
        meta["outputs"],
        json!([{"name": "label", "datatype": "INT64", "shape": [-1]},
               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}])
    );

    let bc = expected("gbdt_classifier");
    let rows = bc["rows"].as_array().unwrap();
    let (status, body) = server.post(
        "/v2/models/bc/infer",
        json!({"id": "r1", "inputs": [{"name": "X", "datatype": "FP32", "shape": [rows.len(), 30], "data": rows}]})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "r1");
    assert_eq!(body["outputs"][0]["name"], "label");
    assert_eq!(body["outputs"][0]["data"], bc["outputs"]["label"]);
    assert_eq!(body["outputs"][1]["shape"], json!([rows.len(), 2]));
    close(
        &flat(&body["outputs"][1]["data"]),
        &flat(&bc["outputs"]["probabilities"]),
    );

    // MLflow's dataframe_split, one row at a time as the benchmark sends it.
    let columns: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    for (i, row) in rows.iter().enumerate() {
        let (status, body) = server.post(
            "/invocations",
            json!({"dataframe_split": {"columns": columns, "data": [row]}}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let p = &body["predictions"][0];
        assert_eq!(p["label"], bc["outputs"]["label"][i]);
        close(
            &flat(&p["probabilities"]),
            &flat(&bc["outputs"]["probabilities"][i]),
        );
    }

    // Only the outputs asked for.
    let (_, body) = server.post(
        "/v2/models/bc/infer",
        json!({"inputs": [{"name": "X", "datatype": "FP64", "shape": [1, 30], "data": rows[0]}],
               "outputs": [{"name": "probabilities"}]})
        .to_string(),
    );
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1, "{body}");

    // A one-output regressor beside it, through /v2 by version.
    let d = expected("mlp_regressor");
    let rows = d["rows"].as_array().unwrap();
    let (status, body) = server.post(
        "/v2/models/diabetes/versions/1/infer",
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [rows.len(), 10], "data": rows}]})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    close(
        &flat(&body["outputs"][0]["data"]),
        &flat(&d["outputs"]["variable"]),
    );

    let metrics = server.metrics();
    assert!(
        metrics.contains(r#"weir_serve_requests_total{model="bc",version="1",protocol="invocations",code="200"} 20"#),
        "{metrics}"
    );
}

#[test]
fn bad_onnx_requests_and_files_are_refused_with_what_was_wrong() {
    let sb = registered();
    let e = sb.fails(&["serve", "bc", "--threads", "0"]);
    assert!(
        e.contains("--threads") && e.contains("0 is not in 1..="),
        "{e}"
    );
    let server = sb.serve(&["bc"]);
    let row: Vec<f64> = vec![1.0; 30];
    let bad = |body: Value| {
        let (status, body) = server.post("/v2/models/bc/infer", body.to_string());
        assert_eq!(status, 400, "{body}");
        body["error"].as_str().unwrap().to_string()
    };
    let e = bad(
        json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": row}]}),
    );
    assert!(
        e.contains("unknown input 'features'") && e.contains("'X' [-1, 30]"),
        "{e}"
    );
    let e = bad(
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 29], "data": &row[..29]}]}),
    );
    assert!(
        e.contains("shape [1, 29] does not fit the model's [-1, 30]"),
        "{e}"
    );
    let e =
        bad(json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 30], "data": row}]}));
    assert!(e.contains("says 60 values but data has 30"), "{e}");
    let e =
        bad(json!({"inputs": [{"name": "X", "datatype": "BYTES", "shape": [1, 30], "data": row}]}));
    assert!(
        e.contains("datatype BYTES cannot feed a FP32 tensor"),
        "{e}"
    );
    let mut with_null = json!(row);
    with_null[3] = Value::Null;
    let e = bad(
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": with_null}]}),
    );
    assert!(
        e.contains("element 3 is null") && e.contains("no missing values"),
        "{e}"
    );

    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2.0]]}}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("takes 30 values per row; the dataframe has 2 columns"),
        "{body}"
    );
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_records": [{"a": 1}]}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no column order"),
        "{body}"
    );
    assert_eq!(server.post("/v2/models/bc/versions/7/infer", "{}").0, 404);

    // Files that cannot be served never get a version.
    let broken = sb.write("broken.onnx", "");
    std::fs::write(
        &broken,
        &std::fs::read(format!("{DATA}/gbdt_classifier.onnx")).unwrap()[..1500],
    )
    .unwrap();
    let e = sb.fails(&["models", "register", "bc", broken.to_str().unwrap()]);
    assert!(
        e.contains("cannot register") && e.contains("not a readable ONNX model"),
        "{e}"
    );
    let text = sb.write("notes.txt", "hello");
    let e = sb.fails(&["models", "register", "bc", text.to_str().unwrap()]);
    assert!(
        e.contains("neither a Weir model file nor an ONNX model"),
        "{e}"
    );
    let versions = sb.json(&["models", "show", "bc"]);
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
}

#[test]
fn a_corrupt_onnx_file_fails_its_load_and_the_server_serves_the_rest() {
    let sb = registered();
    let digest = sb.json(&["models", "show", "bc"])[0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(sb.blob(&digest), b"\x08\x07garbage").unwrap();

    let server = sb.serve(&["bc", "diabetes"]);
    let index = server.post("/v2/repository/index", "").1;
    let bc = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "bc")
        .unwrap();
    assert_eq!(bc["state"], "UNAVAILABLE", "{index}");
    let (status, body) = server.post(
        "/v2/models/bc/infer",
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": vec![0.0; 30]}]}).to_string(),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bc:1 is registered but could not be loaded"),
        "{body}"
    );
    let (status, body) = server.post(
        "/v2/models/diabetes/infer",
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 10], "data": vec![0.0; 10]}]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.post("/v2/repository/models/bc/load", "").0, 422);
    assert_eq!(server.get("/v2/health/ready").0, 200);
}

#[test]
fn concurrent_onnx_requests_are_batched_and_each_gets_its_own_rows() {
    let sb = registered();
    let server = sb.serve(&["bc", "--batch", "bc=64:300ms"]);
    let bc = expected("gbdt_classifier");
    let rows = bc["rows"].as_array().unwrap();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (server, row) = (&server, &rows[i]);
                s.spawn(move || {
                    server.post_alone(
                        "/v2/models/bc/infer",
                        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": row}]})
                            .to_string(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, answer)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(
            answer["outputs"][0]["data"],
            json!([bc["outputs"]["label"][i]])
        );
        assert_eq!(answer["outputs"][1]["shape"], json!([1, 2]));
        close(
            &flat(&answer["outputs"][1]["data"]),
            &flat(&bc["outputs"]["probabilities"][i]),
        );
    }
    let calls = server
        .metric(r#"weir_serve_model_call_rows_count{model="bc",version="1"}"#)
        .unwrap();
    assert!(
        calls < 8.0,
        "8 requests in {calls} calls: nothing was batched"
    );
    assert_eq!(
        server.metric(r#"weir_serve_model_call_rows_sum{model="bc",version="1"}"#),
        Some(8.0)
    );
}
