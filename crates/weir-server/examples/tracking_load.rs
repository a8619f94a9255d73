//! The requests of `../shared/peers/mlflow_tracking.sh`, sent by a client
//! that costs next to nothing, so the figures measure the server rather than
//! the peer script's Python client (which spends 4.5 ms of its own CPU on one
//! log-batch iteration and 18 ms parsing one search reply; see
//! `bench/tracking_client_cost.py`). `bench/tracking_driver.sh` points it at
//! MLflow and at Weir back to back.
//!
//! Bodies are typed structs serialised straight to bytes, and replies the
//! client does not need are not parsed: built as `serde_json::Value` trees,
//! a log-batch iteration cost this client 1.6 ms of CPU, as much as Weir's
//! server spent on it, on the same two cores.
//!
//! Knobs are the peer script's, as environment variables: MLF_URL, SERVER_PID
//! (a session leader: every process of its session is counted as server CPU),
//! LOG_SECONDS, CONC_SECONDS, CONC_THREADS, SEARCH_RUNS, SEARCH_REPEATS,
//! SETUP_THREADS, CLIENT_CALLS. The last stdout line is one JSON object.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("tracking_load: {e}");
        std::process::exit(1);
    }
}

type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Knobs {
    url: String,
    server: u32,
    log_seconds: f64,
    conc_seconds: f64,
    conc_threads: usize,
    search_runs: usize,
    search_repeats: usize,
    setup_threads: usize,
    client_calls: usize,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> Fallible<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number").into()),
        Err(_) => Ok(default),
    }
}

fn run() -> Fallible<()> {
    let k = Knobs {
        url: format!(
            "{}/api/2.0/mlflow",
            std::env::var("MLF_URL").map_err(|_| "set MLF_URL to the server's base URL")?
        ),
        server: knob("SERVER_PID", 0)?,
        log_seconds: knob("LOG_SECONDS", 20.0)?,
        conc_seconds: knob("CONC_SECONDS", 10.0)?,
        conc_threads: knob("CONC_THREADS", 8)?,
        search_runs: knob("SEARCH_RUNS", 5000)?,
        search_repeats: knob("SEARCH_REPEATS", 5)?,
        setup_threads: knob("SETUP_THREADS", 4)?,
        client_calls: knob("CLIENT_CALLS", 2000)?,
    };
    let mut out = serde_json::Map::new();
    let client = Client::new(&k.url);

    // (a) runs/create + a log-batch of 1,000 metrics per iteration, one client.
    let exp_a = client.new_experiment("bench-logbatch")?;
    client.iteration(&exp_a, &mut rand::rng())?;
    let cpu0 = server_cpu(k.server);
    let start = Instant::now();
    let (metrics, mut lat) = client.loop_for(&exp_a, k.log_seconds)?;
    let el = start.elapsed().as_secs_f64();
    let cpu = server_cpu(k.server) - cpu0;
    lat.sort();
    out.insert(
        "logbatch_seq".into(),
        json!({
            "seconds": round(el, 2), "iterations": lat.len(), "metrics": metrics,
            "server_cpu_s": round(cpu, 2),
            "server_cpu_us_per_metric": round(cpu / metrics as f64 * 1e6, 2),
            "metrics_per_s": round(metrics as f64 / el, 1),
            "iterations_per_s": round(lat.len() as f64 / el, 1),
            "iter_latency_ms_p50": ms(pct(&lat, 50.0)),
            "iter_latency_ms_p99": ms(pct(&lat, 99.0)),
        }),
    );
    eprintln!("(a) sequential: {}", out["logbatch_seq"]);

    // (a') the same with CONC_THREADS clients at once.
    let cpu0 = server_cpu(k.server);
    let start = Instant::now();
    let results: Vec<Fallible<(usize, Vec<Duration>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..k.conc_threads)
            .map(|_| {
                let exp = exp_a.clone();
                let url = k.url.clone();
                s.spawn(move || Client::new(&url).loop_for(&exp, k.conc_seconds))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let el = start.elapsed().as_secs_f64();
    let cpu = server_cpu(k.server) - cpu0;
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let metrics: usize = results.iter().flatten().map(|(n, _)| n).sum();
    let mut lat: Vec<Duration> = results.into_iter().flatten().flat_map(|(_, l)| l).collect();
    lat.sort();
    out.insert(
        "logbatch_conc".into(),
        json!({
            "threads": k.conc_threads, "seconds": round(el, 2), "metrics": metrics,
            "metrics_per_s": round(metrics as f64 / el, 1), "iterations": lat.len(),
            "server_cpu_us_per_metric": round(cpu / metrics.max(1) as f64 * 1e6, 2),
            "iter_latency_ms_p50": ms(pct(&lat, 50.0)),
            "errors": errors.len(), "first_error": errors.first(),
        }),
    );
    eprintln!("(a') concurrent: {}", out["logbatch_conc"]);

    // (b) SEARCH_RUNS runs of 5 params and 5 metrics, then runs/search.
    let exp_b = client.new_experiment("bench-search")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let specs: Vec<Batch> = (0..k.search_runs)
        .map(|_| Batch {
            run_id: String::new(),
            params: (0..5)
                .map(|j| Param {
                    key: format!("p{j}"),
                    value: rng.random_range(0..=100).to_string(),
                })
                .collect(),
            metrics: ["acc", "loss", "f1", "auc", "prec"]
                .iter()
                .map(|key| Point {
                    key: key.to_string(),
                    value: rng.random::<f64>(),
                    timestamp: 0,
                    step: 0,
                })
                .collect(),
        })
        .collect();
    let expected = specs.iter().filter(|s| s.metrics[0].value > 0.5).count();
    let next = AtomicUsize::new(0);
    let cpu0 = server_cpu(k.server);
    let start = Instant::now();
    std::thread::scope(|s| -> Fallible<()> {
        let handles: Vec<_> = (0..k.setup_threads)
            .map(|_| {
                let (exp, url, specs, next) = (&exp_b, &k.url, &specs, &next);
                s.spawn(move || -> Fallible<()> {
                    let c = Client::new(url);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(spec) = specs.get(i) else {
                            return Ok(());
                        };
                        let run_id = c.create_run(exp)?;
                        c.log_batch(&Batch {
                            run_id,
                            params: spec.params.clone(),
                            metrics: spec.metrics.clone(),
                        })?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap()?;
        }
        Ok(())
    })?;
    let setup_s = start.elapsed().as_secs_f64();
    let setup_cpu = server_cpu(k.server) - cpu0;
    let body = json!({"experiment_ids": [exp_b], "filter": "metrics.acc > 0.5",
                      "max_results": 1000, "order_by": ["metrics.acc DESC"]});
    let mut times = Vec::new();
    let mut returned = 0;
    let cpu0 = server_cpu(k.server);
    for _ in 0..k.search_repeats {
        let (reply, took) = client.timed_post("runs/search", &body)?;
        times.push(took);
        let reply: Value = serde_json::from_slice(&reply)?;
        let runs = reply["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        returned = runs.len();
        let accs: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                r["data"]["metrics"]
                    .as_array()?
                    .iter()
                    .find(|m| m["key"] == "acc")?["value"]
                    .as_f64()
            })
            .collect();
        if accs.len() != returned
            || accs.windows(2).any(|w| w[0] < w[1])
            || accs.iter().any(|a| *a <= 0.5)
        {
            return Err("search result not ordered/filtered".into());
        }
    }
    let search_cpu = server_cpu(k.server) - cpu0;
    let mut sorted = times.clone();
    sorted.sort();
    out.insert(
        "search".into(),
        json!({
            "runs_in_experiment": k.search_runs, "matching": expected, "returned": returned,
            "setup_seconds": round(setup_s, 1),
            "setup_runs_per_s": round(k.search_runs as f64 / setup_s, 1),
            "setup_server_cpu_ms_per_run": round(setup_cpu / k.search_runs as f64 * 1e3, 3),
            "server_cpu_ms_per_search": round(search_cpu / k.search_repeats as f64 * 1e3, 1),
            "latency_ms_median": ms(pct(&sorted, 50.0)),
            "latency_ms_all": times.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
        }),
    );
    eprintln!("(b) search: {}", out["search"]);

    // (c) runs/log-metric one call at a time: the request `mlflow.log_metric` sends.
    let exp_c = client.new_experiment("bench-client")?;
    let run_id = client.create_run(&exp_c)?;
    let cpu0 = server_cpu(k.server);
    let start = Instant::now();
    for i in 0..k.client_calls {
        client.post(
            "runs/log-metric",
            &json!({"run_id": run_id, "key": "loss", "value": 1.0 / (i + 1) as f64,
                    "timestamp": now_ms(), "step": i}),
        )?;
    }
    let el = start.elapsed().as_secs_f64();
    let cpu = server_cpu(k.server) - cpu0;
    out.insert(
        "log_metric".into(),
        json!({
            "calls": k.client_calls, "seconds": round(el, 2),
            "calls_per_s": round(k.client_calls as f64 / el, 1),
            "server_cpu_ms_per_call": round(cpu / k.client_calls as f64 * 1e3, 3),
        }),
    );
    eprintln!("(c) log-metric: {}", out["log_metric"]);
    out.insert("script".into(), json!("tracking_load"));
    println!("{}", Value::Object(out));
    Ok(())
}

/// A `runs/log-batch` body.
#[derive(Serialize)]
struct Batch {
    run_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    params: Vec<Param>,
    metrics: Vec<Point>,
}

#[derive(Clone, Serialize)]
struct Param {
    key: String,
    value: String,
}

#[derive(Clone, Serialize)]
struct Point {
    key: String,
    value: f64,
    timestamp: i64,
    step: i64,
}

/// One keep-alive connection's worth of client.
struct Client {
    http: reqwest::blocking::Client,
    base: String,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client without TLS builds"),
            base: base.to_string(),
        }
    }

    fn post(&self, path: &str, body: &impl Serialize) -> Fallible<Value> {
        Ok(serde_json::from_slice(&self.timed_post(path, body)?.0)?)
    }

    /// The reply's bytes, and the time until its last byte arrived (parsing
    /// it is the client's work, not the server's).
    fn timed_post(&self, path: &str, body: &impl Serialize) -> Fallible<(Vec<u8>, Duration)> {
        let body = serde_json::to_vec(body)?;
        let start = Instant::now();
        let reply = self
            .http
            .post(format!("{}/{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()?;
        let status = reply.status();
        let bytes = reply.bytes()?.to_vec();
        let took = start.elapsed();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!("{path}: HTTP {status} {}", &text[..text.len().min(300)]).into());
        }
        Ok((bytes, took))
    }

    fn new_experiment(&self, name: &str) -> Fallible<String> {
        let reply = self.post("experiments/create", &json!({"name": name}))?;
        Ok(reply["experiment_id"]
            .as_str()
            .ok_or("experiments/create: no experiment_id")?
            .to_string())
    }

    fn create_run(&self, exp: &str) -> Fallible<String> {
        #[derive(Serialize)]
        struct NewRun<'a> {
            experiment_id: &'a str,
            start_time: i64,
        }
        #[derive(Deserialize)]
        struct Created {
            run: CreatedRun,
        }
        #[derive(Deserialize)]
        struct CreatedRun {
            info: CreatedInfo,
        }
        #[derive(Deserialize)]
        struct CreatedInfo {
            run_id: String,
        }
        let body = NewRun {
            experiment_id: exp,
            start_time: now_ms(),
        };
        let (reply, _) = self.timed_post("runs/create", &body)?;
        let created: Created = serde_json::from_slice(&reply)
            .map_err(|e| format!("runs/create: no run_id in the reply ({e})"))?;
        Ok(created.run.info.run_id)
    }

    /// A log-batch; its reply (`{}` on success) is not parsed.
    fn log_batch(&self, batch: &Batch) -> Fallible<()> {
        self.timed_post("runs/log-batch", batch)?;
        Ok(())
    }

    /// A new run and 10 keys × 100 steps in one log-batch (MLflow's limit).
    fn iteration(&self, exp: &str, rng: &mut impl Rng) -> Fallible<usize> {
        let run_id = self.create_run(exp)?;
        let timestamp = now_ms();
        let keys: Vec<String> = (0..10).map(|k| format!("m{k}")).collect();
        let metrics: Vec<Point> = keys
            .iter()
            .flat_map(|key| (0..100).map(move |step| (key, step)))
            .map(|(key, step)| Point {
                key: key.clone(),
                value: rng.random::<f64>(),
                timestamp,
                step,
            })
            .collect();
        let n = metrics.len();
        self.log_batch(&Batch {
            run_id,
            params: Vec::new(),
            metrics,
        })?;
        Ok(n)
    }

    fn loop_for(&self, exp: &str, seconds: f64) -> Fallible<(usize, Vec<Duration>)> {
        let mut rng = rand::rng();
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let (mut n, mut lat) = (0, Vec::new());
        while Instant::now() < end {
            let t = Instant::now();
            n += self.iteration(exp, &mut rng)?;
            lat.push(t.elapsed());
        }
        Ok((n, lat))
    }
}

/// CPU seconds used so far by every live process in session `sid` (the
/// peer script's measure: MLflow's server is several processes).
fn server_cpu(sid: u32) -> f64 {
    if sid == 0 {
        return 0.0;
    }
    // /proc reports these in USER_HZ, which Linux fixes at 100 for user space.
    let tick = 100.0;
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(3).and_then(|s| s.parse::<u32>().ok()) == Some(sid) {
            total += f[11..15]
                .iter()
                .filter_map(|x| x.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total as f64 / tick
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Nearest-rank percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 2)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
