// The dashboard in a real browser: Debian's Chromium, driven by
// playwright-core (no browser download), against a real `weir server` on a
// fresh SQLite home seeded over the REST API (seed.py). Each page is
// screenshotted under target/ui-screenshots/ and checked not to be blank;
// any console error or uncaught exception fails the suite.
//
//   WEIR_BIN=target/debug/weir node tests/ui/run.mjs
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { inflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const weir = resolve(repo, process.env.WEIR_BIN || "target/debug/weir");
const shots = resolve(repo, "target/ui-screenshots");
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(shots, { recursive: true });

const freePort = () => new Promise((ok) => {
  const s = createServer();
  s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => ok(port)); });
});

/** Whether a PNG holds more than one flat colour: its inflated scanlines
 * have many distinct byte values (a blank page has one or two). */
function pngIsBlank(png) {
  let at = 8;
  const idat = [];
  while (at < png.length) {
    const len = png.readUInt32BE(at);
    const type = png.toString("ascii", at + 4, at + 8);
    if (type === "IDAT") idat.push(png.subarray(at + 8, at + 8 + len));
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const seen = new Set();
  for (let i = 0; i < raw.length && seen.size < 32; i += 7) seen.add(raw[i]);
  return seen.size < 32;
}

const home = mkdtempSync(join(tmpdir(), "weir-ui-"));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn(weir, ["server", "--addr", `127.0.0.1:${port}`], {
  env: { ...process.env, WEIR_HOME: join(home, ".weir"), WEIR_DB: "", WEIR_ARTIFACTS: "" },
  stdio: ["ignore", "inherit", "inherit"],
});
let failures = 0;
let browser;
let serving;
try {
  for (let i = 0; ; i++) {
    try { if ((await fetch(`${base}/health`)).ok) break; } catch (_) { /* not up yet */ }
    if (i > 100) throw new Error("weir server did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  const ids = JSON.parse(execFileSync("python3", [join(here, "seed.py"), base]).toString());
  const exp = ids.experiment;
  // A pipeline in the same home, run twice: the second run's steps are cache hits.
  writeFileSync(join(home, "pipeline.yaml"), [
    "version: 1", "name: ui-dag", "steps:",
    "  extract:", "    run: echo 1 > $WEIR_OUTPUTS_DIR/raw", "    outputs: [raw]",
    "  weather:", "    run: echo 2 > $WEIR_OUTPUTS_DIR/raw", "    outputs: [raw]",
    "  join:", "    run: cat $WEIR_INPUTS_DIR/a $WEIR_INPUTS_DIR/b > $WEIR_OUTPUTS_DIR/table",
    "    inputs: { a: extract.raw, b: weather.raw }", "    outputs: [table]",
    "  train:", "    run: wc -l < $WEIR_INPUTS_DIR/table", "    inputs: { table: join.table }", ""].join("\n"));
  const weirEnv = { ...process.env, WEIR_HOME: join(home, ".weir"), WEIR_DB: "", WEIR_ARTIFACTS: "" };
  for (let i = 0; i < 2; i++) execFileSync(weir, ["run", "pipeline.yaml", "--json"], { cwd: home, env: weirEnv, stdio: "ignore" });
  const pipelineRuns = JSON.parse(execFileSync(weir, ["runs", "list", "--json"], { cwd: home, env: weirEnv }).toString());
  // A tuned training step (a study with ASHA pruning) that registers a model.
  const csv = ["x,z,carrier,delay"];
  for (let i = 0; i < 1500; i++) {
    const x = ((i * 7919) % 1000) / 100, carrier = ["UA", "DL", "AA"][(i * 31) % 3], z = (i * 7919) % 29;
    csv.push(`${x},${z},${carrier},${(x > 6) !== (carrier === "DL") !== (i % 19 === 0) ? 40 : 0}`);
  }
  mkdirSync(join(home, "data"), { recursive: true });
  writeFileSync(join(home, "data/points.csv"), csv.join("\n") + "\n");
  writeFileSync(join(home, "tuned.yaml"), `version: 1
name: ui-tuned
steps:
  ingest: { uses: weir/ingest, with: { path: data/points.csv } }
  split:
    uses: weir/split
    inputs: { table: ingest.table }
    with: { method: random, valid: 0.2, test: 0.2, seed: 5 }
  train:
    uses: weir/train-gbdt
    inputs: { train: split.train, valid: split.valid }
    with: { target: "delay > 15", features: [x, z, carrier], num_rounds: 40, threads: 2 }
    tune:
      space:
        learning_rate: loguniform(0.02, 0.5)
        num_leaves: int(4, 32, log)
      objective: { metric: valid.auc, goal: maximize }
      trials: 9
      parallel: 2
      sampler: tpe
      scheduler: { type: asha, min_resource: 5, reduction: 3 }
  evaluate:
    uses: weir/evaluate
    inputs: { model: train.model, table: split.test }
    with: { slice_by: carrier }
  register:
    uses: weir/register
    inputs: { model: train.model, metrics: evaluate.metrics }
    with: { name: ui-model }
`);
  execFileSync(weir, ["run", "tuned.yaml", "--json"], { cwd: home, env: weirEnv, stdio: "ignore" });
  const tunedRun = JSON.parse(execFileSync(weir, ["runs", "list", "--json"], { cwd: home, env: weirEnv }).toString())[0];
  // An endpoint with traffic: two versions of an ONNX model, the second a
  // canary judged every second under requests from here.
  const onnx = join(repo, "crates/weir-onnx/tests/data/gbdt_classifier.onnx");
  for (let i = 0; i < 2; i++) execFileSync(weir, ["models", "register", "bc", onnx], { cwd: home, env: weirEnv, stdio: "ignore" });
  execFileSync(weir, ["deploy", "web", "--model", "bc", "--version", "1"], { cwd: home, env: weirEnv, stdio: "ignore" });
  execFileSync(weir, ["deploy", "web", "--model", "bc", "--version", "2", "--steps", "50,100", "--interval", "1s", "--min-requests", "5"], { cwd: home, env: weirEnv, stdio: "ignore" });
  const servePort = await freePort();
  serving = spawn(weir, ["serve", "--addr", `127.0.0.1:${servePort}`], { cwd: home, env: weirEnv, stdio: ["ignore", "ignore", "inherit"] });
  for (let i = 0; ; i++) {
    try { if ((await fetch(`http://127.0.0.1:${servePort}/v2/models/web/ready`)).ok) break; } catch (_) { /* not up yet */ }
    if (i > 300) throw new Error("weir serve did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  const infer = JSON.stringify({ inputs: [{ name: "X", datatype: "FP32", shape: [1, 30], data: new Array(30).fill(1) }] });
  const until = Date.now() + 3500;
  while (Date.now() < until) {
    await fetch(`http://127.0.0.1:${servePort}/v2/models/web/infer`, { method: "POST", body: infer, headers: { "Content-Type": "application/json" } });
    await new Promise((r) => setTimeout(r, 5));
  }

  browser = await chromium.launch({
    executablePath: browserPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const problems = [];
  // A 4xx answer the page expects (a bad filter, a missing run) is logged by
  // Chromium as a console error too; those are judged by the response.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
  });
  page.on("response", (r) => {
    const path = new URL(r.url()).pathname;
    if (r.status() >= 500 || (r.status() >= 400 && (path === "/" || path.startsWith("/static/")))) {
      problems.push(`HTTP ${r.status()} for ${r.url()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  const check = (cond, what) => { if (!cond) throw new Error(what); };
  const shot = async (name) => {
    const text = await page.locator("main").innerText();
    check(!/^(null|undefined|NaN|\[object Object\])$/m.test(text), `${name} shows a stray null/undefined`);
    const png = await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    check(!pngIsBlank(png), `the screenshot of ${name} is blank`);
  };
  const test = async (name, body) => {
    const before = problems.length;
    try {
      await body();
      check(problems.length === before, problems.slice(before).join("\n"));
      console.log(`ok   ${name}`);
    } catch (e) {
      failures++;
      console.log(`FAIL ${name}\n     ${String(e.message || e).split("\n").join("\n     ")}`);
      await page.screenshot({ path: join(shots, `FAILED-${name.replace(/\W+/g, "-")}.png`), fullPage: true }).catch(() => {});
    }
  };
  const notPwned = async () => check(await page.evaluate(() => window.__pwned === undefined), "a run name's markup ran");

  await test("experiments page lists the experiments", async () => {
    await page.goto(`${base}/`);
    await page.locator("#experiments").getByText("flights-tuning").waitFor();
    await shot("experiments");
  });

  await test("the runs table shows every run, escaping their names", async () => {
    await page.goto(`${base}/#/experiments/${exp}`);
    await page.locator("#runs tbody tr").first().waitFor();
    const rows = await page.locator("#runs tbody tr").count();
    check(rows >= 10, `only ${rows} rows`);
    // The hostile name is text, shown as written, and nothing of it ran.
    await page.getByText("<script>window.__pwned = 1</script>", { exact: false }).first().waitFor();
    check(await page.locator("#runs img").count() === 0, "markup from a run name became an element");
    await notPwned();
    await shot("runs-table");
  });

  await test("a filter narrows the runs; sorting by a metric orders them", async () => {
    await page.fill("#filter", "params.num_leaves = '63'");
    await page.press("#filter", "Enter");
    await page.waitForFunction(() => document.querySelectorAll("#runs tbody tr").length === 1);
    check((await page.locator("#runs tbody tr").innerText()).includes("gbdt-1"), "the wrong run matched");
    await page.fill("#filter", "params.objective = 'binary'");
    await page.press("#filter", "Enter");
    await page.waitForFunction(() => document.querySelectorAll("#runs tbody tr").length === 5);
    await page.locator("th", { hasText: /^valid\.auc$/ }).click();
    await page.waitForFunction(() => location.hash.includes("valid.auc"));
    await page.waitForFunction(() => document.querySelectorAll("#runs tbody tr").length === 5);
    // The column's values, read off the table, come in descending order.
    const col = await page.$$eval("#runs thead th", (ths) => ths.findIndex((th) => th.textContent === "valid.auc"));
    const auc = await page.$$eval("#runs tbody tr", (trs, i) => trs.map((tr) => Number(tr.children[i].textContent)), col);
    check(auc.length === 5 && auc.every((v, i) => i === 0 || auc[i - 1] >= v), `not sorted by valid.auc: ${auc}`);
    await shot("runs-filtered");
  });

  await test("a filter with a syntax error is shown inline and the page still works", async () => {
    await page.goto(`${base}/#/experiments/${exp}?filter=${encodeURIComponent("metrics.auc >>> 1")}`);
    await page.locator(".error").waitFor();
    check(await page.locator("#filter").isVisible(), "the search box is gone");
    await shot("runs-bad-filter");
  });

  await test("select two runs and compare them", async () => {
    await page.goto(`${base}/#/experiments/${exp}?filter=${encodeURIComponent("params.objective = 'binary'")}`);
    await page.locator("#runs tbody tr").first().waitFor();
    const boxes = page.locator("#runs tbody input[type=checkbox]");
    await boxes.nth(0).check();
    await boxes.nth(1).check();
    await page.click("#compare");
    await page.locator("#param-diff").waitFor();
    check((await page.locator("#param-diff tr.diff").count()) >= 2, "differing params are not marked");
    check((await page.locator("#parcoords polyline").count()) === 2, "parallel coordinates do not show both runs");
    await page.locator("#scatter canvas").first().waitFor();
    await page.locator("#charts .uplot").nth(1).waitFor();
    await shot("compare");
  });

  await test("the URL the mlflow client prints opens the run page", async () => {
    await page.goto(`${base}/#/experiments/${exp}/runs/${ids.runs["gbdt-0"]}`);
    await page.locator("#run-name").getByText("gbdt-0").waitFor();
    await page.locator("#charts .uplot").nth(1).waitFor();
    await page.locator("#params").getByText("learning_rate").waitFor();
    // Artifacts browse and download.
    const link = page.locator("#artifacts a", { hasText: "metrics.json" });
    await link.waitFor();
    const body = await page.evaluate(async (href) => (await fetch(href)).text(), await link.getAttribute("href"));
    check(JSON.parse(body).auc === 0.7, `downloaded ${body}`);
    await page.locator("#artifacts a", { hasText: "model/" }).click();
    await page.locator("#artifacts a", { hasText: "MLmodel" }).waitFor();
    await shot("run");
  });

  await test("a parent run lists its child runs", async () => {
    await page.goto(`${base}/#/experiments/${exp}/runs/${ids.runs.study}`);
    await page.locator("#children tbody tr").nth(2).waitFor();
    await shot("run-children");
  });

  await test("a 100,000-point metric is drawn from 1,000 server-picked points", async () => {
    await page.goto(`${base}/#/experiments/${exp}/runs/${ids.runs.long}`);
    await page.locator("#charts .uplot").first().waitFor();
    await page.getByText("1000 of 100000 points").waitFor();
    // The tab stays responsive: a script runs at once.
    const t = Date.now();
    await page.evaluate(() => 1);
    check(Date.now() - t < 1000, "the tab froze");
    await shot("run-long-metric");
  });

  await test("10,000 params and a unicode metric key with slashes", async () => {
    await page.goto(`${base}/#/experiments/${exp}/runs/${ids.runs.evil}`);
    await page.locator("#run-name").waitFor();
    check((await page.locator("#run-name").innerText()).startsWith("<script>"), "the run name is not shown as text");
    await page.locator('[data-metric="loss/ü/τ"] .uplot').waitFor();
    await page.getByText("Show all 10000").waitFor();
    check((await page.locator("#params tbody tr").count()) === 500, "the params table is not paged");
    await notPwned();
    await shot("run-hostile");
  });

  await test("a pipeline run's page draws its DAG, cache hits marked", async () => {
    const [latest, first] = pipelineRuns;
    await page.goto(`${base}/#/experiments/0/runs/${first.id}`);
    await page.locator("#dag svg").waitFor();
    check((await page.locator("#dag a.node").count()) === 4, "not 4 steps");
    check((await page.locator("#dag path.edge").count()) === 3, "not 3 edges");
    check((await page.locator("#dag a.node.succeeded").count()) === 4, "the first run's steps are not all succeeded");
    await shot("pipeline-dag");
    await page.goto(`${base}/#/experiments/0/runs/${latest.id}`);
    await page.locator("#dag a.node.cached").nth(3).waitFor();
    check((await page.locator("#dag").innerText()).includes("4 cached"), "the summary does not count the cache hits");
    // A step links to its own run page (a cache hit: the run that made its outputs).
    await page.locator('#dag a.node[data-step="train"]').click();
    await page.locator("#run-name").waitFor();
    check((await page.locator("#run-name").innerText()).includes("train"), "the step's link does not open its run");
    await shot("pipeline-step");
  });

  await test("the DAG's step table says why each step ran or was a cache hit", async () => {
    const [latest, first] = pipelineRuns;
    await page.goto(`${base}/#/experiments/0/runs/${first.id}`);
    await page.locator('#steps tr[data-step="train"] td.cache').waitFor();
    check((await page.locator('#steps tr[data-step="extract"] td.cache').innerText()) === "miss: no earlier run", "the first run's miss reason is not shown");
    // What each step used and cost, its share drawn as a bar; the run's total in the summary.
    const cost = await page.locator('#steps tr[data-step="join"] td.cost').innerText();
    check(/^\$\d/.test(cost.trim()), `the join step's cost is not shown: ${cost}`);
    check((await page.locator("#steps span.costbar").count()) === 4, "not one cost bar per measured step");
    check(/cost \$\d/.test(await page.locator("#dag p.muted").first().innerText()), "the run's cost is not in the summary");
    const cells = await page.locator('#steps tr[data-step="train"] td').allInnerTexts();
    check(/ s$/.test(cells[5]) && /(B|KiB|MiB)$/.test(cells[6]), `the train step's CPU and memory are not shown: ${cells}`);
    await shot("pipeline-usage");
    await page.goto(`${base}/#/experiments/0/runs/${latest.id}`);
    await page.locator('#steps tr[data-step="train"] td.cache').waitFor();
    check((await page.locator('#steps tr[data-step="train"] td.cache').innerText()).startsWith("hit: outputs of step run"), "the cache hit is not shown");
  });

  await test("a study page: trials, best so far, pruned trials at their rung", async () => {
    await page.goto(`${base}/#/experiments/0/runs/${tunedRun.id}`);
    await page.locator('#steps tr[data-step="train"] a.study-link').click();
    await page.locator("#trials tbody tr").nth(8).waitFor();
    check((await page.locator("#trials tbody tr.best").count()) === 1, "no single best trial marked");
    await page.locator("#best-so-far .uplot").waitFor();
    await page.locator("#curves .uplot").waitFor();
    const pruned = page.locator('#trials tbody tr[data-state="pruned"]');
    for (let i = 0; i < await pruned.count(); i++) {
      const rung = Number(await pruned.nth(i).locator("td").nth(3).innerText());
      check(rung >= 5, `a pruned trial shows no rung (${rung})`);
    }
    check((await page.locator("#trial-counts").innerText()).includes("complete"), "no complete trial counted");
    await shot("study");
  });

  await test("models: list, versions with aliases and metrics, a version's model card", async () => {
    await page.goto(`${base}/#/models`);
    await page.locator("#models").getByText("ui-model").click();
    await page.locator("#versions tbody tr").first().waitFor();
    check((await page.locator("#versions").innerText()).includes("test.auc"), "the version's metrics are not columns");
    await shot("model");
    await page.locator('#versions tr[data-version="1"] a').first().click();
    await page.locator("#model-card").waitFor();
    check((await page.locator("#lineage tbody tr").count()) >= 3, "the model card shows no lineage");
    check((await page.locator("#model-card").innerText()).includes("ui-tuned"), "the card does not name its pipeline");
    check(/^\$\d/.test(await page.locator("#training-cost").innerText()), "the card does not give the training cost");
    check((await page.locator("#slices tbody tr").count()) === 3, "the card does not show the 3 carrier slices");
    await shot("model-card");
    await page.goto(`${base}/#/models/bc`);
    await page.locator("#versions tbody tr").nth(1).waitFor();
    check((await page.locator(".endpoint-link").count()) === 1, "the model does not link to its endpoint");
  });

  await test("a deployment: traffic split, request rate, latency, drift, rollout history", async () => {
    await page.goto(`${base}/#/deployments`);
    await page.locator('#deployments tr[data-endpoint="web"] a').first().click();
    await page.locator("#traffic").waitFor();
    await page.locator("#chart-requests .uplot").waitFor();
    await page.locator("#chart-latency .uplot").waitFor();
    check((await page.locator("#histogram rect").count()) > 0, "no latency histogram");
    check((await page.locator("#drift svg").count()) >= 1, "no drift gauge");
    check((await page.locator("#events tbody tr").count()) >= 2, "no rollout history");
    const served = await page.$$eval("#totals tbody tr", (trs) => trs.map((tr) => Number(tr.children[1].textContent)));
    check(served.length >= 1 && served.reduce((a, b) => a + b, 0) > 0, `no requests counted: ${served}`);
    await shot("deployment");
  });

  await test("a run that does not exist is a not-found page", async () => {
    await page.goto(`${base}/#/experiments/${exp}/runs/0123456789abcdef0123456789abcdef`);
    await page.locator("#not-found").waitFor();
    await shot("not-found");
  });

  await test("an artifact path with .. is refused, not served", async () => {
    const status = await page.evaluate(async () => (await fetch("/api/2.0/mlflow-artifacts/artifacts/1/%2E%2E/%2E%2E/etc/passwd")).status);
    check(status === 400 || status === 404, `status ${status}`);
  });

  await test("a change posted from another site is refused; the page's own pass", async () => {
    const run = ids.runs["gbdt-0"];
    const exists = async () => (await fetch(`${base}/api/2.0/mlflow/runs/get?run_id=${run}`)).json();
    // A page on another origin (localhost is not 127.0.0.1) makes the browser
    // post a delete that needs no body: the forged request is sent, and refused.
    const elsewhere = base.replace("127.0.0.1", "localhost");
    await page.goto(`${elsewhere}/health`);
    await page.evaluate(async ([target, run]) => {
      await fetch(`${target}/api/2.0/mlflow/runs/delete?run_id=${run}`, { method: "POST", mode: "no-cors" });
    }, [base, run]);
    const after = await exists();
    check(after.run && after.run.info.lifecycle_stage === "active", `the run was deleted: ${JSON.stringify(after)}`);
    const forged = await fetch(`${base}/api/2.0/mlflow/runs/delete?run_id=${run}`, { method: "POST", headers: { Origin: "https://evil.example" } });
    const body = await forged.json();
    check(forged.status === 403 && body.error_code === "PERMISSION_DENIED" && body.message.includes("another site"), `${forged.status} ${JSON.stringify(body)}`);
    // The dashboard's own posts (a search) go through.
    await page.goto(`${base}/#/experiments/${ids.experiment}`);
    const status = await page.evaluate(async (exp) => (await fetch("/api/2.0/mlflow/runs/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ experiment_ids: [exp] }),
    })).status, String(ids.experiment));
    check(status === 200, `the page's own search: ${status}`);
  });

  await test("the page is served with a script policy and no inline script", async () => {
    const res = await fetch(`${base}/`);
    const csp = res.headers.get("content-security-policy") || "";
    check(csp.includes("script-src 'self'"), `CSP: ${csp}`);
    check(!/<script>(?!<)/.test(await res.text()), "inline script in the page");
  });

  // Last: a token locks the server for everything after it.
  await test("a server with API tokens asks for one, and the page works with it", async () => {
    const made = JSON.parse(execFileSync(weir, ["tokens", "create", "--name", "ui", "--role", "viewer", "--json"], { cwd: home, env: weirEnv }).toString());
    for (let i = 0; ; i++) {
      if ((await fetch(`${base}/api/2.0/mlflow/experiments/search?max_results=1`)).status === 401) break;
      if (i > 100) throw new Error("the server never asked for a token");
      await new Promise((r) => setTimeout(r, 100));
    }
    await page.goto(`${base}/#/experiments`);
    await page.locator("#token-form").waitFor();
    await shot("token-form");
    await page.locator("#token").fill(made.token);
    await page.locator("#token-form button").click();
    await page.getByText("ui-dag").first().waitFor();
    check(!(await page.locator("#token-form").count()), "the form is still shown with a valid token");
  });
} finally {
  if (browser) await browser.close();
  if (serving) serving.kill("SIGTERM");
  server.kill("SIGTERM");
  rmSync(home, { recursive: true, force: true });
}
if (failures) {
  console.log(`${failures} dashboard check(s) failed; screenshots in ${shots}`);
  process.exit(1);
}
console.log(`dashboard: all checks passed; screenshots in ${shots}`);
