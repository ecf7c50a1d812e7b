// The Parley protocol client: everything a browser needs to talk to the server correctly.
//
//   Connection   one WebSocket: requests matched to answers by id, events passed on.
//   ParleyClient the session across reconnects: hello, the exactly-once inbox algorithm
//                (sync, ordered apply, ack), the outbox of pending sends, presence watches,
//                exponential back-off.
//
// Nothing here touches the DOM or storage: the client calls back into an "inbox" object (the
// local store) to read and advance the number of the last applied inbox entry, so the same code
// works with any storage. See docs/protocol.md, section 5, "The client algorithm".

/** An `error` answer (code from the protocol) or a local failure ("disconnected", "timeout"). */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

export const DISCONNECTED = "disconnected";
export const TIMEOUT = "timeout";

/** One WebSocket connection. Calls onEvent(frame) for pushed frames and onClose(code, reason) once. */
export class Connection {
  #ws;
  #nextId = 1;
  #pending = new Map(); // id -> {resolve, reject, timer}
  #closed = false;
  #handlers;

  /** Resolves once the socket is open; rejects if it cannot be opened within `timeoutMs`. */
  opened;

  constructor(url, handlers, timeoutMs = 10000) {
    this.#handlers = handlers;
    // The server selects "parley.v1" when offered; offering it lets a proxy route by subprotocol.
    this.#ws = new WebSocket(url, ["parley.v1"]);
    this.opened = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new ProtocolError(DISCONNECTED, "timed out connecting"));
        this.abort();
      }, timeoutMs);
      this.#ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#ws.onclose = (ev) => {
        clearTimeout(timer);
        reject(new ProtocolError(DISCONNECTED, `connection closed (${ev.code})`));
        this.#fail(ev.code, ev.reason);
      };
    });
    // Browsers report the details of a failed connection only through the close event.
    this.#ws.onerror = () => {};
    this.#ws.onmessage = (ev) => this.#onMessage(ev.data);
  }

  get closed() {
    return this.#closed;
  }

  /** Sends a request with a fresh id; resolves with the `ok` frame, rejects with ProtocolError. */
  request(op, fields = {}, timeoutMs = 20000) {
    if (this.#closed) return Promise.reject(new ProtocolError(DISCONNECTED, "not connected"));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ProtocolError(TIMEOUT, `no answer to ${op} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#ws.send(JSON.stringify({ op, id, ...fields }));
    });
  }

  /** Sends a request without id: the server answers only if it fails (as an id-less error). */
  notify(op, fields = {}) {
    if (this.#closed) return false;
    this.#ws.send(JSON.stringify({ op, ...fields }));
    return true;
  }

  /** Gives up on the connection now, without waiting for the close handshake. */
  abort(code = 1000) {
    try {
      this.#ws.close(code);
    } catch {
      // Closing a socket that is still connecting may throw in some browsers; it is dead anyway.
    }
    this.#fail(1006, "aborted by the client");
  }

  #onMessage(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn("parley: ignoring a frame that is not JSON", data);
      return;
    }
    if (typeof frame.id === "number" && (frame.op === "ok" || frame.op === "error")) {
      const p = this.#pending.get(frame.id);
      if (!p) return; // answered after we gave up waiting
      this.#pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.op === "ok") p.resolve(frame);
      else p.reject(new ProtocolError(frame.code, frame.message));
      return;
    }
    this.#handlers.onEvent(frame);
  }

  #fail(code, reason) {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ProtocolError(DISCONNECTED, "connection lost"));
    }
    this.#pending.clear();
    this.#handlers.onClose(code, reason);
  }
}

// Close codes after which reconnecting cannot help: the credentials are refused.
const FATAL_CLOSE = new Map([
  [4001, "The server did not accept the sign-in."],
  [4003, "The token has expired. Sign in again."],
]);
// Errors of `send` that retrying with the same cmid would repeat forever.
const FINAL_SEND_ERRORS = new Set(["bad_request", "forbidden", "not_found", "too_large", "conflict"]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A Parley session that survives disconnects.
 *
 * options:
 *   url          ws:// or wss:// URL of /ws
 *   credentials  {device, user} (auth mode "dev") or {device, token}
 *   inbox        {last(), apply(event, live), reset(), persist()} — the local store's inbox:
 *                apply() must record the event and advance last() to event.inbox atomically
 *   onSession(hello)   after each successful hello, before syncing (may be async)
 *   onSynced()         after each catch-up that follows a hello (may be async)
 *   onEvent(frame)     receipt, typing, presence and id-less error frames
 *   onState(state)     {state: "connecting"|"syncing"|"online"|"waiting"|"stopped", ...}
 *   onSent(entry, ok) / onSendFailed(entry, error)   outcome of each queued send
 */
export class ParleyClient {
  #opts;
  #conn = null; // the current Connection, once open
  #authed = false; // hello answered on #conn
  #live = false; // #conn has caught up once: live inbox events may be applied directly
  #catching = null; // promise of the running catch-up
  #buffer = []; // inbox events that arrived while catching up
  #acked = 0;
  #ackTimer = null;
  #attempt = 0;
  #retryTimer = null;
  #heartbeat = null;
  #stopped = false;
  #state = { state: "connecting" };
  #outbox = []; // send entries, oldest first; the head may be in flight
  #flushing = false;
  #watched = new Set();

  constructor(opts) {
    this.#opts = opts;
  }

  get state() {
    return this.#state;
  }

  start() {
    this.#stopped = false;
    this.#connect();
  }

  /** Ends the session for good (sign out), or after a fatal error with `error` set. */
  stop(error) {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    this.#stopHeartbeat();
    const conn = this.#conn;
    this.#conn = null;
    conn?.abort();
    this.#setState({ state: "stopped", error });
  }

  /** Skips the back-off wait (the user clicked "retry", or the browser came back online). */
  reconnectNow() {
    if (this.#stopped || this.#state.state !== "waiting") return;
    clearTimeout(this.#retryTimer);
    this.#attempt = 0;
    this.#connect();
  }

  /** A request on the current session; rejects with "disconnected" while there is none. */
  request(op, fields = {}) {
    if (!this.#authed) return Promise.reject(new ProtocolError(DISCONNECTED, "not connected"));
    return this.#conn.request(op, fields);
  }

  /** A best-effort request without answer (typing, read). Dropped while disconnected. */
  notify(op, fields = {}) {
    return this.#authed ? this.#conn.notify(op, fields) : false;
  }

  /**
   * Queues a message: {cmid, to | group, body, meta?}. It is sent as soon as the session is
   * online, and re-sent with the same cmid after a reconnect until the server answers, so it is
   * stored exactly once. Queuing a cmid twice is harmless.
   */
  enqueueSend(entry) {
    if (this.#outbox.some((e) => e.cmid === entry.cmid)) return;
    this.#outbox.push(entry);
    this.#flushOutbox();
  }

  /** Drops a queued message that has not been sent yet (the user discarded it). */
  dropSend(cmid) {
    const i = this.#outbox.findIndex((e) => e.cmid === cmid);
    if (i > 0 || (i === 0 && !this.#flushing)) this.#outbox.splice(i, 1);
  }

  /**
   * Watches users' presence for the rest of the session (renewed on every reconnect). The
   * snapshot and later changes arrive through onEvent as `presence` frames.
   */
  async watch(users) {
    const fresh = users.filter((u) => !this.#watched.has(u));
    if (fresh.length === 0) return;
    for (const u of fresh) this.#watched.add(u);
    if (this.#authed) await this.#sendWatch(this.#conn, fresh);
  }

  // ---- connection life cycle ----

  async #connect() {
    this.#setState({ state: "connecting" });
    const conn = new Connection(this.#opts.url, {
      onEvent: (frame) => this.#onEvent(conn, frame),
      onClose: (code, reason) => this.#onClose(conn, code, reason),
    });
    this.#conn = conn;
    this.#authed = false;
    this.#live = false;
    this.#buffer = [];
    try {
      await conn.opened;
      const { device, user, token } = this.#opts.credentials;
      const hello = await conn.request("hello", token ? { token, device } : { user, device });
      this.#authed = true;
      await this.#opts.onSession?.(hello);
      const inbox = this.#opts.inbox;
      if (hello.inbox_seq < inbox.last()) {
        // The server has fewer entries than we applied: its data was replaced. Our local copy
        // describes another history, so start over rather than skip what it now holds.
        console.warn(`parley: server inbox ${hello.inbox_seq} is behind local ${inbox.last()}; resetting`);
        inbox.reset();
      }
      this.#acked = 0;
      this.#setState({ state: "syncing" });
      await this.#catchUp(conn);
      await this.#opts.onSynced?.();
      await this.#sendWatch(conn, [...this.#watched]);
      this.#attempt = 0;
      this.#startHeartbeat(conn, hello.heartbeat_ms);
      this.#setState({ state: "online", user: hello.user, device: hello.device });
      this.#flushOutbox();
    } catch (err) {
      if (this.#conn !== conn || this.#stopped) return;
      if (!this.#authed && (err.code === "unauthenticated" || err.code === "bad_request")) {
        this.stop(err);
        return;
      }
      console.warn("parley: session setup failed:", err.message);
      conn.abort(); // onClose schedules the retry
    }
  }

  #onClose(conn, code, reason) {
    if (conn !== this.#conn) return;
    this.#conn = null;
    this.#authed = false;
    this.#live = false;
    this.#stopHeartbeat();
    if (this.#stopped) return;
    if (FATAL_CLOSE.has(code)) {
      this.stop(new ProtocolError("unauthenticated", FATAL_CLOSE.get(code)));
      return;
    }
    // Exponential back-off with jitter, so that clients of a restarted server do not all
    // reconnect in the same instant: 0.5 s, 1 s, 2 s, ... up to 15 s.
    const base = Math.min(15000, 500 * 2 ** this.#attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.#attempt++;
    this.#setState({ state: "waiting", retryAt: Date.now() + delay, code, reason });
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #startHeartbeat(conn, heartbeatMs) {
    // The browser answers the server's pings by itself, which keeps the server content. These
    // pings are for us: a connection can die silently (sleeping laptop, dropped Wi-Fi), and only
    // a missing answer tells.
    this.#stopHeartbeat();
    const every = Math.min(Math.max((heartbeatMs || 25000) * 0.8, 5000), 30000);
    this.#heartbeat = setInterval(() => {
      conn.request("ping", {}, 10000).catch((err) => {
        if (err.code === TIMEOUT) conn.abort();
      });
    }, every);
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }

  #setState(s) {
    this.#state = s;
    this.#opts.onState?.(s);
  }

  // ---- inbox: the exactly-once algorithm ----

  #onEvent(conn, frame) {
    if (conn !== this.#conn) return; // a late frame from a connection we gave up on
    if (frame.op === "msg" || frame.op === "group") {
      if (!this.#live || this.#catching) {
        this.#buffer.push(frame); // the running catch-up applies it in order
        return;
      }
      const last = this.#opts.inbox.last();
      if (frame.inbox <= last) return; // already applied (e.g. fetched by a sync)
      if (frame.inbox === last + 1) {
        this.#opts.inbox.apply(frame, true);
        this.#scheduleAck(conn);
        return;
      }
      // A gap: entries between last and this one never reached us. Fetch them, then this one.
      this.#buffer.push(frame);
      this.#catchUp(conn).catch((err) => this.#catchUpFailed(conn, err));
      return;
    }
    this.#opts.onEvent?.(frame);
  }

  /**
   * Brings the local inbox up to date: sync from last until `more` is false, then apply the live
   * events that arrived meanwhile, syncing again if they do not follow on. Runs one at a time.
   */
  #catchUp(conn) {
    if (this.#catching) return this.#catching;
    const inbox = this.#opts.inbox;
    const run = async () => {
      for (;;) {
        for (;;) {
          const r = await conn.request("sync", { since: inbox.last(), limit: 500 });
          for (const ev of r.events) {
            const last = inbox.last();
            if (ev.inbox <= last) continue;
            // A sync answer is gapless by contract; if not, taking what exists beats looping.
            if (ev.inbox !== last + 1) console.warn(`parley: sync skipped from ${last} to ${ev.inbox}`);
            inbox.apply(ev, false);
          }
          if (!r.more || r.events.length === 0) break;
        }
        const buffered = this.#buffer.splice(0).sort((a, b) => a.inbox - b.inbox);
        let gap = false;
        for (const ev of buffered) {
          const last = inbox.last();
          if (ev.inbox <= last) continue;
          if (ev.inbox !== last + 1) {
            gap = true; // the rest is in the inbox too: the next sync returns it
            break;
          }
          inbox.apply(ev, true);
        }
        if (!gap) break;
      }
      // No await between the last apply and here: no event can slip in unbuffered.
      this.#live = true;
      this.#catching = null;
      this.#scheduleAck(conn);
    };
    this.#catching = run().catch((err) => {
      this.#catching = null;
      throw err;
    });
    return this.#catching;
  }

  #catchUpFailed(conn, err) {
    if (conn !== this.#conn) return;
    console.warn("parley: sync failed:", err.message);
    conn.abort(); // start over with a fresh session
  }

  #scheduleAck(conn) {
    // Acks are cumulative, so one every few hundred ms covers a burst. The local store is
    // written first: the ack must never claim more than what survives a reload.
    if (this.#ackTimer) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = null;
      const inbox = this.#opts.inbox;
      inbox.persist();
      const last = inbox.last();
      if (last > this.#acked && conn === this.#conn && this.#authed) {
        conn.notify("ack", { inbox: last });
        this.#acked = last;
      }
    }, 300);
  }

  // ---- outbox ----

  async #flushOutbox() {
    if (this.#flushing) return;
    this.#flushing = true;
    let pause = 500;
    try {
      // One at a time, oldest first: messages of one conversation keep the order they were
      // written in, and a retry after a reconnect re-sends the same cmid, which the server
      // answers with the original seq ("dup": true) instead of storing it twice.
      while (this.#outbox.length > 0 && this.#state.state === "online") {
        const entry = this.#outbox[0];
        const fields = { cmid: entry.cmid, body: entry.body };
        if (entry.group !== undefined) fields.group = entry.group;
        else fields.to = entry.to;
        if (entry.meta !== undefined) fields.meta = entry.meta;
        try {
          const ok = await this.#conn.request("send", fields);
          this.#outbox.shift();
          pause = 500;
          this.#opts.onSent?.(entry, ok);
        } catch (err) {
          if (err.code === DISCONNECTED) break; // the next session resumes the flush
          if (FINAL_SEND_ERRORS.has(err.code)) {
            this.#outbox.shift();
            this.#opts.onSendFailed?.(entry, err);
            continue;
          }
          // rate_limited, unavailable, timeout, internal: wait and try the same cmid again.
          await sleep(pause);
          pause = Math.min(pause * 2, 10000);
        }
      }
    } finally {
      this.#flushing = false;
    }
  }

  async #sendWatch(conn, users) {
    if (users.length === 0) return;
    try {
      const ok = await conn.request("watch", { users });
      for (const p of ok.presence) this.#opts.onEvent?.({ op: "presence", ...p });
    } catch (err) {
      console.warn("parley: watch failed:", err.message);
      if (err.code !== DISCONNECTED && err.code !== TIMEOUT) {
        for (const u of users) this.#watched.delete(u); // do not repeat a refused watch forever
      }
    }
  }
}
