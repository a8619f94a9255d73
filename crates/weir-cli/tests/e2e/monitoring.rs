//! Monitoring, end to end: `weir serve --log-predictions` logs requests,
//! `weir monitor` compares them with the model's training profile and joins
//! feedback labels to them, /metrics carries per-feature drift, and monitors
//! fire alerts: a log line, a signed webhook (retried), and a retraining run
//! whose model rolls out as a canary and is promoted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Sandbox, Server};

/// Rows of x1 (0..100 shifted by `shift`), x2 and a city; y = x1 > 50.
fn rows(sb: &Sandbox, name: &str, shift: u64) {
    let mut csv = String::from("x1,x2,city,y\n");
    for i in 0..2000u64 {
        let x1 = i % 100 + shift;
        csv.push_str(&format!(
            "{x1},{},{},{}\n",
            (i * 7) % 13,
            ["a", "b"][(i % 2) as usize],
            u8::from(x1 > 50 + shift)
        ));
    }
    sb.write(name, &csv);
}

fn train(sb: &Sandbox) {
    rows(sb, "train.csv", 0);
    sb.write(
        "train.yaml",
        "version: 1\nname: m\nparams: { data: train.csv }\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: \"${{ params.data }}\" }\n  train:\n    uses: weir/train-linear\n    inputs: { train: ingest.table }\n    with: { target: y, features: [x1, x2, city] }\n  register:\n    uses: weir/register\n    inputs: { model: train.model }\n    with: { name: m }\n",
    );
    sb.ok(&["run", "train.yaml"]);
    sb.ok(&["deploy", "web", "--model", "m", "--version", "1"]);
}

/// One row through the endpoint: x1 shifted by `shift`, x2 null when
/// `null_x2`; returns the request id the server answered with.
fn infer(server: &Server, i: u64, shift: u64, null_x2: bool, city: &str) -> String {
    let x2 = if null_x2 {
        Value::Null
    } else {
        json!((i * 7) % 13)
    };
    let body = json!({"inputs": [
        {"name": "x1", "datatype": "FP64", "shape": [1], "data": [(i % 100 + shift) as f64]},
        {"name": "x2", "datatype": "FP64", "shape": [1], "data": [x2]},
        {"name": "city", "datatype": "BYTES", "shape": [1], "data": [city]},
    ]});
    let r = server
        .client
        .post(format!("{}/v2/models/web/infer", server.url))
        .header("x-request-id", format!("req-{shift}-{i}"))
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-weir-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logged_requests_show_feature_drift_and_online_accuracy() {
    let sb = Sandbox::new();
    train(&sb);
    let server = sb.serve(&[
        "--log-predictions",
        "1",
        "--log-flush",
        "200ms",
        "--check-every",
        "300ms",
    ]);
    // x1 moved up by 40, x2 never sent, a city never seen in training.
    for i in 0..150 {
        let id = infer(&server, i, 40, true, if i % 3 == 0 { "z" } else { "a" });
        assert_eq!(id, format!("req-40-{i}"));
        let truth = u8::from(i % 100 + 40 > 50);
        let (code, fed) = server.post(
            "/v2/models/web/feedback",
            json!({"id": id, "label": truth}).to_string(),
        );
        assert_eq!(code, 200, "{fed}");
    }
    // Labels for a request this server does not remember are still kept
    // for the log (another replica, or before a restart, answered it).
    let (code, kept) = server.post(
        "/v2/models/web/feedback",
        json!({"id": "answered-elsewhere", "label": 1}).to_string(),
    );
    assert_eq!((code, kept["stored"].clone()), (200, json!(true)), "{kept}");
    // The scheduled check puts each feature's drift on /metrics.
    let series = "weir_serve_feature_drifted{endpoint=\"web\",version=\"1\",feature=\"x1\"}";
    wait_until("x1's drift on /metrics", 30, || {
        server.metric(series) == Some(1.0)
    });
    // A third of the cities were never seen: that moves the distribution too.
    assert_eq!(
        server
            .metric("weir_serve_feature_drifted{endpoint=\"web\",version=\"1\",feature=\"city\"}"),
        Some(1.0)
    );
    assert!(server
        .metric("weir_serve_online_metric{endpoint=\"web\",version=\"1\",metric=\"accuracy\"}")
        .is_some());

    // `weir monitor` reads what the server has written out.
    wait_until("every sampled row written to the log", 30, || {
        server.metric("weir_serve_prediction_log_rows_total{outcome=\"written\"}") == Some(150.0)
    });
    let report = sb.json(&["monitor", "web"]);
    let v = &report["versions"][0];
    assert_eq!(
        (
            v["version"].clone(),
            v["rows"].clone(),
            v["requests"].clone()
        ),
        (json!(1), json!(150), json!(150)),
        "{report}"
    );
    assert_eq!(v["status"], "ok");
    let drifted: Vec<(&str, bool)> = v["drift"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["column"].as_str().unwrap(),
                c["drifted"].as_bool().unwrap(),
            )
        })
        .collect();
    // x2 had no value at all: reported, not compared.
    assert_eq!(drifted, [("x1", true), ("city", true)], "{report}");
    assert_eq!(v["all_null"], json!(["x2"]));
    assert_eq!(v["unseen"], json!({"city": ["z"]}));
    let online = &v["online"];
    assert_eq!(online["labelled_rows"], 150, "{online}");
    let accuracy = online["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{online}");
    assert!(online["auc"].as_f64().is_some(), "{online}");
    // The logged segments are Parquet with the request id of every row.
    let text = sb.ok(&["monitor", "web", "--html", "report.html"]);
    assert!(text.contains("x1") && text.contains("DRIFT"), "{text}");
    assert!(text.contains("values never seen in training: z"), "{text}");
    let html = std::fs::read_to_string(sb.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("x1"));

    // Too few rows for the window's size: said, not judged.
    let thin = sb.json(&["monitor", "web", "--min-rows", "1000"]);
    assert_eq!(thin["versions"][0]["status"], "not_enough_data", "{thin}");
    assert!(thin["versions"][0]["drift"].is_null());
    // An unknown target is named.
    let err = sb.fails(&["monitor", "nowhere"]);
    assert!(
        err.contains("'nowhere' is neither an endpoint nor a registered model"),
        "{err}"
    );
    drop(server);
}

/// A tiny HTTP receiver: answers each request with the next status of
/// `script` (the last one repeated), keeping what it received; a status of
/// 0 never answers (a hook that times out).
/// A request the hook received: its headers (names lowercased) and body.
type Received = (Vec<(String, String)>, String);

struct Hook {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start(script: &'static [u16]) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for (n, stream) in listener.incoming().enumerate() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (k, v) = l.split_once(':').unwrap();
                    headers.push((k.trim().to_lowercase(), v.trim().to_string()));
                }
                let length: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                kept.lock()
                    .unwrap()
                    .push((headers, String::from_utf8(body).unwrap()));
                let status = script[n.min(script.len() - 1)];
                if status == 0 {
                    held.push(stream);
                    continue;
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Hook {
            url,
            received,
            stop,
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(
            self.url
                .trim_start_matches("http://")
                .trim_end_matches("/alerts"),
        );
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The whole loop: traffic drifts, the monitor fires after two checks in a
/// row, the webhook is delivered on its second try (signed) while a hook
/// that never answers is recorded as failed, the retraining run registers
/// version 2 on the new data and its canary is promoted, and no request
/// failed meanwhile.
#[test]
fn drifting_traffic_fires_an_alert_that_retrains_and_promotes_a_canary() {
    let mut sb = Sandbox::new();
    train(&sb);
    rows(&sb, "new.csv", 40);
    let good = Hook::start(&[500, 200]);
    let silent = Hook::start(&[0]);
    sb.env.push(("ALERT_SECRET".into(), "s3cret".into()));
    sb.write(
        "monitors.yaml",
        &format!(
            "monitors:\n  - name: inputs\n    endpoint: web\n    window: 1h\n    every: 400ms\n    min_rows: 60\n    when: [\"feature_drift_share >= 0.3\"]\n    for: 2\n    actions:\n      - log\n      - webhook: {{ url: \"{}\", secret_env: ALERT_SECRET, backoff: 100ms }}\n      - webhook: {{ url: \"{}\", timeout: 300ms, retries: 1, backoff: 50ms }}\n      - retrain:\n          pipeline: train.yaml\n          params: {{ data: new.csv }}\n          deploy: {{ strategy: canary, steps: [50, 100], interval: 1s, min_requests: 3 }}\n",
            good.url, silent.url
        ),
    );
    let server = sb.serve(&[
        "--log-predictions",
        "1",
        "--log-flush",
        "200ms",
        "--monitors",
        "monitors.yaml",
    ]);
    // Traffic from the new distribution, until the candidate is promoted.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let traffic = {
        let (stop, failures, url) = (stop.clone(), failures.clone(), server.url.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let city = ["a", "b"][(i % 2) as usize];
                let body = json!({"inputs": [
                    {"name": "x1", "datatype": "FP64", "shape": [1], "data": [(i % 100 + 40) as f64]},
                    {"name": "x2", "datatype": "FP64", "shape": [1], "data": [((i * 7) % 13) as f64]},
                    {"name": "city", "datatype": "BYTES", "shape": [1], "data": [city]},
                ]});
                let r = client
                    .post(format!("{url}/v2/models/web/infer"))
                    .body(body.to_string())
                    .send()
                    .unwrap();
                if r.status() != 200 {
                    failures.lock().unwrap().push(r.status().as_u16());
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_until("the retrained version's promotion", 120, || {
        let s = sb.json(&["rollout", "status", "web"]);
        s["stable"] == 2 && s["candidate"].is_null()
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );

    let history = sb.json(&["rollout", "history", "web"]);
    let details: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("retrained by monitor inputs")),
        "{details:?}"
    );
    // The alert and what each action did.
    let mut alert = Value::Null;
    wait_until("the alert's actions to be recorded", 30, || {
        let report = sb.json(&["monitor", "web"]);
        alert = report["alerts"][0].clone();
        alert["actions"].as_array().is_some_and(|a| a.len() == 4)
    });
    assert_eq!(alert["monitor"], "inputs");
    let checks = sb.json(&["monitor", "web"])["monitors"].clone();
    assert_eq!(checks.as_array().unwrap().len(), 1, "{checks}");
    assert_eq!(checks[0]["monitor"], "inputs");
    assert!(
        ["ok", "breached", "fired", "not_enough_data"]
            .contains(&checks[0]["status"].as_str().unwrap()),
        "{checks}"
    );
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("feature_drift_share >= 0.3"),
        "{alert}"
    );
    let actions = alert["actions"].as_array().unwrap();
    assert_eq!(actions[0]["status"], "logged");
    assert_eq!(actions[1]["status"], "delivered", "{alert}");
    assert_eq!(actions[1]["attempts"], json!(["500", "200"]));
    assert_eq!(actions[2]["status"], "failed", "{alert}");
    assert_eq!(actions[2]["attempts"].as_array().unwrap().len(), 2);
    assert!(actions[2]["attempts"][0]
        .as_str()
        .unwrap()
        .contains("timed out"));
    assert_eq!(actions[3]["status"], "deployed", "{alert}");
    assert_eq!(actions[3]["version"], 2);
    // The hook got the same signed body twice (the retry).
    let received = good.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    let (headers, body) = &received[1];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        header("x-weir-signature"),
        format!("sha256={}", hmac_hex("s3cret", body.as_bytes()))
    );
    assert_eq!(header("x-weir-alert-id"), alert["id"].as_str().unwrap());
    assert_eq!(received[0].1, *body);
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["target"], "web");
    assert_eq!(payload["drifted_features"], json!(["x1"]));
    assert_eq!(
        server.metric("weir_serve_monitor_alerts_total{monitor=\"inputs\"}"),
        Some(1.0)
    );
    drop(server);
}

#[test]
fn bad_monitor_files_say_what_is_wrong() {
    let sb = Sandbox::new();
    train(&sb);
    let cases = [
        (
            "when: [\"feature_drift > 0.3\"]",
            "unknown metric 'feature_drift'",
        ),
        ("when: [\"online_auc << 0.7\"]", "unknown comparison '<<'"),
        ("when: [\"online_auc < high\"]", "'high' is not a number"),
        ("when: []", "'when' is empty"),
        (
            "every: soon\n    when: [dataset_drift]",
            "every: 'soon' is not a duration",
        ),
    ];
    for (body, expected) in cases {
        sb.write(
            "m.yaml",
            &format!("monitors:\n  - name: a\n    endpoint: web\n    {body}\n    actions: [log]\n"),
        );
        let err = sb.fails(&["serve", "--monitors", "m.yaml", "--addr", "127.0.0.1:0"]);
        assert!(
            err.contains("m.yaml") && err.contains(expected),
            "{body}: {err}"
        );
    }
    sb.write(
        "m.yaml",
        "monitors:\n  - name: a\n    endpoint: web\n    when: [dataset_drift]\n    actions:\n      - retrain: { pipeline: nowhere.yaml }\n",
    );
    let err = sb.fails(&["serve", "--monitors", "m.yaml", "--addr", "127.0.0.1:0"]);
    assert!(err.contains("nowhere.yaml does not exist"), "{err}");
    sb.write(
        "m.yaml",
        "monitors:\n  - name: a\n    endpoint: web\n    when: [dataset_drift]\n    actions:\n      - webhook: { url: \"http://127.0.0.1:9/x\", secret_env: NOT_SET_ANYWHERE }\n",
    );
    let err = sb.fails(&["serve", "--monitors", "m.yaml", "--addr", "127.0.0.1:0"]);
    assert!(err.contains("NOT_SET_ANYWHERE is not set"), "{err}");
    let err = sb.fails(&["serve", "--log-predictions", "2"]);
    assert!(err.contains("'2' is not a share between 0 and 1"), "{err}");
    // Monitors may also be [[monitors]] tables in weir.toml.
    sb.write(
        "weir.toml",
        "[[monitors]]\nname = \"a\"\nendpoint = \"web\"\nwhen = [\"online_auc < x\"]\nactions = [\"log\"]\n",
    );
    let err = sb.fails(&["serve", "--addr", "127.0.0.1:0"]);
    assert!(
        err.contains("weir.toml") && err.contains("'x' is not a number"),
        "{err}"
    );
}
