// The system page: server version and listeners, the archive disk (used, free, retention floor),
// storage per camera, the S3 upload queue, retention settings and the health of every camera.

import { api, listStreams, server } from '../api.js';
import { fmtBytes, fmtDateTime, fmtDuration, h, poll, replace } from '../util.js';

export function systemView(root) {
  const info = server.info;
  const serverBox = h('section', { class: 'panel' });
  const diskBox = h('section', { class: 'panel' });
  const uploadsBox = h('section', { class: 'panel' });
  const streamsBox = h('section', { class: 'panel panel-wide' });
  const healthBox = h('section', { class: 'panel panel-wide' });
  replace(root,
    h('div', { class: 'page-head' }, h('h1', {}, 'System')),
    h('div', { class: 'panels' }, serverBox, diskBox, uploadsBox, streamsBox, healthBox));

  const dl = (pairs) => h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  replace(serverBox, h('h2', {}, 'Server'), dl([
    ['Version', `${info.name} ${info.version}`],
    ['Video listener', `port ${info.listeners.video_port} (live, archive, HLS, this UI)`],
    ['API listener', info.listeners.api_port ? `port ${info.listeners.api_port} (REST, OpenAPI)` : 'disabled'],
    ['Access control', info.auth === 'on' ? 'on (tokens)' : 'off'],
    ['Recording', info.features.recording ? 'on' : 'off'],
    ['Archive playback', info.features.archive_serving ? 'on' : 'off'],
    ['S3 storage', info.features.s3 ? 'configured' : 'not configured'],
    ['WebRTC (WHEP)', info.features.webrtc ? 'on' : 'off'],
  ]), server.apiBase ? h('p', {}, h('a', { href: `${server.apiBase}/swagger-ui/`, target: '_blank', rel: 'noopener' }, 'API documentation (Swagger UI)')) : null);

  const refresh = async () => {
    const [storage, uploads, streams] = await Promise.all([
      api('GET', '/api/v1/storage'),
      api('GET', '/api/v1/archive/uploads').catch(() => null),
      listStreams().catch(() => []),
    ]);
    renderDisk(diskBox, storage);
    renderUploads(uploadsBox, uploads);
    renderStreams(streamsBox, storage);
    await renderHealth(healthBox, streams);
  };
  if (!server.apiBase) {
    replace(diskBox, h('p', {}, 'The API listener is disabled.'));
    return { destroy() {} };
  }
  const stop = poll(() => refresh().catch((e) => replace(diskBox, h('h2', {}, 'Storage'), h('p', { class: 'error-box' }, e.message))), 10_000);
  return { destroy: stop };
}

function renderDisk(box, s) {
  const r = s.retention;
  const floor = [];
  if (r.min_free_bytes) floor.push(fmtBytes(r.min_free_bytes));
  if (r.min_free_percent) floor.push(`${r.min_free_percent} %`);
  const rows = [];
  if (s.disk) {
    const used = s.disk.total_bytes - s.disk.free_bytes;
    const pct = s.disk.total_bytes ? (used / s.disk.total_bytes) * 100 : 0;
    const floorPct = s.disk.min_free_bytes && s.disk.total_bytes ? 100 - (s.disk.min_free_bytes / s.disk.total_bytes) * 100 : null;
    const bar = h('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': pct.toFixed(0), 'aria-label': 'Archive disk used' },
      h('div', { class: pct > 90 ? 'meter-fill meter-bad' : 'meter-fill' }));
    bar.firstChild.style.width = `${pct.toFixed(1)}%`;
    if (floorPct !== null) {
      const mark = h('div', { class: 'meter-mark', title: 'Retention frees space beyond this line' });
      mark.style.left = `${floorPct.toFixed(1)}%`;
      bar.append(mark);
    }
    rows.push(bar, h('p', {}, `${fmtBytes(used)} used of ${fmtBytes(s.disk.total_bytes)} · ${fmtBytes(s.disk.free_bytes)} free`));
  } else {
    rows.push(h('p', { class: 'hint' }, 'The archive disk cannot be read yet (nothing recorded?).'));
  }
  replace(box, h('h2', {}, 'Archive disk'), rows, h('dl', { class: 'kv' },
    h('dt', {}, 'Archive (all cameras)'), h('dd', { 'data-testid': 'archive-total' }, fmtBytes(s.total_bytes)),
    h('dt', {}, 'Free-space floor'), h('dd', {}, floor.length ? floor.join(' and ') : 'none'),
    h('dt', {}, 'Retention pass'), h('dd', {}, `every ${fmtDuration(r.interval_s)}`)));
}

function renderUploads(box, u) {
  if (!u) {
    replace(box, h('h2', {}, 'S3 uploads'), h('p', { class: 'hint' }, 'Not available.'));
    return;
  }
  const c = u.uploader;
  replace(box, h('h2', {}, 'S3 uploads'),
    h('p', {}, c.running ? (c.consecutive_failures ? `⚠ failing (${c.consecutive_failures} in a row), retrying` : 'Uploader running') : 'No S3 store configured: segments stay on disk.'),
    h('dl', { class: 'kv' },
      h('dt', {}, 'Waiting'), h('dd', { 'data-testid': 'upload-queue' }, String(u.segments.local)),
      h('dt', {}, 'Uploading'), h('dd', {}, String(u.segments.uploading)),
      h('dt', {}, 'In S3'), h('dd', {}, String(u.segments.remote)),
      h('dt', {}, 'Uploaded since start'), h('dd', {}, `${c.uploaded} (${fmtBytes(c.uploaded_bytes)})`),
      h('dt', {}, 'Failed / missing'), h('dd', {}, `${c.failed} / ${c.missing}`)));
}

function renderStreams(box, s) {
  const rows = s.streams.map((x) => h('tr', {},
    h('td', {}, x.name === null ? h('span', { class: 'hint' }, `deleted camera ${x.stream_id.slice(0, 8)}…`) : h('a', { href: `#/camera/${encodeURIComponent(x.stream_id)}` }, x.name || x.stream_id)),
    h('td', { class: 'num' }, fmtBytes(x.bytes)),
    h('td', { class: 'num' }, String(x.segment_count)),
    h('td', {}, fmtDateTime(Date.parse(x.first))),
    h('td', {}, fmtDateTime(Date.parse(x.last))),
    h('td', {}, [x.max_age_s ? fmtDuration(x.max_age_s) : null, x.max_bytes ? fmtBytes(x.max_bytes) : null].filter(Boolean).join(' / ') || 'unlimited')));
  replace(box, h('h2', {}, 'Storage per camera'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
      h('thead', {}, h('tr', {}, ['Camera', 'Size', 'Segments', 'Oldest', 'Newest', 'Retention'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: '6', class: 'hint' }, 'Nothing recorded yet.'))))));
}

async function renderHealth(box, streams) {
  const enabled = streams.filter((s) => s.enabled);
  const statuses = await Promise.all(enabled.map((s) => api('GET', `/api/v1/streams/${s.id}/status`).catch(() => null)));
  const rows = enabled.map((s, i) => {
    const st = statuses[i];
    return h('tr', {},
      h('td', {}, h('a', { href: `#/camera/${encodeURIComponent(s.id)}` }, s.name || s.id)),
      h('td', {}, st ? (st.online ? h('span', { class: 'badge badge-ok' }, 'online') : h('span', { class: 'badge badge-bad' }, 'offline')) : '—'),
      h('td', {}, st ? (st.codecs || []).join(', ') || '—' : '—'),
      h('td', { class: 'num' }, st ? String(st.viewers) : '—'),
      h('td', {}, st && st.recording ? 'yes' : 'no'),
      h('td', { class: 'num' }, st ? String(st.lag_skips) : '—'),
      h('td', {}, st ? st.last_health_error || '—' : '—'));
  });
  replace(box, h('h2', {}, 'Cameras'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
      h('thead', {}, h('tr', {}, ['Camera', 'Source', 'Codecs', 'Viewers', 'Recording', 'Lag skips', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: '7', class: 'hint' }, 'No enabled cameras.'))))));
}
