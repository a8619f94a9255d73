//! `weir/register`: a new version of a named model, with its lineage and,
//! when an evaluation report is wired in as `metrics`, its metrics.

use serde::Deserialize;
use weir_core::pipeline::Step;
use weir_ml::Model;
use weir_store::NewModelVersion;

use super::{gates, params, OpContext, OpOutcome};

/// The version tag that says how its gates went: passed or rejected.
pub const GATES_TAG: &str = "weir.gates";
/// The version tag that gives a rejected version's failed gates.
pub const REASONS_TAG: &str = "weir.gates.reasons";
use crate::EngineError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    /// Conditions the version must meet (see `gates`); one that fails
    /// registers it as rejected.
    #[serde(default)]
    gates: Vec<String>,
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("'{name}' is not a valid model name: use letters, digits, '-', '_' and '.', starting with a letter or digit"))
    }
}

pub(super) fn preflight(step: &Step) -> Result<(), String> {
    let p: Params = params(step)?;
    check_name(&p.name)?;
    for g in &p.gates {
        let gate = gates::parse(g).map_err(|e| format!("with.gates: {e}"))?;
        if gate.needs_latency() && !step.inputs.contains_key("table") {
            return Err(format!(
                "with.gates: '{g}' times the model on the test rows: wire them in as `table: split.test`"
            ));
        }
    }
    if !p.gates.is_empty()
        && !step.inputs.contains_key("metrics")
        && !step.inputs.contains_key("table")
    {
        return Err("with.gates: gates judge the version's metrics: wire `metrics: evaluate.metrics` (and `table:` the test set, to score the champion on the same rows)".into());
    }
    Ok(())
}

/// Judges the version by its gates: the verdicts, or the error of a gate
/// that cannot be judged (a metric the version lacks).
fn judge(
    ctx: &OpContext,
    p: &Params,
    model: &Model,
    metrics: &serde_json::Value,
) -> Result<Vec<gates::Verdict>, EngineError> {
    let gates: Vec<gates::Gate> = p
        .gates
        .iter()
        .map(|g| gates::parse(g))
        .collect::<Result<_, _>>()
        .map_err(EngineError::StepFailed)?;
    let prefix = metrics["prefix"].as_str().unwrap_or("test").to_string();
    let slice_by = metrics["slices"]
        .as_object()
        .and_then(|s| s.keys().next().cloned());
    // Both versions on the same rows when the test set is wired in; else
    // each by the metrics it was registered with.
    let table = match ctx.inputs.get("table") {
        Some(path) => Some(weir_data::read_parquet(path)?),
        None => None,
    };
    let timed = gates.iter().any(|g| g.needs_latency());
    let report = |model: &Model,
                  t: &arrow::record_batch::RecordBatch|
     -> Result<serde_json::Value, EngineError> {
        let mut r = gates::report_of(
            &super::evaluate::score(model, t, slice_by.as_deref(), None)?,
            &prefix,
        );
        if timed {
            r["latency"] = gates::latency(model, t)?;
        }
        Ok(r)
    };
    let mine = match &table {
        Some(t) => report(model, t)?,
        None => metrics.clone(),
    };
    let theirs = match (&ctx.champion, &table) {
        (Some(c), Some(t)) => {
            let bytes =
                std::fs::read(&c.model).map_err(EngineError::io("cannot read", &c.model))?;
            let (champion, _) = Model::read(&bytes)?;
            Some((c.version, report(&champion, t)?))
        }
        (Some(c), None) => Some((c.version, c.report.clone())),
        (None, _) => None,
    };
    gates
        .iter()
        .map(|g| {
            g.judge(&mine, theirs.as_ref().map(|(v, r)| (*v, r)))
                .map_err(EngineError::StepFailed)
        })
        .collect()
}

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: Params = params(ctx.step).map_err(EngineError::StepFailed)?;
    check_name(&p.name).map_err(EngineError::StepFailed)?;
    let bytes = std::fs::read(ctx.input("model"))
        .map_err(EngineError::io("cannot read", ctx.input("model")))?;
    // Only a model that loads may be registered.
    let (model, references) = Model::read(&bytes)?;
    let metrics_json = match ctx.inputs.get("metrics") {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(EngineError::io("cannot read", path))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| {
                    EngineError::StepFailed(format!("input 'metrics' is not a JSON report: {e}"))
                })?
                .to_string()
        }
        None => "{}".to_string(),
    };
    let mut lineage = ctx.lineage.clone().unwrap_or_default();
    lineage["model"] = serde_json::json!({
        "kind": model.kind(),
        "task": model.task(),
        "target": model.target().to_string(),
        "inputs": model.inputs(),
    });
    if let Some(reference) = references.scores {
        lineage["prediction_reference"] = serde_json::json!(reference);
    }
    if let Some(features) = references.features {
        lineage["feature_reference"] = serde_json::json!(features);
    }
    let mut tags = Vec::new();
    if !p.gates.is_empty() {
        let metrics: serde_json::Value = serde_json::from_str(&metrics_json).unwrap_or_default();
        let verdicts = judge(ctx, &p, &model, &metrics)?;
        for v in &verdicts {
            ctx.log.line(format!("gate {}", gates::describe(v)));
        }
        let failed: Vec<String> = verdicts
            .iter()
            .filter(|v| !v.passed)
            .map(gates::describe)
            .collect();
        lineage["gates"] = serde_json::json!(verdicts);
        if failed.is_empty() {
            tags.push((GATES_TAG.to_string(), "passed".to_string()));
        } else {
            ctx.log.line(format!(
                "the version is registered as REJECTED: {}",
                failed.join("; ")
            ));
            tags.push((GATES_TAG.to_string(), "rejected".to_string()));
            tags.push((REASONS_TAG.to_string(), failed.join("; ")));
        }
    }
    ctx.log
        .line(format!("registering {} model '{}'", model.kind(), p.name));
    let mut out = OpOutcome::default();
    out.registrations.push(NewModelVersion {
        name: p.name,
        digest: Some(ctx.input_digests["model"]),
        run_id: Some(ctx.run_id.to_string()),
        step_run_id: Some(ctx.step_run_id.to_string()),
        metrics_json,
        lineage_json: lineage.to_string(),
        tags,
        ..Default::default()
    });
    Ok(out)
}
