//! ONNX models through tract: parse, check and optimise once, then run many
//! times from any thread.
//!
//! Inputs arrive as `f64` rows (what JSON numbers decode to) and are cast to
//! the type each graph input declares; outputs come back in their own type.
//! The batch dimension (the first) stays symbolic unless the file fixes it,
//! so one plan serves one row or ten thousand.

mod linear;
mod post;
mod trees;

use std::io::Cursor;
use std::sync::Arc;

use tract_onnx::pb::{self, tensor_shape_proto::dimension, type_proto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceFact;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not a readable ONNX model: {0}")]
    Parse(String),
    #[error("the ONNX model cannot be served: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Input(String),
    #[error("the ONNX model failed on this input: {0}")]
    Run(String),
}

/// An element type as the Open Inference Protocol names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    Bool,
    I32,
    I64,
    F32,
    F64,
    Bytes,
}

impl ElemType {
    pub fn oip_name(self) -> &'static str {
        match self {
            ElemType::Bool => "BOOL",
            ElemType::I32 => "INT32",
            ElemType::I64 => "INT64",
            ElemType::F32 => "FP32",
            ElemType::F64 => "FP64",
            ElemType::Bytes => "BYTES",
        }
    }

    fn from_onnx(code: i32) -> Option<ElemType> {
        // TensorProto.DataType codes.
        Some(match code {
            1 => ElemType::F32,
            6 => ElemType::I32,
            7 => ElemType::I64,
            8 => ElemType::Bytes,
            9 => ElemType::Bool,
            11 => ElemType::F64,
            _ => return None,
        })
    }
}

/// A graph input or output: its name, type and shape (`-1` where the size
/// varies, as in OIP metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub elem: ElemType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Values per batch row: the product of the fixed dimensions after the
    /// first, or `None` when one of them varies.
    pub fn row_width(&self) -> Option<usize> {
        self.shape
            .iter()
            .skip(1)
            .try_fold(1usize, |acc, d| (*d >= 0).then(|| acc * *d as usize))
    }
}

/// An output tensor's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Bool(Vec<bool>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Text(Vec<String>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Bool(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

type Plan = TypedSimplePlan<TypedModel>;

/// A parsed, optimised ONNX graph ready to run; cheap to share.
#[derive(Clone)]
pub struct OnnxModel {
    engine: Engine,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

#[derive(Clone)]
enum Engine {
    Tract(Arc<Plan>),
    /// A graph that is one tree ensemble, evaluated natively (`trees.rs`).
    Trees(Arc<trees::Ensemble>),
    /// A graph that is one linear model, evaluated natively (`linear.rs`).
    Linear(Arc<linear::Linear>),
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn spec(info: &pb::ValueInfoProto, what: &str) -> Result<TensorSpec, OnnxError> {
    let Some(type_proto::Value::TensorType(t)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(OnnxError::Unsupported(format!(
            "{what} '{}' is not a tensor (sequences and maps are not served; export scikit-learn classifiers with zipmap=False)",
            info.name
        )));
    };
    let elem = ElemType::from_onnx(t.elem_type).ok_or_else(|| {
        OnnxError::Unsupported(format!(
            "{what} '{}' has element type {} (served: float, double, int32, int64, bool, string)",
            info.name, t.elem_type
        ))
    })?;
    let shape = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) if v >= 0 => v,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorSpec {
        name: info.name.clone(),
        elem,
        shape,
    })
}

/// tract reads skl2onnx's binary tree-ensemble classifiers wrongly in two
/// ways. skl2onnx writes one base value (the prior's log-odds) where tract
/// wants one per class label; tract's binary layout reads only the first, so
/// a second 0.0 keeps the meaning. And tract takes the label from the arg-max
/// of the raw per-class scores before it lays out the two probabilities, so
/// every label comes out inverted; the label is rewired here as the class of
/// the larger probability (ArgMax, then Gather over the class labels), which
/// is how onnxruntime answers.
fn patch_binary_tree_classifiers(graph: &mut pb::GraphProto) {
    let mut added_nodes = Vec::new();
    let mut added_constants = Vec::new();
    for (ix, node) in graph
        .node
        .iter_mut()
        .enumerate()
        .filter(|(_, n)| n.op_type == "TreeEnsembleClassifier")
    {
        let Some(labels) = node
            .attribute
            .iter()
            .find(|a| a.name == "classlabels_int64s" || a.name == "classlabels_strings")
            .cloned()
        else {
            continue;
        };
        if labels.ints.len().max(labels.strings.len()) != 2 || node.output.len() != 2 {
            continue;
        }
        if let Some(base) = node
            .attribute
            .iter_mut()
            .find(|a| a.name == "base_values" && a.floats.len() == 1)
        {
            base.floats.push(0.0);
        }
        let label = std::mem::replace(&mut node.output[0], format!("weir_unused_label_{ix}"));
        let winner = format!("weir_winner_{ix}");
        let classes = format!("weir_classes_{ix}");
        added_constants.push(pb::TensorProto {
            name: classes.clone(),
            dims: vec![2],
            data_type: if labels.ints.is_empty() { 8 } else { 7 },
            int64_data: labels.ints.clone(),
            string_data: labels.strings.clone(),
            ..Default::default()
        });
        let int_attr = |name: &str, value: i64| pb::AttributeProto {
            name: name.into(),
            i: value,
            r#type: 2, // INT
            ..Default::default()
        };
        added_nodes.push(pb::NodeProto {
            name: format!("weir_argmax_{ix}"),
            op_type: "ArgMax".into(),
            input: vec![node.output[1].clone()],
            output: vec![winner.clone()],
            attribute: vec![int_attr("axis", 1), int_attr("keepdims", 0)],
            ..Default::default()
        });
        added_nodes.push(pb::NodeProto {
            name: format!("weir_label_{ix}"),
            op_type: "Gather".into(),
            input: vec![classes, winner],
            output: vec![label],
            attribute: vec![int_attr("axis", 0)],
            ..Default::default()
        });
    }
    graph.node.extend(added_nodes);
    graph.initializer.extend(added_constants);
}

/// tract has no `ai.onnx.ml` Scaler (what skl2onnx writes for a
/// StandardScaler or MinMaxScaler); it is `(float(x) - offset) * scale`,
/// so it is rewritten as Cast, Sub and Mul, which tract runs.
fn rewrite_scalers(graph: &mut pb::GraphProto) {
    let mut rewritten = Vec::with_capacity(graph.node.len());
    for (ix, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if node.op_type != "Scaler" || node.input.len() != 1 || node.output.len() != 1 {
            rewritten.push(node);
            continue;
        }
        let floats = |name: &str| {
            node.attribute
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.floats.clone())
        };
        let offset = floats("offset").unwrap_or_else(|| vec![0.0]);
        let scale = floats("scale").unwrap_or_else(|| vec![1.0]);
        let constant = |name: String, values: Vec<f32>| pb::TensorProto {
            name,
            dims: vec![values.len() as i64],
            data_type: 1, // FLOAT
            float_data: values,
            ..Default::default()
        };
        let (offset_name, scale_name) = (format!("weir_offset_{ix}"), format!("weir_scale_{ix}"));
        graph
            .initializer
            .push(constant(offset_name.clone(), offset));
        graph.initializer.push(constant(scale_name.clone(), scale));
        let (cast, centred) = (format!("weir_cast_{ix}"), format!("weir_centred_{ix}"));
        rewritten.push(pb::NodeProto {
            name: cast.clone(),
            op_type: "Cast".into(),
            input: node.input.clone(),
            output: vec![cast.clone()],
            attribute: vec![pb::AttributeProto {
                name: "to".into(),
                i: 1, // FLOAT
                r#type: 2,
                ..Default::default()
            }],
            ..Default::default()
        });
        rewritten.push(pb::NodeProto {
            name: centred.clone(),
            op_type: "Sub".into(),
            input: vec![cast, offset_name],
            output: vec![centred.clone()],
            ..Default::default()
        });
        rewritten.push(pb::NodeProto {
            name: format!("weir_scaled_{ix}"),
            op_type: "Mul".into(),
            input: vec![centred, scale_name],
            output: node.output.clone(),
            ..Default::default()
        });
    }
    graph.node = rewritten;
}

fn datum(elem: ElemType) -> DatumType {
    match elem {
        ElemType::Bool => bool::datum_type(),
        ElemType::I32 => i32::datum_type(),
        ElemType::I64 => i64::datum_type(),
        ElemType::F32 => f32::datum_type(),
        ElemType::F64 => f64::datum_type(),
        ElemType::Bytes => String::datum_type(),
    }
}

impl OnnxModel {
    /// Parses and optimises a model file; anything tract cannot run is
    /// refused here, not at the first request.
    pub fn from_bytes(bytes: &[u8]) -> Result<OnnxModel, OnnxError> {
        let onnx = tract_onnx::onnx();
        let mut proto = onnx
            .proto_model_for_read(&mut Cursor::new(bytes))
            .map_err(|e| OnnxError::Parse(format!("{e:#}")))?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| OnnxError::Parse("the file holds no graph".into()))?;
        if graph.node.is_empty() {
            return Err(OnnxError::Parse("the graph has no operators".into()));
        }
        // Graphs that are one ONNX-ML tree ensemble or linear model run
        // natively: tract is slow on the first and lacks the second.
        let fast = {
            let first = graph
                .input
                .iter()
                .find(|i| !graph.initializer.iter().any(|t| t.name == i.name));
            let width = first
                .map(|i| spec(i, "input"))
                .transpose()?
                .and_then(|s| s.row_width());
            match trees::recognise(graph, width)? {
                Some(ensemble) => Some(Engine::Trees(Arc::new(ensemble))),
                None => linear::recognise(graph, width)?.map(|l| Engine::Linear(Arc::new(l))),
            }
        };
        patch_binary_tree_classifiers(graph);
        rewrite_scalers(graph);
        let initialized: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<TensorSpec> = graph
            .input
            .iter()
            .filter(|i| !initialized.contains(i.name.as_str()))
            .map(|i| spec(i, "input"))
            .collect::<Result<_, _>>()?;
        let outputs: Vec<TensorSpec> = graph
            .output
            .iter()
            .map(|o| spec(o, "output"))
            .collect::<Result<_, _>>()?;
        if inputs.is_empty() {
            return Err(OnnxError::Unsupported("the graph takes no input".into()));
        }
        if let Some(bad) = inputs.iter().find(|i| i.shape.is_empty()) {
            return Err(OnnxError::Unsupported(format!(
                "input '{}' is a scalar or has no declared shape; a served input needs a batch dimension",
                bad.name
            )));
        }

        if let Some(engine) = fast {
            if inputs.len() == 1 && inputs[0].shape.len() == 2 {
                return Ok(OnnxModel {
                    engine,
                    inputs,
                    outputs,
                });
            }
        }
        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| OnnxError::Unsupported(format!("{e:#}")))?;
        let batch = model.symbols.sym("N");
        for (ix, input) in inputs.iter().enumerate() {
            let dims: Vec<TDim> = input
                .shape
                .iter()
                .enumerate()
                .map(|(axis, d)| match (*d, axis) {
                    (d, _) if d >= 0 => TDim::from(d),
                    (_, 0) => batch.clone().into(),
                    (_, axis) => model.symbols.sym(&format!("{}_{axis}", input.name)).into(),
                })
                .collect();
            let fact = InferenceFact::dt_shape(datum(input.elem), dims);
            model
                .set_input_fact(ix, fact)
                .map_err(|e| OnnxError::Unsupported(format!("input '{}': {e:#}", input.name)))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| OnnxError::Unsupported(format!("{e:#}")))?;
        Ok(OnnxModel {
            engine: Engine::Tract(Arc::new(plan)),
            inputs,
            outputs,
        })
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs the graph on `rows` batch rows; `values[i]` holds input `i`'s
    /// values row after row (`rows * row_width` of them).
    pub fn run(&self, rows: usize, values: &[Vec<f64>]) -> Result<Vec<Output>, OnnxError> {
        if values.len() != self.inputs.len() {
            return Err(OnnxError::Input(format!(
                "the model takes {} inputs ({}), got {}",
                self.inputs.len(),
                self.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                values.len()
            )));
        }
        let native = match &self.engine {
            Engine::Trees(ensemble) => ensemble.run(rows, &values[0]),
            Engine::Linear(model) => model.run(rows, &values[0]),
            Engine::Tract(plan) => return self.run_tract(plan, rows, values),
        };
        native.map_err(|e| match e {
            OnnxError::Input(m) => {
                OnnxError::Input(format!("input '{}': {m}", self.inputs[0].name))
            }
            other => other,
        })
    }

    fn run_tract(
        &self,
        plan: &Plan,
        rows: usize,
        values: &[Vec<f64>],
    ) -> Result<Vec<Output>, OnnxError> {
        let mut tensors: TVec<TValue> = TVec::with_capacity(values.len());
        for (spec, data) in self.inputs.iter().zip(values) {
            tensors.push(input_tensor(spec, rows, data)?.into_tvalue());
        }
        let results = plan
            .run(tensors)
            .map_err(|e| OnnxError::Run(format!("{e:#}")))?;
        results
            .iter()
            .zip(&self.outputs)
            .map(|(t, spec)| output(spec, t))
            .collect()
    }
}

fn input_tensor(spec: &TensorSpec, rows: usize, data: &[f64]) -> Result<Tensor, OnnxError> {
    let width = spec.row_width().ok_or_else(|| {
        OnnxError::Input(format!(
            "input '{}' has shape {:?} with a varying inner dimension; only the batch dimension may vary",
            spec.name, spec.shape
        ))
    })?;
    if spec.shape[0] >= 0 && spec.shape[0] as usize != rows {
        return Err(OnnxError::Input(format!(
            "input '{}': the model takes exactly {} rows per call, got {rows}",
            spec.name, spec.shape[0]
        )));
    }
    if data.len() != rows * width {
        return Err(OnnxError::Input(format!(
            "input '{}': {rows} rows of {width} values need {} values, got {}",
            spec.name,
            rows * width,
            data.len()
        )));
    }
    let mut shape = vec![rows];
    shape.extend(spec.shape.iter().skip(1).map(|d| *d as usize));
    let tensor = match spec.elem {
        ElemType::F32 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, data.iter().map(|v| *v as f32).collect())
                .map(Tensor::from)
        }
        ElemType::F64 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, data.to_vec()).map(Tensor::from)
        }
        ElemType::I64 => tract_ndarray::ArrayD::from_shape_vec(
            shape,
            data.iter().map(|v| *v as i64).collect::<Vec<_>>(),
        )
        .map(Tensor::from),
        ElemType::I32 => tract_ndarray::ArrayD::from_shape_vec(
            shape,
            data.iter().map(|v| *v as i32).collect::<Vec<_>>(),
        )
        .map(Tensor::from),
        ElemType::Bool => tract_ndarray::ArrayD::from_shape_vec(
            shape,
            data.iter().map(|v| *v != 0.0).collect::<Vec<_>>(),
        )
        .map(Tensor::from),
        ElemType::Bytes => {
            return Err(OnnxError::Input(format!(
                "input '{}' takes strings; string inputs are not served yet",
                spec.name
            )))
        }
    };
    tensor.map_err(|e| OnnxError::Input(format!("input '{}': {e}", spec.name)))
}

fn output(spec: &TensorSpec, t: &Tensor) -> Result<Output, OnnxError> {
    let bad = |e: anyhow::Error| OnnxError::Run(format!("output '{}': {e:#}", spec.name));
    let data = match t.datum_type() {
        DatumType::F32 => Data::F32(t.as_slice::<f32>().map_err(bad)?.to_vec()),
        DatumType::F64 => Data::F64(t.as_slice::<f64>().map_err(bad)?.to_vec()),
        DatumType::I64 => Data::I64(t.as_slice::<i64>().map_err(bad)?.to_vec()),
        DatumType::Bool => Data::Bool(t.as_slice::<bool>().map_err(bad)?.to_vec()),
        DatumType::String => Data::Text(t.as_slice::<String>().map_err(bad)?.to_vec()),
        _ => {
            let cast = t.cast_to::<f64>().map_err(bad)?;
            Data::F64(cast.as_slice::<f64>().map_err(bad)?.to_vec())
        }
    };
    Ok(Output {
        name: spec.name.clone(),
        shape: t.shape().to_vec(),
        data,
    })
}
