//! The same pipeline and serving path on the team setup: metadata in a fresh
//! PostgreSQL database and artifacts in a real S3-compatible server.
//! PostgreSQL comes from WEIR_TEST_POSTGRES (default: the local server;
//! `off` skips); S3 from WEIR_TEST_S3_ENDPOINT (scripts/test.sh starts one;
//! without it the artifacts stay local, unless WEIR_REQUIRE_S3=1).

use serde_json::json;

use crate::common::{PgDatabase, Sandbox};

#[test]
fn pipeline_and_serving_on_postgres_and_s3() {
    let Some(admin) = crate::common::postgres_admin() else {
        return;
    };
    let db = PgDatabase::create_named(&admin, &format!("weir_e2e_{}", std::process::id()));
    let mut sb = Sandbox::new();
    sb.env.push(("WEIR_DB".into(), db.url()));
    match std::env::var("WEIR_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let bucket =
                std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
            sb.env.push((
                "WEIR_ARTIFACTS".into(),
                format!("s3://{bucket}/e2e-{}", std::process::id()),
            ));
            sb.env.push(("AWS_ENDPOINT_URL".into(), endpoint));
            sb.env.push(("AWS_ACCESS_KEY_ID".into(), "weir".into()));
            sb.env
                .push(("AWS_SECRET_ACCESS_KEY".into(), "weir-secret".into()));
        }
        Err(_) if std::env::var("WEIR_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!("WEIR_REQUIRE_S3=1 but WEIR_TEST_S3_ENDPOINT is not set")
        }
        Err(_) => eprintln!("WEIR_TEST_S3_ENDPOINT is not set: artifacts stay local in this test"),
    }
    let mut csv = String::from("x,colour,y\n");
    for i in 0..400 {
        let colour = ["red", "green", "blue"][i % 3];
        let y = 2.0 * (i as f64 / 40.0)
            + if colour == "red" { 3.0 } else { 0.0 }
            + ((i * 37) % 11) as f64 / 10.0;
        csv.push_str(&format!("{},{colour},{y}\n", i as f64 / 40.0));
    }
    sb.write("data/points.csv", &csv);
    sb.write(
        "pipeline.yaml",
        r#"
version: 1
name: points
steps:
  ingest:
    uses: weir/ingest
    with: { path: data/points.csv }
  check:
    uses: weir/validate
    inputs: { table: ingest.table }
    with: { rules: [ { column: colour, allowed: [red, green, blue] }, { rows: { min: 100 } } ] }
  split:
    uses: weir/split
    inputs: { table: check.table }
    with: { method: stratified, stratify: colour, valid: 0.2, test: 0.2, seed: 3 }
  train:
    uses: weir/train-linear
    inputs: { train: split.train, valid: split.valid }
    with: { target: y, features: [x, colour] }
  evaluate:
    uses: weir/evaluate
    inputs: { model: train.model, table: split.test }
    with: { slice_by: colour }
  register:
    uses: weir/register
    inputs: { model: train.model, metrics: evaluate.metrics }
    with: { name: points }
  report:
    run: ls "$WEIR_INPUTS_DIR" && echo "r2 report done"
    inputs: { metrics: evaluate.metrics }
"#,
    );
    let out = sb.ok(&["run", "pipeline.yaml"]);
    assert!(out.contains("registered model points version 1"), "{out}");
    let run = &sb.json(&["runs", "list"])[0];
    assert_eq!(run["status"], "succeeded");
    let id = run["id"].as_str().unwrap();
    let show = sb.json(&["runs", "show", id]);
    let evaluate = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "evaluate")
        .unwrap();
    assert!(
        evaluate["metrics"]["test.r2"].as_f64().unwrap() > 0.95,
        "{evaluate}"
    );
    assert!(sb.ok(&["logs", id, "report"]).contains("r2 report done"));

    let server = sb.serve(&["points:1"]);
    let (status, body) = server.post(
        "/invocations",
        json!({"dataframe_records": [{"x": 5.0, "colour": "red"}, {"x": 5.0, "colour": "mauve"}]})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let red = body["predictions"][0].as_f64().unwrap();
    let unknown = body["predictions"][1].as_f64().unwrap();
    assert!((red - 13.5).abs() < 0.5, "{red}");
    // An unseen category contributes nothing rather than failing the request.
    assert!(unknown < red, "{unknown} vs {red}");
}
