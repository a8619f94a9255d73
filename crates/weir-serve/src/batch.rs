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
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use weir_ml::{Column, Frame, Model};

use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<Vec<f64>, String>>;

#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Rows per model call at most; 0 turns batching off.
    pub max_rows: usize,
    pub max_delay: Duration,
}

/// The queue in front of one model version; dropping it ends its task.
pub(crate) struct Batcher {
    queue: mpsc::Sender<(Frame, Reply)>,
}

impl Batcher {
    pub(crate) fn start(
        model: Arc<Model>,
        options: BatchOptions,
        metrics: Arc<Metrics>,
        label: (String, i64),
    ) -> Batcher {
        let (queue, jobs) = mpsc::channel(1024);
        tokio::spawn(run(model, options, metrics, label, jobs));
        Batcher { queue }
    }

    pub(crate) async fn score(&self, frame: Frame) -> Result<Vec<f64>, String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((frame, reply))
            .await
            .map_err(|_| "the model was unloaded".to_string())?;
        answer
            .await
            .map_err(|_| "the model was unloaded".to_string())?
    }
}

async fn run(
    model: Arc<Model>,
    options: BatchOptions,
    metrics: Arc<Metrics>,
    label: (String, i64),
    mut jobs: mpsc::Receiver<(Frame, Reply)>,
) {
    while let Some(first) = jobs.recv().await {
        let mut rows = first.0.rows;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.max_delay;
        while rows < options.max_rows {
            match tokio::time::timeout_at(deadline, jobs.recv()).await {
                Ok(Some(job)) => {
                    rows += job.0.rows;
                    batch.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        metrics.model_call(&label.0, label.1, rows);
        let model = Arc::clone(&model);
        // Scoring is CPU work: off the reactor, so requests keep arriving.
        let answered = tokio::task::spawn_blocking(move || score_batch(&model, batch)).await;
        if let Err(e) = answered {
            // A panic in the model: the replies were dropped, so their
            // requests fail with "unloaded"-style errors; keep serving.
            eprintln!("batch for {}:{} panicked: {e}", label.0, label.1);
        }
    }
}

fn score_batch(model: &Model, batch: Vec<(Frame, Reply)>) {
    if batch.len() == 1 {
        let (frame, reply) = batch.into_iter().next().expect("one job");
        let _ = reply.send(model.predict(&frame).map_err(|e| e.to_string()));
        return;
    }
    let joined = concat(batch.iter().map(|(f, _)| f));
    match model.predict(&joined) {
        Ok(scores) => {
            let mut at = 0;
            for (frame, reply) in batch {
                let _ = reply.send(Ok(scores[at..at + frame.rows].to_vec()));
                at += frame.rows;
            }
        }
        Err(_) => {
            for (frame, reply) in batch {
                let _ = reply.send(model.predict(&frame).map_err(|e| e.to_string()));
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
