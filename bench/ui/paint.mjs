// First meaningful paint of dashboard pages in headless Chromium: for each
// page, a fresh browser context (cold cache) opens the URL and the time is
// read when the page's content is on screen (its selector visible), from
// the navigation's start. Prints one JSON object.
//
//   node bench/ui/paint.mjs '[{"name": "runs", "url": "http://...", "ready": "#runs tbody tr"}]' [LOADS]
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// playwright-core as the browser tests pin it (tests/ui).
const here = dirname(fileURLToPath(import.meta.url));
const { chromium } = createRequire(resolve(here, "../../tests/ui/package.json"))("playwright-core");
const targets = JSON.parse(process.argv[2]);
const loads = Number(process.argv[3] || 5);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
});
const out = {};
try {
  for (const t of targets) {
    const times = [];
    let failed = null;
    for (let i = 0; i < loads && !failed; i++) {
      const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
      const page = await context.newPage();
      await page.goto(t.url, { waitUntil: "commit" });
      try {
        await page.locator(t.ready).first().waitFor({ timeout: 120_000 });
        times.push(await page.evaluate(() => performance.now()));
      } catch (e) {
        // What the page showed instead, for the record.
        const shot = `${process.env.PAINT_SHOTS || "/tmp"}/paint-${t.name.replace(/\W+/g, "-")}.png`;
        await page.screenshot({ path: shot }).catch(() => {});
        const text = await page.evaluate(() => document.body.innerText.slice(0, 300)).catch(() => "");
        failed = { timed_out_after_ms: 120_000, screenshot: shot, text };
      }
      await context.close();
    }
    if (failed) {
      out[t.name] = failed;
      console.error(`${t.name}: not on screen within 120 s (${failed.screenshot})`);
      continue;
    }
    times.sort((a, b) => a - b);
    out[t.name] = { median_ms: Math.round(times[Math.floor(times.length / 2)]), max_ms: Math.round(times[times.length - 1]), loads };
    console.error(`${t.name}: median ${out[t.name].median_ms} ms, max ${out[t.name].max_ms} ms`);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
