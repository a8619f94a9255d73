//! The model registry as MLflow's API sees it: registered models with
//! descriptions, tags and aliases; versions with stages, tags and
//! descriptions. Versions themselves are allocated by [`crate::models`], so
//! pipelines and MLflow clients number them from one sequence.

use sqlx::Row;

use crate::filter::{Clause, Comparator, Entity, Value};
use crate::models::{insert_model_version, ModelVersion, NewModelVersion};
use crate::tracking::{value_sql, Binds};
use crate::{Result, Store, StoreError};

#[derive(Clone, Debug)]
pub struct RegisteredModel {
    pub name: String,
    pub created_at: i64,
    pub last_updated_at: i64,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    pub aliases: Vec<(String, i64)>,
    /// The newest version in each stage.
    pub latest_versions: Vec<ModelVersion>,
}

/// A version with what MLflow shows beside it.
#[derive(Clone, Debug)]
pub struct VersionDetail {
    pub version: ModelVersion,
    pub tags: Vec<(String, String)>,
    pub aliases: Vec<String>,
}

pub const STAGES: &[&str] = &["None", "Staging", "Production", "Archived"];

fn model_not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: "registered model",
        id: name.to_string(),
        hint: "list models with `weir models list`".into(),
    }
}

fn version_not_found(name: &str, version: i64) -> StoreError {
    StoreError::NotFound {
        kind: "model version",
        id: format!("{name}/{version}"),
        hint: format!("list the versions with `weir models show {name}`"),
    }
}

/// A tag clause over `from` (a table aliased `t` and its join condition).
/// As in MLflow's registry, `tags.k != 'v'` also matches what has no tag `k`:
/// that is how clients hide prompts (`tag.mlflow.prompt.is_prompt != 'true'`).
fn tag_condition(clause: &Clause, from: &str, binds: &mut Binds) -> String {
    let key = binds.text(&clause.key);
    if clause.comparator == Comparator::Ne {
        if let Value::Text(v) = &clause.value {
            let v = binds.text(v);
            return format!(
                "NOT EXISTS (SELECT 1 FROM {from} AND t.key = {key} AND t.value = {v})"
            );
        }
    }
    let cond = value_sql(clause, "t.value", binds);
    format!("EXISTS (SELECT 1 FROM {from} AND t.key = {key} AND {cond})")
}

impl Store {
    pub async fn create_registered_model(
        &self,
        name: &str,
        description: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<RegisteredModel> {
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO models (name, created_at, last_updated_at, description) VALUES ($1, $2, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .bind(description)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::AlreadyExists {
                kind: "registered model",
                id: name.to_string(),
            });
        }
        for (k, v) in tags {
            sqlx::query("INSERT INTO model_tags (name, key, value) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.registered_model(name).await
    }

    pub async fn registered_model(&self, name: &str) -> Result<RegisteredModel> {
        let row = sqlx::query(
            "SELECT name, created_at, COALESCE(last_updated_at, created_at) AS updated, description \
             FROM models WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| model_not_found(name))?;
        let tags = sqlx::query("SELECT key, value FROM model_tags WHERE name = $1 ORDER BY key")
            .bind(name)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
            .collect::<Result<Vec<_>>>()?;
        let aliases =
            sqlx::query("SELECT alias, version FROM model_aliases WHERE name = $1 ORDER BY alias")
                .bind(name)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("alias")?, r.try_get("version")?)))
                .collect::<Result<Vec<_>>>()?;
        Ok(RegisteredModel {
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            last_updated_at: row.try_get("updated")?,
            description: row.try_get("description")?,
            tags,
            aliases,
            latest_versions: self.latest_versions(name, &[]).await?,
        })
    }

    /// The newest version in each of `stages` (all stages when empty).
    pub async fn latest_versions(
        &self,
        name: &str,
        stages: &[String],
    ) -> Result<Vec<ModelVersion>> {
        let all = self.versions_of(name).await?;
        let mut out: Vec<ModelVersion> = Vec::new();
        for v in all {
            if !stages.is_empty() && !stages.iter().any(|s| s.eq_ignore_ascii_case(&v.stage)) {
                continue;
            }
            match out.iter_mut().find(|o| o.stage == v.stage) {
                Some(o) if o.version < v.version => *o = v,
                Some(_) => {}
                None => out.push(v),
            }
        }
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    async fn versions_of(&self, name: &str) -> Result<Vec<ModelVersion>> {
        match self.model_versions(name).await {
            Ok(v) => Ok(v),
            // A registered model without versions yet.
            Err(StoreError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub async fn rename_registered_model(&self, name: &str, new_name: &str) -> Result<()> {
        self.registered_model(name).await?;
        if self.registered_model(new_name).await.is_ok() {
            return Err(StoreError::AlreadyExists {
                kind: "registered model",
                id: new_name.to_string(),
            });
        }
        let mut tx = self.write_tx().await?;
        // A key referenced by other tables: copy the row, move the children, drop the old row.
        sqlx::query(
            "INSERT INTO models (name, created_at, last_updated_at, description) \
             SELECT $1, created_at, $2, description FROM models WHERE name = $3",
        )
        .bind(new_name)
        .bind(weir_core::now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        for table in [
            "model_versions",
            "model_tags",
            "model_aliases",
            "model_version_tags",
        ] {
            sqlx::query(&format!("UPDATE {table} SET name = $1 WHERE name = $2"))
                .bind(new_name)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM models WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn update_registered_model(&self, name: &str, description: &str) -> Result<()> {
        self.registered_model(name).await?;
        sqlx::query("UPDATE models SET description = $1, last_updated_at = $2 WHERE name = $3")
            .bind(description)
            .bind(weir_core::now_ms())
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn delete_registered_model(&self, name: &str) -> Result<()> {
        self.registered_model(name).await?;
        let mut tx = self.write_tx().await?;
        for table in [
            "model_version_tags",
            "model_aliases",
            "model_tags",
            "model_versions",
            "models",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE name = $1"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        crate::audit::append(
            &mut tx,
            "model.delete",
            name,
            serde_json::json!({ "name": name }),
            serde_json::Value::Null,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Registered models matching `name` clauses (=, LIKE, ILIKE) and tags, by name.
    pub async fn search_registered_models(
        &self,
        filter: &[Clause],
        max_results: i64,
        offset: i64,
    ) -> Result<(Vec<RegisteredModel>, bool)> {
        let mut binds = Binds::new(self.backend);
        let mut sql = String::from("SELECT name FROM models m WHERE 1 = 1");
        for clause in filter {
            sql += " AND ";
            sql += &match clause.entity {
                Entity::Tag => {
                    tag_condition(clause, "model_tags t WHERE t.name = m.name", &mut binds)
                }
                _ => value_sql(clause, "m.name", &mut binds),
            };
        }
        sql += " ORDER BY m.name";
        let (rows, more) = self.page(sql, binds, max_results, offset).await?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(
                self.registered_model(&row.try_get::<String, _>("name")?)
                    .await?,
            );
        }
        Ok((out, more))
    }

    pub async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> Result<()> {
        self.registered_model(name).await?;
        sqlx::query(
            "INSERT INTO model_tags (name, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()> {
        self.registered_model(name).await?;
        sqlx::query("DELETE FROM model_tags WHERE name = $1 AND key = $2")
            .bind(name)
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn set_model_alias(&self, name: &str, alias: &str, version: i64) -> Result<()> {
        let detail = self.version_detail(name, version).await?;
        if alias == "champion" {
            refuse_rejected(&detail, "become champion")?;
        }
        let mut tx = self.write_tx().await?;
        let before = alias_version(&mut tx, name, alias).await?;
        sqlx::query(
            "INSERT INTO model_aliases (name, alias, version) VALUES ($1, $2, $3) \
             ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
        )
        .bind(name)
        .bind(alias)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(
            &mut tx,
            "alias.set",
            &format!("{name}@{alias}"),
            serde_json::json!({ "version": before }),
            serde_json::json!({ "version": version }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_model_alias(&self, name: &str, alias: &str) -> Result<()> {
        self.registered_model(name).await?;
        let mut tx = self.write_tx().await?;
        let before = alias_version(&mut tx, name, alias).await?;
        sqlx::query("DELETE FROM model_aliases WHERE name = $1 AND alias = $2")
            .bind(name)
            .bind(alias)
            .execute(&mut *tx)
            .await?;
        if before.is_some() {
            crate::audit::append(
                &mut tx,
                "alias.delete",
                &format!("{name}@{alias}"),
                serde_json::json!({ "version": before }),
                serde_json::Value::Null,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn version_by_alias(&self, name: &str, alias: &str) -> Result<VersionDetail> {
        let row = sqlx::query("SELECT version FROM model_aliases WHERE name = $1 AND alias = $2")
            .bind(name)
            .bind(alias)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "model alias",
                id: format!("{name}@{alias}"),
                hint: format!("set it with MlflowClient().set_registered_model_alias('{name}', '{alias}', VERSION)"),
            })?;
        self.version_detail(name, row.try_get("version")?).await
    }

    /// Registers a version of an existing registered model (MLflow's rule;
    /// pipelines create the model on first registration instead).
    pub async fn create_model_version(&self, new: &NewModelVersion) -> Result<VersionDetail> {
        self.registered_model(&new.name).await?;
        let mut tx = self.write_tx().await?;
        let version = insert_model_version(&mut tx, new, weir_core::now_ms()).await?;
        tx.commit().await?;
        self.version_detail(&new.name, version.version).await
    }

    pub async fn version_detail(&self, name: &str, version: i64) -> Result<VersionDetail> {
        let v = self
            .model_version(name, Some(version))
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => version_not_found(name, version),
                other => other,
            })?;
        let tags = sqlx::query(
            "SELECT key, value FROM model_version_tags WHERE name = $1 AND version = $2 ORDER BY key",
        )
        .bind(name)
        .bind(version)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
        .collect::<Result<Vec<_>>>()?;
        let aliases = sqlx::query(
            "SELECT alias FROM model_aliases WHERE name = $1 AND version = $2 ORDER BY alias",
        )
        .bind(name)
        .bind(version)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("alias")?))
        .collect::<Result<Vec<_>>>()?;
        Ok(VersionDetail {
            version: v,
            tags,
            aliases,
        })
    }

    pub async fn update_model_version(
        &self,
        name: &str,
        version: i64,
        description: &str,
    ) -> Result<()> {
        self.version_detail(name, version).await?;
        sqlx::query(
            "UPDATE model_versions SET description = $1, last_updated_at = $2 WHERE name = $3 AND version = $4",
        )
        .bind(description)
        .bind(weir_core::now_ms())
        .bind(name)
        .bind(version)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn delete_model_version(&self, name: &str, version: i64) -> Result<()> {
        let before = self.version_detail(name, version).await?;
        let mut tx = self.write_tx().await?;
        for table in ["model_version_tags", "model_aliases", "model_versions"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE name = $1 AND version = $2"
            ))
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        crate::audit::append(
            &mut tx,
            "model.delete_version",
            &format!("{name}:{version}"),
            serde_json::json!({ "digest": before.version.digest, "aliases": before.aliases }),
            serde_json::Value::Null,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves a version to a stage; optionally archives the others in it.
    pub async fn transition_model_version_stage(
        &self,
        name: &str,
        version: i64,
        stage: &str,
        archive_existing: bool,
    ) -> Result<()> {
        let before = self.version_detail(name, version).await?;
        let now = weir_core::now_ms();
        let mut tx = self.write_tx().await?;
        if archive_existing && matches!(stage, "Staging" | "Production") {
            sqlx::query(
                "UPDATE model_versions SET stage = 'Archived', last_updated_at = $1 \
                 WHERE name = $2 AND stage = $3 AND version <> $4",
            )
            .bind(now)
            .bind(name)
            .bind(stage)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE model_versions SET stage = $1, last_updated_at = $2 WHERE name = $3 AND version = $4",
        )
        .bind(stage)
        .bind(now)
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(
            &mut tx,
            "model.stage",
            &format!("{name}:{version}"),
            serde_json::json!({ "stage": before.version.stage }),
            serde_json::json!({ "stage": stage, "archive_existing": archive_existing }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_model_version_tag(
        &self,
        name: &str,
        version: i64,
        key: &str,
        value: &str,
    ) -> Result<()> {
        self.version_detail(name, version).await?;
        sqlx::query(
            "INSERT INTO model_version_tags (name, version, key, value) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(version)
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn delete_model_version_tag(
        &self,
        name: &str,
        version: i64,
        key: &str,
    ) -> Result<()> {
        self.version_detail(name, version).await?;
        sqlx::query("DELETE FROM model_version_tags WHERE name = $1 AND version = $2 AND key = $3")
            .bind(name)
            .bind(version)
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Versions matching clauses over name, run_id, source, version and
    /// tags; newest first.
    pub async fn search_model_versions(
        &self,
        filter: &[Clause],
        max_results: i64,
        offset: i64,
    ) -> Result<(Vec<VersionDetail>, bool)> {
        let mut binds = Binds::new(self.backend);
        let mut sql = String::from("SELECT name, version FROM model_versions v WHERE 1 = 1");
        for clause in filter {
            sql += " AND ";
            sql += &match clause.entity {
                Entity::Tag => tag_condition(
                    clause,
                    "model_version_tags t WHERE t.name = v.name AND t.version = v.version",
                    &mut binds,
                ),
                _ => {
                    let column = match clause.key.as_str() {
                        "run_id" => "v.run_id",
                        "source" | "source_path" => "v.source",
                        "version_number" | "version" => "v.version",
                        "model_id" => "v.model_id",
                        _ => "v.name",
                    };
                    value_sql(clause, column, &mut binds)
                }
            };
        }
        sql += " ORDER BY v.name, v.version DESC";
        let (rows, more) = self.page(sql, binds, max_results, offset).await?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(
                self.version_detail(&row.try_get::<String, _>("name")?, row.try_get("version")?)
                    .await?,
            );
        }
        Ok((out, more))
    }
}

/// The version an alias names now, read in the change's transaction.
async fn alias_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    alias: &str,
) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT version FROM model_aliases WHERE name = $1 AND alias = $2")
            .bind(name)
            .bind(alias)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// A version its registration gates rejected is kept on record, never
/// promoted: `what` names the promotion refused.
pub fn refuse_rejected(detail: &VersionDetail, what: &str) -> Result<()> {
    let tag = |k: &str| {
        detail
            .tags
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if tag("weir.gates") == Some("rejected") {
        return Err(StoreError::Invalid(format!(
            "version {} of {} was rejected by its gates and cannot {what}: {}",
            detail.version.version,
            detail.version.name,
            tag("weir.gates.reasons").unwrap_or("(no reasons recorded)")
        )));
    }
    Ok(())
}
