#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the metadata store at {url}: {reason}\n  hint: check WEIR_DB (sqlite://PATH or postgres://USER@HOST:PORT/DB) and that the database is reachable")]
    Open { url: String, reason: String },
    #[error("cannot reach the metadata store at {url}: {reason}\n  hint: check WEIR_DB and that the database is up; if it was down or restarting, `weir resume RUN` continues an interrupted run once it answers (`weir runs list` names it)")]
    Unreachable { url: String, reason: String },
    #[error("'{0}' is not a supported metadata store URL\n  hint: use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl(String),
    #[error("cannot bring the metadata schema up to date: {0}")]
    Migrate(String),
    #[error("{kind} '{id}' does not exist\n  hint: {hint}")]
    NotFound {
        kind: &'static str,
        id: String,
        hint: String,
    },
    #[error(
        "'{prefix}' matches several {kind}s: {matches}\n  hint: type more characters of the id"
    )]
    Ambiguous {
        kind: &'static str,
        prefix: String,
        matches: String,
    },
    #[error("{kind} '{id}' already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// A request the data does not allow (MLflow's INVALID_PARAMETER_VALUE).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("corrupt metadata in {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("{}", db_message(.0))]
    Db(sqlx::Error),
    /// From the connection the hot tracking writes drive themselves.
    #[error("metadata store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unreachable(&e) {
            crate::connection_lost();
        }
        StoreError::Db(e)
    }
}

impl StoreError {
    pub(crate) fn open(url: &str, e: impl std::fmt::Display) -> Self {
        StoreError::Open {
            url: redact(url),
            reason: e.to_string(),
        }
    }

    /// A connection that could not be opened: unreachable (the database is
    /// down or restarting, which waiting and `weir resume` get past) is told
    /// apart from refused (a wrong URL, user or password).
    pub(crate) fn connect(url: &str, e: sqlx::Error) -> Self {
        match is_unreachable(&e) {
            true => StoreError::Unreachable {
                url: redact(url),
                reason: e.to_string(),
            },
            false => StoreError::open(url, e),
        }
    }

    /// Whether the database could not be reached (down, restarting, or the
    /// connection was cut), as opposed to refusing what was asked.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Db(e) => is_unreachable(e),
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Hides a password in a URL (a database's, a tracking server's) before it
/// is shown.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A database that cannot be reached is told apart from one that refused
/// a statement: the first is usually down or restarting, and the way on is
/// to wait and resume.
fn db_message(e: &sqlx::Error) -> String {
    match is_unreachable(e) {
        true => format!(
            "cannot reach the metadata store: {e}\n  hint: the database may be down or restarting; once it answers again, `weir resume RUN` continues an interrupted run (`weir runs list` names it)"
        ),
        false => format!("metadata store error: {e}"),
    }
}

/// Whether the database is not there now, rather than refusing what was
/// asked. PostgreSQL's classes 08 (connection exception) and 57P (the server
/// shutting down or starting up) mean the same as a connection error.
pub(crate) fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        _ => false,
    }
}
