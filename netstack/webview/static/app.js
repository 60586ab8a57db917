// The web view's main module: connects to the daemon's QMP websocket, polls it, and
// renders. query-netdev every second (topology, filters, rates and plots); leases,
// connections and forwards every two seconds; events as they come, which also
// trigger an early refresh. On a lost connection it retries with a growing delay.

import { CapturePanel } from './capture.js';
import { byId, el, showMessage } from './dom.js';
import { buildTopology, filtersOf, foldNetdevs, topologySignature } from './model.js';
import { drawPlots, History } from './plots.js';
import { Qmp } from './qmp.js';
import { renderConnections, renderForwards, renderLeases, renderNetdevs } from './tables.js';
import { drawTopology } from './topology.js';

const POLL_MS = 1000;
const MAX_EVENTS = 50;

const state = {
  qmp: null,
  entries: new Map(),
  filters: new Map(),
  history: new History(),
  signature: '',
  width: 0,
  selected: null,
  unit: 'frames',
  tick: 0,
  busy: false,
  again: false,
  full: false,
  timer: null,
  retryMs: 1000,
};

let capture;

function setConn(status, text) {
  const node = byId('conn');
  node.dataset.state = status;
  node.textContent = text;
}

function retry() {
  setTimeout(start, state.retryMs);
  state.retryMs = Math.min(state.retryMs * 2, 10000);
}

// Read the configuration (where the QMP websocket is: it may have moved if the daemon
// restarted) and connect; on failure or a lost connection, try again later.
async function start() {
  let cfg;
  try {
    const res = await fetch('config.json', { cache: 'no-store' });
    cfg = await res.json();
  } catch (err) {
    setConn('down', `web view unreachable: retrying`);
    retry();
    return;
  }
  if (cfg.name) {
    byId('daemon-name').textContent = cfg.name;
    document.title = `${cfg.name} · netstack`;
  }
  byId('version').textContent = `netstack ${cfg.version}`;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  connect(`${scheme}://${location.hostname}:${cfg.qmp.port}${cfg.qmp.path}`);
}

async function connect(url) {
  setConn('connecting', 'connecting…');
  const qmp = new Qmp(url);
  qmp.onevent = onEvent;
  qmp.onclose = () => {
    if (state.qmp !== qmp) return;
    state.qmp = null;
    clearTimeout(state.timer);
    setConn('down', 'disconnected: retrying');
    retry();
  };
  try {
    const greeting = await qmp.open();
    state.qmp = qmp;
    state.retryMs = 1000;
    const v = greeting.version?.qemu;
    setConn('up', `connected${v ? ` · QMP ${v.major}.${v.minor}.${v.micro}` : ''}`);
    state.tick = 0;
    poll(true);
  } catch (err) {
    setConn('down', `${err.message}: retrying`);
    if (state.qmp === null) {
      qmp.onclose = () => {};
      qmp.close();
      retry();
    }
  }
}

// One poll at a time: a refresh asked for while one runs (an event, an action) is done
// right after it, once; `full` also refreshes the tables at once.
function poll(full = false) {
  const qmp = state.qmp;
  if (!qmp) return;
  if (full) state.full = true;
  if (state.busy) {
    state.again = true;
    return;
  }
  clearTimeout(state.timer);
  state.busy = true;
  const wantFull = state.full || state.tick % 2 === 0;
  state.full = false;
  refresh(qmp, wantFull)
    .catch((err) => console.error('refresh failed', err))
    .finally(() => {
      state.busy = false;
      state.tick += 1;
      if (state.qmp !== qmp) return;
      const again = state.again;
      state.again = false;
      state.timer = setTimeout(poll, again ? 0 : POLL_MS);
    });
}

async function refresh(qmp, full) {
  const jobs = [qmp.execute('query-netdev')];
  if (full) {
    jobs.push(
      qmp.execute('query-dhcp-leases'),
      qmp.execute('query-user-connections'),
      qmp.execute('query-user-forwards'),
    );
  }
  const [netdevs, leases, conns, fwds] = await Promise.allSettled(jobs);
  if (netdevs.status === 'fulfilled') {
    state.entries = foldNetdevs(netdevs.value);
    state.filters = filtersOf(state.entries);
    state.history.add(performance.now() / 1000, state.entries);
  }
  renderAll();
  if (!full) return;
  section(leases, byId('leases').tBodies[0], renderLeases, 'leases-msg');
  section(conns, byId('connections').tBodies[0], renderConnections, 'connections-msg');
  section(fwds, byId('forwards').tBodies[0], (tb, v) => renderForwards(tb, v, removeForward), 'forwards-msg', true);
  updateForwardNetdevs();
  byId('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function section(result, tbody, render, msgId, keepMessage) {
  if (result.status === 'fulfilled') {
    render(tbody, result.value);
    if (!keepMessage) showMessage(byId(msgId), '', false);
  } else {
    showMessage(byId(msgId), result.reason.message, true);
  }
}

function renderAll() {
  const wrap = byId('topology-wrap');
  const width = wrap.clientWidth;
  const sig = `${topologySignature(state.entries, state.filters)}#${width}#${state.selected}`;
  if (sig !== state.signature) {
    state.signature = sig;
    drawTopology(byId('topology'), buildTopology(state.entries), state.filters, width, select, state.selected);
  }
  renderNetdevs(byId('netdevs').tBodies[0], state.entries, state.history, setLink, select, state.selected);
  drawPlots(byId('plots'), state.entries, state.history, performance.now() / 1000, state.unit, state.selected);
  capture.setNetdevs(state.entries);
}

function select(id) {
  state.selected = state.selected === id ? null : id;
  if (state.selected) capture.choose(state.selected);
  renderAll();
}

async function setLink(entry, up) {
  const msg = byId('netdevs-msg');
  try {
    await state.qmp.execute('set_link', { name: entry.id, up });
    showMessage(msg, `set_link ${entry.id} ${up ? 'on' : 'off'}`, false);
  } catch (err) {
    showMessage(msg, `set_link ${entry.id}: ${err.message}`, true);
  }
  poll();
}

function onEvent(msg) {
  const list = byId('events');
  const when = new Date(msg.timestamp.seconds * 1000 + msg.timestamp.microseconds / 1000);
  list.prepend(el('li', { dataset: { event: msg.event } },
    el('time', { text: when.toLocaleTimeString() }),
    el('strong', { text: msg.event }),
    el('code', { text: msg.data ? JSON.stringify(msg.data) : '' })));
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  poll(true);
}

// -- forwards --------------------------------------------------------------------------

function userNetdevs() {
  return [...state.entries.values()].filter((e) => e.type === 'user' && e.netdev).map((e) => e.id);
}

function updateForwardNetdevs() {
  const select = byId('fwd-netdev');
  const want = userNetdevs();
  if ([...select.options].map((o) => o.value).join('\n') === want.join('\n')) return;
  const current = select.value;
  select.replaceChildren(...want.map((id) => el('option', { value: id, text: id })));
  if (want.includes(current)) select.value = current;
  byId('fwd-add').disabled = want.length === 0;
}

function bracket(addr) {
  return addr.includes(':') ? `[${addr}]` : addr;
}

async function addForward(ev) {
  ev.preventDefault();
  const f = ev.target.elements;
  const rule = `${f.protocol.value}:${bracket(f.hostaddr.value.trim())}:${f.hostport.value.trim()}` +
    `-${bracket(f.guestaddr.value.trim())}:${f.guestport.value.trim()}`;
  const msg = byId('forwards-msg');
  try {
    const got = await state.qmp.execute('user-forward-add', { netdev: f.netdev.value, type: 'hostfwd', rule });
    showMessage(msg, `added ${got.rule} (host port ${got['host-port']})`, false);
  } catch (err) {
    showMessage(msg, err.message, true);
  }
  poll(true);
}

async function removeForward(fwd) {
  const args = { netdev: fwd.netdev, type: fwd.type };
  if (fwd.type === 'hostfwd') {
    args.protocol = fwd.protocol;
    if (fwd['host-addr'] !== undefined) args['host-addr'] = fwd['host-addr'];
    args['host-port'] = fwd['host-port'];
  } else {
    args['guest-addr'] = fwd['guest-addr'];
    args['guest-port'] = fwd['guest-port'];
  }
  const msg = byId('forwards-msg');
  try {
    await state.qmp.execute('user-forward-remove', args);
    showMessage(msg, `removed ${fwd.rule}`, false);
  } catch (err) {
    showMessage(msg, err.message, true);
  }
  poll(true);
}

// -- start -----------------------------------------------------------------------------

function main() {
  capture = new CapturePanel();
  byId('fwd-form').addEventListener('submit', addForward);
  byId('plot-unit').addEventListener('change', (ev) => {
    state.unit = ev.target.value;
    renderAll();
  });
  window.addEventListener('resize', () => {
    if (state.entries.size) renderAll();
  });
  start();
}

main();
