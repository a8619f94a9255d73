//! OpenLineage run events: every pipeline run and step emits START, then
//! COMPLETE, FAIL or ABORT, with its input and output datasets and the
//! standard facets (schema, dataSource, version, dataQualityMetrics,
//! outputStatistics, parent, errorMessage, jobType, sourceCodeLocation,
//! processing_engine), to `openlineage_url`: an HTTP endpoint (POST
//! `/api/v1/lineage`, as Marquez and the OpenLineage clients do) or a file.
//!
//! Events go through a bounded queue to a task of their own, so a consumer
//! that is slow or down never holds up or fails a run: an event that cannot
//! be queued or delivered (after retries) is dropped and counted, and the
//! run's end says how many.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use weir_store::RunRecord;

use crate::exec::StagedInput;
use crate::{Context, EngineError};

const QUEUE: usize = 1_000;
const SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const FACETS: &str = "https://openlineage.io/spec/facets";

/// Where events go.
#[derive(Clone, Debug)]
enum Sink {
    Http(String),
    File(std::path::PathBuf),
}

pub struct Emitter {
    queue: Option<tokio::sync::mpsc::Sender<Value>>,
    task: Option<tokio::task::JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    /// Events queued, and events the delivery task has dealt with.
    sent: AtomicU64,
    handled: Arc<AtomicU64>,
    namespace: String,
    /// The namespace of datasets: where the artifact store keeps them.
    store: String,
    producer: String,
}

/// Where `openlineage_url` sends events; checked before a run starts, so a
/// bad URL fails the command, not the run.
fn sink(config: &weir_core::config::Config) -> Result<Option<Sink>, EngineError> {
    let Some(url) = config.openlineage_url() else {
        return Ok(None);
    };
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(Some(Sink::Http(format!(
            "{}/api/v1/lineage",
            url.trim_end_matches('/')
        ))))
    } else if let Some(path) = url.strip_prefix("file://") {
        Ok(Some(Sink::File(path.into())))
    } else {
        Err(EngineError::StepFailed(format!(
            "openlineage_url '{url}' is neither an http(s) URL (e.g. http://marquez:5000) nor file://PATH"
        )))
    }
}

pub fn check(config: &weir_core::config::Config) -> Result<(), EngineError> {
    sink(config).map(|_| ())
}

/// A Weir id (32 hex digits) as the UUID OpenLineage wants.
pub fn uuid(id: &str) -> String {
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    if hex.len() != 32 {
        // Not one of ours: a stable UUID made of its digest.
        let d = weir_core::Digest::of_bytes(id.as_bytes()).hex();
        return uuid(&d[..32]);
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Emitter {
    /// An emitter that sends nothing (no `openlineage_url`).
    pub fn off() -> Emitter {
        Emitter {
            queue: None,
            task: None,
            dropped: Arc::default(),
            sent: AtomicU64::new(0),
            handled: Arc::default(),
            namespace: String::new(),
            store: String::new(),
            producer: String::new(),
        }
    }

    /// Starts sending to the configured URL; a URL that is neither http(s)
    /// nor a file is an error, one that is down is not.
    pub fn start(ctx: &Context) -> Result<Emitter, EngineError> {
        let Some(sink) = sink(&ctx.config)? else {
            return Ok(Emitter::off());
        };
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let handled = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(deliver(sink, rx, dropped.clone(), handled.clone()));
        let artifacts = ctx.config.get("artifacts");
        let store = if artifacts.contains("://") {
            artifacts.trim_end_matches('/').to_string()
        } else {
            let path = std::path::absolute(artifacts).unwrap_or_else(|_| artifacts.into());
            format!("file://{}", path.display())
        };
        Ok(Emitter {
            queue: Some(tx),
            task: Some(task),
            dropped,
            sent: AtomicU64::new(0),
            handled,
            namespace: std::env::var("OPENLINEAGE_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "weir".into()),
            store,
            producer: format!("urn:weir:weir:{}", weir_core::WEIR_VERSION),
        })
    }

    /// Whether events are sent (an `openlineage_url` is set).
    pub fn on(&self) -> bool {
        self.queue.is_some()
    }

    fn send(&self, event: Value) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(event) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends what is queued, waiting at most `wait`; returns how many
    /// events were dropped over the run.
    pub async fn finish(mut self, wait: Duration) -> u64 {
        drop(self.queue.take());
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(wait, &mut task).await.is_err() {
                task.abort();
                // Whatever was still queued is lost with the task.
                let left = self
                    .sent
                    .load(Ordering::Relaxed)
                    .saturating_sub(self.handled.load(Ordering::Relaxed));
                self.dropped.fetch_add(left, Ordering::Relaxed);
            }
        }
        self.dropped.load(Ordering::Relaxed)
    }

    fn facet(&self, schema: &str, mut body: Value) -> Value {
        body["_producer"] = json!(self.producer);
        body["_schemaURL"] = json!(format!("{FACETS}/{schema}"));
        body
    }

    fn event(&self, kind: &str, run: Value, job: Value) -> Value {
        json!({
            "eventType": kind,
            "eventTime": now(),
            "producer": self.producer,
            "schemaURL": SCHEMA,
            "run": run,
            "job": job,
            "inputs": [],
            "outputs": [],
        })
    }

    fn error_facet(&self, message: &str) -> Value {
        self.facet(
            "1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
            json!({ "message": message, "programmingLanguage": "RUST" }),
        )
    }

    fn job_facets(&self, run: &RunRecord, job_type: &str) -> Value {
        let mut facets = Map::new();
        facets.insert(
            "jobType".into(),
            self.facet(
                "2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
                json!({ "processingType": "BATCH", "integration": "WEIR", "jobType": job_type }),
            ),
        );
        let spec =
            std::path::absolute(&run.spec_file).unwrap_or_else(|_| run.spec_file.clone().into());
        let mut location = json!({ "type": "file", "url": format!("file://{}", spec.display()) });
        if let Some(rev) = &run.git_rev {
            location["type"] = json!("git");
            location["version"] = json!(rev);
            location["path"] = json!(run.spec_file);
        }
        facets.insert(
            "sourceCodeLocation".into(),
            self.facet(
                "1-1-0/SourceCodeLocationJobFacet.json#/$defs/SourceCodeLocationJobFacet",
                location,
            ),
        );
        Value::Object(facets)
    }

    /// A pipeline run's event: START, COMPLETE, FAIL (with the error) or ABORT.
    pub fn run_event(&self, kind: &str, run: &RunRecord, error: Option<&str>) {
        if !self.on() {
            return;
        }
        let mut facets = Map::new();
        facets.insert(
            "processing_engine".into(),
            self.facet(
                "1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
                json!({ "version": weir_core::WEIR_VERSION, "name": "Weir" }),
            ),
        );
        if let Some(e) = error {
            facets.insert("errorMessage".into(), self.error_facet(e));
        }
        self.send(self.event(
            kind,
            json!({ "runId": uuid(&run.id), "facets": facets }),
            json!({ "namespace": self.namespace, "name": run.pipeline,
                    "facets": self.job_facets(run, "PIPELINE") }),
        ));
    }

    /// A step's event, with the datasets it read and (once it has them)
    /// those it wrote.
    #[allow(clippy::too_many_arguments)]
    pub async fn step_event(
        &self,
        ctx: &Context,
        kind: &str,
        run: &RunRecord,
        step: &str,
        step_run_id: &str,
        inputs: &BTreeMap<String, StagedInput>,
        outputs: Option<&BTreeMap<String, StagedInput>>,
        error: Option<&str>,
    ) {
        if !self.on() {
            return;
        }
        let mut facets = Map::new();
        facets.insert(
            "parent".into(),
            self.facet(
                "1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet",
                json!({
                    "run": { "runId": uuid(&run.id) },
                    "job": { "namespace": self.namespace, "name": run.pipeline },
                }),
            ),
        );
        if let Some(e) = error {
            facets.insert("errorMessage".into(), self.error_facet(e));
        }
        let mut event = self.event(
            kind,
            json!({ "runId": uuid(step_run_id), "facets": facets }),
            json!({ "namespace": self.namespace, "name": format!("{}.{step}", run.pipeline),
                    "facets": self.job_facets(run, "TASK") }),
        );
        let mut read = Vec::new();
        for input in inputs.values() {
            read.push(self.dataset(ctx, &run.pipeline, input, true).await);
        }
        event["inputs"] = json!(read);
        if let Some(outputs) = outputs {
            let mut wrote = Vec::new();
            for output in outputs.values() {
                wrote.push(self.dataset(ctx, &run.pipeline, output, false).await);
            }
            event["outputs"] = json!(wrote);
        }
        self.send(event);
    }

    /// One dataset: a dataset version by its name, else the step output by
    /// `PIPELINE.STEP.OUTPUT`; its version is its digest.
    async fn dataset(&self, ctx: &Context, pipeline: &str, a: &StagedInput, input: bool) -> Value {
        let digest = a.digest.hex();
        let version = ctx
            .store
            .dataset_version_of_digest(&digest)
            .await
            .ok()
            .flatten();
        let name = match &version {
            Some(v) => v.name.clone(),
            None => format!("{pipeline}.{}", a.from),
        };
        let mut facets = Map::new();
        facets.insert(
            "dataSource".into(),
            self.facet(
                "1-0-1/DatasourceDatasetFacet.json#/$defs/DatasourceDatasetFacet",
                json!({ "name": "weir artifacts", "uri": self.store }),
            ),
        );
        facets.insert(
            "version".into(),
            self.facet(
                "1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
                json!({ "datasetVersion": digest }),
            ),
        );
        let profile: Option<weir_data::Profile> = version
            .as_ref()
            .and_then(|v| serde_json::from_str(&v.profile_json).ok());
        let mut quality = Map::new();
        if let Some(p) = &profile {
            let fields: Vec<Value> = p
                .columns
                .iter()
                .map(|c| json!({ "name": c.name, "type": c.dtype }))
                .collect();
            facets.insert(
                "schema".into(),
                self.facet(
                    "1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
                    json!({ "fields": fields }),
                ),
            );
            let columns: Map<String, Value> = p
                .columns
                .iter()
                .map(|c| {
                    let mut m = json!({ "nullCount": c.nulls, "distinctCount": c.distinct });
                    if let Some(n) = &c.numeric {
                        m["min"] = json!(n.min);
                        m["max"] = json!(n.max);
                    }
                    (c.name.clone(), m)
                })
                .collect();
            let body = json!({ "rowCount": p.rows, "columnMetrics": columns });
            if input {
                quality.insert(
                    "dataQualityMetrics".into(),
                    self.facet(
                        "1-0-3/DataQualityMetricsInputDatasetFacet.json#/$defs/DataQualityMetricsInputDatasetFacet",
                        body,
                    ),
                );
            } else {
                quality.insert(
                    "outputStatistics".into(),
                    self.facet(
                        "1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                        json!({ "rowCount": p.rows }),
                    ),
                );
            }
        }
        let mut d = json!({ "namespace": self.store, "name": name, "facets": facets });
        d[if input { "inputFacets" } else { "outputFacets" }] = Value::Object(quality);
        d
    }
}

/// Sends events in order; an HTTP failure is retried with backoff, then the
/// event is dropped and counted.
async fn deliver(
    sink: Sink,
    mut rx: tokio::sync::mpsc::Receiver<Value>,
    dropped: Arc<AtomicU64>,
    handled: Arc<AtomicU64>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut warned = false;
    // After an event fails every retry, the next ones get one try each
    // until one gets through: a consumer that is down costs the first
    // event's retries, not every event's.
    let mut healthy = true;
    while let Some(event) = rx.recv().await {
        let delivered = match &sink {
            Sink::File(path) => {
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| writeln!(f, "{event}"))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            }
            Sink::Http(url) => {
                let mut outcome = Err(String::new());
                for attempt in 0..if healthy { 3u32 } else { 1 } {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    outcome = match client.post(url).json(&event).send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("{url} answered {}", r.status())),
                        Err(e) => Err(format!("cannot reach {url}: {e}")),
                    };
                    if outcome.is_ok() {
                        break;
                    }
                }
                healthy = outcome.is_ok();
                outcome
            }
        };
        if let Err(e) = delivered {
            dropped.fetch_add(1, Ordering::Relaxed);
            if !warned {
                warned = true;
                tracing::warn!(error = %e, "an OpenLineage event was dropped");
            }
        }
        handled.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weir_ids_are_uuids() {
        assert_eq!(
            super::uuid("01a24d7d0398772995b78ffaac9ab471"),
            "01a24d7d-0398-7729-95b7-8ffaac9ab471"
        );
        assert_eq!(super::uuid("not-ours").len(), 36);
    }
}
