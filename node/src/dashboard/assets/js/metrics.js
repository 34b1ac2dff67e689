// metrics.js: a small OpenMetrics text parser (only the families asked for) and the sums
// the Traffic view charts: bytes per transport and direction, messages by kind.

import { transportOf } from './model.js';

// parse(text, names) → [{name, labels: {k: v}, value}] for samples whose name is in names.
export function parse(text, names) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const brace = line.indexOf('{');
    const space = line.indexOf(' ');
    const end = brace >= 0 && (space < 0 || brace < space) ? brace : space;
    if (end < 0) continue;
    const name = line.slice(0, end);
    if (!names.has(name)) continue;
    const labels = {};
    let rest = line.slice(end);
    if (rest[0] === '{') {
      const close = rest.lastIndexOf('}');
      const re = /(\w+)="((?:[^"\\]|\\.)*)"/g;
      let m;
      const body = rest.slice(1, close);
      while ((m = re.exec(body))) labels[m[1]] = m[2].replace(/\\(.)/g, '$1');
      rest = rest.slice(close + 1);
    }
    const value = parseFloat(rest.trim().split(' ')[0]);
    if (isFinite(value)) out.push({ name, labels, value });
  }
  return out;
}

const BANDWIDTH = ['libp2p_bandwidth_bytes_total', 'libp2p_bandwidth_bytes'];
export const MESSAGE_COUNTERS = {
  gossip: 'libp2p_gossipsub_messages_total',
  'relay received': 'fogmesh_relay_received_total',
  'relay forwarded': 'fogmesh_relay_forwarded_total',
  'relay delivered': 'fogmesh_relay_delivered_total',
  telemetry: 'fogmesh_telemetry_accepted_total',
};
const NAMES = new Set([...BANDWIDTH, ...Object.values(MESSAGE_COUNTERS)]);

// The counters of one scrape: {bytes: {'internet in': n, ...} | null, msgs: {gossip: n, ...}}
export function counters(text) {
  const bytes = {};
  let haveBytes = false;
  const msgs = {};
  const byName = {};
  for (const s of parse(text, NAMES)) {
    if (BANDWIDTH.includes(s.name)) {
      haveBytes = true;
      const t = transportOfStack(s.labels.protocols || '');
      const dir = /^in/i.test(s.labels.direction || '') ? 'in' : 'out';
      bytes[t + ' ' + dir] = (bytes[t + ' ' + dir] || 0) + s.value;
    } else byName[s.name] = (byName[s.name] || 0) + s.value;
  }
  for (const [k, name] of Object.entries(MESSAGE_COUNTERS)) if (name in byName) msgs[k] = byName[name];
  return { bytes: haveBytes ? bytes : null, msgs };
}

// The label is a protocol stack without values: /ip4/tcp/p2p, /ip4/tcp/p2p/p2p-circuit/p2p,
// /memory, /unix (Bluetooth LE).
function transportOfStack(stack) {
  if (stack.includes('/unix')) return 'ble';
  return transportOf(stack);
}
