#!/usr/bin/env python3
"""End to end: parley-load drives a real Parley server through every scenario at small sizes,
and each run must come back clean (nothing lost, duplicated or reordered; every connection
authenticated) with figures that show traffic actually flowed.

Needs PARLEY_BIN (the server) and PARLEY_LOAD_BIN (the load tool); ctest sets both.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

PARLEY = os.environ.get("PARLEY_BIN", "build/parley")
LOAD = os.environ.get("PARLEY_LOAD_BIN", os.path.join(os.path.dirname(PARLEY), "parley-load"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoadToolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.port = free_port()
        cls.log = open(os.path.join(cls.tmp.name, "server.log"), "w")
        cls.server = subprocess.Popen(
            [PARLEY, "--listen", f"127.0.0.1:{cls.port}", "--data", os.path.join(cls.tmp.name, "data"),
             "--threads", "2", "--limits.rate_per_sec=1000000", "--limits.rate_burst=1000000",
             "--limits.request_rate_per_sec=1000000", "--limits.request_rate_burst=1000000"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    @classmethod
    def tearDownClass(cls):
        cls.server.send_signal(signal.SIGTERM)
        try:
            code = cls.server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            code = cls.server.wait()
        cls.log.close()
        cls.tmp.cleanup()
        if code != 0:
            raise AssertionError(f"server exited with {code}")

    def load(self, *args, expect_rc=0):
        cmd = [LOAD, "--server", f"127.0.0.1:{self.port}", "--server-pid", str(self.server.pid),
               "--warmup", "0.3", "--grace", "2", "--setup-timeout", "30", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        lines = [l for l in p.stdout.splitlines() if l.startswith("JSON ")]
        self.assertEqual(len(lines), 1, p.stdout + p.stderr)
        self.assertEqual(p.returncode, expect_rc, p.stdout + p.stderr)
        r = json.loads(lines[0][5:])
        self.assertEqual(r["errors"], {}, p.stdout)
        self.assertEqual(r["unexpected_closes"], {}, p.stdout)
        self.assertIn("server_cpu_us", r, p.stdout)  # the server was found in /proc
        return r

    def test_throughput(self):
        r = self.load("--scenario", "throughput", "--pairs", "8", "--window", "4", "--duration", "1")
        self.assertTrue(r["ok"])
        self.assertGreater(r["delivered_per_s"], 0)
        self.assertEqual(r["sent"], r["acked"])
        self.assertEqual(r["acked"], r["delivered"])
        self.assertEqual(r["sender_echoes"], r["delivered"])
        self.assertEqual(r["lost"] + r["duplicated"] + r["reordered"] + r["inbox_gaps"], 0)
        self.assertGreater(r["server_cpu_us"], 0)

    def test_latency_and_message_bound(self):
        r = self.load("--scenario", "latency", "--pairs", "4", "--rate", "200", "--duration", "1",
                      "--max-messages", "100")
        self.assertTrue(r["ok"])
        self.assertEqual(r["sent"], 100)
        self.assertEqual(r["delivered"], 100)
        self.assertGreater(r["latency"]["count"], 0)
        self.assertLessEqual(r["latency"]["p50_us"], r["latency"]["p99_us"])

    def test_idle(self):
        r = self.load("--scenario", "idle", "--conns", "300", "--duration", "0.5")
        self.assertTrue(r["ok"])
        self.assertEqual(r["conns_authenticated"], 300)
        self.assertEqual(r["dropped_while_held"], 0)
        self.assertGreaterEqual(r["server_fds_open"], 300)

    def test_connect(self):
        r = self.load("--scenario", "connect", "--conns", "200", "--rounds", "2", "--concurrency", "32")
        self.assertTrue(r["ok"])
        self.assertEqual(r["connections"], 400)
        self.assertGreater(r["conn_per_s"], 0)

    def test_fanout(self):
        r = self.load("--scenario", "fanout", "--groups", "2", "--group-size", "20", "--window", "2",
                      "--duration", "1")
        self.assertTrue(r["ok"])
        self.assertEqual(r["delivered"], r["acked"] * 19)
        self.assertGreater(r["time_to_last_member"]["count"], 0)

    def test_mixed(self):
        r = self.load("--scenario", "mixed", "--users", "60", "--mixed-group-size", "10", "--rate", "100",
                      "--churn", "20", "--duration", "1.5")
        self.assertTrue(r["ok"])
        self.assertTrue(r["final_sync_complete"])
        self.assertGreater(r["accepted_sends"], 0)
        self.assertEqual(r["lost"], 0)
        self.assertEqual(r["duplicated"], 0)
        self.assertGreater(r["counts"]["reconnects"] + r["counts"]["disconnects"], 0)

    def test_refused_connections_fail_fast(self):
        p = subprocess.run([LOAD, "--scenario", "throughput", "--server", f"127.0.0.1:{free_port()}",
                            "--pairs", "2"], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("SETUP FAILED", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2, argv=sys.argv[:1])
