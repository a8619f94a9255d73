//! Linear and logistic regression with an L2 penalty, fitted by Newton's
//! method on the sparse one-entry-per-feature design. Squared loss converges
//! in one Newton step; log loss in a handful, with step halving as a guard.

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::features::{Design, FeaturePipeline, Frame};
use crate::model::Task;
use crate::{MlError, Result, Target};

/// `with:` of `weir/train-linear`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearParams {
    /// A column, or a comparison that defines a binary label: `"arr_delay > 15"`.
    pub target: String,
    pub features: Vec<String>,
    /// Numeric columns to one-hot encode instead of standardize (e.g. month).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// `classification` or `regression`; inferred from the target when absent.
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default = "default_l2")]
    pub l2: f64,
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
}

/// What training measured, reported as metrics.
#[derive(Clone, Debug, Default)]
pub struct FitReport {
    pub rows: usize,
    pub iterations: usize,
    pub loss: f64,
    pub fit_seconds: f64,
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

pub fn train_linear(
    train: &RecordBatch,
    params: &LinearParams,
) -> Result<(LinearModel, FitReport)> {
    let started = Instant::now();
    if !(params.l2 >= 0.0 && params.l2.is_finite()) {
        return Err(MlError::invalid("with.l2", "must be a non-negative number"));
    }
    let (rows, y, target, task) =
        labelled_task(train, &params.target, &params.features, params.task)?;
    let features = FeaturePipeline::fit(
        &rows,
        &params.features,
        &params.categorical,
        params.max_categories,
    )?;
    let design = features.encode(&features.frame(&rows)?)?;
    let (w, iterations, loss) = newton(
        &design,
        &y,
        task,
        params.l2.max(1e-10),
        params.max_iter,
        params.tol,
    );
    let width = design.width;
    let model = LinearModel {
        task,
        target,
        features,
        weights: w[..width].to_vec(),
        intercept: w[width],
        l2: params.l2,
    };
    let report = FitReport {
        rows: y.len(),
        iterations,
        loss,
        fit_seconds: started.elapsed().as_secs_f64(),
    };
    Ok((model, report))
}

/// Mean loss plus the L2 penalty (the intercept is not penalized).
fn objective(design: &Design, y: &[f64], w: &[f64], task: Task, l2: f64) -> f64 {
    let d = design.width;
    let mut total = 0.0;
    for (r, &label) in y.iter().enumerate() {
        let (idx, val) = design.row(r);
        let eta = w[d]
            + idx
                .iter()
                .zip(val)
                .map(|(&i, &v)| w[i as usize] * v)
                .sum::<f64>();
        total += match task {
            // log(1 + e^eta) - y * eta, computed without overflow.
            Task::Classification => eta.max(0.0) + (-eta.abs()).exp().ln_1p() - label * eta,
            Task::Regression => 0.5 * (eta - label).powi(2),
        };
    }
    total / y.len() as f64 + 0.5 * l2 * w[..d].iter().map(|v| v * v).sum::<f64>()
}

fn newton(
    design: &Design,
    y: &[f64],
    task: Task,
    l2: f64,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, usize, f64) {
    let d = design.width + 1;
    let bias = design.width;
    let n = y.len() as f64;
    let mut w = vec![0.0; d];
    if task == Task::Regression {
        w[bias] = y.iter().sum::<f64>() / n;
    }
    let mut loss = objective(design, y, &w, task, l2);
    let mut iterations = 0;
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
                grad[a] += l2 * w[a];
                hess[a * d + a] += l2;
            }
        }
        let Some(step) = solve_spd(&mut hess, &grad, d) else {
            break;
        };
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..20 {
            let candidate: Vec<f64> = w.iter().zip(&step).map(|(wi, si)| wi - t * si).collect();
            let candidate_loss = objective(design, y, &candidate, task, l2);
            if candidate_loss <= loss + 1e-12 {
                w = candidate;
                loss = candidate_loss;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        let max_step = step.iter().fold(0.0f64, |m, s| m.max((t * s).abs()));
        if !accepted || max_step < tol {
            break;
        }
    }
    (w, iterations, loss)
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
        let (model, report) =
            train_linear(&batch, &params("{ target: y, features: [x, c], l2: 0.0 }")).unwrap();
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
        let (model, _) =
            train_linear(&batch, &params("{ target: 'delay > 15', features: [x] }")).unwrap();
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
        let err = train_linear(&batch, &params("{ target: y, features: [x] }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("constant"), "{err}");
        let err = train_linear(&batch, &params("{ target: z, features: [x] }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column 'z'"), "{err}");
    }
}
