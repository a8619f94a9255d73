//! The Ray executor against a real Ray cluster on loopback (a head and two
//! worker nodes, started by scripts/ray-cluster.sh), with metadata in a
//! fresh PostgreSQL database and artifacts in a real S3-compatible server.
//! WEIR_TEST_RAY_ADDRESS is the cluster's dashboard and WEIR_TEST_RAY_DIR the
//! script's directory for it (to kill and add nodes); without them these
//! tests are skipped, unless WEIR_REQUIRE_RAY=1. scripts/test.sh runs them
//! one at a time: some take a node away and give it back.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{python, step, PgDatabase, Sandbox};

struct RayEnv {
    sb: Sandbox,
    address: String,
    dir: String,
    _db: PgDatabase,
}

fn cluster() -> Option<(String, String)> {
    match (
        std::env::var("WEIR_TEST_RAY_ADDRESS"),
        std::env::var("WEIR_TEST_RAY_DIR"),
    ) {
        (Ok(address), Ok(dir)) => Some((address, dir)),
        _ if std::env::var("WEIR_REQUIRE_RAY").as_deref() == Ok("1") => {
            panic!("WEIR_REQUIRE_RAY=1 but WEIR_TEST_RAY_ADDRESS / WEIR_TEST_RAY_DIR are not set")
        }
        _ => {
            eprintln!(
                "WEIR_TEST_RAY_ADDRESS is not set: skipping (scripts/test.sh starts a cluster)"
            );
            None
        }
    }
}

/// A sandbox whose steps run on the test cluster, against PostgreSQL and S3.
fn ray_env() -> Option<RayEnv> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let (address, dir) = cluster()?;
    let admin = crate::common::postgres_admin().expect("the Ray tests need PostgreSQL");
    let endpoint =
        std::env::var("WEIR_TEST_S3_ENDPOINT").expect("the Ray tests need WEIR_TEST_S3_ENDPOINT");
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let n = N.fetch_add(1, Ordering::Relaxed);
    let db = PgDatabase::create_named(&admin, &format!("weir_ray_{}_{n}", std::process::id()));
    let mut sb = Sandbox::new();
    for (k, v) in [
        ("WEIR_DB", db.url()),
        (
            "WEIR_ARTIFACTS",
            format!("s3://{bucket}/ray-{}-{n}", std::process::id()),
        ),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "weir".into()),
        ("AWS_SECRET_ACCESS_KEY", "weir-secret".into()),
        ("WEIR_EXECUTOR", "ray".into()),
        ("WEIR_RAY_ADDRESS", address.clone()),
    ] {
        sb.env.push((k.into(), v));
    }
    Some(RayEnv {
        sb,
        address,
        dir,
        _db: db,
    })
}

fn get(url: &str) -> Value {
    reqwest::blocking::get(url).unwrap().json().unwrap()
}

/// The live nodes: (node id, ip, resources).
fn nodes(address: &str) -> Vec<(String, String, Value)> {
    get(&format!("{address}/api/v0/nodes?limit=100"))["data"]["result"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "ALIVE")
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["node_ip"].as_str().unwrap().to_string(),
                n["resources_total"].clone(),
            )
        })
        .collect()
}

fn cluster_script(args: &[&str]) {
    let script = format!(
        "{}/../../scripts/ray-cluster.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ray-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `weir run pipeline.yaml` in the background.
fn start_run(sb: &Sandbox) -> std::process::Child {
    sb.command(&["run", "pipeline.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the running run's `step` has been placed on a node: returns
/// the run and the step's Ray job.
fn wait_placed(sb: &Sandbox, step_name: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "step {step_name} never started on Ray"
        );
        std::thread::sleep(Duration::from_millis(200));
        let runs = sb.json(&["runs", "list"]);
        let Some(run) = runs[0]["id"].as_str() else {
            continue;
        };
        let show = sb.json(&["runs", "show", run]);
        let s = step(&show, step_name);
        if let (Some(job), true) = (s["job"].as_str(), s["node"].is_string()) {
            return (run.to_string(), job.to_string());
        }
    }
}

/// Waits until Ray says `job` is STOPPED.
fn wait_stopped(address: &str, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get(&format!("{address}/api/jobs/{job}"))["status"].clone();
        if status == "STOPPED" {
            return;
        }
        assert!(Instant::now() < deadline, "the Ray job is still {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn last_run(sb: &Sandbox) -> String {
    sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn steps_run_as_ray_jobs_and_the_store_says_where() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write("data/points.csv", "x,y\n1,2\n2,4\n3,6\n");
    sb.write(
        "pipeline.yaml",
        r#"
version: 1
name: placed
steps:
  ingest:
    uses: weir/ingest
    with: { path: data/points.csv }
  produce:
    run: echo "producing on $(hostname) with $WEIR_CPUS CPU"; echo 42 > "$WEIR_OUTPUTS_DIR/answer"
    outputs: [answer]
    resources: { cpu: 1, spot: 1 }
  consume:
    run: cat "$WEIR_INPUTS_DIR/answer"
    inputs: { answer: produce.answer }
    executor: local
"#,
    );
    let out = sb.ok(&["run", "pipeline.yaml"]);
    assert!(out.contains("succeeded"), "{out}");
    let run = last_run(sb);
    let show = sb.json(&["runs", "show", &run]);
    let spot_node = nodes(&env.address)
        .into_iter()
        .find(|(_, _, r)| r["spot"].as_f64() == Some(1.0))
        .expect("the test cluster has a spot node")
        .0;
    let produce = step(&show, "produce");
    assert_eq!(produce["executor"], "ray", "{produce}");
    assert_eq!(produce["executor_address"], env.address.as_str());
    // A custom resource places the step: only one node offers `spot`.
    assert_eq!(produce["node"], spot_node.as_str(), "{produce}");
    let job = produce["job"].as_str().unwrap();
    let details = get(&format!("{}/api/jobs/{job}", env.address));
    assert_eq!(details["status"], "SUCCEEDED", "{details}");
    assert_eq!(details["metadata"]["weir_step"], "produce");
    assert_eq!(details["metadata"]["weir_run_id"], run.as_str());
    assert_eq!(details["driver_node_id"], spot_node.as_str());
    // A built-in op runs on the cluster too.
    let ingest = step(&show, "ingest");
    assert_eq!(ingest["executor"], "ray", "{ingest}");
    assert!(ingest["node"].is_string(), "{ingest}");
    assert_eq!(ingest["metrics"]["rows"], 3.0, "{ingest}");
    // `executor: local` on a step keeps it on the runner's machine.
    let consume = step(&show, "consume");
    assert_eq!(consume["executor"], "local", "{consume}");
    assert!(consume["job"].is_null(), "{consume}");
    // The step's log comes back from the node: the step saw the CPUs Ray
    // granted it, not the runner's.
    let log = sb.ok(&["logs", &run, "produce"]);
    assert!(
        log.contains("producing on") && log.contains("with 1 CPU"),
        "{log}"
    );
    assert!(sb.ok(&["logs", &run, "consume"]).contains("42"));
    let text = sb.ok(&["runs", "show", &run]);
    assert!(
        text.contains("RAN ON") && text.contains(&format!("ray node {}", &spot_node[..12])),
        "{text}"
    );
}

#[test]
fn bad_cluster_configuration_is_refused_before_anything_runs() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: refused\nsteps:\n  big:\n    run: echo never\n    resources: { cpu: 1, gpu: 2 }\n  small:\n    run: echo never\n",
    );
    let no_runs = |sb: &Sandbox| {
        assert_eq!(sb.json(&["runs", "list"]), serde_json::json!([]));
    };
    // No node has two GPUs: the step is refused with what the cluster has.
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("steps.big.resources: no node of the Ray cluster")
            && err.contains("offers CPU 1, GPU 2")
            && err.contains("its nodes: 127.0.0.")
            && err.contains("CPU 1"),
        "{err}"
    );
    assert!(!err.contains("steps.small"), "{err}");
    no_runs(sb);

    sb.write(
        "pipeline.yaml",
        "version: 1\nname: refused\nsteps:\n  small:\n    run: echo never\n",
    );
    let mut unreachable = sb.command(&["run", "pipeline.yaml"]);
    unreachable.env("WEIR_RAY_ADDRESS", "http://127.0.0.1:9");
    let out = unreachable.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the Ray cluster at http://127.0.0.1:9")
            && err.contains("Connection refused"),
        "{err}"
    );
    no_runs(sb);

    let mut unset = sb.command(&["run", "pipeline.yaml"]);
    unset
        .env_remove("WEIR_RAY_ADDRESS")
        .env_remove("RAY_ADDRESS");
    let err = String::from_utf8(unset.output().unwrap().stderr).unwrap();
    assert!(
        err.contains("steps small run on Ray, but no Ray cluster is configured"),
        "{err}"
    );

    // The embedded stores live on this machine: Ray's nodes cannot share them.
    let local = Sandbox::new();
    local.write(
        "pipeline.yaml",
        "version: 1\nname: refused\nsteps:\n  small:\n    run: echo never\n",
    );
    let mut embedded = local.command(&["run", "pipeline.yaml", "--executor", "ray"]);
    embedded.env("WEIR_RAY_ADDRESS", &env.address);
    let out = embedded.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the metadata store is a SQLite file on this machine")
            && err.contains("WEIR_DB")
            && err.contains("the artifact store is a directory on this machine")
            && err.contains("s3://"),
        "{err}"
    );
    no_runs(&local);
    // The same pipeline runs locally with the local executor.
    assert!(local
        .ok(&["run", "pipeline.yaml", "--executor", "local"])
        .contains("succeeded"));
}

#[test]
fn cancelling_a_run_stops_its_ray_jobs() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: long\nsteps:\n  wait:\n    run: echo \"waiting $((6*7))\"; sleep 120\n",
    );
    let mut child = start_run(sb);
    let (run, job) = wait_placed(sb, "wait");
    assert_eq!(
        get(&format!("{}/api/jobs/{job}", env.address))["status"],
        "RUNNING"
    );
    // The step's log streams back from its node while it runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = sb.command(&["logs", &run, "wait"]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("waiting 42") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running step's log never showed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    sb.ok(&["cancel", &run]);
    assert!(!child.wait().unwrap().success());
    wait_stopped(&env.address, &job);
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(show["status"], "failed");
    assert!(
        step(&show, "wait")["error"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{show}"
    );
}

#[test]
fn a_lost_node_is_a_preemption_and_the_step_resumes_on_another_node() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    let script = format!(
        "{}/../../examples/checkpointing/train.py",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(script, sb.path().join("train.py")).unwrap();
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nname: lost\nsteps:\n  train:\n    run: {} train.py\n    preemptible: true\n    resources: {{ cpu: 1 }}\n    env: {{ EPOCHS: \"10\", EPOCH_SECONDS: \"0.5\", PROGRESS_FILE: progress.txt }}\n    outputs: [model]\n",
            python()
        ),
    );
    let epochs = || -> Vec<u32> {
        std::fs::read_to_string(sb.path().join("progress.txt"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let child = start_run(sb);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Past the first checkpoint save (every 2 s), so there is one to resume.
    while epochs().len() < 6 {
        assert!(Instant::now() < deadline, "training never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = last_run(sb);
    let show = sb.json(&["runs", "show", &run]);
    let first_node = step(&show, "train")["node"].as_str().unwrap().to_string();
    let (_, ip, resources) = nodes(&env.address)
        .into_iter()
        .find(|(id, _, _)| *id == first_node)
        .expect("the step's node is alive");
    cluster_script(&["kill-node", &env.dir, &ip]);
    let killed_at = epochs().len();

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Give the cluster its node back before anything can fail the test.
    let spot = resources["spot"].as_f64().is_some();
    let mut add = vec!["add-node", env.dir.as_str(), ip.as_str()];
    if spot {
        add.push(r#"{"spot": 1}"#);
    }
    cluster_script(&add);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("was lost (preempted)") && stderr.contains("attempt 2/3"),
        "{stderr}"
    );
    let show = sb.json(&["runs", "show", &run]);
    let train = step(&show, "train");
    assert_eq!(train["attempt"], 2, "{train}");
    assert_ne!(train["node"], first_node.as_str(), "{train}");
    let log = sb.ok(&["logs", &run, "train"]);
    let resumed_after: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("resuming after epoch "))
        .expect("the retry resumed from a checkpoint")
        .parse()
        .unwrap();
    // The checkpoint is saved every 2 s (4 epochs here) and at the end.
    assert!(
        resumed_after >= 1 && resumed_after <= killed_at,
        "resumed after {resumed_after}, killed at {killed_at}: {log}"
    );
    assert_eq!(epochs().iter().copied().max(), Some(10));
}

#[test]
fn a_lost_head_fails_the_run_cleanly_and_resume_finishes_it_locally() {
    let Some(mut env) = ray_env() else {
        return;
    };
    // A cluster of its own: this test kills its head.
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().display().to_string();
    let script = format!(
        "{}/../../scripts/ray-cluster.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let started = Command::new("bash")
        .args([&script, "start", &dir_s, "1"])
        .env("RAY_IP_BASE", "20")
        .env("RAY_DASHBOARD_PORT", free_port().to_string())
        .env("RAY_GCS_PORT", free_port().to_string())
        .output()
        .unwrap();
    struct Stop(String, String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .args([&self.0, "stop", &self.1])
                .status();
        }
    }
    let _stop = Stop(script.clone(), dir_s.clone());
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let address = String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string();
    env.sb.env.retain(|(k, _)| k.as_str() != "WEIR_RAY_ADDRESS");
    env.sb
        .env
        .push(("WEIR_RAY_ADDRESS".into(), address.clone()));
    let sb = &env.sb;
    // `slow` outlasts the runner's patience with a lost cluster only on Ray
    // (where its runtime has a fence); resumed locally it is quick.
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: headless\nsteps:\n  first:\n    run: echo one > \"$WEIR_OUTPUTS_DIR/out\"\n    outputs: [out]\n  slow:\n    run: if [ -n \"$WEIR_EXEC_FENCE\" ]; then sleep 60; fi; cat \"$WEIR_INPUTS_DIR/in\"\n    inputs: { in: first.out }\n",
    );
    let child = start_run(sb);
    let (run, _) = wait_placed(sb, "slow");
    cluster_script(&["kill-node", &dir_s, "127.0.0.20"]);
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        killed.elapsed() < Duration::from_secs(45),
        "took {:?} to give up",
        killed.elapsed()
    );
    assert!(stderr.contains("lost the Ray cluster at"), "{stderr}");
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(show["status"], "failed");
    assert_eq!(step(&show, "first")["status"], "succeeded");
    assert_eq!(step(&show, "slow")["status"], "failed");

    // The run continues on this machine; the finished step is kept.
    let out = sb.ok(&["resume", &run, "--executor", "local"]);
    assert!(out.contains("succeeded"), "{out}");
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(step(&show, "first")["executor"], "ray");
    assert_eq!(step(&show, "slow")["executor"], "local");
    assert_eq!(step(&show, "slow")["status"], "succeeded");
    assert!(sb.ok(&["logs", &run, "slow"]).contains("one"));
}

#[test]
fn the_flights_pipeline_and_its_study_give_the_same_results_on_ray_as_locally() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    let example = format!(
        "{}/../../examples/flights/pipeline.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    sb.ok(&["run", &example, "--executor", "local"]);
    let local = sb.json(&["runs", "show", &last_run(sb)]);
    // Run again, every step on the cluster (no cache: the same keys would
    // reuse every local result).
    sb.ok(&["run", &example, "--executor", "ray", "--no-cache"]);
    let on_ray = sb.json(&["runs", "show", &last_run(sb)]);
    assert_eq!(on_ray["status"], "succeeded", "{on_ray}");
    for s in on_ray["steps"].as_array().unwrap() {
        assert_eq!(s["executor"], "ray", "{s}");
        assert!(s["node"].is_string(), "{s}");
    }
    // Every deterministic step gives the same bytes wherever it runs.
    for name in [
        "ingest", "weather", "validate", "join", "split", "train", "evaluate",
    ] {
        assert_eq!(
            step(&local, name)["outputs"],
            step(&on_ray, name)["outputs"],
            "step {name}"
        );
    }
    let auc = |show: &Value, name: &str| step(show, name)["metrics"]["test.auc"].as_f64().unwrap();
    assert_eq!(auc(&local, "evaluate"), auc(&on_ray, "evaluate"));
    // The study runs two trials at a time, so which trial finishes first
    // (and so what TPE samples next) may differ between any two runs, local
    // or not: its best is compared within a tolerance.
    let (tuned_local, tuned_ray) = (
        auc(&local, "evaluate_tuned"),
        auc(&on_ray, "evaluate_tuned"),
    );
    eprintln!("tuned test AUC: local {tuned_local}, ray {tuned_ray}");
    assert!(
        (tuned_local - tuned_ray).abs() < 0.01,
        "tuned test AUC: local {tuned_local}, ray {tuned_ray}"
    );
    assert_eq!(
        step(&on_ray, "tuned")["metrics"]["tune.trials"],
        8.0,
        "{on_ray}"
    );
}

/// The study of `step` in `run`, once it has trials.
fn study_so_far(sb: &Sandbox, run: &str, step_name: &str) -> Option<Value> {
    let out = sb
        .command(&["study", "show", run, step_name, "--json"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn a_study_spreads_its_trials_over_the_cluster_as_ray_jobs() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write("data/points.csv", &crate::training::points());
    sb.write(
        "pipeline.yaml",
        &crate::training::tuned(crate::training::TUNE),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let run = last_run(sb);
    let study = sb.json(&["study", "show", &run, "train"]);
    let trials = study["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 9, "{study}");
    // Every trial was a Ray job of its own, which Ray saw succeed (a failed
    // trial is an outcome the job records, not a failed job).
    let mut nodes = std::collections::BTreeSet::new();
    for t in trials {
        let job = t["job"].as_str().unwrap_or_else(|| panic!("{t}"));
        assert_eq!(
            get(&format!("{}/api/jobs/{job}", env.address))["status"],
            "SUCCEEDED",
            "{t}"
        );
        nodes.insert(
            t["node"]
                .as_str()
                .unwrap_or_else(|| panic!("{t}"))
                .to_string(),
        );
    }
    // Two trials at a time, each asking one CPU, on two 1-CPU workers.
    assert_eq!(nodes.len(), 2, "{study}");
    let count = |s: &str| trials.iter().filter(|t| t["state"] == s).count();
    assert!(count("complete") >= 1, "{study}");
    // ASHA, judging from the values the trial jobs stored, stopped some
    // trials early on their nodes.
    assert!(count("pruned") >= 1, "{study}");
    for t in trials.iter().filter(|t| t["state"] == "pruned") {
        assert!(t["rounds"].as_f64().unwrap() < 60.0, "{t}");
    }
    for t in trials.iter().filter(|t| t["state"] == "failed") {
        assert!(
            t["error"].as_str().unwrap().contains("with.subsample"),
            "{t}"
        );
    }
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(
        step(&show, "train")["metrics"]["tune.trials"],
        9.0,
        "{show}"
    );
    assert!(sb.ok(&["study", "show", &run, "train"]).contains("RAN ON"));
    let log = sb.ok(&["logs", &run, "train"]);
    assert!(
        log.contains("trials run as Ray jobs") && log.contains("[trial 0]"),
        "{log}"
    );
}

/// Waits until trials numbered `from` and up of the run's study `step`
/// are placed on nodes, `count` of them; returns their jobs.
fn wait_trials_placed(
    sb: &Sandbox,
    child: &mut std::process::Child,
    run: Option<&str>,
    from: i64,
    count: usize,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "the trials never started on Ray");
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the run ended ({status}) before its trials were placed:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(300));
        let run = match run {
            Some(run) => run.to_string(),
            None => match sb.json(&["runs", "list"])[0]["id"].as_str() {
                Some(run) => run.to_string(),
                None => continue,
            },
        };
        let Some(study) = study_so_far(sb, &run, "train") else {
            continue;
        };
        let placed: Vec<String> = study["trials"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["number"].as_i64().unwrap() >= from && t["node"].is_string())
            .map(|t| t["job"].as_str().unwrap().to_string())
            .collect();
        if placed.len() == count {
            return (run, placed);
        }
    }
}

#[test]
fn a_study_on_ray_survives_its_runner_and_cancel_stops_its_trials() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write("data/points.csv", &crate::training::points());
    // Trials that would run for minutes; no step after the study.
    let pipeline = crate::training::PIPELINE;
    let pipeline = pipeline[..pipeline.find("  evaluate:").unwrap()].replace(
        "num_rounds: 60",
        "num_rounds: 1000000\n      early_stopping_rounds: 0",
    ) + "    tune:\n      space:\n        learning_rate: loguniform(0.001, 0.01)\n      objective: { metric: valid.auc, goal: maximize }\n      trials: 4\n      parallel: 2\n      sampler: random\n";
    sb.write("pipeline.yaml", &pipeline);
    let mut runner = start_run(sb);
    let (run, first) = wait_trials_placed(sb, &mut runner, None, 0, 2);
    for job in &first {
        assert_eq!(
            get(&format!("{}/api/jobs/{job}", env.address))["status"],
            "RUNNING"
        );
    }
    // The runner dies without a word: the next command stops the study's
    // job and its trials' jobs.
    runner.kill().unwrap();
    runner.wait().unwrap();
    assert_eq!(sb.json(&["runs", "list"])[0]["status"], "failed");
    for job in &first {
        wait_stopped(&env.address, job);
    }

    // Resumed, the study goes on with new trials on the cluster; the two it
    // lost are kept as failed.
    let mut resumed = sb
        .command(&["resume", &run])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, second) = wait_trials_placed(sb, &mut resumed, Some(&run), 2, 2);
    let study = sb.json(&["study", "show", &run, "train"]);
    for t in &study["trials"].as_array().unwrap()[..2] {
        assert_eq!(t["state"], "failed", "{t}");
        assert!(t["error"].as_str().unwrap().contains("interrupted"), "{t}");
    }

    // Cancelling the run stops the trials' jobs with the study's.
    sb.ok(&["cancel", &run]);
    assert!(!resumed.wait().unwrap().success());
    for job in &second {
        wait_stopped(&env.address, job);
    }
    assert_eq!(sb.json(&["runs", "show", &run])["status"], "failed");
}

#[test]
fn a_dead_runners_ray_job_is_stopped_and_resume_runs_the_step_again() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: orphan\nsteps:\n  first:\n    run: echo one > \"$WEIR_OUTPUTS_DIR/out\"\n    outputs: [out]\n  slow:\n    run: if [ ! -e resumed ]; then sleep 120; fi; cat \"$WEIR_INPUTS_DIR/in\"\n    inputs: { in: first.out }\n",
    );
    let mut runner = start_run(sb);
    let (run, job) = wait_placed(sb, "slow");
    // The runner dies without a word; its Ray job would run on.
    runner.kill().unwrap();
    runner.wait().unwrap();
    // The next weir command finds the run orphaned, fails it and stops its job.
    let runs = sb.json(&["runs", "list"]);
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    wait_stopped(&env.address, &job);
    // Resume (the step runs quickly this time) keeps the finished step.
    sb.write("resumed", "");
    let out = sb.ok(&["resume", &run]);
    assert!(out.contains("succeeded"), "{out}");
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(step(&show, "first")["attempt"], 1);
    assert_ne!(step(&show, "slow")["job"], job.as_str());
    assert!(sb.ok(&["logs", &run, "slow"]).contains("one"));
}

/// The id of the cluster's node at `ip`.
fn node_at(address: &str, ip: &str) -> String {
    nodes(address)
        .into_iter()
        .find(|(_, node_ip, _)| node_ip == ip)
        .unwrap_or_else(|| panic!("no node at {ip}"))
        .0
}

/// The nodes a step log's placement line ("rank 0 on IP, rank 1 on IP")
/// puts two ranks on, asserted to be two different ones.
fn two_nodes(log: &str) -> Vec<&str> {
    let placed = log
        .lines()
        .find(|l| l.starts_with("rank 0 on "))
        .unwrap_or_else(|| panic!("no placement line: {log}"));
    let ips: Vec<&str> = placed
        .split(", ")
        .map(|part| part.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(ips.len(), 2, "{placed}");
    assert_ne!(ips[0], ips[1], "both ranks on one node: {log}");
    ips
}

/// A distributed step's pipeline: `allreduce.py` (the torchrun contract,
/// no torch) over `workers` ranks of one CPU each, placed `placement`.
fn distributed_pipeline(sb: &Sandbox, workers: u32, placement: &str, env: &str) {
    crate::common::copy_example(sb, "distributed/allreduce.py");
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nname: ddp\nsteps:\n  stats:\n    run: {} allreduce.py\n    distributed: {{ workers: {workers}, backend: torch, placement: {placement} }}\n    resources: {{ cpu: 1 }}\n    env: {{ N: \"1000\"{env} }}\n    outputs: [stats]\n",
            python()
        ),
    );
}

#[test]
fn a_distributed_steps_workers_are_a_placement_group_over_the_nodes() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    // Each worker node has one CPU: rank 0 (the job) and rank 1 (the
    // placement group's one bundle) cannot share a node.
    distributed_pipeline(sb, 2, "strict_spread", "");
    sb.ok(&["run", "pipeline.yaml"]);
    let run = last_run(sb);
    let show = sb.json(&["runs", "show", &run]);
    let stats = step(&show, "stats");
    assert_eq!(stats["status"], "succeeded", "{stats}");
    assert_eq!(stats["metrics"]["mean"], 499.5, "{stats}");
    let log = sb.ok(&["logs", &run, "stats"]);
    let ips = two_nodes(&log);
    let worker_ips: Vec<String> = nodes(&env.address)
        .into_iter()
        .filter(|(_, _, r)| r["CPU"].as_f64().unwrap_or(0.0) > 0.0)
        .map(|(_, ip, _)| ip)
        .collect();
    assert!(
        ips.iter().all(|ip| worker_ips.iter().any(|w| w == ip)),
        "{ips:?} vs {worker_ips:?}"
    );
    // Rank 0 is the master, on its own node's address, for both ranks.
    for rank in 0..2 {
        assert!(
            log.contains(&format!(
                "[rank {rank}] rank {rank} of 2 (local rank 0), master {}:",
                ips[0]
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("[rank {rank}] rank {rank}: count 1000 mean 499.5")),
            "{log}"
        );
    }
    // The step ran as rank 0's job on rank 0's node.
    let rank0_node = node_at(&env.address, ips[0]);
    assert_eq!(stats["node"], rank0_node.as_str(), "{stats}");

    // A rank of the group failing stops rank 0 and fails the step with its
    // status; nothing is left holding the cluster's CPUs.
    distributed_pipeline(sb, 2, "strict_spread", ", FAIL_RANK: \"1\"");
    let started = Instant::now();
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");
    assert!(
        err.contains("exited with status 3 in worker 1 of 2 (the others were stopped)")
            && err.contains("[rank 1] failing on purpose"),
        "{err}"
    );
    // And rank 0 failing stops the group.
    distributed_pipeline(sb, 2, "strict_spread", ", FAIL_RANK: \"0\"");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("exited with status 3 in worker 0 of 2 (the others were stopped)"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = get(&format!(
            "{}/api/v0/placement_groups?limit=1000",
            env.address
        ));
        let held: Vec<&Value> = groups["data"]["result"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["state"] != "REMOVED")
            .collect();
        if held.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "placement groups left: {held:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // More workers than the cluster has room for are refused up front, with
    // its capacity.
    distributed_pipeline(sb, 3, "pack", "");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("steps.stats.distributed: the Ray cluster at")
            && err.contains("has no room for 3 workers of CPU 1 placed PACK")
            && err.contains("its nodes: 127.0.0."),
        "{err}"
    );
}

#[test]
fn torch_ddp_over_gloo_runs_as_a_placement_group_over_the_nodes() {
    let Some(env) = ray_env() else {
        return;
    };
    let Some(torch) = crate::distributed::torch_python() else {
        return;
    };
    let sb = &env.sb;
    crate::common::copy_example(sb, "distributed/torch_ddp.py");
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nname: ddp\nsteps:\n  ddp:\n    run: {torch} torch_ddp.py\n    distributed: {{ workers: 2, backend: torch, placement: strict_spread }}\n    resources: {{ cpu: 1 }}\n    outputs: [model, weights]\n"
        ),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let run = last_run(sb);
    let show = sb.json(&["runs", "show", &run]);
    let ddp = step(&show, "ddp");
    assert_eq!(ddp["status"], "succeeded", "{ddp}");
    assert!(ddp["metrics"]["loss"].as_f64().unwrap() < 0.02, "{ddp}");
    let log = sb.ok(&["logs", &run, "ddp"]);
    two_nodes(&log);
    for rank in 0..2 {
        assert!(
            log.contains(&format!(
                "[rank {rank}] rank {rank} of 2 (gloo, replicas identical)"
            )),
            "{log}"
        );
    }
}

#[test]
fn a_data_parallel_trainers_workers_are_placed_over_the_nodes() {
    let Some(env) = ray_env() else {
        return;
    };
    let sb = &env.sb;
    sb.write("data/points.csv", &crate::training::points());
    let single = crate::training::PIPELINE.replace("threads: 2", "threads: 1");
    sb.write("pipeline.yaml", &single);
    sb.ok(&["run", "pipeline.yaml"]);
    let alone = sb.json(&["runs", "show", &last_run(sb)]);
    sb.write(
        "pipeline.yaml",
        &single.replace("threads: 1", "threads: 1\n      workers: 2"),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let run = last_run(sb);
    let show = sb.json(&["runs", "show", &run]);
    let train = step(&show, "train");
    assert_eq!(train["status"], "succeeded", "{train}");
    assert_eq!(train["metrics"]["train.workers"], 2.0, "{train}");
    // Rank 1 staged the data on its own node and summed histograms with
    // rank 0 over the network: the same trees as one process.
    assert_eq!(
        train["outputs"]["model"]["digest"],
        step(&alone, "train")["outputs"]["model"]["digest"],
        "{train}"
    );
    let log = sb.ok(&["logs", &run, "train"]);
    // One CPU per worker node: rank 1 cannot share rank 0's node.
    let ips = two_nodes(&log);
    assert!(
        log.contains("data-parallel over 2 processes (this one and 1 workers on Ray), rank 0 at")
            && log.contains("[rank 1] rank 1 of 2: training data staged here")
            && log.contains(&format!("rank 0 at {}:", ips[0])),
        "{log}"
    );
    let rank0_node = node_at(&env.address, ips[0]);
    assert_eq!(train["node"], rank0_node.as_str(), "{train}");

    // Rank 1 dying mid-fit fails the step at once, naming it.
    sb.write(
        "pipeline.yaml",
        &single.replace(
            "num_rounds: 60",
            "num_rounds: 1000000\n      early_stopping_rounds: 0\n      workers: 2",
        ),
    );
    let runner = start_run(sb);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "rank 1 never started");
        std::thread::sleep(Duration::from_millis(300));
        let killed = Command::new("pkill")
            .args(["-KILL", "-f", "exec-rank .* --rank 1"])
            .status()
            .unwrap();
        if killed.success() {
            break;
        }
    }
    let started = Instant::now();
    let out = runner.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    let show = sb.json(&["runs", "show", &last_run(sb)]);
    let error = step(&show, "train")["error"].as_str().unwrap().to_string();
    assert!(error.contains("worker 1"), "{error}");
}
