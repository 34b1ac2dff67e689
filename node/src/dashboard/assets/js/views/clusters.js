// views/clusters.js: the Clusters & tasks tab: every cluster known (this node's in full:
// term, coordinator and why, members with score, limits and load; others as announced),
// the tasks table (cancel, result download) and the submit form.

import { $, h, setText, clear, shortId, fmtAge, fmtPct, fmtScore, fmtBytes, colourOf, say, utf8Hex, hex, act } from '../util.js';
import { state, on, selected, coalesce } from '../store.js';
import { request, post } from '../api.js';
import { buildModel } from '../model.js';
import { kick } from '../poll.js';

const boxes = new Map(); // cluster id -> {el, ...}
const taskRows = new Map();
const ORDER = ['running', 'assigned', 'queued', 'submitted', 'failed', 'done', 'cancelled'];
const FINAL = new Set(['done', 'failed', 'cancelled']);
let taskOrder = '';
let boxOrder = '';

export function init() {
  const draw = coalesce(render);
  on('data', (s, k) => { if (state.view === 'clusters' && (k === 'cluster' || k === 'tasks')) draw(); });
  on('selected', draw);
  on('view', (v) => { if (v === 'clusters') draw(); });
  on('event', (e) => { if (e.type === 'task' || e.type === 'cluster') kick(selected(), e.type === 'task' ? 'tasks' : 'cluster'); });
  $('#task-form').addEventListener('submit', submit);
}

function render() {
  const s = selected();
  const own = s.data.cluster;
  const self = $('#cluster-self');
  clear(self);
  if (own) {
    self.append(h('strong', {}, own.state === 'member' ? (own.is_coordinator ? 'This node coordinates its cluster' : 'This node is a member') : own.state === 'joining' ? 'Joining a cluster' : 'Not in a cluster'),
      h('span', { class: 'muted' }, ' — ' + (own.why || '')));
  } else self.append(h('span', { class: s.err.cluster ? 'error' : 'muted' }, s.err.cluster || 'loading…'));

  // In a testnet the other nodes' answers give the other clusters in full too.
  const model = buildModel(state);
  const seen = new Set();
  const list = [...model.clusters.values()].sort((a, b) => (a.id === (own && own.cluster) ? -1 : b.id === (own && own.cluster) ? 1 : a.id < b.id ? -1 : 1));
  const name = (id) => {
    const n = model.nodes.get(id);
    return shortId(id) + (n && n.name ? ` (${n.name})` : '');
  };
  for (const c of list) {
    seen.add(c.id);
    clusterBox(c, own, name);
  }
  for (const [id, b] of boxes) if (!seen.has(id)) { b.el.remove(); boxes.delete(id); }
  const order = list.map((c) => c.id).join();
  if (order !== boxOrder) {
    boxOrder = order;
    for (const c of list) $('#clusters').append(boxes.get(c.id).el);
  }
  tasks(s);
}

function clusterBox(c, own, name) {
  let b = boxes.get(c.id);
  if (!b) {
    const title = h('h3', {}, h('span', { class: 'dot' }), 'Cluster ' + c.id.slice(0, 8));
    title.firstChild.style.background = colourOf(c.id);
    const coord = h('span', { class: 'coordinator mono' });
    const meta = h('p', { class: 'small' });
    const why = h('p', { class: 'muted small' });
    const body = h('tbody');
    const table = h('div', { class: 'table-wrap' }, h('table', { class: 'members' },
      h('thead', {}, h('tr', {}, ...['Member', 'Score', 'Battery', 'Limits', 'Load'].map((t) => h('th', {}, t)))), body));
    const el = h('div', { class: 'cluster card panel', data: { cluster: c.id } }, title, h('p', {}, 'Coordinator: ', coord), meta, why, table);
    b = { el, coord, meta, why, body, table };
    boxes.set(c.id, b);
  }
  const v = c.view;
  const coordinator = (v && v.coordinator) || c.coordinator;
  if (coordinator) b.coord.dataset.peer = coordinator;
  setText(b.coord, coordinator ? name(coordinator) : 'none yet');
  b.coord.title = coordinator || '';
  const term = v ? v.term : c.known ? c.known.term : '?';
  const size = v ? v.members.length : c.known ? c.known.members : c.members.size;
  const queued = v ? v.queued : c.known ? c.known.queued : 0;
  setText(b.meta, `term ${term} · ${size} members · ${queued} queued` + (c.known && !v ? ` · announced ${fmtAge(c.known.age_ms)}` : '') + (own && own.cluster === c.id ? ' · this node\'s cluster' : ''));
  setText(b.why, v && v.why ? v.why : '');
  b.table.hidden = !v;
  if (!v) return;
  const rows = v.members.map((m) => h('tr', { data: { peer: m.peer_id } },
    h('td', { class: 'mono', title: m.peer_id }, name(m.peer_id) + (m.coordinator ? ' ★' : '') + (m.voter ? '' : ' (non-voter)')),
    h('td', {}, fmtScore(m.score)),
    h('td', {}, m.battery_pct == null ? '—' : fmtPct(m.battery_pct) + (m.charging ? ' ⚡' : '')),
    h('td', {}, `${m.cores} cores · ${m.cpu_pct}% · ${fmtBytes(m.memory_mb * 1048576)}`),
    h('td', {}, `${m.tasks}/${m.max_tasks} tasks · ${m.cpu_millicores / 1000} cores · ${fmtBytes(m.load_memory_mb * 1048576)}`)));
  const sig = JSON.stringify(v.members) + name(v.members[0] ? v.members[0].peer_id : '');
  if (b.sig !== sig) { b.sig = sig; clear(b.body); b.body.append(...rows); }
}

function tasks(s) {
  setText($('#tasks-error'), s.err.tasks ? 'tasks: ' + s.err.tasks : '');
  const list = Array.isArray(s.data.tasks) ? s.data.tasks.slice() : [];
  list.sort((a, b) => ORDER.indexOf(a.state) - ORDER.indexOf(b.state) || b.submitted_at_ms - a.submitted_at_ms);
  const body = $('#tasks tbody');
  const seen = new Set();
  for (const t of list) {
    seen.add(t.id);
    let r = taskRows.get(t.id);
    if (!r) r = taskRow(t.id);
    r.tr.dataset.state = t.state;
    setText(r.td[1], t.state);
    setText(r.td[2], t.priority);
    setText(r.td[3], t.cluster ? t.cluster.slice(0, 8) : '—');
    setText(r.td[4], t.node ? shortId(t.node) : '—');
    r.td[4].title = t.node || '';
    setText(r.td[5], String(t.attempts));
    setText(r.td[6], fmtAge(Date.now() - t.submitted_at_ms) + (t.heard_ago_ms != null ? ` (heard ${fmtAge(t.heard_ago_ms)})` : ''));
    setText(r.td[7], t.detail || '');
    r.cancel.hidden = FINAL.has(t.state) || !t.submitted_here;
    r.result.hidden = t.state !== 'done';
  }
  const orderNow = list.map((t) => t.id).join();
  if (orderNow !== taskOrder) {
    taskOrder = orderNow;
    for (const t of list) body.append(taskRows.get(t.id).tr);
  }
  for (const [id, r] of taskRows) if (!seen.has(id)) { r.tr.remove(); taskRows.delete(id); }
  if (!list.length && !body.querySelector('.empty')) body.append(h('tr', { class: 'empty' }, h('td', { colspan: 9, class: 'muted' }, 'no tasks')));
  if (list.length) body.querySelector('.empty')?.remove();
}

function taskRow(id) {
  const td = Array.from({ length: 9 }, () => h('td'));
  td[0].append(h('code', { title: id }, id.slice(0, 12)));
  const msg = h('span', { class: 'small' });
  const cancel = h('button', { type: 'button', class: 'ghost small danger', 'data-write': '' }, 'cancel');
  const result = h('button', { type: 'button', class: 'ghost small' }, 'result');
  cancel.disabled = document.body.classList.contains('readonly');
  cancel.addEventListener('click', () => cancelTask(id, cancel, msg));
  result.addEventListener('click', () => download(id, result, msg));
  td[8].append(cancel, result, msg);
  const tr = h('tr', { data: { task: id } }, ...td);
  const r = { tr, td, cancel, result };
  taskRows.set(id, r);
  return r;
}

function cancelTask(id, btn, msg) {
  act(btn, msg, '', async () => {
    const r = await request(selected().base, '/v1/tasks/' + encodeURIComponent(id), { method: 'DELETE' });
    kick(selected(), 'tasks');
    return (r && r.status) || 'cancelled';
  });
}

async function download(id, btn, msg) {
  btn.disabled = true;
  try {
    const resp = await request(selected().base, `/v1/tasks/${encodeURIComponent(id)}/result`, { raw: true, timeout: 30000 });
    const blob = await resp.blob();
    const a = h('a', { href: URL.createObjectURL(blob), download: `task-${id.slice(0, 16)}.out` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    say(msg, `${blob.size} bytes`, true);
  } catch (e) {
    say(msg, e.message, false);
  } finally {
    btn.disabled = false;
  }
}

function submit(e) {
  e.preventDefault();
  const out = $('#task-result');
  const file = $('#task-module').files[0];
  if (!file) return say(out, 'choose a module (.wasm or .wat) first', false);
  act($('#task-submit'), out, 'submitting…', async () => {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const body = {
      priority: $('#task-priority').value,
      cpu_millicores: Math.round(Number($('#task-cpu').value)),
      memory_mb: Math.round(Number($('#task-memory').value)),
      duration_ms: Math.round(Number($('#task-duration').value) * 1000),
      gpu: $('#task-gpu').checked,
    };
    if (/\.wat$/i.test(file.name)) body.module_wat = new TextDecoder().decode(bytes);
    else body.module_hex = hex(bytes);
    const inFile = $('#task-input-file').files[0];
    const text = $('#task-input').value;
    if (inFile) body.input_hex = hex(new Uint8Array(await inFile.arrayBuffer()));
    else if (text) body.input_hex = utf8Hex(text);
    for (const k of ['cpu_millicores', 'memory_mb', 'duration_ms']) {
      if (!(body[k] > 0)) throw new Error(k.replace('_', ' ') + ' must be a positive number');
    }
    const r = await post(selected().base, '/v1/tasks', body);
    out.dataset.task = r.id;
    kick(selected(), 'tasks');
    return 'submitted: ' + r.id;
  });
}

