//! `/api/2.0/mlflow/registered-models/*` and `/model-versions/*`: MLflow's
//! model registry over Weir's, so versions registered by pipelines and by
//! MLflow clients share names, numbers, aliases and stages.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use weir_store::filter;
use weir_store::registry::{RegisteredModel, VersionDetail, STAGES};
use weir_store::{ModelVersion, NewModelVersion};

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::tracking::{offset_of, page_token};
use crate::{json as shape, App};

type Reply = ApiResult<Json<Value>>;

fn version_json(d: &VersionDetail) -> Value {
    let v = &d.version;
    let mut o = Map::new();
    o.insert("name".into(), json!(v.name));
    o.insert("version".into(), json!(v.version.to_string()));
    o.insert("creation_timestamp".into(), json!(v.created_at));
    o.insert("last_updated_timestamp".into(), json!(v.last_updated_at));
    o.insert("current_stage".into(), json!(v.stage));
    o.insert("source".into(), json!(v.source));
    o.insert("status".into(), json!(v.status));
    for (k, val) in [
        ("user_id", &v.user_id),
        ("description", &v.description),
        ("run_id", &v.run_id),
        ("model_id", &v.model_id),
    ] {
        if let Some(val) = val {
            o.insert(k.into(), json!(val));
        }
    }
    o.insert("tags".into(), shape::key_values(&d.tags));
    o.insert("aliases".into(), json!(d.aliases));
    Value::Object(o)
}

fn plain_version(v: &ModelVersion) -> Value {
    version_json(&VersionDetail {
        version: v.clone(),
        tags: Vec::new(),
        aliases: Vec::new(),
    })
}

fn model_json(m: &RegisteredModel) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(m.name));
    o.insert("creation_timestamp".into(), json!(m.created_at));
    o.insert("last_updated_timestamp".into(), json!(m.last_updated_at));
    if let Some(d) = &m.description {
        o.insert("description".into(), json!(d));
    }
    o.insert(
        "latest_versions".into(),
        json!(m
            .latest_versions
            .iter()
            .map(plain_version)
            .collect::<Vec<_>>()),
    );
    o.insert("tags".into(), shape::key_values(&m.tags));
    o.insert(
        "aliases".into(),
        json!(m
            .aliases
            .iter()
            .map(|(a, v)| json!({ "alias": a, "version": v.to_string() }))
            .collect::<Vec<_>>()),
    );
    Value::Object(o)
}

fn version_of(p: &Params) -> ApiResult<i64> {
    let text = p.str("version")?;
    text.parse::<i64>().map_err(|_| {
        ApiError::InvalidParameter(format!("Model version must be an integer, got '{text}'"))
    })
}

fn name_of(p: &Params) -> ApiResult<String> {
    let name = p.str("name")?;
    if name.trim().is_empty() {
        return Err(ApiError::InvalidParameter(
            "Registered model name cannot be empty.".into(),
        ));
    }
    Ok(name)
}

pub async fn create_model(State(app): State<App>, p: Params) -> Reply {
    let name = name_of(&p)?;
    let m = app
        .store
        .create_registered_model(
            &name,
            p.opt_str("description").as_deref(),
            &p.key_values("tags")?,
        )
        .await?;
    Ok(Json(json!({ "registered_model": model_json(&m) })))
}

pub async fn get_model(State(app): State<App>, p: Params) -> Reply {
    let m = app.store.registered_model(&name_of(&p)?).await?;
    Ok(Json(json!({ "registered_model": model_json(&m) })))
}

pub async fn rename_model(State(app): State<App>, p: Params) -> Reply {
    let name = name_of(&p)?;
    let new_name = p.str("new_name")?;
    app.store.rename_registered_model(&name, &new_name).await?;
    let m = app.store.registered_model(&new_name).await?;
    Ok(Json(json!({ "registered_model": model_json(&m) })))
}

pub async fn update_model(State(app): State<App>, p: Params) -> Reply {
    let name = name_of(&p)?;
    app.store
        .update_registered_model(&name, &p.opt_str("description").unwrap_or_default())
        .await?;
    let m = app.store.registered_model(&name).await?;
    Ok(Json(json!({ "registered_model": model_json(&m) })))
}

pub async fn delete_model(State(app): State<App>, p: Params) -> Reply {
    app.store.delete_registered_model(&name_of(&p)?).await?;
    Ok(Json(json!({})))
}

fn registry_filter(p: &Params) -> ApiResult<Vec<filter::Clause>> {
    filter::parse_registry_filter(&p.opt_str("filter").unwrap_or_default())
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))
}

pub async fn search_models(State(app): State<App>, p: Params) -> Reply {
    let max = p.opt_i64("max_results")?.unwrap_or(100).clamp(1, 1000);
    let offset = offset_of(&p)?;
    let (models, more) = app
        .store
        .search_registered_models(&registry_filter(&p)?, max, offset)
        .await?;
    let mut out = json!({ "registered_models": models.iter().map(model_json).collect::<Vec<_>>() });
    if more {
        out["next_page_token"] = json!(page_token(offset + max));
    }
    Ok(Json(out))
}

pub async fn latest_versions(State(app): State<App>, p: Params) -> Reply {
    let name = name_of(&p)?;
    app.store.registered_model(&name).await?;
    let versions = app
        .store
        .latest_versions(&name, &p.strings("stages"))
        .await?;
    Ok(Json(
        json!({ "model_versions": versions.iter().map(plain_version).collect::<Vec<_>>() }),
    ))
}

pub async fn set_model_tag(State(app): State<App>, p: Params) -> Reply {
    app.store
        .set_registered_model_tag(&name_of(&p)?, &p.str("key")?, &p.str("value")?)
        .await?;
    Ok(Json(json!({})))
}

pub async fn delete_model_tag(State(app): State<App>, p: Params) -> Reply {
    app.store
        .delete_registered_model_tag(&name_of(&p)?, &p.str("key")?)
        .await?;
    Ok(Json(json!({})))
}

fn check_alias(alias: &str) -> ApiResult<()> {
    let reserved = alias.eq_ignore_ascii_case("latest")
        || (alias.len() > 1
            && alias.starts_with(['v', 'V'])
            && alias[1..].chars().all(|c| c.is_ascii_digit()));
    let valid = !alias.is_empty()
        && alias.len() <= 255
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if reserved || !valid {
        return Err(ApiError::InvalidParameter(format!(
            "Invalid alias name '{alias}': use letters, digits, '_' and '-'; 'latest' and 'v<number>' are reserved"
        )));
    }
    Ok(())
}

pub async fn set_alias(State(app): State<App>, p: Params) -> Reply {
    let alias = p.str("alias")?;
    check_alias(&alias)?;
    let (name, version) = (name_of(&p)?, version_of(&p)?);
    if app.approvals.aliases.contains(&alias) {
        return hold_alias(&app, &name, &alias, version).await;
    }
    app.store.set_model_alias(&name, &alias, version).await?;
    Ok(Json(json!({})))
}

/// A protected alias is not moved: the request is recorded for someone
/// else to approve, and the client gets an error that says so (a success
/// would let a script believe the alias moved).
async fn hold_alias(app: &App, name: &str, alias: &str, version: i64) -> Reply {
    match app.store.version_by_alias(name, alias).await {
        Ok(current) if current.version.version == version => return Ok(Json(json!({}))),
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    // Refused now if it could never be applied (a version its gates rejected).
    weir_store::registry::refuse_rejected(
        &app.store.version_detail(name, version).await?,
        &format!("become {alias}"),
    )?;
    let payload = json!({ "name": name, "alias": alias, "version": version });
    let a = app
        .store
        .request_approval(
            "alias.set",
            &format!("{name}@{alias}"),
            &payload,
            &weir_store::audit::actor(),
        )
        .await?;
    Err(ApiError::PermissionDenied(format!(
        "alias '{alias}' is protected ([approvals] in weir.toml): setting {name}@{alias} to version {version} is held as approval {} until someone else runs `weir approvals approve {}`",
        a.id, a.id
    )))
}

pub async fn delete_alias(State(app): State<App>, p: Params) -> Reply {
    app.store
        .delete_model_alias(&name_of(&p)?, &p.str("alias")?)
        .await?;
    Ok(Json(json!({})))
}

pub async fn get_by_alias(State(app): State<App>, p: Params) -> Reply {
    let d = app
        .store
        .version_by_alias(&name_of(&p)?, &p.str("alias")?)
        .await?;
    Ok(Json(json!({ "model_version": version_json(&d) })))
}

pub async fn create_version(State(app): State<App>, p: Params) -> Reply {
    let name = name_of(&p)?;
    let source = p.str("source")?;
    let mut run_id = p.opt_str("run_id").filter(|r| !r.is_empty());
    let model_id = p.opt_str("model_id").filter(|m| !m.is_empty()).or_else(|| {
        source
            .strip_prefix("models:/")
            .filter(|id| id.starts_with("m-"))
            .map(|id| id.trim_end_matches('/').to_string())
    });
    // A version made from a logged model comes from the run that logged it.
    if let (None, Some(id)) = (&run_id, &model_id) {
        run_id = app.store.logged_model(id).await?.source_run_id;
    }
    if let Some(run) = &run_id {
        app.store.run_info(run).await?;
    }
    let d = app
        .store
        .create_model_version(&NewModelVersion {
            name,
            source,
            run_id,
            model_id,
            metrics_json: "{}".into(),
            lineage_json: "{}".into(),
            description: p.opt_str("description"),
            user_id: p.opt_str("user_id"),
            tags: p.key_values("tags")?,
            ..Default::default()
        })
        .await?;
    Ok(Json(json!({ "model_version": version_json(&d) })))
}

pub async fn get_version(State(app): State<App>, p: Params) -> Reply {
    let d = app
        .store
        .version_detail(&name_of(&p)?, version_of(&p)?)
        .await?;
    Ok(Json(json!({ "model_version": version_json(&d) })))
}

pub async fn update_version(State(app): State<App>, p: Params) -> Reply {
    let (name, version) = (name_of(&p)?, version_of(&p)?);
    app.store
        .update_model_version(
            &name,
            version,
            &p.opt_str("description").unwrap_or_default(),
        )
        .await?;
    let d = app.store.version_detail(&name, version).await?;
    Ok(Json(json!({ "model_version": version_json(&d) })))
}

pub async fn delete_version(State(app): State<App>, p: Params) -> Reply {
    app.store
        .delete_model_version(&name_of(&p)?, version_of(&p)?)
        .await?;
    Ok(Json(json!({})))
}

pub async fn search_versions(State(app): State<App>, p: Params) -> Reply {
    let max = p.opt_i64("max_results")?.unwrap_or(10000).clamp(1, 200_000);
    let offset = offset_of(&p)?;
    let (versions, more) = app
        .store
        .search_model_versions(&registry_filter(&p)?, max, offset)
        .await?;
    let mut out =
        json!({ "model_versions": versions.iter().map(version_json).collect::<Vec<_>>() });
    if more {
        out["next_page_token"] = json!(page_token(offset + max));
    }
    Ok(Json(out))
}

/// Where a version's files are, as a URI the client can download from.
pub async fn download_uri(State(app): State<App>, p: Params) -> Reply {
    let d = app
        .store
        .version_detail(&name_of(&p)?, version_of(&p)?)
        .await?;
    let source = &d.version.source;
    let uri = if let Some(id) = source
        .strip_prefix("models:/")
        .filter(|s| s.starts_with("m-"))
    {
        app.store
            .logged_model(id.trim_end_matches('/'))
            .await?
            .artifact_uri
    } else if let Some(rest) = source.strip_prefix("runs:/") {
        let (run, path) = rest.split_once('/').unwrap_or((rest, ""));
        let info = app.store.run_info(run).await?;
        format!("{}/{}", info.artifact_uri.trim_end_matches('/'), path)
    } else {
        source.clone()
    };
    Ok(Json(json!({ "artifact_uri": uri })))
}

pub async fn transition_stage(State(app): State<App>, p: Params) -> Reply {
    let (name, version) = (name_of(&p)?, version_of(&p)?);
    let wanted = p.str("stage")?;
    let stage = STAGES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(&wanted))
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "Invalid Model Version stage: {wanted}. Value must be one of {}.",
                STAGES.join(", ")
            ))
        })?;
    let archive = matches!(
        p.0.get("archive_existing_versions"),
        Some(Value::Bool(true))
    ) || p.opt_str("archive_existing_versions").as_deref() == Some("true");
    app.store
        .transition_model_version_stage(&name, version, stage, archive)
        .await?;
    let d = app.store.version_detail(&name, version).await?;
    Ok(Json(json!({ "model_version": version_json(&d) })))
}

pub async fn set_version_tag(State(app): State<App>, p: Params) -> Reply {
    app.store
        .set_model_version_tag(
            &name_of(&p)?,
            version_of(&p)?,
            &p.str("key")?,
            &p.str("value")?,
        )
        .await?;
    Ok(Json(json!({})))
}

pub async fn delete_version_tag(State(app): State<App>, p: Params) -> Reply {
    app.store
        .delete_model_version_tag(&name_of(&p)?, version_of(&p)?, &p.str("key")?)
        .await?;
    Ok(Json(json!({})))
}
