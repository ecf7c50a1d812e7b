"""Presence against the real server (PROTOCOL.md section 6, docs/protocol.md section 6).

Run: PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_presence.py
"""

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ServerTestCase, main, wall_ms  # noqa: E402

SLACK_MS = 2000  # "approximately": last_seen against the test's reading of the same clock
CHANGE_WITHIN = 1.0  # a change reaches watchers within a second
QUIET = 0.7  # how long "no event" is awaited

LATENCIES = {}  # what -> [seconds], printed at the end for the report


def note(what, seconds):
    LATENCIES.setdefault(what, []).append(seconds)


def tearDownModule():
    for what, vals in sorted(LATENCIES.items()):
        vals = sorted(vals)
        sys.stderr.write(f"presence latency {what}: n={len(vals)} "
                         f"min={vals[0] * 1000:.1f}ms max={vals[-1] * 1000:.1f}ms\n")


class PresenceCase(ServerTestCase):
    def assertEntry(self, entry, user, status, last_seen=None):
        self.assertEqual(entry.get("user"), user, entry)
        self.assertEqual(entry.get("status"), status, entry)
        self.assertIsInstance(entry.get("last_seen"), int, entry)
        if last_seen is not None:
            self.assertEqual(entry["last_seen"], last_seen, entry)

    def assertNear(self, ts, lo, hi, what):
        self.assertTrue(lo - SLACK_MS <= ts <= hi + SLACK_MS,
                        f"{what}: {ts} not within [{lo}, {hi}] +- {SLACK_MS} ms")

    def assertEvent(self, ev, user, status):
        self.assertEqual(ev.get("op"), "presence", ev)
        self.assertNotIn("id", ev, ev)
        self.assertEqual(ev.get("user"), user, ev)
        self.assertEqual(ev.get("status"), status, ev)
        self.assertIsInstance(ev.get("last_seen"), int, ev)

    async def snapshot(self, user, watcher_name="snap"):
        """One user's presence as a fresh connection's watch sees it."""
        w = await self.client(f"{watcher_name}{len(self.clients)}")
        ans = await w.ok("watch", users=[user])
        self.assertEqual(len(ans["presence"]), 1, ans)
        await w.close()
        return ans["presence"][0]

    async def change(self, watcher, user, status, since, what):
        """Waits for `user`'s presence event on `watcher`; checks and notes the latency."""
        ev, at = await watcher.next_event_timed("presence", timeout=5,
                                                match=lambda e: e.get("user") == user)
        self.assertEvent(ev, user, status)
        took = at - since
        note(what, took)
        self.assertLessEqual(took, CHANGE_WITHIN,
                             f"{what}: presence event after {took * 1000:.0f} ms")
        return ev


class PresenceTest(PresenceCase):
    async def test_never_connected_user_is_offline_with_last_seen_0(self):
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["ghost"])
        self.assertEqual(len(ans["presence"]), 1, ans)
        self.assertEntry(ans["presence"][0], "ghost", "offline", last_seen=0)

    async def test_last_seen_survives_a_restart(self):
        # "When the user was last connected" must not become "never" (0) because the server
        # restarted; a user never connected stays 0.
        bob = await self.client("bob")
        await bob.close()
        gone = wall_ms()
        w = await self.client("watcher")
        before = (await w.ok("watch", users=["bob"]))["presence"][0]
        self.assertEntry(before, "bob", "offline")
        self.assertNear(before["last_seen"], gone - 1000, gone, "last_seen after the close")
        await w.close()
        self.clients.clear()
        await self.restart_server()
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["bob", "ghost"])
        self.assertEntry(ans["presence"][0], "bob", "offline", last_seen=before["last_seen"])
        self.assertEntry(ans["presence"][1], "ghost", "offline", last_seen=0)
        # Online again, then gone again: the newer time replaces the stored one.
        await asyncio.sleep(0.05)
        bob = await self.client("bob")
        ev = await w.next_event("presence", match=lambda e: e.get("user") == "bob")
        self.assertEntry(ev, "bob", "online")
        await bob.close()
        ev = await w.next_event("presence", match=lambda e: e.get("user") == "bob")
        self.assertEntry(ev, "bob", "offline")
        self.assertGreater(ev["last_seen"], before["last_seen"])
        await w.close()
        self.clients.clear()
        await self.restart_server()
        self.assertEntry(await self.snapshot("bob"), "bob", "offline", last_seen=ev["last_seen"])

    async def test_last_seen_is_stored_within_seconds_and_survives_a_crash(self):
        # Times are written once a second, not per change; a crash (SIGKILL) after that keeps
        # them. A user online at the crash keeps the time they came online.
        t0 = wall_ms()
        carol = await self.client("carol")
        bob = await self.client("bob")
        await bob.close()
        gone = wall_ms()
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["bob", "carol"])
        bob_seen = ans["presence"][0]["last_seen"]
        self.assertNear(bob_seen, t0, gone, "bob's last_seen after the close")
        await asyncio.sleep(2.0)
        self.server.kill()
        await asyncio.gather(carol.close(), w.close(), return_exceptions=True)
        self.clients.clear()
        await asyncio.to_thread(self.server.start)
        after = await self.snapshot("bob")
        self.assertEntry(after, "bob", "offline", last_seen=bob_seen)
        carol_after = await self.snapshot("carol")
        self.assertEntry(carol_after, "carol", "offline")
        self.assertNear(carol_after["last_seen"], t0, gone, "carol's stored time of coming online")

    async def test_online_after_hello_and_last_seen_is_now_while_connected(self):
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["bob"])
        self.assertEntry(ans["presence"][0], "bob", "offline", last_seen=0)
        t0 = wall_ms()
        start = time.monotonic()
        await self.client("bob")
        ev = await self.change(w, "bob", "online", start, "hello")
        t1 = wall_ms()
        self.assertNear(ev["last_seen"], t0, t1, "last_seen of the online event")
        first = await self.snapshot("bob")
        self.assertEntry(first, "bob", "online")
        self.assertNear(first["last_seen"], t0, wall_ms(), "last_seen while connected")
        await asyncio.sleep(1.5)
        t2 = wall_ms()
        second = await self.snapshot("bob")
        self.assertEntry(second, "bob", "online")
        self.assertNear(second["last_seen"], t2, wall_ms(), "last_seen while connected, later")
        self.assertGreaterEqual(second["last_seen"] - first["last_seen"], 1000,
                                f"last_seen is not 'now' while connected: {first} then {second}")

    async def test_busy_via_presence_then_back_to_online(self):
        bob = await self.client("bob")
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["bob"])
        self.assertEntry(ans["presence"][0], "bob", "online")
        start = time.monotonic()
        await bob.ok("presence", status="busy")
        await self.change(w, "bob", "busy", start, "presence request")
        self.assertEntry(await self.snapshot("bob"), "bob", "busy")
        # The same status again is no change.
        await bob.ok("presence", status="busy")
        await w.no_event("presence", QUIET)
        start = time.monotonic()
        await bob.ok("presence", status="online")
        await self.change(w, "bob", "online", start, "presence request")
        self.assertEntry(await self.snapshot("bob"), "bob", "online")

    async def test_presence_status_other_than_online_or_busy_is_bad_request(self):
        bob = await self.client("bob")
        w = await self.client("watcher")
        await w.ok("watch", users=["bob"])
        for status in ("offline", "away", ""):
            await bob.error("presence", "bad_request", status=status)
        await bob.error("presence", "bad_request")
        await w.no_event("presence", QUIET)
        self.assertEntry(await self.snapshot("bob"), "bob", "online")

    async def test_second_device_hello_does_not_reset_busy(self):
        d1 = await self.client("bob", "d1")
        await d1.ok("presence", status="busy")
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["bob"])
        self.assertEntry(ans["presence"][0], "bob", "busy")
        d2 = await self.client("bob", "d2")
        await w.no_event("presence", QUIET)
        self.assertEntry(await self.snapshot("bob"), "bob", "busy")
        # presence sets the status for all of the user's devices
        start = time.monotonic()
        await d2.ok("presence", status="online")
        await self.change(w, "bob", "online", start, "presence request")
        start = time.monotonic()
        await d1.ok("presence", status="busy")
        await self.change(w, "bob", "busy", start, "presence request")
        await d2.close()
        await w.no_event("presence", QUIET)
        self.assertEntry(await self.snapshot("bob"), "bob", "busy")

    async def test_offline_only_when_the_last_device_disconnects(self):
        d1 = await self.client("bob", "d1")
        d2 = await self.client("bob", "d2")
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["bob"])
        self.assertEntry(ans["presence"][0], "bob", "online")
        await d1.close()
        await w.no_event("presence", QUIET)
        self.assertEntry(await self.snapshot("bob"), "bob", "online")
        t0 = wall_ms()
        start = time.monotonic()
        await d2.close()
        ev = await self.change(w, "bob", "offline", start, "connection close")
        t1 = wall_ms()
        self.assertNear(ev["last_seen"], t0, t1, "last_seen when the last device left")
        snap = await self.snapshot("bob")
        self.assertEntry(snap, "bob", "offline", last_seen=ev["last_seen"])
        await asyncio.sleep(1.2)
        snap = await self.snapshot("bob")
        self.assertEntry(snap, "bob", "offline", last_seen=ev["last_seen"])
        # Back again: online, last_seen is now again.
        t2 = wall_ms()
        start = time.monotonic()
        await self.client("bob", "d3")
        ev = await self.change(w, "bob", "online", start, "hello")
        self.assertNear(ev["last_seen"], t2, wall_ms(), "last_seen after reconnecting")
        self.assertGreater(ev["last_seen"], snap["last_seen"])

    async def test_two_devices_on_the_same_device_id_count_separately(self):
        a = await self.client("bob", "phone")
        b = await self.client("bob", "phone")
        w = await self.client("watcher")
        await w.ok("watch", users=["bob"])
        await a.close()
        await w.no_event("presence", QUIET)
        start = time.monotonic()
        await b.close()
        await self.change(w, "bob", "offline", start, "connection close")

    async def test_an_abrupt_disconnect_is_offline_within_a_second(self):
        w = await self.client("watcher")
        await w.ok("watch", users=["carol"])
        raw = await self.silent_client("carol")
        await w.next_event("presence", match=lambda e: e.get("status") == "online")
        t0 = wall_ms()
        start = time.monotonic()
        raw.abort()  # TCP close without a WebSocket close frame
        ev = await self.change(w, "carol", "offline", start, "abrupt disconnect")
        self.assertNear(ev["last_seen"], t0, wall_ms(), "last_seen after an abrupt disconnect")

    async def test_a_close_frame_then_silence_is_offline_within_a_second(self):
        # The client says goodbye with a close frame and then vanishes (its network is gone):
        # the connection is closed as far as the user is concerned.
        w = await self.client("watcher")
        await w.ok("watch", users=["carol"])
        raw = await self.silent_client("carol")
        await w.next_event("presence", match=lambda e: e.get("status") == "online")
        start = time.monotonic()
        raw.send_close(1000)
        await raw.writer.drain()
        await self.change(w, "carol", "offline", start, "close frame, then silence")

    async def test_watch_answers_the_snapshot_in_request_order(self):
        online = [f"on{i}" for i in range(6)]
        busy = [f"busy{i}" for i in range(3)]
        gone = [f"gone{i}" for i in range(3)]
        never = [f"never{i}" for i in range(3)]
        await self.clients_for(online)
        for c in await self.clients_for(busy):
            await c.ok("presence", status="busy")
        for c in await self.clients_for(gone):
            await c.close()
        # interleave so the order cannot fall out of any grouping by state or by core
        order = []
        for i in range(6):
            order.append(online[i])
            if i < 3:
                order += [never[i], gone[i], busy[i]]
        order.reverse()
        w = await self.client("watcher")
        ans = await w.ok("watch", users=order)
        got = [p["user"] for p in ans["presence"]]
        self.assertEqual(got, order, "snapshot order")
        expected = {u: "online" for u in online}
        expected.update({u: "busy" for u in busy})
        expected.update({u: "offline" for u in gone + never})
        for p in ans["presence"]:
            self.assertEntry(p, p["user"], expected[p["user"]])
            if p["user"] in never:
                self.assertEqual(p["last_seen"], 0, p)
            else:
                self.assertGreater(p["last_seen"], 0, p)

    async def test_watching_the_same_user_twice_gives_one_event_per_change(self):
        bob = await self.client("bob")
        w = await self.client("watcher")
        await w.ok("watch", users=["bob"])
        ans = await w.ok("watch", users=["bob", "bob"])
        for p in ans["presence"]:
            self.assertEntry(p, "bob", "online")
        start = time.monotonic()
        await bob.ok("presence", status="busy")
        await self.change(w, "bob", "busy", start, "presence request")
        await w.no_event("presence", QUIET)

    async def test_unwatch_stops_events(self):
        bob = await self.client("bob")
        carol = await self.client("carol")
        w = await self.client("watcher")
        await w.ok("watch", users=["bob", "carol"])
        await w.ok("unwatch", users=["bob"])
        await w.ok("unwatch", users=["nobody"])  # not watched: ignored
        await bob.ok("presence", status="busy")
        await bob.close()
        start = time.monotonic()
        await carol.ok("presence", status="busy")
        await self.change(w, "carol", "busy", start, "presence request")
        await w.no_event("presence", QUIET, match=lambda e: e.get("user") == "bob")
        # watching again resumes, with a fresh snapshot
        ans = await w.ok("watch", users=["bob"])
        self.assertEntry(ans["presence"][0], "bob", "offline")

    async def test_watches_end_with_the_connection(self):
        bob = await self.client("bob")
        w1 = await self.client("alice", "d1")
        w2 = await self.client("alice", "d2")  # same user: same core as w1
        w3 = await self.client("xavier")
        for w in (w1, w2, w3):
            await w.ok("watch", users=["bob"])
        await w1.close()
        start = time.monotonic()
        await bob.ok("presence", status="busy")
        # the other watchers of bob keep their watches
        await self.change(w2, "bob", "busy", start, "presence request")
        await self.change(w3, "bob", "busy", start, "presence request")
        # a new connection of the same user and device does not inherit the watch
        again = await self.client("alice", "d1")
        await w2.close()
        await w3.close()
        await bob.ok("presence", status="online")
        await again.no_event("presence", QUIET)
        # and the closed watchers did not take bob's subscription with them
        w4 = await self.client("yolanda")
        await w4.ok("watch", users=["bob"])
        start = time.monotonic()
        await bob.ok("presence", status="busy")
        await self.change(w4, "bob", "busy", start, "presence request")

    async def test_many_users_across_cores_all_deliver(self):
        users = [f"user{i:02d}" for i in range(20)]
        clients = await self.clients_for(users)
        watchers = await self.clients_for([f"watcher{i}" for i in range(4)])
        for w in watchers:
            ans = await w.ok("watch", users=users)
            self.assertEqual([p["user"] for p in ans["presence"]], users)
            for p in ans["presence"]:
                self.assertEntry(p, p["user"], "online")
        start = time.monotonic()
        await asyncio.gather(*(c.ok("presence", status="busy") for c in clients))
        for w in watchers:
            for u in users:
                await self.change(w, u, "busy", start, "presence request (20 users)")
        start = time.monotonic()
        await asyncio.gather(*(c.close() for c in clients))
        for w in watchers:
            for u in users:
                await self.change(w, u, "offline", start, "connection close (20 users)")
            await w.no_event("presence", 0.3)


class PresenceStressTest(PresenceCase):
    async def test_every_change_is_pushed_and_late_watchers_converge(self):
        targets = [f"t{i:02d}" for i in range(10)]
        toggles = 30
        clients = await self.clients_for(targets)
        early = await self.client("early")
        await early.ok("watch", users=targets)
        late_watchers = []

        async def toggle(c, k):
            for i in range(toggles):
                await c.ok("presence", status="busy" if i % 2 == 0 else "online")
                await asyncio.sleep(0.002 * ((i + k) % 4))

        async def watch_midway(n):
            await asyncio.sleep(0.02 * n)
            w = await self.client(f"late{n}")
            if n % 2:
                await w.ok("watch", users=targets[:5])
                await w.ok("unwatch", users=targets[:3])
            ans = await w.ok("watch", users=targets)
            late_watchers.append((w, ans))

        await asyncio.gather(*(toggle(c, k) for k, c in enumerate(clients)),
                             *(watch_midway(n) for n in range(6)))
        await asyncio.sleep(1.0)
        final = "busy" if toggles % 2 else "online"
        # watching from before the first change: one event per change, in order
        for u in targets:
            evs = [e for e in early.received() if e.get("user") == u]
            self.assertEqual([e["status"] for e in evs],
                             ["busy" if i % 2 == 0 else "online" for i in range(toggles)],
                             f"early watcher, {u}")
        # watching midway: the snapshot, then the events after it, end in the final state
        for w, ans in late_watchers:
            view = {p["user"]: p["status"] for p in ans["presence"]}
            for ev in w.received("presence", after=ans["id"]):
                view[ev["user"]] = ev["status"]
            self.assertEqual(view, {u: final for u in targets}, f"{w.name}: final view")


class MaxWatchTest(PresenceCase):
    SERVER_KW = {"extra_args": ["--limits.max_watch=3"]}

    async def test_watching_beyond_max_watch_is_too_large(self):
        w = await self.client("watcher")
        await w.ok("watch", users=["a", "b", "c"])
        await w.error("watch", "too_large", users=["d"])
        await w.error("watch", "too_large", users=["a", "d"])  # the whole request is refused
        # already watched users count once
        await w.ok("watch", users=["a"])
        await w.ok("watch", users=["c", "b", "a"])
        # the refused request watches nobody
        await self.client("d")
        await w.no_event("presence", QUIET)
        start = time.monotonic()
        await self.client("a")
        await self.change(w, "a", "online", start, "hello")
        # room again after an unwatch
        await w.ok("unwatch", users=["c"])
        ans = await w.ok("watch", users=["d"])
        self.assertEntry(ans["presence"][0], "d", "online")
        await w.error("watch", "too_large", users=["c"])

    async def test_one_request_beyond_max_watch_is_refused_whole(self):
        w = await self.client("watcher")
        await w.error("watch", "too_large", users=["a", "b", "c", "d"])
        await w.ok("watch", users=["a", "b", "c"])
        await w.error("watch", "too_large", users=["e"])

    async def test_duplicates_in_one_request_count_once(self):
        w = await self.client("watcher")
        ans = await w.ok("watch", users=["a", "a", "b", "b", "c", "a"])
        self.assertEqual({p["user"] for p in ans["presence"]}, {"a", "b", "c"}, ans)

    async def test_the_limit_is_per_connection(self):
        w1 = await self.client("watcher", "d1")
        w2 = await self.client("watcher", "d2")
        await w1.ok("watch", users=["a", "b", "c"])
        await w2.ok("watch", users=["d", "e", "f"])
        await w1.close()
        w3 = await self.client("watcher", "d1")
        await w3.ok("watch", users=["g", "h", "i"])  # the closed connection's list is gone


class HeartbeatTest(PresenceCase):
    HEARTBEAT_MS = 300
    SERVER_KW = {"extra_args": [f"--limits.heartbeat_ms={HEARTBEAT_MS}"]}

    async def test_heartbeat_timeout_makes_the_user_offline(self):
        w = await self.client("watcher")
        await w.ok("watch", users=["carol"])
        silent = await self.silent_client("carol")
        last_frame = time.monotonic()  # the hello was the last frame carol sent
        ev = await w.next_event("presence", match=lambda e: e.get("user") == "carol")
        self.assertEvent(ev, "carol", "online")
        ev, at = await w.next_event_timed("presence", timeout=5,
                                          match=lambda e: e.get("user") == "carol")
        self.assertEvent(ev, "carol", "offline")
        took = at - last_frame
        hb = self.HEARTBEAT_MS / 1000
        note("heartbeat timeout (from the last frame)", took)
        self.assertLessEqual(took, 2 * hb + 1.0,
                             f"offline {took * 1000:.0f} ms after the last frame")
        self.assertGreaterEqual(took, 2 * hb - 0.1,
                                f"offline after only {took * 1000:.0f} ms of silence")
        self.assertEqual(await silent.read_close_code(), 1008)
        self.assertFalse(w.closed, "the watcher answers pings and must stay connected")

    async def test_a_client_answering_pings_stays_online(self):
        w = await self.client("watcher")
        await self.client("dave")  # websockets answers the server's pings
        ans = await w.ok("watch", users=["dave"])
        self.assertEntry(ans["presence"][0], "dave", "online")
        await w.no_event("presence", 6 * self.HEARTBEAT_MS / 1000)
        self.assertEntry(await self.snapshot("dave"), "dave", "online")


if __name__ == "__main__":
    main()
