#!/usr/bin/env node
// WebRTC (WHEP) benchmark against a running server (bench/webrtc/run.sh starts one):
//
//   VIDEO_ADDR=127.0.0.1:18290 STREAM_ID=<uuid> SERVER_PID=<pid> \
//     [JOINS=50] [VIEWERS=10] [MEASURE_S=20] node bench/webrtc/bench.mjs
//
// 1. First picture: JOINS joins one after the other, each a fresh page of web/ui/whep.html in
//    headless Chromium: time from the WHEP POST to the first decoded frame
//    (requestVideoFrameCallback), and to the 201 answer; the session is DELETEd before the next.
// 2. Server CPU per viewer: the server process's CPU time (/proc/<pid>/stat, user + system) over
//    MEASURE_S seconds with no viewer, with VIEWERS WebRTC sessions (Chromium pages), and with
//    VIEWERS MSE viewers (WebSockets on /ws/live read by Node; what a browser does with the bytes
//    costs the server nothing). Per viewer = (with - without) / VIEWERS, in % of one core.
// Prints one line of JSON.

import fs from 'node:fs';
import { openBrowser } from '../../e2e/browser.mjs';

const env = process.env;
const videoAddr = env.VIDEO_ADDR;
const streamId = env.STREAM_ID;
const pid = Number(env.SERVER_PID);
const joins = Number(env.JOINS || 50);
const viewers = Number(env.VIEWERS || 10);
const measureS = Number(env.MEASURE_S || 20);
const log = (...a) => console.error('[bench]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
if (!videoAddr || !streamId || !pid) throw new Error('VIDEO_ADDR, STREAM_ID and SERVER_PID are required');

/** CPU seconds (user + system) of the server process so far. */
function cpuSeconds() {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start after the last ')'.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name; in clock
  // ticks (USER_HZ is 100 on Linux).
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** % of one core the server used during `ms` (after `settleMs` for the load to start). */
async function cpuPercent(ms, settleMs = 3000) {
  await sleep(settleMs);
  const c0 = cpuSeconds();
  const t0 = performance.now();
  await sleep(ms);
  return (100 * (cpuSeconds() - c0)) / ((performance.now() - t0) / 1000);
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)];
}

const pageUrl = `http://${videoAddr}/ui/whep.html?stream_id=${encodeURIComponent(streamId)}`;

async function waitPlaying(page, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await page.evaluate(() => ({ ...window.__whep, pc: undefined }));
    if (s.state === 'playing') return s;
    if (s.state === 'error' || s.state === 'failed') throw new Error(`join failed: ${s.state} ${s.error}`);
    if (Date.now() > deadline) throw new Error(`no picture in ${timeoutMs} ms (${s.state})`);
    await sleep(10);
  }
}

async function firstFrames(browser) {
  const first = [];
  const answered = [];
  for (let i = 0; i < joins; i++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    // The page notes when the 201 came (the answer time) next to its own POST time.
    await page.addInitScript(() => {
      const orig = window.fetch;
      window.fetch = async (...a) => {
        const r = await orig(...a);
        if (a[1] && a[1].method === 'POST' && window.__whep) window.__whep.answeredAt = performance.now();
        return r;
      };
    });
    await page.goto(pageUrl);
    const s = await waitPlaying(page);
    first.push(s.firstFrameMs);
    answered.push(s.answeredAt - s.postedAt);
    await page.evaluate(() => window.__whepStop());
    await context.close();
    // Joins are spread over the GOP (2 s in the demo), as real viewers' would be.
    await sleep(137);
  }
  const f = [...first].sort((a, b) => a - b);
  const a = [...answered].sort((x, y) => x - y);
  const r = (x) => Math.round(x);
  return {
    joins: first.length,
    firstFrameMs: { p50: r(pct(f, 50)), p99: r(pct(f, 99)), min: r(f[0]), max: r(f[f.length - 1]) },
    answerMs: { p50: r(pct(a, 50)), p99: r(pct(a, 99)) },
  };
}

async function webrtcViewers(browser) {
  const context = await browser.newContext();
  const pages = [];
  for (let i = 0; i < viewers; i++) {
    const page = await context.newPage();
    await page.goto(pageUrl);
    await waitPlaying(page);
    pages.push(page);
  }
  const cpu = await cpuPercent(measureS * 1000);
  let decoded = 0;
  for (const p of pages) decoded += (await p.evaluate(() => window.__whepStats())).framesDecoded;
  for (const p of pages) await p.evaluate(() => window.__whepStop());
  await context.close();
  return { cpu, decoded };
}

async function mseViewers() {
  if (typeof WebSocket === 'undefined') throw new Error('no WebSocket in this Node (use node --experimental-websocket, Node >= 20.10)');
  const sockets = [];
  let bytes = 0;
  for (let i = 0; i < viewers; i++) {
    const ws = new WebSocket(`ws://${videoAddr}/ws/live?stream_id=${encodeURIComponent(streamId)}`);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (ev) => {
      bytes += ev.data.byteLength || ev.data.length || 0;
    };
    await new Promise((ok, fail) => {
      ws.onopen = ok;
      ws.onerror = () => fail(new Error('MSE WebSocket failed'));
    });
    sockets.push(ws);
  }
  const cpu = await cpuPercent(measureS * 1000);
  for (const ws of sockets) ws.close();
  return { cpu, bytes };
}

async function main() {
  const { browser } = await openBrowser();
  log(`${joins} joins`);
  const joinsResult = await firstFrames(browser);
  log('joins', JSON.stringify(joinsResult));
  log(`idle ${measureS} s`);
  const idle = await cpuPercent(measureS * 1000, 5000);
  log(`${viewers} WebRTC viewers`);
  const w = await webrtcViewers(browser);
  await browser.close();
  log(`${viewers} MSE viewers`);
  const m = await mseViewers();
  await sleep(2000);
  log(`idle again ${measureS} s`);
  const idle2 = await cpuPercent(measureS * 1000);
  const base = (idle + idle2) / 2;
  const per = (x) => +((x - base) / viewers).toFixed(3);
  const out = {
    ...joinsResult,
    viewers,
    measureS,
    serverCpuPercent: {
      idle: +idle.toFixed(2),
      idleAfter: +idle2.toFixed(2),
      webrtc: +w.cpu.toFixed(2),
      mse: +m.cpu.toFixed(2),
    },
    perViewerPercentOfCore: { webrtc: per(w.cpu), mse: per(m.cpu) },
    webrtcFramesDecoded: w.decoded,
    mseBytes: m.bytes,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
