//! Runs that lose their runner: `weir cancel` from another shell, and the
//! crash-safety trials: `weir run` SIGKILLed at varied points, then
//! `weir resume` must finish the run without re-executing any step that had
//! finished, with consistent metadata and every artifact's digest intact.
//! Trials per backend: WEIR_CRASH_TRIALS (default 20).

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_for, Sandbox};

const STEPS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// a -> b -> d -> e and a -> c -> d: each step logs its start and end in
/// `marks` and passes a file on.
fn crash_pipeline(sb: &Sandbox) {
    let step = |name: &str, inputs: &str| {
        format!(
            "  {name}:\n    run: echo start {name} >> marks; sleep 0.15; cat $WEIR_INPUTS_DIR/* 2>/dev/null > $WEIR_OUTPUTS_DIR/out; echo {name} >> $WEIR_OUTPUTS_DIR/out; echo done {name} >> marks\n    inputs: {{ {inputs} }}\n    outputs: [out]\n"
        )
    };
    let mut yaml = String::from("version: 1\nname: crash\nsteps:\n");
    yaml += &step("a", "");
    yaml += &step("b", "x: a.out");
    yaml += &step("c", "x: a.out");
    yaml += &step("d", "x: b.out, y: c.out");
    yaml += &step("e", "x: d.out");
    sb.write("pipeline.yaml", &yaml);
}

fn spawn_run(sb: &Sandbox) -> Child {
    sb.command(&["run", "pipeline.yaml", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn steps_by_name(sb: &Sandbox, run: &str) -> BTreeMap<String, Value> {
    let show = sb.json(&["runs", "show", run]);
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn marks(sb: &Sandbox, what: &str, step: &str) -> usize {
    std::fs::read_to_string(sb.path().join("marks"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == format!("{what} {step}"))
        .count()
}

fn verify_blobs(sb: &Sandbox) {
    for blob in sb.blobs() {
        let name = blob.file_name().unwrap().to_str().unwrap().to_string();
        // object_store writes `<digest>#<n>` and renames it into place; a
        // kill between the two leaves the staging file, which no reader
        // opens. Every blob under its own name must still be whole.
        if name.contains('#') {
            continue;
        }
        let actual = weir_core::Digest::of_file(&blob).unwrap().hex();
        assert_eq!(
            actual,
            name,
            "blob {} does not match its digest",
            blob.display()
        );
    }
}

fn resume(sb: &Sandbox, run: &str, trial: u64) {
    let out = sb.weir(&["resume", run]);
    assert!(
        out.status.success(),
        "trial {trial}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn crash_trials(sb_for_trial: impl Fn() -> Sandbox) {
    let trials: u64 = crate::common::crash_trials();
    let mut resumed = 0;
    // Kills that land before the run is recorded or after it finished prove
    // nothing; keep going until `trials` kills landed mid-run. The window
    // follows the machine: a loaded one runs the pipeline slower.
    let mut scale = 1.0_f64;
    for trial in 0..trials * 5 {
        if resumed == trials {
            break;
        }
        let sb = sb_for_trial();
        crash_pipeline(&sb);
        let mut child = spawn_run(&sb);
        // Kill points spread over the whole run (about 1.2 s), varied per trial.
        let delay = (120 + (trial * 7919 % 23) * 40) as f64 * scale;
        std::thread::sleep(Duration::from_millis(delay as u64));
        child.kill().unwrap();
        child.wait().unwrap();

        let runs = sb.json(&["runs", "list"]);
        if runs.as_array().unwrap().is_empty() {
            // Killed before the run was recorded: nothing to resume.
            scale = (scale * 1.25).min(8.0);
            continue;
        }
        let run = runs[0]["id"].as_str().unwrap().to_string();
        let before = steps_by_name(&sb, &run);
        let finished: Vec<String> = before
            .iter()
            .filter(|(_, s)| s["status"] == "succeeded")
            .map(|(n, _)| n.clone())
            .collect();
        if runs[0]["status"] == "succeeded" {
            assert_eq!(finished.len(), STEPS.len());
            scale = (scale * 0.8).max(0.25);
            continue;
        }
        assert_eq!(
            runs[0]["status"], "failed",
            "trial {trial}: a run without a runner must not stay running"
        );
        assert!(
            before.values().all(|s| s["status"] != "running"),
            "trial {trial}: {before:?}"
        );
        let starts: BTreeMap<&str, usize> =
            STEPS.iter().map(|s| (*s, marks(&sb, "start", s))).collect();

        resumed += 1;
        resume(&sb, &run, trial);

        let after = steps_by_name(&sb, &run);
        assert_eq!(
            sb.json(&["runs", "show", &run])["status"],
            "succeeded",
            "trial {trial}"
        );
        for step in STEPS {
            let s = &after[step];
            assert_eq!(s["status"], "succeeded", "trial {trial} step {step}");
            assert!(
                s["outputs"]["out"]["digest"].is_string(),
                "trial {trial} step {step}: output not recorded"
            );
            if finished.iter().any(|f| f == step) {
                assert_eq!(
                    marks(&sb, "start", step),
                    starts[step],
                    "trial {trial}: finished step {step} ran again"
                );
                assert_eq!(
                    s["outputs"], before[step]["outputs"],
                    "trial {trial}: outputs of {step} changed"
                );
            }
        }
        // The final output holds every step's contribution, in order.
        let e = after["e"]["outputs"]["out"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let text = std::fs::read_to_string(sb.blob(&e)).unwrap();
        assert_eq!(text, "a\nb\na\nc\nd\ne\n", "trial {trial}");
        verify_blobs(&sb);
    }
    eprintln!("{resumed} kills landed mid-run and were resumed");
    assert_eq!(resumed, trials, "too few kills landed mid-run");
}

#[test]
fn killed_runs_resume_without_redoing_finished_steps_on_sqlite() {
    crash_trials(Sandbox::new);
}

#[test]
fn killed_runs_resume_without_redoing_finished_steps_on_postgres() {
    let Some(admin) = crate::common::postgres_admin() else {
        return;
    };
    let databases = std::sync::Mutex::new(Vec::new());
    crash_trials(|| {
        let db = crate::common::PgDatabase::create_named(
            &admin,
            &format!("weir_crash_{}", weir_core::new_id()),
        );
        let mut sb = Sandbox::new();
        sb.env.push(("WEIR_DB".into(), db.url()));
        databases.lock().unwrap().push(db);
        sb
    });
}

#[test]
fn cancel_stops_a_run_from_another_shell_and_resume_finishes_it() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  first:\n    run: echo done first >> marks\n  slow:\n    run: echo start slow >> marks; sleep 60\n    inputs: {}\n",
    );
    let mut child = spawn_run(&sb);
    wait_for("the slow step", || marks(&sb, "start", "slow") == 1);
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The step runtime of the running step reports that it is alive.
    wait_for("a heartbeat from the slow step", || {
        let steps = steps_by_name(&sb, &run);
        steps["slow"]["status"] == "running" && steps["slow"]["heartbeat_at"].is_i64()
    });
    let out = sb.ok(&["cancel", &run[..10]]);
    assert!(out.contains("failed") && out.contains("cancelled"), "{out}");
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let err = sb.fails(&["cancel", &run]);
    assert!(err.contains("is not running"), "{err}");

    // Make the slow step quick, as a user fixing a problem would... but resume
    // uses the run's recorded spec, so it runs the same command: stop it again
    // and check the first step is never re-run.
    let mut resume = sb
        .command(&["resume", &run])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the resumed slow step", || marks(&sb, "start", "slow") == 2);
    sb.ok(&["cancel", &run]);
    resume.wait().unwrap();
    assert_eq!(
        marks(&sb, "done", "first"),
        1,
        "the finished step ran again"
    );
}

/// The `weir exec` children of process `parent`, by pid.
fn step_runtimes(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // The parent pid is the 4th field of stat, after the `(comm)` that
        // may itself hold spaces.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_exec = cmdline.split(|b| *b == 0).nth(1) == Some(b"exec".as_slice());
        if ppid == Some(parent) && is_exec {
            found.push(pid);
        }
    }
    found
}

/// `weir exec` SIGKILLed at varied points of a step (staging its inputs,
/// running the command, storing outputs, recording the outcome): the runner
/// fails that step with a reason, never leaves it running, runs nothing
/// else that depends on it, and `weir resume` re-runs only what had not
/// finished.
#[test]
fn a_killed_step_runtime_fails_its_step_and_resume_reruns_only_what_had_not_finished() {
    let trials = crate::common::crash_trials();
    let mut failed_runs = 0;
    for trial in 0..trials {
        let sb = Sandbox::new();
        crash_pipeline(&sb);
        let mut child = spawn_run(&sb);
        // The first step's runtime for even trials, a later one for odd.
        let skip = (trial % 2) as usize;
        let mut seen = std::collections::BTreeSet::new();
        let victim = loop {
            let now = step_runtimes(child.id());
            seen.extend(now.iter().copied());
            if seen.len() > skip {
                if let Some(pid) = now.into_iter().max() {
                    break pid;
                }
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "trial {trial}: the run ended before a step runtime was seen"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        // Kill points spread over a step's life (about 0.3 s).
        std::thread::sleep(Duration::from_millis(trial * 7919 % 31 * 10));
        // SAFETY: kill(2) with a pid read from /proc; at worst it is gone.
        unsafe {
            libc::kill(victim as i32, libc::SIGKILL);
        }
        let code = child.wait().unwrap().code();

        let runs = sb.json(&["runs", "list"]);
        let run = runs[0]["id"].as_str().unwrap().to_string();
        let before = steps_by_name(&sb, &run);
        assert!(
            before.values().all(|s| s["status"] != "running"),
            "trial {trial}: {before:#?}"
        );
        let (fsck, report) = crate::resilience::fsck(&sb, &[]);
        assert_eq!(fsck, Some(0), "trial {trial}: {report:#}");
        if runs[0]["status"] == "succeeded" {
            // Killed after it had recorded the outcome (or already gone).
            assert_eq!(code, Some(0));
            assert!(STEPS.iter().all(|s| marks(&sb, "start", s) == 1));
            continue;
        }
        assert_eq!(code, Some(1), "trial {trial}");
        failed_runs += 1;
        let killed: Vec<&Value> = before
            .values()
            .filter(|s| s["status"] == "failed")
            .collect();
        assert_eq!(killed.len(), 1, "trial {trial}: {before:#?}");
        let error = killed[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("killed by signal 9"),
            "trial {trial}: the failure says why: {error:?}"
        );
        let finished: Vec<String> = before
            .iter()
            .filter(|(_, s)| s["status"] == "succeeded")
            .map(|(n, _)| n.clone())
            .collect();
        let starts: BTreeMap<&str, usize> =
            STEPS.iter().map(|s| (*s, marks(&sb, "start", s))).collect();
        resume(&sb, &run, trial);
        let after = steps_by_name(&sb, &run);
        for step in &finished {
            assert_eq!(
                marks(&sb, "start", step),
                starts[step.as_str()],
                "trial {trial}: finished step {step} ran again"
            );
            assert_eq!(after[step]["outputs"], before[step]["outputs"]);
        }
        let e = after["e"]["outputs"]["out"]["digest"].as_str().unwrap();
        let text = std::fs::read_to_string(sb.blob(e)).unwrap();
        assert_eq!(text, "a\nb\na\nc\nd\ne\n", "trial {trial}");
        verify_blobs(&sb);
    }
    eprintln!("{failed_runs} of {trials} kills failed a step");
    assert!(
        failed_runs * 2 >= trials,
        "only {failed_runs} of {trials} kills landed before the outcome was recorded"
    );
}
