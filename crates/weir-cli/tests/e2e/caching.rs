//! Exact caching: a step whose kind, command, params, inputs, code files and
//! environment are unchanged reuses its earlier outputs; change one byte and
//! exactly the steps downstream of it run again, each saying why.

use std::collections::BTreeMap;

use crate::common::{python, Sandbox};

fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("data.csv", "x,y\n1,2\n3,4\n");
    sb.write("notes.txt", "unrelated\n");
    sb.write(
        "scripts/prep.py",
        "import hashlib, os\nsrc = os.path.join(os.environ['WEIR_INPUTS_DIR'], 'table')\nopen(os.path.join(os.environ['WEIR_OUTPUTS_DIR'], 'out'), 'w').write(hashlib.sha256(open(src, 'rb').read()).hexdigest())\n",
    );
    sb.write(
        "pipeline.yaml",
        &format!(
            r#"
version: 1
name: cached
params: {{ tag: one }}
steps:
  ingest:
    uses: weir/ingest
    with: {{ path: data.csv }}
  prep:
    run: {py} scripts/prep.py
    code: [scripts/*.py]
    inputs: {{ table: ingest.table }}
    outputs: [out]
  other:
    run: echo ${{{{ params.tag }}}} > "$WEIR_OUTPUTS_DIR/out"
    outputs: [out]
  final:
    run: cat "$WEIR_INPUTS_DIR/p" "$WEIR_INPUTS_DIR/o" > "$WEIR_OUTPUTS_DIR/out"
    inputs: {{ p: prep.out, o: other.out }}
    outputs: [out]
  always:
    run: echo side effect
    cache: false
"#,
            py = python()
        ),
    );
    sb
}

/// Runs the pipeline and returns, per step, "cached" or the reason it ran.
fn run(sb: &Sandbox, extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["run", "pipeline.yaml"];
    args.extend_from_slice(extra);
    let out = sb.weir(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let mut states = BTreeMap::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("✓ ") {
            let (step, what) = rest.split_once(' ').unwrap();
            if what.starts_with("cached") {
                states.insert(step.to_string(), "cached".to_string());
            }
        } else if let Some(rest) = line.strip_prefix("▸ ") {
            let (step, what) = rest.split_once(' ').unwrap();
            let reason = what.trim_start_matches("running (").trim_end_matches(')');
            states.insert(step.to_string(), reason.to_string());
        }
    }
    states
}

fn expect(states: &BTreeMap<String, String>, expected: &[(&str, &str)]) {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(states, &expected);
}

#[test]
fn exactly_the_affected_steps_run_again_and_say_why() {
    let sb = project();
    let first = run(&sb, &[]);
    assert_eq!(first["always"], "caching is off for this step");
    assert!(
        first
            .iter()
            .filter(|(s, _)| *s != "always")
            .all(|(_, r)| r == "no earlier run"),
        "{first:?}"
    );

    expect(
        &run(&sb, &[]),
        &[
            ("ingest", "cached"),
            ("prep", "cached"),
            ("other", "cached"),
            ("final", "cached"),
            ("always", "caching is off for this step"),
        ],
    );

    // An unrelated file changes: nothing runs again.
    sb.write("notes.txt", "still unrelated, but different\n");
    let states = run(&sb, &[]);
    assert_eq!(
        states.values().filter(|s| *s == "cached").count(),
        4,
        "{states:?}"
    );

    // One byte of the data: the ingest and everything downstream of it.
    sb.write("data.csv", "x,y\n1,2\n3,5\n");
    expect(
        &run(&sb, &[]),
        &[
            ("ingest", "source data.csv changed"),
            ("prep", "input table changed"),
            ("other", "cached"),
            ("final", "input p changed"),
            ("always", "caching is off for this step"),
        ],
    );

    // The code of one step.
    sb.write(
        "scripts/prep.py",
        &format!(
            "{}\n# a comment\n",
            std::fs::read_to_string(sb.path().join("scripts/prep.py")).unwrap()
        ),
    );
    let states = run(&sb, &[]);
    assert_eq!(states["prep"], "code scripts/prep.py changed");
    // prep's output is the same bytes, so final is still a hit.
    assert_eq!(
        (states["ingest"].as_str(), states["final"].as_str()),
        ("cached", "cached")
    );

    // A param.
    let states = run(&sb, &["-p", "tag=two"]);
    assert_eq!(states["other"], "command changed");
    assert_eq!(states["final"], "input o changed");
    assert_eq!(states["prep"], "cached");

    // --no-cache runs everything.
    let states = run(&sb, &["-p", "tag=two", "--no-cache"]);
    assert!(
        states
            .values()
            .all(|r| r == "--no-cache" || r == "caching is off for this step"),
        "{states:?}"
    );
}

#[test]
fn a_cache_entry_whose_artifact_is_gone_runs_again() {
    let sb = project();
    run(&sb, &[]);
    let id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &id]);
    let other = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "other")
        .unwrap();
    let digest = other["outputs"]["out"]["digest"].as_str().unwrap();
    std::fs::remove_file(sb.blob(digest)).unwrap();
    let states = run(&sb, &[]);
    assert_eq!(
        states["other"],
        "its cached outputs are missing from the artifact store"
    );
    assert_eq!(states["prep"], "cached");
    assert_eq!(
        states["final"], "cached",
        "other wrote the same bytes again"
    );
    assert!(sb.blob(digest).exists(), "the re-run restored the blob");
}

#[test]
fn a_code_glob_that_matches_nothing_is_a_warning_naming_it() {
    let sb = project();
    let text = std::fs::read_to_string(sb.path().join("pipeline.yaml")).unwrap();
    sb.write(
        "pipeline.yaml",
        &text.replace("code: [scripts/*.py]", "code: [scripts/*.py, src/**/*.rs]"),
    );
    let out = sb.weir(&["run", "pipeline.yaml"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: steps.prep.code: 'src/**/*.rs' matches no file"),
        "{stderr}"
    );
}
