//! Tensor elements in their binary form: what the HTTP binary tensor
//! extension (`Inference-Header-Content-Length`, `binary_data_size`) and
//! gRPC's `raw_input_contents` / `raw_output_contents` carry. Elements are
//! row-major and little-endian; a BOOL is one byte; a BYTES element is a
//! 4-byte little-endian length and then that many bytes.
//!
//! Decoded numbers are widened to f64, which is what the JSON path reads a
//! number as (`serde_json::Number::as_f64`), so a binary request predicts
//! exactly what the same request in JSON does.

use serde_json::Value;

use crate::ServeError;

fn bad(message: impl Into<String>) -> ServeError {
    ServeError::BadRequest(message.into())
}

/// A tensor's elements as they arrived.
#[derive(Clone, Debug, Default)]
pub(crate) enum TensorData {
    /// No elements yet: JSON without `data`, waiting for its binary part.
    #[default]
    Missing,
    /// JSON `data`: flat or nested arrays.
    Json(Value),
    /// Binary or gRPC numbers of any numeric datatype, widened to f64.
    Numbers(Vec<f64>),
    Bools(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    /// The elements as JSON values, for the paths that read values (native
    /// models' named columns). A NaN becomes null, a missing value, as JSON
    /// cannot say NaN either.
    pub(crate) fn values(&self, input: &str) -> Result<Vec<Value>, ServeError> {
        Ok(match self {
            TensorData::Missing => return Err(missing(input)),
            TensorData::Json(v) => {
                let mut out = Vec::new();
                flatten(v, &mut out);
                out
            }
            TensorData::Numbers(v) => v
                .iter()
                .map(|x| serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number))
                .collect(),
            TensorData::Bools(v) => v.iter().map(|b| Value::Bool(*b)).collect(),
            TensorData::Bytes(v) => v
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.clone())
                        .map(Value::String)
                        .map_err(|_| {
                            bad(format!(
                                "input '{input}': BYTES element {i} is not UTF-8 text"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

pub(crate) fn missing(input: &str) -> ServeError {
    bad(format!(
        "input '{input}' has no data: send \"data\", or \"parameters\": {{\"binary_data_size\": N}} \
         with its bytes after the JSON (the binary tensor extension, with the \
         Inference-Header-Content-Length header)"
    ))
}

fn flatten(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other.clone()),
    }
}

/// Bytes per element of a fixed-size datatype; `None` for BYTES and for
/// names that are no OIP datatype.
pub(crate) fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

/// The number of elements a shape holds, refusing negative dimensions and
/// products that overflow.
pub(crate) fn element_count(input: &str, shape: &[i64]) -> Result<usize, ServeError> {
    shape
        .iter()
        .try_fold(1usize, |n, d| {
            usize::try_from(*d).ok().and_then(|d| n.checked_mul(d))
        })
        .ok_or_else(|| {
            bad(format!(
                "input '{input}': shape {shape:?} is invalid; every dimension must be 0 or more, \
                 and their product a number of elements that fits in memory"
            ))
        })
}

/// Decodes `raw`, the binary form of `count` elements of `datatype`.
pub(crate) fn decode_raw(
    input: &str,
    datatype: &str,
    count: usize,
    raw: &[u8],
) -> Result<TensorData, ServeError> {
    if datatype == "BYTES" {
        return decode_bytes(input, count, raw).map(TensorData::Bytes);
    }
    let size = element_size(datatype).ok_or_else(|| {
        bad(format!(
            "input '{input}': unknown datatype '{datatype}'; use BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64 or BYTES"
        ))
    })?;
    let expected = count.checked_mul(size);
    if expected != Some(raw.len()) {
        return Err(bad(format!(
            "input '{input}': {} bytes of binary data, but {count} {datatype} elements take {}; \
             binary_data_size must be the elements' size exactly",
            raw.len(),
            expected.map_or_else(|| "more than fits in memory".to_string(), |n| n.to_string())
        )));
    }
    let chunks = raw.chunks_exact(size);
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        c.try_into().expect("chunks_exact")
    }
    Ok(match datatype {
        "BOOL" => TensorData::Bools(raw.iter().map(|b| *b != 0).collect()),
        other => TensorData::Numbers(match other {
            "INT8" => chunks
                .map(|c| f64::from(i8::from_le_bytes(le(c))))
                .collect(),
            "UINT8" => chunks.map(|c| f64::from(c[0])).collect(),
            "INT16" => chunks
                .map(|c| f64::from(i16::from_le_bytes(le(c))))
                .collect(),
            "UINT16" => chunks
                .map(|c| f64::from(u16::from_le_bytes(le(c))))
                .collect(),
            "FP16" => chunks
                .map(|c| half::f16::from_le_bytes(le(c)).to_f64())
                .collect(),
            "INT32" => chunks
                .map(|c| f64::from(i32::from_le_bytes(le(c))))
                .collect(),
            "UINT32" => chunks
                .map(|c| f64::from(u32::from_le_bytes(le(c))))
                .collect(),
            "FP32" => chunks
                .map(|c| f64::from(f32::from_le_bytes(le(c))))
                .collect(),
            "INT64" => chunks.map(|c| i64::from_le_bytes(le(c)) as f64).collect(),
            "UINT64" => chunks.map(|c| u64::from_le_bytes(le(c)) as f64).collect(),
            _ => chunks.map(|c| f64::from_le_bytes(le(c))).collect(),
        }),
    })
}

/// `count` length-prefixed elements filling `raw` exactly.
fn decode_bytes(input: &str, count: usize, mut raw: &[u8]) -> Result<Vec<Vec<u8>>, ServeError> {
    let mut out = Vec::with_capacity(count.min(raw.len() / 4));
    for i in 0..count {
        let Some((prefix, rest)) = raw.split_first_chunk::<4>() else {
            return Err(bad(format!(
                "input '{input}': BYTES element {i} of {count} has no 4-byte length prefix; \
                 the binary data ends after {i} elements"
            )));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > rest.len() {
            return Err(bad(format!(
                "input '{input}': BYTES element {i}'s length prefix says {len} bytes, \
                 but only {} remain in its binary data",
                rest.len()
            )));
        }
        out.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    if !raw.is_empty() {
        return Err(bad(format!(
            "input '{input}': {} bytes are left after its {count} BYTES elements; \
             the shape and binary_data_size disagree",
            raw.len()
        )));
    }
    Ok(out)
}

/// The binary form of an answer's output: `data` as JSON holds it, written
/// as `datatype` says. Floats written as JSON numbers were widened from
/// their datatype, so narrowing them back is exact; `null` (a NaN) is NaN.
pub(crate) fn encode_raw(datatype: &str, data: &Value) -> Vec<u8> {
    let mut values = Vec::new();
    flatten(data, &mut values);
    let mut out = Vec::with_capacity(values.len() * element_size(datatype).unwrap_or(8));
    let float = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let int = |v: &Value| v.as_i64().unwrap_or_else(|| float(v) as i64);
    for v in &values {
        match datatype {
            "BOOL" => out.push(u8::from(v.as_bool().unwrap_or_else(|| float(v) != 0.0))),
            "INT8" => out.extend((int(v) as i8).to_le_bytes()),
            "UINT8" => out.extend((int(v) as u8).to_le_bytes()),
            "INT16" => out.extend((int(v) as i16).to_le_bytes()),
            "UINT16" => out.extend((int(v) as u16).to_le_bytes()),
            "INT32" => out.extend((int(v) as i32).to_le_bytes()),
            "UINT32" => out.extend((int(v) as u32).to_le_bytes()),
            "INT64" => out.extend(int(v).to_le_bytes()),
            "UINT64" => out.extend(v.as_u64().unwrap_or_else(|| int(v) as u64).to_le_bytes()),
            "FP16" => out.extend(half::f16::from_f64(float(v)).to_le_bytes()),
            "FP32" => out.extend((float(v) as f32).to_le_bytes()),
            "BYTES" => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                out.extend((text.len() as u32).to_le_bytes());
                out.extend(text.as_bytes());
            }
            _ => out.extend(float(v).to_le_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_fixed_datatype_round_trips_through_json_values() {
        let cases = [
            ("BOOL", json!([true, false, true])),
            ("INT8", json!([-128, 0, 127])),
            ("UINT8", json!([0, 7, 255])),
            ("INT16", json!([-32768, 1, 32767])),
            ("UINT16", json!([0, 2, 65535])),
            ("INT32", json!([-2147483648i64, 3, 2147483647])),
            ("UINT32", json!([0, 4, 4294967295u64])),
            (
                "INT64",
                json!([-9007199254740992i64, 5, 9007199254740992i64]),
            ),
            ("UINT64", json!([0, 6, 9007199254740992u64])),
            ("FP16", json!([0.5, -2.0, 65504.0])),
            (
                "FP32",
                json!([f64::from(0.1f32), -3.5, f64::from(f32::MAX)]),
            ),
            ("FP64", json!([0.1, -1e300, 5e-324])),
        ];
        for (datatype, data) in cases {
            let raw = encode_raw(datatype, &data);
            assert_eq!(raw.len(), 3 * element_size(datatype).unwrap(), "{datatype}");
            let back = decode_raw("x", datatype, 3, &raw).unwrap();
            // Numbers come back as the f64 the JSON path reads them as.
            let widened = |v: &Value| v.as_bool().map_or_else(|| json!(v.as_f64()), Value::Bool);
            let got: Vec<Value> = back.values("x").unwrap().iter().map(widened).collect();
            let sent: Vec<Value> = data.as_array().unwrap().iter().map(widened).collect();
            assert_eq!(got, sent, "{datatype}");
        }
    }

    #[test]
    fn bytes_elements_carry_their_length() {
        let data = json!(["UA", "", "naïve"]);
        let raw = encode_raw("BYTES", &data);
        assert_eq!(&raw[..6], &[2, 0, 0, 0, b'U', b'A']);
        let back = decode_raw("c", "BYTES", 3, &raw).unwrap();
        assert_eq!(back.values("c").unwrap(), data.as_array().unwrap().clone());
    }

    #[test]
    fn binary_data_that_disagrees_with_its_shape_is_refused() {
        let err = |datatype: &str, count: usize, raw: &[u8]| {
            decode_raw("x", datatype, count, raw)
                .unwrap_err()
                .to_string()
        };
        let e = err("FP32", 3, &[0; 8]);
        assert!(
            e.contains("8 bytes of binary data, but 3 FP32 elements take 12"),
            "{e}"
        );
        let e = err("BYTES", 1, &[9, 0, 0, 0, b'a']);
        assert!(
            e.contains("length prefix says 9 bytes, but only 1 remain"),
            "{e}"
        );
        let e = err("BYTES", 2, &[1, 0, 0, 0, b'a', 1, 0]);
        assert!(
            e.contains("element 1 of 2 has no 4-byte length prefix"),
            "{e}"
        );
        let e = err("BYTES", 1, &[0, 0, 0, 0, 1]);
        assert!(e.contains("1 bytes are left"), "{e}");
        let e = err("FP8", 1, &[0]);
        assert!(e.contains("unknown datatype 'FP8'"), "{e}");
        let e = decode_raw("x", "FP64", usize::MAX, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than fits"), "{e}");
        assert!(element_count("x", &[-1, 2]).is_err());
        assert!(element_count("x", &[i64::MAX, i64::MAX]).is_err());
    }
}
