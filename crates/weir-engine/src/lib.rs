//! The pipeline engine: the runner that walks a pipeline's DAG and launches
//! each step through the step runtime (`weir exec`), the step runtime
//! itself, the built-in ops, and the progress display.
//!
//! The runner never runs a step in its own process: every step, built-in or
//! command, runs in a `weir exec <step-run-id>` child that stages inputs,
//! runs, uploads outputs and records the result. The outcome goes through
//! the metadata and artifact stores; the local executor also hands the
//! runtime its task on stdin and hears on stdout when the outcome is recorded.

pub mod accounting;
pub mod backup;
mod cache;
mod datasets;
mod error;
pub mod exec;
pub mod fsck;
pub mod gc;
pub mod group;
mod lineage;
pub mod liveness;
pub mod openlineage;
pub mod ops;
pub mod progress;
pub mod ray;
pub mod ray_group;
pub mod ray_trials;
pub mod runner;
pub mod schedule;
pub mod tune;

use std::path::PathBuf;

pub use error::EngineError;
pub use runner::{cancel_run, resume_run, run_pipeline, RunOptions, RunOutcome, StepOutcome};

use weir_artifacts::ArtifactStore;
use weir_core::config::Config;
use weir_store::Store;

/// What every part of the engine works against.
#[derive(Clone)]
pub struct Context {
    pub config: Config,
    pub store: Store,
    pub artifacts: ArtifactStore,
}

impl Context {
    pub async fn open(config: Config) -> Result<Context, EngineError> {
        let store = Store::open(config.db()).await?;
        let artifacts = ArtifactStore::open(config.artifacts())?;
        Ok(Context {
            config,
            store,
            artifacts,
        })
    }

    /// The context of a step runtime: its runner already brought the schema
    /// up to date. The database connection opens in the background while the
    /// runtime stages inputs and starts the step.
    pub fn open_for_step(config: Config) -> Result<Context, EngineError> {
        let store = Store::connect_lazy(config.db())?;
        let warm = store.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.ping().await {
                tracing::debug!(error = %e, "the metadata store did not answer yet");
            }
        });
        let artifacts = ArtifactStore::open(config.artifacts())?;
        Ok(Context {
            config,
            store,
            artifacts,
        })
    }

    /// Scratch space for step runs, on the same disk as the home directory.
    /// Absolute: commands run in their pipeline's directory, not here, and
    /// the paths in their contract (WEIR_OUTPUTS_DIR, ...) must still hold.
    pub fn work_dir(&self) -> PathBuf {
        let home = self.config.home();
        std::path::absolute(&home).unwrap_or(home).join("work")
    }
}
