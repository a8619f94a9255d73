use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}\n  hint: check that the file exists and is readable; relative paths resolve against the pipeline file's directory")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {message}\n  hint: {hint}")]
    Parse {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{context}: unknown column '{column}'\n  hint: available columns: {available}")]
    UnknownColumn {
        column: String,
        context: String,
        available: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl DataError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
