//! The metadata store: one [`Store`] over sqlx's `Any` driver, so SQLite (the
//! embedded default) and PostgreSQL run the same migrations and the same
//! queries. One module per aggregate. Every multi-row change is one
//! transaction: a failure leaves nothing half-written.
//!
//! Queries use `$N` placeholders, which both SQLite and PostgreSQL accept.
//! Write transactions start with a write so that SQLite takes its write lock
//! up front and waits on the busy timeout instead of failing with "database is
//! locked" when two processes commit at once.

pub mod approvals;
mod artifacts;
pub mod audit;
mod datasets;
mod deployments;
mod direct;
mod error;
mod events;
pub mod filter;
pub mod lineage;
mod logs;
mod metrics;
mod mirror;
mod models;
mod monitoring;
pub mod references;
pub mod registry;
pub mod retention;
pub mod run_json;
mod runs;
mod schedules;
pub mod snapshot;
mod studies;
pub mod tokens;
pub mod tracking;
mod usage;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};

pub use artifacts::{ArtifactKind, ArtifactRecord};
pub use datasets::{DatasetSummary, DatasetVersion, NewDatasetVersion};
pub use deployments::{Deployment, DeploymentEvent, Interval, WindowPart};
pub use error::{redact, StoreError};
pub use events::StepEnded;
pub use logs::LogChunk;
pub use metrics::MetricPoint;
pub use models::{ModelSummary, ModelVersion, NewModelVersion};
pub use monitoring::{MonitorAlert, MonitorCheck, Segment};
pub use runs::{
    NewStepRun, RunRecord, RunStatus, SourceFile, StepCompletion, StepRunRecord, StepStart,
    StepStatus, StepTask,
};
pub use schedules::{Firing, Schedule};
pub use studies::StoredTrial;
pub use usage::{CostRow, ServeUsage, UsageRecord};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run. On a SQLite file, one connection of its
    /// own: writers in this process then queue on the pool, waking the moment
    /// the last one commits, instead of meeting SQLite's lock and sleeping in
    /// its busy handler (1, 2, 5, 10 ms ...). Other processes still meet the
    /// lock and wait on the busy timeout. Elsewhere, the pool itself.
    writer: AnyPool,
    /// On a SQLite file, the connection the hot tracking writes drive
    /// themselves ([`direct`]).
    direct: Option<std::sync::Arc<direct::Direct>>,
    backend: Backend,
    url: String,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its schema
    /// up to date. `sqlite://path` and `postgres://...` are accepted.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect(url).await?;
        // sqlx holds an advisory lock while it migrates PostgreSQL, but
        // nothing on SQLite: two commands started at once on a new database
        // would both create the tables, and one would fail. A lock file
        // beside the database serializes them.
        let _lock = match store.backend {
            Backend::Sqlite => migration_lock(&store.url).await?,
            Backend::Postgres => None,
        };
        MIGRATOR.run(&store.pool).await.map_err(|e| match e {
            // The database went away under the check: say so, not that
            // the schema is wrong.
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            other => StoreError::Migrate(other.to_string()),
        })?;
        Ok(store)
    }

    /// Begins a write transaction. On SQLite it takes the write lock at
    /// BEGIN (IMMEDIATE): a deferred transaction that read first and then
    /// tried to write, while another process (`weir serve` recording
    /// traffic, say) had committed meanwhile, would fail at once with
    /// SQLITE_BUSY_SNAPSHOT ("database is locked") instead of waiting on
    /// the busy timeout, because its snapshot can no longer be upgraded.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Connects to a database whose schema is known to be current (the step
    /// runtime, started by a runner that opened it), skipping the migration check.
    pub async fn connect(url: &str) -> Result<Store> {
        let (backend, url, options) = parse_url(url)?;
        let pool = pool_options(backend)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::connect(&url, e))?;
        Ok(Store::with_pool(backend, url, pool, options))
    }

    /// Like [`Store::connect`], but connects on first use, so a caller can
    /// do other work meanwhile (see [`Store::ping`]).
    pub fn connect_lazy(url: &str) -> Result<Store> {
        let (backend, url, options) = parse_url(url)?;
        let pool = pool_options(backend).connect_lazy_with(options.clone());
        Ok(Store::with_pool(backend, url, pool, options))
    }

    /// The store around its read pool: the writer pool and the direct
    /// connection connect on first use.
    fn with_pool(
        backend: Backend,
        url: String,
        pool: AnyPool,
        options: AnyConnectOptions,
    ) -> Store {
        Store {
            writer: writer_pool(backend, &url, &pool, options),
            direct: direct_writer(&url),
            pool,
            backend,
            url,
        }
    }

    /// Opens a connection now if none is open, and checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::open(&self.url, e))?;
        Ok(())
    }

    /// Runs `op`, and again after a pause (100 ms doubling to 2 s) while it
    /// fails because the database cannot be reached, for up to 20 s: a
    /// database restart, or a statement sent on a connection the restart
    /// killed, then costs a pause rather than the run. Only for operations
    /// safe to repeat: reads, and writes that set a state (a step's end, a
    /// run's status) or run in one transaction, which a lost connection
    /// rolls back.
    pub async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut pause = Duration::from_millis(100);
        loop {
            match op().await {
                Err(e) if e.is_unreachable() && std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, ?pause, "the metadata store is unreachable; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                done => return done,
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL the store was opened with, for display.
    /// The pool's connections: (open, idle).
    pub fn pool_state(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn close(&self) {
        if let Some(direct) = &self.direct {
            direct.close().await;
        }
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// An exclusive lock on `<database>-migrate.lock`, held until dropped; none
/// for an in-memory database.
async fn migration_lock(url: &str) -> Result<Option<std::fs::File>> {
    let Some(path) = sqlite_file(url) else {
        return Ok(None);
    };
    let lock_path = format!("{path}-migrate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Migrate(format!("cannot open {lock_path}: {e}")))?;
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| StoreError::Migrate(format!("cannot lock {lock_path}: {e}")))?
        .map_err(|e| StoreError::Migrate(format!("cannot lock {lock_path}: {e}")))?;
    Ok(Some(locked))
}

/// The path of the SQLite file a normalized URL names; `None` for
/// PostgreSQL and for an in-memory database.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path.is_empty() || path == ":memory:" || query.contains("mode=memory");
    (!in_memory).then_some(path)
}

fn parse_url(url: &str) -> Result<(Backend, String, AnyConnectOptions)> {
    sqlx::any::install_default_drivers();
    let (backend, url) = normalize_url(url)?;
    let options = AnyConnectOptions::from_str(&url).map_err(|e| StoreError::open(&url, e))?;
    Ok((backend, url, options))
}

fn pool_options(backend: Backend) -> AnyPoolOptions {
    match backend {
        Backend::Sqlite => AnyPoolOptions::new()
            .max_connections(4)
            // A file connection cannot drop the way a socket can; pinging it
            // on every checkout costs each request another round trip to
            // the connection's thread.
            .test_before_acquire(false)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside one writer; NORMAL sync is
                    // crash-safe in WAL mode (a power cut may lose the last commit,
                    // never corrupt the file). A 16 MiB page cache per connection
                    // (SQLite's default is 2 MiB) keeps the tracking tables'
                    // hot pages out of read syscalls.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 15000; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA case_sensitive_like = ON; PRAGMA cache_size = -16384;",
                    )
                    .await?;
                    Ok(())
                })
            }),
        Backend::Postgres => AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(15))
            // sqlx pings every connection it hands out: one more round trip
            // to the database per request. A connection in steady use has
            // just answered; only one that sat idle (the database may have
            // restarted meanwhile) is pinged, and a dead one is replaced.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > Duration::from_secs(1) || connections_suspect() {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            }),
    }
}

/// When a statement last failed because its connection was gone (ms since
/// the epoch). A database that restarts kills every pooled connection at
/// once; each idle connection would otherwise fail one statement of its own
/// before the pool replaced it.
static CONNECTION_LOST_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn connection_lost() {
    CONNECTION_LOST_AT.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
}

/// For a while after a lost connection, every connection is pinged before it
/// is handed out, and a dead one replaced.
fn connections_suspect() -> bool {
    let lost = CONNECTION_LOST_AT.load(std::sync::atomic::Ordering::Relaxed);
    lost != 0 && now_ms().saturating_sub(lost) < 30_000
}

/// The direct writer ([`direct`]) of a SQLite file opened for writing. A
/// store opened read-only (`?mode=ro`) has none, so its writes fail as
/// sqlx's do instead of going through a connection that could write.
fn direct_writer(url: &str) -> Option<std::sync::Arc<direct::Direct>> {
    let path = sqlite_file(url)?;
    let mode = url.split_once('?').map_or("", |(_, query)| query);
    (!mode.split('&').any(|kv| kv == "mode=ro")).then(|| direct::Direct::new(path))
}

/// The pool for write transactions (see [`Store`]'s `writer`): a lazy
/// one-connection pool on a SQLite file; `pool` itself on PostgreSQL, and on
/// an in-memory SQLite database, which another connection would not see.
fn writer_pool(backend: Backend, url: &str, pool: &AnyPool, options: AnyConnectOptions) -> AnyPool {
    if backend != Backend::Sqlite || sqlite_file(url).is_none() {
        return pool.clone();
    }
    pool_options(backend)
        .max_connections(1)
        // A write may wait behind a long one (a migration, a big batch); it
        // should wait about as long as SQLite's busy timeout would.
        .acquire_timeout(Duration::from_secs(15))
        .connect_lazy_with(options)
}

/// Accepts `sqlite://rel/path.db`, `sqlite:///abs/path.db` and `postgres://...`;
/// makes SQLite create the file and its directory when missing.
fn normalize_url(url: &str) -> Result<(Backend, String)> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path != ":memory:" {
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::open(url, e))?;
            }
        }
        let query = if query.contains("mode=") {
            query.to_string()
        } else if query.is_empty() {
            "mode=rwc".to_string()
        } else {
            format!("{query}&mode=rwc")
        };
        Ok((Backend::Sqlite, format!("sqlite://{path}?{query}")))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((Backend::Postgres, url.to_string()))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}
