//! Checking and repairing the stores: `weir fsck` reads every blob the
//! metadata names and finds what is corrupt or missing (saying what names
//! it), runs whose runner is gone and endpoints whose versions are not
//! there; `--repair` quarantines and reaps.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Sandbox;
use crate::lineage::{rows, PIPELINE};

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `weir fsck [args] --json`, which exits 1 while a problem remains.
fn fsck(sb: &Sandbox, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["fsck"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = sb.weir(&all);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code(), report)
}

fn model_digest(sb: &Sandbox) -> String {
    let graph = sb.json(&["lineage", "m:1", "--upstream"]);
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "model:m:1")
        .unwrap()["attributes"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn fsck_names_corrupt_and_missing_blobs_and_repair_quarantines_the_corrupt() {
    let sb = Sandbox::new();
    rows(&sb, "a.csv", 0);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    let (code, clean) = fsck(&sb, &[]);
    assert_eq!(code, Some(0), "{clean:#}");
    assert!(clean["blobs_verified"].as_u64().unwrap() >= 5, "{clean:#}");
    assert!(sb.ok(&["fsck"]).contains("no problems"));

    // One flipped byte in the model; the ingest step's log gone.
    let model = model_digest(&sb);
    let blob = sb.blob(&model);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run]);
    let log = crate::common::step(&show, "ingest")["log_digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(sb.blob(&log)).unwrap();

    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(1));
    let problems = report["problems"].as_array().unwrap();
    let of = |digest: &str| {
        problems
            .iter()
            .find(|p| p["subject"] == format!("blob {digest}"))
            .unwrap_or_else(|| panic!("{digest} not reported: {report:#}"))
    };
    let corrupt = of(&model);
    assert_eq!(corrupt["kind"], "corrupt");
    let named: Vec<&str> = corrupt["referenced_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(named.contains(&"model m:1"), "{named:?}");
    assert!(
        named.iter().any(|n| n.ends_with("step train output model")),
        "{named:?}"
    );
    let missing = of(&log);
    assert_eq!(missing["kind"], "missing");
    assert!(missing["referenced_by"][0]
        .as_str()
        .unwrap()
        .ends_with("step ingest log"));
    let text = sb.weir(&["fsck"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("2 problems") && text.contains("named by model m:1"),
        "{text}"
    );

    // --repair moves the corrupt blob aside (the missing one stays missing),
    let (code, report) = fsck(&sb, &["--repair"]);
    assert_eq!(code, Some(1), "a missing blob is not repaired: {report:#}");
    assert!(!blob.exists());
    let quarantined = sb.path().join(".weir/artifacts/quarantine").join(&model);
    assert_eq!(std::fs::read(&quarantined).unwrap(), bytes);
    // and the next run makes the model again, the same bytes.
    sb.ok(&["run", "m.yaml"]);
    assert!(blob.exists());
    let (_, report) = fsck(&sb, &[]);
    let left: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["missing"], "{report:#}");
}

#[test]
fn fsck_finds_a_run_whose_runner_was_killed_and_repair_fails_it() {
    let sb = Sandbox::new();
    sb.write(
        "slow.yaml",
        "version: 1\nname: slow\nsteps:\n  wait:\n    run: echo started > started; sleep 60\n",
    );
    let mut runner = sb
        .command(&["run", "slow.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the step to start", || sb.path().join("started").exists());
    runner.kill().unwrap();
    runner.wait().unwrap();

    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(1));
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "orphaned-run", "{report:#}");
    assert!(problem["detail"].as_str().unwrap().contains("runner"));
    let (code, report) = fsck(&sb, &["--repair"]);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(report["problems"][0]["repaired"]
        .as_str()
        .unwrap()
        .contains("weir resume"));
    let run = sb.json(&["runs", "list"])[0].clone();
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(fsck(&sb, &[]).0, Some(0));
}

const BODY: &str = r#"{"inputs":[{"name":"x1","datatype":"FP64","shape":[3],"data":[3.0,40.0,77.0]},{"name":"x2","datatype":"FP64","shape":[3],"data":[4.0,1.0,9.0]}]}"#;

/// Both versions' answers to BODY, the rollout's state and the runs (the
/// audit chain verified on the way).
fn state(sb: &Sandbox) -> (Vec<Value>, Value, usize) {
    let server = sb.serve(&[]);
    let mut answers = Vec::new();
    for version in [1, 2] {
        let (status, answer) = server.post(&format!("/v2/models/m/versions/{version}/infer"), BODY);
        assert_eq!(status, 200, "{answer}");
        answers.push(answer["outputs"].clone());
    }
    drop(server);
    sb.ok(&["audit", "--verify"]);
    let rollout = sb.json(&["rollout", "status", "web"]);
    let rollout: Value = ["stable", "candidate", "weight", "phase", "strategy"]
        .iter()
        .map(|k| (k.to_string(), rollout[*k].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let runs = sb.json(&["runs", "list"]).as_array().unwrap().len();
    (answers, rollout, runs)
}

fn backup_and_restore(mut sb: Sandbox, fresh_db: impl FnOnce(&mut Sandbox)) {
    rows(&sb, "a.csv", 0);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    rows(&sb, "a.csv", 3);
    sb.ok(&["run", "m.yaml"]);
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "m",
        "--version",
        "1",
        "--strategy",
        "direct",
    ]);
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "m",
        "--version",
        "2",
        "--strategy",
        "canary",
        "--steps",
        "50,100",
        "--interval",
        "1h",
    ]);
    let before = state(&sb);

    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path().join("backups");
    let dest = dest.to_str().unwrap();
    let first = sb.json(&["backup", dest]);
    assert!(first["blobs_copied"].as_u64().unwrap() >= 5, "{first:#}");
    assert_eq!(first["blobs_copied"], first["blobs"]);
    // The second copies nothing it has already.
    let second = sb.json(&["backup", dest]);
    assert_eq!(second["blobs_copied"], 0, "{second:#}");
    assert_ne!(second["id"], first["id"]);
    let listed = sb.json(&["restore", dest, "--list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // Everything lost: the metadata store and the artifacts.
    std::fs::remove_dir_all(sb.path().join(".weir")).unwrap();
    fresh_db(&mut sb);
    let restored = sb.json(&[
        "restore",
        dest,
        "--snapshot",
        &first["id"].as_str().unwrap()[..12],
    ]);
    assert_eq!(restored["id"], first["id"]);
    eprintln!("restored in {:.2}s", restored["seconds"].as_f64().unwrap());
    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        state(&sb),
        before,
        "the restored store serves the same predictions"
    );
    // A restore never lands on a store that has data.
    let err = sb.fails(&["restore", dest]);
    assert!(err.contains("restored onto an empty"), "{err}");
}

#[test]
fn a_backup_restores_onto_an_empty_sqlite_store_and_serves_the_same() {
    backup_and_restore(Sandbox::new(), |_| {});
}

#[test]
fn a_backup_restores_onto_an_empty_postgres_database_and_serves_the_same() {
    let Some(admin) = crate::common::postgres_admin() else {
        return;
    };
    let pid = std::process::id();
    let first = crate::common::PgDatabase::create_named(&admin, &format!("weir_backup_a_{pid}"));
    let second = crate::common::PgDatabase::create_named(&admin, &format!("weir_backup_b_{pid}"));
    let mut sb = Sandbox::new();
    sb.env.push(("WEIR_DB".into(), first.url()));
    backup_and_restore(sb, |sb| {
        sb.env.retain(|(k, _)| k != "WEIR_DB");
        sb.env.push(("WEIR_DB".into(), second.url()));
    });
}
