//! Retries with backoff, per-step timeouts and the retry-on policy.

use std::time::{Duration, Instant};

use crate::common::Sandbox;

fn step_record(sb: &Sandbox, step: &str) -> serde_json::Value {
    let id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &id]);
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap()
        .clone()
}

#[test]
fn a_flaky_step_succeeds_on_a_later_attempt() {
    let sb = Sandbox::new();
    // Fails until it has been tried three times.
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  flaky:\n    run: echo x >> tries; test $(wc -l < tries) -ge 3 || exit 75\n    retry: { attempts: 3, backoff: 100ms }\n",
    );
    let out = sb.weir(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("↻ flaky retrying in")
            && stderr.contains("attempt 2/3")
            && stderr.contains("attempt 3/3"),
        "{stderr}"
    );
    assert!(stderr.contains("exited with status 75"), "{stderr}");
    let record = step_record(&sb, "flaky");
    assert_eq!(
        (record["status"].as_str(), record["attempt"].as_i64()),
        (Some("succeeded"), Some(3))
    );
    assert_eq!(
        std::fs::read_to_string(sb.path().join("tries"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[test]
fn timeouts_stop_the_attempt_and_are_retried_when_the_policy_says_so() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  slow:\n    run: echo started >> starts; sleep 30\n    timeout: 1s\n    retry: { attempts: 2, backoff: 100ms, on: [timeout] }\n",
    );
    let started = Instant::now();
    let out = sb.weir(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the timeout did not stop the step"
    );
    assert!(
        stderr.contains("step 'slow' failed after 2 attempts: timed out after 1s"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path().join("starts"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn failures_outside_the_retry_policy_are_not_retried() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  once:\n    run: echo x >> tries; exit 3\n    retry: { attempts: 5, backoff: 10ms, on: [137, timeout] }\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("step 'once' failed: command"), "{err}");
    assert_eq!(
        std::fs::read_to_string(sb.path().join("tries"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}
