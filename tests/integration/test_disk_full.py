"""A full disk (issue #5, PROTOCOL.md section 5): nothing is acknowledged that is not durable,
reads keep working while the disk is full, sends work again once space is freed, and after a
restart exactly the acknowledged messages are there, in order, without gaps. /metrics says
when writes are refused, and how much space is free.

The data directory lives on a small tmpfs mounted for the test (needs root, as in CI), which
is then filled with a file until the kernel says ENOSPC.

Run (as root): PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_disk_full.py
"""

import asyncio
import errno
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Server, ServerTestCase, dconv, main  # noqa: E402

MOUNT_MB = 64
MIN_FREE_MB = 8
BODY = "x" * 8000


def fill(path):
    """Writes `path` until the file system is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 64 << 10, 4 << 10, 256):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                    written += chunk
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return written


class DiskFullTest(ServerTestCase):
    async def asyncSetUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a tmpfs needs root (CI runs as root)")
        self.mount_dir = tempfile.mkdtemp(prefix="parley-full-")
        # Mounting must work for root; a failure here is a failure, not a skip.
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_MB}m", "tmpfs",
                        self.mount_dir], check=True, timeout=10)
        await super().asyncSetUp()

    def make_server(self):
        return Server(data_dir=os.path.join(self.mount_dir, "data"),
                      extra_args=["--limits.rate_per_sec=100000",
                                  "--limits.rate_burst=100000",
                                  f"--storage.min_free_bytes={MIN_FREE_MB << 20}"])

    async def asyncTearDown(self):
        try:
            await super().asyncTearDown()
        finally:
            subprocess.run(["umount", "-l", self.mount_dir], timeout=10)
            os.rmdir(self.mount_dir)

    async def metrics(self):
        """The unlabelled series of /metrics: {name: value}."""
        status, _, body = await asyncio.to_thread(self.server.http, "GET", "/metrics")
        self.assertEqual(status, 200)
        return {line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
                for line in body.decode().splitlines()
                if line and not line.startswith("#") and "{" not in line}

    async def history(self, client, conv):
        """Every message of `conv`, ascending, paging with `before`."""
        msgs, before = [], None
        while True:
            fields = {"conv": conv, "limit": 200}
            if before is not None:
                fields["before"] = before
            ans = await client.ok("history", **fields)
            msgs = ans["msgs"] + msgs
            if not ans["more"] or not ans["msgs"]:
                return msgs
            before = ans["msgs"][0]["seq"]

    async def test_nothing_unacknowledged_is_kept_and_sends_resume(self):
        alice = await self.client(user="alice")
        bob = await self.client(user="bob")
        conv = dconv("alice", "bob")
        acked = []  # cmids answered ok, in order
        for i in range(5):
            await alice.ok("send", to="bob", cmid=f"before-{i}", body="small")
            acked.append(f"before-{i}")

        filler = os.path.join(self.mount_dir, "filler")
        await asyncio.to_thread(fill, filler)

        # Leave less than storage.min_free_bytes: the store refuses sends from its next
        # free-space check (every 100 ms) on.
        os.truncate(filler, max(0, os.path.getsize(filler) - ((MIN_FREE_MB // 2) << 20)))
        await asyncio.sleep(0.3)
        refused = []
        for i in range(MOUNT_MB * 1024 * 1024 // len(BODY) * 2):
            ans = await alice.request("send", to="bob", cmid=f"full-{i}", body=BODY)
            if ans["op"] == "ok":
                acked.append(f"full-{i}")
                continue
            self.assertEqual(ans["code"], "unavailable", ans)
            refused.append(f"full-{i}")
            if len(refused) >= 3:
                break
        self.assertEqual(len(refused), 3, "sends never failed on a full disk")
        m = await self.metrics()
        self.assertEqual(m["parley_storage_writes_refused"], 1, "refusing, says /metrics")
        self.assertLess(m["parley_storage_disk_free_bytes"], MIN_FREE_MB << 20)

        # Reads and the session keep working while the disk is full.
        self.assertEqual((await bob.ok("ping"))["op"], "ok")
        before_free = await self.history(bob, conv)
        self.assertEqual([m["cmid"] for m in before_free], acked)
        watched = await bob.ok("watch", users=["alice"])
        self.assertEqual([(p["user"], p["status"]) for p in watched["presence"]],
                         [("alice", "online")])

        # Free the space: sends work again within moments, and a refused cmid is not a dup.
        os.unlink(filler)
        ans = None
        for _ in range(100):
            ans = await alice.request("send", to="bob", cmid=refused[0], body="retried")
            if ans["op"] == "ok":
                break
            self.assertEqual(ans["code"], "unavailable", ans)
            await asyncio.sleep(0.1)
        self.assertEqual(ans["op"], "ok", f"sends did not recover after space was freed: {ans}")
        m = await self.metrics()
        self.assertEqual(m["parley_storage_writes_refused"], 0, "refusing, says /metrics")
        self.assertGreater(m["parley_storage_disk_free_bytes"], MIN_FREE_MB << 20)
        self.assertIs(ans["dup"], False, "a refused send must not be remembered")
        acked.append(refused[0])
        await alice.ok("send", to="bob", cmid="after", body="after")
        acked.append("after")

        # Exactly the acknowledged messages, gapless, also after a clean restart.
        for when in ("before restart", "after restart"):
            if when == "after restart":
                await self.restart_server()
                bob = await self.client(user="bob")
            msgs = await self.history(bob, conv)
            self.assertEqual([m["cmid"] for m in msgs], acked, when)
            self.assertEqual([m["seq"] for m in msgs], list(range(1, len(acked) + 1)), when)
            await bob.settle(len(acked))  # bob's inbox entries follow alice's oks
            events, _ = await bob.sync_all(since=0)
            events = [e for e in events if e.get("conv") == conv]
            self.assertEqual([e["cmid"] for e in events], acked, when)
            inbox = [e["inbox"] for e in events]
            self.assertEqual(inbox, list(range(inbox[0], inbox[0] + len(inbox))), when)


if __name__ == "__main__":
    main()
