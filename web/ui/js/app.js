// Entry point: finds the listeners (`/api/v1/server`), asks for a token when auth is on, and
// routes between the views on the URL hash:
//   #/                 live grid
//   #/camera/<id>      one camera: live, timeline, archive playback, export, protected ranges
//   #/cameras          camera management (#/cameras/new, #/cameras/<id>/edit open the form)
//   #/system           storage, uploads, retention, version

import { authOn, discover, server, setToken, token } from './api.js';
import { h, replace, fmtTime } from './util.js';
import { now } from './api.js';
import { gridView } from './views/grid.js';
import { cameraView } from './views/camera.js';
import { camerasView } from './views/cameras.js';
import { systemView } from './views/system.js';

const view = document.getElementById('view');
let current = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (current && current.destroy) current.destroy();
  current = null;
  replace(view);
  let nav = 'live';
  if (parts[0] === 'camera' && parts[1]) {
    current = cameraView(view, parts[1]);
  } else if (parts[0] === 'cameras') {
    nav = 'cameras';
    current = camerasView(view, parts[1] === 'new' ? 'new' : parts[2] === 'edit' ? parts[1] : null);
  } else if (parts[0] === 'system') {
    nav = 'system';
    current = systemView(view);
  } else {
    current = gridView(view);
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

/** The token prompt: resolves when the user signed in. */
function askToken(reason) {
  const dlg = document.getElementById('token-dialog');
  document.getElementById('token-reason').textContent = reason;
  const input = document.getElementById('token-input');
  input.value = '';
  return new Promise((resolve) => {
    const form = document.getElementById('token-form');
    const done = (e) => {
      const t = input.value.trim();
      if (!t) {
        e.preventDefault();
        return;
      }
      setToken(t);
      form.removeEventListener('submit', done);
      document.getElementById('signout').hidden = false;
      resolve();
    };
    form.addEventListener('submit', done);
    // Esc must not leave the app without a token: reopen.
    dlg.oncancel = (e) => e.preventDefault();
    if (!dlg.open) dlg.showModal();
    input.focus();
  });
}

async function main() {
  server.askToken = askToken;
  // For the curious (devtools) and the browser tests: what the UI is doing.
  window.__vs = { server };
  try {
    await discover();
  } catch (e) {
    replace(view, h('div', { class: 'error-box', role: 'alert' },
      h('h1', {}, 'Cannot reach the server'), h('p', {}, e.message), h('button', { class: 'btn', onclick: () => location.reload() }, 'Retry')));
    return;
  }
  const signout = document.getElementById('signout');
  signout.addEventListener('click', () => {
    setToken('');
    location.reload();
  });
  if (authOn()) {
    if (!token()) await askToken('This server needs an access token.');
    signout.hidden = false;
  }
  if (!server.apiBase) {
    for (const a of document.querySelectorAll('[data-nav="cameras"], [data-nav="system"]')) a.hidden = true;
  }
  document.title = `video-server ${server.info.version}`;
  const clock = document.getElementById('clock');
  const tick = () => {
    clock.textContent = fmtTime(now());
  };
  tick();
  setInterval(tick, 1000);
  window.addEventListener('hashchange', route);
  route();
}

main();
