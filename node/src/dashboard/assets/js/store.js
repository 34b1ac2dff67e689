// store.js: the page's state: the nodes it shows (this one, or every node of a testnet),
// what each last answered and when, which node the tabs act on, the visible view; and a
// tiny publish/subscribe so views hear about changes.

export const state = {
  testnet: false,
  radio: null, // testnet radio links: [[i, j], ...] by node index
  sources: [], // see source()
  selected: 0,
  view: '',
};

// One node the page talks to. base: '' (single node) or '/node/3' (testnet).
export function source(index, name, base, alive = true) {
  return { index, name, base, alive, data: {}, at: {}, err: {}, asked: {}, lastOk: 0, queued: false };
}

export const selected = () => state.sources[state.selected] || state.sources[0];

const subs = new Map();
export function on(topic, f) {
  if (!subs.has(topic)) subs.set(topic, new Set());
  subs.get(topic).add(f);
}
export function emit(topic, ...args) {
  for (const f of subs.get(topic) || []) {
    try { f(...args); } catch (e) { console.error(topic, e); }
  }
}

export function select(i) {
  if (i === state.selected || !state.sources[i]) return;
  state.selected = i;
  try { sessionStorage.setItem('fogmesh.node', String(i)); } catch { /* ignore */ }
  emit('selected', selected());
}

export function setView(v) {
  state.view = v;
  emit('view', v);
}

// Calls f at most once per animation frame however often it is asked (render coalescing).
export function coalesce(f) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; f(); });
  };
}
