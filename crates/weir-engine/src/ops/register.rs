//! `weir/register`: a new version of a named model, with its lineage and,
//! when an evaluation report is wired in as `metrics`, its metrics.

use serde::Deserialize;
use weir_core::pipeline::Step;
use weir_ml::Model;
use weir_store::NewModelVersion;

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
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
    check_name(&p.name)
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
        ..Default::default()
    });
    Ok(out)
}
