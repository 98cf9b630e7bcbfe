// The server as the UI sees it: where the API and video listeners are, the bearer token (when
// auth is on), JSON calls with the API's error shape, and media URLs (signed when auth is on).
//
// The page may be loaded from either listener. `/api/v1/server` (answered by both) names the
// ports; the other listener is reached on the same host name. The server allows its own listener
// origins through CORS, so nothing needs configuring. Behind a reverse proxy that serves both
// listeners under one origin (neither port matches the page's), everything goes to the page's
// origin: the two listeners' paths do not overlap.

const TOKEN_KEY = 'video-server.token';

/** An `/api/v1` error: `{error: {code, message, field}}`, or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

export const server = {
  info: null,
  /** Origin of the API listener (e.g. `http://127.0.0.1:8091`), null without one. */
  apiBase: null,
  /** Origin of the video listener. */
  videoBase: null,
  /** Server clock minus ours, ms (archive times are the server's). */
  skewMs: 0,
  /** Called when a request needs a token; resolves once the user gave one (or rejects). */
  askToken: null,
};

/** Now on the server's clock, epoch ms. */
export const now = () => Date.now() + server.skewMs;

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives as long as nothing asks again */
  }
}

export const authOn = () => server.info && server.info.auth === 'on';

/** Reads `/api/v1/server` from the page's own origin and works out where the listeners are. */
export async function discover() {
  const t0 = Date.now();
  const r = await fetch('api/v1/server', { cache: 'no-store' });
  if (!r.ok) throw new ApiError(r.status, 'server_info', `GET /api/v1/server answered ${r.status}`);
  const info = await r.json();
  const t1 = Date.now();
  const serverMs = Date.parse(info.time);
  if (Number.isFinite(serverMs)) server.skewMs = Math.round(serverMs - (t0 + t1) / 2);
  server.info = info;
  const { video_port: video, api_port: api } = info.listeners;
  const here = Number(location.port || (location.protocol === 'https:' ? 443 : 80));
  // `hostname` keeps an IPv6 address's brackets ("[::1]").
  const at = (port) => `${location.protocol}//${location.hostname}:${port}`;
  if (here === video) {
    server.videoBase = location.origin;
    server.apiBase = api ? at(api) : null;
  } else if (api && here === api) {
    server.apiBase = location.origin;
    server.videoBase = at(video);
  } else {
    server.apiBase = location.origin;
    server.videoBase = location.origin;
  }
  return info;
}

async function parseError(r) {
  let body = null;
  try {
    body = await r.json();
  } catch {
    /* not JSON */
  }
  const e = body && body.error && typeof body.error === 'object' ? body.error : null;
  const message = e ? e.message : (body && (body.Error || body.error)) || `${r.status} ${r.statusText}`;
  return new ApiError(r.status, e ? e.code : 'http_error', String(message), e ? e.field : null);
}

/**
 * Calls the API listener. `body` (an object) is sent as JSON. Resolves with the parsed JSON
 * (null for 204), rejects with ApiError. A 401 asks for a token once and retries.
 */
export async function api(method, path, body, { retried = false, contentType } = {}) {
  if (!server.apiBase) throw new ApiError(0, 'no_api', 'The API listener is disabled on this server');
  const headers = {};
  if (body !== undefined) headers['content-type'] = contentType || 'application/json';
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  let r;
  try {
    r = await fetch(server.apiBase + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `Cannot reach the server (${e.message})`);
  }
  if (r.status === 401 && !retried && server.askToken) {
    await server.askToken(t ? 'The token was refused. Enter another one.' : 'This server needs an access token.');
    return api(method, path, body, { retried: true, contentType });
  }
  if (!r.ok) throw await parseError(r);
  if (r.status === 204) return null;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** Every stream, following `next_cursor`. */
export async function listStreams() {
  const items = [];
  let cursor = null;
  for (let i = 0; i < 100; i++) {
    const q = new URLSearchParams({ limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const page = await api('GET', `/api/v1/streams?${q}`);
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/**
 * The query string (without `?`) that authorizes media requests for `actions` on a stream:
 * empty with auth off; a signed URL query from the API with auth on (cached until near expiry).
 */
const signed = new Map();
export async function mediaQuery(streamId, actions) {
  if (!authOn()) return '';
  const key = `${streamId}|${actions.join(',')}`;
  const hit = signed.get(key);
  if (hit && hit.expiresMs - now() > 60_000) return hit.query;
  const r = await api('POST', `/api/v1/streams/${streamId}/sign`, { actions, ttl_s: 3600 });
  const expiresMs = typeof r.expires === 'number' ? r.expires * 1000 : Date.parse(r.expires);
  signed.set(key, { query: r.query, expiresMs: Number.isFinite(expiresMs) ? expiresMs : now() + 3_000_000 });
  return r.query;
}

function withQuery(url, extra) {
  if (!extra) return url;
  return url + (url.includes('?') ? '&' : '?') + extra;
}

const wsBase = () => server.videoBase.replace(/^http/, 'ws');

/** `ws(s)://.../ws/live?stream_id=...` (+ signature). */
export async function liveWsUrl(id) {
  return withQuery(`${wsBase()}/ws/live?stream_id=${encodeURIComponent(id)}`, await mediaQuery(id, ['live']));
}

/** `ws(s)://.../ws/archive?stream_id=...&start=...&meta=1` (+ signature). */
export async function archiveWsUrl(id, startS) {
  const q = new URLSearchParams({ stream_id: id, start: String(Math.floor(startS)), meta: '1' });
  return withQuery(`${wsBase()}/ws/archive?${q}`, await mediaQuery(id, ['archive']));
}

/** The WHEP endpoint of a stream (WebRTC; + signature). */
export async function whepUrl(id) {
  return withQuery(`${server.videoBase}/whep/${encodeURIComponent(id)}`, await mediaQuery(id, ['live']));
}

/** The HLS playlist URL of a stream (+ signature). */
export async function hlsUrl(id) {
  return withQuery(`${server.videoBase}/hls/${encodeURIComponent(id)}.m3u8`, await mediaQuery(id, ['live']));
}

/** The export URL of `[startMs, endMs)` (+ signature). */
export async function exportUrl(id, startMs, endMs) {
  const q = new URLSearchParams({ start: (startMs / 1000).toFixed(3), end: (endMs / 1000).toFixed(3) });
  return withQuery(`${server.apiBase}/api/v1/streams/${encodeURIComponent(id)}/export.mp4?${q}`,
    await mediaQuery(id, ['export']));
}
