//! The audit log: who changed what, when, from what to what, appended in
//! the transaction of the change itself (a change that rolls back leaves no
//! entry; an entry that cannot be written fails the change). Entries are
//! hash-chained: each one's hash is BLAKE3 over its content and the previous
//! entry's hash, so editing, deleting or reordering any entry is detected
//! by [`Store::verify_audit`].
//!
//! Who acts is the process's actor (the CLI's user and host), or, inside
//! [`acting_as`], the caller a server authenticated for one request.

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{Any, Row, Transaction};

use crate::{Result, Store};

/// The hash before the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who this process acts for, worked out on the first change it audits
/// (most processes, a step's runtime among them, audit nothing).
static DEFAULT_ACTOR: std::sync::OnceLock<fn() -> String> = std::sync::OnceLock::new();
static ACTOR_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

tokio::task_local! {
    static ACTOR: String;
}

/// Says how to name who this process acts for (once, at start), e.g.
/// `alice@build-7 (weir run)`.
pub fn set_default_actor(actor: fn() -> String) {
    let _ = DEFAULT_ACTOR.set(actor);
}

/// Runs `f` with its changes recorded as made by `actor`.
pub async fn acting_as<F: std::future::Future>(actor: String, f: F) -> F::Output {
    ACTOR.scope(actor, f).await
}

/// Who the current change is made by.
pub fn actor() -> String {
    ACTOR
        .try_with(Clone::clone)
        .ok()
        .or_else(|| {
            DEFAULT_ACTOR
                .get()
                .map(|f| ACTOR_NAME.get_or_init(*f).clone())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Value,
    pub after: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// What verifying the chain found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verification {
    pub entries: i64,
    /// The first entry that does not verify, and why.
    pub broken_at: Option<i64>,
    pub reason: Option<String>,
}

fn hash_of(e: &AuditEntry) -> String {
    // Fixed field order; serde_json writes object keys as given.
    let content = json!([
        e.seq,
        e.at,
        e.actor,
        e.action,
        e.target,
        e.before,
        e.after,
        e.prev_hash
    ]);
    weir_core::Digest::of_bytes(content.to_string().as_bytes()).hex()
}

/// Appends an entry in the caller's transaction.
pub(crate) async fn append(
    tx: &mut Transaction<'_, Any>,
    action: &str,
    target: &str,
    before: Value,
    after: Value,
) -> Result<()> {
    // One appender at a time on PostgreSQL (SQLite has one writer anyway):
    // two changes must not both chain onto the same last entry. The lock
    // goes with the transaction.
    if !tx.backend_name().eq_ignore_ascii_case("sqlite") {
        sqlx::query("SELECT pg_advisory_xact_lock(2025122501)")
            .execute(&mut **tx)
            .await?;
    }
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (seq, prev_hash) = match last {
        Some(r) => (r.try_get::<i64, _>("seq")? + 1, r.try_get("hash")?),
        None => (1, GENESIS.to_string()),
    };
    let mut entry = AuditEntry {
        seq,
        at: weir_core::now_ms(),
        actor: actor(),
        action: action.to_string(),
        target: target.to_string(),
        before,
        after,
        prev_hash,
        hash: String::new(),
    };
    entry.hash = hash_of(&entry);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, before_json, after_json, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry.seq)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(entry.before.to_string())
    .bind(entry.after.to_string())
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn entry_of(r: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    let parse = |s: String| serde_json::from_str(&s).unwrap_or(Value::String(s));
    Ok(AuditEntry {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        before: parse(r.try_get("before_json")?),
        after: parse(r.try_get("after_json")?),
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

const COLUMNS: &str = "seq, at, actor, action, target, before_json, after_json, prev_hash, hash";

impl Store {
    /// Entries at or after `since_ms`, oldest first.
    pub async fn audit_entries(&self, since_ms: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE at >= $1 ORDER BY seq"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_of).collect()
    }

    /// Walks the whole chain: every entry's hash recomputed, each linked to
    /// the one before, no sequence number missing.
    pub async fn verify_audit(&self) -> Result<Verification> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq"))
            .fetch_all(&self.pool)
            .await?;
        let (mut prev, mut expected, mut n) = (GENESIS.to_string(), 1i64, 0i64);
        let broken = |seq: i64, n: i64, reason: String| Verification {
            entries: n,
            broken_at: Some(seq),
            reason: Some(reason),
        };
        for row in &rows {
            let e = entry_of(row)?;
            n += 1;
            if e.seq != expected {
                return Ok(broken(
                    e.seq,
                    n,
                    format!("entry {expected} is missing (the next is {})", e.seq),
                ));
            }
            if e.prev_hash != prev {
                return Ok(broken(
                    e.seq,
                    n,
                    "it does not chain onto the entry before it".into(),
                ));
            }
            if hash_of(&e) != e.hash {
                return Ok(broken(
                    e.seq,
                    n,
                    "its content does not match its hash (it was changed)".into(),
                ));
            }
            prev = e.hash;
            expected += 1;
        }
        Ok(Verification {
            entries: n,
            broken_at: None,
            reason: None,
        })
    }
}
