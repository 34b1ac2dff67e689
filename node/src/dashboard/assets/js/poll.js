// poll.js: keeps node data fresh. Every tick it asks each node for what the visible view
// needs (a few nodes at a time, so a slow node never holds up the others), at most every
// ~2 s per node (less often for the other nodes of a big testnet), and five times slower
// while the tab is hidden.

import { get } from './api.js';
import { state, emit } from './store.js';

const PATHS = {
  status: '/v1/status', peers: '/v1/peers', telemetry: '/v1/telemetry',
  cluster: '/v1/cluster', device: '/v1/device', tasks: '/v1/tasks',
};
const PARALLEL = 4;
const queue = [];
let running = 0;
let needs = () => new Map();
let timer = 0;

// f() → Map(source index → Set of kinds wanted)
export function setNeeds(f) { needs = f; }

function period(i, kind) {
  // The other nodes of a big testnet come round less often than the selected one, their
  // links more often than the rest (a 200-node testnet: ~50 requests a second).
  const n = state.sources.length;
  const base = i === state.selected ? 2000 : Math.max(2000, n * 40) * (kind === 'peers' ? 1 : 2);
  return document.visibilityState === 'hidden' ? base * 5 : base;
}

function tick() {
  const now = Date.now();
  for (const [i, kinds] of needs()) {
    const s = state.sources[i];
    if (!s || s.queued || !s.alive) continue;
    const due = [...kinds].filter((k) => now - (s.asked[k] || 0) >= period(i, k));
    if (!due.length) continue;
    s.queued = true;
    queue.push([s, due]);
  }
  pump();
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const [s, kinds] = queue.shift();
    running++;
    fetchKinds(s, kinds).finally(() => {
      s.queued = false;
      running--;
      pump();
    });
  }
}

export async function fetchKinds(s, kinds) {
  await Promise.all(kinds.map(async (k) => {
    s.asked[k] = Date.now();
    try {
      s.data[k] = await get(s.base, PATHS[k]);
      s.at[k] = Date.now();
      s.err[k] = null;
      s.lastOk = s.at[k];
    } catch (e) {
      s.err[k] = e.message;
    }
    emit('data', s, k);
  }));
}

// Ask now for what the visible view needs (after a view or node change, or a write).
export function kick(s, kind) {
  if (s && kind) s.asked[kind] = 0;
  clearTimeout(timer);
  timer = setTimeout(loop, 0);
}

function loop() {
  tick();
  clearTimeout(timer);
  timer = setTimeout(loop, 500);
}

export function start() {
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') kick();
  });
  loop();
}
