// One camera: the live player, the archive timeline (click to play from an instant, drag to
// select), archive playback with the wall-clock time of what is on screen, a Live button, export
// of the selection as MP4, and protected ranges (evidence) shown, added, edited and removed.

import { api, exportUrl, now, server } from '../api.js';
import { ArchivePlayer, LivePlayer } from '../player.js';
import { Timeline } from '../timeline.js';
import { confirmDialog, fmtDateTime, fmtDuration, fromLocalInput, h, poll, replace, toLocalInput, toast } from '../util.js';
import { statusBadges } from './grid.js';

/** The export route's limit. */
const MAX_EXPORT_MS = 24 * 3600 * 1000;
const SPEEDS = [0.5, 1, 2, 4, 8];

export function cameraView(root, id) {
  const state = { stream: null, status: null, mode: 'live', player: null, playerState: {}, selection: null, editing: null, muted: true };
  const stage = h('div', { class: 'stage' });
  const overlay = h('div', { class: 'tile-overlay', role: 'status', hidden: true });
  const timeLabel = h('div', { class: 'time-label', 'data-testid': 'wallclock' });
  const badges = h('div', { class: 'tile-badges' });
  const title = h('h1', {}, 'Camera');
  const liveBtn = h('button', { type: 'button', class: 'btn btn-live', 'aria-pressed': 'true', onclick: () => goLive() }, '● Live');
  const playBtn = h('button', { type: 'button', class: 'btn', 'aria-label': 'Pause', onclick: () => togglePause() }, '❚❚');
  const speedSel = h('select', { id: 'speed', 'aria-label': 'Playback speed', disabled: true, onchange: (e) => {
    if (state.video) state.video.playbackRate = Number(e.target.value);
  } }, SPEEDS.map((s) => h('option', { value: String(s), selected: s === 1 }, `${s}×`)));
  const gotoInput = h('input', { type: 'datetime-local', step: '1', id: 'goto', 'aria-label': 'Play from date and time' });
  const gotoForm = h('form', { class: 'goto', onsubmit: (e) => {
    e.preventDefault();
    const t = fromLocalInput(gotoInput.value);
    if (Number.isFinite(t)) playArchive(t);
  } }, gotoInput, h('button', { type: 'submit', class: 'btn' }, 'Go'));
  const soundBtn = h('button', { type: 'button', class: 'btn', 'aria-pressed': 'false', title: 'Sound (if the camera has audio)', onclick: () => {
    state.muted = !state.muted;
    if (state.video) state.video.muted = state.muted;
    soundBtn.setAttribute('aria-pressed', String(!state.muted));
    soundBtn.textContent = state.muted ? 'Sound off' : 'Sound on';
  } }, 'Sound off');
  const snapBtn = h('button', { type: 'button', class: 'btn', title: 'Save the picture on screen as PNG', onclick: () => snapshot() }, 'Snapshot');
  const fullBtn = h('button', { type: 'button', class: 'btn', 'aria-label': 'Full screen', onclick: () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else stage.requestFullscreen().catch(() => {});
  } }, 'Full screen');

  // Opens on the last 24 hours (the Timeline's default span), zoomable from 10 minutes to 30 days.
  const timeline = new Timeline({
    now,
    onSeek: (t) => (t >= now() - 1000 ? goLive() : playArchive(t)),
    onSelect: (a, b) => setSelection(a === null ? null : [a, b], false),
    onView: () => loadRanges(),
    playhead: () => (state.mode === 'archive' && state.player ? state.player.wallclockMs() : null),
  });

  // Selection, export and protection.
  const selStart = h('input', { type: 'datetime-local', step: '1', id: 'sel-start', onchange: () => selFromInputs() });
  const selEnd = h('input', { type: 'datetime-local', step: '1', id: 'sel-end', onchange: () => selFromInputs() });
  const selInfo = h('p', { class: 'sel-info', 'aria-live': 'polite' });
  const exportBtn = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'export', onclick: () => doExport() }, 'Export MP4');
  const reasonInput = h('input', { type: 'text', id: 'prot-reason', maxlength: '500', placeholder: 'e.g. incident 17' });
  const protectBtn = h('button', { type: 'button', class: 'btn', 'data-testid': 'protect', onclick: () => doProtect() }, 'Protect');
  const protList = h('ul', { class: 'prot-list' });
  const selPanel = h('section', { class: 'panel', 'aria-labelledby': 'sel-h' },
    h('h2', { id: 'sel-h' }, 'Selection'),
    h('p', { class: 'hint' }, 'Drag on the timeline, or enter the times.'),
    h('div', { class: 'field' }, h('label', { for: 'sel-start' }, 'From'), selStart),
    h('div', { class: 'field' }, h('label', { for: 'sel-end' }, 'To'), selEnd),
    selInfo,
    h('div', { class: 'row' }, exportBtn),
    h('div', { class: 'field' }, h('label', { for: 'prot-reason' }, 'Reason (protected ranges are kept from retention)'), reasonInput),
    h('div', { class: 'row' }, protectBtn,
      h('button', { type: 'button', class: 'btn', onclick: () => setSelection(null, true) }, 'Clear')));
  const protPanel = h('section', { class: 'panel', 'aria-labelledby': 'prot-h' },
    h('h2', { id: 'prot-h' }, 'Protected ranges'), protList);

  replace(root,
    h('div', { class: 'page-head' },
      h('div', { class: 'title-row' }, h('a', { href: '#/', class: 'back', 'aria-label': 'Back to the live grid' }, '←'), title, badges),
      h('div', { class: 'page-tools' }, h('a', { class: 'btn', href: `#/cameras/${encodeURIComponent(id)}/edit` }, 'Settings'))),
    h('div', { class: 'camera-layout' },
      h('div', { class: 'camera-main' },
        stage,
        h('div', { class: 'controls', role: 'toolbar', 'aria-label': 'Playback' }, playBtn, liveBtn, speedSel, soundBtn, snapBtn, gotoForm, fullBtn),
        timeline.el),
      h('aside', { class: 'camera-side' }, selPanel, protPanel)));
  stage.append(overlay, timeLabel);

  function newVideo() {
    if (state.video) state.video.remove();
    const v = h('video', { muted: true, playsinline: true, autoplay: true, 'aria-label': 'Camera video' });
    v.muted = state.muted;
    stage.prepend(v);
    state.video = v;
    return v;
  }

  function stopPlayer() {
    if (state.player) state.player.stop();
    state.player = null;
  }

  function showOverlay(s) {
    const msg = s.state === 'connecting' ? 'Connecting…'
      : s.state === 'waiting' ? `${s.message} — retrying in ${Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000))} s`
        : s.state === 'error' || s.state === 'ended' ? s.message : '';
    overlay.hidden = !msg;
    overlay.textContent = msg;
    stage.dataset.state = s.state || '';
  }

  function renderBadges() {
    replace(badges, statusBadges(state.status, state.mode === 'live' ? state.playerState.transport : null),
      state.mode === 'archive' ? h('span', { class: 'badge badge-archive' }, 'ARCHIVE') : null);
  }

  function goLive() {
    if (!state.stream) return;
    stopPlayer();
    state.mode = 'live';
    stage.dataset.mode = 'live';
    liveBtn.setAttribute('aria-pressed', 'true');
    speedSel.disabled = true;
    speedSel.value = '1';
    const v = newVideo();
    state.player = new LivePlayer(v, state.stream, { onState: (s) => {
      state.playerState = s;
      showOverlay(s);
      renderBadges();
    } });
    state.player.start();
    playBtn.textContent = '❚❚';
    playBtn.setAttribute('aria-label', 'Pause');
    renderBadges();
  }

  function playArchive(t) {
    if (!server.info.features.archive_serving) {
      toast('Archive playback is off on this server ([archive] serving = false)', 'error');
      return;
    }
    stopPlayer();
    state.mode = 'archive';
    stage.dataset.mode = 'archive';
    liveBtn.setAttribute('aria-pressed', 'false');
    speedSel.disabled = false;
    const v = newVideo();
    v.playbackRate = Number(speedSel.value);
    const p = new ArchivePlayer(v, id, { onState: (s) => {
      // Played up to the present: carry on live, as a DVR does.
      const w = p.wallclockMs();
      if (s.state === 'ended' && state.player === p && w !== null && now() - w < 60_000 && state.stream.enabled) {
        goLive();
        return;
      }
      showOverlay(s);
      renderBadges();
    } });
    state.player = p;
    p.start(t).catch((e) => showOverlay({ state: 'error', message: e.message }));
    playBtn.textContent = '❚❚';
    playBtn.setAttribute('aria-label', 'Pause');
    renderBadges();
  }

  /** The MSE sink feeding the video on screen (archive, or live over MSE), which resumes a
   * paused video when data arrives unless told the user paused it. */
  function sinkOnScreen() {
    const p = state.player;
    return (p && (p.sink || (p.current && p.current.sink))) || null;
  }

  function togglePause() {
    const v = state.video;
    if (!v) return;
    const sink = sinkOnScreen();
    if (v.paused) {
      if (sink) sink.pausedByUser = false;
      v.play().catch(() => {});
      playBtn.textContent = '❚❚';
      playBtn.setAttribute('aria-label', 'Pause');
    } else {
      if (sink) sink.pausedByUser = true;
      v.pause();
      playBtn.textContent = '▶';
      playBtn.setAttribute('aria-label', 'Play');
    }
  }

  /** The picture on screen as a PNG download, named after the camera and its wall-clock time. */
  function snapshot() {
    const v = state.video;
    if (!v || !v.videoWidth) {
      toast('No picture yet', 'error');
      return;
    }
    const c = document.createElement('canvas');
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    c.getContext('2d').drawImage(v, 0, 0);
    const wall = state.mode === 'archive' && state.player ? state.player.wallclockMs() : now();
    const name = `${(state.stream && state.stream.name) || id}_${new Date(wall ?? now()).toISOString().replace(/[:.]/g, '-')}.png`;
    c.toBlob((blob) => {
      if (!blob) return;
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: name.replace(/[^\w.-]+/g, '_'), hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    }, 'image/png');
  }

  // Keyboard shortcuts (not while typing or on the timeline, which has its own keys).
  const onKey = (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest('input, select, textarea, canvas, button, a, dialog')) return;
    const act = { ' ': togglePause, k: togglePause, l: goLive, m: () => soundBtn.click(), f: () => fullBtn.click(), s: snapshot }[e.key.toLowerCase()];
    if (act) {
      e.preventDefault();
      act();
    }
  };
  document.addEventListener('keydown', onKey);

  const labelTimer = setInterval(() => {
    if (state.mode === 'live') {
      timeLabel.textContent = `LIVE · ${fmtDateTime(now())}`;
      timeLabel.dataset.wallclockMs = '';
      timeLabel.dataset.mode = 'live';
    } else {
      const w = state.player ? state.player.wallclockMs() : null;
      timeLabel.textContent = w === null ? 'ARCHIVE · …' : `ARCHIVE · ${fmtDateTime(w)}`;
      timeLabel.dataset.wallclockMs = w === null ? '' : String(Math.round(w));
      timeLabel.dataset.mode = 'archive';
    }
  }, 250);

  // --- selection ---------------------------------------------------------------------------
  function setSelection(sel, updateTimeline) {
    state.selection = sel;
    if (updateTimeline) timeline.setSelection(sel);
    selStart.value = sel ? toLocalInput(sel[0]) : '';
    selEnd.value = sel ? toLocalInput(sel[1]) : '';
    renderSelInfo();
  }

  function selFromInputs() {
    const a = fromLocalInput(selStart.value);
    const b = fromLocalInput(selEnd.value);
    if (Number.isFinite(a) && Number.isFinite(b)) {
      state.selection = [Math.min(a, b), Math.max(a, b)];
      timeline.setSelection(state.selection);
    }
    renderSelInfo();
  }

  function renderSelInfo() {
    const s = state.selection;
    exportBtn.disabled = !s;
    protectBtn.disabled = !s;
    selInfo.dataset.startMs = s ? String(Math.round(s[0])) : '';
    selInfo.dataset.endMs = s ? String(Math.round(s[1])) : '';
    if (!s) {
      selInfo.textContent = 'Nothing selected.';
      return;
    }
    selInfo.textContent = `${fmtDuration((s[1] - s[0]) / 1000)} selected` +
      (s[1] - s[0] > MAX_EXPORT_MS ? ' (export: 24 h at most)' : '');
  }

  async function doExport() {
    const s = state.selection;
    if (!s) return;
    if (s[1] - s[0] > MAX_EXPORT_MS) {
      toast('An export covers 24 hours at most: select a shorter range', 'error');
      return;
    }
    try {
      const url = await exportUrl(id, s[0], s[1]);
      const a = h('a', { href: url, download: '', hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      toast('Export started: the MP4 downloads as it is built');
    } catch (e) {
      toast(`Export failed: ${e.message}`, 'error');
    }
  }

  async function doProtect() {
    const s = state.selection;
    if (!s) return;
    const body = { start: new Date(s[0]).toISOString(), end: new Date(s[1]).toISOString(), reason: reasonInput.value.trim() };
    try {
      await api('POST', `/api/v1/streams/${id}/protected-ranges`, body);
      if (state.editing !== null) {
        await api('DELETE', `/api/v1/streams/${id}/protected-ranges/${state.editing}`);
        state.editing = null;
        protectBtn.textContent = 'Protect';
      }
      reasonInput.value = '';
      toast('Range protected from retention');
      await loadProtected();
    } catch (e) {
      toast(`Cannot protect: ${e.message}`, 'error');
    }
  }

  async function loadProtected() {
    let list;
    try {
      list = (await api('GET', `/api/v1/streams/${id}/protected-ranges`)).items;
    } catch {
      return;
    }
    timeline.setProtected(list.map((p) => ({ startMs: Date.parse(p.start), endMs: Date.parse(p.end) })));
    replace(protList, list.length === 0 ? h('li', { class: 'hint' }, 'None. Select a range and protect it to keep it from retention.') :
      list.map((p) => {
        const a = Date.parse(p.start);
        const b = Date.parse(p.end);
        return h('li', { 'data-range-id': String(p.id) },
          h('div', {}, h('strong', {}, p.reason || 'No reason given')),
          h('div', { class: 'hint' }, `${fmtDateTime(a)} → ${fmtDateTime(b)} (${fmtDuration((b - a) / 1000)})`),
          h('div', { class: 'row' },
            h('button', { type: 'button', class: 'btn btn-small', onclick: () => playArchive(a) }, 'Play'),
            h('button', { type: 'button', class: 'btn btn-small', onclick: () => {
              setSelection([a, b], true);
              reasonInput.value = p.reason;
              state.editing = p.id;
              protectBtn.textContent = 'Save changes';
              reasonInput.focus();
            } }, 'Edit'),
            h('button', { type: 'button', class: 'btn btn-small btn-danger', onclick: async () => {
              if (!(await confirmDialog('Remove protection?', 'Retention may then delete these recordings.', 'Remove', true))) return;
              try {
                await api('DELETE', `/api/v1/streams/${id}/protected-ranges/${p.id}`);
                await loadProtected();
              } catch (e) {
                toast(e.message, 'error');
              }
            } }, 'Remove')));
      }));
  }

  // --- data --------------------------------------------------------------------------------
  let rangesBusy = false;
  async function loadRanges() {
    if (rangesBusy) return;
    rangesBusy = true;
    try {
      const gap = Math.max(1000, Math.round(timeline.span / 2000));
      const q = new URLSearchParams({
        start: (timeline.start / 1000).toFixed(0), end: (timeline.end / 1000 + 1).toFixed(0), gap_ms: String(gap),
      });
      const r = await api('GET', `/api/v1/streams/${id}/ranges?${q}`);
      timeline.setRanges(r.ranges.map((x) => ({ startMs: Date.parse(x.start), endMs: Date.parse(x.end) })));
    } catch {
      /* kept; the next refresh tries again */
    } finally {
      rangesBusy = false;
    }
  }

  let first = true;
  const stopPoll = poll(async () => {
    if (first) {
      first = false;
      try {
        state.stream = await api('GET', `/api/v1/streams/${id}`);
      } catch (e) {
        title.textContent = e.status === 404 ? 'Camera not found' : 'Camera';
        showOverlay({ state: 'error', message: e.message });
        return;
      }
      title.textContent = state.stream.name || state.stream.id;
      document.title = `${title.textContent} · video-server`;
      if (state.stream.enabled) goLive();
      else showOverlay({ state: 'error', message: 'Camera disabled (enable it on the Cameras page); its recordings can still be played.' });
      loadProtected();
    }
    if (!state.stream) return;
    if (state.stream.enabled) {
      try {
        state.status = await api('GET', `/api/v1/streams/${id}/status`);
        renderBadges();
      } catch {
        /* next time */
      }
    }
    if (timeline.follow) await loadRanges();
  }, 5000);
  setSelection(null, true);
  if (window.__vs) window.__vs.camera = { timeline, state };

  return {
    destroy() {
      stopPoll();
      document.removeEventListener('keydown', onKey);
      clearInterval(labelTimer);
      timeline.destroy();
      stopPlayer();
      if (window.__vs) delete window.__vs.camera;
    },
  };
}
