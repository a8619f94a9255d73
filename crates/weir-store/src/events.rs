//! Step runs ending, as PostgreSQL announces them (LISTEN/NOTIFY).
//!
//! A runner following a step on a cluster learns the outcome from the
//! step runtime's own record. Polling that record costs a query per step
//! every few milliseconds and still leaves the runner half a poll behind;
//! a notification arrives the moment the runtime commits. Notifications
//! are a hint, not the record: the follower re-reads the step run, and
//! keeps a slow poll for what a dropped listener connection would miss.

use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{Backend, Result, Store, StoreError};

/// The channel a cluster step runtime notifies with its step run's id when
/// it records the step's outcome.
pub(crate) const STEP_ENDED: &str = "weir_step_ended";

/// A listener for [`STEP_ENDED`]: one database connection, shared by every
/// follower in the process through [`StepEnded::subscribe`].
pub struct StepEnded {
    sender: broadcast::Sender<String>,
    task: JoinHandle<()>,
}

impl StepEnded {
    /// Notifications from now on: the ids of step runs whose outcome was
    /// recorded. A receiver that falls behind gets `Lagged`, and should
    /// then read the record it waits for.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.sender.subscribe()
    }
}

impl Drop for StepEnded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store {
    /// Listens for step runs ending; `None` where the database cannot
    /// announce them (SQLite: its runtimes are local processes, which tell
    /// their runner directly). Listening has begun when this returns, so a
    /// step submitted afterwards cannot end unheard.
    pub async fn step_ended_events(&self) -> Result<Option<StepEnded>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(&self.url)
            .await
            .map_err(|e| StoreError::open(&self.url, e))?;
        listener.listen(STEP_ENDED).await?;
        // Ids are short; 1,024 buffered covers every step of a wide fan-out
        // ending at once.
        let (sender, _) = broadcast::channel(1024);
        let forward = sender.clone();
        let task = tokio::spawn(async move {
            loop {
                // `recv` reconnects after a lost connection; what was
                // announced meanwhile is lost, and the followers' slow poll
                // finds it.
                match listener.recv().await {
                    Ok(note) => {
                        let _ = forward.send(note.payload().to_string());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the step-ended listener lost its connection");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(Some(StepEnded { sender, task }))
    }
}

/// Announces, when `tx` commits, that step run `id` has its outcome. Only
/// on PostgreSQL.
pub(crate) async fn announce_step_ended(
    backend: Backend,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(STEP_ENDED)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
