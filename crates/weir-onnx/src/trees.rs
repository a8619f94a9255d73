//! ONNX-ML tree ensembles (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`)
//! evaluated natively, with onnxruntime's semantics.
//!
//! tract has no regressor, and its classifier walks its leaf table from the
//! start for every tree (hundreds of microseconds a row for a 100-tree
//! model), so a graph that is just a tree ensemble on the input (what
//! skl2onnx writes for scikit-learn's forests and gradient boosting) runs
//! here instead: the trees are flattened into one node array and walked per
//! row, a few nanoseconds a node.

use std::collections::HashMap;

use tract_onnx::pb;

use crate::post::{attr, check_rows, reads_only_input, unsupported, Post};
use crate::{Data, OnnxError, Output};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    mode: Mode,
    feature: u32,
    threshold: f32,
    missing_true: bool,
    /// Children (global node indices) for branches; for leaves, the range
    /// of their weights in `Ensemble::weights`.
    yes: u32,
    no: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Clone, Debug)]
enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

#[derive(Clone, Debug)]
enum Kind {
    Classifier {
        labels: Labels,
        /// Binary model scoring one column (skl2onnx's gradient boosting):
        /// the probabilities are laid out as `[1 - p, p]`.
        single_column: bool,
        weights_positive: bool,
    },
    Regressor {
        aggregate: Aggregate,
    },
}

/// A tree-ensemble graph ready to evaluate.
#[derive(Clone, Debug)]
pub(crate) struct Ensemble {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// (output column, weight) of every leaf, leaf after leaf.
    weights: Vec<(u32, f32)>,
    base: Vec<f32>,
    columns: usize,
    post: Post,
    kind: Kind,
    n_features: usize,
    /// For each graph output, which of the node's outputs it is (0: label
    /// or regression values, 1: class scores).
    outputs: Vec<(String, usize)>,
}

fn ints(node: &pb::NodeProto, name: &str) -> Vec<i64> {
    attr(node, name).map(|a| a.ints.clone()).unwrap_or_default()
}

fn floats(node: &pb::NodeProto, name: &str) -> Vec<f32> {
    attr(node, name)
        .map(|a| a.floats.clone())
        .unwrap_or_default()
}

fn text(node: &pb::NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn strings(node: &pb::NodeProto, name: &str) -> Vec<String> {
    attr(node, name)
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The ensemble, if `graph` is one tree-ensemble node reading the graph's
/// only input (directly or through a Cast), with Identity nodes at most
/// between its outputs and the graph's. `Ok(None)`: another kind of graph.
pub(crate) fn recognise(
    graph: &pb::GraphProto,
    n_features: Option<usize>,
) -> Result<Option<Ensemble>, OnnxError> {
    let mut trees = None;
    let mut renames: HashMap<&str, &str> = HashMap::new();
    let mut cast_from: HashMap<&str, &str> = HashMap::new();
    for node in &graph.node {
        match node.op_type.as_str() {
            "TreeEnsembleClassifier" | "TreeEnsembleRegressor" if trees.is_none() => {
                trees = Some(node)
            }
            "Identity" if node.input.len() == 1 && node.output.len() == 1 => {
                renames.insert(&node.output[0], &node.input[0]);
            }
            "Cast" if node.input.len() == 1 && node.output.len() == 1 => {
                cast_from.insert(&node.output[0], &node.input[0]);
            }
            _ => return Ok(None),
        }
    }
    let Some(node) = trees else { return Ok(None) };
    if !reads_only_input(graph, node, &cast_from) {
        return Ok(None);
    }
    // Graph outputs, traced back through Identity nodes to the tree node.
    let mut outputs = Vec::new();
    for out in &graph.output {
        let mut name = out.name.as_str();
        while let Some(from) = renames.get(name) {
            name = from;
        }
        match node.output.iter().position(|o| o == name) {
            Some(ix) => outputs.push((out.name.clone(), ix)),
            None => return Ok(None),
        }
    }
    let Some(n_features) = n_features else {
        return Ok(None);
    };
    build(node, outputs, n_features).map(Some)
}

fn build(
    node: &pb::NodeProto,
    outputs: Vec<(String, usize)>,
    n_features: usize,
) -> Result<Ensemble, OnnxError> {
    let classifier = node.op_type == "TreeEnsembleClassifier";
    let tree_ids = ints(node, "nodes_treeids");
    let node_ids = ints(node, "nodes_nodeids");
    let features = ints(node, "nodes_featureids");
    let modes = strings(node, "nodes_modes");
    let mut values = floats(node, "nodes_values");
    if values.is_empty() {
        // Opset 3 may store thresholds as a tensor instead.
        if let Some(t) = attr(node, "nodes_values_as_tensor").and_then(|a| a.t.as_ref()) {
            values = t.float_data.clone();
        }
    }
    let true_ids = ints(node, "nodes_truenodeids");
    let false_ids = ints(node, "nodes_falsenodeids");
    let missing = ints(node, "nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    if [
        node_ids.len(),
        features.len(),
        modes.len(),
        values.len(),
        true_ids.len(),
        false_ids.len(),
    ]
    .iter()
    .any(|len| *len != n)
        || n == 0
    {
        return Err(unsupported(format!(
            "{}: the nodes_* attributes disagree in length",
            node.op_type
        )));
    }
    let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
    for i in 0..n {
        index.insert((tree_ids[i], node_ids[i]), i as u32);
    }
    let (prefix, id_field) = if classifier {
        ("class", "class_ids")
    } else {
        ("target", "target_ids")
    };
    let w_trees = ints(node, &format!("{prefix}_treeids"));
    let w_nodes = ints(node, &format!("{prefix}_nodeids"));
    let w_ids = ints(node, id_field);
    let w_values = floats(node, &format!("{prefix}_weights"));
    if w_trees.len() != w_nodes.len()
        || w_ids.len() != w_nodes.len()
        || w_values.len() != w_nodes.len()
    {
        return Err(unsupported(format!(
            "{}: the {prefix}_* attributes disagree in length",
            node.op_type
        )));
    }
    let mut leaf_weights: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for k in 0..w_nodes.len() {
        let at = *index.get(&(w_trees[k], w_nodes[k])).ok_or_else(|| {
            unsupported(format!(
                "{}: a weight names node ({}, {}) that does not exist",
                node.op_type, w_trees[k], w_nodes[k]
            ))
        })?;
        leaf_weights[at as usize].push((w_ids[k] as u32, w_values[k]));
    }

    let mut nodes = Vec::with_capacity(n);
    let mut weights = Vec::new();
    for i in 0..n {
        let mode = match modes[i].as_str() {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            other => return Err(unsupported(format!("{}: node mode {other}", node.op_type))),
        };
        let child = |id: i64| {
            index.get(&(tree_ids[i], id)).copied().ok_or_else(|| {
                unsupported(format!(
                    "{}: node ({}, {}) points at a missing child {id}",
                    node.op_type, tree_ids[i], node_ids[i]
                ))
            })
        };
        let (yes, no) = if mode == Mode::Leaf {
            let start = weights.len() as u32;
            weights.extend(&leaf_weights[i]);
            (start, weights.len() as u32)
        } else {
            if features[i] < 0 || features[i] as usize >= n_features {
                return Err(unsupported(format!(
                    "{}: a node reads feature {} of an input with {n_features}",
                    node.op_type, features[i]
                )));
            }
            (child(true_ids[i])?, child(false_ids[i])?)
        };
        nodes.push(Node {
            mode,
            feature: features[i].max(0) as u32,
            threshold: values[i],
            missing_true: missing.get(i).copied().unwrap_or(0) != 0,
            yes,
            no,
        });
    }
    // Roots: each tree's node that no other node points at.
    let mut has_parent = vec![false; n];
    for node in &nodes {
        if node.mode != Mode::Leaf {
            has_parent[node.yes as usize] = true;
            has_parent[node.no as usize] = true;
        }
    }
    let mut roots: Vec<(i64, u32)> = (0..n)
        .filter(|i| !has_parent[*i])
        .map(|i| (tree_ids[i], i as u32))
        .collect();
    roots.sort();
    let post = Post::of(node)?;
    let base = floats(node, "base_values");
    let used_max = weights
        .iter()
        .map(|(c, _)| *c as usize + 1)
        .max()
        .unwrap_or(1);
    let (kind, columns) = if classifier {
        let int_labels = ints(node, "classlabels_int64s");
        let labels = if int_labels.is_empty() {
            Labels::Strings(strings(node, "classlabels_strings"))
        } else {
            Labels::Ints(int_labels)
        };
        let n_labels = match &labels {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        };
        if n_labels == 0 {
            return Err(unsupported("TreeEnsembleClassifier without class labels"));
        }
        let mut ids: Vec<u32> = weights.iter().map(|(c, _)| *c).collect();
        ids.sort_unstable();
        ids.dedup();
        let single_column = n_labels == 2 && ids.len() <= 1;
        if !single_column && used_max > n_labels {
            return Err(unsupported(
                "TreeEnsembleClassifier: a class id beyond its labels",
            ));
        }
        let weights_positive = weights.iter().all(|(_, w)| *w >= 0.0);
        (
            Kind::Classifier {
                labels,
                single_column,
                weights_positive,
            },
            if single_column { 1 } else { n_labels },
        )
    } else {
        let aggregate = match text(node, "aggregate_function").as_deref() {
            None | Some("SUM") => Aggregate::Sum,
            Some("AVERAGE") => Aggregate::Average,
            Some("MIN") => Aggregate::Min,
            Some("MAX") => Aggregate::Max,
            Some(other) => {
                return Err(unsupported(format!(
                    "TreeEnsembleRegressor: aggregate_function {other}"
                )))
            }
        };
        let targets = attr(node, "n_targets")
            .map(|a| a.i as usize)
            .unwrap_or(used_max)
            .max(used_max);
        (Kind::Regressor { aggregate }, targets)
    };
    Ok(Ensemble {
        nodes,
        roots: roots.into_iter().map(|(_, r)| r).collect(),
        weights,
        base,
        columns,
        post,
        kind,
        n_features,
        outputs,
    })
}

impl Ensemble {
    /// The leaf a row reaches in the tree rooted at `root`.
    fn leaf(&self, root: u32, row: &[f32]) -> &Node {
        let mut node = &self.nodes[root as usize];
        while node.mode != Mode::Leaf {
            let x = row[node.feature as usize];
            let t = node.threshold;
            let yes = if x.is_nan() {
                node.missing_true
            } else {
                match node.mode {
                    Mode::Leq => x <= t,
                    Mode::Lt => x < t,
                    Mode::Gte => x >= t,
                    Mode::Gt => x > t,
                    Mode::Eq => x == t,
                    Mode::Neq => x != t,
                    Mode::Leaf => unreachable!(),
                }
            };
            node = &self.nodes[if yes { node.yes } else { node.no } as usize];
        }
        node
    }

    /// Raw scores of one row (before the post-transform), into `out`.
    fn score(&self, row: &[f32], out: &mut [f64]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        let aggregate = match &self.kind {
            Kind::Regressor { aggregate } => *aggregate,
            Kind::Classifier { .. } => Aggregate::Sum,
        };
        match aggregate {
            Aggregate::Sum | Aggregate::Average => {
                for root in &self.roots {
                    let leaf = self.leaf(*root, row);
                    for (col, w) in &self.weights[leaf.yes as usize..leaf.no as usize] {
                        out[*col as usize] += f64::from(*w);
                    }
                }
                if aggregate == Aggregate::Average {
                    let trees = self.roots.len().max(1) as f64;
                    out.iter_mut().for_each(|v| *v /= trees);
                }
            }
            Aggregate::Min | Aggregate::Max => {
                let mut seen = vec![false; out.len()];
                let mut tree = vec![0.0; out.len()];
                for root in &self.roots {
                    tree.iter_mut().for_each(|v| *v = 0.0);
                    let leaf = self.leaf(*root, row);
                    let mut touched = vec![false; out.len()];
                    for (col, w) in &self.weights[leaf.yes as usize..leaf.no as usize] {
                        tree[*col as usize] += f64::from(*w);
                        touched[*col as usize] = true;
                    }
                    for c in (0..out.len()).filter(|c| touched[*c]) {
                        let better = if aggregate == Aggregate::Min {
                            tree[c] < out[c]
                        } else {
                            tree[c] > out[c]
                        };
                        if !seen[c] || better {
                            out[c] = tree[c];
                            seen[c] = true;
                        }
                    }
                }
            }
        }
        if self.base.len() == out.len() {
            for (v, b) in out.iter_mut().zip(&self.base) {
                *v += f64::from(*b);
            }
        } else if let [b] = self.base.as_slice() {
            out[0] += f64::from(*b);
        }
    }

    fn transform(&self, scores: &mut [f64]) {
        self.post.apply(scores);
    }

    pub(crate) fn run(&self, rows: usize, data: &[f64]) -> Result<Vec<Output>, OnnxError> {
        let width = self.n_features;
        check_rows(rows, width, data)?;
        let mut row = vec![0f32; width];
        let mut raw = vec![0f64; self.columns];
        let (mut labels, mut label_text, mut scores) = (Vec::new(), Vec::new(), Vec::new());
        let score_width = match &self.kind {
            Kind::Classifier {
                single_column: true,
                ..
            } => 2,
            _ => self.columns,
        };
        scores.reserve(rows * score_width);
        for r in 0..rows {
            // Thresholds are float: compare in float, as onnxruntime does.
            for (x, v) in row.iter_mut().zip(&data[r * width..(r + 1) * width]) {
                *x = *v as f32;
            }
            self.score(&row, &mut raw);
            match &self.kind {
                Kind::Regressor { .. } => {
                    self.transform(&mut raw);
                    scores.extend(raw.iter().map(|v| *v as f32));
                }
                Kind::Classifier {
                    labels: names,
                    single_column,
                    weights_positive,
                } => {
                    let winner = if *single_column {
                        let s = raw[0];
                        let positive = if self.post == Post::None && *weights_positive {
                            s > 0.5
                        } else {
                            s > 0.0
                        };
                        self.transform(&mut raw);
                        let p = raw[0];
                        let (p0, p1) = if self.post == Post::None && !*weights_positive {
                            (-p, p)
                        } else {
                            (1.0 - p, p)
                        };
                        scores.extend([p0 as f32, p1 as f32]);
                        usize::from(positive)
                    } else {
                        let mut best = 0;
                        for (c, v) in raw.iter().enumerate() {
                            if *v > raw[best] {
                                best = c;
                            }
                        }
                        self.transform(&mut raw);
                        scores.extend(raw.iter().map(|v| *v as f32));
                        best
                    };
                    match names {
                        Labels::Ints(v) => labels.push(v[winner]),
                        Labels::Strings(v) => label_text.push(v[winner].clone()),
                    }
                }
            }
        }
        let values = |ix: usize| -> (Vec<usize>, Data) {
            match (&self.kind, ix) {
                (
                    Kind::Classifier {
                        labels: Labels::Ints(_),
                        ..
                    },
                    0,
                ) => (vec![rows], Data::I64(labels.clone())),
                (Kind::Classifier { .. }, 0) => (vec![rows], Data::Text(label_text.clone())),
                (Kind::Classifier { .. }, _) => {
                    (vec![rows, score_width], Data::F32(scores.clone()))
                }
                (Kind::Regressor { .. }, _) => (vec![rows, score_width], Data::F32(scores.clone())),
            }
        };
        Ok(self
            .outputs
            .iter()
            .map(|(name, ix)| {
                let (shape, data) = values(*ix);
                Output {
                    name: name.clone(),
                    shape,
                    data,
                }
            })
            .collect())
    }
}
