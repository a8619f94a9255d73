//! What the native ONNX-ML evaluators share: reading node attributes and
//! the score post-transforms of the ONNX-ML operators.

use tract_onnx::pb;

use crate::OnnxError;

pub(crate) fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Whether `node` reads the graph's only input, directly or through one of
/// the `casts` (output name -> input name).
pub(crate) fn reads_only_input(
    graph: &pb::GraphProto,
    node: &pb::NodeProto,
    casts: &std::collections::HashMap<&str, &str>,
) -> bool {
    let mut inputs = graph
        .input
        .iter()
        .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name));
    let (Some(input), None) = (inputs.next(), inputs.next()) else {
        return false;
    };
    let source = node.input.first().map(String::as_str).unwrap_or_default();
    source == input.name || casts.get(source) == Some(&input.name.as_str())
}

/// A native evaluator's input must be `rows` full rows of `width` values.
pub(crate) fn check_rows(rows: usize, width: usize, data: &[f64]) -> Result<(), OnnxError> {
    if data.len() == rows * width {
        return Ok(());
    }
    Err(OnnxError::Input(format!(
        "{rows} rows of {width} values need {} values, got {}",
        rows * width,
        data.len()
    )))
}

pub(crate) fn unsupported(message: impl Into<String>) -> OnnxError {
    OnnxError::Unsupported(message.into())
}

/// `post_transform` of TreeEnsemble* and Linear* (PROBIT is not served).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

impl Post {
    pub(crate) fn of(node: &pb::NodeProto) -> Result<Post, OnnxError> {
        Ok(match attr(node, "post_transform").map(|a| a.s.as_slice()) {
            None | Some(b"NONE") => Post::None,
            Some(b"LOGISTIC") => Post::Logistic,
            Some(b"SOFTMAX") => Post::Softmax,
            Some(b"SOFTMAX_ZERO") => Post::SoftmaxZero,
            Some(other) => {
                return Err(unsupported(format!(
                    "{}: post_transform {}",
                    node.op_type,
                    String::from_utf8_lossy(other)
                )))
            }
        })
    }

    /// Applies the transform to one row's scores in place.
    pub(crate) fn apply(self, scores: &mut [f64]) {
        match self {
            Post::None => {}
            Post::Logistic => scores
                .iter_mut()
                .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            Post::Softmax | Post::SoftmaxZero => {
                let zero = self == Post::SoftmaxZero;
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for v in scores.iter_mut() {
                    *v = if zero && *v == 0.0 {
                        0.0
                    } else {
                        (*v - max).exp()
                    };
                    sum += *v;
                }
                if sum > 0.0 {
                    scores.iter_mut().for_each(|v| *v /= sum);
                }
            }
        }
    }
}
