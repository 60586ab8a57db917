// Per-netdev rate history and its plots. Each poll of query-netdev adds a sample of the
// cumulative counters; rates are differences over elapsed time, so a missed poll only
// widens one step, and a counter that went backwards (netdev deleted and re-added)
// starts a new baseline instead of plotting a negative rate. Polls closer than
// MIN_STEP_S to the last sample (an early refresh after an action or event) are not
// sampled: a few frames over a tenth of a second would plot as a bogus spike.

import { el, human, svg } from './dom.js';

export const WINDOW_S = 300;
const PW = 300;
const PH = 96;
const TOP = 14;
const BOTTOM = 14;
const MIN_STEP_S = 0.8;

export class History {
  constructor(windowS = WINDOW_S) {
    this.windowS = windowS;
    this.series = new Map(); // key -> [{t, rf, tf, rb, tb}] rates, newest last
    this.last = new Map(); // key -> previous cumulative sample
  }

  add(timeS, entries) {
    const seen = new Set();
    for (const e of entries.values()) {
      seen.add(e.key);
      const s = e.stats;
      const cur = { t: timeS, rf: s['rx-frames'], tf: s['tx-frames'], rb: s['rx-bytes'], tb: s['tx-bytes'] };
      const prev = this.last.get(e.key);
      if (prev && cur.t - prev.t < MIN_STEP_S && cur.rf >= prev.rf && cur.tf >= prev.tf) continue;
      this.last.set(e.key, cur);
      if (!this.series.has(e.key)) this.series.set(e.key, []);
      const list = this.series.get(e.key);
      if (prev && cur.t > prev.t) {
        const dt = cur.t - prev.t;
        const rate = (a, b) => (a >= b ? (a - b) / dt : 0);
        list.push({ t: cur.t, rf: rate(cur.rf, prev.rf), tf: rate(cur.tf, prev.tf), rb: rate(cur.rb, prev.rb), tb: rate(cur.tb, prev.tb) });
      }
      while (list.length && list[0].t < timeS - this.windowS) list.shift();
    }
    for (const key of [...this.series.keys()]) {
      if (!seen.has(key)) {
        this.series.delete(key);
        this.last.delete(key);
      }
    }
  }

  latest(key) {
    const list = this.series.get(key);
    return list && list.length ? list[list.length - 1] : { rf: 0, tf: 0, rb: 0, tb: 0 };
  }
}

function polyline(points, nowS, max, field, cls) {
  const coords = points.map((p) => {
    const x = PW - ((nowS - p.t) / WINDOW_S) * PW;
    const y = TOP + (PH - TOP - BOTTOM) * (1 - p[field] / max);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return svg('polyline', { points: coords.join(' '), class: cls });
}

function plot(entry, list, nowS, unit) {
  const [rx, tx] = unit === 'bytes' ? ['rb', 'tb'] : ['rf', 'tf'];
  let max = 1;
  for (const p of list) max = Math.max(max, p[rx], p[tx]);
  max = niceCeil(max);
  const g = svg('svg', { viewBox: `0 0 ${PW} ${PH}`, class: 'plot', role: 'img', 'aria-label': `${entry.id} ${unit} per second` });
  for (const frac of [0, 0.5, 1]) {
    const y = TOP + (PH - TOP - BOTTOM) * frac;
    g.append(svg('line', { x1: 0, x2: PW, y1: y, y2: y, class: 'grid' }));
  }
  g.append(
    svg('text', { x: 2, y: TOP - 3, class: 'axis', text: `${human(max)}/s` }),
    svg('text', { x: 2, y: PH - 2, class: 'axis', text: `-${WINDOW_S / 60} min` }),
    svg('text', { x: PW - 2, y: PH - 2, class: 'axis', 'text-anchor': 'end', text: 'now' }),
  );
  if (list.length) {
    g.append(polyline(list, nowS, max, rx, 'rx'), polyline(list, nowS, max, tx, 'tx'));
  }
  return g;
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Redraw every plot (one per client except hub ports) into `root`.
export function drawPlots(root, entries, history, nowS, unit, selected) {
  const cards = [];
  for (const e of entries.values()) {
    if (e.type === 'hubport') continue;
    const list = history.series.get(e.key) || [];
    const last = history.latest(e.key);
    const [rx, tx] = unit === 'bytes' ? [last.rb, last.tb] : [last.rf, last.tf];
    const suffix = unit === 'bytes' ? 'B/s' : 'fr/s';
    cards.push(el('figure', { class: `plotcard${selected === e.id ? ' selected' : ''}`, dataset: { netdev: e.id } },
      el('figcaption', {},
        el('span', { class: 'pname', text: e.id }),
        el('span', { class: 'ptype', text: e.type }),
        el('span', { class: 'rx', dataset: { field: 'rx-rate' }, text: `rx ${human(rx)} ${suffix}` }),
        el('span', { class: 'tx', dataset: { field: 'tx-rate' }, text: `tx ${human(tx)} ${suffix}` })),
      plot(e, list, nowS, unit)));
  }
  if (!cards.length) cards.push(el('p', { class: 'muted', text: 'no netdevs' }));
  root.replaceChildren(...cards);
}
