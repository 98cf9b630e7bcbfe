#!/usr/bin/env node
// Browser end-to-end tests of the built-in web UI, as an operator would use it, in headless
// Debian Chromium (playwright-core). The server is started by the caller (tests/it/webui.rs).
//
//   UI_URL=http://127.0.0.1:8090/ SCENARIOS=grid,cameras,archive STREAM_ID=<demo uuid> \
//     RTSP_URL=rtsp://127.0.0.1:8554/test SHOTS_DIR=/tmp/shots node e2e/ui.mjs
//
// Scenarios (run in the order given, in one browser):
//   grid      the grid plays STREAM_ID: > 50 decoded frames, currentTime advancing, no page errors;
//             screenshot `grid.png`
//   phone     at phone width (390 x 844): the grid, the camera view of STREAM_ID, the cameras list
//             and the form fit the screen (no sideways scrolling) and their main controls are
//             shown, inside the screen, not covered, and work (tile → camera view, zoom, pause,
//             live, the form's field error); screenshots `grid-phone.png`, `camera-phone.png`,
//             `camera-form-phone.png`
//   cameras   an invalid RTSP URL shows the API's message next to the URL field; a camera added
//             through the form (RTSP_URL) plays in its tile; restarted by an API change → the
//             tile shows the close reason and plays again; edited through the form; disabled →
//             its tile says so;
//             deleted → its tile is gone; screenshot `cameras.png`, `camera-form.png`
//   archive   the camera view of STREAM_ID: the timeline shows a recorded range; a click 20 s back
//             plays archive whose wall-clock label matches the clicked instant (±2 s); "Live"
//             returns to live; a 10 s selection (28..18 s back) is exported and saved (EXPORT_PATH) for ffprobe;
//             screenshot `camera.png`
//   auth      with access control on (TOKEN: a valid token): the token prompt, a wrong token
//             refused, the grid playing through signed URLs, the token kept across a reload, a
//             signed export
//   switch    a camera switching resolution mid-stream (SWITCH_RTSP_URL) keeps playing in its
//             tile across the new init segment, at both sizes
//   fallback  a camera with only the HLS output (FILE_PATH, an MP4 on the server) plays in its
//             tile through hls.js
//   a11y      axe-core (WCAG 2.1 A/AA) on every page: no serious or critical violation
//   system    the system page lists the demo camera's storage; screenshot `system.png`
//   tiles     the grid with every stream (TILES_EXPECTED of them): per tile over MEASURE_S seconds
//             (the 16-tile measurement) decoded frames per second, the longest time without a new
//             frame on screen, and whether the picture (the demo's running counter) changed
//             between crops; then the first tile's picture in full (PICTURE_VIDEOS=1 samples
//             only that one)
//
// The demo pictures (grid tile, archive) are judged with the shared picture checks of
// e2e/picture.mjs against the real assets/demo.mp4 (REFERENCE), so a frozen or black demo clip
// (E2E_DEMO_CLIP, e2e/README.md) fails these scenarios too (grid, archive, auth, tiles);
// PICTURE=0 turns the probe off.
// Runs in the shared browser of the test process (BROWSER_WS) when there is one.
//
// Prints ONE JSON line: {"ok":bool, "scenarios":{name:{ok, ...numbers}}, "errors":[...]}; exit 0
// when every scenario passed. Progress goes to stderr.

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { openBrowser } from './browser.mjs';
import { PROBE_OPTIONS, analysePicture, installPictureProbe, loadReference, takeSamples } from './picture.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const T0 = Date.now();
const log = (...a) => console.error(`[ui +${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const cfg = {
  url: (process.env.UI_URL || '').replace(/\/?$/, '/'),
  scenarios: (process.env.SCENARIOS || 'grid').split(',').map((s) => s.trim()).filter(Boolean),
  streamId: process.env.STREAM_ID || '',
  rtspUrl: process.env.RTSP_URL || '',
  shots: process.env.SHOTS_DIR || '',
  filePath: process.env.FILE_PATH || '',
  switchRtspUrl: process.env.SWITCH_RTSP_URL || '',
  token: process.env.TOKEN || '',
  exportPath: process.env.EXPORT_PATH || path.join(os.tmpdir(), `ui-export-${process.pid}.mp4`),
  tilesExpected: Number(process.env.TILES_EXPECTED || 16),
  // The picture probe samples every <video> a few times a second: on for the demo checks, off
  // where it would skew a measurement (PICTURE=0, the 16-tile run).
  picture: process.env.PICTURE !== '0',
  // Only the first N videos of a page are sampled (PICTURE_VIDEOS=1: the 16-tile run judges its
  // first tile without loading the others).
  pictureVideos: process.env.PICTURE_VIDEOS ? Number(process.env.PICTURE_VIDEOS) : null,
  measureS: Number(process.env.MEASURE_S || 10),
  chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  // The clip the pictures are judged against (always the real demo, also when the server plays a
  // frozen or black copy: e2e/README.md).
  reference: process.env.REFERENCE || path.join(HERE, '..', 'assets', 'demo.mp4'),
  hardTimeoutS: Number(process.env.HARD_TIMEOUT_S || 600),
};

const result = { ok: false, url: cfg.url, scenarios: {}, errors: [] };
let printed = false;
function finish(code) {
  if (!printed) {
    printed = true;
    result.elapsedMs = Date.now() - T0;
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  setTimeout(() => process.exit(code), 50).unref();
  process.exitCode = code;
}

/** Polls `fn` (async, returns a truthy value when done) every 250 ms until `timeoutMs`. */
async function until(what, timeoutMs, fn) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(250);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

async function shot(page, name) {
  if (!cfg.shots) return;
  await fsp.mkdir(cfg.shots, { recursive: true });
  await page.screenshot({ path: path.join(cfg.shots, name) });
  log(`screenshot ${name}`);
}

/** Frames and currentTime of the <video> in the element matching `sel`. */
function videoSample(page, sel) {
  return page.evaluate((s) => {
    const v = document.querySelector(s);
    if (!v) return null;
    const q = v.getVideoPlaybackQuality();
    return { frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, ct: v.currentTime, w: v.videoWidth, h: v.videoHeight, at: Date.now() };
  }, sel);
}

/** Waits until the video under `sel` decoded > minFrames and its currentTime advanced ≥ 1 s. */
async function waitPlaying(page, sel, minFrames, timeoutMs) {
  let first = null;
  return until(`video ${sel} playing`, timeoutMs, async () => {
    const s = await videoSample(page, sel);
    if (!s || s.frames === 0) return null;
    if (!first) first = s;
    if (s.frames > minFrames && s.ct - first.ct >= 1 && s.at - first.at >= 1000) return { ...s, advanced: s.ct - first.ct };
    return null;
  });
}

const tileSel = (id) => `.tile[data-stream-id="${id}"]`;

/**
 * Judges what the <video> matching `sel` shows with the tests' picture checks (e2e/picture.mjs),
 * `judge` being analysePicture's options for the expected picture. Samples taken before the call
 * are dropped; it samples until the verdict is in (at most `timeoutMs`).
 */
async function checkPicture(page, sel, judge, timeoutMs) {
  const index = await page.evaluate((q) => [...document.querySelectorAll('video')].indexOf(document.querySelector(q)), sel);
  if (index < 0) throw new Error(`no video at ${sel}`);
  await takeSamples(page);
  const samples = [];
  let verdict = null;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    await sleep(500);
    samples.push(...(await takeSamples(page)).filter((x) => x.video === index));
    verdict = analysePicture(samples, { ...judge, minSamples: 8 });
    if (verdict.ok || verdict.final) break;
  }
  if (!verdict || !verdict.ok) throw new Error(`wrong picture at ${sel}: ${verdict ? verdict.failures.join('; ') : 'no samples'}`);
  return verdict.stats;
}

/**
 * The demo clip: its colour bars where they belong, the frames the media time says (against the
 * reference clip), a changing picture, about `fps` decoded frames per second (null: any rate).
 */
async function checkDemoPicture(page, sel, timeoutMs = 20_000, fps = 25) {
  const judge = { picture: 'demo', reference: loadReference(cfg.reference), expectSize: '640x360', fps };
  return checkPicture(page, sel, judge, timeoutMs);
}

/**
 * A clip other than the demo: a real picture of size `expectSize` that changes from sample to
 * sample, decoded and played in real time (`fps` frames per second).
 */
async function checkMovingPicture(page, sel, expectSize, timeoutMs = 20_000, fps = 25) {
  return checkPicture(page, sel, { picture: 'moving', expectSize, fps }, timeoutMs);
}

// ---------------------------------------------------------------------------------------------

async function scenarioGrid(page) {
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  const s = await waitPlaying(page, `${tileSel(cfg.streamId)} video`, 50, 40_000);
  const picture = cfg.picture ? await checkDemoPicture(page, `${tileSel(cfg.streamId)} video`) : null;
  const transport = await page.getAttribute(tileSel(cfg.streamId), 'data-transport');
  // From the player's first connection to its first picture (a new user's wait), and the path.
  const firstPicture = await page.evaluate((id) => {
    const h = window.__tiles.get(id).history;
    const p = h.find((x) => x.state === 'playing');
    return p ? { ms: p.firstPictureMs, transport: p.transport, fallbacks: h.filter((x) => x.state === 'connecting').length - 1 } : null;
  }, cfg.streamId);
  const badges = await page.textContent(`${tileSel(cfg.streamId)} .tile-badges`);
  await sleep(1500); // badges from the first status poll
  await shot(page, 'grid.png');
  return { ok: true, frames: s.frames, advanced: +s.advanced.toFixed(2), videoSize: `${s.w}x${s.h}`, transport, badges, picture, firstPicture };
}

async function scenarioCameras(page) {
  const out = { ok: false };
  await page.goto(cfg.url + '#/cameras/new', { waitUntil: 'load' });
  await page.fill('#f-name', 'Test cam');
  // 1. An invalid URL: the API's message appears next to the URL field.
  await page.fill('#f-source-url', 'http://not-rtsp.example/stream');
  await page.click('button[type="submit"]');
  const err = await until('the URL field error', 10_000, async () => {
    const el = await page.$('[data-error-for="source.url"]:not([hidden])');
    return el ? el.textContent() : null;
  });
  out.urlError = err.trim();
  const invalid = await page.getAttribute('#f-source-url', 'aria-invalid');
  if (!/rtsp/i.test(out.urlError) || invalid !== 'true') throw new Error(`unexpected URL error '${out.urlError}' (aria-invalid=${invalid})`);
  await shot(page, 'camera-form.png');

  // 2. A valid RTSP camera: added, and its tile plays.
  await page.fill('#f-source-url', cfg.rtspUrl);
  await page.uncheck('#f-archive-recording');
  await page.click('button[type="submit"]');
  await page.waitForURL(/#\/$/, { timeout: 10_000 });
  const id = await until('the new tile', 15_000, () => page.evaluate(() => {
    for (const t of document.querySelectorAll('.tile')) {
      if (t.querySelector('.tile-name').textContent === 'Test cam') return t.dataset.streamId;
    }
    return null;
  }));
  out.streamId = id;
  const s = await waitPlaying(page, `${tileSel(id)} video`, 25, 40_000);
  out.frames = s.frames;
  out.videoSize = `${s.w}x${s.h}`;

  // 2b. The stream restarts (new settings through the API): the tile shows the server's close
  // reason, reconnects by itself and plays again.
  // Only what the tile says after the change counts (WebRTC may have been refused with 409 while
  // the new camera was starting: an earlier 'waiting').
  const before = await page.evaluate((sid) => window.__tiles.get(sid).history.length, id);
  const patched = await page.evaluate(async (sid) => {
    const { api } = await import('./ui/js/api.js');
    await api('PATCH', `/api/v1/streams/${sid}`, { on_demand: false }, { contentType: 'application/merge-patch+json' });
    return true;
  }, id);
  if (!patched) throw new Error('PATCH failed');
  out.restartReason = await until('the close reason on the tile', 20_000, () => page.evaluate(([sid, from]) => {
    const t = window.__tiles.get(sid);
    const w = t && (t.history || []).slice(from).find((x) => x.state === 'waiting');
    return w ? w.message : null;
  }, [id, before]));
  if (out.restartReason !== 'Stream stopped') throw new Error(`the tile said '${out.restartReason}' on restart`);
  await until('the tile playing again', 30_000, () => page.evaluate(([sid, from]) => {
    const h = window.__tiles.get(sid).history.slice(from);
    const i = h.findIndex((x) => x.state === 'waiting');
    return h.slice(i).some((x) => x.state === 'playing');
  }, [id, before]));
  await waitPlaying(page, `${tileSel(id)} video`, 25, 30_000);

  // 2c. Edited through the form (PUT): the form shows what is stored, the list the new name.
  await page.goto(`${cfg.url}#/cameras/${id}/edit`, { waitUntil: 'load' });
  await until('the form filled in', 10_000, async () => (await page.inputValue('#f-name')) === 'Test cam');
  out.editUrl = await page.inputValue('#f-source-url');
  if (out.editUrl !== cfg.rtspUrl) throw new Error(`the form shows URL '${out.editUrl}'`);
  await page.fill('#f-name', 'Test cam (edited)');
  await page.click('button[type="submit"]');
  await page.waitForURL(/#\/cameras$/, { timeout: 10_000 });
  await page.waitForSelector(`tr[data-stream-id="${id}"] >> text=Test cam (edited)`, { timeout: 10_000 });

  // 3. Disabled on the cameras page → the tile says so.
  await page.goto(cfg.url + '#/cameras', { waitUntil: 'load' });
  const toggle = `tr[data-stream-id="${id}"] input[data-testid="enabled"]`;
  await page.waitForSelector(toggle);
  await shot(page, 'cameras.png');
  await page.uncheck(toggle);
  await until('the PATCH to apply', 10_000, async () => !(await page.isDisabled(toggle)));
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  out.disabledText = await until('the disabled tile', 15_000, () => page.evaluate((sel) => {
    const t = document.querySelector(sel);
    return t && t.dataset.state === 'disabled' ? t.querySelector('.tile-overlay').textContent : null;
  }, tileSel(id)));
  if (!/disabled/i.test(out.disabledText)) throw new Error(`disabled tile says '${out.disabledText}'`);

  // 4. Deleted → the tile disappears.
  await page.goto(cfg.url + '#/cameras', { waitUntil: 'load' });
  await page.click(`tr[data-stream-id="${id}"] button[data-testid="delete"]`);
  await page.click('dialog[open] button[data-confirm]');
  await page.waitForSelector(`tr[data-stream-id="${id}"]`, { state: 'detached', timeout: 10_000 });
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  await page.waitForSelector(tileSel(cfg.streamId), { timeout: 10_000 });
  await sleep(500);
  if (await page.$(tileSel(id))) throw new Error('the deleted camera still has a tile');
  out.ok = true;
  return out;
}

async function scenarioArchive(page) {
  const out = { ok: false };
  await page.goto(`${cfg.url}#/camera/${cfg.streamId}`, { waitUntil: 'load' });
  await waitPlaying(page, '.stage video', 25, 40_000);
  out.liveTransport = await page.evaluate(() => document.querySelector('.badge-path')?.dataset.transport || null);
  // The timeline opens on the last 24 hours (the issue's "timeline of the last 24 h").
  const viewSpan = () => page.evaluate(() => {
    const c = document.querySelector('.timeline-canvas');
    return Number(c.dataset.endMs) - Number(c.dataset.startMs);
  });
  out.openSpanH = (await until('the timeline drawn', 10_000, viewSpan)) / 3_600_000;
  const openLabel = await page.evaluate(() => document.querySelector('.timeline select').selectedOptions[0].textContent);
  if (out.openSpanH !== 24 || openLabel !== '24 h') throw new Error(`the timeline opens on ${out.openSpanH} h (span control: '${openLabel}')`);
  // Zoom in with the toolbar's button, as a user would, down to 10 minutes (a pixel is then well
  // under a second): 24 h halves eight times to the 10-minute floor.
  for (let i = 0; i < 12 && (await viewSpan()) > 10 * 60_000; i++) await page.click('.timeline-toolbar button[aria-label="Zoom in"]');
  out.zoomedSpanMin = (await viewSpan()) / 60_000;
  if (out.zoomedSpanMin !== 10) throw new Error(`zoomed in to ${out.zoomedSpanMin} min, not 10`);
  // Zoomed around now, the view still ends just after now (and keeps following it).
  const nowInView = await page.evaluate(() => {
    const c = document.querySelector('.timeline-canvas');
    const now = Date.now() + window.__vs.server.skewMs;
    return { afterNowS: (Number(c.dataset.endMs) - now) / 1000, follow: window.__vs.camera.timeline.follow };
  });
  if (!nowInView.follow || nowInView.afterNowS < 0 || nowInView.afterNowS > 60) throw new Error(`after zooming in the view ends ${nowInView.afterNowS} s after now (following: ${nowInView.follow})`);
  // The recorded range must reach at least 32 s back (the server records from its start).
  const canvas = '.timeline-canvas';
  out.recordedS = await until('32 s of recording', 90_000, () => page.evaluate(() => {
    const cam = window.__vs && window.__vs.camera;
    if (!cam) return null;
    const now = Date.now() + window.__vs.server.skewMs;
    const longest = cam.timeline.ranges.reduce((m, r) => Math.max(m, Math.min(r.endMs, now) - r.startMs), 0);
    return longest >= 32_000 ? longest / 1000 : null;
  }));

  // Click 20 s back. While the view follows now it moves every few seconds (never under the
  // pointer); should it move between reading it and the click, click again.
  await page.locator(canvas).scrollIntoViewIfNeeded();
  const box = await page.locator(canvas).boundingBox();
  const readView = () => page.evaluate(() => {
    const c = document.querySelector('.timeline-canvas');
    return { start: Number(c.dataset.startMs), end: Number(c.dataset.endMs), skew: window.__vs.server.skewMs };
  });
  const xOf = (v, t) => ((t - v.start) / (v.end - v.start)) * box.width;
  let view;
  let clicked;
  for (let attempt = 0; attempt < 3; attempt++) {
    view = await readView();
    const target = Date.now() + view.skew - 20_000;
    await page.mouse.click(box.x + xOf(view, target), box.y + box.height / 2);
    clicked = Number(await page.getAttribute(canvas, 'data-clicked-ms'));
    if (Math.abs(clicked - target) < 1000) break;
  }
  out.clickedAgoS = +((Date.now() + view.skew - clicked) / 1000).toFixed(2);
  if (Math.abs(out.clickedAgoS - 20) > 3) throw new Error(`the click landed ${out.clickedAgoS} s back, not 20`);
  // The first archive picture: its wall-clock label must be the clicked instant (±2 s).
  // Sampled together: the player's wall clock for the current picture, the video's currentTime,
  // and the label on screen (refreshed 4 times a second, so it may be up to 250 ms behind). Only
  // once the player has moved from the keyframe it got to the clicked instant.
  const label = () => page.evaluate(() => {
    const st = document.querySelector('.stage');
    const v = st.querySelector('video');
    const l = document.querySelector('[data-testid="wallclock"]');
    const p = window.__vs.camera.state.player;
    if (st.dataset.mode !== 'archive' || !l.dataset.wallclockMs || !v || !p || !p.seeked) return null;
    if (v.getVideoPlaybackQuality().totalVideoFrames === 0 || v.readyState < 2) return null;
    return { wall: p.wallclockMs(), shown: Number(l.dataset.wallclockMs), ct: v.currentTime, text: l.textContent };
  });
  const lab = await until('archive playing with a wall-clock label', 30_000, label);
  out.label = lab.text;
  out.labelErrorS = +((lab.shown - clicked) / 1000).toFixed(2);
  if (Math.abs(out.labelErrorS) > 2) throw new Error(`label ${lab.text} is ${out.labelErrorS} s off the clicked instant`);
  // It plays on, and the label follows the picture.
  await waitPlaying(page, '.stage video', 10, 30_000);
  const lab2 = await label();
  if (!lab2) throw new Error('archive playback stopped');
  out.archivePlayedS = +(lab2.ct - lab.ct).toFixed(2);
  out.labelDriftS = +((lab2.wall - lab.wall) / 1000 - (lab2.ct - lab.ct)).toFixed(2);
  if (cfg.picture) out.picture = await checkDemoPicture(page, '.stage video');
  out.labelLagS = +((lab2.wall - lab2.shown) / 1000).toFixed(2);
  if (Math.abs(out.labelLagS) > 0.6) throw new Error(`the label is ${out.labelLagS} s behind the picture`);
  if (out.archivePlayedS < 1 || Math.abs(out.labelDriftS) > 0.6) {
    throw new Error(`archive label moved ${(lab2.wall - lab.wall) / 1000} s while the video played ${out.archivePlayedS} s`);
  }
  await shot(page, 'camera.png');

  // A snapshot of the archive picture: a PNG at the video's size.
  const [snap] = await Promise.all([
    page.waitForEvent('download', { timeout: 15_000 }),
    page.click('button:has-text("Snapshot")'),
  ]);
  const snapPath = path.join(os.tmpdir(), `ui-snapshot-${process.pid}.png`);
  await snap.saveAs(snapPath);
  const png = fs.readFileSync(snapPath);
  fs.rmSync(snapPath, { force: true });
  if (png.subarray(1, 4).toString() !== 'PNG') throw new Error('the snapshot is not a PNG');
  out.snapshot = `${png.readUInt32BE(16)}x${png.readUInt32BE(20)}`;
  out.snapshotName = snap.suggestedFilename();

  // Live returns to live.
  await page.click('.btn-live');
  await until('live mode', 5000, async () => (await page.getAttribute('.stage', 'data-mode')) === 'live');
  await waitPlaying(page, '.stage video', 10, 30_000);
  out.backToLive = true;

  // Select 10 s (from 28 s to 18 s back: recorded, see above) by dragging, then export (again,
  // drag once more should the view have moved meanwhile).
  for (let attempt = 0; attempt < 3; attempt++) {
    const v = await readView();
    const nowMs = Date.now() + v.skew;
    const xa = xOf(v, nowMs - 28_000);
    const xb = xOf(v, nowMs - 18_000);
    await page.mouse.move(box.x + xa, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + (xa + xb) / 2, box.y + box.height / 2, { steps: 4 });
    await page.mouse.move(box.x + xb, box.y + box.height / 2, { steps: 4 });
    await page.mouse.up();
    const sel = await page.evaluate(() => {
      const i = document.querySelector('.sel-info');
      return { start: Number(i.dataset.startMs), end: Number(i.dataset.endMs) };
    });
    out.selectionS = +((sel.end - sel.start) / 1000).toFixed(2);
    if (Math.abs(out.selectionS - 10) <= 1.5) break;
  }
  if (Math.abs(out.selectionS - 10) > 1.5) throw new Error(`dragged selection is ${out.selectionS} s`);
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 60_000 }),
    page.click('[data-testid="export"]'),
  ]);
  await download.saveAs(cfg.exportPath);
  const failure = await download.failure();
  if (failure) throw new Error(`download failed: ${failure}`);
  out.exportPath = cfg.exportPath;
  out.exportBytes = fs.statSync(cfg.exportPath).size;

  // Protect the selection as evidence: listed, drawn on the timeline, stored; then removed.
  await page.fill('#prot-reason', 'e2e incident');
  await page.click('[data-testid="protect"]');
  const item = await page.waitForSelector('.prot-list li[data-range-id]', { timeout: 10_000 });
  out.protectedText = (await item.textContent()).trim();
  if (!out.protectedText.includes('e2e incident')) throw new Error(`protected range listed as '${out.protectedText}'`);
  const stored = await page.evaluate(async (sid) => {
    const { api } = await import('./ui/js/api.js');
    return (await api('GET', `/api/v1/streams/${sid}/protected-ranges`)).items;
  }, cfg.streamId);
  if (stored.length !== 1 || stored[0].reason !== 'e2e incident') throw new Error(`stored: ${JSON.stringify(stored)}`);
  out.protectedS = +((Date.parse(stored[0].end) - Date.parse(stored[0].start)) / 1000).toFixed(2);
  if (Math.abs(out.protectedS - out.selectionS) > 0.01) throw new Error(`protected ${out.protectedS} s of a ${out.selectionS} s selection`);
  const drawn = await page.evaluate(() => window.__vs.camera.timeline.protected.length);
  if (drawn !== 1) throw new Error(`${drawn} protected ranges on the timeline`);

  // Edit it: "Edit" loads the range and its reason into the selection panel; a new reason and an
  // end 3 s earlier (typed into the "To" field) are saved as one range that replaces the old one.
  const oldId = String(stored[0].id);
  await page.click(`.prot-list li[data-range-id="${oldId}"] button:has-text("Edit")`);
  const loaded = await page.evaluate(() => {
    const i = document.querySelector('.sel-info');
    return { start: Number(i.dataset.startMs), end: Number(i.dataset.endMs), reason: document.querySelector('#prot-reason').value,
      button: document.querySelector('[data-testid="protect"]').textContent };
  });
  if (loaded.start !== Date.parse(stored[0].start) || loaded.end !== Date.parse(stored[0].end) || loaded.reason !== 'e2e incident') {
    throw new Error(`"Edit" loaded ${JSON.stringify(loaded)} for ${JSON.stringify(stored[0])}`);
  }
  if (loaded.button !== 'Save changes') throw new Error(`the protect button says '${loaded.button}' while editing`);
  const newEnd = await page.evaluate(async (end) => {
    const { toLocalInput } = await import('./ui/js/util.js');
    return toLocalInput(end - 3000);
  }, loaded.end);
  await page.fill('#sel-end', newEnd);
  await page.fill('#prot-reason', 'e2e incident (edited)');
  const edited = await page.evaluate(() => {
    const i = document.querySelector('.sel-info');
    return { start: Number(i.dataset.startMs), end: Number(i.dataset.endMs) };
  });
  if (Math.abs(edited.end - (loaded.end - 3000)) >= 1000) throw new Error(`the typed end gave the selection ${JSON.stringify(edited)}`);
  await page.click('[data-testid="protect"]');
  await page.waitForSelector(`.prot-list li[data-range-id]:not([data-range-id="${oldId}"])`, { timeout: 10_000 });
  const after = await page.evaluate(async (sid) => {
    const { api } = await import('./ui/js/api.js');
    return (await api('GET', `/api/v1/streams/${sid}/protected-ranges`)).items;
  }, cfg.streamId);
  if (after.length !== 1 || String(after[0].id) === oldId || after[0].reason !== 'e2e incident (edited)' ||
      Date.parse(after[0].start) !== edited.start || Date.parse(after[0].end) !== edited.end) {
    throw new Error(`after the edit the server has ${JSON.stringify(after)} (selection ${JSON.stringify(edited)}, old id ${oldId})`);
  }
  out.protectedEditedS = +((Date.parse(after[0].end) - Date.parse(after[0].start)) / 1000).toFixed(2);
  out.protectedEditedText = (await page.textContent('.prot-list li[data-range-id]')).trim();
  if (!out.protectedEditedText.includes('e2e incident (edited)')) throw new Error(`edited range listed as '${out.protectedEditedText}'`);
  if ((await page.textContent('[data-testid="protect"]')) !== 'Protect') throw new Error('the button still says "Save changes" after saving');
  const drawnAfter = await page.evaluate(() => window.__vs.camera.timeline.protected);
  if (drawnAfter.length !== 1 || drawnAfter[0].endMs !== edited.end) throw new Error(`the timeline draws ${JSON.stringify(drawnAfter)} after the edit`);

  await page.click('.prot-list li[data-range-id] .btn-danger');
  await page.click('dialog[open] button[data-confirm]');
  await page.waitForSelector('.prot-list li[data-range-id]', { state: 'detached', timeout: 10_000 });

  // Zoom: the span goes from 10 minutes to 30 days and back, with the keyboard too.
  await page.selectOption('.timeline select', String(30 * 86400_000));
  const wide = await page.evaluate(() => {
    const c = document.querySelector('.timeline-canvas');
    return Number(c.dataset.endMs) - Number(c.dataset.startMs);
  });
  if (wide !== 30 * 86400_000) throw new Error(`30 d view spans ${wide} ms`);
  await page.focus('.timeline-canvas');
  for (let i = 0; i < 20; i++) await page.keyboard.press('+');
  const narrow = await page.evaluate(() => {
    const c = document.querySelector('.timeline-canvas');
    return Number(c.dataset.endMs) - Number(c.dataset.startMs);
  });
  if (narrow !== 10 * 60_000) throw new Error(`zoomed-in view spans ${narrow} ms, not 10 min`);
  // Keyboard playback: Home goes to now, ← moves the cursor back (a hundredth of the view: 6 s),
  // Enter plays from there.
  await page.keyboard.press('Home');
  for (let i = 0; i < 3; i++) await page.keyboard.press('ArrowLeft');
  await page.keyboard.press('Enter');
  await until('archive mode from the keyboard', 10_000, async () => (await page.getAttribute('.stage', 'data-mode')) === 'archive');
  await waitPlaying(page, '.stage video', 10, 30_000);
  out.zoomAndKeyboard = true;
  out.ok = true;
  return out;
}

/**
 * Checks the page as laid out now at phone width: nothing wider than the screen (no sideways
 * scrolling), and each of `controls` (selectors) shown, inside the screen's width and not covered
 * by anything else once scrolled to (so a tap reaches it). Returns what it measured.
 */
async function checkPhoneLayout(page, where, controls) {
  const r = await page.evaluate((sels) => {
    const problems = [];
    for (const sel of sels) {
      const el = document.querySelector(sel);
      if (!el) {
        problems.push(`${sel}: missing`);
        continue;
      }
      el.scrollIntoView({ block: 'center', inline: 'nearest' });
      const b = el.getBoundingClientRect();
      if (b.width < 1 || b.height < 1 || getComputedStyle(el).visibility === 'hidden') {
        problems.push(`${sel}: not shown`);
        continue;
      }
      if (b.left < -0.5 || b.right > window.innerWidth + 0.5) problems.push(`${sel}: spans x ${Math.round(b.left)}..${Math.round(b.right)} of ${window.innerWidth}`);
      const hit = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
      const reached = hit && (hit === el || el.contains(hit) || [...(el.labels || [])].some((l) => l.contains(hit)));
      if (!reached) problems.push(`${sel}: covered by ${hit ? `${hit.tagName.toLowerCase()}.${hit.className}` : 'nothing'}`);
    }
    window.scrollTo(0, 0);
    return { innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, problems };
  }, controls);
  if (r.innerWidth !== 390) throw new Error(`${where}: the window is ${r.innerWidth} px wide, not 390`);
  if (r.scrollWidth > r.innerWidth) r.problems.unshift(`the page is ${r.scrollWidth} px wide on a ${r.innerWidth} px screen`);
  if (r.problems.length) throw new Error(`${where} at phone width: ${r.problems.join('; ')}`);
  return { scrollWidth: r.scrollWidth, controls: controls.length };
}

/** The grid, the camera view and the cameras pages on a phone-width screen (390 × 844), used. */
async function scenarioPhone(page) {
  const out = { ok: false };
  const vp = page.viewportSize();
  await page.setViewportSize({ width: 390, height: 844 });
  try {
    // The grid: one column, the demo playing, the navigation and the tile reachable.
    await page.goto(cfg.url + '#/', { waitUntil: 'load' });
    await waitPlaying(page, `${tileSel(cfg.streamId)} video`, 25, 40_000);
    out.grid = await checkPhoneLayout(page, 'the grid', [
      'nav a[href="#/"]', 'nav a[href="#/cameras"]', 'nav a[href="#/system"]', '#grid-layout', tileSel(cfg.streamId) + ' .tile-link',
    ]);
    const tile = await page.locator(tileSel(cfg.streamId)).boundingBox();
    if (tile.width < 300) throw new Error(`the tile is ${tile.width} px wide on a 390 px screen`);
    await sleep(1000); // badges from the first status poll
    await shot(page, 'grid-phone.png');

    // A tap on the tile opens the camera view; its player, controls and timeline fit and work.
    await page.click(tileSel(cfg.streamId) + ' .tile-link');
    await page.waitForURL(new RegExp(`#/camera/${cfg.streamId}$`), { timeout: 10_000 });
    await waitPlaying(page, '.stage video', 25, 40_000);
    out.camera = await checkPhoneLayout(page, 'the camera view', [
      '.stage video', '.btn-live', '.controls button[aria-label="Pause"]', '.controls #speed', '.timeline-canvas',
      '.timeline select', '.timeline-toolbar button[aria-label="Zoom in"]', '#sel-start', '#sel-end', '[data-testid="export"]',
    ]);
    const canvas = await page.locator('.timeline-canvas').boundingBox();
    if (canvas.width < 300) throw new Error(`the timeline is ${canvas.width} px wide on a 390 px screen`);
    await page.click('.timeline-toolbar button[aria-label="Zoom in"]');
    const span = await page.evaluate(() => {
      const c = document.querySelector('.timeline-canvas');
      return Number(c.dataset.endMs) - Number(c.dataset.startMs);
    });
    const spanText = await page.evaluate(() => document.querySelector('.timeline select').selectedOptions[0].textContent);
    if (span !== 12 * 3_600_000 || spanText !== '12 h') throw new Error(`"Zoom in" from 24 h shows ${span / 3_600_000} h (span control: '${spanText}')`);
    // Pause holds: still paused after the live stream delivered more (an MSE sink resumes a
    // video paused by anything but the user) or, without a sink, for two seconds.
    const fed = () => page.evaluate(() => {
      const p = window.__vs.camera.state.player;
      const sink = p && (p.sink || (p.current && p.current.sink));
      return sink ? sink.stats.appended : null;
    });
    const fedBefore = await fed();
    await page.click('.controls button[aria-label="Pause"]');
    const pausedAt = Date.now();
    await until('the video to stay paused', 15_000, async () => {
      const v = await page.evaluate(() => ({ paused: document.querySelector('.stage video').paused, label: document.querySelector('.controls button[aria-label="Play"]') !== null }));
      if (!v.paused || !v.label) throw new Error(`the pause button did not hold: ${JSON.stringify(v)} after ${Date.now() - pausedAt} ms`);
      const f = await fed();
      return f === null ? Date.now() - pausedAt >= 2000 : f >= fedBefore + 2;
    });
    await page.click('.btn-live');
    await waitPlaying(page, '.stage video', 10, 30_000);
    await shot(page, 'camera-phone.png');

    // The cameras list and the form: fields fit, and the API's message shows under the URL.
    await page.goto(cfg.url + '#/cameras', { waitUntil: 'load' });
    await page.waitForSelector(`tr[data-stream-id="${cfg.streamId}"]`);
    out.cameras = await checkPhoneLayout(page, 'the cameras page', [
      '.page-tools a[href="#/cameras/new"]', `tr[data-stream-id="${cfg.streamId}"] input[data-testid="enabled"]`,
      `tr[data-stream-id="${cfg.streamId}"] button[data-testid="delete"]`,
    ]);
    await page.click('.page-tools a[href="#/cameras/new"]');
    await page.waitForSelector('#f-name');
    await page.fill('#f-name', 'Phone cam');
    await page.fill('#f-source-url', 'http://not-rtsp.example/stream');
    await page.click('button[type="submit"]');
    await page.waitForSelector('[data-error-for="source.url"]:not([hidden])', { timeout: 10_000 });
    out.form = await checkPhoneLayout(page, 'the camera form', [
      '#f-name', '#f-source-url', '[data-error-for="source.url"]', '#f-source-transport', 'button[type="submit"]', '.form a[href="#/cameras"]',
    ]);
    await shot(page, 'camera-form-phone.png');
    out.ok = true;
    return out;
  } finally {
    await page.setViewportSize(vp);
  }
}

async function scenarioTiles(page) {
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  await page.selectOption('#grid-layout', '4');
  await until(`${cfg.tilesExpected} tiles`, 20_000, async () => (await page.$$('.tile')).length >= cfg.tilesExpected);
  // Every tile playing first.
  const ids = await page.$$eval('.tile', (ts) => ts.map((t) => t.dataset.streamId));
  for (const id of ids) await waitPlaying(page, `${tileSel(id)} video`, 25, 60_000);
  await sleep(2000);
  // During the measurement, per tile: the time of every frame presented
  // (requestVideoFrameCallback), so the longest time the tile went without a new frame while the
  // page kept presenting the other tiles' (its own stall), and the longest time the whole page
  // presented nothing (the browser not rendering: CPU starvation on a loaded machine, and a shared
  // headless browser that skips a page's frames for a second at times). Then CROPS_PER_TILE crops
  // of the demo clip's running counter (top left, e2e/picture.mjs) 0.4 s apart, so a tile whose
  // picture does not change (a frozen or black clip still decodes at full rate) is caught on every
  // tile, not only the first.
  const CROPS_PER_TILE = 5;
  await page.evaluate(() => {
    window.__tileWatch = [...document.querySelectorAll('.tile')].map((t) => {
      const v = t.querySelector('video');
      // The callbacks come at most once per display refresh, so at 25 fps about once per frame
      // (the metadata's presentedFrames does not advance in headless Chromium).
      const w = { id: t.dataset.streamId, times: null, crops: [] };
      const onFrame = (nowMs) => {
        if (w.times === 'done') return;
        if (w.times) w.times.push(nowMs);
        v.requestVideoFrameCallback(onFrame);
      };
      v.requestVideoFrameCallback(onFrame);
      return w;
    });
  });
  const takeCrops = () => page.evaluate(() => {
    const c = document.createElement('canvas');
    c.width = 104;
    c.height = 38;
    const ctx = c.getContext('2d', { willReadFrequently: true });
    document.querySelectorAll('.tile video').forEach((v, i) => {
      const sx = v.videoWidth / 640;
      const sy = v.videoHeight / 360;
      ctx.drawImage(v, 0, 0, 104 * sx, 38 * sy, 0, 0, 104, 38);
      const px = ctx.getImageData(0, 0, 104, 38).data;
      const grey = new Array(px.length / 4);
      for (let j = 0; j < grey.length; j++) grey[j] = Math.round(0.299 * px[4 * j] + 0.587 * px[4 * j + 1] + 0.114 * px[4 * j + 2]);
      window.__tileWatch[i].crops.push(grey);
    });
  });
  const sample = () => page.evaluate(() => [...document.querySelectorAll('.tile')].map((t) => {
    const v = t.querySelector('video');
    const q = v.getVideoPlaybackQuality();
    return { id: t.dataset.streamId, frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, ct: v.currentTime, at: performance.now() };
  }));
  const a = await sample();
  await page.evaluate(() => {
    window.__tileWatchFrom = performance.now();
    window.__tileWatch.forEach((w) => { w.times = []; });
  });
  await sleep(cfg.measureS * 1000);
  const b = await sample();
  const stalls = await page.evaluate(() => {
    const from = window.__tileWatchFrom;
    const to = performance.now();
    const all = window.__tileWatch.map((w) => w.times);
    window.__tileWatch.forEach((w) => { w.times = 'done'; });
    const page = [...new Set(all.flat())].sort((x, y) => x - y);
    // The longest time in (t0, t1) with no frame on the page at all.
    const pageGap = (t0, t1) => {
      let prev = t0;
      let max = 0;
      for (const t of page) {
        if (t <= t0) continue;
        if (t >= t1) break;
        max = Math.max(max, t - prev);
        prev = t;
      }
      return Math.max(max, t1 - prev);
    };
    return {
      pageMaxGapMs: Math.round(pageGap(from, to)),
      perTile: all.map((times) => {
        const edges = [from, ...times, to];
        let own = 0;
        let raw = 0;
        for (let i = 1; i < edges.length; i++) {
          const gap = edges[i] - edges[i - 1];
          raw = Math.max(raw, gap);
          own = Math.max(own, gap - pageGap(edges[i - 1], edges[i]));
        }
        return { maxGapMs: Math.round(raw), ownStallMs: Math.round(own), shownFps: +(times.length / ((to - from) / 1000)).toFixed(1) };
      }),
    };
  });
  // The crops after the measurement: reading 16 video frames back blocks the page for a moment,
  // which would show up as a stall of every tile.
  for (let i = 0; i < CROPS_PER_TILE; i++) {
    if (i > 0) await sleep(400);
    await takeCrops();
  }
  const watched = await page.evaluate(() => window.__tileWatch.map((w) => {
    let changed = 0;
    let flat = 0;
    for (let i = 1; i < w.crops.length; i++) {
      let d = 0;
      for (let j = 0; j < w.crops[i].length; j++) d += Math.abs(w.crops[i][j] - w.crops[i - 1][j]);
      if (d / w.crops[i].length >= 0.5) changed++;
    }
    for (const c of w.crops) {
      const m = c.reduce((s, x) => s + x, 0) / c.length;
      if (Math.sqrt(c.reduce((s, x) => s + (x - m) * (x - m), 0) / c.length) < 6) flat++;
    }
    return { pictureChanges: changed, cropPairs: w.crops.length - 1, blankCrops: flat };
  }));
  const per = b.map((e, i) => {
    const s = (e.at - a[i].at) / 1000;
    return { fps: +((e.frames - a[i].frames) / s).toFixed(1), dropped: e.dropped - a[i].dropped, advanced: +(e.ct - a[i].ct).toFixed(2), ...stalls.perTile[i], ...watched[i] };
  });
  const fps = per.map((p) => p.fps).sort((x, y) => x - y);
  // The path each tile plays over (the player's choice, shown in its badge).
  const transports = {};
  for (const t of await page.$$eval('.tile', (ts) => ts.map((x) => x.dataset.transport))) transports[t] = (transports[t] || 0) + 1;
  const shown = per.map((p) => p.shownFps).sort((x, y) => x - y);
  await shot(page, 'grid-16.png');
  // The first tile's picture is the demo clip's (after the measurement: the probe draws it). Its
  // frame rate is the measurement's (16 software decoders on a loaded machine fall below 25).
  const picture = cfg.picture ? await checkDemoPicture(page, `${tileSel(ids[0])} video`, 20_000, null) : null;
  return {
    ok: true, tiles: per.length, measureS: cfg.measureS, picture, transports,
    minFps: fps[0], medianFps: fps[Math.floor(fps.length / 2)], maxFps: fps[fps.length - 1],
    minShownFps: shown[0], medianShownFps: shown[Math.floor(shown.length / 2)],
    maxStallMs: Math.max(...per.map((p) => p.ownStallMs)), pageMaxGapMs: stalls.pageMaxGapMs,
    droppedTotal: per.reduce((s, p) => s + p.dropped, 0), perTile: per,
  };
}

/** With access control on: the page asks for a token (a wrong one is refused and asked again),
 * keeps it for the tab, and plays live and exports through signed URLs. */
async function scenarioAuth(page) {
  const out = { ok: false };
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  await page.waitForSelector('#token-dialog[open]', { timeout: 15_000 });
  await page.fill('#token-input', 'vs_wrong_token');
  await page.click('#token-form button[type="submit"]');
  // The wrong token is refused by the first API call: asked again, saying so.
  await until('the token asked again', 15_000, async () =>
    (await page.$('#token-dialog[open]')) && /refused/i.test(await page.textContent('#token-reason')));
  out.refusedText = (await page.textContent('#token-reason')).trim();
  await page.fill('#token-input', cfg.token);
  await page.click('#token-form button[type="submit"]');
  const s = await waitPlaying(page, `${tileSel(cfg.streamId)} video`, 25, 40_000);
  out.frames = s.frames;
  out.transport = await page.getAttribute(tileSel(cfg.streamId), 'data-transport');
  if (cfg.picture) out.picture = await checkDemoPicture(page, `${tileSel(cfg.streamId)} video`);
  // A reload in the same tab keeps the token (session storage): no prompt.
  await page.reload({ waitUntil: 'load' });
  await waitPlaying(page, `${tileSel(cfg.streamId)} video`, 25, 40_000);
  if (await page.$('#token-dialog[open]')) throw new Error('asked for the token again after a reload');
  // Export through a signed URL (a plain link: no bearer header on a download).
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 60_000 }),
    page.evaluate(async (id) => {
      const { exportUrl, now } = await import('./ui/js/api.js');
      const url = await exportUrl(id, now() - 8000, now() - 3000);
      const a = document.createElement('a');
      a.href = url;
      a.download = '';
      document.body.append(a);
      a.click();
      a.remove();
    }, cfg.streamId),
  ]);
  if (await download.failure()) throw new Error(`signed export failed: ${await download.failure()}`);
  out.signedExportUrl = download.url().replace(/sig=[^&]+/, 'sig=…');
  if (!/[?&]sig=/.test(download.url())) throw new Error(`the export URL is not signed: ${out.signedExportUrl}`);
  out.ok = true;
  return out;
}

/** A camera that switches resolution mid-stream (same codec string, a new init segment): the
 * tile keeps playing through the switch, at the new size. */
async function scenarioSwitch(page) {
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  await page.waitForFunction(() => window.__vs && window.__vs.server.info);
  const id = await page.evaluate(async (url) => {
    const { api } = await import('./ui/js/api.js');
    const s = await api('POST', '/api/v1/streams', {
      name: 'Switching', source: { kind: 'rtsp', url }, outputs: ['mse'], archive: { recording: false },
    });
    return s.id;
  }, cfg.switchRtspUrl);
  try {
    await page.waitForSelector(tileSel(id), { timeout: 15_000 });
    const sizes = new Set();
    const sample = () => page.evaluate((sel) => {
      const v = document.querySelector(sel);
      return { w: v.videoWidth, h: v.videoHeight, frames: v.getVideoPlaybackQuality().totalVideoFrames, ct: v.currentTime };
    }, `${tileSel(id)} video`);
    const before = await until('the first size', 30_000, async () => {
      const x = await sample();
      if (x.frames > 0 && x.w) sizes.add(`${x.w}x${x.h}`);
      return x.frames > 0 && x.w ? x : null;
    });
    // Both sizes seen, and frames still advancing at the last one.
    const after = await until('the other size, playing', 40_000, async () => {
      const x = await sample();
      if (x.w) sizes.add(`${x.w}x${x.h}`);
      return sizes.size >= 2 && `${x.w}x${x.h}` !== `${before.w}x${before.h}` ? x : null;
    });
    const s = await waitPlaying(page, `${tileSel(id)} video`, after.frames + 10, 20_000);
    // The picture at the new size is a real, changing one (the tests' picture checks: not blank,
    // not frozen, decoded and shown in real time), not a stuck last frame of the old size.
    const picture = cfg.picture ? await checkMovingPicture(page, `${tileSel(id)} video`, `${after.w}x${after.h}`) : null;
    const tile = await page.evaluate((sid) => {
      const t = window.__tiles.get(sid);
      return { waits: t.history.filter((x) => x.state === 'waiting').length, transport: t.playerState.transport };
    }, id);
    return {
      ok: true, sizes: [...sizes], firstSize: `${before.w}x${before.h}`, newSize: `${after.w}x${after.h}`,
      framesAfter: s.frames - after.frames, reconnects: tile.waits, transport: tile.transport, picture,
    };
  } finally {
    await page.evaluate(async (sid) => {
      const { api } = await import('./ui/js/api.js');
      await api('DELETE', `/api/v1/streams/${sid}`);
    }, id);
  }
}

async function scenarioFallback(page) {
  // A camera with only the HLS output: the player skips MSE and plays it through hls.js.
  await page.goto(cfg.url + '#/', { waitUntil: 'load' });
  await page.waitForFunction(() => window.__vs && window.__vs.server.info);
  const id = await page.evaluate(async (file) => {
    const { api } = await import('./ui/js/api.js');
    const s = await api('POST', '/api/v1/streams', {
      name: 'HLS only', source: { kind: 'file', path: file, loop: true }, outputs: ['hls'], archive: { recording: false },
    });
    return s.id;
  }, cfg.filePath);
  try {
    await page.waitForSelector(tileSel(id), { timeout: 15_000 });
    const s = await waitPlaying(page, `${tileSel(id)} video`, 25, 60_000);
    const transport = await page.getAttribute(tileSel(id), 'data-transport');
    if (transport !== 'hls.js') throw new Error(`the HLS-only camera plays over ${transport}`);
    // What plays is hls.js's: the tile's player holds an hls.js instance feeding the video, and
    // every transport the tile tried was hls.js (the list had nothing else to offer).
    const how = await page.evaluate((sid) => {
      const t = window.__tiles.get(sid);
      const p = t.player;
      const impl = p && p.current;
      return {
        tried: [...new Set(t.history.map((x) => x.transport).filter(Boolean))],
        hlsJs: Boolean(impl && impl.hls && typeof impl.hls.loadSource === 'function'),
        src: t.video.currentSrc.slice(0, 5),
      };
    }, id);
    if (how.tried.join() !== 'hls.js' || !how.hlsJs || how.src !== 'blob:') throw new Error(`not played by hls.js: ${JSON.stringify(how)}`);
    // The demo clip's picture, judged like the grid's (frames in order against the clip).
    const picture = cfg.picture ? await checkDemoPicture(page, `${tileSel(id)} video`) : null;
    return { ok: true, transport, frames: s.frames, videoSize: `${s.w}x${s.h}`, picture, ...how };
  } finally {
    await page.evaluate(async (sid) => {
      const { api } = await import('./ui/js/api.js');
      await api('DELETE', `/api/v1/streams/${sid}`);
    }, id);
  }
}

/** axe-core's WCAG 2 A/AA checks on every page of the UI: no serious or critical violation. */
async function scenarioA11y(page) {
  const axe = fs.readFileSync(path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');
  const pages = ['#/', `#/camera/${cfg.streamId}`, '#/cameras', '#/cameras/new', '#/system'];
  const found = {};
  for (const hash of pages) {
    await page.goto(cfg.url + hash, { waitUntil: 'load' });
    await page.waitForTimeout(2500);
    // Evaluated through the devtools protocol: the page's CSP (scripts from the server only)
    // stays as it is.
    await page.evaluate(axe);
    const v = await page.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
      return r.violations.map((x) => ({ id: x.id, impact: x.impact, nodes: x.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
    });
    const bad = v.filter((x) => x.impact === 'serious' || x.impact === 'critical');
    if (v.length) found[hash] = v;
    if (bad.length) throw new Error(`accessibility violations on ${hash}: ${JSON.stringify(bad)}`);
  }
  return { ok: true, pages: pages.length, minorViolations: found };
}

async function scenarioSystem(page) {
  await page.goto(cfg.url + '#/system', { waitUntil: 'load' });
  const total = await until('the archive total', 15_000, async () => {
    const el = await page.$('[data-testid="archive-total"]');
    const t = el ? (await el.textContent()).trim() : '';
    return t && t !== '0 B' ? t : null;
  });
  const demoRow = await page.$(`a[href="#/camera/${cfg.streamId}"]`);
  if (!demoRow) throw new Error('the demo camera is not listed on the system page');
  await shot(page, 'system.png');
  return { ok: true, archiveTotal: total };
}

const SCENARIOS = { phone: scenarioPhone, auth: scenarioAuth, switch: scenarioSwitch, a11y: scenarioA11y, fallback: scenarioFallback, system: scenarioSystem, grid: scenarioGrid, cameras: scenarioCameras, archive: scenarioArchive, tiles: scenarioTiles };

// ---------------------------------------------------------------------------------------------

async function main() {
  if (!cfg.url.startsWith('http')) throw new Error('UI_URL is required (e.g. http://127.0.0.1:8090/)');
  for (const s of cfg.scenarios) if (!SCENARIOS[s]) throw new Error(`unknown scenario '${s}'`);
  const hard = setTimeout(() => {
    result.errors.push(`hard timeout after ${cfg.hardTimeoutS} s`);
    finish(1);
  }, cfg.hardTimeoutS * 1000);
  // The shared browser of the test process (BROWSER_WS) or one of our own; a fresh context (an
  // isolated profile) either way.
  const { browser } = await openBrowser({ executablePath: cfg.chromium });
  let context;
  try {
    context = await browser.newContext({ viewport: { width: 1280, height: 720 }, acceptDownloads: true });
    if (cfg.picture) await context.addInitScript(installPictureProbe, { ...PROBE_OPTIONS, maxVideos: cfg.pictureVideos });
    const page = context.pages()[0] || (await context.newPage());
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') log(`console: ${m.text()}`);
    });
    page.setDefaultTimeout(15_000);
    let allOk = true;
    for (const name of cfg.scenarios) {
      log(`scenario ${name}`);
      const before = pageErrors.length;
      try {
        result.scenarios[name] = await SCENARIOS[name](page);
      } catch (e) {
        allOk = false;
        result.scenarios[name] = { ok: false, reason: e.message.split('\n')[0] };
        log(`FAILED ${name}: ${e.message}`);
        await shot(page, `failed-${name}.png`).catch(() => {});
      }
      const errs = pageErrors.slice(before);
      if (errs.length) {
        allOk = false;
        result.scenarios[name].ok = false;
        result.scenarios[name].pageErrors = errs;
      }
    }
    result.ok = allOk;
  } finally {
    clearTimeout(hard);
    if (context) await context.close().catch(() => {});
    await browser.close().catch(() => {});
  }
  finish(result.ok ? 0 : 1);
}

main().catch((e) => {
  result.errors.push(e.message);
  finish(1);
});
