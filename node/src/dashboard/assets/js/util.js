// util.js: small DOM and formatting helpers shared by every view. Network text only ever
// reaches the page through textContent (h(), setText()), never as markup.

import { hasToken } from './auth.js';

export const $ = (sel, root = document) => root.querySelector(sel);

// h('td', {class: 'x', data: {peer: id}, on: {click: f}}, 'text', child...)
export function h(tag, attrs, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'data') Object.assign(el.dataset, v);
    else if (k === 'on') for (const [ev, f] of Object.entries(v)) el.addEventListener(ev, f);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}

export function setText(el, text) {
  text = text == null ? '' : String(text);
  if (el.textContent !== text) el.textContent = text;
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); }

export function shortId(id) {
  if (!id) return '—';
  return id.length > 16 ? id.slice(0, 6) + '…' + id.slice(-6) : id;
}

export function fmtAge(ms) {
  if (ms == null || !isFinite(ms)) return '—';
  if (ms < 0) ms = 0;
  const s = ms / 1000;
  if (s < 1) return 'now';
  if (s < 60) return Math.floor(s) + 's ago';
  if (s < 3600) return Math.floor(s / 60) + 'm ago';
  if (s < 86400) return Math.floor(s / 3600) + 'h ago';
  return Math.floor(s / 86400) + 'd ago';
}

export function fmtSecs(s) {
  if (s == null) return '—';
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(s)}s`;
}

export function fmtBytes(n) {
  if (n == null || !isFinite(n)) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : Math.round(n)) + ' ' + u[i];
}

export const fmtPct = (x) => (x == null ? '—' : Math.round(x) + '%');
export const fmtTemp = (x) => (x == null ? '—' : x.toFixed(0) + ' °C');
export const fmtScore = (x) => (x == null ? '—' : Number(x).toFixed(2));
export const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '—');
export const fmtDate = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
export const words = (s) => (s ? String(s).replace(/_/g, ' ') : '—');

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
export function hex(bytes) {
  let out = '';
  for (const b of bytes) out += HEX[b];
  return out;
}
export const utf8Hex = (text) => hex(new TextEncoder().encode(text));

// Stable colour for a name (cluster id, device class...), from a calm palette.
const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#5f9ed1', '#8cd17d', '#d37295'];
export function colourOf(name) {
  if (!name) return '#9aa3ae';
  let x = 0;
  for (let i = 0; i < name.length; i++) x = (x * 31 + name.charCodeAt(i)) >>> 0;
  return PALETTE[x % PALETTE.length];
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const t = h('textarea', { class: 'offscreen' });
    t.value = text;
    document.body.append(t);
    t.select();
    document.execCommand('copy');
    t.remove();
  }
  if (button) {
    const old = button.textContent;
    button.textContent = 'copied';
    setTimeout(() => (button.textContent = old), 1200);
  }
}

// Shows a result or error next to a control: ok=true green, false red.
export function say(el, text, ok) {
  setText(el, text);
  el.classList.toggle('error', ok === false);
  el.classList.toggle('ok', ok === true);
}

// Marks a write control busy (disabled) while its request runs.
export function busy(el, on) {
  el.dataset.busy = on ? '1' : '';
  el.disabled = on || !hasToken();
}

// Runs a write for a control: busy meanwhile, its outcome (f's text) or error shown in out.
export async function act(btn, out, pending, f) {
  busy(btn, true);
  say(out, pending);
  try {
    say(out, await f(), true);
  } catch (e) {
    say(out, e.message, false);
  } finally {
    busy(btn, false);
  }
}

// A <dl> whose rows are updated in place (so selections survive a refresh).
export function dlUpdate(dl, pairs) {
  const kids = dl.children;
  let i = 0;
  for (const [k, v] of pairs) {
    let dt = kids[i], dd = kids[i + 1];
    if (!dt) { dt = h('dt'); dd = h('dd'); dl.append(dt, dd); }
    setText(dt, k);
    if (v instanceof Node) { if (dd.firstChild !== v) { clear(dd); dd.append(v); } } else setText(dd, v ?? '—');
    i += 2;
  }
  while (kids.length > i) dl.lastChild.remove();
}
