// The web client's protocol and store modules (src/web/protocol.js, src/web/store.js) in Node,
// against a scripted WebSocket: the exactly-once algorithm step by step, where a real server
// cannot be made to produce a gap or a lost answer on demand. The browser tests
// (web_client.test.mjs) cover the same code against the real server.

import { describe, it, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";

/** A scripted stand-in for the browser's WebSocket: the test plays the server. */
class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.closed = false;
    FakeSocket.all.push(this);
  }
  static latest() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  send(data) {
    if (this.closed) throw new Error("send on a closed socket");
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000) {
    if (this.closed) return;
    this.closed = true;
    queueMicrotask(() => this.onclose?.({ code, reason: "" }));
  }
  // ---- the test's side ----
  open() {
    this.onopen?.();
  }
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006) {
    this.closed = true;
    this.onclose?.({ code, reason: "" });
  }
  /** Waits for the next request with this op that has not been answered yet. */
  async next(op) {
    for (let i = 0; i < 200; i++) {
      const r = this.sent.find((f) => f.op === op && !f.answered);
      if (r) {
        r.answered = true;
        return r;
      }
      await new Promise((res) => setTimeout(res, 5));
    }
    throw new Error(`no ${op} request; sent: ${JSON.stringify(this.sent)}`);
  }
  ok(req, fields = {}) {
    this.push({ op: "ok", id: req.id, ...fields });
  }
}

class MemoryStorage {
  map = new Map();
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

globalThis.WebSocket = FakeSocket;
const { ParleyClient } = await import("../../../src/web/protocol.js");
const { Store } = await import("../../../src/web/store.js");

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
const msg = (inbox, seq, body, from = "bob") => ({ op: "msg", inbox, conv: "d:alice:bob", seq, from, cmid: `c${seq}`, ts: 1000 + seq, body });

/** A client whose inbox is a plain list, recording everything applied. */
function makeClient(extra = {}) {
  const applied = [];
  const states = [];
  const sent = [];
  const failed = [];
  let last = extra.last || 0;
  let resets = 0;
  const client = new ParleyClient({
    url: "ws://test/ws",
    credentials: { user: "alice", device: "laptop" },
    inbox: {
      last: () => last,
      apply: (ev) => {
        applied.push(ev.inbox);
        last = ev.inbox;
      },
      reset: () => {
        resets++;
        last = 0;
      },
      persist: () => {},
    },
    onState: (s) => states.push(s.state),
    onSent: (e, ok) => sent.push([e.cmid, ok.seq, ok.dup]),
    onSendFailed: (e, err) => failed.push([e.cmid, err.code]),
  });
  return { client, applied, states, sent, failed, last: () => last, resets: () => resets };
}

/** Plays hello and an empty (or given) sync on the latest socket. */
async function handshake(inboxSeq = 0, events = []) {
  const ws = FakeSocket.latest();
  ws.open();
  const hello = await ws.next("hello");
  assert.deepEqual([hello.user, hello.device, hello.token], ["alice", "laptop", undefined]);
  ws.ok(hello, { user: "alice", device: "laptop", inbox_seq: inboxSeq, heartbeat_ms: 25000 });
  const sync = await ws.next("sync");
  ws.ok(sync, { events, inbox_seq: inboxSeq, more: false });
  return ws;
}

describe("ParleyClient: the inbox algorithm", () => {
  let t;
  beforeEach(() => {
    FakeSocket.all = [];
  });
  afterEach(() => t?.client.stop());

  it("offers parley.v1, says hello, syncs page by page until more is false, then acks", async () => {
    t = makeClient();
    t.client.start();
    const ws = FakeSocket.latest();
    assert.deepEqual(ws.protocols, ["parley.v1"]);
    ws.open();
    const hello = await ws.next("hello");
    ws.ok(hello, { user: "alice", device: "laptop", inbox_seq: 3, heartbeat_ms: 25000 });
    const s1 = await ws.next("sync");
    assert.equal(s1.since, 0);
    ws.ok(s1, { events: [msg(1, 1, "a"), msg(2, 2, "b")], inbox_seq: 3, more: true });
    const s2 = await ws.next("sync");
    assert.equal(s2.since, 2);
    ws.ok(s2, { events: [msg(3, 3, "c")], inbox_seq: 3, more: false });
    await tick(400);
    assert.deepEqual(t.applied, [1, 2, 3]);
    assert.deepEqual(ws.sent.filter((f) => f.op === "ack").map((f) => f.inbox), [3]);
    assert.equal(t.client.state.state, "online");
  });

  it("buffers live events during the sync and applies each entry once, in order", async () => {
    t = makeClient();
    t.client.start();
    const ws = FakeSocket.latest();
    ws.open();
    const hello = await ws.next("hello");
    ws.ok(hello, { user: "alice", device: "laptop", inbox_seq: 2, heartbeat_ms: 25000 });
    const s1 = await ws.next("sync");
    // Live events race the sync answer: 3 is new, 2 is also in the sync answer.
    ws.push(msg(2, 2, "b"));
    ws.push(msg(3, 3, "c"));
    ws.ok(s1, { events: [msg(1, 1, "a"), msg(2, 2, "b")], inbox_seq: 2, more: false });
    await tick(10);
    ws.push(msg(3, 3, "c")); // a duplicate delivery is ignored
    ws.push(msg(4, 4, "d"));
    await tick(10);
    assert.deepEqual(t.applied, [1, 2, 3, 4]);
  });

  it("on a gap in live events, syncs from the last applied entry first", async () => {
    t = makeClient();
    t.client.start();
    const ws = await handshake();
    ws.push(msg(1, 1, "a"));
    ws.push(msg(4, 4, "d")); // 2 and 3 never arrived live
    const s = await ws.next("sync");
    assert.equal(s.since, 1);
    ws.push(msg(5, 5, "e")); // arrives while the repair runs
    ws.ok(s, { events: [msg(2, 2, "b"), msg(3, 3, "c"), msg(4, 4, "d")], inbox_seq: 4, more: false });
    await tick(10);
    assert.deepEqual(t.applied, [1, 2, 3, 4, 5]);
  });

  it("resumes from its last entry after a reconnect, with back-off", async () => {
    t = makeClient({ last: 7 });
    t.client.start();
    let ws = FakeSocket.latest();
    ws.open();
    let hello = await ws.next("hello");
    ws.ok(hello, { user: "alice", device: "laptop", inbox_seq: 8, heartbeat_ms: 25000 });
    let s = await ws.next("sync");
    assert.equal(s.since, 7);
    ws.ok(s, { events: [msg(8, 8, "h")], inbox_seq: 8, more: false });
    await tick(10);
    ws.drop();
    assert.equal(t.client.state.state, "waiting");
    const wait = t.client.state.retryAt - Date.now();
    assert.ok(wait >= 300 && wait <= 700, `first retry after ~0.5 s, got ${wait}`);
    await tick(wait + 50);
    assert.equal(FakeSocket.all.length, 2, "reconnected");
    ws = FakeSocket.latest();
    ws.open();
    hello = await ws.next("hello");
    ws.ok(hello, { user: "alice", device: "laptop", inbox_seq: 9, heartbeat_ms: 25000 });
    s = await ws.next("sync");
    assert.equal(s.since, 8);
    ws.ok(s, { events: [msg(9, 9, "i")], inbox_seq: 9, more: false });
    await tick(10);
    assert.deepEqual(t.applied, [8, 9]);
  });

  it("re-sends a message whose answer was lost with the same cmid, and reports it once", async () => {
    t = makeClient();
    t.client.start();
    let ws = await handshake();
    t.client.enqueueSend({ cmid: "w-1", to: "bob", body: "hello" });
    t.client.enqueueSend({ cmid: "w-1", to: "bob", body: "hello" }); // queued twice: one entry
    const first = await ws.next("send");
    assert.deepEqual([first.cmid, first.to, first.body], ["w-1", "bob", "hello"]);
    ws.drop(); // the answer never comes
    await tick(700);
    ws = await handshake();
    const again = await ws.next("send");
    assert.equal(again.cmid, "w-1");
    ws.ok(again, { conv: "d:alice:bob", seq: 1, ts: 5, dup: true });
    await tick(10);
    assert.deepEqual(t.sent, [["w-1", 1, true]]);
    assert.equal(ws.sent.filter((f) => f.op === "send").length, 1);
  });

  it("keeps the order of queued messages and drops those the server refuses for good", async () => {
    t = makeClient();
    t.client.start();
    const ws = await handshake();
    t.client.enqueueSend({ cmid: "a", group: "nope", body: "1" });
    t.client.enqueueSend({ cmid: "b", to: "bob", body: "2" });
    const s1 = await ws.next("send");
    assert.equal(s1.group, "nope");
    ws.push({ op: "error", id: s1.id, code: "forbidden", message: "not a member" });
    const s2 = await ws.next("send");
    assert.equal(s2.cmid, "b");
    ws.ok(s2, { conv: "d:alice:bob", seq: 1, ts: 5, dup: false });
    await tick(10);
    assert.deepEqual(t.failed, [["a", "forbidden"]]);
    assert.deepEqual(t.sent, [["b", 1, false]]);
  });

  it("stops without retrying when the sign-in is refused", async () => {
    t = makeClient();
    t.client.start();
    const ws = FakeSocket.latest();
    ws.open();
    const hello = await ws.next("hello");
    ws.push({ op: "error", id: hello.id, code: "unauthenticated", message: "bad token" });
    ws.drop(4001);
    await tick(700);
    assert.equal(t.client.state.state, "stopped");
    assert.equal(t.client.state.error.code, "unauthenticated");
    assert.equal(FakeSocket.all.length, 1);
  });

  it("starts over when the server holds fewer entries than were applied", async () => {
    t = makeClient({ last: 50 });
    t.client.start();
    const ws = FakeSocket.latest();
    ws.open();
    const hello = await ws.next("hello");
    ws.ok(hello, { user: "alice", device: "laptop", inbox_seq: 2, heartbeat_ms: 25000 });
    const s = await ws.next("sync");
    assert.equal(s.since, 0);
    assert.equal(t.resets(), 1);
  });
});

describe("Store", () => {
  it("holds each message once whichever way it arrives, and counts only others' as unread", () => {
    const store = new Store("alice", "laptop", new MemoryStorage());
    store.addPending({ cmid: "w-1", conv: "d:alice:bob", to: "bob", body: "mine", ts: 1 });
    assert.equal(store.pendingFor("d:alice:bob").length, 1);
    store.sent({ cmid: "w-1", body: "mine" }, { conv: "d:alice:bob", seq: 1, ts: 10 });
    store.apply({ ...msg(1, 1, "mine", "alice"), cmid: "w-1" }, true); // the echo of our send
    store.mergeHistory("d:alice:bob", [msg(0, 1, "mine", "alice"), msg(0, 2, "theirs")], false);
    store.apply(msg(2, 2, "theirs"), true);
    const c = store.conv("d:alice:bob");
    assert.deepEqual(c.sortedMsgs().map((m) => [m.seq, m.body]), [[1, "mine"], [2, "theirs"]]);
    assert.equal(store.pendingFor("d:alice:bob").length, 0);
    assert.equal(store.unread(c), 1);
    assert.equal(store.takeRead("d:alice:bob"), 2);
    assert.equal(store.unread(c), 0);
    assert.equal(store.last(), 2);
  });

  it("saves last, messages and the outbox in one record and loads them back", () => {
    const storage = new MemoryStorage();
    const a = new Store("alice", "laptop", storage);
    a.apply(msg(1, 1, "a"), false);
    a.apply(msg(2, 2, "b"), false);
    a.addPending({ cmid: "w-9", conv: "d:alice:bob", to: "bob", body: "queued", ts: 3 });
    a.onReceipt({ conv: "d:alice:bob", user: "bob", seq: 2 });
    a.persist();
    const b = new Store("alice", "laptop", storage);
    assert.equal(b.last(), 2);
    assert.deepEqual(b.conv("d:alice:bob").sortedMsgs().map((m) => m.body), ["a", "b"]);
    assert.deepEqual(b.pendingAll().map((p) => p.cmid), ["w-9"]);
    assert.deepEqual(b.readersOf(b.conv("d:alice:bob"), 2), ["bob"]);
    // Another device of the same user keeps its own record.
    assert.equal(new Store("alice", "phone", storage).last(), 0);
  });

  it("tracks group membership from inbox events", () => {
    const store = new Store("bob", "laptop", new MemoryStorage());
    store.apply({ op: "group", inbox: 1, group: "team", change: "created", users: ["alice", "bob"], by: "alice", ts: 5 }, true);
    assert.equal(store.conv("g:team").member, true);
    assert.equal(store.group("team").owner, "alice");
    store.apply({ op: "group", inbox: 2, group: "team", change: "left", users: ["alice"], by: "alice", ts: 6 }, true);
    store.apply({ op: "group", inbox: 3, group: "team", change: "owner", users: ["bob"], by: "alice", ts: 6 }, true);
    assert.deepEqual(store.group("team").members, ["bob"]);
    assert.equal(store.group("team").owner, "bob");
    store.apply({ op: "group", inbox: 4, group: "team", change: "removed", users: ["bob"], by: "bob", ts: 7 }, true);
    assert.equal(store.conv("g:team").member, false);
  });
});
