//! Distributed `run:` steps: N workers on the torchrun contract, exchanging
//! partial sums over it (examples/distributed/allreduce.py, no torch needed).

use crate::common::{python, step, Sandbox};

fn example(sb: &Sandbox, workers: u32, env: &str) {
    crate::common::copy_example(sb, "distributed/allreduce.py");
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nname: ddp\nsteps:\n  stats:\n    run: {} allreduce.py\n    distributed: {{ workers: {workers}, backend: torch }}\n    resources: {{ cpu: 0.5 }}\n    env: {{ N: \"1000\"{env} }}\n    outputs: [stats]\n",
            python()
        ),
    );
}

#[test]
fn workers_exchange_partial_results_over_the_torchrun_contract() {
    let sb = Sandbox::new();
    example(&sb, 3, "");
    sb.ok(&["run", "pipeline.yaml"]);
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run]);
    let stats = step(&show, "stats");
    assert_eq!(stats["status"], "succeeded", "{stats}");
    // The mean of 0..999, from three shards added up across processes.
    assert_eq!(stats["metrics"]["mean"], 499.5, "{stats}");
    let log = sb.ok(&["logs", &run, "stats"]);
    for rank in 0..3 {
        assert!(
            log.contains(&format!(
                "[rank {rank}] rank {rank} of 3 (local rank {rank}), master 127.0.0.1:"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("[rank {rank}] rank {rank}: count 1000 mean 499.5")),
            "{log}"
        );
    }
    // The step's output is rank 0's.
    let digest = stats["outputs"]["stats"]["digest"].as_str().unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.blob(digest)).unwrap()).unwrap();
    assert_eq!(written["rank"], 0);
    assert_eq!(written["count"], 1000.0);
}

#[test]
fn one_worker_failing_stops_the_others_and_fails_the_step() {
    let sb = Sandbox::new();
    // Rank 1 fails before it connects: rank 0 would wait for it for ever.
    example(&sb, 3, ", FAIL_RANK: \"1\"");
    let started = std::time::Instant::now();
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the other workers were not stopped"
    );
    assert!(
        err.contains("exited with status 3 in worker 1 of 3 (the others were stopped)"),
        "{err}"
    );
    assert!(err.contains("[rank 1] failing on purpose"), "{err}");
    // Nothing of the step's workers is left running.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}.*allreduce.py", python())])
        .output()
        .unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let ours: Vec<&String> = left
        .iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(sb.path()))
        })
        .collect();
    assert!(ours.is_empty(), "workers left running: {ours:?}");
}

/// The Python that has torch: WEIR_TEST_TORCH_PYTHON (scripts/test.sh installs
/// torch into a virtualenv of its own). Without it the torch test is skipped,
/// unless WEIR_REQUIRE_TORCH=1.
pub(crate) fn torch_python() -> Option<String> {
    match std::env::var("WEIR_TEST_TORCH_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var("WEIR_REQUIRE_TORCH").as_deref() == Ok("1") => {
            panic!("WEIR_REQUIRE_TORCH=1 but WEIR_TEST_TORCH_PYTHON is not set")
        }
        Err(_) => {
            eprintln!("skipped: set WEIR_TEST_TORCH_PYTHON to a Python with torch");
            None
        }
    }
}

#[test]
fn torch_ddp_over_gloo_trains_the_same_model_as_one_process() {
    let Some(torch) = torch_python() else { return };
    let sb = Sandbox::new();
    crate::common::copy_example(&sb, "distributed/torch_ddp.py");
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nname: ddp\nsteps:\n  single:\n    run: {torch} torch_ddp.py\n    outputs: [model, weights]\n  ddp:\n    run: {torch} torch_ddp.py\n    distributed: {{ workers: 2, backend: torch }}\n    resources: {{ cpu: 0.5 }}\n    outputs: [model, weights]\n"
        ),
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run]);
    let weights = |name: &str| -> serde_json::Value {
        let s = step(&show, name);
        assert_eq!(s["status"], "succeeded", "{s}");
        let digest = s["outputs"]["weights"]["digest"].as_str().unwrap();
        serde_json::from_slice(&std::fs::read(sb.blob(digest)).unwrap()).unwrap()
    };
    let (one, two) = (weights("single"), weights("ddp"));
    assert_eq!(one["world"], 1);
    assert_eq!(two["world"], 2, "the output is rank 0's of two");
    let values = |w: &serde_json::Value| -> Vec<f64> {
        let mut v: Vec<f64> = w["weight"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        v.push(w["bias"].as_f64().unwrap());
        v
    };
    // Gradients averaged over two equal shards are the whole batch's gradient:
    // the models differ only by float64 rounding.
    for (a, b) in values(&one).iter().zip(values(&two)) {
        assert!((a - b).abs() <= 1e-9, "{one} vs {two}");
    }
    let log = sb.ok(&["logs", &run, "ddp"]);
    for rank in 0..2 {
        assert!(
            log.contains(&format!(
                "[rank {rank}] rank {rank} of 2 (gloo, replicas identical)"
            )),
            "{log}"
        );
    }
    let ddp = step(&show, "ddp");
    assert!(
        ddp["metrics"]["loss"].as_f64().unwrap() < 0.02,
        "the model did not fit: {ddp}"
    );
}
