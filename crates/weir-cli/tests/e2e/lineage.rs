//! Lineage: from a model back to the files and dataset versions it was
//! trained on (with digests, params, the Weir that ran it), and from a
//! dataset version forward to the models and endpoints that depend on it,
//! on the command line and over the tracking server's REST API.

use serde_json::Value;

use crate::common::Sandbox;

pub(crate) const PIPELINE: &str = "version: 1\nname: m\nparams: { data: a.csv }\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: \"${{ params.data }}\" }\n  train:\n    uses: weir/train-linear\n    inputs: { train: ingest.table }\n    with: { target: y, features: [x1, x2] }\n  register:\n    uses: weir/register\n    inputs: { model: train.model }\n    with: { name: m }\n";

pub(crate) fn rows(sb: &Sandbox, name: &str, shift: u64) {
    let mut csv = String::from("x1,x2,y\n");
    for i in 0..400u64 {
        let x1 = i % 100 + shift;
        csv.push_str(&format!("{x1},{},{}\n", (i * 7) % 13, u8::from(x1 > 50)));
    }
    sb.write(name, &csv);
}

fn ids(graph: &Value, kind: &str) -> Vec<String> {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == kind)
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn has_edge(graph: &Value, from: &str, to: &str, relation: &str) -> bool {
    graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == from && e["to"] == to && e["relation"] == relation)
}

#[test]
fn lineage_walks_from_models_to_sources_and_from_datasets_to_endpoints() {
    let sb = Sandbox::new();
    rows(&sb, "a.csv", 0);
    rows(&sb, "b.csv", 7);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    sb.ok(&["run", "m.yaml", "-p", "data=b.csv"]);
    sb.ok(&["deploy", "web", "--model", "m", "--version", "1"]);

    // Upstream of version 1: the file it read, by digest, the dataset
    // version ingest made of it, every step, the run's params and Weir.
    let up = sb.json(&["lineage", "m:1", "--upstream"]);
    assert_eq!(up["root"], "model:m:1");
    let files = ids(&up, "file");
    assert_eq!(files.len(), 1, "{up:#}");
    assert!(files[0].starts_with("file:a.csv@"), "{files:?}");
    assert_eq!(ids(&up, "dataset"), ["dataset:m.ingest@1"]);
    assert_eq!(ids(&up, "step").len(), 2, "ingest and train: {up:#}");
    let runs = ids(&up, "run");
    assert_eq!(runs.len(), 1);
    let run = up["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "run")
        .unwrap();
    assert_eq!(run["attributes"]["params"]["data"], "a.csv");
    assert_eq!(
        run["attributes"]["weir_version"],
        env!("CARGO_PKG_VERSION"),
        "{run:#}"
    );
    let ingest = up["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "step" && n["label"] == "ingest")
        .unwrap();
    let ingest = ingest["id"].as_str().unwrap();
    assert!(has_edge(&up, &files[0], ingest, "read"), "{up:#}");
    assert!(has_edge(&up, ingest, "dataset:m.ingest@1", "wrote table"));
    assert!(ids(&up, "deployment").is_empty(), "upstream only");

    // Downstream of the first dataset version: version 1 and the endpoint
    // serving it; not version 2, trained on other data.
    let down = sb.json(&["lineage", "m.ingest@1", "--downstream"]);
    assert_eq!(ids(&down, "model"), ["model:m:1"], "{down:#}");
    assert_eq!(ids(&down, "deployment"), ["deployment:web"]);
    assert!(has_edge(
        &down,
        "model:m:1",
        "deployment:web",
        "serves (stable)"
    ));
    assert!(ids(&down, "file").is_empty(), "downstream only");
    let other = sb.json(&["lineage", "m.ingest@2", "--downstream"]);
    assert_eq!(ids(&other, "model"), ["model:m:2"]);
    assert!(ids(&other, "deployment").is_empty());

    // A run, both ways; people get trees, Graphviz gets dot.
    let run_id = runs[0].strip_prefix("run:").unwrap();
    let both = sb.json(&["lineage", &run_id[..12]]);
    assert_eq!(both["root"], runs[0].as_str());
    assert!(ids(&both, "model").contains(&"model:m:1".to_string()));
    let text = sb.ok(&["lineage", "m:1"]);
    assert!(
        text.contains("upstream (what it came from):")
            && text.contains("read file a.csv @")
            && text.contains("serves (stable) deployment web"),
        "{text}"
    );
    let dot = sb.ok(&["lineage", "m:1", "--dot"]);
    assert!(
        dot.starts_with("digraph lineage {") && dot.contains("\"model:m:1\" -> \"deployment:web\""),
        "{dot}"
    );

    // Unknown references say what would have been understood.
    let err = sb.fails(&["lineage", "nope"]);
    assert!(
        err.contains("'nope' does not exist") && err.contains("DATASET[@VERSION]"),
        "{err}"
    );
    let err = sb.fails(&["lineage", "m:9"]);
    assert!(err.contains("model version 'm/9' does not exist"), "{err}");
    let err = sb.fails(&["lineage", "m.ingest@5"]);
    assert!(err.contains("has versions 1 to 2"), "{err}");
    let err = sb.fails(&["lineage", "m:one"]);
    assert!(err.contains("'one' is not a number"), "{err}");

    // The same graph over REST.
    let server = sb.tracking_server();
    let client = &server.client;
    let base = format!("{}/api/2.0/weir/lineage", server.base);
    let got: Value = client
        .get(format!("{base}?ref=m.ingest@1&direction=downstream"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["nodes"], down["nodes"]);
    let missing = client.get(format!("{base}?ref=nope")).send().unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().unwrap();
    assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");
    let bad = client
        .get(format!("{base}?ref=m:1&direction=sideways"))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[test]
fn a_model_card_says_what_the_model_is_for_how_it_does_by_slice_and_its_limits() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &crate::training::points());
    let pipeline = crate::training::PIPELINE
        .replace(
            "name: gbdt-points\n",
            "name: gbdt-points\ndescription: Flags flights likely to land 15 minutes late, for rebooking desks.\n",
        )
        .replace(
            "    inputs: { model: train.model, table: split.test }\n",
            "    inputs: { model: train.model, table: split.test }\n    with: { slice_by: carrier }\n",
        );
    sb.write("pipeline.yaml", &pipeline);
    sb.ok(&["run", "pipeline.yaml"]);
    sb.ok(&["deploy", "web", "--model", "gbdt-points", "--version", "1"]);
    let card = sb.ok(&["models", "card", "gbdt-points:1", "--html", "card.html"]);
    for part in [
        "# Model card: gbdt-points version 1",
        "## Intended use\n\nFlags flights likely to land 15 minutes late, for rebooking desks.",
        "| Source file | Digest | Bytes |",
        "| data/points.csv |",
        "## Metrics (test set)",
        "| auc |",
        "By carrier:",
        "| carrier | rows |",
        "## Lineage",
        "- train (weir/train-gbdt",
        "## Known limits",
        "web (serves (stable))",
        "Training cost | $",
    ] {
        assert!(card.contains(part), "{part:?} not in\n{card}");
    }
    // Carriers' figures differ: the largest gaps are named, and flagged in the table.
    assert!(
        card.contains("Largest gaps") && card.contains('⚠'),
        "{card}"
    );
    let page = std::fs::read_to_string(sb.path().join("card.html")).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<td class=\"flag\""));
    assert!(!page.contains("<script"), "a card fetches and runs nothing");
    // The card is kept with the version, as artifacts it names.
    let tags = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nprint('\\n'.join(k + '=' + v for k, v in c.execute(\"SELECT key, value FROM model_version_tags WHERE name = 'gbdt-points'\")))",
        ])
        .arg(sb.path().join(".weir/weir.db"))
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    let markdown = tags
        .lines()
        .find_map(|l| l.strip_prefix("weir.card.markdown="))
        .unwrap_or_else(|| panic!("no card tag in {tags}"));
    assert_eq!(std::fs::read_to_string(sb.blob(markdown)).unwrap(), card);
    assert!(tags.contains("weir.card.html="));

    let err = sb.fails(&["models", "card", "gbdt-points:7"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = sb.fails(&["models", "card", "gbdt-points:x"]);
    assert!(err.contains("'x' is not a number"), "{err}");
}

#[test]
fn gates_reject_a_worse_version_against_the_champion_on_the_same_rows() {
    let sb = Sandbox::new();
    sb.write("data/points.csv", &crate::training::points());
    let gated = |rounds: u32, gates: &str| {
        crate::training::PIPELINE
            .replace("num_rounds: 60", &format!("num_rounds: {rounds}"))
            .replace(
                "    inputs: { model: train.model, table: split.test }\n",
                "    inputs: { model: train.model, table: split.test }\n    with: { slice_by: carrier }\n",
            )
            .replace(
                "    inputs: { model: train.model, metrics: evaluate.metrics }\n    with: { name: gbdt-points }\n",
                &format!(
                    "    inputs: {{ model: train.model, metrics: evaluate.metrics, table: split.test }}\n    with:\n      name: gbdt-points\n      gates: [{gates}]\n"
                ),
            )
    };
    let gates =
        "\"test.auc >= champion - 0.002\", \"slice_gap.auc <= 0.9\", \"latency_p99_ms <= 1000\"";
    sb.write("good.yaml", &gated(60, gates));
    sb.write("worse.yaml", &gated(1, gates));
    // No champion yet: the first version passes and becomes champion.
    let out = sb.ok(&["run", "good.yaml"]);
    assert!(out.contains("version 1"), "{out}");
    sb.ok(&["models", "alias", "gbdt-points", "champion", "1"]);
    // One round of boosting scores worse on the same test rows: rejected,
    // but registered, with the reasons.
    sb.ok(&["run", "worse.yaml"]);
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = sb.ok(&["logs", &run, "register"]);
    assert!(
        log.contains("registered as REJECTED") && log.contains("champion is version 1"),
        "{log}"
    );
    assert!(log.contains("gate latency_p99_ms <= 1000: "), "{log}");
    let card = sb.ok(&["models", "card", "gbdt-points:2"]);
    assert!(
        card.contains("## Gates") && card.contains("**failed** ⚠") && card.contains("rejected it"),
        "{card}"
    );
    let err = sb.fails(&["deploy", "web", "--model", "gbdt-points", "--version", "2"]);
    assert!(
        err.contains("rejected by its gates and cannot be deployed to web")
            && err.contains("test.auc"),
        "{err}"
    );
    let err = sb.fails(&["models", "alias", "gbdt-points", "champion", "2"]);
    assert!(err.contains("cannot become champion"), "{err}");
    sb.ok(&["models", "alias", "gbdt-points", "staging", "2"]);

    // A gate on a metric the version lacks fails the step, naming it.
    sb.write("bad.yaml", &gated(60, "\"test.f2 >= 0.5\""));
    let err = sb.fails(&["run", "bad.yaml"]);
    assert!(
        err.contains("no metric 'f2'") && err.contains("auc"),
        "{err}"
    );
    // A gate that does not parse is refused before anything runs.
    sb.write("typo.yaml", &gated(60, "\"test.auc => 0.5\""));
    let err = sb.fails(&["run", "typo.yaml"]);
    assert!(err.contains("with.gates"), "{err}");
}

#[test]
fn a_commands_interpreter_and_lockfiles_are_its_environment() {
    let sb = Sandbox::new();
    sb.write("uv.lock", "version = 1\n");
    sb.write(
        "p.yaml",
        "version: 1\nname: p\nsteps:\n  hello:\n    run: python3 -c \"print('hi')\"\n  plain:\n    uses: weir/ingest\n    with: { path: a.csv }\n",
    );
    rows(&sb, "a.csv", 0);
    sb.ok(&["run", "p.yaml"]);
    let run_id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let graph = sb.json(&["lineage", &run_id, "--upstream"]);
    let hello = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "step" && n["label"] == "hello")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let interpreters = ids(&graph, "interpreter");
    assert_eq!(interpreters.len(), 1, "{graph:#}");
    // Resolved through PATH and symlinks: the python that actually ran.
    let path = interpreters[0].strip_prefix("interpreter:").unwrap();
    assert!(path.starts_with('/') && path.contains("python"), "{path}");
    assert!(has_edge(&graph, &interpreters[0], &hello, "ran with"));
    let lockfiles = ids(&graph, "lockfile");
    assert_eq!(
        lockfiles.len(),
        1,
        "only the command has an environment: {graph:#}"
    );
    let digest = weir_core::Digest::of_bytes(b"version = 1\n").hex();
    assert_eq!(lockfiles[0], format!("lockfile:uv.lock@{digest}"));
    assert!(has_edge(&graph, &lockfiles[0], &hello, "pinned by"));
    let text = sb.ok(&["lineage", &run_id]);
    assert!(text.contains("pinned by lockfile uv.lock @"), "{text}");

    // A changed lockfile is a changed environment: the command runs again.
    sb.write("uv.lock", "version = 2\n");
    sb.ok(&["run", "p.yaml"]);
    let id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &id]);
    let step = crate::common::step(&show, "hello");
    assert_eq!(step["cache_miss"], "lockfile uv.lock changed", "{step:#}");
    assert!(crate::common::step(&show, "plain")["cached_from"].is_string());
}
