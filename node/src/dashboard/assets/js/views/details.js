// views/details.js: the node details panel of the Mesh tab: a node's telemetry, score,
// cluster, when it was last heard, sparklines from /v1/telemetry/{peer}/history, and a form
// to send it a direct message.

import { $, h, setText, clear, shortId, fmtAge, fmtPct, fmtTemp, fmtScore, fmtBytes, fmtSecs, words, copyText, dlUpdate, say, act } from '../util.js';
import { get, post } from '../api.js';
import { selected, state } from '../store.js';
import { sparkline } from '../sparkline.js';

let current = null;
let getModel = () => null;
let onClose = () => {};
let history = null; // {peer_id, samples} of the current node, or an error text
let timer = 0;

export function init(model, closed) {
  getModel = model;
  onClose = closed;
  $('#details-close').addEventListener('click', close);
  $('#details-copy').addEventListener('click', (e) => copyText(current || '', e.target));
  $('#details-message').addEventListener('submit', send);
}

export function open(id) {
  const aside = $('#node-details');
  if (current !== id) {
    history = null;
    clear($('#details-sparks'));
    say($('#details-message-result'), '');
  }
  current = id;
  aside.dataset.peer = id;
  aside.hidden = false;
  refresh();
  loadHistory();
}

function close() {
  current = null;
  clearTimeout(timer);
  $('#node-details').hidden = true;
  delete $('#node-details').dataset.peer;
  onClose();
}

async function loadHistory() {
  clearTimeout(timer);
  const id = current;
  if (!id) return;
  try {
    history = await get(selected().base, `/v1/telemetry/${encodeURIComponent(id)}/history`);
  } catch (e) {
    history = e.status === 404 ? 'no history of this node here yet' : 'history: ' + e.message;
  }
  if (id !== current) return;
  sparks();
  // Follows while open; asks only while the Mesh tab is in view.
  timer = setTimeout(function again() {
    if (state.view === 'mesh' && document.visibilityState === 'visible') loadHistory();
    else timer = setTimeout(again, 5000);
  }, 5000);
}

export function refresh() {
  const model = getModel();
  if (!current || !model) return;
  const n = model.nodes.get(current);
  setText($('#details-title'), n && n.name ? n.name : shortId(current));
  setText($('#details-id'), current);
  if (!n) {
    dlUpdate($('#details-fields'), [['Status', 'no longer known']]);
    return;
  }
  const d = n.device || {};
  const t = n.tele || {};
  dlUpdate($('#details-fields'), [
    ['Device', words(d.class) + (d.mode ? ', ' + words(d.mode) : '')],
    ['Battery', d.battery_pct == null ? '—' : fmtPct(d.battery_pct) + (d.charging ? ', charging' : '')],
    ['Temperature', fmtTemp(d.temperature_c)],
    ['Score', fmtScore(n.score)],
    ['CPU load', fmtPct(t.cpu_load_pct)],
    ['Memory', t.mem_total_bytes ? `${fmtBytes(t.mem_used_bytes)} / ${fmtBytes(t.mem_total_bytes)}` : '—'],
    ['Node RSS', fmtBytes(t.rss_bytes)],
    ['Cluster', n.cluster ? `${n.cluster.slice(0, 8)} (${n.role || 'member'})` : 'none'],
    ['Heard', n.heard],
    ['Last heard', n.heardAt ? fmtAge(Date.now() - n.heardAt) : '—'],
    ['Version', t.version || n.version || '—'],
    ['Uptime', t.uptime_s != null ? fmtSecs(t.uptime_s) : '—'],
    ['Peers', t.peer_count != null ? String(t.peer_count) : '—'],
    ['Transport', words(d.transport)],
  ]);
}

const SERIES = [
  ['battery_pct', 'Battery', fmtPct, { min: 0, max: 100 }],
  ['temperature_c', 'Temperature', fmtTemp, {}],
  ['cpu_load_pct', 'CPU', fmtPct, { min: 0, max: 100 }],
  ['score', 'Score', fmtScore, { min: 0, max: 1 }],
];

function sparks() {
  const box = $('#details-sparks');
  clear(box);
  if (typeof history === 'string' || !history) {
    box.append(h('p', { class: 'muted small' }, history || ''));
    return;
  }
  const samples = (history.samples || []).slice(-60);
  for (const [key, label, fmt, range] of SERIES) {
    const pts = samples.map((s) => s[key]);
    const last = [...pts].reverse().find((v) => v != null);
    box.append(h('div', { class: 'spark-row' },
      h('span', { class: 'small muted' }, label),
      sparkline(pts, range),
      h('span', { class: 'small' }, last == null ? '—' : fmt(last))));
  }
  const span = samples.length > 1 ? samples[samples.length - 1].timestamp_ms - samples[0].timestamp_ms : 0;
  box.append(h('p', { class: 'muted small' }, samples.length ? `${samples.length} samples over ${fmtSecs(span / 1000)}` : 'no samples yet'));
}

function send(e) {
  e.preventDefault();
  const text = $('#details-message-text').value;
  const out = $('#details-message-result');
  if (!text.trim()) return say(out, 'nothing to send', false);
  act($('#details-message-send'), out, 'sending…', async () => {
    const r = await post(selected().base, '/v1/messages', { to: current, text });
    $('#details-message-text').value = '';
    return 'sent: ' + r.id;
  });
}
