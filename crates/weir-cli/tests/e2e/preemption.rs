//! Preemptible steps: WEIR_CHECKPOINT_DIR is saved while the step runs and
//! restored on its next attempt; SIGTERM gives the step its grace period to
//! checkpoint. Uses examples/checkpointing/train.py.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{python, Sandbox};

fn example_script(sb: &Sandbox) {
    let script = format!(
        "{}/../../examples/checkpointing/train.py",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(script, sb.path().join("train.py")).unwrap();
}

fn epochs_run(sb: &Sandbox) -> Vec<u32> {
    std::fs::read_to_string(sb.path().join("progress.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn a_preempted_step_resumes_from_its_last_checkpoint() {
    let sb = Sandbox::new();
    example_script(&sb);
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nsteps:\n  train:\n    run: {} train.py\n    preemptible: true\n    grace: 10s\n    env: {{ EPOCHS: \"8\", EPOCH_SECONDS: \"0.3\", PROGRESS_FILE: progress.txt, PID_FILE: pgid.txt }}\n    outputs: [model]\n",
            python()
        ),
    );
    let child = sb
        .command(&["run", "pipeline.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while epochs_run(&sb).len() < 3 {
        assert!(Instant::now() < deadline, "training never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let runtime: i32 = std::fs::read_to_string(sb.path().join("pgid.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let preempted_at = epochs_run(&sb).len() as u32;
    std::process::Command::new("kill")
        .args(["-TERM", &runtime.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("preempted (SIGTERM)") && stderr.contains("attempt 2/3"),
        "{stderr}"
    );

    let epochs = epochs_run(&sb);
    // Every epoch ran, and at most one was run twice (the one in flight).
    assert_eq!(epochs.iter().copied().max(), Some(8));
    let repeated = epochs.len() - 8;
    assert!(
        repeated <= 1,
        "lost more than one checkpoint interval: {epochs:?}"
    );
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let logs = sb.ok(&["logs", &run, "train"]);
    let resumed_after: u32 = logs
        .lines()
        .find_map(|l| l.strip_prefix("resuming after epoch "))
        .expect("the retry resumed from a checkpoint")
        .parse()
        .unwrap();
    assert!(
        resumed_after >= preempted_at,
        "resumed after {resumed_after}, preempted at {preempted_at}: {logs}"
    );
    assert!(logs.contains("restored checkpoint"), "{logs}");
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(show["steps"][0]["attempt"], 2);
}

#[test]
fn a_checkpoint_that_cannot_be_saved_fails_the_attempt_and_keeps_the_previous_one() {
    let sb = Sandbox::new();
    // Attempt 1 checkpoints v1 and fails; attempt 2 adds an unreadable entry
    // (a dangling link) and succeeds, but its checkpoint cannot be saved, so
    // it fails; attempt 3 must see v1 alone.
    sb.write(
        "step.sh",
        "n=$(($(cat tries 2>/dev/null || echo 0) + 1)); echo $n > tries\n\
         case $n in\n\
           1) echo v1 > \"$WEIR_CHECKPOINT_DIR/state\"; exit 1 ;;\n\
           2) ln -s /nonexistent/weir \"$WEIR_CHECKPOINT_DIR/broken\"; exit 0 ;;\n\
           *) ls \"$WEIR_CHECKPOINT_DIR\" > seen; cat \"$WEIR_CHECKPOINT_DIR/state\" >> seen; exit 0 ;;\n\
         esac\n",
    );
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  flaky:\n    run: sh step.sh\n    preemptible: true\n    retry: { attempts: 3, backoff: 10ms }\n",
    );
    let out = sb.weir(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot save the checkpoint in $WEIR_CHECKPOINT_DIR"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path().join("seen")).unwrap(),
        "state\nv1\n"
    );
}
