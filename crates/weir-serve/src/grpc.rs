//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
//! proto/inference.proto), on `--grpc-addr`. Every call goes through what
//! the HTTP routes use: the same loaded versions, endpoints and rollouts,
//! tokens, limits, statistics and /metrics; only the encoding differs.
//! Inference answers carry their outputs in `raw_output_contents`, as
//! Triton's do (tritonclient reads them from there).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use prost::Message;
use serde_json::{Map, Value};
use tonic::{Code, Request, Response, Status};

use crate::payload::{OipRequest, OipRequestedOutput, OipTensor};
use crate::routes::{self, Payload};
use crate::tensor::{self, TensorData};
use crate::{AppState, ServeError};

/// The protocol's messages (and the generated service), for clients in Rust:
/// the load generator in examples/ builds its requests with them.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;
use pb::model_repository_parameter::ParameterChoice as RepositoryChoice;

/// The service as an axum router, for the gRPC listener. Messages over the
/// server's body limit (`--max-body-bytes`) are refused before they are
/// decoded.
pub(crate) fn router(state: Arc<AppState>) -> axum::Router {
    let limit = state.max_body_bytes;
    let service = GrpcInferenceServiceServer::new(Grpc { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(service)
        .into_axum_router()
        .layer(axum::middleware::map_response(over_limit))
}

/// tonic refuses a message over the limit with OUT_OF_RANGE; gRPC's own
/// servers, and so its clients, say RESOURCE_EXHAUSTED, in terms of the
/// option that sets the limit.
async fn over_limit(mut response: axum::response::Response) -> axum::response::Response {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let message = status.message();
    if status.code() != Code::OutOfRange || !message.contains("decoded message length too large") {
        return response;
    }
    let number = |after: &str| {
        message
            .split(after)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("?")
            .to_string()
    };
    let replaced = Status::resource_exhausted(format!(
        "the request message is {} bytes, over this server's limit of {} bytes (--max-body-bytes)",
        number("found "),
        number("the limit is: ")
    ));
    if replaced.add_header(response.headers_mut()).is_err() {
        return response;
    }
    response
}

struct Grpc {
    state: Arc<AppState>,
}

/// A serving error as gRPC says it: the HTTP status's counterpart, the
/// same message.
fn status(e: ServeError) -> Status {
    let code = match e.status() {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::UNPROCESSABLE_ENTITY => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The deadline a client set (`grpc-timeout`: digits and a unit).
fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Grpc {
    /// The call's metadata (as HTTP headers) and message, once the caller's
    /// token allows what the HTTP route the call stands for (`path`) needs.
    async fn admit<T>(
        &self,
        request: Request<T>,
        path: impl FnOnce(&T) -> String,
        what: &str,
    ) -> Result<(HeaderMap, T), Status> {
        let headers = request.metadata().clone().into_headers();
        let message = request.into_inner();
        self.authorize(&headers, &path(&message), what).await?;
        Ok((headers, message))
    }

    /// Checks the caller's token (`authorization` metadata) as the HTTP
    /// route at `path` would.
    async fn authorize(&self, headers: &HeaderMap, path: &str, what: &str) -> Result<(), Status> {
        let s = &self.state;
        let Some(need) = routes::required(path, &s.private, &s.primary) else {
            return Ok(());
        };
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match s.tokens.check(&s.store, authorization, need, what).await {
            Ok(_) => Ok(()),
            Err(d) => Err(Status::new(
                match d.status {
                    401 => Code::Unauthenticated,
                    403 => Code::PermissionDenied,
                    _ => Code::Internal,
                },
                d.message,
            )),
        }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    /// Ready or not, never an error: an unknown or unloaded model is not
    /// ready, as Triton answers.
    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let (_, r) = self
            .admit(
                request,
                |r| format!("/v2/models/{}/ready", r.name),
                "ModelReady",
            )
            .await?;
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        Ok(Response::new(pb::ModelReadyResponse {
            ready: routes::ready_model(&self.state, &r.name, version).is_ok(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "weir".into(),
            version: weir_core::WEIR_VERSION.into(),
            extensions: routes::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let (_, r) = self
            .admit(
                request,
                |r| format!("/v2/models/{}", r.name),
                "ModelMetadata",
            )
            .await?;
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        let doc = routes::metadata_of(&self.state, &r.name, version).map_err(status)?;
        let tensors = |list: &Value| {
            list.as_array()
                .into_iter()
                .flatten()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: text(&t["name"]),
                    datatype: text(&t["datatype"]),
                    shape: t["shape"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_i64)
                        .collect(),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: text(&doc["name"]),
            versions: doc["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
            platform: text(&doc["platform"]),
            inputs: tensors(&doc["inputs"]),
            outputs: tensors(&doc["outputs"]),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let s = &self.state;
        let (headers, r) = self
            .admit(
                request,
                |r| format!("/v2/models/{}/infer", r.model_name),
                "ModelInfer",
            )
            .await?;
        // The same limits as the HTTP routes: beyond the concurrency limit a
        // request is refused at once; past the server's timeout or the
        // client's deadline, whichever is sooner, it is abandoned.
        let Ok(_permit) = s.inflight.clone().try_acquire_owned() else {
            s.metrics.rejected("busy");
            return Err(status(ServeError::Busy {
                limit: s.max_concurrency,
            }));
        };
        let limit = deadline(&headers).map_or(s.request_timeout, |d| d.min(s.request_timeout));
        let infer = async {
            let encoded = s.cache.enabled().then(|| Bytes::from(r.encode_to_vec()));
            let payload = oip_request(&r).map(|request| Payload::Decoded {
                request: Arc::new(request),
                encoded,
            });
            let version = (!r.model_version.is_empty()).then_some(r.model_version.as_str());
            let (result, timed) =
                routes::oip_infer(s, &r.model_name, version, &headers, payload, "grpc").await;
            let (reply, code) = match result {
                Ok((answer, id)) => {
                    let mut reply = Response::new(infer_response(&answer));
                    if let Some(v) = id.and_then(|id| id.parse().ok()) {
                        reply.metadata_mut().insert("x-weir-request-id", v);
                    }
                    (Ok(reply), StatusCode::OK)
                }
                Err(e) => {
                    let code = e.status();
                    (Err(status(e)), code)
                }
            };
            timed.finish(s, code);
            reply
        };
        match tokio::time::timeout(limit, infer).await {
            Ok(reply) => reply,
            Err(_) => {
                s.metrics.rejected("timeout");
                Err(Status::deadline_exceeded(format!(
                    "inference took longer than {:.3}s (the client's deadline or --request-timeout, whichever is sooner)",
                    limit.as_secs_f64()
                )))
            }
        }
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let (_, r) = self
            .admit(
                request,
                |_| "/v2/repository/index".into(),
                "RepositoryIndex",
            )
            .await?;
        let only_ready = r.ready;
        let models = self
            .state
            .index()
            .into_iter()
            .filter(|(_, _, failed)| !only_ready || failed.is_none())
            .map(
                |(name, version, failed)| pb::repository_index_response::ModelIndex {
                    name,
                    version: version.to_string(),
                    state: if failed.is_some() {
                        "UNAVAILABLE"
                    } else {
                        "READY"
                    }
                    .into(),
                    reason: failed.unwrap_or_default(),
                },
            )
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let (_, r) = self
            .admit(
                request,
                |_| "/v2/repository/models/load".into(),
                "RepositoryModelLoad",
            )
            .await?;
        let version = repository_version(&r.parameters)?;
        routes::load_version(&self.state, &r.model_name, version)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let (_, r) = self
            .admit(
                request,
                |_| "/v2/repository/models/unload".into(),
                "RepositoryModelUnload",
            )
            .await?;
        let version = repository_version(&r.parameters)?;
        routes::unload_version(&self.state, &r.model_name, version).map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The version a repository call names (`parameters["version"]`, a string
/// or a number); none means the latest.
fn repository_version(
    parameters: &std::collections::HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<Option<i64>, Status> {
    let Some(p) = parameters.get("version") else {
        return Ok(None);
    };
    match &p.parameter_choice {
        Some(RepositoryChoice::Int64Param(n)) => Ok(Some(*n)),
        Some(RepositoryChoice::StringParam(t)) => t.trim().parse().map(Some).map_err(|_| {
            Status::invalid_argument(format!("version: expected a whole number, got {t:?}"))
        }),
        _ => Err(Status::invalid_argument(
            "version: send it as a string or int64 parameter",
        )),
    }
}

fn parameter_json(p: &pb::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(n)) => Value::from(*n),
        Some(ParameterChoice::StringParam(t)) => Value::String(t.clone()),
        Some(ParameterChoice::DoubleParam(x)) => Value::from(*x),
        Some(ParameterChoice::Uint64Param(n)) => Value::from(*n),
        None => Value::Null,
    }
}

fn parameters_json(
    parameters: &std::collections::HashMap<String, pb::InferParameter>,
) -> Option<Map<String, Value>> {
    (!parameters.is_empty()).then(|| {
        parameters
            .iter()
            .map(|(k, v)| (k.clone(), parameter_json(v)))
            .collect()
    })
}

/// A gRPC inference request as the protocol's request: each input's
/// elements from its typed contents or, when the client sent them raw,
/// from `raw_input_contents`.
fn oip_request(r: &pb::ModelInferRequest) -> Result<OipRequest, ServeError> {
    let bad = |m: String| ServeError::BadRequest(m);
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input, in order",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let inputs = r
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let data = if raw {
                if t.contents.as_ref().is_some_and(|c| contents_len(c) > 0) {
                    return Err(bad(format!(
                        "input '{}' has contents and raw_input_contents; send one",
                        t.name
                    )));
                }
                let count = tensor::element_count(&t.name, &t.shape)?;
                tensor::decode_raw(&t.name, &t.datatype, count, &r.raw_input_contents[i])?
            } else {
                typed_contents(t)?
            };
            Ok(OipTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                datatype: t.datatype.clone(),
                data,
                parameters: parameters_json(&t.parameters),
            })
        })
        .collect::<Result<Vec<_>, ServeError>>()?;
    Ok(OipRequest {
        id: (!r.id.is_empty()).then(|| r.id.clone()),
        parameters: parameters_json(&r.parameters),
        inputs,
        outputs: (!r.outputs.is_empty()).then(|| {
            r.outputs
                .iter()
                .map(|o| OipRequestedOutput {
                    name: o.name.clone(),
                    parameters: parameters_json(&o.parameters),
                })
                .collect()
        }),
    })
}

fn contents_len(c: &pb::InferTensorContents) -> usize {
    c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.uint_contents.len()
        + c.uint64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len()
}

/// An input's elements from the contents list its datatype travels in.
fn typed_contents(t: &pb::model_infer_request::InferInputTensor) -> Result<TensorData, ServeError> {
    let Some(c) = &t.contents else {
        return Err(ServeError::BadRequest(format!(
            "input '{}' has no data: send its elements in contents, or all inputs in raw_input_contents",
            t.name
        )));
    };
    let numbers = |v: Vec<f64>| TensorData::Numbers(v);
    let (list, data) = match t.datatype.as_str() {
        "BOOL" => ("bool_contents", TensorData::Bools(c.bool_contents.clone())),
        "INT8" | "INT16" | "INT32" => (
            "int_contents",
            numbers(c.int_contents.iter().map(|x| f64::from(*x)).collect()),
        ),
        "INT64" => (
            "int64_contents",
            numbers(c.int64_contents.iter().map(|x| *x as f64).collect()),
        ),
        "UINT8" | "UINT16" | "UINT32" => (
            "uint_contents",
            numbers(c.uint_contents.iter().map(|x| f64::from(*x)).collect()),
        ),
        "UINT64" => (
            "uint64_contents",
            numbers(c.uint64_contents.iter().map(|x| *x as f64).collect()),
        ),
        "FP32" => (
            "fp32_contents",
            numbers(c.fp32_contents.iter().map(|x| f64::from(*x)).collect()),
        ),
        "FP64" => ("fp64_contents", numbers(c.fp64_contents.clone())),
        "BYTES" => ("bytes_contents", TensorData::Bytes(c.bytes_contents.clone())),
        "FP16" => {
            return Err(ServeError::BadRequest(format!(
                "input '{}': FP16 has no typed contents; send it in raw_input_contents",
                t.name
            )))
        }
        other => {
            return Err(ServeError::BadRequest(format!(
                "input '{}': unknown datatype '{other}'; use BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64 or BYTES",
                t.name
            )))
        }
    };
    let elements = match &data {
        TensorData::Numbers(v) => v.len(),
        TensorData::Bools(v) => v.len(),
        TensorData::Bytes(v) => v.len(),
        TensorData::Json(_) | TensorData::Missing => 0,
    };
    if elements != contents_len(c) {
        return Err(ServeError::BadRequest(format!(
            "input '{}': a {} tensor's elements travel in {list} only",
            t.name, t.datatype
        )));
    }
    Ok(data)
}

/// The gRPC answer: every output's elements in `raw_output_contents`.
fn infer_response(answer: &Value) -> pb::ModelInferResponse {
    let outputs = answer["outputs"].as_array().cloned().unwrap_or_default();
    pb::ModelInferResponse {
        model_name: text(&answer["model_name"]),
        model_version: text(&answer["model_version"]),
        id: text(&answer["id"]),
        parameters: Default::default(),
        raw_output_contents: outputs
            .iter()
            .map(|o| tensor::encode_raw(o["datatype"].as_str().unwrap_or_default(), &o["data"]))
            .collect(),
        outputs: outputs
            .iter()
            .map(|o| pb::model_infer_response::InferOutputTensor {
                name: text(&o["name"]),
                datatype: text(&o["datatype"]),
                shape: o["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .collect(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_read_every_unit() {
        let at = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            deadline(&h)
        };
        assert_eq!(at("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(at("2S"), Some(Duration::from_secs(2)));
        assert_eq!(at("3M"), Some(Duration::from_secs(180)));
        assert_eq!(at("7u"), Some(Duration::from_micros(7)));
        assert_eq!(at("x"), None);
        assert_eq!(at(""), None);
    }

    #[test]
    fn typed_contents_must_match_the_datatype() {
        let input = |datatype: &str, contents: pb::InferTensorContents| pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: datatype.into(),
                shape: vec![2],
                contents: Some(contents),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ok = oip_request(&input(
            "INT32",
            pb::InferTensorContents {
                int_contents: vec![1, -2],
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(matches!(&ok.inputs[0].data, TensorData::Numbers(v) if v == &[1.0, -2.0]));
        let err = oip_request(&input(
            "FP32",
            pb::InferTensorContents {
                fp64_contents: vec![1.0, 2.0],
                ..Default::default()
            },
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("travel in fp32_contents only"), "{err}");
        let mut both = input("FP32", Default::default());
        both.raw_input_contents = vec![vec![0; 8], vec![0; 8]];
        let err = oip_request(&both).err().unwrap().to_string();
        assert!(err.contains("2 entries for 1 inputs"), "{err}");
    }
}
