//! Endpoints and rollouts, end to end: `weir deploy` and `weir rollout`
//! against a running `weir serve` that judges candidates under live traffic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Sandbox, Server};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../weir-onnx/tests/data");

fn register(sb: &Sandbox, file: &str) {
    sb.ok(&["models", "register", "bc", &format!("{DATA}/{file}")]);
}

fn body() -> String {
    json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": vec![1.0; 30]}]})
        .to_string()
}

/// Requests in a loop from a few threads until stopped: answers counted by
/// (HTTP status, version that answered).
struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<(u16, String), u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(server: &Server, path: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..3)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                let url = format!("{}{path}", server.url);
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client.post(&url).body(body()).send().unwrap();
                        let status = r.status().as_u16();
                        let v: Value = r.json().unwrap_or(Value::Null);
                        let version = v["model_version"].as_str().unwrap_or("").to_string();
                        *counts.lock().unwrap().entry((status, version)).or_default() += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            counts,
            threads,
        }
    }

    fn finish(self) -> BTreeMap<(u16, String), u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.counts).unwrap().into_inner().unwrap()
    }
}

/// What each event of the endpoint's rollout history says.
fn history_details(sb: &Sandbox) -> Vec<String> {
    sb.json(&["rollout", "history", "web"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect()
}

fn status(sb: &Sandbox) -> Value {
    sb.json(&["rollout", "status", "web"])
}

/// The versions of `bc` the server has loaded (its repository index).
fn loaded(server: &Server) -> Vec<String> {
    let (code, index) = server.post("/v2/repository/index", json!({"ready": true}).to_string());
    assert_eq!(code, 200, "{index}");
    index
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "bc")
        .map(|m| m["version"].as_str().unwrap().to_string())
        .collect()
}

/// Waits for the server to hold exactly `versions` of `bc`: a version no
/// endpoint routes to is unloaded a few seconds after it stops serving.
fn wait_loaded(server: &Server, versions: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = loaded(server);
        if now == versions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server holds {now:?}, not {versions:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for(sb: &Sandbox, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(sb);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_healthy_canary_is_promoted_and_a_failing_one_rolled_back_under_traffic() {
    let sb = Sandbox::new();
    register(&sb, "gbdt_classifier.onnx");
    let first = sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    assert!(first.contains("version 1 deployed directly"), "{first}");
    let server = sb.serve(&[]);
    // An endpoint answers metadata and readiness like a model (its stable version).
    assert_eq!(server.get("/v2/models/web/ready").0, 200);
    let (_, meta) = server.get("/v2/models/web");
    assert_eq!(
        (meta["name"].clone(), meta["platform"].clone()),
        (json!("web"), json!("onnx")),
        "{meta}"
    );
    let (status_code, answer) = server.post("/v2/models/web/infer", body());
    assert_eq!(
        (status_code, answer["model_version"].clone()),
        (200, json!("1")),
        "{answer}"
    );

    // A healthy candidate walks 50% then 100% while traffic flows.
    register(&sb, "gbdt_classifier.onnx");
    let traffic = Traffic::start(&server, "/v2/models/web/infer");
    let started = sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "700ms",
        "--min-requests",
        "5",
    ]);
    assert!(
        started.contains("canary rollout of version 2 started at 50%"),
        "{started}"
    );
    let done = wait_for(&sb, "promotion", |s| s["stable"] == 2);
    assert_eq!(
        (done["candidate"].clone(), done["phase"].clone()),
        (Value::Null, json!("Healthy"))
    );
    std::thread::sleep(Duration::from_millis(300));
    let counts = traffic.finish();
    assert!(
        counts.keys().all(|(code, _)| *code == 200),
        "no request failed: {counts:?}"
    );
    assert!(
        counts.contains_key(&(200, "1".into())) && counts.contains_key(&(200, "2".into())),
        "{counts:?}"
    );
    let details = history_details(&sb);
    assert!(
        details.iter().any(|d| d == "version 2 is stable (was 1)"),
        "{details:?}"
    );
    assert_eq!(
        server.metric(r#"weir_serve_rollout_weight{endpoint="web",version="2"}"#),
        Some(100.0)
    );
    assert_eq!(
        server.metric(r#"weir_serve_rollout_phase{endpoint="web",phase="Healthy"}"#),
        Some(1.0)
    );
    // The version promoted away from is unloaded: a long-lived server
    // holds what it serves, not every version it ever served.
    wait_loaded(&server, &["2"]);

    // A candidate that fails every request (it takes 10 inputs, not 30) is
    // rolled back; only the requests it answered failed.
    sb.ok(&[
        "models",
        "register",
        "bc",
        &format!("{DATA}/mlp_regressor.onnx"),
    ]);
    let traffic = Traffic::start(&server, "/v2/models/web/infer");
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "3",
        "--steps",
        "20,100",
        "--interval",
        "700ms",
        "--min-requests",
        "5",
    ]);
    let back = wait_for(&sb, "rollback", |s| s["phase"] == "RolledBack");
    assert_eq!(
        (back["stable"].clone(), back["candidate"].clone()),
        (json!(2), Value::Null)
    );
    assert!(
        back["reason"].as_str().unwrap().contains("error rate"),
        "{back}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let counts = traffic.finish();
    let failed: u64 = counts
        .iter()
        .filter(|((c, _), _)| *c != 200)
        .map(|(_, n)| n)
        .sum();
    let by_candidate = server
        .metric(r#"weir_serve_endpoint_requests_total{endpoint="web",version="3",code="400"}"#)
        .unwrap_or(0.0) as u64;
    assert!(
        failed > 0 && failed == by_candidate,
        "failures {failed}, answered by v3 {by_candidate}: {counts:?}"
    );
    assert_eq!(
        server.post("/v2/models/web/infer", body()).1["model_version"],
        "2"
    );
    wait_loaded(&server, &["2"]);
    // A version asked for by name stays loaded though no endpoint routes to it.
    let (code, answer) = server.post(
        "/v2/repository/models/bc/load",
        json!({"parameters": {"version": "1"}}).to_string(),
    );
    assert_eq!(code, 200, "{answer}");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(loaded(&server), ["1", "2"]);
}

#[test]
fn rollout_state_survives_a_restart_and_commands_take_effect_live() {
    let sb = Sandbox::new();
    for _ in 0..3 {
        register(&sb, "gbdt_classifier.onnx");
    }
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    // A long interval: nothing moves unless told.
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "2",
        "--steps",
        "10,50,100",
        "--interval",
        "1h",
        "--min-requests",
        "1",
    ]);
    let e = sb.fails(&["deploy", "web", "--model", "bc", "--version", "3"]);
    assert!(e.contains("is rolling out version 2"), "{e}");
    let promoted = sb.ok(&["rollout", "promote", "web"]);
    assert!(promoted.contains("version 2 promoted to 50%"), "{promoted}");

    let server = sb.serve(&[]);
    assert_eq!(
        server.metric(r#"weir_serve_rollout_weight{endpoint="web",version="2"}"#),
        Some(50.0)
    );
    // A routing key always lands on the same version.
    let client = reqwest::blocking::Client::new();
    let answered_by = |key: &str| -> String {
        let r = client
            .post(format!("{}/v2/models/web/infer", server.url))
            .header("x-weir-route-key", key)
            .body(body())
            .send()
            .unwrap();
        r.json::<Value>().unwrap()["model_version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for key in ["alice", "bob", "carol"] {
        let first = answered_by(key);
        assert!((0..10).all(|_| answered_by(key) == first), "{key} moved");
    }
    drop(server);

    // Restarted, the server routes as the store says; a rollback by hand
    // reaches the running server within a tick.
    let server = sb.serve(&[]);
    assert_eq!(
        server.metric(r#"weir_serve_rollout_weight{endpoint="web",version="2"}"#),
        Some(50.0)
    );
    sb.ok(&["rollout", "rollback", "web"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metric(r#"weir_serve_rollout_weight{endpoint="web",version="2"}"#) != Some(0.0) {
        assert!(Instant::now() < deadline, "{}", server.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!((0..20).all(|_| server.post("/v2/models/web/infer", body()).1["model_version"] == "1"));

    // Too little traffic to judge: the rollout pauses and says why.
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "3",
        "--interval",
        "300ms",
        "--min-requests",
        "1000",
    ]);
    let paused = wait_for(&sb, "a pause", |s| s["phase"] == "Paused");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("too little traffic"),
        "{paused}"
    );
}

#[test]
fn shadow_mirrors_without_touching_answers_and_bluegreen_switches_once_warm() {
    let sb = Sandbox::new();
    for _ in 0..3 {
        register(&sb, "gbdt_classifier.onnx");
    }
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&[]);
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "2",
        "--strategy",
        "shadow",
        "--interval",
        "500ms",
        "--min-requests",
        "5",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .metric(r#"weir_serve_rollout_weight{endpoint="web",version="2"}"#)
        .is_none()
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..30 {
        assert_eq!(
            server.post("/v2/models/web/infer", body()).1["model_version"],
            "1"
        );
    }
    let agreed = wait_for(&sb, "a shadow analysis", |s| {
        s["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("shadow agreed on")
    });
    assert_eq!(agreed["candidate"], 2, "{agreed}");
    let mirrored = server
        .metric(r#"weir_serve_shadow_comparisons_total{endpoint="web",version="2",result="agree"}"#)
        .unwrap();
    assert!(mirrored >= 30.0, "{}", server.metrics());
    // The tally stays current in the status without a history line per interval.
    let events = |sb: &Sandbox| {
        sb.json(&["rollout", "history", "web"])
            .as_array()
            .unwrap()
            .len()
    };
    let before = events(&sb);
    for _ in 0..30 {
        server.post("/v2/models/web/infer", body());
    }
    wait_for(&sb, "a later tally", |s| {
        s["reason"]
            .as_str()
            .unwrap_or("")
            .ends_with("of 60 mirrored requests")
    });
    assert_eq!(events(&sb), before);
    sb.ok(&["rollout", "promote", "web"]);
    wait_for(&sb, "the shadow's promotion", |s| s["stable"] == 2);

    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "3",
        "--strategy",
        "bluegreen",
    ]);
    let switched = wait_for(&sb, "the blue/green switch", |s| s["stable"] == 3);
    assert_eq!(switched["phase"], "Healthy");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.post("/v2/models/web/infer", body()).1["model_version"] != "3" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn labels_fed_back_judge_online_accuracy_and_roll_back_a_worse_candidate() {
    let sb = Sandbox::new();
    for _ in 0..2 {
        register(&sb, "gbdt_classifier.onnx");
    }
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&["bc:1"]);
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "3s",
        "--min-requests",
        "5",
        "--max-accuracy-drop",
        "0.1",
        "--min-labels",
        "5",
    ]);
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metric(r#"weir_serve_rollout_weight{endpoint="web",version="2"}"#) != Some(50.0) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The world agrees with the stable version and never with the candidate.
    for i in 0..60 {
        let r = client
            .post(format!("{}/v2/models/web/infer", server.url))
            .body(body())
            .send()
            .unwrap();
        let id = r.headers()["x-weir-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let answer: Value = r.json().unwrap();
        let predicted = answer["outputs"][0]["data"][0].as_i64().unwrap();
        let truth = if answer["model_version"] == "1" {
            predicted
        } else {
            1 - predicted
        };
        let (code, fed) = server.post(
            "/v2/models/web/feedback",
            json!({"id": id, "label": truth}).to_string(),
        );
        assert_eq!(code, 200, "request {i}: {fed}");
        assert_eq!(fed["labelled"], 1);
    }
    let back = wait_for(&sb, "an accuracy rollback", |s| s["phase"] == "RolledBack");
    assert!(
        back["reason"]
            .as_str()
            .unwrap()
            .contains("online accuracy 0.0%"),
        "{back}"
    );

    let (code, e) = server.post(
        "/v2/models/web/feedback",
        json!({"id": "nope", "label": 1}).to_string(),
    );
    assert_eq!(code, 404, "{e}");
    let (code, e) = server.post(
        "/v2/models/bc/feedback",
        json!({"id": "x", "label": 1}).to_string(),
    );
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("not an endpoint"),
        "{e}"
    );
}

/// wrk, the load generator, driving one endpoint for `seconds`: its summary
/// (requests, non-2xx answers, socket errors).
fn wrk(url: &str, seconds: u64, dir: &std::path::Path) -> std::process::Child {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            body()
        ),
    )
    .unwrap();
    std::process::Command::new("wrk")
        .args([
            "-t2",
            "-c8",
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wrk_figure(report: &str, prefix: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map_or(0, |rest| {
            rest.split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(',')
                .parse()
                .unwrap()
        })
}

fn wrk_available() -> bool {
    let found = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found || std::env::var_os("WEIR_REQUIRE_WRK").is_none(),
        "WEIR_REQUIRE_WRK is set but wrk is not installed"
    );
    if !found {
        eprintln!("skipped: wrk is not installed (scripts/test.sh installs it)");
    }
    found
}

/// Seconds between two events of the endpoint's history.
fn event_gap(history: &Value, from: &str, to: &str) -> f64 {
    let at = |needle: &str| {
        history
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["detail"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in {history}"))["at"]
            .as_i64()
            .unwrap()
    };
    (at(to) - at(from)) as f64 / 1e3
}

#[test]
fn under_load_a_healthy_canary_is_promoted_and_bad_ones_rolled_back_dropping_nothing() {
    if !wrk_available() {
        return;
    }
    let sb = Sandbox::new();
    for file in [
        "gbdt_classifier.onnx",
        "gbdt_classifier.onnx",
        "mlp_regressor.onnx",
        "slow_tile.onnx",
    ] {
        register(&sb, file);
    }
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&[]);
    // Long enough for every phase; stopped (SIGINT: wrk reports and exits) when done.
    let load = wrk(
        &format!("{}/v2/models/web/infer", server.url),
        120,
        sb.path(),
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let interval = [
        "--interval",
        "2s",
        "--min-requests",
        "20",
        "--max-p99",
        "50ms",
    ];

    // (a) a healthy canary goes to 100%.
    sb.ok(&[
        &[
            "deploy",
            "web",
            "--model",
            "bc",
            "--version",
            "2",
            "--steps",
            "25,50,100",
        ][..],
        &interval[..],
    ]
    .concat());
    wait_for(&sb, "the healthy canary's promotion", |s| s["stable"] == 2);
    // (b) one that errors on every request, then (c) one that is slow.
    for (version, why) in [("3", "error rate"), ("4", "p99 latency")] {
        sb.ok(&[
            &[
                "deploy",
                "web",
                "--model",
                "bc",
                "--version",
                version,
                "--steps",
                "10,100",
            ][..],
            &interval[..],
        ]
        .concat());
        let back = wait_for(&sb, "a rollback", |s| {
            s["phase"] == "RolledBack" && s["candidate"].is_null()
        });
        assert!(back["reason"].as_str().unwrap().contains(why), "{back}");
        let history = sb.json(&["rollout", "history", "web"]);
        let took = event_gap(
            &history,
            &format!("rollout of version {version} started"),
            &format!("version {version} rolled back"),
        );
        // Two 2 s intervals, plus the controller's pick-up and the
        // candidate's load and warm-up before it takes traffic.
        assert!(
            took <= 2.0 * 2.0 + 1.0,
            "version {version} rolled back {took} s after it was deployed"
        );
    }

    std::thread::sleep(Duration::from_millis(300));
    std::process::Command::new("kill")
        .args(["-INT", &load.id().to_string()])
        .status()
        .unwrap();
    let out = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let (requests, seconds) = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, rest)| {
            let secs = rest.split(',').next().unwrap().trim();
            let secs = match secs.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().unwrap() / 1e3,
                None => secs.trim_end_matches('s').parse::<f64>().unwrap(),
            };
            (n.trim().parse::<u64>().unwrap(), secs)
        })
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        seconds >= started.elapsed().as_secs_f64() - 1.0,
        "the load ran throughout: {report}"
    );
    let non_2xx = wrk_figure(&report, "Non-2xx or 3xx responses:");
    assert!(!report.contains("Socket errors"), "{report}");
    let rate = requests as f64 / seconds;
    assert!(rate >= 500.0, "{rate:.0} requests/s: {report}");
    let by_bad = server
        .metric(r#"weir_serve_endpoint_requests_total{endpoint="web",version="3",code="400"}"#)
        .unwrap_or(0.0) as u64;
    assert_eq!(
        non_2xx, by_bad,
        "every failed request was one the erroring candidate answered: {report}"
    );
    eprintln!(
        "{rate:.0} requests/s, {non_2xx} answered by the failing candidate before its rollback"
    );
}

#[test]
fn a_candidate_whose_predictions_drift_from_the_stable_versions_is_rolled_back() {
    let sb = Sandbox::new();
    register(&sb, "gbdt_classifier.onnx");
    register(&sb, "gbdt_shallow.onnx");
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&[]);
    deploy_judging_drift(&sb, "2");
    let (rows, _) = fixture_rows();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for row in &rows {
            let (code, _) = server.post(
                "/invocations",
                json!({"dataframe_split": {"columns": (0..30).map(|i| format!("f{i}")).collect::<Vec<_>>(), "data": [row]}})
                    .to_string(),
            );
            assert_eq!(code, 200);
        }
        let s = status(&sb);
        if s["phase"] == "RolledBack" {
            assert!(
                s["reason"].as_str().unwrap().contains("prediction drift"),
                "{s}"
            );
            break;
        }
        assert_ne!(s["stable"], 2, "the drifting candidate was promoted: {s}");
        assert!(Instant::now() < deadline, "{s}");
    }
}

/// A canary of `version` on endpoint `web`, judged on drift every 1.5 s.
fn deploy_judging_drift(sb: &Sandbox, version: &str) {
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        version,
        "--steps",
        "50,100",
        "--interval",
        "1500ms",
        "--min-requests",
        "10",
        "--max-drift",
        "0.2",
    ]);
}

/// The rows of the fixture model's expected answers, with its labels.
fn fixture_rows() -> (Vec<Value>, Vec<i64>) {
    let text = std::fs::read_to_string(format!("{DATA}/expected.json")).unwrap();
    let model = serde_json::from_str::<Value>(&text).unwrap()["gbdt_classifier"].clone();
    let rows = model["rows"].as_array().unwrap().clone();
    let labels = model["outputs"]["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_i64().unwrap())
        .collect();
    (rows, labels)
}

#[test]
fn a_candidate_whose_predictions_drift_from_its_training_reference_is_rolled_back() {
    let sb = Sandbox::new();
    let (rows, labels) = fixture_rows();
    let columns: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    let mut csv = columns.join(",") + "\n";
    for row in &rows {
        let cells: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        csv += &(cells.join(",") + "\n");
    }
    let reference = sb.write("reference.csv", &csv);
    let reference = reference.to_str().unwrap();
    let model = format!("{DATA}/gbdt_classifier.onnx");

    // Bad reference tables are refused before a version exists.
    let text_column = sb.write(
        "text.csv",
        &format!("{}\n{}", columns.join(","), "a,".repeat(29) + "b"),
    );
    let e = sb.fails(&[
        "models",
        "register",
        "bc",
        &model,
        "--reference",
        text_column.to_str().unwrap(),
    ]);
    assert!(
        e.contains("--reference") && e.contains("column 'f0' is"),
        "{e}"
    );
    let e = sb.fails(&[
        "models",
        "register",
        "bc",
        &model,
        "--reference",
        "no-such.csv",
    ]);
    assert!(e.contains("--reference no-such.csv"), "{e}");
    assert!(sb.json(&["models", "list"]).as_array().unwrap().is_empty());

    sb.ok(&["models", "register", "bc", &model]);
    // The same graph again, now with the rows it is expected to see.
    let v2 = sb.json(&["models", "register", "bc", &model, "--reference", reference]);
    assert_eq!(v2["reference_rows"], 20, "{v2}");
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&[]);
    deploy_judging_drift(&sb, "2");
    // Live traffic that is all of one class: the stable version, the same
    // graph, answers exactly as the candidate does, so only the candidate's
    // training reference shows the shift.
    let negatives: Vec<&Value> = rows
        .iter()
        .zip(&labels)
        .filter(|(_, l)| **l == 0)
        .map(|(r, _)| r)
        .collect();
    let drive = |rows: &[&Value], done: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for row in rows {
                let body = json!({"dataframe_split": {"columns": columns, "data": [row]}});
                assert_eq!(server.post("/invocations", body.to_string()).0, 200);
            }
            let s = status(&sb);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{s}");
        }
    };
    let s = drive(&negatives, &|s| {
        assert_ne!(s["stable"], 2, "the drifting candidate was promoted: {s}");
        s["phase"] == "RolledBack"
    });
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("against its training reference (20 scores)"),
        "{s}"
    );
    let drift = |v: u32| {
        server.metric(&format!(
            r#"weir_serve_prediction_drift{{endpoint="web",version="{v}"}}"#
        ))
    };
    assert!(drift(2).unwrap() > 0.2, "{}", server.metrics());

    // Traffic like the reference rows: no drift, the candidate goes through.
    sb.ok(&["models", "register", "bc", &model, "--reference", reference]);
    deploy_judging_drift(&sb, "3");
    let all: Vec<&Value> = rows.iter().collect();
    drive(&all, &|s| {
        assert_ne!(s["phase"], "RolledBack", "{s}");
        s["stable"] == 3 && s["phase"] == "Healthy"
    });
    assert!(drift(3).unwrap() < 0.2, "{}", server.metrics());
    // Once stable, the version is still watched: the one-class traffic shows
    // on /metrics an interval later.
    let deadline = Instant::now() + Duration::from_secs(20);
    while drift(3).unwrap() < 0.2 {
        for row in &negatives {
            let body = json!({"dataframe_split": {"columns": columns, "data": [row]}});
            server.post("/invocations", body.to_string());
        }
        assert!(Instant::now() < deadline, "{}", server.metrics());
    }
}

/// The controller metric of a replica: 1 when it holds the lease.
fn leads(server: &Server) -> bool {
    server.metric("weir_serve_rollout_controller") == Some(1.0)
}

#[test]
fn replicas_on_postgres_share_one_controller_that_counts_every_replicas_traffic_and_hands_over() {
    let Some(admin) = crate::common::postgres_admin() else {
        return;
    };
    let db = crate::common::PgDatabase::create_named(
        &admin,
        &format!("weir_replicas_{}", std::process::id()),
    );
    let mut sb = Sandbox::new();
    sb.env.push(("WEIR_DB".into(), db.url()));
    register(&sb, "gbdt_classifier.onnx");
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let first = sb.serve(&[]);
    let second = sb.serve(&[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while leads(&first) == leads(&second) {
        assert!(
            Instant::now() < deadline,
            "not exactly one controller: {} {}",
            first.metrics(),
            second.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (leader, follower) = if leads(&first) {
        (first, second)
    } else {
        (second, first)
    };

    // All traffic goes to the replica that does not judge: the rollout can
    // move only if its counts reach the controller.
    register(&sb, "gbdt_classifier.onnx");
    let traffic = Traffic::start(&follower, "/v2/models/web/infer");
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "2",
        "--steps",
        "10,20,50,100",
        "--interval",
        "2s",
        "--min-requests",
        "20",
    ]);
    let moved = wait_for(&sb, "a step on the follower's traffic", |s| {
        s["weight"].as_i64().unwrap_or(0) >= 20
    });
    assert_eq!(moved["candidate"], 2, "{moved}");
    assert_eq!(
        leader
            .metric(r#"weir_serve_endpoint_requests_total{endpoint="web",version="2",code="200"}"#),
        None,
        "the controller answered no request itself"
    );

    // The controller dies; the other replica takes over within two analysis
    // intervals and the rollout goes on from where it was.
    drop(leader);
    let killed = Instant::now();
    while !leads(&follower) {
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "no takeover within two intervals"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let takeover = killed.elapsed();
    let done = wait_for(&sb, "promotion after the takeover", |s| s["stable"] == 2);
    assert_eq!(done["phase"], "Healthy", "{done}");
    let counts = traffic.finish();
    assert!(
        counts.keys().all(|(code, _)| *code == 200),
        "no request failed: {counts:?}"
    );
    let details = history_details(&sb);
    assert!(
        details.iter().any(|d| d == "version 2 is stable (was 1)")
            && !details.iter().any(|d| d.contains("rolled back")),
        "{details:?}"
    );
    eprintln!("takeover after {takeover:?}");
}

#[test]
fn a_second_server_on_a_sqlite_store_is_refused() {
    let sb = Sandbox::new();
    register(&sb, "gbdt_classifier.onnx");
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&[]);
    let out = sb
        .command(&["serve", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("another weir serve (") && err.contains("share a PostgreSQL store"),
        "{err}"
    );
    // Once it is gone, a new one serves the store (the dead holder's lease
    // does not keep it out).
    drop(server);
    let again = sb.serve(&[]);
    assert_eq!(again.get("/v2/models/web/ready").0, 200);
}

#[test]
fn an_endpoint_burning_its_error_budget_fast_rolls_back_its_rollout() {
    let sb = Sandbox::new();
    sb.write(
        "weir.toml",
        "[[slos]]\nendpoint = \"web\"\navailability = 99.9\nlatency_p99 = \"2s\"\nwindow = \"1h\"\n",
    );
    register(&sb, "gbdt_classifier.onnx");
    sb.ok(&["deploy", "web", "--model", "bc", "--version", "1"]);
    let server = sb.serve(&[]);
    for _ in 0..40 {
        assert_eq!(server.post("/v2/models/web/infer", body()).0, 200);
    }
    // Every replica adds its counts to the store; the CLI reads them there.
    let healthy = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = sb.json(&["slo", "status", "web"]);
            if s[0]["objectives"][0]["requests"].as_u64() >= Some(40) {
                break s;
            }
            assert!(Instant::now() < deadline, "{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let availability = &healthy[0]["objectives"][0];
    assert_eq!(
        (availability["sli"].clone(), availability["state"].clone()),
        (json!("availability"), json!("ok"))
    );
    assert_eq!(availability["budget_remaining"], 1.0);
    assert_eq!(healthy[0]["objectives"][1]["sli"], "latency");

    // A candidate that refuses every request, allowed by its own error-rate
    // limit: only the endpoint's error budget stops it.
    register(&sb, "mlp_regressor.onnx");
    let traffic = Traffic::start(&server, "/v2/models/web/infer");
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "bc",
        "--version",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "3s",
        "--min-requests",
        "5",
        "--max-error-rate",
        "1.0",
    ]);
    let back = wait_for(&sb, "rollback", |s| s["phase"] == "RolledBack");
    traffic.finish();
    let reason = back["reason"].as_str().unwrap();
    assert!(reason.contains("SLO fast burn on availability"), "{back}");
    assert_eq!(back["stable"], 1);
    let burn = server
        .metric(r#"weir_serve_slo_burn_rate{endpoint="web",sli="availability",window="5m"}"#)
        .unwrap();
    assert!(burn > 14.4, "{burn}");
    let status = sb.json(&["slo", "status", "web"]);
    let a = &status[0]["objectives"][0];
    assert!(a["bad"].as_u64().unwrap() > 0, "{status}");
    assert!(a["budget_remaining"].as_f64().unwrap() < 0.5, "{status}");
    let text = sb.ok(&["slo", "status"]);
    assert!(
        text.contains("web") && text.contains("BUDGET LEFT"),
        "{text}"
    );

    // Bad objectives and unknown endpoints are named.
    let err = sb.fails(&["slo", "status", "api"]);
    assert!(
        err.contains("no SLO for endpoint 'api'") && err.contains("web"),
        "{err}"
    );
    sb.write(
        "weir.toml",
        "[[slos]]\nendpoint = \"web\"\navailability = 120\n",
    );
    let err = sb.fails(&["slo", "status"]);
    assert!(
        err.contains("availability 120 is not a percentage"),
        "{err}"
    );
}
