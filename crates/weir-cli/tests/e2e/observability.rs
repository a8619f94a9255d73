//! Logs for machines: `WEIR_LOG_FORMAT=json` writes one JSON object per
//! line, with the fields of the spans the event happened in.

use serde_json::Value;

use crate::common::Sandbox;

#[test]
fn json_logs_are_one_object_per_line_with_their_spans() {
    let mut sb = Sandbox::new();
    sb.env.push(("WEIR_LOG".into(), "info".into()));
    sb.env.push(("WEIR_LOG_FORMAT".into(), "json".into()));
    sb.write(
        "p.yaml",
        "version: 1\nname: logged\nsteps:\n  hello:\n    run: echo hi\n",
    );
    let out = sb.weir(&["run", "p.yaml", "--json"]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let launch = lines
        .iter()
        .find(|l| l["fields"]["message"] == "launching step")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(launch["level"], "INFO");
    assert_eq!(launch["fields"]["step"], "hello");
    assert_eq!(launch["span"]["pipeline"], "logged");
    assert!(launch["timestamp"].is_string());

    sb.env.pop();
    sb.env.push(("WEIR_LOG_FORMAT".into(), "xml".into()));
    let out = sb.weir(&["runs", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("WEIR_LOG_FORMAT='xml' is not a log format"),
        "{err}"
    );
}
