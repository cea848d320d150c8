// Loads the legacy app's page through the gateway in Debian's headless Chromium, clicks
// Disconnect on one connected row and waits until that row shows `disconnected`.
//
//   node disconnect.mjs <base-url> <row-id> <screenshot.png>
//
// Prints one JSON line (what it saw) and exits 0, or prints the error and exits 1.
// Environment: CHROMIUM (default /usr/bin/chromium), STEP_TIMEOUT_MS (default 15000).
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl, rowId, screenshot] = process.argv.slice(2);
if (!baseUrl || !rowId || !screenshot) {
  console.error('usage: node disconnect.mjs <base-url> <row-id> <screenshot.png>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const timeout = Number(process.env.STEP_TIMEOUT_MS) || 15000;

// A fresh profile for every run, removed afterwards.
const userDataDir = mkdtempSync(join(tmpdir(), 'gw-chromium-'));
const seen = { requests: [], console: [], pageErrors: [] };
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 900, height: 480 },
    timeout,
  });
  context.setDefaultTimeout(timeout);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => seen.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
  page.on('response', (r) => {
    const url = new URL(r.url());
    if (url.pathname.startsWith('/api/')) {
      seen.requests.push(`${r.request().method()} ${url.pathname} ${r.status()}`);
    }
  });

  const response = await page.goto(baseUrl + '/', { waitUntil: 'load' });
  const pageStatus = response ? response.status() : null;
  await page.locator('[data-testid="sessions-table"][data-loaded="true"]').waitFor();
  const status = page.getByTestId(`session-status-${rowId}`);
  const before = (await status.textContent())?.trim();
  if (before !== 'connected') throw new Error(`row ${rowId} shows "${before}", not "connected"`);

  await page.getByTestId(`disconnect-${rowId}`).click();
  await page
    .locator(`[data-testid="session-row-${rowId}"][data-status="disconnected"]`)
    .waitFor();
  const after = (await status.textContent())?.trim();
  const result = (await page.getByTestId('result').textContent())?.trim();
  const rows = await page.locator('[data-testid^="session-row-"]').count();

  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ pageStatus, before, after, result, rows, ...seen }));
} catch (error) {
  console.error(String(error && error.stack ? error.stack : error));
  console.error(JSON.stringify(seen));
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
