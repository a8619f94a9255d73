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

/** The API token a locked server asked for, kept for this tab only. */
const TOKEN_KEY = "weir.token";
async function call(method, path, body) {
  const init = { method, headers: {} };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) init.headers.Authorization = `Bearer ${token}`;
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
function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}
/** Dollars to the precision small amounts need ($0.00059, $12.40). */
function fmtDollars(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "";
  if (v === 0) return "$0";
  if (v >= 0.01) return `$${v.toFixed(2)}`;
  // Two significant digits, written out: $0.000000098, not $9.8e-8.
  return `$${v.toFixed(Math.min(20, 1 - Math.floor(Math.log10(v))))}`;
}
function runName(run) { return run.info.run_name || run.info.run_id.slice(0, 12); }
function kv(list) { return Object.fromEntries((list || []).map((x) => [x.key, x.value])); }
/** A key in MLflow's filter and order-by grammar: backquoted unless plain. */
function quoteKey(key) { return /^[A-Za-z_][A-Za-z0-9_.]*$/.test(key) ? key : "`" + key.replace(/`/g, "") + "`"; }

function errorBox(err) { return h("div", { class: "error", role: "alert" }, err.message || String(err)); }
function statusBadge(status) { return h("span", { class: `status ${status}` }, status); }

/** An SVG element with attributes (and text), appended to parent when given. */
function svgEl(parent, tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  if (parent) parent.append(e);
  return e;
}

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
 * series: [{label, x: [...], y: [...], dots?}]; each may have its own x values;
 * a series with dots is drawn as points only.
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
    // uPlot's own tick labels round tiny values (a run's cost in dollars) to 0.
    axes: [{ label: xLabel === "time" ? undefined : xLabel }, { size: 60, values: (_, ticks) => ticks.map((v) => (v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(1) : fmtNum(v))) }],
    cursor: { drag: { x: true, y: false } },
    series: [{ label: xLabel }, ...series.map((s, i) => ({
      label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
      paths: scatter || s.dots ? () => null : undefined,
      points: { show: scatter || s.dots || xs.length < 60, size: scatter || s.dots ? 6 : 4 },
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
  const svg = svgEl(null, "svg", { viewBox: `0 0 ${W} ${H + 40}`, class: "parcoords", width: "100%" });
  const el = (tag, attrs, text) => svgEl(svg, tag, attrs, text);
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
    svgEl(line, "title", {}, r.label);
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
  const svg = svgEl(null, "svg", { viewBox: `0 0 ${width} ${height}`, width, class: "dag" });
  const el = svgEl;
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
    el(a, "title", {}, [s.name, s.cached_from ? `outputs reused from step run ${s.cached_from}` : `${s.status}${s.executor !== "local" ? ` on ${s.executor}${s.node ? " node " + s.node.slice(0, 12) : ""}` : ""}`, s.cache_miss ? `ran: ${s.cache_miss}` : "", s.error || ""].filter(Boolean).join("\n"));
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
    summary.textContent = `pipeline ${doc.pipeline} · ${doc.status} · ${Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ")}${doc.cost ? ` · cost ${fmtDollars(doc.cost)}` : ""}`;
    // Each step's share of the run's cost, as a bar beside its figure.
    const most = Math.max(0, ...doc.steps.map((s) => (s.usage ? s.usage.cost : 0)));
    const costCell = (u) => {
      if (!u) return h("td", { class: "num" }, "–");
      const bar = h("span", { class: "costbar" });
      bar.style.width = `${most > 0 ? Math.max(1, Math.round((60 * u.cost) / most)) : 0}px`;
      return h("td", { class: "num cost", title: `${u.cpu_seconds.toFixed(3)} CPU-s · ${fmtBytes(u.bytes_read)} read · ${fmtBytes(u.bytes_written)} written${u.gpus ? ` · ${u.gpus} GPU` : ""}${u.trials ? ` · ${u.trials} trials` : ""}` }, bar, fmtDollars(u.cost));
    };
    const rows = doc.steps.map((s) => h("tr", { "data-step": s.name },
      h("td", {}, h("a", { href: linkOf(s) }, s.name)),
      h("td", {}, s.cached_from ? "cached" : s.status),
      h("td", {}, fmtDuration(s.started_at, s.ended_at)),
      h("td", { class: "cache", title: s.cache_miss || "" }, s.cached_from ? `hit: outputs of step run ${s.cached_from.slice(0, 12)}` : s.cache_miss ? `miss: ${s.cache_miss}` : "–"),
      h("td", {}, s.executor === "local" ? "local" : `${s.executor}${s.node ? " node " + s.node.slice(0, 12) : ""}`),
      h("td", { class: "num" }, s.usage ? `${s.usage.cpu_seconds.toFixed(2)} s` : "–"),
      h("td", { class: "num" }, s.usage ? fmtBytes(s.usage.max_rss_bytes) : "–"),
      costCell(s.usage),
      h("td", {}, s.tuned ? h("a", { href: `#/studies/${encodeURIComponent(runId)}/${encodeURIComponent(s.name)}`, class: "study-link" }, "study") : "")));
    box.replaceChildren(summary, doc.steps.length ? dagSvg(doc.steps, linkOf) : h("p", { class: "muted" }, "No steps."),
      doc.steps.length ? table("steps", ["Step", "State", "Took", "Cache", "Ran on", "CPU", "Peak memory", "Cost", ""], rows) : null);
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

// --- studies ---------------------------------------------------------------

/** The best value after each complete trial, in trial order. */
function bestSoFar(trials, maximize) {
  let best = null;
  const xs = [], ys = [];
  for (const t of trials) {
    if (t.state !== "complete" || !Number.isFinite(t.value)) continue;
    if (best === null || (maximize ? t.value > best : t.value < best)) best = t.value;
    xs.push(t.number); ys.push(best);
  }
  return { xs, ys };
}

/** The step at which a trial stopped: its last intermediate value's. */
function lastRung(t) {
  const steps = Object.keys(t.intermediate || {}).map(Number).filter(Number.isFinite);
  return steps.length ? Math.max(...steps) : null;
}

async function studyPage(root, runId, step) {
  let doc;
  try {
    doc = await get("/api/ui/study", { run_id: runId, step });
  } catch (e) {
    if (e.status === 404) return notFound(root, `No study for step ${step} of run ${runId}.`, e.message);
    throw e;
  }
  const trials = doc.trials.slice().sort((a, b) => a.number - b.number);
  const maximize = doc.goal === "maximize";
  const complete = trials.filter((t) => t.state === "complete" && Number.isFinite(t.value));
  const best = complete.reduce((b, t) => (b === null || (maximize ? t.value > b.value : t.value < b.value) ? t : b), null);
  const counts = {};
  for (const t of trials) counts[t.state] = (counts[t.state] || 0) + 1;
  const paramKeys = [...new Set(trials.flatMap((t) => Object.keys(t.params || {})))].sort();
  const runLink = `#/experiments/0/runs/${encodeURIComponent(doc.run_id)}`;
  const trialLink = (t) => (t.tracking_run_id ? `#/experiments/0/runs/${encodeURIComponent(t.tracking_run_id)}` : null);
  const rows = trials.map((t) => h("tr", { class: t === best ? "best" : "", "data-trial": t.number, "data-state": t.state },
    h("td", { class: "num" }, trialLink(t) ? h("a", { href: trialLink(t) }, t.number) : t.number),
    h("td", {}, h("span", { class: `status trial-${t.state}` }, t === best ? `${t.state} ★ best` : t.state)),
    h("td", { class: "num" }, Number.isFinite(t.value) ? fmtNum(t.value) : "–"),
    h("td", { class: "num" }, t.state === "pruned" ? (lastRung(t) ?? "–") : ""),
    ...paramKeys.map((k) => {
      const v = t.params[k];
      return h("td", { class: typeof v === "number" ? "num" : "" }, v === undefined ? "" : typeof v === "number" ? fmtNum(v) : String(v));
    }),
    h("td", {}, fmtDuration(t.started_at, t.ended_at)),
    h("td", { class: "muted", title: t.error || "" }, t.error ? t.error.split("\n")[0] : "")));
  const progress = h("div", { class: "card", id: "best-so-far" });
  const curves = h("div", { class: "card", id: "curves" });
  const numericParams = paramKeys.filter((k) => trials.every((t) => t.params[k] === undefined || Number.isFinite(Number(t.params[k]))));
  const pcFields = [...numericParams, doc.metric];
  fill(root,
    h("div", { class: "crumbs" }, h("a", { href: runLink }, `run ${doc.run_id.slice(0, 12)} (${doc.pipeline})`), " /"),
    h("h1", { id: "study-name" }, `Study: ${doc.step}`),
    h("dl", { class: "kv" },
      h("dt", {}, "Objective"), h("dd", {}, `${doc.goal} ${doc.metric}`),
      h("dt", {}, "Trials"), h("dd", { id: "trial-counts" }, Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ") || "none yet"),
      h("dt", {}, "Best"), h("dd", {}, best ? `trial ${best.number}: ${fmtNum(best.value)}` : "no complete trial"),
      h("dt", {}, "Sampler"), h("dd", {}, typeof doc.sampler === "string" ? doc.sampler : JSON.stringify(doc.sampler ?? "default")),
      h("dt", {}, "Scheduler"), h("dd", {}, doc.scheduler ? JSON.stringify(doc.scheduler) : "none (every trial runs to the end)")),
    h("div", { class: "grid" }, progress, curves),
    complete.length >= 2 && pcFields.length >= 2 ? h("h2", {}, "Parameters → objective") : null,
    complete.length >= 2 && pcFields.length >= 2 ? h("div", { class: "card", id: "parcoords" }, parallelCoordinates(pcFields,
      complete.map((t) => ({ label: `trial ${t.number}`, values: Object.fromEntries([...numericParams.map((k) => [k, Number(t.params[k])]), [doc.metric, t.value]]) })))) : null,
    h("h2", {}, `Trials (${trials.length})`),
    h("div", { class: "scroll" }, table("trials", ["#", "State", doc.metric, "Stopped at", ...paramKeys, "Took", "Error"], rows)));
  // The best value so far over trial numbers, with every complete trial's value as points.
  progress.append(h("h3", {}, `Best ${doc.metric} so far`));
  const bsf = bestSoFar(trials, maximize);
  const chartBox = h("div");
  progress.append(chartBox);
  if (bsf.xs.length) {
    lineChart(chartBox, [
      { label: "best so far", x: bsf.xs, y: bsf.ys },
      { label: "trial value", x: complete.map((t) => t.number), y: complete.map((t) => t.value), dots: true },
    ], { xLabel: "trial" });
  } else chartBox.append(h("p", { class: "muted" }, "No complete trial yet."));
  // Learning curves: a pruned trial's line ends at the rung it was stopped at.
  curves.append(h("h3", {}, "Intermediate values (pruned trials end at their rung)"));
  const curveBox = h("div");
  curves.append(curveBox);
  const withCurves = trials.filter((t) => Object.keys(t.intermediate || {}).length).slice(0, 40);
  if (withCurves.length) {
    lineChart(curveBox, withCurves.map((t) => {
      const pts = Object.entries(t.intermediate).map(([k, v]) => [Number(k), v]).sort((a, b) => a[0] - b[0]);
      return { label: `${t.number} ${t.state}`, x: pts.map((p) => p[0]), y: pts.map((p) => p[1]) };
    }));
  } else curveBox.append(h("p", { class: "muted" }, "The trials reported no intermediate values."));
  if (doc.status === "running") {
    const t = setTimeout(() => { timers.delete(t); if (root.isConnected) studyPage(root, runId, step); }, 3000);
    timers.add(t);
  }
}

// --- models ----------------------------------------------------------------

async function modelsPage(root) {
  const res = await get(`${API}/registered-models/search`, { max_results: 1000 });
  const models = (res.registered_models || []).slice().sort((a, b) => a.name.localeCompare(b.name));
  const rows = models.map((m) => {
    const latest = (m.latest_versions || []).reduce((v, x) => Math.max(v, Number(x.version)), 0);
    return h("tr", {},
      h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name)),
      h("td", { class: "num" }, latest || "–"),
      h("td", {}, (m.aliases || []).map((a) => h("span", { class: "alias" }, `@${a.alias} → v${a.version}`))),
      h("td", {}, fmtTime(m.last_updated_timestamp || m.creation_timestamp)),
      h("td", { class: "muted", title: m.description || "" }, m.description || ""));
  });
  fill(root,
    h("h1", {}, "Models"),
    models.length ? table("models", ["Name", "Latest", "Aliases", "Updated", "Description"], rows)
      : h("p", { class: "muted" }, "No registered models yet. A pipeline's weir/register step or mlflow.register_model adds one."));
}

/** A version's metrics as {key: number}, whichever shape they were stored in. */
function versionMetrics(v) {
  const m = v.metrics;
  // weir/evaluate's report: {prefix, overall: {auc, ...}, slices: {...}, task, target}.
  if (m && typeof m === "object" && m.overall && typeof m.overall === "object") {
    const prefix = m.prefix ? `${m.prefix}.` : "";
    return Object.fromEntries(Object.entries(m.overall).filter(([, x]) => Number.isFinite(Number(x))).map(([k, x]) => [prefix + k, Number(x)]));
  }
  if (Array.isArray(m)) return Object.fromEntries(m.filter((x) => x && x.key !== undefined).map((x) => [x.key, Number(x.value)]));
  if (m && typeof m === "object") return Object.fromEntries(Object.entries(m).filter(([, x]) => Number.isFinite(Number(x))).map(([k, x]) => [k, Number(x)]));
  return {};
}

async function modelPage(root, name) {
  const doc = await get("/api/ui/model", { name });
  const versions = doc.versions;
  const metricKeys = [...new Set(versions.flatMap((v) => Object.keys(versionMetrics(v))))].sort();
  const shownKeys = metricKeys.slice(0, 8);
  const link = (v) => `#/models/${encodeURIComponent(name)}/versions/${v}`;
  const serving = new Map();
  for (const d of doc.deployments) {
    if (d.stable !== null) serving.set(d.stable, [...(serving.get(d.stable) || []), `${d.endpoint} (${d.candidate !== null ? 100 - d.weight : 100}%)`]);
    if (d.candidate !== null) serving.set(d.candidate, [...(serving.get(d.candidate) || []), `${d.endpoint} (candidate ${d.weight}%)`]);
  }
  const rows = versions.map((v) => {
    const m = versionMetrics(v);
    return h("tr", { "data-version": v.version },
      h("td", { class: "num" }, h("a", { href: link(v.version) }, `v${v.version}`)),
      h("td", {}, v.aliases.map((a) => h("span", { class: "alias" }, `@${a}`))),
      h("td", {}, v.status),
      h("td", {}, (serving.get(v.version) || []).join(", ")),
      ...shownKeys.map((k) => h("td", { class: "num" }, m[k] === undefined ? "" : fmtNum(m[k]))),
      h("td", {}, fmtTime(v.created_at)),
      h("td", {}, v.run_id ? h("a", { href: `#/experiments/0/runs/${encodeURIComponent(v.run_id)}` }, v.run_id.slice(0, 12)) : ""));
  });
  const chartsBox = h("div", { class: "grid", id: "charts" });
  fill(root,
    h("div", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " /"),
    h("h1", { id: "model-name" }, doc.name),
    doc.description ? h("p", {}, doc.description) : null,
    h("dl", { class: "kv" },
      h("dt", {}, "Versions"), h("dd", {}, versions.length),
      h("dt", {}, "Aliases"), h("dd", {}, doc.aliases.length ? doc.aliases.map((a) => `@${a.alias} → v${a.version}`).join(", ") : "none"),
      h("dt", {}, "Endpoints"), h("dd", {}, doc.deployments.length ? doc.deployments.map((d) => h("a", { href: `#/deployments/${encodeURIComponent(d.endpoint)}`, class: "endpoint-link" }, d.endpoint, " ")) : "not served"),
      h("dt", {}, "Updated"), h("dd", {}, fmtTime(doc.updated_at))),
    h("h2", {}, "Versions"),
    versions.length ? h("div", { class: "scroll" }, table("versions", ["Version", "Aliases", "Status", "Serving", ...shownKeys, "Registered", "Run"], rows)) : h("p", { class: "muted" }, "No versions."),
    versions.length > 1 && metricKeys.length ? h("h2", {}, "Metrics by version") : null,
    chartsBox);
  if (versions.length > 1) {
    const asc = versions.slice().sort((a, b) => a.version - b.version);
    for (const k of metricKeys.slice(0, 12)) {
      const pts = asc.map((v) => [v.version, versionMetrics(v)[k]]).filter(([, y]) => Number.isFinite(y));
      if (pts.length < 2) continue;
      const box = h("div");
      chartsBox.append(h("div", { class: "card", "data-metric": k }, h("h3", {}, k), box));
      lineChart(box, [{ label: k, x: pts.map((p) => p[0]), y: pts.map((p) => p[1]) }], { xLabel: "version" });
    }
  }
}

/** Per-slice metrics of an evaluation report, with each metric's largest gap between slices flagged. */
function sliceSection(m) {
  const slices = m && typeof m === "object" && m.slices && typeof m.slices === "object" ? m.slices : {};
  const rows = [];
  for (const [column, values] of Object.entries(slices)) {
    if (!values || typeof values !== "object") continue;
    for (const [value, metrics] of Object.entries(values)) if (metrics && typeof metrics === "object") rows.push({ slice: `${column} = ${value}`, metrics });
  }
  if (!rows.length) return [];
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.metrics).filter((k) => Number.isFinite(Number(r.metrics[k])))))].sort();
  const gaps = Object.fromEntries(keys.map((k) => {
    const xs = rows.map((r) => Number(r.metrics[k])).filter(Number.isFinite);
    return [k, { lo: Math.min(...xs), hi: Math.max(...xs) }];
  }));
  const cell = (k, x) => {
    const flagged = k !== "rows" && gaps[k].hi - gaps[k].lo > 0.05 && (x === gaps[k].lo || x === gaps[k].hi);
    return h("td", { class: `num${flagged ? " gap" : ""}`, title: flagged ? `largest gap in ${k}: ${fmtNum(gaps[k].hi - gaps[k].lo)}` : "" }, Number.isFinite(x) ? fmtNum(x) : "");
  };
  return [h("h3", {}, `Slices (${m.task || "metrics"}${m.target ? `, target ${m.target}` : ""})`),
    h("div", { class: "scroll" }, table("slices", ["Slice", ...keys], rows.map((r) => h("tr", {}, h("td", {}, r.slice), ...keys.map((k) => cell(k, Number(r.metrics[k]))))))),
    h("p", { class: "muted" }, "Highlighted: the two ends of a metric's largest gap between slices, when over 0.05.")];
}

/** The model card: what the version is, what it was trained on and how it scores. */
async function modelVersionPage(root, name, version) {
  const doc = await get("/api/ui/model", { name });
  const v = doc.versions.find((x) => String(x.version) === String(version));
  if (!v) return notFound(root, `No version ${version} of model ${name}.`, `It has ${doc.versions.map((x) => `v${x.version}`).join(", ") || "no versions"}.`);
  const metrics = versionMetrics(v);
  const lin = v.lineage && typeof v.lineage === "object" ? v.lineage : {};
  const steps = Array.isArray(lin.steps) ? lin.steps : [];
  const params = lin.params && typeof lin.params === "object" ? Object.entries(lin.params) : [];
  const endpoints = doc.deployments.filter((d) => d.stable === v.version || d.candidate === v.version);
  fill(root,
    h("div", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", h("a", { href: `#/models/${encodeURIComponent(name)}` }, name), " /"),
    h("h1", { id: "version-name" }, `${name} v${v.version}`, ...v.aliases.map((a) => h("span", { class: "alias" }, ` @${a}`))),
    h("div", { class: "card", id: "model-card" },
      h("h2", {}, "Model card"),
      h("dl", { class: "kv" },
        h("dt", {}, "Description"), h("dd", {}, v.description || doc.description || "–"),
        h("dt", {}, "Pipeline"), h("dd", {}, lin.pipeline ? `${lin.pipeline}${lin.spec_file ? ` (${lin.spec_file})` : ""}` : "–"),
        h("dt", {}, "Trained by run"), h("dd", {}, v.run_id ? h("a", { href: `#/experiments/0/runs/${encodeURIComponent(v.run_id)}` }, v.run_id) : "–"),
        h("dt", {}, "Training cost"), h("dd", { id: "training-cost" }, typeof v.training_cost === "number" ? fmtDollars(v.training_cost) : "–"),
        h("dt", {}, "Code revision"), h("dd", {}, lin.git_rev || "–"),
        h("dt", {}, "Weir"), h("dd", {}, lin.weir_version || "–"),
        h("dt", {}, "Model file"), h("dd", {}, v.digest || v.source),
        h("dt", {}, "Status"), h("dd", {}, `${v.status}${v.stage && v.stage !== "None" ? `, stage ${v.stage}` : ""}`),
        h("dt", {}, "Serving"), h("dd", {}, endpoints.length ? endpoints.map((d) => h("a", { href: `#/deployments/${encodeURIComponent(d.endpoint)}` }, `${d.endpoint} `)) : "not served"),
        h("dt", {}, "Registered"), h("dd", {}, `${fmtTime(v.created_at)}${v.user_id ? ` by ${v.user_id}` : ""}`)),
      h("h3", {}, "Metrics"),
      Object.keys(metrics).length ? table("version-metrics", ["Metric", "Value"], Object.entries(metrics).sort().map(([k, x]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmtNum(x))))) : h("p", { class: "muted" }, "No metrics recorded with this version."),
      ...sliceSection(v.metrics),
      h("h3", {}, "Data and lineage"),
      steps.length ? table("lineage", ["Step", "Kind", "Outputs", "Sources read"], steps.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `#/experiments/0/runs/${encodeURIComponent(s.step_run_id)}` }, s.step)),
        h("td", {}, s.kind || ""),
        h("td", {}, Object.entries(s.outputs || {}).map(([k, d]) => `${k}=${String(d).slice(0, 12)}`).join(" ")),
        h("td", {}, (Array.isArray(s.sources) ? s.sources : []).map((x) => (typeof x === "string" ? x : `${x.path || ""}${x.digest ? "@" + String(x.digest).slice(0, 12) : ""}`)).join(", "))))) : h("p", { class: "muted" }, "No lineage recorded (registered from outside a pipeline)."),
      params.length ? h("h3", {}, "Parameters") : null,
      params.length ? table("lineage-params", ["Name", "Value"], params.map(([k, x]) => h("tr", {}, h("td", {}, k), h("td", {}, typeof x === "string" ? x : JSON.stringify(x))))) : null));
}

// --- deployments -----------------------------------------------------------

function rate(i) { const s = (i.ended_at - i.started_at) / 1000; return s > 0 ? i.requests / s : 0; }

async function deploymentsPage(root) {
  const { deployments } = await get("/api/ui/deployments");
  const rows = deployments.map(({ deployment: d, recent }) => {
    const last = recent.filter((i) => i.version === d.stable).pop() || recent[recent.length - 1];
    return h("tr", { "data-endpoint": d.endpoint },
      h("td", {}, h("a", { href: `#/deployments/${encodeURIComponent(d.endpoint)}` }, d.endpoint)),
      h("td", {}, h("a", { href: `#/models/${encodeURIComponent(d.model)}` }, d.model)),
      h("td", {}, d.stable !== null ? `v${d.stable}` : "–"),
      h("td", {}, d.candidate !== null ? `v${d.candidate} at ${d.weight}%` : "–"),
      h("td", {}, h("span", { class: `status phase-${d.phase}` }, d.phase)),
      h("td", { class: "num" }, last ? `${fmtNum(Number(rate(last).toFixed(2)))}/s` : "–"),
      h("td", { class: "muted", title: d.reason }, d.reason));
  });
  fill(root, h("h1", {}, "Deployments"),
    deployments.length ? table("deployments", ["Endpoint", "Model", "Stable", "Candidate", "Phase", "Requests", "Why"], rows)
      : h("p", { class: "muted" }, "No endpoints yet. `weir deploy ENDPOINT MODEL:V` creates one; `weir serve` serves it."));
}

/** A horizontal bar: the traffic split between the stable and candidate versions. */
function trafficBar(d) {
  const cand = d.candidate !== null ? d.weight : 0;
  return h("div", { class: "split", id: "traffic" },
    h("div", { class: "stable", style: `width:${100 - cand}%` }, d.stable !== null ? `v${d.stable} ${100 - cand}%` : "no stable version"),
    cand ? h("div", { class: "candidate", style: `width:${cand}%` }, `v${d.candidate} ${cand}%`) : null);
}

/** A semicircle gauge of a drift score (PSI): < 0.1 stable, < 0.25 watch, above: drifted. */
function driftGauge(psi) {
  const W = 200, R = 80, cx = 100, cy = 95;
  const svg = svgEl(null, "svg", { viewBox: `0 0 ${W} 120`, width: W, class: "gauge" });
  const arc = (a0, a1, cls) => {
    const p = (a) => [cx - R * Math.cos(a), cy - R * Math.sin(a)];
    const [x0, y0] = p(a0), [x1, y1] = p(a1);
    svgEl(svg, "path", { d: `M${x0},${y0} A${R},${R} 0 0 1 ${x1},${y1}`, class: cls });
  };
  const MAX = 0.5;
  const angle = (v) => Math.PI * Math.min(Math.max(v, 0), MAX) / MAX;
  arc(0, angle(0.1), "ok"); arc(angle(0.1), angle(0.25), "warn"); arc(angle(0.25), Math.PI, "bad");
  if (Number.isFinite(psi)) {
    const a = angle(psi);
    svgEl(svg, "line", { x1: cx, y1: cy, x2: cx - (R - 8) * Math.cos(a), y2: cy - (R - 8) * Math.sin(a), class: "needle" });
  }
  svgEl(svg, "text", { x: cx, y: cy + 20, "text-anchor": "middle" }, Number.isFinite(psi) ? `PSI ${psi.toFixed(3)}` : "no drift data");
  return svg;
}

/** Bars of latency counts per bucket, one colour per version. */
function latencyHistogram(bounds, byVersion) {
  const W = 640, H = 200, pad = 30;
  const labels = [...bounds.map((b) => `≤${b}`), `>${bounds[bounds.length - 1]}`];
  const versions = [...byVersion.keys()];
  const max = Math.max(1, ...[...byVersion.values()].flat());
  const svg = svgEl(null, "svg", { viewBox: `0 0 ${W} ${H + 40}`, width: "100%", class: "histogram" });
  const slot = (W - pad) / labels.length;
  const bw = (slot - 4) / Math.max(1, versions.length);
  labels.forEach((label, i) => {
    versions.forEach((v, vi) => {
      const n = byVersion.get(v)[i] || 0;
      const bh = (H - 10) * (n / max);
      const rect = svgEl(svg, "rect", { x: pad + i * slot + 2 + vi * bw, y: H - bh, width: Math.max(bw - 1, 1), height: bh, fill: PALETTE[vi % PALETTE.length] });
      svgEl(rect, "title", {}, `v${v} ${label} ms: ${n}`);
    });
    svgEl(svg, "text", { x: pad + i * slot + slot / 2, y: H + 14, "text-anchor": "middle" }, label);
  });
  svgEl(svg, "text", { x: pad, y: H + 34 }, "latency, ms (bucket upper bounds)");
  versions.forEach((v, vi) => svgEl(svg, "text", { x: W - 60 * (versions.length - vi), y: 12, fill: PALETTE[vi % PALETTE.length] }, `v${v}`));
  return svg;
}

async function deploymentPage(root, endpoint, query) {
  const hours = Number(query.get("hours")) || 24;
  let doc;
  try {
    doc = await get("/api/ui/deployment", { endpoint, hours });
  } catch (e) {
    if (e.status === 404) return notFound(root, `No endpoint ${endpoint}.`, e.message);
    throw e;
  }
  const d = doc.deployment;
  const versions = [...new Set(doc.intervals.map((i) => i.version))].sort((a, b) => a - b);
  const of = (v) => doc.intervals.filter((i) => i.version === v);
  const series = (f) => versions.map((v) => ({ label: `v${v}`, x: of(v).map((i) => i.ended_at / 1000), y: of(v).map(f) }));
  const lastOf = (v) => of(v).slice(-1)[0];
  const latest = [d.stable, d.candidate].filter((v) => v !== null);
  const gauges = h("div", { class: "gauges", id: "drift" }, latest.map((v) => {
    const withDrift = of(v).filter((i) => Number.isFinite(i.stats.drift_psi));
    return h("div", { class: "gauge-box" }, h("div", { class: "muted" }, `v${v}`), driftGauge(withDrift.length ? withDrift[withDrift.length - 1].stats.drift_psi : NaN));
  }));
  // The histogram sums the last hour's intervals.
  const hourAgo = doc.now - 3_600_000;
  const bounds = doc.intervals.find((i) => Array.isArray(i.stats.latency_le_ms))?.stats.latency_le_ms || [];
  const byVersion = new Map();
  for (const i of doc.intervals) {
    if (i.ended_at < hourAgo || !Array.isArray(i.stats.latency_counts)) continue;
    const acc = byVersion.get(i.version) || new Array(bounds.length + 1).fill(0);
    i.stats.latency_counts.forEach((n, k) => { acc[k] += n; });
    byVersion.set(i.version, acc);
  }
  const totals = versions.map((v) => {
    const xs = of(v);
    const req = xs.reduce((n, i) => n + i.requests, 0), err = xs.reduce((n, i) => n + i.errors, 0);
    const last = lastOf(v);
    return h("tr", { "data-version": v }, h("td", {}, `v${v}`), h("td", { class: "num" }, req), h("td", { class: "num" }, err),
      h("td", { class: "num" }, req ? `${(100 * err / req).toFixed(2)}%` : "–"),
      h("td", { class: "num" }, last && Number.isFinite(last.stats.p99_ms) ? `${fmtNum(Number(last.stats.p99_ms.toFixed(2)))} ms` : "–"),
      h("td", { class: "num" }, last && Number.isFinite(last.stats.accuracy) ? fmtNum(last.stats.accuracy) : "–"));
  });
  const charts = ["requests", "errors", "latency"].map((id) => h("div", { class: "card", id: `chart-${id}` }));
  const range = h("select", { onchange: (e) => { location.hash = `#/deployments/${encodeURIComponent(endpoint)}?hours=${e.target.value}`; } },
    [1, 6, 24, 168, 720].map((n) => h("option", { value: n, selected: n === doc.hours }, n < 48 ? `last ${n} h` : `last ${n / 24} days`)));
  fill(root,
    h("div", { class: "crumbs" }, h("a", { href: "#/deployments" }, "Deployments"), " /"),
    h("h1", { id: "endpoint-name" }, endpoint),
    h("dl", { class: "kv" },
      h("dt", {}, "Model"), h("dd", {}, h("a", { href: `#/models/${encodeURIComponent(d.model)}` }, d.model)),
      h("dt", {}, "Strategy"), h("dd", {}, `${d.strategy}${d.steps.length ? ` (${d.steps.join("% → ")}%)` : ""}`),
      h("dt", {}, "Phase"), h("dd", {}, h("span", { class: `status phase-${d.phase}`, id: "phase" }, d.phase), d.reason ? ` — ${d.reason}` : ""),
      h("dt", {}, "Updated"), h("dd", {}, fmtTime(d.updated_at))),
    h("h2", {}, "Traffic split"),
    trafficBar(d),
    h("div", { class: "toolbar" }, range, h("span", { class: "muted" }, `${doc.intervals.length} judged intervals`)),
    doc.intervals.length ? table("totals", ["Version", "Requests", "Errors", "Error rate", "p99 (last)", "Accuracy (last)"], totals) : h("p", { class: "muted", id: "no-traffic" }, "No traffic judged in this window yet."),
    h("div", { class: "grid" }, ...charts),
    h("div", { class: "grid" },
      h("div", { class: "card", id: "histogram" }, h("h3", {}, "Latency histogram, last hour"), byVersion.size ? latencyHistogram(bounds, byVersion) : h("p", { class: "muted" }, "No requests in the last hour.")),
      h("div", { class: "card" }, h("h3", {}, "Prediction drift"), gauges)),
    h("h2", {}, "Rollout history"),
    doc.events.length ? table("events", ["#", "When", "Event", "Detail"], doc.events.slice().reverse().map((e) => h("tr", {},
      h("td", { class: "num" }, e.seq), h("td", {}, fmtTime(e.at)), h("td", {}, e.event), h("td", { title: e.detail }, e.detail)))) : h("p", { class: "muted" }, "No events."));
  const draw = (card, title, f) => {
    card.append(h("h3", {}, title));
    const box = h("div");
    card.append(box);
    if (doc.intervals.length) lineChart(box, series(f), { xLabel: "time" });
    else box.append(h("p", { class: "muted" }, "No data yet."));
  };
  draw(charts[0], "Requests per second", rate);
  draw(charts[1], "Error rate", (i) => (i.requests ? i.errors / i.requests : 0));
  draw(charts[2], "p99 latency, ms", (i) => (Number.isFinite(i.stats.p99_ms) ? i.stats.p99_ms : null));
  // Live: re-read every 5 s while the page is open.
  const t = setTimeout(() => { timers.delete(t); if (root.isConnected) deploymentPage(root, endpoint, query).catch(() => {}); }, 5000);
  timers.add(t);
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
    if (parts[0] === "studies" && parts.length === 3) return await studyPage(root, parts[1], parts[2]);
    if (parts[0] === "models" && parts.length === 1) return await modelsPage(root);
    if (parts[0] === "models" && parts.length === 2) return await modelPage(root, parts[1]);
    if (parts[0] === "models" && parts[2] === "versions" && parts.length === 4) return await modelVersionPage(root, parts[1], parts[3]);
    if (parts[0] === "deployments" && parts.length === 1) return await deploymentsPage(root);
    if (parts[0] === "deployments" && parts.length === 2) return await deploymentPage(root, parts[1], query);
    notFound(root, "No such page.", `#${hash}`);
  } catch (e) {
    if (e.status === 404) return notFound(root, "Not found.", e.message);
    if (e.status === 401) return tokenForm(root, e.message);
    fill(root, errorBox(e));
  }
}

/** A locked server: ask for a token (weir tokens create), keep it for this tab. */
function tokenForm(root, why) {
  const input = h("input", { type: "password", id: "token", placeholder: "weir_…", autocomplete: "off", size: "60" });
  const form = h("form", { id: "token-form" }, h("p", {}, "This server needs an API token (viewer or above): ", h("code", {}, "weir tokens create --name me --role viewer")),
    h("p", { class: "muted" }, why), input, " ", h("button", { type: "submit" }, "Use token"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem(TOKEN_KEY, input.value.trim()); route(); });
  fill(root, h("h1", {}, "Sign in"), form);
}

window.addEventListener("hashchange", route);
route();
