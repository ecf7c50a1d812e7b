"""Damaged storage at `hello` (PROTOCOL.md: close 1011 when storage is unavailable).

A user whose stored records cannot be read gets `unavailable` for its hello and close 1011;
nothing is served from a state the server could not load. Other users are unaffected.

The damage is a malformed inbox key for "carol" ('I' carol 0x00 and two bytes instead of a
64-bit number), written with RocksDB's own `ldb` tool (Debian package rocksdb-tools) while the
server is stopped. carol's logical shard is 36: ShardOf("carol") is pinned by the unit test
"ShardOf is stable and in range", since persisted placement depends on it.

Run: PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_storage_damage.py
"""

import asyncio
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import ServerTestCase, dconv, main  # noqa: E402

CAROL_SHARD = "shard-36"


def ldb_put(db_dir, column_family, key_hex, value_hex):
    ldb = shutil.which("ldb")
    if ldb is None:
        raise AssertionError("ldb not found: install rocksdb-tools (tools/install-deps does)")
    run = subprocess.run([ldb, f"--db={db_dir}", f"--column_family={column_family}",
                          "--key_hex", "--value_hex", "put", "0x" + key_hex, "0x" + value_hex],
                         capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise AssertionError(f"ldb put failed ({run.returncode}): {run.stdout} {run.stderr}")


class StorageDamageTest(ServerTestCase):
    async def test_unreadable_user_gets_unavailable_and_close_1011_at_hello(self):
        alice = await self.client(user="alice")
        await self.client(user="bob")
        await alice.ok("send", to="carol", cmid="before", body="stored before the damage")
        await asyncio.to_thread(self.server.stop)
        for c in self.clients:
            await c.close()
        self.clients.clear()

        malformed_key = b"I" + b"carol" + b"\x00" + b"\x00\x07"
        ldb_put(os.path.join(self.server.data_dir, "db"), CAROL_SHARD, malformed_key.hex(), "00")
        await asyncio.to_thread(self.server.start)

        carol = await self.connect()
        resp = await carol.request("hello", user="carol")
        self.assertEqual(resp.get("op"), "error", resp)
        self.assertEqual(resp.get("code"), "unavailable", resp)
        await self.assert_closed(carol, 1011, "after a hello whose user could not be loaded")

        # A second attempt meets the same damage: the failure is not cached as an empty state.
        again = await self.connect()
        resp = await again.request("hello", user="carol")
        self.assertEqual(resp.get("code"), "unavailable", resp)
        await self.assert_closed(again, 1011, "after a second hello for the same user")

        # Everyone else is served: hello, send, delivery, history.
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        ok = await alice.ok("send", to="bob", cmid="after", body="hi bob")
        event = await bob.next_event("msg")
        self.assertEqual(event.get("body"), "hi bob")
        self.assertEqual(event.get("seq"), ok.get("seq"))
        history = await alice.ok("history", conv=dconv("alice", "carol"))
        bodies = [m.get("body") for m in history.get("msgs", [])]
        self.assertEqual(bodies, ["stored before the damage"])


if __name__ == "__main__":
    main()
