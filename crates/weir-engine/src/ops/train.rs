//! `weir/train-linear` (linear or logistic regression), `weir/train-gbdt`
//! (gradient-boosted trees) and `weir/train-mlp` (a small neural network), with the feature transforms fitted on `train`
//! and saved inside the model file.

use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use weir_ml::{
    metrics, train_gbdt_prepared, train_linear, train_mlp, GbdtData, GbdtParams, LinearParams,
    MlpParams, Model, ScoreReference,
};

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: LinearParams = params(ctx.step).map_err(EngineError::StepFailed)?;
    let loading = Instant::now();
    let (train, valid) = read_inputs(ctx)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    ctx.log.line(format!(
        "training on {} rows, target '{}'",
        train.num_rows(),
        p.target
    ));
    let (linear, fit) = train_linear(&train, valid.as_deref(), &p)?;
    ctx.log.line(format!(
        "{:?} model: {} features -> {} weights ({} non-zero), {} Newton iterations (kept {}), loss {:.6}, {:.2}s",
        linear.task,
        linear.features.transforms.len(),
        linear.weights.len(),
        fit.nonzero_weights,
        fit.iterations,
        fit.best_iteration,
        fit.loss,
        fit.fit_seconds
    ));
    let model = Model::Linear(linear);
    let mut out = OpOutcome::default();
    telemetry(
        &mut out,
        Telemetry {
            rows: fit.rows,
            iterations: fit.iterations,
            best_iteration: fit.best_iteration,
            loss: fit.loss,
            load_seconds,
            fit_seconds: fit.fit_seconds,
            valid_curve: &fit.valid_curve,
        },
    );
    out.metric("train.nonzero_weights", fit.nonzero_weights as f64);
    finish(ctx, &model, &train, valid.as_deref(), out)
}

pub(super) fn run_gbdt(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: GbdtParams = params(ctx.step).map_err(EngineError::StepFailed)?;
    let loading = Instant::now();
    let (train, valid) = read_inputs(ctx)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    ctx.log.line(format!(
        "training gradient-boosted trees on {} rows, target '{}'",
        train.num_rows(),
        p.target
    ));
    let (gbdt, fit) = if p.workers > 1 {
        data_parallel(
            ctx,
            crate::group::Trainer::Gbdt,
            p.workers,
            || Ok(GbdtData::prepare(&train, valid.as_deref(), &p)?),
            |data, group| {
                Ok(weir_ml::train_gbdt_distributed(
                    &data,
                    &p,
                    group,
                    &mut |_| true,
                )?)
            },
        )?
    } else {
        let prepare = || GbdtData::prepare(&train, valid.as_deref(), &p);
        let data = match ctx.cache {
            Some(cache) => {
                cache.get_or_try(&format!("gbdt-data:{}", GbdtData::key(&p)), prepare)?
            }
            None => Arc::new(prepare()?),
        };
        let report = ctx.report;
        train_gbdt_prepared(&data, &p, &mut |round| report.is_none_or(|r| r(round)))?
    };
    ctx.log.line(format!(
        "{:?} model: {} inputs, {} of {} rounds kept, {} threads, binning {:.2}s, fit {:.2}s",
        gbdt.task,
        gbdt.features.len(),
        fit.best_round,
        fit.rounds,
        fit.threads,
        fit.bin_seconds,
        fit.fit_seconds
    ));
    let mut out = OpOutcome::default();
    telemetry(
        &mut out,
        Telemetry {
            rows: fit.rows,
            iterations: fit.rounds,
            best_iteration: fit.best_round,
            loss: fit.train_loss,
            load_seconds,
            fit_seconds: fit.fit_seconds,
            valid_curve: &fit.valid_curve,
        },
    );
    out.metric("train.bin_seconds", fit.bin_seconds);
    out.metric("train.threads", fit.threads as f64);
    out.metric("train.workers", p.workers as f64);
    let model = Model::Gbdt(gbdt);
    finish(ctx, &model, &train, valid.as_deref(), out)
}

/// `workers: N`: this process is rank 0 of N; ranks 1.. are `weir
/// train-worker` processes on this machine, started here and awaited, or
/// on Ray, placed on the cluster by the step's runtime (`ctx.ranks`).
/// `prepare` runs while the workers start; `fit` once they are all there.
fn data_parallel<P, T>(
    ctx: &OpContext,
    trainer: crate::group::Trainer,
    workers: usize,
    prepare: impl FnOnce() -> Result<P, EngineError>,
    fit: impl FnOnce(P, &crate::group::TcpGroup) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    if ctx.report.is_some() {
        return Err(EngineError::StepFailed(
            "with.workers: a study trains each trial in one process; set workers on a step without tune:, or tune with parallel trials instead".into(),
        ));
    }
    let cannot_listen =
        |e: std::io::Error| EngineError::StepFailed(format!("cannot listen for the workers: {e}"));
    let listener = std::net::TcpListener::bind(ctx.ranks.map_or("127.0.0.1:0", |r| &r.listen))
        .map_err(cannot_listen)?;
    let master = listener.local_addr().map_err(cannot_listen)?.to_string();
    let mut local = match ctx.ranks {
        Some(_) => None,
        None => {
            let spec = crate::group::WorkerSpec::of_step(
                trainer,
                ctx.step,
                &ctx.inputs,
                master.clone(),
                workers,
            )?;
            let spec_path = ctx
                .outputs_dir
                .parent()
                .unwrap_or(ctx.outputs_dir)
                .join("train-workers.json");
            Some(crate::group::Workers::start(&spec, &spec_path, ctx.log)?)
        }
    };
    ctx.log.line(format!(
        "data-parallel over {workers} processes (this one and {} workers{}), rank 0 at {master}",
        workers - 1,
        if ctx.ranks.is_some() { " on Ray" } else { "" }
    ));
    let prepared = prepare()?;
    let group =
        crate::group::TcpGroup::lead(&listener, workers, || match (&mut local, ctx.ranks) {
            (Some(local), _) => local.check(),
            (None, Some(remote)) => remote.check(),
            (None, None) => Ok(()),
        })?;
    let out = fit(prepared, &group)?;
    match (local, ctx.ranks) {
        (Some(local), _) => local.wait()?,
        (None, Some(remote)) => remote.wait()?,
        (None, None) => {}
    }
    Ok(out)
}

pub(super) fn run_mlp(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: MlpParams = params(ctx.step).map_err(EngineError::StepFailed)?;
    let loading = Instant::now();
    let (train, valid) = read_inputs(ctx)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    ctx.log.line(format!(
        "training an MLP {:?} on {} rows, target '{}'",
        p.hidden,
        train.num_rows(),
        p.target
    ));
    let report = ctx.report;
    let (mlp, fit) = if p.workers > 1 {
        data_parallel(
            ctx,
            crate::group::Trainer::Mlp,
            p.workers,
            || Ok(()),
            |(), group| {
                Ok(weir_ml::train_mlp_distributed(
                    &train,
                    valid.as_deref(),
                    &p,
                    group,
                    &mut |_| true,
                )?)
            },
        )?
    } else {
        train_mlp(&train, valid.as_deref(), &p, &mut |epoch| {
            report.is_none_or(|r| r(epoch))
        })?
    };
    ctx.log.line(format!(
        "{:?} model: {} features -> {} weights, {} of {} epochs kept, {} threads, fit {:.2}s",
        mlp.task,
        mlp.features.transforms.len(),
        fit.parameters,
        fit.best_epoch,
        fit.epochs,
        fit.threads,
        fit.fit_seconds
    ));
    let mut out = OpOutcome::default();
    telemetry(
        &mut out,
        Telemetry {
            rows: fit.rows,
            iterations: fit.epochs,
            best_iteration: fit.best_epoch,
            loss: fit.train_loss,
            load_seconds,
            fit_seconds: fit.fit_seconds,
            valid_curve: &fit.valid_curve,
        },
    );
    out.metric("train.parameters", fit.parameters as f64);
    out.metric("train.threads", fit.threads as f64);
    let model = Model::Mlp(mlp);
    finish(ctx, &model, &train, valid.as_deref(), out)
}

/// What every trainer reports, under the same metric names.
struct Telemetry<'a> {
    rows: usize,
    /// Newton iterations, boosting rounds or epochs run, and the one kept.
    iterations: usize,
    best_iteration: usize,
    loss: f64,
    load_seconds: f64,
    fit_seconds: f64,
    /// The validation loss after each iteration (what ASHA reads).
    valid_curve: &'a [f64],
}

fn telemetry(out: &mut OpOutcome, t: Telemetry) {
    for (i, loss) in t.valid_curve.iter().enumerate() {
        out.metric_at("valid.loss", *loss, i as i64 + 1);
    }
    out.metric("train.rows", t.rows as f64);
    out.metric("train.iterations", t.iterations as f64);
    out.metric("train.best_iteration", t.best_iteration as f64);
    out.metric("train.loss", t.loss);
    out.metric("train.load_seconds", t.load_seconds);
    out.metric("train.fit_seconds", t.fit_seconds);
    out.metric(
        "train.rows_per_second",
        t.rows as f64 * t.iterations as f64 / t.fit_seconds.max(1e-9),
    );
}

type Inputs = (Arc<RecordBatch>, Option<Arc<RecordBatch>>);

/// The `train` and optional `valid` tables; in a study, read once for all
/// its trials.
fn read_inputs(ctx: &OpContext) -> Result<Inputs, EngineError> {
    let read = |name: &str| -> Result<Option<Arc<RecordBatch>>, EngineError> {
        let Some(path) = ctx.inputs.get(name) else {
            return Ok(None);
        };
        let load = || weir_data::read_parquet(path);
        Ok(Some(match ctx.cache {
            Some(cache) => cache.get_or_try(&format!("input:{}", path.display()), load)?,
            None => Arc::new(load()?),
        }))
    };
    Ok((
        read("train")?.expect("train is a required input"),
        read("valid")?,
    ))
}

/// Scores the labelled validation rows into `valid.*` metrics; the scores
/// themselves are returned for the model's prediction reference.
fn evaluate_valid(
    model: &Model,
    valid: &RecordBatch,
    out: &mut OpOutcome,
) -> Result<Vec<f64>, EngineError> {
    let evaluating = Instant::now();
    let (rows, y) = model.labelled(valid)?;
    let mut p = Vec::new();
    if !y.is_empty() {
        p = model.predict_batch(&rows)?;
        for (k, v) in metrics::for_task(model.task(), &y, &p) {
            out.metric(format!("valid.{k}"), v);
        }
    }
    out.metric("train.evaluate_seconds", evaluating.elapsed().as_secs_f64());
    Ok(p)
}

/// Scores the validation rows (if any), records peak memory and writes the
/// model file, with the validation scores as its prediction reference
/// (serving measures drift against it).
fn finish(
    ctx: &OpContext,
    model: &Model,
    train: &Arc<RecordBatch>,
    valid: Option<&RecordBatch>,
    mut out: OpOutcome,
) -> Result<OpOutcome, EngineError> {
    let mut references = weir_ml::References {
        features: Some(input_profile(ctx, model, train)?),
        ..Default::default()
    };
    if let Some(valid) = valid {
        let scores = evaluate_valid(model, valid, &mut out)?;
        references.scores = ScoreReference::from_scores(&scores);
    }
    if let Some(kb) = peak_rss_kb() {
        out.metric("train.peak_memory_mb", kb as f64 / 1024.0);
    }
    let path = ctx.output("model");
    std::fs::write(&path, model.to_bytes_with(&references))
        .map_err(EngineError::io("cannot write", &path))?;
    Ok(out)
}

/// The profile of the training rows' columns the model reads: the
/// reference its inputs' drift is measured against. A study's trials share
/// one per set of columns.
fn input_profile(
    ctx: &OpContext,
    model: &Model,
    train: &Arc<RecordBatch>,
) -> Result<weir_data::Profile, EngineError> {
    let names: Vec<String> = model
        .inputs()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| train.column_by_name(n).is_some())
        .collect();
    let make = || -> Result<weir_data::Profile, EngineError> {
        let schema = train.schema();
        let indices: Vec<usize> = names
            .iter()
            .filter_map(|n| schema.index_of(n).ok())
            .collect();
        let inputs = train.project(&indices).map_err(|e| {
            EngineError::StepFailed(format!("cannot select the model's inputs: {e}"))
        })?;
        Ok(weir_data::profile(&inputs)?)
    };
    Ok(match ctx.cache {
        Some(cache) => (*cache.get_or_try(
            &format!("profile:{:p}:{}", Arc::as_ptr(train), names.join(",")),
            make,
        )?)
        .clone(),
        None => make()?,
    })
}

/// The step runtime's peak resident memory (Linux), as VmHWM.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
