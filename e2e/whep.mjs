#!/usr/bin/env node
// WebRTC (WHEP) playback in headless Chromium, through the server's example page
// (web/ui/whep.html, served at /ui/whep.html, so the WHEP POST is same-origin).
//
//   VIDEO_ADDR=127.0.0.1:8090 STREAM_ID=<uuid> [TOKEN=<bearer>] [EXPECT_SIZE=640x360]
//     [PLAY_S=5] [END=delete|vanish|keep] [PICTURE=demo|moving|none] [EXPECT_FPS=25]
//     [REFERENCE=assets/demo.mp4] node e2e/whep.mjs
//
// Waits for the first decoded frame, then watches PLAY_S seconds of statistics while the picture
// probe of e2e/picture.mjs samples what the <video> shows. PICTURE=demo judges it against the
// demo clip (REFERENCE, always the real assets/demo.mp4: a frozen or black copy served in its
// place must fail): colour bars in place, each sample the clip frame its RTP timestamp says,
// changing; PICTURE=moving only asks for a real, changing picture (the RTSP test stream);
// EXPECT_FPS, frames decoded and RTP time advancing in real time. END=delete ends
// the session with WHEP DELETE (the verdict has its status); END=vanish starts a browser of its
// own and SIGKILLs it (no DELETE, no DTLS close: the server must notice the silence); END=keep
// closes the page only. EXPECT_STATUS=<code> expects the POST to fail with that status instead.
// EXPECT_AUDIO=yes: the answer says the session sends G.711 (X-WebRTC-Audio PCMU/PCMA) and the
// browser receives it (inbound audio packets, samples growing over the window, sound energy > 0);
// EXPECT_AUDIO=no: the answer says `none` and no audio arrives (video-only, e.g. AAC cameras).
// Prints ONE line of JSON (`ok`, `firstFrameMs`, `framesDecoded`, `freezeCount`, `size`,
// `location`, `answerMs` and `connectedMs` (POST to 201, to ICE+DTLS up), ...) and exits 0 when ok.

import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CHROMIUM_ARGS, loadPlaywright, openBrowser } from './browser.mjs';
import { PROBE_OPTIONS, analysePicture, installPictureProbe, loadReference, takeSamples } from './picture.mjs';

const env = process.env;
const videoAddr = (env.VIDEO_ADDR || '').replace(/^[a-z]+:\/\//i, '').replace(/\/+$/, '');
const streamId = env.STREAM_ID || '';
const token = env.TOKEN || '';
const expectSize = env.EXPECT_SIZE || '';
const playS = Number(env.PLAY_S || 5);
const end = env.END || 'delete';
const expectStatus = Number(env.EXPECT_STATUS || 0);
const picture = (env.PICTURE || 'demo').toLowerCase();
const expectFps = Number(env.EXPECT_FPS || 0) || null;
const expectAudio = (env.EXPECT_AUDIO || '').toLowerCase();
const reference = env.REFERENCE || path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'assets', 'demo.mp4');
const T0 = Date.now();
const log = (...a) => console.error(`[whep +${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let printed = false;
function finish(result) {
  if (!printed) {
    printed = true;
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  setTimeout(() => process.exit(result.ok ? 0 : 1), 50).unref();
}
setTimeout(() => finish({ ok: false, error: 'hard timeout' }), 60_000).unref();

async function browserFor() {
  if (end !== 'vanish') return { ...(await openBrowser()), server: null };
  // A browser of our own, so killing it kills nobody else's pages.
  const { chromium } = await loadPlaywright();
  const server = await chromium.launchServer({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  return { browser: await chromium.connect(server.wsEndpoint()), shared: false, server };
}

async function main() {
  if (!videoAddr || !streamId) throw new Error('VIDEO_ADDR and STREAM_ID are required');
  const { browser, server } = await browserFor();
  const context = await browser.newContext();
  const page = await context.newPage();
  if (!['demo', 'moving', 'none'].includes(picture)) throw new Error(`PICTURE must be demo|moving|none, got '${picture}'`);
  const ref = picture === 'demo' ? loadReference(reference) : null;
  if (picture !== 'none') await page.addInitScript(installPictureProbe, PROBE_OPTIONS);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => log('page:', m.text()));
  const q = new URLSearchParams({ stream_id: streamId });
  if (token) q.set('token', token);
  // Unmuted: Chromium reports no audio level for a muted element.
  if (expectAudio === 'yes') q.set('sound', '1');
  await page.goto(`http://${videoAddr}/ui/whep.html?${q}`);
  const result = { ok: false };
  const deadline = Date.now() + 15_000;
  let s;
  for (;;) {
    s = await page.evaluate(() => ({
      state: window.__whep.state,
      error: window.__whep.error,
      status: window.__whep.status,
      location: window.__whep.location,
      firstFrameMs: window.__whep.firstFrameMs,
      answerMs: window.__whep.answerMs,
      connectedMs: window.__whep.connectedMs,
      audio: window.__whep.audio,
    }));
    if (s.state === 'playing' || s.state === 'error' || s.state === 'failed' || Date.now() > deadline) break;
    await sleep(50);
  }
  Object.assign(result, s);
  if (expectStatus) {
    result.ok = s.status === expectStatus && s.state === 'error';
    await context.close();
    await browser.close();
    return result;
  }
  if (s.state !== 'playing') {
    result.error = `not playing: ${s.state} ${s.error || ''}`;
    // What did arrive, for the diagnosis.
    result.videoStats = await page.evaluate(() => window.__whepStats()).catch(() => null);
    result.audioStats = await page.evaluate(() => window.__whepAudioStats()).catch(() => null);
    return result;
  }
  const first = await page.evaluate(() => window.__whepStats());
  const firstAudio = await page.evaluate(() => window.__whepAudioStats());
  // Sampled through the window, so a freeze can be placed in time (at join, or later). The
  // picture samples of the join (the GOP burst) count: it must show the clip's frames too.
  const playStart = Date.now();
  let last = first;
  const pictures = [];
  let verdict = null;
  const judge = async () => {
    if (picture === 'none') return;
    pictures.push(...(await takeSamples(page)));
    verdict = analysePicture(pictures, {
      picture,
      reference: ref,
      expectSize: expectSize || undefined,
      fps: expectFps,
      minSamples: 8,
    });
  };
  while (Date.now() - playStart < playS * 1000) {
    await sleep(250);
    last = await page.evaluate(() => window.__whepStats());
    if (last.freezeCount > 0 && result.firstFreezeAfterMs === undefined) {
      result.firstFreezeAfterMs = Date.now() - playStart;
    }
    await judge();
    if (verdict && verdict.final) break;
  }
  // Not yet enough samples for a verdict (a slow machine): a few more seconds, no more.
  const more = Date.now() + 5_000;
  while (verdict && !verdict.ok && !verdict.final && Date.now() < more) {
    await sleep(250);
    await judge();
  }
  result.framesDecoded = last.framesDecoded;
  result.framesInWindow = last.framesDecoded - first.framesDecoded;
  result.framesDropped = last.framesDropped;
  result.freezeCount = last.freezeCount;
  result.freezeS = last.totalFreezesDuration;
  result.pliCount = last.pliCount;
  result.packetsReceived = last.packetsReceived;
  result.size = `${last.width}x${last.height}`;
  const problems = [];
  if (expectAudio) {
    const a = await page.evaluate(() => window.__whepAudioStats());
    result.audioStats = a;
    const grew = a && firstAudio ? a.totalSamplesReceived - firstAudio.totalSamplesReceived : 0;
    result.audioSamplesInWindow = grew;
    if (expectAudio === 'yes') {
      if (!/^PCM[UA]$/.test(s.audio || '')) problems.push(`audio: the answer says '${s.audio}'`);
      if (!(a && a.packetsReceived > 0)) problems.push(`audio: no packets received (${JSON.stringify(a)})`);
      // 8000 samples a second: over the window at least half of that.
      if (!(grew > playS * 4000)) problems.push(`audio: ${grew} samples in ${playS} s`);
      if (!(a && a.totalAudioEnergy > 0)) problems.push(`audio: silent (${JSON.stringify(a)})`);
    } else {
      if (!(s.audio || '').startsWith('none')) problems.push(`audio: the answer says '${s.audio}', expected none`);
      if (a && a.packetsReceived > 0) problems.push(`audio: ${a.packetsReceived} packets received, expected none`);
    }
  }
  if (!(result.framesDecoded > 100)) problems.push(`framesDecoded ${result.framesDecoded} <= 100`);
  if (result.freezeCount !== 0) problems.push(`freezeCount ${result.freezeCount}`);
  if (!(s.firstFrameMs < 500)) problems.push(`first frame after ${s.firstFrameMs} ms`);
  if (expectSize && result.size !== expectSize) problems.push(`size ${result.size}, expected ${expectSize}`);
  if (verdict) {
    result.picture = { ok: verdict.ok, clock: pictures.length ? pictures[pictures.length - 1].clock : null, ...verdict.stats, failures: verdict.failures };
    // A black, frozen, garbled or out-of-order picture is final; too few samples or a low frame
    // rate on a loaded machine is timing, like a freeze.
    if (!verdict.ok) problems.push(`${verdict.final ? 'wrong picture' : 'picture timing'}: ${verdict.failures.join('; ')}`);
  } else if (picture !== 'none') {
    problems.push('no picture samples');
  }
  if (pageErrors.length) problems.push(`page errors: ${pageErrors.slice(0, 3).join('; ')}`);
  if (end === 'delete') {
    await page.evaluate(() => window.__whepStop());
    result.deleteStatus = await page.evaluate(() => window.__whep.deleteStatus);
    if (result.deleteStatus !== 200) problems.push(`DELETE answered ${result.deleteStatus}`);
  }
  if (end === 'vanish' && server) {
    log('killing the browser', server.process().pid);
    server.process().kill('SIGKILL');
  } else {
    await context.close();
    await browser.close();
  }
  result.problems = problems;
  result.ok = problems.length === 0;
  return result;
}

main().then(finish, (e) => finish({ ok: false, error: String(e && e.stack ? e.stack : e) }));
