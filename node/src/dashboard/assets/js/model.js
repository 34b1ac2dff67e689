// model.js: merges what every node answered (status, peers, telemetry, cluster) into one
// picture of the mesh: nodes keyed by PeerId, links with their transport and RTT, the
// clusters, and the connected components (partitions) of a testnet.

// The transport of a connection, from its address: relayed through a circuit, Bluetooth LE
// (/unix/ble-<device>), else internet (TCP, QUIC, the in-memory transport).
export function transportOf(addr, path) {
  addr = addr || '';
  if (path === 'relayed' || addr.includes('/p2p-circuit')) return 'relayed';
  if (addr.includes('/unix/ble') || /\/ble\b/.test(addr)) return 'ble';
  return 'internet';
}

const PREFER = ['internet', 'ble', 'relayed'];

function blank(id) {
  return {
    id, name: '', isSource: false, alive: true, device: null, tele: null, teleAt: 0,
    cluster: null, role: '', score: null, heardAt: 0, links: new Set(), gossip: false, stale: false,
  };
}

export function buildModel(state) {
  const nodes = new Map();
  const edges = new Map();
  const clusters = new Map();
  const node = (id) => {
    let n = nodes.get(id);
    if (!n) nodes.set(id, (n = blank(id)));
    return n;
  };
  const heard = (n, at) => { if (at > n.heardAt) n.heardAt = at; };
  const sel = state.sources[state.selected];
  const selId = sel && sel.data.status ? sel.data.status.peer_id : null;
  const idOf = [];

  for (const s of state.sources) {
    const st = s.data.status;
    if (!st) {
      // A testnet node never heard from: shown, as down.
      if (s.peerId) Object.assign(node(s.peerId), { isSource: true, source: s, name: s.name, alive: false });
      if (s.peerId) idOf[s.index] = s.peerId;
      continue;
    }
    idOf[s.index] = st.peer_id;
    const n = node(st.peer_id);
    n.isSource = true;
    n.source = s;
    if (state.testnet) n.name = s.name;
    n.alive = s.alive && !s.err.status;
    n.device = st.device || n.device;
    n.version = st.version;
    n.phase = st.phase;
    n.listen = st.listen_addrs;
    heard(n, s.at.status || 0);
  }

  for (const s of state.sources) {
    const me = idOf[s.index];
    const peers = s.data.peers && s.data.peers.peers;
    if (!me || !peers) continue;
    const skew = skewOf(s);
    for (const p of peers) {
      const n = node(p.peer_id);
      if (!n.device && p.device) n.device = p.device;
      if (p.connected) {
        const t = transportOf(p.connection_addr, p.path);
        link(edges, me, p.peer_id, t, p.rtt_ms, false);
        n.links.add(t);
        node(me).links.add(t);
        heard(n, s.at.peers || 0);
        if (s === sel) n.selLink = t;
      } else if (p.last_seen_ms) heard(n, p.last_seen_ms - skew);
    }
  }

  for (const s of state.sources) {
    const tel = s.data.telemetry;
    if (!tel || !tel.nodes) continue;
    for (const t of tel.nodes) {
      const n = node(t.peer_id);
      const at = (s.at.telemetry || 0) - t.age_ms;
      if (at >= n.teleAt) {
        n.tele = t.record;
        n.teleAt = at;
        n.stale = t.stale;
        if (!n.isSource && t.record.device) n.device = t.record.device;
      }
      if (!t.local) n.gossip = true;
      heard(n, at);
    }
  }

  // Each cluster as its members see it: the view with the highest term (the most members
  // on a tie) decides who is in it and who coordinates.
  for (const s of state.sources) {
    const c = s.data.cluster;
    if (!c || !c.cluster || !idOf[s.index]) continue;
    const cl = cluster(clusters, c.cluster);
    if (!cl.view || c.term > cl.view.term || (c.term === cl.view.term && c.members.length > cl.view.members.length)) cl.view = c;
  }
  const fromView = new Set(); // nodes some member's own view places in a cluster
  for (const cl of clusters.values()) {
    const v = cl.view;
    for (const m of v.members) {
      const n = node(m.peer_id);
      fromView.add(m.peer_id);
      n.cluster = cl.id;
      n.clusterScore = m.score;
      n.role = m.coordinator || m.peer_id === v.coordinator ? 'coordinator' : 'member';
      cl.members.add(m.peer_id);
    }
    if (v.coordinator) {
      const n = node(v.coordinator);
      n.role = 'coordinator';
      n.cluster = cl.id;
      fromView.add(v.coordinator);
      cl.coordinator = v.coordinator;
    }
  }
  // Then the clusters only announced. An announcement outlives its cluster for a while:
  // one whose coordinator a member's own view places in another cluster is stale.
  for (const s of state.sources) {
    const c = s.data.cluster;
    if (!c || !idOf[s.index]) continue;
    for (const k of c.known_clusters || []) {
      const had = nodes.get(k.coordinator);
      if (had && had.cluster && had.cluster !== k.cluster && fromView.has(k.coordinator)) continue;
      const cl = cluster(clusters, k.cluster);
      if (!cl.known || k.term >= cl.known.term) cl.known = k;
      const n = node(k.coordinator);
      if (!n.cluster) n.cluster = k.cluster;
      if (!cl.coordinator) cl.coordinator = k.coordinator;
      if (k.coordinator === cl.coordinator) n.role = 'coordinator';
      cl.members.add(k.coordinator);
      // The summary names every member with its capacity (docs/scale.md): in a large mesh
      // that is all this node knows of other clusters' nodes.
      for (const m of k.nodes || []) {
        const mn = node(m.peer_id);
        if (!mn.cluster) mn.cluster = k.cluster;
        if (!mn.role) mn.role = m.peer_id === k.coordinator ? 'coordinator' : 'member';
        if (mn.clusterScore == null) mn.clusterScore = m.score;
        mn.silent = m.silent;
        cl.members.add(m.peer_id);
      }
    }
  }

  if (state.radio) {
    for (const [i, j] of state.radio) {
      if (idOf[i] && idOf[j]) link(edges, idOf[i], idOf[j], 'ble', null, true);
    }
  }

  for (const n of nodes.values()) {
    n.score = n.device ? n.device.score : n.clusterScore ?? null;
    if (n.id === selId) n.heard = 'self';
    else if (n.selLink) n.heard = n.selLink;
    else if (n.links.size) n.heard = PREFER.find((t) => n.links.has(t));
    else if (n.gossip) n.heard = 'gossip';
    else n.heard = '—';
  }

  let partitions = 0;
  const component = new Map();
  if (state.testnet) partitions = components(nodes, edges, component);
  return { nodes, edges: [...edges.values()], clusters, component, partitions, selId };
}

// How far a node's wall clock is ahead of this browser's (a node on the same machine: ~0).
function skewOf(s) {
  const t = s.data.telemetry;
  return t && t.now_ms && s.at.telemetry ? t.now_ms - s.at.telemetry : 0;
}

function cluster(map, id) {
  let c = map.get(id);
  if (!c) map.set(id, (c = { id, view: null, known: null, coordinator: null, members: new Set() }));
  return c;
}

function link(edges, a, b, transport, rtt, radio) {
  if (a === b) return;
  const key = (a < b ? a + ' ' + b : b + ' ' + a) + (radio ? ' r' : '');
  const e = edges.get(key);
  if (!e) edges.set(key, { a, b, transport, rtt, radio });
  else if (rtt != null && (e.rtt == null || rtt < e.rtt)) e.rtt = rtt;
}

// Connected components over live links among the testnet's nodes; returns how many there
// are among the nodes that answered.
function components(nodes, edges, out) {
  const parent = new Map();
  const find = (x) => {
    while (parent.get(x) !== x) { parent.set(x, parent.get(parent.get(x))); x = parent.get(x); }
    return x;
  };
  for (const n of nodes.values()) if (n.isSource) parent.set(n.id, n.id);
  for (const e of edges.values()) {
    if (e.radio || !parent.has(e.a) || !parent.has(e.b)) continue;
    parent.set(find(e.a), find(e.b));
  }
  const index = new Map();
  for (const id of parent.keys()) {
    const n = nodes.get(id);
    if (!n.alive) continue;
    const r = find(id);
    if (!index.has(r)) index.set(r, index.size);
    out.set(id, index.get(r));
  }
  return index.size;
}
