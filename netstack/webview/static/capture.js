// The capture panel: start a capture of one netdev on the web view's server (a
// filter-dump writing pcapng into memory there), watch it grow, stop it, download it.
// POSTs carry the X-Netstack-Webview header the server requires of them.

import { byId, el, human, setRows, showMessage } from './dom.js';

const HEADERS = { 'X-Netstack-Webview': '1' };

async function api(method, path) {
  const res = await fetch(path, { method, headers: method === 'POST' ? HEADERS : {}, cache: 'no-store' });
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) throw new Error(body?.error || `${res.status} ${res.statusText}`);
  return body;
}

export class CapturePanel {
  constructor() {
    this.select = byId('capture-netdev');
    this.seconds = byId('capture-seconds');
    this.tbody = byId('captures').tBodies[0];
    this.msg = byId('capture-msg');
    this.timer = null;
    byId('capture-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.start();
    });
    this.refresh();
  }

  setNetdevs(entries) {
    const want = [...entries.values()].filter((e) => e.netdev || e.type === 'hubport').map((e) => e.id);
    const have = [...this.select.options].map((o) => o.value);
    if (want.join('\n') === have.join('\n')) return;
    const current = this.select.value;
    this.select.replaceChildren(...want.map((id) => el('option', { value: id, text: id })));
    if (want.includes(current)) this.select.value = current;
  }

  choose(id) {
    if ([...this.select.options].some((o) => o.value === id)) this.select.value = id;
  }

  async start() {
    const netdev = this.select.value;
    if (!netdev) return;
    const params = new URLSearchParams({ netdev });
    if (this.seconds.value) params.set('seconds', this.seconds.value);
    try {
      const cap = await api('POST', `api/capture?${params}`);
      showMessage(this.msg, `capturing ${cap.netdev} (${cap.id})`, false);
    } catch (err) {
      showMessage(this.msg, `capture not started: ${err.message}`, true);
    }
    this.refresh();
  }

  async stop(cap) {
    try {
      const done = await api('POST', `api/capture/${cap.id}/stop`);
      showMessage(this.msg, `${done.id}: ${done.frames} frames from ${done.netdev}, ready to download`, false);
    } catch (err) {
      showMessage(this.msg, `stop failed: ${err.message}`, true);
    }
    await this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    let list = [];
    try {
      list = await api('GET', 'api/captures');
    } catch (err) {
      showMessage(this.msg, `captures unavailable: ${err.message}`, true);
    }
    const rows = list.slice().reverse().map((c) => el('tr', { dataset: { capture: c.id, state: c.state } },
      td('id', c.id, 'wide-only'),
      td('netdev', c.netdev),
      td('state', c.state + (c.truncated ? ' (truncated)' : '')),
      td('frames', String(c.frames), 'num'),
      td('bytes', human(c.bytes), 'num'),
      td('elapsed', `${c.elapsed} s`, 'num wide-only'),
      el('td', {}, c.state === 'running'
        ? el('button', { type: 'button', dataset: { action: 'stop-capture' }, text: 'stop', onclick: () => this.stop(c) })
        : el('a', { href: `api/capture/${c.id}.pcapng`, download: c.filename, class: 'button', dataset: { action: 'download' }, text: 'download .pcapng' })),
    ));
    setRows(this.tbody, rows, 'no captures', 7);
    const running = list.some((c) => c.state === 'running');
    this.timer = setTimeout(() => this.refresh(), running ? 1000 : 5000);
  }
}

function td(field, text, cls) {
  return el('td', { dataset: { field }, class: cls, text });
}
