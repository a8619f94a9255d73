//! Checking and repairing the stores: `weir fsck` reads every blob the
//! metadata names and finds what is corrupt or missing (saying what names
//! it), runs whose runner is gone and endpoints whose versions are not
//! there; `--repair` quarantines and reaps.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{wait_for, Sandbox};
use crate::lineage::{rows, PIPELINE};

/// `weir fsck [args] --json`, which exits 1 while a problem remains.
pub(crate) fn fsck(sb: &Sandbox, args: &[&str]) -> (Option<i32>, Value) {
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

    // To the test's S3 server when there is one (a team's backups), else a
    // directory.
    let dir = tempfile::tempdir().unwrap();
    let dest = match std::env::var("WEIR_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let bucket =
                std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
            for (k, v) in [
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "weir"),
                ("AWS_SECRET_ACCESS_KEY", "weir-secret"),
            ] {
                sb.env.push((k.into(), v.into()));
            }
            format!(
                "s3://{bucket}/backups-{}-{}",
                std::process::id(),
                weir_core::new_id()
            )
        }
        Err(_) => dir.path().join("backups").display().to_string(),
    };
    let dest = dest.as_str();
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

/// A blob nothing names, as a failed upload or a removed record leaves.
fn orphan(sb: &Sandbox, text: &str, age: Duration) -> std::path::PathBuf {
    let digest = weir_core::Digest::of_bytes(text.as_bytes()).hex();
    let path = sb.blob(&digest);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    age_file(&path, age);
    path
}

fn age_file(path: &std::path::Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

#[test]
fn gc_trashes_what_nothing_names_then_deletes_it_and_a_cache_hit_takes_back_what_it_needs() {
    let sb = Sandbox::new();
    rows(&sb, "a.csv", 0);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    let old = orphan(&sb, "left by a failed upload", Duration::from_secs(7200));
    let young = orphan(&sb, "being written right now", Duration::ZERO);
    let digest = old.file_name().unwrap().to_str().unwrap().to_string();

    let dry = sb.json(&["gc", "--dry-run"]);
    assert_eq!(
        (dry["trashed"].as_u64(), dry["young"].as_u64()),
        (Some(1), Some(1)),
        "{dry:#}"
    );
    assert!(old.exists(), "--dry-run changes nothing");

    let first = sb.json(&["gc"]);
    assert_eq!(first["trashed"], 1, "{first:#}");
    assert_eq!(first["trashed_bytes"], 23);
    assert_eq!(first["deleted"], 0, "nothing has waited in the trash yet");
    let trashed = sb.path().join(".weir/artifacts/trash").join(&digest);
    assert!(!old.exists() && trashed.exists() && young.exists());
    // Still within its time in the trash.
    assert_eq!(sb.json(&["gc"])["deleted"], 0);
    age_file(&trashed, Duration::from_secs(7200));
    let later = sb.json(&["gc"]);
    assert_eq!(
        (later["deleted"].as_u64(), later["bytes_freed"].as_u64()),
        (Some(1), Some(23)),
        "{later:#}"
    );
    assert!(!trashed.exists());
    assert_eq!(fsck(&sb, &[]).0, Some(0));

    // A gc that moved a cached output to the trash a moment before a run
    // hit the cache: the hit takes it back and the run does not run the
    // step again.
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run]);
    let table = crate::common::step(&show, "ingest")["outputs"]["table"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let in_trash = sb.path().join(".weir/artifacts/trash").join(&table);
    std::fs::create_dir_all(in_trash.parent().unwrap()).unwrap();
    std::fs::rename(sb.blob(&table), &in_trash).unwrap();
    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(1));
    assert!(
        report["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("trash"),
        "{report:#}"
    );
    sb.ok(&["run", "m.yaml"]);
    let again = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &again]);
    assert!(
        crate::common::step(&show, "ingest")["cached_from"].is_string(),
        "{show:#}"
    );
    assert!(sb.blob(&table).exists() && !in_trash.exists());
    assert_eq!(fsck(&sb, &[]).0, Some(0));
}

#[test]
fn gc_running_beside_runs_never_takes_a_blob_they_name() {
    let sb = Sandbox::new();
    sb.write("m.yaml", PIPELINE);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (stop, dir) = (stop.clone(), sb.path().to_path_buf());
        std::thread::spawn(move || {
            let mut rounds = 0;
            let mut trashed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(crate::common::WEIR)
                    .args(["gc", "--grace", "1s", "--json"])
                    .current_dir(&dir)
                    .env_remove("WEIR_HOME")
                    .env_remove("WEIR_DB")
                    .env_remove("WEIR_ARTIFACTS")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let report: Value = serde_json::from_slice(&out.stdout).unwrap();
                trashed += report["trashed"].as_u64().unwrap();
                rounds += 1;
            }
            (rounds, trashed)
        })
    };
    // Every run makes new blobs; between runs, garbage appears.
    for i in 0..6u64 {
        rows(&sb, "a.csv", i);
        sb.ok(&["run", "m.yaml"]);
        orphan(&sb, &format!("garbage {i}"), Duration::from_secs(60));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, trashed) = collector.join().unwrap();
    assert!(
        rounds >= 2 && trashed >= 1,
        "gc ran {rounds} times, trashed {trashed}"
    );
    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(0), "every blob a run named is whole: {report:#}");
}

fn retention_keeps_what_the_policy_and_the_registry_need(sb: Sandbox) {
    sb.write("weir.toml", "[retention]\nkeep_last = 2\n");
    sb.write(
        "p.yaml",
        "version: 1\nname: p\nparams: { data: a.csv }\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: \"${{ params.data }}\" }\n  train:\n    uses: weir/train-linear\n    inputs: { train: ingest.table }\n    with: { target: y, features: [x1, x2] }\n",
    );
    for i in 0..4u64 {
        rows(&sb, &format!("d{i}.csv"), i * 5);
        sb.ok(&["run", "p.yaml", "-p", &format!("data=d{i}.csv")]);
    }
    rows(&sb, "a.csv", 30);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    // m's only run registered a version; p keeps its two newest.
    let runs = sb.json(&["runs", "list"]);
    let ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    let (oldest, second) = (&ids[4], &ids[3]);
    let show = sb.json(&["runs", "show", oldest]);
    let step_id = crate::common::step(&show, "train")["step_run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let dry = sb.json(&["gc", "--dry-run", "--grace", "0s"]);
    let removed: Vec<&str> = dry["runs_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [second.as_str(), oldest.as_str()], "{dry:#}");
    assert_eq!(sb.json(&["runs", "list"]).as_array().unwrap().len(), 5);

    let report = sb.json(&["gc", "--grace", "0s"]);
    assert_eq!(report["runs_removed"].as_array().unwrap().len(), 2);
    assert!(
        report["trashed"].as_u64().unwrap() >= 2,
        "their outputs and logs: {report:#}"
    );
    let left = sb.json(&["runs", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 3);
    assert!(sb
        .fails(&["runs", "show", oldest])
        .contains("does not exist"));
    // Gone from the MLflow view too: the run and its steps' child runs.
    let server = sb.tracking_server();
    for id in [oldest.as_str(), step_id.as_str()] {
        let got = server
            .client
            .get(format!(
                "{}/api/2.0/mlflow/runs/get?run_id={id}",
                server.base
            ))
            .send()
            .unwrap();
        assert_eq!(got.status(), 404, "{id}");
    }
    drop(server);
    let audit = sb.json(&["audit"]);
    let purged = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run.purge")
        .count();
    assert_eq!(purged, 2);
    sb.ok(&["audit", "--verify"]);
    assert_eq!(fsck(&sb, &[]).0, Some(0));
    // The oldest data again: its cache entry went with its run.
    let out = sb.weir(&["run", "p.yaml", "-p", "data=d0.csv"]);
    assert!(out.status.success());
    let newest = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &newest]);
    assert!(
        crate::common::step(&show, "train")["cached_from"].is_null(),
        "{show:#}"
    );
}

#[test]
fn retention_removes_old_runs_but_not_what_a_model_needs_on_sqlite() {
    retention_keeps_what_the_policy_and_the_registry_need(Sandbox::new());
}

#[test]
fn retention_removes_old_runs_but_not_what_a_model_needs_on_postgres() {
    let Some(admin) = crate::common::postgres_admin() else {
        return;
    };
    let db = crate::common::PgDatabase::create_named(
        &admin,
        &format!("weir_retention_{}", std::process::id()),
    );
    let mut sb = Sandbox::new();
    sb.env.push(("WEIR_DB".into(), db.url()));
    retention_keeps_what_the_policy_and_the_registry_need(sb);
}

#[test]
fn killing_the_tracking_server_mid_log_batch_keeps_every_acknowledged_batch_whole() {
    const KEYS: usize = 10;
    let sb = Sandbox::new();
    let trials: u64 = crate::common::crash_trials();
    let (mut acknowledged_total, mut cut_short) = (0, 0);
    for trial in 0..trials {
        let server = sb.tracking_server();
        let api = |path: &str| format!("{}/api/2.0/mlflow/{path}", server.base);
        let experiment: Value = server
            .client
            .post(api("experiments/create"))
            .json(&serde_json::json!({"name": format!("chaos-{trial}")}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let run: Value = server
            .client
            .post(api("runs/create"))
            .json(&serde_json::json!({"experiment_id": experiment["experiment_id"]}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let run_id = run["run"]["info"]["run_id"].as_str().unwrap().to_string();
        // Batches of KEYS metrics, one after another, until the server dies.
        let logger = {
            let (client, url, run_id) =
                (server.client.clone(), api("runs/log-batch"), run_id.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for batch in 0.. {
                    let metrics: Vec<Value> = (0..KEYS)
                        .map(|k| serde_json::json!({"key": format!("b{batch}.k{k}"), "value": batch as f64, "timestamp": 1, "step": 0}))
                        .collect();
                    let sent = client
                        .post(&url)
                        .json(&serde_json::json!({"run_id": run_id, "metrics": metrics}))
                        .send();
                    match sent {
                        Ok(r) if r.status() == 200 => acknowledged.push(batch),
                        _ => return (acknowledged, batch),
                    }
                }
                unreachable!()
            })
        };
        // Seeded kill points from 20 ms to 400 ms into the logging.
        std::thread::sleep(Duration::from_millis(20 + trial * 7919 % 380));
        let mut server = server;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let (acknowledged, attempted) = logger.join().unwrap();
        drop(server);

        let after = sb.tracking_server();
        let got: Value = after
            .client
            .get(format!(
                "{}/api/2.0/mlflow/runs/get?run_id={run_id}",
                after.base
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let keys: std::collections::BTreeSet<String> = got["run"]["data"]["metrics"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["key"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for batch in 0..=attempted {
            let present = (0..KEYS)
                .filter(|k| keys.contains(&format!("b{batch}.k{k}")))
                .count();
            assert!(
                present == 0 || present == KEYS,
                "trial {trial}: batch {batch} is split: {present} of {KEYS} metrics"
            );
            if acknowledged.contains(&batch) {
                assert_eq!(
                    present, KEYS,
                    "trial {trial}: acknowledged batch {batch} was lost"
                );
            }
        }
        acknowledged_total += acknowledged.len();
        cut_short += usize::from(attempted as usize == acknowledged.len());
    }
    assert!(
        acknowledged_total > trials as usize,
        "too few batches got through"
    );
    assert_eq!(fsck(&sb, &[]).0, Some(0));
    eprintln!("{acknowledged_total} batches acknowledged, {cut_short} kills landed mid-batch");
}

#[test]
fn killing_weir_serve_mid_rollout_leaves_a_rollout_that_finishes_after_a_restart() {
    let sb = Sandbox::new();
    sb.write("m.yaml", PIPELINE);
    rows(&sb, "a.csv", 0);
    sb.ok(&["run", "m.yaml"]);
    rows(&sb, "a.csv", 4);
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
    let trials: u64 = crate::common::crash_trials();
    let status = || sb.json(&["rollout", "status", "web"]);
    let mut landed = 0;
    for trial in 0..trials {
        // Each trial rolls the other version out over the one serving.
        let (from, to) = if trial % 2 == 0 { (1, 2) } else { (2, 1) };
        assert_eq!(status()["stable"], from);
        let mut server = sb.serve(&[]);
        sb.ok(&[
            "deploy",
            "web",
            "--model",
            "m",
            "--version",
            &to.to_string(),
            "--steps",
            "50,100",
            "--interval",
            "300ms",
            "--min-requests",
            "3",
        ]);
        let traffic = |server: &crate::common::Server, until: Instant| {
            while Instant::now() < until {
                let (code, _) = server.post("/v2/models/web/infer", BODY);
                assert_eq!(code, 200);
            }
        };
        // Seeded kill points over the rollout's two intervals.
        traffic(
            &server,
            Instant::now() + Duration::from_millis(50 + trial * 7919 % 700),
        );
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let between = status();
        if between["candidate"] == to {
            landed += 1;
        }
        // The state left behind is whole: fsck's rollout checks pass.
        let (code, report) = fsck(&sb, &[]);
        assert_eq!(code, Some(0), "trial {trial}: {report:#}");
        // A new server takes the rollout up where the killed one left it.
        let server = sb.serve(&[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while status()["stable"] != to {
            assert!(
                Instant::now() < deadline,
                "trial {trial}: the rollout never finished: {}",
                status()
            );
            traffic(&server, Instant::now() + Duration::from_millis(100));
        }
        let done = status();
        assert_eq!(
            (done["candidate"].clone(), done["phase"].clone()),
            (Value::Null, "Healthy".into()),
            "trial {trial}"
        );
    }
    assert!(
        landed * 2 >= trials,
        "only {landed} of {trials} kills landed mid-rollout"
    );
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory,
/// on a free loopback port), so it can be restarted and stopped without
/// touching the server the other tests share. None where it cannot be made
/// (no PostgreSQL binaries, or root without a `postgres` user), unless
/// WEIR_REQUIRE_CHAOS=1 (scripts/test.sh).
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    /// Running as root: the server's tools run as `postgres`.
    root: bool,
}

impl PrivatePostgres {
    fn start() -> Option<PrivatePostgres> {
        let required = std::env::var("WEIR_REQUIRE_CHAOS").as_deref() == Ok("1");
        let skip = |why: &str| {
            assert!(!required, "WEIR_REQUIRE_CHAOS=1 but {why}");
            eprintln!("skipping: {why}");
            None
        };
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .find(|b| b.join("initdb").exists())
        }) else {
            return skip("no PostgreSQL server binaries under /usr/lib/postgresql");
        };
        let dir = tempfile::tempdir().unwrap();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout
            == b"0\n";
        if root {
            // initdb refuses root: the cluster belongs to postgres.
            let owned = std::process::Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status();
            if !owned.is_ok_and(|s| s.success()) {
                return skip("running as root and there is no postgres user to own a cluster");
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres {
            dir,
            bin,
            port,
            root,
        };
        pg.tool(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-D", &pg.data()],
        );
        pg.ctl(&["start"]);
        let created = std::process::Command::new("psql")
            .args([&pg.url("postgres"), "-qc", "CREATE DATABASE w"])
            .status()
            .unwrap();
        assert!(created.success());
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn tool(&self, name: &str, args: &[&str]) {
        let program = self.bin.join(name);
        let mut command = if self.root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl ACTION` on the cluster, waiting for it.
    fn ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        let mut args = vec!["-D", &data, "-w", "-m", "fast", "-o", &options, "-l", &log];
        args.extend_from_slice(action);
        self.tool("pg_ctl", &args);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let mut command = match self.root {
            true => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"));
                c
            }
            false => std::process::Command::new(self.bin.join("pg_ctl")),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// Waits for `child` up to `limit`; its exit code, or a panic if it hangs.
pub(crate) fn exits_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postgres_restarting_mid_run_is_survived_and_down_for_good_fails_clearly_then_resumes() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let mut sb = Sandbox::new();
    sb.env.push(("WEIR_DB".into(), pg.url("w")));
    sb.write(
        "p.yaml",
        "version: 1\nname: r\nsteps:\n  a:\n    run: echo a >> marks\n  b:\n    run: echo b >> started; sleep 3\n    inputs: {}\n  c:\n    run: echo c >> marks\n",
    );
    let started = |n: usize| {
        let path = sb.path().join("started");
        wait_for("step b", || {
            std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= n)
        })
    };
    let marks = |step: &str| {
        std::fs::read_to_string(sb.path().join("marks"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == step)
            .count()
    };

    // Restarted at three points (while b runs, as b ends and records its
    // outcome, as c starts): the pool replaces the connections the restart
    // killed, the statements caught on them are tried again, and the run
    // succeeds without a word from the user.
    for (n, after_ms) in [0, 2900, 3150].into_iter().enumerate() {
        let mut run = sb.spawn(&["run", "p.yaml", "--no-cache"]);
        started(n + 1);
        std::thread::sleep(Duration::from_millis(after_ms));
        pg.ctl(&["restart"]);
        let code = exits_within(&mut run, Duration::from_secs(90), "a run across a restart");
        let stderr = crate::common::stderr_of(&mut run);
        assert_eq!(code, Some(0), "restarted {after_ms} ms into b: {stderr}");
        assert_eq!(sb.json(&["runs", "list"])[0]["status"], "succeeded");
    }

    // Down for good while b runs: the run ends with an error that says so.
    let mut run = sb.spawn(&["run", "p.yaml", "--no-cache"]);
    started(4);
    // a (which b does not wait for) has recorded its outcome.
    wait_for("step a to be recorded", || {
        let run = sb.json(&["runs", "list"])[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        crate::common::step(&sb.json(&["runs", "show", &run]), "a")["status"] == "succeeded"
    });
    let a_before = marks("a");
    pg.ctl(&["stop"]);
    let code = exits_within(
        &mut run,
        Duration::from_secs(120),
        "a run whose database went away",
    );
    let stderr = crate::common::stderr_of(&mut run);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the metadata store") && stderr.contains("weir resume"),
        "{stderr}"
    );

    // Back up: the interrupted run resumes without running a again.
    pg.ctl(&["start"]);
    let runs = sb.json(&["runs", "list"]);
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_ne!(
        runs[0]["status"], "running",
        "an interrupted run is not left running"
    );
    sb.ok(&["resume", &id]);
    assert_eq!(sb.json(&["runs", "list"])[0]["status"], "succeeded");
    assert_eq!(
        marks("a"),
        a_before,
        "a finished before the outage and did not run again"
    );
    assert_eq!(fsck(&sb, &[]).0, Some(0));
}
