//! Feature transforms fitted on training data: numeric columns are imputed
//! with the training median and standardized; text columns are one-hot
//! encoded over the most frequent training categories, and a category never
//! seen in training encodes to all zeros.

use std::collections::HashMap;

use arrow::array::{Array, Float64Array, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::{MlError, Result};

/// Raw input columns, before transforms. Missing numbers are NaN.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Numeric(Vec<f64>),
    Text(Vec<Option<String>>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Numeric(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Input columns in the order of the model's transforms.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub rows: usize,
    pub columns: Vec<Column>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Numeric,
    Text,
}

/// One input the model expects: its signature entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub kind: InputKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transform", rename_all = "snake_case")]
pub enum FeatureTransform {
    Standardize {
        name: String,
        impute: f64,
        mean: f64,
        scale: f64,
    },
    OneHot {
        name: String,
        categories: Vec<String>,
    },
}

impl FeatureTransform {
    pub fn name(&self) -> &str {
        match self {
            FeatureTransform::Standardize { name, .. } | FeatureTransform::OneHot { name, .. } => {
                name
            }
        }
    }

    fn width(&self) -> usize {
        match self {
            FeatureTransform::Standardize { .. } => 1,
            FeatureTransform::OneHot { categories, .. } => categories.len(),
        }
    }

    fn kind(&self) -> InputKind {
        match self {
            FeatureTransform::Standardize { .. } => InputKind::Numeric,
            FeatureTransform::OneHot { .. } => InputKind::Text,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeaturePipeline {
    pub transforms: Vec<FeatureTransform>,
}

/// Encoded rows: every row has exactly one `(index, value)` entry per
/// transform, so rows are fixed-stride slices of `index` and `value`.
pub struct Design {
    pub rows: usize,
    pub stride: usize,
    pub width: usize,
    pub index: Vec<u32>,
    pub value: Vec<f64>,
}

impl Design {
    pub fn row(&self, r: usize) -> (&[u32], &[f64]) {
        let s = r * self.stride;
        (
            &self.index[s..s + self.stride],
            &self.value[s..s + self.stride],
        )
    }
}

impl FeaturePipeline {
    /// Fits transforms for `features` on `batch`. Numeric columns are
    /// standardized unless listed in `categorical`; text and boolean columns are one-hot.
    pub fn fit(
        batch: &RecordBatch,
        features: &[String],
        categorical: &[String],
        max_categories: usize,
    ) -> Result<Self> {
        if features.is_empty() {
            return Err(MlError::invalid(
                "with.features",
                "list at least one feature column",
            ));
        }
        for c in categorical {
            if !features.contains(c) {
                return Err(MlError::invalid(
                    "with.categorical",
                    format!("'{c}' is not in with.features"),
                ));
            }
        }
        let mut transforms = Vec::with_capacity(features.len());
        for name in features {
            let col = weir_data::column(batch, name, "with.features")?;
            let one_hot = categorical.contains(name) || !col.data_type().is_numeric();
            if one_hot {
                let text = text_values(col.as_ref())?;
                let mut counts: HashMap<&str, usize> = HashMap::new();
                for v in text.iter().flatten() {
                    *counts.entry(v).or_default() += 1;
                }
                let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
                by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                by_count.truncate(max_categories);
                if by_count.is_empty() {
                    return Err(MlError::invalid(
                        format!("with.features.{name}"),
                        "the column has no values in the training data",
                    ));
                }
                transforms.push(FeatureTransform::OneHot {
                    name: name.clone(),
                    categories: by_count.into_iter().map(|(c, _)| c.to_string()).collect(),
                });
            } else {
                let values = numeric_values(col.as_ref())?;
                let mut present: Vec<f64> =
                    values.iter().copied().filter(|v| v.is_finite()).collect();
                if present.is_empty() {
                    return Err(MlError::invalid(
                        format!("with.features.{name}"),
                        "the column is empty or all null in the training data",
                    ));
                }
                present.sort_by(|a, b| a.total_cmp(b));
                let median = present[present.len() / 2];
                let n = values.len() as f64;
                let filled = values
                    .iter()
                    .map(|v| if v.is_finite() { *v } else { median });
                let mean = filled.clone().sum::<f64>() / n;
                let var = filled.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let scale = if var > 0.0 { var.sqrt() } else { 1.0 };
                transforms.push(FeatureTransform::Standardize {
                    name: name.clone(),
                    impute: median,
                    mean,
                    scale,
                });
            }
        }
        Ok(FeaturePipeline { transforms })
    }

    pub fn width(&self) -> usize {
        self.transforms.iter().map(FeatureTransform::width).sum()
    }

    pub fn inputs(&self) -> Vec<InputSpec> {
        self.transforms
            .iter()
            .map(|t| InputSpec {
                name: t.name().to_string(),
                kind: t.kind(),
            })
            .collect()
    }

    /// Reads the model's input columns out of a batch.
    pub fn frame(&self, batch: &RecordBatch) -> Result<Frame> {
        read_frame(
            batch,
            self.transforms.iter().map(|t| (t.name(), t.kind())),
            "model input",
        )
    }

    pub fn encode(&self, frame: &Frame) -> Result<Design> {
        if frame.columns.len() != self.transforms.len() {
            return Err(MlError::invalid(
                "inputs",
                format!(
                    "expected {} columns, got {}",
                    self.transforms.len(),
                    frame.columns.len()
                ),
            ));
        }
        let stride = self.transforms.len();
        let mut index = vec![0u32; frame.rows * stride];
        let mut value = vec![0f64; frame.rows * stride];
        let mut offset = 0u32;
        for (j, (t, col)) in self.transforms.iter().zip(&frame.columns).enumerate() {
            if col.len() != frame.rows {
                return Err(MlError::Input {
                    input: t.name().into(),
                    message: format!("has {} values, expected {}", col.len(), frame.rows),
                });
            }
            match (t, col) {
                (
                    FeatureTransform::Standardize {
                        impute,
                        mean,
                        scale,
                        ..
                    },
                    Column::Numeric(v),
                ) => {
                    for (r, x) in v.iter().enumerate() {
                        let x = if x.is_finite() { *x } else { *impute };
                        index[r * stride + j] = offset;
                        value[r * stride + j] = (x - mean) / scale;
                    }
                }
                (FeatureTransform::OneHot { categories, .. }, Column::Text(v)) => {
                    let lookup: HashMap<&str, u32> = categories
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.as_str(), i as u32))
                        .collect();
                    for (r, x) in v.iter().enumerate() {
                        match x.as_deref().and_then(|s| lookup.get(s)) {
                            Some(&i) => {
                                index[r * stride + j] = offset + i;
                                value[r * stride + j] = 1.0;
                            }
                            // Unknown or missing category: no indicator is set.
                            None => {
                                index[r * stride + j] = offset;
                                value[r * stride + j] = 0.0;
                            }
                        }
                    }
                }
                _ => {
                    return Err(MlError::Input {
                        input: t.name().into(),
                        message: format!(
                            "expected {} values",
                            if t.kind() == InputKind::Numeric {
                                "numeric"
                            } else {
                                "text"
                            }
                        ),
                    })
                }
            }
            offset += t.width() as u32;
        }
        Ok(Design {
            rows: frame.rows,
            stride,
            width: self.width(),
            index,
            value,
        })
    }
}

/// The named columns of a batch, read as numbers or texts; `what` says in
/// errors where the names came from.
pub(crate) fn read_frame<'a>(
    batch: &RecordBatch,
    inputs: impl Iterator<Item = (&'a str, InputKind)>,
    what: &str,
) -> Result<Frame> {
    let mut columns = Vec::new();
    for (name, kind) in inputs {
        let col = weir_data::column(batch, name, what)?;
        columns.push(match kind {
            InputKind::Numeric => Column::Numeric(numeric_values(col.as_ref())?),
            InputKind::Text => Column::Text(text_values(col.as_ref())?),
        });
    }
    Ok(Frame {
        rows: batch.num_rows(),
        columns,
    })
}

pub(crate) fn numeric_values(col: &dyn Array) -> Result<Vec<f64>> {
    let cast = match col.data_type() {
        DataType::Boolean => arrow::compute::cast(
            &arrow::compute::cast(col, &DataType::Int8)?,
            &DataType::Float64,
        )?,
        t if t.is_numeric() => arrow::compute::cast(col, &DataType::Float64)?,
        t => {
            return Err(MlError::invalid(
                "features",
                format!("a {t} column cannot be used as a number"),
            ))
        }
    };
    let f = cast.as_any().downcast_ref::<Float64Array>().expect("f64");
    Ok((0..f.len())
        .map(|i| if f.is_null(i) { f64::NAN } else { f.value(i) })
        .collect())
}

pub(crate) fn text_values(col: &dyn Array) -> Result<Vec<Option<String>>> {
    let cast = arrow::compute::cast(col, &DataType::Utf8)?;
    let s = cast.as_any().downcast_ref::<StringArray>().expect("utf8");
    Ok(s.iter().map(|v| v.map(str::to_string)).collect())
}
