//! Schedules: `weir schedule` and a running `weir scheduler` firing
//! pipelines on time, one active scheduler per store, missed firings caught
//! up by policy; off-peak steps waiting for their window.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Sandbox;

const PIPELINE: &str = "version: 1\nname: tick\nparams: { who: nobody }\nsteps:\n  hello:\n    run: echo hello ${{ params.who }}\n    cache: false\n";

fn scheduler(sb: &Sandbox, extra: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut args = vec!["scheduler", "--tick", "200ms"];
    args.extend_from_slice(extra);
    let mut child = sb
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn history(sb: &Sandbox, name: &str) -> Vec<Value> {
    sb.json(&["schedule", "history", name])
        .as_array()
        .unwrap()
        .clone()
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_scheduler_fires_on_time_and_a_second_one_stands_by() {
    let sb = Sandbox::new();
    sb.write("p.yaml", PIPELINE);
    let added = sb.json(&[
        "schedule",
        "add",
        "p.yaml",
        "--cron",
        "*/2 * * * * *",
        "-p",
        "who=cron",
    ]);
    assert_eq!(added["schedule"]["name"], "tick");
    assert!(added["next"].as_i64().unwrap() > 0);
    let (first, lines) = scheduler(&sb, &[]);
    wait_until("two successful firings", 30, || {
        history(&sb, "tick")
            .iter()
            .filter(|f| f["outcome"] == "succeeded")
            .count()
            >= 2
    });
    let (second, second_lines) = scheduler(&sb, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut standing = false;
    while !standing && Instant::now() < deadline {
        standing = second_lines
            .recv_timeout(Duration::from_millis(200))
            .is_ok_and(|l| l.contains("standing by"));
    }
    assert!(standing, "the second scheduler did not stand by");
    stop(second);
    stop(first);
    drop(lines);
    let fired = history(&sb, "tick");
    let done: Vec<&Value> = fired
        .iter()
        .filter(|f| f["outcome"] == "succeeded")
        .collect();
    // Each firing is its own run, recorded once, with the schedule's params.
    let mut runs: Vec<&str> = done.iter().map(|f| f["run_id"].as_str().unwrap()).collect();
    runs.dedup();
    assert_eq!(runs.len(), done.len());
    let mut times: Vec<i64> = fired
        .iter()
        .map(|f| f["scheduled_for"].as_i64().unwrap())
        .collect();
    times.sort();
    times.dedup();
    assert_eq!(
        times.len(),
        fired.len(),
        "a firing was recorded twice: {fired:?}"
    );
    assert!(times.iter().all(|t| t % 2000 == 0));
    let log = sb.ok(&["logs", runs[0], "hello"]);
    assert!(log.contains("hello cron"), "{log}");
    let list = sb.ok(&["schedule", "list"]);
    assert!(
        list.contains("tick") && list.contains("*/2 * * * * *"),
        "{list}"
    );
    sb.ok(&["schedule", "remove", "tick"]);
    assert!(sb
        .json(&["schedule", "list"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_scheduler_that_stops_leaves_its_runs_going_and_says_so() {
    let sb = Sandbox::new();
    sb.write(
        "p.yaml",
        "version: 1\nname: slow\nsteps:\n  nap:\n    run: sleep 3\n    cache: false\n",
    );
    sb.ok(&["schedule", "add", "p.yaml", "--cron", "*/2 * * * * *"]);
    let (child, lines) = scheduler(&sb, &[]);
    wait_until("a firing", 30, || {
        history(&sb, "slow")
            .iter()
            .any(|f| f["outcome"] == "started")
    });
    stop(child);
    drop(lines);
    let fired = history(&sb, "slow");
    assert!(
        fired.iter().all(|f| f["outcome"] != "started"),
        "{fired:#?}"
    );
    let detached: Vec<&Value> = fired
        .iter()
        .filter(|f| f["outcome"] == "detached")
        .collect();
    assert!(!detached.is_empty(), "{fired:#?}");
    assert!(detached[0]["detail"]
        .as_str()
        .unwrap()
        .contains("scheduler stopped"));
    // The run itself goes on to its end.
    wait_until("the detached run's end", 30, || {
        let runs = sb.json(&["runs", "list"]);
        let runs = runs.as_array().unwrap();
        !runs.is_empty() && runs.iter().all(|r| r["status"] == "succeeded")
    });
}

#[test]
fn missed_firings_are_skipped_or_run_once_by_policy() {
    let sb = Sandbox::new();
    sb.write("p.yaml", PIPELINE);
    sb.ok(&[
        "schedule",
        "add",
        "p.yaml",
        "--cron",
        "*/1 * * * * *",
        "--name",
        "skipper",
    ]);
    sb.ok(&[
        "schedule",
        "add",
        "p.yaml",
        "--cron",
        "*/1 * * * * *",
        "--name",
        "catcher",
        "--catch-up",
        "once",
    ]);
    // No scheduler for a few seconds: the firings in between are missed.
    std::thread::sleep(Duration::from_secs(4));
    let (child, _lines) = scheduler(&sb, &["--grace", "0s"]);
    wait_until("the catch-up run", 30, || {
        history(&sb, "catcher")
            .iter()
            .any(|f| f["outcome"] == "succeeded")
    });
    wait_until("skips recorded", 10, || {
        history(&sb, "skipper")
            .iter()
            .any(|f| f["outcome"] == "skipped")
    });
    stop(child);
    let catcher = history(&sb, "catcher");
    let first = catcher.last().unwrap();
    assert!(
        first["detail"].as_str().unwrap().contains("catches up") && first["outcome"] != "skipped",
        "{catcher:?}"
    );
    assert!(
        catcher.iter().all(|f| f["outcome"] != "skipped"),
        "{catcher:?}"
    );
    let skipper = history(&sb, "skipper");
    let skipped = skipper.iter().filter(|f| f["outcome"] == "skipped").count();
    assert!(skipped >= 3, "{skipper:?}");
}

#[test]
fn bad_schedules_are_refused_with_the_reason() {
    let sb = Sandbox::new();
    sb.write("p.yaml", PIPELINE);
    let e = sb.fails(&["schedule", "add", "p.yaml", "--cron", "61 * * * *"]);
    assert!(e.contains("cron expression '61 * * * *' is invalid"), "{e}");
    let e = sb.fails(&[
        "schedule",
        "add",
        "p.yaml",
        "--cron",
        "0 3 * * *",
        "--window",
        "22:00",
    ]);
    assert!(e.contains("--window: window '22:00' has no '-'"), "{e}");
    let e = sb.fails(&[
        "schedule",
        "add",
        "p.yaml",
        "--cron",
        "0 3 * * *",
        "-p",
        "nope=1",
    ]);
    assert!(e.contains("'nope' is not a param"), "{e}");
    sb.ok(&["schedule", "add", "p.yaml", "--cron", "0 3 * * *"]);
    let e = sb.fails(&["schedule", "add", "p.yaml", "--cron", "0 4 * * *"]);
    assert!(e.contains("a schedule named 'tick' exists"), "{e}");
    let e = sb.fails(&["schedule", "remove", "nightly"]);
    assert!(
        e.contains("no schedule named 'nightly'; schedules: tick"),
        "{e}"
    );
    sb.write(
        "off.yaml",
        "version: 1\nsteps:\n  late:\n    run: \"true\"\n    run_in: off_peak\n",
    );
    let e = sb.fails(&["schedule", "add", "off.yaml", "--cron", "0 3 * * *"]);
    assert!(e.contains("give the schedule a --window"), "{e}");
    let e = sb.fails(&["run", "off.yaml"]);
    assert!(e.contains("no off-peak window is set"), "{e}");
    let e = sb.fails(&["run", "off.yaml", "--off-peak", "25:00-01:00"]);
    assert!(e.contains("'25:00' is not a time of day"), "{e}");
    sb.write(
        "typo.yaml",
        "version: 1\nsteps:\n  late:\n    run: \"true\"\n    run_in: night\n",
    );
    let e = sb.fails(&["run", "typo.yaml"]);
    assert!(e.contains("'night' is not a time to run in"), "{e}");
}

/// A window of `hours` hours starting `from_now` hours from now (UTC).
fn window(from_now: i64, hours: i64) -> String {
    let now_min = (weir_core::now_ms() / 60_000).rem_euclid(1440);
    let at = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
    format!(
        "{}-{}",
        at(now_min + from_now * 60),
        at(now_min + (from_now + hours) * 60)
    )
}

#[test]
fn off_peak_steps_wait_for_their_window() {
    let sb = Sandbox::new();
    sb.write(
        "p.yaml",
        "version: 1\nname: nightly\nsteps:\n  prep:\n    run: echo prep > \"$WEIR_OUTPUTS_DIR/x\"\n    outputs: [x]\n  \
         train:\n    run: echo train\n    inputs: { x: prep.x }\n    run_in: off_peak\n",
    );
    // Inside the window: everything runs.
    sb.ok(&["run", "p.yaml", "--off-peak", &window(-1, 2)]);
    // Outside it: prep runs, train waits (and is cancelled here).
    let mut child = sb
        .command(&["run", "p.yaml", "--off-peak", &window(2, 3)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("waits for the off-peak window") {
            break;
        }
    }
    assert!(
        seen.contains("step 'train' waits for the off-peak window"),
        "{seen}"
    );
    assert!(
        seen.contains("opens in 1h") || seen.contains("opens in 2h"),
        "{seen}"
    );
    let runs = sb.json(&["runs", "list"]);
    let run = runs[0]["id"].as_str().unwrap().to_string();
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(crate::common::step(&show, "prep")["status"], "succeeded");
    assert_eq!(crate::common::step(&show, "train")["status"], "pending");
    sb.ok(&["cancel", &run]);
    let _ = child.wait();
}
