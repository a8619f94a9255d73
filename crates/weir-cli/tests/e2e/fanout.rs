//! `foreach:` fan-out: one step instance per item (or per combination of a
//! matrix), run in parallel, and a downstream step that gathers them all.

use crate::common::Sandbox;

#[test]
fn a_matrix_fans_out_and_a_downstream_step_gathers_every_output() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        r#"
version: 1
params: { base: 10 }
steps:
  train:
    run: echo $(( ${{ params.base }} * ${{ item.depth }} + ${{ item.width }} )) > "$WEIR_OUTPUTS_DIR/score"
    foreach: { depth: [1, 2, 3], width: [4, 5] }
    outputs: [score]
  best:
    run: for f in "$WEIR_INPUTS_DIR"/scores/*; do echo "$(cat "$f") $(basename "$f")"; done | sort -n | tail -1 > "$WEIR_OUTPUTS_DIR/winner"
    inputs: { scores: train.score }
    outputs: [winner]
"#,
    );
    let out = sb.weir(&["run", "pipeline.yaml", "--max-parallel", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("run ") && stderr.contains("7 steps"),
        "{stderr}"
    );
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run]);
    let steps = show["steps"].as_array().unwrap();
    let instances: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["step"].as_str())
        .filter(|n| n.starts_with("train["))
        .collect();
    assert_eq!(instances.len(), 6);
    assert!(
        instances.contains(&"train[depth=2,width=5]"),
        "{instances:?}"
    );
    let best = steps.iter().find(|s| s["step"] == "best").unwrap();
    assert_eq!(best["inputs"]["scores"]["from"], "train[*].score");
    assert_eq!(best["inputs"]["scores"]["kind"], "dir");
    let winner = best["outputs"]["winner"]["digest"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(sb.blob(winner)).unwrap(),
        "35 depth=3,width=5\n"
    );

    // A second run is all cache hits, gather included.
    let out = sb.weir(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(" cached (from run").count(), 7, "{stderr}");
}

#[test]
fn foreach_over_something_that_is_not_a_list_is_rejected() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  a:\n    run: echo ${{ item }}\n    foreach: lots\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("pipeline.yaml:5: steps.a.foreach: foreach is \"lots\"; give a list"),
        "{err}"
    );
    sb.write(
        "pipeline.yaml",
        "version: 1\nsteps:\n  a:\n    run: echo ${{ item.x }}\n    foreach: { x: 3 }\n",
    );
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("matrix axis 'x' is 3, not a list"), "{err}");
    assert!(sb.json(&["runs", "list"]).as_array().unwrap().is_empty());
}
