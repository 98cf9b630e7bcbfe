#!/usr/bin/env node
// A Chromium that several e2e runs share (one browser start instead of one per run):
//
//   node e2e/browser-server.mjs            # prints "READY ws://127.0.0.1:<port>/<id>" on stdout
//   BROWSER_WS=ws://... node e2e/run.mjs   # runs connect to it instead of launching their own
//
// The browser listens on 127.0.0.1 only. It exits (closing the browser) when stdin ends, so a
// test process that started it takes it along when it exits or dies; also on SIGTERM/SIGINT.

import { CHROMIUM_ARGS, loadPlaywright } from './browser.mjs';

const { chromium } = await loadPlaywright();
const server = await chromium.launchServer({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: CHROMIUM_ARGS,
  host: '127.0.0.1',
  port: 0,
  timeout: 60_000,
});
let closing = false;
async function stop(why) {
  if (closing) return;
  closing = true;
  console.error(`[browser-server] ${why}: closing the browser`);
  const timer = setTimeout(() => process.exit(0), 10_000);
  timer.unref();
  await server.close().catch(() => {});
  process.exit(0);
}
process.stdin.on('end', () => stop('stdin closed'));
process.stdin.on('error', () => stop('stdin error'));
process.stdin.resume();
process.once('SIGTERM', () => stop('SIGTERM'));
process.once('SIGINT', () => stop('SIGINT'));
process.stdout.write(`READY ${server.wsEndpoint()}\n`);
