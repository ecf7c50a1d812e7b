"""Groups and group chat against the real server (PROTOCOL.md sections 5, 7 and 10,
docs/protocol.md section 7).

Run: PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_groups.py
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ServerTestCase, main, wall_ms  # noqa: E402

QUIET = 0.7  # how long "nothing more arrives" is awaited
SLACK_MS = 2000


class GroupCase(ServerTestCase):
    def assertGroupEvent(self, ev, group, change, users, by):
        self.assertEqual(ev.get("op"), "group", ev)
        self.assertNotIn("id", ev, ev)
        self.assertEqual(ev.get("group"), group, ev)
        self.assertEqual(ev.get("change"), change, ev)
        self.assertEqual(ev.get("users"), users, ev)
        self.assertEqual(ev.get("by"), by, ev)
        self.assertIsInstance(ev.get("inbox"), int, ev)
        self.assertIsInstance(ev.get("ts"), int, ev)
        now = wall_ms()
        self.assertTrue(now - 60000 <= ev["ts"] <= now + SLACK_MS, f"ts not now: {ev}")

    async def expect_group(self, clients, group, change, users, by, timeout=5):
        """Each client receives this group event next (among its group events)."""
        out = []
        for c in clients:
            ev = await c.next_event("group", timeout=timeout)
            self.assertGroupEvent(ev, group, change, users, by)
            out.append(ev)
        return out

    async def no_group_event(self, clients, within=QUIET):
        await asyncio.sleep(within)
        for c in clients:
            await c.no_event("group", 0)

    async def info(self, c, group):
        ans = await c.ok("group_info", group=group)
        self.assertEqual(ans.get("group"), group, ans)
        return ans

    async def create(self, owner, group, members, name=None):
        fields = {"group": group, "members": members}
        fields["name"] = name if name is not None else group.capitalize()
        ans = await owner.ok("group_create", **fields)
        self.assertEqual(ans.get("group"), group, ans)
        self.assertEqual(ans.get("conv"), f"g:{group}", ans)
        return ans

    async def send(self, c, group, cmid, body=None):
        ans = await c.ok("send", group=group, cmid=cmid, body=body if body is not None else cmid)
        self.assertEqual(ans.get("conv"), f"g:{group}", ans)
        self.assertFalse(ans.get("dup"), ans)
        return ans

    async def sync_all(self, c):
        """Every inbox event of c's user, by paging sync from 0."""
        events, since = [], 0
        for _ in range(100):
            ans = await c.ok("sync", since=since, limit=1000)
            events += ans["events"]
            if not ans["more"]:
                return events, ans["inbox_seq"]
            since = ans["events"][-1]["inbox"]
        raise AssertionError("sync never ended")

    def assertInboxGapless(self, events, who):
        nums = [e["inbox"] for e in events]
        self.assertEqual(nums, list(range(1, len(nums) + 1)), f"{who}: inbox numbers")


class GroupTest(GroupCase):
    async def test_create_with_id_delivers_created_to_every_initial_member(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        everyone = ["alice", "bob", "carol", "dave"]
        await self.create(alice, "team", ["bob", "carol", "dave"], name="Team")
        evs = await self.expect_group([alice, bob, carol], "team", "created", everyone, "alice")
        for c, ev in zip([alice, bob, carol], evs):
            self.assertEqual(ev["inbox"], c.hello_ok["inbox_seq"] + 1, ev)
        await self.no_group_event([alice, bob, carol])
        # dave was offline: the event waits in his inbox
        dave = await self.client("dave")
        self.assertEqual(dave.hello_ok["inbox_seq"], 1)
        events, inbox_seq = await self.sync_all(dave)
        self.assertEqual(len(events), 1, events)
        self.assertGroupEvent(events[0], "team", "created", everyone, "alice")
        for c in (alice, bob, dave):
            info = await self.info(c, "team")
            self.assertEqual(info["name"], "Team")
            self.assertEqual(info["owner"], "alice")
            self.assertEqual(info["members"], everyone)

    async def test_create_without_id_picks_one(self):
        alice, bob = await self.clients_for(["alice", "bob"])
        first = await alice.ok("group_create", name="One", members=["bob"])
        second = await alice.ok("group_create", name="Two", members=["bob"])
        ids = []
        for ans in (first, second):
            gid = ans.get("group")
            self.assertIsInstance(gid, str, ans)
            self.assertRegex(gid, r"^grp-[0-9a-f]{16}$")
            self.assertEqual(ans.get("conv"), f"g:{gid}", ans)
            ids.append(gid)
        self.assertNotEqual(ids[0], ids[1])
        for gid, name in zip(ids, ["One", "Two"]):
            info = await self.info(bob, gid)
            self.assertEqual((info["name"], info["owner"], info["members"]),
                             (name, "alice", ["alice", "bob"]))
            await self.expect_group([alice, bob], gid, "created", ["alice", "bob"], "alice")

    async def test_existing_id_is_conflict(self):
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        await self.create(alice, "team", ["bob"])
        await self.expect_group([alice, bob], "team", "created", ["alice", "bob"], "alice")
        await carol.error("group_create", "conflict", group="team", name="Mine",
                          members=["dave"])
        await alice.error("group_create", "conflict", group="team", name="Again",
                          members=["carol"])
        info = await self.info(alice, "team")
        self.assertEqual((info["name"], info["owner"], info["members"]),
                         ("Team", "alice", ["alice", "bob"]))
        await self.no_group_event([alice, bob, carol, dave])
        await carol.error("group_info", "forbidden", group="team")

    async def test_add_and_remove_by_owner(self):
        alice, bob, carol, dave, erin = await self.clients_for(
            ["alice", "bob", "carol", "dave", "erin"])
        await self.create(alice, "team", ["bob", "carol"])
        await self.expect_group([alice, bob, carol], "team", "created",
                                ["alice", "bob", "carol"], "alice")
        await alice.ok("group_add", group="team", users=["dave", "erin"])
        await self.expect_group([alice, bob, carol, dave, erin], "team", "added",
                                ["dave", "erin"], "alice")
        info = await self.info(dave, "team")
        self.assertEqual(info["members"], ["alice", "bob", "carol", "dave", "erin"])
        await alice.ok("group_remove", group="team", users=["carol"])
        await self.expect_group([alice, bob, dave, erin, carol], "team", "removed",
                                ["carol"], "alice")
        info = await self.info(erin, "team")
        self.assertEqual(info["members"], ["alice", "bob", "dave", "erin"])
        self.assertEqual(info["owner"], "alice")
        await carol.error("group_info", "forbidden", group="team")
        await self.no_group_event([alice, bob, carol, dave, erin])
        for c in (alice, bob, carol, dave, erin):
            c.assert_gapless()

    async def test_only_the_owner_adds_and_removes(self):
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        await self.create(alice, "team", ["bob", "carol"])
        await self.expect_group([alice, bob, carol], "team", "created",
                                ["alice", "bob", "carol"], "alice")
        await bob.error("group_add", "forbidden", group="team", users=["dave"])
        await bob.error("group_remove", "forbidden", group="team", users=["carol"])
        await bob.error("group_remove", "forbidden", group="team", users=["alice"])
        await dave.error("group_add", "forbidden", group="team", users=["dave"])
        await dave.error("group_remove", "forbidden", group="team", users=["bob"])
        await self.no_group_event([alice, bob, carol, dave])
        info = await self.info(alice, "team")
        self.assertEqual((info["owner"], info["members"]), ("alice", ["alice", "bob", "carol"]))

    async def test_leave_gives_the_leaver_its_own_left_event(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        await self.create(alice, "team", ["bob", "carol"])
        await self.expect_group([alice, bob, carol], "team", "created",
                                ["alice", "bob", "carol"], "alice")
        await bob.ok("group_leave", group="team")
        await self.expect_group([bob, alice, carol], "team", "left", ["bob"], "bob")
        await self.no_group_event([alice, bob, carol])  # no owner change: alice stays
        info = await self.info(carol, "team")
        self.assertEqual((info["owner"], info["members"]), ("alice", ["alice", "carol"]))
        await bob.error("group_info", "forbidden", group="team")

    async def test_owner_leaving_passes_ownership_to_the_longest_standing_member(self):
        alice, bob, carol, dave, erin = await self.clients_for(
            ["alice", "bob", "carol", "dave", "erin"])
        # carol is listed before bob: she stands longer although "bob" < "carol"
        await self.create(alice, "team", ["carol", "bob"])
        await self.expect_group([alice, carol, bob], "team", "created",
                                ["alice", "carol", "bob"], "alice")
        await alice.ok("group_add", group="team", users=["dave"])
        await self.expect_group([alice, carol, bob, dave], "team", "added", ["dave"], "alice")

        await alice.ok("group_leave", group="team")
        await self.expect_group([alice, carol, bob, dave], "team", "left", ["alice"], "alice")
        await self.expect_group([carol, bob, dave], "team", "owner", ["carol"], "alice")
        info = await self.info(bob, "team")
        self.assertEqual((info["owner"], info["members"]), ("carol", ["carol", "bob", "dave"]))
        # the new owner has the owner's rights, the others still do not
        await bob.error("group_add", "forbidden", group="team", users=["erin"])
        await carol.ok("group_add", group="team", users=["erin"])
        await self.expect_group([carol, bob, dave, erin], "team", "added", ["erin"], "carol")

        await carol.ok("group_leave", group="team")
        await self.expect_group([carol, bob, dave, erin], "team", "left", ["carol"], "carol")
        await self.expect_group([bob, dave, erin], "team", "owner", ["bob"], "carol")
        info = await self.info(dave, "team")
        self.assertEqual((info["owner"], info["members"]), ("bob", ["bob", "dave", "erin"]))
        for c in (alice, bob, carol, dave, erin):
            c.assert_gapless()

    async def test_owner_removing_itself_is_a_leave(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        await self.create(alice, "team", ["bob", "carol"])
        await self.expect_group([alice, bob, carol], "team", "created",
                                ["alice", "bob", "carol"], "alice")
        await alice.ok("group_remove", group="team", users=["alice"])
        await self.expect_group([alice, bob, carol], "team", "left", ["alice"], "alice")
        await self.expect_group([bob, carol], "team", "owner", ["bob"], "alice")
        info = await self.info(carol, "team")
        self.assertEqual((info["owner"], info["members"]), ("bob", ["bob", "carol"]))
        await alice.error("group_info", "forbidden", group="team")
        await self.no_group_event([alice, bob, carol])

    async def test_last_member_leaving_deletes_the_group(self):
        alice, bob = await self.clients_for(["alice", "bob"])
        await self.create(alice, "solo", [])
        await self.expect_group([alice], "solo", "created", ["alice"], "alice")
        await alice.ok("group_leave", group="solo")
        await self.expect_group([alice], "solo", "left", ["alice"], "alice")
        await alice.error("group_info", "not_found", group="solo")
        await alice.error("send", "not_found", group="solo", cmid="s-1", body="x")
        ans = await alice.ok("groups")
        self.assertNotIn("solo", [g["group"] for g in ans["groups"]])
        # the id is free again
        await self.create(bob, "solo", [])
        info = await self.info(bob, "solo")
        self.assertEqual((info["owner"], info["members"]), ("bob", ["bob"]))

        await self.create(alice, "pair", ["bob"])
        await bob.ok("group_leave", group="pair")
        await alice.ok("group_leave", group="pair")
        await alice.error("group_info", "not_found", group="pair")
        await bob.error("group_info", "not_found", group="pair")

    async def test_a_recreated_group_does_not_inherit_the_deleted_groups_messages(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        await self.create(alice, "room", ["bob"])
        for i in range(3):
            await self.send(alice, "room", f"secret-{i}", body=f"alice's secret {i}")
        await bob.collect("msg", 3)
        await alice.ok("group_leave", group="room")
        await bob.ok("group_leave", group="room")  # the last member: the group is deleted
        await alice.error("group_info", "not_found", group="room")
        bob_before, bob_seq = await self.sync_all(bob)
        # a new group under the same id, by someone who never was in the old one
        await self.create(carol, "room", [])
        hist = await carol.ok("history", conv="g:room")
        with self.subTest("history of the new group"):
            self.assertEqual([m["body"] for m in hist["msgs"]], [],
                             "the deleted group's messages are readable by the new group")
            self.assertFalse(hist["more"], hist)
        ans = await self.send(carol, "room", "c-1", body="carol's private message")
        with self.subTest("a conversation's seq is never reused"):
            self.assertEqual(ans["seq"], 4, ans)
        for restart in (False, True):
            if restart:
                await self.restart_server()
                bob = await self.client("bob")
                carol = await self.client("carol")
            with self.subTest("the new group's history", restart=restart):
                hist = await carol.ok("history", conv="g:room")
                self.assertEqual([(m["seq"], m["body"]) for m in hist["msgs"]],
                                 [(4, "carol's private message")])
                self.assertFalse(hist["more"], hist)
                for before in (4, 2):
                    older = await carol.ok("history", conv="g:room", before=before)
                    self.assertEqual((older["msgs"], older["more"]), ([], False), older)
            with self.subTest("the old members' inboxes keep the old messages", restart=restart):
                events, seq = await self.sync_all(bob)
                self.assertEqual(seq, bob_seq)
                self.assertEqual(events, bob_before)
                self.assertInboxGapless(events, "bob")
                self.assertEqual([e["body"] for e in events if e["op"] == "msg"],
                                 [f"alice's secret {i}" for i in range(3)])
        await bob.no_event("msg", QUIET)

    async def test_non_members_are_forbidden(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        await self.create(alice, "team", ["bob"])
        await self.send(alice, "team", "a-1")
        await bob.next_event("msg")
        cases = [
            ("group_info", {"group": "team"}),
            ("history", {"conv": "g:team"}),
            ("send", {"group": "team", "cmid": "c-1", "body": "let me in"}),
            ("typing", {"group": "team"}),
            ("read", {"conv": "g:team", "seq": 1}),
        ]
        for op, fields in cases:
            with self.subTest(op=op):
                await carol.error(op, "forbidden", **fields)
        await bob.no_event("msg", QUIET)
        await bob.no_event("typing", 0)
        await bob.no_event("receipt", 0)
        ans = await alice.ok("history", conv="g:team")
        self.assertEqual([m["seq"] for m in ans["msgs"]], [1])

    async def test_a_group_that_does_not_exist_is_not_found(self):
        alice = await self.client("alice")
        cases = [
            ("group_info", {"group": "nope"}),
            ("history", {"conv": "g:nope"}),
            ("send", {"group": "nope", "cmid": "a-1", "body": "hello?"}),
            ("typing", {"group": "nope"}),
            ("read", {"conv": "g:nope", "seq": 1}),
            ("group_add", {"group": "nope", "users": ["bob"]}),
            ("group_remove", {"group": "nope", "users": ["bob"]}),
            ("group_leave", {"group": "nope"}),
        ]
        for op, fields in cases:
            with self.subTest(op=op):
                await alice.error(op, "not_found", **fields)

    async def test_groups_lists_the_users_groups_with_names(self):
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        await self.create(alice, "team", ["bob"], name="Team")
        await self.create(alice, "fun", ["carol"], name="Fun times")
        await self.create(bob, "bobs", ["alice"], name="Bob's")

        async def groups(c):
            ans = await c.ok("groups")
            listed = [(g["group"], g["name"]) for g in ans["groups"]]
            self.assertEqual(len(listed), len(set(listed)), f"listed twice: {listed}")
            return set(listed)

        self.assertEqual(await groups(alice),
                         {("team", "Team"), ("fun", "Fun times"), ("bobs", "Bob's")})
        self.assertEqual(await groups(bob), {("team", "Team"), ("bobs", "Bob's")})
        self.assertEqual(await groups(carol), {("fun", "Fun times")})
        self.assertEqual(await groups(dave), set())
        await alice.ok("group_remove", group="team", users=["bob"])
        self.assertEqual(await groups(bob), {("bobs", "Bob's")})
        await alice.ok("group_leave", group="fun")
        self.assertEqual(await groups(alice), {("team", "Team"), ("bobs", "Bob's")})
        await alice.ok("group_add", group="team", users=["dave"])
        self.assertEqual(await groups(dave), {("team", "Team")})

    async def test_convs_lists_a_group_from_the_moment_of_joining(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        await alice.ok("send", to="bob", cmid="d-1", body="direct first")
        await self.create(alice, "team", ["bob"])

        async def convs(c):
            ans = await c.ok("convs")
            return {x["conv"]: x for x in ans["convs"]}, [x["conv"] for x in ans["convs"]]

        mine, _ = await convs(bob)
        self.assertIn("g:team", mine)
        self.assertEqual((mine["g:team"]["last_seq"], mine["g:team"]["read_seq"]), (0, 0))
        theirs, _ = await convs(carol)
        self.assertNotIn("g:team", theirs)
        await alice.ok("group_add", group="team", users=["carol", "dave"])
        theirs, _ = await convs(carol)
        self.assertIn("g:team", theirs)
        dave = await self.client("dave")  # added while offline
        self.assertIn("g:team", (await convs(dave))[0])
        await asyncio.sleep(0.01)  # a later wall-clock millisecond than the direct message
        await self.send(alice, "team", "t-1")
        for c in (alice, bob, carol, dave):
            await c.next_event("msg", match=lambda m: m["conv"] == "g:team")
            table, order = await convs(c)
            self.assertEqual(table["g:team"]["last_seq"], 1, table)
            self.assertEqual(order[0], "g:team", f"{c.name}: most recent first: {order}")


class GroupMessageTest(GroupCase):
    async def test_every_member_and_device_gets_every_message_once(self):
        alice = await self.client("alice")
        b1 = await self.client("bob", "d1")
        b2 = await self.client("bob", "d2")
        carol = await self.client("carol")
        devices = [alice, b1, b2, carol]
        await self.create(alice, "team", ["bob", "carol"])
        oks = {}
        for i in range(5):
            for sender in (alice, b1, carol):
                cmid = f"{sender.user}-{i}"
                oks[cmid] = await self.send(sender, "team", cmid, body=f"body {cmid}")
        seqs = sorted(a["seq"] for a in oks.values())
        self.assertEqual(seqs, list(range(1, 16)))
        for d in devices:
            msgs = await d.collect("msg", 15, timeout=10)
            self.assertEqual([m["seq"] for m in msgs], list(range(1, 16)), d.name)
            for m in msgs:
                self.assertEqual(m["conv"], "g:team")
                self.assertEqual(m["seq"], oks[m["cmid"]]["seq"], m)
                self.assertEqual(m["ts"], oks[m["cmid"]]["ts"], m)
                self.assertEqual(m["from"], m["cmid"].split("-")[0], m)
                self.assertEqual(m["body"], f"body {m['cmid']}", m)
        await asyncio.sleep(QUIET)
        for d in devices:
            await d.no_event("msg", 0)
            d.assert_gapless()
        events, inbox_seq = await self.sync_all(b2)
        self.assertInboxGapless(events, "bob")
        self.assertEqual(len(events), 16)
        self.assertEqual(inbox_seq, 16)
        self.assertEqual([e["seq"] for e in events[1:]], list(range(1, 16)))

    async def test_order_under_concurrency_is_identical_everywhere(self):
        names = [f"m{i}" for i in range(5)]
        first = await self.clients_for(names, "d1")
        second = await self.clients_for(names, "d2")
        devices = first + second
        await self.create(first[0], "team", names[1:])
        for d in devices:
            await d.next_event("group")
        per_sender = 50

        async def burst(c):
            return await asyncio.gather(*(
                c.ok("send", group="team", cmid=f"{c.user}-{i}", body=f"{c.user} {i}")
                for i in range(per_sender)))

        results = await asyncio.gather(*(burst(c) for c in first))
        total = per_sender * len(first)
        by_seq = {}
        for c, answers in zip(first, results):
            for i, ans in enumerate(answers):
                self.assertEqual(ans["conv"], "g:team", ans)
                self.assertNotIn(ans["seq"], by_seq, f"seq given twice: {ans}")
                by_seq[ans["seq"]] = (c.user, f"{c.user}-{i}")
            # one sender's messages are sequenced in the order it sent them
            seqs = [a["seq"] for a in answers]
            self.assertEqual(seqs, sorted(seqs), f"{c.name}: own messages out of order")
        self.assertEqual(sorted(by_seq), list(range(1, total + 1)))
        expected = [(s, *by_seq[s]) for s in range(1, total + 1)]
        for d in devices:
            msgs = await d.collect("msg", total, timeout=30)
            seen = [(m["seq"], m["from"], m["cmid"]) for m in msgs]
            self.assertEqual(seen, expected, f"{d.name}: observed order")
        await asyncio.sleep(QUIET)
        for d in devices:
            await d.no_event("msg", 0)
            d.assert_gapless()
        older = await first[3].ok("history", conv="g:team", before=51, limit=200)
        newer = await first[3].ok("history", conv="g:team", limit=200)
        hist = [(m["seq"], m["from"], m["cmid"]) for m in older["msgs"] + newer["msgs"]]
        self.assertEqual(hist, expected, "history order")

    async def test_a_200_member_group_delivers_once_per_member(self):
        names = [f"u{i:03d}" for i in range(200)]
        clients = await self.clients_for(names)
        owner = clients[0]
        await self.create(owner, "big", names[1:])
        await asyncio.gather(*(c.next_event("group", timeout=30) for c in clients))
        for i in range(3):
            await self.send(clients[i * 50], "big", f"{names[i * 50]}-x", body=f"hello {i}")

        async def three(c):
            msgs = await c.collect("msg", 3, timeout=30)
            return [m["seq"] for m in msgs]

        got = await asyncio.gather(*(three(c) for c in clients))
        for c, seqs in zip(clients, got):
            self.assertEqual(seqs, [1, 2, 3], c.name)
        await asyncio.sleep(1.0)
        for c in clients:
            await c.no_event("msg", 0)
            c.assert_gapless()
        info = await self.info(clients[199], "big")
        self.assertEqual(info["members"], names)

    async def test_inboxes_are_gapless_through_group_events_and_messages(self):
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        live = {"alice": alice, "bob": bob, "carol": carol, "dave": dave}

        async def arrive(users, op):
            for u in users:
                await live[u].next_event(op, timeout=5)

        await self.create(alice, "team", ["bob", "carol"])
        await arrive(["alice", "bob", "carol"], "group")
        for i in range(3):
            await self.send(alice, "team", f"a-{i}")
            await arrive(["alice", "bob", "carol"], "msg")
        await alice.ok("group_add", group="team", users=["dave"])
        await arrive(["alice", "bob", "carol", "dave"], "group")
        for i in range(2):
            await self.send(bob, "team", f"b-{i}")
            await arrive(["alice", "bob", "carol", "dave"], "msg")
        await alice.ok("group_remove", group="team", users=["carol"])
        await arrive(["alice", "bob", "carol", "dave"], "group")
        await self.send(alice, "team", "a-9")
        await arrive(["alice", "bob", "dave"], "msg")
        await bob.ok("group_leave", group="team")
        await arrive(["alice", "bob", "dave"], "group")

        def kind(e):
            return e["change"] if e["op"] == "group" else f"msg{e['seq']}"

        expected = {
            "alice": ["created", "msg1", "msg2", "msg3", "added", "msg4", "msg5", "removed",
                      "msg6", "left"],
            "bob": ["created", "msg1", "msg2", "msg3", "added", "msg4", "msg5", "removed",
                    "msg6", "left"],
            "carol": ["created", "msg1", "msg2", "msg3", "added", "msg4", "msg5", "removed"],
            "dave": ["added", "msg4", "msg5", "removed", "msg6", "left"],
        }
        await asyncio.sleep(QUIET)
        for user, c in live.items():
            events, inbox_seq = await self.sync_all(c)
            self.assertInboxGapless(events, user)
            self.assertEqual(inbox_seq, len(events), user)
            self.assertEqual([kind(e) for e in events], expected[user], user)
            # what arrived live is exactly what the inbox holds
            live_events = [e for e in c.received() if e["op"] in ("msg", "group")]
            self.assertEqual(live_events, events, f"{user}: live events against sync")
            c.assert_gapless()

    async def test_membership_changes_during_a_message_burst(self):
        # Two members send while the owner adds and removes others: every inbox stays gapless,
        # each user's messages follow the conversation's order without repeats, those present
        # throughout get everything, and what arrived live is what sync returns.
        owner, a, b, x, y, z = await self.clients_for(["owner", "a", "b", "x", "y", "z"])
        await self.create(owner, "team", ["a", "b", "z"])
        per_sender = 40

        async def burst(c):
            for i in range(per_sender):
                await c.ok("send", group="team", cmid=f"{c.user}-{i}", body=f"{c.user} {i}")
                if i % 8 == 0:
                    await asyncio.sleep(0.005)

        async def churn():
            await owner.ok("group_add", group="team", users=["x"])
            await owner.ok("group_add", group="team", users=["y"])
            await owner.ok("group_remove", group="team", users=["z"])
            await owner.ok("group_remove", group="team", users=["x"])

        await asyncio.gather(burst(a), burst(b), churn())
        total = 2 * per_sender
        await owner.collect("msg", total, timeout=15)
        await asyncio.sleep(1.0)
        members = (await self.info(owner, "team"))["members"]
        self.assertEqual(members, ["owner", "a", "b", "y"])
        for c in (owner, a, b, x, y, z):
            events, inbox_seq = await self.sync_all(c)
            self.assertInboxGapless(events, c.user)
            self.assertEqual(inbox_seq, len(events), c.user)
            seqs = [e["seq"] for e in events if e["op"] == "msg"]
            if c.user in ("owner", "a", "b"):
                self.assertEqual(seqs, list(range(1, total + 1)), f"{c.user}: messages")
            elif seqs:
                self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))),
                                 f"{c.user}: messages not a gapless run of seq")
            if c.user == "y":
                self.assertEqual(seqs[-1] if seqs else None, total, "y stays to the end")
            live = [e for e in c.received() if e["op"] in ("msg", "group")]
            self.assertEqual(live, events, f"{c.user}: live events against sync")

    async def test_typing_reaches_the_other_members_only(self):
        a1 = await self.client("alice", "d1")
        a2 = await self.client("alice", "d2")
        bob, carol, dave = await self.clients_for(["bob", "carol", "dave"])
        await self.create(a1, "team", ["bob", "carol"])
        await a1.ok("typing", group="team")
        for c in (bob, carol):
            ev = await c.next_event("typing", timeout=2)
            self.assertEqual((ev.get("conv"), ev.get("from")), ("g:team", "alice"), ev)
            self.assertNotIn("id", ev)
        await asyncio.sleep(QUIET)
        for c in (a1, a2, dave, bob, carol):
            await c.no_event("typing", 0)
        # without an id: no answer, the event still goes out
        await bob.send_raw({"op": "typing", "group": "team"})
        for c in (a1, a2, carol):
            ev = await c.next_event("typing", timeout=2)
            self.assertEqual((ev.get("conv"), ev.get("from")), ("g:team", "bob"), ev)
        await asyncio.sleep(QUIET)
        for c in (bob, dave):
            await c.no_event("typing", 0)
        self.assertEqual(bob.received("ok") + bob.received("error"), [])

    async def test_read_receipts_reach_the_other_members(self):
        alice = await self.client("alice")
        b1 = await self.client("bob", "d1")
        b2 = await self.client("bob", "d2")
        carol, dave = await self.clients_for(["carol", "dave"])
        await self.create(alice, "team", ["bob", "carol"])
        await self.send(alice, "team", "a-1")
        await self.send(alice, "team", "a-2")
        await b1.collect("msg", 2)
        await b1.ok("read", conv="g:team", seq=2)
        for c in (alice, carol, b2):
            ev = await c.next_event("receipt", timeout=2)
            self.assertEqual((ev.get("conv"), ev.get("user"), ev.get("seq")),
                             ("g:team", "bob", 2), f"{c.name}: {ev}")
            self.assertIsInstance(ev.get("ts"), int, ev)
        await asyncio.sleep(QUIET)
        for c in (b1, dave, alice, carol, b2):
            await c.no_event("receipt", 0)
        convs = {x["conv"]: x for x in (await b2.ok("convs"))["convs"]}
        self.assertEqual(convs["g:team"]["read_seq"], 2)
        # lower and equal positions are no change; past the end is clamped
        await b1.ok("read", conv="g:team", seq=1)
        await b1.ok("read", conv="g:team", seq=99)
        await alice.no_event("receipt", QUIET)
        convs = {x["conv"]: x for x in (await b1.ok("convs"))["convs"]}
        self.assertEqual(convs["g:team"]["read_seq"], 2)

    async def test_a_removed_member_stops_receiving_and_cannot_read_history(self):
        alice, bob, carol = await self.clients_for(["alice", "bob", "carol"])
        await self.create(alice, "team", ["bob", "carol"])
        await self.send(alice, "team", "a-1")
        for c in (alice, bob, carol):
            await c.next_event("msg")
        await alice.ok("group_remove", group="team", users=["carol"])
        await carol.next_event("group", match=lambda e: e["change"] == "removed")
        await self.send(alice, "team", "a-2")
        await alice.ok("typing", group="team")
        for c in (alice, bob):
            m = await c.next_event("msg")
            self.assertEqual(m["seq"], 2)
        await bob.next_event("typing")
        await asyncio.sleep(QUIET)
        await carol.no_event("msg", 0)
        await carol.no_event("typing", 0)
        await carol.error("history", "forbidden", conv="g:team")
        await carol.error("send", "forbidden", group="team", cmid="c-1", body="still here?")
        await carol.error("read", "forbidden", conv="g:team", seq=1)
        await carol.error("typing", "forbidden", group="team")
        await carol.error("group_info", "forbidden", group="team")
        events, _ = await self.sync_all(carol)
        self.assertEqual([(e["op"], e.get("change"), e.get("seq")) for e in events],
                         [("group", "created", None), ("msg", None, 1),
                          ("group", "removed", None)])
        # added back: a member again, from the next message on
        await alice.ok("group_add", group="team", users=["carol"])
        ev = await carol.next_event("group", match=lambda e: e["change"] == "added")
        self.assertGroupEvent(ev, "team", "added", ["carol"], "alice")
        await self.send(bob, "team", "b-3")
        m = await carol.next_event("msg")
        self.assertEqual((m["seq"], m["cmid"]), (3, "b-3"), m)
        hist = await carol.ok("history", conv="g:team")
        self.assertEqual([x["seq"] for x in hist["msgs"]], [1, 2, 3])
        await carol.ok("read", conv="g:team", seq=3)
        carol.assert_gapless()

    async def test_a_member_added_later_reads_the_full_history_and_gets_new_messages(self):
        alice, bob = await self.clients_for(["alice", "bob"])
        await self.create(alice, "team", ["bob"])
        for i in range(1, 6):
            await self.send(alice if i % 2 else bob, "team", f"m-{i}", body=f"before {i}")
        d1 = await self.client("dave", "d1")
        d2 = await self.client("dave", "d2")
        await alice.ok("group_add", group="team", users=["dave"])
        for d in (d1, d2):
            await self.expect_group([d], "team", "added", ["dave"], "alice")
        hist = await d1.ok("history", conv="g:team")
        self.assertEqual([(m["seq"], m["body"], m["from"]) for m in hist["msgs"]],
                         [(i, f"before {i}", "alice" if i % 2 else "bob") for i in range(1, 6)])
        self.assertFalse(hist["more"])
        older = await d2.ok("history", conv="g:team", before=3, limit=50)
        self.assertEqual([m["seq"] for m in older["msgs"]], [1, 2])
        ans = await self.send(bob, "team", "m-6", body="after")
        self.assertEqual(ans["seq"], 6)
        for d in (d1, d2):
            m = await d.next_event("msg", timeout=5)
            self.assertEqual((m["seq"], m["body"], m["from"]), (6, "after", "bob"), m)
        await asyncio.sleep(QUIET)
        for d in (d1, d2):
            await d.no_event("msg", 0)
            d.assert_gapless()
        events, _ = await self.sync_all(d1)
        self.assertInboxGapless(events, "dave")
        self.assertEqual([e.get("seq") for e in events if e["op"] == "msg"], [6])


class GroupRestartTest(GroupCase):
    async def test_groups_and_their_conversation_survive_a_restart(self):
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        await self.create(alice, "team", ["bob", "carol"], name="Team")
        await alice.ok("group_add", group="team", users=["dave"])
        await alice.ok("group_remove", group="team", users=["carol"])
        await alice.ok("group_leave", group="team")
        for i in range(3):
            await self.send(bob, "team", f"b-{i}")
        await dave.collect("msg", 3)
        before = {}
        for c in (alice, bob, carol, dave):
            await c.close()
        self.clients.clear()
        await self.restart_server()
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        for c in (alice, bob, carol, dave):
            before[c.user] = c.hello_ok["inbox_seq"]
        info = await self.info(dave, "team")
        self.assertEqual((info["name"], info["owner"], info["members"]),
                         ("Team", "bob", ["bob", "dave"]))
        self.assertEqual([g["group"] for g in (await bob.ok("groups"))["groups"]], ["team"])
        self.assertEqual((await carol.ok("groups"))["groups"], [])
        await carol.error("history", "forbidden", conv="g:team")
        hist = await dave.ok("history", conv="g:team")
        self.assertEqual([m["cmid"] for m in hist["msgs"]], ["b-0", "b-1", "b-2"])
        ans = await self.send(dave, "team", "d-0")
        self.assertEqual(ans["seq"], 4)
        for c in (bob, dave):
            m = await c.next_event("msg")
            self.assertEqual((m["seq"], m["inbox"]), (4, before[c.user] + 1), m)
        await alice.no_event("msg", QUIET)
        await carol.no_event("msg", 0)
        await bob.error("group_create", "conflict", group="team", members=[])
        # the owner's rights moved with the ownership
        await bob.ok("group_add", group="team", users=["carol"])
        await self.expect_group([carol], "team", "added", ["carol"], "bob")
        for c in (alice, bob, carol, dave):
            events, inbox_seq = await self.sync_all(c)
            self.assertInboxGapless(events, c.user)


class GroupRaceTest(GroupCase):
    SERVER_KW = {"extra_args": ["--limits.rate_per_sec=100000", "--limits.rate_burst=100000",
                                "--limits.request_rate_per_sec=100000",
                                "--limits.request_rate_burst=100000"]}

    async def test_membership_events_and_messages_keep_one_order_in_every_inbox(self):
        # dave is added and removed over and over while he and bob send without pause. In
        # carol's inbox, every message from dave must come after an "added" event and before
        # the next "removed" (a message cannot precede the change that made its sender a
        # member); dave's inbox must hold exactly the messages carol's inbox places inside his
        # memberships, in the same order.
        alice, bob, carol, dave = await self.clients_for(["alice", "bob", "carol", "dave"])
        await self.create(alice, "team", ["bob", "carol"])
        stop = asyncio.Event()
        dave_oks = []

        async def pump(c, prefix, oks=None):
            i = 0
            while not stop.is_set():
                r = await c.request("send", group="team", cmid=f"{prefix}{i}", body="x")
                i += 1
                if oks is not None and r.get("op") == "ok":
                    oks.append(r["seq"])
        pumps = [asyncio.create_task(pump(bob, "b")), asyncio.create_task(pump(dave, "d",
                                                                               dave_oks))]
        try:
            for _ in range(25):
                await alice.ok("group_add", group="team", users=["dave"])
                await asyncio.sleep(0.005)
                await alice.ok("group_remove", group="team", users=["dave"])
        finally:
            stop.set()
            await asyncio.gather(*pumps)
        carol_events, _ = await self.sync_all(carol)
        dave_events, _ = await self.sync_all(dave)
        member, inside, carol_order = False, [], []
        for e in carol_events:
            if e["op"] == "group" and "dave" in e["users"]:
                member = e["change"] == "added"
                carol_order.append(("group", e["change"]))
            elif e["op"] == "msg":
                if e["from"] == "dave":
                    self.assertTrue(member, f"carol's inbox has {e} outside dave's membership")
                if member:
                    inside.append(e["seq"])
                    carol_order.append(("msg", e["seq"]))
        self.assertGreater(len(dave_oks), 0)
        self.assertTrue(set(dave_oks) <= set(inside), "an ok'd send of dave's is missing")
        self.assertEqual([e["seq"] for e in dave_events if e["op"] == "msg"], inside)
        self.assertEqual([("group", e["change"]) if e["op"] == "group" else ("msg", e["seq"])
                          for e in dave_events], carol_order)
        self.assertInboxGapless(carol_events, "carol")
        self.assertInboxGapless(dave_events, "dave")


class GroupSizeTest(GroupCase):
    SERVER_KW = {"extra_args": ["--limits.max_group_size=5"]}

    async def test_max_group_size(self):
        alice, bob = await self.clients_for(["alice", "bob"])
        await alice.error("group_create", "too_large", group="six", name="Six",
                          members=["bob", "c", "d", "e", "f"])
        await alice.error("group_info", "not_found", group="six")
        await self.no_group_event([alice, bob])
        await self.create(alice, "five", ["bob", "c", "d", "e"])
        await self.expect_group([alice, bob], "five", "created",
                                ["alice", "bob", "c", "d", "e"], "alice")
        await alice.error("group_add", "too_large", group="five", users=["f"])
        await alice.error("group_add", "too_large", group="five", users=["bob", "f"])
        info = await self.info(bob, "five")
        self.assertEqual(info["members"], ["alice", "bob", "c", "d", "e"])
        await alice.ok("group_remove", group="five", users=["c"])
        await alice.error("group_add", "too_large", group="five", users=["f", "g"])
        await alice.ok("group_add", group="five", users=["f"])
        info = await self.info(bob, "five")
        self.assertEqual(info["members"], ["alice", "bob", "d", "e", "f"])
        await self.expect_group([alice, bob], "five", "removed", ["c"], "alice")
        await self.expect_group([alice, bob], "five", "added", ["f"], "alice")
        await self.no_group_event([alice, bob])


if __name__ == "__main__":
    main()
