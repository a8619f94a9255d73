//! A tracking run's data, inputs and outputs in the JSON shape of MLflow's
//! REST API: `{"data": {...}, "inputs": {...}, "outputs": {...}}`.
//!
//! It is the form `tracking_runs.data_cache` keeps, so a search page can be
//! answered by copying each run's cached text after its info instead of
//! decoding and re-encoding ~1 MB of fields; the server writes single runs
//! with the same code, so both answers have one shape.

use serde::de::{self, Deserializer};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::tracking::{DatasetInput, Metric, RunData};
use crate::{Result, StoreError};

/// Borrowed parts of a run, serialized as MLflow's `data`, `inputs` and
/// `outputs` members.
#[derive(Serialize)]
pub struct RunBody<'a> {
    data: Data<'a>,
    inputs: Inputs<'a>,
    outputs: Outputs<'a>,
}

impl<'a> RunBody<'a> {
    pub fn new(
        params: &'a [(String, String)],
        tags: &'a [(String, String)],
        metrics: &'a [Metric],
        inputs: &'a [DatasetInput],
        models: &'a [(String, String, i64)],
    ) -> RunBody<'a> {
        RunBody {
            data: Data {
                metrics: Seq(metrics),
                params: Seq(params),
                tags: Seq(tags),
            },
            inputs: Inputs {
                dataset_inputs: Seq(inputs),
                model_inputs: Models {
                    models,
                    direction: "input",
                },
            },
            outputs: Outputs {
                model_outputs: Models {
                    models,
                    direction: "output",
                },
            },
        }
    }

    /// The cached text: always an object that starts with `{"data":`.
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("a run body is plain data")
    }
}

/// Whether `text` has the shape [`RunBody::encode`] writes, cheaply: a cache
/// written by an older release (or damaged) is rebuilt instead of being
/// spliced into a reply.
pub(crate) fn looks_encoded(text: &str) -> bool {
    text.starts_with(r#"{"data":{"metrics":["#) && text.ends_with("}}")
}

#[derive(Serialize)]
struct Data<'a> {
    metrics: Seq<'a, Metric>,
    params: Seq<'a, (String, String)>,
    tags: Seq<'a, (String, String)>,
}

#[derive(Serialize)]
struct Inputs<'a> {
    dataset_inputs: Seq<'a, DatasetInput>,
    model_inputs: Models<'a>,
}

#[derive(Serialize)]
struct Outputs<'a> {
    model_outputs: Models<'a>,
}

/// A slice serialized item by item in its wire form.
struct Seq<'a, T>(&'a [T]);

trait Wire {
    fn wire<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error>;
}

impl<T: Wire> Serialize for Seq<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct One<'a, T>(&'a T);
        impl<T: Wire> Serialize for One<'_, T> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.0.wire(s)
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&One(item))?;
        }
        seq.end()
    }
}

impl Wire for (String, String) {
    fn wire<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Pair<'a> {
            key: &'a str,
            value: &'a str,
        }
        Pair {
            key: &self.0,
            value: &self.1,
        }
        .serialize(s)
    }
}

impl Wire for Metric {
    fn wire<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct MetricJson<'a> {
            key: &'a str,
            value: Double,
            timestamp: i64,
            step: i64,
        }
        MetricJson {
            key: &self.key,
            value: Double(self.value),
            timestamp: self.timestamp,
            step: self.step,
        }
        .serialize(s)
    }
}

impl Wire for DatasetInput {
    fn wire<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The texts are what the client sent, checked as JSON when logged;
        // should one not parse, it is written as what MLflow would hold for
        // nothing rather than breaking the whole reply.
        #[derive(Serialize)]
        struct Input<'a> {
            tags: &'a RawValue,
            dataset: &'a RawValue,
        }
        fn raw<'a>(text: &'a str, empty: &'static str) -> &'a RawValue {
            serde_json::from_str(text)
                .unwrap_or_else(|_| serde_json::from_str(empty).expect("a literal is valid JSON"))
        }
        Input {
            tags: raw(&self.tags_json, "[]"),
            dataset: raw(&self.dataset_json, "{}"),
        }
        .serialize(s)
    }
}

/// A run's models of one direction; an output carries its step.
struct Models<'a> {
    models: &'a [(String, String, i64)],
    direction: &'static str,
}

impl Serialize for Models<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct ModelRef<'a> {
            model_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            step: Option<i64>,
        }
        let mut seq = s.serialize_seq(None)?;
        for (id, direction, step) in self.models {
            if direction == self.direction {
                seq.serialize_element(&ModelRef {
                    model_id: id,
                    step: (direction == "output").then_some(*step),
                })?;
            }
        }
        seq.end()
    }
}

/// A double as protobuf's JSON mapping writes it: JSON has no NaN or
/// infinities, so those are strings.
pub struct Double(pub f64);

impl Serialize for Double {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("NaN")
        } else if v == f64::INFINITY {
            s.serialize_str("Infinity")
        } else if v == f64::NEG_INFINITY {
            s.serialize_str("-Infinity")
        } else {
            s.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for Double {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Double, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            Number(f64),
            Text(&'a str),
        }
        match Either::deserialize(d)? {
            Either::Number(v) => Ok(Double(v)),
            Either::Text("NaN") => Ok(Double(f64::NAN)),
            Either::Text("Infinity") => Ok(Double(f64::INFINITY)),
            Either::Text("-Infinity") => Ok(Double(f64::NEG_INFINITY)),
            Either::Text(other) => Err(de::Error::custom(format!("{other:?} is not a double"))),
        }
    }
}

/// A run's parts read back from [`RunBody::encode`]'s text.
pub(crate) fn decode(text: &str) -> Result<RunData> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: DataIn<'a>,
        #[serde(borrow)]
        inputs: InputsIn<'a>,
        #[serde(borrow)]
        outputs: OutputsIn<'a>,
    }
    #[derive(Deserialize)]
    struct DataIn<'a> {
        #[serde(borrow)]
        metrics: Vec<MetricIn<'a>>,
        #[serde(borrow)]
        params: Vec<PairIn<'a>>,
        #[serde(borrow)]
        tags: Vec<PairIn<'a>>,
    }
    #[derive(Deserialize)]
    struct MetricIn<'a> {
        #[serde(borrow)]
        key: std::borrow::Cow<'a, str>,
        value: Double,
        timestamp: i64,
        step: i64,
    }
    #[derive(Deserialize)]
    struct PairIn<'a> {
        #[serde(borrow)]
        key: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        value: std::borrow::Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct InputsIn<'a> {
        #[serde(borrow)]
        dataset_inputs: Vec<InputIn<'a>>,
        #[serde(borrow)]
        model_inputs: Vec<ModelIn<'a>>,
    }
    #[derive(Deserialize)]
    struct InputIn<'a> {
        #[serde(borrow)]
        tags: &'a RawValue,
        #[serde(borrow)]
        dataset: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct OutputsIn<'a> {
        #[serde(borrow)]
        model_outputs: Vec<ModelIn<'a>>,
    }
    #[derive(Deserialize)]
    struct ModelIn<'a> {
        #[serde(borrow)]
        model_id: std::borrow::Cow<'a, str>,
        step: Option<i64>,
    }
    let body: Body = serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: "tracking_runs.data_cache".into(),
        reason: format!("the cached run data does not decode: {e}"),
    })?;
    let pairs = |items: Vec<PairIn>| {
        items
            .into_iter()
            .map(|p| (p.key.into_owned(), p.value.into_owned()))
            .collect()
    };
    let mut models: Vec<(String, String, i64)> = body
        .inputs
        .model_inputs
        .into_iter()
        .map(|m| (m.model_id.into_owned(), "input".to_string(), 0))
        .chain(body.outputs.model_outputs.into_iter().map(|m| {
            (
                m.model_id.into_owned(),
                "output".into(),
                m.step.unwrap_or(0),
            )
        }))
        .collect();
    // The store lists a run's models by id whatever their direction.
    models.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(RunData {
        params: pairs(body.data.params),
        tags: pairs(body.data.tags),
        metrics: body
            .data
            .metrics
            .into_iter()
            .map(|m| Metric {
                key: m.key.into_owned(),
                value: m.value.0,
                timestamp: m.timestamp,
                step: m.step,
            })
            .collect(),
        inputs: body
            .inputs
            .dataset_inputs
            .into_iter()
            .map(|d| DatasetInput {
                dataset_json: d.dataset.get().to_string(),
                tags_json: d.tags.get().to_string(),
            })
            .collect(),
        models,
    })
}
