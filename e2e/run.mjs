#!/usr/bin/env node
// Browser end-to-end check: does video from the server really play in headless Chromium?
//
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> MODE=mse     node e2e/run.mjs
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> MODE=hls     node e2e/run.mjs
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> MODE=archive START=<unix s> [DURATION=<s>] [META=1] [EXPECT_PAUSE=1] node e2e/run.mjs
//   MODE=go-live / MODE=go-archive: the same through a page that behaves exactly like the Go
//   original's example clients (pages/go-client.html); EXPECT_SIZES=N waits for N picture sizes.
//
// Settings come from the environment; `KEY=value` or `--key=value` arguments override them
// (e.g. `node run.mjs --mode=hls --stream-id=...`). See README.md for the full list.
//
// What it does: serves e2e/pages (and the local hls.js copy) from a built-in HTTP server on
// 127.0.0.1 (port PAGE_PORT, default any; or the listening socket PAGE_FD), which also reverse-proxies /hls/* to VIDEO_ADDR so hls.js fetches same-origin (no
// CORS needed); starts Debian's Chromium through playwright-core; opens the page for MODE; polls
// the <video> element until it has decoded frames and currentTime has advanced by MIN_ADVANCE_S
// between two samples at least 1 s apart (with no seek between them); prints ONE line of JSON to
// stdout and exits 0 (ok) or 1 (anything else). Progress and diagnostics go to stderr.
// A hard timer guarantees exit even if the browser hangs.

import http from 'node:http';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PAGES_DIR = path.join(HERE, 'pages');
const require = createRequire(import.meta.url);

// Flags this machine needs (toolchain.md §5, rust-svc.md "Known to work"): root -> no sandbox; no
// GPU; the closed network refuses QUIC and Google's background connections; muted autoplay
// without a user gesture. --headless comes from playwright (headless: true).
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

const T0 = Date.now();
const elapsed = () => Date.now() - T0;
const log = (...a) => console.error(`[e2e +${(elapsed() / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// configuration

function readConfig() {
  const cfg = { ...process.env };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    if (a === '-h' || a === '--help') {
      cfg.HELP = '1';
      continue;
    }
    let key;
    let val;
    if (a.startsWith('--')) {
      a = a.slice(2);
      const eq = a.indexOf('=');
      if (eq >= 0) {
        key = a.slice(0, eq);
        val = a.slice(eq + 1);
      } else {
        key = a;
        val = argv[i + 1] !== undefined && !argv[i + 1].startsWith('--') ? argv[++i] : '1';
      }
    } else if (a.includes('=')) {
      key = a.slice(0, a.indexOf('='));
      val = a.slice(a.indexOf('=') + 1);
    } else {
      throw new Error(`unexpected argument '${a}' (use KEY=value or --key=value)`);
    }
    cfg[key.toUpperCase().replace(/-/g, '_')] = val;
  }
  const num = (k, d) => {
    if (cfg[k] === undefined || cfg[k] === '') return d;
    const n = Number(cfg[k]);
    if (!Number.isFinite(n)) throw new Error(`${k} must be a number, got '${cfg[k]}'`);
    return n;
  };
  const c = {
    help: cfg.HELP === '1',
    videoAddr: (cfg.VIDEO_ADDR || '').replace(/^[a-z]+:\/\//i, '').replace(/\/+$/, ''),
    streamId: cfg.STREAM_ID || '',
    mode: (cfg.MODE || 'mse').toLowerCase(),
    start: cfg.START || '',
    duration: cfg.DURATION || '',
    meta: cfg.META || '',
    wsPath: cfg.WS_PATH || 'live',
    expectPause: cfg.EXPECT_PAUSE === '1' || cfg.EXPECT_PAUSE === 'true',
    expectReset: cfg.EXPECT_RESET === '1' || cfg.EXPECT_RESET === 'true',
    expectSizes: num('EXPECT_SIZES', 0),
    timeoutS: num('TIMEOUT_S', 20),
    hardTimeoutS: num('HARD_TIMEOUT_S', 0),
    minAdvanceS: num('MIN_ADVANCE_S', 1.0),
    screenshot: cfg.SCREENSHOT || '',
    chromium: cfg.CHROMIUM || '/usr/bin/chromium',
    headful: cfg.HEADFUL === '1',
  };
  if (c.help) return c;
  if (!['mse', 'hls', 'archive', 'go-live', 'go-archive'].includes(c.mode)) {
    throw new Error(`MODE must be mse|hls|archive|go-live|go-archive, got '${c.mode}'`);
  }
  if (!c.videoAddr) throw new Error('VIDEO_ADDR is required (e.g. 127.0.0.1:8090)');
  if (!c.streamId) throw new Error('STREAM_ID is required');
  if (c.mode.endsWith('archive') && !c.start) throw new Error(`START (unix seconds) is required for MODE=${c.mode}`);
  return c;
}

// ---------------------------------------------------------------------------------------------
// the result line: printed exactly once

let printed = false;
function finish(result, code) {
  if (!printed) {
    printed = true;
    result.elapsedMs = elapsed();
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  // Let stdout drain, then exit even if something still holds the event loop.
  setTimeout(() => process.exit(code), 50).unref();
  process.exitCode = code;
}

// ---------------------------------------------------------------------------------------------
// tiny HTTP server: /pages/*, /node_modules/hls.js/*, and /hls/* proxied to VIDEO_ADDR

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
  '.css': 'text/css',
  '.png': 'image/png',
};

function hlsJsDir() {
  try {
    return path.dirname(require.resolve('hls.js/package.json'));
  } catch {
    return path.join(HERE, 'node_modules', 'hls.js');
  }
}

function startServer(cfg, proxyLog) {
  const roots = [
    ['/pages/', PAGES_DIR],
    ['/node_modules/hls.js/', hlsJsDir()],
  ];
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://localhost');
    if (u.pathname.startsWith('/hls/')) return proxy(req, res, cfg.videoAddr, proxyLog);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    for (const [prefix, dir] of roots) {
      if (!u.pathname.startsWith(prefix)) continue;
      const rel = decodeURIComponent(u.pathname.slice(prefix.length));
      const file = path.resolve(dir, rel);
      if (!file.startsWith(dir + path.sep)) break;
      fs.readFile(file, (err, data) => {
        if (err) {
          res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
          return;
        }
        res.writeHead(200, {
          'content-type': MIME[path.extname(file)] || 'application/octet-stream',
          'cache-control': 'no-store',
        });
        res.end(req.method === 'HEAD' ? undefined : data);
      });
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // The pages' origin must be in the server's [cors] allow_origins, or their WebSockets fail
    // its cross-site check: PAGE_FD is a listening socket handed over by the test (whose port it
    // put there); PAGE_PORT a fixed port for runs by hand.
    const at = process.env.PAGE_FD
      ? { fd: Number(process.env.PAGE_FD) }
      : { port: Number(process.env.PAGE_PORT || 0), host: '127.0.0.1' };
    server.listen(at, () => resolve(server));
  });
}

function proxy(req, res, videoAddr, proxyLog) {
  const [host, port] = splitHostPort(videoAddr);
  const headers = { ...req.headers, host: videoAddr };
  delete headers.connection;
  const up = http.request(
    { host, port, method: req.method, path: req.url, headers, timeout: 60_000 },
    (upRes) => {
      proxyLog.requests++;
      proxyLog.statuses[upRes.statusCode] = (proxyLog.statuses[upRes.statusCode] || 0) + 1;
      if (proxyLog.recent.length >= 20) proxyLog.recent.shift();
      proxyLog.recent.push(`${upRes.statusCode} ${req.url}`);
      const h = { ...upRes.headers };
      delete h.connection;
      delete h['keep-alive'];
      res.writeHead(upRes.statusCode, h);
      upRes.pipe(res);
    },
  );
  up.on('timeout', () => up.destroy(new Error('upstream timeout')));
  up.on('error', (e) => {
    proxyLog.errors++;
    if (proxyLog.recent.length >= 20) proxyLog.recent.shift();
    proxyLog.recent.push(`ERR ${req.url} ${e.message}`);
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy error: ${e.message}\n`);
  });
  req.pipe(up);
}

function splitHostPort(addr) {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(addr);
  return m ? [m[1], Number(m[2])] : [addr, 80];
}

// ---------------------------------------------------------------------------------------------
// browser processes we started (for the hard timeout only)

function childPids() {
  // Direct children of this node process: playwright spawns chromium itself (in-process driver).
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(after[1]) === process.pid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

function killChildren(pids) {
  for (const pid of pids) {
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        /* not a group leader / already gone */
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// main

function pageUrl(base, cfg) {
  const q = new URLSearchParams();
  if (cfg.mode === 'hls') {
    q.set('stream_id', cfg.streamId);
    return `${base}/pages/hls.html?${q}`;
  }
  q.set('ws', cfg.videoAddr);
  q.set('stream_id', cfg.streamId);
  if (cfg.mode === 'go-live' || cfg.mode === 'go-archive') {
    q.set('mode', cfg.mode === 'go-live' ? 'live' : 'archive');
    if (cfg.mode === 'go-archive') {
      q.set('start', cfg.start);
      if (cfg.duration) q.set('duration', cfg.duration);
    }
    return `${base}/pages/go-client.html?${q}`;
  }
  if (cfg.mode === 'mse') {
    if (cfg.wsPath !== 'live') q.set('path', cfg.wsPath);
    return `${base}/pages/mse.html?${q}`;
  }
  q.set('start', cfg.start);
  if (cfg.duration) q.set('duration', cfg.duration);
  if (cfg.meta) q.set('meta', cfg.meta);
  return `${base}/pages/archive.html?${q}`;
}

// Runs in the page: one sample of the video element and the page's __stats.
function sampleInPage() {
  const v = document.querySelector('video');
  const q = v && v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
  const st = window.__stats || {};
  return {
    frames: q ? q.totalVideoFrames : 0,
    dropped: q ? q.droppedVideoFrames : 0,
    ct: v ? v.currentTime : 0,
    paused: v ? v.paused : true,
    ended: v ? v.ended : false,
    readyState: v ? v.readyState : 0,
    width: v ? v.videoWidth : 0,
    height: v ? v.videoHeight : 0,
    seekEvents: window.__e2eSeeks || 0,
    buffered: v ? Array.from({ length: v.buffered.length }, (_, i) => [
      +v.buffered.start(i).toFixed(3), +v.buffered.end(i).toFixed(3)]) : [],
    stats: JSON.parse(JSON.stringify(st)),
  };
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]);
}

function errorStrings(list) {
  return (list || []).map((e) => (typeof e === 'string' ? e : e.detail ? `${e.what}: ${e.detail}` : e.what));
}

async function main() {
  let cfg;
  try {
    cfg = readConfig();
  } catch (e) {
    finish({ ok: false, mode: process.env.MODE || null, reason: `usage: ${e.message}`, errors: [e.message] }, 1);
    return;
  }
  if (cfg.help) {
    process.stderr.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 16).join('\n') + '\n');
    process.exit(0);
  }

  const result = {
    ok: false,
    mode: cfg.mode,
    streamId: cfg.streamId,
    videoAddr: cfg.videoAddr,
    frames: 0,
    droppedFrames: 0,
    currentTime: 0,
    advanced: 0,
    codecs: null,
    errors: [],
  };
  const runnerErrors = [];
  const consoleTail = [];
  const proxyLog = { requests: 0, errors: 0, statuses: {}, recent: [] };
  let server = null;
  let context = null;
  let profileDir = null;
  let browserPids = [];

  // Hard overall timeout: launch (<= 30 s) + TIMEOUT_S + teardown. Always print and exit.
  const hardMs = (cfg.hardTimeoutS > 0 ? cfg.hardTimeoutS : cfg.timeoutS + 40) * 1000;
  const hard = setTimeout(() => {
    log(`hard timeout (${hardMs} ms): killing the browser and exiting`);
    killChildren(browserPids.length ? browserPids : childPids());
    if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
    result.ok = false;
    result.reason = result.reason || `hard timeout after ${hardMs} ms`;
    result.errors = [...result.errors, `hard timeout after ${hardMs} ms`];
    finish(result, 1);
  }, hardMs);

  const onSignal = (sig) => {
    log(`got ${sig}: cleaning up`);
    killChildren(browserPids.length ? browserPids : childPids());
    if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
    result.ok = false;
    result.reason = `interrupted by ${sig}`;
    finish(result, 1);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    let chromium;
    try {
      ({ chromium } = await import('playwright-core'));
    } catch (e) {
      throw new Error(`cannot load playwright-core (run 'npm ci' in e2e/): ${e.message}`);
    }
    if (!fs.existsSync(cfg.chromium)) throw new Error(`no Chromium at ${cfg.chromium} (apt-get install chromium)`);

    server = await startServer(cfg, proxyLog);
    const base = `http://127.0.0.1:${server.address().port}`;
    const url = pageUrl(base, cfg);
    result.page = url;
    log(`pages at ${base}, opening ${url}`);

    // A fresh, throw-away profile for every run.
    profileDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'video-e2e-profile-'));
    const before = new Set(childPids());
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: cfg.chromium,
      headless: !cfg.headful,
      args: CHROMIUM_ARGS,
      viewport: { width: 660, height: 480 },
      timeout: 30_000,
    });
    browserPids = childPids().filter((p) => !before.has(p));
    log(`chromium started (pids ${browserPids.join(',') || '?'}) in ${elapsed()} ms`);

    const page = context.pages()[0] || (await context.newPage());
    // Count seeks: an advance of currentTime across a seek is not playback.
    await page.addInitScript(() => {
      window.__e2eSeeks = 0;
      window.addEventListener('seeking', () => { window.__e2eSeeks++; }, true);
    });
    page.on('console', (m) => {
      const line = `${m.type()}: ${m.text()}`.slice(0, 300);
      if (consoleTail.length >= 15) consoleTail.shift();
      consoleTail.push(line);
    });
    page.on('pageerror', (e) => runnerErrors.push(`pageerror: ${e.message}`));
    page.on('crash', () => runnerErrors.push('page crashed'));

    await page.goto(url, { waitUntil: 'load', timeout: 15_000 });

    const deadline = Date.now() + cfg.timeoutS * 1000;
    const samples = [];
    let last = null;
    let firstFrameAt = null;
    let reason = null;
    while (true) {
      const s = await withTimeout(page.evaluate(sampleInPage), 5000, 'page.evaluate');
      s.wall = Date.now();
      last = s;
      samples.push(s);
      if (samples.length > 400) samples.shift();
      if (s.frames > 0 && firstFrameAt === null) {
        firstFrameAt = elapsed();
        log(`first decoded frame (currentTime ${s.ct.toFixed(2)})`);
      }

      // Best advance over a window of >= 1 s with the same seek count and the same MSE reset.
      let best = { adv: 0, framesAdv: 0 };
      for (const p of samples) {
        if (s.wall - p.wall < 1000) break;
        if (p.seekEvents !== s.seekEvents || (p.stats.resets || 0) !== (s.stats.resets || 0)) continue;
        // Nor a change of picture size: then the advance is playback after the last switch.
        if ((p.stats.sizeChanges || 0) !== (s.stats.sizeChanges || 0)) continue;
        const adv = s.ct - p.ct;
        if (adv > best.adv) best = { adv, framesAdv: s.frames - p.frames };
      }
      result.advanced = +best.adv.toFixed(3);
      result.framesAdvanced = best.framesAdv;

      const playing = s.frames > 0 && best.adv >= cfg.minAdvanceS;
      const st = s.stats;
      const pauseOk = !cfg.mode.endsWith('archive') || !cfg.expectPause || (st.pauses >= 1 && st.mores >= 1);
      // The advance window never spans a reset, so with a reset seen this is playback after it.
      const resetOk = !cfg.expectReset || (st.resets || 0) >= 1;
      const sizesOk = (st.sizes || []).length >= cfg.expectSizes;
      if (playing && pauseOk && resetOk && sizesOk) {
        result.ok = true;
        break;
      }
      if (st.fatal) {
        reason = `page reported fatal error: ${st.fatal}`;
        break;
      }
      if (runnerErrors.some((e) => e === 'page crashed')) {
        reason = 'page crashed';
        break;
      }
      if (Date.now() >= deadline) {
        if (!playing) {
          reason = s.frames === 0
            ? `no decoded video frames within ${cfg.timeoutS} s`
            : `currentTime did not advance by ${cfg.minAdvanceS} s within ${cfg.timeoutS} s (best ${best.adv.toFixed(3)} s)`;
        } else if (!sizesOk) {
          reason = `saw picture sizes ${JSON.stringify(st.sizes || [])}, expected ${cfg.expectSizes} within ${cfg.timeoutS} s`;
        } else if (!pauseOk) {
          reason = `no pause/more cycle within ${cfg.timeoutS} s (pauses=${st.pauses}, mores=${st.mores})`;
        } else {
          reason = `no codec-message reset within ${cfg.timeoutS} s`;
        }
        break;
      }
      await sleep(250);
    }

    if (last) {
      const st = last.stats;
      Object.assign(result, {
        frames: last.frames,
        droppedFrames: last.dropped,
        currentTime: +last.ct.toFixed(3),
        codecs: st.codecs || st.bufferCodecs || null,
        videoSize: `${last.width}x${last.height}`,
        readyState: last.readyState,
        paused: last.paused,
        firstFrameMs: firstFrameAt,
        seekEvents: last.seekEvents,
        buffered: last.buffered,
      });
      const keep = [
        'messages', 'binaryMessages', 'textMessages', 'bytes', 'appended', 'queued', 'resets',
        'codecMessages', 'codecChanges', 'previousCodecs', 'ignoredBeforeCodecs', 'mime',
        'typeSupported', 'close', 'fatal', 'pauses', 'mores', 'eos', 'endOfStream', 'metaCount',
        'unknownTexts', 'engine', 'hlsVersion', 'levels', 'bufferCodecs', 'fragsLoaded', 'live',
        'manifestRetries', 'mediaRecoveries', 'quotaExceeded', 'removed', 'seeks', 'playCalls',
        'sizes', 'sizeChanges', 'ignoredCodecMessages',
      ];
      result.stats = {};
      for (const k of keep) if (st[k] !== undefined && st[k] !== null) result.stats[k] = st[k];
      if (st.meta && st.meta.length) result.meta = st.meta.slice(0, 3);
      result.errors = [...errorStrings(st.errors), ...runnerErrors];
      if (st.warnings && st.warnings.length) result.warnings = errorStrings(st.warnings);
    } else {
      result.errors = [...runnerErrors];
    }
    if (cfg.mode === 'hls') {
      result.proxy = { requests: proxyLog.requests, errors: proxyLog.errors, statuses: proxyLog.statuses };
    }
    if (!result.ok) {
      result.reason = reason;
      result.console = consoleTail;
      if (cfg.mode === 'hls') result.proxy.recent = proxyLog.recent.slice(-8);
    }

    if (cfg.screenshot) {
      try {
        await withTimeout(page.screenshot({ path: cfg.screenshot }), 10_000, 'screenshot');
        result.screenshot = cfg.screenshot;
      } catch (e) {
        result.errors.push(`screenshot failed: ${e.message}`);
      }
    }
  } catch (e) {
    result.ok = false;
    result.reason = e.message.split('\n')[0];
    result.errors = [...result.errors, ...runnerErrors, e.message.split('\n').slice(0, 3).join(' | ')];
    result.console = consoleTail;
  } finally {
    if (context) {
      try {
        await withTimeout(context.close(), 10_000, 'browser close');
      } catch (e) {
        log(`browser close failed (${e.message}): killing it`);
        killChildren(browserPids);
      }
    }
    if (server) {
      server.closeAllConnections();
      server.close();
    }
    if (profileDir) await fsp.rm(profileDir, { recursive: true, force: true }).catch(() => {});
  }
  clearTimeout(hard);
  log(result.ok ? 'ok' : `FAILED: ${result.reason}`);
  finish(result, result.ok ? 0 : 1);
}

main().catch((e) => {
  finish({ ok: false, reason: `runner crashed: ${e.message}`, errors: [String(e.stack || e)] }, 1);
});
