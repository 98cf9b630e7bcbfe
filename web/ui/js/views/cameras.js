// Camera management through /api/v1/streams: list, add (RTSP with transport, or a file on the
// server), edit, enable/disable, delete, recording and retention settings. The API's validation
// errors are shown next to the field they name (`error.field`).

import { ApiError, api, listStreams, server } from '../api.js';
import { confirmDialog, fmtBytes, fmtDuration, h, replace, toast } from '../util.js';

const DAY_S = 86400;
const GB = 1e9;

export function camerasView(root, editing) {
  if (!server.apiBase) {
    replace(root, h('div', { class: 'error-box' }, 'The API listener is disabled ([api] enabled = false).'));
    return { destroy() {} };
  }
  if (editing) return formView(root, editing === 'new' ? null : editing);
  return listView(root);
}

function listView(root) {
  const body = h('tbody');
  const box = h('div', { class: 'error-box', role: 'alert', hidden: true });
  replace(root,
    h('div', { class: 'page-head' },
      h('h1', {}, 'Cameras'),
      h('div', { class: 'page-tools' }, h('a', { class: 'btn btn-primary', href: '#/cameras/new' }, '+ Add camera'))),
    box,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'table' },
        h('thead', {}, h('tr', {},
          ['Name', 'Status', 'Source', 'Outputs', 'Recording', 'Retention', 'Enabled', ''].map((c) => h('th', { scope: 'col' }, c)))),
        body)));

  const load = async () => {
    let streams;
    try {
      streams = await listStreams();
    } catch (e) {
      box.hidden = false;
      box.textContent = `Cannot list cameras: ${e.message}`;
      return;
    }
    streams.sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
    if (streams.length === 0) {
      replace(body, h('tr', {}, h('td', { colspan: '8', class: 'hint' }, 'No cameras yet. ', h('a', { href: '#/cameras/new' }, 'Add one'), '.')));
      return;
    }
    replace(body, streams.map((s) => row(s, load)));
    await Promise.all(streams.filter((s) => s.enabled).map(async (s) => {
      const cell = body.querySelector(`tr[data-stream-id="${CSS.escape(s.id)}"] .status-cell`);
      try {
        const st = await api('GET', `/api/v1/streams/${s.id}/status`);
        if (cell) replace(cell, statusBadge(st));
      } catch {
        /* left as it is */
      }
    }));
  };
  load();
  return { destroy() {} };
}

function statusBadge(st) {
  if (st.online) return h('span', { class: 'badge badge-ok' }, '● online');
  return h('span', { class: 'badge badge-bad', title: st.last_health_error || 'No video from the source' }, '● offline');
}

function sourceText(s) {
  // With auth on, the source is shown only to tokens that may manage the camera.
  if (!s.source) return 'hidden (needs manage)';
  return s.source.kind === 'rtsp' ? `${s.source.url} (${s.source.transport || 'tcp'})` : `${s.source.path}${s.source.loop ? ' (loop)' : ''}`;
}

function row(s, reload) {
  const name = s.name || s.id;
  const toggle = h('input', {
    type: 'checkbox', class: 'switch', checked: s.enabled, 'aria-label': `${name} enabled`, 'data-testid': 'enabled',
    onchange: async (e) => {
      e.target.disabled = true;
      try {
        await api('PATCH', `/api/v1/streams/${s.id}`, { enabled: e.target.checked }, { contentType: 'application/merge-patch+json' });
        toast(`${name} ${e.target.checked ? 'enabled' : 'disabled'}`);
      } catch (err) {
        e.target.checked = !e.target.checked;
        toast(`Cannot change ${name}: ${err.message}`, 'error');
      } finally {
        e.target.disabled = false;
      }
    },
  });
  const ret = [];
  if (s.retention.max_age_s) ret.push(fmtDuration(s.retention.max_age_s));
  if (s.retention.max_bytes) ret.push(fmtBytes(s.retention.max_bytes));
  return h('tr', { 'data-stream-id': s.id },
    h('td', {}, h('a', { href: `#/camera/${encodeURIComponent(s.id)}` }, name), h('div', { class: 'hint mono' }, s.id)),
    h('td', { class: 'status-cell' }, s.enabled ? h('span', { class: 'hint' }, '…') : h('span', { class: 'badge' }, 'disabled')),
    h('td', { class: 'mono wrap' }, h('span', { class: 'badge' }, s.source ? s.source.kind.toUpperCase() : '—'), ' ', sourceText(s)),
    h('td', {}, s.outputs.join(', ') || '—'),
    h('td', {}, s.archive.recording ? `on${s.archive.storage === 's3' ? ' (S3)' : ''}` : 'off'),
    h('td', {}, ret.join(' / ') || 'unlimited'),
    h('td', {}, toggle),
    h('td', { class: 'actions' },
      h('a', { class: 'btn btn-small', href: `#/cameras/${encodeURIComponent(s.id)}/edit`, 'aria-label': `Edit ${name}` }, 'Edit'),
      h('button', {
        type: 'button', class: 'btn btn-small btn-danger', 'aria-label': `Delete ${name}`, 'data-testid': 'delete',
        onclick: async () => {
          const ok = await confirmDialog(`Delete ${name}?`,
            'The camera stops and is removed. Its recordings stay until retention deletes them.', 'Delete', true);
          if (!ok) return;
          try {
            await api('DELETE', `/api/v1/streams/${s.id}`);
            toast(`${name} deleted`);
            reload();
          } catch (e) {
            toast(`Cannot delete ${name}: ${e.message}`, 'error');
          }
        },
      }, 'Delete')));
}

/** A labelled input with a place for its error, keyed by the API field name. */
function field(apiField, label, input, hint) {
  const id = `f-${apiField.replace(/[^a-z0-9]+/gi, '-')}`;
  input.id = id;
  const err = h('p', { class: 'field-error', id: `${id}-err`, 'data-error-for': apiField, hidden: true });
  input.setAttribute('aria-describedby', `${id}-err${hint ? ` ${id}-hint` : ''}`);
  return h('div', { class: input.type === 'checkbox' ? 'field field-check' : 'field', 'data-field': apiField },
    input.type === 'checkbox' ? [input, h('label', { for: id }, label)] : [h('label', { for: id }, label), input],
    err,
    hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null);
}

function formView(root, id) {
  const f = {
    name: h('input', { type: 'text', maxlength: '256', autocomplete: 'off', placeholder: 'Front door' }),
    kindRtsp: h('input', { type: 'radio', name: 'kind', value: 'rtsp', checked: true }),
    kindFile: h('input', { type: 'radio', name: 'kind', value: 'file' }),
    url: h('input', { type: 'text', inputmode: 'url', autocomplete: 'off', spellcheck: 'false', placeholder: 'rtsp://user:password@192.168.1.10:554/stream1' }),
    transport: h('select', {}, h('option', { value: 'tcp' }, 'TCP (interleaved, works through NAT)'), h('option', { value: 'udp' }, 'UDP')),
    path: h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'assets/demo.mp4' }),
    loop: h('input', { type: 'checkbox', checked: true }),
    mse: h('input', { type: 'checkbox', checked: true }),
    hls: h('input', { type: 'checkbox', checked: true }),
    onDemand: h('select', {}, h('option', { value: '' }, 'Server default'), h('option', { value: 'true' }, 'Only while watched'), h('option', { value: 'false' }, 'Always')),
    enabled: h('input', { type: 'checkbox', checked: true }),
    recording: h('input', { type: 'checkbox', checked: true }),
    segment: h('input', { type: 'number', min: '1', max: '3600', step: '1', placeholder: 'server default' }),
    storage: h('select', {}, h('option', { value: 'filesystem' }, 'Filesystem'), h('option', { value: 's3', disabled: !server.info.features.s3 }, 'S3')),
    maxAge: h('input', { type: 'number', min: '0', step: 'any', placeholder: 'unlimited' }),
    maxBytes: h('input', { type: 'number', min: '0', step: 'any', placeholder: 'unlimited' }),
    directory: h('input', { type: 'text', autocomplete: 'off', placeholder: '[archive] directory' }),
    bucket: h('input', { type: 'text', autocomplete: 'off', placeholder: '[s3] bucket' }),
    prefix: h('input', { type: 'text', autocomplete: 'off', placeholder: '[s3] prefix' }),
  };
  const general = h('div', { class: 'error-box', role: 'alert', tabindex: '-1', hidden: true });
  const rtspFields = h('div', { class: 'subfields' },
    field('source.url', 'RTSP URL', f.url, 'rtsp:// or rtsps://; credentials may be in the URL (they are never shown back in full).'),
    field('source.transport', 'Transport', f.transport));
  const fileFields = h('div', { class: 'subfields', hidden: true },
    field('source.path', 'File on the server', f.path, 'An MP4 file (H.264/H.265, optional AAC) readable by the server.'),
    field('source.loop', 'Loop (start again at the end)', f.loop));
  const syncKind = () => {
    rtspFields.hidden = !f.kindRtsp.checked;
    fileFields.hidden = !f.kindFile.checked;
  };
  f.kindRtsp.addEventListener('change', syncKind);
  f.kindFile.addEventListener('change', syncKind);
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, id ? 'Save' : 'Add camera');
  const form = h('form', { class: 'form', novalidate: true, onsubmit: (e) => save(e) },
    general,
    h('fieldset', {}, h('legend', {}, 'Camera'),
      field('name', 'Name', f.name),
      h('div', { class: 'field', 'data-field': 'source', role: 'radiogroup', 'aria-label': 'Source' },
        h('span', { class: 'label' }, 'Source'),
        h('div', { class: 'choices' },
          h('label', { class: 'radio' }, f.kindRtsp, ' RTSP camera'),
          h('label', { class: 'radio' }, f.kindFile, ' Video file on the server')),
        h('p', { class: 'field-error', 'data-error-for': 'source', hidden: true })),
      rtspFields, fileFields),
    h('fieldset', {}, h('legend', {}, 'Live'),
      h('div', { class: 'field', 'data-field': 'outputs' }, h('span', { class: 'label' }, 'Outputs'),
        h('div', { class: 'choices' },
          h('label', { class: 'radio' }, f.mse, ' MSE (WebSocket, low latency)'),
          h('label', { class: 'radio' }, f.hls, ' HLS')),
        h('p', { class: 'field-error', 'data-error-for': 'outputs', hidden: true })),
      field('on_demand', 'Pull from the camera', f.onDemand, 'Only while watched saves bandwidth; recording keeps it pulling.'),
      field('enabled', 'Enabled', f.enabled)),
    h('fieldset', {}, h('legend', {}, 'Recording and retention'),
      field('archive.recording', 'Record to the archive', f.recording),
      field('archive.ms_per_file', 'Segment length (seconds)', f.segment),
      field('archive.storage', 'Storage', f.storage),
      field('retention.max_age_s', 'Keep recordings for (days)', f.maxAge, 'Empty: no age limit.'),
      field('retention.max_bytes', 'Keep at most (GB)', f.maxBytes, 'Empty: no size limit. Protected ranges do not count.'),
      h('details', {}, h('summary', {}, 'Storage location'),
        field('archive.directory', 'Directory', f.directory),
        field('archive.bucket', 'S3 bucket', f.bucket),
        field('archive.prefix', 'S3 key prefix', f.prefix))),
    h('div', { class: 'row' }, submit, h('a', { class: 'btn', href: '#/cameras' }, 'Cancel')));

  replace(root,
    h('div', { class: 'page-head' },
      h('div', { class: 'title-row' }, h('a', { href: '#/cameras', class: 'back', 'aria-label': 'Back to cameras' }, '←'),
        h('h1', {}, id ? 'Edit camera' : 'Add camera'))),
    form);

  let original = null;
  if (id) {
    api('GET', `/api/v1/streams/${id}`).then((s) => {
      original = s;
      f.name.value = s.name;
      if (!s.source) {
        toast('This token may not manage this camera', 'error');
      } else if (s.source.kind === 'rtsp') {
        f.kindRtsp.checked = true;
        f.url.value = s.source.url;
        f.transport.value = s.source.transport || 'tcp';
      } else {
        f.kindFile.checked = true;
        f.path.value = s.source.path;
        f.loop.checked = Boolean(s.source.loop);
      }
      syncKind();
      f.mse.checked = s.outputs.includes('mse');
      f.hls.checked = s.outputs.includes('hls');
      f.onDemand.value = s.on_demand === null || s.on_demand === undefined ? '' : String(s.on_demand);
      f.enabled.checked = s.enabled;
      f.recording.checked = s.archive.recording;
      f.segment.value = s.archive.ms_per_file ? String(s.archive.ms_per_file / 1000) : '';
      f.storage.value = s.archive.storage;
      f.maxAge.value = s.retention.max_age_s ? String(+(s.retention.max_age_s / DAY_S).toFixed(4)) : '';
      f.maxBytes.value = s.retention.max_bytes ? String(+(s.retention.max_bytes / GB).toFixed(4)) : '';
      f.directory.value = s.archive.directory || '';
      f.bucket.value = s.archive.bucket || '';
      f.prefix.value = s.archive.prefix || '';
    }).catch((e) => {
      general.hidden = false;
      general.textContent = e.message;
    });
  } else {
    f.name.focus();
  }

  const num = (input, scale) => (input.value.trim() === '' ? null : Math.round(Number(input.value) * scale));
  const text = (input) => (input.value.trim() === '' ? null : input.value.trim());

  function clearErrors() {
    general.hidden = true;
    for (const el of form.querySelectorAll('.field-error')) {
      el.hidden = true;
      el.textContent = '';
    }
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  /** Puts the API's message next to the field it names; the nearest named parent otherwise. */
  function showError(e) {
    let name = e.field || '';
    while (name) {
      const err = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (err) {
        err.textContent = e.message;
        err.hidden = false;
        const wrap = err.closest('[data-field]');
        const input = wrap && wrap.querySelector('input, select');
        if (input) {
          input.setAttribute('aria-invalid', 'true');
          const details = input.closest('details');
          if (details) details.open = true;
          input.focus();
        }
        return;
      }
      name = name.includes('.') ? name.slice(0, name.lastIndexOf('.')) : '';
    }
    general.hidden = false;
    general.textContent = e.message;
    general.focus();
  }

  async function save(e) {
    e.preventDefault();
    clearErrors();
    const outputs = [];
    if (f.mse.checked) outputs.push('mse');
    if (f.hls.checked) outputs.push('hls');
    const body = {
      name: f.name.value.trim(),
      source: f.kindRtsp.checked
        ? { kind: 'rtsp', url: f.url.value.trim(), transport: f.transport.value }
        : { kind: 'file', path: f.path.value.trim(), loop: f.loop.checked },
      outputs,
      on_demand: f.onDemand.value === '' ? null : f.onDemand.value === 'true',
      enabled: f.enabled.checked,
      archive: {
        recording: f.recording.checked,
        ms_per_file: num(f.segment, 1000),
        storage: f.storage.value,
        directory: text(f.directory),
        bucket: text(f.bucket),
        prefix: text(f.prefix),
      },
      retention: { max_age_s: num(f.maxAge, DAY_S), max_bytes: num(f.maxBytes, GB) },
    };
    for (const k of Object.keys(body.archive)) if (body.archive[k] === null) delete body.archive[k];
    for (const k of Object.keys(body.retention)) if (body.retention[k] === null) delete body.retention[k];
    submit.disabled = true;
    try {
      const s = id ? await api('PUT', `/api/v1/streams/${id}`, body) : await api('POST', '/api/v1/streams', body);
      toast(`${s.name || s.id} ${id ? 'saved' : 'added'}`);
      location.hash = original || id ? '#/cameras' : '#/';
    } catch (err) {
      showError(err instanceof ApiError ? err : new ApiError(0, 'error', String(err.message || err)));
    } finally {
      submit.disabled = false;
    }
  }

  return { destroy() {} };
}
