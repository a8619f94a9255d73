//! `weir/join`: add the matching row of a lookup table (`right`) to each row
//! of `left`, by key columns.

use weir_data::JoinSpec;

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let spec: JoinSpec = params(ctx.step).map_err(EngineError::StepFailed)?;
    let left = weir_data::read_parquet(ctx.input("left"))?;
    let right = weir_data::read_parquet(ctx.input("right"))?;
    let joined = weir_data::join(&left, &right, &spec)?;
    ctx.log.line(format!(
        "joined on [{}]: {} of {} left rows matched, {} did not ({:?} join) -> {} rows x {} columns",
        spec.on.join(", "),
        joined.matched,
        left.num_rows(),
        joined.unmatched,
        spec.how,
        joined.table.num_rows(),
        joined.table.num_columns()
    ));
    weir_data::write_parquet(&joined.table, &ctx.output("table"))?;
    let mut out = OpOutcome::default();
    out.metric("rows", joined.table.num_rows() as f64);
    out.metric("matched_rows", joined.matched as f64);
    out.metric("unmatched_rows", joined.unmatched as f64);
    Ok(out)
}
