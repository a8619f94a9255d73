//! Pieces of running steps' logs, shipped by their runtimes as the log file
//! grows; a finished step's whole log is an artifact instead.

use sqlx::Row;

use crate::{Result, Store};

/// Bytes `start..end` of an attempt's log file (as text; invalid UTF-8 is
/// replaced, so `body` may not be `end - start` bytes long).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub start: i64,
    pub end: i64,
    pub body: String,
}

impl Store {
    /// Adds a piece of an attempt's log. The first piece of an attempt
    /// drops what earlier attempts shipped: only the current one is shown.
    pub async fn push_log_chunk(
        &self,
        step_run_id: &str,
        attempt: i64,
        chunk: &LogChunk,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if chunk.start == 0 {
            sqlx::query("DELETE FROM step_log_chunks WHERE step_run_id = $1")
                .bind(step_run_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO step_log_chunks (step_run_id, attempt, start_byte, end_byte, body) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(step_run_id)
        .bind(attempt)
        .bind(chunk.start)
        .bind(chunk.end)
        .bind(&chunk.body)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pieces of an attempt's log that end after byte `from`, in order.
    pub async fn log_chunks(
        &self,
        step_run_id: &str,
        attempt: i64,
        from: i64,
    ) -> Result<Vec<LogChunk>> {
        let rows = sqlx::query(
            "SELECT start_byte, end_byte, body FROM step_log_chunks \
             WHERE step_run_id = $1 AND attempt = $2 AND end_byte > $3 ORDER BY start_byte",
        )
        .bind(step_run_id)
        .bind(attempt)
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogChunk {
                    start: r.try_get("start_byte")?,
                    end: r.try_get("end_byte")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    /// Drops a step's shipped pieces once its whole log is stored.
    pub async fn drop_log_chunks(&self, step_run_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM step_log_chunks WHERE step_run_id = $1")
            .bind(step_run_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
