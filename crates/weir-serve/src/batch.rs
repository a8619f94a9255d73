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
