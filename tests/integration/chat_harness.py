"""Test harness for Parley's integration suites: the real server binary and an asyncio client.

Server starts `$PARLEY_BIN` on 127.0.0.1 with an OS-chosen port and a temporary data directory,
waits for GET /healthz, captures stdout/stderr into files (their tails are shown when a test
fails), and stops it with SIGTERM, checking that it exits with status 0 within 5 seconds.

Client is a small protocol client over Debian's python3-websockets (10.4): it assigns request ids,
matches each `ok`/`error` to its request, and queues everything else (events, and errors that
carry no id) for next_event(). Every wait has a timeout.

Run the suites with /usr/bin/python3 (Debian's websockets imports only there).
"""

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import sys
import time
import unittest

import websockets

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TIMEOUT = 5.0


def parley_bin():
    """The server binary: $PARLEY_BIN, else build/parley in the repository."""
    path = os.environ.get("PARLEY_BIN") or os.path.join(REPO_ROOT, "build", "parley")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"parley binary not found at {path!r}; set PARLEY_BIN")
    return path


class ServerError(AssertionError):
    pass


class Server:
    """One parley process. Use start()/stop(), or `with Server(...) as s:`."""

    _READY_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/")

    def __init__(self, extra_args=(), data_dir=None, threads=2, jwt_secret=None,
                 admin_token=None, sync=None):
        self.extra_args = list(extra_args)
        self.threads = threads
        self.jwt_secret = jwt_secret
        self.admin_token = admin_token
        self.sync = sync
        self._own_dir = tempfile.mkdtemp(prefix="parley-it-")
        self.data_dir = data_dir or os.path.join(self._own_dir, "data")
        self.proc = None
        self.port = None
        self.starts = 0
        self._stdout_path = None
        self._stderr_path = None

    # ---- lifecycle ----

    def args(self):
        args = [parley_bin(), "--listen", "127.0.0.1:0", "--data", self.data_dir,
                "--threads", str(self.threads)]
        if self.jwt_secret is not None:
            args += ["--auth.mode=jwt", f"--auth.jwt_secret={self.jwt_secret}"]
        if self.admin_token is not None:
            args += [f"--auth.admin_token={self.admin_token}"]
        if self.sync is not None:
            args += [f"--storage.sync={self.sync}"]
        return args + self.extra_args

    def start(self, timeout=15.0):
        assert self.proc is None, "server already running"
        self.starts += 1
        self._stdout_path = os.path.join(self._own_dir, f"stdout.{self.starts}.log")
        self._stderr_path = os.path.join(self._own_dir, f"stderr.{self.starts}.log")
        env = dict(os.environ)
        env.pop("PARLEY_JWT_SECRET", None)
        env.pop("PARLEY_ADMIN_TOKEN", None)
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args(), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise ServerError(f"parley exited with {rc} during start\n{self.logs()}")
            if self.port is None:
                m = self._READY_RE.search(self._read(self._stdout_path))
                if m:
                    self.port = int(m.group(1))
            if _healthy(self):
                return self
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"parley did not become ready in {timeout}s\n{self.logs()}")

    def stop(self, timeout=5.0):
        """SIGTERM; the server must exit with status 0 within `timeout` seconds."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ServerError(f"parley did not exit within {timeout}s of SIGTERM\n{self.logs()}")
        self.port = None
        if rc != 0:
            raise ServerError(f"parley exited with {rc} after SIGTERM (expected 0)\n{self.logs()}")

    def kill(self):
        """SIGKILL, no checks (crash simulation and cleanup)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait()
        self.port = None

    def restart(self):
        self.stop()
        self.start()
        return self

    def cleanup(self):
        self.kill()
        shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.stop()
        finally:
            self.cleanup()

    # ---- helpers ----

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def logs(self, tail=4000):
        out = self._read(self._stdout_path) if self._stdout_path else ""
        err = self._read(self._stderr_path) if self._stderr_path else ""
        return f"--- parley stdout ---\n{out[-tail:]}\n--- parley stderr ---\n{err[-tail:]}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def http(self, method, path, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
        """One HTTP request; returns (status, headers dict (lowercase), body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            elif isinstance(body, str):
                body = body.encode()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def token(self, user, ttl=3600):
        """A JWT from `parley token`."""
        assert self.jwt_secret is not None
        out = subprocess.run([parley_bin(), "token", "--user", user, "--ttl", str(ttl),
                              f"--auth.jwt_secret={self.jwt_secret}"],
                             capture_output=True, timeout=10, check=True)
        return out.stdout.decode().strip()

    async def client(self, user=None, device=None, token=None, **kw):
        """A connected client that has said hello successfully."""
        c = await Client.connect(self, **kw)
        await c.hello(user=user, device=device, token=token)
        return c


def _healthy(server):
    if server.port is None:
        return False
    try:
        status, _, _ = server.http("GET", "/healthz", timeout=1.0)
        return status == 200
    except OSError:
        return False


def make_jwt(claims, secret, alg="HS256", header=None):
    """A compact JWT with the given claims, signed with HMAC-SHA256 (or unsigned for alg none)."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    hdr = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing_input = b64(json.dumps(hdr).encode()) + "." + b64(json.dumps(claims).encode())
    if alg == "none":
        return signing_input + "."
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


class Closed(Exception):
    pass


class Client:
    """A protocol client. request() returns the `ok` or `error` dict that answered it."""

    def __init__(self, ws):
        self.ws = ws
        self._next_id = 1
        self._pending = {}
        self._events = []
        self._cond = asyncio.Condition()
        self.closed = False
        self.close_code = None
        self.hello_ok = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, server, subprotocol=True, timeout=DEFAULT_TIMEOUT):
        ws = await asyncio.wait_for(
            websockets.connect(server.ws_url,
                               subprotocols=["parley.v1"] if subprotocol else None,
                               ping_interval=None, max_size=None, max_queue=None,
                               open_timeout=timeout, close_timeout=2),
            timeout)
        return cls(ws)

    async def _read_loop(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                mid = msg.get("id") if isinstance(msg, dict) else None
                if mid is not None and msg.get("op") in ("ok", "error") and mid in self._pending:
                    fut = self._pending.pop(mid)
                    if not fut.done():
                        fut.set_result(msg)
                    continue
                async with self._cond:
                    self._events.append(msg)
                    self._cond.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(Closed(f"connection closed ({self.ws.close_code})"))
            self._pending.clear()
            async with self._cond:
                self._cond.notify_all()

    def new_id(self):
        i = self._next_id
        self._next_id += 1
        return i

    async def send_raw(self, data):
        """Sends a dict as compact JSON, or a str as is."""
        await self.ws.send(data if isinstance(data, str) else json.dumps(data, separators=(",", ":")))

    async def request(self, op, timeout=DEFAULT_TIMEOUT, **fields):
        """Sends {"op":op,"id":<new>,**fields} and returns the matching ok/error."""
        fut = await self.request_nowait(op, **fields)
        return await asyncio.wait_for(fut, timeout)

    async def request_nowait(self, op, **fields):
        """Sends the request and returns a future for its answer (for pipelining)."""
        rid = self.new_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.send_raw({"op": op, "id": rid, **fields})
        return fut

    async def ok(self, op, timeout=DEFAULT_TIMEOUT, **fields):
        """request() that must succeed; returns the ok."""
        resp = await self.request(op, timeout=timeout, **fields)
        if resp.get("op") != "ok":
            raise AssertionError(f"{op} {fields} answered {resp}")
        return resp

    async def hello(self, user=None, device=None, token=None, timeout=DEFAULT_TIMEOUT):
        fields = {}
        if user is not None:
            fields["user"] = user
        if device is not None:
            fields["device"] = device
        if token is not None:
            fields["token"] = token
        resp = await self.request("hello", timeout=timeout, **fields)
        if resp.get("op") != "ok":
            raise AssertionError(f"hello {fields} answered {resp}")
        self.hello_ok = resp
        return resp

    async def next_event(self, op=None, timeout=DEFAULT_TIMEOUT, pred=None):
        """Removes and returns the first queued message with this op (any op if None) that
        satisfies pred; waits up to `timeout` seconds. Other messages stay queued."""
        deadline = asyncio.get_running_loop().time() + timeout

        def find():
            for i, ev in enumerate(self._events):
                if (op is None or ev.get("op") == op) and (pred is None or pred(ev)):
                    return self._events.pop(i)
            return None

        async with self._cond:
            while True:
                ev = find()
                if ev is not None:
                    return ev
                if self.closed:
                    raise Closed(f"connection closed ({self.close_code}) while waiting for "
                                 f"{op or 'an event'}; queued: {self._events}")
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise asyncio.TimeoutError(
                        f"no {op or 'event'} within {timeout}s; queued: {self._events}")
                try:
                    await asyncio.wait_for(self._cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def events(self, op, count, timeout=DEFAULT_TIMEOUT):
        """`count` events of this op, in arrival order."""
        deadline = asyncio.get_running_loop().time() + timeout
        out = []
        for _ in range(count):
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            out.append(await self.next_event(op, timeout=left))
        return out

    async def expect_no_event(self, op=None, wait=0.5, pred=None):
        """Asserts that no message with this op arrives within `wait` seconds."""
        try:
            ev = await self.next_event(op, timeout=wait, pred=pred)
        except (asyncio.TimeoutError, Closed):
            return
        raise AssertionError(f"unexpected {op or 'event'}: {ev}")

    async def flood(self, requests, timeout=5):
        """Sends the requests without waiting for answers (stopping once the connection is
        gone), then waits for the server to close it. Returns (close code, oks, rate_limited
        errors) as they arrived."""
        for r in requests:
            try:
                await self.send_raw(r)
            except Exception:
                break
        code = await self.wait_closed(timeout=timeout)
        limited = [e for e in self.queued("error") if e.get("code") == "rate_limited"]
        return code, self.queued("ok"), limited

    def queued(self, op=None):
        return [e for e in self._events if op is None or e.get("op") == op]

    async def wait_closed(self, timeout=DEFAULT_TIMEOUT):
        """Waits for the connection to end; returns the close code the server sent."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 3)
        except Exception:
            self._reader.cancel()

    async def settle(self, inbox_seq, timeout=DEFAULT_TIMEOUT):
        """Waits until this user's inbox holds `inbox_seq` entries. A recipient's inbox entry is
        written by the fan-out that follows the sender's `ok` (the contract does not order the
        two), so a test that connects a recipient right after sending waits for it here."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            resp = await self.ok("sync", since=0, limit=1)
            if resp["inbox_seq"] >= inbox_seq:
                return resp["inbox_seq"]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"inbox_seq still {resp['inbox_seq']} after {timeout}s, "
                                     f"expected {inbox_seq}")
            await asyncio.sleep(0.01)

    async def sync_all(self, since=None, limit=None):
        """sync from `since` until more is false; returns (events, last inbox_seq)."""
        out = []
        inbox_seq = None
        while True:
            fields = {}
            if since is not None:
                fields["since"] = since
            if limit is not None:
                fields["limit"] = limit
            resp = await self.ok("sync", **fields)
            out += resp["events"]
            inbox_seq = resp["inbox_seq"]
            if resp["events"]:
                since = resp["events"][-1]["inbox"]
            if not resp["more"]:
                return out, inbox_seq
            if not resp["events"]:
                raise AssertionError(f"sync said more with no events: {resp}")


def dconv(a, b):
    """The canonical direct conversation id (bytewise order)."""
    x, y = sorted([a, b], key=lambda s: s.encode())
    return f"d:{x}:{y}"


class ServerTestCase(unittest.IsolatedAsyncioTestCase):
    """Each test gets its own server and data directory. Subclasses set SERVER_KW (keyword
    arguments of Server). Clients made with self.client() are closed after the test; the
    server must then stop cleanly (SIGTERM -> exit 0)."""

    SERVER_KW = {}

    async def asyncSetUp(self):
        self.server = Server(**self.SERVER_KW)
        self._clients = []
        # Start/stop block (they poll the process): run them off the event loop.
        await asyncio.to_thread(self.server.start)

    async def asyncTearDown(self):
        for c in self._clients:
            await c.close()
        try:
            await asyncio.to_thread(self.server.stop)
        finally:
            self._server_logs = self.server.logs(3000)
            self.server.cleanup()

    async def assert_closed(self, client, code, what, timeout=3.0):
        """The server closes `client` with `code` within `timeout` seconds."""
        try:
            got = await client.wait_closed(timeout=timeout)
        except asyncio.TimeoutError:
            self.fail(f"connection still open {timeout} s {what} (expected close {code})")
        self.assertEqual(got, code, what)

    async def restart_server(self):
        """SIGTERM (must exit 0), then start again on the same data directory."""
        await asyncio.to_thread(self.server.restart)

    async def connect(self, **kw):
        c = await Client.connect(self.server, **kw)
        self._clients.append(c)
        return c

    async def client(self, user=None, device=None, token=None):
        c = await self.connect()
        await c.hello(user=user, device=device, token=token)
        return c

    def run(self, result=None):
        # Show the server's logs under a failing test.
        before = len(result.failures) + len(result.errors) if result is not None else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            logs = getattr(self, "_server_logs", None)
            if logs:
                sys.stderr.write(f"\n[{self.id()}] server logs:\n{logs}\n")
        return out


def main():
    unittest.main(verbosity=2)
