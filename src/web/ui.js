// The DOM side of the client: renders the store and turns user input into actions.
//
// Lists are updated in place, keyed by conversation id or message seq, instead of being rebuilt:
// a rebuilt list would lose keyboard focus and make screen readers announce every message again.

import { peerOf, parseConv, isValidId } from "./ids.js";
import { shortTime, fullTime, presenceText, hueOf, initials, typingText, groupEventText } from "./format.js";

const $ = (id) => document.getElementById(id);
const PHONE = window.matchMedia("(max-width: 720px)");
const MAX_BODY_BYTES = 16384; // the server's default max_body_bytes
const utf8Length = (s) => new TextEncoder().encode(s).length;

/**
 * Updates `parent`'s children to show `items` in order. Each child is keyed by data-key; new ones
 * come from create(item), and update(el, item) runs when the item's signature changed.
 */
function reconcile(parent, items, { key, sig, create, update }) {
  const existing = new Map();
  for (const el of parent.children) existing.set(el.dataset.key, el);
  const wanted = new Set(items.map(key));
  for (const [k, el] of existing) if (!wanted.has(k)) el.remove();
  let prev = null;
  for (const item of items) {
    const k = key(item);
    let el = existing.get(k);
    if (!el) {
      el = create(item);
      el.dataset.key = k;
    }
    const s = sig(item);
    if (el._sig !== s) {
      update(el, item);
      el._sig = s;
    }
    const expected = prev ? prev.nextElementSibling : parent.firstElementChild;
    if (el !== expected) parent.insertBefore(el, expected);
    prev = el;
  }
}

/**
 * Where a group event goes among the messages: after the newest message we held when it was
 * applied, and after every message older than it — the second matters when the messages were
 * fetched later with history (a newcomer's view of the group's past).
 */
function notePosition(c, n) {
  let after = n.after;
  for (const m of c.msgs.values()) if (m.ts <= n.ts && m.seq > after) after = m.seq;
  return after + 0.5;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function avatar(name, isGroup) {
  const a = el("span", `avatar${isGroup ? " group" : ""}`);
  a.setAttribute("aria-hidden", "true");
  a.style.setProperty("--hue", hueOf(name));
  a.append(el("span", "initials", isGroup ? "#" : initials(name)), el("span", "dot"));
  return a;
}

/** Splits "bob, carol dave" into valid ids; throws with a message naming the first bad one. */
export function parseUserList(text) {
  const users = text.split(/[\s,;]+/).filter(Boolean);
  const bad = users.find((u) => !isValidId(u));
  if (bad) throw new Error(`"${bad}" is not a valid user id`);
  return [...new Set(users)];
}

export class ChatUI {
  #actions;
  #store = null;
  #unsubscribe = null;
  #current = null; // open conversation id
  #renderQueued = false;
  #stickToBottom = true;
  #connState = { state: "connecting" };
  #countdown = null;
  #note = ""; // a message under the composer (e.g. "too long")

  constructor(actions) {
    this.#actions = actions;
    this.#bindSignIn();
    this.#bindApp();
    this.#bindDialogs();
  }

  get current() {
    return this.#current;
  }

  // ---- screens ----

  showSignIn({ user = "", device = "", token = "", error = "", tokenBox = false } = {}) {
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    this.#store = null;
    this.#current = null;
    for (const d of document.querySelectorAll("dialog[open]")) d.close();
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-user").value = user;
    $("signin-device").value = device;
    $("signin-token").value = token;
    $("signin-token-box").open = tokenBox || !!token;
    this.signInError(error);
    $("signin-submit").disabled = false;
    $("signin-submit").textContent = "Sign in";
    (user ? $("signin-submit") : $("signin-user")).focus();
    document.title = "Parley";
  }

  signInError(text, { busy = false } = {}) {
    $("signin-error").textContent = text;
    $("signin-submit").disabled = busy;
    $("signin-submit").textContent = busy ? "Signing in…" : "Sign in";
  }

  showApp(store) {
    this.#unsubscribe?.();
    this.#store = store;
    this.#current = null;
    this.#unsubscribe = store.subscribe(() => this.render());
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = `${store.me} · ${store.device}`;
    $("msg-list").replaceChildren();
    this.#setView("list");
    this.render();
  }

  /** Opens a conversation: the chat pane on a phone, the composer focused. */
  openConv(id, { focus = true } = {}) {
    const changed = this.#current !== id;
    this.#current = id;
    if (changed) {
      this.#note = "";
      $("composer-input").value = "";
      this.#autosize();
      // Filling the log with a conversation's past messages is not news: keep it quiet.
      this.#quietly(() => {
        $("msg-list").replaceChildren();
        this.#stickToBottom = true;
        this.render(true);
      });
    }
    this.#setView("chat");
    this.render(); // on a phone the chat just became visible: its messages are now read
    if (focus) $("composer-input").focus();
  }

  closeConv() {
    this.#current = null;
    $("msg-list").replaceChildren();
    this.#setView("list");
    this.render();
  }

  setConnState(s) {
    this.#connState = s;
    clearInterval(this.#countdown);
    this.#renderConnState();
    if (s.state === "waiting") this.#countdown = setInterval(() => this.#renderConnState(), 1000);
  }

  /** Tells screen readers about a message outside the open conversation. */
  announce(text) {
    $("announcer").textContent = text;
  }

  setOwnStatus(status) {
    if (status === "online" || status === "busy") $("me-status").value = status;
    $("me-dot").dataset.status = status;
  }

  // ---- rendering ----

  /** Schedules a render; `now` renders synchronously (used when switching conversations). */
  render(now = false) {
    if (!this.#store) return;
    if (now) {
      this.#renderQueued = false;
      this.#renderAll();
      return;
    }
    if (this.#renderQueued) return;
    this.#renderQueued = true;
    queueMicrotask(() => {
      if (!this.#renderQueued) return;
      this.#renderQueued = false;
      this.#renderAll();
    });
  }

  #renderAll() {
    this.#renderConvList();
    this.#renderChat();
    const unread = this.#store.listConvs().reduce((n, c) => n + this.#store.unread(c), 0);
    document.title = unread ? `(${unread}) Parley` : "Parley";
    this.#actions.afterRender();
  }

  /** Whether the user can see the open conversation now (decides when to send `read`). */
  convVisible() {
    return (
      this.#current !== null &&
      document.visibilityState === "visible" &&
      !(PHONE.matches && $("panes").dataset.view !== "chat")
    );
  }

  #renderConnState() {
    const s = this.#connState;
    const box = $("conn-state");
    box.dataset.state = s.state;
    let text;
    switch (s.state) {
      case "connecting":
        text = "Connecting…";
        break;
      case "syncing":
        text = "Syncing…";
        break;
      case "online":
        text = "Connected";
        break;
      case "waiting": {
        const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
        text = `Offline — retrying in ${secs} s`;
        break;
      }
      default:
        text = s.error ? `Disconnected: ${s.error.message}` : "Disconnected";
    }
    $("conn-text").textContent = text;
    $("conn-retry").hidden = s.state !== "waiting";
  }

  #renderConvList() {
    const store = this.#store;
    const convs = store.listConvs();
    $("conv-empty").hidden = convs.length > 0;
    reconcile($("conv-list"), convs, {
      key: (c) => c.id,
      sig: (c) => {
        const last = this.#lastLine(c);
        const p = c.kind === "direct" ? store.presence(peerOf(c.id, store.me)) : null;
        return [store.title(c), last.text, last.ts, store.unread(c), p?.status, c.id === this.#current, store.typingIn(c.id).length].join("|");
      },
      create: (c) => {
        const li = el("li");
        const b = el("button", "conv-item");
        b.type = "button";
        b.dataset.conv = c.id;
        b.addEventListener("click", () => this.#actions.openConv(c.id));
        li.append(b);
        return li;
      },
      update: (li, c) => this.#fillConvItem(li.firstElementChild, c),
    });
  }

  #lastLine(c) {
    const store = this.#store;
    const pending = store.pendingFor(c.id);
    if (pending.length) return { text: `You: ${pending[pending.length - 1].body}`, ts: pending[pending.length - 1].ts };
    const typing = store.typingIn(c.id);
    if (typing.length) return { text: typingText(typing), ts: c.lastTs, typing: true };
    const seq = c.maxSeq();
    if (seq) {
      const m = c.msgs.get(seq);
      const who = m.from === store.me ? "You: " : c.kind === "group" ? `${m.from}: ` : "";
      return { text: who + m.body, ts: m.ts };
    }
    const note = c.notes[c.notes.length - 1];
    if (note) return { text: groupEventText(note, store.me), ts: note.ts };
    return { text: c.lastSeq ? "" : "No messages yet", ts: c.lastTs };
  }

  #fillConvItem(b, c) {
    const store = this.#store;
    const title = store.title(c);
    const unread = store.unread(c);
    const last = this.#lastLine(c);
    const peer = c.kind === "direct" ? peerOf(c.id, store.me) : null;
    const p = peer ? store.presence(peer) : null;
    const av = avatar(c.kind === "group" ? title : peer, c.kind === "group");
    if (p) av.querySelector(".dot").dataset.status = p.status;
    const top = el("span", "conv-top");
    top.append(el("span", "conv-name", title), el("time", "conv-time", shortTime(last.ts)));
    const bottom = el("span", "conv-bottom");
    bottom.append(el("span", `conv-preview${last.typing ? " is-typing" : ""}`, last.text));
    if (unread) bottom.append(el("span", "badge", String(unread)));
    const main = el("span", "conv-main");
    main.append(top, bottom);
    b.replaceChildren(av, main);
    b.classList.toggle("unread", unread > 0);
    if (c.id === this.#current) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
    const parts = [title];
    if (p) parts.push(p.status);
    if (unread) parts.push(`${unread} unread`);
    if (last.text) parts.push(last.text);
    b.setAttribute("aria-label", parts.join(", "));
  }

  #renderChat() {
    const store = this.#store;
    const c = this.#current ? store.conv(this.#current) : null;
    $("chat-none").hidden = !!c;
    $("chat-open").hidden = !c;
    if (!c) return;

    // Header: name, presence or membership.
    const title = store.title(c);
    $("chat-title").textContent = title;
    const dot = $("chat-dot");
    if (c.kind === "direct") {
      const p = store.presence(peerOf(c.id, store.me));
      dot.hidden = false;
      dot.dataset.status = p?.status || "unknown";
      $("chat-sub").textContent = presenceText(p);
    } else {
      dot.hidden = true;
      const g = store.group(c.group) || {};
      const n = g.members?.length;
      $("chat-sub").textContent =
        c.member === false ? "You are not a member" : n ? `${n} member${n === 1 ? "" : "s"}${g.owner === store.me ? " · you are the owner" : ""}` : "";
    }
    $("group-info-btn").hidden = c.kind !== "group" || c.member === false;

    // Composer: closed for groups we left or were removed from.
    const closed = c.kind === "group" && c.member === false;
    $("composer-input").disabled = closed;
    $("send-btn").disabled = closed;
    const note = closed ? "You are no longer a member of this group." : this.#note;
    $("composer-note").hidden = !note;
    $("composer-note").textContent = note;

    $("typing").textContent = typingText(store.typingIn(c.id));
    $("load-older").hidden = !c.mayHaveOlder();
    this.#renderMessages(c);
  }

  #renderMessages(c) {
    const store = this.#store;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    const fromBottom = box.scrollHeight - box.scrollTop;
    const oldFirst = $("msg-list").firstElementChild?.dataset.key;

    // Messages by seq, group events after the message they followed, pending ones last.
    const items = [];
    for (const m of c.sortedMsgs()) items.push({ kind: "msg", pos: m.seq, m, key: `m:${m.seq}` });
    for (const n of c.notes) items.push({ kind: "note", pos: notePosition(c, n), tie: n.inbox, n, key: `n:${n.inbox}` });
    for (const p of store.pendingFor(c.id)) items.push({ kind: "pending", pos: Infinity, tie: p.ts, p, key: `p:${p.cmid}` });
    items.sort((a, b) => a.pos - b.pos || (a.tie || 0) - (b.tie || 0));
    // In a group, the author's name heads each run of messages by the same person.
    let prevFrom = null;
    for (const it of items) {
      const from = it.kind === "msg" ? it.m.from : it.kind === "pending" ? store.me : null;
      it.first = from !== prevFrom;
      prevFrom = from;
    }

    const directPeer = c.kind === "direct" ? peerOf(c.id, store.me) : null;
    reconcile($("msg-list"), items, {
      key: (it) => it.key,
      sig: (it) => {
        if (it.kind === "note") return "n";
        if (it.kind === "pending") return `p|${it.first}|${it.p.failed ? it.p.error : ""}`;
        const readers = it.m.from === store.me ? store.readersOf(c, it.m.seq).join(",") : "";
        return `m|${it.first}|${readers}`;
      },
      create: (it) => el("li"),
      update: (li, it) => this.#fillMessage(li, it, c, directPeer),
    });

    // Keep the reader's place: follow new messages only if already at the bottom, and keep the
    // view still when older messages are inserted above.
    const newFirst = $("msg-list").firstElementChild?.dataset.key;
    if (this.#stickToBottom || atBottom) {
      box.scrollTop = box.scrollHeight;
      this.#stickToBottom = false;
    } else if (oldFirst && newFirst !== oldFirst) {
      box.scrollTop = box.scrollHeight - fromBottom;
    }
  }

  #fillMessage(li, it, c, directPeer) {
    const store = this.#store;
    if (it.kind === "note") {
      li.className = "note";
      li.textContent = groupEventText(it.n, store.me);
      return;
    }
    const m = it.kind === "msg" ? it.m : { from: store.me, body: it.p.body, ts: it.p.ts };
    const mine = m.from === store.me;
    li.className = `msg ${mine ? "mine" : "theirs"}${it.first ? " first" : ""}${it.kind === "pending" ? " pending" : ""}${it.p?.failed ? " failed" : ""}`;
    if (it.kind === "msg") li.dataset.seq = m.seq;
    const bubble = el("div", "bubble");
    if (!mine && c.kind === "group" && it.first) {
      const from = el("span", "from", m.from);
      from.style.setProperty("--hue", hueOf(m.from));
      bubble.append(from);
    } else {
      // Screen readers hear who wrote each message even where it is not shown.
      bubble.append(el("span", "visually-hidden", mine ? "You: " : `${m.from}: `));
    }
    bubble.append(el("p", "body", m.body));
    const meta = el("span", "meta");
    const time = el("time", "", shortTime(m.ts));
    time.dateTime = new Date(m.ts).toISOString();
    time.title = fullTime(m.ts);
    meta.append(time);
    if (mine) meta.append(this.#mark(it, c, directPeer));
    bubble.append(meta);
    li.replaceChildren(bubble);
    if (it.p?.failed) {
      const err = el("p", "send-error");
      err.append(`Not sent (${it.p.error}). `);
      const discard = el("button", "link", "Discard");
      discard.type = "button";
      discard.addEventListener("click", () => this.#actions.discardPending(it.p.cmid));
      err.append(discard);
      li.append(err);
    }
  }

  /** Sending (clock), sent (one tick), read (two ticks; in groups, by everyone). */
  #mark(it, c, directPeer) {
    const mark = el("span", "mark");
    if (it.kind === "pending") {
      mark.textContent = it.p.failed ? "!" : "◷";
      mark.dataset.mark = it.p.failed ? "failed" : "sending";
      mark.title = it.p.failed ? "Not sent" : "Sending";
    } else {
      const readers = this.#store.readersOf(c, it.m.seq);
      const members = (this.#store.group(c.group)?.members || []).filter((u) => u !== this.#store.me);
      const read = c.kind === "direct" ? directPeer === this.#store.me || readers.includes(directPeer) : readers.length > 0;
      const all = c.kind === "group" && members.length > 0 && members.every((u) => readers.includes(u));
      mark.textContent = read ? "✓✓" : "✓";
      mark.dataset.mark = read ? "read" : "sent";
      mark.title = read ? (c.kind === "group" ? `Read by ${all ? "everyone" : readers.join(", ")}` : "Read") : "Sent";
    }
    mark.setAttribute("aria-label", mark.title);
    return mark;
  }

  // ---- group dialog ----

  showGroup(groupId) {
    const d = $("group-dialog");
    d.dataset.group = groupId;
    $("group-error").textContent = "";
    this.renderGroup();
    if (!d.open) d.showModal();
  }

  renderGroup() {
    const d = $("group-dialog");
    const id = d.dataset.group;
    if (!id || !this.#store) return;
    const store = this.#store;
    const g = store.group(id) || {};
    const owner = g.owner === store.me;
    $("group-dialog-title").textContent = g.name || id;
    $("group-dialog-sub").textContent = `Group id ${id}${g.owner ? ` · owner ${g.owner === store.me ? "you" : g.owner}` : ""}`;
    const list = $("member-list");
    list.replaceChildren();
    for (const u of g.members || []) {
      const li = el("li");
      const av = avatar(u, false);
      const p = store.presence(u);
      if (u === store.me) av.querySelector(".dot").dataset.status = $("me-status").value;
      else if (p) av.querySelector(".dot").dataset.status = p.status;
      const name = el("span", "member-name", u === store.me ? `${u} (you)` : u);
      const status = el("span", "sub", u === g.owner ? "owner" : u === store.me ? "" : presenceText(p));
      const text = el("span", "member-text");
      text.append(name, status);
      li.append(av, text);
      if (owner && u !== store.me) {
        const rm = el("button", "ghost small", "Remove");
        rm.type = "button";
        rm.setAttribute("aria-label", `Remove ${u}`);
        rm.addEventListener("click", () => this.#groupAction(() => this.#actions.groupRemove(id, [u])));
        li.append(rm);
      }
      list.append(li);
    }
    $("group-add-form").hidden = !owner;
  }

  async #groupAction(fn) {
    $("group-error").textContent = "";
    try {
      await fn();
      this.renderGroup();
    } catch (err) {
      $("group-error").textContent = err.message;
    }
  }

  // ---- input ----

  #setView(view) {
    $("panes").dataset.view = view;
  }

  #quietly(fn) {
    const log = $("msg-list");
    log.setAttribute("aria-live", "off");
    fn();
    setTimeout(() => log.setAttribute("aria-live", "polite"), 0);
  }

  #composerNote(text) {
    this.#note = text;
    this.render();
  }

  #autosize() {
    const t = $("composer-input");
    t.style.height = "";
    // A hidden textarea measures 0: leave it at its natural height until it shows.
    if (t.value && t.offsetParent) t.style.height = `${Math.min(t.scrollHeight + 2, 160)}px`;
  }

  #bindSignIn() {
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const user = $("signin-user").value.trim();
      const device = $("signin-device").value.trim();
      const token = $("signin-token").value.trim();
      if (!isValidId(device)) return this.signInError("Choose a device name: letters, digits and _ . @ -");
      if (!token && !isValidId(user)) return this.signInError("Choose a user name: letters, digits and _ . @ -, up to 64.");
      this.signInError("", { busy: true });
      this.#actions.signIn(token ? { token, device } : { user, device });
    });
  }

  #bindApp() {
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const t = $("composer-input");
      const body = t.value;
      if (!body.trim() || !this.#current) return;
      if (utf8Length(body) > MAX_BODY_BYTES) {
        this.#composerNote(`Too long to send: at most ${MAX_BODY_BYTES} bytes.`);
        return;
      }
      this.#composerNote("");
      this.#actions.send(this.#current, body);
      t.value = "";
      this.#autosize();
      this.#stickToBottom = true;
      t.focus();
    });
    $("composer-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      } else if (e.key === "Escape") {
        e.preventDefault();
        this.#leaveChat();
      }
    });
    $("composer-input").addEventListener("input", () => {
      this.#autosize();
      if (this.#current && $("composer-input").value) this.#actions.typing(this.#current);
    });
    $("back-btn").addEventListener("click", () => this.#leaveChat());
    $("messages").addEventListener("keydown", (e) => {
      if (e.key === "Escape") this.#leaveChat();
    });
    $("load-older").addEventListener("click", () => this.#current && this.#actions.loadOlder(this.#current));
    $("messages").addEventListener("scroll", () => {
      const box = $("messages");
      const c = this.#current && this.#store.conv(this.#current);
      if (box.scrollTop < 40 && c?.mayHaveOlder()) this.#actions.loadOlder(c.id);
    });
    // Arrow keys move between conversations, as in any list; Tab leaves the list.
    $("conv-list").addEventListener("keydown", (e) => {
      const items = [...$("conv-list").querySelectorAll(".conv-item")];
      const i = items.indexOf(document.activeElement);
      if (i < 0) return;
      let next = null;
      if (e.key === "ArrowDown") next = items[Math.min(i + 1, items.length - 1)];
      else if (e.key === "ArrowUp") next = items[Math.max(i - 1, 0)];
      else if (e.key === "Home") next = items[0];
      else if (e.key === "End") next = items[items.length - 1];
      if (next) {
        e.preventDefault();
        next.focus();
      }
    });
    $("me-status").addEventListener("change", (e) => this.#actions.setStatus(e.target.value));
    $("signout").addEventListener("click", () => this.#actions.signOut());
    $("conn-retry").addEventListener("click", () => this.#actions.retry());
    $("group-info-btn").addEventListener("click", () => {
      const c = this.#current && parseConv(this.#current);
      if (c?.kind === "group") this.#actions.showGroup(c.group);
    });
    document.addEventListener("visibilitychange", () => this.render());
    window.addEventListener("focus", () => this.render());
    PHONE.addEventListener("change", () => this.render());
  }

  /** Escape or Back: on a phone, back to the list; on a wide screen, to the open chat's entry. */
  #leaveChat() {
    const id = this.#current;
    if (PHONE.matches) {
      this.#setView("list");
      this.render();
    }
    const item = id && $("conv-list").querySelector(`.conv-item[data-conv="${CSS.escape(id)}"]`);
    (item || $("new-chat-btn")).focus();
  }

  #bindDialogs() {
    for (const d of document.querySelectorAll("dialog")) {
      d.querySelector("[data-close]")?.addEventListener("click", () => d.close());
    }
    $("new-chat-btn").addEventListener("click", () => {
      $("new-chat-error").textContent = "";
      $("new-chat-form").reset();
      $("new-chat-dialog").showModal();
    });
    $("new-chat-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const user = $("new-chat-user").value.trim();
      if (!isValidId(user)) {
        $("new-chat-error").textContent = "A user id is 1–64 letters, digits or _ . @ -";
        return;
      }
      $("new-chat-dialog").close();
      this.#actions.startChat(user);
    });
    $("new-group-btn").addEventListener("click", () => {
      $("new-group-error").textContent = "";
      $("new-group-form").reset();
      $("new-group-dialog").showModal();
    });
    $("new-group-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = $("new-group-name").value.trim();
      const id = $("new-group-id").value.trim();
      try {
        if (!name) throw new Error("Give the group a name.");
        if (utf8Length(name) > 128) throw new Error("The name is too long (at most 128 bytes).");
        if (id && !isValidId(id)) throw new Error("A group id is 1–64 letters, digits or _ . @ -");
        const members = parseUserList($("new-group-members").value);
        await this.#actions.createGroup({ name, id: id || undefined, members });
        $("new-group-dialog").close();
      } catch (err) {
        $("new-group-error").textContent = err.message;
      }
    });
    $("group-add-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = $("group-dialog").dataset.group;
      this.#groupAction(async () => {
        const users = parseUserList($("group-add-users").value);
        if (users.length === 0) throw new Error("Enter the user ids to add.");
        await this.#actions.groupAdd(id, users);
        $("group-add-users").value = "";
      });
    });
    $("group-leave").addEventListener("click", () => {
      const id = $("group-dialog").dataset.group;
      this.#groupAction(async () => {
        await this.#actions.groupLeave(id);
        $("group-dialog").close();
      });
    });
  }
}
