"""The test harness of the Python integration suites: the real server and a protocol client.

Suites run standalone with /usr/bin/python3 (Debian's websockets imports only there) and exit
non-zero on failure. The binary is $PARLEY_BIN, else build/parley or build-asan/parley.

Server runs it on 127.0.0.1 with an OS-chosen port and a temporary data directory (without
PARLEY_JWT_SECRET / PARLEY_ADMIN_TOKEN in its environment) and waits for GET /healthz. stdout
and stderr go to one log; its tail is part of every ServerError (an AssertionError) and is
printed under the first five failing tests. stop() sends SIGTERM and requires exit status 0
within 5 s, else the process is killed and ServerError raised. $PARLEY_KEEP_TMP keeps the
temporary directories (a failed start or stop keeps the log).

Client is one WebSocket connection: it matches each `ok`/`error` to its request by id and
queues everything else (events, errors without an id) for next_event(). Every wait has a
timeout; a timeout, or a close while waiting, fails the test with what is still queued.

ServerTestCase (asyncio) starts a fresh server per test and closes its clients before that
server must stop cleanly; SharedServerTestCase (synchronous) shares one server per class.
"""

import asyncio
import atexit
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TIMEOUT = 5.0  # seconds, for every wait on the server's answer or event
STOP_TIMEOUT = 5.0  # a stopped server must exit 0 within this many seconds
READY_TIMEOUT = 20.0  # a started server must answer GET /healthz within this many seconds


def parley_bin():
    """The server binary: $PARLEY_BIN, else build/parley or build-asan/parley."""
    path = os.environ.get("PARLEY_BIN")
    candidates = [path] if path else [os.path.join(REPO_ROOT, d, "parley")
                                      for d in ("build", "build-asan")]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise RuntimeError(f"parley binary not found at {' or '.join(candidates)}; set PARLEY_BIN")


def wall_ms():
    return int(time.time() * 1000)


def dconv(a, b):
    """The canonical direct conversation id (bytewise order)."""
    x, y = sorted([a, b], key=lambda s: s.encode())
    return f"d:{x}:{y}"


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


# ---------------------------------------------------------------------------------------------
# The server


class ServerError(AssertionError):
    """The server did not start, or did not stop as the contract says."""


_UNCLEANED = []  # servers whose temporary directory is still there (removed at exit)


@atexit.register
def _cleanup_all():
    for server in list(_UNCLEANED):
        server.cleanup()


class Server:
    """One `parley` process. start()/stop(), or `with Server(...) as s:` (stop() checked when
    the block did not raise; the temporary directory is removed in any case).

    extra_args are more flags (e.g. ["--limits.heartbeat_ms=300"]); echo=True enables /echo;
    jwt_secret switches to auth mode jwt; data_dir replaces the temporary data directory.
    `threads` may be changed between a stop and the next start.
    """

    _READY_RE = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)/")

    def __init__(self, extra_args=(), threads=2, data_dir=None, echo=False, jwt_secret=None,
                 admin_token=None, sync=None, name="parley"):
        self.extra_args = list(extra_args)
        if echo:
            self.extra_args.append("--debug.echo_endpoint=true")
        self.threads = threads
        self.jwt_secret = jwt_secret
        self.admin_token = admin_token
        self.sync = sync
        self.name = name
        self.tmpdir = tempfile.mkdtemp(prefix="parley-it-")
        _UNCLEANED.append(self)
        self.data_dir = data_dir or os.path.join(self.tmpdir, "data")
        self.log_path = os.path.join(self.tmpdir, "server.log")
        self.proc = None
        self.port = None
        self.returncode = None  # of the last stop
        self.failed = False  # a start or stop failed: cleanup() keeps the log
        self._final_tail = None

    # ---- lifecycle ----

    def command(self):
        args = [parley_bin(), "--listen", "127.0.0.1:0", "--data", self.data_dir,
                "--threads", str(self.threads)]
        if self.jwt_secret is not None:
            args += ["--auth.mode=jwt", f"--auth.jwt_secret={self.jwt_secret}"]
        if self.admin_token is not None:
            args += [f"--auth.admin_token={self.admin_token}"]
        if self.sync is not None:
            args += [f"--storage.sync={self.sync}"]
        return args + self.extra_args

    def start(self, timeout=READY_TIMEOUT):
        if self.proc is not None:
            raise ServerError(f"{self.name} is already running")
        self.port = None
        self.returncode = None
        cmd = self.command()
        env = dict(os.environ)
        env.pop("PARLEY_JWT_SECRET", None)
        env.pop("PARLEY_ADMIN_TOKEN", None)
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                self.failed = True
                raise ServerError(f"{self.name} exited with code {rc} during start\n"
                                  f"{self.log_tail()}")
            if self.port is None:
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    m = self._READY_RE.search(f.read())
                if m:
                    self.port = int(m.group(1))
            if self.port is not None:
                try:
                    status, _, body = self.http("GET", "/healthz", timeout=1.0)
                    if status == 200:
                        return self
                    last = f"GET /healthz answered {status} {body!r}"
                except OSError as e:
                    last = repr(e)
            time.sleep(0.05)
        self.kill()
        self.failed = True
        raise ServerError(f"{self.name} not ready within {timeout} s ({last})\n{self.log_tail()}")

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT, check=True):
        """Stops the server with `sig`; with check, raises ServerError unless it exits with
        status 0 within `timeout` seconds. Returns the exit status (None: it had to be killed).
        The data directory stays (see restart() and cleanup())."""
        if self.proc is None:
            return self.returncode
        already = self.proc.poll()
        if already is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        if check and rc != 0:
            self.failed = True
            signame = signal.Signals(sig).name
            if already is not None:
                what = f"had already exited with code {already} (before {signame})"
            elif rc is None:
                what = f"did not exit within {timeout} s of {signame} (killed)"
            else:
                what = f"exited with code {rc} after {signame} (expected 0)"
            raise ServerError(f"{self.name} {what}\n{self.log_tail()}")
        return rc

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Waits for the process to exit, killing it after `timeout` seconds. Returns its exit
        status, or None when it had to be killed."""
        if self.proc is None:
            return self.returncode
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.returncode = None
        self.proc = None
        return self.returncode

    def kill(self):
        """SIGKILL, no checks (crash simulation and cleanup)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self):
        """stop() (exit 0 required), then start() on the same data directory."""
        self.stop()
        return self.start()

    def cleanup(self):
        """Kills the process if it runs and removes the temporary directory (all but the log
        after a failed start or stop; all of it is kept while $PARLEY_KEEP_TMP is set)."""
        self.kill()
        if self in _UNCLEANED:
            _UNCLEANED.remove(self)
        if not os.path.isdir(self.tmpdir):
            return
        self._final_tail = self.log_tail()
        if os.environ.get("PARLEY_KEEP_TMP"):
            sys.stderr.write(f"kept {self.tmpdir}\n")
        elif self.failed:
            for entry in os.listdir(self.tmpdir):
                full = os.path.join(self.tmpdir, entry)
                if os.path.isdir(full):
                    shutil.rmtree(full, ignore_errors=True)
        else:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop(check=exc_type is None)
        finally:
            self.cleanup()
        return False

    # ---- state ----

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def log_tail(self, lines=60):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return self._final_tail or "(no server log)"
        tail = text.splitlines()[-lines:]
        return (f"---- {self.name} log ({self.log_path}), last {len(tail)} lines ----\n"
                + "\n".join(tail) + "\n---- end of log ----")

    # ---- talking to it ----

    def ws_url(self, path="/ws"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def raw_socket(self, timeout=DEFAULT_TIMEOUT):
        """A plain TCP socket connected to the server."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def http(self, method, path, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
        """One HTTP request; returns (status, headers dict (lower-case names), body bytes)."""
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
        """A JWT from `parley token` (jwt_secret must be set)."""
        assert self.jwt_secret is not None
        out = subprocess.run([parley_bin(), "token", "--user", user, "--ttl", str(ttl),
                              f"--auth.jwt_secret={self.jwt_secret}"],
                             capture_output=True, timeout=10, check=True)
        return out.stdout.decode().strip()


# ---------------------------------------------------------------------------------------------
# The protocol client


class Closed(AssertionError):
    """The connection closed while an answer or event was awaited."""


class Timeout(AssertionError):
    """An answer or event did not arrive in time."""


class _Received:
    __slots__ = ("msg", "at", "n")

    def __init__(self, msg, at, n):
        self.msg = msg  # the decoded message
        self.at = at  # time.monotonic() at arrival
        self.n = n  # its number among every message the connection received (from 1)


class Client:
    """One WebSocket connection speaking the Parley protocol: `await Client.connect(server)`."""

    def __init__(self, ws, name=""):
        self.ws = ws
        self.name = name
        self.user = None
        self.device = None
        self.hello_ok = None
        self.closed = False
        self.close_code = None
        self._next_id = 1
        self._pending = {}  # request id -> future of its answer
        self._answer_n = {}  # request id -> number of its answer among the received messages
        self._count = 0  # messages received
        self._log = []  # every message but the awaited answers, as _Received
        self._queue = []  # those not yet taken by next_event()
        self._cond = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, server, name="", subprotocol=True, timeout=DEFAULT_TIMEOUT):
        """Connects to a Server (or a ws:// URL). Refusals raise what websockets raises."""
        url = server if isinstance(server, str) else server.ws_url()
        ws = await asyncio.wait_for(
            websockets.connect(url, subprotocols=["parley.v1"] if subprotocol else None,
                               ping_interval=None, max_size=None, max_queue=None,
                               open_timeout=timeout, close_timeout=2),
            timeout)
        return cls(ws, name)

    def __repr__(self):
        return f"Client({self.name or '?'})"

    async def _read_loop(self):
        try:
            async for raw in self.ws:
                at = time.monotonic()
                self._count += 1
                msg = json.loads(raw)
                rid = msg.get("id") if isinstance(msg, dict) else None
                if rid is not None and msg.get("op") in ("ok", "error") and rid in self._pending:
                    self._answer_n[rid] = self._count
                    fut = self._pending.pop(rid)
                    if not fut.done():
                        fut.set_result(msg)
                    continue
                async with self._cond:
                    rec = _Received(msg, at, self._count)
                    self._log.append(rec)
                    self._queue.append(rec)
                    self._cond.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(Closed(f"{self.name}: connection closed "
                                             f"({self.close_code}) before the answer"))
            self._pending.clear()
            async with self._cond:
                self._cond.notify_all()

    # ---- requests ----

    def new_id(self):
        i = self._next_id
        self._next_id += 1
        return i

    async def send_raw(self, data):
        """Sends a dict as compact JSON, or a str as is; no answer is awaited."""
        await self.ws.send(data if isinstance(data, str) else
                           json.dumps(data, separators=(",", ":")))

    async def _send_request(self, op, fields):
        rid = self.new_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.send_raw({"op": op, "id": rid, **fields})
        return rid, fut

    async def request_nowait(self, op, **fields):
        """Sends {"op": op, "id": <next id>, **fields}; returns a future for its answer (for
        pipelining; await it with a timeout)."""
        return (await self._send_request(op, fields))[1]

    async def request(self, op, timeout=DEFAULT_TIMEOUT, **fields):
        """Sends the request and returns the `ok` or `error` carrying its id."""
        rid, fut = await self._send_request(op, fields)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(rid, None)
            raise Timeout(f"{self.name}: no answer within {timeout} s to {op} {fields} "
                          f"(id {rid})") from None

    async def ok(self, op, timeout=DEFAULT_TIMEOUT, **fields):
        """request() that must be answered `ok`; returns the ok."""
        ans = await self.request(op, timeout=timeout, **fields)
        if ans.get("op") != "ok":
            raise AssertionError(f"{self.name}: sent {op} {fields}, expected ok, received {ans}")
        return ans

    async def error(self, op, code, timeout=DEFAULT_TIMEOUT, **fields):
        """request() that must be answered with an error of this code; returns the error."""
        ans = await self.request(op, timeout=timeout, **fields)
        if ans.get("op") != "error" or ans.get("code") != code:
            raise AssertionError(f"{self.name}: sent {op} {fields}, expected error {code}, "
                                 f"received {ans}")
        return ans

    async def hello(self, user=None, device=None, token=None, timeout=DEFAULT_TIMEOUT):
        """A hello that must succeed (only the given fields are sent); returns the ok."""
        fields = {k: v for k, v in (("user", user), ("device", device), ("token", token))
                  if v is not None}
        named = bool(self.name)
        if not named:
            self.name = f"{user or 'token'}/{device or 'default'}"
        self.hello_ok = await self.ok("hello", timeout=timeout, **fields)
        self.user, self.device = self.hello_ok.get("user"), self.hello_ok.get("device")
        if not named:
            self.name = f"{self.user}/{self.device}"
        return self.hello_ok

    # ---- events ----

    def _find(self, op, match):
        for i, rec in enumerate(self._queue):
            if (op is None or rec.msg.get("op") == op) and (match is None or match(rec.msg)):
                return i
        return None

    def _queued_text(self):
        return [r.msg for r in self._queue[:10]]

    async def next_event_timed(self, op=None, timeout=DEFAULT_TIMEOUT, match=None):
        """Takes the first queued message with this op (any if None) for which match(msg) is
        true, waiting up to `timeout` seconds; returns it with its time.monotonic() arrival.
        Other messages stay queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                i = self._find(op, match)
                if i is not None:
                    rec = self._queue.pop(i)
                    return rec.msg, rec.at
                if self.closed:
                    raise Closed(f"{self.name}: connection closed ({self.close_code}) while "
                                 f"waiting for {op or 'an event'}; queued: {self._queued_text()}")
                left = deadline - loop.time()
                if left <= 0:
                    raise Timeout(f"{self.name}: no {op or 'event'} within {timeout} s; "
                                  f"queued: {self._queued_text()}")
                try:
                    await asyncio.wait_for(self._cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def next_event(self, op=None, timeout=DEFAULT_TIMEOUT, match=None):
        """next_event_timed() without the time."""
        return (await self.next_event_timed(op, timeout, match))[0]

    async def collect(self, op, count, timeout=DEFAULT_TIMEOUT, match=None):
        """`count` messages with this op (and match), in arrival order, within `timeout` s."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            try:
                got.append(await self.next_event(op, max(0.0, deadline - time.monotonic()),
                                                 match))
            except (Timeout, Closed) as e:
                raise type(e)(f"{self.name}: got {len(got)} of {count} {op} within {timeout} s"
                              f" ({e})") from None
        return got

    async def no_event(self, op=None, within=0.5, match=None):
        """Asserts that no queued message with this op (and match) is there or arrives within
        `within` seconds; always takes that long unless such a message arrives."""
        deadline = time.monotonic() + within
        try:
            ev = await self.next_event(op, timeout=within, match=match)
        except Timeout:
            return
        except Closed:  # nothing more can arrive; the wait still lasts `within`
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            return
        raise AssertionError(f"{self.name}: unexpected {op or 'event'}: {ev}")

    def queued(self, op=None):
        """The queued (not yet taken) messages with this op, in arrival order."""
        return [r.msg for r in self._queue if op is None or r.msg.get("op") == op]

    def received(self, op=None, after=None):
        """Every message but the awaited answers that arrived so far, taken or not, in arrival
        order; with `after` (a request id), only those that arrived after its answer."""
        start = 0 if after is None else self._answer_n[after]
        return [r.msg for r in self._log
                if r.n > start and (op is None or r.msg.get("op") == op)]

    def inboxes(self):
        """Inbox numbers of every msg and group event received, in arrival order."""
        return [m["inbox"] for m in self.received() if m.get("op") in ("msg", "group")]

    def assert_gapless(self):
        """The live inbox events since hello came without gaps or repeats."""
        got = self.inboxes()
        first = self.hello_ok["inbox_seq"] + 1
        expected = list(range(first, first + len(got)))
        if got != expected:
            raise AssertionError(f"{self.name}: live inbox numbers {got}, expected {expected}")
        return got

    # ---- closing ----

    async def flood(self, requests, timeout=DEFAULT_TIMEOUT):
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

    async def wait_closed(self, timeout=DEFAULT_TIMEOUT):
        """Waits for the connection to end; returns the close code the server sent."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{self.name}: connection still open after {timeout} s") from None
        return self.close_code

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except Exception:
            self._reader.cancel()

    # ---- inbox ----

    async def settle(self, inbox_seq, timeout=DEFAULT_TIMEOUT):
        """Waits until this user's inbox holds `inbox_seq` entries. A recipient's inbox entry is
        written by the fan-out that follows the sender's `ok` (the contract does not order the
        two), so a test that connects a recipient right after sending waits for it here."""
        deadline = time.monotonic() + timeout
        while True:
            resp = await self.ok("sync", since=0, limit=1)
            if resp["inbox_seq"] >= inbox_seq:
                return resp["inbox_seq"]
            if time.monotonic() > deadline:
                raise Timeout(f"{self.name}: inbox_seq still {resp['inbox_seq']} after "
                              f"{timeout} s, expected {inbox_seq}")
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
                raise AssertionError(f"{self.name}: sync said more with no events: {resp}")


class SilentClient:
    """A raw WebSocket client that signs in and then never sends nor reads anything (not even
    pongs): what a vanished phone looks like to the server."""

    def __init__(self, server):
        self.port = server.port
        self.reader = None
        self.writer = None

    async def connect_and_hello(self, user, device=None, timeout=DEFAULT_TIMEOUT):
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
        hello = {"op": "hello", "id": 1, "user": user}
        if device is not None:
            hello["device"] = device
        self.send_text(json.dumps(hello))
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


# ---------------------------------------------------------------------------------------------
# Test cases


_MAX_LOG_DUMPS = 5
_log_dumps = 0


class _LogsOnFailure:
    """Prints the server's log tail under a test that failed (the first few times)."""

    def run(self, result=None):
        global _log_dumps
        before = len(result.failures) + len(result.errors) if result is not None else 0
        out = super().run(result)
        server = getattr(self, "server", None)
        if (result is not None and server is not None and _log_dumps < _MAX_LOG_DUMPS
                and len(result.failures) + len(result.errors) > before):
            _log_dumps += 1
            sys.stderr.write(f"\n[{self.id()}]\n{server.log_tail()}\n")
            sys.stderr.flush()
        return out


class ServerTestCase(_LogsOnFailure, unittest.IsolatedAsyncioTestCase):
    """Each test gets a fresh server (SERVER_KW: keyword arguments of Server; make_server() may
    be overridden). Clients made with connect()/client() are closed after the test; the server
    must then stop cleanly (SIGTERM -> exit 0 within 5 s)."""

    SERVER_KW = {}

    def make_server(self):
        return Server(name=f"parley[{self.id().split('.', 1)[-1]}]", **self.SERVER_KW)

    async def asyncSetUp(self):
        self.clients = []
        self.silent = []
        self.server = self.make_server()
        try:
            # start/stop block (they poll the process): run them off the event loop.
            await asyncio.to_thread(self.server.start)
        except BaseException:
            self.server.cleanup()
            raise

    async def asyncTearDown(self):
        for s in self.silent:
            s.abort()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        try:
            await asyncio.to_thread(self.server.stop)
        finally:
            self.server.cleanup()

    async def connect(self, **kw):
        """A connected client (no hello yet), closed after the test."""
        c = await Client.connect(self.server, **kw)
        self.clients.append(c)
        return c

    async def client(self, user=None, device=None, token=None):
        """A connected client that has said hello successfully."""
        c = await self.connect()
        await c.hello(user=user, device=device, token=token)
        return c

    async def clients_for(self, users, device=None, parallel=50):
        """Signed-in clients for many users at once (at most `parallel` handshakes at a time)."""
        sem = asyncio.Semaphore(parallel)

        async def one(u):
            async with sem:
                return await self.client(u, device)
        return await asyncio.gather(*(one(u) for u in users))

    async def silent_client(self, user, device=None):
        """A SilentClient signed in as user/device, aborted after the test."""
        s = SilentClient(self.server)
        self.silent.append(s)
        await s.connect_and_hello(user, device)
        return s

    async def restart_server(self):
        """SIGTERM (must exit 0), then start again on the same data directory."""
        await asyncio.to_thread(self.server.restart)

    async def assert_closed(self, client, code, what, timeout=3.0):
        """The server closes `client` with `code` within `timeout` seconds."""
        try:
            got = await client.wait_closed(timeout=timeout)
        except Timeout:
            self.fail(f"connection still open {timeout} s {what} (expected close {code})")
        self.assertEqual(got, code, what)


class SharedServerTestCase(_LogsOnFailure, unittest.TestCase):
    """One server for all tests of the class (SERVER_KW: keyword arguments of Server), stopped
    cleanly after the last one. A test during which the process died fails."""

    SERVER_KW = {}
    server = None

    @classmethod
    def setUpClass(cls):
        server = Server(name=f"parley[{cls.__name__}]", **cls.SERVER_KW)
        try:
            cls.server = server.start()
        except BaseException:
            server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        server, cls.server = cls.server, None
        if server is not None:
            try:
                server.stop()
            finally:
                server.cleanup()

    def tearDown(self):
        # Attribute a crash to the test that caused it, not to the class teardown.
        server = type(self).server
        if server is not None and not server.alive():
            self.fail("the server process died during this test\n" + server.log_tail())

    def assertServerAlive(self):
        self.assertTrue(self.server.alive(), "server process died\n" + self.server.log_tail())


def main(sort_key=None):
    """Runs the calling module's tests verbosely; exits non-zero on failure. `sort_key` orders
    the test methods of a class by name (default: alphabetical)."""
    loader = unittest.TestLoader()
    if sort_key is not None:
        loader.sortTestMethodsUsing = lambda a, b: ((sort_key(a) > sort_key(b)) -
                                                    (sort_key(a) < sort_key(b)))
    unittest.main(module="__main__", testLoader=loader,
                  testRunner=unittest.TextTestRunner(verbosity=2, stream=sys.stderr))
