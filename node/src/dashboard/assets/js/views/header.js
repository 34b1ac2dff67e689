// views/header.js: the top bar: which node (and, in a testnet, the node picker), its phase,
// how fresh its data is, control or read-only (with the token field), and enabling the
// write controls accordingly.

import { $, h, setText, shortId, fmtAge, clear } from '../util.js';
import { hasToken, setToken, forgetToken, onAuth, refusal } from '../auth.js';
import { state, on, select, selected } from '../store.js';

export function init() {
  const pick = $('#node-select');
  pick.addEventListener('change', () => select(Number(pick.value)));
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('#token-input').value.trim();
    if (t) setToken(t);
    $('#token-input').value = '';
  });
  onAuth(applyAuth);
  applyAuth();
  on('data', (s, kind) => { if (s === selected() && kind === 'status') render(); });
  on('selected', () => { render(); options(); });
  on('testnet', options);
  setInterval(render, 1000);
  render();
}

function applyAuth() {
  const ctl = hasToken();
  const badge = $('#auth-state');
  setText(badge, ctl ? 'control' : 'read-only');
  badge.classList.toggle('ok', ctl);
  document.body.classList.toggle('readonly', !ctl);
  const refused = refusal();
  $('#readonly-notice').hidden = ctl && !refused;
  setText($('#token-error'), refused ? refused + ' — paste the token again' : '');
  badge.title = ctl ? 'A token is held: writes are allowed. Click to forget it.' : 'No token: read-only';
  badge.onclick = ctl ? () => { if (confirm('Forget the control token for this tab?')) forgetToken(); } : null;
  for (const el of document.querySelectorAll('[data-write]')) el.disabled = !ctl || el.dataset.busy === '1';
}

function options() {
  const pick = $('#node-select');
  pick.hidden = !state.testnet;
  if (!state.testnet) return;
  if (pick.options.length !== state.sources.length) {
    clear(pick);
    for (const s of state.sources) pick.append(h('option', { value: s.index }, s.name));
  }
  state.sources.forEach((s, i) => {
    const o = pick.options[i];
    const label = s.name + (s.down ? ` (${s.down})` : '');
    setText(o, label);
  });
  pick.value = String(state.selected);
}

function render() {
  const s = selected();
  if (!s) return;
  const st = s.data.status;
  setText($('#head-node'), (state.testnet ? s.name + ' · ' : '') + (st ? shortId(st.peer_id) : '…'));
  $('#head-node').title = st ? st.peer_id : '';
  const phase = $('#head-phase');
  setText(phase, st ? st.phase.replace('_', ' ') : '…');
  phase.className = 'badge phase-' + (st ? st.phase : 'unknown');
  const age = s.lastOk ? Date.now() - s.lastOk : null;
  const stale = age == null || age > 8000;
  const el = $('#staleness');
  const err = Object.values(s.err).find(Boolean);
  setText(el, s.lastOk ? (stale ? 'stale: ' : 'updated ') + fmtAge(age) + (stale && err ? ' — ' + err : '') : err ? err : 'connecting…');
  el.classList.toggle('warn', stale && !!s.lastOk);
  el.classList.toggle('error', !s.lastOk && !!err);
}
