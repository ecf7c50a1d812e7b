"""Messaging core against the real server: send, msg fan-out, dedupe, validation, ordering,
inbox, sync, ack, history, read receipts, convs, typing, rate limits, restart persistence and
multiple devices (PROTOCOL.md sections 2-5 and 10).

Run: PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_chat_messages.py
"""

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import ServerTestCase, dconv, main  # noqa: E402

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-"
FAST = ["--limits.rate_per_sec=100000", "--limits.rate_burst=100000"]


def now_ms():
    return int(time.time() * 1000)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class MessagingTestCase(ServerTestCase):
    async def send_ok(self, client, cmid, to=None, body="x", **fields):
        if to is not None:
            fields["to"] = to
        resp = await client.request("send", cmid=cmid, body=body, **fields)
        self.assertEqual(resp["op"], "ok", f"send {cmid} -> {resp}")
        return resp

    async def pipeline_sends(self, client, to, cmids, body_fn=lambda c: f"body {c}"):
        """Sends all without waiting, then awaits the answers (in the same order)."""
        futs = [await client.request_nowait("send", to=to, cmid=c, body=body_fn(c)) for c in cmids]
        return await asyncio.wait_for(asyncio.gather(*futs), 60)

    async def send_seen(self, client, cmid, to, observers, body="x", **fields):
        """send_ok, then waits for the msg on every observer (connected devices of the
        members), so that the members' inboxes and conversation lists include it."""
        ok = await self.send_ok(client, cmid, to=to, body=body, **fields)
        for o in observers:
            await o.next_event("msg", match=lambda e: e["cmid"] == cmid and e["seq"] == ok["seq"])
        return ok

    def assert_fields(self, ev, expected, what=""):
        """ev has every key of expected with that value (additions are allowed by the
        contract), and no id (events never carry one)."""
        got = {k: ev.get(k, "<missing>") for k in expected}
        self.assertEqual(got, expected, f"{what}: {ev}")
        self.assertNotIn("id", ev, f"{what}: {ev}")

    def assert_error(self, resp, code, what=""):
        self.assertEqual(resp.get("op"), "error", f"{what}: expected {code}, got {resp}")
        self.assertEqual(resp.get("code"), code, f"{what}: {resp}")
        self.assertIsInstance(resp.get("message"), str)


class SendTest(MessagingTestCase):
    async def test_send_ok_fields_and_canonical_conv(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        before = now_ms()
        ok = await self.send_ok(alice, "c-1", to="bob", body="hi")
        after = now_ms()
        self.assertTrue({"op", "id", "conv", "seq", "ts", "dup"} <= set(ok), ok)
        self.assertEqual(ok["conv"], "d:alice:bob")
        self.assertEqual(ok["seq"], 1)
        self.assertIs(ok["dup"], False)
        self.assertIsInstance(ok["ts"], int)
        self.assertGreaterEqual(ok["ts"], before - 2000)
        self.assertLessEqual(ok["ts"], after + 2000)
        # The other direction is the same conversation, next seq.
        ok2 = await self.send_ok(bob, "c-1", to="alice", body="hey")
        self.assertEqual(ok2["conv"], "d:alice:bob")
        self.assertEqual(ok2["seq"], 2)
        self.assertIs(ok2["dup"], False)
        self.assertGreaterEqual(ok2["ts"], ok["ts"])

    async def test_conv_order_is_bytewise(self):
        alice = await self.client(user="alice")
        # 'Z' (0x5a) < 'a' (0x61); '.' < '0'; a prefix sorts first.
        for to, conv in [("Zed", "d:Zed:alice"), ("al", "d:al:alice"), ("alicea", "d:alice:alicea"),
                         ("@x", "d:@x:alice"), ("alic.e", "d:alic.e:alice"), ("b", "d:alice:b")]:
            with self.subTest(to=to):
                ok = await self.send_ok(alice, f"to-{to}", to=to)
                self.assertEqual(ok["conv"], conv)
                self.assertEqual(ok["seq"], 1)
                self.assertEqual(conv, dconv("alice", to))

    async def test_msg_to_every_device_of_both_users(self):
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        b1 = await self.client(user="bob", device="phone")
        b2 = await self.client(user="bob", device="laptop")
        carol = await self.client(user="carol")
        ok = await self.send_ok(a1, "m-1", to="bob", body="hello bob", meta={"k": 1})
        expected = {"op": "msg", "inbox": 1, "conv": "d:alice:bob", "seq": 1, "from": "alice",
                    "cmid": "m-1", "ts": ok["ts"], "body": "hello bob", "meta": {"k": 1}}
        for name, c in [("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)]:
            with self.subTest(device=name):
                ev = await c.next_event("msg")
                self.assert_fields(ev, expected, name)
        ok2 = await self.send_ok(b2, "m-1", to="alice", body="hello alice")
        self.assertEqual(ok2["seq"], 2)
        for name, c in [("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)]:
            with self.subTest(device=name):
                ev = await c.next_event("msg")
                self.assertEqual(ev["inbox"], 2)
                self.assertEqual(ev["seq"], 2)
                self.assertEqual(ev["from"], "bob")
                self.assertEqual(ev["cmid"], "m-1")
                self.assertEqual(ev["body"], "hello alice")
                self.assertEqual(ev["ts"], ok2["ts"])
                self.assertNotIn("meta", ev)
                self.assertNotIn("id", ev)
        await carol.no_event("msg", within=0.5)
        for c in (a1, a2, b1, b2):
            await c.no_event("msg", within=0.2)

    async def test_inbox_numbers_are_per_user(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        carol = await self.client(user="carol")
        await self.send_ok(alice, "a1", to="carol")  # alice inbox 1, carol inbox 1
        await self.send_ok(alice, "a2", to="carol")  # alice 2, carol 2
        ok = await self.send_ok(alice, "a3", to="bob")  # alice 3, bob 1
        self.assertEqual(ok["seq"], 1)
        evs = await alice.collect("msg", 3)
        self.assertEqual([e["inbox"] for e in evs], [1, 2, 3])
        ev = await bob.next_event("msg")
        self.assertEqual((ev["inbox"], ev["seq"], ev["cmid"]), (1, 1, "a3"))
        evs = await carol.collect("msg", 2)
        self.assertEqual([(e["inbox"], e["seq"]) for e in evs], [(1, 1), (2, 2)])

    async def test_message_to_oneself_takes_one_inbox_entry(self):
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        ok = await self.send_ok(a1, "self-1", to="alice", body="note to self")
        self.assertEqual(ok["conv"], "d:alice:alice")
        self.assertEqual(ok["seq"], 1)
        for c in (a1, a2):
            ev = await c.next_event("msg")
            self.assertEqual((ev["inbox"], ev["conv"], ev["seq"], ev["from"]),
                             (1, "d:alice:alice", 1, "alice"))
            await c.no_event("msg", within=0.4)
        resp = await a1.ok("sync", since=0)
        self.assertEqual(len(resp["events"]), 1, resp)
        self.assertEqual(resp["inbox_seq"], 1)
        ok2 = await self.send_ok(a1, "self-2", to="bob")
        ev = await a2.next_event("msg")
        self.assertEqual(ev["inbox"], 2, "the next entry follows the single self entry")
        self.assertEqual(ok2["conv"], "d:alice:bob")
        a3 = await self.client(user="alice", device="tablet")
        self.assertEqual(a3.hello_ok["inbox_seq"], 2)
        hist = await a1.ok("history", conv="d:alice:alice")
        self.assertEqual([m["seq"] for m in hist["msgs"]], [1])

    async def test_dedupe_same_cmid(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        ok = await self.send_ok(alice, "dup-1", to="bob", body="once")
        self.assertIs(ok["dup"], False)
        await bob.next_event("msg")
        await alice.next_event("msg")
        again = await self.send_ok(alice, "dup-1", to="bob", body="once")
        self.assertEqual((again["conv"], again["seq"], again["ts"]), (ok["conv"], ok["seq"], ok["ts"]))
        self.assertIs(again["dup"], True)
        # A retry with a different body is still the same message.
        again2 = await self.send_ok(alice, "dup-1", to="bob", body="changed")
        self.assertEqual((again2["seq"], again2["ts"], again2["dup"]), (ok["seq"], ok["ts"], True))
        await bob.no_event("msg", within=0.5)
        await alice.no_event("msg", within=0.1)
        # Same cmid to another recipient: still the first message.
        carol = await self.client(user="carol")
        other = await self.send_ok(alice, "dup-1", to="carol", body="once")
        self.assertIs(other["dup"], True)
        self.assertEqual((other["conv"], other["seq"], other["ts"]), ("d:alice:bob", 1, ok["ts"]))
        await carol.no_event("msg", within=0.5)
        resp = await carol.ok("sync", since=0)
        self.assertEqual((resp["events"], resp["inbox_seq"]), ([], 0))
        # Nothing was stored twice.
        hist = await alice.ok("history", conv="d:alice:bob")
        self.assertEqual([m["cmid"] for m in hist["msgs"]], ["dup-1"])
        self.assertEqual(hist["msgs"][0]["body"], "once")
        self.assertEqual((await bob.ok("sync", since=0))["inbox_seq"], 1)
        # cmids are unique per sender: bob may use the same one.
        bok = await self.send_ok(bob, "dup-1", to="alice", body="mine")
        self.assertIs(bok["dup"], False)
        self.assertEqual(bok["seq"], 2)

    async def test_dedupe_from_another_device(self):
        # The cmid is unique per sender (user), so a retry from another device is a dup too.
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        ok = await self.send_ok(a1, "x-1", to="bob")
        again = await self.send_ok(a2, "x-1", to="bob")
        self.assertIs(again["dup"], True)
        self.assertEqual((again["conv"], again["seq"], again["ts"]), (ok["conv"], ok["seq"], ok["ts"]))

    async def test_concurrent_duplicates_store_once(self):
        # The same cmid sent from two connections at once: one message, one dup (or both
        # answers name the same seq).
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        bob = await self.client(user="bob")
        futs = []
        for i in range(20):
            futs.append(await a1.request_nowait("send", to="bob", cmid=f"race-{i}", body="r"))
            futs.append(await a2.request_nowait("send", to="bob", cmid=f"race-{i}", body="r"))
        answers = await asyncio.wait_for(asyncio.gather(*futs), 30)
        for i in range(20):
            x, y = answers[2 * i], answers[2 * i + 1]
            self.assertEqual((x["op"], y["op"]), ("ok", "ok"), (x, y))
            self.assertEqual((x["seq"], x["ts"]), (y["seq"], y["ts"]), f"race-{i}: {x} vs {y}")
            self.assertEqual(sorted([x["dup"], y["dup"]]), [False, True], f"race-{i}: {x} {y}")
        evs = await bob.collect("msg", 20, timeout=10)
        self.assertEqual(sorted(e["seq"] for e in evs), list(range(1, 21)))
        await bob.no_event("msg", within=0.5)


class ValidationTest(MessagingTestCase):
    async def test_body_and_meta_rules(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        r = await alice.request("send", to="bob", cmid="v-1")
        self.assert_error(r, "bad_request", "missing body without meta")
        r = await alice.request("send", to="bob", cmid="v-1m", meta={"k": 1})
        self.assert_error(r, "bad_request", "missing body with meta (it may be empty, not absent)")
        r = await alice.request("send", to="bob", cmid="v-2", body=17)
        self.assert_error(r, "bad_request", "body not a string")
        r = await alice.request("send", to="bob", cmid="v-3", body=None)
        self.assert_error(r, "bad_request", "body null")
        for i, meta in enumerate([[1, 2], "str", 5, True]):
            r = await alice.request("send", to="bob", cmid=f"v-4-{i}", body="x", meta=meta)
            self.assert_error(r, "bad_request", f"meta {meta!r}")
        # None of these was stored or delivered.
        await bob.no_event("msg", within=0.3)
        # Empty body with meta is fine; meta arrives as the same object.
        meta = {"kind": "reaction", "emoji": "\U0001F44D", "to": 3, "nested": {"a": [1, 2.5, None,
                True, {"b": "c"}]}, "empty": {}, "s": "quote\"back\\slash\nnl"}
        ok = await self.send_ok(alice, "v-5", to="bob", body="", meta=meta)
        ev = await bob.next_event("msg")
        self.assertEqual(ev["cmid"], "v-5")
        self.assertEqual(ev["body"], "")
        self.assertEqual(ev["meta"], meta)
        self.assertIsInstance(ev["meta"], dict)
        hist = await bob.ok("history", conv="d:alice:bob")
        self.assertEqual(hist["msgs"][-1]["meta"], meta)
        self.assertEqual(hist["msgs"][-1]["seq"], ok["seq"])
        sync = await bob.ok("sync", since=0)
        self.assertEqual(sync["events"][-1]["meta"], meta)
        # An empty meta object is an object too.
        await self.send_ok(alice, "v-6", to="bob", body="", meta={})
        ev = await bob.next_event("msg")
        self.assertEqual(ev.get("meta"), {})

    async def test_body_size_limit_in_bytes(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        ok = await self.send_ok(alice, "b-max", to="bob", body="a" * 16384)
        ev = await bob.next_event("msg")
        self.assertEqual(len(ev["body"]), 16384)
        r = await alice.request("send", to="bob", cmid="b-over", body="a" * 16385)
        self.assert_error(r, "too_large", "body of 16385 bytes")
        # 8193 two-byte characters: 16386 bytes.
        r = await alice.request("send", to="bob", cmid="b-utf8", body="\u00e9" * 8193)
        self.assert_error(r, "too_large", "body of 8193 x U+00E9 (16386 bytes)")
        ok2 = await self.send_ok(alice, "b-utf8-ok", to="bob", body="\u00e9" * 8192)
        ev = await bob.next_event("msg")
        self.assertEqual(ev["body"], "\u00e9" * 8192)
        self.assertEqual(ok2["seq"], ok["seq"] + 1, "rejected sends take no seq")
        # A rejected cmid was not remembered.
        ok3 = await self.send_ok(alice, "b-over", to="bob", body="small")
        self.assertIs(ok3["dup"], False)
        self.assertEqual(ok3["seq"], ok2["seq"] + 1)

    async def test_meta_size_limit(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")

        def meta_of(size):
            base = compact({"p": ""})
            m = {"p": "x" * (size - len(base))}
            assert len(compact(m).encode()) == size
            return m

        ok = await self.send_ok(alice, "m-max", to="bob", body="b", meta=meta_of(4096))
        ev = await bob.next_event("msg")
        self.assertEqual(ev["meta"], meta_of(4096))
        await alice.send_raw(compact({"op": "send", "id": 900, "to": "bob", "cmid": "m-over",
                                      "body": "b", "meta": meta_of(4097)}))
        r = await alice.next_event("error")
        self.assertEqual(r.get("id"), 900)
        self.assertEqual(r["code"], "too_large", r)
        r = await alice.request("send", to="bob", cmid="m-big", body="b", meta=meta_of(10000))
        self.assert_error(r, "too_large", "meta of 10000 bytes")
        await bob.no_event("msg", within=0.3)
        ok2 = await self.send_ok(alice, "m-after", to="bob")
        self.assertEqual(ok2["seq"], ok["seq"] + 1)

    async def test_cmid_rules(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        r = await alice.request("send", to="bob", body="x")
        self.assert_error(r, "bad_request", "missing cmid")
        for bad in ["", "has space", "c" * 65, "c/1", "c:1", "caf\u00e9", "c\u00001"]:
            r = await alice.request("send", to="bob", cmid=bad, body="x")
            self.assert_error(r, "bad_request", f"cmid {bad!r}")
        r = await alice.request("send", to="bob", cmid=12, body="x")
        self.assert_error(r, "bad_request", "cmid not a string")
        await bob.no_event("msg", within=0.3)
        ok = await self.send_ok(alice, ID_ALPHABET[:64], to="bob")
        ev = await bob.next_event("msg")
        self.assertEqual(ev["cmid"], ID_ALPHABET[:64])
        ok = await self.send_ok(alice, ID_ALPHABET[-64:], to="bob")
        self.assertEqual(ok["seq"], 2)

    async def test_to_and_group(self):
        alice = await self.client(user="alice")
        r = await alice.request("send", to="bob", group="team", cmid="tg-1", body="x")
        self.assert_error(r, "bad_request", "both to and group")
        r = await alice.request("send", cmid="tg-2", body="x")
        self.assert_error(r, "bad_request", "neither to nor group")
        for bad in ["", "bad user", "u" * 65, "d:alice:bob"]:
            r = await alice.request("send", to=bad, cmid="tg-3", body="x")
            self.assert_error(r, "bad_request", f"to {bad!r}")
        r = await alice.request("send", to=["bob"], cmid="tg-4", body="x")
        self.assert_error(r, "bad_request", "to not a string")
        # None of the refused cmids was remembered.
        ok = await self.send_ok(alice, "tg-1", to="bob")
        self.assertEqual((ok["seq"], ok["dup"]), (1, False))


class OrderingTest(MessagingTestCase):
    async def test_concurrent_senders_one_conversation(self):
        n_each = 100
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        b1 = await self.client(user="bob", device="phone")
        b2 = await self.client(user="bob", device="watch")  # observes only
        senders = [(a1, "bob", "a1"), (a2, "bob", "a2"), (b1, "alice", "b1")]

        async def run(client, to, tag):
            return await self.pipeline_sends(client, to, [f"{tag}-{i}" for i in range(n_each)])

        results = await asyncio.wait_for(asyncio.gather(*(run(*s) for s in senders)), 90)
        total = n_each * len(senders)
        seq_of = {}
        for (client, to, tag), answers in zip(senders, results):
            for i, ans in enumerate(answers):
                self.assertEqual(ans["op"], "ok", f"{tag}-{i}: {ans}")
                self.assertEqual(ans["conv"], "d:alice:bob")
                self.assertIs(ans["dup"], False)
                seq_of[f"{tag}-{i}"] = ans["seq"]
        self.assertEqual(sorted(seq_of.values()), list(range(1, total + 1)),
                         "seqs are assigned once and gapless")
        for name, c in [("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)]:
            with self.subTest(observer=name):
                evs = await c.collect("msg", total, timeout=30)
                self.assertEqual([e["seq"] for e in evs], list(range(1, total + 1)),
                                 "every member sees every seq once, in order")
                self.assertEqual([e["inbox"] for e in evs], list(range(1, total + 1)))
                for e in evs:
                    self.assertEqual(seq_of[e["cmid"]], e["seq"], e)
                await c.no_event("msg", within=0.2)
        hist = await a1.ok("history", conv="d:alice:bob", limit=200)
        self.assertEqual([m["seq"] for m in hist["msgs"]], list(range(total - 199, total + 1)))
        ts = [m["ts"] for m in hist["msgs"]]
        self.assertEqual(ts, sorted(ts), "ts does not go backwards along seq")

    async def test_inbox_gapless_across_conversations(self):
        users = ["alice", "bob", "carol", "dave"]
        clients = {u: await self.client(user=u) for u in users}
        extra = await self.client(user="alice", device="second")
        pairs = [(a, b) for a in users for b in users]  # includes self-messages
        n = 0
        futs = []
        for rnd in range(6):
            for a, b in pairs:
                futs.append((a, b, await clients[a].request_nowait(
                    "send", to=b, cmid=f"r{rnd}-{a}-{b}", body=f"{a}->{b} #{rnd}")))
                n += 1
        answers = [(a, b, await asyncio.wait_for(f, 60)) for a, b, f in futs]
        for a, b, ans in answers:
            self.assertEqual(ans["op"], "ok", ans)
        # Expected per-user inbox size: every message of every conversation the user is in,
        # self-messages once.
        for u in users:
            expected = sum(1 for a, b, _ in answers if u in (a, b))
            observers = [clients[u]] + ([extra] if u == "alice" else [])
            for c in observers:
                evs = await c.collect("msg", expected, timeout=30)
                self.assertEqual([e["inbox"] for e in evs], list(range(1, expected + 1)),
                                 f"{u}: live inbox numbers")
                last = {}
                for e in evs:
                    self.assertIn(u, e["conv"][2:].split(":"))
                    self.assertEqual(e["seq"], last.get(e["conv"], 0) + 1,
                                     f"{u}: conv {e['conv']} order in the inbox")
                    last[e["conv"]] = e["seq"]
                await c.no_event("msg", within=0.1)
            synced, inbox_seq = await clients[u].sync_all(since=0)
            self.assertEqual(inbox_seq, expected)
            self.assertEqual([e["inbox"] for e in synced], list(range(1, expected + 1)))
            self.assertEqual([(e["conv"], e["seq"], e["cmid"]) for e in synced],
                             [(e["conv"], e["seq"], e["cmid"]) for e in evs],
                             f"{u}: sync returns what was delivered live, same numbering")


class SyncAckTest(MessagingTestCase):
    async def test_offline_delivery(self):
        alice = await self.client(user="alice")
        oks = [await self.send_ok(alice, f"off-{i}", to="bob", body=f"m{i}") for i in range(5)]
        bob = await self.client(user="bob", device="laptop")
        self.assertLessEqual(bob.hello_ok["inbox_seq"], 5)
        # The client algorithm: sync, then live events (entries still being fanned out when
        # bob connected arrive live); together they are inbox 1..5, each once, in order.
        resp = await bob.ok("sync")
        self.assertIs(resp["more"], False)
        got = list(resp["events"])
        while len(got) < 5:
            ev = await bob.next_event("msg")
            if got and ev["inbox"] <= got[-1]["inbox"]:
                continue  # already applied from the sync
            got.append(ev)
        self.assertEqual([e["inbox"] for e in got], [1, 2, 3, 4, 5])
        # A live event may precede the sync answer that also holds it (the client skips it
        # by its inbox number); nothing beyond inbox 5 may come.
        await bob.no_event("msg", within=0.3, match=lambda e: e["inbox"] > 5)
        resp = await bob.ok("sync", since=0)
        self.assertEqual((resp["inbox_seq"], resp["more"]), (5, False))
        for label, evs in [("sync+live", got), ("sync", resp["events"])]:
            self.assertEqual(len(evs), 5)
            for i, (e, ok) in enumerate(zip(evs, oks)):
                self.assert_fields(e, {"op": "msg", "inbox": i + 1, "conv": "d:alice:bob",
                                       "seq": i + 1, "from": "alice", "cmid": f"off-{i}",
                                       "ts": ok["ts"], "body": f"m{i}"}, label)
                self.assertNotIn("meta", e)

    async def test_sync_since_and_default_from_ack(self):
        alice = await self.client(user="alice")
        for i in range(5):
            await self.send_ok(alice, f"s-{i}", to="bob")
        b1 = await self.client(user="bob", device="A")
        await b1.settle(5)
        resp = await b1.ok("sync", since=2)
        self.assertEqual([e["inbox"] for e in resp["events"]], [3, 4, 5])
        resp = await b1.ok("sync", since=5)
        self.assertEqual((resp["events"], resp["more"], resp["inbox_seq"]), ([], False, 5))
        ack = await b1.request("ack", inbox=3)
        self.assertEqual(ack["op"], "ok", ack)
        resp = await b1.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [4, 5], "sync from the ack")
        # Device B never acked: it starts from the beginning.
        b2 = await self.client(user="bob", device="B")
        resp = await b2.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [1, 2, 3, 4, 5])
        await b1.close()
        b1 = await self.client(user="bob", device="A")
        resp = await b1.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [4, 5], "cursor kept across connections")

    async def test_ack_rules(self):
        alice = await self.client(user="alice")
        for i in range(6):
            await self.send_ok(alice, f"k-{i}", to="bob")
        b1 = await self.client(user="bob", device="A")
        b2 = await self.client(user="bob", device="B")
        await b1.settle(6)
        r = await b1.request("ack", inbox=7)
        self.assert_error(r, "bad_request", "ack above inbox_seq")
        await b1.send_raw({"op": "ack", "inbox": 100})
        err = await b1.next_event("error")
        self.assertEqual(err["code"], "bad_request")
        self.assertNotIn("id", err)
        for bad in ["3", None, 1.5]:
            r = await b1.request("ack", inbox=bad)
            self.assert_error(r, "bad_request", f"ack inbox={bad!r}")
        # The refused acks moved nothing.
        resp = await b1.ok("sync")
        self.assertEqual(resp["events"][0]["inbox"], 1)
        await b1.ok("ack", inbox=4)
        await b1.ok("ack", inbox=2)  # lower: ignored
        resp = await b1.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [5, 6])
        # Device A's ack does not move device B's cursor.
        resp = await b2.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [1, 2, 3, 4, 5, 6])
        await b2.ok("ack", inbox=6)
        self.assertEqual((await b2.ok("sync"))["events"], [])
        resp = await b1.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [5, 6])
        # An ack without id is applied without an answer.
        await b1.send_raw({"op": "ack", "inbox": 5})
        resp = await b1.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], [6])
        self.assertEqual(b1.queued("ok"), [])
        # ack of exactly inbox_seq is fine.
        await b1.ok("ack", inbox=6)
        self.assertEqual((await b1.ok("sync"))["events"], [])


class SyncPastTheInboxTest(MessagingTestCase):
    async def test_a_sync_past_the_inbox_hides_no_live_event(self):
        # A device that syncs from beyond its inbox_seq has nothing to get, and must still be
        # sent every later event live, without gaps (section 10).
        bob = await self.client(user="bob")
        phone = await self.client(user="alice", device="phone")
        laptop = await self.client(user="alice", device="laptop")
        await self.send_seen(bob, "s-0", "alice", [phone, laptop])
        for since in (3, 100):
            ans = await laptop.ok("sync", since=since)
            self.assertEqual((ans["events"], ans["more"]), ([], False), ans)
        base = ans["inbox_seq"]
        for i in range(4):
            await self.send_ok(bob, f"s-{i + 1}", to="alice")
        for dev in (phone, laptop):
            evs = await dev.collect("msg", 4)
            self.assertEqual([e["inbox"] for e in evs], [base + 1 + i for i in range(4)],
                             dev.name)


class SyncLimitTest(MessagingTestCase):
    SERVER_KW = {"extra_args": FAST, "sync": "none"}

    async def test_limits_and_more(self):
        alice = await self.client(user="alice")
        total = 1200
        answers = await self.pipeline_sends(alice, "bob", [f"L-{i}" for i in range(total)],
                                            body_fn=lambda c: c)
        self.assertTrue(all(a["op"] == "ok" for a in answers))
        bob = await self.client(user="bob")
        await bob.settle(total)
        resp = await bob.ok("sync")
        self.assertEqual(len(resp["events"]), 500, "default limit 500")
        self.assertEqual([e["inbox"] for e in resp["events"]], list(range(1, 501)))
        self.assertIs(resp["more"], True)
        self.assertEqual(resp["inbox_seq"], total)
        resp = await bob.ok("sync", since=0, limit=5000)
        self.assertEqual(len(resp["events"]), 1000, "limit clamped to 1000")
        self.assertIs(resp["more"], True)
        resp = await bob.ok("sync", since=1000, limit=1000)
        self.assertEqual([e["inbox"] for e in resp["events"]], list(range(1001, 1201)))
        self.assertIs(resp["more"], False)
        resp = await bob.ok("sync", since=1199, limit=1)
        self.assertEqual([e["inbox"] for e in resp["events"]], [1200])
        self.assertIs(resp["more"], False)
        resp = await bob.ok("sync", since=1198, limit=1)
        self.assertEqual([e["inbox"] for e in resp["events"]], [1199])
        self.assertIs(resp["more"], True)
        resp = await bob.ok("sync", since=total)
        self.assertEqual((resp["events"], resp["more"]), ([], False))
        events, inbox_seq = await bob.sync_all(since=0, limit=333)
        self.assertEqual([e["body"] for e in events], [f"L-{i}" for i in range(total)])
        self.assertEqual(inbox_seq, total)


class ClientAlgorithmTest(MessagingTestCase):
    async def test_exactly_once_across_reconnects(self):
        """Bob follows the client algorithm of PROTOCOL.md section 5 across disconnects."""
        alice = await self.client(user="alice")
        applied = []  # (inbox, cmid)
        state = {"last": 0, "acked": 0, "bob": None}
        sent = []

        def apply(e):
            self.assertEqual(e["inbox"], state["last"] + 1, f"applied out of order: {e}")
            applied.append((e["inbox"], e["cmid"]))
            state["last"] = e["inbox"]

        async def catch_up():
            events, _ = await state["bob"].sync_all(since=state["last"])
            for e in events:
                apply(e)

        async def connect():
            state["bob"] = await self.client(user="bob", device="phone")
            await catch_up()

        async def pump(count):
            """Applies live events until `count` events are applied in all."""
            while len(applied) < count:
                ev = await state["bob"].next_event("msg")
                if ev["inbox"] <= state["last"]:
                    continue  # already applied
                if ev["inbox"] > state["last"] + 1:
                    await catch_up()  # a gap: sync from last
                    continue
                apply(ev)

        async def ack():
            await state["bob"].ok("ack", inbox=state["last"])
            state["acked"] = state["last"]

        async def send(n, tag):
            for i in range(n):
                await self.send_ok(alice, f"{tag}-{i}", to="bob")
                sent.append(f"{tag}-{i}")

        await send(3, "before")
        await connect()
        await pump(3)
        await ack()
        await send(4, "live")
        await pump(7)
        await ack()
        await state["bob"].close()
        await send(3, "offline")
        await connect()
        await pump(10)
        await ack()
        await send(2, "live2")
        await pump(12)
        # Disconnect WITHOUT acking the last two: a sync without since starts at the device's
        # ack and repeats them; the client's own `last` filters them.
        await state["bob"].close()
        bob = await self.client(user="bob", device="phone")
        resp = await bob.ok("sync")
        self.assertEqual(state["acked"], 10)
        self.assertEqual([(e["inbox"], e["cmid"]) for e in resp["events"]],
                         [(11, "live2-0"), (12, "live2-1")],
                         "sync without since starts after the device's ack")
        resp = await bob.ok("sync", since=state["last"])
        self.assertEqual(resp["events"], [], "nothing twice")
        self.assertEqual([c for _, c in applied], sent, "every message applied once, in order")
        self.assertEqual([i for i, _ in applied], list(range(1, len(sent) + 1)))
        await bob.no_event("msg", within=0.3)


class HistoryTest(MessagingTestCase):
    async def test_history_paging(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        oks = []
        for i in range(120):
            sender, to = (alice, "bob") if i % 2 == 0 else (bob, "alice")
            oks.append(await sender.request_nowait("send", to=to, cmid=f"h-{i}", body=f"h{i}"))
        oks = await asyncio.wait_for(asyncio.gather(*oks), 60)
        seq_to_cmid = {}
        for i, o in enumerate(oks):
            self.assertEqual(o["op"], "ok", o)
            seq_to_cmid[o["seq"]] = f"h-{i}"
        self.assertEqual(sorted(seq_to_cmid), list(range(1, 121)))
        resp = await alice.ok("history", conv="d:alice:bob")
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(71, 121)), "default 50 newest")
        self.assertIs(resp["more"], True)
        for m in resp["msgs"]:
            self.assertNotIn("inbox", m)
            self.assertEqual(m["conv"], "d:alice:bob")
            self.assertEqual(m["cmid"], seq_to_cmid[m["seq"]])
            i = int(m["cmid"][2:])
            self.assertEqual(m["from"], "alice" if i % 2 == 0 else "bob")
            self.assertEqual(m["body"], f"h{i}")
            self.assertEqual(m["ts"], oks[i]["ts"])
        resp = await bob.ok("history", conv="d:alice:bob", before=71)
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(21, 71)), "before exclusive")
        self.assertIs(resp["more"], True)
        resp = await bob.ok("history", conv="d:alice:bob", before=21)
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(1, 21)))
        self.assertIs(resp["more"], False)
        resp = await bob.ok("history", conv="d:alice:bob", before=1)
        self.assertEqual((resp["msgs"], resp["more"]), ([], False))
        resp = await bob.ok("history", conv="d:alice:bob", limit=10, before=50)
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(40, 50)))
        self.assertIs(resp["more"], True)
        resp = await bob.ok("history", conv="d:alice:bob", limit=1000)
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(1, 121)))
        self.assertIs(resp["more"], False)
        resp = await bob.ok("history", conv="d:alice:bob", before=10**9, limit=3)
        self.assertEqual([m["seq"] for m in resp["msgs"]], [118, 119, 120])

    async def test_history_access_and_format(self):
        alice = await self.client(user="alice")
        carol = await self.client(user="carol")
        await self.send_ok(alice, "hx-1", to="bob")
        resp = await alice.ok("history", conv="d:alice:zed")
        self.assertEqual((resp["msgs"], resp["more"]), ([], False), "empty conversation")
        resp = await alice.ok("history", conv="d:alice:alice")
        self.assertEqual(resp["msgs"], [])
        r = await carol.request("history", conv="d:alice:bob")
        self.assert_error(r, "forbidden", "carol reading d:alice:bob")
        r = await alice.request("history", conv="d:bob:alice")
        self.assert_error(r, "bad_request", "non-canonical d:bob:alice")
        for bad in ["x:alice:bob", "d:alice", "d:alice:bob:carol", "d::bob", "alice", "",
                    "d:alice:b b"]:
            r = await alice.request("history", conv=bad)
            self.assert_error(r, "bad_request", f"conv {bad!r}")
        r = await alice.request("history")
        self.assert_error(r, "bad_request", "missing conv")


class HistoryClampTest(MessagingTestCase):
    SERVER_KW = {"extra_args": FAST, "sync": "none"}

    async def test_limit_clamped_to_200(self):
        alice = await self.client(user="alice")
        answers = await self.pipeline_sends(alice, "bob", [f"c-{i}" for i in range(230)])
        self.assertTrue(all(a["op"] == "ok" for a in answers))
        resp = await alice.ok("history", conv="d:alice:bob", limit=1000)
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(31, 231)))
        self.assertIs(resp["more"], True)
        resp = await alice.ok("history", conv="d:alice:bob", before=31, limit=200)
        self.assertEqual([m["seq"] for m in resp["msgs"]], list(range(1, 31)))
        self.assertIs(resp["more"], False)


class ReadReceiptTest(MessagingTestCase):
    async def test_receipts(self):
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        b1 = await self.client(user="bob", device="phone")
        b2 = await self.client(user="bob", device="laptop")
        carol = await self.client(user="carol")
        for i in range(3):
            await self.send_seen(a1, f"rr-{i}", "bob", [a1, a2, b1, b2])
        before = now_ms()
        r = await b1.request("read", conv="d:alice:bob", seq=2)
        self.assertEqual(r["op"], "ok", r)
        for name, c in [("a1", a1), ("a2", a2), ("b2", b2)]:
            with self.subTest(device=name):
                ev = await c.next_event("receipt")
                self.assertEqual({k: ev[k] for k in ("conv", "user", "seq")},
                                 {"conv": "d:alice:bob", "user": "bob", "seq": 2})
                self.assertIsInstance(ev["ts"], int)
                self.assertGreaterEqual(ev["ts"], before - 2000)
                self.assertNotIn("id", ev)
        await b1.no_event("receipt", within=0.5)
        await carol.no_event("receipt", within=0.1)
        # Lower: ignored, no event.
        r = await b1.request("read", conv="d:alice:bob", seq=1)
        self.assertEqual(r["op"], "ok", r)
        for c in (a1, a2, b2, b1):
            await c.no_event("receipt", within=0.3)
        convs = await b1.ok("convs")
        self.assertEqual(convs["convs"][0]["read_seq"], 2)
        # Past the last message: clamped.
        await b2.send_raw({"op": "read", "conv": "d:alice:bob", "seq": 99})
        for c in (a1, a2, b1):
            ev = await c.next_event("receipt")
            self.assertEqual((ev["user"], ev["seq"]), ("bob", 3))
        await b2.no_event("receipt", within=0.3)
        convs = await b2.ok("convs")
        self.assertEqual(convs["convs"][0]["read_seq"], 3)
        # The other side's read position is its own.
        convs = await a1.ok("convs")
        self.assertEqual(convs["convs"][0]["read_seq"], 0)
        # Non-member: forbidden; malformed: bad_request.
        r = await carol.request("read", conv="d:alice:bob", seq=1)
        self.assert_error(r, "forbidden", "carol reads d:alice:bob")
        r = await b1.request("read", conv="d:bob:alice", seq=1)
        self.assert_error(r, "bad_request", "non-canonical conv")
        r = await b1.request("read", conv="d:alice:bob")
        self.assert_error(r, "bad_request", "missing seq")
        await carol.send_raw({"op": "read", "conv": "d:alice:bob", "seq": 1})
        err = await carol.next_event("error")
        self.assertEqual(err["code"], "forbidden")
        self.assertNotIn("id", err)
        for c in (a1, a2, b1, b2):
            await c.no_event("receipt", within=0.2)


class ConvsTest(MessagingTestCase):
    async def test_order_and_fields(self):
        a1 = await self.client(user="alice", device="phone")
        bob = await self.client(user="bob")
        resp = await a1.ok("convs")
        self.assertEqual(resp["convs"], [])
        ok_b1 = await self.send_seen(a1, "cv-1", "bob", [a1, bob])
        await asyncio.sleep(0.01)
        await self.send_seen(a1, "cv-2", "carol", [a1])
        await asyncio.sleep(0.01)
        await self.send_seen(a1, "cv-3", "dave", [a1])
        await asyncio.sleep(0.01)
        ok_b2 = await self.send_seen(bob, "cv-4", "alice", [a1, bob])
        resp = await a1.ok("convs")
        got = [(c["conv"], c["last_seq"], c["read_seq"]) for c in resp["convs"]]
        self.assertEqual(got, [("d:alice:bob", 2, 0), ("d:alice:dave", 1, 0),
                               ("d:alice:carol", 1, 0)], "most recently active first")
        self.assertEqual(resp["convs"][0]["last_ts"], ok_b2["ts"])
        self.assertGreaterEqual(ok_b2["ts"], ok_b1["ts"])
        # Reading is not activity.
        await a1.ok("read", conv="d:alice:carol", seq=1)
        resp = await a1.ok("convs")
        got = [(c["conv"], c["last_seq"], c["read_seq"]) for c in resp["convs"]]
        self.assertEqual(got, [("d:alice:bob", 2, 0), ("d:alice:dave", 1, 0),
                               ("d:alice:carol", 1, 1)])
        resp = await a1.ok("convs", limit=2)
        self.assertEqual([c["conv"] for c in resp["convs"]], ["d:alice:bob", "d:alice:dave"])
        # Bob's view: only his conversation.
        resp = await bob.ok("convs")
        self.assertEqual([(c["conv"], c["last_seq"], c["read_seq"]) for c in resp["convs"]],
                         [("d:alice:bob", 2, 0)])
        # Activity moves a conversation to the front.
        await self.send_seen(a1, "cv-5", "carol", [a1])
        resp = await a1.ok("convs")
        self.assertEqual([c["conv"] for c in resp["convs"]],
                         ["d:alice:carol", "d:alice:bob", "d:alice:dave"])
        self.assertEqual(resp["convs"][0]["last_seq"], 2)

    async def test_default_limit_100(self):
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        futs = []
        for i in range(105):
            c = a1 if i % 2 == 0 else a2
            futs.append(await c.request_nowait("send", to=f"u{i:03d}", cmid=f"dl-{i}", body="x"))
        answers = await asyncio.wait_for(asyncio.gather(*futs), 60)
        self.assertTrue(all(a["op"] == "ok" for a in answers), answers)
        await a1.collect("msg", 105, timeout=30)  # alice's inbox has them all
        resp = await a1.ok("convs")
        self.assertEqual(len(resp["convs"]), 100)
        resp = await a1.ok("convs", limit=1000)
        self.assertEqual(len(resp["convs"]), 105)
        self.assertEqual(len({c["conv"] for c in resp["convs"]}), 105)
        ts = [c["last_ts"] for c in resp["convs"]]
        self.assertEqual(ts, sorted(ts, reverse=True))


class TypingTest(MessagingTestCase):
    async def test_typing(self):
        a1 = await self.client(user="alice", device="phone")
        a2 = await self.client(user="alice", device="laptop")
        b1 = await self.client(user="bob", device="phone")
        b2 = await self.client(user="bob", device="laptop")
        carol = await self.client(user="carol")
        await a1.send_raw({"op": "typing", "to": "bob"})
        for c in (b1, b2):
            ev = await c.next_event("typing")
            self.assert_fields(ev, {"op": "typing", "conv": "d:alice:bob", "from": "alice"})
        await a2.no_event("typing", within=0.5)
        await a1.no_event("typing", within=0.1)
        await carol.no_event("typing", within=0.1)
        r = await b2.request("typing", to="alice")
        self.assertEqual(r["op"], "ok", r)
        for c in (a1, a2):
            ev = await c.next_event("typing")
            self.assert_fields(ev, {"op": "typing", "conv": "d:alice:bob", "from": "bob"})
        await b1.no_event("typing", within=0.5)
        # Not stored: no inbox entry, no conversation.
        for c in (a1, b1):
            resp = await c.ok("sync", since=0)
            self.assertEqual((resp["events"], resp["inbox_seq"]), ([], 0))
            self.assertEqual((await c.ok("convs"))["convs"], [])
        r = await a1.request("typing", to="not valid")
        self.assert_error(r, "bad_request", "typing to an invalid id")
        r = await a1.request("typing")
        self.assert_error(r, "bad_request", "typing without to/group")
        for c in (a1, a2, b1, b2, carol):
            self.assertEqual(c.queued("msg"), [])


class RateLimitTest(MessagingTestCase):
    SERVER_KW = {"extra_args": ["--limits.rate_per_sec=5", "--limits.rate_burst=5"]}

    async def test_sixth_quick_send_is_rate_limited(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        futs = [await alice.request_nowait("send", to="bob", cmid=f"rl-{i}", body="x")
                for i in range(6)]
        answers = await asyncio.wait_for(asyncio.gather(*futs), 10)
        for a in answers[:5]:
            self.assertEqual(a["op"], "ok", answers)
        self.assert_error(answers[5], "rate_limited", "6th send with burst 5")
        evs = await bob.collect("msg", 5)
        self.assertEqual([e["cmid"] for e in evs], [f"rl-{i}" for i in range(5)])
        await bob.no_event("msg", within=0.5)
        self.assertFalse(alice.closed)
        # The limit is per connection: another connection of alice may send.
        other = await self.client(user="alice", device="other")
        await self.send_ok(other, "rl-other", to="bob")
        # After a while tokens come back; the rate-limited cmid was never stored.
        await asyncio.sleep(1.0)
        ok = await self.send_ok(alice, "rl-5", to="bob")
        self.assertIs(ok["dup"], False)
        self.assertEqual(ok["seq"], 7)

    async def test_typing_is_rate_limited(self):
        alice = await self.client(user="alice")
        futs = [await alice.request_nowait("typing", to="bob") for _ in range(6)]
        answers = await asyncio.wait_for(asyncio.gather(*futs), 10)
        self.assertEqual([a["op"] for a in answers[:5]], ["ok"] * 5, answers)
        self.assert_error(answers[5], "rate_limited", "6th typing with burst 5")

    async def test_abuse_closes_4029(self):
        alice = await self.client(user="alice")
        code, oks, limited = await alice.flood(
            {"op": "send", "id": 1000 + i, "to": "bob", "cmid": f"ab-{i}", "body": "x"}
            for i in range(80))
        self.assertEqual(code, 4029)
        self.assertLessEqual(len(oks), 10, "at most burst + refill were accepted")
        self.assertGreater(len(limited), 0)


class RestartTest(MessagingTestCase):
    async def test_state_survives_restart(self):
        a = await self.client(user="alice", device="phone")
        b = await self.client(user="bob", device="phone")
        c = await self.client(user="carol")
        for i in range(5):
            await self.send_ok(a, f"p-a{i}", to="bob", body=f"a{i}", meta={"i": i})
            await self.send_ok(b, f"p-b{i}", to="alice", body=f"b{i}")
        await self.send_ok(c, "p-c0", to="alice")
        dup_ok = await self.send_ok(a, "p-self", to="alice")
        for cl, n in [(a, 12), (b, 10), (c, 1)]:
            await cl.settle(n)
        await b.ok("ack", inbox=4)
        await a.ok("read", conv="d:alice:bob", seq=7)
        snapshot = {}
        for name, cl in [("a", a), ("b", b), ("c", c)]:
            snapshot[name] = {
                "sync": (await cl.ok("sync", since=0))["events"],
                "convs": (await cl.ok("convs"))["convs"],
                "inbox_seq": (await cl.ok("sync", since=0))["inbox_seq"],
            }
        hist = {conv: (await a.ok("history", conv=conv))["msgs"]
                for conv in ["d:alice:bob", "d:alice:carol", "d:alice:alice"]}
        for cl in (a, b, c):
            await cl.close()
        self.clients.clear()

        # SIGTERM -> exit 0, then start on the same data dir with another core count: the
        # logical shards land on other cores, and everything must still be found.
        self.server.threads = 3
        await self.restart_server()

        a = await self.client(user="alice", device="phone")
        b = await self.client(user="bob", device="phone")
        c = await self.client(user="carol")
        self.assertEqual(a.hello_ok["inbox_seq"], snapshot["a"]["inbox_seq"])
        self.assertEqual(a.hello_ok["inbox_seq"], 12)
        self.assertEqual(b.hello_ok["inbox_seq"], 10)
        for name, cl in [("a", a), ("b", b), ("c", c)]:
            with self.subTest(user=name):
                self.assertEqual((await cl.ok("sync", since=0))["events"], snapshot[name]["sync"])
                self.assertEqual((await cl.ok("convs"))["convs"], snapshot[name]["convs"])
        for conv, msgs in hist.items():
            self.assertEqual((await a.ok("history", conv=conv))["msgs"], msgs, conv)
        # bob's device cursor survived.
        resp = await b.ok("sync")
        self.assertEqual([e["inbox"] for e in resp["events"]], list(range(5, 11)))
        # Dedupe survived.
        again = await self.send_ok(a, "p-self", to="alice")
        self.assertEqual((again["dup"], again["seq"], again["ts"]), (True, dup_ok["seq"], dup_ok["ts"]))
        await a.no_event("msg", within=0.3)
        # New sends continue the numbering without gaps or repeats.
        ok = await self.send_ok(a, "p-new", to="bob")
        self.assertEqual((ok["conv"], ok["seq"], ok["dup"]), ("d:alice:bob", 11, False))
        ev = await b.next_event("msg")
        self.assertEqual((ev["inbox"], ev["seq"]), (11, 11))
        ev = await a.next_event("msg")
        self.assertEqual((ev["inbox"], ev["seq"]), (13, 11))
        ok = await self.send_ok(c, "p-c1", to="alice")
        self.assertEqual(ok["seq"], 2)
        ev = await a.next_event("msg")
        self.assertEqual((ev["inbox"], ev["conv"], ev["seq"]), (14, "d:alice:carol", 2))
        convs = (await a.ok("convs"))["convs"]
        self.assertEqual([(x["conv"], x["last_seq"]) for x in convs][:2],
                         [("d:alice:carol", 2), ("d:alice:bob", 11)])
        self.assertEqual({x["conv"]: x["read_seq"] for x in convs}["d:alice:bob"], 7)

        # Once more with a single core.
        hist = {conv: (await a.ok("history", conv=conv))["msgs"]
                for conv in ["d:alice:bob", "d:alice:carol", "d:alice:alice"]}
        inbox = (await a.ok("sync", since=0))["events"]
        for cl in (a, b, c):
            await cl.close()
        self.clients.clear()
        self.server.threads = 1
        await self.restart_server()
        a = await self.client(user="alice", device="phone")
        self.assertEqual((await a.ok("sync", since=0))["events"], inbox)
        for conv, msgs in hist.items():
            self.assertEqual((await a.ok("history", conv=conv))["msgs"], msgs, conv)
        ok = await self.send_ok(a, "p-one-core", to="bob")
        self.assertEqual((ok["seq"], ok["dup"]), (12, False))


class MultiDeviceTest(MessagingTestCase):
    async def test_three_devices(self):
        d1 = await self.client(user="alice", device="d1")
        d2 = await self.client(user="alice", device="d2")
        bob = await self.client(user="bob")
        for i in range(5):
            await self.send_ok(bob, f"md-{i}", to="alice")
        for c in (d1, d2):
            evs = await c.collect("msg", 5)
            self.assertEqual([e["inbox"] for e in evs], [1, 2, 3, 4, 5])
        d3 = await self.client(user="alice", device="d3")
        self.assertEqual(d3.hello_ok["inbox_seq"], 5)
        await d1.ok("ack", inbox=5)
        await d2.ok("ack", inbox=2)
        ok = await self.send_ok(d3, "md-d3", to="bob")
        for c in (d1, d2, d3):
            ev = await c.next_event("msg")
            self.assertEqual((ev["inbox"], ev["cmid"], ev["from"]), (6, "md-d3", "alice"))
        self.assertEqual(ok["seq"], 6)
        self.assertEqual([e["inbox"] for e in (await d1.ok("sync"))["events"]], [6])
        self.assertEqual([e["inbox"] for e in (await d2.ok("sync"))["events"]], [3, 4, 5, 6])
        self.assertEqual([e["inbox"] for e in (await d3.ok("sync"))["events"]], [1, 2, 3, 4, 5, 6])
        # A device that disconnects misses nothing: the others keep receiving.
        await d2.close()
        await self.send_ok(bob, "md-5", to="alice")
        for c in (d1, d3):
            ev = await c.next_event("msg")
            self.assertEqual(ev["inbox"], 7)
        d2 = await self.client(user="alice", device="d2")
        self.assertEqual([e["inbox"] for e in (await d2.ok("sync"))["events"]], [3, 4, 5, 6, 7])


if __name__ == "__main__":
    main()
