//! The ONNX side of both protocols: requests become one tensor per graph
//! input, answers carry each graph output in its own type and shape.
//!
//! ONNX graphs take whole tensors, not named feature columns, so the rules
//! differ from native models: OIP tensors are matched to graph inputs by
//! name with the graph's shape after the batch dimension; MLflow dataframes
//! are read in their column order (what `mlflow.onnx` does); and a missing
//! value (`null`) is refused, since a graph has no imputation of its own.

use serde_json::{json, Map, Value};
use weir_onnx::{Data, OnnxModel, Output, TensorSpec};

use crate::payload::{describe, OipRequest};
use crate::tensor::TensorData;
use crate::ServeError;

fn bad(message: impl Into<String>) -> ServeError {
    ServeError::BadRequest(message.into())
}

pub(crate) fn metadata_inputs(model: &OnnxModel) -> Vec<Value> {
    model.inputs().iter().map(tensor_metadata).collect()
}

pub(crate) fn metadata_outputs(model: &OnnxModel) -> Vec<Value> {
    model.outputs().iter().map(tensor_metadata).collect()
}

fn tensor_metadata(t: &TensorSpec) -> Value {
    json!({"name": t.name, "datatype": t.elem.oip_name(), "shape": t.shape})
}

/// A number for a graph input; `null` and non-numbers are named errors.
fn number(v: &Value, input: &str, at: usize) -> Result<f64, ServeError> {
    match v {
        Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        Value::Null => Err(bad(format!(
            "input '{input}': element {at} is null; this ONNX model takes no missing values (impute them, or serve a Weir model that does)"
        ))),
        other => Err(bad(format!(
            "input '{input}': element {at} is {}, expected a number",
            describe(other)
        ))),
    }
}

fn push_numbers(v: &Value, input: &str, out: &mut Vec<f64>) -> Result<(), ServeError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| push_numbers(x, input, out)),
        other => {
            let at = out.len();
            out.push(number(other, input, at)?);
            Ok(())
        }
    }
}

/// The graph's shape after the batch dimension, as OIP writes shapes.
fn inner_shape(spec: &TensorSpec) -> &[i64] {
    &spec.shape[1..]
}

/// OIP v2: one tensor per graph input, by name; the first dimension is the
/// batch and the rest must be the graph's.
pub(crate) fn oip_inputs(
    model: &OnnxModel,
    request: &OipRequest,
) -> Result<(usize, Vec<Vec<f64>>), ServeError> {
    let names = || {
        model
            .inputs()
            .iter()
            .map(|i| format!("'{}' {:?}", i.name, i.shape))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(extra) = request
        .inputs
        .iter()
        .find(|t| !model.inputs().iter().any(|i| i.name == t.name))
    {
        return Err(bad(format!(
            "unknown input '{}'; the model takes {}",
            extra.name,
            names()
        )));
    }
    let mut rows = None;
    let mut values = Vec::with_capacity(model.inputs().len());
    for spec in model.inputs() {
        let mut given = request.inputs.iter().filter(|t| t.name == spec.name);
        let tensor = given.next().ok_or_else(|| {
            bad(format!(
                "missing input '{}'; the model takes {}",
                spec.name,
                names()
            ))
        })?;
        if given.next().is_some() {
            return Err(bad(format!("input '{}' is given twice", spec.name)));
        }
        if tensor.datatype == "BYTES"
            || !crate::payload::NUMERIC_TYPES.contains(&tensor.datatype.as_str())
        {
            return Err(bad(format!(
                "input '{}': datatype {} cannot feed a {} tensor",
                spec.name,
                tensor.datatype,
                spec.elem.oip_name()
            )));
        }
        let shape_ok = tensor.shape.len() == spec.shape.len()
            && tensor.shape[0] >= 0
            && tensor.shape[1..]
                .iter()
                .zip(inner_shape(spec))
                .all(|(got, want)| *want < 0 || got == want);
        if !shape_ok {
            return Err(bad(format!(
                "input '{}': shape {:?} does not fit the model's {:?} (-1: any size; the first dimension is the batch)",
                spec.name, tensor.shape, spec.shape
            )));
        }
        let data = match &tensor.data {
            TensorData::Json(v) => {
                let mut data = Vec::new();
                push_numbers(v, &spec.name, &mut data)?;
                data
            }
            TensorData::Numbers(v) => v.clone(),
            TensorData::Bools(v) => v.iter().map(|b| f64::from(u8::from(*b))).collect(),
            // BYTES was refused above; `Missing` by the request's parser.
            TensorData::Bytes(_) | TensorData::Missing => {
                return Err(crate::tensor::missing(&spec.name))
            }
        };
        let n = tensor.shape[0] as usize;
        let expected: i64 = tensor.shape.iter().product();
        if data.len() as i64 != expected {
            return Err(bad(format!(
                "input '{}': shape {:?} says {expected} values but data has {}",
                spec.name,
                tensor.shape,
                data.len()
            )));
        }
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => {
                return Err(bad(format!(
                    "input '{}' has {n} rows but an earlier input has {r}",
                    spec.name
                )))
            }
            _ => {}
        }
        values.push(data);
    }
    Ok((rows.unwrap_or(0), values))
}

/// MLflow's scoring formats for a graph: `dataframe_split` (columns in
/// order: a one-input graph takes them all as its row, a many-input graph
/// takes one column per input), or `inputs`/`instances` as a row-major array
/// (one input) or an object of arrays by input name.
pub(crate) fn mlflow_inputs(
    model: &OnnxModel,
    body: &Value,
) -> Result<(usize, Vec<Vec<f64>>), ServeError> {
    let Value::Object(fields) = body else {
        return Err(bad("the body must be a JSON object such as {\"dataframe_split\": {...}} or {\"inputs\": [[...]]}"));
    };
    let known = [
        "dataframe_split",
        "inputs",
        "instances",
        "dataframe_records",
    ];
    let present: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| fields.contains_key(*k))
        .collect();
    match present.as_slice() {
        ["dataframe_split"] => split_inputs(model, &fields["dataframe_split"]),
        ["inputs"] | ["instances"] => tensor_inputs(model, &fields[present[0]], present[0]),
        ["dataframe_records"] => Err(bad(
            "dataframe_records carries no column order, which an ONNX graph needs; send dataframe_split or inputs",
        )),
        [] => Err(bad(
            "the body has none of dataframe_split, inputs, instances; send e.g. {\"dataframe_split\": {\"columns\": [...], \"data\": [[...]]}}",
        )),
        many => Err(bad(format!(
            "the body has {}; send exactly one",
            many.join(" and ")
        ))),
    }
}

fn split_inputs(model: &OnnxModel, split: &Value) -> Result<(usize, Vec<Vec<f64>>), ServeError> {
    let columns: Vec<&str> = split
        .get("columns")
        .and_then(Value::as_array)
        .map(|c| c.iter().map(|v| v.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    let data = split
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("dataframe_split.data must be an array of rows"))?;
    let width = data
        .first()
        .and_then(Value::as_array)
        .map_or(columns.len(), Vec::len);
    let mut flat = Vec::with_capacity(data.len() * width);
    for (r, row) in data.iter().enumerate() {
        let cells = row
            .as_array()
            .ok_or_else(|| bad(format!("dataframe_split.data[{r}] is not an array")))?;
        if cells.len() != width || (!columns.is_empty() && cells.len() != columns.len()) {
            return Err(bad(format!(
                "dataframe_split.data[{r}] has {} values; every row needs {}",
                cells.len(),
                columns.len().max(width)
            )));
        }
        for (c, cell) in cells.iter().enumerate() {
            let name = columns.get(c).copied().unwrap_or("?");
            flat.push(number(cell, name, r).map_err(|_| {
                bad(format!(
                    "dataframe_split.data[{r}][{c}] (column '{name}') is {}; this ONNX model takes numbers only, no missing values",
                    describe(cell)
                ))
            })?);
        }
    }
    let rows = data.len();
    let inputs = model.inputs();
    if inputs.len() == 1 {
        let spec = &inputs[0];
        if let Some(want) = spec.row_width() {
            if want != width {
                return Err(bad(format!(
                    "the model's input '{}' takes {want} values per row; the dataframe has {width} columns",
                    spec.name
                )));
            }
        }
        return Ok((rows, vec![flat]));
    }
    // Several graph inputs: one column each, by name.
    let mut values = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let c = columns
            .iter()
            .position(|n| *n == spec.name)
            .ok_or_else(|| {
                bad(format!(
                    "the model takes inputs {}; the dataframe has no column '{}'",
                    inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    spec.name
                ))
            })?;
        if spec.row_width() != Some(1) {
            return Err(bad(format!(
                "input '{}' takes more than one value per row; send it through OIP or as {{\"inputs\": {{\"{}\": [...]}}}}",
                spec.name, spec.name
            )));
        }
        values.push((0..rows).map(|r| flat[r * width + c]).collect());
    }
    Ok((rows, values))
}

fn tensor_inputs(
    model: &OnnxModel,
    value: &Value,
    field: &str,
) -> Result<(usize, Vec<Vec<f64>>), ServeError> {
    let one = |spec: &TensorSpec, v: &Value| -> Result<(usize, Vec<f64>), ServeError> {
        let rows = v.as_array().map(Vec::len).ok_or_else(|| {
            bad(format!(
                "{field}: input '{}' must be an array of rows",
                spec.name
            ))
        })?;
        let mut data = Vec::new();
        push_numbers(v, &spec.name, &mut data)?;
        Ok((rows, data))
    };
    let inputs = model.inputs();
    match value {
        Value::Array(_) if inputs.len() == 1 => {
            let (rows, data) = one(&inputs[0], value)?;
            Ok((rows, vec![data]))
        }
        Value::Object(by_name) => {
            let mut rows = None;
            let mut values = Vec::new();
            for spec in inputs {
                let v = by_name.get(&spec.name).ok_or_else(|| {
                    bad(format!("{field}: missing input '{}'", spec.name))
                })?;
                let (n, data) = one(spec, v)?;
                if rows.is_some_and(|r| r != n) {
                    return Err(bad(format!("{field}: input '{}' has {n} rows, an earlier one has {}", spec.name, rows.unwrap_or(0))));
                }
                rows = Some(n);
                values.push(data);
            }
            Ok((rows.unwrap_or(0), values))
        }
        _ => Err(bad(format!(
            "{field} must be an array of rows (a one-input model) or an object of arrays by input name"
        ))),
    }
}

fn data_json(data: &Data) -> Value {
    match data {
        Data::Bool(v) => json!(v),
        Data::I64(v) => json!(v),
        Data::F32(v) => json!(v),
        Data::F64(v) => json!(v),
        Data::Text(v) => json!(v),
    }
}

/// OIP output tensors, in the graph's order, limited to `requested`.
pub(crate) fn oip_outputs(outputs: &[Output], requested: Option<&[String]>) -> Vec<Value> {
    outputs
        .iter()
        .filter(|o| requested.is_none_or(|r| r.contains(&o.name)))
        .map(|o| {
            let datatype = match &o.data {
                Data::Bool(_) => "BOOL",
                Data::I64(_) => "INT64",
                Data::F32(_) => "FP32",
                Data::F64(_) => "FP64",
                Data::Text(_) => "BYTES",
            };
            json!({"name": o.name, "shape": o.shape, "datatype": datatype, "data": data_json(&o.data)})
        })
        .collect()
}

/// Row `r` of an output: a scalar when each row holds one value.
fn row_value(o: &Output, r: usize) -> Value {
    let width = o.shape.iter().skip(1).product::<usize>();
    let pick = |i: usize| match &o.data {
        Data::Bool(v) => json!(v[i]),
        Data::I64(v) => json!(v[i]),
        Data::F32(v) => json!(v[i]),
        Data::F64(v) => json!(v[i]),
        Data::Text(v) => json!(v[i]),
    };
    if width == 1 {
        pick(r)
    } else {
        Value::Array((r * width..(r + 1) * width).map(pick).collect())
    }
}

/// MLflow's answer: one prediction per row; a record of every output when
/// the graph has several (e.g. `{"label": 1, "probabilities": [..]}`).
pub(crate) fn mlflow_predictions(outputs: &[Output], rows: usize) -> Value {
    let predictions: Vec<Value> = (0..rows)
        .map(|r| match outputs {
            [only] => row_value(only, r),
            many => Value::Object(
                many.iter()
                    .map(|o| (o.name.clone(), row_value(o, r)))
                    .collect::<Map<_, _>>(),
            ),
        })
        .collect();
    json!({ "predictions": predictions })
}

/// Checks every output has one entry per row before any is sliced by row.
pub(crate) fn check_rows(outputs: &[Output], rows: usize) -> Result<(), ServeError> {
    match outputs
        .iter()
        .find(|o| o.shape.first().copied() != Some(rows))
    {
        Some(o) => Err(ServeError::Internal(format!(
            "output '{}' has shape {:?}, not one entry per input row ({rows})",
            o.name, o.shape
        ))),
        None => Ok(()),
    }
}
