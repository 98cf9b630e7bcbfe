// The video player of the UI: live (grid tiles and the camera view) and archive playback.
//
// Live transports, in order of preference, are chosen in ONE place, `liveTransports()`:
//   1. WebRTC over WHEP (`POST /whep/<id>`): sub-second (the server sends its cached GOP at
//      join, so the picture is up in about 0.2 s), video only (H.264 without B-frames).
//   2. MSE over WebSocket (`/ws/live`): MediaSource, or ManagedMediaSource (iOS 17.1+) with
//      remote playback disabled; carries AAC audio too. Where WebRTC is refused or cannot
//      connect.
//   3. hls.js (vendored, loaded only when needed) on `/hls/<id>.m3u8`.
//   4. The browser's own HLS (Safari).
// A transport that cannot play here (no WebRTC or MSE; WebRTC refused — B-frames, H.265 not offered, 404,
// 503, WebRTC off — or not showing a picture within WEBRTC_CONNECT_MS; unsupported codec,
// decode error) hands over to the next one at once; a transport whose connection ends (camera
// offline, stream stopped, network) reconnects with exponential backoff, and the tile shows the
// reason (for WebRTC, the server's: it tells why a session ended) and the countdown.
//
// The MSE path follows the server's message protocol (README "Live video"): a binary message
// starting with 0x09 carries the codec string → one SourceBuffer; every other binary message (the
// init segment, then moof+mdat fragments) is appended through a queue drained on `updateend`. A
// later 0x09 with a different codec string starts a new MediaSource; the same codec string
// followed by a new init segment is simply appended (the SourceBuffer takes a new init).

import { Hls as loadHls } from './hls-loader.js';
import { archiveWsUrl, hlsUrl, liveWsUrl, server, whepUrl } from './api.js';

const MS = () => window.MediaSource || window.ManagedMediaSource || null;

/**
 * Transports to try for a stream, best first. The only place that decides the order.
 * `webrtc: false` leaves WebRTC out (a page that plays many streams at once may prefer MSE).
 */
export function liveTransports(stream, { webrtc = true } = {}) {
  const outputs = stream.outputs || [];
  const list = [];
  // WebRTC is the low-latency path of the `mse` output (it needs no output type of its own).
  // Skipped where the server says it has no WebRTC (`[webrtc] enabled = false`, port not bound).
  const webrtcOn = !server.info || !server.info.features || server.info.features.webrtc !== false;
  if (webrtc && outputs.includes('mse') && window.RTCPeerConnection && webrtcOn) list.push('webrtc');
  if (outputs.includes('mse') && MS()) list.push('mse');
  if (outputs.includes('hls')) {
    list.push('hls.js');
    if (document.createElement('video').canPlayType('application/vnd.apple.mpegurl')) list.push('native-hls');
  }
  return list;
}

/** Human label of a transport (shown on tiles). */
export const TRANSPORT_LABEL = { webrtc: 'WebRTC', mse: 'MSE', 'hls.js': 'HLS', 'native-hls': 'HLS (native)' };

/** Text for a WebSocket close event: the server's reason, or what the code means. */
export function closeText(ev) {
  if (ev.reason) return ev.reason;
  switch (ev.code) {
    case 1000: return 'Connection closed';
    case 1001: return 'Stream stopped';
    case 1006: return 'Stream not available';
    case 1009: return 'Message too big';
    case 1011: return 'Server error';
    case 1013: return 'Server busy';
    default: return `Connection closed (${ev.code})`;
  }
}

/**
 * MediaSource with one SourceBuffer fed from the server's binary messages.
 * `live`: keep near the live edge; otherwise (archive) play through everything.
 */
export class MseSink {
  constructor(video, { live, onFatal }) {
    this.video = video;
    this.live = live;
    this.onFatal = onFatal || (() => {});
    this.codecs = null;
    this.ms = null;
    this.sb = null;
    this.url = null;
    this.queue = [];
    this.ended = false;
    this.wantEnd = false;
    this.destroyed = false;
    this.onAppended = null;
    this.stats = { messages: 0, bytes: 0, appended: 0, resets: 0, codecs: null };
  }

  /** One binary message from the socket. */
  handle(buf) {
    if (this.destroyed) return;
    this.stats.messages++;
    this.stats.bytes += buf.byteLength;
    const bytes = new Uint8Array(buf);
    if (bytes.length > 0 && bytes[0] === 0x09) {
      const codecs = new TextDecoder().decode(bytes.subarray(1)).trim();
      if (codecs !== this.codecs) this.open(codecs);
      return;
    }
    if (!this.codecs) return; // data before the codec message: ignored, as the Go clients do
    this.queue.push(bytes);
    this.drain();
  }

  open(codecs) {
    const Source = MS();
    if (this.ms) {
      this.stats.resets++;
      this.detach();
    }
    this.codecs = codecs;
    this.stats.codecs = codecs;
    this.queue = [];
    const mime = `video/mp4; codecs="${codecs}"`;
    if (!Source || !Source.isTypeSupported(mime)) {
      this.onFatal(`This browser cannot play ${codecs || 'this stream'}`, true);
      return;
    }
    const ms = new Source();
    this.ms = ms;
    if (!window.MediaSource) this.video.disableRemotePlayback = true; // ManagedMediaSource needs it
    this.url = URL.createObjectURL(ms);
    this.video.src = this.url;
    ms.addEventListener('sourceopen', () => {
      if (this.ms !== ms || this.destroyed) return;
      try {
        this.sb = ms.addSourceBuffer(mime);
        this.sb.mode = 'segments';
      } catch (e) {
        this.onFatal(`Cannot play ${codecs}: ${e.message}`, true);
        return;
      }
      this.sb.addEventListener('updateend', () => this.updated());
      this.sb.addEventListener('error', () => this.onFatal('The browser refused the video data', true));
      this.drain();
    }, { once: true });
  }

  drain() {
    const sb = this.sb;
    if (!sb || sb.updating || this.destroyed || !this.ms || this.ms.readyState !== 'open') return;
    if (this.queue.length === 0) {
      if (this.wantEnd && !this.ended) {
        this.ended = true;
        try {
          this.ms.endOfStream();
        } catch {
          /* already ended */
        }
      }
      return;
    }
    const next = this.queue.shift();
    try {
      sb.appendBuffer(next);
      this.stats.appended++;
    } catch (e) {
      if (e.name === 'QuotaExceededError') {
        this.queue.unshift(next);
        this.trim(5);
      } else {
        this.onFatal(`Cannot append video: ${e.message}`, true);
      }
    }
  }

  updated() {
    const v = this.video;
    const b = v.buffered;
    if (b.length) {
      const start = b.start(0);
      const end = b.end(b.length - 1);
      if (v.currentTime < start || (this.live && end - v.currentTime > 3)) {
        // Behind the buffer (first data, a hole) or too far from the live edge: jump.
        v.currentTime = this.live ? Math.max(start, end - 0.5) : start;
      }
      if (v.paused && !this.pausedByUser) v.play().catch(() => {});
    }
    if (this.stats.appended % 50 === 0) this.trim(30);
    if (this.onAppended) this.onAppended();
    this.drain();
  }

  /** Removes media more than `keepS` seconds behind the play head. */
  trim(keepS) {
    const sb = this.sb;
    const b = this.video.buffered;
    if (!sb || sb.updating || !b.length) return;
    const upTo = this.video.currentTime - keepS;
    if (upTo > b.start(0) + 1) {
      try {
        sb.remove(b.start(0), upTo);
      } catch {
        /* the next trim tries again */
      }
    }
  }

  /** Seconds buffered ahead of the play head. */
  ahead() {
    const v = this.video;
    const b = v.buffered;
    for (let i = 0; i < b.length; i++) {
      if (v.currentTime >= b.start(i) - 0.1 && v.currentTime <= b.end(i)) return b.end(i) - v.currentTime;
    }
    return 0;
  }

  idle() {
    return this.queue.length === 0 && (!this.sb || !this.sb.updating);
  }

  /** End of the stream: ends the MediaSource once everything queued is appended. */
  finish() {
    this.wantEnd = true;
    this.drain();
  }

  detach() {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
    this.sb = null;
    this.ms = null;
    this.video.removeAttribute('src');
    this.video.load();
  }

  destroy() {
    this.destroyed = true;
    this.queue = [];
    this.detach();
  }
}

// ---------------------------------------------------------------------------------------------
// Live transports. A transport is a class `new T(video, stream, ev)` with:
//   async open()  connect and start playing into `video` (the LivePlayer sees `playing` on the
//                 <video> itself);
//   close()       stop and release everything (idempotent; no events after it);
//   stats()       an object for the curious (devtools, tests);
// and reports through `ev`: `ev.closed(reason)` when the connection ended (the player reconnects
// with backoff and shows `reason`), `ev.unsupported(reason)` when this browser cannot play the
// stream this way (the player moves on to the next transport at once). To add one: write the
// class, add it to TRANSPORTS and put its name in `liveTransports()`.

/** How long WebRTC may take to show its first picture before the player falls back (UDP
 * blocked, a wrong `[webrtc] advertise`). */
const WEBRTC_CONNECT_MS = 5_000;
/** No new frame for this long (or ICE disconnected): ask the server whether the session ended. */
const WEBRTC_STALL_MS = 2_000;
/** `409` + `Retry-After` (not live yet, stopped) this many times in a row: try the next path. */
const WEBRTC_NOT_LIVE_TRIES = 3;

/**
 * WebRTC over WHEP: a recvonly video transceiver, the offer POSTed as `application/sdp`, the 201
 * answer applied; DELETE on the session's Location when closed. The server is ICE-lite and puts
 * all its candidates in the answer, so there is no trickle. 409 with Retry-After (not live yet,
 * stopped) retries like a closed connection, up to WEBRTC_NOT_LIVE_TRIES times; any other refusal
 * (404, B-frames, H.265 not offered, WebRTC off, too many sessions) or no picture within WEBRTC_CONNECT_MS
 * hands over to MSE. When the picture stalls or ICE disconnects, the session's URL tells whether
 * the server ended it (404 `session_ended` with the reason, e.g. "stream stopped"): that reason
 * is what the tile shows.
 */
class WebRtcTransport {
  constructor(video, stream, ev) {
    Object.assign(this, { video, stream, ev });
  }

  async open() {
    const url = await whepUrl(this.stream.id);
    if (this.closed) return;
    const pc = new RTCPeerConnection();
    this.pc = pc;
    const tr = pc.addTransceiver('video', { direction: 'recvonly' });
    // Audio too: the server sends a camera's G.711 (PCMU/PCMA) and rejects this m-line when the
    // stream has none (AAC cameras play video-only over WebRTC).
    pc.addTransceiver('audio', { direction: 'recvonly' });
    // Ask for the smallest playout delay where the browser lets us.
    if ('jitterBufferTarget' in tr.receiver) tr.receiver.jitterBufferTarget = 0;
    pc.ontrack = (e) => {
      // One MediaStream of our own for both tracks: the server's answer puts video and audio in
      // separate streams (msid), and the <video> must get both.
      const ms = this.remote || (this.remote = new MediaStream());
      ms.addTrack(e.track);
      if (this.video.srcObject !== ms) this.video.srcObject = ms;
      if (e.track.kind !== 'video') return;
      this.video.play().catch(() => {});
      this.watchFrames();
    };
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      if (s === 'disconnected' || s === 'failed') this.checkEnded(`WebRTC ${s}`);
      if (s === 'closed') this.fail(() => this.ev.closed('WebRTC closed'));
    };
    await pc.setLocalDescription(await pc.createOffer());
    if (this.closed) return;
    const r = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    if (this.closed) return;
    if (r.status !== 201) {
      let message = `HTTP ${r.status}`;
      try {
        message = (await r.json()).error.message;
      } catch {
        /* not our JSON */
      }
      const again = r.status === 409 && r.headers.get('Retry-After') && (this.ev.refusals || 0) < WEBRTC_NOT_LIVE_TRIES - 1;
      this.fail(() => (again ? this.ev.closed(`WebRTC: ${message}`, { refused: true }) : this.ev.unsupported(`WebRTC: ${message}`)));
      return;
    }
    const loc = r.headers.get('Location');
    // The session URL takes the same signature as the POST (auth on).
    const query = url.includes('?') ? url.slice(url.indexOf('?')) : '';
    this.location = loc ? new URL(loc, url).href + query : null;
    await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
    this.connectTimer = setTimeout(() => {
      // Without requestVideoFrameCallback (older browsers), being connected has to do.
      const up = this.video.requestVideoFrameCallback ? this.lastFrame : pc.connectionState === 'connected';
      if (!up) this.fail(() => this.ev.unsupported('WebRTC showed no picture (UDP blocked?)'));
    }, WEBRTC_CONNECT_MS);
  }

  /** Notes every presented frame; a picture that stops makes us ask the server why. */
  watchFrames() {
    if (this.frameLoop || !this.video.requestVideoFrameCallback) return;
    const onFrame = () => {
      if (this.closed) return;
      this.lastFrame = performance.now();
      this.video.requestVideoFrameCallback(onFrame);
    };
    this.frameLoop = true;
    this.video.requestVideoFrameCallback(onFrame);
    this.stallTimer = setInterval(() => {
      if (this.lastFrame && performance.now() - this.lastFrame > WEBRTC_STALL_MS) this.checkEnded(null);
    }, 1_000);
  }

  /**
   * Whether the server has ended the session: PATCH on its URL answers 204 while it is open and
   * 404 once it has ended (`session_ended`: why). Ended → closed with the server's reason;
   * open → `fallback` (a connection state) closes it, or (null) we keep waiting.
   */
  async checkEnded(fallback) {
    if (this.closed || this.checking) return;
    this.checking = true;
    let reason = null;
    if (this.location) {
      try {
        const r = await fetch(this.location, {
          method: 'PATCH',
          headers: { 'Content-Type': 'application/trickle-ice-sdpfrag' },
          body: 'a=end-of-candidates\r\n',
        });
        if (r.status === 404) {
          reason = 'WebRTC session ended';
          try {
            const e = (await r.json()).error;
            // "WebRTC session ended N s ago: stream stopped" → "Stream stopped".
            const why = e.code === 'session_ended' ? e.message.slice(e.message.indexOf(': ') + 2) : '';
            if (why) reason = why.charAt(0).toUpperCase() + why.slice(1);
          } catch {
            /* not our JSON */
          }
          this.location = null; // nothing to DELETE
        }
      } catch {
        /* the server is unreachable: the connection state decides */
      }
    }
    this.checking = false;
    if (reason) this.fail(() => this.ev.closed(reason));
    else if (fallback === 'WebRTC failed') this.fail(() => this.ev.closed(fallback));
  }

  fail(report) {
    if (this.closed) return;
    this.close();
    report();
  }

  stats() {
    return { location: this.location || null, connection: this.pc ? this.pc.connectionState : null };
  }

  close() {
    this.closed = true;
    clearTimeout(this.connectTimer);
    clearInterval(this.stallTimer);
    if (this.location) {
      fetch(this.location, { method: 'DELETE', keepalive: true }).catch(() => {});
      this.location = null;
    }
    if (this.pc) {
      this.pc.ontrack = null;
      this.pc.onconnectionstatechange = null;
      this.pc.close();
    }
    this.video.srcObject = null;
  }
}

class MseTransport {
  constructor(video, stream, ev) {
    Object.assign(this, { video, stream, ev });
  }

  async open() {
    const url = await liveWsUrl(this.stream.id);
    if (this.closed) return;
    this.sink = new MseSink(this.video, {
      live: true,
      onFatal: (msg) => this.fail(() => this.ev.unsupported(msg)),
    });
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let lastData = Date.now();
    ws.onmessage = (e) => {
      lastData = Date.now();
      if (typeof e.data !== 'string') this.sink.handle(e.data);
    };
    ws.onclose = (e) => this.fail(() => this.ev.closed(closeText(e)));
    ws.onerror = () => {}; // onclose follows with the code
    // A socket that stays open without media is as good as closed (the server also has a
    // keyframe watchdog; this covers a silent network).
    this.watchdog = setInterval(() => {
      if (Date.now() - lastData > 15_000) this.fail(() => this.ev.closed('No video for 15 s'));
      else if (ws.readyState === WebSocket.OPEN) ws.send('ping');
    }, 5_000);
  }

  fail(report) {
    if (this.closed) return;
    this.close();
    report();
  }

  stats() {
    return this.sink ? this.sink.stats : {};
  }

  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.onmessage = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    }
    if (this.sink) this.sink.destroy();
  }
}

class HlsJsTransport {
  constructor(video, stream, ev) {
    Object.assign(this, { video, stream, ev });
  }

  async open() {
    const Hls = await loadHls();
    if (this.closed) return;
    if (!Hls || !Hls.isSupported()) {
      this.ev.unsupported('hls.js is not supported by this browser');
      return;
    }
    const url = await hlsUrl(this.stream.id);
    if (this.closed) return;
    const hls = new Hls({ backBufferLength: 30, liveDurationInfinity: true, enableWorker: false });
    this.hls = hls;
    let mediaErrors = 0;
    hls.on(Hls.Events.ERROR, (_, d) => {
      if (!d.fatal || this.closed) return;
      if (d.type === Hls.ErrorTypes.MEDIA_ERROR && mediaErrors++ === 0) {
        hls.recoverMediaError();
      } else if (d.type === Hls.ErrorTypes.NETWORK_ERROR) {
        const status = d.response && d.response.code ? ` ${d.response.code}` : '';
        this.fail(() => this.ev.closed(`HLS: ${d.details}${status}`));
      } else {
        this.fail(() => this.ev.unsupported(`HLS: ${d.details}`));
      }
    });
    hls.loadSource(url);
    hls.attachMedia(this.video);
    hls.on(Hls.Events.MANIFEST_PARSED, () => this.video.play().catch(() => {}));
  }

  fail(report) {
    if (this.closed) return;
    this.close();
    report();
  }

  stats() {
    return {};
  }

  close() {
    this.closed = true;
    if (this.hls) this.hls.destroy();
    this.video.removeAttribute('src');
    this.video.load();
  }
}

class NativeHlsTransport {
  constructor(video, stream, ev) {
    Object.assign(this, { video, stream, ev });
  }

  async open() {
    const url = await hlsUrl(this.stream.id);
    if (this.closed) return;
    this.onerror = () => {
      const err = this.video.error;
      this.close();
      this.ev.closed(`HLS: ${err ? err.message || `error ${err.code}` : 'playback error'}`);
    };
    this.video.addEventListener('error', this.onerror);
    this.video.src = url;
    this.video.play().catch(() => {});
  }

  stats() {
    return {};
  }

  close() {
    this.closed = true;
    if (this.onerror) this.video.removeEventListener('error', this.onerror);
    this.video.removeAttribute('src');
    this.video.load();
  }
}

const TRANSPORTS = { webrtc: WebRtcTransport, mse: MseTransport, 'hls.js': HlsJsTransport, 'native-hls': NativeHlsTransport };

/** Reconnect delays (s), then the last one forever; each gets up to 25 % jitter. */
const BACKOFF_S = [1, 2, 4, 8, 15, 30];
/** Playing this long resets the backoff. */
const HEALTHY_MS = 10_000;

/**
 * Live playback of one stream into a <video>, over the best transport that works here, with
 * reconnects. `onState({state, transport, message, retryAt})`; state is `connecting`,
 * `playing`, `waiting` (reconnect scheduled), `error` (nothing can play it) or `stopped`.
 */
export class LivePlayer {
  constructor(video, stream, { onState, webrtc = true } = {}) {
    this.video = video;
    this.stream = stream;
    this.onState = onState || (() => {});
    this.order = liveTransports(stream, { webrtc });
    this.refusals = 0;
    this.index = 0;
    this.attempt = 0;
    this.current = null;
    this.timer = null;
    this.state = { state: 'stopped', transport: null, message: '' };
    this.onPlaying = () => {
      this.playingSince = Date.now();
      this.refusals = 0;
      // From the start of this connection to the first picture (what a user waits for).
      const firstPictureMs = this.connectedAt ? Math.round(performance.now() - this.connectedAt) : null;
      this.connectedAt = null;
      this.set({ state: 'playing', message: '', ...(firstPictureMs !== null ? { firstPictureMs } : {}) });
    };
    video.addEventListener('playing', this.onPlaying);
    this.decodeError = () => {
      const e = video.error;
      if (e && e.code === e.MEDIA_ERR_DECODE && this.current) {
        this.next(`Decode error: ${e.message || 'the browser cannot decode this stream'}`);
      }
    };
    video.addEventListener('error', this.decodeError);
  }

  set(patch) {
    this.state = { ...this.state, ...patch };
    this.onState(this.state);
  }

  start() {
    this.stopped = false;
    if (this.order.length === 0) {
      this.set({ state: 'error', transport: null, message: 'No live output (mse or hls) is enabled for this camera' });
      return;
    }
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    const name = this.order[this.index];
    this.playingSince = null;
    this.connectedAt = performance.now();
    this.set({ state: 'connecting', transport: name, message: '', retryAt: null });
    const t = new TRANSPORTS[name](this.video, this.stream, {
      closed: (reason, { refused = false } = {}) => {
        // Refusals in a row (409 not live) count towards handing over to the next path.
        this.refusals = refused ? this.refusals + 1 : 0;
        this.retry(reason);
      },
      unsupported: (reason) => this.next(reason),
      refusals: this.refusals,
    });
    this.current = t;
    t.open().catch((e) => {
      if (this.current === t) {
        t.close();
        this.retry(e.message || String(e));
      }
    });
  }

  /** The connection ended: the same transport again after a backoff. */
  retry(reason) {
    if (this.stopped) return;
    this.current = null;
    if (this.playingSince && Date.now() - this.playingSince > HEALTHY_MS) this.attempt = 0;
    const base = BACKOFF_S[Math.min(this.attempt, BACKOFF_S.length - 1)];
    this.attempt++;
    const delayMs = Math.round(base * 1000 * (1 + Math.random() * 0.25));
    this.set({ state: 'waiting', message: reason, retryAt: Date.now() + delayMs });
    this.timer = setTimeout(() => this.connect(), delayMs);
  }

  /** This transport cannot play here: the next one at once, or give up (and retry in 30 s). */
  next(reason) {
    if (this.stopped) return;
    if (this.current) this.current.close();
    this.current = null;
    this.refusals = 0;
    if (this.index + 1 < this.order.length) {
      this.index++;
      this.attempt = 0;
      this.connect();
      return;
    }
    this.index = 0;
    this.set({ state: 'error', message: reason, retryAt: Date.now() + 30_000 });
    this.timer = setTimeout(() => this.connect(), 30_000);
  }

  stats() {
    return this.current ? this.current.stats() : {};
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.current) this.current.close();
    this.current = null;
    this.video.removeEventListener('playing', this.onPlaying);
    this.video.removeEventListener('error', this.decodeError);
    this.set({ state: 'stopped' });
  }
}

// ---------------------------------------------------------------------------------------------
// archive playback

/** Ask for more when less than this is buffered ahead (s). */
const ARCHIVE_AHEAD_S = 30;

/**
 * Plays a stream's recordings from an instant through `/ws/archive` (`meta=1`): answers the
 * server's `pause` with `more` while less than 30 s is buffered ahead, ends at `eos`, and maps
 * the video's media time to wall-clock time from the server's `wallclock` messages.
 * `onState({state, message})`: `connecting`, `playing`, `ended`, `error`.
 */
export class ArchivePlayer {
  constructor(video, streamId, { onState } = {}) {
    this.video = video;
    this.streamId = streamId;
    this.onState = onState || (() => {});
    this.marks = []; // [{media, wallMs}] ascending
    this.onPlaying = () => this.onState({ state: 'playing', message: '' });
    this.onEnded = () => this.onState({ state: 'ended', message: 'End of the recording' });
    video.addEventListener('playing', this.onPlaying);
    video.addEventListener('ended', this.onEnded);
  }

  async start(startMs) {
    this.targetMs = startMs;
    this.seeked = false;
    this.onState({ state: 'connecting', message: '' });
    const url = await archiveWsUrl(this.streamId, startMs / 1000);
    if (this.stopped) return;
    this.sink = new MseSink(this.video, {
      live: false,
      onFatal: (msg) => {
        this.close();
        this.onState({ state: 'error', message: msg });
      },
    });
    this.sink.onAppended = () => {
      this.seekToTarget();
      this.maybeMore();
    };
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.serverPaused = false;
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') {
        this.sink.handle(e.data);
        return;
      }
      if (e.data === 'pause') {
        this.serverPaused = true;
        this.maybeMore();
      } else if (e.data === 'eos') {
        this.eos = true;
        this.sink.finish();
      } else if (e.data.startsWith('{')) {
        try {
          const m = JSON.parse(e.data);
          if (m.type === 'wallclock') this.marks.push({ media: m.media_time, wallMs: Date.parse(m.wallclock) });
        } catch {
          /* not ours */
        }
      }
    };
    ws.onclose = (e) => {
      if (this.stopped) return;
      if (this.eos) {
        this.sink.finish();
        return;
      }
      this.onState({ state: 'error', message: closeText(e) });
    };
    this.tick = setInterval(() => this.maybeMore(), 1000);
  }

  /** Once the clicked instant is buffered, start there (the server starts at the keyframe before). */
  seekToTarget() {
    if (this.seeked || !this.marks.length) return;
    const m = this.marks[0];
    const t = m.media + (this.targetMs - m.wallMs) / 1000;
    const b = this.video.buffered;
    if (!b.length) return;
    if (t <= b.start(0)) {
      this.seeked = true;
      return;
    }
    if (b.end(b.length - 1) >= t) {
      this.video.currentTime = t;
      this.seeked = true;
    }
  }

  maybeMore() {
    const ws = this.ws;
    if (!this.serverPaused || !ws || ws.readyState !== WebSocket.OPEN || !this.sink.idle()) return;
    if (this.sink.ahead() < ARCHIVE_AHEAD_S || !this.seeked) {
      this.serverPaused = false;
      ws.send('more');
    }
  }

  /** Wall-clock time (epoch ms) of what is on screen, or null before the first mapping. */
  wallclockMs() {
    const t = this.video.currentTime;
    let best = null;
    for (const m of this.marks) {
      if (m.media <= t + 0.05) best = m;
      else break;
    }
    if (!best) best = this.marks[0];
    return best ? best.wallMs + (t - best.media) * 1000 : null;
  }

  close() {
    clearInterval(this.tick);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.onmessage = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    }
    if (this.sink) this.sink.destroy();
  }

  stop() {
    this.stopped = true;
    this.close();
    this.video.removeEventListener('playing', this.onPlaying);
    this.video.removeEventListener('ended', this.onEnded);
  }
}
