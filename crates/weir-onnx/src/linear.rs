//! ONNX-ML linear models (`LinearClassifier`, `LinearRegressor`: what
//! skl2onnx writes for scikit-learn's logistic and linear regressions),
//! evaluated natively with onnxruntime's semantics; tract has neither.

use std::collections::HashMap;

use tract_onnx::pb;

use crate::post::{attr, check_rows, reads_only_input, unsupported, Post};
use crate::{Data, OnnxError, Output};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    L1,
    L2,
    Max,
}

#[derive(Clone, Debug)]
pub(crate) struct Linear {
    /// One row of coefficients per output column.
    weights: Vec<Vec<f32>>,
    intercepts: Vec<f32>,
    post: Post,
    /// Class labels, for a classifier.
    labels: Option<Vec<i64>>,
    n_features: usize,
    /// Each graph output: which node output (0: label or values, 1:
    /// scores) and the normalisation on the way to it.
    outputs: Vec<(String, usize, Option<Norm>)>,
}

/// The model, if `graph` is one linear node on the graph's only input
/// (directly or through a Cast), with Identity or Normalizer nodes at most
/// between it and the graph's outputs. `Ok(None)`: another kind of graph.
pub(crate) fn recognise(
    graph: &pb::GraphProto,
    n_features: Option<usize>,
) -> Result<Option<Linear>, OnnxError> {
    let mut linear = None;
    // output name -> (input name, normalisation it applies)
    let mut steps: HashMap<&str, (&str, Option<Norm>)> = HashMap::new();
    let mut casts: HashMap<&str, &str> = HashMap::new();
    for node in &graph.node {
        let one = node.input.len() == 1 && node.output.len() == 1;
        match node.op_type.as_str() {
            "LinearClassifier" | "LinearRegressor" if linear.is_none() => linear = Some(node),
            "Identity" if one => {
                steps.insert(&node.output[0], (&node.input[0], None));
            }
            "Normalizer" if one => {
                let norm = match attr(node, "norm").map(|a| a.s.as_slice()) {
                    Some(b"L1") => Norm::L1,
                    Some(b"L2") => Norm::L2,
                    Some(b"MAX") => Norm::Max,
                    _ => return Ok(None),
                };
                steps.insert(&node.output[0], (&node.input[0], Some(norm)));
            }
            "Cast" if one => {
                casts.insert(&node.output[0], &node.input[0]);
            }
            _ => return Ok(None),
        }
    }
    let Some(node) = linear else { return Ok(None) };
    let Some(n_features) = n_features else {
        return Ok(None);
    };
    if !reads_only_input(graph, node, &casts) {
        return Ok(None);
    }
    let mut outputs = Vec::new();
    for out in &graph.output {
        let (mut name, mut norm) = (out.name.as_str(), None);
        while let Some((from, n)) = steps.get(name) {
            if n.is_some() {
                if norm.is_some() {
                    return Ok(None);
                }
                norm = *n;
            }
            name = from;
        }
        match node.output.iter().position(|o| o == name) {
            Some(ix) => outputs.push((out.name.clone(), ix, norm)),
            None => return Ok(None),
        }
    }
    build(node, outputs, n_features).map(Some)
}

fn build(
    node: &pb::NodeProto,
    outputs: Vec<(String, usize, Option<Norm>)>,
    n_features: usize,
) -> Result<Linear, OnnxError> {
    let classifier = node.op_type == "LinearClassifier";
    let coefficients = attr(node, "coefficients")
        .map(|a| a.floats.clone())
        .unwrap_or_default();
    let intercepts = attr(node, "intercepts")
        .map(|a| a.floats.clone())
        .unwrap_or_default();
    if coefficients.is_empty() || n_features == 0 || !coefficients.len().is_multiple_of(n_features)
    {
        return Err(unsupported(format!(
            "{}: {} coefficients do not fit {n_features} features",
            node.op_type,
            coefficients.len()
        )));
    }
    let rows = coefficients.len() / n_features;
    if !intercepts.is_empty() && intercepts.len() != rows {
        return Err(unsupported(format!(
            "{}: {} intercepts for {rows} coefficient rows",
            node.op_type,
            intercepts.len()
        )));
    }
    let post = Post::of(node)?;
    let labels = if classifier {
        let labels = attr(node, "classlabels_ints")
            .map(|a| a.ints.clone())
            .unwrap_or_default();
        // One row of coefficients for two classes is a layout onnxruntime
        // reads specially; skl2onnx writes two rows, which is all served.
        if labels.len() != rows {
            return Err(unsupported(format!(
                "LinearClassifier: {} integer class labels for {rows} coefficient rows (string labels and the one-row binary layout are not served)",
                labels.len()
            )));
        }
        Some(labels)
    } else {
        None
    };
    Ok(Linear {
        weights: coefficients
            .chunks(n_features)
            .map(<[f32]>::to_vec)
            .collect(),
        intercepts: if intercepts.is_empty() {
            vec![0.0; rows]
        } else {
            intercepts
        },
        post,
        labels,
        n_features,
        outputs,
    })
}

impl Linear {
    pub(crate) fn run(&self, rows: usize, data: &[f64]) -> Result<Vec<Output>, OnnxError> {
        let width = self.n_features;
        check_rows(rows, width, data)?;
        let k = self.weights.len();
        let mut scores = Vec::with_capacity(rows * k);
        let mut winners = Vec::with_capacity(rows);
        let mut raw = vec![0f64; k];
        for r in 0..rows {
            let x = &data[r * width..(r + 1) * width];
            for (c, (w, b)) in self.weights.iter().zip(&self.intercepts).enumerate() {
                // Float inputs, float weights: the products as onnxruntime
                // forms them, summed wider.
                raw[c] = f64::from(*b)
                    + w.iter()
                        .zip(x)
                        .map(|(w, v)| f64::from(*w) * f64::from(*v as f32))
                        .sum::<f64>();
            }
            let mut best = 0;
            for c in 1..k {
                if raw[c] > raw[best] {
                    best = c;
                }
            }
            winners.push(best);
            self.post.apply(&mut raw);
            scores.extend(raw.iter().copied());
        }
        Ok(self
            .outputs
            .iter()
            .map(|(name, ix, norm)| {
                let (shape, data) = match (&self.labels, ix) {
                    (Some(labels), 0) => (
                        vec![rows],
                        Data::I64(winners.iter().map(|w| labels[*w]).collect()),
                    ),
                    _ => {
                        let mut values = scores.clone();
                        if let Some(norm) = norm {
                            for row in values.chunks_mut(k) {
                                let d = match norm {
                                    Norm::L1 => row.iter().map(|v| v.abs()).sum::<f64>(),
                                    Norm::L2 => row.iter().map(|v| v * v).sum::<f64>().sqrt(),
                                    Norm::Max => row.iter().copied().fold(f64::MIN, f64::max),
                                };
                                if d != 0.0 {
                                    row.iter_mut().for_each(|v| *v /= d);
                                }
                            }
                        }
                        (
                            vec![rows, k],
                            Data::F32(values.into_iter().map(|v| v as f32).collect()),
                        )
                    }
                };
                Output {
                    name: name.clone(),
                    shape,
                    data,
                }
            })
            .collect())
    }
}
