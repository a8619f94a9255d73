//! The lineage graph: what a model, dataset version or run was made from,
//! and what was made from it, read from the records every step already
//! leaves (its inputs' digests, its outputs, the files it read, the run it
//! belonged to) rather than from a graph kept beside them, so the two can
//! never disagree.
//!
//! Data flows along the edges: a file is read by a step, a step writes an
//! artifact, an artifact is an input of a later step, is registered as a
//! model version, which an endpoint serves. An artifact that is a dataset
//! version is that dataset version's node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// Past this many nodes a walk stops and says it was cut short.
pub const MAX_NODES: usize = 2_000;

/// Where to walk from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Upstream,
    Downstream,
    Both,
}

/// What the walk starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Model { name: String, version: Option<i64> },
    Dataset { name: String, version: Option<i64> },
    Run(String),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Node {
    /// `model:NAME:V`, `deployment:ENDPOINT`, `run:ID`, `step:ID`,
    /// `dataset:NAME@V`, `artifact:DIGEST`, `file:PATH@DIGEST`.
    pub id: String,
    pub kind: &'static str,
    pub label: String,
    pub attributes: Value,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// read, wrote, input, registered, serves, ran.
    pub relation: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    /// The node the walk started from.
    pub root: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// True when the walk stopped at [`MAX_NODES`].
    pub truncated: bool,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Graphviz, for `dot -Tsvg`.
    pub fn to_dot(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out =
            String::from("digraph lineage {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
        for n in &self.nodes {
            let shape = match n.kind {
                "model" => "box3d",
                "deployment" => "doubleoctagon",
                "run" => "folder",
                "step" => "box",
                "dataset" => "cylinder",
                "file" => "note",
                _ => "ellipse",
            };
            let style = if n.id == self.root {
                ", style=bold"
            } else {
                ""
            };
            // Graphviz's own escape for a line break inside a label.
            let label = quote(&format!("{}\n{}", n.kind, n.label)).replace('\n', "\\n");
            out.push_str(&format!(
                "  {} [label={label}, shape={shape}{style}];\n",
                quote(&n.id),
            ));
        }
        for e in &self.edges {
            out.push_str(&format!(
                "  {} -> {} [label={}];\n",
                quote(&e.from),
                quote(&e.to),
                quote(&e.relation)
            ));
        }
        out.push_str("}\n");
        out
    }
}

/// A step run as the walk needs it.
struct StepRow {
    id: String,
    run_id: String,
    step: String,
    kind: String,
    status: String,
    inputs_json: String,
    sources_json: String,
    cached_from: Option<String>,
    /// What its cache key was made of: a command's interpreter and the
    /// lockfiles' digests among them.
    cache_components: Option<String>,
}

const STEP_ROW: &str =
    "id, run_id, step, kind, status, inputs_json, sources_json, cached_from, cache_components";

fn step_row(r: &sqlx::any::AnyRow) -> Result<StepRow> {
    Ok(StepRow {
        id: r.try_get("id")?,
        run_id: r.try_get("run_id")?,
        step: r.try_get("step")?,
        kind: r.try_get("kind")?,
        status: r.try_get("status")?,
        inputs_json: r.try_get("inputs_json")?,
        sources_json: r.try_get("sources_json")?,
        cached_from: r.try_get("cached_from")?,
        cache_components: r.try_get("cache_components")?,
    })
}

/// The walk in progress.
struct Walk<'a> {
    store: &'a Store,
    nodes: BTreeMap<String, Node>,
    edges: BTreeSet<Edge>,
    /// Dataset versions by digest, read once per digest.
    datasets: BTreeMap<String, Option<(String, i64)>>,
    truncated: bool,
}

impl<'a> Walk<'a> {
    fn full(&mut self) -> bool {
        if self.nodes.len() >= MAX_NODES {
            self.truncated = true;
        }
        self.truncated
    }

    fn add(&mut self, id: String, kind: &'static str, label: String, attributes: Value) -> String {
        self.nodes.entry(id.clone()).or_insert(Node {
            id: id.clone(),
            kind,
            label,
            attributes,
        });
        id
    }

    fn edge(&mut self, from: &str, to: &str, relation: &str) {
        self.edges.insert(Edge {
            from: from.to_string(),
            to: to.to_string(),
            relation: relation.to_string(),
        });
    }

    /// The node of an artifact: its dataset version when it is one.
    async fn artifact(&mut self, digest: &str) -> Result<String> {
        if !self.datasets.contains_key(digest) {
            let row = sqlx::query(
                "SELECT name, version FROM dataset_versions WHERE digest = $1 \
                 ORDER BY created_at LIMIT 1",
            )
            .bind(digest)
            .fetch_optional(&self.store.pool)
            .await?;
            let found = match row {
                Some(r) => Some((r.try_get("name")?, r.try_get("version")?)),
                None => None,
            };
            self.datasets.insert(digest.to_string(), found);
        }
        Ok(match self.datasets[digest].clone() {
            Some((name, version)) => self.add(
                format!("dataset:{name}@{version}"),
                "dataset",
                format!("{name}@{version}"),
                json!({ "name": name, "version": version, "digest": digest }),
            ),
            None => self.add(
                format!("artifact:{digest}"),
                "artifact",
                digest[..digest.len().min(12)].to_string(),
                json!({ "digest": digest }),
            ),
        })
    }

    /// A step run's node, with its run's (params, code revision, Weir
    /// version) and the files it read.
    async fn step(&mut self, s: &StepRow) -> Result<String> {
        let id = format!("step:{}", s.id);
        if self.nodes.contains_key(&id) {
            return Ok(id);
        }
        self.add(
            id.clone(),
            "step",
            s.step.clone(),
            json!({
                "step_run_id": s.id, "run_id": s.run_id, "step": s.step, "kind": s.kind,
                "status": s.status, "cached_from": s.cached_from,
            }),
        );
        let run = self.run(&s.run_id).await?;
        self.edge(&run, &id, "ran");
        let sources: Vec<crate::runs::SourceFile> =
            serde_json::from_str(&s.sources_json).unwrap_or_default();
        for f in sources {
            let file = self.add(
                format!("file:{}@{}", f.path, f.digest),
                "file",
                f.path.clone(),
                json!({ "path": f.path, "digest": f.digest, "size": f.size }),
            );
            self.edge(&file, &id, "read");
        }
        // A command's environment: the interpreter it resolved to and the
        // project's lockfiles, as its cache key recorded them.
        let components: BTreeMap<String, String> = s
            .cache_components
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        if let Some(program) = components.get("interpreter") {
            let node = self.add(
                format!("interpreter:{program}"),
                "interpreter",
                program.clone(),
                json!({ "path": program }),
            );
            self.edge(&node, &id, "ran with");
        }
        for (key, digest) in &components {
            if let Some(name) = key.strip_prefix("lockfile ") {
                let node = self.add(
                    format!("lockfile:{name}@{digest}"),
                    "lockfile",
                    name.to_string(),
                    json!({ "path": name, "digest": digest }),
                );
                self.edge(&node, &id, "pinned by");
            }
        }
        Ok(id)
    }

    async fn run(&mut self, run_id: &str) -> Result<String> {
        let id = format!("run:{run_id}");
        if self.nodes.contains_key(&id) {
            return Ok(id);
        }
        let run = self.store.run(run_id).await?;
        let params: Value = serde_json::from_str(&run.params_json).unwrap_or_default();
        let weir_version = sqlx::query_scalar::<_, String>(
            "SELECT value FROM run_tags WHERE run_id = $1 AND key = 'weir.version'",
        )
        .bind(run_id)
        .fetch_optional(&self.store.pool)
        .await?;
        Ok(self.add(
            id,
            "run",
            format!("{} {}", run.pipeline, &run.id[..run.id.len().min(12)]),
            json!({
                "run_id": run.id, "pipeline": run.pipeline, "spec_file": run.spec_file,
                "params": params, "git_rev": run.git_rev, "status": run.status.as_str(),
                "started_at": run.started_at, "weir_version": weir_version,
            }),
        ))
    }

    async fn model(&mut self, v: &crate::ModelVersion) -> String {
        self.add(
            format!("model:{}:{}", v.name, v.version),
            "model",
            format!("{}:{}", v.name, v.version),
            json!({
                "name": v.name, "version": v.version, "digest": v.digest, "run_id": v.run_id,
                "status": v.status, "created_at": v.created_at,
            }),
        )
    }

    /// The step run that wrote `digest`, with the output's name: one of
    /// `prefer_run`'s if it has one.
    async fn producers(
        &self,
        digest: &str,
        prefer_run: Option<&str>,
    ) -> Result<Vec<(StepRow, String)>> {
        let rows = sqlx::query(
            "SELECT s.id, s.run_id, s.step, s.kind, s.status, s.inputs_json, s.sources_json, \
             s.cached_from, s.cache_components, o.name AS output FROM step_runs s \
             JOIN step_outputs o ON o.step_run_id = s.id WHERE o.digest = $1 ORDER BY s.started_at",
        )
        .bind(digest)
        .fetch_all(&self.store.pool)
        .await?;
        let all: Vec<(StepRow, String)> = rows
            .iter()
            .map(|r| Ok((step_row(r)?, r.try_get("output")?)))
            .collect::<Result<_>>()?;
        // One producer is the lineage: the one in the consumer's own run,
        // else the first that made it (later ones were cache hits of it or
        // made the same bytes again).
        let preferred = all
            .iter()
            .position(|(s, _)| Some(s.run_id.as_str()) == prefer_run)
            .unwrap_or(0);
        Ok(all.into_iter().skip(preferred).take(1).collect())
    }

    /// Walks from the step runs in `frontier` to everything they came from.
    async fn upstream(&mut self, mut frontier: VecDeque<StepRow>) -> Result<()> {
        let mut seen = BTreeSet::new();
        while let Some(s) = frontier.pop_front() {
            if !seen.insert(s.id.clone()) || self.full() {
                continue;
            }
            let step = self.step(&s).await?;
            let inputs: BTreeMap<String, Value> =
                serde_json::from_str(&s.inputs_json).unwrap_or_default();
            for (name, input) in inputs {
                let Some(digest) = input["digest"].as_str() else {
                    continue;
                };
                let artifact = self.artifact(digest).await?;
                self.edge(&artifact, &step, &format!("input {name}"));
                for (p, output) in self.producers(digest, Some(&s.run_id)).await? {
                    let producer = self.step(&p).await?;
                    self.edge(&producer, &artifact, &format!("wrote {output}"));
                    frontier.push_back(p);
                }
            }
        }
        Ok(())
    }

    /// Walks from artifacts to every step that read them, what those
    /// wrote, the model versions registered from it and the endpoints that
    /// serve them.
    async fn downstream(&mut self, mut digests: VecDeque<String>) -> Result<()> {
        let mut seen = BTreeSet::new();
        let deployments = self.store.deployments().await?;
        while let Some(digest) = digests.pop_front() {
            if !seen.insert(digest.clone()) || self.full() {
                continue;
            }
            let artifact = self.artifact(&digest).await?;
            // A digest is 64 hex digits: no other text in inputs_json holds it.
            let readers = sqlx::query(&format!(
                "SELECT {STEP_ROW} FROM step_runs WHERE inputs_json LIKE $1 ORDER BY started_at"
            ))
            .bind(format!("%\"{digest}\"%"))
            .fetch_all(&self.store.pool)
            .await?;
            for r in readers.iter().map(step_row) {
                let r = r?;
                let step = self.step(&r).await?;
                let inputs: BTreeMap<String, Value> =
                    serde_json::from_str(&r.inputs_json).unwrap_or_default();
                for (name, input) in &inputs {
                    if input["digest"].as_str() == Some(digest.as_str()) {
                        self.edge(&artifact, &step, &format!("input {name}"));
                    }
                }
                for (name, out) in self.store.step_outputs(&r.id).await? {
                    let out = out.digest.hex();
                    let node = self.artifact(&out).await?;
                    self.edge(&step, &node, &format!("wrote {name}"));
                    digests.push_back(out);
                }
            }
            let versions = sqlx::query(&format!(
                "SELECT {} FROM model_versions WHERE digest = $1 ORDER BY name, version",
                crate::models::VERSION_COLUMNS
            ))
            .bind(&digest)
            .fetch_all(&self.store.pool)
            .await?;
            for v in versions.iter().map(crate::models::version_from_row) {
                let v = v?;
                let model = self.model(&v).await;
                self.edge(&artifact, &model, "registered");
                for d in deployments.iter().filter(|d| d.model == v.name) {
                    let role = if d.stable == Some(v.version) {
                        "serves (stable)"
                    } else if d.candidate == Some(v.version) {
                        "serves (candidate)"
                    } else {
                        continue;
                    };
                    let endpoint = self.add(
                        format!("deployment:{}", d.endpoint),
                        "deployment",
                        d.endpoint.clone(),
                        json!({ "endpoint": d.endpoint, "model": d.model, "stable": d.stable,
                                "candidate": d.candidate, "phase": d.phase }),
                    );
                    self.edge(&model, &endpoint, role);
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The lineage graph around `start`.
    pub async fn lineage(&self, start: &Start, direction: Direction) -> Result<Graph> {
        let mut walk = Walk {
            store: self,
            nodes: BTreeMap::new(),
            edges: BTreeSet::new(),
            datasets: BTreeMap::new(),
            truncated: false,
        };
        let up = direction != Direction::Downstream;
        let down = direction != Direction::Upstream;
        let root = match start {
            Start::Model { name, version } => {
                let v = self.model_version(name, *version).await?;
                let root = walk.model(&v).await;
                if up {
                    match &v.digest {
                        Some(digest) => {
                            let artifact = walk.artifact(digest).await?;
                            walk.edge(&artifact, &root, "registered");
                            let producers = walk.producers(digest, v.run_id.as_deref()).await?;
                            for (p, output) in &producers {
                                let step = walk.step(p).await?;
                                walk.edge(&step, &artifact, &format!("wrote {output}"));
                            }
                            walk.upstream(producers.into_iter().map(|(p, _)| p).collect())
                                .await?;
                        }
                        // Registered through the MLflow API: its run is all
                        // that is known.
                        None => {
                            if let Some(run) = v.run_id.as_deref() {
                                if let Ok(run) = walk.run(run).await {
                                    walk.edge(&run, &root, "registered");
                                }
                            }
                        }
                    }
                }
                if down {
                    if let Some(digest) = &v.digest {
                        walk.downstream(VecDeque::from([digest.clone()])).await?;
                    }
                }
                root
            }
            Start::Dataset { name, version } => {
                let d = self.dataset_version(name, *version).await?;
                let root = walk.artifact(&d.digest).await?;
                if up {
                    let producer =
                        sqlx::query(&format!("SELECT {STEP_ROW} FROM step_runs WHERE id = $1"))
                            .bind(&d.step_run_id)
                            .fetch_all(&self.pool)
                            .await?;
                    let producers: Vec<StepRow> =
                        producer.iter().map(step_row).collect::<Result<_>>()?;
                    for p in &producers {
                        let step = walk.step(p).await?;
                        walk.edge(&step, &root, &format!("wrote {}", d.output));
                    }
                    walk.upstream(producers.into()).await?;
                }
                if down {
                    walk.downstream(VecDeque::from([d.digest.clone()])).await?;
                }
                root
            }
            Start::Run(id) => {
                let run = self.run(id).await?;
                let root = walk.run(&run.id).await?;
                let steps = sqlx::query(&format!(
                    "SELECT {STEP_ROW} FROM step_runs WHERE run_id = $1 ORDER BY started_at"
                ))
                .bind(&run.id)
                .fetch_all(&self.pool)
                .await?;
                let steps: Vec<StepRow> = steps.iter().map(step_row).collect::<Result<_>>()?;
                let mut outputs = VecDeque::new();
                for s in &steps {
                    walk.step(s).await?;
                    for (_, out) in self.step_outputs(&s.id).await? {
                        outputs.push_back(out.digest.hex());
                    }
                }
                if up {
                    walk.upstream(steps.into()).await?;
                }
                if down {
                    walk.downstream(outputs).await?;
                }
                root
            }
        };
        Ok(Graph {
            root,
            nodes: walk.nodes.into_values().collect(),
            edges: walk.edges.into_iter().collect(),
            truncated: walk.truncated,
        })
    }

    /// What `reference` names: `NAME:V` or `NAME@V`, a run id (or its
    /// prefix), else a model or dataset by name (its latest version).
    pub async fn lineage_start(&self, reference: &str) -> Result<Start> {
        let version = |v: &str, what: &str| {
            v.parse::<i64>().map_err(|_| {
                StoreError::Invalid(format!(
                    "'{reference}': {what} version '{v}' is not a number; e.g. {}",
                    if what == "dataset" {
                        "flights@2"
                    } else {
                        "flights-delay:3"
                    }
                ))
            })
        };
        if let Some((name, v)) = reference.rsplit_once('@') {
            return Ok(Start::Dataset {
                name: name.to_string(),
                version: Some(version(v, "dataset")?),
            });
        }
        if let Some((name, v)) = reference.rsplit_once(':') {
            return Ok(Start::Model {
                name: name.to_string(),
                version: Some(version(v, "model")?),
            });
        }
        if let Ok(run) = self.run(reference).await {
            return Ok(Start::Run(run.id));
        }
        if self.model_version(reference, None).await.is_ok() {
            return Ok(Start::Model {
                name: reference.to_string(),
                version: None,
            });
        }
        if self.latest_dataset_version(reference).await?.is_some() {
            return Ok(Start::Dataset {
                name: reference.to_string(),
                version: None,
            });
        }
        Err(StoreError::NotFound {
            kind: "model, dataset or run",
            id: reference.to_string(),
            hint: "give MODEL[:VERSION], DATASET[@VERSION] or a run id \
                   (weir models list, weir datasets list, weir runs list)"
                .to_string(),
        })
    }
}
