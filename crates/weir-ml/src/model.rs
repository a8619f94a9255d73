//! The model file: a versioned JSON document holding the model kind, its
//! fitted transforms and parameters. One enum covers every built-in model.

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::features::{Frame, InputSpec};
use crate::gbdt::GbdtModel;
use crate::linear::LinearModel;
use crate::mlp::MlpModel;
use crate::reference::ScoreReference;
use crate::{MlError, Result, Target};

const FORMAT: &str = "weir-model";
const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classification,
    Regression,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Model {
    Linear(LinearModel),
    Gbdt(GbdtModel),
    Mlp(MlpModel),
}

#[derive(Serialize, Deserialize)]
struct ModelFile {
    format: String,
    format_version: u32,
    weir_version: String,
    model: Model,
    /// The model's scores on held-out rows when it was trained, for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<ScoreReference>,
    /// The profile of the training rows' input columns, for feature drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    features: Option<weir_data::Profile>,
}

/// What a model file keeps beside the model for monitoring: its scores'
/// spread on held-out rows and the profile of its training inputs.
#[derive(Clone, Debug, Default)]
pub struct References {
    pub scores: Option<ScoreReference>,
    pub features: Option<weir_data::Profile>,
}

impl Model {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(&References::default())
    }

    /// The model file, with the references taken when it was made.
    pub fn to_bytes_with(&self, references: &References) -> Vec<u8> {
        serde_json::to_vec(&ModelFile {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            weir_version: weir_core::WEIR_VERSION.into(),
            model: self.clone(),
            reference: references.scores.clone(),
            features: references.features.clone(),
        })
        .expect("a model always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Ok(Model::read(bytes)?.0)
    }

    /// The model and the references its file holds.
    pub fn read(bytes: &[u8]) -> Result<(Model, References)> {
        let file: ModelFile =
            serde_json::from_slice(bytes).map_err(|e| MlError::ModelFormat(e.to_string()))?;
        if file.format != FORMAT || file.format_version > FORMAT_VERSION {
            return Err(MlError::ModelFormat(format!(
                "format {} v{} (this Weir reads {FORMAT} v{FORMAT_VERSION})",
                file.format, file.format_version
            )));
        }
        Ok((
            file.model,
            References {
                scores: file.reference,
                features: file.features,
            },
        ))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Model::Linear(m) if m.task == Task::Classification => "logistic",
            Model::Linear(_) => "linear",
            Model::Gbdt(_) => "gbdt",
            Model::Mlp(_) => "mlp",
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Model::Linear(m) => m.task,
            Model::Gbdt(m) => m.task,
            Model::Mlp(m) => m.task,
        }
    }

    pub fn target(&self) -> &Target {
        match self {
            Model::Linear(m) => &m.target,
            Model::Gbdt(m) => &m.target,
            Model::Mlp(m) => &m.target,
        }
    }

    /// The model's signature: the raw inputs it reads, in order.
    pub fn inputs(&self) -> Vec<InputSpec> {
        match self {
            Model::Linear(m) => m.features.inputs(),
            Model::Gbdt(m) => m.inputs(),
            Model::Mlp(m) => m.features.inputs(),
        }
    }

    /// Probabilities of the positive class, or predicted values.
    pub fn predict(&self, frame: &Frame) -> Result<Vec<f64>> {
        match self {
            Model::Linear(m) => m.predict(frame),
            Model::Gbdt(m) => m.predict(frame),
            Model::Mlp(m) => m.predict(frame),
        }
    }

    pub fn predict_batch(&self, batch: &RecordBatch) -> Result<Vec<f64>> {
        match self {
            Model::Linear(m) => m.predict(&m.features.frame(batch)?),
            Model::Gbdt(m) => m.predict(&m.frame(batch)?),
            Model::Mlp(m) => m.predict(&m.features.frame(batch)?),
        }
    }

    /// Rows that have a label, with their labels (for evaluation).
    pub fn labelled(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<f64>)> {
        crate::linear::labelled(batch, self.target())
    }
}
