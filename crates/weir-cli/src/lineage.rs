//! `weir lineage` for people: the graph as indented trees from its root,
//! upstream (what it came from) and downstream (what was made from it).

use std::collections::BTreeSet;
use std::fmt::Write;

use weir_store::lineage::{Direction, Graph, Node};

pub fn render(graph: &Graph, direction: Direction) -> String {
    let mut out = String::new();
    let Some(root) = graph.node(&graph.root) else {
        return out;
    };
    let _ = writeln!(out, "{} {}", root.kind, root.label);
    // A run's lineage is its steps': each is a tree of its own.
    let starts: Vec<&Node> = match root.kind {
        "run" => graph
            .edges
            .iter()
            .filter(|e| e.relation == "ran" && e.from == root.id)
            .filter_map(|e| graph.node(&e.to))
            .collect(),
        _ => vec![root],
    };
    let trees = |up: bool, out: &mut String| {
        let mut seen = BTreeSet::new();
        for start in &starts {
            let depth = match start.id == root.id {
                true => 1,
                false => {
                    let _ = writeln!(out, "  step {}", describe(start));
                    2
                }
            };
            tree(graph, start, up, depth, &mut seen, out);
        }
    };
    if direction != Direction::Downstream {
        let _ = writeln!(out, "\nupstream (what it came from):");
        trees(true, &mut out);
    }
    if direction != Direction::Upstream {
        let _ = writeln!(out, "\ndownstream (what was made from it):");
        let before = out.len();
        trees(false, &mut out);
        if out.len() == before {
            let _ = writeln!(out, "  nothing yet");
        }
    }
    let runs: Vec<&Node> = graph.nodes.iter().filter(|n| n.kind == "run").collect();
    if !runs.is_empty() {
        let _ = writeln!(out, "\nruns:");
        for r in runs {
            let a = &r.attributes;
            let _ = writeln!(
                out,
                "  {}  {}  git {}  weir {}  params {}",
                a["run_id"].as_str().unwrap_or(""),
                a["pipeline"].as_str().unwrap_or(""),
                a["git_rev"].as_str().map_or("-", |g| &g[..g.len().min(12)]),
                a["weir_version"].as_str().unwrap_or("-"),
                a["params"]
            );
        }
    }
    if graph.truncated {
        let _ = writeln!(
            out,
            "\n(cut short at {} nodes: ask for --upstream or --downstream, or --json)",
            weir_store::lineage::MAX_NODES
        );
    }
    out
}

/// One node's neighbours in one direction, depth first; a node reached a
/// second time is named, not expanded again.
fn tree(
    graph: &Graph,
    node: &Node,
    up: bool,
    depth: usize,
    seen: &mut BTreeSet<String>,
    out: &mut String,
) {
    if !seen.insert(node.id.clone()) {
        return;
    }
    for e in &graph.edges {
        // Runs are listed on their own; a step names its run.
        if e.relation == "ran" {
            continue;
        }
        let next = match up {
            true if e.to == node.id => &e.from,
            false if e.from == node.id => &e.to,
            _ => continue,
        };
        let Some(n) = graph.node(next) else { continue };
        let again = seen.contains(&n.id);
        let _ = writeln!(
            out,
            "{}{} {} {} {}{}",
            "  ".repeat(depth),
            if up { "<-" } else { "->" },
            e.relation,
            n.kind,
            describe(n),
            if again { "  (see above)" } else { "" }
        );
        tree(graph, n, up, depth + 1, seen, out);
    }
}

fn describe(n: &Node) -> String {
    let a = &n.attributes;
    let short = |key: &str| {
        a[key]
            .as_str()
            .map(|d| d[..d.len().min(12)].to_string())
            .unwrap_or_default()
    };
    match n.kind {
        "step" => format!(
            "{} (run {}, {}{})",
            n.label,
            short("run_id"),
            a["status"].as_str().unwrap_or(""),
            if a["cached_from"].is_string() {
                ", from the cache"
            } else {
                ""
            }
        ),
        "file" | "lockfile" => format!("{} @{}", n.label, short("digest")),
        "dataset" => format!("{} @{}", n.label, short("digest")),
        _ => n.label.clone(),
    }
}
