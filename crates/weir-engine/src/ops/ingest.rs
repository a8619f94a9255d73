//! `weir/ingest`: a CSV (plain or gzip), Parquet or JSON-lines file into a
//! Parquet table, recording the source file's digest for lineage.

use std::path::Path;

use weir_core::pipeline::Step;
use weir_core::Digest;
use weir_data::IngestOptions;
use weir_store::SourceFile;

use super::{params, OpContext, OpOutcome};
use crate::EngineError;

pub(super) fn preflight(step: &Step, base_dir: &Path) -> Result<(), String> {
    let opts: IngestOptions = params(step)?;
    let path = base_dir.join(&opts.path);
    if !path.is_file() {
        return Err(format!(
            "input file {} does not exist (path '{}' is resolved against {})",
            path.display(),
            opts.path,
            base_dir.display()
        ));
    }
    Ok(())
}

pub(super) fn run(ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    let opts: IngestOptions = params(ctx.step).map_err(EngineError::StepFailed)?;
    let path = ctx.base_dir.join(&opts.path);
    ctx.log.line(format!("reading {}", path.display()));
    let batch = weir_data::read_table(&path, &opts)?;
    ctx.log.line(format!(
        "read {} rows x {} columns:",
        batch.num_rows(),
        batch.num_columns()
    ));
    for field in batch.schema().fields() {
        let nulls = batch
            .column_by_name(field.name())
            .map_or(0, |c| c.null_count());
        ctx.log.line(format!(
            "  {:<24} {:<28} nulls {}",
            field.name(),
            field.data_type().to_string(),
            nulls
        ));
    }
    weir_data::write_parquet(&batch, &ctx.output("table"))?;
    let mut out = OpOutcome::default();
    if ctx.step.datasets.contains_key("table") {
        out.profiles
            .insert("table".into(), weir_data::profile(&batch)?);
    }
    let digest = Digest::of_file(&path).map_err(EngineError::io("cannot read", &path))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    out.metric("rows", batch.num_rows() as f64);
    out.metric("columns", batch.num_columns() as f64);
    out.sources.push(SourceFile {
        path: opts.path.clone(),
        digest: digest.hex(),
        size,
    });
    Ok(out)
}
