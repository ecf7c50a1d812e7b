// Local state of one signed-in user on one device, kept in localStorage between visits.
//
// The invariants the UI relies on:
// - a conversation holds each message once, keyed by its seq, and lists them in seq order —
//   whether it arrived live, by sync, by history, or as the answer to our own send;
// - `last` (the last applied inbox entry) and the messages are saved in one write, so after a
//   reload the client syncs from exactly where its saved messages end;
// - messages not yet accepted by the server stay in the outbox with their cmid, across reloads.

import { groupConv, parseConv, peerOf } from "./ids.js";

const FORMAT = 1;
const KEEP_MSGS = 200; // saved per conversation; older ones are fetched again with history
const KEEP_NOTES = 50;
const TYPING_MS = 4000;

export class Store {
  me;
  device;
  #key;
  #last = 0;
  #convs = new Map(); // conv id -> Conversation
  #outbox = []; // {cmid, conv, to|group, body, ts, failed?}
  #groups = new Map(); // group id -> {name, owner?, members?}
  #presence = new Map(); // user -> {status, last_seen}
  #typing = new Map(); // conv -> Map(user -> expires at)
  #listeners = new Set();
  #notifyQueued = false;
  #saveTimer = null;
  #typingTimer = null;

  constructor(user, device, storage = globalThis.localStorage) {
    this.me = user;
    this.device = device;
    this.storage = storage;
    this.#key = `parley.v${FORMAT}.${user}.${device}`;
    this.#load();
  }

  // ---- change notification ----

  /** fn(store) runs after each batch of changes; returns an unsubscribe function. */
  subscribe(fn) {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #changed(save = true) {
    if (save) this.#scheduleSave();
    if (this.#notifyQueued) return;
    this.#notifyQueued = true;
    // Many events can arrive in one task (a sync page of 500); render once after all of them.
    queueMicrotask(() => {
      this.#notifyQueued = false;
      for (const fn of this.#listeners) fn(this);
    });
  }

  // ---- the inbox sink used by ParleyClient ----

  last() {
    return this.#last;
  }

  /** Applies one inbox event (msg or group) and advances last to its number. */
  apply(ev, live) {
    if (ev.op === "msg") this.#addMessage(ev);
    else if (ev.op === "group") this.#applyGroupEvent(ev);
    this.#last = ev.inbox;
    if (live && ev.op === "msg" && ev.from !== this.me) this.onIncoming?.(ev);
    if (ev.op === "group") this.onGroupEvent?.(ev);
    this.#changed();
  }

  /** Forgets everything: the server's inbox no longer matches what we saved. */
  reset() {
    this.#last = 0;
    this.#convs.clear();
    this.#groups.clear();
    this.#changed();
  }

  /** Writes the state to storage now (called before each ack, and when the page goes away). */
  persist() {
    clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    const snapshot = (keep) =>
      JSON.stringify({
        format: FORMAT,
        last: this.#last,
        convs: [...this.#convs.values()].map((c) => c.toJSON(keep)),
        outbox: this.#outbox,
        groups: [...this.#groups],
      });
    try {
      this.storage.setItem(this.#key, snapshot(KEEP_MSGS));
    } catch (err) {
      // Over quota: keep fewer messages per conversation; history brings the rest back.
      try {
        this.storage.setItem(this.#key, snapshot(20));
      } catch {
        console.warn("parley: cannot save local state:", err.message);
      }
    }
  }

  /** Removes this user's saved state (sign out with "forget this device"). */
  erase() {
    clearTimeout(this.#saveTimer);
    this.storage.removeItem(this.#key);
  }

  #scheduleSave() {
    if (this.#saveTimer) return;
    this.#saveTimer = setTimeout(() => this.persist(), 250);
  }

  #load() {
    let data;
    try {
      data = JSON.parse(this.storage.getItem(this.#key) || "null");
    } catch {
      data = null;
    }
    if (!data || data.format !== FORMAT) return;
    this.#last = data.last || 0;
    for (const c of data.convs || []) this.#convs.set(c.id, Conversation.fromJSON(c));
    this.#outbox = data.outbox || [];
    this.#groups = new Map(data.groups || []);
  }

  // ---- conversations ----

  conv(id) {
    return this.#convs.get(id);
  }

  /** The conversation, created empty if unknown (e.g. a new chat with any user id). */
  ensureConv(id) {
    let c = this.#convs.get(id);
    if (!c) {
      c = new Conversation(id);
      this.#convs.set(id, c);
      this.#changed();
    }
    return c;
  }

  /** Conversations to list, most recently active first (a pending message counts as activity). */
  listConvs() {
    const activity = (c) => Math.max(c.lastTs, ...this.pendingFor(c.id).map((p) => p.ts), c.openedAt || 0);
    return [...this.#convs.values()]
      .filter((c) => !c.hidden)
      .map((c) => ({ c, at: activity(c) }))
      .sort((a, b) => b.at - a.at || (a.c.id < b.c.id ? -1 : 1))
      .map((x) => x.c);
  }

  /** Merges the server's `convs` answer: activity, our read position (from any device). */
  mergeConvs(list) {
    for (const s of list) {
      const c = this.ensureConv(s.conv);
      c.lastSeq = Math.max(c.lastSeq, s.last_seq);
      c.lastTs = Math.max(c.lastTs, s.last_ts || 0);
      c.readSeq = Math.max(c.readSeq, s.read_seq);
      if (parseConv(s.conv).kind === "group") c.member = true; // listed: we belong to it
    }
    this.#changed();
  }

  /** Adds the messages of a `history` answer (ascending seq, any overlap with what we have). */
  mergeHistory(convId, msgs, more) {
    const c = this.ensureConv(convId);
    for (const m of msgs) this.#addMessage(m);
    // `more` tells whether messages older than the oldest returned exist.
    c.olderExists = msgs.length > 0 && more;
    this.#changed();
  }

  #addMessage(m) {
    const c = this.ensureConv(m.conv);
    if (!c.msgs.has(m.seq)) {
      c.msgs.set(m.seq, { seq: m.seq, from: m.from, cmid: m.cmid, ts: m.ts, body: m.body, meta: m.meta });
    }
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    c.lastTs = Math.max(c.lastTs, m.ts);
    if (m.from === this.me) {
      // Our own message, sent from this device or another: it is no longer pending here.
      this.#outbox = this.#outbox.filter((p) => p.cmid !== m.cmid);
    }
    this.#typing.get(m.conv)?.delete(m.from); // a message ends its author's typing
  }

  #applyGroupEvent(ev) {
    const c = this.ensureConv(groupConv(ev.group));
    // Inbox order follows the conversation's seq order, so the event belongs after the newest
    // message we have at this moment.
    c.notes.push({ after: c.maxSeq(), inbox: ev.inbox, change: ev.change, users: ev.users, by: ev.by, ts: ev.ts });
    if (c.notes.length > KEEP_NOTES) c.notes.splice(0, c.notes.length - KEEP_NOTES);
    c.lastTs = Math.max(c.lastTs, ev.ts || 0);
    const g = this.#groups.get(ev.group) || {};
    const concernsMe = ev.users.includes(this.me);
    if (ev.change === "created" || ev.change === "added") {
      if (concernsMe) {
        c.member = true;
        c.hidden = false;
      }
      if (g.members) g.members = [...new Set([...g.members, ...ev.users])];
      else if (ev.change === "created") g.members = [...ev.users];
      if (ev.change === "created") g.owner = ev.by;
    } else if (ev.change === "removed" || ev.change === "left") {
      if (concernsMe) c.member = false;
      if (g.members) g.members = g.members.filter((u) => !ev.users.includes(u));
    } else if (ev.change === "owner") {
      g.owner = ev.users[0];
    }
    this.#groups.set(ev.group, g);
  }

  /** Hides a conversation from the list (after we left the group). It returns if it is active again. */
  hideConv(id) {
    const c = this.#convs.get(id);
    if (c) c.hidden = true;
    this.#changed();
  }

  /** Marks a conversation as just opened, so a new, empty chat sorts on top. */
  touchConv(id) {
    const c = this.ensureConv(id);
    c.hidden = false;
    if (c.msgs.size === 0 && c.lastSeq === 0) c.openedAt = Date.now();
    this.#changed();
  }

  /**
   * Unread messages: those from others after our read position. Where we do not hold the
   * messages (only `convs` told us about them), fall back to last_seq - read_seq.
   */
  unread(c) {
    let n = 0;
    for (const m of c.msgs.values()) if (m.seq > c.readSeq && m.from !== this.me) n++;
    return n + Math.max(0, c.lastSeq - Math.max(c.maxSeq(), c.readSeq));
  }

  /** If the conversation has unread messages, moves our read position to its end and returns it. */
  takeRead(convId) {
    const c = this.#convs.get(convId);
    if (!c || this.unread(c) === 0) return 0;
    c.readSeq = c.lastSeq;
    this.#changed();
    return c.lastSeq;
  }

  /** A `receipt` event: another member read, or we did on another device. */
  onReceipt(ev) {
    const c = this.ensureConv(ev.conv);
    if (ev.user === this.me) c.readSeq = Math.max(c.readSeq, ev.seq);
    else c.reads[ev.user] = Math.max(c.reads[ev.user] || 0, ev.seq);
    this.#changed();
  }

  /** Users (other than us) who have read our message with this seq. */
  readersOf(c, seq) {
    return Object.entries(c.reads)
      .filter(([, s]) => s >= seq)
      .map(([u]) => u);
  }

  // ---- outbox ----

  addPending(entry) {
    this.#outbox.push(entry);
    this.touchConv(entry.conv);
    this.#changed();
  }

  pendingFor(convId) {
    return this.#outbox.filter((p) => p.conv === convId);
  }

  pendingAll() {
    return this.#outbox.filter((p) => !p.failed);
  }

  /** The server accepted a queued message: it becomes a message with its seq. */
  sent(entry, ok) {
    this.#addMessage({ conv: ok.conv, seq: ok.seq, from: this.me, cmid: entry.cmid, ts: ok.ts, body: entry.body, meta: entry.meta });
    this.#changed();
  }

  failed(entry, err) {
    const p = this.#outbox.find((x) => x.cmid === entry.cmid);
    if (p) {
      p.failed = true;
      p.error = `${err.code}: ${err.message}`;
    }
    this.#changed();
  }

  discardPending(cmid) {
    this.#outbox = this.#outbox.filter((p) => p.cmid !== cmid);
    this.#changed();
  }

  // ---- groups, presence, typing ----

  group(id) {
    return this.#groups.get(id);
  }

  /** Group names from `groups`, and full details from `group_info`. */
  setGroup(id, info) {
    this.#groups.set(id, { ...(this.#groups.get(id) || {}), ...info });
    this.#changed();
  }

  /** Display name of a conversation: the peer's id, or the group's name. */
  title(c) {
    if (c.kind === "group") return this.#groups.get(c.group)?.name || c.group;
    const peer = peerOf(c.id, this.me);
    return peer === this.me ? `${peer} (you)` : peer;
  }

  presence(user) {
    return this.#presence.get(user);
  }

  /** Presence is live information: while disconnected we do not know it. */
  clearPresence() {
    this.#presence.clear();
    this.#changed(false);
  }

  setPresence(ev) {
    this.#presence.set(ev.user, { status: ev.status, last_seen: ev.last_seen });
    this.#changed(false);
  }

  onTyping(ev) {
    if (ev.from === this.me) return;
    let m = this.#typing.get(ev.conv);
    if (!m) this.#typing.set(ev.conv, (m = new Map()));
    m.set(ev.from, Date.now() + TYPING_MS);
    this.#expireTypingLater();
    this.#changed(false);
  }

  typingIn(convId) {
    const now = Date.now();
    return [...(this.#typing.get(convId) || new Map())].filter(([, until]) => until > now).map(([u]) => u);
  }

  #expireTypingLater() {
    if (this.#typingTimer) return;
    this.#typingTimer = setTimeout(() => {
      this.#typingTimer = null;
      const now = Date.now();
      let left = false;
      for (const m of this.#typing.values()) {
        for (const [u, until] of m) {
          if (until <= now) m.delete(u);
          else left = true;
        }
      }
      if (left) this.#expireTypingLater();
      this.#changed(false);
    }, 500);
  }

  /** Users whose presence the UI shows: the peers of direct chats and known group members. */
  peopleToWatch() {
    const users = new Set();
    for (const c of this.#convs.values()) {
      if (c.kind === "direct") users.add(peerOf(c.id, this.me));
    }
    for (const g of this.#groups.values()) for (const u of g.members || []) users.add(u);
    users.delete(this.me);
    return [...users];
  }
}

/** One conversation: direct ("d:a:b") or group ("g:x"). */
export class Conversation {
  constructor(id) {
    this.id = id;
    const p = parseConv(id);
    this.kind = p.kind;
    if (p.kind === "group") this.group = p.group;
    this.lastSeq = 0; // newest seq known (from messages or convs)
    this.lastTs = 0;
    this.readSeq = 0; // our read position, across our devices
    this.reads = {}; // other users' read positions, from receipts
    this.msgs = new Map(); // seq -> message
    this.notes = []; // group membership events, shown between messages
    this.olderExists = undefined; // unknown until a history answer says
    this.member = p.kind === "group" ? undefined : true;
    this.hidden = false;
    this.openedAt = 0;
  }

  maxSeq() {
    let max = 0;
    for (const s of this.msgs.keys()) if (s > max) max = s;
    return max;
  }

  minSeq() {
    let min = Infinity;
    for (const s of this.msgs.keys()) if (s < min) min = s;
    return min === Infinity ? 0 : min;
  }

  /** Messages in seq order. */
  sortedMsgs() {
    return [...this.msgs.values()].sort((a, b) => a.seq - b.seq);
  }

  /** Whether older messages may exist on the server that we do not hold. */
  mayHaveOlder() {
    if (this.olderExists !== undefined) return this.olderExists && this.minSeq() !== 1;
    return this.msgs.size === 0 ? this.lastSeq > 0 : this.minSeq() > 1;
  }

  toJSON(keep) {
    const msgs = this.sortedMsgs().slice(-keep);
    // Dropping old messages means older ones exist again as far as history is concerned.
    const olderExists = msgs.length < this.msgs.size ? true : this.olderExists;
    const { id, lastSeq, lastTs, readSeq, reads, notes, member, hidden } = this;
    return { id, lastSeq, lastTs, readSeq, reads, notes, member, hidden, olderExists, msgs };
  }

  static fromJSON(o) {
    const c = new Conversation(o.id);
    Object.assign(c, {
      lastSeq: o.lastSeq || 0,
      lastTs: o.lastTs || 0,
      readSeq: o.readSeq || 0,
      reads: o.reads || {},
      notes: o.notes || [],
      member: o.member,
      hidden: !!o.hidden,
      olderExists: o.olderExists ?? undefined,
    });
    for (const m of o.msgs || []) c.msgs.set(m.seq, m);
    return c;
  }
}
