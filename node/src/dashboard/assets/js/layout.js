// layout.js: the mesh graph's force-directed layout, in world units: pairwise repulsion,
// springs along links, cluster members pulled together, each connected part pulled to its
// own centre and overlapping parts pushed apart (so partitions show as separate islands).
// Positions survive data updates; it warms up again only when the topology changes.

export const LINK = 70; // rest length of a link

export class Layout {
  constructor() {
    this.pos = new Map(); // id -> {x, y, vx, vy}
    this.p = []; // positions in node order
    this.edges = []; // {i, j, radio}
    this.groups = []; // arrays of node indexes
    this.comp = components(0, []);
    this.sig = 0;
    this.alpha = 1;
    this.aspect = 1; // a wide canvas pulls harder vertically, so the layout fills it
  }

  // ids: node ids in order; edges: {i, j, radio}; groups: arrays of indexes.
  set(ids, edges, groups) {
    const known = new Set(ids);
    for (const id of ids) {
      if (this.pos.has(id)) continue;
      // A newcomer starts beside a neighbour already placed, else near the middle.
      const k = ids.indexOf(id);
      const e = edges.find((e) => (e.i === k && this.pos.has(ids[e.j])) || (e.j === k && this.pos.has(ids[e.i])));
      const near = e ? this.pos.get(ids[e.i === k ? e.j : e.i]) : { x: 0, y: 0 };
      const a = Math.random() * 6.283, d = e ? LINK / 2 : 40 + Math.random() * 60;
      this.pos.set(id, { x: near.x + Math.cos(a) * d, y: near.y + Math.sin(a) * d, vx: 0, vy: 0 });
    }
    if (this.pos.size > ids.length * 2 + 50) for (const id of this.pos.keys()) if (!known.has(id)) this.pos.delete(id);
    this.p = ids.map((id) => this.pos.get(id));
    this.edges = edges;
    this.groups = groups;
    // An order-free fingerprint of the topology.
    let sig = ids.length * 7919 + groups.length;
    for (const id of ids) sig = (sig + hash(id)) | 0;
    for (const e of edges) sig = (sig + Math.imul(hash(ids[e.i]) ^ hash(ids[e.j]), e.radio ? 3 : 5)) | 0;
    if (sig === this.sig) return sig;
    this.sig = sig;
    this.comp = components(ids.length, edges);
    this.alpha = Math.max(this.alpha, 0.3);
    return sig;
  }

  // Steps for at most ms milliseconds; whether it is still moving.
  run(ms) {
    const t0 = performance.now();
    for (let k = 0; this.alpha > 0 && k < 30 && performance.now() - t0 < ms; k++) this.step();
    return this.alpha > 0;
  }

  step() {
    const { p, comp } = this, n = p.length, a = this.alpha;
    const cx = new Float64Array(comp.count), cy = new Float64Array(comp.count);
    for (let i = 0; i < n; i++) { const c = comp.of[i]; cx[c] += p[i].x / comp.size[c]; cy[c] += p[i].y / comp.size[c]; }
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
      const q = p[i], c = comp.of[i], own = comp.size[c] > 1 ? 0.008 : 0;
      q.fx = -q.x * 0.003 + kx[c] + (cx[c] - q.x) * own;
      q.fy = -q.y * 0.003 * this.aspect + ky[c] + (cy[c] - q.y) * own;
    }
    // O(n²) repulsion, cut off beyond 400 units; the caller bounds the time per frame.
    for (let i = 0; i < n; i++) {
      const pi = p[i];
      for (let j = i + 1; j < n; j++) {
        const pj = p[j];
        let dx = pi.x - pj.x, dy = pi.y - pj.y, d2 = dx * dx + dy * dy;
        if (d2 < 0.01) { dx = Math.random() - 0.5; dy = Math.random() - 0.5; d2 = 0.5; }
        if (d2 > 160000) continue;
        const f = 2400 / d2;
        pi.fx += dx * f; pi.fy += dy * f;
        pj.fx -= dx * f; pj.fy -= dy * f;
      }
    }
    for (const e of this.edges) {
      const pa = p[e.i], pb = p[e.j], dx = pb.x - pa.x, dy = pb.y - pa.y;
      const d = Math.sqrt(dx * dx + dy * dy) || 1;
      const k = ((d - (e.radio ? LINK * 1.4 : LINK)) / d) * (e.radio ? 0.02 : 0.06);
      pa.fx += dx * k; pa.fy += dy * k;
      pb.fx -= dx * k; pb.fy -= dy * k;
    }
    for (const g of this.groups) {
      if (g.length < 2) continue;
      let gx = 0, gy = 0;
      for (const i of g) { gx += p[i].x / g.length; gy += p[i].y / g.length; }
      for (const i of g) { p[i].fx += (gx - p[i].x) * 0.03; p[i].fy += (gy - p[i].y) * 0.03; }
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
}

// Connected components over the links (radio range excluded): of (index -> component),
// size, count, and big: the parts of two nodes or more (at most 40) pushed apart.
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
  const big = size.map((s, c) => (s > 1 ? c : -1)).filter((c) => c >= 0).slice(0, 40);
  return { of, size, count: ids.size, big };
}

export function hash(text) {
  let x = 0;
  for (let i = 0; i < text.length; i++) x = (Math.imul(x, 31) + text.charCodeAt(i)) | 0;
  return x;
}
