use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] weir_core::pipeline::SpecError),
    #[error(transparent)]
    Store(#[from] weir_store::StoreError),
    #[error(transparent)]
    Artifact(#[from] weir_artifacts::ArtifactError),
    #[error(transparent)]
    Data(#[from] weir_data::DataError),
    #[error(transparent)]
    Ml(#[from] weir_ml::MlError),
    /// A step that ran and failed; the message is what the user needs to see.
    #[error("{0}")]
    StepFailed(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The executor cannot run the steps meant for it (no cluster, a cluster
    /// that cannot reach the stores, a lost cluster).
    #[error("{0}")]
    Executor(String),
    /// `weir fsck`, `weir gc`, `weir backup` or `weir restore` cannot go
    /// on; the message says why and what to do.
    #[error("{0}")]
    Maintenance(String),
    /// Work not started because a budget would be exceeded.
    #[error("budget: {0}")]
    Budget(String),
    #[error("corrupt record {what}: {reason}")]
    Corrupt { what: String, reason: String },
}

impl EngineError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |source| EngineError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, e: impl std::fmt::Display) -> EngineError {
        EngineError::Corrupt {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}
