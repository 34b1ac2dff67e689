// graph.js: the mesh graph on a canvas. A small force-directed layout (a bounded amount of
// work per frame, stops once settled), clusters drawn as hulls behind their members, links
// coloured by transport with width and opacity by RTT, hover highlight and click to select.

const LINK = 70; // rest length of a link, world units
const FRAME_BUDGET = 6; // ms of layout per frame at most

export class MeshGraph {
  constructor(canvas, { onSelect, perf }) {
    this.c = canvas;
    this.ctx = canvas.getContext('2d');
    this.onSelect = onSelect;
    this.perf = perf;
    this.pos = new Map(); // id -> {x, y, vx, vy}
    this.nodes = [];
    this.edges = [];
    this.groups = [];
    this.alpha = 1;
    this.sig = 0;
    this.aspect = 1;
    this.comp = { of: [], size: [], count: 0, big: [] };
    this.hover = null;
    this.selected = null;
    this.view = { s: 1, x: 0, y: 0 };
    this.running = false;
    this.readColours();
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => { this.readColours(); this.dirty = true; this.redraw(); });
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
    this.c.width = Math.round(w * dpr);
    this.c.height = Math.round(h * dpr);
    this.dpr = dpr;
    // Pulled harder vertically on a wide canvas, so the layout fills it.
    this.aspect = Math.min(3, Math.max(1, w / h));
    this.fit(true);
    this.dirty = true;
    this.redraw();
  }

  // nodes: [{id, label, colour, coordinator, self, dead, r}], edges: [{a, b, transport,
  // rtt, radio}], groups: [{colour, ids}]. Positions of known nodes are kept.
  setData(nodes, edges, groups) {
    const index = new Map(nodes.map((n, i) => [n.id, i]));
    const live = edges.filter((e) => index.has(e.a) && index.has(e.b));
    for (const n of nodes) {
      if (this.pos.has(n.id)) continue;
      // A newcomer starts beside a neighbour already placed, else near the middle.
      const e = live.find((e) => (e.a === n.id && this.pos.has(e.b)) || (e.b === n.id && this.pos.has(e.a)));
      const near = e ? this.pos.get(e.a === n.id ? e.b : e.a) : { x: 0, y: 0 };
      const a = Math.random() * 6.283;
      const d = e ? LINK * 0.5 : 40 + Math.random() * 60;
      this.pos.set(n.id, { x: near.x + Math.cos(a) * d, y: near.y + Math.sin(a) * d, vx: 0, vy: 0 });
    }
    if (this.pos.size > nodes.length * 2 + 50) {
      for (const id of this.pos.keys()) if (!index.has(id)) this.pos.delete(id);
    }
    // An order-free fingerprint of the topology: the layout warms up again only when it changes.
    let sig = nodes.length * 7919 + groups.length;
    for (const n of nodes) sig = (sig + hash(n.id)) | 0;
    for (const e of live) sig = (sig + Math.imul(hash(e.a) ^ hash(e.b), e.radio ? 3 : 5)) | 0;
    this.nodes = nodes;
    this.index = index;
    this.edges = live.map((e) => ({ ...e, i: index.get(e.a), j: index.get(e.b) }));
    this.groups = groups.map((g) => ({ colour: g.colour, idx: g.ids.filter((id) => index.has(id)).map((id) => index.get(id)) }));
    this.p = nodes.map((n) => this.pos.get(n.id));
    if (sig !== this.sig) {
      this.sig = sig;
      this.comp = components(nodes.length, this.edges);
      this.alpha = Math.max(this.alpha, 0.3);
    }
    // The layer is drawn again only if something it shows changed.
    let look = sig;
    for (const n of nodes) look = (Math.imul(look, 31) + hash(n.colour + n.r + n.dead + n.coordinator + n.self + n.label)) | 0;
    for (const e of live) look = (Math.imul(look, 31) + Math.round(Math.log10(Math.max(e.rtt || 1, 1)) * 5)) | 0;
    if (look !== this.look) {
      this.look = look;
      this.dirty = true;
    }
    this.redraw();
  }

  // One step of the layout: pairwise repulsion, springs along links, pull to the middle
  // and towards the cluster's centre.
  step() {
    const p = this.p, n = p.length, a = this.alpha, comp = this.comp;
    // Each connected part is pulled to its own centre (so partitions drift apart), and
    // everything weakly to the middle.
    const cx = new Float64Array(comp.count), cy = new Float64Array(comp.count);
    for (let i = 0; i < n; i++) { cx[comp.of[i]] += p[i].x / comp.size[comp.of[i]]; cy[comp.of[i]] += p[i].y / comp.size[comp.of[i]]; }
    // Parts that overlap push each other apart as wholes.
    const kx = new Float64Array(comp.count), ky = new Float64Array(comp.count);
    const big = comp.big;
    for (let x = 0; x < big.length; x++) {
      for (let y = x + 1; y < big.length; y++) {
        const c = big[x], d = big[y];
        let dx = cx[c] - cx[d], dy = cy[c] - cy[d];
        const dist = Math.hypot(dx, dy) || ((dx = 1), 1);
        const want = (Math.sqrt(comp.size[c]) + Math.sqrt(comp.size[d])) * LINK * 0.6;
        if (dist >= want) continue;
        const push = ((want - dist) / dist) * 0.04;
        kx[c] += dx * push; ky[c] += dy * push;
        kx[d] -= dx * push; ky[d] -= dy * push;
      }
    }
    for (let i = 0; i < n; i++) {
      const pi = p[i], c = comp.of[i];
      pi.fx = -pi.x * 0.003 + kx[c] + (comp.size[c] > 1 ? (cx[c] - pi.x) * 0.008 : 0);
      pi.fy = -pi.y * 0.003 * this.aspect + ky[c] + (comp.size[c] > 1 ? (cy[c] - pi.y) * 0.008 : 0);
    }
    for (let i = 0; i < n; i++) {
      const pi = p[i];
      for (let j = i + 1; j < n; j++) {
        const pj = p[j];
        let dx = pi.x - pj.x, dy = pi.y - pj.y;
        let d2 = dx * dx + dy * dy;
        if (d2 < 0.01) { dx = Math.random() - 0.5; dy = Math.random() - 0.5; d2 = 0.5; }
        if (d2 > 160000) continue;
        const f = 2400 / d2;
        pi.fx += dx * f; pi.fy += dy * f;
        pj.fx -= dx * f; pj.fy -= dy * f;
      }
    }
    for (const e of this.edges) {
      const pa = p[e.i], pb = p[e.j];
      const dx = pb.x - pa.x, dy = pb.y - pa.y;
      const d = Math.sqrt(dx * dx + dy * dy) || 1;
      const k = ((d - (e.radio ? LINK * 1.4 : LINK)) / d) * (e.radio ? 0.02 : 0.06);
      pa.fx += dx * k; pa.fy += dy * k;
      pb.fx -= dx * k; pb.fy -= dy * k;
    }
    for (const g of this.groups) {
      if (g.idx.length < 2) continue;
      let cx = 0, cy = 0;
      for (const i of g.idx) { cx += p[i].x; cy += p[i].y; }
      cx /= g.idx.length; cy /= g.idx.length;
      for (const i of g.idx) { p[i].fx += (cx - p[i].x) * 0.03; p[i].fy += (cy - p[i].y) * 0.03; }
    }
    let moved = 0;
    for (const q of p) {
      q.vx = (q.vx + q.fx * a) * 0.55;
      q.vy = (q.vy + q.fy * a) * 0.55;
      const v = Math.hypot(q.vx, q.vy);
      if (v > 20) { q.vx *= 20 / v; q.vy *= 20 / v; }
      q.x += q.vx; q.y += q.vy;
      moved = Math.max(moved, v);
    }
    this.alpha *= 0.985;
    if (moved < 0.05 || this.alpha < 0.02) this.alpha = 0;
  }

  redraw() {
    if (this.running) return;
    this.running = true;
    requestAnimationFrame(() => this.frame());
  }

  frame() {
    this.running = false;
    if (this.alpha > 0 && this.p && this.p.length) {
      const t0 = performance.now();
      let steps = 0;
      while (this.alpha > 0 && steps < 30 && performance.now() - t0 < FRAME_BUDGET) { this.step(); steps++; }
      this.fit(false);
      this.dirty = true;
    }
    this.draw();
    if (this.alpha > 0) this.redraw();
  }

  // Fits the layout into the canvas (eased while the layout moves).
  fit(snap) {
    if (!this.p || !this.p.length || !this.dpr) return;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const q of this.p) { x0 = Math.min(x0, q.x); x1 = Math.max(x1, q.x); y0 = Math.min(y0, q.y); y1 = Math.max(y1, q.y); }
    const w = this.c.width / this.dpr, h = this.c.height / this.dpr, pad = 36;
    const s = Math.min((w - 2 * pad) / Math.max(x1 - x0, 1), (h - 2 * pad) / Math.max(y1 - y0, 1), 2.2);
    const t = { s, x: w / 2 - ((x0 + x1) / 2) * s, y: h / 2 - ((y0 + y1) / 2) * s };
    const v = this.view, k = snap ? 1 : 0.25;
    v.s += (t.s - v.s) * k; v.x += (t.x - v.x) * k; v.y += (t.y - v.y) * k;
  }

  // The scene (hulls, links, nodes) is drawn to an offscreen layer only when something
  // moved or changed; a hover just copies the layer, dims it and draws the hovered node's
  // links and neighbours on top.
  draw() {
    const t0 = performance.now();
    const { c, ctx, dpr } = this;
    if (!dpr) return;
    if (this.dirty || !this.layer) {
      this.layer = this.layer || document.createElement('canvas');
      this.layer.width = c.width;
      this.layer.height = c.height;
      const l = this.layer.getContext('2d');
      l.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.scene(l, null);
      this.dirty = false;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.drawImage(this.layer, 0, 0);
    const hi = this.hover;
    if (hi != null && hi < this.nodes.length) {
      ctx.globalAlpha = 0.6;
      ctx.fillStyle = this.col.bg;
      ctx.fillRect(0, 0, c.width, c.height);
      ctx.globalAlpha = 1;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const near = new Set([hi]);
      for (const e of this.edges) if (e.i === hi || e.j === hi) near.add(e.i).add(e.j);
      this.scene(ctx, near);
    }
    c.dataset.nodeCount = String(this.nodes.length);
    if (this.perf) this.perf(performance.now() - t0);
  }

  // Draws the graph, or with only: just those nodes and the links among them (no hulls).
  scene(ctx, only) {
    const { s, x: ox, y: oy } = this.view, col = this.col, p = this.p || [];
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
    if (!this.p) return null;
    const rect = this.c.getBoundingClientRect();
    const mx = e.clientX - rect.left, my = e.clientY - rect.top;
    const { s, x: ox, y: oy } = this.view;
    let best = null, bd = 14 * 14;
    this.nodes.forEach((n, i) => {
      const dx = this.p[i].x * s + ox - mx, dy = this.p[i].y * s + oy - my;
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

  select(id) { this.selected = id; this.dirty = true; this.redraw(); }
}

// Connected components of the drawn links: {of: index -> component, size, count}.
function components(n, edges) {
  const parent = Array.from({ length: n }, (_, i) => i);
  const find = (x) => { while (parent[x] !== x) x = parent[x] = parent[parent[x]]; return x; };
  for (const e of edges) if (!e.radio) parent[find(e.i)] = find(e.j);
  const ids = new Map(), of = new Array(n), size = [];
  for (let i = 0; i < n; i++) {
    const r = find(i);
    if (!ids.has(r)) { ids.set(r, ids.size); size.push(0); }
    of[i] = ids.get(r);
    size[of[i]]++;
  }
  // The parts pushed apart: those of two nodes or more, at most 40.
  const big = size.map((s, c) => (s > 1 ? c : -1)).filter((c) => c >= 0).slice(0, 40);
  return { of, size, count: ids.size, big };
}

const OCT = Array.from({ length: 8 }, (_, k) => [Math.cos((k * Math.PI) / 4), Math.sin((k * Math.PI) / 4)]);
const hashes = new Map();
function hash(id) {
  let x = hashes.get(id);
  if (x === undefined) {
    x = 0;
    for (let i = 0; i < id.length; i++) x = (Math.imul(x, 31) + id.charCodeAt(i)) | 0;
    if (hashes.size > 5000) hashes.clear();
    hashes.set(id, x);
  }
  return x;
}

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
