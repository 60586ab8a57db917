// What the page knows about the daemon, derived from QMP answers:
// query-netdev rows folded into one entry per client name (the queues of a multiqueue
// netdev summed, their filters joined), and the topology: hubs with their ports, clients
// joined directly as peers, and clients with no peer.

const STAT_KEYS = ['rx-frames', 'tx-frames', 'rx-bytes', 'tx-bytes', 'rx-dropped', 'tx-dropped',
  'rx-filtered', 'malformed'];

export function keyOf(row) {
  return row.netdev || row.type === 'hubport' ? row.id : `${row.id} (nic)`;
}

// query-netdev rows -> Map key -> entry {id, type, netdev, linkUp, peer, hub, mac, stats, queues}
export function foldNetdevs(rows) {
  const out = new Map();
  for (const row of rows) {
    const key = keyOf(row);
    let entry = out.get(key);
    if (!entry) {
      entry = {
        key,
        id: row.id,
        type: row.type,
        netdev: row.netdev,
        linkUp: row['link-up'],
        peer: row.peer,
        hub: row.hub,
        mac: row.mac,
        info: row.info,
        stats: Object.fromEntries(STAT_KEYS.map((k) => [k, 0])),
        queues: 0,
        counters: row.counters,
        filters: [],
      };
      out.set(key, entry);
    }
    entry.queues += 1;
    for (const f of row.filters || []) {
      if (!entry.filters.some((g) => g.id === f.id)) {
        entry.filters.push({ id: f.id, type: f['qom-type'], queue: f.queue, status: f.status });
      }
    }
    for (const k of STAT_KEYS) entry.stats[k] += Number(row.statistics?.[k] || 0);
    if (row['queue-index'] === 0) {
      entry.linkUp = row['link-up'];
      entry.peer = row.peer;
    }
  }
  return out;
}

// query-netdev's `filters` (beyond QEMU: `info network` never shows a hub port's filters)
// -> Map client id -> [{id, type, queue, status}], in chain order.
export function filtersOf(entries) {
  const out = new Map();
  for (const e of entries.values()) {
    if (e.filters.length) out.set(e.id, e.filters);
  }
  return out;
}

// entries (foldNetdevs) -> {hubs: [{id, ports: [{port, peer}]}], pairs: [[a, b]], singles: [e]}
export function buildTopology(entries) {
  const byId = new Map();
  for (const e of entries.values()) if (!byId.has(e.id) || e.netdev) byId.set(e.id, e);
  const hubs = new Map();
  const placed = new Set();
  for (const e of entries.values()) {
    if (e.type !== 'hubport') continue;
    if (!hubs.has(e.hub)) hubs.set(e.hub, { id: e.hub, ports: [] });
    const peer = e.peer !== undefined ? byId.get(e.peer) : undefined;
    hubs.get(e.hub).ports.push({ port: e, peer });
    placed.add(e.key);
    if (peer) placed.add(peer.key);
  }
  const pairs = [];
  const singles = [];
  for (const e of entries.values()) {
    if (placed.has(e.key)) continue;
    const peer = e.peer !== undefined ? byId.get(e.peer) : undefined;
    if (peer && !placed.has(peer.key)) {
      pairs.push([e, peer]);
      placed.add(peer.key);
    } else {
      singles.push(e);
    }
    placed.add(e.key);
  }
  const hubList = [...hubs.values()].sort((a, b) => a.id - b.id);
  return { hubs: hubList, pairs, singles };
}

// A string that changes whenever the picture would: redraw only then.
export function topologySignature(entries, filters) {
  const parts = [];
  for (const e of entries.values()) {
    parts.push(`${e.key}|${e.type}|${e.peer ?? ''}|${e.hub ?? ''}|${e.linkUp}`);
  }
  for (const [nd, list] of filters) parts.push(`${nd}:${list.map((f) => `${f.id}/${f.type}/${f.status}`).join(',')}`);
  return parts.join(';');
}
