// views/messages.js: the Messages tab: inbox and sent lists (delivery state kept fresh by
// polling and by message events), and a form to send to one node or to everyone.

import { $, h, setText, clear, shortId, fmtTime, say, act } from '../util.js';
import { state, on, selected, coalesce } from '../store.js';
import { get, post } from '../api.js';
import { buildModel } from '../model.js';

const rows = { inbox: new Map(), sent: new Map() };
let timer = 0;
let peersSig = '';

export function init() {
  $('#msg-form').addEventListener('submit', send);
  on('view', (v) => { if (v === 'messages') load(); });
  on('selected', () => {
    for (const k of ['inbox', 'sent']) { rows[k].clear(); clear($('#msg-' + k)); }
    if (state.view === 'messages') load();
  });
  on('event', (e) => {
    if ((e.type === 'message_received' || e.type === 'message_delivered') && state.view === 'messages') load();
  });
  on('data', coalesce(() => { if (state.view === 'messages') peers(); }));
}

async function load() {
  clearTimeout(timer);
  const s = selected();
  try {
    const m = await get(s.base, '/v1/messages');
    if (s !== selected()) return;
    setText($('#msg-error'), '');
    fill('inbox', m.inbox || []);
    fill('sent', m.sent || []);
    setText($('#msg-held'), m.held ? `(${m.held} packets held for others)` : '');
  } catch (e) {
    setText($('#msg-error'), 'messages: ' + e.message);
  }
  if (state.view === 'messages') timer = setTimeout(load, document.visibilityState === 'visible' ? 2000 : 10000);
}

function fill(kind, list) {
  const ul = $('#msg-' + kind);
  const map = rows[kind];
  const seen = new Set();
  list.slice(0, 500).forEach((m, i) => {
    seen.add(m.id);
    let li = map.get(m.id);
    if (!li) {
      li = h('li', { data: { messageId: m.id } },
        h('div', { class: 'row small' }, h('span', { class: 'mono who' }), h('span', { class: 'badge st' }), h('span', { class: 'muted when' })),
        h('div', { class: 'text' }));
      map.set(m.id, li);
    }
    li.dataset.state = m.status;
    const [who, st, when] = li.firstChild.children;
    const peer = m.broadcast && kind === 'sent' ? 'everyone' : shortId(m.peer);
    setText(who, (kind === 'inbox' ? 'from ' : 'to ') + peer + (m.broadcast && kind === 'inbox' ? ' (broadcast)' : ''));
    who.title = m.peer || '';
    setText(st, m.status);
    st.className = 'badge st st-' + m.status;
    setText(when, fmtTime(m.created_ms) + (m.hops != null ? ` · ${m.hops} hops` : '') + (m.at_ms && kind === 'sent' ? ` · delivered ${fmtTime(m.at_ms)}` : ''));
    setText(li.lastChild, m.text);
    // Newest first, as the node lists them.
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
  for (const [id, li] of map) if (!seen.has(id)) { li.remove(); map.delete(id); }
  if (!list.length && !ul.children.length) ul.append(h('li', { class: 'muted empty' }, 'none yet'));
  else if (list.length) ul.querySelector('.empty')?.remove();
}

// Known peers as suggestions for the To field.
function peers() {
  const model = buildModel(state);
  const ids = [...model.nodes.keys()].filter((id) => id !== model.selId).sort();
  const sig = ids.join();
  if (sig === peersSig) return;
  peersSig = sig;
  const dl = $('#msg-peers');
  clear(dl);
  for (const id of ids.slice(0, 500)) {
    const n = model.nodes.get(id);
    dl.append(h('option', { value: id }, n.name || (n.device ? n.device.class : '')));
  }
}

function send(e) {
  e.preventDefault();
  const to = $('#msg-to').value.trim();
  const text = $('#msg-text').value;
  const out = $('#msg-result');
  if (!text.trim()) return say(out, 'nothing to send', false);
  act($('#msg-send'), out, 'sending…', async () => {
    const r = await post(selected().base, '/v1/messages', { to: to || null, text });
    $('#msg-text').value = '';
    load();
    return `${to ? 'sent' : 'broadcast'}: ${r.id}`;
  });
}
