// Does the browser show the right picture? Samples of what a <video> really displays, and the
// checks that tell a playing stream from a frozen, black, garbled or repeating one.
//
// In the page (installed with `page.addInitScript(installPictureProbe, PROBE_OPTIONS)`), every
// <video> gets a requestVideoFrameCallback loop that, about every SAMPLE_MS, draws the presented
// frame into a canvas and records:
//   mt      the frame's media time in seconds, exact per frame: rVFC metadata.mediaTime for a
//           file, MSE or HLS; for WebRTC (a MediaStream, whose mediaTime is the receiver's clock)
//           the frame's RTP timestamp (90 kHz for video, the server derives it from the
//           camera's PTS), unwrapped across 2^32, so the same frame-order checks apply
//   clock   'media' or 'rtp': which of the two `mt` is
//   tvf     video.getVideoPlaybackQuality().totalVideoFrames (frames decoded, dropped ones too)
//   w, h    the video's intrinsic size
//   thumb   the whole frame scaled to 64x36, grey, base64: a generic "did the picture change"
//   crop    the top-left 104x38 pixels at full resolution, grey, base64: where the demo clip
//           (ffmpeg testsrc2) draws its running time and frame counter
//   bars    RGB at a grid of points in each of the clip's six colour bars
//   epoch   window.__stats.resets and how often the video's source (src or srcObject) changed:
//           a new MSE source or a new WebRTC session restarts the media timeline
// Node takes the samples out with `takeSamples(page)` and judges them with `analysePicture`.
//
// Against a reference clip (`loadReference`: the same crop of every frame, decoded by ffmpeg),
// each sample is matched to the clip frame it shows, and consecutive samples must show the frames
// their media times say (±2 frames): a frozen picture, a black one, a garbled one, a server that
// repeats a fragment or a GOP, all fail. H.264 decoding is bit-exact, so a correct frame matches
// its reference with a correlation of about 0.99; the neighbouring frames (one digit of the
// counter differs) reach about 0.95.

import { execFileSync } from 'node:child_process';

/** Where the demo clip's counter is (pixels of a 640x360 frame) and its colour bars. */
export const DEMO_LAYOUT = {
  crop: { x: 0, y: 0, w: 104, h: 38 },
  // The six bars: centre x and expected colour. Squares, a growing grey box and a band move
  // across them, so each bar is read at a grid of points (`barPoints`, offsets from (x, 0)) and
  // passes when enough of them (`barMinPoints`) show its colour.
  bars: [
    { x: 53, rgb: [255, 0, 0], name: 'red' },
    { x: 160, rgb: [0, 255, 0], name: 'green' },
    { x: 266, rgb: [255, 255, 0], name: 'yellow' },
    { x: 373, rgb: [0, 0, 255], name: 'blue' },
    { x: 480, rgb: [255, 0, 255], name: 'magenta' },
    { x: 586, rgb: [0, 255, 255], name: 'cyan' },
  ],
  barPoints: [-40, -20, 0, 20, 40].flatMap((dx) => [110, 150, 190, 230, 270, 310, 350, 358].map((y) => [dx, y])),
  barMinPoints: 4,
  width: 640,
  height: 360,
};

/** Options of the in-page probe (serialisable: passed to addInitScript). */
export const PROBE_OPTIONS = { sampleMs: 300, maxSamples: 200, layout: DEMO_LAYOUT };

/**
 * Runs in the page (before any of its scripts): samples every <video> that appears.
 * Self-contained: playwright serialises this function's source into the page.
 */
export function installPictureProbe(opts) {
  const samples = [];
  const dropped = { count: 0 };
  const TW = 64;
  const TH = 36;
  let seq = 0;

  function grey(px) {
    const out = new Uint8Array(px.length / 4);
    for (let i = 0, j = 0; i < px.length; i += 4, j++) {
      out[j] = Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
    }
    return out;
  }
  function b64(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s);
  }

  function watch(video, index) {
    if (video.__probeWatched) return;
    video.__probeWatched = true;
    const full = document.createElement('canvas');
    const thumb = document.createElement('canvas');
    thumb.width = TW;
    thumb.height = TH;
    const fctx = full.getContext('2d', { willReadFrequently: true });
    const tctx = thumb.getContext('2d', { willReadFrequently: true });
    let last = -Infinity;
    // RTP timestamps are 32 bits: unwrapped here (a wrap is 13 h of video at 90 kHz).
    let rtpLast = null;
    let rtpHigh = 0;
    let source = null;
    let sources = 0;
    const onFrame = (now, meta) => {
      try {
        if (now - last >= opts.sampleMs && video.videoWidth > 0) {
          last = now;
          const w = video.videoWidth;
          const h = video.videoHeight;
          if (full.width !== w || full.height !== h) {
            full.width = w;
            full.height = h;
          }
          fctx.drawImage(video, 0, 0, w, h);
          tctx.drawImage(video, 0, 0, TW, TH);
          const L = opts.layout;
          const sx = w / L.width;
          const sy = h / L.height;
          const c = L.crop;
          const cw = Math.min(c.w, w);
          const ch = Math.min(c.h, h);
          // One read of the frame (hundreds of 1-pixel reads would load the page's main thread,
          // and a WebRTC receiver counts a late frame as a freeze).
          const all = fctx.getImageData(0, 0, w, h).data;
          const crop = new Uint8Array(cw * ch);
          for (let y = 0; y < ch; y++) {
            for (let x = 0; x < cw; x++) {
              const i = ((c.y + y) * w + (c.x + x)) * 4;
              crop[y * cw + x] = Math.round(0.299 * all[i] + 0.587 * all[i + 1] + 0.114 * all[i + 2]);
            }
          }
          const bars = L.bars.map((b) => L.barPoints.map(([dx, y]) => {
            const px = Math.max(0, Math.min(w - 1, Math.round((b.x + dx) * sx)));
            const py = Math.max(0, Math.min(h - 1, Math.round(y * sy)));
            const i = (py * w + px) * 4;
            return [all[i], all[i + 1], all[i + 2]];
          }));
          const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
          const st = window.__stats || {};
          const src = video.srcObject || video.currentSrc;
          if (src !== source) {
            source = src;
            sources++;
            rtpLast = null;
            rtpHigh = 0;
          }
          let mt = meta.mediaTime;
          let clock = 'media';
          if (video.srcObject && typeof meta.rtpTimestamp === 'number') {
            const raw = meta.rtpTimestamp >>> 0;
            if (rtpLast !== null && raw < rtpLast && rtpLast - raw > 0x80000000) rtpHigh += 0x100000000;
            if (rtpLast !== null && raw > rtpLast && raw - rtpLast > 0x80000000) rtpHigh -= 0x100000000;
            rtpLast = raw;
            mt = (rtpHigh + raw) / 90000;
            clock = 'rtp';
          }
          if (samples.length >= opts.maxSamples) {
            samples.shift();
            dropped.count++;
          }
          samples.push({
            seq: seq++,
            video: index,
            wall: Math.round(performance.now()),
            mt,
            clock,
            presented: meta.presentedFrames,
            tvf: q ? q.totalVideoFrames : 0,
            w,
            h,
            epoch: `${st.resets || 0}/${sources}`,
            thumb: b64(grey(tctx.getImageData(0, 0, TW, TH).data)),
            crop: b64(crop),
            cropW: cw,
            cropH: ch,
            bars,
          });
        }
      } catch (e) {
        // A cross-origin or not-yet-ready frame: skip this one.
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  function scan() {
    // `maxVideos`: only the first N videos of the page (the 16-tile grid judges one tile).
    document.querySelectorAll('video').forEach((v, i) => {
      if (opts.maxVideos == null || i < opts.maxVideos) watch(v, i);
    });
  }
  window.__pictureProbe = {
    take() {
      const out = samples.splice(0, samples.length);
      return { samples: out, dropped: dropped.count };
    },
  };
  setInterval(scan, 200);
  document.addEventListener('DOMContentLoaded', scan);
}

/** Moves the samples collected so far out of the page. */
export async function takeSamples(page) {
  const r = await page.evaluate(() => (window.__pictureProbe ? window.__pictureProbe.take() : { samples: [], dropped: 0 }));
  for (const s of r.samples) {
    s.thumb = Buffer.from(s.thumb, 'base64');
    s.crop = Buffer.from(s.crop, 'base64');
  }
  return r.samples;
}

// ---------------------------------------------------------------------------------------------
// the reference: every frame of a clip, as the probe would see it

const referenceCache = new Map();

/** The clip's frames (the layout's crop, grey) and frame rate, decoded by ffmpeg. */
export function loadReference(clipPath, layout = DEMO_LAYOUT) {
  const key = `${clipPath}:${layout.crop.x},${layout.crop.y},${layout.crop.w},${layout.crop.h}`;
  if (referenceCache.has(key)) return referenceCache.get(key);
  const probe = JSON.parse(execFileSync('ffprobe', [
    '-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=width,height,r_frame_rate',
    '-of', 'json', clipPath,
  ]).toString());
  const st = probe.streams[0];
  const [num, den] = st.r_frame_rate.split('/').map(Number);
  const c = layout.crop;
  const raw = execFileSync('ffmpeg', [
    '-v', 'error', '-nostdin', '-i', clipPath, '-map', '0:v:0',
    '-vf', `crop=${c.w}:${c.h}:${c.x}:${c.y},format=gray`, '-f', 'rawvideo', '-',
  ], { maxBuffer: 256 * 1024 * 1024 });
  const n = c.w * c.h;
  const frames = [];
  for (let i = 0; i + n <= raw.length; i += n) frames.push(raw.subarray(i, i + n));
  const ref = { path: clipPath, fps: num / den, width: st.width, height: st.height, frames, pixels: n };
  referenceCache.set(key, ref);
  return ref;
}

/** Pearson correlation of two equally long byte arrays; 0 when either is uniform. */
export function correlation(a, b) {
  const n = Math.min(a.length, b.length);
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i];
    mb += b[i];
  }
  ma /= n;
  mb /= n;
  let s = 0;
  let sa = 0;
  let sb = 0;
  for (let i = 0; i < n; i++) {
    const x = a[i] - ma;
    const y = b[i] - mb;
    s += x * y;
    sa += x * x;
    sb += y * y;
  }
  return sa > 0 && sb > 0 ? s / Math.sqrt(sa * sb) : 0;
}

/** The reference frame a crop shows: `{ index, corr }` of the best match. */
export function matchFrame(ref, crop) {
  let best = { index: -1, corr: -2 };
  for (let i = 0; i < ref.frames.length; i++) {
    const c = correlation(crop, ref.frames[i]);
    if (c > best.corr) best = { index: i, corr: c };
  }
  return best;
}

function meanAbsDiff(a, b) {
  const n = Math.min(a.length, b.length);
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.abs(a[i] - b[i]);
  return n ? s / n : 0;
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : 0;
}

function stdDev(a) {
  let m = 0;
  for (let i = 0; i < a.length; i++) m += a[i];
  m /= a.length || 1;
  let v = 0;
  for (let i = 0; i < a.length; i++) v += (a[i] - m) * (a[i] - m);
  return Math.sqrt(v / (a.length || 1));
}

/**
 * Judges the samples of one video.
 *
 * opts:
 *   picture      'moving' (default): a real, changing picture; 'demo': also the demo clip's
 *                colour bars where they belong and, with `reference`, the exact frames in order
 *   reference    from loadReference (picture 'demo')
 *   expectSize   e.g. '640x360'
 *   fps          expected frame rate: frames decoded and media time must advance in real time
 *   minSamples   samples needed (default 8, about 2.4 s)
 *
 * Returns `{ ok, final, failures, stats }`. `final` means a failure that more waiting cannot
 * undo (a black, frozen, garbled or out-of-order picture was seen); otherwise a not-ok result may
 * still become ok with more samples.
 */
export function analysePicture(samples, opts = {}) {
  const picture = opts.picture || 'moving';
  const minSamples = opts.minSamples || 8;
  const failures = [];
  let final = false;
  const hard = (msg) => {
    failures.push(msg);
    final = true;
  };
  const stats = { samples: samples.length };
  const usable = samples.filter((s) => s.w > 0 && s.h > 0);
  if (usable.length === 0) {
    return { ok: false, final: false, failures: ['no picture sampled yet'], stats };
  }

  // Every sample: a real picture, of the expected size.
  let minSd = Infinity;
  for (const s of usable) {
    const sd = stdDev(s.thumb);
    minSd = Math.min(minSd, sd);
    if (sd < 6) hard(`blank picture (grey level spread ${sd.toFixed(1)}) at media time ${s.mt.toFixed(3)}`);
    if (opts.expectSize && `${s.w}x${s.h}` !== opts.expectSize) {
      hard(`video size ${s.w}x${s.h}, expected ${opts.expectSize}`);
    }
  }
  stats.minGreySpread = +minSd.toFixed(1);

  // The demo layout: each colour bar where it belongs.
  if (picture === 'demo') {
    let worst = 0;
    for (const s of usable) {
      s.bars.forEach((points, i) => {
        const want = DEMO_LAYOUT.bars[i];
        const errs = points.map((rgb) => Math.max(...rgb.map((v, k) => Math.abs(v - want.rgb[k]))));
        const matching = errs.filter((e) => e <= 60).length;
        if (matching < DEMO_LAYOUT.barMinPoints) {
          worst = Math.max(worst, Math.min(...errs));
          const rgb = [0, 1, 2].map((k) => median(points.map((p) => p[k])));
          hard(`the ${want.name} bar is not where it belongs (${matching} of ${points.length} points, typically rgb(${rgb.join(',')})) at media time ${s.mt.toFixed(3)}`);
        }
      });
    }
    stats.barMisses = worst;
  }

  // The frames shown, against the reference clip.
  if (picture === 'demo' && opts.reference) {
    const ref = opts.reference;
    let minCorr = Infinity;
    for (const s of usable) {
      if (s.match === undefined) s.match = matchFrame(ref, s.crop);
      minCorr = Math.min(minCorr, s.match.corr);
      if (s.match.corr < 0.95) {
        hard(`picture matches no frame of ${ref.path} (best ${s.match.corr.toFixed(3)}, frame ${s.match.index}) at media time ${s.mt.toFixed(3)}`);
      }
    }
    stats.minMatch = +minCorr.toFixed(3);
    // Consecutive samples of one timeline show the frames their media times say.
    const n = ref.frames.length;
    let inOrder = 0;
    for (let i = 1; i < usable.length; i++) {
      const a = usable[i - 1];
      const b = usable[i];
      if (a.epoch !== b.epoch || a.video !== b.video) continue;
      const step = Math.round((b.mt - a.mt) * ref.fps);
      const want = (((a.match.index + step) % n) + n) % n;
      const off = Math.min(Math.abs(b.match.index - want), n - Math.abs(b.match.index - want));
      if (off > 2) {
        hard(`frame ${b.match.index} shown at media time ${b.mt.toFixed(3)}, expected about ${want} (frame ${a.match.index} at ${a.mt.toFixed(3)})`);
      } else {
        inOrder++;
      }
    }
    stats.framesInOrder = inOrder;
  }

  // The latest window: enough samples, a changing picture, real-time progress.
  const win = usable.slice(-minSamples);
  const first = win[0];
  const last = win[win.length - 1];
  stats.window = win.length;
  if (win.length < minSamples) failures.push(`only ${win.length} of ${minSamples} picture samples`);
  let frozen = 0;
  let pairs = 0;
  for (let i = 1; i < win.length; i++) {
    if (win[i].epoch !== win[i - 1].epoch || Math.abs(win[i].mt - win[i - 1].mt) < 0.03) continue;
    pairs++;
    const region = picture === 'demo' ? 'crop' : 'thumb';
    if (meanAbsDiff(win[i][region], win[i - 1][region]) < 0.5) frozen++;
  }
  stats.unchangedPairs = frozen;
  if (picture === 'demo' && frozen > 0) hard(`the picture did not change between ${frozen} of ${pairs} samples`);
  // A live test pattern: one unchanged pair is tolerated (a loaded machine's browser samples the
  // same decoded frame twice while media time moves on); a picture that never changes fails.
  if (picture !== 'demo' && pairs > 0 && (frozen === pairs || frozen > Math.max(1, pairs / 5))) {
    hard(`the picture did not change between ${frozen} of ${pairs} samples`);
  }
  if (pairs === 0 && win.length >= minSamples) failures.push('media time did not advance between samples');
  if (opts.fps && win.length >= 2 && first.epoch === last.epoch) {
    const wallS = (last.wall - first.wall) / 1000;
    if (wallS >= 1.5) {
      const fps = (last.tvf - first.tvf) / wallS;
      const speed = (last.mt - first.mt) / wallS;
      stats.fps = +fps.toFixed(1);
      stats.speed = +speed.toFixed(2);
      if (fps < 0.5 * opts.fps || fps > 1.6 * opts.fps) {
        failures.push(`${fps.toFixed(1)} frames/s decoded, expected about ${opts.fps}`);
      }
      if (speed < 0.5 || speed > 1.6) failures.push(`media time ran at ${speed.toFixed(2)}x real time`);
    } else if (win.length >= minSamples) {
      failures.push(`samples span only ${wallS.toFixed(1)} s`);
    }
  }
  return { ok: failures.length === 0, final, failures: [...new Set(failures)].slice(0, 10), stats };
}
