// Parley's built-in web client: wires the protocol client, the local store and the UI.
//
// Read this file for what the client does and when; protocol.js for how it talks to the server
// (reconnects, exactly-once delivery), store.js for what it remembers, ui.js for the DOM.

import { ParleyClient, DISCONNECTED } from "./protocol.js";
import { Store } from "./store.js";
import { ChatUI } from "./ui.js";
import { directConv, groupConv, newCmid, newDeviceId, parseConv, peerOf } from "./ids.js";

// The tab's sign-in lives in sessionStorage: a reload stays signed in, while another tab starts
// at the sign-in screen and picks its own device id. A token never goes to localStorage.
const SESSION_KEY = "parley.session";
const LAST_USER_KEY = "parley.last_user";
const TYPING_EVERY_MS = 2000;

class App {
  ui = new ChatUI(this.#actions());
  client = null;
  store = null;
  #typingSentAt = new Map(); // conv -> ms
  #loading = new Set(); // convs with a history request in flight
  #groupsToRefresh = new Set();
  #signedIn = false; // a hello succeeded with the current credentials

  start() {
    const saved = readJSON(sessionStorage, SESSION_KEY);
    if (saved?.device && (saved.user || saved.token)) {
      // Show what we saved at once; the connection catches up in the background.
      if (saved.resolvedUser) this.#openStore(saved.resolvedUser, saved.device);
      this.#connect(saved);
    } else {
      this.ui.showSignIn({ user: localStorage.getItem(LAST_USER_KEY) || "", device: newDeviceId() });
    }
    addEventListener("pagehide", () => this.store?.persist());
    addEventListener("online", () => this.client?.reconnectNow());
  }

  #openStore(user, device) {
    this.store = new Store(user, device);
    this.store.onIncoming = (m) => {
      if (m.conv !== this.ui.current || !this.ui.convVisible()) {
        this.ui.announce(`New message from ${m.from}${m.conv.startsWith("g:") ? ` in ${this.store.title(this.store.conv(m.conv))}` : ""}: ${m.body}`);
      }
    };
    // Membership events carry no group name or owner: ask the group once the batch is applied.
    this.store.onGroupEvent = (ev) => {
      if (this.store.conv(groupConv(ev.group))?.member === false) return;
      if (this.#groupsToRefresh.size === 0) queueMicrotask(() => this.#refreshGroups());
      this.#groupsToRefresh.add(ev.group);
    };
    // Watch everyone the conversations show, including people who appear later (a first
    // message from someone new, a member added to a group). watch() skips the known ones.
    this.store.subscribe((store) => this.client?.watch(store.peopleToWatch()));
    this.ui.showApp(this.store);
  }

  #refreshGroups() {
    const groups = [...this.#groupsToRefresh];
    this.#groupsToRefresh.clear();
    for (const g of groups) this.#refreshGroup(g);
  }

  #connect(creds) {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    this.#signedIn = false;
    const client = new ParleyClient({
      url,
      credentials: creds,
      // The store is opened at the first hello (a token names its user only then), before any
      // event is applied, so these always find it.
      inbox: {
        last: () => this.store.last(),
        apply: (ev, live) => this.store.apply(ev, live),
        reset: () => this.store.reset(),
        persist: () => this.store.persist(),
      },
      onSession: (hello) => this.#onSession(creds, hello),
      onSynced: () => this.#onSynced(),
      onEvent: (ev) => this.#onEvent(ev),
      onState: (s) => this.#onState(creds, s),
      onSent: (entry, ok) => this.store.sent(entry, ok),
      onSendFailed: (entry, err) => this.store.failed(entry, err),
    });
    this.client = client;
    client.start();
  }

  #onSession(creds, hello) {
    this.#signedIn = true;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ ...creds, resolvedUser: hello.user }));
    if (creds.user) localStorage.setItem(LAST_USER_KEY, creds.user);
    if (!this.store || this.store.me !== hello.user || this.store.device !== hello.device) {
      this.#openStore(hello.user, hello.device);
    }
    // Messages written while offline (or before a reload) go out with their original cmid.
    for (const p of this.store.pendingAll()) this.client.enqueueSend(p);
  }

  async #onSynced() {
    const store = this.store;
    // Read positions move on other devices and receipts are not inbox events, so `convs` is
    // the way to learn them after being away; `groups` gives the names of our groups.
    const [convs, groups] = await Promise.all([
      this.client.request("convs", { limit: 1000 }),
      this.client.request("groups"),
    ]);
    store.mergeConvs(convs.convs);
    const mine = new Set();
    for (const g of groups.groups) {
      mine.add(g.group);
      store.setGroup(g.group, { name: g.name });
      const c = store.ensureConv(groupConv(g.group));
      c.member = true;
    }
    for (const c of store.listConvs()) if (c.kind === "group" && !mine.has(c.group)) c.member = false;
    // Conversations we know only from `convs` (e.g. a group's messages from before we joined)
    // get their newest messages, so the list can show a last line.
    const bare = store.listConvs().filter((c) => c.msgs.size === 0 && c.lastSeq > 0).slice(0, 30);
    await Promise.all(bare.map((c) => this.#loadHistory(c.id)));
    if (this.ui.current) this.#refreshOpenConv(this.ui.current);
    this.client.watch([store.me, ...store.peopleToWatch()]);
  }

  #onEvent(ev) {
    const store = this.store;
    switch (ev.op) {
      case "receipt":
        store.onReceipt(ev);
        break;
      case "typing":
        store.onTyping(ev);
        break;
      case "presence":
        store.setPresence(ev);
        if (ev.user === store.me) this.ui.setOwnStatus(ev.status);
        this.ui.renderGroup();
        break;
      case "error":
        // Failures of requests sent without id (typing, read, ack): nothing to retry.
        console.warn(`parley: ${ev.code}: ${ev.message}`);
        break;
      default:
        break;
    }
  }

  #onState(creds, s) {
    this.ui.setConnState(s);
    if (this.store && (s.state === "waiting" || s.state === "stopped")) {
      this.store.clearPresence();
      this.ui.setOwnStatus("offline");
    }
    if (s.state === "online") this.ui.render();
    if (!this.#signedIn) {
      // Still on the sign-in screen (or a reload that has not reached the server yet).
      if (s.state === "stopped" && s.error) {
        sessionStorage.removeItem(SESSION_KEY);
        this.store = null;
        this.ui.showSignIn({ ...creds, error: signInMessage(s.error, creds), tokenBox: s.error.code === "unauthenticated" });
      } else if (s.state === "waiting" && !this.store) {
        this.ui.signInError("Cannot reach the server; still trying…", { busy: true });
      }
    } else if (s.state === "stopped" && s.error) {
      // Refused after having been signed in (an expired token): back to the sign-in screen.
      sessionStorage.removeItem(SESSION_KEY);
      this.ui.showSignIn({ ...creds, token: "", error: s.error.message });
    }
  }

  // ---- conversations ----

  async #loadHistory(convId) {
    if (this.#loading.has(convId)) return;
    const c = this.store.ensureConv(convId);
    this.#loading.add(convId);
    try {
      const fields = { conv: convId, limit: 50 };
      if (c.msgs.size > 0) fields.before = c.minSeq();
      const ok = await this.client.request("history", fields);
      this.store.mergeHistory(convId, ok.msgs, ok.more);
    } catch (err) {
      if (err.code === "forbidden") c.member = false; // removed from the group meanwhile
      else if (err.code !== DISCONNECTED) console.warn("parley: history failed:", err.message);
    } finally {
      this.#loading.delete(convId);
    }
  }

  async #refreshGroup(group) {
    try {
      const info = await this.client.request("group_info", { group });
      this.store.setGroup(group, { name: info.name, owner: info.owner, members: info.members });
      this.store.ensureConv(groupConv(group)).member = true;
      this.client.watch(info.members.filter((u) => u !== this.store.me));
      this.ui.renderGroup();
    } catch (err) {
      if (err.code === "forbidden" || err.code === "not_found") {
        this.store.ensureConv(groupConv(group)).member = false;
        this.ui.render();
      }
    }
  }

  #refreshOpenConv(convId) {
    const c = this.store.conv(convId);
    if (!c) return;
    // Fill a short screen: fetch older messages when we hold only a few.
    if ((c.msgs.size === 0 && c.lastSeq > 0) || (c.msgs.size < 30 && c.mayHaveOlder())) this.#loadHistory(convId);
    if (c.kind === "group" && c.member !== false) this.#refreshGroup(c.group);
  }

  #actions() {
    return {
      signIn: (creds) => this.#connect(creds),
      signOut: () => {
        this.client?.stop();
        // A signed-out browser keeps no messages (it may be shared); the next sign-in is a new
        // device that syncs its own copy. Unsent messages are dropped with it.
        this.store?.erase();
        sessionStorage.removeItem(SESSION_KEY);
        const user = this.store?.me || "";
        this.store = null;
        this.client = null;
        this.ui.showSignIn({ user, device: newDeviceId() });
      },
      retry: () => this.client?.reconnectNow(),
      openConv: (convId) => {
        this.store.touchConv(convId);
        this.ui.openConv(convId);
        this.#refreshOpenConv(convId);
      },
      startChat: (user) => {
        const convId = directConv(this.store.me, user);
        this.store.touchConv(convId);
        this.ui.openConv(convId);
        this.#refreshOpenConv(convId);
        this.client.watch([user]);
      },
      send: (convId, body) => {
        const c = parseConv(convId);
        const entry = { cmid: newCmid(), conv: convId, body, ts: Date.now() };
        if (c.kind === "group") entry.group = c.group;
        else entry.to = peerOf(convId, this.store.me);
        this.store.addPending(entry);
        this.client.enqueueSend(entry);
        this.#typingSentAt.delete(convId);
      },
      typing: (convId) => {
        // At most one typing event per 2 s: receivers show it for ~4 s, so it stays lit.
        const now = Date.now();
        if (now - (this.#typingSentAt.get(convId) || 0) < TYPING_EVERY_MS) return;
        const c = parseConv(convId);
        const target = c.kind === "group" ? { group: c.group } : { to: peerOf(convId, this.store.me) };
        if (this.client.notify("typing", target)) this.#typingSentAt.set(convId, now);
      },
      loadOlder: (convId) => this.#loadHistory(convId),
      afterRender: () => {
        // A conversation on screen is read. Only while online: a read that cannot be sent
        // stays unread here and is sent after the reconnect.
        const convId = this.ui.current;
        if (!convId || !this.ui.convVisible() || this.client?.state.state !== "online") return;
        const seq = this.store.takeRead(convId);
        if (seq) this.client.notify("read", { conv: convId, seq });
      },
      discardPending: (cmid) => {
        this.client.dropSend(cmid);
        this.store.discardPending(cmid);
      },
      setStatus: async (status) => {
        try {
          await this.client.request("presence", { status });
          this.ui.setOwnStatus(status);
        } catch (err) {
          console.warn("parley: presence failed:", err.message);
        }
      },
      showGroup: (group) => {
        this.ui.showGroup(group);
        this.#refreshGroup(group);
      },
      createGroup: async ({ name, id, members }) => {
        const fields = { name, members };
        if (id) fields.group = id;
        const ok = await this.client.request("group_create", fields);
        this.store.setGroup(ok.group, { name, owner: this.store.me, members: [this.store.me, ...members.filter((u) => u !== this.store.me)] });
        this.store.ensureConv(ok.conv).member = true;
        this.store.touchConv(ok.conv);
        this.ui.openConv(ok.conv);
        this.client.watch(members);
      },
      groupAdd: async (group, users) => {
        await this.client.request("group_add", { group, users });
        await this.#refreshGroup(group);
      },
      groupRemove: async (group, users) => {
        await this.client.request("group_remove", { group, users });
        await this.#refreshGroup(group);
      },
      groupLeave: async (group) => {
        await this.client.request("group_leave", { group });
        const convId = groupConv(group);
        this.store.ensureConv(convId).member = false;
        this.store.hideConv(convId);
        if (this.ui.current === convId) this.ui.closeConv();
      },
    };
  }
}

function readJSON(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) || "null");
  } catch {
    return null;
  }
}

function signInMessage(err, creds) {
  if (err.code === "unauthenticated" && creds.user) {
    return "This server does not accept user names: sign in with a token.";
  }
  if (err.code === "unauthenticated") return `The token was refused: ${err.message}`;
  if (err.code === "bad_request") return `The server refused the sign-in: ${err.message}`;
  return err.message;
}

new App().start();
