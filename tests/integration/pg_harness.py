"""Harness for the presence and group integration tests: a real Parley server per test and an
asyncio WebSocket client (Debian's python3-websockets, so run under /usr/bin/python3).

Server(extra_args) starts $PARLEY_BIN on a free loopback port with a fresh data directory,
waits for GET /healthz, and on stop() sends SIGTERM and checks the exit status is 0.

Client is one WebSocket connection: hello(), request(op, **fields) (answers matched by id,
events queued meanwhile), next_event(op, timeout, match), no_event(op, within).

ServerTestCase is an IsolatedAsyncioTestCase with one server per test and helpers to connect
signed-in clients; every client it created is closed before the server stops.
"""

import asyncio
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import websockets

DEFAULT_TIMEOUT = 5.0


def parley_bin():
    path = os.environ.get("PARLEY_BIN")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "build", "parley")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"parley binary not found at {path}; set PARLEY_BIN")
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wall_ms():
    return int(time.time() * 1000)


class Server:
    """One parley process on 127.0.0.1 with its own temporary data directory."""

    def __init__(self, extra_args=(), threads=2):
        self.extra_args = list(extra_args)
        self.threads = threads
        self.proc = None
        self.port = None
        self.tmp = None
        self.log_path = None

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, ready_timeout=20.0):
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix="parley-pg-")
        self.starts = getattr(self, "starts", 0) + 1
        last_error = None
        for attempt in range(3):  # a port picked as free may be taken before the bind
            self.port = free_port()
            data = os.path.join(self.tmp, "data")
            os.makedirs(data, exist_ok=True)
            self.log_path = os.path.join(self.tmp, f"server-{self.starts}-{attempt}.log")
            log = open(self.log_path, "wb")
            args = [parley_bin(), "--listen", f"127.0.0.1:{self.port}", "--data", data,
                    "--threads", str(self.threads)] + self.extra_args
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._healthz() == 200:
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server not ready after {ready_timeout}s:\n{self.log_tail()}")
            last_error = f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
            if "in use" not in self.log_tail().lower():
                break
        raise RuntimeError(last_error)

    def _healthz(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
            conn.close()
            return status
        except OSError:
            return None

    def log_tail(self, lines=60):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def restart(self):
        """SIGTERM (the exit status must be 0), then start again on the same data directory."""
        rc, tail = self.stop(keep_data=True)
        if rc != 0:
            raise AssertionError(f"server exit status {rc} before the restart:\n{tail}")
        return self.start()

    def stop(self, timeout=15.0, keep_data=False):
        """SIGTERM; returns (exit code, log tail). Kills the process if it does not exit."""
        if self.proc is None:
            return 0, ""
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = "did not exit within %ss of SIGTERM" % timeout
        tail = self.log_tail()
        self.proc = None
        if keep_data:
            return rc, tail
        if os.environ.get("PG_KEEP"):
            sys.stderr.write(f"kept {self.tmp}\n")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        return rc, tail


class RequestFailed(AssertionError):
    pass


class Client:
    """One WebSocket connection speaking the Parley protocol."""

    def __init__(self, url, name=""):
        self.url = url
        self.name = name
        self.ws = None
        self.user = None
        self.device = None
        self.hello_ok = None
        self._next_id = 1
        self._pending = {}
        self.rx = 0  # frames received so far
        self.answer_rx = {}  # request id -> index of its answer among the received frames
        self.events = []  # [obj, monotonic arrival time, consumed, index among received]
        self.stray = []  # answers with an id nobody waits for
        self._cond = asyncio.Condition()
        self._reader = None
        self.closed = False
        self.close_code = None

    async def connect(self, timeout=DEFAULT_TIMEOUT):
        self.ws = await websockets.connect(self.url, ping_interval=None, max_size=2 ** 23,
                                           max_queue=None, open_timeout=timeout,
                                           close_timeout=2)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self):
        try:
            async for raw in self.ws:
                now = time.monotonic()
                obj = json.loads(raw)
                self.rx += 1
                rid = obj.get("id")
                if obj.get("op") in ("ok", "error") and rid is not None:
                    self.answer_rx[rid] = self.rx
                    fut = self._pending.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(obj)
                    else:
                        self.stray.append(obj)
                    continue
                async with self._cond:
                    self.events.append([obj, now, False, self.rx])
                    self._cond.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self.name}: connection closed "
                                                      f"({self.ws.close_code})"))
            self._pending.clear()
            async with self._cond:
                self._cond.notify_all()

    async def send_raw(self, obj):
        await self.ws.send(json.dumps(obj))

    async def request(self, op, timeout=DEFAULT_TIMEOUT, **fields):
        """Sends {"op": op, "id": N, **fields}; returns the matching ok or error object."""
        rid = self._next_id
        self._next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        frame = {"op": op, "id": rid}
        frame.update(fields)
        await self.ws.send(json.dumps(frame))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(rid, None)
            raise RequestFailed(f"{self.name}: no answer within {timeout}s to {frame}") from None

    async def ok(self, op, timeout=DEFAULT_TIMEOUT, **fields):
        ans = await self.request(op, timeout=timeout, **fields)
        if ans.get("op") != "ok":
            raise RequestFailed(f"{self.name}: sent {op} {fields}, expected ok, received {ans}")
        return ans

    async def error(self, op, code, timeout=DEFAULT_TIMEOUT, **fields):
        ans = await self.request(op, timeout=timeout, **fields)
        if ans.get("op") != "error" or ans.get("code") != code:
            raise RequestFailed(f"{self.name}: sent {op} {fields}, expected error {code}, "
                                f"received {ans}")
        return ans

    async def hello(self, user, device="d1", timeout=DEFAULT_TIMEOUT):
        self.user, self.device = user, device
        if not self.name:
            self.name = f"{user}/{device}"
        self.hello_ok = await self.ok("hello", timeout=timeout, user=user, device=device)
        return self.hello_ok

    def _find(self, op, match):
        for ev in self.events:
            if ev[2]:
                continue
            obj = ev[0]
            if op is not None and obj.get("op") != op:
                continue
            if match is not None and not match(obj):
                continue
            return ev
        return None

    async def next_event_timed(self, op=None, timeout=DEFAULT_TIMEOUT, match=None):
        """The first unconsumed event with this op (and match), and its arrival time."""
        async def wait():
            async with self._cond:
                while True:
                    ev = self._find(op, match)
                    if ev is not None:
                        ev[2] = True
                        return ev[0], ev[1]
                    if self.closed:
                        raise AssertionError(f"{self.name}: connection closed "
                                             f"({self.close_code}) while waiting for {op}")
                    await self._cond.wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            pending = [e[0] for e in self.events if not e[2]]
            raise AssertionError(f"{self.name}: no {op or 'event'} event within {timeout}s; "
                                 f"unconsumed events: {pending[:10]}") from None

    async def next_event(self, op=None, timeout=DEFAULT_TIMEOUT, match=None):
        return (await self.next_event_timed(op, timeout, match))[0]

    async def no_event(self, op=None, within=0.5, match=None):
        """Asserts that no unconsumed event with this op arrives within `within` seconds."""
        await asyncio.sleep(within)
        ev = self._find(op, match)
        if ev is not None:
            raise AssertionError(f"{self.name}: unexpected {op or 'event'} event: {ev[0]}")

    def take_all(self, op=None):
        """Consumes and returns every queued event with this op."""
        out = []
        for ev in self.events:
            if not ev[2] and (op is None or ev[0].get("op") == op):
                ev[2] = True
                out.append(ev[0])
        return out

    async def collect(self, op, count, timeout=DEFAULT_TIMEOUT, match=None):
        """Waits for `count` events with this op; returns them in arrival order."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: got {len(got)} of {count} {op} events "
                                     f"within {timeout}s")
            try:
                got.append(await self.next_event(op, timeout=left, match=match))
            except AssertionError:
                raise AssertionError(f"{self.name}: got {len(got)} of {count} {op} events "
                                     f"within {timeout}s") from None
        return got

    def inboxes(self):
        """Inbox numbers of every msg and group event received, in arrival order."""
        return [e[0]["inbox"] for e in self.events if e[0].get("op") in ("msg", "group")]

    def assert_gapless(self):
        """Live inbox events came without gaps or repeats since hello."""
        got = self.inboxes()
        first = self.hello_ok["inbox_seq"] + 1
        expected = list(range(first, first + len(got)))
        if got != expected:
            raise AssertionError(f"{self.name}: live inbox numbers {got}, expected {expected}")
        return got

    async def close(self):
        if self.ws is not None and not self.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except (asyncio.TimeoutError, OSError):
                pass
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()


class SilentClient:
    """A raw WebSocket client that signs in and then never sends nor reads anything (not even
    pongs): what a vanished phone looks like to the server."""

    def __init__(self, port):
        self.port = port
        self.reader = None
        self.writer = None

    async def connect_and_hello(self, user, device="d1", timeout=DEFAULT_TIMEOUT):
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise AssertionError(f"raw upgrade failed: {head!r}")
        self.send_text(json.dumps({"op": "hello", "id": 1, "user": user, "device": device}))
        await self.writer.drain()
        while True:
            opcode, payload = await asyncio.wait_for(self.read_frame(), timeout)
            if opcode == 1:
                ans = json.loads(payload)
                if ans.get("id") == 1:
                    if ans.get("op") != "ok":
                        raise AssertionError(f"raw hello failed: {ans}")
                    return ans

    def send_text(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        head = bytes([0x81])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def send_close(self, code=1000):
        """A masked close frame; the client then stays silent (it neither reads nor closes)."""
        payload = struct.pack("!H", code)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x88, 0x80 | len(payload)]) + mask + masked)

    async def read_frame(self):
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await self.reader.readexactly(n)
        return b0 & 0x0F, payload

    async def read_close_code(self, timeout=DEFAULT_TIMEOUT):
        """Reads what the server sent (pings, ...) up to its close frame; returns the code."""
        async def run():
            while True:
                opcode, payload = await self.read_frame()
                if opcode == 8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        return await asyncio.wait_for(run(), timeout)

    def abort(self):
        if self.writer is not None:
            self.writer.close()


class ServerTestCase(unittest.IsolatedAsyncioTestCase):
    """One fresh server per test (server_args from the class), clients closed before it stops."""

    server_args = ()

    def setUp(self):
        self.server = Server(self.server_args).start()
        self.clients = []
        self.silent = []

    async def asyncTearDown(self):
        for s in self.silent:
            s.abort()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

    def tearDown(self):
        rc, tail = self.server.stop()
        self.assertEqual(rc, 0, f"server exit status after SIGTERM; log tail:\n{tail}")

    async def client(self, user, device="d1"):
        """A connected client signed in as user/device."""
        c = Client(self.server.url, f"{user}/{device}")
        self.clients.append(c)
        await c.connect()
        await c.hello(user, device)
        return c

    async def clients_for(self, users, device="d1", parallel=50):
        """Signed-in clients for many users at once (at most `parallel` handshakes at a time)."""
        sem = asyncio.Semaphore(parallel)

        async def one(u):
            async with sem:
                return await self.client(u, device)
        return await asyncio.gather(*(one(u) for u in users))


def inbox_numbers(events):
    return [e["inbox"] for e in events if e.get("op") in ("msg", "group")]


def main():
    unittest.main(verbosity=2)
