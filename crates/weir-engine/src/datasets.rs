//! A step's dataset outputs: each is profiled (an ingest profiles the table
//! it has in memory; other tables are read back), compared with the
//! dataset's latest version, refused when its schema changed more than
//! `schema.evolution` allows, and recorded with the step's outcome.

use std::collections::BTreeMap;
use std::path::Path;

use weir_core::pipeline::Step;
use weir_data::{Evolution, Profile, SchemaChange};
use weir_store::NewDatasetVersion;

use crate::ops::StepLog;
use crate::{Context, EngineError};

pub(crate) fn evolution(step: &Step) -> Evolution {
    match step.schema_evolution.as_deref() {
        Some("strict") => Evolution::Strict,
        Some("additive") => Evolution::Additive,
        _ => Evolution::Any,
    }
}

/// The dataset versions `step`'s outputs make. `profiled` holds profiles
/// the op computed as it wrote the tables.
pub(crate) async fn versions(
    ctx: &Context,
    step: &Step,
    outputs_dir: &Path,
    mut profiled: BTreeMap<String, Profile>,
    log: &StepLog,
) -> Result<Vec<NewDatasetVersion>, EngineError> {
    let policy = evolution(step);
    let mut versions = Vec::new();
    for (output, name) in &step.datasets {
        let profile = match profiled.remove(output) {
            Some(p) => p,
            None => {
                let path = outputs_dir.join(output);
                tokio::task::spawn_blocking(move || -> Result<Profile, EngineError> {
                    let table = weir_data::read_parquet(&path).map_err(|e| {
                        EngineError::StepFailed(format!(
                            "output '{}' is marked as a dataset but is not a Parquet table: {e}\n  hint: write the table as Parquet, or drop it from `datasets:`",
                            path.file_name().unwrap_or_default().to_string_lossy()
                        ))
                    })?;
                    Ok(weir_data::profile(&table)?)
                })
                .await
                .map_err(|e| EngineError::StepFailed(format!("profiling panicked: {e}")))??
            }
        };
        let last = ctx.store.latest_dataset_version(name).await?;
        let changes: Vec<SchemaChange> = match &last {
            Some(last) => {
                let before: Profile = serde_json::from_str(&last.profile_json)
                    .map_err(|e| EngineError::corrupt("dataset_versions.profile_json", e))?;
                weir_data::schema_changes(&before, &profile)
            }
            None => Vec::new(),
        };
        match (&last, changes.is_empty()) {
            (None, _) => log.line(format!(
                "dataset {name}: {} rows x {} columns, its first version",
                profile.rows,
                profile.columns.len()
            )),
            (Some(last), true) => log.line(format!(
                "dataset {name}: {} rows x {} columns; schema as in version {}",
                profile.rows,
                profile.columns.len(),
                last.version
            )),
            (Some(last), false) => {
                log.line(format!(
                    "dataset {name}: {} rows x {} columns; schema changed since version {}:",
                    profile.rows,
                    profile.columns.len(),
                    last.version
                ));
                for change in &changes {
                    log.line(format!("  {change}"));
                }
            }
        }
        let refused = policy.refused(&changes);
        if let (Some(last), false) = (&last, refused.is_empty()) {
            let listed: Vec<String> = refused.iter().map(ToString::to_string).collect();
            return Err(EngineError::StepFailed(format!(
                "dataset {name}: the new table {} against version {}, and `schema: {{ evolution: {} }}` refuses it\n  hint: fix the data, or accept the change with `evolution: {}`",
                listed.join(", "),
                last.version,
                step.schema_evolution.as_deref().unwrap_or("any"),
                if policy == Evolution::Strict && refused.iter().all(|c| !c.breaking()) { "additive" } else { "any" },
            )));
        }
        versions.push(NewDatasetVersion {
            name: name.clone(),
            output: output.clone(),
            rows: profile.rows as i64,
            columns: profile.columns.len() as i64,
            profile_json: serde_json::to_string(&profile).expect("a profile serializes"),
            changes_json: serde_json::to_string(&changes).expect("changes serialize"),
        });
    }
    Ok(versions)
}
