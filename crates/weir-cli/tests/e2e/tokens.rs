//! API tokens: a server whose store holds a token lets nobody in without
//! one; every route, under every prefix, with every method, is tried with
//! no token, bad tokens (malformed, unknown, expired, revoked) and each
//! role, and nothing succeeds that the caller's role does not cover.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_store::tokens::Role;

use crate::common::Sandbox;

/// Every route the server declares, as (prefix-applied) paths with their
/// parameters filled in, read from its source so a new route is covered
/// the day it is added.
fn routes() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../weir-server/src/");
    let lib = std::fs::read_to_string(format!("{root}lib.rs")).unwrap();
    let ui = std::fs::read_to_string(format!("{root}ui.rs")).unwrap();
    let templates = |text: &str| -> Vec<String> {
        text.match_indices(".route(")
            .filter_map(|(i, _)| {
                let rest = text[i + 7..].trim_start();
                let rest = rest.strip_prefix('"')?;
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    };
    let (mlflow, rest) = lib.split_at(lib.find("let proxy").unwrap());
    let (proxy, top) = rest.split_at(rest.find("Router::new()\n        .nest").unwrap());
    let fill = |t: &str| {
        t.replace("{*path}", "1/a/b.txt")
            .replace("{model_id}", "m-1")
            .replace("{version}", "0.1.0")
            .replace("{name}", "app.js")
    };
    let mut out = Vec::new();
    for t in templates(mlflow) {
        for prefix in ["/api/2.0/mlflow", "/ajax-api/2.0/mlflow", "/api/3.0/mlflow"] {
            out.push(format!("{prefix}{}", fill(&t)));
        }
    }
    for t in templates(proxy) {
        out.push(format!("/api/2.0/mlflow-artifacts{}", fill(&t)));
    }
    out.extend(
        templates(top)
            .iter()
            .chain(&templates(&ui))
            .map(|t| fill(t)),
    );
    assert!(out.len() > 150, "{} routes found", out.len());
    out
}

fn token(sb: &Sandbox, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["tokens", "create", "--name", name, "--role", role];
    args.extend_from_slice(extra);
    sb.json(&args)["token"].as_str().unwrap().to_string()
}

#[test]
fn every_route_takes_only_the_roles_it_should() {
    let sb = Sandbox::new();
    let server = sb.tracking_server();
    let (client, base) = (&server.client, server.base.clone());
    // No token yet: open, as an MLflow server is.
    let search = format!("{base}/api/2.0/mlflow/experiments/search?max_results=5");
    assert_eq!(client.get(&search).send().unwrap().status(), 200);

    let admin = token(&sb, "ci-admin", "admin", &[]);
    let editor = token(&sb, "ci-editor", "editor", &[]);
    let viewer = token(&sb, "ci-viewer", "viewer", &[]);
    let expired = token(&sb, "old", "admin", &["--expires", "1ms"]);
    let revoked = token(&sb, "leaked", "admin", &[]);
    let revoked_id = sb
        .json(&["tokens", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "leaked")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    sb.ok(&["tokens", "revoke", &revoked_id]);
    let listed = sb.ok(&["tokens", "list"]);
    assert!(
        listed.contains("revoked") && !listed.contains(&admin[20..]),
        "{listed}"
    );
    // The server notices its first token within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.get(&search).send().unwrap().status() != 401 {
        assert!(
            Instant::now() < deadline,
            "the server never asked for a token"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let unknown = format!("weir_{}_{}", "0".repeat(32), "1".repeat(64));
    let callers: Vec<(&str, Option<&str>, Option<Role>)> = vec![
        ("no token", None, None),
        ("malformed", Some("weir_nope"), None),
        ("unknown", Some(&unknown), None),
        ("expired", Some(&expired), None),
        ("revoked", Some(&revoked), None),
        ("viewer", Some(&viewer), Some(Role::Viewer)),
        ("editor", Some(&editor), Some(Role::Editor)),
        ("admin", Some(&admin), Some(Role::Admin)),
    ];
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ];
    let mut tried = 0;
    let mut wrong = Vec::new();
    for path in routes() {
        for method in &methods {
            let need = weir_server::auth::required(method, &path);
            for (who, text, role) in &callers {
                let mut req = client.request(method.clone(), format!("{base}{path}"));
                if let Some(t) = text {
                    req = req.bearer_auth(t);
                }
                if *method != reqwest::Method::GET {
                    req = req.json(&json!({}));
                }
                let status = req.send().unwrap().status().as_u16();
                tried += 1;
                let allowed = match need {
                    None => true,
                    Some(need) => role.is_some_and(|r| r >= need),
                };
                let refused = status == 401 || status == 403;
                if allowed == refused || (!allowed && (200..300).contains(&status)) {
                    wrong.push(format!("{who} {method} {path} -> {status}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {tried}:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Each refusal says why, and never echoes a secret.
    let say = |t: Option<&str>| -> (u16, Value) {
        let mut req = client.get(&search);
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    for (t, why) in [
        (None, "needs an API token"),
        (Some("weir_nope"), "malformed"),
        (Some(expired.as_str()), "has expired"),
        (Some(revoked.as_str()), "was revoked"),
        (Some(unknown.as_str()), "not known"),
    ] {
        let (status, body) = say(t);
        assert_eq!(status, 401);
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        assert!(!message.contains(&revoked[38..]) && !message.contains(&expired[38..]));
    }
    let forbidden = client
        .post(format!("{base}/api/2.0/mlflow/registered-models/create"))
        .bearer_auth(&editor)
        .json(&json!({"name": "m"}))
        .send()
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let body: Value = forbidden.json().unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("needs admin"),
        "{body}"
    );
    // Who acted is the token's name.
    let made = client
        .post(format!("{base}/api/2.0/mlflow/registered-models/create"))
        .bearer_auth(&admin)
        .json(&json!({"name": "tokened"}))
        .send()
        .unwrap();
    assert!(made.status().is_success());
    let log = sb.json(&["audit"]);
    let created = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "token.create")
        .unwrap();
    assert!(created["actor"].as_str().unwrap().contains("(weir tokens)"));
    assert!(
        !log.to_string().contains(&admin[38..]),
        "a secret reached the audit log"
    );
}

#[test]
fn a_password_in_a_url_is_never_shown() {
    let sb = Sandbox::new();
    let url = "postgres://alice:s3cret-pw@127.0.0.1:1/weir";
    for args in [&["config"][..], &["config", "--json"], &["runs", "list"]] {
        let out = sb.command(args).env("WEIR_DB", url).output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("s3cret-pw"),
            "weir {args:?} showed it:\n{all}"
        );
        assert!(all.contains("alice:***@"), "weir {args:?}:\n{all}");
    }
}

#[test]
fn weir_serve_keeps_private_endpoints_and_the_repository_to_token_holders() {
    let sb = Sandbox::new();
    crate::lineage::rows(&sb, "a.csv", 0);
    sb.write("m.yaml", crate::lineage::PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    sb.ok(&[
        "deploy",
        "web",
        "--model",
        "m",
        "--version",
        "1",
        "--strategy",
        "direct",
    ]);
    let server = sb.serve(&["m", "--private", "web"]);
    let body = json!({"inputs": [
        {"name": "x1", "datatype": "FP64", "shape": [1], "data": [3.0]},
        {"name": "x2", "datatype": "FP64", "shape": [1], "data": [4.0]},
    ]})
    .to_string();
    let send = |method: &str, path: &str, token: Option<&str>| -> u16 {
        let mut req = server
            .client
            .request(method.parse().unwrap(), format!("{}{path}", server.url));
        if method == "POST" {
            req = req.body(if path.ends_with("/infer") {
                body.clone()
            } else {
                "{}".to_string()
            });
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().unwrap().status().as_u16()
    };
    // No token in the store yet: open.
    assert_eq!(send("POST", "/v2/models/web/infer", None), 200);
    let viewer = token(&sb, "app", "viewer", &[]);
    let editor = token(&sb, "labeler", "editor", &[]);
    let admin = token(&sb, "ops", "admin", &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while send("POST", "/v2/models/web/infer", None) != 401 {
        assert!(
            Instant::now() < deadline,
            "weir serve never asked for a token"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let routes: [(&str, &str, Option<Role>); 10] = [
        ("POST", "/v2/models/web/infer", Some(Role::Viewer)),
        ("GET", "/v2/models/web", Some(Role::Viewer)),
        ("GET", "/v2/models/web/ready", Some(Role::Viewer)),
        ("POST", "/v2/models/web/feedback", Some(Role::Editor)),
        ("POST", "/v2/repository/index", Some(Role::Admin)),
        ("POST", "/v2/repository/models/m/load", Some(Role::Admin)),
        ("POST", "/v2/models/m/infer", None),
        ("GET", "/v2/models/m", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/metrics", None),
    ];
    let callers: [(&str, Option<&str>, Option<Role>); 5] = [
        ("no token", None, None),
        ("malformed", Some("nope"), None),
        ("viewer", Some(&viewer), Some(Role::Viewer)),
        ("editor", Some(&editor), Some(Role::Editor)),
        ("admin", Some(&admin), Some(Role::Admin)),
    ];
    let mut wrong = Vec::new();
    for (method, path, need) in routes {
        for (who, text, role) in callers {
            let status = send(method, path, text);
            let allowed = need.is_none_or(|n| role.is_some_and(|r| r >= n));
            let refused = status == 401 || status == 403;
            if allowed == refused {
                wrong.push(format!("{who} {method} {path} -> {status}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(send("POST", "/v2/models/web/infer", Some(&viewer)), 200);
    assert_eq!(send("POST", "/v2/models/m/infer", None), 200);
}
