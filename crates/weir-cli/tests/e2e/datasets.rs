//! Datasets: an ingest's table (or any output marked `datasets:`) becomes a
//! version of a named dataset, with its schema and profile; versions are
//! compared (`weir datasets diff`) and `schema.evolution` refuses the
//! changes it does not allow, recording nothing.

use crate::common::Sandbox;
use serde_json::Value;

/// `rows` rows of id, x (shifted by `shift`), cat and, unless `drop_cat`,
/// a categorical column; `rename` renames x.
fn data(sb: &Sandbox, rows: usize, shift: f64, drop_cat: bool, x_name: &str) {
    let mut csv = format!("id,{x_name}{}\n", if drop_cat { "" } else { ",cat" });
    for i in 0..rows {
        let x = (i % 100) as f64 + shift;
        match drop_cat {
            true => csv.push_str(&format!("{i},{x}\n")),
            false => csv.push_str(&format!("{i},{x},{}\n", ["a", "b", "c"][i % 3])),
        }
    }
    sb.write("data.csv", &csv);
}

fn pipeline(sb: &Sandbox, schema: &str) {
    sb.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nname: shop\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: {{ path: data.csv }}\n{schema}  check:\n    uses: weir/validate\n    inputs: {{ table: ingest.table }}\n    with: {{ rules: [{{ column: id, not_null: true }}] }}\n    datasets: {{ table: shop/clean }}\n"
        ),
    );
}

fn versions(sb: &Sandbox) -> Vec<(String, i64, i64)> {
    sb.json(&["datasets", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["versions"].as_i64().unwrap(),
                d["latest"]["rows"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn column<'a>(profile: &'a Value, name: &str) -> &'a Value {
    profile["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no column {name} in {profile}"))
}

#[test]
fn ingests_make_versions_with_profiles_that_diff_and_schema_policies_refuse() {
    let sb = Sandbox::new();
    data(&sb, 3000, 0.0, false, "x");
    pipeline(&sb, "");
    sb.ok(&["run", "pipeline.yaml"]);
    assert_eq!(
        versions(&sb),
        [
            ("shop.ingest".to_string(), 1, 3000),
            ("shop/clean".to_string(), 1, 3000)
        ]
    );
    let shown = sb.json(&["datasets", "show", "shop.ingest"]);
    let profile = &shown["profile"];
    assert_eq!(profile["rows"], 3000);
    let x = column(profile, "x");
    assert_eq!(x["kind"], "numeric");
    assert_eq!(x["numeric"]["min"], 0.0);
    assert_eq!(x["numeric"]["max"], 99.0);
    assert_eq!(x["numeric"]["mean"], 49.5);
    assert_eq!(x["distinct"], 100);
    assert_eq!(x["numeric"]["percentiles"].as_array().unwrap().len(), 101);
    let cat = column(profile, "cat");
    assert_eq!(cat["kind"], "text");
    assert_eq!(cat["top"]["values"][0], serde_json::json!(["a", 1000]));
    let text = sb.ok(&["datasets", "show", "shop.ingest"]);
    assert!(
        text.contains("shop.ingest@1: 3000 rows x 3 columns") && text.contains("a (1000)"),
        "{text}"
    );
    // The run's log says what the dataset got.
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = sb.ok(&["logs", &run, "ingest"]);
    assert!(
        log.contains("dataset shop.ingest: 3000 rows x 3 columns, its first version"),
        "{log}"
    );

    // The same content again is the same version.
    sb.ok(&["run", "pipeline.yaml", "--no-cache"]);
    assert_eq!(versions(&sb)[0], ("shop.ingest".to_string(), 1, 3000));

    // New data: x moves by 30 and `cat` is gone. The default policy reports
    // the change and keeps the version.
    data(&sb, 3000, 30.0, true, "x");
    sb.ok(&["run", "pipeline.yaml"]);
    assert_eq!(versions(&sb)[0], ("shop.ingest".to_string(), 2, 3000));
    let diff = sb.json(&["datasets", "diff", "shop.ingest"]);
    assert_eq!(
        (diff["reference"].as_str(), diff["current"].as_str()),
        (Some("shop.ingest@1"), Some("shop.ingest@2"))
    );
    assert_eq!(
        diff["schema_changes"],
        serde_json::json!([{"change": "dropped", "column": "cat", "dtype": "Utf8"}])
    );
    let shift = |name: &str| -> Value {
        diff["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["column"] == name)
            .cloned()
            .unwrap()
    };
    let x = shift("x");
    assert_eq!(
        (x["method"].as_str(), x["drifted"].as_bool()),
        (Some("wasserstein"), Some(true))
    );
    // Moved by 30 on a standard deviation of 28.87: normed distance ~1.04.
    assert!((x["score"].as_f64().unwrap() - 1.039).abs() < 0.02, "{x}");
    assert_eq!(shift("id")["drifted"], false, "{diff}");
    let text = sb.ok(&["datasets", "diff", "shop.ingest", "1", "2"]);
    assert!(
        text.contains("dropped cat (Utf8)") && text.contains("DRIFT"),
        "{text}"
    );
    let show = sb.json(&["datasets", "show", "shop.ingest@2"]);
    assert_eq!(show["schema_changes"][0]["column"], "cat");

    // Additive refuses a rename: the step fails and nothing is recorded.
    pipeline(&sb, "    schema: { evolution: additive }\n");
    data(&sb, 3000, 30.0, true, "x_renamed");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("dataset shop.ingest: the new table renamed x to x_renamed (Int64) against version 2, and `schema: { evolution: additive }` refuses it"),
        "{err}"
    );
    assert_eq!(versions(&sb)[0], ("shop.ingest".to_string(), 2, 3000));
    // Strict refuses even a new column; additive takes it.
    data(&sb, 3000, 30.0, false, "x");
    pipeline(&sb, "    schema: { evolution: strict }\n");
    let err = sb.fails(&["run", "pipeline.yaml"]);
    assert!(
        err.contains("added cat (Utf8)") && err.contains("evolution: additive"),
        "{err}"
    );
    pipeline(&sb, "    schema: { evolution: additive }\n");
    sb.ok(&["run", "pipeline.yaml"]);
    assert_eq!(versions(&sb)[0], ("shop.ingest".to_string(), 3, 3000));
}

#[test]
fn bad_dataset_declarations_and_lookups_say_what_is_wrong() {
    let sb = Sandbox::new();
    data(&sb, 10, 0.0, false, "x");
    sb.write(
        "bad.yaml",
        "version: 1\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: data.csv }\n    datasets: { tabel: raw }\n    schema: { evolution: sometimes }\n",
    );
    let err = sb.fails(&["run", "bad.yaml"]);
    assert!(
        err.contains("steps.ingest.datasets.tabel")
            && err.contains("'tabel' is not an output of this step"),
        "{err}"
    );
    assert!(
        err.contains("'sometimes' is not a schema evolution policy"),
        "{err}"
    );
    let err = sb.fails(&["datasets", "show", "nothing"]);
    assert!(err.contains("no dataset has a version yet"), "{err}");
    pipeline(&sb, "");
    sb.ok(&["run", "pipeline.yaml"]);
    let err = sb.fails(&["datasets", "show", "nothing"]);
    assert!(
        err.contains("known datasets: shop.ingest, shop/clean"),
        "{err}"
    );
    let err = sb.fails(&["datasets", "show", "shop.ingest@7"]);
    assert!(err.contains("shop.ingest has versions 1 to 1"), "{err}");
    let err = sb.fails(&["datasets", "diff", "shop.ingest"]);
    assert!(err.contains("shop.ingest has one version"), "{err}");
}

#[test]
fn drift_compares_two_tables_and_writes_a_report() {
    let sb = Sandbox::new();
    let table = |name: &str, rows: usize, shift: usize| {
        let mut csv = String::from("x,cat,steady\n");
        for i in 0..rows {
            let cat = if (i + shift).is_multiple_of(4) {
                "rare"
            } else {
                "common"
            };
            csv.push_str(&format!("{},{cat},{}\n", i % 50 + shift, i % 7));
        }
        sb.write(name, &csv);
    };
    table("ref.csv", 400, 0);
    table("same.csv", 400, 0);
    table("moved.csv", 400, 10);
    let same = sb.json(&["drift", "ref.csv", "same.csv"]);
    assert_eq!(same["dataset_drift"], false, "{same}");
    // 400 reference rows: tested, not measured.
    assert_eq!(same["columns"][0]["method"], "ks");
    let report = sb.path().join("report.html");
    let moved = sb.json(&[
        "drift",
        "ref.csv",
        "moved.csv",
        "--html",
        report.to_str().unwrap(),
        "--share",
        "0.3",
    ]);
    assert_eq!(moved["dataset_drift"], true, "{moved}");
    assert_eq!(moved["drifted_columns"], 1, "{moved}");
    let x = &moved["columns"][0];
    assert_eq!(
        (x["column"].as_str(), x["drifted"].as_bool()),
        (Some("x"), Some(true))
    );
    assert!(x["score"].as_f64().unwrap() < 1e-6, "{x}");
    let cat = &moved["columns"][1];
    // The category shares do not change with the shift of 10 (a multiple
    // of 4 away from 2): chi-squared finds nothing.
    assert_eq!(
        (cat["method"].as_str(), cat["drifted"].as_bool()),
        (Some("chi2"), Some(false))
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("Dataset drift detected: 1 of 3 columns drifted"),
        "{html}"
    );
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(html.contains("<h3 class=\"drift\">x</h3>"));
    // One column of three is under the default share of a half.
    let text = sb.ok(&["drift", "ref.csv", "moved.csv"]);
    assert!(
        text.contains(
            "1 of 3 shared columns drifted (33%): no dataset drift (the threshold is 50%)"
        ),
        "{text}"
    );

    let err = sb.fails(&["drift", "ref.csv", "missing.csv"]);
    assert!(err.contains("missing.csv"), "{err}");
    let err = sb.fails(&["drift", "ref.csv", "same.csv", "--share", "2"]);
    assert!(err.contains("--share 2 is not a share of columns"), "{err}");
}

/// `weir/validate`'s table rules: a condition over several columns,
/// uniqueness of several columns together, freshness, values that must
/// exist in a reference input, the row count's change from the input's
/// previous dataset version; `severity: warn` reports without failing.
#[test]
fn validate_checks_conditions_keys_freshness_references_and_row_count_change() {
    let sb = Sandbox::new();
    let flights = |rows: &[(i64, Option<i64>, &str, &str)]| {
        let mut csv = String::from("dep,arr,origin,when\n");
        for (dep, arr, origin, when) in rows {
            let arr = arr.map_or(String::new(), |a| a.to_string());
            csv.push_str(&format!("{dep},{arr},{origin},{when}\n"));
        }
        sb.write("flights.csv", &csv);
    };
    sb.write(
        "airports.csv",
        "faa,name\nJFK,Kennedy\nLGA,LaGuardia\nEWR,Newark\n",
    );
    let good: Vec<(i64, Option<i64>, &str, &str)> = (0..20)
        .map(|i| {
            (
                900 + i,
                if i == 3 { None } else { Some(1000 + i) },
                ["JFK", "LGA", "EWR"][i as usize % 3],
                [
                    "2013-01-01 05:00:00",
                    "2013-01-01 06:00:00",
                    "2013-01-01 07:00:00",
                    "2013-01-01 08:00:00",
                    "2013-01-01 09:00:00",
                    "2013-01-01 10:00:00",
                    "2013-01-01 11:00:00",
                ][i as usize % 7],
            )
        })
        .collect();
    flights(&good);
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: rules\nsteps:\n  flights:\n    uses: weir/ingest\n    with: { path: flights.csv, schema: { when: timestamp } }\n  airports:\n    uses: weir/ingest\n    with: { path: airports.csv }\n  check:\n    uses: weir/validate\n    inputs: { table: flights.table, reference: airports.table }\n    with:\n      rules:\n        - { expr: \"arr >= dep or arr is null\" }\n        - { unique: [origin, when] }\n        - { column: when, freshness: 1d, severity: warn }\n        - { column: origin, references: faa }\n        - { rows: { change: 10% } }\n",
    );
    let out = sb.ok(&["run", "pipeline.yaml"]);
    let run = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = sb.ok(&["logs", &run, "check"]);
    assert!(
        log.contains("when: newest value is") && log.contains("[warn]"),
        "{log}"
    );
    assert!(
        log.contains("rows.change: the input has no previous dataset version"),
        "{log}"
    );
    let show = sb.json(&["runs", "show", &run]);
    let check = crate::common::step(&show, "check");
    assert_eq!(check["metrics"]["rules_warned"], 1.0, "{check} {out}");

    // Half the rows, one arriving before it left, a repeated (origin, when)
    // and an airport the reference does not know.
    let mut bad: Vec<(i64, Option<i64>, &str, &str)> = good[..10].to_vec();
    bad[1].1 = Some(800);
    bad[2].3 = bad[9].3;
    bad[2].2 = bad[9].2;
    bad[4].2 = "XXX";
    flights(&bad);
    let err = sb.fails(&["run", "pipeline.yaml"]);
    for expected in [
        "expr: arr >= dep or arr is null: 1 rows (e.g. row 1 = \"arr=800 dep=901\")",
        "unique together: [origin, when]: 1 rows",
        "origin: references reference.faa: 1 rows (e.g. row 4 = \"XXX\")",
        "row count 10 moved -50.0% from the previous version's 20 (at most ±10%)",
        "days old (at most 1d old) [warn]",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }
    assert!(err.contains("data validation failed: 5 of"), "{err}");

    // A rule that is itself wrong says where and why.
    sb.write(
        "wrong.yaml",
        "version: 1\nsteps:\n  flights:\n    uses: weir/ingest\n    with: { path: flights.csv }\n  check:\n    uses: weir/validate\n    inputs: { table: flights.table }\n    with:\n      rules:\n        - { expr: \"arr >= (dep\" }\n",
    );
    let err = sb.fails(&["run", "wrong.yaml"]);
    assert!(
        err.contains("with.rules[0].expr: a `(` is not closed in `arr >= (dep`"),
        "{err}"
    );
    sb.write(
        "noref.yaml",
        "version: 1\nsteps:\n  flights:\n    uses: weir/ingest\n    with: { path: flights.csv }\n  check:\n    uses: weir/validate\n    inputs: { table: flights.table }\n    with:\n      rules:\n        - { column: origin, references: faa }\n",
    );
    let err = sb.fails(&["run", "noref.yaml"]);
    assert!(err.contains("the step has no `reference` input"), "{err}");
}

/// A trained model keeps the profile of its training inputs; `weir drift
/// model:NAME` compares new rows with it, on the columns the model reads.
#[test]
fn drift_against_a_model_compares_new_rows_with_its_training_inputs() {
    let sb = Sandbox::new();
    let rows = |name: &str, shift: u64| {
        let mut csv = String::from("x1,x2,city,y\n");
        for i in 0..3000u64 {
            let x1 = i % 100 + shift;
            csv.push_str(&format!(
                "{x1},{},{},{}\n",
                (i * 7) % 13,
                ["a", "b"][(i % 2) as usize],
                u8::from(x1 > 50)
            ));
        }
        sb.write(name, &csv);
    };
    rows("train.csv", 0);
    rows("same.csv", 0);
    rows("moved.csv", 40);
    sb.write(
        "pipeline.yaml",
        "version: 1\nname: m\nsteps:\n  ingest:\n    uses: weir/ingest\n    with: { path: train.csv }\n  train:\n    uses: weir/train-linear\n    inputs: { train: ingest.table }\n    with: { target: y, features: [x1, x2] }\n  register:\n    uses: weir/register\n    inputs: { model: train.model }\n    with: { name: m }\n",
    );
    sb.ok(&["run", "pipeline.yaml"]);
    let same = sb.json(&["drift", "model:m", "same.csv"]);
    assert_eq!(same["dataset_drift"], false, "{same}");
    // Only what the model reads: x1 and x2, not city or the label.
    let columns: Vec<&str> = same["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["column"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["x1", "x2"]);
    let moved = sb.json(&["drift", "model:m:1", "moved.csv"]);
    assert_eq!(moved["dataset_drift"], true, "{moved}");
    assert_eq!(moved["columns"][0]["drifted"], true);
    assert_eq!(moved["columns"][1]["drifted"], false);
    // A table without one of the model's inputs: reported, the rest compared.
    let mut csv = String::from("x1,city\n");
    for i in 0..3000u64 {
        csv.push_str(&format!(
            "{},{}\n",
            i % 100 + 40,
            ["a", "b"][(i % 2) as usize]
        ));
    }
    sb.write("partial.csv", &csv);
    let partial = sb.json(&["drift", "model:m", "partial.csv"]);
    assert_eq!(
        partial["schema_changes"][0]["change"], "dropped",
        "{partial}"
    );
    assert_eq!(partial["schema_changes"][0]["column"], "x2", "{partial}");
    assert_eq!(partial["columns"].as_array().unwrap().len(), 1);
    assert_eq!(partial["columns"][0]["drifted"], true);
    // Methods can be chosen: PSI and KS flag the moved column too.
    for method in ["psi", "ks"] {
        let by = sb.json(&["drift", "model:m", "moved.csv", "--method", method]);
        assert_eq!(by["columns"][0]["method"], method, "{by}");
        assert_eq!(by["columns"][0]["drifted"], true, "{by}");
    }
    let err = sb.fails(&["drift", "model:m", "moved.csv", "--method", "t-test"]);
    assert!(err.contains("unknown drift method 't-test'"), "{err}");
    let err = sb.fails(&["drift", "model:m:9", "same.csv"]);
    assert!(err.contains("m") && err.contains('9'), "{err}");
    let err = sb.fails(&["drift", "model:m:x", "same.csv"]);
    assert!(
        err.contains("'x' in model:m:x is not a version number"),
        "{err}"
    );
}
