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
        file.model.check().map_err(|reason| {
            MlError::ModelFormat(format!("the model file's parts disagree: {reason}"))
        })?;
        Ok((
            file.model,
            References {
                scores: file.reference,
                features: file.features,
            },
        ))
    }

    /// That every index the model follows when it predicts is in bounds and
    /// every tree ends in leaves: true of whatever training makes, checked
    /// because a model file can also come from `weir models register`.
    fn check(&self) -> std::result::Result<(), String> {
        match self {
            Model::Linear(m) => {
                m.features.check()?;
                let width = m.features.width();
                if m.weights.len() != width {
                    return Err(format!(
                        "{} weights for {width} encoded features",
                        m.weights.len()
                    ));
                }
            }
            Model::Mlp(m) => {
                m.features.check()?;
                let mut inputs = m.features.width();
                if m.layers.is_empty() {
                    return Err("the network has no layers".into());
                }
                for (k, layer) in m.layers.iter().enumerate() {
                    if layer.inputs != inputs
                        || layer.outputs == 0
                        || layer.bias.len() != layer.outputs
                        || Some(layer.weights.len()) != layer.inputs.checked_mul(layer.outputs)
                    {
                        return Err(format!(
                            "layer {k} has {} inputs, {} outputs, {} weights and {} biases after {inputs} values",
                            layer.inputs,
                            layer.outputs,
                            layer.weights.len(),
                            layer.bias.len()
                        ));
                    }
                    inputs = layer.outputs;
                }
            }
            Model::Gbdt(m) => {
                for (t, tree) in m.trees.iter().enumerate() {
                    tree.check(m.features.len())
                        .map_err(|e| format!("tree {t}: {e}"))?;
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The fuzz target's seed models: one of each kind, as training wrote them.
    fn seed(name: &str) -> Value {
        let path = format!(
            "{}/../../fuzz/corpus/model_file/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn refused(file: &Value) -> String {
        match Model::read(&serde_json::to_vec(file).unwrap()) {
            Ok(_) => panic!("a damaged model was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn trained_models_load_and_damaged_ones_are_refused_with_the_reason() {
        for name in ["linear", "logistic", "gbdt", "mlp"] {
            Model::read(&serde_json::to_vec(&seed(name)).unwrap()).unwrap();
        }

        let mut linear = seed("linear");
        linear["model"]["weights"].as_array_mut().unwrap().pop();
        assert!(
            refused(&linear).contains("weights for"),
            "{}",
            refused(&linear)
        );

        let mut gbdt = seed("gbdt");
        gbdt["model"]["trees"][0]["nodes"][0]["right"] = 0.into();
        assert!(refused(&gbdt).contains("tree 0: node 0 leads to 0"));
        let mut gbdt = seed("gbdt");
        gbdt["model"]["trees"][0]["nodes"][0]["feature"] = 99.into();
        assert!(refused(&gbdt).contains("splits on feature 99"));
        let mut gbdt = seed("gbdt");
        gbdt["model"]["trees"][0]["leaves"] = Value::Array(vec![]);
        assert!(refused(&gbdt).contains("no leaves"));

        let mut mlp = seed("mlp");
        mlp["model"]["layers"][0]["bias"]
            .as_array_mut()
            .unwrap()
            .pop();
        assert!(refused(&mlp).contains("layer 0 has"), "{}", refused(&mlp));
        let mut mlp = seed("mlp");
        mlp["model"]["layers"] = Value::Array(vec![]);
        assert!(refused(&mlp).contains("no layers"));
    }
}
