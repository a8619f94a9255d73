//! Outages of what a run stands on, other than its own processes: the S3
//! server going away and coming back (a proxy in front of the test's S3
//! server refuses connections and cuts open ones), and a full disk under
//! the artifact store (a small tmpfs). Each either rides it out or fails
//! the step with an error that says what happened, leaves the store
//! consistent, and `weir resume` finishes the run without redoing a step.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{stderr_of, wait_for, Sandbox};
use crate::resilience::{exits_within, fsck};

/// A TCP proxy that can be taken down (its port refuses connections and
/// the open ones are cut) and brought back on the same port, so an outage
/// of the server behind it costs nothing the server holds.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (is_up, stopping) = (up.clone(), stop.clone());
        std::thread::spawn(move || {
            let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let mut listener = Some(first);
            while !stopping.load(Ordering::Relaxed) {
                match (is_up.load(Ordering::Relaxed), &listener) {
                    (false, Some(_)) => {
                        listener = None;
                        for s in open.lock().unwrap().drain(..) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                    }
                    (true, None) => listener = TcpListener::bind(("127.0.0.1", port)).ok(),
                    _ => {}
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        let mut held = open.lock().unwrap();
                        for s in [&client, &server] {
                            held.push(s.try_clone().unwrap());
                        }
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, up, stop }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        // Until the listener is (re)bound or gone, the state is not what
        // the test asked for.
        wait_for("the proxy to follow", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok() == up
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// a -> b -> c, b sleeping long enough for an outage to start under it; each
/// step marks its start in `marks`.
const PIPELINE: &str = "version: 1\nname: outage\nsteps:\n  a:\n    run: echo start a >> marks; echo a > $WEIR_OUTPUTS_DIR/out\n    outputs: [out]\n  b:\n    run: echo start b >> marks; sleep 1.5; cat $WEIR_INPUTS_DIR/x > $WEIR_OUTPUTS_DIR/out; echo b >> $WEIR_OUTPUTS_DIR/out\n    inputs: { x: a.out }\n    outputs: [out]\n  c:\n    run: echo start c >> marks; cat $WEIR_INPUTS_DIR/x > $WEIR_OUTPUTS_DIR/out; echo c >> $WEIR_OUTPUTS_DIR/out\n    inputs: { x: b.out }\n    outputs: [out]\n";

fn starts(sb: &Sandbox, step: &str) -> usize {
    std::fs::read_to_string(sb.path().join("marks"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == format!("start {step}"))
        .count()
}

#[test]
fn an_s3_outage_is_ridden_out_and_one_that_lasts_fails_clearly_then_resumes() {
    let Ok(endpoint) = std::env::var("WEIR_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("WEIR_REQUIRE_S3").as_deref() != Ok("1"),
            "WEIR_REQUIRE_S3=1 but WEIR_TEST_S3_ENDPOINT is not set"
        );
        eprintln!("skipping: WEIR_TEST_S3_ENDPOINT is not set");
        return;
    };
    let target: SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = Proxy::start(target);
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let mut sb = Sandbox::new();
    for (k, v) in [
        (
            "WEIR_ARTIFACTS",
            format!("s3://{bucket}/outage-{}", weir_core::new_id()),
        ),
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        ),
        ("AWS_ACCESS_KEY_ID", "weir".into()),
        ("AWS_SECRET_ACCESS_KEY", "weir-secret".into()),
    ] {
        sb.env.push((k.into(), v));
    }
    sb.write("p.yaml", PIPELINE);

    // Down while b runs and still down when it stores its output: the
    // request is retried with backoff until the server is back.
    let mut run = sb.spawn(&["run", "p.yaml"]);
    wait_for("step b", || starts(&sb, "b") == 1);
    proxy.set_up(false);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run did not wait for the store: {}",
        stderr_of(&mut run)
    );
    proxy.set_up(true);
    let code = exits_within(
        &mut run,
        Duration::from_secs(120),
        "a run across an S3 outage",
    );
    assert_eq!(code, Some(0), "{}", stderr_of(&mut run));
    assert_eq!(sb.json(&["runs", "list"])[0]["status"], "succeeded");

    // Down for longer than the run is willing to retry: b fails with an
    // error that says so and what to do.
    sb.env.push(("WEIR_S3_RETRY_TIMEOUT".into(), "3s".into()));
    // (b changed, so it runs again; a is a cache hit.)
    sb.write("p.yaml", &PIPELINE.replace("sleep 1.5", "sleep 1.6"));
    let mut run = sb.spawn(&["run", "p.yaml"]);
    wait_for("step b again", || starts(&sb, "b") == 2);
    proxy.set_up(false);
    let began = Instant::now();
    let code = exits_within(
        &mut run,
        Duration::from_secs(120),
        "a run whose S3 went away",
    );
    let stderr = stderr_of(&mut run);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the artifact store")
            && stderr.contains("WEIR_S3_RETRY_TIMEOUT")
            && stderr.contains("weir resume"),
        "{stderr}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "gave up after {:?}",
        began.elapsed()
    );
    let run_id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run_id]);
    assert_eq!(show["status"], "failed");
    assert_eq!(crate::common::step(&show, "a")["status"], "succeeded");
    assert_eq!(crate::common::step(&show, "b")["status"], "failed");

    // Back: the store is consistent and resume finishes the run from b.
    proxy.set_up(true);
    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    sb.ok(&["resume", &run_id]);
    let show = sb.json(&["runs", "show", &run_id]);
    assert_eq!(show["status"], "succeeded");
    assert_eq!(starts(&sb, "a"), 1, "a is never run again");
    assert_eq!(starts(&sb, "b"), 3);
    assert_eq!(fsck(&sb, &[]).0, Some(0));
}

/// A small tmpfs mounted for the test (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "weir-test"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallDisk { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("WEIR_REQUIRE_CHAOS").as_deref() != Ok("1"),
                    "WEIR_REQUIRE_CHAOS=1 but a tmpfs cannot be mounted: {why}"
                );
                eprintln!("skipping: cannot mount a tmpfs ({why})");
                None
            }
        }
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => todo.push(e.path()),
                false => out.push(e.path()),
            }
        }
    }
    out
}

#[test]
fn a_full_disk_under_the_artifact_store_fails_the_step_clearly_and_leaves_the_store_consistent() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let mut sb = Sandbox::new();
    sb.env.push((
        "WEIR_ARTIFACTS".into(),
        disk.dir.path().display().to_string(),
    ));
    sb.write(
        "p.yaml",
        "version: 1\nname: full\nsteps:\n  a:\n    run: echo start a >> marks; echo a > $WEIR_OUTPUTS_DIR/out\n    outputs: [out]\n  b:\n    run: echo start b >> marks; head -c 3000000 /dev/urandom > $WEIR_OUTPUTS_DIR/big\n    inputs: { x: a.out }\n    outputs: [big]\n  c:\n    run: echo start c >> marks; wc -c < $WEIR_INPUTS_DIR/x > $WEIR_OUTPUTS_DIR/out\n    inputs: { x: b.big }\n    outputs: [out]\n",
    );
    let out = sb.weir(&["run", "p.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no space left on the artifact store")
            && stderr.contains("weir gc")
            && stderr.contains("weir resume"),
        "{stderr}"
    );
    let run_id = sb.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = sb.json(&["runs", "show", &run_id]);
    assert_eq!(crate::common::step(&show, "a")["status"], "succeeded");
    assert_eq!(crate::common::step(&show, "b")["status"], "failed");
    assert_eq!(starts(&sb, "c"), 0);
    // Nothing half-written is left: no staging file, and every blob whole.
    for file in files_under(disk.dir.path()) {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            !name.contains('#'),
            "a staging file was left: {}",
            file.display()
        );
    }
    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(0), "{report:#}");

    // With room again, resume finishes from b.
    disk.resize("16m");
    sb.ok(&["resume", &run_id]);
    assert_eq!(sb.json(&["runs", "show", &run_id])["status"], "succeeded");
    assert_eq!(starts(&sb, "a"), 1);
    assert_eq!(starts(&sb, "b"), 2);
    let (code, report) = fsck(&sb, &[]);
    assert_eq!(code, Some(0), "{report:#}");
}
