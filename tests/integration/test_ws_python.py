"""The /ws endpoint driven by Debian's python3-websockets (10.4, asyncio client).

Covers subprotocol selection, hello/ping, the error paths of the JSON protocol, the close codes
1003/1007/1009/4001 and the close-code echo, fragmented client messages, server heartbeats and
the idle cut-off, SIGTERM (1001 to every connection, exit 0) and 200 concurrent sessions.
"""

import asyncio
import json
import os
import signal
import sys
import time

import websockets
from websockets.exceptions import ConnectionClosed
from websockets.legacy.client import WebSocketClientProtocol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MAX_MESSAGE_BYTES = 8192
OP_TEXT, OP_BINARY, OP_CONT, OP_PING = 0x1, 0x2, 0x0, 0x9
RECV_TIMEOUT = 5.0


def run(coro, timeout=60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recv_json(ws, timeout=RECV_TIMEOUT):
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str), "expected a text message, got %r" % (raw,)
    return json.loads(raw)


async def request(ws, obj, timeout=RECV_TIMEOUT):
    await ws.send(json.dumps(obj))
    return await recv_json(ws, timeout)


async def wait_close_code(ws, timeout=RECV_TIMEOUT):
    """Waits for the server to close; returns the close code the client received (1006: none)."""
    extra = []
    try:
        while True:
            extra.append(await asyncio.wait_for(ws.recv(), timeout))
    except ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        raise AssertionError("the server did not close the connection within %.1f s "
                             "(messages meanwhile: %r)" % (timeout, extra)) from None
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


class PingRecordingProtocol(WebSocketClientProtocol):
    """Client protocol that timestamps every ping frame the server sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_pings = []

    async def read_frame(self, max_size):
        frame = await super().read_frame(max_size)
        if frame.opcode == OP_PING:
            self.server_pings.append(time.monotonic())
        return frame


class SilentProtocol(PingRecordingProtocol):
    """Client protocol that never answers the server's pings."""

    async def pong(self, data=b""):
        return None


class WsTestBase(harness.SharedServerTestCase):
    def connect(self, path="/ws", **kwargs):
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("close_timeout", 5)
        return websockets.connect(self.server.ws_url(path), compression=None, **kwargs)

    async def hello(self, ws, user="alice", device="d1", rid=1):
        reply = await request(ws, {"op": "hello", "id": rid, "user": user, "device": device})
        self.assertEqual(reply.get("op"), "ok", reply)
        return reply


class WsProtocolTest(WsTestBase):
    SERVER_KW = {"extra_args": ["--limits.max_message_bytes=%d" % MAX_MESSAGE_BYTES]}

    # ---- subprotocol ----

    def test_subprotocol_selected_when_offered(self):
        async def go():
            async with self.connect(subprotocols=["parley.v1"]) as ws:
                self.assertEqual(ws.subprotocol, "parley.v1")
                await self.hello(ws)
        run(go())

    def test_subprotocol_selected_from_list(self):
        async def go():
            async with self.connect(subprotocols=["chat.example", "parley.v1", "x"]) as ws:
                self.assertEqual(ws.subprotocol, "parley.v1")
        run(go())

    def test_no_subprotocol_when_none_offered(self):
        async def go():
            async with self.connect() as ws:
                self.assertIsNone(ws.subprotocol)
                await self.hello(ws)
        run(go())

    def test_no_subprotocol_when_only_unknown_offered(self):
        async def go():
            async with self.connect(subprotocols=["chat.example"]) as ws:
                self.assertIsNone(ws.subprotocol)
        run(go())

    # ---- hello / ping ----

    def test_hello_reply_fields(self):
        async def go():
            async with self.connect(subprotocols=["parley.v1"]) as ws:
                reply = await self.hello(ws, user="alice", device="d1", rid=1)
                self.assertEqual(reply["id"], 1)
                self.assertEqual(reply["user"], "alice")
                self.assertEqual(reply["device"], "d1")
                self.assertIsInstance(reply["session"], str)
                self.assertTrue(reply["session"])
                self.assertIsInstance(reply["inbox_seq"], int)
                self.assertEqual(reply["inbox_seq"], 0, "fresh user, empty inbox")
                self.assertIsInstance(reply["heartbeat_ms"], int)
                self.assertEqual(reply["heartbeat_ms"], 25000, "the configured default")
                self.assertIsInstance(reply["node"], str)
                self.assertTrue(reply["node"])
                self.assertEqual(reply["protocol"], 1)
        run(go())

    def test_hello_device_defaults_to_default(self):
        async def go():
            async with self.connect() as ws:
                reply = await request(ws, {"op": "hello", "id": 4, "user": "bob"})
                self.assertEqual(reply.get("op"), "ok", reply)
                self.assertEqual(reply["device"], "default")
        run(go())

    def test_sessions_differ_between_connections(self):
        async def go():
            async with self.connect() as a, self.connect() as b:
                ra = await self.hello(a, user="carol", device="d1")
                rb = await self.hello(b, user="carol", device="d2")
                self.assertNotEqual(ra["session"], rb["session"])
        run(go())

    def test_ping_ok_with_server_time(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                before = int(time.time() * 1000)
                reply = await request(ws, {"op": "ping", "id": 7})
                after = int(time.time() * 1000)
                self.assertEqual(reply.get("op"), "ok", reply)
                self.assertEqual(reply["id"], 7)
                self.assertIsInstance(reply["ts"], int)
                self.assertLessEqual(abs(reply["ts"] - (before + after) // 2), 5000, reply)
        run(go())

    def test_ping_without_id_gets_no_answer(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.send(json.dumps({"op": "ping"}))
                reply = await request(ws, {"op": "ping", "id": 8})
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 8), reply)
        run(go())

    def test_many_pings_answered_in_order(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                for i in range(100, 150):
                    await ws.send(json.dumps({"op": "ping", "id": i}))
                ids = [(await recv_json(ws))["id"] for _ in range(50)]
                self.assertEqual(ids, list(range(100, 150)))
        run(go())

    # ---- errors before and after hello ----

    def test_first_request_not_hello_is_unauthenticated_4001(self):
        async def go():
            async with self.connect() as ws:
                reply = await request(ws, {"op": "ping", "id": 3})
                self.assertEqual(reply.get("op"), "error", reply)
                self.assertEqual(reply.get("id"), 3, reply)
                self.assertEqual(reply.get("code"), "unauthenticated", reply)
                self.assertEqual(await wait_close_code(ws), 4001)
        run(go())

    def test_first_request_unknown_op_is_unauthenticated_4001(self):
        async def go():
            async with self.connect() as ws:
                reply = await request(ws, {"op": "send", "id": 5, "to": "bob", "cmid": "c1",
                                           "body": "hi"})
                self.assertEqual((reply.get("op"), reply.get("code"), reply.get("id")),
                                 ("error", "unauthenticated", 5), reply)
                self.assertEqual(await wait_close_code(ws), 4001)
        run(go())

    def test_hello_with_invalid_user_fails_and_closes_4001(self):
        async def go():
            async with self.connect() as ws:
                reply = await request(ws, {"op": "hello", "id": 1, "user": "no spaces allowed!",
                                           "device": "d1"})
                self.assertEqual(reply.get("op"), "error", reply)
                self.assertEqual(reply.get("id"), 1, reply)
                self.assertIn(reply.get("code"), ("bad_request", "unauthenticated"), reply)
                self.assertEqual(await wait_close_code(ws), 4001)
        run(go())

    def test_hello_without_user_fails_and_closes_4001(self):
        async def go():
            async with self.connect() as ws:
                reply = await request(ws, {"op": "hello", "id": 6, "device": "d1"})
                self.assertEqual(reply.get("op"), "error", reply)
                self.assertEqual(reply.get("id"), 6, reply)
                self.assertIn(reply.get("code"), ("bad_request", "unauthenticated"), reply)
                self.assertEqual(await wait_close_code(ws), 4001)
        run(go())

    def test_invalid_json_is_bad_request_and_connection_stays_open(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.send("{this is not json")
                reply = await recv_json(ws)
                self.assertEqual((reply.get("op"), reply.get("code")), ("error", "bad_request"),
                                 reply)
                self.assertNotIn("id", reply, reply)
                self.assertIsInstance(reply.get("message"), str, reply)
                reply = await request(ws, {"op": "ping", "id": 11})
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 11), reply)
        run(go())

    def test_json_that_is_not_an_object_is_bad_request(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                for payload in ("[1,2,3]", "42", '"ping"', "null"):
                    await ws.send(payload)
                    reply = await recv_json(ws)
                    self.assertEqual((reply.get("op"), reply.get("code")), ("error", "bad_request"),
                                     "sent %r, got %r" % (payload, reply))
                reply = await request(ws, {"op": "ping", "id": 12})
                self.assertEqual(reply.get("op"), "ok", reply)
        run(go())

    def test_unknown_op_is_bad_request_with_id(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                reply = await request(ws, {"op": "frobnicate", "id": 9})
                self.assertEqual((reply.get("op"), reply.get("code"), reply.get("id")),
                                 ("error", "bad_request", 9), reply)
                reply = await request(ws, {"id": 10})
                self.assertEqual((reply.get("op"), reply.get("code"), reply.get("id")),
                                 ("error", "bad_request", 10), reply)
                reply = await request(ws, {"op": "ping", "id": 13})
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 13), reply)
        run(go())

    def test_second_hello_is_bad_request_and_stays_open(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                reply = await request(ws, {"op": "hello", "id": 2, "user": "alice", "device": "d1"})
                self.assertEqual((reply.get("op"), reply.get("code"), reply.get("id")),
                                 ("error", "bad_request", 2), reply)
                reply = await request(ws, {"op": "ping", "id": 3})
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 3), reply)
        run(go())

    # ---- frames: binary, UTF-8, size, fragmentation ----

    def test_binary_message_closes_1003(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.send(b'{"op":"ping","id":1}')
                self.assertEqual(await wait_close_code(ws), 1003)
        run(go())

    def test_invalid_utf8_closes_1007(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.write_frame(True, OP_TEXT, b'{"op":"ping","id":1,"x":"\xc3\x28"}')
                self.assertEqual(await wait_close_code(ws), 1007)
        run(go())

    def test_invalid_utf8_split_across_fragments_closes_1007(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.write_frame(False, OP_TEXT, b'{"op":"ping","id":1,"x":"\xe2\x82')
                await ws.write_frame(True, OP_CONT, b'\x28"}')
                self.assertEqual(await wait_close_code(ws), 1007)
        run(go())

    def test_message_over_limit_closes_1009(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.send(" " * (MAX_MESSAGE_BYTES + 1))
                self.assertEqual(await wait_close_code(ws), 1009)
        run(go())

    def test_fragmented_message_over_limit_closes_1009(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                part = MAX_MESSAGE_BYTES // 3 + 10
                await ws.send([" " * part, " " * part, " " * part])
                self.assertEqual(await wait_close_code(ws), 1009)
        run(go())

    def test_message_exactly_at_limit_is_accepted(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                body = json.dumps({"op": "ping", "id": 21})
                await ws.send(body + " " * (MAX_MESSAGE_BYTES - len(body)))
                reply = await recv_json(ws)
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 21), reply)
        run(go())

    def test_fragmented_request(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await ws.send(['{"op":"pi', 'ng","id"', ":5}"])
                reply = await recv_json(ws)
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 5), reply)
        run(go())

    def test_fragmented_hello_with_multibyte_split(self):
        async def go():
            async with self.connect() as ws:
                data = json.dumps({"op": "hello", "id": 1, "user": "dora", "device": "d1",
                                   "x": "\u00e9\u20ac\U0001F600"}, ensure_ascii=False).encode()
                cut = data.index("\u20ac".encode()) + 1  # inside the 3-byte sequence
                await ws.write_frame(False, OP_TEXT, data[:cut])
                await ws.write_frame(True, OP_CONT, data[cut:])
                reply = await recv_json(ws)
                self.assertEqual((reply.get("op"), reply.get("user")), ("ok", "dora"), reply)
        run(go())

    def test_client_ping_answered_by_pong(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                waiter = await ws.ping(b"are-you-there")
                await asyncio.wait_for(waiter, RECV_TIMEOUT)
        run(go())

    # ---- close handshake ----

    def test_close_code_echoed(self):
        async def go():
            for code in (1000, 1001, 3000, 4000, 4321, 4999):
                async with self.connect() as ws:
                    await self.hello(ws)
                    await ws.close(code=code, reason="bye")
                    self.assertEqual(ws.close_code, code, "client closed with %d" % code)
        run(go())

    def test_close_before_hello_echoed(self):
        async def go():
            async with self.connect() as ws:
                await ws.close(code=4100)
                self.assertEqual(ws.close_code, 4100)
        run(go())

    # ---- load ----

    def test_200_concurrent_connections_hello_and_ping(self):
        async def one(i):
            async with self.connect(open_timeout=30) as ws:
                reply = await request(ws, {"op": "hello", "id": 1, "user": "load%d" % i,
                                           "device": "d1"}, timeout=30)
                self.assertEqual((reply.get("op"), reply.get("user")), ("ok", "load%d" % i), reply)
                reply = await request(ws, {"op": "ping", "id": 1000 + i}, timeout=30)
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 1000 + i), reply)
                return i

        async def go():
            results = await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            self.assertFalse(errors, "%d of 200 sessions failed, first: %r" % (len(errors),
                                                                               errors[:3]))
        run(go(), timeout=120)
        self.assertServerAlive()


HEARTBEAT_MS = 400


class WsHeartbeatTest(WsTestBase):
    SERVER_KW = {"extra_args": ["--limits.heartbeat_ms=%d" % HEARTBEAT_MS]}

    def test_hello_reports_configured_heartbeat(self):
        async def go():
            async with self.connect() as ws:
                reply = await self.hello(ws)
                self.assertEqual(reply["heartbeat_ms"], HEARTBEAT_MS)
        run(go())

    def test_server_sends_pings(self):
        async def go():
            async with self.connect(create_protocol=PingRecordingProtocol) as ws:
                await self.hello(ws)
                started = time.monotonic()
                # Keep reading (the client answers pings) for 5 heartbeats.
                try:
                    await asyncio.wait_for(ws.recv(), 5 * HEARTBEAT_MS / 1000.0)
                    self.fail("unexpected message")
                except asyncio.TimeoutError:
                    pass
                pings = [t - started for t in ws.server_pings]
                self.assertGreaterEqual(len(pings), 3,
                                        "pings at %r within %d ms" % (pings, 5 * HEARTBEAT_MS))
                self.assertTrue(ws.open, "connection answering pings was closed")
        run(go())

    def test_connection_answering_pings_stays_open(self):
        async def go():
            async with self.connect() as ws:
                await self.hello(ws)
                await asyncio.sleep(6 * HEARTBEAT_MS / 1000.0)
                reply = await request(ws, {"op": "ping", "id": 2})
                self.assertEqual((reply.get("op"), reply.get("id")), ("ok", 2), reply)
        run(go())

    def test_silent_connection_closed_after_two_heartbeats(self):
        async def go():
            async with self.connect(create_protocol=SilentProtocol) as ws:
                await self.hello(ws)
                last_activity = time.monotonic()
                code = await wait_close_code(ws, timeout=2 * HEARTBEAT_MS / 1000.0 + 3.0)
                elapsed = time.monotonic() - last_activity
                self.assertEqual(code, 1008, "close code of a heartbeat timeout")
                self.assertNotEqual(ws.state.name, "OPEN")
                self.assertGreaterEqual(elapsed, 2 * HEARTBEAT_MS / 1000.0 * 0.8,
                                        "closed after %.3f s (code %s)" % (elapsed, code))
                self.assertLessEqual(elapsed, 2 * HEARTBEAT_MS / 1000.0 + 2.0,
                                     "closed only after %.3f s (code %s)" % (elapsed, code))
        run(go())

    def test_messages_count_as_activity(self):
        async def go():
            async with self.connect(create_protocol=SilentProtocol) as ws:
                await self.hello(ws)
                # No pongs, but a request every half heartbeat: the server must keep us.
                for i in range(12):
                    await asyncio.sleep(HEARTBEAT_MS / 2000.0)
                    reply = await request(ws, {"op": "ping", "id": 100 + i})
                    self.assertEqual(reply.get("id"), 100 + i, reply)
        run(go())

    def test_unauthenticated_silent_connection_closed(self):
        async def go():
            async with self.connect(create_protocol=SilentProtocol) as ws:
                started = time.monotonic()
                await wait_close_code(ws, timeout=2 * HEARTBEAT_MS / 1000.0 + 12.0)
                self.assertLessEqual(time.monotonic() - started, 2 * HEARTBEAT_MS / 1000.0 + 11.0)
        run(go())


class WsShutdownTest(WsTestBase):
    def setUp(self):
        # A server of its own: this test stops it.
        self.server = harness.Server(name="parley[shutdown]")
        self.addCleanup(self.server.cleanup)
        self.server.start()

    @classmethod
    def setUpClass(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        pass

    def check_stop_signal(self, sig):
        async def go():
            authed = [await self.connect() for _ in range(5)]
            for i, ws in enumerate(authed):
                await self.hello(ws, user="s%d" % i)
            fresh = [await self.connect() for _ in range(2)]  # upgraded, no hello yet
            self.server.send_signal(sig)
            return await asyncio.gather(*(wait_close_code(ws, timeout=6)
                                          for ws in authed + fresh))

        started = time.monotonic()
        codes = run(go())
        self.assertEqual(codes, [1001] * 7, "close codes after %s" % signal.Signals(sig).name)
        rc = self.server.wait_exit(timeout=max(0.5, 5.0 - (time.monotonic() - started)))
        self.assertEqual(rc, 0, "exit code after %s (None = still running after 5 s)\n%s"
                         % (signal.Signals(sig).name, self.server.log_tail()))
        self.server.stop(check=False)

    def test_sigterm_closes_every_connection_1001_and_exits_0(self):
        self.check_stop_signal(signal.SIGTERM)

    def test_sigint_closes_every_connection_1001_and_exits_0(self):
        self.check_stop_signal(signal.SIGINT)

if __name__ == "__main__":
    harness.main()
