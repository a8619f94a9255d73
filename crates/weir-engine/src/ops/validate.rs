//! `weir/validate`: quality rules. Passing data flows on unchanged as
//! `table`; any violation fails the step with a report of every broken rule.

use serde::Deserialize;
use weir_data::Rule;

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Params {
    pub rules: Vec<Rule>,
}

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let p: Params = params(ctx.step).map_err(EngineError::StepFailed)?;
    let input = ctx.input("table");
    let batch = weir_data::read_parquet(input)?;
    let reference = match ctx.inputs.get("reference") {
        Some(path) => Some(weir_data::read_parquet(path)?),
        None => None,
    };
    let wants_change = p
        .rules
        .iter()
        .any(|r| r.rows.as_ref().is_some_and(|b| b.change.is_some()));
    if wants_change && ctx.previous_rows.is_none() {
        ctx.log.line(
            "rows.change: the input has no previous dataset version to compare with; not checked this time",
        );
    }
    let report = weir_data::validate(
        &batch,
        &p.rules,
        &weir_data::RuleContext {
            reference: reference.as_ref(),
            previous_rows: ctx.previous_rows,
            now_ms: weir_core::now_ms(),
        },
    )?;
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    std::fs::write(ctx.output("report"), json)
        .map_err(EngineError::io("cannot write", ctx.output("report")))?;
    if !report.passed() {
        ctx.log.line(report.summary());
        return Err(EngineError::StepFailed(format!(
            "data validation failed: {}\n  hint: fix the data upstream, or relax the rule in steps.{}.with.rules",
            report.summary(),
            ctx.step.name
        )));
    }
    if report.warnings() > 0 {
        ctx.log.line(format!("warning: {}", report.summary()));
    }
    ctx.log.line(format!(
        "{} rules passed on {} rows ({} with warnings)",
        report.rules_checked,
        report.rows,
        report.warnings()
    ));
    std::fs::copy(input, ctx.output("table"))
        .map_err(EngineError::io("cannot write", ctx.output("table")))?;
    let mut out = OpOutcome::default();
    out.metric("rows", report.rows as f64);
    out.metric("rules_checked", report.rules_checked as f64);
    out.metric("rules_warned", report.warnings() as f64);
    Ok(out)
}
