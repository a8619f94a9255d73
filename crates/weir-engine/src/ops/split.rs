//! `weir/split`: train / valid / test tables.

use weir_data::SplitSpec;

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let spec: SplitSpec = params(ctx.step).map_err(EngineError::StepFailed)?;
    let batch = weir_data::read_parquet(ctx.input("table"))?;
    let splits = weir_data::split(&batch, &spec)?;
    let mut out = OpOutcome::default();
    for (name, part) in [
        ("train", &splits.train),
        ("valid", &splits.valid),
        ("test", &splits.test),
    ] {
        weir_data::write_parquet(part, &ctx.output(name))?;
        ctx.log.line(format!("{name}: {} rows", part.num_rows()));
        out.metric(format!("{name}_rows"), part.num_rows() as f64);
    }
    if splits.dropped > 0 {
        ctx.log.line(format!(
            "dropped {} rows with no split value",
            splits.dropped
        ));
    }
    out.metric("dropped_rows", splits.dropped as f64);
    if splits.train.num_rows() == 0 {
        return Err(EngineError::StepFailed(format!(
            "the split left no training rows (of {})\n  hint: check the fractions or boundaries in steps.{}.with",
            batch.num_rows(),
            ctx.step.name
        )));
    }
    Ok(out)
}
