//! `weir/train-linear`: linear or logistic regression with the feature
//! transforms fitted on `train` and saved inside the model file.

use std::time::Instant;

use weir_ml::{metrics, train_linear, LinearParams, Model};

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: LinearParams = params(ctx.step).map_err(EngineError::StepFailed)?;
    let loading = Instant::now();
    let train = weir_data::read_parquet(ctx.input("train"))?;
    let load_seconds = loading.elapsed().as_secs_f64();
    ctx.log.line(format!(
        "training on {} rows, target '{}'",
        train.num_rows(),
        p.target
    ));
    let (linear, fit) = train_linear(&train, &p)?;
    ctx.log.line(format!(
        "{:?} model: {} inputs -> {} weights, {} Newton iterations, loss {:.6}, {:.2}s",
        linear.task,
        linear.features.transforms.len(),
        linear.weights.len(),
        fit.iterations,
        fit.loss,
        fit.fit_seconds
    ));
    let model = Model::Linear(linear);
    let mut out = OpOutcome::default();
    out.metric("train.rows", fit.rows as f64);
    out.metric("train.iterations", fit.iterations as f64);
    out.metric("train.loss", fit.loss);
    out.metric("train.load_seconds", load_seconds);
    out.metric("train.fit_seconds", fit.fit_seconds);
    out.metric(
        "train.rows_per_second",
        fit.rows as f64 * fit.iterations as f64 / fit.fit_seconds.max(1e-9),
    );
    if let Some(valid) = ctx.inputs.get("valid") {
        let evaluating = Instant::now();
        let valid = weir_data::read_parquet(valid)?;
        let (rows, y) = model.labelled(&valid)?;
        if !y.is_empty() {
            let p = model.predict_batch(&rows)?;
            for (k, v) in metrics::for_task(model.task(), &y, &p) {
                out.metric(format!("valid.{k}"), v);
            }
        }
        out.metric("train.evaluate_seconds", evaluating.elapsed().as_secs_f64());
    }
    let path = ctx.output("model");
    std::fs::write(&path, model.to_bytes()).map_err(EngineError::io("cannot write", &path))?;
    Ok(out)
}
