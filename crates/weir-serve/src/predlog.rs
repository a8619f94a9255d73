//! The prediction log: a sample of the requests `weir serve` answers, with
//! their decoded features, scores and labels, kept as Parquet segments in
//! the artifact store. Monitoring reads it back to compare live inputs with
//! a model's training profile and to join feedback labels by request id.
//!
//! Sampling is decided per request before it is scored, so an unsampled
//! request costs one random draw. Sampled rows wait in memory, one buffer
//! per (target, version), until a segment's worth has gathered or it has
//! waited `flush_every`; the controller writes them out off the request
//! path. Memory is bounded: past `MAX_BUFFERED_ROWS` new samples are
//! dropped and counted, never queued behind a slow store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use weir_artifacts::ArtifactStore;
use weir_ml::Column;
use weir_store::Store;

use crate::ServeError;

/// The log's own columns; a model's features keep their names beside them.
pub const REQUEST_ID: &str = "_request_id";
pub const ROW: &str = "_row";
pub const AT: &str = "_at";
pub const SCORE: &str = "_score";
pub const LABEL: &str = "_label";

/// Sampled rows held in memory at most, over every buffer.
const MAX_BUFFERED_ROWS: usize = 200_000;

#[derive(Clone, Debug)]
pub struct LogOptions {
    /// The share of requests logged, 0 to 1.
    pub rate: f64,
    /// A segment is written once it has this many rows...
    pub segment_rows: usize,
    /// ...or its first row has waited this long.
    pub flush_every: Duration,
    /// Bytes of segments kept per target; the oldest go first.
    pub keep_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            rate: 0.0,
            segment_rows: 10_000,
            flush_every: Duration::from_secs(30),
            keep_bytes: 1 << 30,
        }
    }
}

/// A sampled request's decoded input, in the model's input order.
pub(crate) struct Capture {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
}

/// What was answered to a sampled request.
pub(crate) struct Logged<'a> {
    pub target: &'a str,
    pub model: &'a str,
    pub version: i64,
    pub request_id: &'a str,
    pub capture: Capture,
    pub scores: &'a [f64],
    /// The predicted class of each row, for a classifier.
    pub labels: Option<&'a [serde_json::Value]>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    target: String,
    model: String,
    version: i64,
    names: String,
}

#[derive(Default)]
struct Buffer {
    names: Vec<String>,
    columns: Vec<Column>,
    request_ids: Vec<String>,
    rows: Vec<i32>,
    at: Vec<i64>,
    scores: Vec<Option<f64>>,
    labels: Vec<Option<i64>>,
    opened: Option<Instant>,
}

impl Buffer {
    fn len(&self) -> usize {
        self.at.len()
    }

    fn push(&mut self, logged: Logged<'_>, at: i64) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
            self.names = logged.capture.names.clone();
            self.columns = logged
                .capture
                .columns
                .iter()
                .map(|c| match c {
                    Column::Numeric(_) => Column::Numeric(Vec::new()),
                    Column::Text(_) => Column::Text(Vec::new()),
                })
                .collect();
        }
        let n = logged.capture.columns.first().map_or(0, Column::len);
        for (into, from) in self.columns.iter_mut().zip(logged.capture.columns) {
            match (into, from) {
                (Column::Numeric(a), Column::Numeric(b)) => a.extend(b),
                (Column::Text(a), Column::Text(b)) => a.extend(b),
                // Same names, other kinds: cannot happen for one version.
                (Column::Numeric(a), Column::Text(_)) => a.extend(std::iter::repeat_n(f64::NAN, n)),
                (Column::Text(a), Column::Numeric(_)) => a.extend(std::iter::repeat_n(None, n)),
            }
        }
        for row in 0..n {
            self.request_ids.push(logged.request_id.to_string());
            self.rows.push(row as i32);
            self.at.push(at);
            self.scores.push(logged.scores.get(row).copied());
            self.labels.push(
                logged
                    .labels
                    .and_then(|l| l.get(row))
                    .and_then(serde_json::Value::as_i64),
            );
        }
    }

    fn batch(self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut fields = vec![
            Field::new(REQUEST_ID, DataType::Utf8, false),
            Field::new(ROW, DataType::Int32, false),
            Field::new(
                AT,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new(SCORE, DataType::Float64, true),
            Field::new(LABEL, DataType::Int64, true),
        ];
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.request_ids)),
            Arc::new(Int32Array::from(self.rows)),
            Arc::new(TimestampMillisecondArray::from(self.at).with_timezone("UTC")),
            Arc::new(Float64Array::from(self.scores)),
            Arc::new(Int64Array::from(self.labels)),
        ];
        for (name, column) in self.names.iter().zip(self.columns) {
            match column {
                Column::Numeric(v) => {
                    fields.push(Field::new(name, DataType::Float64, true));
                    // NaN is how a missing value reached the model.
                    arrays.push(Arc::new(Float64Array::from_iter(
                        v.into_iter().map(|x| (!x.is_nan()).then_some(x)),
                    )));
                }
                Column::Text(v) => {
                    fields.push(Field::new(name, DataType::Utf8, true));
                    arrays.push(Arc::new(StringArray::from(v)));
                }
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
    }
}

/// Buffers sampled requests and writes them out as segments.
pub(crate) struct PredictionLog {
    options: LogOptions,
    threshold: u64,
    buffers: Mutex<BTreeMap<Key, Buffer>>,
    buffered: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl PredictionLog {
    pub fn new(
        options: LogOptions,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Option<PredictionLog> {
        let rate = options.rate.clamp(0.0, 1.0);
        (rate > 0.0).then(|| PredictionLog {
            threshold: (rate * u64::MAX as f64) as u64,
            options,
            buffers: Mutex::new(BTreeMap::new()),
            buffered: AtomicU64::new(0),
            metrics,
        })
    }

    /// Whether the request that drew `draw` (uniform over u64) is logged.
    pub fn sampled(&self, draw: u64) -> bool {
        self.threshold == u64::MAX || draw < self.threshold
    }

    pub fn push(&self, logged: Logged<'_>) {
        let n = logged.capture.columns.first().map_or(0, Column::len) as u64;
        if self.buffered.load(Ordering::Relaxed) + n > MAX_BUFFERED_ROWS as u64 {
            self.metrics.log_rows("dropped", n);
            return;
        }
        self.buffered.fetch_add(n, Ordering::Relaxed);
        // A segment holds one set of columns: the names are part of the key.
        let key = Key {
            target: logged.target.to_string(),
            model: logged.model.to_string(),
            version: logged.version,
            names: logged.capture.names.join("\u{1f}"),
        };
        self.buffers
            .lock()
            .expect("log lock")
            .entry(key)
            .or_default()
            .push(logged, weir_core::now_ms());
    }

    /// Takes the buffers that are due (every buffer when `all`, or those of
    /// `target` when given).
    fn take_due(&self, all: bool, target: Option<&str>) -> Vec<(Key, Buffer)> {
        let mut buffers = self.buffers.lock().expect("log lock");
        let due: Vec<Key> = buffers
            .iter()
            .filter(|(k, b)| {
                all || target.is_some_and(|want| want == k.target)
                    || b.len() >= self.options.segment_rows
                    || b.opened
                        .is_some_and(|o| o.elapsed() >= self.options.flush_every)
            })
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| buffers.remove(&k).map(|b| (k, b)))
            .filter(|(_, b)| b.len() > 0)
            .collect()
    }

    /// Writes out the buffers that are due; `target` forces its own out
    /// (before a check reads the log), `all` every one (at shutdown).
    pub async fn flush(
        &self,
        store: &Store,
        artifacts: &ArtifactStore,
        all: bool,
        target: Option<&str>,
    ) {
        for (key, buffer) in self.take_due(all, target) {
            let Key {
                target,
                model,
                version,
                ..
            } = key;
            let rows = buffer.len();
            self.buffered.fetch_sub(rows as u64, Ordering::Relaxed);
            if let Err(e) = self
                .write(store, artifacts, &target, &model, version, buffer)
                .await
            {
                self.metrics.log_rows("dropped", rows as u64);
                eprintln!("warning: prediction log of {target}: {rows} rows not written: {e}");
            } else {
                self.metrics.log_rows("written", rows as u64);
            }
        }
    }

    async fn write(
        &self,
        store: &Store,
        artifacts: &ArtifactStore,
        target: &str,
        model: &str,
        version: i64,
        buffer: Buffer,
    ) -> Result<(), ServeError> {
        let rows = buffer.len() as i64;
        let first_at = buffer.at.iter().copied().min().unwrap_or_default();
        let last_at = buffer.at.iter().copied().max().unwrap_or_default();
        let bytes = tokio::task::spawn_blocking(move || {
            let batch = buffer.batch().map_err(|e| e.to_string())?;
            weir_data::parquet_to_bytes(&batch).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(ServeError::Internal)?;
        let stored = artifacts.put_bytes(bytes::Bytes::from(bytes)).await?;
        let record = weir_store::ArtifactRecord {
            digest: stored.digest,
            size: stored.size as i64,
            kind: stored.kind,
            created_at: weir_core::now_ms(),
        };
        let segment = weir_store::Segment {
            id: weir_core::new_id(),
            target: target.to_string(),
            model: model.to_string(),
            version,
            digest: stored.digest.hex(),
            bytes: stored.size as i64,
            rows,
            first_at,
            last_at,
        };
        let keep = i64::try_from(self.options.keep_bytes).unwrap_or(i64::MAX);
        for old in store.add_segment(&record, &segment, keep).await? {
            if let Ok(digest) = old.parse() {
                if let Err(e) = artifacts.delete(&digest).await {
                    eprintln!(
                        "warning: prediction log of {target}: cannot delete an old segment: {e}"
                    );
                }
            }
        }
        Ok(())
    }
}
