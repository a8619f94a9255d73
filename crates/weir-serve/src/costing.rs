//! What a serving replica costs: its CPU time and its memory over time, at
//! the price table's on-demand prices, over the requests it answered. The
//! replica records it in the store (`weir cost --by endpoint`) and shows it
//! on /metrics.

use std::time::{Duration, Instant};

use weir_core::cost::Prices;

/// How often the replica's usage is recorded in the store.
const RECORD_EVERY: Duration = Duration::from_secs(15);

pub(crate) struct Costing {
    prices: Prices,
    started_ms: i64,
    last_sample: Instant,
    /// Memory held over time: the resident set sampled at each tick.
    gib_seconds: f64,
    last_record: Option<Instant>,
}

impl Costing {
    pub fn new(prices: Prices) -> Costing {
        Costing {
            prices,
            started_ms: weir_core::now_ms(),
            last_sample: Instant::now(),
            gib_seconds: 0.0,
            last_record: None,
        }
    }

    /// Samples memory; returns the replica's usage when it is time to
    /// record it (or `now`).
    pub fn tick(
        &mut self,
        replica: &str,
        targets: String,
        requests: u64,
        now: bool,
    ) -> Option<weir_store::ServeUsage> {
        let rss = weir_core::usage::resident_bytes();
        let elapsed = self.last_sample.elapsed().as_secs_f64();
        self.last_sample = Instant::now();
        self.gib_seconds += rss as f64 / (1u64 << 30) as f64 * elapsed;
        if !now && self.last_record.is_some_and(|t| t.elapsed() < RECORD_EVERY) {
            return None;
        }
        self.last_record = Some(Instant::now());
        let (cpu_ms, _) = weir_core::usage::process();
        let cost = cpu_ms as f64 / 3_600_000.0 * self.prices.cpu_hour
            + self.gib_seconds / 3600.0 * self.prices.gib_hour;
        Some(weir_store::ServeUsage {
            replica: replica.to_string(),
            targets,
            host: weir_core::process::hostname(),
            started_at: self.started_ms,
            updated_at: weir_core::now_ms(),
            cpu_ms: cpu_ms as i64,
            rss_bytes: rss as i64,
            requests: requests as i64,
            cost,
        })
    }
}

/// Dollars per 1,000 requests, once there are requests.
pub(crate) fn per_1000(cost: f64, requests: i64) -> Option<f64> {
    (requests > 0).then(|| cost / requests as f64 * 1000.0)
}
