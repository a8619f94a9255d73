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
