//! The presentation layer: every command's output, as aligned text for
//! people or as JSON (`--json`) for scripts.

use anyhow::Result;
use serde_json::json;
use weir_core::config::{Config, KEYS};
use weir_core::cost::Dollars;
use weir_engine::{Context, RunOutcome};
use weir_store::{ModelSummary, RunRecord, Store};

pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

/// A time as the tables print it, with its zone.
pub fn time_utc(ms: i64) -> String {
    format!("{} UTC", time(ms))
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn duration(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{:.2}s", (e - s) as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

/// Prints rows as left-aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn run_outcome(outcome: &RunOutcome, json: bool) {
    if json {
        print_json(outcome);
        return;
    }
    println!();
    println!(
        "run {} {} in {:.2}s",
        outcome.run_id, outcome.status, outcome.seconds
    );
    if !outcome.metrics.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = outcome
            .metrics
            .iter()
            .map(|(step, m)| vec![step.clone(), m.key.clone(), format!("{:.6}", m.value)])
            .collect();
        table(&["STEP", "METRIC", "VALUE"], &rows);
    }
    for m in &outcome.models {
        println!();
        println!("registered model {} version {}", m.name, m.version);
        println!("serve it with:  weir serve {}:{}", m.name, m.version);
    }
    if let Some(error) = &outcome.error {
        println!();
        eprintln!("error: {error}");
    }
}

pub fn runs(runs: &[RunRecord], json: bool) {
    if json {
        print_json(&runs);
        return;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.pipeline.clone(),
                r.status.to_string(),
                time(r.started_at),
                duration(Some(r.started_at), r.ended_at),
            ]
        })
        .collect();
    table(
        &["RUN", "PIPELINE", "STATUS", "STARTED (UTC)", "DURATION"],
        &rows,
    );
}

pub async fn run_detail(store: &Store, id: &str, json: bool) -> Result<()> {
    let run = store.run(id).await?;
    let steps = store.step_runs(&run.id).await?;
    let metrics = store.latest_metrics(&run.id).await?;
    let usage = store.run_usage(&run.id).await?;
    let run_cost: f64 = usage.iter().filter(|u| u.billed).map(|u| u.total).sum();
    let mut step_docs = Vec::new();
    for s in &steps {
        let outputs = store.step_outputs(&s.id).await?;
        step_docs.push((s, outputs));
    }
    if json {
        let steps: Vec<serde_json::Value> = step_docs
            .iter()
            .map(|(s, outputs)| {
                json!({
                    "step": s.step, "step_run_id": s.id, "kind": s.kind, "status": s.status,
                    "started_at": s.started_at, "ended_at": s.ended_at, "exit_code": s.exit_code,
                    "error": s.error, "log_digest": s.log_digest, "cached_from": s.cached_from, "cache_miss": s.cache_miss, "attempt": s.attempt, "heartbeat_at": s.heartbeat_at,
                    "executor": s.executor, "executor_address": s.executor_address, "node": s.node, "job": s.job,
                    "inputs": serde_json::from_str::<serde_json::Value>(&s.inputs_json).unwrap_or_default(),
                    "outputs": outputs.iter().map(|(n, a)| (n.clone(), json!({"digest": a.digest, "size": a.size, "kind": a.kind}))).collect::<serde_json::Map<_, _>>(),
                    "sources": s.sources(),
                    "metrics": metrics.iter().filter(|(id, _)| *id == s.id).map(|(_, m)| (m.key.clone(), json!(m.value))).collect::<serde_json::Map<_, _>>(),
                    "usage": usage.iter().filter(|u| u.step_run_id == s.id).map(usage_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({
            "id": run.id, "pipeline": run.pipeline, "spec_file": run.spec_file, "status": run.status,
            "git_rev": run.git_rev, "started_at": run.started_at, "ended_at": run.ended_at, "error": run.error,
            "params": serde_json::from_str::<serde_json::Value>(&run.params_json).unwrap_or_default(),
            "steps": steps,
            "cost": run_cost,
        }));
        return Ok(());
    }
    println!("run       {}", run.id);
    println!("pipeline  {} ({})", run.pipeline, run.spec_file);
    println!("status    {}", run.status);
    println!(
        "started   {} UTC, took {}",
        time(run.started_at),
        duration(Some(run.started_at), run.ended_at)
    );
    println!("params    {}", run.params_json);
    if let Some(rev) = &run.git_rev {
        println!("git       {rev}");
    }
    if let Some(e) = &run.error {
        println!("error     {}", e.lines().next().unwrap_or(""));
    }
    println!();
    // Where each step ran matters once some ran on a cluster.
    let clustered = steps.iter().any(|s| s.executor.as_deref() == Some("ray"));
    let rows: Vec<Vec<String>> = step_docs
        .iter()
        .map(|(s, outputs)| {
            let mut row = vec![
                s.step.clone(),
                s.kind.clone(),
                match &s.cached_from {
                    Some(_) => format!("{} (cached)", s.status),
                    None => s.status.to_string(),
                },
                duration(s.started_at, s.ended_at),
            ];
            if clustered {
                row.push(match (s.executor.as_deref(), &s.node) {
                    (Some("ray"), node) => format!(
                        "ray node {} job {}",
                        node.as_deref().map_or("?", |n| &n[..n.len().min(12)]),
                        s.job.as_deref().unwrap_or("?")
                    ),
                    (Some(kind), Some(node)) => format!("{kind} {node}"),
                    _ => "-".into(),
                });
            }
            row.push(
                outputs
                    .iter()
                    .map(|(n, a)| format!("{n}={}", a.digest.short()))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            row
        })
        .collect();
    if clustered {
        table(
            &["STEP", "KIND", "STATUS", "DURATION", "RAN ON", "OUTPUTS"],
            &rows,
        );
    } else {
        table(&["STEP", "KIND", "STATUS", "DURATION", "OUTPUTS"], &rows);
    }
    if !metrics.is_empty() {
        println!();
        let names: std::collections::HashMap<&str, &str> = steps
            .iter()
            .map(|s| (s.id.as_str(), s.step.as_str()))
            .collect();
        let rows: Vec<Vec<String>> = metrics
            .iter()
            .map(|(id, m)| {
                vec![
                    names.get(id.as_str()).unwrap_or(&"?").to_string(),
                    m.key.clone(),
                    format!("{:.6}", m.value),
                ]
            })
            .collect();
        table(&["STEP", "METRIC", "VALUE"], &rows);
    }
    if !usage.is_empty() {
        println!();
        usage_table(&usage);
        println!(
            "cost      {} at the prices in force when each ended (`weir cost {}`)",
            Dollars(run_cost),
            &run.id[..12]
        );
    }
    Ok(())
}

fn usage_json(u: &weir_store::UsageRecord) -> serde_json::Value {
    json!({
        "attempt": u.attempt, "trial": u.trial, "status": u.status, "host": u.host,
        "started_at": u.started_at, "ended_at": u.ended_at,
        "wall_seconds": u.usage.wall_ms as f64 / 1000.0, "cpu_seconds": u.usage.cpu_ms as f64 / 1000.0,
        "max_rss_bytes": u.usage.max_rss_bytes, "gpus": u.usage.gpus,
        "bytes_read": u.usage.bytes_read, "bytes_written": u.usage.bytes_written,
        "reserved": {"cpus": u.cpus, "memory_bytes": u.memory_bytes}, "spot": u.spot,
        "billed": u.billed, "cost": u.total, "cost_by": u.cost,
    })
}

/// Each step attempt's (and trial's) usage and cost, one row each.
fn usage_table(usage: &[weir_store::UsageRecord]) {
    let rows: Vec<Vec<String>> = usage
        .iter()
        .map(|u| {
            vec![
                match u.trial {
                    Some(t) => format!("{} trial {t}", u.step),
                    None => u.step.clone(),
                },
                u.attempt.to_string(),
                u.status.clone(),
                format!("{:.2}s", u.usage.wall_ms as f64 / 1000.0),
                format!("{:.2}s", u.usage.cpu_ms as f64 / 1000.0),
                weir_engine::accounting::bytes(u.usage.max_rss_bytes),
                u.usage.gpus.to_string(),
                weir_engine::accounting::bytes(u.usage.bytes_read),
                weir_engine::accounting::bytes(u.usage.bytes_written),
                // A trial inside its step's process is part of the step's cost.
                if u.billed {
                    Dollars(u.total).to_string()
                } else {
                    format!("({})", Dollars(u.total))
                },
            ]
        })
        .collect();
    table(
        &[
            "STEP", "ATTEMPT", "STATUS", "WALL", "CPU", "MAX RSS", "GPUS", "READ", "WRITTEN",
            "COST",
        ],
        &rows,
    );
}

/// How `weir cost` groups what work cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CostBy {
    Pipeline,
    Run,
    Step,
    Model,
    Endpoint,
}

/// `weir cost`: one run's steps and trials, or everything that ended since
/// `since_ms`, grouped.
pub async fn cost(
    ctx: &Context,
    run: Option<&str>,
    since_ms: i64,
    by: CostBy,
    json: bool,
) -> Result<()> {
    use std::collections::BTreeMap;
    if let Some(run) = run {
        let record = ctx.store.run(run).await?;
        let usage = ctx.store.run_usage(&record.id).await?;
        let total: f64 = usage.iter().filter(|u| u.billed).map(|u| u.total).sum();
        let models = ctx.store.model_versions_for_run(&record.id).await?;
        if json {
            print_json(&json!({
                "run": record.id, "pipeline": record.pipeline, "cost": total,
                "usage": usage.iter().map(|u| { let mut v = usage_json(u); v["step"] = json!(u.step); v }).collect::<Vec<_>>(),
                "models": models.iter().map(|m| json!({"name": m.name, "version": m.version})).collect::<Vec<_>>(),
            }));
            return Ok(());
        }
        println!("run {} ({})", record.id, record.pipeline);
        if usage.is_empty() {
            println!("nothing measured: every step was cached or none ran");
        } else {
            usage_table(&usage);
        }
        println!("total {}", Dollars(total));
        for m in &models {
            println!(
                "model {}:{} cost {} to train",
                m.name,
                m.version,
                Dollars(total)
            );
        }
        return Ok(());
    }
    if by == CostBy::Endpoint {
        let replicas = ctx.store.serve_usage_since(since_ms).await?;
        let mut by_target: BTreeMap<String, (f64, i64, i64, usize)> = BTreeMap::new();
        for r in &replicas {
            let e = by_target.entry(r.targets.clone()).or_default();
            e.0 += r.cost;
            e.1 += r.requests;
            e.2 += r.cpu_ms;
            e.3 += 1;
        }
        let per_1k =
            |cost: f64, requests: i64| (requests > 0).then(|| cost / requests as f64 * 1000.0);
        if json {
            print_json(&by_target.iter().map(|(t, (cost, requests, cpu_ms, n))| json!({
                "serves": t, "replicas": n, "requests": requests, "cpu_seconds": *cpu_ms as f64 / 1000.0,
                "cost": cost, "cost_per_1000": per_1k(*cost, *requests),
            })).collect::<Vec<_>>());
            return Ok(());
        }
        let rows: Vec<Vec<String>> = by_target
            .iter()
            .map(|(t, (cost, requests, cpu_ms, n))| {
                vec![
                    t.clone(),
                    n.to_string(),
                    requests.to_string(),
                    format!("{:.1}s", *cpu_ms as f64 / 1000.0),
                    Dollars(*cost).to_string(),
                    per_1k(*cost, *requests).map_or("-".into(), |c| Dollars(c).to_string()),
                ]
            })
            .collect();
        table(
            &["SERVES", "REPLICAS", "REQUESTS", "CPU", "COST", "PER 1,000"],
            &rows,
        );
        return Ok(());
    }
    let rows = ctx.store.costs_since(since_ms, None).await?;
    let mut groups: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    let mut run_costs: BTreeMap<&str, f64> = BTreeMap::new();
    for r in &rows {
        *run_costs.entry(&r.run_id).or_default() += r.cost;
        let key = match by {
            CostBy::Pipeline => r.pipeline.clone(),
            CostBy::Run => format!("{} {}", &r.run_id[..12.min(r.run_id.len())], r.pipeline),
            CostBy::Step => format!("{}/{}", r.pipeline, r.step),
            CostBy::Model | CostBy::Endpoint => continue,
        };
        let e = groups.entry(key).or_default();
        e.0 += r.cost;
        e.1 += r.cpu_ms as f64 / 1000.0;
        e.2 += 1;
    }
    if by == CostBy::Model {
        for (run_id, cost) in &run_costs {
            for m in ctx.store.model_versions_for_run(run_id).await? {
                let e = groups
                    .entry(format!("{}:{}", m.name, m.version))
                    .or_default();
                e.0 += cost;
                e.2 += 1;
            }
        }
    }
    let total: f64 = run_costs.values().sum();
    if json {
        print_json(&json!({
            "since": since_ms, "by": format!("{by:?}").to_lowercase(), "total": total,
            "groups": groups.iter().map(|(k, (cost, cpu, n))| json!({"key": k, "cost": cost, "cpu_seconds": cpu, "records": n})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut sorted: Vec<_> = groups.into_iter().collect();
    sorted.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let label = format!("{by:?}").to_uppercase();
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|(k, (cost, cpu, n))| {
            vec![
                k.clone(),
                Dollars(*cost).to_string(),
                format!("{cpu:.1}s"),
                n.to_string(),
            ]
        })
        .collect();
    let count = if by == CostBy::Model {
        "VERSIONS"
    } else {
        "ATTEMPTS"
    };
    table(&[label.as_str(), "COST", "CPU", count], &rows);
    println!("total {} since {} UTC", Dollars(total), time(since_ms));
    for (pipeline, budget) in &ctx.config.monthly_budgets {
        let month = weir_engine::accounting::month_start_ms(weir_core::now_ms());
        let spent: f64 = ctx
            .store
            .costs_since(month, Some(pipeline))
            .await?
            .iter()
            .map(|r| r.cost)
            .sum();
        println!(
            "budget {pipeline}: {} of {} this month ({:.0}%)",
            Dollars(spent),
            Dollars(*budget),
            100.0 * spent / budget
        );
    }
    Ok(())
}

/// The price table in force.
pub fn prices(config: &Config, json: bool) {
    if json {
        print_json(&json!({"source": config.prices_source, "prices": config.prices}));
        return;
    }
    let rows: Vec<Vec<String>> = weir_core::cost::PRICE_KEYS
        .iter()
        .map(|(k, what)| {
            vec![
                k.to_string(),
                format!("{}", config.prices.get(k).unwrap_or_default()),
                what.to_string(),
            ]
        })
        .collect();
    table(&["PRICE", "USD", "WHAT"], &rows);
    println!("from {}", config.prices_source);
}

/// A step's log: the stored log of a finished step; of a running one, what
/// its runtime shipped so far. `follow` keeps printing as the step goes on,
/// through its retries, until it ends.
pub async fn logs(ctx: &Context, run: &str, step: &str, follow: bool) -> Result<()> {
    use std::io::Write;
    let run = ctx.store.run(run).await?;
    let steps = ctx.store.step_runs(&run.id).await?;
    let Some(record) = steps.iter().find(|s| s.step == step) else {
        let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        anyhow::bail!(
            "run {} has no step '{step}'\n  hint: its steps are: {}",
            run.id,
            names.join(", ")
        );
    };
    let id = record.id.clone();
    let mut out = std::io::stdout();
    // Bytes of the current attempt's log printed so far.
    let (mut printed, mut attempt) = (0i64, record.attempt);
    loop {
        let record = ctx.store.step_run(&id).await?;
        if record.attempt != attempt {
            if printed > 0 {
                writeln!(out, "--- attempt {} ---", record.attempt)?;
            }
            (printed, attempt) = (0, record.attempt);
        }
        let ended = record.status.is_terminal();
        if let (true, Some(digest)) = (ended, &record.log_digest) {
            let bytes = ctx.artifacts.get(&digest.parse()?).await?;
            let from = (printed.max(0) as usize).min(bytes.len());
            out.write_all(&bytes[from..])?;
            return Ok(());
        }
        for chunk in ctx.store.log_chunks(&id, attempt, printed).await? {
            out.write_all(chunk.body.as_bytes())?;
            printed = chunk.end;
        }
        out.flush()?;
        if ended || !follow {
            if printed == 0 {
                anyhow::bail!(
                    "step '{step}' of run {} has no log {} (status: {})\n  hint: {}",
                    run.id,
                    if ended { "stored" } else { "yet" },
                    record.status,
                    if ended {
                        "its runtime ended before it could store one"
                    } else {
                        "a running step's log shows once it has written a line; `weir logs --follow` waits for it"
                    }
                );
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn study(ctx: &Context, run: &str, step: &str, json: bool) -> Result<()> {
    let run = ctx.store.run(run).await?;
    let trials = ctx.store.study_trials(&run.id, step).await?;
    if trials.is_empty() {
        let steps = ctx.store.step_runs(&run.id).await?;
        let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        anyhow::bail!(
            "run {} has no study for step '{step}'\n  hint: studies belong to steps with a tune: block; the run's steps are: {}",
            run.id,
            names.join(", ")
        );
    }
    // The objective and its direction are in the run's recorded spec.
    let spec: weir_core::pipeline::Pipeline = serde_json::from_str(&run.spec_json)?;
    let (metric, maximize) = spec
        .steps
        .iter()
        .find(|s| s.name == step)
        .and_then(|s| s.tune.as_ref())
        .map_or(("objective".to_string(), false), |t| t.objective());
    let goal = if maximize {
        weir_tune::Goal::Maximize
    } else {
        weir_tune::Goal::Minimize
    };
    let history: Vec<weir_tune::Trial> = trials.iter().map(weir_engine::tune::trial_of).collect();
    let best = weir_engine::tune::best_trial(&history, goal).map(|t| t.number as i64);
    if json {
        let docs: Vec<serde_json::Value> = trials
            .iter()
            .map(|t| {
                json!({
                    "number": t.number, "state": t.state, "value": t.value,
                    "best": Some(t.number) == best,
                    "params": serde_json::from_str::<serde_json::Value>(&t.params_json).unwrap_or_default(),
                    "rounds": weir_engine::tune::trial_rounds(t),
                    "error": t.error, "tracking_run_id": t.tracking_run_id,
                    "seconds": t.ended_at.map(|e| (e - t.started_at) as f64 / 1000.0),
                    "job": t.job, "node": t.node,
                })
            })
            .collect();
        print_json(&json!({"run_id": run.id, "step": step, "metric": metric,
            "goal": if maximize { "maximize" } else { "minimize" }, "best_trial": best, "trials": docs}));
        return Ok(());
    }
    // Trials that ran as cluster jobs say where.
    let placed = trials.iter().any(|t| t.job.is_some());
    let rows: Vec<Vec<String>> = trials
        .iter()
        .map(|t| {
            let mut row = vec![
                format!(
                    "{}{}",
                    t.number,
                    if Some(t.number) == best { " *" } else { "" }
                ),
                t.state.clone(),
                t.value.map_or("-".into(), |v| format!("{v:.5}")),
                t.ended_at.map_or("-".into(), |e| {
                    format!("{:.1}s", (e - t.started_at) as f64 / 1000.0)
                }),
            ];
            if placed {
                row.push(match &t.node {
                    Some(node) => format!("ray node {}", &node[..node.len().min(12)]),
                    None => "-".into(),
                });
            }
            row.push(weir_engine::tune::show_params(&t.params_json));
            row
        })
        .collect();
    let metric_header = metric.to_uppercase();
    let mut headers = vec!["TRIAL", "STATE", metric_header.as_str(), "TIME"];
    if placed {
        headers.push("RAN ON");
    }
    headers.push("PARAMS");
    table(&headers, &rows);
    if let Some(b) = best {
        println!("best: trial {b}");
    }
    Ok(())
}

pub fn models(models: &[ModelSummary], json: bool) {
    if json {
        print_json(&models);
        return;
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.latest_version.to_string(),
                m.versions.to_string(),
                time(m.updated_at),
            ]
        })
        .collect();
    table(&["MODEL", "LATEST", "VERSIONS", "UPDATED (UTC)"], &rows);
}

pub fn registered(r: &weir_serve::Registered, json: bool) {
    if json {
        print_json(r);
        return;
    }
    println!(
        "registered {}:{} ({} model, {})",
        r.name,
        r.version,
        r.format,
        &r.digest[..12]
    );
    let shapes = |list: &serde_json::Value| {
        list.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|t| match (&t["datatype"], &t["shape"]) {
                        (serde_json::Value::String(d), shape) => {
                            format!("{} {d} {shape}", t["name"].as_str().unwrap_or(""))
                        }
                        _ => t["name"].as_str().unwrap_or("").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!("  inputs:  {}", shapes(&r.inputs));
    if r.outputs.as_array().is_some_and(|o| !o.is_empty()) {
        println!("  outputs: {}", shapes(&r.outputs));
    }
    match (r.reference_rows, &r.reference_from) {
        (Some(rows), Some(from)) => {
            println!("  prediction reference: {rows} scores, from {from}")
        }
        _ => println!(
            "  prediction reference: none (give --reference ROWS to measure drift against it)"
        ),
    }
    println!("  serve it: weir serve {}:{}", r.name, r.version);
}

pub fn rollout_status(d: &weir_store::Deployment, json: bool) {
    if json {
        print_json(d);
        return;
    }
    println!(
        "endpoint {}  (model {}, {} strategy)",
        d.endpoint, d.model, d.strategy
    );
    println!(
        "  phase:     {}{}",
        d.phase,
        if d.reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", d.reason)
        }
    );
    let shadow = d.strategy == "shadow";
    match (d.stable, d.candidate) {
        (Some(s), Some(c)) if shadow => println!(
            "  stable:    version {s} (100%)\n  shadow:    version {c} (mirrored, answers unused)"
        ),
        (Some(s), Some(c)) => println!(
            "  stable:    version {s} ({}%)\n  candidate: version {c} ({}%, step {} of {:?})",
            100 - d.weight,
            d.weight,
            d.step_index + 1,
            d.steps
        ),
        (Some(s), None) => println!("  stable:    version {s} (100%)"),
        (None, _) => println!("  no stable version"),
    }
    println!("  analysis:  {}", d.analysis);
    println!(
        "  updated:   {} (revision {})",
        time(d.updated_at),
        d.revision
    );
}

pub fn rollout_changed(d: &weir_store::Deployment, what: &str, json: bool) {
    if json {
        print_json(d);
    } else {
        println!("{}: {what}", d.endpoint);
    }
}

pub fn rollout_history(events: &[weir_store::DeploymentEvent], json: bool) {
    if json {
        print_json(&events);
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                time(e.at),
                e.event.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    table(&["#", "AT (UTC)", "EVENT", "DETAIL"], &rows);
}

pub async fn model_detail(
    store: &Store,
    name: &str,
    version: Option<i64>,
    json: bool,
) -> Result<()> {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    match version {
        None => {
            let versions = store.model_versions(name).await?;
            if json {
                let docs: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| json!({"name": v.name, "version": v.version, "digest": v.digest, "run_id": v.run_id, "created_at": v.created_at, "metrics": parse(&v.metrics_json)}))
                    .collect();
                print_json(&docs);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = versions
                .iter()
                .map(|v| {
                    let overall = parse(&v.metrics_json)["overall"].clone();
                    let headline = ["auc", "rmse", "accuracy"]
                        .iter()
                        .find_map(|k| overall[*k].as_f64().map(|x| format!("{k} {x:.4}")))
                        .unwrap_or_default();
                    vec![
                        v.version.to_string(),
                        time(v.created_at),
                        v.run_id.clone().unwrap_or_default(),
                        v.digest
                            .as_deref()
                            .map_or_else(|| v.source.clone(), |d| d[..12].to_string()),
                        headline,
                    ]
                })
                .collect();
            table(
                &["VERSION", "CREATED (UTC)", "RUN", "DIGEST", "METRIC"],
                &rows,
            );
        }
        Some(v) => {
            let mv = store.model_version(name, Some(v)).await?;
            let training_cost = match &mv.run_id {
                Some(run) => store.costs_of_runs(&[run]).await?.get(run).copied(),
                None => None,
            };
            let doc = json!({
                "name": mv.name, "version": mv.version, "digest": mv.digest, "run_id": mv.run_id,
                "step_run_id": mv.step_run_id, "created_at": mv.created_at,
                "metrics": parse(&mv.metrics_json), "lineage": parse(&mv.lineage_json),
                "training_cost": training_cost,
            });
            if json {
                print_json(&doc);
            } else {
                println!("model     {} version {}", mv.name, mv.version);
                println!("created   {} UTC", time(mv.created_at));
                match &mv.digest {
                    Some(d) => println!("digest    {d}"),
                    None => println!("source    {}", mv.source),
                }
                println!("run       {}", mv.run_id.unwrap_or_default());
                if let Some(cost) = training_cost {
                    println!("cost      ${cost:.6} to train (weir cost RUN for the breakdown)");
                }
                println!(
                    "lineage   {}",
                    serde_json::to_string_pretty(&doc["lineage"]).unwrap_or_default()
                );
                println!(
                    "metrics   {}",
                    serde_json::to_string_pretty(&doc["metrics"]["overall"]).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub fn config(config: &Config, json: bool) {
    // A password in a URL (WEIR_DB=postgres://user:secret@...) is never shown.
    let mut settings = config.settings.clone();
    for s in settings.values_mut() {
        s.value = weir_store::redact(&s.value);
    }
    if json {
        print_json(&settings);
        return;
    }
    let rows: Vec<Vec<String>> = KEYS
        .iter()
        .map(|(key, var, _)| {
            let s = &settings[*key];
            vec![
                key.to_string(),
                s.value.clone(),
                var.to_string(),
                s.source.to_string(),
            ]
        })
        .collect();
    table(&["KEY", "VALUE", "ENV", "FROM"], &rows);
}

pub async fn experiments(store: &Store, all: bool, json: bool) -> Result<()> {
    use weir_store::tracking::ViewType;
    let view = if all {
        ViewType::All
    } else {
        ViewType::ActiveOnly
    };
    let found = store
        .search_experiments(view, &[], &[("name".into(), true)], 50_000, 0)
        .await?;
    if json {
        let docs: Vec<serde_json::Value> = found
            .iter()
            .map(|e| {
                json!({
                    "experiment_id": e.experiment_id.to_string(), "name": e.name,
                    "artifact_location": e.artifact_location, "lifecycle_stage": e.lifecycle_stage,
                    "creation_time": e.creation_time, "last_update_time": e.last_update_time,
                    "tags": e.tags.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                })
            })
            .collect();
        print_json(&docs);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|e| {
            vec![
                e.experiment_id.to_string(),
                e.name.clone(),
                e.lifecycle_stage.clone(),
                time(e.creation_time),
                e.artifact_location.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "STAGE", "CREATED (UTC)", "ARTIFACTS"],
        &rows,
    );
    Ok(())
}

/// `weir runs search`: the same grammar and semantics as MLflow's runs/search.
pub async fn search_runs(
    store: &Store,
    filter: &str,
    experiments: &[String],
    order_by: &[String],
    max_results: i64,
    json: bool,
) -> Result<()> {
    use weir_store::filter as grammar;
    use weir_store::tracking::{RunSearch, ViewType};
    let clauses = grammar::parse(filter)?;
    let order = order_by
        .iter()
        .map(|o| grammar::parse_order_by(o))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids = Vec::new();
    if experiments.is_empty() {
        for e in store
            .search_experiments(ViewType::ActiveOnly, &[], &[], 50_000, 0)
            .await?
        {
            ids.push(e.experiment_id);
        }
    } else {
        for name in experiments {
            ids.push(store.experiment_by_name(name).await?.experiment_id);
        }
    }
    let names: std::collections::HashMap<i64, String> = store
        .search_experiments(ViewType::All, &[], &[], 50_000, 0)
        .await?
        .into_iter()
        .map(|e| (e.experiment_id, e.name))
        .collect();
    let (runs, _) = store
        .search_tracking_runs(&RunSearch {
            experiment_ids: ids,
            filter: clauses.clone(),
            view: ViewType::ActiveOnly,
            order_by: order.clone(),
            max_results: max_results.max(1),
            offset: 0,
        })
        .await?;
    if json {
        let docs: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let map = |pairs: &[(String, String)]| {
                    pairs
                        .iter()
                        .cloned()
                        .collect::<std::collections::BTreeMap<_, _>>()
                };
                json!({
                    "run_id": r.info.run_id, "experiment": names.get(&r.info.experiment_id),
                    "name": r.info.name, "status": r.info.status,
                    "start_time": r.info.start_time, "end_time": r.info.end_time,
                    "params": map(&r.params), "tags": map(&r.tags),
                    "metrics": r.metrics.iter().map(|m| (m.key.clone(), m.value))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                })
            })
            .collect();
        print_json(&docs);
        return Ok(());
    }
    // Show the metrics and params the filter and the order mention.
    let mut columns: Vec<(grammar::Entity, String)> = Vec::new();
    for (entity, key) in clauses
        .iter()
        .map(|c| (c.entity.clone(), c.key.clone()))
        .chain(order.iter().map(|o| (o.entity.clone(), o.key.clone())))
    {
        if matches!(entity, grammar::Entity::Metric | grammar::Entity::Param)
            && !columns.iter().any(|(e, k)| *e == entity && *k == key)
        {
            columns.push((entity, key));
        }
    }
    let mut header: Vec<String> = ["RUN", "EXPERIMENT", "NAME", "STATUS", "STARTED (UTC)"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    header.extend(columns.iter().map(|(_, k)| k.clone()));
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.info.run_id[..12.min(r.info.run_id.len())].to_string(),
                names
                    .get(&r.info.experiment_id)
                    .cloned()
                    .unwrap_or_default(),
                r.info.name.clone(),
                r.info.status.clone(),
                r.info.start_time.map(time).unwrap_or_default(),
            ];
            for (entity, key) in &columns {
                row.push(match entity {
                    grammar::Entity::Metric => r
                        .metrics
                        .iter()
                        .find(|m| &m.key == key)
                        .map(|m| format!("{:.4}", m.value))
                        .unwrap_or_default(),
                    _ => r
                        .params
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                });
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &rows);
    Ok(())
}

pub fn datasets(datasets: &[weir_store::DatasetSummary], json: bool) {
    if json {
        print_json(&datasets);
        return;
    }
    let rows: Vec<Vec<String>> = datasets
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.latest.version.to_string(),
                d.versions.to_string(),
                d.latest.rows.to_string(),
                d.latest.columns.to_string(),
                d.latest.digest[..12].to_string(),
                time(d.latest.created_at),
            ]
        })
        .collect();
    table(
        &[
            "DATASET",
            "LATEST",
            "VERSIONS",
            "ROWS",
            "COLUMNS",
            "DIGEST",
            "CREATED (UTC)",
        ],
        &rows,
    );
}

fn profile_of(v: &weir_store::DatasetVersion) -> Result<weir_data::Profile> {
    serde_json::from_str(&v.profile_json).map_err(|e| {
        anyhow::anyhow!(
            "the profile of {}@{} is not readable ({e}); the store may be corrupt",
            v.name,
            v.version
        )
    })
}

fn changes_of(v: &weir_store::DatasetVersion) -> Result<Vec<weir_data::SchemaChange>> {
    serde_json::from_str(&v.changes_json).map_err(|e| {
        anyhow::anyhow!(
            "the schema changes of {}@{} are not readable ({e}); the store may be corrupt",
            v.name,
            v.version
        )
    })
}

/// A number short enough for a table cell.
fn num(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 1e5 || x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

pub fn dataset(
    versions: &[weir_store::DatasetVersion],
    shown: &weir_store::DatasetVersion,
    json: bool,
) -> Result<()> {
    let profile = profile_of(shown)?;
    let changes = changes_of(shown)?;
    if json {
        print_json(&json!({
            "version": shown,
            "versions": versions,
            "schema_changes": changes,
            "profile": profile,
        }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                v.rows.to_string(),
                v.columns.to_string(),
                v.digest[..12].to_string(),
                v.run_id.chars().take(8).collect(),
                time(v.created_at),
                match changes_of(v) {
                    Ok(c) if c.is_empty() => "-".into(),
                    Ok(c) => c
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(_) => "?".into(),
                },
            ]
        })
        .collect();
    table(
        &[
            "VERSION",
            "ROWS",
            "COLUMNS",
            "DIGEST",
            "RUN",
            "CREATED (UTC)",
            "SCHEMA CHANGES",
        ],
        &rows,
    );
    println!();
    println!(
        "{}@{}: {} rows x {} columns, output '{}' of step run {} ({})",
        shown.name,
        shown.version,
        shown.rows,
        shown.columns,
        shown.output,
        shown.step_run_id,
        shown.digest
    );
    let rows: Vec<Vec<String>> = profile
        .columns
        .iter()
        .map(|c| {
            let mut row = vec![
                c.name.clone(),
                c.dtype.clone(),
                format!("{:.1}%", c.null_rate * 100.0),
                c.distinct.to_string(),
            ];
            match (&c.numeric, &c.top) {
                (Some(n), _) => {
                    let (lo, hi) = n.shown.clone().unwrap_or_else(|| (num(n.min), num(n.max)));
                    row.extend([lo, num(n.percentiles[50]), hi, num(n.mean), num(n.std)]);
                    row.push(String::new());
                }
                (None, Some(top)) => {
                    row.extend(std::iter::repeat_n(String::new(), 5));
                    let shown: Vec<String> = top
                        .values
                        .iter()
                        .take(3)
                        .map(|(v, n)| format!("{v} ({n})"))
                        .collect();
                    row.push(shown.join(", "));
                }
                (None, None) => row.extend(std::iter::repeat_n(String::new(), 6)),
            }
            row
        })
        .collect();
    table(
        &[
            "COLUMN",
            "TYPE",
            "NULLS",
            "DISTINCT",
            "MIN",
            "MEDIAN",
            "MAX",
            "MEAN",
            "STD",
            "TOP VALUES",
        ],
        &rows,
    );
    Ok(())
}

pub fn dataset_diff(
    from: &weir_store::DatasetVersion,
    to: &weir_store::DatasetVersion,
    html: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let (a, b) = (profile_of(from)?, profile_of(to)?);
    let names = (
        format!("{}@{}", from.name, from.version),
        format!("{}@{}", to.name, to.version),
    );
    drift(
        &format!(
            "{}: version {} against version {}",
            from.name, to.version, from.version
        ),
        (&names.0, &names.1),
        &a,
        &b,
        (weir_data::DATASET_SHARE, weir_data::Method::Auto),
        html,
        json,
    )
}

/// Compares two profiles: schema changes, each shared column's shift and
/// the verdict for the whole table; `html` also writes the report there.
pub fn drift(
    title: &str,
    names: (&str, &str),
    reference: &weir_data::Profile,
    current: &weir_data::Profile,
    (share, method): (f64, weir_data::Method),
    html: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let changes = weir_data::schema_changes(reference, current);
    let drift = weir_data::drift_by(reference, current, share, method);
    if let Some(path) = html {
        write_report(
            path,
            &weir_data::drift_html(title, names, reference, current, &drift),
        )?;
    }
    if json {
        print_json(&json!({
            "reference": names.0,
            "current": names.1,
            "rows": [reference.rows, current.rows],
            "schema_changes": changes,
            "columns": drift.columns,
            "drifted_columns": drift.drifted_columns,
            "drifted_share": drift.drifted_share,
            "share_threshold": drift.share_threshold,
            "dataset_drift": drift.dataset_drift,
        }));
        return Ok(());
    }
    println!(
        "{} ({} rows) -> {} ({} rows)",
        names.0, reference.rows, names.1, current.rows
    );
    if changes.is_empty() {
        println!("schema: unchanged");
    } else {
        println!("schema:");
        for c in &changes {
            println!("  {c}");
        }
    }
    println!(
        "distribution: {} of {} shared columns drifted ({:.0}%): {}",
        drift.drifted_columns,
        drift.columns.len(),
        drift.drifted_share * 100.0,
        match drift.dataset_drift {
            true => format!("dataset drift (the threshold is {:.0}%)", share * 100.0),
            false => format!("no dataset drift (the threshold is {:.0}%)", share * 100.0),
        }
    );
    drift_table(&drift);
    if let Some(path) = html {
        println!("report: {}", path.display());
    }
    Ok(())
}

/// Writes an HTML report whole or not at all: a reader never sees half of one.
fn write_report(path: &std::path::Path, page: &str) -> Result<()> {
    let partial = path.with_extension("html.partial");
    std::fs::write(&partial, page)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))
}

/// Each column's shift, one row per column.
fn drift_table(drift: &weir_data::Drift) {
    let rows: Vec<Vec<String>> = drift
        .columns
        .iter()
        .map(|s| {
            vec![
                s.column.clone(),
                s.method.clone(),
                format!("{:.4}", s.score),
                if s.drifted {
                    "DRIFT".into()
                } else {
                    "ok".into()
                },
                format!("{:.4}", s.psi),
                format!(
                    "{:.1}% -> {:.1}%",
                    s.null_rate.0 * 100.0,
                    s.null_rate.1 * 100.0
                ),
                s.mean
                    .map_or(String::new(), |(x, y)| format!("{} -> {}", num(x), num(y))),
            ]
        })
        .collect();
    table(
        &["COLUMN", "METHOD", "SCORE", "", "PSI", "NULLS", "MEAN"],
        &rows,
    );
}

/// `weir monitor`: each version's drift and online accuracy over the
/// window, then the alerts its monitors fired.
pub fn monitor(
    report: &weir_serve::monitor::Report,
    (checks, alerts): (&[weir_store::MonitorCheck], &[weir_store::MonitorAlert]),
    html: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    if let Some(path) = html {
        let compared = report.main().and_then(|v| {
            Some((
                v,
                v.reference.as_ref()?,
                v.current.as_ref()?,
                v.drift.as_ref()?,
            ))
        });
        let Some((v, reference, current, drift)) = compared else {
            anyhow::bail!(
                "no HTML report: {} has too few logged requests with a training profile in the window to compare (see --min-rows)",
                report.target
            );
        };
        let title = format!(
            "{} ({}:{}): the last {} of requests against the training profile",
            report.target,
            report.model,
            v.version,
            humantime::format_duration(std::time::Duration::from_secs_f64(report.window_s))
        );
        let names = ("training", "requests");
        write_report(
            path,
            &weir_data::drift_html(&title, names, reference, current, drift),
        )?;
    }
    if json {
        print_json(&json!({
            "target": report.target,
            "model": report.model,
            "since": report.since,
            "until": report.until,
            "window_s": report.window_s,
            "versions": report.versions,
            "monitors": checks,
            "alerts": alerts,
        }));
        return Ok(());
    }
    println!(
        "{} (model {}): requests of the last {}",
        report.target,
        report.model,
        humantime::format_duration(std::time::Duration::from_secs_f64(report.window_s))
    );
    if report.versions.is_empty() {
        println!("  not enough data: no requests logged in the window");
        println!("  hint: `weir serve --log-predictions 0.1` logs one request in ten");
    }
    for v in &report.versions {
        println!();
        println!(
            "version {}: {} rows from {} requests",
            v.version, v.rows, v.requests
        );
        match v.status.as_str() {
            "not_enough_data" => println!("  drift: not enough data (fewer rows than --min-rows)"),
            "no_reference" => {
                println!("  drift: the version keeps no profile of its training inputs")
            }
            _ => {}
        }
        if !v.missing.is_empty() {
            println!("  missing from the requests: {}", v.missing.join(", "));
        }
        if !v.all_null.is_empty() {
            println!("  no value at all in the window: {}", v.all_null.join(", "));
        }
        for (column, values) in &v.unseen {
            println!(
                "  {column}: values never seen in training: {}",
                values.join(", ")
            );
        }
        if let Some(d) = &v.drift {
            println!(
                "  features: {} of {} drifted ({:.0}%): {}",
                d.drifted_columns,
                d.columns.len(),
                d.drifted_share * 100.0,
                if d.dataset_drift { "drift" } else { "no drift" }
            );
            drift_table(d);
        }
        if let Some(psi) = v.prediction_psi {
            println!("  predictions: PSI {psi:.4} against the training scores");
        }
        let o = &v.online;
        if o.labelled_rows == 0 {
            println!("  online accuracy: no feedback labels in the window");
        } else {
            let mut parts = Vec::new();
            if let Some(a) = o.accuracy {
                parts.push(format!("accuracy {a:.4}"));
            }
            if let Some(a) = o.auc {
                parts.push(format!("AUC {a:.4}"));
            }
            if let Some(r) = o.rmse {
                parts.push(format!("RMSE {}", num(r)));
            }
            println!(
                "  online ({} labelled rows of {} requests): {}",
                o.labelled_rows,
                o.labelled_requests,
                parts.join(", ")
            );
        }
    }
    if !checks.is_empty() {
        println!();
        println!("monitors (their last check):");
        for c in checks {
            println!(
                "  {} {} {}: {}",
                time(c.checked_at),
                c.monitor,
                c.status,
                c.reason
            );
        }
    }
    if !alerts.is_empty() {
        println!();
        println!("alerts:");
        for a in alerts {
            let actions: Vec<String> = a
                .actions
                .as_array()
                .map(|all| {
                    all.iter()
                        .map(|x| {
                            format!(
                                "{} {}",
                                x["action"].as_str().unwrap_or("?"),
                                x["status"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "  {} {} {}: {} [{}]",
                time(a.fired_at),
                &a.id[..12.min(a.id.len())],
                a.monitor,
                a.reason,
                actions.join(", ")
            );
        }
    }
    if let Some(path) = html {
        println!("report: {}", path.display());
    }
    Ok(())
}

/// `weir slo status`: each objective's budget, burn rates and state.
pub fn slo_status(statuses: &[weir_serve::slo::Status], json: bool) {
    if json {
        print_json(&statuses);
        return;
    }
    let mut rows = Vec::new();
    for s in statuses {
        for o in &s.objectives {
            rows.push(vec![
                s.endpoint.clone(),
                o.sli.clone(),
                format!("{:.2}%", o.target * 100.0),
                format!("{} / {}", o.bad, o.requests),
                format!("{:.1}%", o.budget_remaining * 100.0),
                format!("{:.1}x", o.burn["5m"]),
                format!("{:.1}x", o.burn["30m"]),
                format!("{:.1}x", o.burn["1h"]),
                format!("{:.1}x", o.burn["6h"]),
                o.state.clone(),
            ]);
        }
    }
    table(
        &[
            "ENDPOINT",
            "SLI",
            "TARGET",
            "BAD / REQUESTS",
            "BUDGET LEFT",
            "5M",
            "30M",
            "1H",
            "6H",
            "STATE",
        ],
        &rows,
    );
    println!("burn rate: bad share over the share allowed; pages at 14.4x over 1h and 5m, tickets at 6x over 6h and 30m");
}

fn next_firing(s: &weir_store::Schedule) -> Option<i64> {
    let cron = weir_engine::schedule::parse_cron(&s.cron).ok()?;
    weir_engine::schedule::next_after(&cron, s.last_fire_at.max(weir_core::now_ms()))
}

pub fn schedule_added(s: &weir_store::Schedule, json: bool) {
    let next = next_firing(s);
    if json {
        print_json(&json!({"schedule": s, "next": next}));
        return;
    }
    println!(
        "scheduled '{}': {} ({}), next at {} UTC; `weir scheduler` runs it",
        s.name,
        s.spec_file,
        s.cron,
        next.map_or("never".into(), time)
    );
}

pub fn schedules(list: &[weir_store::Schedule], json: bool) {
    if json {
        print_json(
            &list
                .iter()
                .map(|s| json!({"schedule": s, "next": next_firing(s)}))
                .collect::<Vec<_>>(),
        );
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.cron.clone(),
                s.off_peak.clone().unwrap_or_else(|| "-".into()),
                s.catch_up.clone(),
                next_firing(s).map_or("never".into(), time),
                s.spec_file.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "CRON (UTC)",
            "OFF-PEAK",
            "CATCH-UP",
            "NEXT (UTC)",
            "PIPELINE",
        ],
        &rows,
    );
}

pub fn firings(list: &[weir_store::Firing], json: bool) {
    if json {
        print_json(&list);
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            vec![
                time(f.scheduled_for),
                time(f.fired_at),
                f.outcome.clone(),
                f.run_id.clone().unwrap_or_else(|| "-".into()),
                f.detail.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SCHEDULED FOR (UTC)",
            "FIRED AT",
            "OUTCOME",
            "RUN",
            "DETAIL",
        ],
        &rows,
    );
}

pub fn audit(entries: &[weir_store::audit::AuditEntry], json: bool) {
    if json {
        print_json(&entries);
        return;
    }
    let change = |before: &serde_json::Value, after: &serde_json::Value| match (before, after) {
        (serde_json::Value::Null, a) => a.to_string(),
        (b, serde_json::Value::Null) => format!("was {b}"),
        (b, a) => format!("{b} -> {a}"),
    };
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                time(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                change(&e.before, &e.after),
            ]
        })
        .collect();
    table(
        &["SEQ", "AT (UTC)", "WHO", "ACTION", "TARGET", "CHANGE"],
        &rows,
    );
}

pub fn approval_requested(a: &weir_store::approvals::Approval, json: bool) {
    if json {
        print_json(a);
        return;
    }
    println!(
        "approval {} requested by {}: {} {} is held until someone else runs\n  weir approvals approve {}",
        a.id, a.requested_by, a.action, a.target, a.id
    );
}

pub fn approval_decided(a: &weir_store::approvals::Approval, done: Option<&str>, json: bool) {
    if json {
        print_json(&serde_json::json!({ "approval": a, "applied": done }));
        return;
    }
    match done {
        Some(done) => println!(
            "approved {} ({} {}); applied: {done}",
            a.id, a.action, a.target
        ),
        None => println!(
            "rejected {} ({} {}); nothing changed",
            a.id, a.action, a.target
        ),
    }
}

pub fn approvals(list: &[weir_store::approvals::Approval], json: bool) {
    if json {
        print_json(&list);
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.action.clone(),
                a.target.clone(),
                a.requested_by.clone(),
                time(a.requested_at),
                a.status.clone(),
                a.decided_by.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ACTION",
            "TARGET",
            "REQUESTED BY",
            "AT (UTC)",
            "STATUS",
            "DECIDED BY",
        ],
        &rows,
    );
}

pub fn token_created(t: &weir_store::tokens::Token, text: &str, json: bool) {
    if json {
        print_json(
            &serde_json::json!({ "token": text, "id": t.id, "name": t.name,
            "role": t.role, "expires_at": t.expires_at }),
        );
        return;
    }
    println!("{text}");
    eprintln!(
        "token {} ({}, {}{}): shown this once; only its hash is kept. Clients send it as \
         `Authorization: Bearer ...` (MLflow: MLFLOW_TRACKING_TOKEN).",
        t.id,
        t.name,
        t.role.as_str(),
        t.expires_at
            .map_or(String::new(), |e| format!(", expires {} UTC", time(e)))
    );
}

pub fn tokens(list: &[weir_store::tokens::Token], json: bool) {
    if json {
        print_json(&list);
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.as_str().to_string(),
                time(t.created_at),
                t.expires_at.map_or("never".into(), time),
                if t.revoked_at.is_some() {
                    "revoked".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "ROLE", "CREATED (UTC)", "EXPIRES", "STATE"],
        &rows,
    );
}

/// Bytes for people: 1.2 MB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

pub fn fsck(report: &weir_engine::fsck::Report, json: bool) {
    if json {
        print_json(report);
        return;
    }
    println!(
        "verified {} blobs ({}) named by {} references; {} running runs, {} endpoints",
        report.blobs_verified,
        bytes(report.bytes_verified),
        report.references,
        report.runs_checked,
        report.endpoints_checked
    );
    if report.problems.is_empty() {
        println!("no problems");
        return;
    }
    println!("{} problems:", report.problems.len());
    for p in &report.problems {
        println!("  {:<12} {}: {}", p.kind, p.subject, p.detail);
        const SHOWN: usize = 5;
        for by in p.referenced_by.iter().take(SHOWN) {
            println!("               named by {by}");
        }
        if p.referenced_by.len() > SHOWN {
            println!("               and {} more", p.referenced_by.len() - SHOWN);
        }
        match &p.repaired {
            Some(what) => println!("               repaired: {what}"),
            None if p.kind == "missing" => println!(
                "               hint: restore it from a backup (weir restore), or run the pipeline again if a step makes it"
            ),
            None if p.kind == "corrupt" || p.kind == "orphaned-run" => {
                println!("               hint: weir fsck --repair")
            }
            None => {}
        }
    }
}

pub fn backup(r: &weir_engine::backup::BackupReport, json: bool) {
    if json {
        print_json(r);
        return;
    }
    println!(
        "backup {} in {}: metadata {}, {} blobs ({} new, {}) in {:.1}s",
        r.id,
        r.location,
        bytes(r.metadata_bytes),
        r.blobs,
        r.blobs_copied,
        bytes(r.bytes_copied),
        r.seconds
    );
    if !r.missing.is_empty() {
        eprintln!(
            "warning: {} blobs the store names were missing and are not in the backup (see `weir fsck`)",
            r.missing.len()
        );
    }
}

pub fn backups(list: &[weir_engine::backup::Manifest], json: bool) {
    if json {
        print_json(&list);
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                time(m.created_at),
                m.weir_version.clone(),
                bytes(m.metadata_bytes),
                m.blobs.len().to_string(),
            ]
        })
        .collect();
    table(&["ID", "TAKEN", "WEIR", "METADATA", "BLOBS"], &rows);
}

pub fn restored(r: &weir_engine::backup::RestoreReport, json: bool) {
    if json {
        print_json(r);
        return;
    }
    println!(
        "restored backup {} (taken {}): {} blobs ({} copied, {}) in {:.1}s",
        r.id,
        time(r.created_at),
        r.blobs,
        r.blobs_copied,
        bytes(r.bytes_copied),
        r.seconds
    );
}

pub fn gc(r: &weir_engine::gc::GcReport, json: bool) {
    if json {
        print_json(r);
        return;
    }
    let (moved, deleted) = match r.dry_run {
        true => ("would move", "would delete"),
        false => ("moved", "deleted"),
    };
    if !r.runs_removed.is_empty() {
        println!(
            "{} {} runs past [retention]:",
            if r.dry_run { "would remove" } else { "removed" },
            r.runs_removed.len()
        );
        for run in &r.runs_removed {
            println!(
                "  {}  {}  {}",
                run.run_id,
                run.pipeline,
                time(run.started_at)
            );
        }
    }
    println!(
        "{} blobs, {} named; {} unnamed but within the grace period",
        r.blobs, r.referenced, r.young
    );
    println!(
        "{moved} {} unnamed blobs ({}) to the trash; {deleted} {} from the trash, freeing {}",
        r.trashed,
        bytes(r.trashed_bytes),
        r.deleted,
        bytes(r.bytes_freed)
    );
    if r.rescued > 0 {
        println!("moved {} back: named again while gc ran", r.rescued);
    }
    if r.trashed > 0 && !r.dry_run {
        println!(
            "the trash is emptied by a `weir gc` once its blobs have waited the grace period there"
        );
    }
}
