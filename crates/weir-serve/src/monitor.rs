//! A monitoring check: the requests an endpoint (or a directly served
//! model) logged over a window, compared per feature with the profile of
//! the answering version's training inputs, and the feedback labels joined
//! to them by request id for online accuracy. `weir monitor` prints it;
//! `weir serve` runs it on a schedule, publishes it on /metrics and hands
//! it to the monitors that decide on alerts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use serde::Serialize;
use weir_artifacts::ArtifactStore;
use weir_data::{Drift, Profile};
use weir_store::Store;

use crate::predlog;
use crate::ServeError;

#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub window: Duration,
    /// The share of drifted features that makes the inputs as a whole drift.
    pub share: f64,
    /// Fewer logged rows than this in the window is "not enough data".
    pub min_rows: usize,
    /// How each feature is judged.
    pub method: weir_data::Method,
    /// The window ends here (epoch ms).
    pub now_ms: i64,
}

impl CheckOptions {
    pub fn new(window: Duration) -> CheckOptions {
        CheckOptions {
            window,
            share: weir_data::DATASET_SHARE,
            min_rows: MIN_ROWS,
            method: weir_data::Method::Auto,
            now_ms: weir_core::now_ms(),
        }
    }
}

/// Below this many rows a window's distribution says little (Evidently
/// tests any size; NannyML asks for chunks of a few hundred).
pub const MIN_ROWS: usize = 100;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub model: String,
    pub since: i64,
    pub until: i64,
    pub window_s: f64,
    pub versions: Vec<VersionReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VersionReport {
    pub version: i64,
    pub rows: usize,
    pub requests: usize,
    /// `ok`, `not_enough_data` or `no_reference`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// Reference features the logged requests do not carry.
    pub missing: Vec<String>,
    /// Features with no value at all in the window.
    pub all_null: Vec<String>,
    /// Text features' values never seen in the reference (up to 10 each).
    pub unseen: BTreeMap<String, Vec<String>>,
    /// PSI of the scores against the version's prediction reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_psi: Option<f64>,
    pub online: Online,
    #[serde(skip)]
    pub reference: Option<Profile>,
    #[serde(skip)]
    pub current: Option<Profile>,
}

/// Accuracy on the rows whose true label came back as feedback.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Online {
    pub labelled_rows: usize,
    pub labelled_requests: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
}

impl Report {
    /// The version that answered the most rows: the one alerts look at.
    pub fn main(&self) -> Option<&VersionReport> {
        self.versions.iter().max_by_key(|v| (v.rows, v.version))
    }
}

/// The endpoint or model `target` names, and the model behind it.
async fn model_of(store: &Store, target: &str) -> Result<String, ServeError> {
    if let Some(d) = store
        .deployments()
        .await?
        .into_iter()
        .find(|d| d.endpoint == target)
    {
        return Ok(d.model);
    }
    match store.model_version(target, None).await {
        Ok(mv) => Ok(mv.name),
        Err(e) if e.is_not_found() => Err(ServeError::BadRequest(format!(
            "'{target}' is neither an endpoint nor a registered model\n  hint: `weir models list` shows the models; `weir rollout status ENDPOINT` an endpoint"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Checks `target` over the window ending at `options.now_ms`.
pub async fn check(
    store: &Store,
    artifacts: &ArtifactStore,
    target: &str,
    options: &CheckOptions,
) -> Result<Report, ServeError> {
    let model = model_of(store, target).await?;
    let until = options.now_ms;
    let since = until - options.window.as_millis() as i64;
    let mut by_version: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for segment in store.segments(target, since, until).await? {
        let digest = segment
            .digest
            .parse()
            .map_err(|e: weir_core::DigestError| ServeError::Internal(e.to_string()))?;
        let bytes = artifacts.get(&digest).await?;
        let batch =
            weir_data::parquet_from_bytes(&format!("prediction log segment {}", segment.id), bytes)
                .map_err(|e| ServeError::Internal(e.to_string()))?;
        let batch = within(&batch, since, until)?;
        if batch.num_rows() > 0 {
            by_version.entry(segment.version).or_default().push(batch);
        }
    }
    let feedback = store.feedback_since(target, since).await?;
    let mut versions = Vec::new();
    for (version, batches) in by_version {
        let mv = store.model_version(&model, Some(version)).await?;
        let lineage: serde_json::Value = serde_json::from_str(&mv.lineage_json).unwrap_or_default();
        let reference: Option<Profile> =
            serde_json::from_value(lineage["feature_reference"].clone()).ok();
        let scores_reference = weir_ml::ScoreReference::from_json(&lineage["prediction_reference"]);
        versions.push(version_report(
            version,
            &batches,
            reference,
            scores_reference,
            &feedback,
            options,
        )?);
    }
    Ok(Report {
        target: target.to_string(),
        model,
        since,
        until,
        window_s: options.window.as_secs_f64(),
        versions,
    })
}

/// The rows of `batch` answered within `[since, until]`.
fn within(batch: &RecordBatch, since: i64, until: i64) -> Result<RecordBatch, ServeError> {
    let at = column(batch, predlog::AT)?.as_primitive::<TimestampMillisecondType>();
    let keep: arrow::array::BooleanArray = at
        .iter()
        .map(|t| t.map(|t| t >= since && t <= until))
        .collect();
    arrow::compute::filter_record_batch(batch, &keep)
        .map_err(|e| ServeError::Internal(e.to_string()))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, ServeError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| ServeError::Internal(format!("a prediction log segment lacks '{name}'")))
}

fn version_report(
    version: i64,
    batches: &[RecordBatch],
    reference: Option<Profile>,
    scores_reference: Option<weir_ml::ScoreReference>,
    feedback: &HashMap<String, String>,
    options: &CheckOptions,
) -> Result<VersionReport, ServeError> {
    // A version's segments hold its inputs, so they share columns; one that
    // does not (written by an older Weir, say) is read into the first's,
    // its gaps null, rather than failing the check.
    let schema = batches[0].schema();
    let aligned: Vec<RecordBatch> = batches
        .iter()
        .map(|b| align(b, &schema))
        .collect::<Result<_, _>>()?;
    let all = arrow::compute::concat_batches(&schema, &aligned)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let rows = all.num_rows();
    let ids = column(&all, predlog::REQUEST_ID)?.as_string::<i32>();
    let requests = ids
        .iter()
        .flatten()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let scores: Vec<Option<f64>> = column(&all, predlog::SCORE)?
        .as_primitive::<Float64Type>()
        .iter()
        .collect();
    let prediction_psi = scores_reference
        .filter(|_| rows >= options.min_rows)
        .map(|r| r.stability(scores.iter().flatten().copied()));
    let online = online(&all, &scores, feedback)?;
    let mut report = VersionReport {
        version,
        rows,
        requests,
        status: "ok".into(),
        drift: None,
        missing: Vec::new(),
        all_null: Vec::new(),
        unseen: BTreeMap::new(),
        prediction_psi,
        online,
        reference: None,
        current: None,
    };
    let Some(reference) = reference else {
        report.status = "no_reference".into();
        return Ok(report);
    };
    let keep: Vec<usize> = reference
        .columns
        .iter()
        .filter_map(|c| all.schema().index_of(&c.name).ok())
        .collect();
    report.missing = reference
        .columns
        .iter()
        .filter(|c| all.schema().index_of(&c.name).is_err())
        .map(|c| c.name.clone())
        .collect();
    let features = all
        .project(&keep)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let current = weir_data::profile(&features).map_err(|e| ServeError::Internal(e.to_string()))?;
    report.all_null = current
        .columns
        .iter()
        .filter(|c| rows > 0 && c.nulls == rows as u64)
        .map(|c| c.name.clone())
        .collect();
    for c in &current.columns {
        let (Some(top), Some(r)) = (&c.top, reference.column(&c.name)) else {
            continue;
        };
        let Some(known) = r.top.as_ref().filter(|t| t.exact) else {
            continue;
        };
        let new: Vec<String> = top
            .values
            .iter()
            .filter(|(v, _)| !known.values.iter().any(|(k, _)| k == v))
            .map(|(v, _)| v.clone())
            .take(10)
            .collect();
        if !new.is_empty() {
            report.unseen.insert(c.name.clone(), new);
        }
    }
    if rows < options.min_rows {
        report.status = "not_enough_data".into();
    } else {
        report.drift = Some(weir_data::drift_by(
            &reference,
            &current,
            options.share,
            options.method,
        ));
    }
    report.reference = Some(reference);
    report.current = Some(current);
    Ok(report)
}

/// `batch` with `schema`'s columns: those it lacks are all null.
fn align(
    batch: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, ServeError> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            _ => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| ServeError::Internal(e.to_string()))
}

/// Joins feedback to the logged rows by request id and row.
fn online(
    all: &RecordBatch,
    scores: &[Option<f64>],
    feedback: &HashMap<String, String>,
) -> Result<Online, ServeError> {
    let mut out = Online::default();
    if feedback.is_empty() {
        return Ok(out);
    }
    let ids = column(all, predlog::REQUEST_ID)?.as_string::<i32>();
    let row_of = column(all, predlog::ROW)?.as_primitive::<Int32Type>();
    let labels = column(all, predlog::LABEL)?.as_primitive::<Int64Type>();
    let parsed: HashMap<&str, Vec<serde_json::Value>> = feedback
        .iter()
        .filter_map(|(id, json)| Some((id.as_str(), serde_json::from_str(json).ok()?)))
        .collect();
    let (mut truth, mut predicted_scores, mut hits) = (Vec::new(), Vec::new(), Vec::new());
    let mut requests = std::collections::HashSet::new();
    let classifier = labels.null_count() < labels.len();
    for (i, score) in scores.iter().enumerate() {
        let Some(given) = parsed.get(ids.value(i)) else {
            continue;
        };
        let Some(t) = given.get(row_of.value(i) as usize).and_then(label_number) else {
            continue;
        };
        requests.insert(ids.value(i));
        truth.push(t);
        predicted_scores.push(score.unwrap_or(f64::NAN));
        if classifier && !labels.is_null(i) {
            hits.push(labels.value(i) as f64 == t);
        }
    }
    out.labelled_rows = truth.len();
    out.labelled_requests = requests.len();
    if truth.is_empty() {
        return Ok(out);
    }
    if classifier {
        out.accuracy = Some(hits.iter().filter(|h| **h).count() as f64 / hits.len().max(1) as f64);
        let both = truth.contains(&0.0) && truth.contains(&1.0);
        if both && predicted_scores.iter().all(|s| s.is_finite()) {
            out.auc = Some(weir_ml::metrics::roc_auc(&truth, &predicted_scores));
        }
    } else {
        let n = truth.len() as f64;
        let se: f64 = truth
            .iter()
            .zip(&predicted_scores)
            .map(|(t, p)| (t - p).powi(2))
            .sum();
        out.rmse = Some((se / n).sqrt());
    }
    Ok(out)
}

/// A label as a number: 1, 1.0, true and "1" all count as 1.
fn label_number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
