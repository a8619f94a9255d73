//! Request decoding: OIP v2 tensors and MLflow dataframes both become named
//! columns of JSON values, which become a model [`Frame`] after every name,
//! type and length has been checked against the model's signature.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use weir_ml::{Column, Frame, InputKind, InputSpec};

use crate::tensor::{self, TensorData};
use crate::ServeError;

fn bad(message: impl Into<String>) -> ServeError {
    ServeError::BadRequest(message.into())
}

/// Named columns, all of one length.
pub(crate) struct Columns {
    pub rows: usize,
    pub values: BTreeMap<String, Vec<Value>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OipRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    pub inputs: Vec<OipTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<OipRequestedOutput>>,
}

#[derive(Clone, Deserialize)]
pub(crate) struct OipRequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OipTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, deserialize_with = "json_data")]
    pub data: TensorData,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

fn json_data<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TensorData, D::Error> {
    Value::deserialize(d).map(TensorData::Json)
}

/// The header that says a body is JSON followed by binary tensors, and how
/// many of its bytes are the JSON.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

impl OipRequest {
    /// An OIP request body: JSON, or with the binary tensor extension the
    /// first `json_len` bytes JSON and the rest each input's binary data,
    /// in input order, for the inputs whose `binary_data_size` says so.
    pub(crate) fn parse(body: &[u8], json_len: Option<usize>) -> Result<OipRequest, ServeError> {
        let malformed = |e: serde_json::Error| bad(format!("malformed JSON body: {e}"));
        let Some(json_len) = json_len else {
            let request: OipRequest = serde_json::from_slice(body).map_err(malformed)?;
            request.check_complete()?;
            return Ok(request);
        };
        if json_len > body.len() {
            return Err(bad(format!(
                "Inference-Header-Content-Length says {json_len} bytes of JSON, but the body has only {}",
                body.len()
            )));
        }
        let (json, mut binary) = body.split_at(json_len);
        let mut request: OipRequest = serde_json::from_slice(json).map_err(malformed)?;
        for tensor in &mut request.inputs {
            let Some(size) = tensor.binary_data_size()? else {
                continue;
            };
            if !matches!(tensor.data, TensorData::Missing) {
                return Err(bad(format!(
                    "input '{}' has both \"data\" and a binary_data_size; send one",
                    tensor.name
                )));
            }
            if size > binary.len() {
                return Err(bad(format!(
                    "input '{}': binary_data_size is {size} bytes, but only {} bytes of binary data remain after the JSON",
                    tensor.name,
                    binary.len()
                )));
            }
            let (raw, rest) = binary.split_at(size);
            binary = rest;
            let count = tensor::element_count(&tensor.name, &tensor.shape)?;
            tensor.data = tensor::decode_raw(&tensor.name, &tensor.datatype, count, raw)?;
        }
        if !binary.is_empty() {
            return Err(bad(format!(
                "{} bytes follow the JSON that no input's binary_data_size claims",
                binary.len()
            )));
        }
        request.check_complete()?;
        Ok(request)
    }

    fn check_complete(&self) -> Result<(), ServeError> {
        match self
            .inputs
            .iter()
            .find(|t| matches!(t.data, TensorData::Missing))
        {
            Some(t) => Err(tensor::missing(&t.name)),
            None => Ok(()),
        }
    }

    /// Marks the outputs of an answer the client asked for in binary:
    /// every output with the request's `binary_data_output`, else those
    /// requested with `"binary_data": true`. The mark
    /// (`"parameters": {"binary_data": true}`) is replaced by the bytes
    /// when the answer is written (`binary::response`).
    pub(crate) fn mark_binary_outputs(&self, outputs: &mut [Value]) {
        let all = self
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_output"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for output in outputs {
            let asked = self
                .outputs
                .iter()
                .flatten()
                .find(|o| output["name"] == o.name.as_str())
                .and_then(|o| o.parameters.as_ref()?.get("binary_data")?.as_bool());
            if asked.unwrap_or(all) {
                output["parameters"] = serde_json::json!({"binary_data": true});
            }
        }
    }
}

impl OipTensor {
    fn binary_data_size(&self) -> Result<Option<usize>, ServeError> {
        let Some(size) = self
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        else {
            return Ok(None);
        };
        size.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                bad(format!(
                    "input '{}': binary_data_size must be a whole number of bytes, got {size}",
                    self.name
                ))
            })
    }
}

pub(crate) const NUMERIC_TYPES: &[&str] = &[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64",
];

/// OIP v2: each input tensor is a column; its first dimension is the batch.
pub(crate) fn oip_columns(request: &OipRequest) -> Result<Columns, ServeError> {
    if request.inputs.is_empty() {
        return Err(bad("'inputs' is empty; send one tensor per model input"));
    }
    let mut values = BTreeMap::new();
    let mut rows = None;
    for tensor in &request.inputs {
        let name = &tensor.name;
        if values.contains_key(name) {
            return Err(bad(format!("input '{name}' is given twice")));
        }
        if tensor.datatype != "BYTES" && !NUMERIC_TYPES.contains(&tensor.datatype.as_str()) {
            return Err(bad(format!("input '{name}': unknown datatype '{}'; use BYTES, BOOL, INT64, FP64 or another OIP datatype", tensor.datatype)));
        }
        if tensor.shape.is_empty() || tensor.shape.iter().any(|d| *d < 0) {
            return Err(bad(format!("input '{name}': shape {:?} is invalid; a column of n values has shape [n] or [n, 1]", tensor.shape)));
        }
        if tensor.shape.iter().skip(1).any(|d| *d != 1) {
            return Err(bad(format!("input '{name}': shape {:?} has more than one value per row; send one tensor per feature with shape [n]", tensor.shape)));
        }
        let data = tensor.data.values(name)?;
        let n = tensor.shape[0] as usize;
        if data.len() != n {
            return Err(bad(format!(
                "input '{name}': shape {:?} says {n} values but data has {}",
                tensor.shape,
                data.len()
            )));
        }
        for (i, v) in data.iter().enumerate() {
            let ok = match tensor.datatype.as_str() {
                "BYTES" => v.is_string() || v.is_null(),
                "BOOL" => v.is_boolean() || v.is_null(),
                _ => v.is_number() || v.is_null(),
            };
            if !ok {
                return Err(bad(format!(
                    "input '{name}': datatype {} but element {i} is {}",
                    tensor.datatype,
                    describe(v)
                )));
            }
        }
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => return Err(bad(format!("input '{name}' has {n} rows but an earlier input has {r}; every input needs one value per row"))),
            _ => {}
        }
        values.insert(name.clone(), data);
    }
    Ok(Columns {
        rows: rows.unwrap_or(0),
        values,
    })
}

pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Null => "null".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// MLflow's scoring formats: `dataframe_split`, `dataframe_records`,
/// `inputs` / `instances` (columns or records).
pub(crate) fn mlflow_columns(body: &Value) -> Result<Columns, ServeError> {
    let Value::Object(map) = body else {
        return Err(bad("the body must be a JSON object with one of: dataframe_split, dataframe_records, inputs, instances"));
    };
    let known = [
        "dataframe_split",
        "dataframe_records",
        "inputs",
        "instances",
        "params",
    ];
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(format!("unknown field '{unknown}'; use one of: dataframe_split, dataframe_records, inputs, instances")));
    }
    let formats: Vec<&str> = known[..4]
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .collect();
    match formats.as_slice() {
        ["dataframe_split"] => split_columns(&map["dataframe_split"]),
        ["dataframe_records"] => record_columns(&map["dataframe_records"], "dataframe_records"),
        [key @ ("inputs" | "instances")] => match &map[*key] {
            Value::Object(cols) => {
                let mut values = BTreeMap::new();
                let mut rows = None;
                for (name, col) in cols {
                    let col = match col {
                        Value::Array(items) => items.clone(),
                        scalar => vec![scalar.clone()],
                    };
                    match rows {
                        None => rows = Some(col.len()),
                        Some(r) if r != col.len() => {
                            return Err(bad(format!(
                                "{key}.{name} has {} values but another column has {r}",
                                col.len()
                            )))
                        }
                        _ => {}
                    }
                    values.insert(name.clone(), col);
                }
                Ok(Columns {
                    rows: rows.unwrap_or(0),
                    values,
                })
            }
            other => record_columns(other, key),
        },
        [] => Err(bad(
            "the body needs one of: dataframe_split, dataframe_records, inputs, instances",
        )),
        many => Err(bad(format!(
            "the body has several input formats ({}); send exactly one",
            many.join(", ")
        ))),
    }
}

fn split_columns(split: &Value) -> Result<Columns, ServeError> {
    #[derive(Deserialize)]
    struct Split {
        columns: Vec<String>,
        data: Vec<Vec<Value>>,
        #[serde(default)]
        #[allow(dead_code)]
        index: Option<Vec<Value>>,
    }
    let split: Split = serde_json::from_value(split.clone()).map_err(|e| {
        bad(format!(
            "dataframe_split: {e}; expected {{\"columns\": [...], \"data\": [[...], ...]}}"
        ))
    })?;
    let mut values: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for c in &split.columns {
        if values
            .insert(c.clone(), Vec::with_capacity(split.data.len()))
            .is_some()
        {
            return Err(bad(format!(
                "dataframe_split: column '{c}' is listed twice"
            )));
        }
    }
    for (r, row) in split.data.iter().enumerate() {
        if row.len() != split.columns.len() {
            return Err(bad(format!(
                "dataframe_split: row {r} has {} values but there are {} columns",
                row.len(),
                split.columns.len()
            )));
        }
        for (c, v) in split.columns.iter().zip(row) {
            values.get_mut(c).expect("column").push(v.clone());
        }
    }
    Ok(Columns {
        rows: split.data.len(),
        values,
    })
}

fn record_columns(records: &Value, field: &str) -> Result<Columns, ServeError> {
    let Value::Array(records) = records else {
        return Err(bad(format!(
            "{field} must be a list of records like [{{\"column\": value}}]"
        )));
    };
    let mut names: Vec<String> = Vec::new();
    for (r, rec) in records.iter().enumerate() {
        let Value::Object(rec) = rec else {
            return Err(bad(format!("{field}[{r}] is not an object")));
        };
        for k in rec.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let mut values: BTreeMap<String, Vec<Value>> = names
        .iter()
        .map(|n| (n.clone(), Vec::with_capacity(records.len())))
        .collect();
    for rec in records {
        for n in &names {
            // A key missing from a record is a missing value, as in pandas.
            values
                .get_mut(n)
                .expect("name")
                .push(rec.get(n).cloned().unwrap_or(Value::Null));
        }
    }
    Ok(Columns {
        rows: records.len(),
        values,
    })
}

/// Checks columns against the model's signature and builds its input frame.
pub(crate) fn frame(inputs: &[InputSpec], mut columns: Columns) -> Result<Frame, ServeError> {
    let expected: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    if let Some(unknown) = columns
        .values
        .keys()
        .find(|k| !expected.contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown input '{unknown}'; the model expects: {}",
            expected.join(", ")
        )));
    }
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|n| !columns.values.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "missing input{} {}; the model expects: {}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            expected.join(", ")
        )));
    }
    if columns.rows == 0 {
        return Err(bad("the request has no rows"));
    }
    let mut out = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let values = columns.values.remove(&spec.name).expect("checked above");
        out.push(match spec.kind {
            InputKind::Numeric => Column::Numeric(
                values
                    .iter()
                    .enumerate()
                    .map(|(r, v)| match v {
                        Value::Number(n) => n.as_f64().ok_or_else(|| {
                            bad(format!(
                                "input '{}' row {r}: {n} is not a finite number",
                                spec.name
                            ))
                        }),
                        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
                        Value::Null => Ok(f64::NAN),
                        other => Err(bad(format!(
                            "input '{}' row {r}: expected a number, got {}",
                            spec.name,
                            describe(other)
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            InputKind::Datetime => Column::Numeric(
                values
                    .iter()
                    .enumerate()
                    .map(|(r, v)| match v {
                        Value::String(s) => weir_ml::parse_datetime(s).ok_or_else(|| {
                            bad(format!(
                                "input '{}' row {r}: '{s}' is not a date-time; send RFC 3339 \
                                 (2013-01-01T05:00:00Z) or YYYY-MM-DD HH:MM:SS",
                                spec.name
                            ))
                        }),
                        // A number is seconds since the Unix epoch.
                        Value::Number(n) => n.as_f64().ok_or_else(|| {
                            bad(format!(
                                "input '{}' row {r}: {n} is not a finite number",
                                spec.name
                            ))
                        }),
                        Value::Null => Ok(f64::NAN),
                        other => Err(bad(format!(
                            "input '{}' row {r}: expected a date-time, got {}",
                            spec.name,
                            describe(other)
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            InputKind::Text => Column::Text(
                values
                    .iter()
                    .enumerate()
                    .map(|(r, v)| match v {
                        Value::String(s) => Ok(Some(s.clone())),
                        Value::Number(n) => Ok(Some(n.to_string())),
                        Value::Bool(b) => Ok(Some(b.to_string())),
                        Value::Null => Ok(None),
                        other => Err(bad(format!(
                            "input '{}' row {r}: expected a string, got {}",
                            spec.name,
                            describe(other)
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        });
    }
    Ok(Frame {
        rows: columns.rows,
        columns: out,
    })
}

/// Which route a body came in on.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    /// `/invocations` (and `/v1/models/NAME:predict`): MLflow's formats.
    Mlflow,
    /// `/v2/models/NAME/infer`: Open Inference Protocol tensors.
    Oip,
    /// The same with the binary tensor extension: this many bytes of JSON
    /// (`Inference-Header-Content-Length`), then binary tensors.
    OipBinary { header_length: usize },
}

/// Decodes a request body the way its route does, up to the model's frame:
/// the whole path untrusted bytes take before a model sees them. The fuzz
/// targets (fuzz/) drive it; the routes call the parts, around their own
/// checks.
pub fn decode(protocol: Protocol, body: &[u8], inputs: &[InputSpec]) -> Result<Frame, ServeError> {
    let malformed = |e: serde_json::Error| bad(format!("malformed JSON body: {e}"));
    let columns = match protocol {
        Protocol::Mlflow => mlflow_columns(&serde_json::from_slice(body).map_err(malformed)?)?,
        Protocol::Oip => oip_columns(&OipRequest::parse(body, None)?)?,
        Protocol::OipBinary { header_length } => {
            oip_columns(&OipRequest::parse(body, Some(header_length))?)?
        }
    };
    frame(inputs, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec {
                name: "carrier".into(),
                kind: InputKind::Text,
            },
            InputSpec {
                name: "distance".into(),
                kind: InputKind::Numeric,
            },
        ]
    }

    #[test]
    fn every_mlflow_format_gives_the_same_frame() {
        let expected = Frame {
            rows: 2,
            columns: vec![
                Column::Text(vec![Some("UA".into()), None]),
                Column::Numeric(vec![1400.0, f64::NAN]),
            ],
        };
        let bodies = [
            json!({"dataframe_split": {"columns": ["carrier", "distance"], "data": [["UA", 1400], [null, null]]}}),
            json!({"dataframe_records": [{"carrier": "UA", "distance": 1400}, {}]}),
            json!({"inputs": {"carrier": ["UA", null], "distance": [1400, null]}}),
            json!({"instances": [{"carrier": "UA", "distance": 1400}, {"carrier": null}]}),
        ];
        for body in bodies {
            let got = frame(&inputs(), mlflow_columns(&body).unwrap()).unwrap();
            assert_eq!(got.rows, 2);
            assert_eq!(got.columns[0], expected.columns[0], "{body}");
            match &got.columns[1] {
                Column::Numeric(v) => assert!(v[0] == 1400.0 && v[1].is_nan(), "{body}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ambiguous_or_unknown_formats_are_rejected() {
        let err = mlflow_columns(&json!({"inputs": {}, "instances": []}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("several input formats"), "{err}");
        let err = mlflow_columns(&json!({"data": []}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown field 'data'"), "{err}");
        let err = mlflow_columns(&json!({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("row 0 has 2 values but there are 1 columns"),
            "{err}"
        );
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z_]{0,12}".prop_map(Value::String),
            Just(json!("carrier")),
            Just(json!("distance")),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("dataframe_split".to_string()),
                        Just("dataframe_records".to_string()),
                        Just("inputs".to_string()),
                        Just("columns".to_string()),
                        Just("data".to_string()),
                        Just("carrier".to_string()),
                        Just("distance".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any JSON body is decoded or rejected with a message: never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in arbitrary_json()) {
            if let Ok(columns) = mlflow_columns(&body) {
                let _ = frame(&inputs(), columns);
            }
            if let Ok(request) = serde_json::from_value::<OipRequest>(body) {
                if let Ok(columns) = oip_columns(&request) {
                    let _ = frame(&inputs(), columns);
                }
            }
        }
    }
}
