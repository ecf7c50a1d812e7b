"""HTTP/1.1 and WebSocket-upgrade behaviour of the real server, driven over raw sockets.

Covers /healthz, 404, malformed requests (400), oversize heads (431), keep-alive and pipelining,
bad upgrades (400 missing/invalid key, 426 with Sec-WebSocket-Version: 13), a correct raw
upgrade, and the slowloris cut-off (limits.handshake_timeout_ms).
"""

import base64
import hashlib
import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES = 2048
HANDSHAKE_TIMEOUT_MS = 700


class Response:
    def __init__(self, version, status, reason, headers, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def __repr__(self):
        return "Response(%s %d %s, headers=%r, body=%r)" % (self.version, self.status, self.reason,
                                                            self.headers, self.body[:200])


class RawHttp:
    """A raw socket that reads HTTP/1.1 responses (Content-Length bodies only)."""

    def __init__(self, server, timeout=5.0):
        self.sock = server.raw_socket(timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection; buffered %r" % self.buf[:200])
        self.buf += chunk

    def read_response(self, expect_body=True):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, *rest = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        resp = Response(version, int(status), rest[0] if rest else "", headers, b"")
        length = resp.header("content-length")
        if expect_body and length is not None:
            n = int(length)
            while len(self.buf) < n:
                self._fill()
            resp.body, self.buf = self.buf[:n], self.buf[n:]
        return resp

    def closed_by_peer(self, timeout):
        """True if the server closes (EOF or reset) within `timeout` seconds; data is discarded."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self):
        self.sock.close()


def upgrade_request(path="/ws", key=None, version="13", extra="", omit=()):
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    headers = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
    lines = ["GET %s HTTP/1.1" % path]
    lines += ["%s: %s" % (k, v) for k, v in headers if k not in omit]
    return "\r\n".join(lines) + "\r\n" + extra + "\r\n"


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


class HttpTest(harness.SharedServerTestCase):
    SERVER_KW = {"extra_args": ["--limits.max_header_bytes=%d" % MAX_HEADER_BYTES,
                                "--limits.handshake_timeout_ms=%d" % HANDSHAKE_TIMEOUT_MS]}

    def raw(self):
        c = RawHttp(self.server)
        self.addCleanup(c.close)
        return c

    def request(self, data):
        c = self.raw()
        c.send(data)
        return c.read_response()

    # ---- plain HTTP ----

    def test_healthz_200_json(self):
        resp = self.request("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.version, "HTTP/1.1")
        self.assertIn("application/json", resp.header("content-type") or "", resp)
        self.assertEqual(json.loads(resp.body), {"status": "ok"})

    def test_unknown_path_404(self):
        resp = self.request("GET /no/such/path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(resp.status, 404, resp)

    def test_keep_alive_two_requests_one_connection(self):
        c = self.raw()
        for path, status in (("/healthz", 200), ("/nope", 404), ("/healthz", 200)):
            c.send("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path)
            resp = c.read_response()
            self.assertEqual(resp.status, status, resp)
            self.assertNotEqual((resp.header("connection") or "").lower(), "close", resp)

    def test_pipelined_requests_answered_in_order(self):
        c = self.raw()
        c.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /missing HTTP/1.1\r\nHost: a\r\n\r\n"
               "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([c.read_response().status for _ in range(3)], [200, 404, 200])

    def test_request_head_split_across_writes(self):
        c = self.raw()
        for part in ("GET /hea", "lthz HTTP/1.1\r", "\nHost: 127.0.0.1\r\n", "\r\n"):
            c.send(part)
            time.sleep(0.05)
        self.assertEqual(c.read_response().status, 200)

    def test_connection_close_is_honoured(self):
        c = self.raw()
        c.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(c.read_response().status, 200)
        self.assertTrue(c.closed_by_peer(3.0), "connection stayed open after Connection: close")

    def test_http10_without_keep_alive_is_closed(self):
        c = self.raw()
        c.send("GET /healthz HTTP/1.0\r\n\r\n")
        resp = c.read_response()
        self.assertEqual(resp.status, 200, resp)
        self.assertTrue(c.closed_by_peer(3.0), "HTTP/1.0 connection stayed open")

    # ---- malformed requests -> 400 ----

    MALFORMED = {
        "garbage_request_line": "GARBAGE\r\n\r\n",
        "missing_version": "GET /healthz\r\n\r\n",
        "bad_version": "GET /healthz HTTP/1.x\r\nHost: a\r\n\r\n",
        "header_without_colon": "GET /healthz HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
        "space_before_colon": "GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n",
        "bad_content_length": "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        "conflicting_content_lengths":
            "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        "control_char_in_method": "G\x01T /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        "binary_tls_hello":
            "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + "\x00" * 40 + "\r\n\r\n",
        "missing_host_http11": "GET /healthz HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
    }

    def test_malformed_requests_400(self):
        for name, data in self.MALFORMED.items():
            with self.subTest(name):
                c = RawHttp(self.server)
                try:
                    c.send(data)
                    resp = c.read_response()
                    self.assertEqual(resp.status, 400, "%s: sent %r, got %r" % (name, data, resp))
                finally:
                    c.close()
        self.assertServerAlive()

    # ---- request bodies over 1 MiB -> 413 ----

    def test_body_over_one_mib_413_on_the_head_alone(self):
        # Refused from the Content-Length, before any of the body is sent; the connection closes.
        c = self.raw()
        c.send("POST /api/v1/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n" % ((1 << 20) + 1))
        resp = c.read_response()
        self.assertEqual(resp.status, 413, resp)
        self.assertTrue(c.closed_by_peer(5.0), "connection left open after 413")

    def test_body_of_exactly_one_mib_is_read(self):
        # At the limit the body is read and the request routed (no admin token here: 401).
        body = b"x" * (1 << 20)
        c = self.raw()
        c.send(b"POST /api/v1/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        resp = c.read_response()
        self.assertEqual(resp.status, 401, resp)

    # ---- limits.max_header_bytes -> 431 ----

    def test_head_over_max_header_bytes_431(self):
        big = "X-Big: " + "a" * (MAX_HEADER_BYTES + 100)
        resp = self.request("GET /healthz HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % big)
        self.assertEqual(resp.status, 431, resp)

    def test_many_headers_over_max_header_bytes_431(self):
        headers = "".join("X-H%d: %s\r\n" % (i, "v" * 40)
                          for i in range(MAX_HEADER_BYTES // 40 + 5))
        resp = self.request("GET /healthz HTTP/1.1\r\nHost: a\r\n%s\r\n" % headers)
        self.assertEqual(resp.status, 431, resp)

    def test_unterminated_oversize_head_431_without_waiting_for_end(self):
        # The head never ends; the server must answer once it passes the limit, not wait for it.
        c = self.raw()
        c.send("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + "b" * (MAX_HEADER_BYTES * 4))
        c.sock.settimeout(HANDSHAKE_TIMEOUT_MS / 1000.0 * 0.6)
        started = time.monotonic()
        try:
            resp = c.read_response(expect_body=False)
        except socket.timeout:
            self.fail("no 431 within %.2f s of sending an oversize, unterminated head"
                      % (time.monotonic() - started))
        self.assertEqual(resp.status, 431, resp)

    def test_head_under_max_header_bytes_accepted(self):
        head = "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: "
        pad = MAX_HEADER_BYTES - len(head) - len("\r\n\r\n") - 64
        resp = self.request(head + "p" * pad + "\r\n\r\n")
        self.assertEqual(resp.status, 200, resp)

    # ---- WebSocket upgrade ----

    def test_upgrade_101_with_correct_accept(self):
        key = base64.b64encode(os.urandom(16)).decode()
        c = self.raw()
        c.send(upgrade_request(key=key))
        resp = c.read_response(expect_body=False)
        self.assertEqual(resp.status, 101, resp)
        self.assertEqual((resp.header("upgrade") or "").lower(), "websocket", resp)
        self.assertIn("upgrade", (resp.header("connection") or "").lower(), resp)
        self.assertEqual(resp.header("sec-websocket-accept"), accept_for(key), resp)
        self.assertIsNone(resp.header("sec-websocket-protocol"), resp)

    def test_upgrade_selects_parley_subprotocol_from_list(self):
        c = self.raw()
        c.send(upgrade_request(extra="Sec-WebSocket-Protocol: chat.x, parley.v1, other\r\n"))
        resp = c.read_response(expect_body=False)
        self.assertEqual(resp.status, 101, resp)
        self.assertEqual(resp.header("sec-websocket-protocol"), "parley.v1", resp)

    def test_upgrade_missing_key_400_no_upgrade(self):
        c = self.raw()
        c.send(upgrade_request(omit=("Sec-WebSocket-Key",)))
        resp = c.read_response()
        self.assertEqual(resp.status, 400, resp)
        self.assertIsNone(resp.header("sec-websocket-accept"), resp)

    def test_upgrade_invalid_key_400(self):
        # The key must be base64 of 16 bytes (RFC 6455 4.2.1).
        for key in ("abc", base64.b64encode(b"short").decode(), "!!!!not-base64!!!!!!!!=="):
            with self.subTest(key=key):
                c = RawHttp(self.server)
                try:
                    c.send(upgrade_request(key=key))
                    resp = c.read_response()
                    self.assertEqual(resp.status, 400, "key %r: %r" % (key, resp))
                finally:
                    c.close()

    def test_upgrade_wrong_version_426_with_version_header(self):
        for version in ("8", "12", "14"):
            with self.subTest(version=version):
                c = RawHttp(self.server)
                try:
                    c.send(upgrade_request(version=version))
                    resp = c.read_response()
                    self.assertEqual(resp.status, 426, resp)
                    self.assertEqual([v.strip() for v in resp.header_all("sec-websocket-version")],
                                     ["13"], resp)
                    self.assertIsNone(resp.header("sec-websocket-accept"), resp)
                finally:
                    c.close()

    def test_upgrade_missing_version_not_101(self):
        c = self.raw()
        c.send(upgrade_request(omit=("Sec-WebSocket-Version",)))
        resp = c.read_response()
        self.assertIn(resp.status, (400, 426), resp)

    def test_upgrade_on_unknown_path_404(self):
        c = self.raw()
        c.send(upgrade_request(path="/not-a-ws-endpoint"))
        resp = c.read_response()
        self.assertEqual(resp.status, 404, resp)

    def test_echo_endpoint_absent_without_flag(self):
        c = self.raw()
        c.send(upgrade_request(path="/echo"))
        resp = c.read_response()
        self.assertEqual(resp.status, 404, resp)

    # ---- slowloris ----

    def test_slowloris_head_cut_off_after_handshake_timeout(self):
        c = self.raw()
        started = time.monotonic()
        c.send("GET /healthz HTTP/1.1\r\n")
        closed_at = None
        # Dribble one header byte every 100 ms; the server must cut us off regardless.
        deadline = started + HANDSHAKE_TIMEOUT_MS / 1000.0 + 3.0
        while time.monotonic() < deadline:
            try:
                c.send("X")
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            if c.closed_by_peer(0.1):
                closed_at = time.monotonic()
                break
        self.assertIsNotNone(closed_at,
                             "slow head not cut off within %.1f s" % (deadline - started))
        elapsed = closed_at - started
        self.assertGreaterEqual(elapsed, HANDSHAKE_TIMEOUT_MS / 1000.0 * 0.8,
                                "cut off after %.3f s, before the handshake timeout" % elapsed)
        # The 408 can be lost to the reset our own late bytes draw; what did arrive is a 408.
        if c.buf:
            self.assertTrue(c.buf.startswith(b"HTTP/1.1 408 "), c.buf[:80])

    def test_silent_connection_cut_off_after_handshake_timeout(self):
        c = self.raw()
        started = time.monotonic()
        self.assertTrue(c.closed_by_peer(HANDSHAKE_TIMEOUT_MS / 1000.0 + 3.0),
                        "idle connection that never sent a head was not closed")
        self.assertTrue(c.buf.startswith(b"HTTP/1.1 408 "), c.buf[:80])
        self.assertGreaterEqual(time.monotonic() - started, HANDSHAKE_TIMEOUT_MS / 1000.0 * 0.8)

    def test_upgraded_connection_outlives_handshake_timeout(self):
        c = self.raw()
        c.send(upgrade_request())
        self.assertEqual(c.read_response(expect_body=False).status, 101)
        # Send a masked text frame with a hello, then wait past the handshake timeout.
        send_ws_text(c.sock, json.dumps({"op": "hello", "id": 1, "user": "slow", "device": "d1"}))
        reply = read_ws_frame(c)
        self.assertEqual(reply[0], 0x1)
        self.assertEqual(json.loads(reply[1])["op"], "ok")
        time.sleep(HANDSHAKE_TIMEOUT_MS / 1000.0 * 2)
        send_ws_text(c.sock, json.dumps({"op": "ping", "id": 2}))
        opcode, payload = read_ws_frame(c)
        self.assertEqual(opcode, 0x1,
                         "expected the ping answer, got opcode %d %r" % (opcode, payload))
        self.assertEqual(json.loads(payload)["id"], 2)


def send_ws_text(sock, text):
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def read_ws_frame(raw):
    """Reads one unmasked server frame from a RawHttp, skipping server pings.

    Returns (opcode, payload)."""
    while True:
        while len(raw.buf) < 2:
            raw._fill()
        b0, b1 = raw.buf[0], raw.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            while len(raw.buf) < 4:
                raw._fill()
            n = int.from_bytes(raw.buf[2:4], "big")
            pos = 4
        elif n == 127:
            while len(raw.buf) < 10:
                raw._fill()
            n = int.from_bytes(raw.buf[2:10], "big")
            pos = 10
        while len(raw.buf) < pos + n:
            raw._fill()
        payload = raw.buf[pos:pos + n]
        raw.buf = raw.buf[pos + n:]
        if (b0 & 0x0F) == 0x9:
            continue
        return b0 & 0x0F, payload


class VersionHelpTest(unittest.TestCase):
    def test_version_and_help_exit_0(self):
        import subprocess
        for flag in ("--version", "--help"):
            with self.subTest(flag=flag):
                proc = subprocess.run([harness.parley_bin(), flag], capture_output=True,
                                      timeout=10)
                self.assertEqual(proc.returncode, 0, proc)
                self.assertTrue(proc.stdout.strip(), "%s printed nothing" % flag)


class StartupTest(unittest.TestCase):
    def test_second_server_on_a_busy_port_exits_with_a_clear_error(self):
        # The kernel would let a second process of the same user join the first one's
        # SO_REUSEPORT group and take half of its new connections; it must refuse instead.
        import subprocess
        import tempfile
        with harness.Server(name="parley[first-on-port]") as first:
            with tempfile.TemporaryDirectory(prefix="parley-it-") as data:
                proc = subprocess.run(
                    [harness.parley_bin(), "--listen", "127.0.0.1:%d" % first.port,
                     "--data", data, "--threads", "2"],
                    capture_output=True, timeout=10)
            self.assertNotEqual(proc.returncode, 0, proc)
            self.assertIn(b"in use", proc.stdout + proc.stderr, proc)
            # The first server still answers every connection.
            for _ in range(20):
                c = RawHttp(first)
                try:
                    c.send("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    self.assertEqual(c.read_response().status, 200)
                finally:
                    c.close()


    def test_threads_are_named_for_operators(self):
        # top -H, ps -L and perf show which thread is which: a reactor per core, a store
        # writer per core and the log-sync thread (fsync durability is the default).
        with harness.Server(name="parley[thread-names]", threads=2) as server:
            task_dir = "/proc/%d/task" % server.proc.pid
            names = sorted(open(os.path.join(task_dir, t, "comm")).read().strip()
                           for t in os.listdir(task_dir))
            for want in ("parley-core0", "parley-core1", "parley-store0", "parley-store1",
                         "parley-logsync"):
                self.assertEqual(names.count(want), 1, (want, names))


class ShutdownTest(unittest.TestCase):
    def test_sigint_exits_0(self):
        import signal
        with harness.Server(name="parley[sigint]") as server:
            server.stop(sig=signal.SIGINT)

    def test_sigterm_with_idle_http_connection_exits_0(self):
        with harness.Server(name="parley[sigterm-idle-http]") as server:
            c = RawHttp(server)
            try:
                c.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertEqual(c.read_response().status, 200)
                server.stop()  # the open keep-alive connection must not block the exit
            finally:
                c.close()


if __name__ == "__main__":
    harness.main()
