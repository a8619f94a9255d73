//! The training target: a column, or a comparison on a column that defines a
//! binary label (`arr_delay > 15`). Rows whose target is missing are left out.

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::features::numeric_values;
use crate::{MlError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<CmpOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl Target {
    /// Parses `column` or `column OP number` (OP one of > >= < <= ==).
    pub fn parse(text: &str) -> Result<Target> {
        let text = text.trim();
        for (sym, op) in [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
        ] {
            if let Some((col, num)) = text.split_once(sym) {
                let threshold: f64 = num.trim().parse().map_err(|_| {
                    MlError::invalid(
                        "with.target",
                        format!("'{}' is not a number in '{text}'", num.trim()),
                    )
                })?;
                let column = col.trim();
                if column.is_empty() {
                    return Err(MlError::invalid(
                        "with.target",
                        format!("'{text}' names no column"),
                    ));
                }
                return Ok(Target {
                    column: column.into(),
                    op: Some(op),
                    threshold: Some(threshold),
                });
            }
        }
        if text.is_empty() {
            return Err(MlError::invalid(
                "with.target",
                "name the target column, e.g. `target: \"arr_delay > 15\"`",
            ));
        }
        Ok(Target {
            column: text.into(),
            op: None,
            threshold: None,
        })
    }

    pub fn is_comparison(&self) -> bool {
        self.op.is_some()
    }

    /// Label per row; `None` where the target is missing.
    pub fn labels(&self, batch: &RecordBatch) -> Result<Vec<Option<f64>>> {
        let col = weir_data::column(batch, &self.column, "with.target")?;
        if !col.data_type().is_numeric() && col.data_type() != &DataType::Boolean {
            return Err(MlError::invalid(
                "with.target",
                format!("target column '{}' is {}; use a numeric or boolean column, or a comparison like '{} > 0'", self.column, col.data_type(), self.column),
            ));
        }
        let values = numeric_values(col.as_ref())?;
        Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                if col.is_null(i) || !v.is_finite() {
                    return None;
                }
                Some(match (self.op, self.threshold) {
                    (Some(op), Some(t)) => {
                        let hit = match op {
                            CmpOp::Gt => v > t,
                            CmpOp::Ge => v >= t,
                            CmpOp::Lt => v < t,
                            CmpOp::Le => v <= t,
                            CmpOp::Eq => v == t,
                        };
                        if hit {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    _ => v,
                })
            })
            .collect())
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.op, self.threshold) {
            (Some(op), Some(t)) => {
                let sym = match op {
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Eq => "==",
                };
                write!(f, "{} {sym} {t}", self.column)
            }
            _ => f.write_str(&self.column),
        }
    }
}
