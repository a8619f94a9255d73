//! Registering a model file made outside a pipeline (a Weir model file or
//! an ONNX graph) as a new version, after proving it loads and runs: a file
//! that would fail at serving time is refused before it gets a version.

use std::path::Path;

use bytes::Bytes;
use serde_json::json;
use weir_artifacts::ArtifactStore;
use weir_ml::{Model, ScoreReference};
use weir_onnx::{OnnxError, OnnxModel};
use weir_store::{ArtifactRecord, ModelVersion, NewModelVersion, Store};

use crate::ServeError;

/// Versions whose file is an ONNX graph have a source of this form.
const ONNX_SOURCE: &str = "weir-onnx:";

pub(crate) fn is_onnx(mv: &ModelVersion) -> bool {
    mv.source.starts_with(ONNX_SOURCE)
}

/// Runs a graph once on a row of zeros, so the first request pays no
/// first-call costs and a graph that cannot run at all is caught at load.
pub(crate) fn warm_up_onnx(model: &OnnxModel) -> Result<(), OnnxError> {
    let mut values = Vec::new();
    for input in model.inputs() {
        match (input.row_width(), input.shape[0]) {
            (Some(width), d) if d < 0 || d == 1 => values.push(vec![0.0; width]),
            // A fixed batch size other than one, or varying inner sizes:
            // nothing sensible to invent, the first request warms it.
            _ => return Ok(()),
        }
    }
    model.run(1, &values).map(|_| ())
}

/// What `weir models register` made.
#[derive(Debug, serde::Serialize)]
pub struct Registered {
    pub name: String,
    pub version: i64,
    pub format: &'static str,
    pub digest: String,
    pub inputs: serde_json::Value,
    pub outputs: serde_json::Value,
    /// How many scores the prediction reference was taken from, and where
    /// they came from (`--reference`, or the model file's own from training).
    pub reference_rows: Option<u64>,
    pub reference_from: Option<String>,
}

fn refused(path: &Path, reason: impl std::fmt::Display) -> ServeError {
    ServeError::BadRequest(format!("cannot register {}: {reason}", path.display()))
}

/// Registers `path` as the next version of `name`: the file goes to the
/// artifact store and the version to the registry only once it has loaded
/// and answered a warm-up call. With `rows_path` (a table of rows like
/// those the model will serve), the model scores them and their spread is
/// kept with the version as its prediction reference for drift; without
/// it, a Weir model file's own reference from training is kept.
pub async fn register_file(
    store: &Store,
    artifacts: &ArtifactStore,
    name: &str,
    path: &Path,
    description: Option<String>,
    rows_path: Option<&Path>,
) -> Result<Registered, ServeError> {
    if name.trim().is_empty() || name.contains(':') {
        return Err(ServeError::BadRequest(format!(
            "'{name}' is not a model name; use letters, digits, '-', '_' or '.' (':' separates a version)"
        )));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| refused(path, e))?;
    let file = path.display().to_string();
    let (identified, reference) = {
        let bytes = bytes.clone();
        let looks_onnx = path.extension().is_some_and(|e| e == "onnx");
        let rows = rows_path.map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            let identified = identify(&bytes, looks_onnx)?;
            let reference = match rows {
                Some(rows) => {
                    let (scores, features) = reference_of(&identified.model, &rows)
                        .map_err(|e| format!("--reference {}: {e}", rows.display()))?;
                    weir_ml::References {
                        scores: Some(scores),
                        features: Some(features),
                    }
                }
                None => identified.embedded.clone(),
            };
            Ok::<_, String>((identified, reference))
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|reason| refused(path, reason))?
    };
    let Identified {
        format,
        signature,
        source_prefix,
        ..
    } = identified;
    let stored = artifacts.put_bytes(Bytes::from(bytes)).await?;
    let hex = stored.digest.hex();
    let reference_from = reference.scores.as_ref().map(|_| {
        rows_path.map_or_else(
            || "the model file (training)".to_string(),
            |p| p.display().to_string(),
        )
    });
    let mut lineage = json!({"registered_from": file, "format": format});
    if let Some(r) = &reference.scores {
        lineage["prediction_reference"] = json!(r);
    }
    if let Some(features) = &reference.features {
        lineage["feature_reference"] = json!(features);
    }
    let record = ArtifactRecord {
        digest: stored.digest,
        size: stored.size as i64,
        kind: stored.kind,
        created_at: weir_core::now_ms(),
    };
    let version = store
        .register_model_file(
            &record,
            &NewModelVersion {
                name: name.to_string(),
                digest: Some(stored.digest),
                source: source_prefix.map_or_else(String::new, |p| format!("{p}{hex}")),
                metrics_json: "{}".into(),
                lineage_json: lineage.to_string(),
                description,
                tags: vec![("weir.format".into(), format.into())],
                ..Default::default()
            },
        )
        .await?;
    Ok(Registered {
        name: version.name,
        version: version.version,
        format,
        digest: hex,
        inputs: signature.0,
        outputs: signature.1,
        reference_rows: reference.scores.as_ref().map(|r| r.rows),
        reference_from,
    })
}

type Signature = (serde_json::Value, serde_json::Value);

/// A model file that loaded and ran.
struct Identified {
    format: &'static str,
    signature: Signature,
    /// The prefix that marks its versions' source (none for Weir models, the
    /// registry's default).
    source_prefix: Option<&'static str>,
    model: Loadable,
    /// A Weir model file's references from training.
    embedded: weir_ml::References,
}

enum Loadable {
    Native(Model),
    Onnx(OnnxModel),
}

/// Which kind of model file this is, proven by loading and running it.
fn identify(bytes: &[u8], looks_onnx: bool) -> Result<Identified, String> {
    let native = if looks_onnx {
        None
    } else {
        Model::read(bytes).ok()
    };
    if let Some((model, embedded)) = native {
        let inputs = model
            .inputs()
            .iter()
            .map(|i| json!({"name": i.name, "kind": format!("{:?}", i.kind)}))
            .collect();
        return Ok(Identified {
            format: "weir",
            signature: (inputs, json!([])),
            source_prefix: None,
            model: Loadable::Native(model),
            embedded,
        });
    }
    let model = OnnxModel::from_bytes(bytes).map_err(|e| {
        if looks_onnx {
            e.to_string()
        } else {
            format!("it is neither a Weir model file nor an ONNX model that can be served ({e})")
        }
    })?;
    warm_up_onnx(&model)
        .map_err(|e| format!("the graph loads but fails on a row of zeros: {e}"))?;
    Ok(Identified {
        format: "onnx",
        signature: (
            crate::onnx::metadata_inputs(&model).into(),
            crate::onnx::metadata_outputs(&model).into(),
        ),
        source_prefix: Some(ONNX_SOURCE),
        model: Loadable::Onnx(model),
        embedded: weir_ml::References::default(),
    })
}

/// The model's scores on the rows of `path` (CSV, Parquet or JSON lines),
/// taken the way serving takes them: a Weir model reads its named input
/// columns; a graph reads the columns in order as `dataframe_split` would
/// give them, so they are read as numbers.
fn reference_of(
    model: &Loadable,
    path: &Path,
) -> Result<(ScoreReference, weir_data::Profile), String> {
    let table = weir_data::read_table(
        path,
        &weir_data::IngestOptions::new(path.display().to_string()),
    )
    .map_err(|e| e.to_string())?;
    let features = weir_data::profile(&table).map_err(|e| e.to_string())?;
    let scores = match model {
        Loadable::Native(model) => model.predict_batch(&table).map_err(|e| e.to_string())?,
        Loadable::Onnx(model) => {
            let body = json!({"dataframe_split": dataframe_split(&table)?});
            let (rows, inputs) =
                crate::onnx::mlflow_inputs(model, &body).map_err(|e| e.to_string())?;
            let outputs = model.run(rows, &inputs).map_err(|e| e.to_string())?;
            crate::routes::oip_scores(&json!({"outputs": crate::onnx::oip_outputs(&outputs, None)}))
        }
    };
    let scores = ScoreReference::from_scores(&scores).ok_or_else(|| {
        format!(
            "the model gave {} usable scores (a probability or a value per row); a reference needs at least 10",
            scores.iter().filter(|s| s.is_finite()).count()
        )
    })?;
    Ok((scores, features))
}

/// A table as MLflow's `dataframe_split`: every column as numbers.
fn dataframe_split(table: &arrow::record_batch::RecordBatch) -> Result<serde_json::Value, String> {
    use arrow::array::{Array, Float64Array};
    use arrow::datatypes::DataType;
    let mut columns = Vec::new();
    for (field, column) in table.schema().fields().iter().zip(table.columns()) {
        let numbers = arrow::compute::cast(column, &DataType::Float64)
            .ok()
            .filter(|_| field.data_type().is_numeric() || *field.data_type() == DataType::Boolean)
            .ok_or_else(|| {
                format!(
                    "column '{}' is {}; an ONNX graph takes numbers",
                    field.name(),
                    field.data_type()
                )
            })?;
        if numbers.null_count() > 0 {
            return Err(format!(
                "column '{}' has {} missing values; an ONNX graph takes none",
                field.name(),
                numbers.null_count()
            ));
        }
        columns.push(
            numbers
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .values()
                .to_vec(),
        );
    }
    let data: Vec<serde_json::Value> = (0..table.num_rows())
        .map(|r| columns.iter().map(|c| json!(c[r])).collect())
        .collect();
    let names: Vec<&String> = table
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    Ok(json!({"columns": names, "data": data}))
}
