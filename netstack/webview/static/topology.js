// Draws the topology as SVG. Groups - a hub with the client behind each of its ports, two
// clients joined directly as peers, a client with no peer - flow left to right and wrap
// at the width given, so the picture reflows from a desktop to a phone. Boxes show the
// client's id, type, link state and filters; a link that is down is drawn red and
// dashed; a hub port with no peer is a dashed box.

import { svg } from './dom.js';

const BOX_W = 156;
const BOX_H = 50;
const GAP_X = 18;
const FILTER_LINE = 13;
const MAX_FILTER_LINES = 3;
const HUB_R = 20;
const PAD = 12;

function boxHeight(filters) {
  const n = Math.min(filters.length, MAX_FILTER_LINES + (filters.length > MAX_FILTER_LINES ? 1 : 0));
  return BOX_H + n * FILTER_LINE;
}

function clip(text, max) {
  const s = String(text);
  return s.length > max ? s.slice(0, max - 1) + '…' : s;
}

function nodeBox(entry, x, y, filters, onSelect, selected) {
  const h = boxHeight(filters);
  const classes = ['node', `t-${entry.type}`, entry.linkUp ? 'up' : 'down'];
  if (selected) classes.push('selected');
  const g = svg('g', {
    class: classes.join(' '),
    transform: `translate(${x},${y})`,
    tabindex: 0,
    role: 'button',
    'aria-label': `${entry.id} (${entry.type}), link ${entry.linkUp ? 'up' : 'down'}`,
    dataset: { netdev: entry.id, link: entry.linkUp ? 'up' : 'down' },
    onclick: () => onSelect(entry.id),
    onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') onSelect(entry.id); },
  });
  g.append(
    svg('rect', { width: BOX_W, height: h, rx: 7, class: 'box' }),
    svg('rect', { width: 6, height: h, rx: 3, class: 'accent' }),
    svg('text', { x: 14, y: 19, class: 'name', text: clip(entry.id, 18) }),
    svg('text', { x: 14, y: 36, class: 'type', text: `${entry.type}${entry.netdev ? '' : ' (NIC)'}` }),
    svg('circle', { cx: BOX_W - 13, cy: 14, r: 5, class: 'led' }),
    svg('title', { text: `${entry.id}: ${entry.info || entry.type}` }),
  );
  filters.slice(0, MAX_FILTER_LINES).forEach((f, i) => {
    g.append(svg('text', {
      x: 14, y: BOX_H + 6 + i * FILTER_LINE, class: `filter${f.status === 'off' ? ' off' : ''}`,
      dataset: { filter: f.id },
      text: clip(`◆ ${f.id} ${f.type.replace(/^filter-/, '')} ${f.queue}`, 24),
    }));
  });
  if (filters.length > MAX_FILTER_LINES) {
    g.append(svg('text', { x: 14, y: BOX_H + 6 + MAX_FILTER_LINES * FILTER_LINE, class: 'filter', text: `+${filters.length - MAX_FILTER_LINES} more` }));
  }
  return { g, h };
}

function edge(x1, y1, x2, y2, up, label) {
  const g = svg('g', { class: `edge ${up ? 'up' : 'down'}` });
  g.append(svg('line', { x1, y1, x2, y2 }));
  if (label) {
    g.append(svg('text', { x: (x1 + x2) / 2 + 5, y: (y1 + y2) / 2 + 4, class: 'port', text: clip(label, 14) }));
  }
  return g;
}

const GROUP_GAP_X = 40;
const GROUP_GAP_Y = 28;
const PORT_DROP = 46;
const RISER = 14;

// One hub: the hub on top, a bus per row of clients (at most `cols` a row), a drop from
// the bus to each port's client labelled with the port; later rows hang off a riser at
// the left so that no line crosses a box.
function hubGroup(hub, cols, filtersOf, onSelect, selected) {
  const n = Math.max(1, Math.min(cols, hub.ports.length));
  const inner = n * BOX_W + (n - 1) * GAP_X;
  const rows = Math.ceil(hub.ports.length / n);
  const off = rows > 1 ? RISER : 0;
  const width = inner + off;
  const hubX = off + inner / 2;
  const wires = [];
  const nodes = [];
  let rowY = 2 * HUB_R + PORT_DROP;
  let firstBus = null;
  let lastBus = null;
  for (let start = 0; start < hub.ports.length; start += n) {
    const row = hub.ports.slice(start, start + n);
    const x0 = off + (inner - (row.length * BOX_W + (row.length - 1) * GAP_X)) / 2;
    const busY = rowY - PORT_DROP / 2;
    let rowH = BOX_H;
    const xs = [];
    row.forEach(({ port, peer }, i) => {
      const x = x0 + i * (BOX_W + GAP_X);
      const cx = x + BOX_W / 2;
      xs.push(cx);
      const up = port.linkUp && (!peer || peer.linkUp);
      wires.push(edge(cx, busY, cx, rowY, up, port.id));
      const shown = peer || port;
      const made = nodeBox(shown, x, rowY, filtersOf(shown), onSelect, selected === shown.id);
      if (!peer) made.g.classList.add('dangling');
      nodes.push(made.g);
      rowH = Math.max(rowH, made.h);
      const pf = peer ? filtersOf(port) : [];
      if (pf.length) {
        nodes.push(svg('text', {
          x: cx - 4, y: rowY - 5, class: 'filter port-filter', 'text-anchor': 'end',
          dataset: { filter: pf[0].id, port: port.id },
          text: clip(`◆ ${pf.map((f) => f.id).join(' ')}`, 14),
        }));
      }
    });
    if (firstBus === null) {
      firstBus = busY;
      xs.push(hubX);
    }
    if (rows > 1) xs.push(off / 2);
    wires.push(svg('line', { class: 'bus', x1: Math.min(...xs), x2: Math.max(...xs), y1: busY, y2: busY }));
    lastBus = busY;
    rowY += rowH + PORT_DROP;
  }
  wires.push(svg('line', { class: 'bus', x1: hubX, x2: hubX, y1: HUB_R, y2: firstBus }));
  if (rows > 1) wires.push(svg('line', { class: 'bus', x1: off / 2, x2: off / 2, y1: firstBus, y2: lastBus }));
  const hubG = svg('g', { class: 'hub', dataset: { hub: hub.id } },
    svg('circle', { cx: hubX, cy: HUB_R, r: HUB_R }),
    svg('text', { x: hubX, y: HUB_R + 4, 'text-anchor': 'middle', text: `hub ${hub.id}` }));
  return { width, height: rowY - PORT_DROP, items: [...wires, hubG, ...nodes] };
}

// Two clients that are each other's peer, side by side.
function pairGroup([a, b], filtersOf, onSelect, selected) {
  const A = nodeBox(a, 0, 0, filtersOf(a), onSelect, selected === a.id);
  const B = nodeBox(b, BOX_W + GAP_X, 0, filtersOf(b), onSelect, selected === b.id);
  const link = edge(BOX_W, BOX_H / 2, BOX_W + GAP_X, BOX_H / 2, a.linkUp && b.linkUp, '');
  return { width: 2 * BOX_W + GAP_X, height: Math.max(A.h, B.h), items: [link, A.g, B.g] };
}

function singleGroup(e, filtersOf, onSelect, selected) {
  const n = nodeBox(e, 0, 0, filtersOf(e), onSelect, selected === e.id);
  n.g.classList.add('single');
  return { width: BOX_W, height: n.h, items: [n.g] };
}

// Lay the groups out like words in a paragraph: left to right, wrapping at the width,
// each line centred. Hubs come first, then pairs, then clients with no peer.
export function drawTopology(root, topo, filters, width, onSelect, selected) {
  const W = Math.max(300, Math.floor(width));
  const cols = Math.max(1, Math.min(4, Math.floor((W - 2 * PAD + GAP_X) / (BOX_W + GAP_X))));
  const filtersOf = (e) => (e ? filters.get(e.id) || [] : []);
  const groups = [
    ...topo.hubs.map((h) => hubGroup(h, cols, filtersOf, onSelect, selected)),
    ...topo.pairs.map((p) => pairGroup(p, filtersOf, onSelect, selected)),
    ...topo.singles.map((e) => singleGroup(e, filtersOf, onSelect, selected)),
  ];
  const items = [];
  let y = PAD;
  let line = [];
  let lineW = 0;
  const flush = () => {
    if (!line.length) return;
    let x = (W - lineW) / 2;
    let h = 0;
    for (const g of line) {
      items.push(svg('g', { transform: `translate(${x},${y})` }, ...g.items));
      x += g.width + GROUP_GAP_X;
      h = Math.max(h, g.height);
    }
    y += h + GROUP_GAP_Y;
    line = [];
    lineW = 0;
  };
  for (const g of groups) {
    const need = line.length ? lineW + GROUP_GAP_X + g.width : g.width;
    if (line.length && need > W - 2 * PAD) flush();
    lineW = line.length ? lineW + GROUP_GAP_X + g.width : g.width;
    line.push(g);
  }
  flush();
  if (!items.length) {
    items.push(svg('text', { x: W / 2, y: 40, 'text-anchor': 'middle', class: 'none', text: 'no netdevs' }));
    y = 60 + GROUP_GAP_Y;
  }
  const H = Math.ceil(y - GROUP_GAP_Y + PAD);
  root.setAttribute('viewBox', `0 0 ${W} ${H}`);
  root.setAttribute('width', W);
  root.setAttribute('height', H);
  root.replaceChildren(...items);
}
