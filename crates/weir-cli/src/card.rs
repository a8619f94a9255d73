//! Model cards: what a model version is for, what it was trained on, how it
//! scores overall and per slice (the largest gaps between slices flagged),
//! where it came from and what is known to limit it. Built from what the
//! registry and the lineage graph already hold, as one document rendered
//! both as Markdown and as a self-contained HTML page.

use std::fmt::Write;

use serde_json::Value;
use weir_store::lineage::{Direction, Start};
use weir_store::Store;

/// A gap in one metric between two slices above this is flagged.
pub const GAP_FLAG: f64 = 0.05;
use weir_engine::ops::gates::SMALL_SLICE;

enum Block {
    Para(String),
    /// Header, rows; a cell starting with `!` is flagged (drawn highlighted).
    Table(Vec<String>, Vec<Vec<String>>),
    List(Vec<String>),
}

struct Section {
    title: String,
    blocks: Vec<Block>,
}

pub struct Card {
    pub title: String,
    sections: Vec<Section>,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn fmt(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e12 {
        format!("{x}")
    } else {
        format!("{x:.4}")
    }
}

pub async fn build(store: &Store, name: &str, version: Option<i64>) -> anyhow::Result<Card> {
    let detail = store
        .version_detail(name, store.model_version(name, version).await?.version)
        .await?;
    let v = &detail.version;
    let metrics: Value = serde_json::from_str(&v.metrics_json).unwrap_or_default();
    let start = Start::Model {
        name: v.name.clone(),
        version: Some(v.version),
    };
    let graph = store.lineage(&start, Direction::Upstream).await?;
    let served = store.lineage(&start, Direction::Downstream).await?;
    let run = match &v.run_id {
        Some(id) => store.run(id).await.ok(),
        None => None,
    };
    let pipeline: Option<weir_core::pipeline::Pipeline> = run
        .as_ref()
        .and_then(|r| serde_json::from_str(&r.spec_json).ok());
    let cost = match &v.run_id {
        Some(id) => store.costs_of_runs(&[id]).await?.get(id).copied(),
        None => None,
    };
    let run_node = graph.nodes.iter().find(|n| n.kind == "run");
    let attr = |key: &str| {
        run_node
            .and_then(|n| n.attributes[key].as_str())
            .unwrap_or("-")
            .to_string()
    };
    let serving: Vec<String> = served
        .edges
        .iter()
        .filter(|e| e.relation.starts_with("serves"))
        .map(|e| {
            format!(
                "{} ({})",
                e.to.trim_start_matches("deployment:"),
                e.relation
            )
        })
        .collect();
    let mut sections = Vec::new();
    let mut limits = Vec::new();

    sections.push(Section {
        title: "Overview".into(),
        blocks: vec![Block::Table(
            vec!["".into(), "".into()],
            vec![
                vec!["Registered".into(), crate::output::time_utc(v.created_at)],
                vec![
                    "Model file".into(),
                    v.digest.clone().unwrap_or_else(|| v.source.clone()),
                ],
                vec![
                    "Trained by run".into(),
                    format!(
                        "{} (pipeline {})",
                        v.run_id.as_deref().unwrap_or("-"),
                        attr("pipeline")
                    ),
                ],
                vec!["Code revision".into(), attr("git_rev")],
                vec!["Weir".into(), attr("weir_version")],
                vec![
                    "Training cost".into(),
                    cost.map_or("-".into(), |c| format!("${c:.6}")),
                ],
                vec![
                    "Aliases".into(),
                    if detail.aliases.is_empty() {
                        "-".into()
                    } else {
                        detail.aliases.join(", ")
                    },
                ],
                vec![
                    "Serving".into(),
                    if serving.is_empty() {
                        "not served".into()
                    } else {
                        serving.join(", ")
                    },
                ],
            ],
        )],
    });

    let intended = pipeline
        .as_ref()
        .and_then(|p| p.description.clone())
        .or_else(|| v.description.clone());
    if intended.is_none() {
        limits.push("No intended use is stated: give the pipeline a `description:`.".to_string());
    }
    sections.push(Section {
        title: "Intended use".into(),
        blocks: vec![Block::Para(
            intended.unwrap_or_else(|| "Not stated.".into()),
        )],
    });

    let mut data = Vec::new();
    let datasets: Vec<Vec<String>> = graph
        .nodes
        .iter()
        .filter(|n| n.kind == "dataset")
        .map(|n| {
            vec![
                n.label.clone(),
                n.attributes["digest"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let files: Vec<Vec<String>> = graph
        .nodes
        .iter()
        .filter(|n| n.kind == "file")
        .map(|n| {
            vec![
                n.label.clone(),
                n.attributes["digest"].as_str().unwrap_or("").to_string(),
                n.attributes["size"].to_string(),
            ]
        })
        .collect();
    if datasets.is_empty() && files.is_empty() {
        data.push(Block::Para(
            "No lineage: the version was registered from outside a pipeline.".into(),
        ));
        limits.push("What it was trained on is not recorded.".into());
    }
    if !datasets.is_empty() {
        data.push(Block::Table(
            vec!["Dataset version".into(), "Digest".into()],
            datasets,
        ));
    }
    if !files.is_empty() {
        data.push(Block::Table(
            vec!["Source file".into(), "Digest".into(), "Bytes".into()],
            files,
        ));
    }
    if let Some(params) = run_node.map(|n| &n.attributes["params"]) {
        if params.as_object().is_some_and(|p| !p.is_empty()) {
            data.push(Block::Para(format!("Run parameters: {params}")));
        }
    }
    sections.push(Section {
        title: "Data".into(),
        blocks: data,
    });

    let overall: Vec<Vec<String>> = metrics["overall"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| num(x).map(|x| vec![k.clone(), fmt(x)]))
                .collect()
        })
        .unwrap_or_default();
    if overall.is_empty() {
        limits.push("No evaluation metrics were recorded with this version.".into());
    }
    let on = metrics["prefix"]
        .as_str()
        .map_or(String::new(), |p| format!(" ({p} set)"));
    sections.push(Section {
        title: format!("Metrics{on}"),
        blocks: vec![if overall.is_empty() {
            Block::Para("None recorded.".into())
        } else {
            Block::Table(vec!["Metric".into(), "Value".into()], overall)
        }],
    });

    let mut slice_blocks = Vec::new();
    if let Some(slices) = metrics["slices"].as_object() {
        for (column, values) in slices {
            let Some(values) = values.as_object() else {
                continue;
            };
            let found = weir_engine::ops::gates::slice_gaps(values);
            let flagged: Vec<&(String, f64, String, String)> =
                found.iter().filter(|g| g.1 > GAP_FLAG).collect();
            let mut keys: Vec<String> = found.iter().map(|g| g.0.clone()).collect();
            keys.sort();
            let mut header = vec![column.clone(), "rows".into()];
            header.extend(keys.iter().cloned());
            let rows: Vec<Vec<String>> = values
                .iter()
                .map(|(slice, m)| {
                    let rows = num(&m["rows"]).unwrap_or(0.0);
                    if rows > 0.0 && rows < SMALL_SLICE {
                        limits.push(format!(
                            "{column} = {slice} has only {} rows: its figures are uncertain.",
                            fmt(rows)
                        ));
                    }
                    let mut row = vec![slice.clone(), fmt(rows)];
                    for k in &keys {
                        let x = num(&m[k.as_str()]);
                        let ends = flagged
                            .iter()
                            .any(|g| &g.0 == k && (&g.2 == slice || &g.3 == slice));
                        row.push(match x {
                            Some(x) if ends => format!("!{}", fmt(x)),
                            Some(x) => fmt(x),
                            None => String::new(),
                        });
                    }
                    row
                })
                .collect();
            slice_blocks.push(Block::Para(format!("By {column}:")));
            slice_blocks.push(Block::Table(header, rows));
            if flagged.is_empty() {
                slice_blocks.push(Block::Para(format!(
                    "No metric differs by more than {GAP_FLAG} between {column} slices."
                )));
            } else {
                let items: Vec<String> = flagged
                    .iter()
                    .map(|(metric, gap, lo, hi)| {
                        format!(
                            "{metric}: {} between {column} = {lo} and {column} = {hi}",
                            fmt(*gap)
                        )
                    })
                    .collect();
                if let Some((metric, gap, lo, hi)) = flagged.first() {
                    limits.push(format!(
                        "It is least even across {column}: {metric} differs by {} ({lo} against {hi}).",
                        fmt(*gap)
                    ));
                }
                slice_blocks.push(Block::Para(format!(
                    "Largest gaps (flagged above {GAP_FLAG}; slices under {SMALL_SLICE} rows left out):"
                )));
                slice_blocks.push(Block::List(items));
            }
        }
    }
    if slice_blocks.is_empty() {
        slice_blocks.push(Block::Para(
            "Not evaluated by slice: give weir/evaluate `slice_by:` to see how it does for each group."
                .into(),
        ));
        limits.push("How it does for each group of the data is not known.".into());
    }
    let lineage: Value = serde_json::from_str(&v.lineage_json).unwrap_or_default();
    if let Some(verdicts) = lineage["gates"].as_array() {
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|g| {
                let passed = g["passed"].as_bool().unwrap_or(false);
                vec![
                    g["gate"].as_str().unwrap_or("").to_string(),
                    num(&g["value"]).map_or(String::new(), fmt),
                    num(&g["bound"]).map_or("-".into(), fmt),
                    if passed {
                        "passed".into()
                    } else {
                        "!failed".into()
                    },
                    g["note"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        if rows.iter().any(|r| r[3] == "!failed") {
            limits.push("Its registration gates rejected it: it is not to be promoted.".into());
        }
        sections.push(Section {
            title: "Gates".into(),
            blocks: vec![Block::Table(
                vec![
                    "Gate".into(),
                    "Value".into(),
                    "Bound".into(),
                    "".into(),
                    "".into(),
                ],
                rows,
            )],
        });
    }
    sections.push(Section {
        title: "Slices (fairness)".into(),
        blocks: slice_blocks,
    });

    let steps: Vec<String> = graph
        .nodes
        .iter()
        .filter(|n| n.kind == "step")
        .map(|n| {
            format!(
                "{} ({}, step run {})",
                n.label,
                n.attributes["kind"].as_str().unwrap_or(""),
                n.attributes["step_run_id"].as_str().unwrap_or("")
            )
        })
        .collect();
    sections.push(Section {
        title: "Lineage".into(),
        blocks: vec![
            Block::List(if steps.is_empty() {
                vec!["none recorded".into()]
            } else {
                steps
            }),
            Block::Para(format!(
                "The whole graph: weir lineage {}:{}",
                v.name, v.version
            )),
        ],
    });
    limits.dedup();
    sections.push(Section {
        title: "Known limits".into(),
        blocks: vec![if limits.is_empty() {
            Block::Para("None found in what was recorded.".into())
        } else {
            Block::List(limits)
        }],
    });
    Ok(Card {
        title: format!("Model card: {} version {}", v.name, v.version),
        sections,
    })
}

impl Card {
    pub fn markdown(&self) -> String {
        let cell = |c: &str| {
            let c = c.replace('|', "\\|");
            match c.strip_prefix('!') {
                Some(flagged) => format!("**{flagged}** ⚠"),
                None => c,
            }
        };
        let mut out = format!("# {}\n", self.title);
        for s in &self.sections {
            let _ = write!(out, "\n## {}\n", s.title);
            for b in &s.blocks {
                match b {
                    Block::Para(p) => {
                        let _ = write!(out, "\n{p}\n");
                    }
                    Block::List(items) => {
                        out.push('\n');
                        for i in items {
                            let _ = writeln!(out, "- {i}");
                        }
                    }
                    Block::Table(header, rows) => {
                        let _ = write!(
                            out,
                            "\n| {} |\n|{}|\n",
                            header
                                .iter()
                                .map(|h| cell(h))
                                .collect::<Vec<_>>()
                                .join(" | "),
                            header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
                        );
                        for r in rows {
                            let _ = writeln!(
                                out,
                                "| {} |",
                                r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                            );
                        }
                    }
                }
            }
        }
        out
    }

    /// One page, nothing fetched; every value escaped.
    pub fn html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut out = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
             <style>body{{font:14px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left}}\
             td.flag{{background:#fdecea;font-weight:600}}h2{{border-bottom:1px solid #eee}}</style></head><body>\n<h1>{}</h1>\n",
            esc(&self.title),
            esc(&self.title)
        );
        for s in &self.sections {
            let _ = writeln!(out, "<h2>{}</h2>", esc(&s.title));
            for b in &s.blocks {
                match b {
                    Block::Para(p) => {
                        let _ = writeln!(out, "<p>{}</p>", esc(p));
                    }
                    Block::List(items) => {
                        out.push_str("<ul>");
                        for i in items {
                            let _ = write!(out, "<li>{}</li>", esc(i));
                        }
                        out.push_str("</ul>\n");
                    }
                    Block::Table(header, rows) => {
                        out.push_str("<table><tr>");
                        for h in header {
                            let _ = write!(out, "<th>{}</th>", esc(h));
                        }
                        out.push_str("</tr>");
                        for r in rows {
                            out.push_str("<tr>");
                            for c in r {
                                let _ = match c.strip_prefix('!') {
                                    Some(f) => write!(
                                        out,
                                        "<td class=\"flag\" title=\"an end of this metric's largest gap\">{}</td>",
                                        esc(f)
                                    ),
                                    None => write!(out, "<td>{}</td>", esc(c)),
                                };
                            }
                            out.push_str("</tr>");
                        }
                        out.push_str("</table>\n");
                    }
                }
            }
        }
        out.push_str("</body></html>\n");
        out
    }
}
