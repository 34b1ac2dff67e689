// views/events.js: the Events tab: the node's live event stream, newest first, the last 500
// kept; filter by type and by text (both here in the page), pause to read.

import { $, h, setText, clear, fmtTime } from '../util.js';
import { on } from '../store.js';

const MAX = 500;
const KNOWN = ['peer_connected', 'peer_disconnected', 'admission_refused', 'lifecycle', 'telemetry_received', 'telemetry_expired',
  'message_received', 'message_delivered', 'revocation_applied', 'power_mode', 'cluster', 'task', 'kv_changed', 'kv_conflict', 'lagged'];
const kept = []; // newest last: {ev, text}
const types = new Set();
let paused = false;
let unseen = 0;

export function init() {
  for (const t of KNOWN) addType(t);
  $('#events-type').addEventListener('change', rebuild);
  $('#events-filter').addEventListener('input', rebuild);
  $('#events-pause').addEventListener('click', () => {
    paused = !paused;
    setText($('#events-pause'), paused ? 'Resume' : 'Pause');
    $('#events-pause').classList.toggle('on', paused);
    if (!paused) rebuild();
    counter();
  });
  on('event', add);
  on('sse', (st) => {
    const b = $('#events-state');
    setText(b, st);
    b.className = 'badge ' + (st === 'live' ? 'ok' : st === 'closed' ? 'warn' : '');
  });
  on('selected', () => { kept.length = 0; unseen = 0; rebuild(); });
}

function addType(t) {
  if (types.has(t)) return;
  types.add(t);
  $('#events-type').append(h('option', { value: t }, t.replace(/_/g, ' ')));
}

function summary(ev) {
  const parts = [];
  for (const [k, v] of Object.entries(ev)) {
    if (k === 'seq' || k === 'at_ms' || k === 'type') continue;
    parts.push(`${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  }
  return parts.join('  ');
}

function add(ev) {
  const type = String(ev.type || '?');
  addType(type);
  const item = { ev, type, text: summary(ev) };
  kept.push(item);
  if (kept.length > MAX) kept.shift();
  if (paused) { unseen++; counter(); return; }
  if (matches(item)) {
    const ol = $('#events-list');
    ol.insertBefore(row(item), ol.firstChild);
    while (ol.children.length > MAX) ol.lastChild.remove();
  }
  counter();
}

function matches(item) {
  const t = $('#events-type').value;
  const f = $('#events-filter').value.trim().toLowerCase();
  return (!t || item.type === t) && (!f || item.type.includes(f) || item.text.toLowerCase().includes(f));
}

function row(item) {
  return h('li', { data: { type: item.type }, class: item.type === 'lagged' ? 'warn' : '' },
    h('span', { class: 'muted small when' }, fmtTime(item.ev.at_ms)),
    h('span', { class: 'badge' }, item.type.replace(/_/g, ' ')),
    h('span', { class: 'mono small text' }, item.type === 'lagged' ? `missed ${item.ev.missed} events` : item.text));
}

function rebuild() {
  const ol = $('#events-list');
  clear(ol);
  unseen = 0;
  const frag = document.createDocumentFragment();
  for (let i = kept.length - 1; i >= 0; i--) if (matches(kept[i])) frag.append(row(kept[i]));
  ol.append(frag);
  counter();
}

function counter() {
  setText($('#events-count'), `${kept.length} kept${paused && unseen ? `, ${unseen} new while paused` : ''}`);
}
