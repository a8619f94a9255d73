//! Pipelines of `run:` steps in several languages, params, logs, listings,
//! and every kind of bad input, each leaving no half-written state.

use crate::common::{python, step, Sandbox};

fn polyglot(sb: &Sandbox) {
    sb.write(
        "scripts/count.py",
        r#"
import json, os, sys
inp = os.environ["WEIR_INPUTS_DIR"]
out = os.environ["WEIR_OUTPUTS_DIR"]
params = json.load(open(os.environ["WEIR_PARAMS"]))
words = open(os.path.join(inp, "text")).read().split()
os.makedirs(os.path.join(out, "report"))
with open(os.path.join(out, "report", "count.txt"), "w") as f:
    f.write(str(len(words) * params["with"]["factor"]))
with open(os.environ["WEIR_METRICS_FILE"], "a") as m:
    for step, loss in enumerate([0.9, 0.5, 0.25]):
        m.write(json.dumps({"key": "loss", "value": loss, "step": step}) + "\n")
    m.write(json.dumps({"key": "words", "value": len(words)}) + "\n")
print("counted", len(words), "words; scale", params["params"]["scale"])
print("a warning on stderr", file=sys.stderr)
"#,
    );
    sb.write(
        "pipeline.yaml",
        &format!(
            r#"
version: 1
name: polyglot
params: {{ greeting: hello, scale: 2 }}
steps:
  make:
    run: echo "${{{{ params.greeting }}}} weir from shell" > "$WEIR_OUTPUTS_DIR/text"
    outputs: [text]
  count:
    run: {py} scripts/count.py
    inputs: {{ text: make.text }}
    with: {{ factor: "${{{{ params.scale }}}}" }}
    outputs: [report]
  side:
    run: echo independent
"#,
            py = python()
        ),
    );
}

#[test]
fn shell_and_python_steps_run_with_the_step_contract() {
    let sb = Sandbox::new();
    polyglot(&sb);
    let out = sb.weir(&["run", "pipeline.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("✓ make succeeded") && stderr.contains("✓ count succeeded"),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("count") && l.contains("loss") && l.ends_with("0.250000")),
        "{stdout}"
    );

    let runs = sb.json(&["runs", "list"]);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["status"], "succeeded");

    let show = sb.json(&["runs", "show", &id[..8]]);
    assert_eq!(show["params"]["scale"], 2);
    let count = step(&show, "count");
    assert_eq!(count["status"], "succeeded");
    assert_eq!(count["metrics"]["loss"], 0.25);
    assert_eq!(count["metrics"]["words"], 4.0);
    assert_eq!(count["inputs"]["text"]["from"], "make.text");
    assert_eq!(count["outputs"]["report"]["kind"], "dir");
    // The make step's output is the exact bytes the shell wrote.
    let text = step(&show, "make")["outputs"]["text"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(sb.blob(&text)).unwrap(),
        "hello weir from shell\n"
    );

    let logs = sb.ok(&["logs", &id, "count"]);
    assert!(logs.contains("counted 4 words; scale 2"), "{logs}");
    assert!(logs.contains("a warning on stderr"), "{logs}");
    assert!(sb.ok(&["logs", &id, "side"]).contains("independent"));
}

#[test]
fn params_can_be_overridden_and_unknown_ones_are_rejected() {
    let sb = Sandbox::new();
    polyglot(&sb);
    sb.ok(&[
        "run",
        "pipeline.yaml",
        "-p",
        "greeting=bonjour",
        "-p",
        "scale=3",
    ]);
    let id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &id]);
    let text = step(&show, "make")["outputs"]["text"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::fs::read_to_string(sb.blob(&text))
        .unwrap()
        .starts_with("bonjour"));
    assert!(sb
        .ok(&["logs", &id, "count"])
        .contains("counted 4 words; scale 3"));

    let err = sb.fails(&["run", "pipeline.yaml", "-p", "colour=red"]);
    assert!(err.contains("'colour' is not a param"), "{err}");
    assert!(err.contains("declared params: [greeting, scale]"), "{err}");
}

#[test]
fn a_failing_step_fails_the_run_skips_downstream_and_keeps_its_log() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  boom:\n    run: echo about to fail; exit 3\n    outputs: [x]\n  after:\n    run: cat $WEIR_INPUTS_DIR/x\n    inputs: { x: boom.x }\n",
    );
    let out = sb.weir(&["run", "pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    assert!(stderr.contains("about to fail"), "{stderr}");
    assert!(stderr.contains("weir logs"), "{stderr}");

    let run = &sb.json(&["runs", "list"])[0];
    assert_eq!(run["status"], "failed");
    let show = sb.json(&["runs", "show", run["id"].as_str().unwrap()]);
    let boom = step(&show, "boom");
    assert_eq!(
        (boom["status"].as_str(), boom["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert!(boom["outputs"].as_object().unwrap().is_empty());
    assert_eq!(step(&show, "after")["status"], "skipped");
    assert!(sb
        .ok(&["logs", run["id"].as_str().unwrap(), "boom"])
        .contains("about to fail"));
}

#[test]
fn a_step_that_does_not_write_a_declared_output_fails() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  lazy:\n    run: echo done\n    outputs: [model]\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("declared the output 'model' but did not write it"),
        "{err}"
    );
}

/// No run row, no artifact: the database and artifact store are as before.
fn assert_nothing_recorded(sb: &Sandbox) {
    let runs = sb.json(&["runs", "list"]);
    assert!(runs.as_array().unwrap().is_empty(), "{runs}");
    assert!(sb.blobs().is_empty(), "{:?}", sb.blobs());
}

#[test]
fn malformed_yaml_is_reported_with_file_and_line_before_anything_runs() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  a:\n    run: echo hi\n   outputs: [x\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("pipeline.yaml:"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_nothing_recorded(&sb);
}

#[test]
fn unknown_fields_cycles_and_dangling_references_are_rejected_before_running() {
    let sb = Sandbox::new();
    sb.write(
        "typo.yaml",
        "version: 1\nsteps:\n  a:\n    run: echo\n    ouputs: [x]\n",
    );
    let err = sb.fails(&["run", "typo.yaml"]);
    assert!(
        err.contains("typo.yaml:5") && err.contains("ouputs"),
        "{err}"
    );

    sb.write(
        "cycle.yaml",
        "version: 1\nsteps:\n  a:\n    run: x\n    inputs: { i: b.o }\n    outputs: [o]\n  b:\n    run: y\n    inputs: { i: a.o }\n    outputs: [o]\n",
    );
    let err = sb.fails(&["run", "cycle.yaml"]);
    assert!(err.contains("steps form a cycle"), "{err}");

    sb.write(
        "dangling.yaml",
        "version: 1\nsteps:\n  a:\n    run: x\n    inputs: { i: ghost.o }\n",
    );
    let err = sb.fails(&["run", "dangling.yaml"]);
    assert!(
        err.contains("dangling.yaml:5: steps.a.inputs.i: unknown step 'ghost'"),
        "{err}"
    );
    assert_nothing_recorded(&sb);
}

#[test]
fn a_missing_input_file_is_reported_before_anything_runs() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: data/nope.csv }\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("pipeline.yaml:4: steps.ingest.with: input file"),
        "{err}"
    );
    assert!(err.contains("data/nope.csv does not exist"), "{err}");
    assert_nothing_recorded(&sb);
    let err = sb.fails(&["run", "missing.yaml"]);
    assert!(
        err.contains("cannot read pipeline file missing.yaml"),
        "{err}"
    );
}

#[test]
fn a_typo_in_an_op_option_is_reported_before_anything_runs() {
    let sb = Sandbox::new();
    sb.write("d.csv", "a,b\n1,2\n");
    sb.write("pipeline.yaml", "version: 1\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: d.csv, nul: [NA] }\n");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("unknown field `nul`"), "{err}");
    assert_nothing_recorded(&sb);
}

fn ingest_pipeline(sb: &Sandbox, csv: &str, with: &str) {
    sb.write("data.csv", csv);
    sb.write(
        "pipeline.yaml",
        &format!("version: 1\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: {{ path: data.csv{with} }}\n"),
    );
}

/// A failed ingest records a failed run with its log, but no table artifact.
fn assert_no_table(sb: &Sandbox) {
    let run = &sb.json(&["runs", "list"])[0];
    assert_eq!(run["status"], "failed");
    let show = sb.json(&["runs", "show", run["id"].as_str().unwrap()]);
    let ingest = step(&show, "ingest");
    assert!(ingest["outputs"].as_object().unwrap().is_empty());
    // The only blob stored is the step's log.
    assert_eq!(sb.blobs().len(), 1);
    assert_eq!(
        sb.blobs()[0].file_name().unwrap().to_str(),
        ingest["log_digest"].as_str()
    );
}

#[test]
fn a_csv_with_ragged_rows_fails_with_the_line() {
    let sb = Sandbox::new();
    ingest_pipeline(&sb, "a,b,c\n1,2,3\n4,5\n", "");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("data.csv"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("as many fields as the header"), "{err}");
    assert_no_table(&sb);
}

#[test]
fn a_csv_with_unparsable_values_fails_with_the_value_and_line() {
    let sb = Sandbox::new();
    ingest_pipeline(&sb, "a,b\n1,2\nseven,3\n", ", schema: { a: int64 }");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("'seven'") && err.contains("line 3"), "{err}");
    assert_no_table(&sb);
}

fn validate_pipeline(sb: &Sandbox, rules: &str) {
    sb.write(
        "data.csv",
        "id,delay,carrier\n1,5,UA\n2,NA,AA\n2,-900,ZZ\n4,30,UA\n",
    );
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: {{ path: data.csv }}\n  check:\n    uses: weir/validate\n    inputs: {{ table: ingest.table }}\n    with:\n      rules:\n{rules}"
        ),
    );
}

#[test]
fn validation_failures_list_every_violated_rule() {
    let sb = Sandbox::new();
    validate_pipeline(
        &sb,
        "        - { column: id, unique: true }\n        - { column: delay, not_null: true, min: -60 }\n        - { column: carrier, allowed: [UA, AA] }\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("data validation failed: 4 of 4 rules violated on 4 rows"),
        "{err}"
    );
    assert!(
        err.contains("id: unique: 1 rows (e.g. row 2 = \"2\")"),
        "{err}"
    );
    assert!(err.contains("delay: not_null: 1 rows"), "{err}");
    assert!(
        err.contains("delay: >= -60: 1 rows (e.g. row 2 = \"-900\")"),
        "{err}"
    );
    assert!(
        err.contains("carrier: allowed values [UA, AA]: 1 rows (e.g. row 2 = \"ZZ\")"),
        "{err}"
    );
}

#[test]
fn a_rule_naming_an_unknown_column_is_a_clear_error() {
    let sb = Sandbox::new();
    validate_pipeline(&sb, "        - { column: carier, not_null: true }\n");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("with.rules[0]: unknown column 'carier'"),
        "{err}"
    );
    assert!(
        err.contains("available columns: id, delay, carrier"),
        "{err}"
    );
}

#[test]
fn config_shows_values_and_their_sources() {
    let sb = Sandbox::new();
    sb.write("weir.toml", "max_parallel = 3\n");
    let out = sb
        .command(&["config"])
        .env("WEIR_SERVE_ADDR", "127.0.0.1:9999")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("max_parallel ") && l.split_whitespace().nth(1) == Some("3")),
        "{text}"
    );
    assert!(text.contains("weir.toml"), "{text}");
    assert!(
        text.contains("127.0.0.1:9999") && text.contains("env WEIR_SERVE_ADDR"),
        "{text}"
    );
    let json = sb.json(&["config", "--db", "sqlite://elsewhere.db"]);
    assert_eq!(json["db"]["value"], "sqlite://elsewhere.db");
    assert_eq!(json["db"]["source"]["kind"], "flag");
    assert_eq!(json["home"]["source"]["kind"], "default");

    sb.write("weir.toml", "max_paralel = 3\n");
    let err = sb.fails(&["config"]);
    assert!(
        err.contains("max_paralel") && err.contains("valid keys are"),
        "{err}"
    );
}

#[test]
fn listings_speak_json_and_unknown_ids_are_clear() {
    let sb = Sandbox::new();
    assert_eq!(sb.json(&["runs", "list"]), serde_json::json!([]));
    assert_eq!(sb.json(&["models", "list"]), serde_json::json!([]));
    let err = sb.fails(&["runs", "show", "abcdef"]);
    assert!(
        err.contains("run 'abcdef' does not exist") && err.contains("weir runs list"),
        "{err}"
    );
    let err = sb.fails(&["models", "show", "ghost"]);
    assert!(err.contains("model 'ghost' does not exist"), "{err}");
}

#[test]
fn an_interrupted_run_is_recorded_as_failed_and_leaves_no_process_behind() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  slow:\n    run: echo $$ > \"$WEIR_RUN_ID.pid\"; sleep 60\n  after:\n    run: echo never\n    inputs: {}\n",
    );
    let mut child = sb
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid_file = loop {
        let found = std::fs::read_dir(sb.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "pid"));
        if let Some(p) =
            found.filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.ends_with('\n')))
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let step_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Gone, or a zombie waiting for init to reap it: either way, not running.
    let state = std::fs::read_to_string(format!("/proc/{step_pid}/stat")).unwrap_or_default();
    let running = state
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'));
    assert!(
        !running,
        "the step's command survived the interrupted run: {state}"
    );
    let run = &sb.json(&["runs", "list"])[0];
    assert_eq!(run["status"], "failed");
    assert!(
        run["error"].as_str().unwrap().contains("cancelled"),
        "{run}"
    );
    let show = sb.json(&["runs", "show", run["id"].as_str().unwrap()]);
    assert!(step(&show, "slow")["error"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
}

#[test]
fn output_to_a_reader_that_already_left_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new();
    // `weir models list | head -0`: the reading end is gone before the first write.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = sb
        .command(&["models", "list"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {stderr}", out.status);
}

#[test]
fn a_command_step_writes_its_outputs_when_the_pipeline_lives_in_another_directory() {
    // The home (.weir) is relative to where weir runs, the command runs in
    // the pipeline's directory: the contract's paths must hold there too.
    let sb = Sandbox::new();
    sb.write(
        "project/pipeline.yaml",
        "version: 1\nname: elsewhere\nsteps:\n  a:\n    run: echo hi > \"$WEIR_OUTPUTS_DIR/x\"\n    outputs: [x]\n  b:\n    run: cat \"$WEIR_INPUTS_DIR/x\"\n    inputs: { x: a.x }\n",
    );
    let out = sb.ok(&["run", "project/pipeline.yaml"]);
    assert!(out.contains("succeeded"), "{out}");
}

#[test]
fn logs_show_a_running_step_and_follow_it_to_the_end() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: chatty\nsteps:\n  talk:\n    run: echo \"first $((6*7))\"; while [ ! -e go ]; do sleep 0.1; done; echo \"second $((6*8))\"\n",
    );
    let mut runner = sb
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The step runs on; its first line shows within a couple of seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let run = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the running step's log never showed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Some(run) = sb.json(&["runs", "list"])[0]["id"]
            .as_str()
            .map(String::from)
        else {
            continue;
        };
        let out = sb.command(&["logs", &run, "talk"]).output().unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("first 42") {
            assert!(!String::from_utf8_lossy(&out.stdout).contains("second 48"));
            break run;
        }
    };
    let follower = sb
        .command(&["logs", "--follow", &run, "talk"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    sb.write("go", "");
    assert!(runner.wait().unwrap().success());
    // Following ends with the step, every line printed once.
    let out = follower.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("first 42").count(), 1, "{text}");
    assert_eq!(text.matches("second 48").count(), 1, "{text}");
    assert_eq!(text, sb.ok(&["logs", &run, "talk"]), "the stored log");
}
