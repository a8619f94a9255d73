//! Secrets never reach an output: a database password in the store's URL,
//! S3 keys in the environment and an API token go through a run, a failed
//! run, the servers (logging at debug) and every read command; then every
//! byte those wrote — stdout, stderr, every file under the project, and the
//! PostgreSQL database's dump — is searched for them. Only `weir tokens
//! create` may print the token it makes, once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{PgDatabase, Sandbox};

const DB_PASSWORD: &str = "pg-sentinel-7c1e9f";
const S3_SECRET: &str = "s3-sentinel-40b2d8";
const S3_KEY_ID: &str = "AKIASENTINEL5A7E";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Waits until `url` answers 200 (servers take a moment to listen).
fn wait(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::blocking::get(url)
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn no_secret_appears_in_any_output_file_or_row() {
    let mut sb = Sandbox::new();
    let db = crate::common::postgres_admin().map(|admin| {
        PgDatabase::create_named(&admin, &format!("weir_secrets_{}", std::process::id()))
    });
    if let Some(db) = &db {
        // Trust authentication takes any password, so the store's URL can
        // carry one for real.
        let url = db.url();
        let (scheme, rest) = url.split_once("://").unwrap();
        let (user, host) = rest.split_once('@').unwrap();
        let user = user.split(':').next().unwrap();
        sb.env.push((
            "WEIR_DB".into(),
            format!("{scheme}://{user}:{DB_PASSWORD}@{host}"),
        ));
    }
    sb.env.push(("AWS_ACCESS_KEY_ID".into(), S3_KEY_ID.into()));
    sb.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET.into()));
    sb.env.push(("WEIR_LOG".into(), "debug".into()));
    crate::lineage::rows(&sb, "a.csv", 0);
    sb.write("m.yaml", crate::lineage::PIPELINE);
    sb.write(
        "broken.yaml",
        "version: 1\nname: broken\nsteps:\n  fail:\n    run: echo about to fail; exit 3\n",
    );

    let mut outputs = Vec::new();
    let mut run = |sb: &Sandbox, args: &[&str]| {
        let out = sb.weir(args);
        outputs.push((args.join(" "), out.stdout));
        outputs.push((args.join(" "), out.stderr));
        out.status.success()
    };
    assert!(run(&sb, &["run", "m.yaml"]), "the pipeline failed");
    run(&sb, &["run", "broken.yaml"]);
    let token = sb.json(&["tokens", "create", "--name", "ops", "--role", "admin"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        &["config"][..],
        &["config", "--json"],
        &["runs", "list", "--json"],
        &["runs", "list"],
        &["runs", "show", "--json"],
        &["runs", "show", "no-such-run"],
        &["models", "show", "m"],
        &["models", "card", "m:1"],
        &["lineage", "m:1", "--json"],
        &["audit"],
        &["audit", "--verify"],
        &["tokens", "list", "--json"],
        &[
            "deploy",
            "web",
            "--model",
            "m",
            "--version",
            "1",
            "--strategy",
            "direct",
        ],
        &["status"],
    ] {
        run(&sb, args);
    }
    // A store that cannot be reached: the error names the URL.
    let mut unreachable = Sandbox::new();
    unreachable.env.push((
        "WEIR_DB".into(),
        format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/nowhere"),
    ));
    run(&unreachable, &["runs", "list"]);

    // Both servers, logging at debug, called with the token and with a
    // wrong one.
    let logs = sb.path().join("server-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let spawn = |args: &[&str], log: &str| {
        sb.command(args)
            .stdout(std::fs::File::create(logs.join(format!("{log}.out"))).unwrap())
            .stderr(std::fs::File::create(logs.join(format!("{log}.err"))).unwrap())
            .spawn()
            .unwrap()
    };
    let (tracking_addr, serve_addr) = (free_addr(), free_addr());
    let mut tracking = spawn(&["server", "--addr", &tracking_addr], "server");
    let mut serving = spawn(&["serve", "--addr", &serve_addr], "serve");
    wait(&format!("http://{tracking_addr}/health"));
    wait(&format!("http://{serve_addr}/v2/health/ready"));
    let client = reqwest::blocking::Client::new();
    for bearer in [token.as_str(), "weir_0000000000000000000000000000"] {
        let _ = client
            .get(format!(
                "http://{tracking_addr}/api/2.0/mlflow/experiments/search?max_results=5"
            ))
            .bearer_auth(bearer)
            .send()
            .unwrap();
        let _ = client
            .post(format!("http://{serve_addr}/v2/repository/index"))
            .bearer_auth(bearer)
            .body("{}")
            .send()
            .unwrap();
        let _ = client
            .post(format!("http://{serve_addr}/v2/models/web/infer"))
            .bearer_auth(bearer)
            .body(r#"{"inputs":[{"name":"x1","datatype":"FP64","shape":[1],"data":[1.0]},{"name":"x2","datatype":"FP64","shape":[1],"data":[2.0]}]}"#)
            .send()
            .unwrap();
    }
    // SIGTERM, so the servers flush their logs as they stop.
    for child in [&mut tracking, &mut serving] {
        let killed = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        assert!(killed.unwrap().success());
        let _ = child.wait();
    }

    let mut found = Vec::new();
    let secrets = [DB_PASSWORD, S3_SECRET, token.as_str()];
    let mut check = |what: String, bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        for s in secrets {
            if text.contains(s) {
                found.push(format!("{what} holds {s}"));
            }
        }
    };
    for (args, bytes) in &outputs {
        check(format!("the output of `weir {args}`"), bytes);
    }
    let mut files = 0;
    let mut stack = vec![sb.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                check(path.display().to_string(), &std::fs::read(&path).unwrap());
            }
        }
    }
    // The project's files, step logs, artifacts, the servers' logs (and
    // on SQLite the store itself).
    assert!(files > 12, "only {files} files were searched");
    if let Some(db) = &db {
        let dump = std::process::Command::new("pg_dump")
            .args(["--data-only", &db.url()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(dump.status.success());
        assert!(dump.stdout.len() > 10_000, "the dump is nearly empty");
        check("the PostgreSQL store's rows".into(), &dump.stdout);
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}
