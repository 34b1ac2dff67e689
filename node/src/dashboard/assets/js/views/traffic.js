// views/traffic.js: the Traffic tab: scrapes the selected node's /metrics every 2.5 s (also
// while another tab is shown, so the charts have a past), turns counters into rates, and
// charts bytes in/out per transport and messages per second over the last 5 minutes.

import { $, h, setText, clear, fmtBytes } from '../util.js';
import { state, on, selected } from '../store.js';
import { get } from '../api.js';
import { counters } from '../metrics.js';
import { chart } from '../sparkline.js';

const EVERY = 2500;
const WINDOW = 5 * 60 * 1000;
const TRANSPORTS = new Set(['internet', 'ble', 'relayed']);
const MSG_COLOURS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#b07aa1'];
let prev = null; // last scrape {t, c}
let samples = []; // {t, bytes: {...rates}, msgs: {...rates}}
let note = '';
let timer = 0;

export function init() {
  on('selected', () => { prev = null; samples = []; render(); });
  on('view', (v) => { if (v === 'traffic') render(); });
  scrape();
}

async function scrape() {
  const s = selected();
  try {
    const text = await get(s.base, '/metrics', { timeout: 4000 });
    const t = Date.now();
    const c = counters(typeof text === 'string' ? text : '');
    if (prev && s === selected()) {
      const dt = (t - prev.t) / 1000;
      const rate = (a, b) => {
        const out = {};
        for (const k of Object.keys(a || {})) {
          const d = a[k] - ((b || {})[k] || 0);
          out[k] = d >= 0 ? d / dt : 0; // a reset counter (restarted node) counts as 0
        }
        return out;
      };
      samples.push({ t, bytes: c.bytes ? rate(c.bytes, prev.c.bytes) : null, msgs: rate(c.msgs, prev.c.msgs) });
      while (samples.length && samples[0].t < t - WINDOW) samples.shift();
    }
    prev = { t, c };
    note = c.bytes ? '' : 'This node does not count bytes per transport (no libp2p_bandwidth_bytes_total in its /metrics): only messages are charted.';
  } catch (e) {
    note = 'metrics: ' + e.message;
  }
  if (state.view === 'traffic') render();
  clearTimeout(timer);
  timer = setTimeout(scrape, document.visibilityState === 'visible' ? EVERY : EVERY * 4);
}

function render() {
  setText($('#traffic-note'), note || `Last ${Math.round(WINDOW / 60000)} minutes, one point every ${EVERY / 1000} s.`);
  const t1 = Date.now(), t0 = t1 - WINDOW;
  const styles = getComputedStyle(document.documentElement);
  const css = (k) => styles.getPropertyValue('--c-' + k).trim();
  const byteSeries = [];
  const keys = new Set();
  for (const s of samples) for (const k of Object.keys(s.bytes || {})) keys.add(k);
  for (const k of [...keys].sort()) {
    const [tr, dir] = k.split(' ');
    byteSeries.push({
      name: `${tr} ${dir}`, colour: css(TRANSPORTS.has(tr) ? tr : 'internet'), dash: dir === 'out',
      points: samples.filter((s) => s.bytes).map((s) => [s.t, s.bytes[k] || 0]), fmt: (v) => fmtBytes(v) + '/s',
    });
  }
  const msgKeys = new Set();
  for (const s of samples) for (const k of Object.keys(s.msgs)) msgKeys.add(k);
  const msgSeries = [...msgKeys].map((k, i) => ({
    name: k, colour: MSG_COLOURS[i % MSG_COLOURS.length],
    points: samples.map((s) => [s.t, s.msgs[k] || 0]), fmt: (v) => v.toFixed(v < 10 ? 1 : 0) + '/s',
  }));
  draw($('#traffic-bytes'), byteSeries, t0, t1, (v) => fmtBytes(v) + '/s');
  draw($('#traffic-msgs'), msgSeries, t0, t1, (v) => v + '/s');
}

function draw(box, series, t0, t1, axis) {
  clear(box);
  if (!series.length || samples.length < 2) {
    box.append(h('p', { class: 'muted small' }, samples.length < 2 ? 'collecting…' : 'nothing counted'));
    return;
  }
  const { svg, top } = chart(series, t0, t1);
  box.append(
    h('div', { class: 'chart-area' }, h('span', { class: 'axis axis-top' }, axis(top)), h('span', { class: 'axis axis-bottom' }, '0'), svg),
    h('div', { class: 'row small muted' }, h('span', {}, '−5 min'), h('span', { class: 'grow' }), h('span', {}, 'now')),
    h('ul', { class: 'chart-legend small' }, ...series.map((s) => {
      const last = s.points.length ? s.points[s.points.length - 1][1] : 0;
      const sw = h('span', { class: 'swatch' + (s.dash ? ' dash' : '') });
      sw.style.borderColor = s.colour;
      return h('li', {}, sw, s.name + ': ', h('strong', {}, s.fmt(last)));
    })));
}
