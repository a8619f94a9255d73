// Weir's dashboard: a single page over the tracking server's MLflow REST API.
// Every piece of user text (run names, params, tags, metric keys) reaches the
// page through textContent or attribute values set by the DOM API, never as
// markup: run names are attacker-controlled.
"use strict";

const API = "/ajax-api/2.0/mlflow";
const PAGE_SIZE = 50;
const PALETTE = ["#2463eb", "#e8590c", "#2e7d32", "#9c27b0", "#c62828", "#00838f", "#6d4c41", "#ad1457", "#5c6bc0", "#7cb342"];

// --- DOM and HTTP helpers --------------------------------------------------

/** h("a", {href: "#/x", class: "y"}, "text", child...): an element; strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class HttpError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let json = {};
  try { json = text ? JSON.parse(text) : {}; } catch (_) { json = { message: text }; }
  if (!res.ok) throw new HttpError(res.status, json.error_code, json.message || `${res.status} ${res.statusText}`);
  return json;
}
const get = (path, query) => call("GET", query ? `${path}?${new URLSearchParams(query)}` : path);
const post = (path, body) => call("POST", path, body);

function fmtNum(v) {
  if (typeof v !== "number") v = Number(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e12) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(4) : String(Number(v.toPrecision(6)));
}
function fmtTime(ms) { return ms ? new Date(Number(ms)).toLocaleString() : ""; }
function fmtDuration(start, end) {
  if (!start || !end) return "";
  const s = (Number(end) - Number(start)) / 1000;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
}
function runName(run) { return run.info.run_name || run.info.run_id.slice(0, 12); }
function kv(list) { return Object.fromEntries((list || []).map((x) => [x.key, x.value])); }
/** A key in MLflow's filter and order-by grammar: backquoted unless plain. */
function quoteKey(key) { return /^[A-Za-z_][A-Za-z0-9_.]*$/.test(key) ? key : "`" + key.replace(/`/g, "") + "`"; }

function errorBox(err) { return h("div", { class: "error", role: "alert" }, err.message || String(err)); }
function statusBadge(status) { return h("span", { class: `status ${status}` }, status); }

// --- charts (uPlot) --------------------------------------------------------

/** Exponential moving average with debiasing (as TensorBoard's smoothing). */
function smooth(values, weight) {
  if (!weight) return values;
  let last = 0, n = 0;
  return values.map((v) => {
    if (v === null) return null;
    last = last * weight + (1 - weight) * v;
    n += 1;
    return last / (1 - Math.pow(weight, n));
  });
}

const charts = new Set();
function dropCharts() { for (const c of charts) c.destroy(); charts.clear(); }
window.addEventListener("resize", () => {
  for (const c of charts) c.setSize({ width: c.root.parentElement.clientWidth, height: c.height });
});

/**
 * A line chart of several series on one x axis: zoom by dragging (double
 * click resets), values on hover in the legend, optional log y and smoothing.
 * series: [{label, x: [...], y: [...]}]; each may have its own x values.
 */
function lineChart(container, series, { xLabel = "step", logY = false, weight = 0, scatter = false } = {}) {
  const xs = [...new Set(series.flatMap((s) => s.x))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  for (const s of series) {
    const ys = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => { ys[index.get(x)] = logY && !(s.y[i] > 0) ? null : s.y[i]; });
    data.push(smooth(ys, weight));
  }
  const width = Math.max(container.clientWidth, 300);
  const opts = {
    width, height: 240,
    scales: { x: { time: xLabel === "time" }, y: { distr: logY ? 3 : 1 } },
    axes: [{ label: xLabel === "time" ? undefined : xLabel }, {}],
    cursor: { drag: { x: true, y: false } },
    series: [{ label: xLabel }, ...series.map((s, i) => ({
      label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
      paths: scatter ? () => null : undefined,
      points: { show: scatter || xs.length < 60, size: scatter ? 6 : 4 },
      value: (_, v) => (v === null || v === undefined ? "–" : fmtNum(v)),
    }))],
  };
  const chart = new uPlot(opts, data, container);
  charts.add(chart);
  return chart;
}

/** One metric's chart with its controls; history from the server, downsampled. */
function metricCard(key, runs) {
  const box = h("div");
  const state = { x: "step", log: false, weight: 0 };
  const note = h("span", { class: "muted" });
  let loaded = null;
  const draw = () => {
    box.replaceChildren();
    if (!loaded) return;
    const series = loaded.map(({ run, hist }) => ({
      label: runs.length > 1 ? runName(run) : key,
      x: state.x === "time" ? hist.timestamps.map((t) => t / 1000) : hist.steps,
      y: hist.values,
    }));
    lineChart(box, series, { xLabel: state.x, logY: state.log, weight: state.weight });
  };
  const controls = h("div", { class: "controls" },
    h("label", {}, "x ", h("select", { onchange: (e) => { state.x = e.target.value; draw(); } },
      h("option", { value: "step" }, "step"), h("option", { value: "time" }, "time"))),
    h("label", {}, h("input", { type: "checkbox", onchange: (e) => { state.log = e.target.checked; draw(); } }), " log y"),
    h("label", {}, "smoothing ", h("input", {
      type: "range", min: "0", max: "0.99", step: "0.01", value: "0",
      oninput: (e) => { state.weight = Number(e.target.value); draw(); },
    })),
    note);
  const card = h("div", { class: "card", "data-metric": key }, h("h3", {}, key), controls, box);
  Promise.all(runs.map((run) => get("/api/ui/metric-history", { run_id: run.info.run_id, metric_key: key, max_points: 1000 })
    .then((hist) => ({ run, hist }))))
    .then((all) => {
      loaded = all;
      const total = all.reduce((n, a) => n + a.hist.total, 0);
      const shown = all.reduce((n, a) => n + a.hist.values.length, 0);
      note.textContent = total > shown ? `${shown} of ${total} points` : `${total} points`;
      draw();
    })
    .catch((e) => box.replaceChildren(errorBox(e)));
  return card;
}

/** Parallel coordinates over numeric columns, one line per run, coloured by the last column. */
function parallelCoordinates(columns, rows) {
  const W = 1000, H = 300, pad = 90;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 40}`);
  svg.setAttribute("class", "parcoords");
  svg.setAttribute("width", "100%");
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const step = columns.length > 1 ? (W - 2 * pad) / (columns.length - 1) : 0;
  const ranges = columns.map((c) => {
    const vs = rows.map((r) => r.values[c]).filter(Number.isFinite);
    return [Math.min(...vs), Math.max(...vs)];
  });
  const y = (ci, v) => {
    const [lo, hi] = ranges[ci];
    return hi === lo ? H / 2 + 20 : 20 + (H - 20) * (1 - (v - lo) / (hi - lo));
  };
  const last = columns.length - 1;
  rows.forEach((r) => {
    const pts = columns.map((c, ci) => (Number.isFinite(r.values[c]) ? `${pad + ci * step},${y(ci, r.values[c])}` : null)).filter(Boolean);
    const [lo, hi] = ranges[last];
    const t = hi === lo ? 0.5 : (r.values[columns[last]] - lo) / (hi - lo);
    const line = el("polyline", { points: pts.join(" "), fill: "none", stroke: `hsl(${220 - 200 * (Number.isFinite(t) ? t : 0)}, 70%, 45%)`, "stroke-width": 1.5, opacity: 0.8 });
    const title = document.createElementNS(NS, "title");
    title.textContent = r.label;
    line.append(title);
  });
  columns.forEach((c, ci) => {
    const x = pad + ci * step;
    el("line", { x1: x, x2: x, y1: 20, y2: H, class: "axis" });
    el("text", { x, y: H + 16, "text-anchor": "middle" }, c.length > 24 ? c.slice(0, 23) + "…" : c);
    el("text", { x: x + 3, y: 16 }, fmtNum(ranges[ci][1]));
    el("text", { x: x + 3, y: H + 30 }, fmtNum(ranges[ci][0]));
  });
  return svg;
}

/** A pipeline run's steps as a left-to-right graph: a column per depth, a box per step. */
function dagSvg(steps, linkOf) {
  const NS = "http://www.w3.org/2000/svg";
  const byName = new Map(steps.map((s) => [s.name, s]));
  const depth = new Map();
  const depthOf = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const s = byName.get(name);
    const d = s ? Math.max(-1, ...s.after.filter((a) => byName.has(a)).map((a) => depthOf(a, seen))) + 1 : 0;
    depth.set(name, d);
    return d;
  };
  steps.forEach((s) => depthOf(s.name));
  const columns = [];
  for (const s of steps) (columns[depth.get(s.name)] ||= []).push(s);
  const BW = 190, BH = 50, GX = 70, GY = 18;
  const pos = new Map();
  columns.forEach((col, ci) => col.forEach((s, ri) => pos.set(s.name, { x: 10 + ci * (BW + GX), y: 10 + ri * (BH + GY) })));
  const width = 20 + columns.length * (BW + GX) - GX;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (BH + GY) - GY;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("class", "dag");
  const el = (parent, tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    parent.append(e);
    return e;
  };
  for (const s of steps) {
    const to = pos.get(s.name);
    for (const a of s.after) {
      const from = pos.get(a);
      if (!from) continue;
      const x1 = from.x + BW, y1 = from.y + BH / 2, x2 = to.x, y2 = to.y + BH / 2;
      el(svg, "path", { d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`, class: "edge" });
    }
  }
  for (const s of steps) {
    const { x, y } = pos.get(s.name);
    const state = s.cached_from ? "cached" : s.status;
    const a = el(svg, "a", { href: linkOf(s), "data-step": s.name, class: `node ${state}` });
    el(a, "rect", { x, y, width: BW, height: BH, rx: 6 });
    el(a, "text", { x: x + 10, y: y + 20, class: "name" }, s.name.length > 24 ? s.name.slice(0, 23) + "…" : s.name);
    const detail = s.cached_from ? "cache hit" : [s.status, fmtDuration(s.started_at, s.ended_at || (s.status === "running" ? Date.now() : null)), s.attempt > 1 ? `attempt ${s.attempt}` : ""].filter(Boolean).join(" · ");
    el(a, "text", { x: x + 10, y: y + 38, class: "detail" }, detail);
    const title = document.createElementNS(NS, "title");
    title.textContent = [s.name, s.cached_from ? `outputs reused from step run ${s.cached_from}` : `${s.status}${s.executor !== "local" ? ` on ${s.executor}${s.node ? " node " + s.node.slice(0, 12) : ""}` : ""}`, s.error || ""].filter(Boolean).join("\n");
    a.append(title);
  }
  return svg;
}

const timers = new Set();
function dropTimers() { for (const t of timers) clearTimeout(t); timers.clear(); }

/** The pipeline DAG of a run, refreshed every 2 s while the run is running; null if the run is no pipeline run. */
async function pipelineSection(runId, expId) {
  const load = () => get("/api/ui/pipeline-run", { run_id: runId });
  let doc;
  try { doc = await load(); } catch (e) { if (e.status === 404) return null; return errorBox(e); }
  const box = h("div", { class: "card dag-box", id: "dag" });
  const linkOf = (s) => `#/experiments/${encodeURIComponent(expId)}/runs/${encodeURIComponent(s.cached_from || s.step_run_id)}`;
  const summary = h("p", { class: "muted" });
  const draw = () => {
    const counts = {};
    for (const s of doc.steps) { const k = s.cached_from ? "cached" : s.status; counts[k] = (counts[k] || 0) + 1; }
    summary.textContent = `pipeline ${doc.pipeline} · ${doc.status} · ${Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ")}`;
    box.replaceChildren(summary, doc.steps.length ? dagSvg(doc.steps, linkOf) : h("p", { class: "muted" }, "No steps."));
  };
  draw();
  const poll = () => {
    const t = setTimeout(async () => {
      timers.delete(t);
      if (!box.isConnected) return;
      try { doc = await load(); draw(); } catch (_) { /* keep the last picture */ }
      if (doc.status === "running") poll();
    }, 2000);
    timers.add(t);
  };
  if (doc.status === "running") poll();
  return box;
}

// --- pages -----------------------------------------------------------------

/** Puts a page's parts in its root; absent parts (null, false) are skipped. */
function fill(root, ...parts) { root.replaceChildren(...parts.filter((p) => p !== null && p !== undefined && p !== false)); }

async function experimentsPage(root) {
  const res = await post(`${API}/experiments/search`, { max_results: 1000, view_type: "ACTIVE_ONLY" });
  const exps = res.experiments || [];
  const rows = exps.map((e) => h("tr", {},
    h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(e.experiment_id)}` }, e.name)),
    h("td", { class: "num" }, e.experiment_id),
    h("td", {}, fmtTime(e.last_update_time || e.creation_time))));
  fill(root, 
    h("h1", {}, "Experiments"),
    exps.length ? h("table", { id: "experiments" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "ID"), h("th", {}, "Last update"))), h("tbody", {}, rows))
      : h("p", { class: "muted" }, "No experiments yet. Log a run with the mlflow client (MLFLOW_TRACKING_URI=http://this-server) or run a pipeline."));
}

/** The runs table's state lives in the URL, so a filtered, sorted page can be shared. */
function runsPageState(query) {
  return {
    filter: query.get("filter") || "",
    order: query.get("order") || "attributes.start_time DESC",
    token: query.get("page") || "",
  };
}

async function runsPage(root, expId, query) {
  const state = runsPageState(query);
  const exp = await get(`${API}/experiments/get`, { experiment_id: expId }).then((r) => r.experiment);
  const colsKey = `weir.columns.${expId}`;
  const chosen = new Set(JSON.parse(localStorage.getItem(colsKey) || "null") || []);
  const selected = new Set();
  const search = h("input", { type: "search", id: "filter", value: state.filter, placeholder: "metrics.auc > 0.8 and params.model = 'gbdt'", "aria-label": "Filter runs" });
  const go = (patch) => {
    const q = new URLSearchParams({ filter: state.filter, order: state.order, ...patch });
    if (!q.get("filter")) q.delete("filter");
    if (!q.get("page")) q.delete("page");
    location.hash = `#/experiments/${encodeURIComponent(expId)}?${q}`;
  };
  const compare = h("button", { type: "button", class: "primary", id: "compare", disabled: true, onclick: () => {
    location.hash = `#/compare-runs?runs=${encodeURIComponent(JSON.stringify([...selected]))}&experiments=${encodeURIComponent(JSON.stringify([expId]))}`;
  } }, "Compare");
  const body = h("div");
  fill(root, 
    h("div", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " /"),
    h("h1", {}, exp.name),
    h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); go({ filter: search.value, page: "" }); } },
      search, h("button", { type: "submit" }, "Search"), compare),
    body);

  let res;
  try {
    res = await post(`${API}/runs/search`, {
      experiment_ids: [expId], filter: state.filter, max_results: PAGE_SIZE,
      order_by: [state.order], page_token: state.token || undefined,
    });
  } catch (e) {
    // A bad filter is the user's to fix: say why, keep the page.
    body.replaceChildren(errorBox(e));
    return;
  }
  const runs = res.runs || [];
  const keys = { metrics: new Set(), params: new Set(), tags: new Set() };
  for (const r of runs) {
    for (const m of r.data.metrics || []) keys.metrics.add(m.key);
    for (const p of r.data.params || []) keys.params.add(p.key);
    for (const t of r.data.tags || []) if (!t.key.startsWith("mlflow.")) keys.tags.add(t.key);
  }
  // Until the user picks, the first metrics and params are the columns.
  const columns = chosen.size ? [...chosen].map((c) => JSON.parse(c)) : [
    ...[...keys.metrics].sort().slice(0, 6).map((k) => ["metrics", k]),
    ...[...keys.params].sort().slice(0, 4).map((k) => ["params", k]),
  ];
  const chooser = h("details", { class: "columns" }, h("summary", {}, "Columns"), h("div", {},
    ...["metrics", "params", "tags"].flatMap((kind) => [...keys[kind]].sort().map((k) => {
      const id = JSON.stringify([kind, k]);
      const on = columns.some(([a, b]) => a === kind && b === k);
      return h("label", {}, h("input", { type: "checkbox", checked: on, onchange: (e) => {
        const now = new Set(columns.map((c) => JSON.stringify(c)));
        if (e.target.checked) now.add(id); else now.delete(id);
        localStorage.setItem(colsKey, JSON.stringify([...now]));
        runsPage(root, expId, query);
      } }), ` ${kind}.${k}`);
    }))));
  const orderField = state.order.replace(/\s+(ASC|DESC)$/i, "");
  const desc = !/\sASC$/i.test(state.order);
  const sortable = (label, field) => h("th", {
    class: `sortable${field === orderField ? " sorted" + (desc ? "" : " asc") : ""}`,
    onclick: () => go({ order: `${field} ${field === orderField && desc ? "ASC" : "DESC"}`, page: "" }),
  }, label);
  const head = h("tr", {}, h("th", {}, ""),
    sortable("Run", "attributes.run_name"), sortable("Created", "attributes.start_time"), h("th", {}, "Duration"),
    sortable("Status", "attributes.status"),
    ...columns.map(([kind, k]) => sortable(`${kind === "metrics" ? "" : kind + "."}${k}`, `${kind}.${quoteKey(k)}`)));
  const rows = runs.map((r) => {
    const data = { metrics: kv(r.data.metrics), params: kv(r.data.params), tags: kv(r.data.tags) };
    return h("tr", { "data-run": r.info.run_id },
      h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${runName(r)}`, onchange: (e) => {
        if (e.target.checked) selected.add(r.info.run_id); else selected.delete(r.info.run_id);
        compare.disabled = selected.size < 2;
        compare.textContent = selected.size ? `Compare ${selected.size}` : "Compare";
      } })),
      h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(expId)}/runs/${encodeURIComponent(r.info.run_id)}` }, runName(r))),
      h("td", {}, fmtTime(r.info.start_time)),
      h("td", {}, fmtDuration(r.info.start_time, r.info.end_time)),
      h("td", {}, statusBadge(r.info.status)),
      ...columns.map(([kind, k]) => {
        const v = data[kind][k];
        return kind === "metrics" ? h("td", { class: "num" }, v === undefined ? "" : fmtNum(v)) : h("td", { title: v ?? "" }, v ?? "");
      }));
  });
  const pager = h("div", { class: "pager" },
    state.token ? h("button", { onclick: () => history.back() }, "← Previous") : null,
    h("span", { class: "muted" }, `${runs.length} runs on this page`),
    res.next_page_token ? h("button", { id: "next", onclick: () => go({ page: res.next_page_token }) }, "Next →") : null);
  body.replaceChildren(
    h("div", { class: "toolbar" }, chooser),
    runs.length ? h("table", { id: "runs" }, h("thead", {}, head), h("tbody", {}, rows)) : h("p", { class: "muted" }, "No runs match."),
    pager);
}

function table(id, headers, rows) {
  return h("table", { id }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

/** A long list (a run with 10,000 params) renders in pieces, with a filter. */
function filteredTable(id, headers, items, rowOf) {
  const LIMIT = 500;
  const box = h("div");
  const input = h("input", { type: "search", placeholder: "Filter", "aria-label": `Filter ${id}` });
  let all = false;
  const render = () => {
    const q = input.value.toLowerCase();
    const hits = items.filter((it) => !q || it.key.toLowerCase().includes(q) || String(it.value).toLowerCase().includes(q));
    const shown = all ? hits : hits.slice(0, LIMIT);
    fill(box, table(id, headers, shown.map(rowOf)),
      hits.length > shown.length ? h("button", { onclick: () => { all = true; render(); } }, `Show all ${hits.length}`) : null);
  };
  input.addEventListener("input", render);
  render();
  return h("div", {}, items.length > 20 ? h("div", { class: "toolbar" }, input) : null, box);
}

async function artifactTree(run) {
  const root = run.info.artifact_uri || "";
  const proxy = root.startsWith("mlflow-artifacts:/") ? root.slice("mlflow-artifacts:/".length).replace(/^\/+/, "") : null;
  const list = async (path) => (await get(`${API}/artifacts/list`, path ? { run_id: run.info.run_id, path } : { run_id: run.info.run_id })).files || [];
  const branch = async (path) => {
    const files = await list(path);
    return h("ul", {}, files.map((f) => {
      const name = f.path.split("/").pop();
      if (f.is_dir) {
        const li = h("li", {});
        const toggle = h("a", { href: "#", onclick: async (e) => {
          e.preventDefault();
          if (li.querySelector("ul")) { li.querySelector("ul").remove(); return; }
          try { li.append(await branch(f.path)); } catch (err) { li.append(errorBox(err)); }
        } }, `▸ ${name}/`);
        li.append(toggle);
        return li;
      }
      const href = proxy ? `/api/2.0/mlflow-artifacts/artifacts/${proxy.split("/").map(encodeURIComponent).join("/")}/${f.path.split("/").map(encodeURIComponent).join("/")}` : null;
      return h("li", {}, href ? h("a", { href, download: name }, name) : name, h("span", { class: "muted" }, f.file_size !== undefined ? `  ${fmtNum(Number(f.file_size))} B` : ""));
    }));
  };
  try {
    const tree = await branch("");
    return tree.children.length ? h("div", { class: "tree", id: "artifacts" }, tree) : h("p", { class: "muted" }, "No artifacts.");
  } catch (e) {
    return errorBox(e);
  }
}

async function runPage(root, expId, runId) {
  let run;
  try {
    run = (await get(`${API}/runs/get`, { run_id: runId })).run;
  } catch (e) {
    if (e.status === 404 || e.code === "RESOURCE_DOES_NOT_EXIST") return notFound(root, `No run ${runId}.`, e.message);
    throw e;
  }
  const exp = await get(`${API}/experiments/get`, { experiment_id: run.info.experiment_id }).then((r) => r.experiment).catch(() => null);
  const metrics = (run.data.metrics || []).slice().sort((a, b) => a.key.localeCompare(b.key));
  const params = (run.data.params || []).slice().sort((a, b) => a.key.localeCompare(b.key));
  const tags = (run.data.tags || []).filter((t) => !t.key.startsWith("mlflow.")).sort((a, b) => a.key.localeCompare(b.key));
  const expLink = `#/experiments/${encodeURIComponent(run.info.experiment_id)}`;
  const children = await post(`${API}/runs/search`, {
    experiment_ids: [run.info.experiment_id], filter: `tags.mlflow.parentRunId = '${runId.replace(/'/g, "")}'`, max_results: 200,
  }).then((r) => r.runs || []).catch(() => []);
  const grid = h("div", { class: "grid", id: "charts" });
  const dag = await pipelineSection(runId, run.info.experiment_id);
  fill(root, 
    h("div", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " / ", h("a", { href: expLink }, exp ? exp.name : `experiment ${run.info.experiment_id}`), " /"),
    h("h1", { id: "run-name" }, runName(run)),
    dag ? h("h2", {}, "Pipeline") : null,
    dag,
    h("dl", { class: "kv" },
      h("dt", {}, "Run ID"), h("dd", {}, run.info.run_id),
      h("dt", {}, "Status"), h("dd", {}, statusBadge(run.info.status)),
      h("dt", {}, "Started"), h("dd", {}, fmtTime(run.info.start_time)),
      h("dt", {}, "Duration"), h("dd", {}, fmtDuration(run.info.start_time, run.info.end_time)),
      h("dt", {}, "Artifacts"), h("dd", {}, run.info.artifact_uri || "")),
    h("h2", {}, `Metrics (${metrics.length})`),
    metrics.length ? grid : h("p", { class: "muted" }, "No metrics."),
    metrics.length ? table("metrics", ["Metric", "Last value", "Step"], metrics.map((m) => h("tr", {}, h("td", {}, m.key), h("td", { class: "num" }, fmtNum(m.value)), h("td", { class: "num" }, m.step)))) : null,
    h("h2", {}, `Parameters (${params.length})`),
    params.length ? filteredTable("params", ["Name", "Value"], params, (p) => h("tr", {}, h("td", {}, p.key), h("td", { title: p.value }, p.value))) : h("p", { class: "muted" }, "No parameters."),
    h("h2", {}, `Tags (${tags.length})`),
    tags.length ? filteredTable("tags", ["Name", "Value"], tags, (t) => h("tr", {}, h("td", {}, t.key), h("td", { title: t.value }, t.value))) : h("p", { class: "muted" }, "No tags."),
    children.length ? h("h2", {}, `Child runs (${children.length})`) : null,
    children.length ? table("children", ["Run", "Status", "Duration"], children.map((c) => h("tr", {},
      h("td", {}, h("a", { href: `${expLink}/runs/${encodeURIComponent(c.info.run_id)}` }, runName(c))),
      h("td", {}, statusBadge(c.info.status)), h("td", {}, fmtDuration(c.info.start_time, c.info.end_time))))) : null,
    h("h2", {}, "Artifacts"),
    await artifactTree(run));
  // Charts need their container laid out to know their width.
  const MAX_CHARTS = 40;
  for (const m of metrics.slice(0, MAX_CHARTS)) grid.append(metricCard(m.key, [run]));
  if (metrics.length > MAX_CHARTS) grid.append(h("p", { class: "muted" }, `Charts for the first ${MAX_CHARTS} metrics; all are in the table.`));
}

async function comparePage(root, query) {
  let ids;
  try { ids = JSON.parse(query.get("runs") || "[]"); } catch (_) { ids = []; }
  if (!Array.isArray(ids) || ids.length < 1) return notFound(root, "Nothing to compare.", "Select runs in a runs table, then Compare.");
  const runs = [];
  for (const id of ids.slice(0, 50)) {
    try { runs.push((await get(`${API}/runs/get`, { run_id: String(id) })).run); } catch (e) { /* a deleted run is left out */ }
  }
  if (!runs.length) return notFound(root, "None of these runs exist.", ids.join(", "));
  const metricKeys = [...new Set(runs.flatMap((r) => (r.data.metrics || []).map((m) => m.key)))].sort();
  const paramKeys = [...new Set(runs.flatMap((r) => (r.data.params || []).map((p) => p.key)))].sort();
  const values = runs.map((r) => ({ label: runName(r), metrics: kv(r.data.metrics), params: kv(r.data.params) }));
  const numericParams = paramKeys.filter((k) => values.every((v) => v.params[k] === undefined || Number.isFinite(Number(v.params[k]))));
  const fields = [...numericParams.map((k) => `params.${k}`), ...metricKeys.map((k) => `metrics.${k}`)];
  const valueOf = (v, f) => { const [kind, ...rest] = f.split("."); const x = v[kind][rest.join(".")]; return x === undefined ? NaN : Number(x); };

  const diffRows = paramKeys.map((k) => {
    const vs = values.map((v) => v.params[k]);
    const differs = new Set(vs.map(String)).size > 1;
    return h("tr", { class: differs ? "diff" : "" }, h("td", {}, k), ...vs.map((x) => h("td", { title: x ?? "" }, x ?? "–")));
  });
  const metricRows = metricKeys.map((k) => h("tr", {}, h("td", {}, k), ...values.map((v) => h("td", { class: "num" }, v.metrics[k] === undefined ? "–" : fmtNum(v.metrics[k])))));
  const onlyDiffs = h("input", { type: "checkbox", onchange: (e) => { for (const tr of diffRows) tr.hidden = e.target.checked && !tr.classList.contains("diff"); } });

  const scatterBox = h("div");
  const pick = (id, preset) => h("select", { id, onchange: drawScatter }, fields.map((f) => h("option", { value: f, selected: f === preset }, f)));
  const xSel = pick("scatter-x", fields[0]);
  const ySel = pick("scatter-y", fields.find((f) => f.startsWith("metrics.")) || fields[1]);
  function drawScatter() {
    scatterBox.replaceChildren();
    const pts = values.map((v) => [valueOf(v, xSel.value), valueOf(v, ySel.value), v.label]).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (!pts.length) { scatterBox.append(h("p", { class: "muted" }, "No run has both values.")); return; }
    // One series per run, so the legend names the run under the cursor.
    lineChart(scatterBox, pts.map(([x, y, label]) => ({ label, x: [x], y: [y] })), { xLabel: xSel.value, scatter: true });
  }
  const grid = h("div", { class: "grid", id: "charts" });
  const parcoordsFields = [...numericParams.map((k) => `params.${k}`), ...metricKeys.slice(0, 1).map((k) => `metrics.${k}`)];
  fill(root, 
    h("div", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " /"),
    h("h1", {}, `Comparing ${runs.length} runs`),
    h("h2", {}, "Parameters"),
    h("label", { class: "muted" }, onlyDiffs, " only differences"),
    h("div", { class: "scroll" }, table("param-diff", ["Parameter", ...values.map((v) => v.label)], diffRows)),
    h("h2", {}, "Metrics"),
    h("div", { class: "scroll" }, table("metric-diff", ["Metric", ...values.map((v) => v.label)], metricRows)),
    parcoordsFields.length >= 2 ? h("h2", {}, "Parallel coordinates") : null,
    parcoordsFields.length >= 2 ? h("div", { class: "card", id: "parcoords" }, parallelCoordinates(parcoordsFields, values.map((v) => ({ label: v.label, values: Object.fromEntries(parcoordsFields.map((f) => [f, valueOf(v, f)])) })))) : null,
    fields.length ? h("h2", {}, "Scatter") : null,
    fields.length ? h("div", { class: "card", id: "scatter" }, h("div", { class: "controls" }, "x ", xSel, " y ", ySel), scatterBox) : null,
    h("h2", {}, "Metric history"),
    grid);
  if (fields.length) drawScatter();
  for (const k of metricKeys.slice(0, 30)) grid.append(metricCard(k, runs));
}

function notFound(root, title, detail) {
  fill(root, h("h1", { id: "not-found" }, title), detail ? h("p", { class: "muted" }, detail) : null,
    h("p", {}, h("a", { href: "#/experiments" }, "All experiments")));
}

// --- routing ---------------------------------------------------------------

// Each visit renders into a root of its own: a slower, earlier visit that
// finishes late writes to a root no longer on the page.
async function route() {
  dropCharts();
  dropTimers();
  const root = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  document.getElementById("main").replaceChildren(root);
  const hash = location.hash.replace(/^#/, "") || "/experiments";
  const [path, qs] = hash.split("?");
  const query = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts.length === 0 || (parts.length === 1 && parts[0] === "experiments")) return await experimentsPage(root);
    if (parts[0] === "experiments" && parts.length === 2) return await runsPage(root, parts[1], query);
    if (parts[0] === "experiments" && parts[2] === "runs" && parts.length >= 4) return await runPage(root, parts[1], parts[3]);
    if (parts[0] === "compare-runs") return await comparePage(root, query);
    notFound(root, "No such page.", `#${hash}`);
  } catch (e) {
    if (e.status === 404) return notFound(root, "Not found.", e.message);
    fill(root, errorBox(e));
  }
}

window.addEventListener("hashchange", route);
route();
