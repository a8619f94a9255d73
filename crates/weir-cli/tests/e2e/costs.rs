//! Resource accounting, prices and budgets: every step attempt and trial is
//! measured and priced; budgets stop the work that would exceed them.

use serde_json::{json, Value};

use crate::common::Sandbox;
use crate::training::{points, tuned};

/// A price table where one CPU-second costs a dollar and everything else is
/// free, so a cost reads as the CPU seconds it paid for.
fn dollar_a_cpu_second(spot_cpu_hour: f64) -> String {
    format!(
        "[prices]\ncpu_hour = 3600\ngib_hour = 0\ngpu_hour = 0\nspot_cpu_hour = {spot_cpu_hour}\n\
         spot_gib_hour = 0\nspot_gpu_hour = 0\nstorage_gib_month = 0\negress_gib = 0\n"
    )
}

fn latest_run(sb: &Sandbox) -> String {
    sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn usage_of<'a>(cost: &'a Value, step: &str, trial: Option<i64>) -> Vec<&'a Value> {
    cost["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["step"] == step && u["trial"] == json!(trial))
        .collect()
}

const BUSY: &str =
    "python3 -c \"import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\"";

#[test]
fn every_attempt_and_trial_is_measured_and_priced() {
    let sb = Sandbox::new();
    sb.write("weir.toml", &dollar_a_cpu_second(0.0));
    sb.write("data/points.csv", &points());
    let tune = "    tune:\n      space:\n        learning_rate: loguniform(0.05, 0.5)\n      \
                objective: { metric: valid.auc, goal: maximize }\n      trials: 3\n      \
                parallel: 1\n      sampler: random\n";
    // A command step's children are measured too; a preemptible one pays spot
    // prices (free CPU here).
    let pipeline = tuned(tune).replace(
        "  evaluate:\n",
        &format!(
            "  busy:\n    run: {BUSY:?}\n  spot:\n    run: {BUSY:?}\n    preemptible: true\n  evaluate:\n"
        ),
    );
    sb.write("pipeline.yaml", &pipeline);
    sb.ok(&["run", "pipeline.yaml"]);
    let run = latest_run(&sb);
    let cost = sb.json(&["cost", &run]);

    for step in [
        "ingest", "split", "train", "busy", "spot", "evaluate", "register",
    ] {
        let attempts = usage_of(&cost, step, None);
        assert_eq!(attempts.len(), 1, "{step}: {cost:#}");
        let u = attempts[0];
        assert_eq!(u["attempt"], 1);
        assert_eq!(u["status"], "succeeded");
        assert_eq!(u["billed"], true);
        assert!(u["wall_seconds"].as_f64().unwrap() > 0.0, "{u}");
        assert!(u["max_rss_bytes"].as_u64().unwrap() > 1 << 20, "{u}");
        // Paid for the larger of one reserved CPU and the CPU it used.
        let paid = u["cost_by"]["cpu"].as_f64().unwrap();
        let cpu = u["cpu_seconds"].as_f64().unwrap();
        let wall = u["wall_seconds"].as_f64().unwrap();
        if step != "spot" {
            assert!(paid >= cpu.max(wall) * 0.99, "{step}: {u}");
        }
    }
    let busy = usage_of(&cost, "busy", None)[0];
    assert!(busy["cpu_seconds"].as_f64().unwrap() >= 0.3, "{busy}");
    let spot = usage_of(&cost, "spot", None)[0];
    assert_eq!(spot["spot"], true);
    assert_eq!(spot["cost"], 0.0, "spot CPU is free in this table: {spot}");
    // Ingest wrote its table to the artifact store; evaluate read the model.
    assert!(
        usage_of(&cost, "ingest", None)[0]["bytes_written"]
            .as_u64()
            .unwrap()
            > 1000
    );
    assert!(
        usage_of(&cost, "evaluate", None)[0]["bytes_read"]
            .as_u64()
            .unwrap()
            > 1000
    );

    // Trials are measured one by one, inside the study's own attempt.
    let trials: Vec<&Value> = cost["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["trial"].is_number())
        .collect();
    assert_eq!(trials.len(), 3, "{cost:#}");
    let trial_cpu: f64 = trials
        .iter()
        .map(|t| t["cpu_seconds"].as_f64().unwrap())
        .sum();
    let train = usage_of(&cost, "train", None)[0];
    assert!(trials
        .iter()
        .all(|t| t["billed"] == false && t["cpu_seconds"].as_f64().unwrap() > 0.0));
    assert!(
        trial_cpu <= train["cpu_seconds"].as_f64().unwrap(),
        "{cost:#}"
    );

    let billed: f64 = cost["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["billed"] == true)
        .map(|u| u["cost"].as_f64().unwrap())
        .sum();
    let total = cost["cost"].as_f64().unwrap();
    assert!(
        (total - billed).abs() < 1e-9 && total > 0.5,
        "{total} vs {billed}"
    );
    assert_eq!(cost["models"][0]["name"], "gbdt-points");
    // The version's lineage says what training it cost.
    let version = sb.json(&["models", "show", "gbdt-points", "--version", "1"]);
    assert!(
        (version["training_cost"].as_f64().unwrap() - total).abs() < 1e-9,
        "{version:#}"
    );

    // The same figures through runs show, and grouped.
    let show = sb.json(&["runs", "show", &run]);
    assert_eq!(show["cost"], cost["cost"]);
    let train_show = crate::common::step(&show, "train");
    assert_eq!(train_show["usage"].as_array().unwrap().len(), 4);
    let by_model = sb.json(&["cost", "--by", "model"]);
    assert_eq!(by_model["groups"][0]["key"], "gbdt-points:1");
    assert!((by_model["groups"][0]["cost"].as_f64().unwrap() - total).abs() < 1e-9);
    let by_step = sb.json(&["cost", "--by", "step"]);
    let keys: Vec<&str> = by_step["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"gbdt-points/train"), "{keys:?}");
    assert!((by_step["total"].as_f64().unwrap() - total).abs() < 1e-9);
    let text = sb.ok(&["runs", "show", &run]);
    assert!(
        text.contains("train trial 2") && text.contains("MAX RSS"),
        "{text}"
    );

    // A cached re-run pays only for what ran again (registering).
    sb.ok(&["run", "pipeline.yaml"]);
    let again = sb.json(&["cost", &latest_run(&sb)]);
    let ran: Vec<&Value> = again["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["step"])
        .collect();
    assert_eq!(ran, [&json!("register")], "{again:#}");

    // A replica's serving cost over its requests, on /metrics and in the store.
    let server = sb.serve(&["gbdt-points"]);
    for _ in 0..20 {
        let (status, body) = server.post(
            "/invocations",
            json!({"dataframe_records": [{"x": 1.5, "z": 0.2, "carrier": "UA"}]}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
    }
    let mut server = server;
    // SIGTERM: the replica records its usage as it stops.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert!(server.child.wait().unwrap().success());
    let endpoints = sb.json(&["cost", "--by", "endpoint"]);
    let mine = &endpoints[0];
    assert_eq!(mine["serves"], "gbdt-points", "{endpoints:#}");
    assert_eq!(mine["requests"], 20);
    let per_1k = mine["cost_per_1000"].as_f64().unwrap();
    assert!(per_1k > 0.0 && (per_1k - mine["cost"].as_f64().unwrap() * 50.0).abs() < 1e-9);
}

#[test]
fn a_run_budget_stops_the_step_that_would_exceed_it() {
    let sb = Sandbox::new();
    sb.write("weir.toml", &dollar_a_cpu_second(3600.0));
    let first = format!("{BUSY} && echo a > \"$WEIR_OUTPUTS_DIR/a\"");
    let pipeline = format!(
        "version: 1\nname: thrifty\nbudget: {{ cost: \"$0.05\" }}\nsteps:\n  first:\n    run: {first:?}\n    \
         outputs: [a]\n  second:\n    run: {BUSY:?}\n    inputs: {{ a: first.a }}\n"
    );
    sb.write("pipeline.yaml", &pipeline);
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains(
            "budget: step 'second' not started: the run's budget is $0.0500 and it has spent $"
        ),
        "{err}"
    );
    let show = sb.json(&["runs", "show", &latest_run(&sb)]);
    assert_eq!(crate::common::step(&show, "first")["status"], "succeeded");
    let second = crate::common::step(&show, "second");
    assert_eq!(second["status"], "skipped", "{show:#}");
    assert!(second["usage"].as_array().unwrap().is_empty());
    assert!(show["cost"].as_f64().unwrap() >= 0.3);

    // Bad budgets are named where they are written.
    sb.write(
        "bad.yaml",
        "version: 1\nbudget: { cost: lots }\nsteps:\n  a:\n    run: \"true\"\n",
    );
    let err = sb.fails(&["run", "bad.yaml"]);
    assert!(
        err.contains("budget.cost") && err.contains("is not an amount of money"),
        "{err}"
    );
}

#[test]
fn a_study_budget_stops_sampling_and_one_smaller_than_a_trial_fails() {
    let sb = Sandbox::new();
    sb.write("weir.toml", &dollar_a_cpu_second(0.0));
    sb.write("data/points.csv", &points());
    let tune = |cost: &str| {
        format!(
            "    tune:\n      space:\n        learning_rate: loguniform(0.05, 0.5)\n      \
             objective: {{ metric: valid.auc, goal: maximize }}\n      budget: {{ cost: \"{cost}\", time: 2m }}\n      \
             parallel: 1\n      sampler: random\n"
        )
    };
    sb.write("tiny.yaml", &tuned(&tune("$0.0000001")));
    let err = sb.fails(&["run", "tiny.yaml"]);
    assert!(err.contains("is smaller than one trial"), "{err}");
    let run = latest_run(&sb);
    let cost = sb.json(&["cost", &run]);
    assert_eq!(usage_of(&cost, "train", Some(0)).len(), 1);
    assert!(usage_of(&cost, "train", Some(1)).is_empty(), "{cost:#}");
    let mean = usage_of(&cost, "train", Some(0))[0]["cost"]
        .as_f64()
        .unwrap();

    // Room for about four trials of that size: the study stops by itself.
    let budget = 4.5 * mean;
    sb.write("four.yaml", &tuned(&tune(&format!("${budget}"))));
    sb.ok(&["run", "four.yaml"]);
    let run = latest_run(&sb);
    let cost = sb.json(&["cost", &run]);
    let trials: Vec<f64> = cost["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["trial"].is_number())
        .map(|u| u["cost"].as_f64().unwrap())
        .collect();
    let spent: f64 = trials.iter().sum();
    let largest = trials.iter().cloned().fold(0.0, f64::max);
    assert!(trials.len() >= 2 && trials.len() < 40, "{trials:?}");
    assert!(
        spent <= budget + largest,
        "{spent} > {budget} + {largest}: {trials:?}"
    );
    let log = sb.ok(&["logs", &run, "train"]);
    assert!(
        log.contains("study: budget $") && log.contains("reached"),
        "{log}"
    );
}

#[test]
fn price_tables_and_monthly_budgets_are_checked() {
    let sb = Sandbox::new();
    sb.write(
        "pipeline.yaml",
        &format!("version: 1\nname: monthly\nsteps:\n  a:\n    run: {BUSY:?}\n    cache: false\n"),
    );
    let negative = dollar_a_cpu_second(0.0).replace("gib_hour = 0\n", "gib_hour = -1\n");
    sb.write("weir.toml", &negative);
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("gib_hour = -1 is negative"), "{err}");
    let missing = dollar_a_cpu_second(0.0).replace("egress_gib = 0\n", "");
    sb.write("weir.toml", &missing);
    let err = sb.fails(&["cost", "--prices"]);
    assert!(err.contains("missing 'egress_gib'"), "{err}");

    sb.write("weir.toml", &dollar_a_cpu_second(0.0));
    let shown = sb.json(&["cost", "--prices"]);
    assert_eq!(shown["prices"]["cpu_hour"], 3600.0);
    sb.ok(&["run", "pipeline.yaml"]);
    let spent = sb.json(&["cost"])["total"].as_f64().unwrap();
    assert!(spent >= 0.3, "{spent}");
    // 90 % spent: a warning, and the run goes ahead.
    sb.write(
        "weir.toml",
        &format!(
            "{}[budgets]\nmonthly = {{ monthly = {} }}\n",
            dollar_a_cpu_second(0.0),
            spent / 0.9
        ),
    );
    let out = sb.weir(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("of its monthly budget"), "{stderr}");
    // Spent in full: the next run is refused before it starts.
    let runs = sb.json(&["runs", "list"]).as_array().unwrap().len();
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(err.contains("its whole monthly budget"), "{err}");
    assert_eq!(sb.json(&["runs", "list"]).as_array().unwrap().len(), runs);
    let text = sb.ok(&["cost"]);
    assert!(text.contains("budget monthly:"), "{text}");
}
