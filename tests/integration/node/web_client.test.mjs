// End-to-end tests of the built-in web client (src/web/) in a real browser: Debian's Chromium,
// headless, driven by playwright-core, against the real server binary (PARLEY_BIN).
//
// One server and one browser serve the whole file; the scenarios run in order and build on each
// other (the users of the first chat are the ones whose client must survive the restart).
// Screenshots go to test-artifacts/web/ at the repository root.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.resolve(here, "../../../test-artifacts/web");
const BIN = process.env.PARLEY_BIN;
const CHROMIUM = process.env.PARLEY_CHROMIUM || "/usr/bin/chromium";
const ADMIN_TOKEN = "web-test-admin-token-0123456789";
const WAIT = 15000; // generous per-step timeout: the machine is shared
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value; fails with the last value seen. */
async function until(fn, what, timeout = WAIT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The server under test: started, killed and restarted on one port and data directory. */
class Server {
  constructor(port, dataDir) {
    this.port = port;
    this.dataDir = dataDir;
    this.proc = null;
    this.output = "";
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const args = ["--listen", `127.0.0.1:${this.port}`, "--data", this.dataDir, "--threads", "2"];
    this.proc = spawn(BIN, args, {
      env: { ...process.env, PARLEY_ADMIN_TOKEN: ADMIN_TOKEN },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (d) => {
      this.output = (this.output + d.toString()).slice(-20000);
    };
    this.proc.stdout.on("data", keep);
    this.proc.stderr.on("data", keep);
    this.exited = new Promise((resolve) => this.proc.on("exit", (code, signal) => resolve({ code, signal })));
    await until(async () => {
      if (this.proc.exitCode !== null) throw new Error(`server exited: ${this.output}`);
      const res = await fetch(`${this.url}/healthz`);
      return res.status === 200;
    }, "the server to answer /healthz");
  }

  async kill() {
    this.proc.kill("SIGKILL");
    await this.exited;
  }

  async stop() {
    this.proc.kill("SIGTERM");
    return this.exited;
  }

  /** POST /api/v1/send: what an integrator's back end does. */
  async adminSend(msg) {
    const res = await fetch(`${this.url}/api/v1/send`, {
      method: "POST",
      headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, "Content-Type": "application/json" },
      body: JSON.stringify(msg),
    });
    const body = await res.json();
    assert.equal(res.status, 200, `admin send answered ${res.status}: ${JSON.stringify(body)}`);
    return body;
  }
}

// ---- page helpers: what a person does in the client ----

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

async function signIn(page, server, user, device) {
  await page.goto(server.url + "/");
  await page.locator("#signin-user").fill(user, { timeout: WAIT });
  await page.locator("#signin-device").fill(device);
  await page.locator("#signin-user").press("Enter");
  await page.locator("#app").waitFor({ state: "visible", timeout: WAIT });
  await waitOnline(page);
}

async function waitOnline(page, timeout = WAIT) {
  await page.locator('#conn-state[data-state="online"]').waitFor({ timeout });
}

function convItem(page, conv) {
  return page.locator(`.conv-item[data-conv="${conv}"]`);
}

async function openConv(page, conv) {
  await convItem(page, conv).click({ timeout: WAIT });
  await page.locator("#chat-open").waitFor({ state: "visible", timeout: WAIT });
}

async function startChat(page, user) {
  await page.locator("#new-chat-btn").click();
  await page.locator("#new-chat-user").fill(user);
  await page.locator("#new-chat-user").press("Enter");
  await until(async () => (await page.locator("#chat-title").textContent()) === user, `chat with ${user} open`);
}

async function send(page, text) {
  const box = page.locator("#composer-input");
  await box.fill(text);
  await box.press("Enter");
}

/** The open conversation's messages as [{seq, body, mine, mark}], in screen order. */
function shownMessages(page) {
  return page.$$eval("#msg-list > li.msg", (els) =>
    els.map((li) => ({
      seq: li.dataset.seq ? Number(li.dataset.seq) : null,
      body: li.querySelector(".body").textContent,
      mine: li.classList.contains("mine"),
      mark: li.querySelector(".mark")?.dataset.mark || null,
    })),
  );
}

async function waitForMessage(page, body) {
  await page.locator("#msg-list .body", { hasText: body }).first().waitFor({ timeout: WAIT });
}

/** Every expected body is shown exactly once, in this order, and seqs are unique and ascending. */
function assertOnceInOrder(msgs, expected, where) {
  const bodies = msgs.map((m) => m.body);
  for (const e of expected) {
    assert.equal(bodies.filter((b) => b === e).length, 1, `${where}: "${e}" shown once in ${JSON.stringify(bodies)}`);
  }
  const positions = expected.map((e) => bodies.indexOf(e));
  assert.deepEqual([...positions].sort((a, b) => a - b), positions, `${where}: order of ${JSON.stringify(bodies)}`);
  const seqs = msgs.filter((m) => m.seq !== null).map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `${where}: seqs ascending ${seqs}`);
}

async function unreadBadge(page, conv) {
  const badge = convItem(page, conv).locator(".badge");
  return (await badge.count()) ? Number(await badge.textContent()) : 0;
}

// ---- the scenarios ----

describe("web client in Chromium", { timeout: 170000 }, () => {
  let server;
  let browser;
  let tmp;
  const pages = {}; // name -> page
  const contexts = {};
  const consoleErrors = [];

  async function newUserPage(name, viewport = DESKTOP, colorScheme = "light") {
    const context = await browser.newContext({ viewport, colorScheme, deviceScaleFactor: viewport === PHONE ? 2 : 1 });
    const page = await context.newPage();
    page.on("pageerror", (err) => consoleErrors.push(`${name}: ${err.message}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) {
        consoleErrors.push(`${name}: ${m.text()}`);
      }
    });
    contexts[name] = context;
    pages[name] = page;
    return page;
  }

  before(async () => {
    assert.ok(BIN, "PARLEY_BIN must name the server binary");
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "parley-web-"));
    server = new Server(await freePort(), path.join(tmp, "data"));
    await server.start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Keep the browser off the network: only the server under test on 127.0.0.1.
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });

  after(async () => {
    await browser?.close();
    if (server?.proc && server.proc.exitCode === null) {
      const { code, signal } = await server.stop();
      assert.equal(signal, null, `server died of ${signal}:\n${server.output}`);
      assert.equal(code, 0, `server exit code after SIGTERM:\n${server.output}`);
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it("serves the client's files with their content types", async () => {
    for (const [file, type] of [["/", "text/html"], ["/app.js", "text/javascript"], ["/style.css", "text/css"], ["/icon.svg", "image/svg+xml"]]) {
      const res = await fetch(server.url + file);
      assert.equal(res.status, 200, file);
      assert.ok(res.headers.get("content-type").startsWith(type), `${file}: ${res.headers.get("content-type")}`);
    }
  });

  it("two users chat both ways, with presence, typing and read marks", async () => {
    const alice = await newUserPage("alice");
    const bob = await newUserPage("bob");
    await signIn(alice, server, "alice", "laptop");
    await shot(alice, "01-desktop-empty");
    await signIn(bob, server, "bob", "desktop");

    await startChat(alice, "bob");
    // Bob is online: his dot in alice's chat header says so.
    await alice.locator('#chat-dot[data-status="online"]').waitFor({ timeout: WAIT });
    await send(alice, "Hi Bob, lunch at noon?");
    await waitForMessage(alice, "Hi Bob, lunch at noon?");

    // Bob sees the new conversation with one unread message, opens it, reads it.
    await until(async () => (await unreadBadge(bob, "d:alice:bob")) === 1, "bob's unread badge");
    await openConv(bob, "d:alice:bob");
    await waitForMessage(bob, "Hi Bob, lunch at noon?");
    await until(async () => (await unreadBadge(bob, "d:alice:bob")) === 0, "bob's badge cleared");
    // ...and alice's message turns "read".
    await until(async () => (await shownMessages(alice)).at(-1)?.mark === "read", "read mark on alice's message");

    // Bob types: alice sees it; then bob answers.
    await bob.locator("#composer-input").pressSequentially("Sure", { delay: 30 });
    await until(async () => (await alice.locator("#typing").textContent()) === "bob is typing…", "typing indicator");
    await bob.locator("#composer-input").press("End");
    await bob.locator("#composer-input").pressSequentially(", see you there!");
    await bob.locator("#composer-input").press("Enter");
    await waitForMessage(alice, "Sure, see you there!");
    await until(async () => (await alice.locator("#typing").textContent()) === "", "typing cleared by the message");
    await send(alice, "Génial, à tout à l’heure");
    await waitForMessage(bob, "Génial, à tout à l’heure");

    const expected = ["Hi Bob, lunch at noon?", "Sure, see you there!", "Génial, à tout à l’heure"];
    assertOnceInOrder(await shownMessages(alice), expected, "alice");
    assertOnceInOrder(await shownMessages(bob), expected, "bob");
    const aliceView = await shownMessages(alice);
    assert.deepEqual(aliceView.map((m) => m.mine), [true, false, true]);
    await until(async () => (await shownMessages(alice)).at(-1)?.mark === "read", "bob read alice's last message");
    // Alice sets herself busy: bob's view of her follows, then back to online.
    await alice.locator("#me-status").selectOption("busy");
    await bob.locator('#chat-dot[data-status="busy"]').waitFor({ timeout: WAIT });
    assert.equal(await bob.locator("#chat-sub").textContent(), "busy");
    await alice.locator("#me-status").selectOption("online");
    await bob.locator('#chat-dot[data-status="online"]').waitFor({ timeout: WAIT });
    await shot(alice, "02-desktop-chat-alice");
    await shot(bob, "03-desktop-chat-bob");
  });

  it("a group of three: create, members see messages, add and remove, history for a newcomer, leave", async () => {
    const alice = pages.alice;
    const bob = pages.bob;
    const carol = await newUserPage("carol", PHONE);
    await signIn(carol, server, "carol", "phone");

    await alice.locator("#new-group-btn").click();
    await alice.locator("#new-group-name").fill("Team Lunch");
    await alice.locator("#new-group-id").fill("team");
    await alice.locator("#new-group-members").fill("bob, carol");
    await alice.locator("#new-group-members").press("Enter");
    await until(async () => (await alice.locator("#chat-title").textContent()) === "Team Lunch", "group open for alice");
    await send(alice, "Welcome to the team chat");

    for (const p of [bob, carol]) {
      await until(async () => (await convItem(p, "g:team").locator(".conv-name").textContent()) === "Team Lunch", "group listed");
    }
    await shot(carol, "04-phone-list");
    await openConv(carol, "g:team");
    await waitForMessage(carol, "Welcome to the team chat");
    await send(carol, "Hello from my phone");
    await waitForMessage(alice, "Hello from my phone");
    await openConv(bob, "g:team");
    await waitForMessage(bob, "Hello from my phone");
    await send(bob, "Hi all");
    for (const p of [alice, carol]) await waitForMessage(p, "Hi all");
    const expected = ["Welcome to the team chat", "Hello from my phone", "Hi all"];
    for (const [name, p] of [["alice", alice], ["bob", bob], ["carol", carol]]) {
      assertOnceInOrder(await shownMessages(p), expected, name);
    }
    // Others' messages carry their author's name in a group.
    assert.equal(await alice.locator("#msg-list li.theirs .from").first().textContent(), "carol");
    await shot(carol, "05-phone-group-chat");

    // A back end fills the group with a backlog before dave joins; dave reads it with history,
    // scrolling back beyond the first page.
    for (let i = 1; i <= 60; i++) {
      await server.adminSend({ from: "alice", group: "team", cmid: `backlog-${i}`, body: `backlog ${i}` });
    }
    await alice.locator("#group-info-btn").click();
    await alice.locator("#member-list li").nth(2).waitFor({ timeout: WAIT });
    await alice.locator("#group-add-users").fill("dave");
    await alice.locator("#group-add-users").press("Enter");
    await until(async () => (await alice.locator("#member-list li").count()) === 4, "dave in the member list");
    await shot(alice, "06-desktop-group-members");

    const dave = await newUserPage("dave", DESKTOP, "dark");
    await signIn(dave, server, "dave", "laptop");
    await openConv(dave, "g:team");
    await waitForMessage(dave, "backlog 60");
    await until(async () => {
      await dave.locator("#messages").evaluate((el) => el.scrollTo(0, 0));
      return (await dave.locator("#msg-list .body", { hasText: /^Welcome to the team chat$/ }).count()) === 1;
    }, "dave scrolled back to the group's first message");
    const daveView = await shownMessages(dave);
    assertOnceInOrder(daveView, [...expected, ...Array.from({ length: 60 }, (_, i) => `backlog ${i + 1}`)], "dave");
    assert.deepEqual(daveView.map((m) => m.seq), Array.from({ length: 63 }, (_, i) => i + 1));
    await shot(dave, "07-desktop-dark-newcomer-history");

    // The owner removes dave: his composer closes.
    await alice.locator('#member-list button[aria-label="Remove dave"]').click();
    await until(async () => (await alice.locator("#member-list li").count()) === 3, "dave removed from the list");
    await alice.keyboard.press("Escape");
    await dave.locator("#composer-input:disabled").waitFor({ timeout: WAIT });
    await dave.close();

    // Carol leaves; the others see it in the conversation.
    await carol.locator("#group-info-btn").click();
    await carol.locator("#group-leave").click();
    await until(async () => (await convItem(carol, "g:team").count()) === 0, "group gone from carol's list");
    await alice.locator("#msg-list li.note", { hasText: "carol left" }).waitFor({ timeout: WAIT });
    await shot(alice, "08-desktop-group-after-leave");
  });

  it("two tabs of one user stay in step", async () => {
    const alice = pages.alice;
    const bob = pages.bob;
    // A second tab of alice's browser, signed in as another device.
    const tab2 = await contexts.alice.newPage();
    pages.alice2 = tab2;
    await signIn(tab2, server, "alice", "tablet");
    // The new device replays alice's inbox: the direct chat is there with its messages.
    await openConv(tab2, "d:alice:bob");
    assertOnceInOrder(await shownMessages(tab2), ["Hi Bob, lunch at noon?", "Sure, see you there!", "Génial, à tout à l’heure"], "tab2");

    // Both tabs look at the group, so bob's next message arrives unread in both...
    await openConv(alice, "g:team");
    await openConv(tab2, "g:team");
    await openConv(bob, "d:alice:bob");
    await send(bob, "Are you on your tablet?");
    await until(async () => (await unreadBadge(alice, "d:alice:bob")) === 1, "unread in tab 1");
    await until(async () => (await unreadBadge(tab2, "d:alice:bob")) === 1, "unread in tab 2");
    // ...until tab 2 opens the chat and reads it: the receipt clears tab 1's badge too.
    await openConv(tab2, "d:alice:bob");
    await waitForMessage(tab2, "Are you on your tablet?");
    await until(async () => (await unreadBadge(alice, "d:alice:bob")) === 0, "tab 1 badge cleared by tab 2's read");

    // What tab 2 sends shows in tab 1 as alice's own message, once.
    await send(tab2, "Yes, writing from the tablet");
    await openConv(alice, "d:alice:bob");
    await waitForMessage(alice, "Yes, writing from the tablet");
    await waitForMessage(bob, "Yes, writing from the tablet");
    for (const [name, p] of [["tab1", alice], ["tab2", tab2], ["bob", bob]]) {
      const msgs = await shownMessages(p);
      assertOnceInOrder(msgs, ["Génial, à tout à l’heure", "Are you on your tablet?", "Yes, writing from the tablet"], name);
    }
    assert.equal((await shownMessages(alice)).at(-1).mine, true);
    await tab2.close();
  });

  it("survives a server crash: reconnects, catches up, sends what was queued, no duplicates", async () => {
    const alice = pages.alice;
    const bob = pages.bob;
    await openConv(alice, "d:alice:bob");
    await openConv(bob, "d:alice:bob");

    await server.kill();
    await alice.locator('#conn-state[data-state="waiting"]').waitFor({ timeout: WAIT });
    await shot(alice, "09-desktop-offline");
    // Written while the server is down: stays pending with its cmid.
    await send(alice, "Sent while offline");
    await alice.locator("#msg-list li.pending", { hasText: "Sent while offline" }).waitFor({ timeout: WAIT });
    // Let the back-off grow, so that the next attempt is seconds away after the restart.
    await sleep(4000);
    await server.start();
    // Bob's back end posts while both browsers are still disconnected.
    for (let i = 1; i <= 3; i++) {
      await server.adminSend({ from: "bob", to: "alice", cmid: `while-down-${i}`, body: `While you were away ${i}` });
    }
    const stateAfterPosts = await alice.locator("#conn-state").getAttribute("data-state");
    assert.notEqual(stateAfterPosts, "online", "alice must still be disconnected when the back end posts");

    await waitOnline(alice, 30000);
    await waitOnline(bob, 30000);
    const expected = [
      "Hi Bob, lunch at noon?",
      "Sure, see you there!",
      "Génial, à tout à l’heure",
      "Are you on your tablet?",
      "Yes, writing from the tablet",
      "Sent while offline",
      "While you were away 1",
      "While you were away 2",
      "While you were away 3",
    ];
    const offlineSet = (msgs) => expected.slice(5).every((e) => msgs.some((m) => m.body === e));
    await until(async () => offlineSet(await shownMessages(alice)), "alice caught up");
    await until(async () => offlineSet(await shownMessages(bob)), "bob caught up");
    await until(async () => (await alice.locator("#msg-list li.pending").count()) === 0, "nothing pending");
    // The queued message went out exactly once, after the reconnect: the server sequenced it
    // after what bob's back end posted meanwhile, and both sides show the server's order.
    for (const [name, p] of [["alice", alice], ["bob", bob]]) {
      const msgs = await shownMessages(p);
      const order = (body) => msgs.find((m) => m.body === body).seq;
      const rest = expected.slice(0, 5);
      assertOnceInOrder(msgs, rest, name);
      for (const e of expected.slice(5)) assert.equal(msgs.filter((m) => m.body === e).length, 1, `${name}: ${e} once`);
      for (let i = 1; i <= 2; i++) assert.ok(order(`While you were away ${i}`) < order(`While you were away ${i + 1}`), `${name}: while-away order`);
      assert.ok(order("While you were away 3") < order("Sent while offline"), `${name}: queued message sequenced on reconnect`);
      assert.deepEqual(msgs.map((m) => m.seq), [...msgs.map((m) => m.seq)].sort((a, b) => a - b), `${name}: seq order`);
      assert.equal(new Set(msgs.map((m) => m.seq)).size, msgs.length, `${name}: no seq twice`);
    }
    await shot(alice, "10-desktop-after-restart");

    // A reload resumes from the saved state: still everything once.
    const before = await shownMessages(alice);
    await alice.reload();
    await waitOnline(alice);
    await openConv(alice, "d:alice:bob");
    await until(async () => (await shownMessages(alice)).length === before.length, "same messages after reload");
    assert.deepEqual((await shownMessages(alice)).map((m) => [m.seq, m.body]), before.map((m) => [m.seq, m.body]));
  });

  it("shows a user going offline, and the phone layout switches panes", async () => {
    const alice = pages.alice;
    await openConv(alice, "d:alice:bob");
    await alice.locator('#chat-dot[data-status="online"]').waitFor({ timeout: WAIT });
    await contexts.bob.close();
    await alice.locator('#chat-dot[data-status="offline"]').waitFor({ timeout: WAIT });
    assert.match(await alice.locator("#chat-sub").textContent(), /^last seen/);
    await shot(alice, "11-desktop-peer-offline");

    // Phone: the list and the chat take turns; Back (and Escape) return to the list.
    const carol = pages.carol;
    await carol.locator("#new-chat-btn").click();
    await carol.locator("#new-chat-user").fill("alice");
    await carol.locator("#new-chat-user").press("Enter");
    await send(carol, "Phone check");
    await waitForMessage(carol, "Phone check");
    assert.equal(await carol.locator(".sidebar").isVisible(), false, "list hidden while chatting on a phone");
    await shot(carol, "12-phone-chat");
    await carol.locator("#back-btn").click();
    await carol.locator(".sidebar").waitFor({ state: "visible", timeout: WAIT });
    assert.equal(await carol.locator(".chat").isVisible(), false, "chat hidden in the phone list view");
    await openConv(alice, "d:alice:carol");
    await waitForMessage(alice, "Phone check");

    // Keyboard: Escape leaves the message box for the conversation's entry in the list, arrow
    // keys move along the list, Enter opens a conversation.
    await alice.locator("#composer-input").focus();
    await alice.keyboard.press("Escape");
    assert.equal(await alice.evaluate(() => document.activeElement.dataset.conv), "d:alice:carol");
    await alice.keyboard.press("ArrowDown");
    const next = await alice.evaluate(() => document.activeElement.dataset.conv);
    assert.ok(next && next !== "d:alice:carol", `arrow moved to ${next}`);
    await alice.keyboard.press("Enter");
    await until(async () => (await alice.locator('.conv-item[aria-current="true"]').getAttribute("data-conv")) === next, "Enter opened it");
    assert.equal(await alice.evaluate(() => document.activeElement.id), "composer-input");
    // Every form control has a label.
    for (const p of [alice, carol]) {
      const unlabelled = await p.$$eval("input, textarea, select", (els) =>
        els.filter((e) => !e.labels?.length && !e.getAttribute("aria-label")).map((e) => e.id),
      );
      assert.deepEqual(unlabelled, []);
    }

    assert.deepEqual(consoleErrors, [], "no script errors in any page");
  });
});
