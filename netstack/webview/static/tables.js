// The page's tables: netdevs (with the set_link switch), DHCP leases, NAT connections
// and forwards (with their remove buttons). Each render replaces the rows; cells carry
// data-field attributes naming the QMP member they show.

import { el, human, setRows } from './dom.js';

const td = (field, text, cls) => el('td', { dataset: field ? { field } : undefined, class: cls, text });
// Columns hidden on a phone-width screen (the rest still scrolls sideways if need be).
const WIDE = 'wide-only';

export function renderNetdevs(tbody, entries, history, onLink, onSelect, selected) {
  const list = [...entries.values()].sort((a, b) => (a.type === 'hubport') - (b.type === 'hubport'));
  const rows = list.map((e) => {
    const rate = history.latest(e.key);
    const where = e.type === 'hubport' ? `hub ${e.hub} ↔ ${e.peer ?? '—'}` : e.hub !== undefined ? `hub ${e.hub}` : e.peer ?? '—';
    const dropped = e.stats['rx-dropped'] + e.stats['tx-dropped'] + e.stats['rx-filtered'];
    const button = el('button', {
      type: 'button',
      class: `link ${e.linkUp ? 'up' : 'down'}`,
      'aria-pressed': e.linkUp ? 'true' : 'false',
      title: `set_link ${e.id} ${e.linkUp ? 'off' : 'on'}`,
      dataset: { action: 'set-link' },
      text: e.linkUp ? 'up' : 'down',
      onclick: () => onLink(e, !e.linkUp),
    });
    return el('tr', {
      class: `${e.type === 'hubport' ? 'muted' : ''}${selected === e.id ? ' selected' : ''}`,
      dataset: { netdev: e.id, type: e.type },
    },
      el('th', { scope: 'row' }, el('a', { href: '#', text: e.id, onclick: (ev) => { ev.preventDefault(); onSelect(e.id); } })),
      td('type', e.type, WIDE),
      td('attached', where, WIDE),
      el('td', { dataset: { field: 'link-up' } }, button),
      td('rx-rate', human(rate.rf), 'num'),
      td('tx-rate', human(rate.tf), 'num'),
      td('rx-frames', String(e.stats['rx-frames']), 'num'),
      td('tx-frames', String(e.stats['tx-frames']), 'num'),
      td('rx-bytes', human(e.stats['rx-bytes']), `num ${WIDE}`),
      td('tx-bytes', human(e.stats['tx-bytes']), `num ${WIDE}`),
      td('dropped', String(dropped), `num ${WIDE}`),
    );
  });
  setRows(tbody, rows, 'no netdevs', 11);
}

export function renderLeases(tbody, leases) {
  const rows = leases.map((l) => el('tr', { dataset: { mac: l['mac-address'], ip: l['ip-address'] } },
    td('netdev', l.netdev, WIDE),
    td('mac-address', l['mac-address'], 'mono'),
    td('ip-address', l['ip-address'], 'mono'),
    td('state', l.state),
    td('expires-in', `${l['expires-in']} s`, 'num'),
    td('hostname', l.hostname ?? ''),
  ));
  setRows(tbody, rows, 'no leases', 6);
}

const endpoint = (addr, port) => (port === undefined ? addr : addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`);

export function renderConnections(tbody, conns) {
  const rows = conns.map((c) => el('tr', { dataset: { protocol: c.protocol, direction: c.direction } },
    td('netdev', c.netdev, WIDE),
    td('protocol', c.protocol),
    td('state', c.state),
    td('direction', c.direction),
    td('guest', endpoint(c['guest-addr'], c['guest-port']), 'mono'),
    td('remote', endpoint(c['remote-addr'], c['remote-port']), 'mono'),
    td('recv-q', String(c['recv-q']), `num ${WIDE}`),
    td('send-q', String(c['send-q']), `num ${WIDE}`),
    td('expires-in', c['expires-in'] === undefined ? '' : `${c['expires-in']} s`, `num ${WIDE}`),
  ));
  setRows(tbody, rows, 'no connections', 9);
}

export function renderForwards(tbody, forwards, onRemove) {
  const rows = forwards.map((f) => {
    const host = f.type === 'hostfwd' ? endpoint(f['host-addr'] ?? '*', f['host-port']) : f.target ?? '';
    return el('tr', { dataset: { type: f.type, protocol: f.protocol, hostPort: f['host-port'] ?? '' } },
      td('netdev', f.netdev),
      td('type', f.type, WIDE),
      td('protocol', f.protocol),
      td('host', host, 'mono'),
      td('guest', endpoint(f['guest-addr'], f['guest-port']), 'mono'),
      td('rule', f.rule, `mono ${WIDE}`),
      el('td', {}, el('button', { type: 'button', class: 'danger', dataset: { action: 'remove-forward' }, text: 'remove', onclick: () => onRemove(f) })),
    );
  });
  setRows(tbody, rows, 'no forwards', 7);
}
