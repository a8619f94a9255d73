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

  await test("a run that does not exist is a not-found page", async () => {
    await page.goto(`${base}/#/experiments/${exp}/runs/0123456789abcdef0123456789abcdef`);
    await page.locator("#not-found").waitFor();
    await shot("not-found");
  });

  await test("an artifact path with .. is refused, not served", async () => {
    const status = await page.evaluate(async () => (await fetch("/api/2.0/mlflow-artifacts/artifacts/1/%2E%2E/%2E%2E/etc/passwd")).status);
    check(status === 400 || status === 404, `status ${status}`);
  });

  await test("the page is served with a script policy and no inline script", async () => {
    const res = await fetch(`${base}/`);
    const csp = res.headers.get("content-security-policy") || "";
    check(csp.includes("script-src 'self'"), `CSP: ${csp}`);
    check(!/<script>(?!<)/.test(await res.text()), "inline script in the page");
  });
} finally {
  if (browser) await browser.close();
  server.kill("SIGTERM");
  rmSync(home, { recursive: true, force: true });
}
if (failures) {
  console.log(`${failures} dashboard check(s) failed; screenshots in ${shots}`);
  process.exit(1);
}
console.log(`dashboard: all checks passed; screenshots in ${shots}`);
