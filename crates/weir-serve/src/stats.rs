//! Per-version inference statistics as Triton's statistics extension
//! reports them (`GET /v2/models[/NAME[/versions/V]]/stats`), so
//! tritonclient's `get_inference_statistics` and perf_analyzer read Weir as
//! they read Triton. Each request is split into the protocol's phases:
//! compute_input (from arrival to the model call: body, parse, decode),
//! queue (waiting in the batcher), compute_infer (the model call) and
//! compute_output (building and encoding the answer).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Default)]
struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        json!({"count": self.count.load(Ordering::Relaxed), "ns": self.ns.load(Ordering::Relaxed)})
    }
}

/// One batch size's executions: assembling the batch, the call, splitting
/// the answers.
#[derive(Default, Clone, Copy)]
struct BatchStat {
    count: u64,
    input_ns: u64,
    infer_ns: u64,
    output_ns: u64,
}

/// What one version has done since it was loaded.
#[derive(Default)]
pub(crate) struct VersionStats {
    last_inference_ms: AtomicI64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    compute_input: DurationStat,
    compute_infer: DurationStat,
    compute_output: DurationStat,
    cache_hit: DurationStat,
    cache_miss: DurationStat,
    batches: Mutex<BTreeMap<usize, BatchStat>>,
}

/// How one request went, phase by phase.
#[derive(Default)]
pub(crate) struct RequestPhases {
    pub total: Duration,
    pub ok: bool,
    /// Rows scored (successful requests).
    pub rows: usize,
    /// Set when the request reached the model (not answered from the cache
    /// or refused before it).
    pub input: Option<Duration>,
    pub queue: Duration,
    pub infer: Duration,
    pub output: Duration,
    /// Answered from the response cache (Some(true)), looked up and
    /// missed (Some(false)), with the time the lookup took.
    pub cache: Option<(bool, Duration)>,
}

impl VersionStats {
    pub(crate) fn request(&self, p: &RequestPhases) {
        self.last_inference_ms
            .store(weir_core::now_ms(), Ordering::Relaxed);
        match p.cache {
            Some((true, d)) => self.cache_hit.add(d),
            Some((false, d)) => self.cache_miss.add(d),
            None => {}
        }
        if !p.ok {
            self.fail.add(p.total);
            return;
        }
        self.success.add(p.total);
        self.inference_count
            .fetch_add(p.rows as u64, Ordering::Relaxed);
        if let Some(input) = p.input {
            self.compute_input.add(input);
            self.queue.add(p.queue);
            self.compute_infer.add(p.infer);
            self.compute_output.add(p.output);
        }
    }

    /// One model call of `rows` rows; `input` and `output` are the time to
    /// assemble a batch and to split its answers (zero for a lone request).
    pub(crate) fn execution(
        &self,
        rows: usize,
        input: Duration,
        infer: Duration,
        output: Duration,
    ) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let mut batches = self.batches.lock().expect("stats lock");
        let b = batches.entry(rows).or_default();
        b.count += 1;
        b.input_ns += input.as_nanos() as u64;
        b.infer_ns += infer.as_nanos() as u64;
        b.output_ns += output.as_nanos() as u64;
    }

    pub(crate) fn json(&self, name: &str, version: i64) -> Value {
        let batch_stats: Vec<Value> = self
            .batches
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(size, b)| {
                let stat = |ns: u64| json!({"count": b.count, "ns": ns});
                json!({
                    "batch_size": size,
                    "compute_input": stat(b.input_ns),
                    "compute_infer": stat(b.infer_ns),
                    "compute_output": stat(b.output_ns),
                })
            })
            .collect();
        json!({
            "name": name,
            "version": version.to_string(),
            "last_inference": self.last_inference_ms.load(Ordering::Relaxed),
            "inference_count": self.inference_count.load(Ordering::Relaxed),
            "execution_count": self.execution_count.load(Ordering::Relaxed),
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": self.cache_hit.json(),
                "cache_miss": self.cache_miss.json(),
            },
            "response_stats": {},
            "batch_stats": batch_stats,
            "memory_usage": [],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_per_request_and_batches_per_size() {
        let s = VersionStats::default();
        let ms = Duration::from_millis;
        s.request(&RequestPhases {
            total: ms(10),
            ok: true,
            rows: 3,
            input: Some(ms(2)),
            queue: ms(1),
            infer: ms(5),
            output: ms(2),
            cache: Some((false, ms(0))),
        });
        s.request(&RequestPhases {
            total: ms(1),
            ok: true,
            rows: 1,
            cache: Some((true, ms(1))),
            ..Default::default()
        });
        s.request(&RequestPhases {
            total: ms(4),
            ..Default::default()
        });
        s.execution(3, ms(0), ms(5), ms(0));
        let doc = s.json("m", 2);
        let stats = &doc["inference_stats"];
        assert_eq!(doc["inference_count"], 4);
        assert_eq!(doc["execution_count"], 1);
        assert_eq!(stats["success"], json!({"count": 2, "ns": 11_000_000}));
        assert_eq!(stats["fail"], json!({"count": 1, "ns": 4_000_000}));
        assert_eq!(stats["compute_infer"], json!({"count": 1, "ns": 5_000_000}));
        assert_eq!(stats["cache_hit"]["count"], 1);
        assert_eq!(stats["cache_miss"]["count"], 1);
        assert_eq!(doc["batch_stats"][0]["batch_size"], 3);
        assert_eq!(doc["version"], "2");
    }
}
