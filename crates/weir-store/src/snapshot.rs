//! Consistent copies of the metadata store for `weir backup` and `weir
//! restore`: SQLite's `VACUUM INTO` (online: readers and the writer go on),
//! PostgreSQL's `pg_dump` in its custom format (one snapshot transaction)
//! and `pg_restore`. A snapshot is restored only onto an empty store, so a
//! restore never mixes two histories.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{parse_url, redact, sqlite_file, Backend, Result, Store, StoreError};

fn failed(what: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("{what}: {reason}"))
}

/// `pg_dump`/`pg_restore` for `url`, the password handed over in the
/// environment rather than on a command line anyone can read in `ps`.
fn pg_tool(program: &str, url: &str) -> Result<(tokio::process::Command, String)> {
    let mut parsed = url::Url::parse(url).map_err(|e| failed(&format!("'{}'", redact(url)), e))?;
    let mut command = tokio::process::Command::new(program);
    if let Some(password) = parsed.password() {
        let password = percent_decode(password);
        command.env("PGPASSWORD", password);
        let _ = parsed.set_password(None);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok((command, parsed.to_string()))
}

/// A URL's userinfo is percent-encoded (`%40` for `@`); libpq wants the
/// password itself. Not form decoding: a `+` stays a `+`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn run(mut command: tokio::process::Command, program: &str) -> Result<()> {
    let out = command.output().await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => failed(
            &format!("{program} is not installed"),
            "PostgreSQL stores are copied with pg_dump and pg_restore (apt-get install postgresql-client)",
        ),
        _ => failed(&format!("cannot run {program}"), e),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(&format!("{program} failed"), stderr.trim()));
    }
    Ok(())
}

impl Store {
    /// Writes a consistent copy of the whole store into `dir`; returns the
    /// file (`metadata.sqlite` or `metadata.pgdump`).
    pub async fn snapshot(&self, dir: &Path) -> Result<PathBuf> {
        match self.backend {
            Backend::Sqlite => {
                let path = dir.join("metadata.sqlite");
                let _ = std::fs::remove_file(&path);
                let target = path.display().to_string().replace('\'', "''");
                sqlx::query(&format!("VACUUM INTO '{target}'"))
                    .execute(&self.pool)
                    .await?;
                Ok(path)
            }
            Backend::Postgres => {
                let path = dir.join("metadata.pgdump");
                let (mut dump, url) = pg_tool("pg_dump", &self.url)?;
                dump.args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
                    .arg(&path)
                    .arg(url);
                run(dump, "pg_dump").await?;
                Ok(path)
            }
        }
    }
}

/// Which store a snapshot file is of, by its name.
pub fn backend_of(file: &Path) -> Option<Backend> {
    match file.extension()?.to_str()? {
        "sqlite" => Some(Backend::Sqlite),
        "pgdump" => Some(Backend::Postgres),
        _ => None,
    }
}

/// Whether a snapshot named `file` can be restored as the store at `url`:
/// the same backend, and a store that does not exist yet (SQLite) or holds
/// no tables (PostgreSQL).
pub async fn check_target(url: &str, file: &Path) -> Result<()> {
    let (backend, url, _) = parse_url(url)?;
    if backend_of(file) != Some(backend) {
        return Err(StoreError::Invalid(format!(
            "this backup's metadata ({}) is not of a {} store\n  hint: restore it with WEIR_DB pointing at the kind of store it was taken from",
            file.file_name().unwrap_or_default().to_string_lossy(),
            match backend {
                Backend::Sqlite => "SQLite",
                Backend::Postgres => "PostgreSQL",
            }
        )));
    }
    match backend {
        Backend::Sqlite => {
            let path = sqlite_file(&url).ok_or_else(|| {
                StoreError::Invalid("cannot restore into an in-memory store".into())
            })?;
            let path = Path::new(path);
            if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                return Err(StoreError::Invalid(format!(
                    "the metadata store {} already exists; a backup is restored onto an empty store\n  hint: move it aside, or point WEIR_DB at a new file",
                    path.display()
                )));
            }
            Ok(())
        }
        Backend::Postgres => {
            let store = Store::connect(&url).await?;
            let tables: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_one(&store.pool)
            .await?;
            store.pool.close().await;
            if tables > 0 {
                return Err(StoreError::Invalid(format!(
                    "the database {} already has {tables} tables; a backup is restored onto an empty database\n  hint: createdb a new one and point WEIR_DB at it",
                    redact(&url)
                )));
            }
            Ok(())
        }
    }
}

/// Makes the store at `url` from `file`, a snapshot of the same backend
/// (see [`check_target`]).
pub async fn restore(url: &str, file: &Path) -> Result<()> {
    check_target(url, file).await?;
    let (backend, url, _) = parse_url(url)?;
    match backend {
        Backend::Sqlite => {
            let path = Path::new(sqlite_file(&url).expect("checked"));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| failed(&format!("cannot create {}", parent.display()), e))?;
            }
            // Whole or not at all: a copy beside it, renamed into place.
            let partial = path.with_extension("restoring");
            std::fs::copy(file, &partial)
                .and_then(|_| std::fs::File::open(&partial)?.sync_all())
                .and_then(|_| std::fs::rename(&partial, path))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&partial);
                    failed(&format!("cannot write {}", path.display()), e)
                })?;
            Ok(())
        }
        Backend::Postgres => {
            let (mut restore, url) = pg_tool("pg_restore", &url)?;
            // One transaction: a restore that fails leaves the database empty.
            restore
                .args([
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "--single-transaction",
                    "--dbname",
                ])
                .arg(url)
                .arg(file);
            run(restore, "pg_restore").await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_percent_decoded_not_form_decoded() {
        assert_eq!(super::percent_decode("p%40ss+w%2Fd%"), "p@ss+w/d%");
    }
}
