//! A closed-loop load generator for one OIP model, in each encoding a client
//! can use: JSON over HTTP, binary tensors over HTTP (the extension
//! tritonclient.http sends by default) and gRPC (raw_input_contents, as
//! tritonclient.grpc sends). One client for all three, so the figures differ
//! only by the encoding and the transport. bench/oip_transports.sh drives it.
//!
//!   oip_load --http ADDR --grpc ADDR --model NAME --width W --rows R
//!            --mode json|binary|grpc [--concurrency 8] [--seconds 10]
//!
//! Prints one JSON line: requests/s, latency percentiles (ms), errors.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use weir_serve::proto;

struct Args {
    http: String,
    grpc: String,
    model: String,
    width: usize,
    rows: usize,
    mode: String,
    concurrency: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        http: "127.0.0.1:8080".into(),
        grpc: "127.0.0.1:8081".into(),
        model: String::new(),
        width: 30,
        rows: 1,
        mode: "json".into(),
        concurrency: 8,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "--http" => a.http = v,
            "--grpc" => a.grpc = v,
            "--model" => a.model = v,
            "--width" => a.width = v.parse().expect("--width N"),
            "--rows" => a.rows = v.parse().expect("--rows N"),
            "--mode" => a.mode = v,
            "--concurrency" => a.concurrency = v.parse().expect("--concurrency N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(!a.model.is_empty(), "--model NAME is required");
    a
}

/// The request, the same values in every encoding: row r, column c holds
/// a value that varies with both (a deterministic spread, no RNG needed).
fn values(rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|i| ((i * 7919) % 1000) as f32 / 10.0)
        .collect()
}

fn json_body(a: &Args, x: &[f32]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"inputs": [{
        "name": "X", "datatype": "FP32", "shape": [a.rows, a.width], "data": x,
    }]}))
    .expect("json")
}

/// JSON header, then the tensor's bytes; every output comes back binary.
fn binary_body(a: &Args, x: &[f32]) -> (Vec<u8>, usize) {
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [a.rows, a.width],
                    "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true},
    }))
    .expect("json");
    let json_len = body.len();
    body.extend(raw);
    (body, json_len)
}

fn grpc_body(a: &Args, x: &[f32]) -> Vec<u8> {
    let request = proto::ModelInferRequest {
        model_name: a.model.clone(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "X".into(),
            datatype: "FP32".into(),
            shape: vec![a.rows as i64, a.width as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    };
    let message = request.encode_to_vec();
    // gRPC's framing: no compression, then the length, then the message.
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);
    framed
}

/// One connection's loop; returns each request's latency and the errors.
async fn client(
    a: &Args,
    body: Bytes,
    json_len: Option<usize>,
    until: Instant,
) -> (Vec<Duration>, u64) {
    let grpc = a.mode == "grpc";
    let addr = if grpc { &a.grpc } else { &a.http };
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let io = TokioIo::new(tcp);
    let uri = if grpc {
        format!("http://{addr}/inference.GRPCInferenceService/ModelInfer")
    } else {
        format!("http://{addr}/v2/models/{}/infer", a.model)
    };
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    macro_rules! run {
        ($sender:expr) => {
            while Instant::now() < until {
                let mut request = Request::post(&uri);
                if grpc {
                    request = request
                        .header("content-type", "application/grpc")
                        .header("te", "trailers");
                } else if let Some(n) = json_len {
                    request = request
                        .header("content-type", "application/octet-stream")
                        .header("inference-header-content-length", n);
                } else {
                    request = request.header("content-type", "application/json");
                }
                let request = request.body(Full::new(body.clone())).expect("request");
                let started = Instant::now();
                let ok = match $sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let failed_early = response
                            .headers()
                            .get("grpc-status")
                            .is_some_and(|s| s != "0");
                        match response.into_body().collect().await {
                            Ok(collected) => {
                                let trailers_ok = collected
                                    .trailers()
                                    .and_then(|t| t.get("grpc-status"))
                                    .is_none_or(|s| s == "0");
                                status.is_success()
                                    && !failed_early
                                    && trailers_ok
                                    && !collected.to_bytes().is_empty()
                            }
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                };
                latencies.push(started.elapsed());
                errors += u64::from(!ok);
            }
        };
    }
    if grpc {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        run!(sender);
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http/1.1 handshake");
        tokio::spawn(conn);
        run!(sender);
    }
    (latencies, errors)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let a = std::sync::Arc::new(args());
    let x = values(a.rows, a.width);
    let (body, json_len) = match a.mode.as_str() {
        "json" => (json_body(&a, &x), None),
        "binary" => {
            let (body, n) = binary_body(&a, &x);
            (body, Some(n))
        }
        "grpc" => (grpc_body(&a, &x), None),
        other => panic!("--mode json|binary|grpc, not {other}"),
    };
    let body = Bytes::from(body);
    let started = Instant::now();
    let until = started + Duration::from_secs(a.seconds);
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (a, body) = (a.clone(), body.clone());
            tokio::spawn(async move { client(&a, body, json_len, until).await })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("client");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": a.mode, "rows": a.rows, "concurrency": a.concurrency,
            "request_bytes": body.len(), "requests": all.len(), "errors": errors,
            "rps": all.len() as f64 / elapsed,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        })
    );
}
