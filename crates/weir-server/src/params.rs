//! A request's fields, from the query string and (but for GET) the JSON
//! body, read with MLflow's leniency: numbers may arrive as strings, and
//! `run_uuid` stands in for `run_id`.

use std::fmt;

use axum::extract::{FromRequest, Request};
use axum::http::Method;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The request's fields. A body's `metrics` list is read straight into
/// typed points: a full log-batch is 1,000 of them, and building a JSON map
/// per point cost more than the database write.
pub struct Params(pub Map<String, Value>, Option<Vec<MetricIn>>);

/// A metric as sent, checked later so errors keep MLflow's wording.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MetricIn {
    pub key: Option<String>,
    pub value: Loose,
    pub timestamp: Loose,
    pub step: Loose,
}

/// A scalar that may come as a number or as a string.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Loose {
    #[default]
    Absent,
    Int(i64),
    Float(f64),
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
                Ok(i64::try_from(v).map_or(Loose::Float(v as f64), Loose::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
                Ok(Loose::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Text(v.to_string()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Absent)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl From<Option<&Value>> for Loose {
    fn from(v: Option<&Value>) -> Self {
        match v {
            None | Some(Value::Null) => Loose::Absent,
            Some(Value::Number(n)) => n
                .as_i64()
                .map_or_else(|| n.as_f64().map_or(Loose::Other, Loose::Float), Loose::Int),
            Some(Value::String(s)) => Loose::Text(s.clone()),
            Some(_) => Loose::Other,
        }
    }
}

impl MetricIn {
    pub fn from_value(v: &Value) -> Self {
        MetricIn {
            key: v.get("key").and_then(Value::as_str).map(str::to_string),
            value: v.get("value").into(),
            timestamp: v.get("timestamp").into(),
            step: v.get("step").into(),
        }
    }
}

/// A body object: `metrics` typed, every other field as JSON.
struct Body(Map<String, Value>, Option<Vec<MetricIn>>);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Body, A::Error> {
                let mut fields = Map::new();
                let mut metrics = None;
                while let Some(key) = a.next_key::<String>()? {
                    if key == "metrics" {
                        metrics =
                            Some(a.next_value::<Option<Vec<MetricIn>>>()?.unwrap_or_default());
                    } else {
                        fields.insert(key, a.next_value()?);
                    }
                }
                Ok(Body(fields, metrics))
            }
        }
        d.deserialize_map(V)
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut map = Map::new();
        for (k, v) in url_pairs(req.uri().query().unwrap_or("")) {
            match map.get_mut(&k) {
                Some(Value::Array(items)) => items.push(Value::String(v)),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, Value::String(v)]);
                }
                None => {
                    map.insert(k, Value::String(v));
                }
            }
        }
        if req.method() == Method::GET {
            return Ok(Params(map, None));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params(map, None));
        }
        match serde_json::from_slice::<Body>(&bytes) {
            Ok(Body(fields, metrics)) => {
                map.extend(fields);
                Ok(Params(map, metrics))
            }
            Err(e) if e.is_data() => {
                // A valid JSON document of the wrong shape (not an object, or
                // `metrics` not a list of objects).
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Object(_)) => Err(ApiError::InvalidParameter(format!(
                        "Invalid value for parameter 'metrics': {e}"
                    ))),
                    _ => Err(ApiError::BadRequest(
                        "the request body must be a JSON object".into(),
                    )),
                }
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "malformed JSON in the request body: {e}"
            ))),
        }
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl Params {
    pub fn opt_str(&self, key: &str) -> Option<String> {
        match self.0.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Array(a)) => a.first().and_then(|v| v.as_str().map(str::to_string)),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Result<String, ApiError> {
        self.opt_str(key).ok_or_else(|| missing(key))
    }

    /// `run_id`, or the older `run_uuid`.
    pub fn run_id(&self) -> Result<String, ApiError> {
        self.opt_str("run_id")
            .or_else(|| self.opt_str("run_uuid"))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("run_id"))
    }

    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| invalid_type(key, "an integer")),
            Some(Value::String(s)) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| invalid_type(key, "an integer")),
            _ => Err(invalid_type(key, "an integer")),
        }
    }

    pub fn experiment_id(&self, key: &str) -> Result<i64, ApiError> {
        let text = self.str(key)?;
        text.parse::<i64>().map_err(|_| {
            ApiError::NotFound(format!(
                "experiment '{text}' does not exist (experiment ids are integers)"
            ))
        })
    }

    /// Moves the `metrics` list out of the request.
    pub fn take_metrics(&mut self) -> Vec<MetricIn> {
        if let Some(metrics) = self.1.take() {
            return metrics;
        }
        self.list("metrics")
            .iter()
            .map(MetricIn::from_value)
            .collect()
    }

    /// The request's own fields as one metric (runs/log-metric).
    pub fn as_metric(&self) -> MetricIn {
        let fields = &self.0;
        MetricIn {
            key: self.opt_str("key"),
            value: fields.get("value").into(),
            timestamp: fields.get("timestamp").into(),
            step: fields.get("step").into(),
        }
    }

    pub fn list(&self, key: &str) -> Vec<Value> {
        match self.0.get(key) {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(v) => vec![v.clone()],
        }
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        self.list(key)
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    }

    /// `experiment_ids`: a list of integer ids (as strings or numbers).
    pub fn experiment_ids(&self) -> Result<Vec<i64>, ApiError> {
        self.strings("experiment_ids")
            .iter()
            .map(|id| {
                id.parse::<i64>().map_err(|_| {
                    ApiError::InvalidParameter(format!("experiment id '{id}' is not an integer"))
                })
            })
            .collect()
    }

    /// `models: [{"model_id": ..., "step": ...}]` of runs/log-inputs and runs/outputs.
    pub fn model_refs(&self) -> Result<Vec<(String, i64)>, ApiError> {
        self.list("models")
            .iter()
            .map(|m| {
                let id = m
                    .get("model_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing("models[].model_id"))?;
                Ok((
                    id.to_string(),
                    m.get("step").and_then(Value::as_i64).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// `[{"key": ..., "value": ...}]`, as tags and params arrive.
    pub fn key_values(&self, key: &str) -> Result<Vec<(String, String)>, ApiError> {
        self.list(key).iter().map(|v| key_value(key, v)).collect()
    }
}

pub fn key_value(field: &str, v: &Value) -> Result<(String, String), ApiError> {
    let k = v
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| missing(&format!("{field}[].key")))?;
    let value = match v.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => return Err(missing(&format!("{field}[].value"))),
    };
    Ok((k.to_string(), value))
}

pub fn missing(key: &str) -> ApiError {
    ApiError::InvalidParameter(format!("Missing value for required parameter '{key}'."))
}

fn invalid_type(key: &str, expected: &str) -> ApiError {
    ApiError::InvalidParameter(format!(
        "Invalid value for parameter '{key}': expected {expected}."
    ))
}

/// A metric value: a JSON number or "NaN", "Infinity", "-Infinity" (how
/// protobuf's JSON mapping writes the values JSON has no literal for).
pub fn metric_value(v: &Loose) -> Result<f64, ApiError> {
    match v {
        Loose::Int(n) => Ok(*n as f64),
        Loose::Float(f) => Ok(*f),
        Loose::Text(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other
                .parse::<f64>()
                .map_err(|_| invalid_type("value", "a number")),
        },
        Loose::Other => Err(invalid_type("value", "a number")),
        Loose::Absent => Err(missing("value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            url_pairs("run_id=abc&metric_key=m%2F1+x"),
            vec![
                ("run_id".into(), "abc".into()),
                ("metric_key".into(), "m/1 x".into())
            ]
        );
    }
}
