#!/usr/bin/env node
// Browser end-to-end check: does video from the server really play in headless Chromium, and is
// it the right picture?
//
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> MODE=mse     node e2e/run.mjs
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> MODE=hls     node e2e/run.mjs
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> MODE=archive START=<unix s> [DURATION=<s>] [META=1] [EXPECT_PAUSE=1] [EXPECT_EOS=1] node e2e/run.mjs
//   JOBS='[{"MODE":"mse"},{"MODE":"hls"}]' VIDEO_ADDR=... STREAM_ID=... node e2e/run.mjs
//   MODE=go-live / MODE=go-archive: the same through a page that behaves exactly like the Go
//   original's example clients (pages/go-client.html); EXPECT_SIZES=N waits for N picture sizes.
//
// Settings come from the environment; `KEY=value` or `--key=value` arguments override them
// (e.g. `node run.mjs --mode=hls --stream-id=...`). JOBS runs several pages at once in one browser,
// each with the common settings overridden by its object. See README.md for the full list.
//
// What it does: serves e2e/pages (and the local hls.js copy) from a built-in HTTP server on
// 127.0.0.1 (a free port, PAGE_PORT, or a socket from PAGE_FDS, one per job), which also
// reverse-proxies /hls/* to VIDEO_ADDR so hls.js fetches same-origin (no CORS needed); uses the shared Chromium at BROWSER_WS or starts Debian's Chromium through
// playwright-core; opens the page for MODE; samples the <video> (picture.mjs) until it has decoded
// frames, currentTime advanced by MIN_ADVANCE_S between two samples at least 1 s apart (with no
// seek between them) and the picture checks pass; prints ONE line of JSON to stdout and exits 0
// (ok) or 1 (anything else). Progress and diagnostics go to stderr.
// A hard timer guarantees exit even if the browser hangs.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { openBrowser } from './browser.mjs';
import { PROBE_OPTIONS, analysePicture, installPictureProbe, loadReference, takeSamples } from './picture.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PAGES_DIR = path.join(HERE, 'pages');
const DEMO_CLIP = path.join(HERE, '..', 'assets', 'demo.mp4');
const require = createRequire(import.meta.url);

const T0 = Date.now();
const elapsed = () => Date.now() - T0;
const log = (...a) => console.error(`[e2e +${(elapsed() / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// configuration

/** Raw settings: the environment, overridden by `KEY=value` / `--key=value` arguments. */
function rawSettings() {
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
  return cfg;
}

const flag = (v) => v === '1' || v === 'true';

/** One job's settings from raw `KEY: value` pairs. */
function jobConfig(cfg) {
  const num = (k, d) => {
    if (cfg[k] === undefined || cfg[k] === '') return d;
    const n = Number(cfg[k]);
    if (!Number.isFinite(n)) throw new Error(`${k} must be a number, got '${cfg[k]}'`);
    return n;
  };
  const c = {
    name: cfg.NAME || '',
    videoAddr: (cfg.VIDEO_ADDR || '').replace(/^[a-z]+:\/\//i, '').replace(/\/+$/, ''),
    streamId: cfg.STREAM_ID || '',
    mode: (cfg.MODE || 'mse').toLowerCase(),
    start: cfg.START || '',
    duration: cfg.DURATION || '',
    meta: cfg.META || '',
    wsPath: cfg.WS_PATH || 'live',
    expectPause: flag(cfg.EXPECT_PAUSE),
    expectReset: flag(cfg.EXPECT_RESET),
    expectEos: flag(cfg.EXPECT_EOS),
    expectSizes: num('EXPECT_SIZES', 0),
    expectSize: cfg.EXPECT_SIZE || '',
    expectFps: num('EXPECT_FPS', 0),
    picture: (cfg.PICTURE || 'moving').toLowerCase(),
    reference: cfg.REFERENCE || '',
    minSamples: num('MIN_SAMPLES', 8),
    timeoutS: num('TIMEOUT_S', 20),
    minAdvanceS: num('MIN_ADVANCE_S', 1.0),
    screenshot: cfg.SCREENSHOT || '',
    pagePort: num('PAGE_PORT', 0),
    pageFd: null,
  };
  if (!['mse', 'hls', 'archive', 'go-live', 'go-archive'].includes(c.mode)) {
    throw new Error(`MODE must be mse|hls|archive|go-live|go-archive, got '${c.mode}'`);
  }
  if (!['none', 'moving', 'demo'].includes(c.picture)) throw new Error(`PICTURE must be none|moving|demo, got '${c.picture}'`);
  if (!c.videoAddr) throw new Error('VIDEO_ADDR is required (e.g. 127.0.0.1:8090)');
  if (!c.streamId) throw new Error('STREAM_ID is required');
  if (c.mode.endsWith('archive') && !c.start) throw new Error(`START (unix seconds) is required for MODE=${c.mode}`);
  if (c.expectEos && !c.mode.endsWith('archive')) throw new Error('EXPECT_EOS applies to the archive modes');
  if (c.picture === 'demo' && !c.reference) c.reference = DEMO_CLIP;
  if (!c.name) c.name = c.mode;
  return c;
}

/** The run: common settings, and one job per JOBS entry (or one job). */
function readConfig() {
  const raw = rawSettings();
  const run = {
    help: raw.HELP === '1',
    multi: !!raw.JOBS,
    chromium: raw.CHROMIUM || '/usr/bin/chromium',
    headful: raw.HEADFUL === '1',
    hardTimeoutS: Number(raw.HARD_TIMEOUT_S || 0),
    jobs: [],
  };
  if (run.help) return run;
  let overrides = [{}];
  if (raw.JOBS) {
    overrides = JSON.parse(raw.JOBS);
    if (!Array.isArray(overrides) || overrides.length === 0) throw new Error('JOBS must be a non-empty JSON array of objects');
  }
  run.jobs = overrides.map((o) => {
    const merged = { ...raw };
    for (const [k, v] of Object.entries(o)) merged[k.toUpperCase()] = String(v);
    return jobConfig(merged);
  });
  // PAGE_FDS: listening sockets handed over by the test, one per job, whose origins it listed in
  // the server's [cors] allow_origins (the server refuses WebSockets from other origins).
  const fds = (raw.PAGE_FDS || '').split(',').filter((f) => f.trim() !== '').map(Number);
  if (fds.length > 0 && fds.length < run.jobs.length) throw new Error(`PAGE_FDS has ${fds.length} sockets for ${run.jobs.length} jobs`);
  if (fds.length > 0) run.jobs.forEach((j, i) => { j.pageFd = fds[i]; });
  if (!(run.hardTimeoutS > 0)) run.hardTimeoutS = Math.max(...run.jobs.map((j) => j.timeoutS)) + 40;
  return run;
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
    const at = cfg.pageFd !== null ? { fd: cfg.pageFd } : { port: cfg.pagePort, host: '127.0.0.1' };
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
    duration: v && Number.isFinite(v.duration) ? v.duration : null,
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

const STATS_KEPT = [
  'messages', 'binaryMessages', 'textMessages', 'bytes', 'appended', 'queued', 'resets',
  'codecMessages', 'codecChanges', 'previousCodecs', 'ignoredBeforeCodecs', 'mime',
  'typeSupported', 'close', 'fatal', 'pauses', 'mores', 'eos', 'endOfStream', 'metaCount',
  'unknownTexts', 'engine', 'hlsVersion', 'levels', 'bufferCodecs', 'fragsLoaded', 'live',
  'manifestRetries', 'mediaRecoveries', 'quotaExceeded', 'removed', 'seeks', 'playCalls',
  'sizes', 'sizeChanges', 'ignoredCodecMessages',
];

/** Plays one job's page in its own browser context; resolves to the job's result. */
async function runJob(browser, job, liveJobs) {
  const jlog = (...a) => log(`[${job.name}]`, ...a);
  const result = {
    ok: false,
    name: job.name,
    mode: job.mode,
    streamId: job.streamId,
    videoAddr: job.videoAddr,
    frames: 0,
    droppedFrames: 0,
    currentTime: 0,
    advanced: 0,
    codecs: null,
    errors: [],
  };
  liveJobs.add(result);
  const runnerErrors = [];
  const consoleTail = [];
  const proxyLog = { requests: 0, errors: 0, statuses: {}, recent: [] };
  let server = null;
  let context = null;
  try {
    const reference = job.picture === 'demo' && job.reference ? loadReference(job.reference) : null;
    server = await startServer(job, proxyLog);
    const base = `http://127.0.0.1:${server.address().port}`;
    const url = pageUrl(base, job);
    result.page = url;
    jlog(`pages at ${base}, opening ${url}`);

    context = await browser.newContext({ viewport: { width: 660, height: 480 } });
    const page = await context.newPage();
    // Count seeks: an advance of currentTime across a seek is not playback.
    await page.addInitScript(() => {
      window.__e2eSeeks = 0;
      window.addEventListener('seeking', () => { window.__e2eSeeks++; }, true);
    });
    if (job.picture !== 'none') await page.addInitScript(installPictureProbe, PROBE_OPTIONS);
    page.on('console', (m) => {
      const line = `${m.type()}: ${m.text()}`.slice(0, 300);
      if (consoleTail.length >= 15) consoleTail.shift();
      consoleTail.push(line);
    });
    page.on('pageerror', (e) => runnerErrors.push(`pageerror: ${e.message}`));
    page.on('crash', () => runnerErrors.push('page crashed'));

    await page.goto(url, { waitUntil: 'load', timeout: 15_000 });

    const deadline = Date.now() + job.timeoutS * 1000;
    const samples = [];
    const pictures = [];
    let picture = null;
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
        jlog(`first decoded frame (currentTime ${s.ct.toFixed(2)})`);
      }
      if (job.picture !== 'none') {
        pictures.push(...(await withTimeout(takeSamples(page), 5000, 'picture samples')));
        if (pictures.length > 600) pictures.splice(0, pictures.length - 600);
        picture = analysePicture(pictures, {
          picture: job.picture,
          reference,
          expectSize: job.expectSize,
          fps: job.expectFps,
          minSamples: job.minSamples,
        });
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
      if (best.adv > result.advanced) {
        result.advanced = +best.adv.toFixed(3);
        result.framesAdvanced = best.framesAdv;
      }

      const st = s.stats;
      const playing = s.frames > 0 && result.advanced >= job.minAdvanceS;
      const pauseOk = !job.mode.endsWith('archive') || !job.expectPause || (st.pauses >= 1 && st.mores >= 1);
      // The advance window never spans a reset, so with a reset seen this is playback after it.
      const resetOk = !job.expectReset || (st.resets || 0) >= 1;
      // The archive ran to its end: `eos`, endOfStream() once everything was appended, and the
      // element played to the end of what it was given.
      const eosOk = !job.expectEos || (st.eos && st.endOfStream && s.ended);
      const sizesOk = (st.sizes || []).length >= job.expectSizes;
      const pictureOk = job.picture === 'none' || (picture && picture.ok);
      const errors = [...errorStrings(st.errors), ...runnerErrors];
      if (playing && pauseOk && resetOk && sizesOk && eosOk && pictureOk && errors.length === 0) {
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
      if (picture && picture.final) {
        reason = `wrong picture: ${picture.failures[0]}`;
        break;
      }
      if (Date.now() >= deadline) {
        if (!playing) {
          reason = s.frames === 0
            ? `no decoded video frames within ${job.timeoutS} s`
            : `currentTime did not advance by ${job.minAdvanceS} s within ${job.timeoutS} s (best ${result.advanced.toFixed(3)} s)`;
        } else if (!sizesOk) {
          reason = `saw picture sizes ${JSON.stringify(st.sizes || [])}, expected ${job.expectSizes} within ${job.timeoutS} s`;
        } else if (!pauseOk) {
          reason = `no pause/more cycle within ${job.timeoutS} s (pauses=${st.pauses}, mores=${st.mores})`;
        } else if (!resetOk) {
          reason = `no codec-message reset within ${job.timeoutS} s`;
        } else if (!eosOk) {
          reason = `no end of stream within ${job.timeoutS} s (eos=${st.eos}, endOfStream=${st.endOfStream}, ended=${s.ended})`;
        } else if (!pictureOk) {
          reason = `wrong picture: ${picture ? picture.failures.join('; ') : 'no samples'}`;
        } else {
          reason = `page errors: ${errors.slice(0, 3).join('; ')}`;
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
        duration: last.duration === null ? null : +last.duration.toFixed(3),
        ended: last.ended,
        codecs: st.codecs || st.bufferCodecs || null,
        videoSize: `${last.width}x${last.height}`,
        readyState: last.readyState,
        paused: last.paused,
        firstFrameMs: firstFrameAt,
        seekEvents: last.seekEvents,
        buffered: last.buffered,
      });
      result.stats = {};
      for (const k of STATS_KEPT) if (st[k] !== undefined && st[k] !== null) result.stats[k] = st[k];
      if (st.meta && st.meta.length) result.meta = st.meta.slice(0, 3);
      result.errors = [...errorStrings(st.errors), ...runnerErrors];
      if (st.warnings && st.warnings.length) result.warnings = errorStrings(st.warnings);
    } else {
      result.errors = [...runnerErrors];
    }
    if (picture) result.picture = { ok: picture.ok, ...picture.stats, failures: picture.failures };
    if (job.mode === 'hls') {
      result.proxy = { requests: proxyLog.requests, errors: proxyLog.errors, statuses: proxyLog.statuses };
    }
    if (!result.ok) {
      result.reason = reason;
      result.console = consoleTail;
      if (job.mode === 'hls') result.proxy.recent = proxyLog.recent.slice(-8);
    }

    if (job.screenshot) {
      try {
        await withTimeout(page.screenshot({ path: job.screenshot }), 10_000, 'screenshot');
        result.screenshot = job.screenshot;
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
    if (context) await withTimeout(context.close(), 10_000, 'context close').catch(() => {});
    if (server) {
      server.closeAllConnections();
      server.close();
    }
    liveJobs.delete(result);
  }
  jlog(result.ok ? 'ok' : `FAILED: ${result.reason}`);
  return result;
}

async function main() {
  let run;
  try {
    run = readConfig();
  } catch (e) {
    finish({ ok: false, mode: process.env.MODE || null, reason: `usage: ${e.message}`, errors: [e.message] }, 1);
    return;
  }
  if (run.help) {
    process.stderr.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 22).join('\n') + '\n');
    process.exit(0);
  }

  const liveJobs = new Set();
  let opened = null;
  const summary = (results) => (run.multi ? { ok: results.every((r) => r.ok), jobs: results } : results[0]);
  const abort = (why) => {
    log(`${why}: exiting`);
    // A browser of our own dies with this process (playwright's launch); a shared one stays.
    const results = run.jobs.map((j) => ({ ok: false, name: j.name, mode: j.mode, reason: why, errors: [why] }));
    finish(summary(results), 1);
  };
  const hard = setTimeout(() => abort(`hard timeout after ${run.hardTimeoutS} s`), run.hardTimeoutS * 1000);
  process.once('SIGINT', () => abort('interrupted by SIGINT'));
  process.once('SIGTERM', () => abort('interrupted by SIGTERM'));

  let results;
  try {
    opened = await openBrowser({ executablePath: run.chromium, headful: run.headful });
    log(`${opened.shared ? 'connected to the shared' : 'started a'} browser in ${elapsed()} ms`);
    results = await Promise.all(run.jobs.map((job) => runJob(opened.browser, job, liveJobs)));
  } catch (e) {
    results = run.jobs.map((j) => ({ ok: false, name: j.name, mode: j.mode, reason: `runner failed: ${e.message.split('\n')[0]}`, errors: [String(e.stack || e)] }));
  } finally {
    if (opened) await withTimeout(opened.browser.close(), 10_000, 'browser close').catch((e) => log(`browser close: ${e.message}`));
  }
  clearTimeout(hard);
  const out = summary(results);
  finish(out, out.ok ? 0 : 1);
}

main().catch((e) => {
  finish({ ok: false, reason: `runner crashed: ${e.message}`, errors: [String(e.stack || e)] }, 1);
});
