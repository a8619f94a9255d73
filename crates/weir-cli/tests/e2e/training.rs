//! `weir/train-gbdt` through the engine: trained, evaluated, registered and
//! served, with the served predictions bit-identical to the evaluate step's,
//! the per-round validation curve and telemetry recorded, and bad options
//! stopped before a run exists.

use serde_json::{json, Value};

use crate::common::Sandbox;

const PIPELINE: &str = r#"
version: 1
name: gbdt-points
steps:
  ingest:
    uses: weir/ingest
    with: { path: data/points.csv }
  split:
    uses: weir/split
    inputs: { table: ingest.table }
    with: { method: random, valid: 0.2, test: 0.2, seed: 5 }
  train:
    uses: weir/train-gbdt
    inputs: { train: split.train, valid: split.valid }
    with:
      target: "delay > 15"
      features: [x, z, carrier]
      num_rounds: 60
      num_leaves: 8
      min_data_in_leaf: 5
      subsample: 0.8
      colsample: 0.67
      threads: 2
  evaluate:
    uses: weir/evaluate
    inputs: { model: train.model, table: split.test }
  register:
    uses: weir/register
    inputs: { model: train.model, metrics: evaluate.metrics }
    with: { name: gbdt-points }
"#;

fn points() -> String {
    let mut csv = String::from("x,z,carrier,delay\n");
    for i in 0..1500usize {
        let h = (i * 7919) % 1000;
        let x = h as f64 / 100.0;
        let carrier = ["UA", "DL", "AA"][(i * 31) % 3];
        let z = if h % 6 == 0 {
            String::new()
        } else {
            format!("{}", h % 29)
        };
        let late = (x > 6.0) ^ (carrier == "DL") ^ z.is_empty() ^ ((i * 13) % 19 == 0);
        csv.push_str(&format!(
            "{x},{z},{carrier},{}\n",
            if late { 40 } else { 0 }
        ));
    }
    csv
}

fn step<'a>(show: &'a Value, name: &str) -> &'a Value {
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap()
}

#[test]
fn gbdt_trains_reports_and_serves_identical_predictions() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    sb.write("pipeline.yaml", PIPELINE);
    let out = sb.ok(&["run", "pipeline.yaml"]);
    assert!(
        out.contains("registered model gbdt-points version 1"),
        "{out}"
    );
    let run_id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run_id]);
    let train = step(&show, "train");
    let m = &train["metrics"];
    assert!(m["valid.auc"].as_f64().unwrap() > 0.8, "{m}");
    for key in [
        "train.rows_per_second",
        "train.fit_seconds",
        "train.bin_seconds",
        "train.load_seconds",
        "train.iterations",
        "train.best_iteration",
        "train.peak_memory_mb",
        "valid.loss",
    ] {
        assert!(m[key].is_number(), "{key} missing: {m}");
    }
    assert!(
        step(&show, "evaluate")["metrics"]["test.auc"]
            .as_f64()
            .unwrap()
            > 0.85,
        "{show}"
    );
    let logs = sb.ok(&["logs", &run_id, "train"]);
    assert!(logs.contains("rounds kept"), "{logs}");

    // Training-time predictions against the served ones, bit for bit.
    let digest = step(&show, "evaluate")["outputs"]["predictions"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let batch = weir_data::read_parquet(&sb.blob(&digest)).unwrap();
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&writer.into_inner()).unwrap();
    let expected: Vec<f64> = rows
        .iter()
        .map(|r| r["prediction"].as_f64().unwrap())
        .collect();
    let records: Vec<Value> = rows
        .iter()
        .map(|r| json!({"x": r["x"], "z": r.get("z").cloned().unwrap_or(Value::Null), "carrier": r["carrier"]}))
        .collect();
    let server = sb.serve(&["gbdt-points:1"]);
    let (status, body) = server.post(
        "/invocations",
        json!({ "dataframe_records": records }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let served: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["probability"].as_f64().unwrap())
        .collect();
    assert_eq!(served.len(), expected.len());
    for (s, e) in served.iter().zip(&expected) {
        assert_eq!(s.to_bits(), e.to_bits(), "served {s} vs trained {e}");
    }
}

#[test]
fn bad_gbdt_options_stop_the_run_before_it_starts() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    sb.write(
        "pipeline.yaml",
        &PIPELINE.replace("num_leaves: 8", "num_leaves: 8\n      learning_rte: 0.1"),
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("steps.train.with") && err.contains("learning_rte"),
        "{err}"
    );

    sb.write(
        "pipeline.yaml",
        &PIPELINE.replace(
            "features: [x, z, carrier]",
            "features: [x, z, carrier, delay]",
        ),
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("with.features") && err.contains("is the target"),
        "{err}"
    );
}
