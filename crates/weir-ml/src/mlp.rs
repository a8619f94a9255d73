//! A small multi-layer perceptron on the fitted feature design: dense hidden
//! layers (ReLU or tanh), a sigmoid or linear output, trained by mini-batch
//! SGD with momentum or Adam, with a learning-rate schedule (constant, step,
//! cosine; optional linear warm-up), L2 weight decay and early stopping on
//! the validation loss.
//!
//! The first layer reads the sparse design directly: a row's hidden input is
//! the sum of the weight rows its few non-zero entries select, so one-hot
//! features cost nothing per category. Mini-batch gradients are summed over
//! row chunks in parallel and added in chunk order, so a seed gives the same
//! model on any machine with the same thread count.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::features::{ColumnSpec, Design, FeaturePipeline, FeatureSpec, Frame};
use crate::linear::{encoded_valid, labelled_task, sigmoid};
use crate::metrics::Round;
use crate::model::Task;
use crate::{MlError, Result, Target};

/// `with:` of `weir/train-mlp`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpParams {
    pub target: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub categorical: Vec<String>,
    #[serde(default)]
    pub derive: BTreeMap<String, String>,
    #[serde(default)]
    pub transforms: BTreeMap<String, ColumnSpec>,
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default = "defaults::max_categories")]
    pub max_categories: usize,
    /// Units per hidden layer.
    #[serde(default = "defaults::hidden")]
    pub hidden: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub optimizer: Optimizer,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    /// SGD momentum (Adam uses beta1 = 0.9, beta2 = 0.999).
    #[serde(default = "defaults::momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub schedule: Schedule,
    /// `step` schedule: epochs between decays, and the decay factor.
    #[serde(default = "defaults::step_size")]
    pub step_size: usize,
    #[serde(default = "defaults::gamma")]
    pub gamma: f64,
    /// Epochs over which the learning rate ramps up linearly from zero.
    #[serde(default)]
    pub warmup_epochs: usize,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Epochs at most; early stopping may end sooner.
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Stop when the validation loss has not improved for this many epochs
    /// (0: never); needs a `valid` input.
    #[serde(default = "defaults::early_stopping_rounds")]
    pub early_stopping_rounds: usize,
    /// L2 weight decay on weights (not biases).
    #[serde(default)]
    pub l2: f64,
    /// Worker threads; 0 uses every core.
    #[serde(default)]
    pub threads: usize,
    /// Processes training data-parallel: each computes the gradients of its
    /// share of every batch, and they are summed across processes (an
    /// all-reduce) before each optimizer step.
    #[serde(default = "one_worker")]
    pub workers: usize,
    #[serde(default)]
    pub seed: u64,
}

mod defaults {
    pub fn max_categories() -> usize {
        100
    }
    pub fn hidden() -> Vec<usize> {
        vec![64, 32]
    }
    pub fn learning_rate() -> f64 {
        1e-3
    }
    pub fn momentum() -> f64 {
        0.9
    }
    pub fn step_size() -> usize {
        10
    }
    pub fn gamma() -> f64 {
        0.5
    }
    pub fn batch_size() -> usize {
        256
    }
    pub fn epochs() -> usize {
        30
    }
    pub fn early_stopping_rounds() -> usize {
        5
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    Tanh,
}

impl Activation {
    fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
        }
    }

    /// The derivative, from the activation's output.
    fn slope(self, out: f64) -> f64 {
        match self {
            Activation::Relu => {
                if out > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => 1.0 - out * out,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    #[default]
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    Step,
    Cosine,
}

/// A dense layer: `outputs` units, weights row-major by input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpModel {
    pub task: Task,
    pub target: Target,
    pub features: FeaturePipeline,
    pub activation: Activation,
    /// Hidden layers, then the one-unit output layer. The first layer's
    /// inputs are the design's columns.
    pub layers: Vec<Layer>,
}

/// What training measured, reported as metrics.
#[derive(Clone, Debug, Default)]
pub struct MlpReport {
    pub rows: usize,
    pub epochs: usize,
    pub best_epoch: usize,
    pub fit_seconds: f64,
    pub train_loss: f64,
    /// Validation loss after each epoch.
    pub valid_curve: Vec<f64>,
    pub parameters: usize,
    pub threads: usize,
}

impl MlpModel {
    pub fn predict(&self, frame: &Frame) -> Result<Vec<f64>> {
        let design = self.features.encode(frame)?;
        Ok((0..design.rows)
            .into_par_iter()
            .map_init(
                || Activations::new(&self.layers),
                |acts, r| {
                    let raw = forward(&self.layers, self.activation, &design, r, acts);
                    output(self.task, raw)
                },
            )
            .collect())
    }
}

fn output(task: Task, raw: f64) -> f64 {
    match task {
        Task::Classification => sigmoid(raw),
        Task::Regression => raw,
    }
}

/// Per-row scratch: each layer's outputs.
struct Activations(Vec<Vec<f64>>);

impl Activations {
    fn new(layers: &[Layer]) -> Self {
        Activations(layers.iter().map(|l| vec![0.0; l.outputs]).collect())
    }
}

/// Runs row `r` through the network, leaving every layer's output in
/// `acts`; returns the raw output (logit or value).
fn forward(
    layers: &[Layer],
    activation: Activation,
    design: &Design,
    r: usize,
    acts: &mut Activations,
) -> f64 {
    let last = layers.len() - 1;
    for (k, layer) in layers.iter().enumerate() {
        let (done, rest) = acts.0.split_at_mut(k);
        let out = &mut rest[0];
        out.copy_from_slice(&layer.bias);
        if k == 0 {
            let (idx, val) = design.row(r);
            for (&i, &v) in idx.iter().zip(val) {
                if v != 0.0 {
                    let w = &layer.weights[i as usize * layer.outputs..][..layer.outputs];
                    for (o, w) in out.iter_mut().zip(w) {
                        *o += v * w;
                    }
                }
            }
        } else {
            for (i, &x) in done[k - 1].iter().enumerate() {
                if x != 0.0 {
                    let w = &layer.weights[i * layer.outputs..][..layer.outputs];
                    for (o, w) in out.iter_mut().zip(w) {
                        *o += x * w;
                    }
                }
            }
        }
        if k != last {
            for o in out.iter_mut() {
                *o = activation.apply(*o);
            }
        }
    }
    acts.0[last][0]
}

/// The network's raw outputs (margins for classification) over a design.
fn raw_outputs(layers: &[Layer], activation: Activation, design: &Design) -> Vec<f64> {
    (0..design.rows)
        .into_par_iter()
        .map_init(
            || Activations::new(layers),
            |acts, r| forward(layers, activation, design, r, acts),
        )
        .collect()
}

/// Mean loss (log loss or half squared error) over a design.
fn mean_loss(
    layers: &[Layer],
    activation: Activation,
    task: Task,
    design: &Design,
    y: &[f64],
) -> f64 {
    let total: f64 = (0..design.rows)
        .into_par_iter()
        .map_init(
            || Activations::new(layers),
            |acts, r| {
                let raw = forward(layers, activation, design, r, acts);
                match task {
                    Task::Classification => raw.max(0.0) + (-raw.abs()).exp().ln_1p() - y[r] * raw,
                    Task::Regression => 0.5 * (raw - y[r]).powi(2),
                }
            },
        )
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    total / design.rows.max(1) as f64
}

fn one_worker() -> usize {
    1
}

pub fn train_mlp(
    train: &RecordBatch,
    valid: Option<&RecordBatch>,
    params: &MlpParams,
    on_epoch: &mut dyn FnMut(&Round) -> bool,
) -> Result<(MlpModel, MlpReport)> {
    fit(train, valid, params, None, on_epoch)
}

/// One process of a data-parallel fit (`workers` above 1): every process
/// fits the features on the whole training set and draws the same batches;
/// each computes the gradients of its share of a batch, summed across
/// `group` before the step, so all take the same steps. `on_epoch` is asked
/// on rank 0 only; its answer holds for all.
pub fn train_mlp_distributed(
    train: &RecordBatch,
    valid: Option<&RecordBatch>,
    params: &MlpParams,
    group: &dyn crate::Collective,
    on_epoch: &mut dyn FnMut(&Round) -> bool,
) -> Result<(MlpModel, MlpReport)> {
    fit(train, valid, params, Some(group), on_epoch)
}

fn fit(
    train: &RecordBatch,
    valid: Option<&RecordBatch>,
    params: &MlpParams,
    group: Option<&dyn crate::Collective>,
    on_epoch: &mut dyn FnMut(&Round) -> bool,
) -> Result<(MlpModel, MlpReport)> {
    let started = Instant::now();
    check(params)?;
    let (rows, y, target, task) =
        labelled_task(train, &params.target, &params.features, params.task)?;
    let features = FeaturePipeline::fit(
        &rows,
        &FeatureSpec {
            features: &params.features,
            exclude: &params.exclude,
            categorical: &params.categorical,
            derive: &params.derive,
            transforms: &params.transforms,
            max_categories: params.max_categories,
            target: &target.column,
        },
    )?;
    let design = features.encode(&features.frame(&rows)?)?;
    let valid = encoded_valid(&features, valid, &target)?;
    // Every core, unless the processes of a data-parallel fit share them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = crate::Pool::new(match params.threads {
        0 => (cores / params.workers.max(1)).max(1),
        n => n,
    })?;
    let threads = pool.current_num_threads();
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut layers = init_layers(design.width, &params.hidden, params.activation, &mut rng);
    // The output starts at the label mean, so early epochs fit structure.
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    layers.last_mut().expect("output layer").bias[0] = match task {
        Task::Classification => (mean / (1.0 - mean)).ln(),
        Task::Regression => mean,
    };
    let mut optimizer = OptimizerState::new(&layers, params);
    let steps_per_epoch = y.len().div_ceil(params.batch_size);
    let mut order: Vec<usize> = (0..y.len()).collect();
    let mut best: Option<(f64, usize, Vec<Layer>)> = None;
    let mut report = MlpReport {
        rows: y.len(),
        parameters: layers.iter().map(|l| l.weights.len() + l.bias.len()).sum(),
        threads,
        ..MlpReport::default()
    };
    let mut step = 0usize;
    for epoch in 1..=params.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(params.batch_size) {
            let lr = learning_rate(params, step, steps_per_epoch);
            let gradient = |rows: &[usize]| {
                pool.install(|| {
                    batch_gradient(&layers, params.activation, task, &design, &y, rows, threads)
                })
            };
            let grads = match group {
                None => gradient(batch),
                Some(g) => {
                    // Contiguous shares of the batch, the first ones a row longer.
                    let (world, rank, n) = (g.world().max(1), g.rank(), batch.len());
                    let at = |r: usize| r * (n / world) + r.min(n % world);
                    let share = &batch[at(rank)..at(rank + 1)];
                    let mut grads = if share.is_empty() {
                        layers
                            .iter()
                            .map(|l| vec![0.0; l.weights.len() + l.bias.len()])
                            .collect()
                    } else {
                        gradient(share)
                    };
                    let mut flat: Vec<f64> = grads.iter().flatten().copied().collect();
                    g.all_reduce(&mut flat)?;
                    let mut rest = &flat[..];
                    for layer in &mut grads {
                        let (mine, more) = rest.split_at(layer.len());
                        layer.copy_from_slice(mine);
                        rest = more;
                    }
                    grads
                }
            };
            optimizer.step(&mut layers, &grads, lr, params.l2, batch.len());
            step += 1;
        }
        report.epochs = epoch;
        // Rank 0 of a group decides; the others hear it in a sum.
        let mut decide = |round: &Round| -> Result<bool> {
            match group {
                None => Ok(on_epoch(round)),
                Some(g) => {
                    let mut stop = [0.0];
                    if g.rank() == 0 && !on_epoch(round) {
                        stop[0] = 1.0;
                    }
                    g.all_reduce(&mut stop)?;
                    Ok(stop[0] == 0.0)
                }
            }
        };
        let Some((vd, vy)) = &valid else {
            let nothing = Vec::new;
            if !decide(&Round::new(epoch, f64::NAN, task, &[], &nothing))? {
                break;
            }
            continue;
        };
        let vloss = pool.install(|| mean_loss(&layers, params.activation, task, vd, vy));
        report.valid_curve.push(vloss);
        if best.as_ref().is_none_or(|b| vloss < b.0) {
            best = Some((vloss, epoch, layers.clone()));
        }
        let since_best = epoch - best.as_ref().map_or(epoch, |b| b.1);
        let stop = params.early_stopping_rounds > 0 && since_best >= params.early_stopping_rounds;
        let raw = || pool.install(|| raw_outputs(&layers, params.activation, vd));
        if !decide(&Round::new(epoch, vloss, task, vy, &raw))? || stop || !vloss.is_finite() {
            break;
        }
    }
    report.best_epoch = report.epochs;
    if let Some((_, epoch, kept)) = best {
        report.best_epoch = epoch;
        layers = kept;
    }
    report.train_loss = pool.install(|| mean_loss(&layers, params.activation, task, &design, &y));
    // The loss of always predicting the label mean: a trained network that
    // is far worse than that has diverged.
    let baseline = match task {
        Task::Classification => -(mean * mean.ln() + (1.0 - mean) * (1.0 - mean).ln()),
        Task::Regression => {
            0.5 * y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / y.len() as f64
        }
    };
    if !(report.train_loss.is_finite() && report.train_loss <= 10.0 * baseline + 1e-9) {
        return Err(MlError::invalid(
            "with.learning_rate",
            format!(
                "training diverged (loss {}); lower the learning rate",
                report.train_loss
            ),
        ));
    }
    report.fit_seconds = started.elapsed().as_secs_f64();
    Ok((
        MlpModel {
            task,
            target,
            features,
            activation: params.activation,
            layers,
        },
        report,
    ))
}

fn check(p: &MlpParams) -> Result<()> {
    if !(1..=crate::gbdt::MAX_WORKERS).contains(&p.workers) {
        return Err(MlError::invalid(
            "with.workers",
            format!(
                "must be between 1 and {}, got {}",
                crate::gbdt::MAX_WORKERS,
                p.workers
            ),
        ));
    }
    if p.hidden.is_empty() || p.hidden.contains(&0) || p.hidden.len() > 8 {
        return Err(MlError::invalid(
            "with.hidden",
            "give 1 to 8 hidden layers of at least one unit, e.g. [64, 32]",
        ));
    }
    let positive = |field: &str, v: f64| {
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(MlError::invalid(
                field,
                format!("must be a positive number, got {v}"),
            ))
        }
    };
    positive("with.learning_rate", p.learning_rate)?;
    positive("with.gamma", p.gamma)?;
    if !(0.0..1.0).contains(&p.momentum) {
        return Err(MlError::invalid("with.momentum", "must be in [0, 1)"));
    }
    if !(p.l2 >= 0.0 && p.l2.is_finite()) {
        return Err(MlError::invalid("with.l2", "must be a non-negative number"));
    }
    for (field, v) in [
        ("with.batch_size", p.batch_size),
        ("with.epochs", p.epochs),
        ("with.step_size", p.step_size),
    ] {
        if v == 0 {
            return Err(MlError::invalid(field, "must be at least 1"));
        }
    }
    if p.warmup_epochs >= p.epochs {
        return Err(MlError::invalid(
            "with.warmup_epochs",
            format!("must be fewer than epochs ({})", p.epochs),
        ));
    }
    Ok(())
}

/// Glorot-uniform weights for tanh, He-uniform for ReLU; zero biases.
fn init_layers(
    inputs: usize,
    hidden: &[usize],
    activation: Activation,
    rng: &mut StdRng,
) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut fan_in = inputs;
    for &units in hidden.iter().chain(&[1]) {
        let limit = match activation {
            Activation::Relu => (6.0 / fan_in.max(1) as f64).sqrt(),
            Activation::Tanh => (6.0 / (fan_in + units) as f64).sqrt(),
        };
        layers.push(Layer {
            inputs: fan_in,
            outputs: units,
            weights: (0..fan_in * units)
                .map(|_| rng.random_range(-limit..limit))
                .collect(),
            bias: vec![0.0; units],
        });
        fan_in = units;
    }
    layers
}

fn learning_rate(p: &MlpParams, step: usize, steps_per_epoch: usize) -> f64 {
    let epoch = step as f64 / steps_per_epoch as f64;
    let warmup = p.warmup_epochs as f64;
    if epoch < warmup {
        return p.learning_rate * (step + 1) as f64 / (warmup * steps_per_epoch as f64);
    }
    let after = epoch - warmup;
    match p.schedule {
        Schedule::Constant => p.learning_rate,
        Schedule::Step => {
            p.learning_rate * p.gamma.powi((after / p.step_size as f64).floor() as i32)
        }
        Schedule::Cosine => {
            let span = (p.epochs as f64 - warmup).max(1.0);
            0.5 * p.learning_rate * (1.0 + (std::f64::consts::PI * (after / span).min(1.0)).cos())
        }
    }
}

/// Summed gradients of the loss over `batch`, one buffer per layer laid out
/// like its weights, followed by its biases.
fn batch_gradient(
    layers: &[Layer],
    activation: Activation,
    task: Task,
    design: &Design,
    y: &[f64],
    batch: &[usize],
    threads: usize,
) -> Vec<Vec<f64>> {
    let chunk = batch.len().div_ceil(threads).max(32);
    let partials: Vec<Vec<Vec<f64>>> = batch
        .par_chunks(chunk)
        .map(|rows| {
            let mut grads: Vec<Vec<f64>> = layers
                .iter()
                .map(|l| vec![0.0; l.weights.len() + l.bias.len()])
                .collect();
            let mut acts = Activations::new(layers);
            let mut delta: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; l.outputs]).collect();
            for &r in rows {
                let raw = forward(layers, activation, design, r, &mut acts);
                let last = layers.len() - 1;
                delta[last][0] = match task {
                    Task::Classification => sigmoid(raw) - y[r],
                    Task::Regression => raw - y[r],
                };
                for k in (0..layers.len()).rev() {
                    let layer = &layers[k];
                    let (below, here) = delta.split_at_mut(k);
                    let d = &here[0];
                    let g = &mut grads[k];
                    let (gw, gb) = g.split_at_mut(layer.weights.len());
                    for (b, dv) in gb.iter_mut().zip(d) {
                        *b += dv;
                    }
                    if k == 0 {
                        let (idx, val) = design.row(r);
                        for (&i, &v) in idx.iter().zip(val) {
                            if v != 0.0 {
                                let row = &mut gw[i as usize * layer.outputs..][..layer.outputs];
                                for (gv, dv) in row.iter_mut().zip(d) {
                                    *gv += v * dv;
                                }
                            }
                        }
                        continue;
                    }
                    let input = &acts.0[k - 1];
                    let back = &mut below[k - 1];
                    for (i, &x) in input.iter().enumerate() {
                        let w = &layer.weights[i * layer.outputs..][..layer.outputs];
                        let row = &mut gw[i * layer.outputs..][..layer.outputs];
                        let mut sum = 0.0;
                        for ((gv, wv), dv) in row.iter_mut().zip(w).zip(d) {
                            *gv += x * dv;
                            sum += wv * dv;
                        }
                        back[i] = sum * activation.slope(x);
                    }
                }
            }
            grads
        })
        .collect();
    let mut total = partials.into_iter();
    let mut sum = total.next().expect("a batch has rows");
    for part in total {
        for (s, p) in sum.iter_mut().zip(part) {
            for (a, b) in s.iter_mut().zip(p) {
                *a += b;
            }
        }
    }
    sum
}

struct OptimizerState {
    kind: Optimizer,
    momentum: f64,
    /// First moments (or SGD velocity) and second moments, per layer.
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    t: i32,
}

impl OptimizerState {
    fn new(layers: &[Layer], p: &MlpParams) -> Self {
        let zeros = || {
            layers
                .iter()
                .map(|l| vec![0.0; l.weights.len() + l.bias.len()])
                .collect()
        };
        OptimizerState {
            kind: p.optimizer,
            momentum: p.momentum,
            m: zeros(),
            v: if p.optimizer == Optimizer::Adam {
                zeros()
            } else {
                Vec::new()
            },
            t: 0,
        }
    }

    fn step(&mut self, layers: &mut [Layer], grads: &[Vec<f64>], lr: f64, l2: f64, rows: usize) {
        self.t += 1;
        let scale = 1.0 / rows as f64;
        let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        let correction1 = 1.0 - b1.powi(self.t);
        let correction2 = 1.0 - b2.powi(self.t);
        for (k, layer) in layers.iter_mut().enumerate() {
            let n_weights = layer.weights.len();
            let params = layer.weights.iter_mut().chain(layer.bias.iter_mut());
            for (j, w) in params.enumerate() {
                let mut g = grads[k][j] * scale;
                if j < n_weights {
                    g += l2 * *w;
                }
                match self.kind {
                    Optimizer::Adam => {
                        let m = &mut self.m[k][j];
                        let v = &mut self.v[k][j];
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *w -= lr * (*m / correction1) / ((*v / correction2).sqrt() + eps);
                    }
                    Optimizer::Sgd => {
                        let m = &mut self.m[k][j];
                        *m = self.momentum * *m + g;
                        *w -= lr * *m;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::labelled;
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use std::sync::Arc;

    fn params(yaml: &str) -> MlpParams {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// A label no linear model can fit: the sign of x * z, flipped for one carrier.
    fn xor(n: usize, seed: u64) -> RecordBatch {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut x, mut z, mut c, mut y) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let (a, b): (f64, f64) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
            let carrier = ["UA", "DL"][rng.random_range(0..2)];
            let label = (a * b > 0.0) ^ (carrier == "DL");
            x.push(a);
            z.push(b);
            c.push(carrier);
            y.push(f64::from(label));
        }
        RecordBatch::try_from_iter(vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("z", Arc::new(Float64Array::from(z)) as ArrayRef),
            ("c", Arc::new(StringArray::from(c)) as ArrayRef),
            ("y", Arc::new(Float64Array::from(y)) as ArrayRef),
        ])
        .unwrap()
    }

    fn auc(model: &MlpModel, batch: &RecordBatch) -> f64 {
        let p = model
            .predict(&model.features.frame(batch).unwrap())
            .unwrap();
        let y = labelled(batch, &model.target).unwrap().1;
        crate::metrics::roc_auc(&y, &p)
    }

    #[test]
    fn learns_what_a_linear_model_cannot() {
        let (train, valid) = (xor(3000, 1), xor(1000, 2));
        for opts in [
            "optimizer: adam, learning_rate: 0.01",
            "optimizer: sgd, learning_rate: 0.05, schedule: cosine, warmup_epochs: 2",
            "optimizer: adam, learning_rate: 0.02, schedule: step, step_size: 10, activation: tanh",
        ] {
            let p = params(&format!(
                "{{ target: y, hidden: [16, 8], epochs: 40, batch_size: 64, threads: 2, {opts} }}"
            ));
            let (model, report) = train_mlp(&train, Some(&valid), &p, &mut |_| true).unwrap();
            let a = auc(&model, &valid);
            assert!(a > 0.95, "{opts}: auc {a}, {report:?}");
            assert_eq!(report.valid_curve.len(), report.epochs);
        }
    }

    #[test]
    fn data_parallel_training_gives_the_model_one_process_would() {
        let (train, valid) = (xor(3000, 1), xor(1000, 2));
        let p = params(
            "{ target: y, hidden: [16, 8], epochs: 20, batch_size: 64, threads: 1, \
             optimizer: adam, learning_rate: 0.01 }",
        );
        let (alone, alone_report) = train_mlp(&train, Some(&valid), &p, &mut |_| true).unwrap();
        let frame = alone.features.frame(&valid).unwrap();
        let expected = alone.predict(&frame).unwrap();
        for world in [2, 3] {
            let fits = crate::test_group::run(world, |group| {
                train_mlp_distributed(&train, Some(&valid), &p, group, &mut |_| true).unwrap()
            });
            for (model, report) in &fits {
                assert_eq!(report.epochs, alone_report.epochs);
                // The gradients sum in another order: the same steps, up to
                // rounding that 20 epochs of Adam carry along (2-3e-15 here).
                let worst = model
                    .predict(&frame)
                    .unwrap()
                    .iter()
                    .zip(&expected)
                    .map(|(g, e)| (g - e).abs())
                    .fold(0.0, f64::max);
                eprintln!("{world} workers: largest prediction difference {worst:e}");
                assert!(
                    worst < 1e-12,
                    "{world} workers: predictions differ by {worst}"
                );
            }
            // Every process ends with the same bits.
            for (model, _) in &fits[1..] {
                assert_eq!(model, &fits[0].0);
            }
        }
    }

    #[test]
    fn a_seed_and_thread_count_give_the_same_model_and_it_round_trips() {
        let train = xor(1000, 3);
        let p = params("{ target: y, hidden: [8], epochs: 3, threads: 2, seed: 9 }");
        let (a, _) = train_mlp(&train, None, &p, &mut |_| true).unwrap();
        let (b, _) = train_mlp(&train, None, &p, &mut |_| true).unwrap();
        assert_eq!(a, b);
        let model = crate::Model::Mlp(a.clone());
        let back = crate::Model::from_bytes(&model.to_bytes()).unwrap();
        let before = model.predict_batch(&train).unwrap();
        let after = back.predict_batch(&train).unwrap();
        assert!(before
            .iter()
            .zip(&after)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch_and_a_scheduler_can_stop() {
        let (train, valid) = (xor(600, 4), xor(300, 5));
        let p = params("{ target: y, hidden: [64, 64], epochs: 200, learning_rate: 0.03, early_stopping_rounds: 3 }");
        let (_, r) = train_mlp(&train, Some(&valid), &p, &mut |_| true).unwrap();
        assert!(r.epochs < 200, "{r:?}");
        assert_eq!(r.epochs - r.best_epoch, 3, "{r:?}");
        let best = r.valid_curve[r.best_epoch - 1];
        assert!(r.valid_curve.iter().all(|v| *v >= best));
        let mut seen = vec![];
        let (_, r) = train_mlp(&train, Some(&valid), &p, &mut |round| {
            seen.push(round.number);
            let log_loss = round.metric("log_loss").unwrap();
            assert!(
                (log_loss - round.loss).abs() < 1e-6,
                "{log_loss} {}",
                round.loss
            );
            round.number < 2
        })
        .unwrap();
        assert_eq!((r.epochs, seen), (2, vec![1, 2]));
    }

    #[test]
    fn bad_options_name_the_field() {
        let train = xor(100, 6);
        for (opts, says) in [
            ("hidden: []", "with.hidden"),
            (
                "learning_rate: 0",
                "with.learning_rate: must be a positive number",
            ),
            ("batch_size: 0", "with.batch_size: must be at least 1"),
            (
                "warmup_epochs: 30",
                "with.warmup_epochs: must be fewer than epochs (30)",
            ),
            ("momentum: 1.5", "with.momentum"),
            (
                "learning_rate: 1e6, epochs: 3, optimizer: sgd",
                "training diverged",
            ),
        ] {
            let p = params(&format!("{{ target: y, {opts} }}"));
            let err = train_mlp(&train, None, &p, &mut |_| true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{opts}: {err}");
        }
    }
}
