// Drives wald's status page in Debian's Chromium, as tests/status_page.rs asks:
//   node drive.mjs <wald base URL> <admin key> <screenshot dir> <hook base URL>
// The namespace `shop` delivers to the test's webhook, which refuses messages of kind
// "poison" until it is healed. Prints one JSON line with what it saw; exits non-zero on
// any failure.
import { chromium } from "playwright-core";

const [base, adminKey, shots, hook] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const write = async (payload) => {
    const response = await fetch(`${base}/api/v1/wal/write`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ namespace: "shop", payload }),
    });
    if (response.status !== 202) throw new Error(`write answered ${response.status}`);
  };
  const field = (name) => `tr[data-namespace="shop"] [data-field="${name}"]`;
  const number = async (selector) => Number(await page.locator(selector).textContent());

  await page.goto(`${base}/ui/`);
  await page.locator('tr[data-namespace="shop"]').waitFor();
  const before = await number(field("accepted"));
  for (let i = 0; i < 5; i++) await write({ kind: "ok", n: i });
  await page.waitForFunction(([s, b]) => Number(document.querySelector(s)?.textContent) >= b + 5, [field("accepted"), before]);
  const after = await number(field("accepted"));

  await write({ kind: "poison" });
  await page.waitForFunction((s) => Number(document.querySelector(s)?.textContent) >= 1, field("dlq"), { timeout: 20000 });
  await page.waitForTimeout(2100); // one more poll, so that both charts have points
  await page.screenshot({ path: `${shots}/status-page.png` });

  // With the keyboard: focus the namespace's link and open it.
  await page.locator('tr[data-namespace="shop"] a').focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/ns\/shop$/);
  await page.locator("#admin-key").fill(adminKey);
  await page.keyboard.press("Enter");
  const replay = page.locator("#dlq tbody button");
  await replay.first().waitFor();
  const parked = await replay.count();
  await page.locator("#messages tbody tr").first().waitFor();

  await fetch(`${hook}/heal`, { method: "POST" });
  await replay.first().click();
  await page.locator("#outcome", { hasText: "Replayed 1" }).waitFor();
  await page.waitForFunction(() => document.querySelector('[data-field="dlq"]')?.textContent === "0", null, { timeout: 20000 });
  await page.screenshot({ path: `${shots}/status-page-namespace.png`, fullPage: true });

  // Pause the target from the page: it shows as paused, a write waits, and a resume
  // from the page delivers it.
  const state = page.locator('tr[data-target="hook"] [data-field="target-state"]');
  await page.getByRole("button", { name: "Pause hook" }).click();
  await page.locator('tr[data-target="hook"] [data-field="target-state"]', { hasText: "paused" }).waitFor();
  const shown = await (await fetch(`${base}/api/v1/wal/namespace/shop/status`)).json();
  const pausedInStatus = shown.targets.find((t) => t.name === "hook")?.paused === true;
  await write({ kind: "ok", n: "while-paused" });
  await page.waitForTimeout(1000);
  const whilePaused = await (await fetch(`${hook}/count`)).json();
  await page.getByRole("button", { name: "Resume hook" }).click();
  await page.locator('tr[data-target="hook"] [data-field="target-state"]', { hasText: "delivering" }).waitFor();
  const stateAfter = await state.textContent();

  await page.setViewportSize({ width: 390, height: 800 });
  const overflows = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  console.log(JSON.stringify({ before, after, parked, overflows, errors, pausedInStatus, whilePaused, stateAfter }));
} catch (e) {
  // What the page showed, to tell why.
  const pages = browser.contexts().flatMap((c) => c.pages());
  for (const p of pages) console.error(await p.locator("body").innerText().catch(() => ""));
  throw e;
} finally {
  await browser.close();
}
