//! Adaptive batching: requests for one model version that arrive within
//! `max_delay` of each other are scored in one model call of at most
//! `max_rows` rows, and each gets its own rows back. The first request of a
//! batch waits at most `max_delay`; under no load a request is scored at
//! once after that wait, under load batches fill before it.
//!
//! A batch whose call fails (one request with a category the model refuses,
//! say) is scored again request by request, so one bad request never fails
//! the others it was batched with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use weir_ml::{Column, Frame, Model};

use crate::metrics::Metrics;
use crate::stats::VersionStats;

#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Rows per model call at most; 0 turns batching off.
    pub max_rows: usize,
    pub max_delay: Duration,
}

impl BatchOptions {
    /// `NAME=ROWS` or `NAME=ROWS:DELAY` (e.g. `flights=64:5ms`): one
    /// model's batching, over the server-wide setting.
    pub fn parse_override(text: &str) -> Result<(String, BatchOptions), String> {
        let hint = "use NAME=ROWS or NAME=ROWS:DELAY, e.g. flights=64:5ms (ROWS 0 turns batching off for that model)";
        let (name, spec) = text
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| format!("'{text}': {hint}"))?;
        let (rows, delay) = match spec.split_once(':') {
            Some((r, d)) => (r, Some(d)),
            None => (spec, None),
        };
        let max_rows = rows
            .parse()
            .map_err(|_| format!("'{text}': '{rows}' is not a row count; {hint}"))?;
        let max_delay = match delay {
            Some(d) => humantime::parse_duration(d)
                .map_err(|e| format!("'{text}': delay '{d}': {e}; {hint}"))?,
            None => Duration::from_millis(2),
        };
        Ok((
            name.to_string(),
            BatchOptions {
                max_rows,
                max_delay,
            },
        ))
    }
}

/// A model whose requests can be scored together: requests' rows are
/// joined into one call and its answer split back by rows.
pub(crate) trait Batched: Send + Sync + 'static {
    type Input: Send + 'static;
    type Output: Send + 'static;
    fn rows(input: &Self::Input) -> usize;
    fn join(inputs: Vec<&Self::Input>) -> Self::Input;
    fn call(&self, input: &Self::Input) -> Result<Self::Output, String>;
    /// The answer to a joined call, as the answers to its parts.
    fn split(output: Self::Output, rows: &[usize]) -> Vec<Self::Output>;
}

impl Batched for Model {
    type Input = Frame;
    type Output = Vec<f64>;

    fn rows(input: &Frame) -> usize {
        input.rows
    }

    fn join(inputs: Vec<&Frame>) -> Frame {
        concat(inputs.into_iter())
    }

    fn call(&self, input: &Frame) -> Result<Vec<f64>, String> {
        self.predict(input).map_err(|e| e.to_string())
    }

    fn split(output: Vec<f64>, rows: &[usize]) -> Vec<Vec<f64>> {
        let mut at = 0;
        rows.iter()
            .map(|n| {
                at += n;
                output[at - n..at].to_vec()
            })
            .collect()
    }
}

/// One request to an ONNX graph: its rows, and each input's values.
pub(crate) struct GraphInput {
    pub rows: usize,
    pub values: Vec<Vec<f64>>,
}

impl Batched for weir_onnx::OnnxModel {
    type Input = GraphInput;
    type Output = Vec<weir_onnx::Output>;

    fn rows(input: &GraphInput) -> usize {
        input.rows
    }

    fn join(inputs: Vec<&GraphInput>) -> GraphInput {
        let n = inputs.first().map_or(0, |i| i.values.len());
        GraphInput {
            rows: inputs.iter().map(|i| i.rows).sum(),
            values: (0..n)
                .map(|k| {
                    inputs
                        .iter()
                        .flat_map(|i| i.values[k].iter().copied())
                        .collect()
                })
                .collect(),
        }
    }

    fn call(&self, input: &GraphInput) -> Result<Self::Output, String> {
        let outputs = self
            .run(input.rows, &input.values)
            .map_err(|e| e.to_string())?;
        // Splitting by rows needs every output to have one entry per row.
        match outputs
            .iter()
            .find(|o| o.shape.first() != Some(&input.rows))
        {
            Some(o) => Err(format!("output '{}' is not one entry per row", o.name)),
            None => Ok(outputs),
        }
    }

    fn split(output: Self::Output, rows: &[usize]) -> Vec<Self::Output> {
        let mut at = 0;
        rows.iter()
            .map(|n| {
                let (from, to) = (at, at + n);
                at = to;
                output
                    .iter()
                    .map(|o| {
                        let per_row: usize = o.shape[1..].iter().product();
                        let (a, b) = (from * per_row, to * per_row);
                        let data = match &o.data {
                            weir_onnx::Data::Bool(v) => weir_onnx::Data::Bool(v[a..b].to_vec()),
                            weir_onnx::Data::I64(v) => weir_onnx::Data::I64(v[a..b].to_vec()),
                            weir_onnx::Data::F32(v) => weir_onnx::Data::F32(v[a..b].to_vec()),
                            weir_onnx::Data::F64(v) => weir_onnx::Data::F64(v[a..b].to_vec()),
                            weir_onnx::Data::Text(v) => weir_onnx::Data::Text(v[a..b].to_vec()),
                        };
                        let mut shape = o.shape.clone();
                        shape[0] = *n;
                        weir_onnx::Output {
                            name: o.name.clone(),
                            shape,
                            data,
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// A job's answer, with how long it waited in the queue.
type Answer<M> = (Result<<M as Batched>::Output, String>, Duration);
type Reply<M> = oneshot::Sender<Answer<M>>;
type Job<M> = (<M as Batched>::Input, Reply<M>, Instant);

/// The queue in front of one model version; dropping it ends its task.
pub(crate) struct Batcher<M: Batched> {
    queue: mpsc::Sender<Job<M>>,
}

impl<M: Batched> Batcher<M> {
    pub(crate) fn start(
        model: Arc<M>,
        options: BatchOptions,
        metrics: Arc<Metrics>,
        label: (String, i64),
        stats: Arc<VersionStats>,
    ) -> Batcher<M> {
        let (queue, jobs) = mpsc::channel(1024);
        tokio::spawn(run(model, options, metrics, label, stats, jobs));
        Batcher { queue }
    }

    /// The model's answer to `input`, with the time it waited for its batch.
    pub(crate) async fn score(&self, input: M::Input) -> Result<(M::Output, Duration), String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((input, reply, Instant::now()))
            .await
            .map_err(|_| "the model was unloaded".to_string())?;
        let (result, queued) = answer
            .await
            .map_err(|_| "the model was unloaded".to_string())?;
        result.map(|output| (output, queued))
    }
}

async fn run<M: Batched>(
    model: Arc<M>,
    options: BatchOptions,
    metrics: Arc<Metrics>,
    label: (String, i64),
    stats: Arc<VersionStats>,
    mut jobs: mpsc::Receiver<Job<M>>,
) {
    while let Some(first) = jobs.recv().await {
        let mut rows = M::rows(&first.0);
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.max_delay;
        while rows < options.max_rows {
            match tokio::time::timeout_at(deadline, jobs.recv()).await {
                Ok(Some(job)) => {
                    rows += M::rows(&job.0);
                    batch.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        metrics.model_call(&label.0, label.1, rows);
        let model = Arc::clone(&model);
        // Scoring is CPU work: off the reactor, so requests keep arriving.
        let stats = Arc::clone(&stats);
        let answered =
            tokio::task::spawn_blocking(move || score_batch(&*model, batch, rows, &stats)).await;
        if let Err(e) = answered {
            // A panic in the model: the replies were dropped, so their
            // requests fail with "unloaded"-style errors; keep serving.
            eprintln!("batch for {}:{} panicked: {e}", label.0, label.1);
        }
    }
}

fn score_batch<M: Batched>(model: &M, batch: Vec<Job<M>>, rows: usize, stats: &VersionStats) {
    let started = Instant::now();
    if batch.len() == 1 {
        let (input, reply, queued) = batch.into_iter().next().expect("one job");
        let waited = started.saturating_duration_since(queued);
        let answer = model.call(&input);
        stats.execution(rows, Duration::ZERO, started.elapsed(), Duration::ZERO);
        let _ = reply.send((answer, waited));
        return;
    }
    let joined = M::join(batch.iter().map(|(i, _, _)| i).collect());
    let called = Instant::now();
    let answer = model.call(&joined);
    let infer = called.elapsed();
    match answer {
        Ok(output) => {
            let split_at = Instant::now();
            let sizes: Vec<usize> = batch.iter().map(|(i, _, _)| M::rows(i)).collect();
            let parts = M::split(output, &sizes);
            stats.execution(rows, called - started, infer, split_at.elapsed());
            for (part, (_, reply, queued)) in parts.into_iter().zip(batch) {
                let _ = reply.send((Ok(part), started.saturating_duration_since(queued)));
            }
        }
        Err(_) => {
            // One bad request fails the joined call: each is answered alone.
            stats.execution(rows, called - started, infer, Duration::ZERO);
            for (input, reply, queued) in batch {
                let t = Instant::now();
                let answer = model.call(&input);
                stats.execution(M::rows(&input), Duration::ZERO, t.elapsed(), Duration::ZERO);
                let _ = reply.send((answer, started.saturating_duration_since(queued)));
            }
        }
    }
}

/// Frames of one model's inputs, one after another.
fn concat<'a>(frames: impl Iterator<Item = &'a Frame>) -> Frame {
    let mut out: Option<Frame> = None;
    for f in frames {
        match &mut out {
            None => out = Some(f.clone()),
            Some(acc) => {
                acc.rows += f.rows;
                for (a, b) in acc.columns.iter_mut().zip(&f.columns) {
                    match (a, b) {
                        (Column::Numeric(a), Column::Numeric(b)) => a.extend_from_slice(b),
                        (Column::Text(a), Column::Text(b)) => a.extend(b.iter().cloned()),
                        // Frames are built from the model's own signature.
                        _ => unreachable!("one model's frames have the same column kinds"),
                    }
                }
            }
        }
    }
    out.expect("a batch has a request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_model_settings_parse_or_say_what_is_wrong() {
        let (name, o) = BatchOptions::parse_override("flights=64:5ms").unwrap();
        assert_eq!(
            (name.as_str(), o.max_rows, o.max_delay),
            ("flights", 64, Duration::from_millis(5))
        );
        let (_, o) = BatchOptions::parse_override("m=0").unwrap();
        assert_eq!(o.max_rows, 0);
        for bad in ["flights", "=64", "m=lots", "m=8:soon"] {
            let e = BatchOptions::parse_override(bad).unwrap_err();
            assert!(e.contains("NAME=ROWS"), "{e}");
        }
    }
}
