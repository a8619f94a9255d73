//! Built-in ops. Each one reads its staged inputs, writes its outputs into
//! the outputs directory and returns what else it produced (metrics, model
//! registrations, source files); the step runtime records all of it.
//!
//! Each op's `with:` block deserializes into a typed, strict params struct.
//! [`preflight`] does that for every step before a run is created, so a typo
//! in `with:` or a missing input file stops the pipeline before anything runs.

mod evaluate;
pub mod gates;
mod ingest;
mod join;
mod register;
mod split;
mod train;
mod validate;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use weir_core::ops::BuiltinOp;
use weir_core::pipeline::{Action, Pipeline, SpecError, SpecIssue, Step};
use weir_core::Digest;
use weir_store::{MetricPoint, NewModelVersion, SourceFile};

use crate::EngineError;

/// Everything an op may read.
pub struct OpContext<'a> {
    pub step: &'a Step,
    pub base_dir: &'a Path,
    pub inputs: BTreeMap<String, PathBuf>,
    pub input_digests: BTreeMap<String, Digest>,
    pub outputs_dir: &'a Path,
    pub log: &'a StepLog,
    pub run_id: &'a str,
    pub step_run_id: &'a str,
    /// The lineage document, computed for ops that register models.
    pub lineage: Option<serde_json::Value>,
    /// In a study: hears each round (its validation loss, other validation
    /// metrics on demand), and answers whether the trial should go on
    /// (ASHA's decision).
    pub report: Option<&'a (dyn Fn(&weir_ml::Round) -> bool + Sync)>,
    /// In a study: what its trials share (inputs read once, data binned once).
    pub cache: Option<&'a StudyCache>,
    /// On Ray, a data-parallel trainer's other ranks, placed on the
    /// cluster; without it they start on this machine.
    pub ranks: Option<&'a crate::ray_group::RemoteRanks>,
    /// For `weir/validate`: the row count of the previous version of the
    /// dataset its `table` input is a version of.
    pub previous_rows: Option<u64>,
    /// For `weir/register` with gates that compare with the champion: the
    /// version holding the alias, its model fetched.
    pub champion: Option<gates::Champion>,
}

type Slot = Arc<Mutex<Option<Arc<dyn Any + Send + Sync>>>>;

/// Values a study's trials compute once and share, keyed by what shaped
/// them. A trial asking for a value another trial is computing waits for
/// it; a computation that fails is not kept, so the next trial tries again.
#[derive(Default)]
pub struct StudyCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl StudyCache {
    pub fn get_or_try<T: Any + Send + Sync, E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let slot = Arc::clone(
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.to_string())
                .or_default(),
        );
        // A trial that panicked while computing left nothing behind.
        let mut value = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = value
            .as_ref()
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
        {
            return Ok(shared);
        }
        let made = Arc::new(make()?);
        *value = Some(Arc::clone(&made) as Arc<dyn Any + Send + Sync>);
        Ok(made)
    }
}

impl OpContext<'_> {
    pub fn input(&self, name: &str) -> &Path {
        // The spec validator guarantees required inputs are wired.
        &self.inputs[name]
    }

    pub fn output(&self, name: &str) -> PathBuf {
        self.outputs_dir.join(name)
    }
}

#[derive(Default)]
pub struct OpOutcome {
    pub metrics: Vec<MetricPoint>,
    pub registrations: Vec<NewModelVersion>,
    pub sources: Vec<SourceFile>,
    /// Profiles of output tables, by output, computed as they were written.
    pub profiles: BTreeMap<String, weir_data::Profile>,
}

impl OpOutcome {
    pub fn metric(&mut self, key: impl Into<String>, value: f64) {
        self.metric_at(key, value, 0);
    }

    /// A point of a series: `step` is the round, epoch or rung.
    pub fn metric_at(&mut self, key: impl Into<String>, value: f64, step: i64) {
        self.metrics.push(MetricPoint {
            key: key.into(),
            value,
            step,
            ts: weir_core::now_ms(),
        });
    }
}

/// A step's log file, shared by the op and, for commands, the child process.
pub struct StepLog {
    file: Mutex<File>,
    path: PathBuf,
}

impl StepLog {
    pub fn create(path: &Path) -> Result<StepLog, EngineError> {
        // Append mode: the op thread, the child command and this handle all
        // write to the end, never over each other.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .append(true)
            .open(path)
            .map_err(EngineError::io("cannot create", path))?;
        Ok(StepLog {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing log for appending (from another thread).
    pub fn append(path: &Path) -> Result<StepLog, EngineError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(EngineError::io("cannot open", path))?;
        Ok(StepLog {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    pub fn line(&self, text: impl AsRef<str>) {
        let mut f = self.file.lock().expect("log lock");
        // A log line that cannot be written must not fail the step.
        let _ = writeln!(f, "{}", text.as_ref());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn try_clone(&self) -> std::io::Result<File> {
        self.file.lock().expect("log lock").try_clone()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

pub(crate) fn params<T: DeserializeOwned>(step: &Step) -> Result<T, String> {
    let value = serde_json::Value::Object(step.with.clone().into_iter().collect());
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Runs a built-in op to completion (blocking: call from a blocking thread).
pub fn run(op: BuiltinOp, ctx: &OpContext) -> Result<OpOutcome, EngineError> {
    match op {
        BuiltinOp::Ingest => ingest::run(ctx),
        BuiltinOp::Validate => validate::run(ctx),
        BuiltinOp::Join => join::run(ctx),
        BuiltinOp::Split => split::run(ctx),
        BuiltinOp::TrainLinear => train::run(ctx),
        BuiltinOp::TrainGbdt => train::run_gbdt(ctx),
        BuiltinOp::TrainMlp => train::run_mlp(ctx),
        BuiltinOp::Evaluate => evaluate::run(ctx),
        BuiltinOp::Register => register::run(ctx),
    }
}

/// Checks every built-in step's `with:` block, and that files it reads
/// exist, before a run is created.
pub fn preflight(pipeline: &Pipeline) -> Result<(), SpecError> {
    let mut issues = Vec::new();
    for step in &pipeline.steps {
        let Action::Builtin(op) = step.action else {
            continue;
        };
        let result = match op {
            BuiltinOp::Ingest => ingest::preflight(step, pipeline.base_dir()),
            BuiltinOp::Validate => params::<validate::Params>(step).map(drop),
            BuiltinOp::Join => params::<weir_data::JoinSpec>(step).map(drop),
            BuiltinOp::Split => params::<weir_data::SplitSpec>(step).map(drop),
            BuiltinOp::TrainLinear => params::<weir_ml::LinearParams>(step).map(drop),
            BuiltinOp::TrainGbdt => params::<weir_ml::GbdtParams>(step).map(drop),
            BuiltinOp::TrainMlp => params::<weir_ml::MlpParams>(step).map(drop),
            BuiltinOp::Evaluate => params::<evaluate::Params>(step).map(drop),
            BuiltinOp::Register => register::preflight(step),
        };
        match (&step.tune, result) {
            (_, Err(message)) => issues.push(SpecIssue {
                line: Some(step.line),
                field: format!("steps.{}.with", step.name),
                message,
                hint: Some(format!("see README.md for the options of {op}")),
            }),
            (Some(tune), Ok(())) => {
                if let Err(message) = crate::tune::preflight(step, op) {
                    // Messages start with the field they are about ("tune.space.lr: ...").
                    let (field, message) = match message.split_once(": ") {
                        Some((f, m)) if f.starts_with("tune") => (f.to_string(), m.to_string()),
                        _ => ("tune".to_string(), message),
                    };
                    issues.push(SpecIssue {
                        line: Some(tune.line),
                        field: format!("steps.{}.{field}", step.name),
                        message,
                        hint: Some("see README.md, Tuning".into()),
                    });
                }
            }
            (None, Ok(())) => {}
        }
    }
    SpecError::check(&pipeline.file, issues)
}

#[cfg(test)]
mod tests {
    use super::StudyCache;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_study_cache_computes_once_and_forgets_failures() {
        let cache = StudyCache::default();
        let calls = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let v = cache
                        .get_or_try("k", || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            Ok::<_, String>(42u32)
                        })
                        .unwrap();
                    assert_eq!(*v, 42);
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let failed: Result<std::sync::Arc<u32>, String> =
            cache.get_or_try("f", || Err("no".into()));
        assert_eq!(failed.unwrap_err(), "no");
        assert_eq!(*cache.get_or_try("f", || Ok::<_, String>(7u32)).unwrap(), 7);
    }
}
