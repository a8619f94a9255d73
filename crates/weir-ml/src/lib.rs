//! Models and everything that makes them: feature transforms fitted on the
//! training split and saved inside the model, trainers, and metrics.
//!
//! Invariant: training, evaluation and serving all turn raw rows into model
//! inputs through [`FeaturePipeline::encode`], so a row scores identically in
//! every one of them.

mod expr;
mod features;
mod gbdt;
mod linear;
pub mod metrics;
mod mlp;
mod model;
mod reference;
mod target;

pub use expr::Expr;
pub use features::{
    parse_datetime, Column, ColumnSpec, DatePart, Encoder, FeaturePipeline, FeatureTransform,
    Frame, InputKind, InputSpec, Unknown,
};
pub use gbdt::{
    train_gbdt, train_gbdt_distributed, train_gbdt_prepared, train_gbdt_reporting, Collective,
    GbdtData, GbdtModel, GbdtParams, GbdtReport,
};
pub use linear::{train_linear, LinearModel, LinearParams};
pub use metrics::Round;
pub use mlp::{train_mlp, train_mlp_distributed, MlpModel, MlpParams, MlpReport};
pub use model::{Model, References, Task};
pub use reference::ScoreReference;
pub use target::Target;

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("input '{input}': {message}")]
    Input { input: String, message: String },
    #[error("cannot read model file: {0}\n  hint: the artifact is not a Weir model, or was written by a newer Weir")]
    ModelFormat(String),
    #[error(transparent)]
    Data(#[from] weir_data::DataError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The processes of a data-parallel fit lost one another.
    #[error("data-parallel training: {0}")]
    Group(String),
}

impl MlError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        MlError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = MlError> = std::result::Result<T, E>;

/// A trainer's thread pool. When it goes, its threads' CPU time is charged
/// to the meter of the thread that built it, so a trial that trains on a
/// pool of its own is billed for that pool, not for its neighbours'.
pub(crate) struct Pool(rayon::ThreadPool);

impl Pool {
    pub(crate) fn new(threads: usize) -> Result<Pool> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map(Pool)
            .map_err(|e| MlError::invalid("with.threads", e.to_string()))
    }
}

impl std::ops::Deref for Pool {
    type Target = rayon::ThreadPool;

    fn deref(&self) -> &rayon::ThreadPool {
        &self.0
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let spent: u64 = self
            .0
            .broadcast(|_| weir_core::usage::thread_cpu_ns())
            .iter()
            .sum();
        weir_core::usage::charge(spent);
    }
}

/// Processes of a data-parallel fit, played by threads in tests: each sum
/// is taken in rank order by every member, as the real group does.
#[cfg(test)]
pub(crate) mod test_group {
    use std::sync::{Arc, Barrier, Mutex};

    use crate::{Collective, Result};

    pub struct Threads {
        rank: usize,
        shared: Arc<(Barrier, Mutex<Vec<Vec<f64>>>)>,
    }

    impl Collective for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.shared.1.lock().unwrap().len()
        }
        fn all_reduce(&self, buf: &mut [f64]) -> Result<()> {
            let (barrier, slots) = &*self.shared;
            slots.lock().unwrap()[self.rank] = buf.to_vec();
            barrier.wait();
            {
                let slots = slots.lock().unwrap();
                buf.copy_from_slice(&slots[0]);
                for other in &slots[1..] {
                    for (b, o) in buf.iter_mut().zip(other) {
                        *b += o;
                    }
                }
            }
            barrier.wait();
            Ok(())
        }
    }

    /// Runs `fit` as ranks 0..world of one group; their results by rank.
    pub fn run<T: Send>(world: usize, fit: impl Fn(&Threads) -> T + Sync) -> Vec<T> {
        let shared = Arc::new((Barrier::new(world), Mutex::new(vec![Vec::new(); world])));
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let group = Threads {
                        rank,
                        shared: shared.clone(),
                    };
                    let fit = &fit;
                    scope.spawn(move || fit(&group))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }
}
