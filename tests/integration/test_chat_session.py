"""Session layer of the chat protocol against the real server: hello in dev and jwt modes, token
expiry, ping, requests without id, unknown ops and invalid JSON (PROTOCOL.md sections 2-4, 10).

Run: PARLEY_BIN=build/parley /usr/bin/python3 tests/integration/test_chat_session.py
"""

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import ServerTestCase, main, make_jwt  # noqa: E402

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-"


class DevModeHelloTest(ServerTestCase):
    async def test_hello_ok_fields(self):
        c = await self.connect()
        before = time.time()
        resp = await c.request("hello", user="alice", device="phone")
        self.assertEqual(resp["op"], "ok", resp)
        self.assertEqual(resp["id"], 1)
        self.assertEqual(resp["user"], "alice")
        self.assertEqual(resp["device"], "phone")
        self.assertIsInstance(resp["session"], str)
        self.assertNotEqual(resp["session"], "")
        self.assertEqual(resp["inbox_seq"], 0)
        self.assertEqual(resp["heartbeat_ms"], 25000)
        self.assertIsInstance(resp["node"], str)
        self.assertNotEqual(resp["node"], "")
        self.assertEqual(resp["protocol"], 1)
        self.assertLess(time.time() - before, 5)

    async def test_sessions_are_distinct(self):
        a = await self.connect()
        b = await self.connect()
        ra = await a.hello(user="alice", device="phone")
        rb = await b.hello(user="alice", device="laptop")
        self.assertNotEqual(ra["session"], rb["session"])

    async def test_default_device(self):
        c = await self.connect()
        resp = await c.hello(user="bob")
        self.assertEqual(resp["device"], "default")
        self.assertEqual(resp["user"], "bob")

    async def test_full_alphabet_and_64_byte_ids_accepted(self):
        c = await self.connect()
        user = ID_ALPHABET[:64]
        self.assertEqual(len(user), 64)
        resp = await c.hello(user=user, device=ID_ALPHABET[-64:])
        self.assertEqual(resp["user"], user)
        self.assertEqual(resp["device"], ID_ALPHABET[-64:])

    async def _hello_refused(self, fields, code, close_code=4001):
        c = await self.connect()
        resp = await c.request("hello", **fields)
        self.assertEqual(resp["op"], "error", f"hello {fields} -> {resp}")
        self.assertEqual(resp["id"], 1)
        if isinstance(code, tuple):
            self.assertIn(resp["code"], code, resp)
        else:
            self.assertEqual(resp["code"], code, resp)
        self.assertIsInstance(resp["message"], str)
        await self.assert_closed(c, close_code, f"after the failed hello {fields} -> {resp}")
        return resp

    async def test_invalid_user_id(self):
        for user in ["bad user", "", "a" * 65, "al/ice", "bob:x", "caf\u00e9", "x\u0000y"]:
            with self.subTest(user=user):
                await self._hello_refused({"user": user, "device": "phone"}, "bad_request")

    async def test_user_not_a_string(self):
        await self._hello_refused({"user": 17}, "bad_request")

    async def test_invalid_device_id(self):
        for device in ["my phone", "", "d" * 65, "ph#1"]:
            with self.subTest(device=device):
                await self._hello_refused({"user": "alice", "device": device}, "bad_request")

    async def test_non_hello_first_is_unauthenticated(self):
        for op, fields in [("ping", {}), ("send", {"to": "bob", "cmid": "c1", "body": "x"}),
                           ("sync", {})]:
            with self.subTest(op=op):
                c = await self.connect()
                resp = await c.request(op, **fields)
                self.assertEqual(resp["op"], "error", resp)
                self.assertEqual(resp["code"], "unauthenticated", resp)
                await self.assert_closed(c, 4001, f"after {op} as the first request")

    async def test_non_hello_first_without_id(self):
        c = await self.connect()
        await c.send_raw({"op": "ping"})
        err = await c.next_event("error")
        self.assertEqual(err["code"], "unauthenticated", err)
        self.assertNotIn("id", err)
        await self.assert_closed(c, 4001, "after ping without id as the first request")

    async def test_nothing_delivered_before_hello_refusal(self):
        # A refused send before hello must not be stored.
        c = await self.connect()
        resp = await c.request("send", to="bob", cmid="pre-hello", body="x")
        self.assertEqual(resp["code"], "unauthenticated")
        await c.wait_closed()
        bob = await self.client(user="bob")
        self.assertEqual(bob.hello_ok["inbox_seq"], 0)

    async def test_second_hello_is_bad_request_and_stays_open(self):
        c = await self.client(user="alice", device="phone")
        resp = await c.request("hello", user="mallory", device="x")
        self.assertEqual(resp["op"], "error", resp)
        self.assertEqual(resp["code"], "bad_request", resp)
        self.assertEqual(resp["id"], 2)
        # Still open, still alice.
        pong = await c.request("ping")
        self.assertEqual(pong["op"], "ok", pong)
        ok = await c.ok("send", to="bob", cmid="after-2nd-hello", body="hi")
        self.assertEqual(ok["conv"], "d:alice:bob")
        ev = await c.next_event("msg")
        self.assertEqual(ev["from"], "alice")
        self.assertFalse(c.closed)

    async def test_ping(self):
        c = await self.client(user="alice")
        before = int(time.time() * 1000)
        resp = await c.request("ping")
        after = int(time.time() * 1000)
        self.assertEqual(resp["op"], "ok")
        self.assertEqual(resp["id"], 2)
        self.assertIsInstance(resp["ts"], int)
        self.assertGreaterEqual(resp["ts"], before - 2000)
        self.assertLessEqual(resp["ts"], after + 2000)

    async def test_request_ids_echoed(self):
        c = await self.client(user="alice")
        for rid in [0, 7, 123456789, 2**53 - 1]:
            with self.subTest(id=rid):
                await c.send_raw({"op": "ping", "id": rid})
                resp = await c.next_event("ok")  # not registered as pending: arrives queued
                self.assertEqual(resp["id"], rid)

    async def test_requests_without_id(self):
        c = await self.client(user="alice")
        await c.send_raw({"op": "ping"})
        await c.send_raw({"op": "ack", "inbox": 0})
        # A failing request without id still gets its error, without an id.
        await c.send_raw({"op": "send", "to": "not valid", "cmid": "c1", "body": "x"})
        err = await c.next_event("error")
        self.assertEqual(err["code"], "bad_request", err)
        self.assertNotIn("id", err)
        self.assertIsInstance(err["message"], str)
        # The requests before it produced no ok: a ping with id is answered, nothing else queued.
        pong = await c.ok("ping")
        self.assertEqual(pong["id"], 2)
        await asyncio.sleep(0.3)
        self.assertEqual(c.queued(), [])
        # A send without id is performed, just not answered: the msg event still arrives.
        await c.send_raw({"op": "send", "to": "bob", "cmid": "noid-1", "body": "quiet"})
        ev = await c.next_event("msg")
        self.assertEqual(ev["cmid"], "noid-1")
        self.assertEqual(c.queued("ok"), [])

    async def test_unknown_op(self):
        c = await self.client(user="alice")
        resp = await c.request("frobnicate", x=1)
        self.assertEqual(resp["op"], "error", resp)
        self.assertEqual(resp["code"], "bad_request")
        self.assertEqual(resp["id"], 2)
        await c.send_raw({"op": "frobnicate"})
        err = await c.next_event("error")
        self.assertEqual(err["code"], "bad_request")
        self.assertNotIn("id", err)
        self.assertEqual((await c.request("ping"))["op"], "ok")

    async def test_missing_or_non_string_op(self):
        c = await self.client(user="alice")
        await c.send_raw({"id": 50})
        err = await c.next_event("error")
        self.assertEqual(err["code"], "bad_request", err)
        self.assertEqual(err.get("id"), 50)
        await c.send_raw({"op": 5, "id": 51})
        err = await c.next_event("error")
        self.assertEqual(err["code"], "bad_request", err)
        self.assertEqual(err.get("id"), 51)
        self.assertEqual((await c.request("ping"))["op"], "ok")

    async def test_invalid_json_stays_open(self):
        c = await self.client(user="alice")
        for text in ['{"op":"ping","id":', "not json", "[1,2,3]", '"hello"', "42", "", "{}"]:
            with self.subTest(text=text):
                await c.send_raw(text)
                err = await c.next_event("error")
                self.assertEqual(err["code"], "bad_request", f"{text!r} -> {err}")
                self.assertNotIn("id", err)
                self.assertFalse(c.closed)
        self.assertEqual((await c.request("ping"))["op"], "ok")

    async def test_text_that_is_no_request_before_hello_leaves_the_connection_open(self):
        # Not valid JSON, or no known op, is bad_request and the connection stays open (section
        # 3), before hello too; a hello can then follow.
        for text in ["{{{", '{"op":"hello","id":1,"user":"alice"', "[]", '{"id":3}',
                     '{"op":"HELLO","id":3,"user":"alice"}', '{"op":"nope","id":3}']:
            with self.subTest(text=text):
                c = await self.connect()
                await c.send_raw(text)
                err = await c.next_event("error")
                self.assertEqual(err["code"], "bad_request", err)
                resp = await c.hello(user="alice")
                self.assertEqual(resp["user"], "alice")
                await c.close()

    async def test_a_malformed_hello_is_bad_request_and_close_4001(self):
        # A request that names hello but cannot be decoded is a failed hello (section 10).
        for text, rid in [('{"op":"hello","id":1,"user":"alice","user":"bob"}', 1),
                          ('{"op":"hello","id":"x","user":"alice"}', None),
                          ('{"op":"hello","id":-1,"user":"alice"}', None),
                          ('{"op":"hello","id":1,"user":"alice","device":"a","device":"b"}', 1)]:
            with self.subTest(text=text):
                c = await self.connect()
                await c.send_raw(text)
                err = await c.next_event("error")
                self.assertEqual(err["code"], "bad_request", err)
                self.assertEqual(err.get("id"), rid, err)
                await self.assert_closed(c, 4001, f"after {text}")

    async def test_hello_in_dev_mode_with_garbage_token_refused(self):
        # In dev mode a token cannot be verified (no secret): the hello fails cleanly.
        c = await self.connect()
        resp = await c.request("hello", token="abc.def.ghi")
        self.assertEqual(resp["op"], "error", resp)
        await self.assert_closed(c, 4001, f"after hello with a token in dev mode -> {resp}")


SECRET = "integration-secret-0123456789abcdef"


class JwtModeHelloTest(ServerTestCase):
    SERVER_KW = {"jwt_secret": SECRET}

    async def test_valid_token_from_parley_token(self):
        token = self.server.token("alice", ttl=600)
        c = await self.connect()
        resp = await c.hello(token=token, device="phone")
        self.assertEqual(resp["user"], "alice")
        self.assertEqual(resp["device"], "phone")
        self.assertEqual(resp["protocol"], 1)
        self.assertEqual((await c.request("ping"))["op"], "ok")

    async def test_token_without_exp(self):
        c = await self.connect()
        resp = await c.hello(token=make_jwt({"sub": "carol"}, SECRET))
        self.assertEqual(resp["user"], "carol")
        self.assertEqual(resp["device"], "default")

    async def _refused(self, fields, codes, close_code):
        c = await self.connect()
        resp = await c.request("hello", **fields)
        self.assertEqual(resp["op"], "error", f"hello {fields} -> {resp}")
        self.assertIn(resp["code"], codes, resp)
        self.assertEqual(resp["id"], 1)
        await self.assert_closed(c, close_code, f"after the failed hello {fields} -> {resp}")

    async def test_bad_signature(self):
        token = make_jwt({"sub": "alice", "exp": int(time.time()) + 600},
                         "another-secret-0123456789abcdef")
        await self._refused({"token": token}, ("unauthenticated",), 4001)

    async def test_tampered_payload(self):
        good = make_jwt({"sub": "alice", "exp": int(time.time()) + 600}, SECRET)
        other = make_jwt({"sub": "mallory", "exp": int(time.time()) + 600}, SECRET)
        h, _, s = good.split(".")
        forged = ".".join([h, other.split(".")[1], s])
        await self._refused({"token": forged}, ("unauthenticated",), 4001)

    async def test_alg_none_refused(self):
        token = make_jwt({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, alg="none")
        await self._refused({"token": token}, ("unauthenticated", "bad_request"), 4001)
        # Also with a real signature appended.
        signed = make_jwt({"sub": "alice"}, SECRET)
        none_hdr = make_jwt({"sub": "alice"}, SECRET, alg="none").split(".")[0]
        await self._refused({"token": none_hdr + "." + ".".join(signed.split(".")[1:])},
                            ("unauthenticated", "bad_request"), 4001)

    async def test_other_alg_refused(self):
        token = make_jwt({"sub": "alice"}, SECRET, header={"alg": "HS512", "typ": "JWT"})
        await self._refused({"token": token}, ("unauthenticated", "bad_request"), 4001)

    async def test_malformed_token(self):
        for token in ["not-a-token", "a.b", "a.b.c.d", "!!!.###.$$$"]:
            with self.subTest(token=token):
                await self._refused({"token": token}, ("bad_request",), 4001)

    async def test_token_not_a_string_or_empty(self):
        await self._refused({"token": 12345}, ("bad_request",), 4001)
        await self._refused({"token": ""}, ("bad_request",), 4001)

    async def test_expired_token(self):
        token = make_jwt({"sub": "alice", "exp": int(time.time()) - 30}, SECRET)
        await self._refused({"token": token}, ("unauthenticated",), 4003)

    async def test_token_expires_while_connected(self):
        exp = int(time.time()) + 3
        token = make_jwt({"sub": "alice", "exp": exp}, SECRET)
        c = await self.connect()
        resp = await c.hello(token=token)
        self.assertEqual(resp["user"], "alice")
        self.assertEqual((await c.request("ping"))["op"], "ok")
        code = await c.wait_closed(timeout=exp - time.time() + 5)
        closed_at = time.time()
        self.assertEqual(code, 4003)
        # Closed when exp passed, not before it (1 s of clock-granularity slack).
        self.assertGreaterEqual(closed_at, exp - 1.0)
        self.assertLessEqual(closed_at, exp + 4.0)

    async def test_dev_style_user_refused(self):
        await self._refused({"user": "alice"}, ("unauthenticated", "bad_request"), 4001)
        # Nor does a user field override the token's subject.
        c = await self.connect()
        resp = await c.request("hello", token=self.server.token("alice"), user="mallory")
        if resp["op"] == "ok":
            self.assertEqual(resp["user"], "alice")
        else:
            await self.assert_closed(c, 4001, f"after hello with token and user -> {resp}")

    async def test_invalid_sub(self):
        token = make_jwt({"sub": "not a valid id", "exp": int(time.time()) + 600}, SECRET)
        await self._refused({"token": token}, ("bad_request", "unauthenticated"), 4001)
        token = make_jwt({"exp": int(time.time()) + 600}, SECRET)
        await self._refused({"token": token}, ("bad_request", "unauthenticated"), 4001)

    async def test_send_works_with_token_identity(self):
        a = await self.client(token=self.server.token("alice"), device="phone")
        b = await self.client(token=self.server.token("bob"))
        ok = await a.ok("send", to="bob", cmid="jwt-1", body="hi")
        self.assertEqual(ok["conv"], "d:alice:bob")
        ev = await b.next_event("msg")
        self.assertEqual(ev["from"], "alice")
        self.assertEqual(ev["body"], "hi")


if __name__ == "__main__":
    main()
