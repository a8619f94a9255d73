//! `weir/evaluate`: metrics of a model on a table, overall and per slice of
//! a column (e.g. per carrier). The report is the step's `metrics` output;
//! `predictions` is the labelled rows with a `prediction` column added.

use std::collections::BTreeMap;

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use serde::Deserialize;
use weir_ml::{metrics, Model};

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Params {
    /// A column to compute the metrics per value of.
    #[serde(default)]
    pub slice_by: Option<String>,
    /// Metric names are `<prefix>.<metric>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    "test".into()
}

/// Metrics with NaN (e.g. AUC of a one-class slice) shown as null.
fn finite(m: BTreeMap<String, f64>) -> BTreeMap<String, Option<f64>> {
    m.into_iter()
        .map(|(k, v)| (k, v.is_finite().then_some(v)))
        .collect()
}

/// A model's metrics on a table: overall and per value of `slice_by`.
pub(crate) struct Scored {
    pub overall: BTreeMap<String, f64>,
    /// column -> value -> metrics.
    pub slices: BTreeMap<String, BTreeMap<String, BTreeMap<String, Option<f64>>>>,
    pub rows: arrow::record_batch::RecordBatch,
    pub scores: Vec<f64>,
}

pub(crate) fn score(
    model: &Model,
    table: &arrow::record_batch::RecordBatch,
    slice_by: Option<&str>,
    log: Option<&super::StepLog>,
) -> Result<Scored, EngineError> {
    let (rows, y) = model.labelled(table)?;
    if y.is_empty() {
        return Err(EngineError::StepFailed(format!(
            "no row of the table has a value for the target '{}'",
            model.target()
        )));
    }
    let scores = model.predict_batch(&rows)?;
    let overall = metrics::for_task(model.task(), &y, &scores);
    let mut slices = BTreeMap::new();
    if let Some(column) = slice_by {
        let col = weir_data::column(&rows, column, "with.slice_by")?;
        let text =
            arrow::compute::cast(col, &DataType::Utf8).map_err(weir_data::DataError::from)?;
        let text = text.as_any().downcast_ref::<StringArray>().expect("utf8");
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for r in 0..text.len() {
            let key = if text.is_null(r) {
                "(null)".to_string()
            } else {
                text.value(r).to_string()
            };
            groups.entry(key).or_default().push(r);
        }
        let mut per_value = BTreeMap::new();
        for (value, idx) in groups {
            let ys: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
            let ps: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
            let m = metrics::for_task(model.task(), &ys, &ps);
            if let Some(log) = log {
                log.line(format!(
                    "  {column}={value:<8} rows {:>7} {}",
                    idx.len(),
                    m.iter()
                        .filter(|(k, _)| *k != "rows")
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                ));
            }
            per_value.insert(value, finite(m));
        }
        slices.insert(column.to_string(), per_value);
    }
    Ok(Scored {
        overall,
        slices,
        rows,
        scores,
    })
}

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: Params = params(ctx.step).map_err(EngineError::StepFailed)?;
    let bytes = std::fs::read(ctx.input("model"))
        .map_err(EngineError::io("cannot read", ctx.input("model")))?;
    let model = Model::from_bytes(&bytes)?;
    let table = weir_data::read_parquet(ctx.input("table"))?;
    let Scored {
        overall,
        slices,
        rows,
        scores,
    } = score(&model, &table, p.slice_by.as_deref(), Some(ctx.log))?;
    let mut out = OpOutcome::default();
    for (k, v) in &overall {
        ctx.log.line(format!("{}.{k} = {v:.6}", p.prefix));
        out.metric(format!("{}.{k}", p.prefix), *v);
    }
    let report = serde_json::json!({
        "target": model.target().to_string(),
        "task": model.task(),
        "prefix": p.prefix,
        "overall": finite(overall),
        "slices": slices,
    });
    let mut columns = rows.columns().to_vec();
    let mut fields: Vec<arrow::datatypes::Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    columns.push(std::sync::Arc::new(arrow::array::Float64Array::from(
        scores,
    )));
    fields.push(arrow::datatypes::Field::new(
        "prediction",
        DataType::Float64,
        false,
    ));
    let predictions = arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )
    .map_err(weir_data::DataError::from)?;
    weir_data::write_parquet(&predictions, &ctx.output("predictions"))?;
    let path = ctx.output("metrics");
    std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("json"))
        .map_err(EngineError::io("cannot write", &path))?;
    Ok(out)
}
