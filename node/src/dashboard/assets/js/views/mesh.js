// views/mesh.js: the Mesh tab: every node known (merged from every node of a testnet),
// drawn as a graph and listed in a table updated in place, with filters; selecting a node
// opens its details. Measures its own cost in window.fogmeshPerf.

import { $, h, setText, shortId, fmtAge, fmtPct, fmtTemp, fmtScore, words, colourOf } from '../util.js';
import { state, on, coalesce } from '../store.js';
import { buildModel } from '../model.js';
import { MeshGraph } from '../graph.js';
import * as details from './details.js';

const perf = (window.fogmeshPerf = { updates: 0, lastUpdateMs: 0, maxUpdateMs: 0, frameMs: [] });
const rows = new Map(); // peer id -> {tr, td: [...], dot}
const WINDOWS = { any: Infinity, '30s': 30e3, '5m': 300e3, '1h': 3600e3 };
const PART_COLOURS = ['#4e79a7', '#e15759', '#59a14f', '#f28e2b', '#b07aa1', '#76b7b2', '#edc948', '#9c755f'];
let graph;
let devices = new Set();
let model = null;
let lastSel = null;

export function init() {
  graph = new MeshGraph($('#mesh-graph'), {
    onSelect: select,
    perf: (ms) => {
      perf.frameMs.push(ms);
      if (perf.frameMs.length > 120) perf.frameMs.shift();
    },
  });
  graph.tip = tip;
  details.init(() => model, () => { graph.select(null); });
  const draw = throttle(coalesce(update), 250);
  for (const id of ['#filter-heard', '#filter-transport', '#filter-role', '#filter-device', '#mesh-colour']) $(id).addEventListener('change', draw);
  $('#partitions').addEventListener('click', () => { $('#mesh-colour').value = 'partition'; draw(); });
  on('data', () => { if (state.view === 'mesh') draw(); });
  on('selected', draw);
  on('testnet', draw);
  on('view', (v) => { if (v === 'mesh') { draw(); graph.resize(); } });
  setInterval(() => { if (state.view === 'mesh' && document.visibilityState === 'visible') draw(); }, 2000);
}

// Calls f at most every ms (the last call is not lost).
function throttle(f, ms) {
  let last = 0, timer = 0;
  return () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); f(); } else if (!timer) timer = setTimeout(() => { timer = 0; last = Date.now(); f(); }, wait);
  };
}

function select(id) {
  graph.select(id);
  details.open(id);
}

function colourFor(n, mode) {
  if (mode === 'partition') {
    const c = model.component.get(n.id);
    return c == null ? '#9aa3ae' : PART_COLOURS[c % PART_COLOURS.length];
  }
  if (mode === 'device') return colourOf(n.device ? n.device.class : '');
  return colourOf(n.cluster);
}

function update() {
  const t0 = performance.now();
  model = buildModel(state);
  const now = Date.now();
  const f = {
    heard: WINDOWS[$('#filter-heard').value] || Infinity,
    transport: $('#filter-transport').value,
    role: $('#filter-role').value,
    device: $('#filter-device').value,
  };
  const mode = $('#mesh-colour').value;
  const shown = [];
  let added = false;
  for (const n of model.nodes.values()) {
    const cls = n.device ? n.device.class : '';
    if (cls && !devices.has(cls)) {
      devices.add(cls);
      $('#filter-device').append(h('option', { value: cls }, words(cls)));
    }
    const age = n.heardAt ? now - n.heardAt : Infinity;
    const ok = (f.heard === Infinity || age <= f.heard) &&
      (f.transport === 'any' || n.heard === f.transport) &&
      (f.role === 'any' || n.role === f.role) &&
      (f.device === 'any' || cls === f.device);
    let r = rows.get(n.id);
    if (!r) { r = row(n.id); added = true; }
    fill(r, n, age, mode);
    if (r.tr.hidden === ok) r.tr.hidden = !ok;
    if (ok) shown.push(n);
  }
  for (const [id, r] of rows) if (!model.nodes.has(id)) { r.tr.remove(); rows.delete(id); }
  if (added || model.selId !== lastSel) {
    lastSel = model.selId;
    order();
  }

  const ids = new Set(shown.map((n) => n.id));
  const base = shown.length > 120 ? 3 : shown.length > 40 ? 4 : shown.length > 12 ? 5 : 7;
  const gnodes = shown.map((n) => ({
    id: n.id,
    label: n.name || shortId(n.id),
    colour: colourFor(n, mode),
    coordinator: n.role === 'coordinator',
    self: n.id === model.selId,
    dead: !n.alive || (n.stale && !n.isSource),
    r: base + 3 * Math.min(1, Math.max(0, n.score || 0)),
  }));
  const groups = [];
  for (const c of model.clusters.values()) {
    const members = [...c.members].filter((id) => ids.has(id));
    if (members.length) groups.push({ colour: colourOf(c.id), ids: members });
  }
  graph.setData(gnodes, model.edges, groups);

  const p = $('#partitions');
  p.hidden = !state.testnet;
  setText(p, `partitions: ${model.partitions}`);
  p.classList.toggle('warn', model.partitions > 1);
  p.title = model.partitions > 1 ? 'The testnet is split: click to colour nodes by partition' : 'Every live node reaches every other';
  setText($('#mesh-count'), `${shown.length} of ${model.nodes.size} nodes shown, ${model.edges.filter((e) => !e.radio).length} links`);
  details.refresh();

  const ms = performance.now() - t0;
  perf.updates++;
  perf.lastUpdateMs = ms;
  perf.maxUpdateMs = Math.max(perf.maxUpdateMs, ms);
}

function row(id) {
  const td = Array.from({ length: 9 }, () => h('td'));
  const dot = h('span', { class: 'dot' });
  const name = h('span');
  td[0].append(dot, name);
  td[0].className = 'mono';
  const tr = h('tr', { data: { peer: id }, tabindex: '0' }, ...td);
  tr.addEventListener('click', () => select(id));
  tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') select(id); });
  $('#mesh-nodes tbody').append(tr);
  const r = { tr, td, dot, name };
  rows.set(id, r);
  return r;
}

function fill(r, n, age, mode) {
  const d = n.device || {};
  setText(r.name, (n.name ? n.name + ' ' : '') + shortId(n.id) + (n.id === model.selId ? ' (this)' : ''));
  const c = colourFor(n, mode);
  if (r.dot.dataset.c !== c) { r.dot.dataset.c = c; r.dot.style.background = c; }
  setText(r.td[1], words(d.class));
  setText(r.td[2], d.battery_pct == null ? '—' : fmtPct(d.battery_pct) + (d.charging ? ' ⚡' : ''));
  setText(r.td[3], fmtTemp(d.temperature_c));
  setText(r.td[4], fmtScore(n.score));
  setText(r.td[5], n.cluster ? n.cluster.slice(0, 8) : '—');
  setText(r.td[6], n.role || '—');
  setText(r.td[7], n.heard);
  setText(r.td[8], age === Infinity ? '—' : fmtAge(age));
  r.tr.classList.toggle('down', !n.alive || (n.stale && !n.isSource));
}

// Rows in a stable order: this node first, then by testnet index or PeerId.
function order() {
  const key = (id) => {
    const n = model.nodes.get(id);
    if (id === model.selId) return ' ';
    return n && n.source ? '!' + String(n.source.index).padStart(6, '0') : id;
  };
  const sorted = [...rows.keys()].sort((a, b) => (key(a) < key(b) ? -1 : 1));
  const body = $('#mesh-nodes tbody');
  for (const id of sorted) body.append(rows.get(id).tr);
}

function tip(n) {
  const el = $('#mesh-tip');
  if (!n || !model) { el.hidden = true; return; }
  const m = model.nodes.get(n.id);
  if (!m) return;
  const d = m.device || {};
  setText(el, `${m.name ? m.name + ' · ' : ''}${shortId(m.id)}\n${words(d.class)} · battery ${d.battery_pct == null ? '—' : fmtPct(d.battery_pct)} · ${fmtTemp(d.temperature_c)}\nscore ${fmtScore(m.score)} · ${m.role || 'no cluster role'} · heard: ${m.heard}`);
  el.hidden = false;
  el.style.left = Math.min(n.x + 14, graph.w - 220) + 'px';
  el.style.top = n.y + 14 + 'px';
}
