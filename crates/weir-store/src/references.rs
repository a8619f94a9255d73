//! Every place metadata names an artifact blob, with what names it: the
//! set `weir fsck` verifies and `weir gc` keeps. A new table that holds a
//! digest belongs here, or gc would take its blobs.

use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Reference {
    pub digest: String,
    /// `file` or `dir` where the artifact was recorded with its kind;
    /// `None` where only the digest was kept (read the blob to know).
    pub kind: Option<String>,
    /// What names it, for people: `run 01a2... step train output model`.
    pub by: String,
}

/// Names a reference from its row.
type Describe = fn(&sqlx::any::AnyRow) -> Result<String>;

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Store {
    /// Every reference to a blob, in no particular order (a blob can be
    /// named many times).
    pub async fn artifact_references(&self) -> Result<Vec<Reference>> {
        let mut out = Vec::new();
        let kind_of = "(SELECT a.kind FROM artifacts a WHERE a.digest = x.digest)";
        let rows = sqlx::query(&format!(
            "SELECT x.digest, {kind_of} AS kind, s.run_id, s.step, x.name \
             FROM step_outputs x JOIN step_runs s ON s.id = x.step_run_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let (run, step, name): (String, String, String) =
                (r.try_get("run_id")?, r.try_get("step")?, r.try_get("name")?);
            out.push(Reference {
                digest: r.try_get("digest")?,
                kind: r.try_get("kind")?,
                by: format!("run {} step {step} output {name}", short(&run)),
            });
        }
        let rows = sqlx::query(
            "SELECT run_id, step, log_digest, checkpoint_digest FROM step_runs \
             WHERE log_digest IS NOT NULL OR checkpoint_digest IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let (run, step): (String, String) = (r.try_get("run_id")?, r.try_get("step")?);
            if let Some(digest) = r.try_get::<Option<String>, _>("log_digest")? {
                out.push(Reference {
                    digest,
                    kind: Some("file".into()),
                    by: format!("run {} step {step} log", short(&run)),
                });
            }
            if let Some(digest) = r.try_get::<Option<String>, _>("checkpoint_digest")? {
                out.push(Reference {
                    digest,
                    kind: Some("dir".into()),
                    by: format!("run {} step {step} checkpoint", short(&run)),
                });
            }
        }
        let simple: [(&str, Describe); 5] = [
            (
                "SELECT name, version, x.digest, {kind} AS kind FROM model_versions x \
                 WHERE x.digest IS NOT NULL",
                |r| {
                    Ok(format!(
                        "model {}:{}",
                        r.try_get::<String, _>("name")?,
                        r.try_get::<i64, _>("version")?
                    ))
                },
            ),
            (
                "SELECT name, version, x.digest, {kind} AS kind FROM dataset_versions x",
                |r| {
                    Ok(format!(
                        "dataset {}@{}",
                        r.try_get::<String, _>("name")?,
                        r.try_get::<i64, _>("version")?
                    ))
                },
            ),
            (
                "SELECT target, x.digest, {kind} AS kind FROM prediction_segments x",
                |r| {
                    Ok(format!(
                        "prediction log of {}",
                        r.try_get::<String, _>("target")?
                    ))
                },
            ),
            (
                "SELECT path, x.digest, {kind} AS kind FROM artifact_paths x",
                |r| {
                    Ok(format!(
                        "tracking artifact {}",
                        r.try_get::<String, _>("path")?
                    ))
                },
            ),
            (
                "SELECT name, version, key, x.value AS digest, 'file' AS kind \
                 FROM model_version_tags x WHERE key IN ('weir.card.markdown', 'weir.card.html')",
                |r| {
                    Ok(format!(
                        "model {}:{} {}",
                        r.try_get::<String, _>("name")?,
                        r.try_get::<i64, _>("version")?,
                        r.try_get::<String, _>("key")?
                    ))
                },
            ),
        ];
        for (sql, by) in simple {
            let sql = sql.replace("{kind}", kind_of);
            for r in sqlx::query(&sql).fetch_all(&self.pool).await? {
                out.push(Reference {
                    digest: r.try_get("digest")?,
                    kind: r.try_get("kind")?,
                    by: by(&r)?,
                });
            }
        }
        let rows = sqlx::query(
            "SELECT run_id, step, number, outputs_json FROM study_trials \
             WHERE outputs_json IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let outputs: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&r.try_get::<String, _>("outputs_json")?).unwrap_or_default();
            let (run, step, number): (String, String, i64) = (
                r.try_get("run_id")?,
                r.try_get("step")?,
                r.try_get("number")?,
            );
            for (name, o) in outputs {
                if let Some(digest) = o["digest"].as_str() {
                    out.push(Reference {
                        digest: digest.to_string(),
                        kind: o["kind"].as_str().map(str::to_string),
                        by: format!(
                            "run {} step {step} trial {number} output {name}",
                            short(&run)
                        ),
                    });
                }
            }
        }
        Ok(out)
    }
}
