//! The lineage of a step's outputs: every upstream step with the artifacts
//! it produced and the external files it read, plus the run's params, code
//! revision and Weir version.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use weir_core::pipeline::{Pipeline, Step};
use weir_store::RunRecord;

use crate::{Context, EngineError};

pub(crate) async fn lineage(
    ctx: &Context,
    run: &RunRecord,
    step: &Step,
) -> Result<Value, EngineError> {
    let pipeline: Pipeline = serde_json::from_str(&run.spec_json)
        .map_err(|e| EngineError::corrupt("runs.spec_json", e))?;
    let mut upstream: BTreeSet<&str> = BTreeSet::new();
    let mut stack = vec![step.name.as_str()];
    while let Some(name) = stack.pop() {
        if let Some(s) = pipeline.step(name) {
            for u in s.upstream() {
                if upstream.insert(u) {
                    stack.push(u);
                }
            }
        }
    }
    let mut steps = Vec::new();
    for record in ctx.store.step_runs(&run.id).await? {
        if !upstream.contains(record.step.as_str()) {
            continue;
        }
        let outputs: serde_json::Map<String, Value> = ctx
            .store
            .step_outputs(&record.id)
            .await?
            .into_iter()
            .map(|(name, a)| (name, Value::String(a.digest.hex())))
            .collect();
        steps.push(json!({
            "step": record.step,
            "step_run_id": record.id,
            "kind": record.kind,
            "outputs": outputs,
            "sources": record.sources(),
        }));
    }
    Ok(json!({
        "run_id": run.id,
        "pipeline": run.pipeline,
        "spec_file": run.spec_file,
        "params": pipeline.params,
        "git_rev": run.git_rev,
        "weir_version": weir_core::WEIR_VERSION,
        "steps": steps,
    }))
}
