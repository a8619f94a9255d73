//! Changes that wait for approval: what is requested, checked when it is
//! requested and again when it is applied.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use weir_engine::Context;
use weir_store::approvals::Approval;
use weir_store::Deployment;

/// `weir deploy`'s arguments, kept with an approval request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeployRequest {
    pub endpoint: String,
    pub model: String,
    pub version: i64,
    pub strategy: String,
    pub steps: Vec<i64>,
    pub interval_ms: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<u64>,
    pub min_requests: u64,
    pub max_accuracy_drop: Option<f64>,
    pub min_labels: u64,
    pub max_drift: Option<f64>,
}

impl DeployRequest {
    /// The change the deploy makes to the endpoint as it is now.
    async fn plan(&self, ctx: &Context) -> Result<(Deployment, String)> {
        weir_store::registry::refuse_rejected(
            &ctx.store.version_detail(&self.model, self.version).await?,
            &format!("be deployed to {}", self.endpoint),
        )?;
        let current = match ctx.store.deployment(&self.endpoint).await {
            Ok(d) => Some(d),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let analysis = weir_serve::rollout::Analysis {
            interval: std::time::Duration::from_millis(self.interval_ms),
            max_error_rate: self.max_error_rate,
            max_p99: self.max_p99_ms.map(std::time::Duration::from_millis),
            min_requests: self.min_requests,
            max_accuracy_drop: self.max_accuracy_drop,
            min_labels: self.min_labels,
            max_drift: self.max_drift,
        };
        Ok(weir_serve::rollout::start(
            current.as_ref(),
            &self.endpoint,
            &self.model,
            self.version,
            &self.strategy,
            self.steps.clone(),
            &analysis,
        )?)
    }

    pub async fn check(&self, ctx: &Context) -> Result<()> {
        self.plan(ctx).await.map(|_| ())
    }

    pub async fn apply(&self, ctx: &Context) -> Result<(Deployment, String)> {
        let (next, what) = self.plan(ctx).await?;
        let saved = ctx.store.save_deployment(&next, "deployed", &what).await?;
        Ok((saved, what))
    }
}

/// Makes an approved request's change; says what was done.
pub async fn apply(ctx: &Context, a: &Approval) -> Result<String> {
    match a.action.as_str() {
        "deploy" => {
            let request: DeployRequest = serde_json::from_value(a.payload.clone())?;
            let (_, what) = request.apply(ctx).await?;
            Ok(format!("{}: {what}", request.endpoint))
        }
        "alias.set" => {
            let name = a.payload["name"].as_str().unwrap_or_default();
            let alias = a.payload["alias"].as_str().unwrap_or_default();
            let version = a.payload["version"].as_i64().unwrap_or_default();
            ctx.store.set_model_alias(name, alias, version).await?;
            Ok(format!("{name}@{alias} -> version {version}"))
        }
        other => anyhow::bail!(
            "approval {} is for '{other}', which this Weir does not know how to apply",
            a.id
        ),
    }
}
