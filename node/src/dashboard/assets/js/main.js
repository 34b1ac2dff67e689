// main.js: starts the dashboard: takes the token from the URL, finds out whether it shows
// one node or a testnet (GET /v1/testnet), wires the tabs to the URL fragment, says what
// each view needs polled, and opens the page's one event stream.

import { takeTokenFromHash } from './auth.js';
import { get } from './api.js';
import { state, source, on, emit, selected, setView } from './store.js';
import { setNeeds, start, kick } from './poll.js';
import { connect } from './sse.js';
import * as header from './views/header.js';
import * as node from './views/node.js';
import * as mesh from './views/mesh.js';
import * as clusters from './views/clusters.js';
import * as kv from './views/kv.js';
import * as messages from './views/messages.js';
import * as events from './views/events.js';
import * as traffic from './views/traffic.js';

const VIEWS = ['node', 'mesh', 'clusters', 'store', 'messages', 'events', 'traffic'];

// What each view needs kept fresh: of the selected node, and of every node (testnet).
const NEEDS = {
  node: { sel: ['status', 'device', 'cluster'] },
  mesh: { sel: ['telemetry'], all: ['status', 'peers', 'cluster'] },
  clusters: { sel: ['cluster', 'tasks'], all: ['status', 'cluster'] },
  messages: { sel: ['telemetry', 'peers'] },
};

function needs() {
  const want = new Map();
  const add = (i, kinds) => {
    if (!want.has(i)) want.set(i, new Set());
    for (const k of kinds) want.get(i).add(k);
  };
  add(state.selected, ['status']); // the header
  const n = NEEDS[state.view] || {};
  if (n.sel) add(state.selected, n.sel);
  if (n.all) for (const s of state.sources) add(s.index, n.all);
  return want;
}

function show(view) {
  if (!VIEWS.includes(view)) view = 'node';
  for (const v of VIEWS) {
    document.getElementById('view-' + v).hidden = v !== view;
    const b = document.querySelector(`nav [data-view="${v}"]`);
    b.classList.toggle('active', v === view);
    b.setAttribute('aria-current', v === view ? 'page' : 'false');
  }
  if (state.view !== view) setView(view);
  if (location.hash.replace('#', '') !== view) history.replaceState(null, '', '#' + view);
  kick();
}

// GET /v1/testnet answers only when `fogmesh testnet dashboard` serves the page.
async function discover() {
  try {
    const t = await get('', '/v1/testnet');
    if (t && Array.isArray(t.nodes) && t.nodes.length) return t;
  } catch { /* a single node */ }
  return null;
}

function applyTestnet(t) {
  state.radio = t.radio && Array.isArray(t.radio.links) ? t.radio.links : null;
  for (const n of t.nodes) {
    // A node that is down, or out of the server's reach (a NAT lab's), is not asked.
    const up = n.alive !== false && n.reachable !== false;
    let s = state.sources[n.index];
    if (!s) s = state.sources[n.index] = source(n.index, n.name || 'node-' + n.index, n.base, up);
    s.alive = up;
    s.down = n.alive === false ? 'down' : n.reachable === false ? 'out of reach' : '';
    if (n.peer_id) s.peerId = n.peer_id;
  }
  emit('testnet');
}

async function boot() {
  const rest = takeTokenFromHash();
  const t = await discover();
  if (t) {
    state.testnet = true;
    applyTestnet(t);
    const saved = Number(sessionStorage.getItem('fogmesh.node'));
    if (state.sources[saved]) state.selected = saved;
    // Alive flags and the radio graph change while the testnet runs.
    setInterval(async () => {
      if (document.visibilityState !== 'visible') return;
      try { applyTestnet(await get('', '/v1/testnet')); } catch { /* keep the last */ }
    }, 5000);
  } else {
    state.sources = [source(0, 'this node', '')];
  }
  document.body.classList.toggle('testnet', state.testnet);

  header.init();
  node.init();
  mesh.init();
  clusters.init();
  kv.init();
  messages.init();
  events.init();
  traffic.init();
  emit('testnet');

  for (const b of document.querySelectorAll('nav [data-view]')) b.addEventListener('click', () => show(b.dataset.view));
  addEventListener('hashchange', () => {
    const v = takeTokenFromHash();
    if (v && v !== state.view) show(v);
  });
  on('selected', (s) => { connect(s.base); kick(); });
  setNeeds(needs);
  start();
  connect(selected().base);
  show(rest.split('&')[0]);
}

boot();
