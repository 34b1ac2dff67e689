// views/node.js: "This node": what /v1/status, /v1/device and /v1/cluster say about the
// selected node, as cards readable at a glance (identity, lifecycle, power and device,
// network, reach, mesh membership, cluster, telemetry, clocks).

import { $, h, setText, shortId, fmtAge, fmtSecs, fmtBytes, fmtPct, fmtTemp, fmtScore, fmtDate, words, copyText, dlUpdate } from '../util.js';
import { on, selected, state, coalesce } from '../store.js';

const cards = new Map();
const lists = new Map();
let idBox = null;

export function init() {
  const draw = coalesce(render);
  on('data', (s) => { if (s === selected() && state.view === 'node') draw(); });
  on('selected', draw);
  on('view', (v) => { if (v === 'node') draw(); });
}

function card(key, title) {
  let c = cards.get(key);
  if (!c) {
    const dl = h('dl', { class: 'kv' });
    const el = h('div', { class: 'card panel', data: { card: key } }, h('h3', {}, title), dl);
    $('#node-cards').append(el);
    c = { el, dl };
    cards.set(key, c);
  }
  return c.dl;
}

// A list element that is rebuilt only when its text changes.
function list(key, items) {
  const text = items.join('\n');
  let l = lists.get(key);
  if (!l || l.text !== text) {
    const el = items.length ? h('ul', { class: 'plain mono small' }, ...items.map((t) => h('li', {}, t))) : h('span', { class: 'muted' }, 'none');
    l = { text, el };
    lists.set(key, l);
  }
  return l.el;
}

function peerId(id) {
  if (!idBox) {
    const code = h('code', { class: 'mono wrap' });
    const btn = h('button', { class: 'ghost small', type: 'button' }, 'copy');
    btn.addEventListener('click', () => copyText(code.textContent, btn));
    idBox = { el: h('span', { class: 'idline' }, code, btn), code };
  }
  setText(idBox.code, id);
  return idBox.el;
}

const yes = (b) => (b == null ? '—' : b ? 'yes' : 'no');
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + (typeof b === 'number' ? b : 0), 0);
const nonZero = (o) => Object.entries(o || {}).filter(([, v]) => v).map(([k, v]) => `${words(k)} ${v}`).join(', ') || 'none';

function render() {
  const s = selected();
  const st = s && s.data.status;
  setText($('#node-error'), s && s.err.status ? 'status: ' + s.err.status : '');
  if (!st) return;
  const dev = s.data.device;
  const sum_ = st.device;
  const now = Date.now();

  dlUpdate(card('id', 'Identity'), [
    ['Peer ID', peerId(st.peer_id)],
    ['Version', st.version],
    ['Uptime', fmtSecs(st.uptime_s)],
    ['Started', fmtDate(st.started_at_ms)],
    ['Data dir', st.data_dir],
  ]);

  dlUpdate(card('life', 'Lifecycle'), [
    ['Phase', words(st.phase)],
    ['Since', fmtAge(now - st.phase_since_ms)],
    ['Why', st.phase_reason || '—'],
    ['History', list('trans', (st.transitions || []).slice(-5).reverse().map((t) => `${new Date(t.at_ms).toLocaleTimeString()} ${t.from} → ${t.to}: ${t.reason}`))],
  ]);

  const mode = dev ? dev.decision.mode : sum_ && sum_.mode;
  const r = dev ? dev.readings : null;
  const lim = dev ? dev.decision.limits : null;
  dlUpdate(card('power', 'Power & device'), [
    ['Power mode', words(mode)],
    ['Why', dev ? dev.decision.reasons.join('; ') : '—'],
    ['Device', words(sum_ ? sum_.class : dev && dev.class) + (dev && dev.simulated ? ' (simulated)' : '')],
    ['Battery', sum_ && sum_.battery_pct != null ? fmtPct(sum_.battery_pct) + (sum_.charging ? ', charging' : ', not charging') : 'none (mains)'],
    ['Temperature', fmtTemp(sum_ && sum_.temperature_c)],
    ['Score', fmtScore(sum_ ? sum_.score : dev && dev.score)],
    ['CPU load', r ? fmtPct(r.cpu_load_pct) + ` of ${r.cores} cores` : '—'],
    ['Memory', r ? `${fmtBytes(r.mem_total_bytes - r.mem_available_bytes)} / ${fmtBytes(r.mem_total_bytes)}` : '—'],
    ['Limits', lim ? `CPU ${lim.cpu_pct}%, ${lim.max_tasks} tasks, ${fmtBytes(lim.memory_bytes)}, ${words(lim.transport)}, BLE ${words(lim.ble_duty)}` : '—'],
  ]);

  dlUpdate(card('net', 'Network'), [
    ['Listening on', list('listen', st.listen_addrs)],
    ['Peers', `${st.connected_peers} connected, ${st.known_peers} known`],
    ['Telemetry nodes', `${st.telemetry_nodes} (${st.stale_nodes} stale)`],
    ['mDNS', st.mdns ? 'on' : 'off'],
    ['Bootstrap', `${st.bootstrap.connected} of ${st.bootstrap.configured} connected`],
    ['API refused', String(st.control_api_refused || 0)],
  ]);

  const reach = st.reach || {};
  dlUpdate(card('reach', 'Reach'), [
    ['Reachability', reach.reachability || 'unknown'],
    ['Addresses', list('reach-addr', (reach.addresses || []).map((a) => `${a.addr}: ${a.verdict}${a.evidence ? ' (' + a.evidence + ')' : ''}${a.error ? ' — ' + a.error : ''}`))],
    ['Relay slots', list('relays', (reach.reservations || []).map((x) => `${shortId(x.relay)}: ${x.state}, ${x.renewals} renewals`))],
    ['Relays for others', reach.relay_service ? `yes: ${reach.relaying_reservations} slots, ${reach.relaying_circuits} circuits` : 'no'],
    ['Hole punches', `${reach.hole_punches_ok || 0} ok, ${reach.hole_punches_failed || 0} failed`],
  ]);

  const ad = st.admission || {};
  const hs = ad.handshakes || {};
  dlUpdate(card('mesh', 'Mesh membership'), [
    ['Mesh', ad.open ? 'open (anyone may connect)' : ad.mesh_name || '—'],
    ['Mesh id', ad.mesh_id || '—'],
    ['Roles', (ad.roles || []).join(', ') || '—'],
    ['Ticket expires', ad.ticket_expires_s ? fmtDate(ad.ticket_expires_s * 1000) : '—'],
    ['Admitted', `${hs.admitted_inbound || 0} in, ${hs.admitted_outbound || 0} out`],
    ['Refused', nonZero(hs.refused)],
    ['Revocations', `${ad.revocations || 0} held, rejected: ${nonZero(ad.revocations_rejected)}`],
  ]);

  const c = s.data.cluster;
  dlUpdate(card('cluster', 'Cluster'), c ? [
    ['State', c.state],
    ['Cluster', c.cluster || '—'],
    ['Term', String(c.term)],
    ['Coordinator', c.is_coordinator ? 'this node' : shortId(c.coordinator)],
    ['Why', c.why || '—'],
    ['Tasks', `${c.queued} queued, ${c.running} running here`],
  ] : [['State', s.err.cluster || '…']]);

  dlUpdate(card('tele', 'Telemetry'), [
    ['Interval', st.telemetry_interval_ms / 1000 + ' s'],
    ['Published', `${st.telemetry_published} (${st.telemetry_unsent || 0} to nobody)`],
    ['Accepted', String(st.telemetry_accepted)],
    ['Rejected', `${sum(st.telemetry_rejected)}: ${nonZero(st.telemetry_rejected)}`],
    ['Expired', String(st.telemetry_expired || 0)],
    ['Store errors', String(st.store_errors)],
  ]);

  const mc = st.mesh_clock || {};
  dlUpdate(card('clock', 'Clocks'), [
    ['Wall vs monotonic', `${st.clock_offset_ms || 0} ms`],
    ['Mesh time offset', `${mc.offset_ms || 0} ms from ${mc.peers || 0} peers${mc.clamped ? ' (clamped)' : ''}`],
    ['Furthest', list('furthest', (mc.furthest || []).map((p) => `${shortId(p.peer_id)}: ${p.offset_ms} ms`))],
  ]);
}
