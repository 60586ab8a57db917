// Draws the topology as SVG: one band per hub (the hub, its ports, the client behind
// each port), then clients joined directly to each other, then clients with no peer.
// Boxes show the client's id, type and filters; a link that is down is drawn red and
// dashed. The picture is laid out for the width it is given, so it reflows on a phone.

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
    g.append(svg('text', { x: (x1 + x2) / 2 + 4, y: (y1 + y2) / 2 - 3, class: 'port', text: clip(label, 14) }));
  }
  return g;
}

export function drawTopology(root, topo, filters, width, onSelect, selected) {
  const W = Math.max(300, Math.floor(width));
  const cols = Math.max(1, Math.floor((W - 2 * PAD + GAP_X) / (BOX_W + GAP_X)));
  const rowWidth = (n) => n * BOX_W + (n - 1) * GAP_X;
  const items = [];
  let y = PAD;
  const filtersOf = (e) => (e ? filters.get(e.id) || [] : []);

  for (const hub of topo.hubs) {
    const hubX = W / 2;
    const hubY = y + HUB_R;
    const nodes = [];
    const edges = [];
    let rowY = y + 2 * HUB_R + 46;
    for (let start = 0; start < hub.ports.length; start += cols) {
      const row = hub.ports.slice(start, start + cols);
      const x0 = (W - rowWidth(row.length)) / 2;
      let rowH = BOX_H;
      row.forEach(({ port, peer }, i) => {
        const x = x0 + i * (BOX_W + GAP_X);
        const up = port.linkUp && (!peer || peer.linkUp);
        edges.push(edge(hubX, hubY, x + BOX_W / 2, rowY, up, port.id));
        if (peer) {
          const { g, h } = nodeBox(peer, x, rowY, filtersOf(peer), onSelect, selected === peer.id);
          nodes.push(g);
          rowH = Math.max(rowH, h);
        } else {
          const { g } = nodeBox({ ...port, id: port.id, type: 'hubport' }, x, rowY, filtersOf(port), onSelect, selected === port.id);
          g.classList.add('dangling');
          nodes.push(g);
        }
        const pf = filtersOf(port);
        if (peer && pf.length) {
          nodes.push(svg('text', { x: x + BOX_W / 2, y: rowY - 16, class: 'filter port-filter', 'text-anchor': 'middle', text: clip(`◆ ${pf.map((f) => f.id).join(' ')}`, 24) }));
        }
      });
      rowY += rowH + 46;
    }
    const hubG = svg('g', { class: 'hub', dataset: { hub: hub.id } },
      svg('circle', { cx: hubX, cy: hubY, r: HUB_R }),
      svg('text', { x: hubX, y: hubY + 4, 'text-anchor': 'middle', text: `hub ${hub.id}` }));
    items.push(...edges, hubG, ...nodes);
    y = rowY - 18;
  }

  if (topo.pairs.length) {
    const perRow = Math.max(1, Math.floor(cols / 2));
    for (let start = 0; start < topo.pairs.length; start += perRow) {
      const row = topo.pairs.slice(start, start + perRow);
      const x0 = (W - rowWidth(row.length * 2)) / 2;
      let rowH = BOX_H;
      row.forEach(([a, b], i) => {
        const xa = x0 + i * 2 * (BOX_W + GAP_X);
        const xb = xa + BOX_W + GAP_X;
        items.push(edge(xa + BOX_W, y + BOX_H / 2, xb, y + BOX_H / 2, a.linkUp && b.linkUp, ''));
        const A = nodeBox(a, xa, y, filtersOf(a), onSelect, selected === a.id);
        const B = nodeBox(b, xb, y, filtersOf(b), onSelect, selected === b.id);
        items.push(A.g, B.g);
        rowH = Math.max(rowH, A.h, B.h);
      });
      y += rowH + 24;
    }
  }

  if (topo.singles.length) {
    for (let start = 0; start < topo.singles.length; start += cols) {
      const row = topo.singles.slice(start, start + cols);
      const x0 = (W - rowWidth(row.length)) / 2;
      let rowH = BOX_H;
      row.forEach((e, i) => {
        const n = nodeBox(e, x0 + i * (BOX_W + GAP_X), y, filtersOf(e), onSelect, selected === e.id);
        n.g.classList.add('single');
        items.push(n.g);
        rowH = Math.max(rowH, n.h);
      });
      y += rowH + 24;
    }
  }

  if (!items.length) {
    items.push(svg('text', { x: W / 2, y: 40, 'text-anchor': 'middle', class: 'none', text: 'no netdevs' }));
    y = 60;
  }
  const H = Math.ceil(y + PAD);
  root.setAttribute('viewBox', `0 0 ${W} ${H}`);
  root.setAttribute('width', W);
  root.setAttribute('height', H);
  root.replaceChildren(...items);
}
