// views/kv.js: the Store tab: list a namespace's keys by prefix (paged), show one key's
// value and overwritten versions, put and delete, and watch a prefix live from the page's
// event stream (kv_changed events, filtered here).

import { $, h, setText, clear, shortId, fmtDate, say, dlUpdate, act } from '../util.js';
import { state, on, selected } from '../store.js';
import { get, request } from '../api.js';

const PAGE = 200;
const MAX_ROWS = 2000;
const rows = new Map(); // key -> li
let listed = { ns: '', prefix: '' };
let last = null; // last key listed, for paging

// The CLI's escaping: everything but letters, digits, - _ ~ as %XX (so `/` and `.` too).
const esc = (t) => Array.from(new TextEncoder().encode(t), (b) =>
  (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b === 45 || b === 95 || b === 126
    ? String.fromCharCode(b) : '%' + b.toString(16).toUpperCase().padStart(2, '0')).join('');
const keyPath = (ns, key) => `/v1/kv/${esc(ns)}/${esc(key)}`;

export function init() {
  $('#kv-query').addEventListener('submit', (e) => { e.preventDefault(); list(false); });
  $('#kv-more').addEventListener('click', () => list(true));
  $('#kv-edit').addEventListener('submit', (e) => { e.preventDefault(); write(false); });
  $('#kv-delete').addEventListener('click', () => write(true));
  on('view', (v) => { if (v === 'store' && !listed.ns) list(false); });
  on('selected', () => { if (state.view === 'store') list(false); else listed.ns = ''; });
  on('event', live);
}

const ns = () => $('#kv-namespace').value.trim() || 'default';

async function list(more) {
  const out = $('#kv-result');
  const n = ns(), prefix = $('#kv-prefix').value;
  if (!more) {
    listed = { ns: n, prefix };
    last = null;
    rows.clear();
    clear($('#kv-list'));
  }
  const q = new URLSearchParams({ prefix, limit: String(PAGE) });
  if ($('#kv-deleted').checked) q.set('deleted', 'true');
  if (more && last != null) q.set('after', last);
  try {
    const keys = await get(selected().base, `/v1/kv/${esc(n)}?${q}`);
    for (const k of keys) upsert(k.key, k);
    last = keys.length ? keys[keys.length - 1].key : last;
    $('#kv-more').hidden = keys.length < PAGE || rows.size >= MAX_ROWS;
    count();
    if (!more) say(out, '');
  } catch (e) {
    say(out, 'list: ' + e.message, false);
  }
}

function count() {
  const empty = $('#kv-list .empty');
  if (rows.size && empty) empty.remove();
  if (!rows.size && !empty) $('#kv-list').append(h('li', { class: 'muted empty' }, 'no keys here'));
  setText($('#kv-count'), `${rows.size} key${rows.size === 1 ? '' : 's'} in ${listed.ns}${listed.prefix ? ' under ' + listed.prefix : ''}`);
}

// A row for a key; v is a KeyView or a kv_changed event.
function upsert(key, v) {
  let li = rows.get(key);
  if (!li) {
    if (rows.size >= MAX_ROWS) return;
    li = h('li', { data: { key }, tabindex: '0' }, h('code', { class: 'k' }), h('span', { class: 'v muted' }));
    li.addEventListener('click', () => show(key));
    li.addEventListener('keydown', (e) => { if (e.key === 'Enter') show(key); });
    rows.set(key, li);
    insertSorted(li, key);
  }
  setText(li.firstChild, key);
  const value = v.deleted ? '(deleted)' : v.value != null ? v.value : v.value_hex != null ? '0x' + v.value_hex : `(${v.value_len} bytes)`;
  setText(li.lastChild, value.length > 80 ? value.slice(0, 80) + '…' : value);
  li.classList.toggle('deleted', !!v.deleted);
  return li;
}

function insertSorted(li, key) {
  const ul = $('#kv-list');
  for (const other of ul.children) {
    if (other.dataset.key == null || other.dataset.key > key) return ul.insertBefore(li, other);
  }
  ul.append(li);
}

async function show(key) {
  for (const li of rows.values()) li.classList.toggle('sel', li.dataset.key === key);
  const box = $('#kv-detail');
  $('#kv-key').value = key;
  try {
    const k = await get(selected().base, keyPath(listed.ns || ns(), key));
    clear(box);
    const dl = h('dl', { class: 'kv' });
    box.append(h('h4', { class: 'wrap' }, h('code', {}, key)), dl);
    const text = k.deleted ? null : k.value;
    dlUpdate(dl, [
      ['Value', k.deleted ? '(deleted)' : text != null ? h('pre', { class: 'value' }, text) : h('pre', { class: 'value mono' }, 'hex ' + k.value_hex)],
      ['Version', k.hlc],
      ['Written', fmtDate(k.written_ms)],
      ['Author', h('span', { class: 'mono', title: k.author }, shortId(k.author))],
    ]);
    if (text != null) $('#kv-value').value = text;
    if (k.overwritten && k.overwritten.length) {
      box.append(h('h4', {}, `Overwritten versions (${k.overwritten.length})`),
        h('ul', { class: 'plain small' }, ...k.overwritten.map((o) => h('li', {},
          h('code', {}, o.hlc), ' ', shortId(o.author), ': ',
          o.deleted ? '(deleted)' : o.value != null ? o.value : 'hex ' + o.value_hex))));
    }
  } catch (e) {
    clear(box);
    box.append(h('p', { class: 'error' }, key + ': ' + e.message));
  }
}

function write(del) {
  const key = $('#kv-key').value;
  const value = $('#kv-value').value;
  const out = $('#kv-result');
  if (!key) return say(out, 'give a key', false);
  if (key === '.' || key === '..') return say(out, 'a key cannot be `.` or `..`', false);
  act(del ? $('#kv-delete') : $('#kv-put'), out, del ? 'deleting…' : 'writing…', async () => {
    const r = await request(selected().base, keyPath(ns(), key), del
      ? { method: 'DELETE' } : { method: 'PUT', body: new TextEncoder().encode(value) });
    if (listed.ns === ns() && key.startsWith(listed.prefix)) {
      if (del && !$('#kv-deleted').checked) drop(key);
      else upsert(key, { deleted: del, value: del ? null : value });
      count();
    }
    return `${del ? 'deleted' : 'stored'} ${ns()}/${key} at ${r.hlc}`;
  });
}

function drop(key) {
  const li = rows.get(key);
  if (li) { li.remove(); rows.delete(key); }
}

// kv_changed from the page's one event stream, when "watch live" is on.
function live(e) {
  if (e.type !== 'kv_changed' || !$('#kv-watch').checked) return;
  if (e.namespace !== listed.ns || !String(e.key).startsWith(listed.prefix)) return;
  if (e.deleted && !$('#kv-deleted').checked) drop(e.key);
  else {
    const li = upsert(e.key, e);
    if (li) { li.classList.remove('flash'); void li.offsetWidth; li.classList.add('flash'); }
  }
  count();
}
