// auth.js: the control token. It arrives once in the URL fragment (#token=HEX), is kept in
// sessionStorage and removed from the address bar; without it the page is read-only.

const KEY = 'fogmesh.token';
const listeners = new Set();
let refused = '';
let memory = ''; // where the token lives when sessionStorage cannot be used

// Reads #token=... or a one-time #code=... (possibly next to a view name: #mesh&token=...),
// keeps the token (trading a code for it), and rewrites the address without either.
// Returns what is left of the fragment.
export function takeTokenFromHash() {
  const parts = location.hash.replace(/^#/, '').split('&').filter(Boolean);
  const rest = [];
  for (const p of parts) {
    if (p.startsWith('token=')) {
      const t = decodeURIComponent(p.slice(6)).trim();
      if (t) setToken(t);
    } else if (p.startsWith('code=')) {
      const c = decodeURIComponent(p.slice(5)).trim();
      if (c) redeem(c);
    } else rest.push(p);
  }
  if (rest.length !== parts.length) {
    history.replaceState(null, '', location.pathname + location.search + (rest.length ? '#' + rest.join('&') : ''));
  }
  return rest.join('&');
}

// Trades a one-time sign-in code (what `fogmesh dashboard --open` puts in the address, so
// the token never sits on a browser's command line) for the token.
async function redeem(code) {
  try {
    const resp = await fetch(new URL('../v1/signin', location.href), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ code }),
      cache: 'no-store',
      credentials: 'same-origin',
    });
    const body = await resp.json().catch(() => ({}));
    if (resp.ok && typeof body.token === 'string') setToken(body.token);
    else tokenRefused(body.error || `sign-in code refused (${resp.status})`);
  } catch {
    tokenRefused('could not trade the sign-in code: is the node running?');
  }
}

function store(t) {
  try { sessionStorage.setItem(KEY, t); } catch { memory = t; }
}

export function token() {
  try { return sessionStorage.getItem(KEY) || memory; } catch { return memory; }
}

export const hasToken = () => !!token();

export function setToken(t) {
  store(t.trim());
  refused = '';
  changed();
}

export function forgetToken() {
  try { sessionStorage.removeItem(KEY); } catch { /* private mode */ }
  memory = '';
  changed();
}

// A write answered 401/403: the token held is wrong or missing.
export function tokenRefused(text) {
  refused = text;
  changed();
}
export const refusal = () => refused;

export function onAuth(f) { listeners.add(f); }
function changed() { for (const f of listeners) f(hasToken()); }
