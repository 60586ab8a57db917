// A QMP client over a WebSocket (the daemon's `-chardev socket,websocket=on` carrying a
// control-mode monitor). QMP is newline-delimited JSON; the websocket may split or join
// messages across frames, so bytes are decoded as a stream and cut at newlines.
// Protocol: greeting {"QMP": ...} -> qmp_capabilities -> commands with ids; {"event"}
// messages may come at any time.

export class QmpError extends Error {
  constructor(errorClass, desc) {
    super(desc);
    this.errorClass = errorClass;
  }
}

const MAX_BUFFER = 16 << 20;

export class Qmp {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.greeting = null;
    this.nextId = 1;
    this.pending = new Map();
    this.onevent = () => {};
    this.onclose = () => {};
  }

  // Connect and negotiate; resolves with the greeting's "QMP" member.
  open(timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, ['binary']);
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      const decoder = new TextDecoder();
      let buffer = '';
      let settled = false;
      const fail = (err) => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(err);
        }
      };
      const timer = setTimeout(() => {
        fail(new Error('no QMP greeting in time'));
        ws.close();
      }, timeoutMs);
      ws.onmessage = (ev) => {
        buffer += typeof ev.data === 'string' ? ev.data : decoder.decode(ev.data, { stream: true });
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) this.#message(line, resolve, fail, () => { settled = true; clearTimeout(timer); });
        }
        if (buffer.length > MAX_BUFFER) ws.close(1009, 'message too big');
      };
      ws.onerror = () => fail(new Error(`cannot reach ${this.url}`));
      ws.onclose = (ev) => {
        fail(new Error(`connection closed (${ev.code})`));
        for (const { reject: rej, timer: t } of this.pending.values()) {
          clearTimeout(t);
          rej(new Error('connection closed'));
        }
        this.pending.clear();
        this.onclose(ev);
      };
    });
  }

  #message(line, resolve, fail, done) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      console.warn('QMP: unparsable message', line.slice(0, 200));
      return;
    }
    if (msg.QMP !== undefined && this.greeting === null) {
      this.greeting = msg.QMP;
      this.execute('qmp_capabilities').then(() => {
        done();
        resolve(this.greeting);
      }, fail);
    } else if (msg.event !== undefined) {
      this.onevent(msg);
    } else if (msg.id !== undefined && this.pending.has(msg.id)) {
      const { resolve: res, reject: rej, timer } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      clearTimeout(timer);
      if (msg.error) rej(new QmpError(msg.error.class, msg.error.desc));
      else res(msg.return);
    }
  }

  execute(command, args, timeoutMs = 15000) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error('not connected'));
    }
    const id = `wv${this.nextId++}`;
    const msg = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${command}: no answer in time`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify(msg) + '\n');
    });
  }

  close() {
    if (this.ws) this.ws.close();
  }
}
