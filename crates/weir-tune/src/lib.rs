//! Hyper-parameter search: spaces, samplers (random, grid, TPE) and the ASHA
//! scheduler, over an ask-and-tell history of trials. Nothing here runs a
//! trial or stores one: the engine does both, so the same sampler serves a
//! study in one process and a study resumed from the store.

mod asha;
mod sampler;
mod space;

pub use asha::Asha;
pub use sampler::{Grid, Random, Sampler, SamplerKind, Tpe};
pub use space::{Distribution, Param, ParamValue, Space};

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TuneError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl TuneError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        TuneError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = TuneError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Minimize,
    Maximize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    Running,
    Complete,
    Pruned,
    Failed,
}

/// A trial as samplers and schedulers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub number: usize,
    pub params: BTreeMap<String, ParamValue>,
    pub state: TrialState,
    /// The objective, for complete trials.
    pub value: Option<f64>,
    /// Intermediate objective values by resource (round, epoch).
    pub intermediate: BTreeMap<i64, f64>,
}

impl Trial {
    /// The objective as a loss (lower is better) under `goal`.
    pub(crate) fn loss(&self, goal: Goal) -> Option<f64> {
        self.value.map(|v| match goal {
            Goal::Minimize => v,
            Goal::Maximize => -v,
        })
    }
}
