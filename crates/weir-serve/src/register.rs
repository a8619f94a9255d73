//! Registering a model file made outside a pipeline (a Weir model file or
//! an ONNX graph) as a new version, after proving it loads and runs: a file
//! that would fail at serving time is refused before it gets a version.

use std::path::Path;

use bytes::Bytes;
use serde_json::json;
use weir_artifacts::ArtifactStore;
use weir_ml::Model;
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
}

fn refused(path: &Path, reason: impl std::fmt::Display) -> ServeError {
    ServeError::BadRequest(format!("cannot register {}: {reason}", path.display()))
}

/// Registers `path` as the next version of `name`: the file goes to the
/// artifact store and the version to the registry only once it has loaded
/// and answered a warm-up call.
pub async fn register_file(
    store: &Store,
    artifacts: &ArtifactStore,
    name: &str,
    path: &Path,
    description: Option<String>,
) -> Result<Registered, ServeError> {
    if name.trim().is_empty() || name.contains(':') {
        return Err(ServeError::BadRequest(format!(
            "'{name}' is not a model name; use letters, digits, '-', '_' or '.' (':' separates a version)"
        )));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| refused(path, e))?;
    let file = path.display().to_string();
    let (format, signature, source_prefix) = {
        let bytes = bytes.clone();
        let looks_onnx = path.extension().is_some_and(|e| e == "onnx");
        tokio::task::spawn_blocking(move || identify(&bytes, looks_onnx))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .map_err(|reason| refused(path, reason))?
    };
    let stored = artifacts.put_bytes(Bytes::from(bytes)).await?;
    let hex = stored.digest.hex();
    let lineage = json!({"registered_from": file, "format": format});
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
    })
}

type Signature = (serde_json::Value, serde_json::Value);

/// Which kind of model file this is, its signature, and the source prefix
/// that marks its versions (none for Weir models, the registry's default).
fn identify(
    bytes: &[u8],
    looks_onnx: bool,
) -> Result<(&'static str, Signature, Option<&'static str>), String> {
    let native = if looks_onnx {
        None
    } else {
        Model::from_bytes(bytes).ok()
    };
    if let Some(model) = native {
        let inputs = model
            .inputs()
            .iter()
            .map(|i| json!({"name": i.name, "kind": format!("{:?}", i.kind)}))
            .collect();
        return Ok(("weir", (inputs, json!([])), None));
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
    Ok((
        "onnx",
        (
            crate::onnx::metadata_inputs(&model).into(),
            crate::onnx::metadata_outputs(&model).into(),
        ),
        Some(ONNX_SOURCE),
    ))
}
