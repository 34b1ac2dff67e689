// sparkline.js: tiny SVG line charts: sparkline() for one series in node details, and
// chart() for several series over time (the Traffic view). Both scale to their box.

import { h } from './util.js';

// points: numbers (or null for gaps). Returns an <svg> polyline scaled to min..max
// (styled by the .spark rules of style.css).
export function sparkline(points, { min, max } = {}) {
  const vals = points.filter((v) => v != null);
  const svg = h('svg:svg', { viewBox: '0 0 100 30', preserveAspectRatio: 'none', class: 'spark', 'aria-hidden': 'true' });
  if (vals.length < 2) return svg;
  const lo = min ?? Math.min(...vals), hi = max ?? Math.max(...vals);
  const span = hi - lo || 1;
  const step = 100 / (points.length - 1);
  let seg = [];
  const flush = () => {
    if (seg.length > 1) svg.append(h('svg:polyline', { points: seg.join(' '), 'vector-effect': 'non-scaling-stroke' }));
    seg = [];
  };
  points.forEach((v, i) => {
    if (v == null) return flush();
    seg.push((i * step).toFixed(2) + ',' + (28 - ((v - lo) / span) * 26).toFixed(2));
  });
  flush();
  return svg;
}

// series: [{name, colour, dash, points: [[t, v], ...]}] over the window [t0, t1].
// Returns an <svg>; the y scale starts at 0 and ends at the largest value.
export function chart(series, t0, t1) {
  let top = 0;
  for (const s of series) for (const [, v] of s.points) if (v > top) top = v;
  top = niceTop(top);
  const svg = h('svg:svg', { viewBox: '0 0 300 100', preserveAspectRatio: 'none', class: 'chart-svg', 'aria-hidden': 'true' });
  for (const y of [25, 50, 75]) svg.append(h('svg:line', { x1: 0, x2: 300, y1: y, y2: y, class: 'grid', 'vector-effect': 'non-scaling-stroke' }));
  const span = t1 - t0 || 1;
  for (const s of series) {
    if (s.points.length < 2) continue;
    const pts = s.points.map(([t, v]) => ((t - t0) / span * 300).toFixed(1) + ',' + (100 - (v / top) * 98).toFixed(1));
    svg.append(h('svg:polyline', {
      points: pts.join(' '), fill: 'none', stroke: s.colour, 'stroke-width': 1.6,
      'stroke-dasharray': s.dash ? '4 3' : null, 'vector-effect': 'non-scaling-stroke',
    }));
  }
  return { svg, top };
}

function niceTop(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
