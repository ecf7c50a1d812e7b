"""POST /api/v1/send (PROTOCOL.md sections 9 and 10) against the real server.

Run: PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_admin_api.py
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import ServerTestCase, main  # noqa: E402

ADMIN = "admin-token-for-integration-tests-42"


class AdminSendTest(ServerTestCase):
    SERVER_KW = {"admin_token": ADMIN}

    def post(self, body, token=ADMIN, headers=None):
        hdrs = {"Content-Type": "application/json"}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        hdrs.update(headers or {})
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self.server.http("POST", "/api/v1/send", body=data, headers=hdrs)

    def post_json(self, body, expect_status, **kw):
        status, headers, data = self.post(body, **kw)
        self.assertEqual(status, expect_status, f"POST {body!r}: {status} {data!r}")
        try:
            obj = json.loads(data)
        except ValueError:
            self.fail(f"POST {body!r}: answer is not JSON: {data!r}")
        return obj

    async def test_send_delivers_live(self):
        bob = await self.client(user="bob", device="phone")
        before = int(time.time() * 1000)
        ans = self.post_json({"from": "system", "to": "bob", "cmid": "n-1", "body": "shipped"}, 200)
        self.assertEqual(ans["op"], "ok")
        self.assertEqual(ans["conv"], "d:bob:system")
        self.assertEqual(ans["seq"], 1)
        self.assertIs(ans["dup"], False)
        self.assertGreaterEqual(ans["ts"], before - 2000)
        self.assertNotIn("id", ans)
        ev = await bob.next_event("msg")
        self.assertEqual({k: ev.get(k) for k in ("inbox", "conv", "seq", "from", "cmid", "ts",
                                                 "body")},
                         {"inbox": 1, "conv": "d:bob:system", "seq": 1, "from": "system",
                          "cmid": "n-1", "ts": ans["ts"], "body": "shipped"})

    async def test_send_as_user_reaches_both_sides(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        ans = self.post_json({"from": "alice", "to": "bob", "cmid": "adm-1", "body": "hi",
                              "meta": {"via": "backend"}}, 200)
        self.assertEqual((ans["conv"], ans["seq"]), ("d:alice:bob", 1))
        for c in (alice, bob):
            ev = await c.next_event("msg")
            self.assertEqual((ev["from"], ev["cmid"], ev["body"], ev["meta"]),
                             ("alice", "adm-1", "hi", {"via": "backend"}))
        # The cmid belongs to alice: her own send with it is a dup of the admin one.
        again = await alice.ok("send", to="bob", cmid="adm-1", body="hi")
        self.assertEqual((again["dup"], again["seq"], again["ts"]), (True, 1, ans["ts"]))

    async def test_the_body_may_say_op_send(self):
        # "The body is a send request plus from": a send request's "op" may be there, and can
        # only be "send".
        bob = await self.client(user="bob")
        ans = self.post_json({"op": "send", "from": "system", "to": "bob", "cmid": "op-1",
                              "body": "with op"}, 200)
        self.assertEqual((ans["op"], ans["seq"], ans["dup"]), ("ok", 1, False))
        ans = self.post_json('{"from":"system","\\u006fp":"send","to":"bob","cmid":"op-2",'
                             '"body":"escaped key"}', 200)
        self.assertEqual(ans["seq"], 2)
        for op in ("ping", "hello", 7):
            with self.subTest(op=op):
                ans = self.post_json({"op": op, "from": "system", "to": "bob", "cmid": "op-3",
                                      "body": "x"}, 400)
                self.assertEqual(ans.get("code"), "bad_request", ans)
        ans = self.post_json({"op": "send", "op ": "x", "from": "system", "to": "bob",
                              "cmid": "op-4", "body": "an unknown key is ignored"}, 200)
        self.assertEqual(ans["seq"], 3)
        ans = self.post_json('{"op":"send","op":"send","from":"system","to":"bob",'
                             '"cmid":"op-5","body":"x"}', 400)
        self.assertIn("duplicate", ans["message"])
        evs = await bob.collect("msg", 3)
        self.assertEqual([e["cmid"] for e in evs], ["op-1", "op-2", "op-4"])

    async def test_dedupe(self):
        bob = await self.client(user="bob")
        first = self.post_json({"from": "system", "to": "bob", "cmid": "n-7", "body": "x"}, 200)
        again = self.post_json({"from": "system", "to": "bob", "cmid": "n-7", "body": "x"}, 200)
        self.assertIs(again["dup"], True)
        self.assertEqual((again["conv"], again["seq"], again["ts"]),
                         (first["conv"], first["seq"], first["ts"]))
        await bob.next_event("msg")
        await bob.no_event("msg", within=0.5)
        resp = await bob.ok("sync", since=0)
        self.assertEqual(resp["inbox_seq"], 1)
        nxt = self.post_json({"from": "system", "to": "bob", "cmid": "n-8", "body": "y"}, 200)
        self.assertEqual((nxt["seq"], nxt["dup"]), (2, False))

    async def test_offline_recipient_syncs(self):
        self.post_json({"from": "system", "to": "carol", "cmid": "o-1", "body": "later"}, 200)
        carol = await self.client(user="carol")
        self.assertLessEqual(carol.hello_ok["inbox_seq"], 1)
        await carol.settle(1)  # the inbox entry follows the 200 (fan-out)
        resp = await carol.ok("sync")
        self.assertEqual([(e["from"], e["body"]) for e in resp["events"]], [("system", "later")])

    async def test_bad_input_is_400(self):
        bob = await self.client(user="bob")
        cases = [
            ("invalid JSON", "{not json"),
            ("not an object", "[1,2]"),
            ("empty body", ""),
            ("missing from", {"to": "bob", "cmid": "b-1", "body": "x"}),
            ("invalid from", {"from": "sys tem", "to": "bob", "cmid": "b-2", "body": "x"}),
            ("invalid to", {"from": "system", "to": "bo b", "cmid": "b-3", "body": "x"}),
            ("missing cmid", {"from": "system", "to": "bob", "body": "x"}),
            ("invalid cmid", {"from": "system", "to": "bob", "cmid": "b 4", "body": "x"}),
            ("missing body", {"from": "system", "to": "bob", "cmid": "b-5"}),
            ("missing body with meta", {"from": "system", "to": "bob", "cmid": "b-5m",
                                        "meta": {"k": 1}}),
            ("to and group", {"from": "system", "to": "bob", "group": "g", "cmid": "b-6",
                              "body": "x"}),
            ("neither to nor group", {"from": "system", "cmid": "b-7", "body": "x"}),
            ("meta not an object", {"from": "system", "to": "bob", "cmid": "b-8", "body": "x",
                                    "meta": [1]}),
        ]
        for what, body in cases:
            with self.subTest(what):
                ans = self.post_json(body, 400)
                self.assertEqual(ans.get("code"), "bad_request", f"{what}: {ans}")
                self.assertIsInstance(ans.get("message"), str, f"{what}: {ans}")
        await bob.no_event("msg", within=0.3)
        self.assertEqual((await bob.ok("sync", since=0))["inbox_seq"], 0)

    async def test_unauthorized_is_401(self):
        bob = await self.client(user="bob")
        body = {"from": "system", "to": "bob", "cmid": "u-1", "body": "x"}
        for what, kw in [("no Authorization", {"token": None}),
                         ("wrong token", {"token": "wrong-token"}),
                         ("token prefix", {"token": ADMIN[:-1]}),
                         ("token with suffix", {"token": ADMIN + "x"}),
                         ("empty bearer", {"token": ""}),
                         ("basic scheme", {"token": None,
                                           "headers": {"Authorization": f"Basic {ADMIN}"}})]:
            with self.subTest(what):
                status, _, data = self.post(body, **kw)
                self.assertEqual(status, 401, f"{what}: {status} {data!r}")
        await bob.no_event("msg", within=0.3)
        self.assertEqual((await bob.ok("sync", since=0))["inbox_seq"], 0)
        # A refused request's cmid was not used.
        ans = self.post_json(body, 200)
        self.assertIs(ans["dup"], False)


class AdminDisabledTest(ServerTestCase):
    SERVER_KW = {}  # no admin token configured

    async def test_always_401(self):
        bob = await self.client(user="bob")
        body = json.dumps({"from": "system", "to": "bob", "cmid": "z-1", "body": "x"})
        for token in [None, "", "anything", "admin-token-for-integration-tests-42"]:
            with self.subTest(token=token):
                hdrs = {"Content-Type": "application/json"}
                if token is not None:
                    hdrs["Authorization"] = f"Bearer {token}"
                status, _, data = self.server.http("POST", "/api/v1/send", body=body,
                                                   headers=hdrs)
                self.assertEqual(status, 401, f"{status} {data!r}")
        await bob.no_event("msg", within=0.3)


def parse_metrics(text):
    """Prometheus text -> {series: value}; series keeps its labels, e.g. 'x_bucket{le="1"}'."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        out[series] = float(value)
    return out


class MetricsTest(ServerTestCase):
    SERVER_KW = {"admin_token": ADMIN}

    def metrics(self):
        status, _, data = self.server.http("GET", "/metrics")
        self.assertEqual(status, 200)
        return parse_metrics(data.decode())

    def assert_histogram(self, m, name, at_least):
        buckets = sorted(((k, v) for k, v in m.items() if k.startswith(name + "_bucket{")),
                         key=lambda kv: float("inf") if "+Inf" in kv[0]
                         else float(kv[0].split('"')[1]))
        self.assertGreater(len(buckets), 2, name)
        counts = [v for _, v in buckets]
        # Prometheus buckets are cumulative: never decreasing, and +Inf equals _count.
        self.assertEqual(counts, sorted(counts), f"{name} buckets decrease: {buckets}")
        self.assertEqual(counts[-1], m[name + "_count"], name)
        self.assertGreaterEqual(m[name + "_count"], at_least, name)
        self.assertGreaterEqual(m[name + "_sum"], 0, name)

    async def test_counts_follow_traffic(self):
        before = self.metrics()
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        n = 20
        for i in range(n):
            await alice.ok("send", to="bob", cmid=f"m-{i}", body=f"hello {i}")
        for _ in range(n):
            await bob.next_event("msg")
        m = self.metrics()

        def total(name):  # summed over the per-core series
            return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))

        self.assertGreaterEqual(total("parley_websockets"), 2)
        self.assertGreaterEqual(total("parley_messages_accepted_total")
                                - sum(v for k, v in before.items()
                                      if k.startswith("parley_messages_accepted_total")), n)
        self.assert_histogram(m, "parley_send_commit_seconds", n)
        # The storage histogram counts each group commit once: the commit counter, give or
        # take a commit that landed between reading the counter and reading the histogram.
        self.assert_histogram(m, "parley_storage_commit_seconds", 1)
        commits = total("parley_storage_commits_total")
        # One send at a time leaves the writers idle between commits: the reactors write those
        # small commits themselves (counted among all commits).
        inline_commits = total("parley_storage_inline_commits_total")
        self.assertGreater(inline_commits, 0)
        self.assertLessEqual(inline_commits, commits)
        self.assertGreaterEqual(m["parley_storage_commit_seconds_count"], commits)
        self.assertLessEqual(m["parley_storage_commit_seconds_count"], commits + 4)
        # With fsync durability (the default) one log sync made each of those commits durable.
        self.assert_histogram(m, "parley_storage_log_sync_seconds", 1)
        self.assertLessEqual(m["parley_storage_log_sync_seconds_count"], commits + 4)
        # Unsent outbound bytes per core: present for every core, never negative.
        outbound = {k: v for k, v in m.items() if k.startswith("parley_outbound_bytes{")}
        self.assertEqual(len(outbound), len([k for k in m if k.startswith("parley_websockets{")]))
        self.assertTrue(all(v >= 0 for v in outbound.values()), outbound)
        self.assertEqual(total("parley_outbound_budget_closes_total"), 0)
        # Cross-core queue depth: one gauge per core, never negative, and back to 0 when idle
        # (the scrape itself runs as a task on one core, so allow a few in flight).
        depth = {k: v for k, v in m.items() if k.startswith("parley_mesh_queue_depth{")}
        self.assertEqual(len(depth), len(outbound))
        self.assertTrue(all(0 <= v < 100 for v in depth.values()), depth)

    async def test_disk_space_figures(self):
        m = self.metrics()
        # Free space on the data volume, as statvfs sees it (give or take what other processes
        # write meanwhile), and writes are not refused on a volume with room.
        vfs = os.statvfs(self.server.data_dir)
        actual = vfs.f_bavail * vfs.f_frsize
        free = m["parley_storage_disk_free_bytes"]
        self.assertGreater(free, 0)
        self.assertLessEqual(abs(free - actual), max(64 << 20, actual // 20), (free, actual))
        self.assertEqual(m["parley_storage_writes_refused"], 0)

if __name__ == "__main__":
    main()
