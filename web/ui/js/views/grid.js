// The live grid: one tile per camera, each playing live (LivePlayer picks the transport), with
// badges from the API (online, recording, viewers, codec, transport) and the reason when a tile
// cannot play. Disabled cameras keep a tile that says so. The list and badges refresh every 5 s.

import { api, listStreams, server } from '../api.js';
import { LivePlayer, TRANSPORT_LABEL } from '../player.js';
import { h, poll, replace } from '../util.js';

const LAYOUT_KEY = 'video-server.grid-layout';
const LAYOUTS = [['auto', 'Auto'], ['1', '1 × 1'], ['2', '2 × 2'], ['3', '3 × 3'], ['4', '4 × 4']];

/** "avc1.64001F" → "H.264", "mp4a.40.2" → "AAC". */
export function codecName(c) {
  if (/^avc[13]/.test(c)) return 'H.264';
  if (/^(hvc1|hev1)/.test(c)) return 'H.265';
  if (/^mp4a/.test(c)) return 'AAC';
  if (/^av01/.test(c)) return 'AV1';
  return c.split('.')[0];
}

/** The badges of a camera (shared by the grid and the camera view). */
export function statusBadges(status, transport) {
  const out = [];
  if (status) {
    out.push(status.online
      ? h('span', { class: 'badge badge-ok', title: 'The source is delivering video' }, '● online')
      : h('span', { class: 'badge badge-bad', title: status.last_health_error || 'The source is not delivering video' }, '● offline'));
    if (status.recording) out.push(h('span', { class: 'badge badge-rec', title: 'Recording to the archive' }, 'REC'));
    const video = (status.codecs || []).map(codecName).filter((c) => c !== 'AAC');
    const audio = (status.codecs || []).some((c) => c.startsWith('mp4a'));
    if (video.length) out.push(h('span', { class: 'badge badge-codec', title: (status.codecs || []).join(', ') }, video[0] + (audio ? ' + AAC' : '')));
    out.push(h('span', { class: 'badge badge-viewers', title: 'Live viewers (MSE)' }, `${status.viewers} ${status.viewers === 1 ? 'viewer' : 'viewers'}`));
  }
  if (transport) out.push(h('span', { class: 'badge badge-path', title: 'How this tile plays', 'data-transport': transport }, TRANSPORT_LABEL[transport] || transport));
  return out;
}

class Tile {
  constructor(stream) {
    this.stream = stream;
    this.video = h('video', { muted: true, playsinline: true, autoplay: true, 'aria-label': `Live video of ${stream.name || stream.id}` });
    this.video.muted = true;
    this.name = h('span', { class: 'tile-name' });
    this.badges = h('span', { class: 'tile-badges' });
    this.overlay = h('div', { class: 'tile-overlay', role: 'status' });
    this.link = h('a', { class: 'tile-link', href: `#/camera/${encodeURIComponent(stream.id)}` });
    this.el = h('article', { class: 'tile', 'data-stream-id': stream.id },
      h('div', { class: 'tile-video' }, this.video),
      this.overlay,
      h('div', { class: 'tile-top' }, this.name),
      h('div', { class: 'tile-bottom' }, this.badges),
      this.link);
    this.status = null;
    this.playerState = { state: 'stopped' };
    this.update(stream);
  }

  update(stream) {
    const restart = this.stream.enabled !== stream.enabled || this.stream.outputs.join() !== stream.outputs.join();
    this.stream = stream;
    const label = stream.name || stream.id;
    this.name.textContent = label;
    this.link.setAttribute('aria-label', `Open camera ${label}`);
    if (!stream.enabled) {
      this.stopPlayer();
      this.el.dataset.state = 'disabled';
      replace(this.overlay, h('span', { class: 'overlay-title' }, 'Camera disabled'),
        h('a', { href: '#/cameras', class: 'overlay-link' }, 'Manage cameras'));
      this.overlay.hidden = false;
      this.render();
      return;
    }
    if (!this.player || restart) this.startPlayer();
  }

  startPlayer() {
    this.stopPlayer();
    this.player = new LivePlayer(this.video, this.stream, { onState: (s) => this.onState(s) });
    this.player.start();
  }

  stopPlayer() {
    if (this.player) this.player.stop();
    this.player = null;
  }

  onState(s) {
    // Our own viewer shows up in the count once we play: ask at once rather than at the next poll.
    if (s.state === 'playing' && this.playerState.state !== 'playing' && this.refreshStatus) this.refreshStatus();
    this.playerState = s;
    // What happened to this tile, for the curious and the browser tests.
    const entry = { state: s.state, message: s.message, transport: s.transport };
    if (s.state === 'playing' && s.firstPictureMs != null) entry.firstPictureMs = s.firstPictureMs;
    this.history = [...(this.history || []).slice(-49), entry];
    this.render();
  }

  render() {
    const s = this.playerState;
    if (this.stream.enabled) {
      this.el.dataset.state = s.state;
      const msg = s.state === 'connecting' ? 'Connecting…'
        : s.state === 'waiting' ? `${s.message} — retrying in ${Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000))} s`
          : s.state === 'error' ? s.message : '';
      // Why the camera itself is not delivering, from the API (e.g. connection_refused).
      const st = this.status;
      const why = msg && st && !st.online && st.last_health_error ? `Camera offline: ${st.last_health_error}` : '';
      this.overlay.hidden = !msg;
      if (msg) {
        replace(this.overlay, h('span', { class: s.state === 'connecting' ? 'overlay-title' : 'overlay-title overlay-warn' }, msg),
          why ? h('span', { class: 'overlay-detail' }, why) : null);
      }
    }
    this.el.dataset.transport = s.transport || '';
    replace(this.badges, statusBadges(this.stream.enabled ? this.status : null, this.stream.enabled ? s.transport : null));
  }

  setStatus(st) {
    this.status = st;
    this.render();
  }

  destroy() {
    this.stopPlayer();
    this.el.remove();
  }
}

export function gridView(root) {
  const tiles = new Map();
  const grid = h('section', { class: 'grid', 'aria-label': 'Live cameras' });
  const empty = h('div', { class: 'empty', hidden: true },
    h('h2', {}, 'No cameras yet'),
    h('p', {}, 'Add an RTSP camera or a video file and it appears here.'),
    h('a', { class: 'btn btn-primary', href: '#/cameras/new' }, 'Add a camera'));
  const errorBox = h('div', { class: 'error-box', role: 'alert', hidden: true });
  const layoutSelect = h('select', { id: 'grid-layout', onchange: (e) => setLayout(e.target.value) },
    LAYOUTS.map(([v, l]) => h('option', { value: v }, l)));
  const setLayout = (v) => {
    grid.dataset.layout = v;
    fit();
    layoutSelect.value = v;
    try {
      localStorage.setItem(LAYOUT_KEY, v);
    } catch {
      /* not kept */
    }
  };
  let saved = 'auto';
  try {
    saved = localStorage.getItem(LAYOUT_KEY) || 'auto';
  } catch {
    /* default */
  }
  setLayout(saved);
  // Columns for the layout ("auto": from the number of tiles), and a width that lets every row
  // of 16:9 tiles fit the window's height.
  function fit() {
    const n = Math.max(1, grid.children.length);
    const auto = n <= 1 ? 1 : n <= 4 ? 2 : n <= 9 ? 3 : 4;
    const cols = grid.dataset.layout === 'auto' ? auto : Number(grid.dataset.layout);
    const rows = Math.max(1, Math.ceil(Math.min(n, grid.dataset.layout === 'auto' ? n : cols * cols) / cols));
    grid.style.setProperty('--cols', String(cols));
    // Up to 4 rows fit the window; more cameras than that scroll instead of shrinking further.
    grid.style.maxWidth = rows > 4 ? 'none'
      : `calc((100vh - 140px - ${(rows - 1) * 8}px) * 16 / 9 * ${cols} / ${rows} + ${(cols - 1) * 8}px)`;
  }
  window.addEventListener('resize', fit);
  replace(root,
    h('div', { class: 'page-head' },
      h('h1', {}, 'Live'),
      h('div', { class: 'page-tools' },
        h('label', { for: 'grid-layout' }, 'Layout'), layoutSelect,
        h('a', { class: 'btn', href: '#/cameras/new' }, '+ Add camera'))),
    errorBox, empty, grid);

  if (!server.apiBase) {
    errorBox.hidden = false;
    errorBox.textContent = 'The API listener is disabled ([api] enabled = false): the camera list is not available.';
    return { destroy() {} };
  }

  const refresh = async () => {
    let streams;
    try {
      streams = await listStreams();
      errorBox.hidden = true;
    } catch (e) {
      errorBox.hidden = false;
      errorBox.textContent = `Cannot list cameras: ${e.message}`;
      return;
    }
    streams.sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
    const seen = new Set();
    for (const s of streams) {
      seen.add(s.id);
      let t = tiles.get(s.id);
      if (t) t.update(s);
      else {
        t = new Tile(s);
        t.refreshStatus = () => setTimeout(() => api('GET', `/api/v1/streams/${t.stream.id}/status`)
          .then((st) => t.setStatus(st)).catch(() => {}), 300);
        tiles.set(s.id, t);
      }
      grid.append(t.el); // keeps the sorted order
    }
    for (const [id, t] of tiles) {
      if (!seen.has(id)) {
        t.destroy();
        tiles.delete(id);
      }
    }
    empty.hidden = streams.length > 0;
    fit();
    await Promise.all([...tiles.values()].filter((t) => t.stream.enabled).map(async (t) => {
      try {
        t.setStatus(await api('GET', `/api/v1/streams/${t.stream.id}/status`));
      } catch {
        /* the next poll tries again */
      }
    }));
  };
  const stopPoll = poll(refresh, 5000);
  const countdown = setInterval(() => {
    for (const t of tiles.values()) if (t.playerState.state === 'waiting') t.render();
  }, 1000);
  // Tests and the curious: what each tile is doing.
  window.__tiles = tiles;
  return {
    destroy() {
      stopPoll();
      clearInterval(countdown);
      window.removeEventListener('resize', fit);
      for (const t of tiles.values()) t.destroy();
      tiles.clear();
    },
  };
}
