// api.js: every HTTP call to a node: timeouts, the bearer token (needed on writes and on the
// private reads — messages — and sent with every request when held), and turning an
// error answer ({"error": "..."} or text) into an ApiError with a readable message.

import { token, tokenRefused } from './auth.js';

// The API lives beside /ui/: '' when the page is at /ui/ on the node itself.
const ROOT = new URL('../', location.href).pathname.replace(/\/$/, '');

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const url = (base, path) => ROOT + base + path;

// request(base, path, {method, body, json, timeout, raw}): parsed JSON (or text, or the
// Response itself with raw: true). Throws ApiError.
export async function request(base, path, opts = {}) {
  const method = opts.method || 'GET';
  const write = method !== 'GET' && method !== 'HEAD';
  const headers = {};
  let body = opts.body;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers['Content-Type'] = 'application/json';
  }
  const t = token();
  if (write && !t) throw new ApiError(0, 'read-only: open the link `fogmesh dashboard` prints to get control');
  if (t) headers.Authorization = 'Bearer ' + t;
  const ac = new AbortController();
  const ms = opts.timeout || (write ? 35000 : 4000);
  const timer = setTimeout(() => ac.abort(), ms);
  let resp;
  try {
    resp = await fetch(url(base, path), { method, headers, body, signal: ac.signal, cache: 'no-store', credentials: 'same-origin' });
  } catch (e) {
    clearTimeout(timer);
    throw new ApiError(0, ac.signal.aborted ? `no answer within ${ms / 1000} s` : 'cannot reach the node');
  }
  try {
    if (!resp.ok) throw await errorOf(resp);
    if (opts.raw) return resp;
    const type = resp.headers.get('Content-Type') || '';
    return type.includes('json') ? await resp.json() : await resp.text();
  } catch (e) {
    if (e instanceof ApiError) throw e;
    throw new ApiError(0, ac.signal.aborted ? `no answer within ${ms / 1000} s` : 'bad answer: ' + e.message);
  } finally {
    clearTimeout(timer);
  }
}

async function errorOf(resp) {
  let text = '';
  try { text = (await resp.text()).trim(); } catch { /* none */ }
  try {
    const j = JSON.parse(text);
    if (j && typeof j.error === 'string') text = j.error;
  } catch { /* plain text */ }
  if (text.length > 300) text = text.slice(0, 300) + '…';
  if (resp.status === 401 || resp.status === 403) {
    const m = `${resp.status === 401 ? 'not authorised' : 'forbidden'} (${resp.status})${text ? ': ' + text : ''}`;
    // A refused token (rather than a refused operation, like a kv namespace the ticket
    // may not write) is told in the header too.
    if (resp.status === 401 && token()) tokenRefused(m);
    return new ApiError(resp.status, m);
  }
  return new ApiError(resp.status, text || `HTTP ${resp.status}`);
}

export const get = (base, path, opts) => request(base, path, opts);
export const post = (base, path, json) => request(base, path, { method: 'POST', json });
