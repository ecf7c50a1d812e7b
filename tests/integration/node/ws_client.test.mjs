// The /ws endpoint driven by the Node `ws` client: hello/ping, subprotocol selection, fragmented
// sends, ping/pong in both directions, the close-code echo, and 1003/1009 closes.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';

import { startServer } from './harness.mjs';

const MAX_MESSAGE_BYTES = 8192;
const HEARTBEAT_MS = 300;
const WAIT_MS = 5000;

// A connected client with a message queue and a promise of the close event.
class Client {
  constructor(url, protocols) {
    this.ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, protocols);
    this.queue = [];
    this.waiters = [];
    this.pings = [];
    this.pongs = [];
    this.ws.on('message', (data, isBinary) => {
      const item = { data, isBinary };
      const waiter = this.waiters.shift();
      if (waiter) waiter(item);
      else this.queue.push(item);
    });
    this.ws.on('ping', (data) => this.pings.push({ at: Date.now(), data }));
    this.ws.on('pong', (data) => this.pongs.push(data));
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.ws.on('error', () => {}); // surfaced through `closed`
  }

  static async open(url, protocols) {
    const c = new Client(url, protocols);
    await new Promise((resolve, reject) => {
      c.ws.once('open', resolve);
      c.ws.once('error', reject);
      c.ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    return c;
  }

  next(timeoutMs = WAIT_MS) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no message within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (item) => { clearTimeout(timer); resolve(item); };
      this.waiters.push(waiter);
    });
  }

  async nextJson(timeoutMs) {
    const { data, isBinary } = await this.next(timeoutMs);
    assert.equal(isBinary, false, 'expected a text message');
    return JSON.parse(data.toString('utf8'));
  }

  async request(obj) {
    this.ws.send(JSON.stringify(obj));
    return this.nextJson();
  }

  async hello(user = 'alice', device = 'd1') {
    const reply = await this.request({ op: 'hello', id: 1, user, device });
    assert.equal(reply.op, 'ok', JSON.stringify(reply));
    return reply;
  }

  async closedWithin(timeoutMs = WAIT_MS) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not closed within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  terminate() {
    this.ws.terminate();
  }
}

describe('ws client against /ws', () => {
  let server;
  const clients = [];
  const open = async (protocols) => {
    const c = await Client.open(server.url('/ws'), protocols);
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await startServer({ args: [`--limits.max_message_bytes=${MAX_MESSAGE_BYTES}`],
      name: 'parley[node]' });
  });

  after(async () => {
    for (const c of clients) c.terminate();
    await server.stop();
  });

  it('hello and ping', async () => {
    const c = await open(['parley.v1']);
    const hello = await c.hello('alice', 'd1');
    assert.equal(hello.id, 1);
    assert.equal(hello.user, 'alice');
    assert.equal(hello.device, 'd1');
    assert.equal(typeof hello.session, 'string');
    assert.ok(hello.session.length > 0);
    assert.ok(Number.isInteger(hello.inbox_seq), JSON.stringify(hello));
    assert.ok(Number.isInteger(hello.heartbeat_ms), JSON.stringify(hello));
    assert.equal(typeof hello.node, 'string');
    assert.equal(hello.protocol, 1);
    const before = Date.now();
    const pong = await c.request({ op: 'ping', id: 7 });
    assert.equal(pong.op, 'ok');
    assert.equal(pong.id, 7);
    assert.ok(Number.isInteger(pong.ts));
    assert.ok(Math.abs(pong.ts - before) < 5000, `ts ${pong.ts} vs local ${before}`);
  });

  it('selects parley.v1 when offered, alone or in a list', async () => {
    assert.equal((await open(['parley.v1'])).ws.protocol, 'parley.v1');
    assert.equal((await open(['chat.example', 'parley.v1'])).ws.protocol, 'parley.v1');
  });

  it('selects no subprotocol when none is offered', async () => {
    const c = await open();
    assert.equal(c.ws.protocol, '');
    await c.hello('bob');
  });

  it('first request other than hello: unauthenticated, close 4001', async () => {
    const c = await open();
    const reply = await c.request({ op: 'ping', id: 3 });
    assert.deepEqual([reply.op, reply.id, reply.code], ['error', 3, 'unauthenticated']);
    assert.equal((await c.closedWithin()).code, 4001);
  });

  it('fragmented send is reassembled', async () => {
    const c = await open();
    await c.hello('carol');
    c.ws.send('{"op":"pi', { fin: false });
    c.ws.send('ng","i', { fin: false });
    c.ws.send('d":5}', { fin: true });
    const reply = await c.nextJson();
    assert.deepEqual([reply.op, reply.id], ['ok', 5]);
  });

  it('fragmented send with a multi-byte character split across frames', async () => {
    const c = await open();
    const data = Buffer.from(JSON.stringify({ op: 'hello', id: 1, user: 'dave', x: 'h\u20acllo' }));
    const cut = data.indexOf(Buffer.from('\u20ac')) + 2;
    c.ws.send(data.subarray(0, cut), { fin: false, binary: false });
    c.ws.send(data.subarray(cut), { fin: true, binary: false });
    const reply = await c.nextJson();
    assert.deepEqual([reply.op, reply.user], ['ok', 'dave']);
  });

  it('answers a WebSocket ping with a pong carrying the same payload', async () => {
    const c = await open();
    await c.hello('erin');
    const got = new Promise((resolve) => c.ws.once('pong', resolve));
    c.ws.ping(Buffer.from('node-ping'));
    const payload = await Promise.race([got, new Promise((_, reject) =>
      setTimeout(() => reject(new Error('no pong')), WAIT_MS))]);
    assert.equal(payload.toString(), 'node-ping');
    // The connection still works afterwards.
    const reply = await c.request({ op: 'ping', id: 9 });
    assert.equal(reply.id, 9);
  });

  for (const code of [1000, 3001, 4000, 4321]) {
    it(`echoes close code ${code}`, async () => {
      const c = await open();
      await c.hello('frank');
      c.ws.close(code, 'bye');
      assert.equal((await c.closedWithin()).code, code);
    });
  }

  it('closes with 1009 on a message over max_message_bytes', async () => {
    const c = await open();
    await c.hello('grace');
    c.ws.send(' '.repeat(MAX_MESSAGE_BYTES + 1));
    assert.equal((await c.closedWithin()).code, 1009);
  });

  it('closes with 1009 when fragments add up to more than max_message_bytes', async () => {
    const c = await open();
    await c.hello('heidi');
    const part = ' '.repeat(Math.floor(MAX_MESSAGE_BYTES / 2) + 1);
    c.ws.send(part, { fin: false });
    c.ws.send(part, { fin: true });
    assert.equal((await c.closedWithin()).code, 1009);
  });

  it('accepts a message of exactly max_message_bytes', async () => {
    const c = await open();
    await c.hello('ivan');
    const body = JSON.stringify({ op: 'ping', id: 31 });
    c.ws.send(body + ' '.repeat(MAX_MESSAGE_BYTES - body.length));
    const reply = await c.nextJson();
    assert.deepEqual([reply.op, reply.id], ['ok', 31]);
  });

  it('closes with 1003 on a binary message', async () => {
    const c = await open();
    await c.hello('judy');
    c.ws.send(Buffer.from('{"op":"ping","id":1}'), { binary: true });
    assert.equal((await c.closedWithin()).code, 1003);
  });
});

describe('ws client and server heartbeats', () => {
  let server;
  const clients = [];

  before(async () => {
    server = await startServer({ args: [`--limits.heartbeat_ms=${HEARTBEAT_MS}`],
      name: 'parley[node-heartbeat]' });
  });

  after(async () => {
    for (const c of clients) c.terminate();
    await server.stop();
  });

  it('server pings arrive and the auto-pong keeps the connection open', async () => {
    const c = await Client.open(server.url('/ws'));
    clients.push(c);
    const hello = await c.hello('kim');
    assert.equal(hello.heartbeat_ms, HEARTBEAT_MS);
    await new Promise((resolve) => setTimeout(resolve, 5 * HEARTBEAT_MS));
    assert.ok(c.pings.length >= 3, `${c.pings.length} pings in ${5 * HEARTBEAT_MS} ms`);
    const reply = await c.request({ op: 'ping', id: 2 });
    assert.equal(reply.id, 2);
  });
});
