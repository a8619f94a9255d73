//! Gradient-boosted decision trees: histogram-based and grown leaf-wise,
//! the way LightGBM trains them.
//!
//! Training bins every feature once (at most `max_bin` bins; bin 0 holds
//! missing values), then each round builds gradient histograms per leaf,
//! deriving the larger child's histogram from its parent's minus the smaller
//! child's, and splits the leaf with the best gain until `num_leaves`.
//! Missing values learn a default direction at every split. The model file
//! keeps thresholds as raw values, so serving reads no bins.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::features::{numeric_values, read_frame, Column, Frame, InputKind, InputSpec};
use crate::linear::{labelled_task, sigmoid};
use crate::metrics::Round;
use crate::model::Task;
use crate::{MlError, Result, Target};

/// `with:` of `weir/train-gbdt`. Names follow LightGBM where it has one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbdtParams {
    /// A column, or a comparison that defines a binary label: `"arr_delay > 15"`.
    pub target: String,
    /// Feature columns; empty: every column but the target and `exclude`.
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Columns split on category codes (text columns always are).
    #[serde(default)]
    pub categorical: Vec<String>,
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    /// Boosting rounds at most; early stopping may end sooner.
    #[serde(default = "defaults::num_rounds")]
    pub num_rounds: usize,
    #[serde(default = "defaults::num_leaves")]
    pub num_leaves: usize,
    /// 0: no limit besides `num_leaves`.
    #[serde(default)]
    pub max_depth: usize,
    #[serde(default = "defaults::min_data_in_leaf")]
    pub min_data_in_leaf: usize,
    #[serde(default = "defaults::min_sum_hessian")]
    pub min_sum_hessian: f64,
    /// L2 penalty on leaf values (LightGBM's lambda_l2).
    #[serde(default)]
    pub l2: f64,
    /// Fraction of rows drawn for each round.
    #[serde(default = "defaults::one")]
    pub subsample: f64,
    /// Fraction of features drawn for each tree.
    #[serde(default = "defaults::one")]
    pub colsample: f64,
    #[serde(default = "defaults::max_bin")]
    pub max_bin: usize,
    /// Stop when the validation loss has not improved for this many rounds
    /// (0: never stop early). Needs a `valid` input.
    #[serde(default = "defaults::early_stopping_rounds")]
    pub early_stopping_rounds: usize,
    /// `balanced`, or `{negative: w, positive: w}` (classification only).
    #[serde(default)]
    pub class_weight: Option<ClassWeight>,
    /// Worker threads (per process); 0 uses every core (divided between
    /// the processes when `workers` is above 1).
    #[serde(default)]
    pub threads: usize,
    /// Processes training data-parallel: each builds the gradient
    /// histograms of its share of the rows, and the histograms are summed
    /// across processes (an all-reduce) before every split.
    #[serde(default = "defaults::workers")]
    pub workers: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "defaults::max_categories")]
    pub max_categories: usize,
}

mod defaults {
    pub fn learning_rate() -> f64 {
        0.1
    }
    pub fn num_rounds() -> usize {
        500
    }
    pub fn num_leaves() -> usize {
        31
    }
    pub fn min_data_in_leaf() -> usize {
        20
    }
    pub fn min_sum_hessian() -> f64 {
        1e-3
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn max_bin() -> usize {
        255
    }
    pub fn early_stopping_rounds() -> usize {
        20
    }
    pub fn max_categories() -> usize {
        254
    }
    pub fn workers() -> usize {
        1
    }
}

/// The processes of a data-parallel fit: this one's rank among `world`, and
/// a sum across all of them. Every process calls `all_reduce` the same
/// number of times with buffers of the same length; each gets the sum of
/// all the buffers, the same bits in every process.
pub trait Collective: Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    fn all_reduce(&self, buf: &mut [f64]) -> Result<()>;
}

/// The most processes one data-parallel fit may use.
pub const MAX_WORKERS: usize = 64;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ClassWeight {
    Named(String),
    Weights { negative: f64, positive: f64 },
}

/// How a raw input becomes a tree input: a number as is, or a category as
/// its code (rank by training frequency; unseen and missing are missing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TreeFeature {
    Numeric {
        name: String,
    },
    Category {
        name: String,
        categories: Vec<String>,
    },
}

impl TreeFeature {
    pub fn name(&self) -> &str {
        match self {
            TreeFeature::Numeric { name } | TreeFeature::Category { name, .. } => name,
        }
    }

    fn kind(&self) -> InputKind {
        match self {
            TreeFeature::Numeric { .. } => InputKind::Numeric,
            TreeFeature::Category { .. } => InputKind::Text,
        }
    }
}

/// One tree. Internal nodes send a row left when its value is `<=`
/// threshold, or when it is missing and `default_left`; a child `< 0` is
/// the leaf `!child`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub leaves: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub feature: u32,
    pub threshold: f64,
    pub default_left: bool,
    pub left: i32,
    pub right: i32,
}

impl Tree {
    /// Every node reads a feature the model has, and every branch leads to
    /// a later node or to a leaf: so prediction ends, in bounds. Training
    /// numbers a node's children after it.
    pub(crate) fn check(&self, features: usize) -> std::result::Result<(), String> {
        if self.leaves.is_empty() {
            return Err("no leaves".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.feature as usize >= features {
                return Err(format!(
                    "node {i} splits on feature {} of {features}",
                    node.feature
                ));
            }
            for child in [node.left, node.right] {
                let fine = match child {
                    c if c < 0 => (!c as usize) < self.leaves.len(),
                    c => (c as usize) > i && (c as usize) < self.nodes.len(),
                };
                if !fine {
                    return Err(format!("node {i} leads to {child}, outside the tree"));
                }
            }
        }
        Ok(())
    }

    fn predict(&self, row: &[f64]) -> f64 {
        if self.nodes.is_empty() {
            return self.leaves[0];
        }
        let mut at = 0i32;
        loop {
            let n = &self.nodes[at as usize];
            let v = row[n.feature as usize];
            let left = if v.is_nan() {
                n.default_left
            } else {
                v <= n.threshold
            };
            at = if left { n.left } else { n.right };
            if at < 0 {
                return self.leaves[!at as usize];
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GbdtModel {
    pub task: Task,
    pub target: Target,
    pub features: Vec<TreeFeature>,
    pub base_score: f64,
    pub trees: Vec<Tree>,
}

impl GbdtModel {
    pub fn inputs(&self) -> Vec<InputSpec> {
        self.features
            .iter()
            .map(|f| InputSpec {
                name: f.name().to_string(),
                kind: f.kind(),
            })
            .collect()
    }

    pub fn frame(&self, batch: &RecordBatch) -> Result<Frame> {
        frame_of(&self.features, batch, "model input")
    }

    /// Probabilities of the positive class, or predicted values.
    pub fn predict(&self, frame: &Frame) -> Result<Vec<f64>> {
        let matrix = tree_inputs(&self.features, frame)?;
        let width = self.features.len();
        Ok(matrix
            .par_chunks(width.max(1))
            .map(|row| {
                let raw = self.base_score + self.trees.iter().map(|t| t.predict(row)).sum::<f64>();
                match self.task {
                    Task::Classification => sigmoid(raw),
                    Task::Regression => raw,
                }
            })
            .collect())
    }
}

/// Row-major tree inputs: numbers, category codes, NaN for missing.
fn tree_inputs(features: &[TreeFeature], frame: &Frame) -> Result<Vec<f64>> {
    if frame.columns.len() != features.len() {
        return Err(MlError::invalid(
            "inputs",
            format!(
                "expected {} columns, got {}",
                features.len(),
                frame.columns.len()
            ),
        ));
    }
    let width = features.len();
    let mut out = vec![f64::NAN; frame.rows * width];
    for (j, (f, col)) in features.iter().zip(&frame.columns).enumerate() {
        if col.len() != frame.rows {
            return Err(MlError::Input {
                input: f.name().into(),
                message: format!("has {} values, expected {}", col.len(), frame.rows),
            });
        }
        match (f, col) {
            (TreeFeature::Numeric { .. }, Column::Numeric(v)) => {
                for (r, x) in v.iter().enumerate() {
                    out[r * width + j] = *x;
                }
            }
            (TreeFeature::Category { categories, .. }, Column::Text(v)) => {
                let codes: HashMap<&str, f64> = categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i as f64))
                    .collect();
                for (r, x) in v.iter().enumerate() {
                    if let Some(&code) = x.as_deref().and_then(|s| codes.get(s)) {
                        out[r * width + j] = code;
                    }
                }
            }
            _ => {
                return Err(MlError::Input {
                    input: f.name().into(),
                    message: format!(
                        "expected {} values",
                        if f.kind() == InputKind::Numeric {
                            "numeric"
                        } else {
                            "text"
                        }
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// Only the columns training reads (the target's and the features), so
/// selecting the labelled rows copies nothing else. Unknown names are left
/// for the callers to report.
fn used_columns(batch: &RecordBatch, params: &GbdtParams) -> Result<RecordBatch> {
    let target = Target::parse(&params.target)?;
    let schema = batch.schema();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| {
            let name = schema.field(i).name();
            *name == target.column || params.features.contains(name)
        })
        .collect();
    Ok(batch.project(&keep)?)
}

/// The column as UTF-8 texts, borrowed from Arrow (no string per row).
fn utf8(col: &dyn arrow::array::Array) -> Result<arrow::array::StringArray> {
    let cast = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8)?;
    Ok(cast
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .expect("utf8")
        .clone())
}

/// [`tree_inputs`] straight from a batch, as training reads it: the same
/// numbers and codes, without turning every text cell into a `String`.
fn batch_tree_inputs(
    features: &[TreeFeature],
    batch: &RecordBatch,
    what: &str,
) -> Result<Vec<f64>> {
    let width = features.len();
    let rows = batch.num_rows();
    let mut out = vec![f64::NAN; rows * width];
    for (j, f) in features.iter().enumerate() {
        let col = weir_data::column(batch, f.name(), what)?;
        match f {
            TreeFeature::Numeric { .. } => {
                for (r, x) in numeric_values(col.as_ref())?.into_iter().enumerate() {
                    out[r * width + j] = x;
                }
            }
            TreeFeature::Category { categories, .. } => {
                let codes: HashMap<&str, f64> = categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i as f64))
                    .collect();
                for (r, x) in utf8(col.as_ref())?.iter().enumerate() {
                    if let Some(&code) = x.and_then(|s| codes.get(s)) {
                        out[r * width + j] = code;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What training measured, reported as metrics.
#[derive(Clone, Debug, Default)]
pub struct GbdtReport {
    pub rows: usize,
    pub rounds: usize,
    pub best_round: usize,
    pub bin_seconds: f64,
    pub fit_seconds: f64,
    /// Validation loss after each round (logloss or squared error).
    pub valid_curve: Vec<f64>,
    pub train_loss: f64,
    pub threads: usize,
}

pub fn train_gbdt(
    train: &RecordBatch,
    valid: Option<&RecordBatch>,
    params: &GbdtParams,
) -> Result<(GbdtModel, GbdtReport)> {
    train_gbdt_reporting(train, valid, params, &mut |_| true)
}

/// [`train_gbdt`], calling `on_round` after every round that has a
/// validation set; training stops (keeping the best round
/// so far) when it returns false. A tuner's scheduler (ASHA) decides there.
pub fn train_gbdt_reporting(
    train: &RecordBatch,
    valid: Option<&RecordBatch>,
    params: &GbdtParams,
    on_round: &mut (dyn FnMut(&Round) -> bool + Send),
) -> Result<(GbdtModel, GbdtReport)> {
    check_params(params)?;
    let (pool, threads) = thread_pool(params)?;
    pool.install(|| {
        let data = GbdtData::prepare(train, valid, params)?;
        boost(&data, params, threads, None, on_round)
    })
}

/// The pool training runs in: `threads` workers, or one per core.
fn thread_pool(params: &GbdtParams) -> Result<(crate::Pool, usize)> {
    let threads = if params.threads == 0 {
        (std::thread::available_parallelism().map_or(1, |n| n.get()) / params.workers.max(1)).max(1)
    } else {
        params.threads
    };
    Ok((crate::Pool::new(threads)?, threads))
}

/// [`train_gbdt_reporting`] on data already prepared (binned) with
/// [`GbdtData::prepare`]: the trials of a study share one preparation.
pub fn train_gbdt_prepared(
    data: &GbdtData,
    params: &GbdtParams,
    on_round: &mut (dyn FnMut(&Round) -> bool + Send),
) -> Result<(GbdtModel, GbdtReport)> {
    check_params(params)?;
    if data.key != GbdtData::key(params) {
        return Err(MlError::invalid(
            "with",
            "the prepared data was binned for other target, feature or binning options",
        ));
    }
    let (pool, threads) = thread_pool(params)?;
    pool.install(|| boost(data, params, threads, None, on_round))
}

/// One process of a data-parallel fit (`workers` above 1): every process
/// prepares the whole training set (so all bin it alike), grows trees on
/// the histograms of its share of the rows summed across `group`, and ends
/// with the same model. `on_round` is asked on rank 0 only; its answer
/// holds for all.
pub fn train_gbdt_distributed(
    data: &GbdtData,
    params: &GbdtParams,
    group: &dyn Collective,
    on_round: &mut (dyn FnMut(&Round) -> bool + Send),
) -> Result<(GbdtModel, GbdtReport)> {
    check_params(params)?;
    let (pool, threads) = thread_pool(params)?;
    pool.install(|| boost(data, params, threads, Some(group), on_round))
}

/// Training rows binned once: labels, tree features, bin edges and the
/// binned training (and validation) rows. Depends only on the options in
/// [`GbdtData::key`], so trials that vary anything else can share it.
pub struct GbdtData {
    key: String,
    y: Vec<f64>,
    target: Target,
    task: Task,
    features: Vec<TreeFeature>,
    binner: Binner,
    bins: Vec<u8>,
    valid: Option<(Vec<u8>, Vec<f64>)>,
    bin_seconds: f64,
}

impl GbdtData {
    /// The options that shape the prepared data.
    pub fn key(p: &GbdtParams) -> String {
        serde_json::json!([
            p.target,
            p.features,
            p.exclude,
            p.categorical,
            p.task,
            p.max_bin,
            p.max_categories,
            p.seed
        ])
        .to_string()
    }

    pub fn prepare(
        train: &RecordBatch,
        valid: Option<&RecordBatch>,
        params: &GbdtParams,
    ) -> Result<GbdtData> {
        check_params(params)?;
        let key = GbdtData::key(params);
        let params = &with_features_of(params, train)?;
        let started = Instant::now();
        let train = &used_columns(train, params)?;
        let (rows, y, target, task) =
            labelled_task(train, &params.target, &params.features, params.task)?;
        let features = fit_features(&rows, params)?;
        let x = batch_tree_inputs(&features, &rows, "with.features")?;
        let binner = Binner::fit(&x, features.len(), params.max_bin, params.seed);
        for (j, f) in features.iter().enumerate() {
            if binner.edges[j].is_empty() && binner.all_missing[j] {
                return Err(MlError::invalid(
                    format!("with.features.{}", f.name()),
                    "the column is empty or all null in the training data",
                ));
            }
        }
        let bins = binner.bin(&x);
        drop(x);
        let valid = match valid {
            Some(v) => {
                let (vrows, vy) = crate::linear::labelled(&used_columns(v, params)?, &target)?;
                if vy.is_empty() {
                    None
                } else {
                    let vx = batch_tree_inputs(&features, &vrows, "valid")?;
                    Some((binner.bin(&vx), vy))
                }
            }
            None => None,
        };
        Ok(GbdtData {
            key,
            y,
            target,
            task,
            features,
            binner,
            bins,
            valid,
            bin_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

fn check_params(p: &GbdtParams) -> Result<()> {
    let positive = |field: &str, v: f64| {
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(MlError::invalid(
                format!("with.{field}"),
                format!("must be a positive number, got {v}"),
            ))
        }
    };
    positive("learning_rate", p.learning_rate)?;
    for (field, v) in [("subsample", p.subsample), ("colsample", p.colsample)] {
        if !(v > 0.0 && v <= 1.0) {
            return Err(MlError::invalid(
                format!("with.{field}"),
                format!("must be in (0, 1], got {v}"),
            ));
        }
    }
    if !(p.l2 >= 0.0 && p.l2.is_finite()) {
        return Err(MlError::invalid("with.l2", "must be a non-negative number"));
    }
    if p.min_sum_hessian.is_nan() || p.min_sum_hessian < 0.0 {
        return Err(MlError::invalid(
            "with.min_sum_hessian",
            "must be a non-negative number",
        ));
    }
    if p.num_leaves < 2 {
        return Err(MlError::invalid("with.num_leaves", "must be at least 2"));
    }
    if p.num_rounds == 0 {
        return Err(MlError::invalid("with.num_rounds", "must be at least 1"));
    }
    if !(1..=MAX_WORKERS).contains(&p.workers) {
        return Err(MlError::invalid(
            "with.workers",
            format!("must be between 1 and {MAX_WORKERS}, got {}", p.workers),
        ));
    }
    if !(2..=256).contains(&p.max_bin) {
        return Err(MlError::invalid(
            "with.max_bin",
            format!("must be between 2 and 256, got {}", p.max_bin),
        ));
    }
    Ok(())
}

fn boost(
    data: &GbdtData,
    params: &GbdtParams,
    threads: usize,
    group: Option<&dyn Collective>,
    on_round: &mut (dyn FnMut(&Round) -> bool + Send),
) -> Result<(GbdtModel, GbdtReport)> {
    let started = Instant::now();
    let GbdtData {
        y,
        task,
        binner,
        bins,
        bin_seconds,
        ..
    } = data;
    let (task, bin_seconds) = (*task, *bin_seconds);
    let valid_set = data.valid.as_ref();
    let weights = class_weights(params, task, y)?;
    let base_score = base_score(task, y, weights.as_deref());
    let mut booster = Booster::new(binner, bins, params, group);
    let mut scores = vec![base_score; y.len()];
    let mut valid_scores = valid_set.map(|(_, vy)| vec![base_score; vy.len()]);
    let mut trees: Vec<Tree> = Vec::new();
    let mut curve = Vec::new();
    let mut best = (f64::INFINITY, 0usize);
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut grad = vec![0f32; y.len()];
    let mut hess = vec![0f32; y.len()];
    for round in 0..params.num_rounds {
        gradients(task, y, &scores, weights.as_deref(), &mut grad, &mut hess);
        let tree = booster.grow(&grad, &hess, &mut rng, &mut scores)?;
        if let (Some((vbins, vy)), Some(vs)) = (valid_set, valid_scores.as_mut()) {
            let width = binner.edges.len();
            vs.par_iter_mut().enumerate().for_each(|(r, s)| {
                *s += tree.predict_binned(&vbins[r * width..(r + 1) * width]);
            });
            let loss = mean_loss(task, vy, vs);
            curve.push(loss);
            if loss < best.0 - 1e-12 {
                best = (loss, round + 1);
            }
            trees.push(tree.finish(binner));
            if params.early_stopping_rounds > 0
                && round + 1 - best.1 >= params.early_stopping_rounds
            {
                break;
            }
            let raw = || vs.clone();
            let go_on = match group {
                None => on_round(&Round::new(round + 1, loss, task, vy, &raw)),
                // Rank 0 decides; the others hear it in the same sum.
                Some(g) => {
                    let mut stop = [0.0];
                    if g.rank() == 0 && !on_round(&Round::new(round + 1, loss, task, vy, &raw)) {
                        stop[0] = 1.0;
                    }
                    g.all_reduce(&mut stop)?;
                    stop[0] == 0.0
                }
            };
            if !go_on {
                break;
            }
        } else {
            trees.push(tree.finish(binner));
            best.1 = round + 1;
        }
    }
    let rounds = trees.len();
    trees.truncate(best.1.max(1));
    let report = GbdtReport {
        rows: y.len(),
        rounds,
        best_round: trees.len(),
        bin_seconds,
        // As if alone: binning, shared or not, is part of a fit's cost.
        fit_seconds: bin_seconds + started.elapsed().as_secs_f64(),
        valid_curve: curve,
        train_loss: mean_loss(task, y, &scores),
        threads,
    };
    let model = GbdtModel {
        task,
        target: data.target.clone(),
        features: data.features.clone(),
        base_score,
        trees,
    };
    Ok((model, report))
}

fn frame_of(features: &[TreeFeature], batch: &RecordBatch, what: &str) -> Result<Frame> {
    read_frame(batch, features.iter().map(|f| (f.name(), f.kind())), what)
}

/// `params` with its feature columns named: the listed ones, or every
/// column but the target's and `exclude` (as the other trainers choose).
fn with_features_of(params: &GbdtParams, batch: &RecordBatch) -> Result<GbdtParams> {
    let target = Target::parse(&params.target)?;
    let spec = crate::features::FeatureSpec {
        features: &params.features,
        exclude: &params.exclude,
        categorical: &[],
        derive: &BTreeMap::new(),
        transforms: &BTreeMap::new(),
        max_categories: params.max_categories,
        target: &target.column,
    };
    Ok(GbdtParams {
        features: crate::features::select_features(batch, &spec)?,
        ..params.clone()
    })
}

fn fit_features(batch: &RecordBatch, params: &GbdtParams) -> Result<Vec<TreeFeature>> {
    for c in &params.categorical {
        if !params.features.contains(c) {
            return Err(MlError::invalid(
                "with.categorical",
                format!("'{c}' is not in with.features"),
            ));
        }
    }
    let mut out = Vec::with_capacity(params.features.len());
    for name in &params.features {
        let col = weir_data::column(batch, name, "with.features")?;
        let numeric =
            col.data_type().is_numeric() || *col.data_type() == arrow::datatypes::DataType::Boolean;
        if numeric && !params.categorical.contains(name) {
            out.push(TreeFeature::Numeric { name: name.clone() });
            continue;
        }
        let text = utf8(col.as_ref())?;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for v in text.iter().flatten() {
            *counts.entry(v).or_default() += 1;
        }
        if counts.is_empty() {
            return Err(MlError::invalid(
                format!("with.features.{name}"),
                "the column is empty or all null in the training data",
            ));
        }
        let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        by_count.truncate(params.max_categories.min(params.max_bin - 1));
        out.push(TreeFeature::Category {
            name: name.clone(),
            categories: by_count.into_iter().map(|(c, _)| c.to_string()).collect(),
        });
    }
    Ok(out)
}

fn class_weights(params: &GbdtParams, task: Task, y: &[f64]) -> Result<Option<Vec<f32>>> {
    let Some(cw) = &params.class_weight else {
        return Ok(None);
    };
    if task != Task::Classification {
        return Err(MlError::invalid(
            "with.class_weight",
            "applies to classification only",
        ));
    }
    let (neg, pos) = match cw {
        ClassWeight::Named(n) if n == "balanced" => {
            let positives = y.iter().filter(|v| **v == 1.0).count() as f64;
            let n = y.len() as f64;
            (n / (2.0 * (n - positives)), n / (2.0 * positives))
        }
        ClassWeight::Named(other) => {
            return Err(MlError::invalid(
                "with.class_weight",
                format!("'{other}' is not known; use 'balanced' or {{negative: w, positive: w}}"),
            ))
        }
        ClassWeight::Weights { negative, positive } => (*negative, *positive),
    };
    if !(neg > 0.0 && pos > 0.0 && neg.is_finite() && pos.is_finite()) {
        return Err(MlError::invalid(
            "with.class_weight",
            "weights must be positive numbers",
        ));
    }
    Ok(Some(
        y.iter()
            .map(|v| if *v == 1.0 { pos as f32 } else { neg as f32 })
            .collect(),
    ))
}

fn base_score(task: Task, y: &[f64], w: Option<&[f32]>) -> f64 {
    let (mut sw, mut swy) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        let wi = w.map_or(1.0, |w| w[i] as f64);
        sw += wi;
        swy += wi * v;
    }
    let mean = swy / sw;
    match task {
        Task::Classification => {
            let p = mean.clamp(1e-12, 1.0 - 1e-12);
            (p / (1.0 - p)).ln()
        }
        Task::Regression => mean,
    }
}

fn gradients(
    task: Task,
    y: &[f64],
    scores: &[f64],
    w: Option<&[f32]>,
    grad: &mut [f32],
    hess: &mut [f32],
) {
    grad.par_iter_mut()
        .zip(hess.par_iter_mut())
        .enumerate()
        .for_each(|(i, (g, h))| {
            let (gi, hi) = match task {
                Task::Classification => {
                    let p = sigmoid(scores[i]);
                    (p - y[i], (p * (1.0 - p)).max(1e-16))
                }
                Task::Regression => (scores[i] - y[i], 1.0),
            };
            let wi = w.map_or(1.0, |w| w[i] as f64);
            *g = (gi * wi) as f32;
            *h = (hi * wi) as f32;
        });
}

fn mean_loss(task: Task, y: &[f64], scores: &[f64]) -> f64 {
    let total: f64 = y
        .par_iter()
        .zip(scores.par_iter())
        .map(|(y, s)| match task {
            Task::Classification => {
                let p = sigmoid(*s).clamp(1e-15, 1.0 - 1e-15);
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            }
            Task::Regression => (s - y).powi(2),
        })
        .sum();
    total / y.len().max(1) as f64
}

/// Bin edges per feature: a value `v` falls in bin `1 + #{edges < v}`;
/// bin 0 is missing.
struct Binner {
    edges: Vec<Vec<f64>>,
    all_missing: Vec<bool>,
}

/// Rows sampled to place bin edges (LightGBM's bin_construct_sample_cnt).
const BIN_SAMPLE: usize = 200_000;

impl Binner {
    fn fit(x: &[f64], width: usize, max_bin: usize, seed: u64) -> Binner {
        let rows = x.len() / width.max(1);
        let picked: Vec<usize> = if rows > BIN_SAMPLE {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut idx = sample(&mut rng, rows, BIN_SAMPLE).into_vec();
            idx.sort_unstable();
            idx
        } else {
            (0..rows).collect()
        };
        let columns: Vec<(Vec<f64>, bool)> = (0..width)
            .into_par_iter()
            .map(|j| {
                let mut values: Vec<f64> = picked
                    .iter()
                    .map(|&r| x[r * width + j])
                    .filter(|v| !v.is_nan())
                    .collect();
                let all_missing = values.is_empty();
                values.sort_unstable_by(|a, b| a.total_cmp(b));
                (edges_of(&values, max_bin - 1), all_missing)
            })
            .collect();
        let (edges, all_missing) = columns.into_iter().unzip();
        Binner { edges, all_missing }
    }

    /// Row-major bins of a row-major matrix.
    fn bin(&self, x: &[f64]) -> Vec<u8> {
        let width = self.edges.len();
        let mut out = vec![0u8; x.len()];
        out.par_chunks_mut(width.max(1) * 1024)
            .zip(x.par_chunks(width.max(1) * 1024))
            .for_each(|(o, x)| {
                for (i, v) in x.iter().enumerate() {
                    o[i] = self.bin_of(i % width, *v);
                }
            });
        out
    }

    fn bin_of(&self, feature: usize, v: f64) -> u8 {
        if v.is_nan() {
            return 0;
        }
        let edges = &self.edges[feature];
        (1 + edges.partition_point(|e| *e < v)) as u8
    }

    fn bins(&self, feature: usize) -> usize {
        self.edges[feature].len() + 2
    }
}

/// At most `bins` bins over sorted values: one per distinct value when they
/// fit (edges halfway between neighbours), else quantile edges.
fn edges_of(sorted: &[f64], bins: usize) -> Vec<f64> {
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for &v in sorted {
        match distinct.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => distinct.push((v, 1)),
        }
    }
    if distinct.len() <= bins {
        return distinct
            .windows(2)
            .map(|w| midpoint(w[0].0, w[1].0))
            .collect();
    }
    // Walk distinct values, closing a bin when it holds its share of the
    // rows still unassigned (so one heavy value cannot starve the rest).
    let mut edges = Vec::with_capacity(bins - 1);
    let mut remaining = sorted.len();
    let mut in_bin = 0usize;
    for (i, (v, n)) in distinct.iter().enumerate() {
        in_bin += n;
        let bins_left = bins - edges.len();
        let share = remaining as f64 / bins_left as f64;
        if in_bin as f64 >= share && i + 1 < distinct.len() && edges.len() < bins - 1 {
            edges.push(midpoint(*v, distinct[i + 1].0));
            remaining -= in_bin;
            in_bin = 0;
        }
    }
    edges
}

fn midpoint(a: f64, b: f64) -> f64 {
    let m = a + (b - a) / 2.0;
    // Keep a < m so `a` stays on the left even when a and b are adjacent floats.
    if m >= b {
        a
    } else {
        m
    }
}

#[derive(Clone, Copy, Default)]
struct Bin {
    g: f64,
    h: f64,
    n: u32,
}

#[derive(Clone, Copy)]
struct Split {
    gain: f64,
    feature: usize,
    /// Rows with bins 1..=bin go left.
    bin: u8,
    default_left: bool,
    left: (f64, f64, u32),
    right: (f64, f64, u32),
}

struct Leaf {
    start: usize,
    len: usize,
    depth: usize,
    sums: (f64, f64, u32),
    hist: Vec<Bin>,
    split: Option<Split>,
    /// Where this leaf hangs: (node, is_left), or None for the root.
    parent: Option<(usize, bool)>,
}

/// A tree while it trains: split bins as well as their raw thresholds.
struct GrownTree {
    nodes: Vec<(Node, u8)>,
    leaves: Vec<f64>,
}

impl GrownTree {
    fn predict_binned(&self, row: &[u8]) -> f64 {
        if self.nodes.is_empty() {
            return self.leaves[0];
        }
        let mut at = 0i32;
        loop {
            let (n, bin) = &self.nodes[at as usize];
            let b = row[n.feature as usize];
            let left = if b == 0 { n.default_left } else { b <= *bin };
            at = if left { n.left } else { n.right };
            if at < 0 {
                return self.leaves[!at as usize];
            }
        }
    }

    fn finish(self, binner: &Binner) -> Tree {
        Tree {
            nodes: self
                .nodes
                .into_iter()
                .map(|(mut n, bin)| {
                    // Left holds bins 1..=bin: values up to edge number `bin`.
                    n.threshold = binner.edges[n.feature as usize][bin as usize - 1];
                    n
                })
                .collect(),
            leaves: self.leaves,
        }
    }
}

struct Booster<'a> {
    bins: &'a [u8],
    width: usize,
    offsets: Vec<usize>,
    total_bins: usize,
    bin_counts: Vec<usize>,
    params: &'a GbdtParams,
    rows: Vec<u32>,
    scratch: Vec<u32>,
    /// The processes of a data-parallel fit, and this one's rows of theirs.
    group: Option<&'a dyn Collective>,
    shard: std::ops::Range<usize>,
}

impl<'a> Booster<'a> {
    fn new(
        binner: &Binner,
        bins: &'a [u8],
        params: &'a GbdtParams,
        group: Option<&'a dyn Collective>,
    ) -> Self {
        let width = binner.edges.len();
        let bin_counts: Vec<usize> = (0..width).map(|j| binner.bins(j)).collect();
        let mut offsets = Vec::with_capacity(width);
        let mut total = 0;
        for c in &bin_counts {
            offsets.push(total);
            total += c;
        }
        let n = bins.len() / width.max(1);
        // Contiguous shares, the first `n % world` one row longer.
        let shard = match group {
            Some(g) => {
                let (world, rank) = (g.world().max(1), g.rank());
                let share = |r: usize| r * (n / world) + r.min(n % world);
                share(rank)..share(rank + 1)
            }
            None => 0..n,
        };
        Booster {
            bins,
            width,
            offsets,
            total_bins: total,
            bin_counts,
            params,
            rows: Vec::with_capacity(shard.len()),
            scratch: vec![0; shard.len()],
            group,
            shard,
        }
    }

    fn n_rows(&self) -> usize {
        self.bins.len() / self.width.max(1)
    }

    /// Grows one tree on the gradients and adds its output to `scores`.
    fn grow(
        &mut self,
        grad: &[f32],
        hess: &[f32],
        rng: &mut StdRng,
        scores: &mut [f64],
    ) -> Result<GrownTree> {
        let n = self.n_rows();
        let p = self.params;
        self.rows.clear();
        let bagged = p.subsample < 1.0;
        if bagged {
            let k = ((n as f64 * p.subsample).round() as usize).clamp(1, n);
            // The whole sample is drawn in every process, as one process
            // would draw it; each keeps its own rows of it.
            let mut idx = sample(rng, n, k).into_vec();
            idx.sort_unstable();
            let shard = self.shard.clone();
            self.rows.extend(
                idx.into_iter()
                    .filter(|i| shard.contains(i))
                    .map(|i| i as u32),
            );
        } else {
            self.rows
                .extend(self.shard.start as u32..self.shard.end as u32);
        }
        let allowed: Vec<bool> = if p.colsample < 1.0 {
            let k = ((self.width as f64 * p.colsample).round() as usize).clamp(1, self.width);
            let mut mask = vec![false; self.width];
            for j in sample(rng, self.width, k) {
                mask[j] = true;
            }
            mask
        } else {
            vec![true; self.width]
        };
        let root_hist = self.histogram(&self.rows, grad, hess)?;
        let sums = total_of(&root_hist[..self.bin_counts[0]]);
        let mut leaves = vec![Leaf {
            start: 0,
            len: self.rows.len(),
            depth: 0,
            sums,
            hist: root_hist,
            split: None,
            parent: None,
        }];
        leaves[0].split = self.best_split(&leaves[0], &allowed);
        let mut tree = GrownTree {
            nodes: Vec::new(),
            leaves: Vec::new(),
        };
        while leaves.len() < p.num_leaves {
            let Some((li, split)) = leaves
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.split.map(|s| (i, s)))
                .max_by(|a, b| a.1.gain.total_cmp(&b.1.gain))
            else {
                break;
            };
            let node = tree.nodes.len();
            tree.nodes.push((
                Node {
                    feature: split.feature as u32,
                    threshold: 0.0,
                    default_left: split.default_left,
                    left: 0,
                    right: 0,
                },
                split.bin,
            ));
            let parent = &leaves[li];
            if let Some((pn, is_left)) = parent.parent {
                let slot = &mut tree.nodes[pn].0;
                if is_left {
                    slot.left = node as i32;
                } else {
                    slot.right = node as i32;
                }
            }
            let (start, len, depth) = (parent.start, parent.len, parent.depth);
            let left_len = self.partition(start, len, &split);
            let parent_hist = std::mem::take(&mut leaves[li].hist);
            // The smaller child by its count in all processes, so that all
            // sum the same child's histograms.
            let (small_start, small_len, small_is_left) = if split.left.2 <= split.right.2 {
                (start, left_len, true)
            } else {
                (start + left_len, len - left_len, false)
            };
            let small_hist =
                self.histogram(&self.rows[small_start..small_start + small_len], grad, hess)?;
            let mut large_hist = parent_hist;
            for (l, s) in large_hist.iter_mut().zip(&small_hist) {
                l.g -= s.g;
                l.h -= s.h;
                l.n -= s.n;
            }
            let (left_hist, right_hist) = if small_is_left {
                (small_hist, large_hist)
            } else {
                (large_hist, small_hist)
            };
            let mut left = Leaf {
                start,
                len: left_len,
                depth: depth + 1,
                sums: split.left,
                hist: left_hist,
                split: None,
                parent: Some((node, true)),
            };
            let mut right = Leaf {
                start: start + left_len,
                len: len - left_len,
                depth: depth + 1,
                sums: split.right,
                hist: right_hist,
                split: None,
                parent: Some((node, false)),
            };
            let deep_enough = p.max_depth > 0 && depth + 1 >= p.max_depth;
            if !deep_enough {
                left.split = self.best_split(&left, &allowed);
                right.split = self.best_split(&right, &allowed);
            }
            leaves[li] = left;
            leaves.push(right);
        }
        // Leaf values, and the children that point at leaves.
        let lambda = p.l2;
        for (i, leaf) in leaves.iter().enumerate() {
            let (g, h, _) = leaf.sums;
            tree.leaves.push(-g / (h + lambda) * p.learning_rate);
            if let Some((pn, is_left)) = leaf.parent {
                let slot = &mut tree.nodes[pn].0;
                if is_left {
                    slot.left = !(i as i32);
                } else {
                    slot.right = !(i as i32);
                }
            }
        }
        // Bagged, or sharing the rows with other processes: every row's
        // score moves, not only the rows this tree was grown on here.
        if bagged || self.group.is_some() {
            let width = self.width;
            let bins = self.bins;
            scores.par_iter_mut().enumerate().for_each(|(r, s)| {
                *s += tree.predict_binned(&bins[r * width..(r + 1) * width]);
            });
        } else {
            for (i, leaf) in leaves.iter().enumerate() {
                let v = tree.leaves[i];
                for &r in &self.rows[leaf.start..leaf.start + leaf.len] {
                    scores[r as usize] += v;
                }
            }
        }
        Ok(tree)
    }

    /// Gradient histograms of `rows`, all features side by side, summed
    /// over the processes of a data-parallel fit.
    fn histogram(&self, rows: &[u32], grad: &[f32], hess: &[f32]) -> Result<Vec<Bin>> {
        let mut hist = self.local_histogram(rows, grad, hess);
        let Some(group) = self.group else {
            return Ok(hist);
        };
        let mut flat = Vec::with_capacity(hist.len() * 3);
        for b in &hist {
            flat.extend([b.g, b.h, f64::from(b.n)]);
        }
        group.all_reduce(&mut flat)?;
        for (b, v) in hist.iter_mut().zip(flat.chunks_exact(3)) {
            // Counts are integers well below 2^53: exact as doubles.
            (b.g, b.h, b.n) = (v[0], v[1], v[2] as u32);
        }
        Ok(hist)
    }

    fn local_histogram(&self, rows: &[u32], grad: &[f32], hess: &[f32]) -> Vec<Bin> {
        let width = self.width;
        let total = self.total_bins;
        let offsets = &self.offsets;
        let bins = self.bins;
        let build = |rows: &[u32]| {
            let mut hist = vec![Bin::default(); total];
            for &r in rows {
                let r = r as usize;
                let (g, h) = (grad[r] as f64, hess[r] as f64);
                let row = &bins[r * width..(r + 1) * width];
                for (j, &b) in row.iter().enumerate() {
                    let cell = &mut hist[offsets[j] + b as usize];
                    cell.g += g;
                    cell.h += h;
                    cell.n += 1;
                }
            }
            hist
        };
        const CHUNK: usize = 16_384;
        if rows.len() <= CHUNK {
            return build(rows);
        }
        rows.par_chunks(CHUNK).map(build).reduce(
            || vec![Bin::default(); total],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.g += y.g;
                    x.h += y.h;
                    x.n += y.n;
                }
                a
            },
        )
    }

    fn best_split(&self, leaf: &Leaf, allowed: &[bool]) -> Option<Split> {
        let p = self.params;
        // The leaf's rows in all processes (its own `len` when alone).
        if (leaf.sums.2 as usize) < 2 * p.min_data_in_leaf.max(1) {
            return None;
        }
        let (g, h, n) = leaf.sums;
        let lambda = p.l2;
        let score = |g: f64, h: f64| g * g / (h + lambda);
        let parent = score(g, h);
        let ok = |h: f64, n: u32| n as usize >= p.min_data_in_leaf && h >= p.min_sum_hessian;
        (0..self.width)
            .into_par_iter()
            .filter(|j| allowed[*j])
            .filter_map(|j| {
                let hist = &leaf.hist[self.offsets[j]..self.offsets[j] + self.bin_counts[j]];
                let miss = hist[0];
                let mut best: Option<Split> = None;
                let (mut lg, mut lh, mut ln) = (0.0, 0.0, 0u32);
                // Bins 1..last: splitting after the last bin would leave the right empty.
                for (b, bin) in hist.iter().enumerate().take(hist.len() - 1).skip(1) {
                    lg += bin.g;
                    lh += bin.h;
                    ln += bin.n;
                    let directions: &[bool] = if miss.n > 0 { &[false, true] } else { &[false] };
                    for &miss_left in directions {
                        let (xg, xh, xn) = if miss_left {
                            (lg + miss.g, lh + miss.h, ln + miss.n)
                        } else {
                            (lg, lh, ln)
                        };
                        let (rg, rh, rn) = (g - xg, h - xh, n - xn);
                        if !ok(xh, xn) || !ok(rh, rn) {
                            continue;
                        }
                        let gain = score(xg, xh) + score(rg, rh) - parent;
                        if gain > best.map_or(1e-12, |s| s.gain) {
                            best = Some(Split {
                                gain,
                                feature: j,
                                bin: b as u8,
                                default_left: miss_left,
                                left: (xg, xh, xn),
                                right: (rg, rh, rn),
                            });
                        }
                    }
                }
                best
            })
            .max_by(|a, b| a.gain.total_cmp(&b.gain).then(b.feature.cmp(&a.feature)))
    }

    /// Stable partition of `rows[start..start+len]`: left rows first.
    fn partition(&mut self, start: usize, len: usize, split: &Split) -> usize {
        let width = self.width;
        let bins = self.bins;
        let goes_left = |r: u32| {
            let b = bins[r as usize * width + split.feature];
            if b == 0 {
                split.default_left
            } else {
                b <= split.bin
            }
        };
        let rows = &mut self.rows[start..start + len];
        let scratch = &mut self.scratch[..len];
        let mut l = 0;
        let mut r = 0;
        for i in 0..len {
            // rows[i] is read before rows[l] (l <= i) is written.
            let row = rows[i];
            if goes_left(row) {
                rows[l] = row;
                l += 1;
            } else {
                scratch[r] = row;
                r += 1;
            }
        }
        rows[l..].copy_from_slice(&scratch[..r]);
        l
    }
}

fn total_of(hist: &[Bin]) -> (f64, f64, u32) {
    hist.iter()
        .fold((0.0, 0.0, 0), |(g, h, n), b| (g + b.g, h + b.h, n + b.n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use std::sync::Arc;

    fn params(yaml: &str) -> GbdtParams {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// A label that depends on a threshold of `x`, on the category, and on
    /// whether `z` is missing, plus a little deterministic noise.
    fn table(rows: usize, seed: usize) -> RecordBatch {
        let mut x = Vec::new();
        let mut z = Vec::new();
        let mut c = Vec::new();
        let mut delay = Vec::new();
        for i in 0..rows {
            let h = (i * 7919 + seed * 104_729) % 1000;
            let xv = h as f64 / 100.0;
            let cv = ["ua", "dl", "aa", "b6"][(i * 31 + seed) % 4];
            let zv = if h.is_multiple_of(5) {
                None
            } else {
                Some((h % 37) as f64)
            };
            let noise = (i * 13 + seed).is_multiple_of(17);
            let late = (xv > 6.0) ^ (cv == "dl") ^ zv.is_none() ^ noise;
            x.push(xv);
            z.push(zv);
            c.push(cv);
            delay.push(if late { 40.0 } else { 0.0 });
        }
        RecordBatch::try_from_iter(vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("z", Arc::new(Float64Array::from(z)) as ArrayRef),
            ("carrier", Arc::new(StringArray::from(c)) as ArrayRef),
            ("delay", Arc::new(Float64Array::from(delay)) as ArrayRef),
        ])
        .unwrap()
    }

    const SPEC: &str = "{ target: 'delay > 15', features: [x, z, carrier], num_rounds: 200, \
                        num_leaves: 15, min_data_in_leaf: 5, threads: 2 }";

    fn data_parallel(spec: &str, world: usize) -> Vec<(GbdtModel, GbdtReport)> {
        let (train, valid) = (table(6000, 1), table(1000, 2));
        let p = params(spec);
        crate::test_group::run(world, |group| {
            let data = GbdtData::prepare(&train, Some(&valid), &p).unwrap();
            train_gbdt_distributed(&data, &p, group, &mut |_| true).unwrap()
        })
    }

    #[test]
    fn features_default_to_every_column_but_the_target_and_exclude() {
        let train = table(2000, 1);
        let listed = params(SPEC);
        let all = params("{ target: 'delay > 15', num_rounds: 200, num_leaves: 15, min_data_in_leaf: 5, threads: 2 }");
        let (a, _) = train_gbdt(&train, None, &listed).unwrap();
        let (b, _) = train_gbdt(&train, None, &all).unwrap();
        let names = |m: &GbdtModel| {
            m.features
                .iter()
                .map(|f| f.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&b), ["x", "z", "carrier"]);
        assert_eq!(names(&a), names(&b));
        let fewer = params("{ target: 'delay > 15', exclude: [z], num_rounds: 20, threads: 2 }");
        let (c, _) = train_gbdt(&train, None, &fewer).unwrap();
        assert_eq!(names(&c), ["x", "carrier"]);
        let bad = params("{ target: 'delay > 15', exclude: [nope] }");
        let err = train_gbdt(&train, None, &bad).unwrap_err().to_string();
        assert!(
            err.contains("with.exclude") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn data_parallel_training_gives_the_model_one_process_would() {
        for spec in [
            SPEC,
            // Bagging and feature sampling draw the same rows and columns.
            "{ target: 'delay > 15', features: [x, z, carrier], num_rounds: 60, \
             num_leaves: 15, min_data_in_leaf: 5, threads: 1, subsample: 0.7, colsample: 0.67 }",
        ] {
            let (train, valid, test) = (table(6000, 1), table(1000, 2), table(1000, 3));
            let (alone, alone_report) = train_gbdt(&train, Some(&valid), &params(spec)).unwrap();
            let (rows, _) = crate::linear::labelled(&test, &alone.target).unwrap();
            let frame = alone.frame(&rows).unwrap();
            let expected = alone.predict(&frame).unwrap();
            for world in [2, 3] {
                let fits = data_parallel(spec, world);
                for (model, report) in &fits {
                    // The same trees: the histograms only sum in another order.
                    assert_eq!(model.trees.len(), alone.trees.len(), "{world} workers");
                    assert_eq!(report.rounds, alone_report.rounds);
                    for (a, b) in model.trees.iter().zip(&alone.trees) {
                        let shape = |t: &Tree| {
                            t.nodes
                                .iter()
                                .map(|n| (n.feature, n.threshold.to_bits(), n.left, n.right))
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(shape(a), shape(b));
                    }
                    let got = model.predict(&frame).unwrap();
                    let worst = got
                        .iter()
                        .zip(&expected)
                        .map(|(g, e)| (g - e).abs())
                        .fold(0.0, f64::max);
                    eprintln!("{world} workers: largest prediction difference {worst:e}");
                    assert!(
                        worst < 1e-9,
                        "{world} workers: predictions differ by {worst}"
                    );
                }
                // Every process ends with the same bits.
                let first = fits[0].0.predict(&frame).unwrap();
                for (model, _) in &fits[1..] {
                    assert_eq!(model.predict(&frame).unwrap(), first);
                }
            }
        }
    }

    #[test]
    fn learns_thresholds_categories_and_missing_values() {
        let (train, valid, test) = (table(4000, 1), table(1000, 2), table(1000, 3));
        let (model, report) = train_gbdt(&train, Some(&valid), &params(SPEC)).unwrap();
        assert_eq!(model.task, Task::Classification);
        assert!(report.best_round >= 1 && report.best_round <= report.rounds);
        let (rows, y) = crate::linear::labelled(&test, &model.target).unwrap();
        let p = model.predict(&model.frame(&rows).unwrap()).unwrap();
        let auc = crate::metrics::roc_auc(&y, &p);
        // One label in 17 is flipped, which caps the AUC near 0.94.
        assert!(auc > 0.92, "test AUC {auc}");
    }

    #[test]
    fn a_scheduler_can_stop_training_after_any_round() {
        let (train, valid) = (table(2000, 7), table(500, 8));
        let mut seen = Vec::new();
        let spec = params(
            "{ target: 'delay > 15', features: [x, z, carrier], num_rounds: 100, \
               early_stopping_rounds: 0 }",
        );
        let (model, report) = train_gbdt_reporting(&train, Some(&valid), &spec, &mut |round| {
            seen.push((round.number, round.loss));
            // Metrics on demand are computed from the same scores as the loss.
            let log_loss = round.metric("log_loss").unwrap();
            assert!(
                (log_loss - round.loss).abs() < 1e-9,
                "{log_loss} {}",
                round.loss
            );
            assert!(round.metric("auc").unwrap() > 0.5);
            round.number < 7
        })
        .unwrap();
        assert_eq!(report.rounds, 7);
        assert_eq!(seen.len(), 7);
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert!(model.trees.len() <= 7);
        assert_eq!(
            report.valid_curve,
            seen.iter().map(|s| s.1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn trials_sharing_prepared_data_train_the_models_they_would_alone() {
        let (train, valid) = (table(2000, 7), table(500, 8));
        let base = "{ target: 'delay > 15', features: [x, z, carrier], num_rounds: 30, threads: 1";
        let data = GbdtData::prepare(&train, Some(&valid), &params(&format!("{base} }}"))).unwrap();
        for extra in [
            "",
            ", learning_rate: 0.3, num_leaves: 4",
            ", subsample: 0.7, colsample: 0.5",
        ] {
            let p = params(&format!("{base}{extra} }}"));
            assert_eq!(
                GbdtData::key(&p),
                data.key,
                "tuned options do not change the key"
            );
            let (alone, _) = train_gbdt(&train, Some(&valid), &p).unwrap();
            let (shared, _) = train_gbdt_prepared(&data, &p, &mut |_| true).unwrap();
            assert_eq!(alone, shared, "{extra}");
        }
        let other = params(&format!("{base}, max_bin: 16 }}"));
        let err = train_gbdt_prepared(&data, &other, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("binned for other"), "{err}");
    }

    #[test]
    fn serving_reads_the_saved_model_and_predicts_the_same_bits() {
        let train = table(2000, 4);
        let (model, _) = train_gbdt(&train, None, &params(SPEC)).unwrap();
        let model = Model::Gbdt(model);
        let before = model.predict_batch(&train).unwrap();
        let loaded = Model::from_bytes(&model.to_bytes()).unwrap();
        let after = loaded.predict_batch(&train).unwrap();
        assert!(before
            .iter()
            .zip(&after)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let train = table(3000, 5);
        let spec = "{ target: 'delay > 15', features: [x, z, carrier], num_rounds: 30, \
                    subsample: 0.7, colsample: 0.67, seed: 9 }";
        let (a, _) = train_gbdt(&train, None, &params(spec)).unwrap();
        let (b, _) = train_gbdt(&train, None, &params(spec)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn regression_fits_a_step_function() {
        let x: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|v| if *v < 500.0 { 1.0 } else { 5.0 })
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("y", Arc::new(Float64Array::from(y.clone())) as ArrayRef),
        ])
        .unwrap();
        let (model, _) = train_gbdt(
            &batch,
            None,
            &params("{ target: y, features: [x], num_rounds: 100, learning_rate: 0.3 }"),
        )
        .unwrap();
        assert_eq!(model.task, Task::Regression);
        let p = model.predict(&model.frame(&batch).unwrap()).unwrap();
        for (p, t) in p.iter().zip(&y) {
            assert!((p - t).abs() < 1e-3, "{p} vs {t}");
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        let train = table(200, 6);
        let err = |spec: &str, batch: &RecordBatch| {
            train_gbdt(batch, None, &params(spec))
                .unwrap_err()
                .to_string()
        };
        let e = err(
            "{ target: 'delay > 15', features: [x], subsample: 0 }",
            &train,
        );
        assert!(e.contains("with.subsample"), "{e}");
        let e = err(
            "{ target: 'delay > 15', features: [x], num_leaves: 1 }",
            &train,
        );
        assert!(e.contains("with.num_leaves"), "{e}");
        let e = err(
            "{ target: 'delay > 15', features: [x], class_weight: heavy }",
            &train,
        );
        assert!(e.contains("with.class_weight"), "{e}");
        let e = err("{ target: nope, features: [x] }", &train);
        assert!(e.contains("unknown column 'nope'"), "{e}");
        let e = err("{ target: 'x > 100', features: [z] }", &train);
        assert!(e.contains("constant"), "{e}");
        let nulls = RecordBatch::try_from_iter(vec![
            (
                "x",
                Arc::new(Float64Array::from(vec![None::<f64>; 4])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![0.0, 1.0, 0.0, 1.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let e = err("{ target: y, features: [x] }", &nulls);
        assert!(
            e.contains("with.features.x") && e.contains("all null"),
            "{e}"
        );
    }

    #[test]
    fn edges_give_each_distinct_value_its_bin_when_they_fit() {
        let e = edges_of(&[1.0, 1.0, 2.0, 5.0], 10);
        assert_eq!(e, vec![1.5, 3.5]);
        let e = edges_of(&(0..1000).map(f64::from).collect::<Vec<_>>(), 4);
        assert_eq!(e.len(), 3);
        assert!(e[0] > 200.0 && e[0] < 300.0, "{e:?}");
    }

    #[test]
    fn a_heavy_value_does_not_swallow_the_other_bins() {
        let mut v = vec![0.0; 900];
        v.extend((1..=100).map(f64::from));
        let e = edges_of(&v, 10);
        assert!(e.len() >= 8, "{e:?}");
        assert!(e[0] > 0.0 && e[0] < 1.0);
    }
}
