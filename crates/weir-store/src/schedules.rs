//! Schedules and what each of their firings did.

use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    pub name: String,
    pub spec_file: String,
    pub cron: String,
    pub off_peak: Option<String>,
    pub params_json: String,
    /// `skip` or `once`: what to do with firings missed while no scheduler ran.
    pub catch_up: String,
    pub created_at: i64,
    pub last_fire_at: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Firing {
    pub id: String,
    pub schedule: String,
    pub scheduled_for: i64,
    pub fired_at: i64,
    pub outcome: String,
    pub run_id: Option<String>,
    pub detail: String,
}

const COLUMNS: &str =
    "name, spec_file, cron, off_peak, params_json, catch_up, created_at, last_fire_at";

fn schedule_of(r: &sqlx::any::AnyRow) -> Result<Schedule> {
    Ok(Schedule {
        name: r.try_get("name")?,
        spec_file: r.try_get("spec_file")?,
        cron: r.try_get("cron")?,
        off_peak: r.try_get("off_peak")?,
        params_json: r.try_get("params_json")?,
        catch_up: r.try_get("catch_up")?,
        created_at: r.try_get("created_at")?,
        last_fire_at: r.try_get("last_fire_at")?,
    })
}

impl Store {
    /// Adds a schedule; a name already taken is a conflict.
    pub async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(&format!(
            "INSERT INTO schedules ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO NOTHING"
        ))
        .bind(&s.name)
        .bind(&s.spec_file)
        .bind(&s.cron)
        .bind(&s.off_peak)
        .bind(&s.params_json)
        .bind(&s.catch_up)
        .bind(s.created_at)
        .bind(s.last_fire_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a schedule named '{}' exists; remove it first (`weir schedule remove {}`) or pick another --name",
                s.name, s.name
            )));
        }
        let params: serde_json::Value = serde_json::from_str(&s.params_json).unwrap_or_default();
        crate::audit::append(
            &mut tx,
            "schedule.add",
            &s.name,
            serde_json::Value::Null,
            serde_json::json!({
                "spec_file": s.spec_file, "cron": s.cron, "off_peak": s.off_peak,
                "params": params, "catch_up": s.catch_up,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(schedule_of).collect()
    }

    /// Removes a schedule and its history; false when there was none.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM schedule_firings WHERE schedule = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let cron: Option<String> = sqlx::query_scalar("SELECT cron FROM schedules WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if cron.is_some() {
            crate::audit::append(
                &mut tx,
                "schedule.remove",
                name,
                serde_json::json!({ "cron": cron }),
                serde_json::Value::Null,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records the firings dealt with up to `last_fire_at`, moving the
    /// schedule on, in one transaction: a firing is recorded exactly once.
    /// False when another scheduler moved it first.
    pub async fn advance_schedule(
        &self,
        name: &str,
        from: i64,
        last_fire_at: i64,
        firings: &[Firing],
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let moved = sqlx::query(
            "UPDATE schedules SET last_fire_at = $1 WHERE name = $2 AND last_fire_at = $3",
        )
        .bind(last_fire_at)
        .bind(name)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        for f in firings {
            sqlx::query(
                "INSERT INTO schedule_firings (id, schedule, scheduled_for, fired_at, outcome, run_id, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&f.id)
            .bind(&f.schedule)
            .bind(f.scheduled_for)
            .bind(f.fired_at)
            .bind(&f.outcome)
            .bind(&f.run_id)
            .bind(&f.detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// How a started firing ended.
    pub async fn finish_firing(
        &self,
        id: &str,
        outcome: &str,
        run_id: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE schedule_firings SET outcome = $1, run_id = $2, \
             detail = COALESCE(NULLIF($3, ''), detail) WHERE id = $4",
        )
        .bind(outcome)
        .bind(run_id)
        .bind(detail)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A schedule's firings, newest first.
    pub async fn firings(&self, schedule: &str, limit: i64) -> Result<Vec<Firing>> {
        let rows = sqlx::query(
            "SELECT id, schedule, scheduled_for, fired_at, outcome, run_id, detail FROM schedule_firings \
             WHERE schedule = $1 ORDER BY fired_at DESC, scheduled_for DESC LIMIT $2",
        )
        .bind(schedule)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Firing {
                    id: r.try_get("id")?,
                    schedule: r.try_get("schedule")?,
                    scheduled_for: r.try_get("scheduled_for")?,
                    fired_at: r.try_get("fired_at")?,
                    outcome: r.try_get("outcome")?,
                    run_id: r.try_get("run_id")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
