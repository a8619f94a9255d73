//! Tracking writes to a SQLite file, run in the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own, so every BEGIN,
//! statement and COMMIT of a request is a round trip to that thread: two
//! thread hand-offs each, which cost a small write several times SQLite's
//! own work, and the write lock stays held across all of them while other
//! writers wait. [`Direct`] keeps one more connection that a request drives
//! itself, start to finish: no hand-off, and the lock is held only for
//! SQLite's work. The hot tracking writes (create a run, log a batch) use it;
//! everything else stays on sqlx.

use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::tracking::{Bind, Returned, Statement};
use crate::Result;

/// How long a write waits for another process's write lock, as sqlx's
/// connections do (`PRAGMA busy_timeout` in `pool_options`).
const BUSY_TIMEOUT: Duration = Duration::from_millis(15_000);

/// Commits between two nudges to the checkpointer thread.
const COMMITS_PER_CHECKPOINT: u32 = 32;

/// WAL pages past which the writer checkpoints itself (SQLite's default is
/// 1,000): the backstop for when the checkpointer cannot finish while
/// writes keep coming.
const WAL_BACKSTOP_PAGES: u32 = 8_000;

#[derive(Debug)]
pub(crate) struct Direct {
    path: String,
    /// Opened on first use, so a store that never logs opens nothing.
    /// Requests of this process queue for it here, as tasks: a thread never
    /// blocks on another request's write.
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
}

/// The open connection, and the checkpointer thread it wakes.
#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// Dropping it ends the thread; `None` if the thread did not start (the
    /// backstop then does the checkpoints).
    checkpoints: Option<SyncSender<()>>,
    commits: u32,
}

/// What a write asks of the rows its statements returned before it commits:
/// an error rolls the transaction back.
pub(crate) type Check = Box<dyn Fn(&[Returned]) -> Result<()> + Send>;

impl Direct {
    pub(crate) fn new(path: &str) -> Arc<Direct> {
        Arc::new(Direct {
            path: path.to_string(),
            writer: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// Runs `statements` in one transaction, hands their rows to `check`,
    /// and commits; any error rolls everything back.
    ///
    /// The write runs right here once the connection is this request's
    /// (requests of this process take turns, in order) and SQLite's write
    /// lock can be had at once: tens of microseconds, less than handing it
    /// to another thread, and with no await inside, a cancelled request
    /// cannot leave it half-done. When another process holds the lock, the
    /// write waits for it on a blocking thread, never on the runtime's.
    pub(crate) async fn write(
        self: &Arc<Self>,
        statements: Vec<Statement>,
        check: Check,
    ) -> Result<Vec<Returned>> {
        let started = std::time::Instant::now();
        // Statements through sqlx report their time themselves; this path
        // reports its own, queueing for the connection included.
        let timed = |result| {
            tracing::debug!(target: "weir_store::direct", elapsed_secs = started.elapsed().as_secs_f64(), "direct write");
            result
        };
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        if let Some(done) = self.attempt(&mut writer, &statements, &check, false)? {
            return timed(Ok(done));
        }
        let this = Arc::clone(self);
        let waited = tokio::task::spawn_blocking(move || {
            Ok(this
                .attempt(&mut writer, &statements, &check, true)?
                .expect("a waiting write does not give up on a busy lock"))
        })
        .await;
        // A blocking task cannot be cancelled: the only way it fails to
        // join is a panic, which goes on as if the write had run here.
        timed(waited.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
    }

    /// One try: `None` when `wait` is false and another connection holds
    /// SQLite's write lock.
    fn attempt(
        &self,
        writer: &mut Option<Writer>,
        statements: &[Statement],
        check: &Check,
        wait: bool,
    ) -> Result<Option<Vec<Returned>>> {
        if writer.is_none() {
            *writer = Some(Writer {
                conn: self.open()?,
                checkpoints: self.start_checkpointer(),
                commits: 0,
            });
        }
        let writer = writer.as_mut().expect("opened above");
        let conn = &mut writer.conn;
        conn.busy_timeout(if wait { BUSY_TIMEOUT } else { Duration::ZERO })?;
        // IMMEDIATE takes the write lock now, so the lock is the only thing
        // that can be busy, and only here.
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Err(e) if !wait && e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                return Ok(None)
            }
            tx => tx?,
        };
        let mut rows = Vec::new();
        for s in statements {
            let mut stmt = tx.prepare_cached(&s.sql)?;
            let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
            let mut result = stmt.query(rusqlite::params_from_iter(s.binds.iter()))?;
            while let Some(row) = result.next()? {
                let mut columns = Vec::with_capacity(names.len());
                for (i, name) in names.iter().enumerate() {
                    columns.push((name.clone(), text_of(row.get_ref(i)?)));
                }
                rows.push(Returned(columns));
            }
        }
        // Dropping `tx` on an error rolls it back.
        check(&rows)?;
        tx.commit()?;
        writer.commits = writer.commits.wrapping_add(1);
        if writer.commits.is_multiple_of(COMMITS_PER_CHECKPOINT) {
            if let Some(nudge) = &writer.checkpoints {
                // Full means a checkpoint is already due.
                let _ = nudge.try_send(());
            }
        }
        Ok(Some(rows))
    }

    /// Copies the WAL back into the database on a thread of its own, so a
    /// commit does not: SQLite's automatic checkpoint runs in the commit
    /// that crosses 1,000 pages, ~15 ms of I/O in the middle of a request.
    /// The thread ends when the returned sender is dropped (the store is
    /// closed or dropped).
    fn start_checkpointer(&self) -> Option<SyncSender<()>> {
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let path = self.path.clone();
        let started = std::thread::Builder::new()
            .name("weir-checkpoint".into())
            .spawn(move || {
                let Ok(conn) =
                    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                else {
                    return;
                };
                while nudged.recv().is_ok() {
                    // PASSIVE never waits for readers or writers; an error
                    // leaves the work to the next nudge or to the backstop.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            });
        started.ok().map(|_| nudge)
    }

    fn open(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            // The store's own pool created the file and its schema.
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The same settings as sqlx's connections (`pool_options`).
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA case_sensitive_like = ON; PRAGMA cache_size = -16384; \
             PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES};"
        ))?;
        // A batch's statements differ in shape with its number of keys.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// Closes the connection; the next write opens it again.
    pub(crate) async fn close(&self) {
        *self.writer.lock().await = None;
    }
}

fn text_of(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(v) => Some(v.to_string()),
        ValueRef::Real(v) => Some(v.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

impl ToSql for Bind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Bind::Null => ValueRef::Null,
            Bind::Text(s) => ValueRef::Text(s.as_bytes()),
            Bind::Real(v) => ValueRef::Real(*v),
            Bind::Int(v) => ValueRef::Integer(*v),
            Bind::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}
