//! Approvals: changes held until a second person agrees. A request records
//! what would change and who asked; a decision by anyone else approves or
//! rejects it. The caller applies an approved change (it knows how) between
//! [`Store::check_decision`] and [`Store::decide_approval`], so a change that
//! cannot be applied leaves its request pending.

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Approval {
    pub id: String,
    /// alias.set or deploy.
    pub action: String,
    pub target: String,
    pub payload: Value,
    pub requested_by: String,
    pub requested_at: i64,
    /// pending, approved or rejected.
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub comment: Option<String>,
}

const COLUMNS: &str = "id, action, target, payload_json, requested_by, requested_at, status, \
     decided_by, decided_at, comment";

fn approval_of(r: &sqlx::any::AnyRow) -> Result<Approval> {
    let payload: String = r.try_get("payload_json")?;
    Ok(Approval {
        id: r.try_get("id")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        payload: serde_json::from_str(&payload).unwrap_or_default(),
        requested_by: r.try_get("requested_by")?,
        requested_at: r.try_get("requested_at")?,
        status: r.try_get("status")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        comment: r.try_get("comment")?,
    })
}

impl Store {
    /// Holds a change for approval; returns the request.
    pub async fn request_approval(
        &self,
        action: &str,
        target: &str,
        payload: &Value,
        requested_by: &str,
    ) -> Result<Approval> {
        let a = Approval {
            id: weir_core::new_id(),
            action: action.to_string(),
            target: target.to_string(),
            payload: payload.clone(),
            requested_by: requested_by.to_string(),
            requested_at: weir_core::now_ms(),
            status: "pending".into(),
            decided_by: None,
            decided_at: None,
            comment: None,
        };
        let mut tx = self.write_tx().await?;
        sqlx::query(&format!(
            "INSERT INTO approvals ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL)"
        ))
        .bind(&a.id)
        .bind(&a.action)
        .bind(&a.target)
        .bind(a.payload.to_string())
        .bind(&a.requested_by)
        .bind(a.requested_at)
        .bind(&a.status)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(
            &mut tx,
            "approval.request",
            &a.id,
            Value::Null,
            json!({ "action": action, "target": target, "payload": payload, "requested_by": requested_by }),
        )
        .await?;
        tx.commit().await?;
        Ok(a)
    }

    /// Pending requests (all of them with `all`), newest first.
    pub async fn approvals(&self, all: bool) -> Result<Vec<Approval>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM approvals WHERE $1 = 1 OR status = 'pending' \
             ORDER BY requested_at DESC"
        ))
        .bind(i64::from(all))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(approval_of).collect()
    }

    /// The request `id` (or a unique prefix of it), if `user` may decide
    /// it: it is pending and `user` did not ask for it.
    pub async fn check_decision(&self, id: &str, user: &str) -> Result<Approval> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id LIKE $1"))
            .bind(format!("{id}%"))
            .fetch_all(&self.pool)
            .await?;
        let a = match rows.as_slice() {
            [one] => approval_of(one)?,
            [] => {
                return Err(StoreError::NotFound {
                    kind: "approval request",
                    id: id.to_string(),
                    hint: "list the pending ones with `weir approvals list`".into(),
                })
            }
            _ => {
                return Err(StoreError::Invalid(format!(
                    "'{id}' names {} approval requests; give more of the id",
                    rows.len()
                )))
            }
        };
        if a.status != "pending" {
            return Err(StoreError::Invalid(format!(
                "approval {} was already {} by {}",
                a.id,
                a.status,
                a.decided_by.as_deref().unwrap_or("someone")
            )));
        }
        if a.requested_by == user {
            return Err(StoreError::Invalid(format!(
                "you ({user}) requested approval {}: someone else must approve or reject it",
                a.id
            )));
        }
        Ok(a)
    }

    /// Records the decision on a request [`Store::check_decision`] allowed.
    pub async fn decide_approval(
        &self,
        a: &Approval,
        approved: bool,
        user: &str,
        comment: Option<&str>,
    ) -> Result<Approval> {
        let status = if approved { "approved" } else { "rejected" };
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE approvals SET status = $1, decided_by = $2, decided_at = $3, comment = $4 \
             WHERE id = $5 AND status = 'pending'",
        )
        .bind(status)
        .bind(user)
        .bind(now)
        .bind(comment)
        .bind(&a.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "approval {} was decided by someone else meanwhile",
                a.id
            )));
        }
        crate::audit::append(
            &mut tx,
            &format!("approval.{}", if approved { "approve" } else { "reject" }),
            &a.id,
            json!({ "status": "pending", "requested_by": a.requested_by }),
            json!({ "status": status, "decided_by": user, "comment": comment,
                    "action": a.action, "target": a.target }),
        )
        .await?;
        tx.commit().await?;
        Ok(Approval {
            status: status.into(),
            decided_by: Some(user.into()),
            decided_at: Some(now),
            comment: comment.map(str::to_string),
            ..a.clone()
        })
    }
}
