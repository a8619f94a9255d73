use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A project directory with its own `.weir` home.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(WEIR);
        c.args(args).current_dir(self.path());
        for var in [
            "WEIR_HOME",
            "WEIR_DB",
            "WEIR_ARTIFACTS",
            "WEIR_MAX_PARALLEL",
            "WEIR_SERVE_ADDR",
        ] {
            c.env_remove(var);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Starts weir in the background: stdout discarded, stderr kept for
    /// [`stderr_of`].
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn weir(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs weir, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.weir(args);
        assert!(
            out.status.success(),
            "weir {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs weir, asserts failure and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.weir(args);
        assert!(
            !out.status.success(),
            "weir {args:?} should have failed\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Blob files in the local artifact store.
    pub fn blobs(&self) -> Vec<PathBuf> {
        let root = self.path().join(".weir/artifacts/blobs");
        let mut out = Vec::new();
        if let Ok(dirs) = std::fs::read_dir(root) {
            for d in dirs.flatten() {
                for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                    out.push(f.path());
                }
            }
        }
        out
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        self.path()
            .join(".weir/artifacts/blobs")
            .join(&digest[..2])
            .join(digest)
    }

    /// `weir server` over the sandbox's stores on a free loopback port,
    /// answering /health; stopped when dropped.
    pub fn tracking_server(&self) -> TrackingServer {
        self.tracking_server_over(None)
    }

    /// `tracking_server`, over HTTPS with the certificates `certs` made
    /// (`scripts/test-certs.sh`) when given; its client trusts their CA.
    pub fn tracking_server_over(&self, certs: Option<&Path>) -> TrackingServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["server", "--addr", &addr];
        let tls = certs.map(tls_args);
        args.extend(tls.iter().flatten().map(String::as_str));
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let scheme = if certs.is_some() { "https" } else { "http" };
        let server = TrackingServer {
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
            client: client(certs)
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while server
            .client
            .get(format!("{}/health", server.base))
            .send()
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "weir server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        server
    }

    pub fn serve(&self, models: &[&str]) -> Server {
        self.serve_over(models, None)
    }

    /// `serve`, over HTTPS as `tracking_server_over` is.
    pub fn serve_over(&self, models: &[&str], certs: Option<&Path>) -> Server {
        let mut args = vec!["serve"];
        args.extend_from_slice(models);
        args.extend_from_slice(&["--addr", "127.0.0.1:0"]);
        let tls = certs.map(tls_args);
        args.extend(tls.iter().flatten().map(String::as_str));
        let mut child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().expect("serve printed nothing").unwrap();
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected: {first}"))
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        let server = Server {
            child,
            url,
            client: client(certs).build().unwrap(),
        };
        server.wait_ready();
        server
    }
}

/// A throwaway CA and a certificate for 127.0.0.1 it signed, in `dir`:
/// `ca.pem`, `cert.pem`, `key.pem`.
pub fn make_certs(dir: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-certs.sh");
    assert!(Command::new(script).arg(dir).status().unwrap().success());
}

fn tls_args(certs: &Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        file("cert.pem"),
        "--tls-key".into(),
        file("key.pem"),
    ]
}

/// A client that trusts the test CA in `certs`, if given.
pub fn client(certs: Option<&Path>) -> reqwest::blocking::ClientBuilder {
    let builder = reqwest::blocking::Client::builder();
    match certs {
        None => builder,
        Some(dir) => {
            let ca = std::fs::read(dir.join("ca.pem")).unwrap();
            builder.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        }
    }
}

pub struct TrackingServer {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub client: reqwest::blocking::Client,
}

impl Drop for TrackingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run's step entry in `weir runs show --json`.
pub fn step<'a>(show: &'a Value, name: &str) -> &'a Value {
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap()
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub client: reqwest::blocking::Client,
}

impl Server {
    /// The `/metrics` page, as text.
    pub fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The value of one series on `/metrics` (`name{labels}`), if it is there.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .client
                .get(format!("{}/v2/health/ready", self.url))
                .send()
            {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server at {} never became ready", self.url);
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// A request on a connection of its own, closed afterwards: for a body
    /// the server refuses before reading it, after which it closes the
    /// connection (a pooled one would fail the next request).
    pub fn post_alone(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
        let r = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .header("connection", "close")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn python() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

/// The PostgreSQL server tests create their databases on: WEIR_TEST_POSTGRES
/// (default: the local server); `off` skips the PostgreSQL tests.
pub fn postgres_admin() -> Option<String> {
    let admin = std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if admin == "off" {
        eprintln!("WEIR_TEST_POSTGRES=off: skipping");
        return None;
    }
    Some(admin)
}

/// A fresh database, dropped with the value.
pub struct PgDatabase {
    admin: String,
    name: String,
}

impl PgDatabase {
    pub fn create_named(admin: &str, name: &str) -> PgDatabase {
        admin_exec(admin, &format!("CREATE DATABASE {name}"));
        PgDatabase {
            admin: admin.to_string(),
            name: name.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.admin.rsplit_once('/').unwrap().0, self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        admin_exec(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn admin_exec(admin: &str, sql: &str) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {admin} is required ({e}); set WEIR_TEST_POSTGRES=off to skip"
                )
            });
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    });
}

/// Copies `examples/<rel>` into the sandbox, under its file name.
pub fn copy_example(sb: &Sandbox, rel: &str) {
    let from = format!("{}/../../examples/{rel}", env!("CARGO_MANIFEST_DIR"));
    let name = std::path::Path::new(rel).file_name().unwrap();
    std::fs::copy(&from, sb.path().join(name)).unwrap_or_else(|e| panic!("{from}: {e}"));
}

/// Seeded trials per chaos test: WEIR_CRASH_TRIALS (default 20; bench/chaos.sh
/// runs more).
/// All a [`Sandbox::spawn`]ed child wrote to stderr, once it has exited.
pub fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
    text
}

pub fn crash_trials() -> u64 {
    std::env::var("WEIR_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Polls `ready` until it holds; panics naming `what` after a minute.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
