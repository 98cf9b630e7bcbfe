// One place that gets a Chromium for the e2e runners: the shared one a test harness started
// (BROWSER_WS, from browser-server.mjs), or a fresh headless one of our own.

/**
 * Flags this machine needs (toolchain.md §5): root -> no sandbox; no GPU; the closed network
 * refuses QUIC and Google's background connections; muted autoplay without a user gesture.
 * --headless comes from playwright.
 */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

export async function loadPlaywright() {
  try {
    return await import('playwright-core');
  } catch (e) {
    throw new Error(`cannot load playwright-core (run 'npm ci' in e2e/): ${e.message}`);
  }
}

/**
 * `{ browser, shared }`: connected to BROWSER_WS when it is set (closing it then only disconnects
 * and drops our contexts; the browser stays for the next runner), else launched here (closing it
 * ends it). Pages go into `browser.newContext()`s: isolated profiles, as a fresh browser would be.
 */
export async function openBrowser({ executablePath = '/usr/bin/chromium', headful = false } = {}) {
  const { chromium } = await loadPlaywright();
  const ws = process.env.BROWSER_WS;
  if (ws) {
    return { browser: await chromium.connect(ws, { timeout: 30_000 }), shared: true };
  }
  const fs = await import('node:fs');
  if (!fs.existsSync(executablePath)) throw new Error(`no Chromium at ${executablePath} (apt-get install chromium)`);
  const browser = await chromium.launch({
    executablePath,
    headless: !headful,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  return { browser, shared: false };
}
