// graph.js: the mesh graph on a canvas (its layout is layout.js): clusters as hulls behind
// their members, links coloured by transport with width and opacity by RTT, coordinators
// ringed, hover highlight and click to select. Redraws only when something changed.

import { Layout, hash } from './layout.js';

const FRAME_BUDGET = 6; // ms of layout per frame at most

export class MeshGraph {
  constructor(canvas, { onSelect, perf }) {
    this.c = canvas;
    this.ctx = canvas.getContext('2d');
    this.top = document.createElement('canvas');
    this.top.className = 'overlay';
    canvas.after(this.top);
    this.onSelect = onSelect;
    this.perf = perf;
    this.layout = new Layout();
    this.nodes = [];
    this.edges = [];
    this.groups = [];
    this.hover = null;
    this.selected = null;
    this.view = { s: 1, x: 0, y: 0 };
    this.readColours();
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => { this.readColours(); this.redraw(true); });
    new ResizeObserver(() => this.resize()).observe(canvas);
    canvas.addEventListener('mousemove', (e) => this.pointer(e));
    canvas.addEventListener('mouseleave', () => { this.hover = null; this.redraw(); this.tip(null); });
    canvas.addEventListener('click', (e) => {
      const n = this.hit(e);
      if (n) this.onSelect(n.id);
    });
  }

  readColours() {
    const cs = getComputedStyle(document.documentElement);
    const v = (n) => cs.getPropertyValue(n).trim();
    this.col = {
      internet: v('--c-internet'), ble: v('--c-ble'), relayed: v('--c-relayed'),
      text: v('--text'), muted: v('--muted'), bg: v('--panel'), sel: v('--accent'),
    };
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.c.clientWidth, h = this.c.clientHeight;
    if (!w || !h) return;
    this.top.width = this.c.width = Math.round(w * dpr);
    this.top.height = this.c.height = Math.round(h * dpr);
    this.top.style.width = w + 'px';
    this.top.style.height = h + 'px';
    this.top.style.left = this.c.offsetLeft + 'px';
    this.top.style.top = this.c.offsetTop + 'px';
    this.w = w;
    this.dpr = dpr;
    this.layout.aspect = Math.min(3, Math.max(1, w / h));
    this.fit(true);
    this.redraw(true);
  }

  // nodes: [{id, label, colour, coordinator, self, dead, r}], edges: [{a, b, transport,
  // rtt, radio}], groups: [{colour, ids}].
  setData(nodes, edges, groups) {
    const index = new Map(nodes.map((n, i) => [n.id, i]));
    this.nodes = nodes;
    this.edges = edges.filter((e) => index.has(e.a) && index.has(e.b)).map((e) => ({ ...e, i: index.get(e.a), j: index.get(e.b) }));
    this.groups = groups.map((g) => ({ colour: g.colour, idx: g.ids.filter((id) => index.has(id)).map((id) => index.get(id)) }));
    let look = this.layout.set(nodes.map((n) => n.id), this.edges, this.groups.map((g) => g.idx));
    // The picture is drawn again only if something it shows changed.
    for (const n of nodes) look = (Math.imul(look, 31) + hash(n.colour + n.r + n.dead + n.coordinator + n.self + n.label)) | 0;
    for (const e of this.edges) look = (Math.imul(look, 31) + Math.round(Math.log10(Math.max(e.rtt || 1, 1)) * 5)) | 0;
    this.redraw(look !== this.look);
    this.look = look;
  }

  redraw(changed) {
    if (changed) this.dirty = true;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      const moving = this.layout.alpha > 0 && this.nodes.length && this.layout.run(FRAME_BUDGET);
      // The view eases towards fitting the layout, also after the layout stopped.
      if (moving || !this.fit(false)) {
        this.dirty = true;
        this.redraw();
      }
      this.draw();
    });
  }

  // Fits the layout into the canvas (eased unless snap); whether it already fits.
  fit(snap) {
    const p = this.layout.p;
    if (!p.length || !this.dpr) return true;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const q of p) { x0 = Math.min(x0, q.x); x1 = Math.max(x1, q.x); y0 = Math.min(y0, q.y); y1 = Math.max(y1, q.y); }
    // Room for the nodes' rings, and on the right for their labels when they are drawn.
    const w = this.c.width / this.dpr, h = this.c.height / this.dpr, pad = 36, right = this.nodes.length > 50 ? pad : 100;
    const s = Math.min((w - pad - right) / Math.max(x1 - x0, 1), (h - 2 * pad) / Math.max(y1 - y0, 1), 2.2);
    const t = { s, x: (w + pad - right) / 2 - ((x0 + x1) / 2) * s, y: h / 2 - ((y0 + y1) / 2) * s };
    const v = this.view, k = snap ? 1 : 0.25;
    if (Math.abs(t.s - v.s) < 0.002 * t.s && Math.abs(t.x - v.x) < 0.5 && Math.abs(t.y - v.y) < 0.5) return true;
    v.s += (t.s - v.s) * k; v.x += (t.x - v.x) * k; v.y += (t.y - v.y) * k;
    return snap;
  }

  // The scene (hulls, links, nodes) is drawn again only when something moved or changed.
  // A hover draws on a transparent canvas laid over it: a veil, and the hovered node's
  // links and neighbours.
  draw() {
    const t0 = performance.now();
    const { c, ctx, dpr, top } = this;
    if (!dpr) return;
    if (this.dirty) {
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, c.width, c.height);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.scene(ctx, null);
      this.dirty = false;
    }
    const o = top.getContext('2d'), hi = this.hover;
    o.setTransform(1, 0, 0, 1, 0, 0);
    o.clearRect(0, 0, top.width, top.height);
    if (hi != null && hi < this.nodes.length) {
      o.globalAlpha = 0.6;
      o.fillStyle = this.col.bg;
      o.fillRect(0, 0, top.width, top.height);
      o.globalAlpha = 1;
      o.setTransform(dpr, 0, 0, dpr, 0, 0);
      const near = new Set([hi]);
      for (const e of this.edges) if (e.i === hi || e.j === hi) near.add(e.i).add(e.j);
      this.scene(o, near);
    }
    c.dataset.nodeCount = String(this.nodes.length);
    if (this.perf) this.perf(performance.now() - t0);
  }

  // Draws the graph, or with only: just those nodes and the links among them (no hulls).
  scene(ctx, only) {
    const { s, x: ox, y: oy } = this.view, col = this.col, p = this.layout.p;
    const X = (i) => p[i].x * s + ox, Y = (i) => p[i].y * s + oy;
    ctx.lineJoin = ctx.lineCap = 'round';
    if (!only) {
      // Clusters: the hull of an octagon around each member, filled (cheap to raster).
      for (const g of this.groups) {
        if (!g.idx.length) continue;
        const pad = this.nodes[g.idx[0]].r + 8;
        const pts = [];
        for (const i of g.idx) for (let k = 0; k < 8; k++) pts.push([X(i) + pad * OCT[k][0], Y(i) + pad * OCT[k][1]]);
        ctx.fillStyle = mix(g.colour, col.bg, 0.84);
        ctx.beginPath();
        convexHull(pts).forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.fill();
      }
    }
    // Links, batched by look: one path per transport, dash, width and opacity step.
    const batches = new Map();
    for (const e of this.edges) {
      if (only && !(only.has(e.i) && only.has(e.j) && (e.i === this.hover || e.j === this.hover))) continue;
      const r = e.rtt == null ? null : Math.log10(Math.max(e.rtt, 1));
      const w = e.radio ? 1 : r == null ? 1.2 : Math.min(3, Math.max(0.8, 3 - r * 0.8));
      const o = only ? 1 : e.radio ? 0.6 : r == null ? 0.55 : Math.min(0.9, Math.max(0.3, 1 - r / 3.5));
      const key = `${e.transport}|${e.radio}|${Math.round(w * 2)}|${Math.round(o * 10)}`;
      let b = batches.get(key);
      if (!b) batches.set(key, (b = { e, w: Math.round(w * 2) / 2 + (only ? 1 : 0), o: Math.round(o * 10) / 10, list: [] }));
      b.list.push(e);
    }
    for (const b of batches.values()) {
      ctx.globalAlpha = b.o;
      ctx.strokeStyle = col[b.e.transport] || col.internet;
      ctx.lineWidth = b.w;
      ctx.setLineDash(b.e.radio ? [2, 4] : b.e.transport === 'relayed' ? [6, 4] : []);
      ctx.beginPath();
      for (const e of b.list) { ctx.moveTo(X(e.i), Y(e.i)); ctx.lineTo(X(e.j), Y(e.j)); }
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.globalAlpha = 1;

    // Nodes, batched by fill colour; the dead ones hollow and dashed.
    const fills = new Map();
    const idx = only ? [...only] : this.nodes.map((_, i) => i);
    for (const i of idx) {
      const n = this.nodes[i];
      const k = n.dead ? col.bg : n.colour;
      if (!fills.has(k)) fills.set(k, []);
      fills.get(k).push(i);
    }
    ctx.lineWidth = 1.5;
    for (const [colour, list] of fills) {
      ctx.beginPath();
      for (const i of list) { ctx.moveTo(X(i) + this.nodes[i].r, Y(i)); ctx.arc(X(i), Y(i), this.nodes[i].r, 0, 6.2832); }
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.strokeStyle = colour === col.bg ? col.muted : col.bg;
      ctx.setLineDash(colour === col.bg ? [2, 2] : []);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    const many = idx.length > 50;
    ctx.font = '11px system-ui, sans-serif';
    for (const i of idx) {
      const n = this.nodes[i], x = X(i), y = Y(i), r = n.r;
      if (n.coordinator) ring(ctx, x, y, r + 3.5, col.text, 2);
      if (n.self) ring(ctx, x, y, r + (n.coordinator ? 7 : 3.5), col.sel, 2);
      if (n.id === this.selected) ring(ctx, x, y, r + 9, col.sel, 3);
      if (!many || i === this.hover || n.self || n.id === this.selected) {
        ctx.fillStyle = col.text;
        ctx.fillText(n.label, x + r + 4, y + 4);
      }
    }
  }

  hit(e) {
    const p = this.layout.p;
    const rect = this.c.getBoundingClientRect();
    const mx = e.clientX - rect.left, my = e.clientY - rect.top;
    const { s, x: ox, y: oy } = this.view;
    let best = null, bd = 14 * 14;
    this.nodes.forEach((n, i) => {
      const dx = p[i].x * s + ox - mx, dy = p[i].y * s + oy - my;
      const d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = i; }
    });
    return best == null ? null : { ...this.nodes[best], i: best, x: mx, y: my };
  }

  pointer(e) {
    const n = this.hit(e);
    const i = n ? n.i : null;
    this.c.style.cursor = n ? 'pointer' : 'default';
    this.tip(n);
    if (i !== this.hover) { this.hover = i; this.redraw(); }
  }

  tip() { /* set by the view */ }

  select(id) { this.selected = id; this.redraw(true); }
}

const OCT = Array.from({ length: 8 }, (_, k) => [Math.cos((k * Math.PI) / 4), Math.sin((k * Math.PI) / 4)]);
function ring(ctx, x, y, r, colour, w) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 6.2832);
  ctx.strokeStyle = colour;
  ctx.lineWidth = w;
  ctx.stroke();
}

// Monotone chain convex hull of [x, y] points.
function convexHull(pts) {
  if (pts.length < 3) return pts;
  pts.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [], upper = [];
  for (const q of pts) {
    while (lower.length > 1 && cross(lower[lower.length - 2], lower[lower.length - 1], q) <= 0) lower.pop();
    lower.push(q);
  }
  for (let i = pts.length - 1; i >= 0; i--) {
    const q = pts[i];
    while (upper.length > 1 && cross(upper[upper.length - 2], upper[upper.length - 1], q) <= 0) upper.pop();
    upper.push(q);
  }
  return lower.slice(0, -1).concat(upper.slice(0, -1));
}

// colour a (#rrggbb) moved towards b by t: a calm tint for cluster hulls.
function mix(a, b, t) {
  const pa = rgb(a), pb = rgb(b);
  if (!pa || !pb) return a;
  return `rgb(${pa.map((v, i) => Math.round(v + (pb[i] - v) * t)).join(',')})`;
}
function rgb(c) {
  const m = /^#([0-9a-f]{6})$/i.exec(c);
  if (!m) return null;
  const v = parseInt(m[1], 16);
  return [v >> 16, (v >> 8) & 255, v & 255];
}
