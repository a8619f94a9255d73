//! The audit log: every change, from the command line or through the
//! tracking server, is one entry naming who made it and what it changed;
//! the hash chain exposes an entry edited or removed behind Weir's back.

use serde_json::{json, Value};

use crate::common::Sandbox;
use crate::lineage::{rows, PIPELINE};

fn entries(sb: &Sandbox) -> Vec<Value> {
    sb.json(&["audit"]).as_array().unwrap().clone()
}

/// Runs SQL on the sandbox's SQLite store, as someone with the file would.
fn tamper(sb: &Sandbox, sql: &str) {
    let db = sb.path().join(".weir/weir.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()",
        ])
        .arg(&db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_change_is_audited_with_who_and_tampering_is_detected() {
    let sb = Sandbox::new();
    rows(&sb, "a.csv", 0);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    sb.ok(&["run", "m.yaml", "-p", "data=a.csv", "--no-cache"]);
    sb.ok(&["deploy", "web", "--model", "m", "--version", "1"]);
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "m",
        "--version",
        "2",
        "--steps",
        "50,100",
    ]);
    sb.ok(&["rollout", "rollback", "web"]);
    sb.ok(&["schedule", "add", "m.yaml", "--cron", "0 3 * * *"]);
    sb.ok(&["schedule", "remove", "m"]);
    // A change that is refused leaves no entry.
    let before = entries(&sb).len();
    sb.fails(&["deploy", "web", "--model", "m", "--version", "9"]);
    assert_eq!(entries(&sb).len(), before);

    // Through the tracking server: an alias and a run deleted by an MLflow client.
    let server = sb.tracking_server();
    let client = &server.client;
    let api = format!("{}/api/2.0/mlflow", server.base);
    let set = client
        .post(format!("{api}/registered-models/alias"))
        .json(&json!({"name": "m", "alias": "champion", "version": "2"}))
        .send()
        .unwrap();
    assert!(set.status().is_success(), "{}", set.text().unwrap());
    let first_run = sb.json(&["runs", "list"])[1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = client
        .post(format!("{api}/runs/delete"))
        .json(&json!({"run_id": first_run}))
        .send()
        .unwrap();
    assert!(deleted.status().is_success());
    drop(server);

    let log = entries(&sb);
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in [
        "run.create",
        "model.register",
        "deployment.deployed",
        "deployment.rolled_back",
        "schedule.add",
        "schedule.remove",
        "alias.set",
        "run.delete",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    let find = |action: &str| log.iter().find(|e| e["action"] == action).unwrap();
    assert!(find("run.create")["actor"]
        .as_str()
        .unwrap()
        .ends_with("(weir run)"));
    assert_eq!(find("model.register")["target"], "m:1");
    let alias = find("alias.set");
    assert_eq!(alias["target"], "m@champion");
    assert_eq!(alias["actor"], "anonymous@127.0.0.1 (weir server)");
    assert_eq!(
        (
            alias["before"]["version"].clone(),
            alias["after"]["version"].clone()
        ),
        (Value::Null, json!(2))
    );
    assert_eq!(find("run.delete")["target"], first_run.as_str());
    let text = sb.ok(&["audit"]);
    assert!(
        text.contains("alias.set") && text.contains("m@champion"),
        "{text}"
    );
    assert!(sb.ok(&["audit", "--verify"]).contains("chain intact"));

    // An entry changed behind Weir's back breaks the chain there...
    tamper(&sb, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2");
    let err = sb.fails(&["audit", "--verify"]);
    assert!(
        err.contains("broken at entry 2") && err.contains("does not match its hash"),
        "{err}"
    );
    let verdict = sb.weir(&["audit", "--verify", "--json"]);
    assert!(!verdict.status.success());
    let verdict: Value = serde_json::from_slice(&verdict.stdout).unwrap();
    assert_eq!(verdict["broken_at"], 2);
    // ... and so does one removed, or one rewritten whole with a fresh hash.
    let original = log[1]["actor"].as_str().unwrap().replace('\'', "''");
    tamper(
        &sb,
        &format!("UPDATE audit_log SET actor = '{original}' WHERE seq = 2"),
    );
    sb.ok(&["audit", "--verify"]);
    tamper(&sb, "DELETE FROM audit_log WHERE seq = 3");
    assert!(sb
        .fails(&["audit", "--verify"])
        .contains("entry 3 is missing"));
}

/// Runs weir as `user`; (success, stdout, stderr).
fn as_user(sb: &Sandbox, user: &str, args: &[&str]) -> (bool, String, String) {
    let out = sb.command(args).env("USER", user).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn protected_changes_wait_for_someone_else_to_approve() {
    let sb = Sandbox::new();
    sb.write(
        "weir.toml",
        "[approvals]\naliases = [\"champion\"]\nendpoints = [\"prod\"]\n",
    );
    rows(&sb, "a.csv", 0);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);

    // Alice asks for version 1 to become champion: held, nothing set.
    let (ok, out, err) = as_user(&sb, "alice", &["models", "alias", "m", "champion", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("requested by alice"), "{out}");
    let pending = sb.json(&["approvals", "list"]);
    assert_eq!(pending.as_array().unwrap().len(), 1);
    let id = pending[0]["id"].as_str().unwrap().to_string();
    assert_eq!(pending[0]["target"], "m@champion");
    assert!(!entries(&sb).iter().any(|e| e["action"] == "alias.set"));
    // She cannot approve her own request; Bob can, and that applies it.
    let (ok, _, err) = as_user(&sb, "alice", &["approvals", "approve", &id]);
    assert!(
        !ok && err.contains("you (alice) requested approval"),
        "{err}"
    );
    let (ok, out, err) = as_user(
        &sb,
        "bob",
        &["approvals", "approve", &id[..10], "--comment", "looks good"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("applied: m@champion -> version 1"), "{out}");
    let log = entries(&sb);
    let set = log.iter().find(|e| e["action"] == "alias.set").unwrap();
    assert!(set["actor"].as_str().unwrap().starts_with("bob@"), "{set}");
    let approved = log
        .iter()
        .find(|e| e["action"] == "approval.approve")
        .unwrap();
    assert_eq!(approved["after"]["decided_by"], "bob");
    assert_eq!(approved["after"]["comment"], "looks good");
    let (ok, _, err) = as_user(&sb, "carol", &["approvals", "approve", &id]);
    assert!(!ok && err.contains("already approved by bob"), "{err}");

    // A deploy to a protected endpoint waits too; a rejection changes nothing.
    let (ok, out, err) = as_user(
        &sb,
        "alice",
        &["deploy", "prod", "--model", "m", "--version", "1"],
    );
    assert!(ok && out.contains("deploy prod is held"), "{out}{err}");
    let id = sb.json(&["approvals", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = as_user(&sb, "bob", &["approvals", "reject", &id]);
    assert!(ok && out.contains("nothing changed"), "{out}{err}");
    assert!(sb
        .fails(&["rollout", "status", "prod"])
        .contains("does not exist"));
    assert!(sb
        .json(&["approvals", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        sb.json(&["approvals", "list", "--all"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Approved, it deploys; an endpoint not protected deploys at once.
    as_user(
        &sb,
        "alice",
        &["deploy", "prod", "--model", "m", "--version", "1"],
    );
    let id = sb.json(&["approvals", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = as_user(&sb, "bob", &["approvals", "approve", &id]);
    assert!(ok && out.contains("applied: prod:"), "{out}{err}");
    assert_eq!(sb.json(&["rollout", "status", "prod"])["stable"], 1);
    let (ok, out, _) = as_user(
        &sb,
        "alice",
        &["deploy", "staging", "--model", "m", "--version", "1"],
    );
    assert!(ok && !out.contains("held"), "{out}");
    let (ok, _, err) = as_user(&sb, "bob", &["approvals", "approve", "nope"]);
    assert!(
        !ok && err.contains("approval request 'nope' does not exist"),
        "{err}"
    );
    sb.ok(&["audit", "--verify"]);
}

#[test]
fn the_mlflow_api_is_no_way_around_an_approval() {
    let sb = Sandbox::new();
    sb.write("weir.toml", "[approvals]\naliases = [\"champion\"]\n");
    rows(&sb, "a.csv", 0);
    sb.write("m.yaml", PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    let server = sb.tracking_server();
    let alias = format!("{}/api/2.0/mlflow/registered-models/alias", server.base);
    let set = |name: &str, version: &str| {
        let r = server
            .client
            .post(&alias)
            .json(&json!({"name": "m", "alias": name, "version": version}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let champion = || {
        let r = server
            .client
            .get(format!("{alias}?name=m&alias=champion"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };

    let (status, body) = set("champion", "1");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_code"], "PERMISSION_DENIED");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("held as approval"), "{message}");
    assert_eq!(champion().0, 404, "the alias moved before approval");
    let pending = sb.json(&["approvals", "list"]);
    assert_eq!(pending[0]["target"], "m@champion");
    let requester = pending[0]["requested_by"].as_str().unwrap();
    assert!(requester.starts_with("anonymous@127.0.0.1"), "{requester}");
    let id = pending[0]["id"].as_str().unwrap().to_string();
    assert!(message.contains(&id), "{message}");

    let (ok, out, err) = as_user(&sb, "bob", &["approvals", "approve", &id]);
    assert!(
        ok && out.contains("applied: m@champion -> version 1"),
        "{out}{err}"
    );
    let (status, body) = champion();
    assert_eq!(
        (status, &body["model_version"]["version"]),
        (200, &json!("1"))
    );
    // Asking for what already holds is no change; other aliases are free.
    assert_eq!(set("champion", "1").0, 200);
    assert_eq!(set("candidate", "1").0, 200);
    assert!(sb
        .json(&["approvals", "list"])
        .as_array()
        .unwrap()
        .is_empty());
}
