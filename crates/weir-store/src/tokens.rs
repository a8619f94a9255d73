//! API tokens: `weir_<id>_<secret>`, 256 random bits of secret of which only
//! a BLAKE3 hash is stored (a token is not a password: nothing to stretch),
//! each with a role, an optional expiry, revocable. Creating and revoking
//! are audited.

use serde::Serialize;
use serde_json::json;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// What a caller may do, each role including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also log runs, metrics, params, artifacts.
    Editor,
    /// Also change the registry (models, versions, aliases, stages) and
    /// deployments, and manage tokens.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Why a token was not accepted; said to the caller as is (it names no
/// secret and no other token).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Malformed => "the token is malformed: expected weir_<id>_<secret> as `weir tokens create` printed it",
            Refused::Unknown => "the token is not known to this server",
            Refused::Revoked => "the token was revoked",
            Refused::Expired => "the token has expired",
        })
    }
}

fn hash(secret: &str) -> String {
    weir_core::Digest::of_bytes(secret.as_bytes()).hex()
}

fn token_of(r: &sqlx::any::AnyRow) -> Result<Token> {
    let role: String = r.try_get("role")?;
    Ok(Token {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| {
            StoreError::Invalid(format!("api_tokens.role holds '{role}', which is no role"))
        })?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

const COLUMNS: &str = "id, name, role, created_by, created_at, expires_at, revoked_at";

impl Store {
    /// Makes a token; returns it with the only copy of its full text.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<i64>,
        created_by: &str,
    ) -> Result<(Token, String)> {
        use rand::Rng;
        let id = weir_core::new_id();
        let secret: String = {
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        let token = Token {
            id: id.clone(),
            name: name.to_string(),
            role,
            created_by: created_by.to_string(),
            created_at: weir_core::now_ms(),
            expires_at,
            revoked_at: None,
        };
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(name)
        .bind(role.as_str())
        .bind(hash(&secret))
        .bind(created_by)
        .bind(token.created_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(
            &mut tx,
            "token.create",
            &id,
            serde_json::Value::Null,
            json!({ "name": name, "role": role, "expires_at": expires_at }),
        )
        .await?;
        tx.commit().await?;
        Ok((token, format!("weir_{id}_{secret}")))
    }

    pub async fn tokens(&self) -> Result<Vec<Token>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_of).collect()
    }

    /// Revokes a token by its id (or a unique prefix); false if it already was.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let matching: Vec<Token> = self
            .tokens()
            .await?
            .into_iter()
            .filter(|t| t.id.starts_with(id))
            .collect();
        let t = match matching.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(StoreError::NotFound {
                    kind: "token",
                    id: id.to_string(),
                    hint: "list them with `weir tokens list`".into(),
                })
            }
            _ => {
                return Err(StoreError::Invalid(format!(
                    "'{id}' names {} tokens; give more of the id",
                    matching.len()
                )))
            }
        };
        if t.revoked_at.is_some() {
            return Ok(false);
        }
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(weir_core::now_ms())
            .bind(&t.id)
            .execute(&mut *tx)
            .await?;
        crate::audit::append(
            &mut tx,
            "token.revoke",
            &t.id,
            json!({ "name": t.name, "role": t.role }),
            json!({ "revoked": true }),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether any token was ever made (a server with none is open).
    pub async fn any_tokens(&self) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 AS one FROM api_tokens LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// The token `text` is, if it is one that may be used now.
    pub async fn authenticate(&self, text: &str) -> Result<std::result::Result<Token, Refused>> {
        let Some((id, secret)) = text
            .strip_prefix("weir_")
            .and_then(|rest| rest.split_once('_'))
            .filter(|(id, s)| {
                id.len() == 32
                    && s.len() == 64
                    && id.bytes().chain(s.bytes()).all(|b| b.is_ascii_hexdigit())
            })
        else {
            return Ok(Err(Refused::Malformed));
        };
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, secret_hash FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(Refused::Unknown));
        };
        let stored: String = row.try_get("secret_hash")?;
        // Compared in time independent of where they differ.
        let given = hash(secret);
        let same = stored.len() == given.len()
            && stored
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Ok(Err(Refused::Unknown));
        }
        let token = token_of(&row)?;
        if token.revoked_at.is_some() {
            return Ok(Err(Refused::Revoked));
        }
        if token.expires_at.is_some_and(|e| e <= weir_core::now_ms()) {
            return Ok(Err(Refused::Expired));
        }
        Ok(Ok(token))
    }
}

/// Why a request was turned away: its HTTP status, an error code and what
/// to tell the caller.
#[derive(Debug)]
pub struct Denied {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

/// How long a validated token, or the answer that no token exists, is trusted.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The servers' gate: a store without tokens is open; once it has one,
/// a caller needs a valid token whose role covers what it asks. Validated
/// tokens and the "no token yet" answer are kept for a few seconds, so a
/// hot route pays a map lookup, not a query; a revocation takes effect
/// within that time.
#[derive(Default)]
pub struct TokenCache {
    locked: std::sync::atomic::AtomicBool,
    checked: std::sync::Mutex<Option<std::time::Instant>>,
    valid: std::sync::Mutex<std::collections::HashMap<String, (Token, std::time::Instant)>>,
}

impl TokenCache {
    async fn locked(&self, store: &Store) -> bool {
        use std::sync::atomic::Ordering;
        if self.locked.load(Ordering::Relaxed) {
            return true;
        }
        {
            let mut checked = self.checked.lock().expect("token cache");
            if checked.is_some_and(|at| at.elapsed() < CACHE_FOR) {
                return false;
            }
            *checked = Some(std::time::Instant::now());
        }
        // Tokens are revoked, never deleted: once locked, locked for good.
        let any = store.any_tokens().await.unwrap_or(true);
        self.locked.store(any, Ordering::Relaxed);
        any
    }

    /// Lets a caller with `authorization` (the header's value) do what
    /// needs `need`: the token it used (None while the store has none).
    pub async fn check(
        &self,
        store: &Store,
        authorization: Option<&str>,
        need: Role,
        what: &str,
    ) -> std::result::Result<Option<Token>, Denied> {
        if !self.locked(store).await {
            return Ok(None);
        }
        let unauthenticated = |message: String| Denied {
            status: 401,
            code: "UNAUTHENTICATED",
            message,
        };
        let Some(text) = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            return Err(unauthenticated(
                "this server needs an API token: send `Authorization: Bearer weir_...` (MLflow clients: set MLFLOW_TRACKING_TOKEN); an admin makes one with `weir tokens create`".into(),
            ));
        };
        let key = hash(text);
        let cached = self
            .valid
            .lock()
            .expect("token cache")
            .get(&key)
            .filter(|(t, at)| {
                at.elapsed() < CACHE_FOR && t.expires_at.is_none_or(|e| e > weir_core::now_ms())
            })
            .map(|(t, _)| t.clone());
        let token = match cached {
            Some(t) => t,
            None => match store.authenticate(text).await {
                Ok(Ok(t)) => {
                    self.valid
                        .lock()
                        .expect("token cache")
                        .insert(key, (t.clone(), std::time::Instant::now()));
                    t
                }
                Ok(Err(why)) => return Err(unauthenticated(why.to_string())),
                Err(e) => {
                    return Err(Denied {
                        status: 503,
                        code: "TEMPORARILY_UNAVAILABLE",
                        message: format!("cannot check the token: {e}"),
                    })
                }
            },
        };
        if token.role < need {
            return Err(Denied {
                status: 403,
                code: "PERMISSION_DENIED",
                message: format!(
                    "token '{}' is a {} token; {what} needs {}",
                    token.name,
                    token.role.as_str(),
                    need.as_str()
                ),
            });
        }
        Ok(Some(token))
    }
}
