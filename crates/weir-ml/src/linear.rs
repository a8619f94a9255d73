//! Linear and logistic regression with L2 and L1 penalties, fitted by
//! Newton's method on the sparse fixed-stride design. Squared loss converges
//! in one Newton step; log loss in a handful, with step halving as a guard.
//! With an L1 penalty each Newton step minimises the penalised quadratic
//! model by coordinate descent (proximal Newton, as glmnet does), so weights
//! reach exactly zero. With a validation set, training keeps the iterate with
//! the best validation loss and stops when it has not improved for
//! `early_stopping_rounds` iterations.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::features::{ColumnSpec, Design, FeaturePipeline, FeatureSpec, Frame};
use crate::model::Task;
use crate::{MlError, Result, Target};

/// `with:` of `weir/train-linear`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearParams {
    /// A column, or a comparison that defines a binary label: `"arr_delay > 15"`.
    pub target: String,
    /// Feature columns; empty: every column but the target and `exclude`.
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Numeric columns to one-hot encode instead of standardize (e.g. month).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// New features: name -> expression over input columns.
    #[serde(default)]
    pub derive: BTreeMap<String, String>,
    /// Per-feature impute / scale / encode / bucketize / datetime options.
    #[serde(default)]
    pub transforms: BTreeMap<String, ColumnSpec>,
    /// `classification` or `regression`; inferred from the target when absent.
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default = "default_l2")]
    pub l2: f64,
    #[serde(default)]
    pub l1: f64,
    /// Stop when the validation loss has not improved for this many
    /// iterations (0: never); needs a `valid` input.
    #[serde(default = "default_early_stopping")]
    pub early_stopping_rounds: usize,
    #[serde(default = "default_max_categories")]
    pub max_categories: usize,
    #[serde(default = "default_max_iter")]
    pub max_iter: usize,
    #[serde(default = "default_tol")]
    pub tol: f64,
}

fn default_l2() -> f64 {
    1e-4
}
fn default_max_categories() -> usize {
    100
}
fn default_early_stopping() -> usize {
    3
}
fn default_max_iter() -> usize {
    50
}
fn default_tol() -> f64 {
    1e-7
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    pub task: Task,
    pub target: Target,
    pub features: FeaturePipeline,
    pub weights: Vec<f64>,
    pub intercept: f64,
    pub l2: f64,
    #[serde(default)]
    pub l1: f64,
}

/// What training measured, reported as metrics.
#[derive(Clone, Debug, Default)]
pub struct FitReport {
    pub rows: usize,
    pub iterations: usize,
    /// The iteration whose weights were kept (the best on validation).
    pub best_iteration: usize,
    pub loss: f64,
    pub fit_seconds: f64,
    /// Validation loss after each iteration.
    pub valid_curve: Vec<f64>,
    pub nonzero_weights: usize,
}

impl LinearModel {
    pub fn predict(&self, frame: &Frame) -> Result<Vec<f64>> {
        let design = self.features.encode(frame)?;
        Ok((0..design.rows)
            .map(|r| self.output(self.linear(&design, r)))
            .collect())
    }

    fn linear(&self, design: &Design, r: usize) -> f64 {
        let (idx, val) = design.row(r);
        self.intercept
            + idx
                .iter()
                .zip(val)
                .map(|(&i, &v)| self.weights[i as usize] * v)
                .sum::<f64>()
    }

    fn output(&self, eta: f64) -> f64 {
        match self.task {
            Task::Classification => sigmoid(eta),
            Task::Regression => eta,
        }
    }
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Rows with a label, and their labels.
pub(crate) fn labelled(batch: &RecordBatch, target: &Target) -> Result<(RecordBatch, Vec<f64>)> {
    let labels = target.labels(batch)?;
    let keep: Vec<u32> = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_some())
        .map(|(i, _)| i as u32)
        .collect();
    let y: Vec<f64> = labels.into_iter().flatten().collect();
    let batch = arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(keep))?;
    Ok((batch, y))
}

/// The validation rows that have a label, encoded with the fitted
/// transforms, and their labels; `None` without any.
pub(crate) fn encoded_valid(
    features: &FeaturePipeline,
    valid: Option<&RecordBatch>,
    target: &Target,
) -> Result<Option<(Design, Vec<f64>)>> {
    let Some(batch) = valid else {
        return Ok(None);
    };
    let (rows, y) = labelled(batch, target)?;
    if y.is_empty() {
        return Ok(None);
    }
    Ok(Some((features.encode(&features.frame(&rows)?)?, y)))
}

/// The labelled training rows, their labels, the parsed target and the task
/// (given, or inferred from the labels), with the checks every trainer
/// shares: the target is no feature, has values, and is not constant.
pub(crate) fn labelled_task(
    train: &RecordBatch,
    target_text: &str,
    features: &[String],
    task: Option<Task>,
) -> Result<(RecordBatch, Vec<f64>, Target, Task)> {
    let target = Target::parse(target_text)?;
    if features.contains(&target.column) {
        return Err(MlError::invalid(
            "with.features",
            format!(
                "'{}' is the target; it cannot also be a feature",
                target.column
            ),
        ));
    }
    let (rows, y) = labelled(train, &target)?;
    if y.is_empty() {
        return Err(MlError::invalid(
            "with.target",
            format!("'{}' has no values in the training data", target.column),
        ));
    }
    let binary_labels = y.iter().all(|v| *v == 0.0 || *v == 1.0);
    let task = match task {
        Some(t) => t,
        None if target.is_comparison() || binary_labels => Task::Classification,
        None => Task::Regression,
    };
    if task == Task::Classification && !binary_labels {
        return Err(MlError::invalid(
            "with.target",
            "classification needs 0/1 or boolean labels, or a comparison like 'arr_delay > 15'",
        ));
    }
    if y.iter().all(|v| *v == y[0]) {
        return Err(MlError::invalid(
            "with.target",
            format!(
                "'{target}' is constant ({}) in the training data; there is nothing to learn",
                y[0]
            ),
        ));
    }
    Ok((rows, y, target, task))
}

impl LinearParams {
    pub(crate) fn feature_spec<'a>(&'a self, target: &'a str) -> FeatureSpec<'a> {
        FeatureSpec {
            features: &self.features,
            exclude: &self.exclude,
            categorical: &self.categorical,
            derive: &self.derive,
            transforms: &self.transforms,
            max_categories: self.max_categories,
            target,
        }
    }
}

pub fn train_linear(
    train: &RecordBatch,
    valid: Option<&RecordBatch>,
    params: &LinearParams,
) -> Result<(LinearModel, FitReport)> {
    let started = Instant::now();
    for (field, v) in [("with.l2", params.l2), ("with.l1", params.l1)] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(MlError::invalid(field, "must be a non-negative number"));
        }
    }
    let (rows, y, target, task) =
        labelled_task(train, &params.target, &params.features, params.task)?;
    let features = FeaturePipeline::fit(&rows, &params.feature_spec(&target.column))?;
    let design = features.encode(&features.frame(&rows)?)?;
    let valid = encoded_valid(&features, valid, &target)?;
    let penalty = Penalty {
        l2: params.l2.max(1e-10),
        l1: params.l1,
    };
    let fit = newton(
        &design,
        &y,
        task,
        penalty,
        params.max_iter,
        params.tol,
        valid.as_ref().map(|(d, y)| (d, y.as_slice())),
        params.early_stopping_rounds,
    );
    let width = design.width;
    let model = LinearModel {
        task,
        target,
        features,
        weights: fit.w[..width].to_vec(),
        intercept: fit.w[width],
        l2: params.l2,
        l1: params.l1,
    };
    let report = FitReport {
        rows: y.len(),
        iterations: fit.iterations,
        best_iteration: fit.best_iteration,
        loss: fit.loss,
        fit_seconds: started.elapsed().as_secs_f64(),
        valid_curve: fit.valid_curve,
        nonzero_weights: model.weights.iter().filter(|w| **w != 0.0).count(),
    };
    Ok((model, report))
}

#[derive(Clone, Copy)]
struct Penalty {
    l2: f64,
    l1: f64,
}

fn eta(design: &Design, w: &[f64], r: usize) -> f64 {
    let (idx, val) = design.row(r);
    w[design.width]
        + idx
            .iter()
            .zip(val)
            .map(|(&i, &v)| w[i as usize] * v)
            .sum::<f64>()
}

/// Mean loss (log loss or half squared error) of `w` on the design.
fn mean_loss(design: &Design, y: &[f64], w: &[f64], task: Task) -> f64 {
    let mut total = 0.0;
    for (r, &label) in y.iter().enumerate() {
        let eta = eta(design, w, r);
        total += match task {
            // log(1 + e^eta) - y * eta, computed without overflow.
            Task::Classification => eta.max(0.0) + (-eta.abs()).exp().ln_1p() - label * eta,
            Task::Regression => 0.5 * (eta - label).powi(2),
        };
    }
    total / y.len() as f64
}

/// Mean loss plus the penalties (the intercept is not penalized).
fn objective(design: &Design, y: &[f64], w: &[f64], task: Task, p: Penalty) -> f64 {
    let weights = &w[..design.width];
    mean_loss(design, y, w, task)
        + 0.5 * p.l2 * weights.iter().map(|v| v * v).sum::<f64>()
        + p.l1 * weights.iter().map(|v| v.abs()).sum::<f64>()
}

struct Fit {
    w: Vec<f64>,
    iterations: usize,
    best_iteration: usize,
    loss: f64,
    valid_curve: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn newton(
    design: &Design,
    y: &[f64],
    task: Task,
    penalty: Penalty,
    max_iter: usize,
    tol: f64,
    valid: Option<(&Design, &[f64])>,
    patience: usize,
) -> Fit {
    let d = design.width + 1;
    let bias = design.width;
    let n = y.len() as f64;
    let mut w = vec![0.0; d];
    if task == Task::Regression {
        w[bias] = y.iter().sum::<f64>() / n;
    }
    let mut loss = objective(design, y, &w, task, penalty);
    let mut iterations = 0;
    let mut best = (f64::INFINITY, 0, w.clone(), loss);
    let mut valid_curve = Vec::new();
    let mut slots: Vec<(usize, f64)> = Vec::with_capacity(design.stride + 1);
    for _ in 0..max_iter {
        iterations += 1;
        let mut grad = vec![0.0; d];
        let mut hess = vec![0.0; d * d];
        for (r, &label) in y.iter().enumerate() {
            let (idx, val) = design.row(r);
            slots.clear();
            slots.extend(
                idx.iter()
                    .zip(val)
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(&i, &v)| (i as usize, v)),
            );
            slots.push((bias, 1.0));
            let eta: f64 = slots.iter().map(|&(i, v)| w[i] * v).sum();
            let (residual, curvature) = match task {
                Task::Classification => {
                    let p = sigmoid(eta);
                    (p - label, (p * (1.0 - p)).max(1e-12))
                }
                Task::Regression => (eta - label, 1.0),
            };
            for &(a, va) in &slots {
                grad[a] += residual * va;
                let row = &mut hess[a * d..(a + 1) * d];
                for &(b, vb) in &slots {
                    row[b] += curvature * va * vb;
                }
            }
        }
        for a in 0..d {
            grad[a] /= n;
            for b in 0..d {
                hess[a * d + b] /= n;
            }
            if a != bias {
                grad[a] += penalty.l2 * w[a];
                hess[a * d + a] += penalty.l2;
            }
        }
        // The direction to the minimum of the local quadratic model.
        let direction = if penalty.l1 > 0.0 {
            lasso_direction(&hess, &grad, &w, penalty.l1, bias, tol)
        } else {
            match solve_spd(&mut hess, &grad, d) {
                Some(step) => step.into_iter().map(|s| -s).collect(),
                None => break,
            }
        };
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..20 {
            let candidate: Vec<f64> = w
                .iter()
                .zip(&direction)
                .map(|(wi, di)| wi + t * di)
                .collect();
            let candidate_loss = objective(design, y, &candidate, task, penalty);
            if candidate_loss <= loss + 1e-12 {
                w = candidate;
                loss = candidate_loss;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        let max_step = direction.iter().fold(0.0f64, |m, s| m.max((t * s).abs()));
        if let Some((vd, vy)) = valid {
            let vloss = mean_loss(vd, vy, &w, task);
            valid_curve.push(vloss);
            if vloss < best.0 {
                best = (vloss, iterations, w.clone(), loss);
            } else if patience > 0 && iterations - best.1 >= patience {
                break;
            }
        }
        if !accepted || max_step < tol {
            break;
        }
    }
    if valid.is_some() && best.1 > 0 {
        let (_, best_iteration, w, loss) = best;
        return Fit {
            w,
            iterations,
            best_iteration,
            loss,
            valid_curve,
        };
    }
    Fit {
        w,
        iterations,
        best_iteration: iterations,
        loss,
        valid_curve,
    }
}

/// Minimises `g.(v - w) + (v - w)' H (v - w) / 2 + l1 |v|` (the bias
/// unpenalized) by cyclic coordinate descent and returns `v - w`. Each
/// coordinate is a one-dimensional quadratic with a soft threshold, and the
/// model's gradient is kept up to date in O(d) per move.
fn lasso_direction(
    hess: &[f64],
    grad: &[f64],
    w: &[f64],
    l1: f64,
    bias: usize,
    tol: f64,
) -> Vec<f64> {
    let d = w.len();
    let mut v = w.to_vec();
    let mut model_grad = grad.to_vec();
    for _ in 0..200 {
        let mut largest = 0.0f64;
        for j in 0..d {
            let a = hess[j * d + j];
            if a <= 0.0 {
                continue;
            }
            let z = v[j] - model_grad[j] / a;
            let next = if j == bias {
                z
            } else {
                z.signum() * (z.abs() - l1 / a).max(0.0)
            };
            let change = next - v[j];
            if change != 0.0 {
                v[j] = next;
                for (k, g) in model_grad.iter_mut().enumerate() {
                    *g += change * hess[k * d + j];
                }
                largest = largest.max(change.abs());
            }
        }
        if largest < tol {
            break;
        }
    }
    v.iter().zip(w).map(|(v, w)| v - w).collect()
}

/// Solves `a x = b` for symmetric positive definite `a` by Cholesky
/// (in place); `None` if `a` is not positive definite.
fn solve_spd(a: &mut [f64], b: &[f64], d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let mut diag = a[j * d + j];
        for k in 0..j {
            diag -= a[j * d + k] * a[j * d + k];
        }
        if diag <= 0.0 {
            return None;
        }
        let diag = diag.sqrt();
        a[j * d + j] = diag;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / diag;
        }
    }
    let mut z = vec![0.0; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| a[i * d + k] * z[k]).sum();
        z[i] = (b[i] - s) / a[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| a[k * d + i] * x[k]).sum();
        x[i] = (z[i] - s) / a[i * d + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use std::sync::Arc;

    fn params(yaml: &str) -> LinearParams {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn recovers_a_linear_function() {
        let x: Vec<f64> = (0..200).map(|i| i as f64 / 10.0).collect();
        let c: Vec<&str> = (0..200)
            .map(|i| if i % 2 == 0 { "a" } else { "b" })
            .collect();
        let y: Vec<f64> = x
            .iter()
            .zip(&c)
            .map(|(x, c)| 3.0 * x + if *c == "a" { 1.0 } else { -2.0 } + 0.5)
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("x", Arc::new(Float64Array::from(x.clone())) as ArrayRef),
            ("c", Arc::new(StringArray::from(c)) as ArrayRef),
            ("y", Arc::new(Float64Array::from(y.clone())) as ArrayRef),
        ])
        .unwrap();
        let (model, report) = train_linear(
            &batch,
            None,
            &params("{ target: y, features: [x, c], l2: 0.0 }"),
        )
        .unwrap();
        assert_eq!(model.task, Task::Regression);
        assert!(report.iterations <= 3, "{}", report.iterations);
        let pred = model
            .predict(&model.features.frame(&batch).unwrap())
            .unwrap();
        for (p, t) in pred.iter().zip(&y) {
            assert!((p - t).abs() < 1e-4, "{p} vs {t}");
        }
    }

    #[test]
    fn logistic_regression_separates_classes() {
        let x: Vec<f64> = (0..400).map(|i| (i as f64 - 200.0) / 50.0).collect();
        let delay: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if v + ((i * 7919) % 13) as f64 / 6.0 - 1.0 > 0.0 {
                    30.0
                } else {
                    0.0
                }
            })
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            (
                "delay",
                Arc::new(Float64Array::from(delay.clone())) as ArrayRef,
            ),
        ])
        .unwrap();
        let (model, _) = train_linear(
            &batch,
            None,
            &params("{ target: 'delay > 15', features: [x] }"),
        )
        .unwrap();
        assert_eq!(model.task, Task::Classification);
        let p = model
            .predict(&model.features.frame(&batch).unwrap())
            .unwrap();
        let y: Vec<f64> = delay
            .iter()
            .map(|d| if *d > 15.0 { 1.0 } else { 0.0 })
            .collect();
        let auc = crate::metrics::roc_auc(&y, &p);
        assert!(auc > 0.9, "auc {auc}");
    }

    #[test]
    fn a_constant_target_is_a_clear_error() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "x",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![1.0, 1.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let err = train_linear(&batch, None, &params("{ target: y, features: [x] }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("constant"), "{err}");
        let err = train_linear(&batch, None, &params("{ target: z, features: [x] }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column 'z'"), "{err}");
    }

    fn noisy(n: usize, seed: u64) -> RecordBatch {
        use rand::{Rng, SeedableRng};
        // y depends on a and b (and unseen noise) only; n1..n4 are noise.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x: Vec<[f64; 7]> = (0..n)
            .map(|_| std::array::from_fn(|_| rng.random_range(-1.0..1.0)))
            .collect();
        let mut cols: Vec<(&str, ArrayRef)> = Vec::new();
        for (k, name) in ["a", "b", "n1", "n2", "n3", "n4"].into_iter().enumerate() {
            let v: Vec<f64> = x.iter().map(|r| r[k]).collect();
            cols.push((name, Arc::new(Float64Array::from(v))));
        }
        let y: Vec<f64> = x
            .iter()
            .map(|r| f64::from(2.0 * r[0] - 1.5 * r[1] + 0.8 * r[6] > 0.0))
            .collect();
        cols.push(("y", Arc::new(Float64Array::from(y))));
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn l1_sets_noise_weights_to_exactly_zero() {
        let train = noisy(2000, 0);
        let (dense, _) = train_linear(&train, None, &params("{ target: y }")).unwrap();
        assert!(dense.weights.iter().all(|w| *w != 0.0));
        let (sparse, report) =
            train_linear(&train, None, &params("{ target: y, l1: 0.02 }")).unwrap();
        assert_eq!(sparse.weights[2..], [0.0; 4], "{:?}", sparse.weights);
        assert!(
            sparse.weights[0] > 0.1 && sparse.weights[1] < -0.1,
            "{:?}",
            sparse.weights
        );
        assert_eq!(report.nonzero_weights, 2);
        let p = sparse
            .predict(&sparse.features.frame(&train).unwrap())
            .unwrap();
        let y: Vec<f64> = crate::linear::labelled(&train, &sparse.target).unwrap().1;
        assert!(crate::metrics::roc_auc(&y, &p) > 0.9);
    }

    #[test]
    fn early_stopping_keeps_the_best_validation_iterate() {
        let (train, valid) = (noisy(3000, 0), noisy(1000, 1));
        let (_, full) = train_linear(
            &train,
            Some(&valid),
            &params("{ target: y, l2: 0.0, early_stopping_rounds: 0, tol: 0.0, max_iter: 12 }"),
        )
        .unwrap();
        assert_eq!(full.valid_curve.len(), full.iterations);
        let best = full
            .valid_curve
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
            + 1;
        assert_eq!(full.best_iteration, best);
        let (_, stopped) = train_linear(
            &train,
            Some(&valid),
            &params("{ target: y, l2: 0.0, early_stopping_rounds: 1, tol: 0.0, max_iter: 12 }"),
        )
        .unwrap();
        assert_eq!(stopped.best_iteration, best);
        assert!(
            stopped.iterations <= best + 1,
            "{} vs {best}",
            stopped.iterations
        );
    }
}
