//! `weir/train-gbdt` through the engine: trained, evaluated, registered and
//! served, with the served predictions bit-identical to the evaluate step's,
//! the per-round validation curve and telemetry recorded, and bad options
//! stopped before a run exists.

use serde_json::{json, Value};

use crate::common::{step, Sandbox};

pub(crate) const PIPELINE: &str = r#"
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

pub(crate) fn points() -> String {
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

fn latest_run(sb: &Sandbox) -> String {
    sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
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
    let run_id = latest_run(&sb);
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

    assert_served_bit_identical(&sb, &show, "gbdt-points:1", &["x", "z", "carrier"]);
}

const TRANSFORMS: &str = r#"
version: 1
name: transforms
steps:
  ingest:
    uses: weir/ingest
    with: { path: data/points.csv, schema: { t: timestamp } }
  split:
    uses: weir/split
    inputs: { table: ingest.table }
    with: { method: random, valid: 0.2, test: 0.2, seed: 5 }
  train:
    uses: weir/train-linear
    inputs: { train: split.train, valid: split.valid }
    with:
      target: "delay > 15"
      exclude: [id]
      l1: 0.0005
      derive: { xz: "x * x - z / 10" }
      transforms:
        x: { impute: mean, scale: minmax }
        z: { impute: { constant: 0 }, bucketize: { quantiles: 5 } }
        carrier: { max_categories: 2, unknown: other }
        route: { encode: frequency, impute: most_frequent }
        t: { datetime: [hour, weekday] }
  evaluate:
    uses: weir/evaluate
    inputs: { model: train.model, table: split.test }
  register:
    uses: weir/register
    inputs: { model: train.model, metrics: evaluate.metrics }
    with: { name: transformed }
"#;

fn transform_points() -> String {
    let mut csv = String::from("id,x,z,carrier,route,t,delay\n");
    for i in 0..1500usize {
        let h = (i * 7919) % 1000;
        let x = h as f64 / 100.0;
        let z = if h % 6 == 0 {
            String::new()
        } else {
            format!("{}", h % 29)
        };
        let carrier = ["UA", "DL", "AA", "B6"][(i * 31) % 4];
        let route = if i % 11 == 0 {
            ""
        } else {
            ["JFK-LAX", "EWR-SFO", "LGA-ORD"][(i * 17) % 3]
        };
        let hour = (i * 13) % 24;
        let day = 1 + (i * 7) % 28;
        let score = (x - 5.0) / 2.0
            + if hour >= 18 { 1.5 } else { 0.0 }
            + if carrier == "DL" { 1.0 } else { 0.0 }
            + (h % 7) as f64 / 3.0
            - 1.0;
        let late = (score > 0.0) ^ ((i * 13) % 19 == 0);
        csv.push_str(&format!(
            "{i},{x},{z},{carrier},{route},2013-02-{day:02} {hour:02}:15:00,{}\n",
            if late { 40 } else { 0 }
        ));
    }
    csv
}

#[test]
fn fitted_transforms_are_saved_in_the_model_and_served_bit_identically() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &transform_points());
    sb.write("pipeline.yaml", TRANSFORMS);
    let out = sb.ok(&["run", "pipeline.yaml"]);
    assert!(
        out.contains("registered model transformed version 1"),
        "{out}"
    );
    let show = sb.json(&["runs", "show", &latest_run(&sb)]);
    let m = &step(&show, "train")["metrics"];
    assert!(m["valid.auc"].as_f64().unwrap() > 0.8, "{m}");
    for key in [
        "train.best_iteration",
        "train.nonzero_weights",
        "valid.loss",
    ] {
        assert!(m[key].is_number(), "{key} missing: {m}");
    }
    let server = assert_served_bit_identical(
        &sb,
        &show,
        "transformed:1",
        &["x", "z", "carrier", "route", "t"],
    );
    // The signature lists the raw inputs, the date-time as text.
    let (status, meta) = server.get("/v2/models/transformed");
    assert_eq!(status, 200, "{meta}");
    let t = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "t")
        .unwrap();
    assert_eq!(t["datatype"], "BYTES", "{meta}");
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_records": [{"x": 1, "z": 2, "carrier": "UA", "route": "JFK-LAX", "t": "soon"}]})
            .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("input 't' row 0: 'soon' is not a date-time"),
        "{body}"
    );

    // /metrics counts both requests by status, and the rows the good one scored.
    let value = |series: &str| {
        server
            .metric(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", server.metrics()))
    };
    let labels = r#"model="transformed",version="1",protocol="invocations""#;
    assert_eq!(
        value(&format!(
            "weir_serve_requests_total{{{labels},code=\"200\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "weir_serve_requests_total{{{labels},code=\"400\"}}"
        )),
        1.0
    );
    let version = r#"{model="transformed",version="1"}"#;
    assert_eq!(
        value(&format!(
            "weir_serve_request_duration_seconds_count{version}"
        )),
        2.0
    );
    assert_eq!(value(&format!("weir_serve_batch_rows_count{version}")), 1.0);
    assert_eq!(value(&format!("weir_serve_model_loaded{version}")), 1.0);

    // A bad transform fails the step, naming its field.
    sb.write(
        "pipeline.yaml",
        &TRANSFORMS.replace("quantiles: 5", "quantiles: 1"),
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains(
            "with.transforms.z.bucketize.quantiles: must be a whole number from 2 to 1000"
        ),
        "{err}"
    );
}

/// Serves `model` and checks that its predictions for the evaluate step's
/// rows (sent as JSON records of `inputs`) equal the evaluate step's bit for
/// bit; returns the server for further requests.
fn assert_served_bit_identical(
    sb: &Sandbox,
    show: &Value,
    model: &str,
    inputs: &[&str],
) -> crate::common::Server {
    let digest = step(show, "evaluate")["outputs"]["predictions"]["digest"]
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
    // Null values are absent from arrow's JSON rows; send them as null.
    let records: Vec<Value> = rows
        .iter()
        .map(|r| {
            Value::Object(
                inputs
                    .iter()
                    .map(|c| (c.to_string(), r.get(*c).cloned().unwrap_or(Value::Null)))
                    .collect(),
            )
        })
        .collect();
    let server = sb.serve(&[model]);
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
    server
}

#[test]
fn a_tuned_mlp_trains_on_fitted_transforms_and_serves_bit_identically() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &transform_points());
    let train = r#"  train:
    uses: weir/train-mlp
    inputs: { train: split.train, valid: split.valid }
    with:
      target: "delay > 15"
      exclude: [id, route]
      transforms: { t: { datetime: [hour] }, z: { impute: mean } }
      hidden: [16]
      epochs: 12
      batch_size: 64
      schedule: cosine
      warmup_epochs: 1
      seed: 3
    tune:
      space:
        learning_rate: loguniform(0.003, 0.03)
        optimizer: choice(adam, sgd)
      objective: { metric: valid.auc, goal: maximize }
      trials: 4
      parallel: 2
      sampler: random
      scheduler: { type: asha, min_resource: 3, reduction: 2 }
"#;
    let start = TRANSFORMS.find("  train:").unwrap();
    let end = TRANSFORMS.find("  evaluate:").unwrap();
    let pipeline = format!("{}{train}{}", &TRANSFORMS[..start], &TRANSFORMS[end..]);
    sb.write("pipeline.yaml", &pipeline);
    let out = sb.ok(&["run", "pipeline.yaml"]);
    assert!(
        out.contains("registered model transformed version 1"),
        "{out}"
    );
    let run_id = latest_run(&sb);
    let show = sb.json(&["runs", "show", &run_id]);
    let m = &step(&show, "train")["metrics"];
    assert!(m["valid.auc"].as_f64().unwrap() > 0.8, "{m}");
    assert_eq!(m["tune.trials"], 4.0, "{m}");
    for key in [
        "train.best_iteration",
        "train.parameters",
        "train.rows_per_second",
        "train.peak_memory_mb",
    ] {
        assert!(m[key].is_number(), "{key} missing: {m}");
    }
    let study = sb.json(&["study", "show", &run_id, "train"]);
    assert_eq!(study["trials"].as_array().unwrap().len(), 4, "{study}");
    assert_served_bit_identical(&sb, &show, "transformed:1", &["x", "z", "carrier", "t"]);
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

pub(crate) const TUNE: &str = r#"
    tune:
      space:
        learning_rate: loguniform(0.05, 0.5)
        num_leaves: int(4, 32, log)
        subsample: choice(0.8, 1.0, 2.0)
      objective: { metric: valid.auc, goal: maximize }
      trials: 9
      parallel: 2
      sampler: tpe
      scheduler: { type: asha, min_resource: 5, reduction: 3 }
"#;

pub(crate) fn tuned(tune: &str) -> String {
    PIPELINE.replace("      threads: 2\n", &format!("      threads: 2\n{tune}"))
}

#[test]
fn a_tuned_step_runs_a_study_and_keeps_the_best_trial() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    sb.write("pipeline.yaml", &tuned(TUNE));
    let out = sb.ok(&["run", "pipeline.yaml"]);
    assert!(
        out.contains("registered model gbdt-points version 1"),
        "{out}"
    );
    let run_id = latest_run(&sb);
    let study = sb.json(&["study", "show", &run_id, "train"]);
    let trials = study["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 9, "{study}");
    let count = |s: &str| trials.iter().filter(|t| t["state"] == s).count();
    // subsample 2.0 is invalid: those trials fail and the study goes on.
    assert!(count("complete") >= 1, "{study}");
    assert_eq!(count("complete") + count("pruned") + count("failed"), 9);
    for t in trials.iter().filter(|t| t["state"] == "failed") {
        assert_eq!(t["params"]["subsample"], 2.0, "{t}");
        assert!(
            t["error"].as_str().unwrap().contains("with.subsample"),
            "{t}"
        );
    }
    for t in trials.iter().filter(|t| t["state"] != "failed") {
        let rounds = t["rounds"].as_f64().unwrap();
        assert!((1.0..=60.0).contains(&rounds), "{t}");
    }
    let best = trials.iter().find(|t| t["best"] == true).unwrap();
    let best_value = best["value"].as_f64().unwrap();
    assert!(trials
        .iter()
        .filter(|t| t["state"] == "complete")
        .all(|t| t["value"].as_f64().unwrap() <= best_value));

    // The step's metrics are the best trial's, with the study's summary.
    let show = sb.json(&["runs", "show", &run_id]);
    let m = &step(&show, "train")["metrics"];
    assert_eq!(m["valid.auc"].as_f64(), Some(best_value), "{m}");
    assert_eq!(m["tune.trials"].as_f64(), Some(9.0));
    assert_eq!(m["tune.best_trial"], best["number"].as_f64().unwrap());
    assert!(sb
        .ok(&["study", "show", &run_id, "train"])
        .contains("best: trial"));

    // Trials are child runs of the step in the tracking view.
    let children = sb.json(&[
        "runs",
        "search",
        "tags.weir.kind = 'trial'",
        "-e",
        "gbdt-points",
    ]);
    let children = children.as_array().unwrap();
    assert_eq!(children.len(), 9, "{children:?}");
    let train_run = step(&show, "train")["step_run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        children
            .iter()
            .all(|c| c["tags"]["mlflow.parentRunId"] == train_run.as_str()),
        "{children:?}"
    );
}

#[test]
fn bad_tune_blocks_name_the_field() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    let case = |tune: &str| {
        sb.write("pipeline.yaml", &tuned(tune));
        sb.fails(&["run", "pipeline.yaml"])
    };
    let e = case(
        "    tune:\n      space: { learning_rate: 'uniform(0.5, 0.1)' }\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 3\n",
    );
    assert!(
        e.contains("steps.train.tune.space.learning_rate") && e.contains("greater than high"),
        "{e}"
    );
    let e = case(
        "    tune:\n      space: { learning_rate: 'loguniform(0, 1)' }\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 3\n",
    );
    assert!(e.contains("positive low bound"), "{e}");
    let e = case(
        "    tune:\n      space: { booster: 'choice()' }\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 3\n",
    );
    assert!(e.contains("steps.train.tune.space.booster"), "{e}");
    let e = case(
        "    tune:\n      space: { learning_rte: 'uniform(0.1, 0.5)' }\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 3\n",
    );
    assert!(e.contains("has no option 'learning_rte'"), "{e}");
    let e = case(
        "    tune:\n      space: { learning_rate: 'uniform(0.1, 0.5)' }\n      objective: { metric: valid.auc, goal: maximize }\n",
    );
    assert!(e.contains("steps.train.tune.budget"), "{e}");
    // Rungs at 5, 15 and 45 of 60 rounds: at most four brackets.
    let e = case(
        "    tune:\n      space: { learning_rate: 'uniform(0.1, 0.5)' }\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 3\n      scheduler: { type: asha, min_resource: 5, brackets: 5 }\n",
    );
    assert!(
        e.contains("tune.scheduler.brackets") && e.contains("between 1 and 4"),
        "{e}"
    );
    assert!(sb.json(&["runs", "list"]).as_array().unwrap().is_empty());

    // A metric the trainer never reports fails the step, saying what it reports.
    sb.write(
        "pipeline.yaml",
        &tuned("    tune:\n      space: { learning_rate: 'uniform(0.1, 0.5)' }\n      objective: { metric: valid.aucc, goal: maximize }\n      trials: 2\n"),
    );
    let out = sb.weir(&["run", "pipeline.yaml"]);
    assert!(!out.status.success());
    let run_id = latest_run(&sb);
    let log = sb.ok(&["logs", &run_id, "train"]);
    assert!(
        log.contains("tune.objective.metric")
            && log.contains("'valid.aucc'")
            && log.contains("valid.auc,"),
        "{log}"
    );
}

#[test]
fn a_cancelled_study_resumes_with_the_trials_it_had() {
    use std::time::{Duration, Instant};
    let sb = Sandbox::new();
    // Enough rows and rounds that a trial takes a noticeable time.
    let mut csv = points();
    for _ in 0..12 {
        csv.push_str(&points()["x,z,carrier,delay\n".len()..]);
    }
    sb.write("data/points.csv", &csv);
    let pipeline = tuned(
        "    tune:\n      space: { learning_rate: 'loguniform(0.01, 0.3)', num_leaves: 'int(8, 31)' }\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 6\n      sampler: random\n",
    )
    .replace("num_rounds: 60", "num_rounds: 150\n      early_stopping_rounds: 0");
    sb.write("pipeline.yaml", &pipeline);
    let err_log = std::fs::File::create(sb.path().join("run.err")).unwrap();
    let mut child = sb
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(err_log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let complete = |sb: &Sandbox| -> Vec<Value> {
        let runs = sb.json(&["runs", "list"]);
        let Some(id) = runs.get(0).and_then(|r| r["id"].as_str()) else {
            return Vec::new();
        };
        let out = sb.weir(&["study", "show", id, "train", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["trials"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["state"] == "complete")
            .collect()
    };
    while complete(&sb).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no trial completed: {}",
            std::fs::read_to_string(sb.path().join("run.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let run_id = latest_run(&sb);
    sb.weir(&["cancel", &run_id]);
    child.wait().unwrap();
    let before = complete(&sb);
    // Four trials were still to run when the cancel was sent: it landed mid-study.
    assert_eq!(sb.json(&["runs", "list"])[0]["status"], "failed");
    assert!(before.len() >= 2 && before.len() < 6, "{before:?}");

    let out = sb.ok(&["resume", &run_id]);
    assert!(out.contains("succeeded"), "{out}");
    let study = sb.json(&["study", "show", &run_id, "train"]);
    let trials = study["trials"].as_array().unwrap();
    assert_eq!(
        trials.len(),
        6,
        "the budget counts the first attempt's trials: {study}"
    );
    // The trials finished before the cancel are kept as they were.
    for t in &before {
        let n = t["number"].as_u64().unwrap() as usize;
        assert_eq!(trials[n]["params"], t["params"]);
        assert_eq!(trials[n]["value"], t["value"]);
    }
    let log = sb.ok(&["logs", &run_id, "train"]);
    assert!(
        log.contains("trials from an earlier attempt are kept"),
        "{log}"
    );
}

/// Sends the head of a POST whose body never finishes; returns the stream.
fn trickle(server: &crate::common::Server, path: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addr = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    stream.flush().unwrap();
    stream
}

fn status_line(stream: &mut std::net::TcpStream) -> String {
    use std::io::{BufRead, BufReader};
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn a_busy_server_answers_429_and_a_trickling_body_504() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    sb.write("pipeline.yaml", PIPELINE);
    sb.ok(&["run", "pipeline.yaml"]);
    let server = sb.serve(&[
        "gbdt-points:1",
        "--max-concurrency",
        "1",
        "--request-timeout",
        "700ms",
    ]);
    let started = std::time::Instant::now();
    // A client that sends its body byte by byte holds the only slot...
    let mut slow = trickle(&server, "/invocations");
    std::thread::sleep(std::time::Duration::from_millis(150));
    let record = json!({"dataframe_records": [{"x": 1.0, "z": 2.0, "carrier": "UA"}]}).to_string();
    let (status, body) = server.post_alone("/invocations", record.clone());
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error_code"], "TEMPORARILY_UNAVAILABLE", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("answering 1 inference requests"),
        "{body}"
    );
    // ...until the timeout answers it with 504.
    assert_eq!(status_line(&mut slow), "HTTP/1.1 504 Gateway Timeout");
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    // The slot is free again.
    let (status, body) = server.post_alone("/invocations", record);
    assert_eq!(status, 200, "{body}");
    let metrics = server.metrics();
    for series in [
        "weir_serve_rejected_total{reason=\"busy\"} 1",
        "weir_serve_rejected_total{reason=\"timeout\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "no {series} in\n{metrics}"
        );
    }
}

#[test]
fn the_model_repository_loads_unloads_and_reports_a_corrupt_version() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    // Three versions, each a different model file.
    for rounds in [60, 61, 62] {
        sb.write(
            "pipeline.yaml",
            &PIPELINE.replace("num_rounds: 60", &format!("num_rounds: {rounds}")),
        );
        sb.ok(&["run", "pipeline.yaml"]);
    }
    let third = sb.json(&["runs", "show", &latest_run(&sb)]);
    let digest = step(&third, "train")["outputs"]["model"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let server = sb.serve(&["gbdt-points:1"]);
    let index = |server: &crate::common::Server| server.post("/v2/repository/index", "").1;
    assert_eq!(
        index(&server),
        json!([{"name": "gbdt-points", "version": "1", "state": "READY", "reason": ""}])
    );

    let (status, body) = server.post(
        "/v2/repository/models/gbdt-points/load",
        json!({"parameters": {"version": "2"}}).to_string(),
    );
    assert_eq!(
        (status, body["state"].clone()),
        (200, json!("READY")),
        "{body}"
    );
    assert_eq!(server.get("/v2/models/gbdt-points/versions/2/ready").0, 200);
    assert_eq!(index(&server).as_array().unwrap().len(), 2);

    let (status, body) = server.post(
        "/v2/repository/models/gbdt-points/unload",
        json!({"version": 1}).to_string(),
    );
    assert_eq!(
        (status, body["unloaded"].clone()),
        (200, json!(["1"])),
        "{body}"
    );
    assert_eq!(server.get("/v2/models/gbdt-points/versions/1/ready").0, 404);
    assert_eq!(
        server.post("/v2/repository/models/nope/load", "").0,
        404,
        "an unregistered model"
    );
    // A request for a model that is not served is counted without its name.
    assert_eq!(server.post("/v2/models/random-name/infer", "{}").0, 404);
    let metrics = server.metrics();
    assert!(!metrics.contains("random-name"), "{metrics}");
    assert!(
        metrics.contains(
            r#"weir_serve_requests_total{model="",version="",protocol="v2",code="404"} 1"#
        ),
        "{metrics}"
    );

    // Version 3's file is damaged on disk: its load fails, the server and
    // version 2 carry on, and the index says why.
    std::fs::write(sb.blob(&digest), b"not a model").unwrap();
    let (status, body) = server.post(
        "/v2/repository/models/gbdt-points/load",
        json!({"parameters": {"version": 3}}).to_string(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("gbdt-points:3"),
        "{body}"
    );
    let entries = index(&server);
    let failed = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == "3")
        .unwrap();
    assert_eq!(failed["state"], "UNAVAILABLE", "{entries}");
    assert!(!failed["reason"].as_str().unwrap().is_empty());
    assert_eq!(server.get("/v2/models/gbdt-points/ready").0, 200);
    let ready_only = server
        .post("/v2/repository/index", json!({"ready": true}).to_string())
        .1;
    assert_eq!(ready_only.as_array().unwrap().len(), 1, "{ready_only}");
}

#[test]
fn the_response_cache_answers_a_repeated_request_and_counts_it() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    sb.write("pipeline.yaml", PIPELINE);
    sb.ok(&["run", "pipeline.yaml"]);
    let hits = |server: &crate::common::Server| {
        server.metric(r#"weir_serve_cache_hits_total{model="gbdt-points",version="1"}"#)
    };
    let row =
        |x: f64| json!({"dataframe_records": [{"x": x, "z": 2.0, "carrier": "UA"}]}).to_string();
    let oip = json!({"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [3.0]},
        {"name": "z", "shape": [1], "datatype": "FP64", "data": [2.0]},
        {"name": "carrier", "shape": [1], "datatype": "BYTES", "data": ["DL"]}
    ]})
    .to_string();

    let server = sb.serve(&["gbdt-points:1", "--response-cache-mb", "1"]);
    let first = server.post("/invocations", row(7.0));
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(server.post("/invocations", row(7.0)), first);
    assert_eq!(hits(&server), Some(1.0));
    assert_eq!(server.post("/invocations", row(8.0)).0, 200);
    let v2 = server.post("/v2/models/gbdt-points/infer", oip.clone());
    assert_eq!(v2.0, 200, "{}", v2.1);
    assert_eq!(server.post("/v2/models/gbdt-points/infer", oip.clone()), v2);
    assert_eq!(
        hits(&server),
        Some(2.0),
        "a new body misses; a repeated one hits"
    );
    drop(server);

    let uncached = sb.serve(&["gbdt-points:1"]);
    assert_eq!(uncached.post("/invocations", row(7.0)), first);
    assert_eq!(uncached.post("/invocations", row(7.0)), first);
    assert_eq!(hits(&uncached), None, "off unless asked for");
}

#[test]
fn batched_requests_get_their_own_answers_and_a_bad_one_fails_alone() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &transform_points());
    sb.write(
        "pipeline.yaml",
        &TRANSFORMS.replace(
            "carrier: { max_categories: 2, unknown: other }",
            "carrier: { unknown: error }",
        ),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let body = |i: usize, carrier: &str| {
        json!({"dataframe_records": [{"x": i as f64 / 3.0, "z": (i % 7) as f64, "carrier": carrier,
               "route": "JFK-LAX", "t": format!("2013-02-{:02} {:02}:15:00", 1 + i % 28, i % 24)}]})
        .to_string()
    };
    // What each request scores alone.
    let alone: Vec<Value> = {
        let server = sb.serve(&["transformed:1"]);
        (0..8)
            .map(|i| server.post("/invocations", body(i, "UA")).1)
            .collect()
    };
    // Batching for this model only (the server-wide setting stays off).
    let server = sb.serve(&["transformed:1", "--batch", "transformed=64:300ms"]);
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let (server, body) = (&server, &body);
                s.spawn(move || {
                    // Request 8 names a carrier the model refuses (unknown: error).
                    let b = if i == 8 { body(0, "ZZ") } else { body(i, "UA") };
                    server.post_alone("/invocations", b)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, answer)) in answers.iter().take(8).enumerate() {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer, &alone[i], "request {i}: batched and alone differ");
    }
    assert_eq!(answers[8].0, 400, "{}", answers[8].1);
    assert!(
        answers[8].1["message"]
            .as_str()
            .unwrap()
            .contains("category 'ZZ'"),
        "{}",
        answers[8].1
    );
    let value = |series: &str| {
        server
            .metric(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", server.metrics()))
    };
    let calls = value(r#"weir_serve_model_call_rows_count{model="transformed",version="1"}"#);
    assert!(
        calls < 9.0,
        "nine requests in {calls} model calls: nothing was batched"
    );
    assert_eq!(
        value(r#"weir_serve_model_call_rows_sum{model="transformed",version="1"}"#),
        9.0
    );
}

#[test]
fn gbdt_with_workers_trains_data_parallel_to_the_same_model() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    let single = PIPELINE.replace("threads: 2", "threads: 1");
    sb.write("pipeline.yaml", &single);
    sb.ok(&["run", "pipeline.yaml"]);
    let alone = sb.json(&["runs", "show", &latest_run(&sb)]);
    sb.write(
        "pipeline.yaml",
        &single.replace("threads: 1", "threads: 1\n      workers: 2"),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let run = latest_run(&sb);
    let parallel = sb.json(&["runs", "show", &run]);
    let train = step(&parallel, "train");
    assert_eq!(train["metrics"]["train.workers"], 2.0, "{train}");
    // Two processes summing their halves' histograms grow the same trees:
    // the model file is the same bytes.
    assert_eq!(
        train["outputs"]["model"]["digest"],
        step(&alone, "train")["outputs"]["model"]["digest"]
    );
    assert_eq!(
        step(&parallel, "evaluate")["metrics"]["test.auc"],
        step(&alone, "evaluate")["metrics"]["test.auc"]
    );
    assert!(sb
        .ok(&["logs", &run, "train"])
        .contains("data-parallel over 2 processes"));
}

#[test]
fn a_data_parallel_worker_that_dies_fails_the_step_without_a_hang() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &points());
    sb.write(
        "pipeline.yaml",
        &PIPELINE.replace(
            "num_rounds: 60",
            "num_rounds: 1000000\n      early_stopping_rounds: 0\n      workers: 2",
        ),
    );
    let runner = sb
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The worker's spec lives under this sandbox: no other test's matches.
    let pattern = format!("train-worker {}", sb.dir.path().display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        let killed = std::process::Command::new("pkill")
            .args(["-KILL", "-f", &pattern])
            .status()
            .unwrap();
        if killed.success() {
            break;
        }
    }
    let out = runner.wait_with_output().unwrap();
    assert!(!out.status.success());
    let show = sb.json(&["runs", "show", &latest_run(&sb)]);
    let error = step(&show, "train")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("data-parallel training: worker 1"),
        "{error}"
    );
}

#[test]
fn an_mlp_with_workers_trains_data_parallel_to_the_same_model() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &transform_points());
    let mlp = r#"  train:
    uses: weir/train-mlp
    inputs: { train: split.train, valid: split.valid }
    with:
      target: "delay > 15"
      exclude: [id, route]
      transforms: { t: { datetime: [hour] }, z: { impute: mean } }
      hidden: [16]
      epochs: 8
      batch_size: 64
      threads: 1
      seed: 3
"#;
    let start = TRANSFORMS.find("  train:").unwrap();
    let end = TRANSFORMS.find("  evaluate:").unwrap();
    let single = format!("{}{mlp}{}", &TRANSFORMS[..start], &TRANSFORMS[end..]);
    sb.write("pipeline.yaml", &single);
    sb.ok(&["run", "pipeline.yaml"]);
    let alone = sb.json(&["runs", "show", &latest_run(&sb)]);
    sb.write(
        "pipeline.yaml",
        &single.replace("threads: 1", "threads: 1\n      workers: 2"),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let run = latest_run(&sb);
    let parallel = sb.json(&["runs", "show", &run]);
    // The two processes' gradients sum in another order than one process's:
    // the same model up to rounding.
    let auc = |show: &serde_json::Value| {
        step(show, "evaluate")["metrics"]["test.auc"]
            .as_f64()
            .unwrap()
    };
    assert!(
        (auc(&parallel) - auc(&alone)).abs() < 1e-9,
        "{} vs {}",
        auc(&parallel),
        auc(&alone)
    );
    assert!(sb
        .ok(&["logs", &run, "train"])
        .contains("data-parallel over 2 processes"));
}
