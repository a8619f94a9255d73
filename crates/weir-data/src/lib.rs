//! Tables as Arrow record batches: reading CSV (plain or gzip), Parquet and
//! JSON lines with schema inference; writing Parquet; quality rules; joins;
//! splits.
//! Tables are held whole in memory as one batch; every error names the file.

mod compare;
mod error;
mod ingest;
mod join;
mod profile;
mod report;
mod rule_expr;
mod split;
mod validate;

pub use compare::{
    drift, drift_by, schema_changes, shares_between, shift, shifts, ColumnShift, Drift, Evolution,
    Method, SchemaChange, DATASET_SHARE,
};
pub use error::DataError;
pub use ingest::{
    parquet_from_bytes, parquet_to_bytes, read_parquet, read_table, write_parquet, Format,
    IngestOptions,
};
pub use join::{join, JoinHow, JoinSpec, Joined};
pub use profile::{
    kind_of, profile, ColumnProfile, Histogram, Kind, NumericProfile, Profile, TopValues,
};
pub use report::drift_html;
pub use rule_expr::Condition;
pub use split::{split, SplitMethod, SplitSpec, Splits};
pub use validate::{validate, Rule, RuleContext, Severity, ValidationReport, Violation};

pub use arrow::record_batch::RecordBatch;

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// The names of a batch's columns, for "available columns" hints.
pub fn column_names(batch: &RecordBatch) -> Vec<String> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Looks a column up by name with an error that lists what exists.
pub fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    context: &str,
) -> Result<&'a arrow::array::ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| DataError::UnknownColumn {
            column: name.to_string(),
            context: context.to_string(),
            available: column_names(batch).join(", "),
        })
}
