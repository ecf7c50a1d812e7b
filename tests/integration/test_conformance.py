"""RFC 6455 conformance of the server's /echo endpoint, case by case.

Re-creates the Autobahn|Testsuite fuzzing-client case groups 1 (framing), 2 (ping/pong),
3 (reserved bits), 4 (opcodes), 5 (fragmentation), 6 (UTF-8, including fail-fast and the table of
valid/invalid sequences), 7 (close handshake, codes and reasons), 9 (large and fragmented
messages up to the configured limit) and 10 (auto-fragmentation), driven by Debian's
python3-autobahn (Twisted) client. Each case is a test method named after its case number.
Group "x" adds checks beyond the Autobahn groups: unmasked client frames, a bad 64-bit length,
and messages over limits.max_message_bytes (1009).

Verdicts follow the Autobahn rules: the events the client received (echoed messages, pongs,
"timeout" markers of the fail-fast cases) are compared with the expected outcomes of the case
(OK, NON-STRICT or INFORMATIONAL), and the close behaviour with the expected close (who closes,
which codes, whether a clean close is required). A case passes when its behaviour is OK,
NON-STRICT or INFORMATIONAL and its close behaviour is acceptable. A close is acceptable when it
is OK or INFORMATIONAL, or when the server sent its close frame but the client had to drop the
TCP connection (the server SHOULD drop it first: counted as NON-STRICT). Wrong endpoint closing,
a wrong close code (checked on the code the server sent, even one the client rejects), an unclean
close where a clean one is required, a frame from the server that made the client fail the
connection, or a connection the server never failed although it had to, are failures.

One Twisted reactor runs in a background thread; each case is started with callFromThread and
the test thread waits for it with a timeout.
"""

import collections
import os
import re
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from twisted.internet import reactor  # noqa: E402
from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory, WebSocketClientProtocol)
from autobahn.websocket.protocol import WebSocketProtocol  # noqa: E402

OK = "OK"
NON_STRICT = "NON-STRICT"
INFORMATIONAL = "INFORMATIONAL"
FAILED = "FAILED"
UNCLEAN = "UNCLEAN"
WRONG_CODE = "WRONG CODE"
FAILED_BY_CLIENT = "FAILED BY CLIENT"
PASSING = (OK, NON_STRICT, INFORMATIONAL)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the server limit for this suite (group 9 goes up to it)

# Waits. Autobahn uses 1 s for most of them; loopback answers in well under a millisecond, so
# shorter waits keep the suite fast without changing what is observed.
KILL_AFTER = 1.0
CLOSE_AFTER = 0.5
PART_WAIT = 0.5

CLOSE_NORMAL = {"closed_by_me": True, "codes": [1000], "require_clean": True}


def fail_close(*codes):
    """The server has to fail the connection (close frame with one of `codes`, or a TCP drop)."""
    return {"closed_by_me": False, "codes": list(codes), "require_clean": False}


def msg(payload, binary=False):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return ("message", payload, binary)


def pong(payload=b""):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return ("pong", payload)


def b(s):
    return s.encode("utf-8") if isinstance(s, str) else s


class Case:
    """One conformance case: what to send on open, what to expect."""

    def __init__(self, cid, desc, start, expected, expected_close, suppress_close=False,
                 timeout=15.0, post=None, options=None, on_record=None):
        self.cid = cid
        self.desc = desc
        self.start = start  # start(run): called when the WebSocket is open
        # {verdict: [events]}, or a function returning it (large payloads are built per run)
        self.expected = expected
        self.on_record = on_record  # on_record(run): replaces the default after each event
        self.expected_close = expected_close
        self.suppress_close = suppress_close
        self.timeout = timeout
        self.post = post  # post(run): adjusts run.behavior / run.behavior_close
        self.options = options or {}

    @property
    def group(self):
        head = self.cid.split(".")[0]
        return int(head) if head.isdigit() else head


# ---------------------------------------------------------------------------------------------
# The client side: one CaseRun per case execution, living on the reactor thread.


class CaseProtocol(WebSocketClientProtocol):
    def onOpen(self):
        run = self.factory.case_run
        run.p = self
        run.opened = True
        try:
            run.case.start(run)
        except Exception as e:  # a bug in the case itself: make it visible
            run.errors.append("start raised %r" % e)
            self.dropConnection(abort=True)

    def onMessage(self, payload, isBinary):
        self.factory.case_run.record(("message", bytes(payload), isBinary))

    def onPing(self, payload):
        self.factory.case_run.record(("ping", bytes(payload)))
        super().onPing(payload)

    def onPong(self, payload):
        self.factory.case_run.record(("pong", bytes(payload)))

    def onCloseFrame(self, code, reasonRaw):
        self.factory.case_run.close_frames.append((code, reasonRaw))
        return super().onCloseFrame(code, reasonRaw)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.case_run.finish()


class CaseFactory(WebSocketClientFactory):
    protocol = CaseProtocol

    def clientConnectionFailed(self, connector, reason):
        self.case_run.errors.append("TCP connect failed: %s" % reason.getErrorMessage())
        self.case_run.finish()


class CaseRun:
    def __init__(self, case, port):
        self.case = case
        self.port = port
        self.p = None
        self.opened = False
        self.received = []
        self.close_frames = []
        self.errors = []
        self.calls = []
        self.done = threading.Event()
        self.behavior = FAILED
        self.behavior_close = FAILED
        self.result_close = ""
        self.started = None
        self.duration = None
        self.state = {}
        self.expected = case.expected() if callable(case.expected) else case.expected

    # -- helpers for the cases (reactor thread) --

    def is_open(self):
        return self.p is not None and self.p.state == WebSocketProtocol.STATE_OPEN

    def later(self, delay, fn):
        self.calls.append(reactor.callLater(delay, fn))

    def kill_after(self, delay):
        def kill():
            if self.p is not None and self.p.state != WebSocketProtocol.STATE_CLOSED:
                self.p.wasClean = False
                self.p.wasNotCleanReason = "killed by the test after %.1f s" % delay
                self.p.dropConnection(abort=True)
        self.later(delay, kill)

    def close_after(self, delay, code=1000):
        def close():
            if self.is_open():
                self.p.sendClose(code)
        self.later(delay, close)

    def continue_later(self, delay, fn):
        self.later(delay, fn)

    def record(self, event):
        self.received.append(event)
        if self.case.on_record is not None:
            self.case.on_record(self)
        else:
            self.finish_when_done()

    def finish_when_done(self):
        for events in self.expected.values():
            if self.received != events:
                return
        if self.case.expected_close["closed_by_me"] and not self.case.suppress_close:
            if self.is_open():
                self.p.sendClose(self.case.expected_close["codes"][0])

    # -- lifecycle --

    def start(self):
        self.started = time.monotonic()
        factory = CaseFactory("ws://127.0.0.1:%d/echo" % self.port)
        factory.case_run = self
        # Twisted times callLater with the wall clock (time.time): in one CI run a 1 s close
        # timeout fired 0.52 s (monotonic) after the case began, most likely a clock step on
        # the VM. A few seconds of margin; a conforming server answers within milliseconds,
        # so passing cases take no longer.
        options = dict(failByDrop=True, openHandshakeTimeout=5, closeHandshakeTimeout=5,
                       serverConnectionDropTimeout=5, maxMessagePayloadSize=0,
                       maxFramePayloadSize=0, utf8validateIncoming=True)
        options.update(self.case.options)
        factory.setProtocolOptions(**options)
        reactor.connectTCP("127.0.0.1", self.port, factory, timeout=5)

    def abort(self):
        if self.p is not None and self.p.state != WebSocketProtocol.STATE_CLOSED:
            self.errors.append("case timed out after %.1f s" % self.case.timeout)
            self.p.wasClean = False
            self.p.dropConnection(abort=True)
        else:
            self.errors.append("case timed out after %.1f s" % self.case.timeout)
            self.finish()

    def finish(self):
        if self.done.is_set():
            return
        for call in self.calls:
            if call.active():
                call.cancel()
        self.duration = time.monotonic() - self.started
        self.evaluate()
        self.done.set()

    def evaluate(self):
        case, p = self.case, self.p
        if not self.opened or p is None:
            self.behavior = FAILED
            self.behavior_close = FAILED
            self.result_close = "the WebSocket connection never opened"
            return
        self.behavior = FAILED
        for verdict, events in self.expected.items():
            if self.received == events:
                self.behavior = verdict
                break
        exp = case.expected_close
        # The code the server sent, even one the client rejected as invalid.
        remote_code = self.close_frames[0][0] if self.close_frames else None
        if p.failedByMe:
            self.behavior_close = FAILED
            self.result_close = "the client failed the connection: the server violated the " \
                                "protocol (%s)" % (p.wasNotCleanReason,)
        elif exp["closed_by_me"] != bool(p.closedByMe):
            self.behavior_close = FAILED
            self.result_close = "the connection was closed by the wrong endpoint"
        elif exp["require_clean"] and not p.wasClean:
            self.behavior_close = UNCLEAN
            self.result_close = "a clean close was required (%s)" % p.wasNotCleanReason
        elif remote_code is not None and remote_code not in exp["codes"]:
            self.behavior_close = WRONG_CODE
            self.result_close = "close code %s, expected %s or none" % (remote_code, exp["codes"])
        elif p.droppedByMe:
            self.behavior_close = FAILED_BY_CLIENT
            self.result_close = "the client had to drop the TCP connection (%s)" % (
                p.wasNotCleanReason,)
        else:
            self.behavior_close = OK
            self.result_close = "connection properly closed"
        if case.post is not None:
            case.post(self)
        if self.errors:
            self.behavior = FAILED

    def passed(self):
        if self.behavior not in PASSING:
            return False
        if self.behavior_close in (OK, INFORMATIONAL):
            return True
        if self.behavior_close == FAILED_BY_CLIENT:
            # Acceptable only if the server did send its close frame (it should also have
            # dropped the TCP connection, a SHOULD of RFC 6455 7.1.1).
            return bool(self.close_frames)
        return False

    def verdict(self):
        if not self.passed():
            return FAILED
        if self.behavior_close == FAILED_BY_CLIENT:
            return NON_STRICT
        return self.behavior

    def describe(self):
        p = self.p

        def short(events):
            out = []
            for e in events:
                if e[0] in ("message", "ping", "pong") and len(e[1]) > 48:
                    e = (e[0], "<%d bytes: %r...>" % (len(e[1]), e[1][:24])) + tuple(e[2:])
                out.append(e)
            return out

        lines = ["case %s: %s" % (self.case.cid, self.case.desc),
                 "  behavior=%s close=%s (%s)" % (self.behavior, self.behavior_close,
                                                   self.result_close),
                 "  received=%r" % short(self.received),
                 "  expected=%r" % {k: short(v) for k, v in self.expected.items()},
                 "  expected close=%r" % self.case.expected_close]
        if p is not None:
            lines.append("  closedByMe=%s droppedByMe=%s wasClean=%s remoteCloseCode=%s "
                         "remoteCloseReason=%r close frames=%r" % (
                             p.closedByMe, p.droppedByMe, p.wasClean, p.remoteCloseCode,
                             p.remoteCloseReason, self.close_frames[:3]))
        if self.errors:
            lines.append("  errors=%r" % self.errors)
        lines.append("  duration=%.3f s" % (self.duration or 0.0))
        return "\n".join(lines)


_reactor_thread = None


def ensure_reactor():
    global _reactor_thread
    if _reactor_thread is None:
        _reactor_thread = threading.Thread(target=reactor.run,
                                           kwargs={"installSignalHandlers": False},
                                           name="twisted-reactor", daemon=True)
        _reactor_thread.start()


def stop_reactor():
    if _reactor_thread is not None and reactor.running:
        reactor.callFromThread(reactor.stop)
        _reactor_thread.join(5)


def run_case(case, port):
    run = CaseRun(case, port)
    reactor.callFromThread(run.start)
    if not run.done.wait(case.timeout):
        reactor.callFromThread(run.abort)
        if not run.done.wait(5):
            run.errors.append("case did not finish after abort")
            run.behavior = FAILED
    return run


# ---------------------------------------------------------------------------------------------
# The cases.

CASES = []


def add(*args, **kwargs):
    case = Case(*args, **kwargs)
    assert all(c.cid != case.cid for c in CASES), case.cid
    CASES.append(case)
    return case


def wrong_code_fails(run):
    """Group 7 rule: a wrong close code fails the case outright."""
    if run.behavior_close == WRONG_CODE:
        run.behavior = FAILED


def informational(run):
    run.behavior = INFORMATIONAL
    run.behavior_close = INFORMATIONAL


# ---- 1: framing ----

def _group1():
    sizes = [(0, None), (125, None), (126, None), (127, None), (128, None), (65535, None),
             (65536, None), (65536, 997)]
    for sub, opcode, fill, kind in ((1, 1, b"*", "text"), (2, 2, b"\xfe", "binary")):
        for i, (n, chop) in enumerate(sizes, 1):
            payload = fill * n

            def start(run, opcode=opcode, payload=payload, chop=chop):
                run.p.sendFrame(opcode=opcode, payload=payload, chopsize=chop)
                run.kill_after(10)
            add("1.%d.%d" % (sub, i),
                "send %s message with payload length %d%s" % (
                    kind, n, " in chops of %d octets" % chop if chop else ""),
                start, {OK: [msg(payload, opcode == 2)]}, CLOSE_NORMAL)


# ---- 2: ping/pong ----

def _group2():
    def ping_case(cid, desc, payload, chop=None):
        def start(run):
            run.p.sendFrame(opcode=9, payload=payload, chopsize=chop)
            run.kill_after(KILL_AFTER)
        add(cid, desc, start, {OK: [pong(payload)]}, CLOSE_NORMAL)

    ping_case("2.1", "ping without payload", b"")
    ping_case("2.2", "ping with small text payload", b"Hello, world!")
    ping_case("2.3", "ping with small binary payload", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")
    ping_case("2.4", "ping with 125 octets binary payload", b"\xfe" * 125)

    def start_2_5(run):
        run.p.sendFrame(opcode=9, payload=b"\xfe" * 126)
        run.kill_after(KILL_AFTER)
    add("2.5", "ping with 126 octets payload (too long for a control frame)", start_2_5,
        {OK: []}, fail_close(1002))

    ping_case("2.6", "ping with 125 octets payload, sent in octet-wise chops", b"\xfe" * 125,
              chop=1)

    def start_2_7(run):
        run.p.sendFrame(opcode=10)
        run.close_after(CLOSE_AFTER)
    add("2.7", "unsolicited pong without payload", start_2_7, {OK: []}, CLOSE_NORMAL)

    def start_2_8(run):
        run.p.sendFrame(opcode=10, payload=b"unsolicited pong payload")
        run.close_after(CLOSE_AFTER)
    add("2.8", "unsolicited pong with payload", start_2_8, {OK: []}, CLOSE_NORMAL)

    def start_2_9(run):
        run.p.sendFrame(opcode=10, payload=b"unsolicited pong payload")
        run.p.sendFrame(opcode=9, payload=b"ping payload")
        run.close_after(2.0)
    add("2.9", "unsolicited pong, then ping", start_2_9, {OK: [pong(b"ping payload")]},
        CLOSE_NORMAL)

    for cid, chop in (("2.10", None), ("2.11", 1)):
        def start(run, chop=chop):
            for i in range(10):
                run.p.sendFrame(opcode=9, payload=b"payload-%d" % i, chopsize=chop)
            run.close_after(3.0)
        add(cid, "10 pings with payload%s" % (" in octet-wise chops" if chop else ""), start,
            {OK: [pong(b"payload-%d" % i) for i in range(10)]}, CLOSE_NORMAL)


# ---- 3: reserved bits ----

def _group3():
    hello = b"Hello, world!"

    def start_3_1(run):
        run.p.sendFrame(opcode=1, payload=hello, rsv=1)
        run.kill_after(KILL_AFTER)
    add("3.1", "text message with RSV = 1", start_3_1, {OK: []}, fail_close(1002))

    for cid, rsv, how in (("3.2", 2, {}), ("3.3", 3, {"sync": True}), ("3.4", 4, {"chopsize": 1})):
        def start(run, rsv=rsv, how=how):
            run.p.sendFrame(opcode=1, payload=hello, **how)
            run.p.sendFrame(opcode=1, payload=hello, rsv=rsv, **how)
            run.p.sendFrame(opcode=9, **how)
            run.kill_after(KILL_AFTER)
        add(cid, "text message, then text message with RSV = %d, then ping (%s)" % (
            rsv, "one chop" if not how else "sync" if "sync" in how else "octet-wise"), start,
            {OK: [msg(hello)], NON_STRICT: []}, fail_close(1002))

    def start_3_5(run):
        run.p.sendFrame(opcode=2, payload=b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", rsv=5)
        run.kill_after(KILL_AFTER)
    add("3.5", "binary message with RSV = 5", start_3_5, {OK: []}, fail_close(1002))

    def start_3_6(run):
        run.p.sendFrame(opcode=9, payload=hello, rsv=6)
        run.kill_after(KILL_AFTER)
    add("3.6", "ping with RSV = 6", start_3_6, {OK: []}, fail_close(1002))

    def start_3_7(run):
        run.p.sendFrame(opcode=8, payload=b"\x03\xe8", rsv=7)
        run.kill_after(KILL_AFTER)
    add("3.7", "close with RSV = 7", start_3_7, {OK: []}, fail_close(1002))


# ---- 4: opcodes ----

def _group4():
    hello = b"Hello, world!"
    reserved = b"reserved opcode payload"
    for sub, opcodes in ((1, (3, 4, 5, 6, 7)), (2, (11, 12, 13, 14, 15))):
        kind = "non-control" if sub == 1 else "control"
        op1, op2, op3, op4, op5 = opcodes

        def start_a(run, op=op1):
            run.p.sendFrame(opcode=op)
            run.kill_after(KILL_AFTER)
        add("4.%d.1" % sub, "reserved %s opcode %d" % (kind, op1), start_a, {OK: []},
            fail_close(1002))

        def start_b(run, op=op2):
            run.p.sendFrame(opcode=op, payload=reserved)
            run.kill_after(KILL_AFTER)
        add("4.%d.2" % sub, "reserved %s opcode %d with payload" % (kind, op2), start_b,
            {OK: []}, fail_close(1002))

        for n, op, payload, how in ((3, op3, b"", {}), (4, op4, reserved, {}),
                                    (5, op5, reserved, {"chopsize": 1})):
            def start(run, op=op, payload=payload, how=how):
                run.p.sendFrame(opcode=1, payload=hello, **how)
                run.p.sendFrame(opcode=op, payload=payload, **how)
                run.p.sendFrame(opcode=9, **how)
                run.kill_after(KILL_AFTER)
            add("4.%d.%d" % (sub, n), "text message, reserved %s opcode %d%s, then ping%s" % (
                kind, op, " with payload" if payload else "",
                " (octet-wise chops)" if how else ""),
                start, {OK: [msg(hello)], NON_STRICT: []}, fail_close(1002))


# ---- 5: fragmentation ----

def _group5():
    def start_5_1(run):
        run.p.sendFrame(opcode=9, fin=False, payload=b"fragment1")
        run.p.sendFrame(opcode=0, fin=True, payload=b"fragment2")
        run.kill_after(KILL_AFTER)
    add("5.1", "ping fragmented into 2 fragments", start_5_1, {OK: []}, fail_close(1002))

    def start_5_2(run):
        run.p.sendFrame(opcode=10, fin=False, payload=b"fragment1")
        run.p.sendFrame(opcode=0, fin=True, payload=b"fragment2")
        run.kill_after(KILL_AFTER)
    add("5.2", "pong fragmented into 2 fragments", start_5_2, {OK: []}, fail_close(1002))

    modes = (("in one chop", {}), ("in frame-wise chops", {"sync": True}),
             ("in octet-wise chops", {"chopsize": 1}))
    for n, (how_desc, how) in enumerate(modes, 3):
        def start(run, how=how):
            run.p.sendFrame(opcode=1, fin=False, payload=b"fragment1", **how)
            run.p.sendFrame(opcode=0, fin=True, payload=b"fragment2", **how)
            run.kill_after(KILL_AFTER)
        add("5.%d" % n, "text message in 2 fragments, %s" % how_desc, start,
            {OK: [msg(b"fragment1fragment2")]}, CLOSE_NORMAL)
    for n, (how_desc, how) in enumerate(modes, 6):
        def start(run, how=how):
            run.p.sendFrame(opcode=1, fin=False, payload=b"fragment1", **how)
            run.p.sendFrame(opcode=9, fin=True, payload=b"ping payload", **how)
            run.p.sendFrame(opcode=0, fin=True, payload=b"fragment2", **how)
            run.kill_after(KILL_AFTER)
        add("5.%d" % n, "text message in 2 fragments with a ping in between, %s" % how_desc,
            start, {OK: [pong(b"ping payload"), msg(b"fragment1fragment2")]}, CLOSE_NORMAL)
    for base, fin in ((9, True), (12, False)):
        for n, (how_desc, how) in enumerate(modes, base):
            def start(run, how=how, fin=fin):
                run.p.sendFrame(opcode=0, fin=fin, payload=b"non-continuation payload", **how)
                run.p.sendFrame(opcode=1, fin=True, payload=b"Hello, world!", **how)
                run.kill_after(KILL_AFTER)
            add("5.%d" % n, "continuation frame with FIN = %s and nothing to continue, then "
                "text message, %s" % (fin, how_desc), start, {OK: []}, fail_close(1002))

    def start_5_15(run):
        run.p.sendFrame(opcode=1, fin=False, payload=b"fragment1")
        run.p.sendFrame(opcode=0, fin=True, payload=b"fragment2")
        run.p.sendFrame(opcode=0, fin=False, payload=b"fragment3")
        run.p.sendFrame(opcode=1, fin=True, payload=b"fragment4")
        run.kill_after(KILL_AFTER)
    add("5.15", "text in 2 fragments, then continuation with FIN = false and nothing to "
        "continue, then text", start_5_15,
        {OK: [msg(b"fragment1fragment2")], NON_STRICT: []}, fail_close(1002))

    for cid, first_fin in (("5.16", False), ("5.17", True)):
        def start(run, first_fin=first_fin):
            for _ in range(2):
                run.p.sendFrame(opcode=0, fin=first_fin, payload=b"fragment1")
                run.p.sendFrame(opcode=1, fin=False, payload=b"fragment2")
                run.p.sendFrame(opcode=0, fin=True, payload=b"fragment3")
            run.kill_after(KILL_AFTER)
        add(cid, "repeated 2x: continuation with FIN = %s (nothing to continue), then text in "
            "2 fragments" % first_fin, start, {OK: []}, fail_close(1002))

    def start_5_18(run):
        run.p.sendFrame(opcode=1, fin=False, payload=b"fragment1")
        run.p.sendFrame(opcode=1, fin=True, payload=b"fragment2")
        run.kill_after(KILL_AFTER)
    add("5.18", "text in 2 fragments, both with the text opcode", start_5_18, {OK: []},
        fail_close(1002))

    frags = [b"fragment1", b"fragment2", b"fragment3", b"fragment4", b"fragment5"]
    pings = [b"pongme 1!", b"pongme 2!"]
    for cid, sync in (("5.19", False), ("5.20", True)):
        def start(run, sync=sync):
            run.p.sendFrame(opcode=1, fin=False, payload=frags[0], sync=sync)
            run.p.sendFrame(opcode=0, fin=False, payload=frags[1], sync=sync)
            run.p.sendFrame(opcode=9, fin=True, payload=pings[0], sync=sync)

            def part2():
                if not run.is_open():
                    return
                run.p.sendFrame(opcode=0, fin=False, payload=frags[2], sync=sync)
                run.p.sendFrame(opcode=0, fin=False, payload=frags[3], sync=sync)
                run.p.sendFrame(opcode=9, fin=True, payload=pings[1], sync=sync)
                run.p.sendFrame(opcode=0, fin=True, payload=frags[4], sync=sync)
                run.close_after(2.0)
            run.continue_later(PART_WAIT, part2)
        add(cid, "text in 5 fragments with 2 pings in between and a wait%s" % (
            ", frame-wise" if sync else ""), start,
            {OK: [pong(pings[0]), pong(pings[1]), msg(b"".join(frags))]}, CLOSE_NORMAL)


# ---- 6: UTF-8 ----

KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"  # "kosme" in Greek, 5 code points


def utf8_sequences():
    """[(category, [(valid, bytes), ...]), ...]: the 6.5 - 6.23 table (after the classic UTF-8
    decoder stress test)."""
    cats = []
    cats.append(("Some valid UTF-8 sequences", [
        (True, b"hello\x24world"), (True, b"hello\xc2\xa2world"),
        (True, b"hello\xe2\x82\xacworld"), (True, b"hello\xf0\xa4\xad\xa2world"),
        (True, KOSME)]))
    boundaries = {2, 5, 7, 9, 11}
    cats.append(("All prefixes of a valid UTF-8 string with multi-byte code points",
                 [(i in boundaries, KOSME[:i]) for i in range(1, len(KOSME) + 1)]))
    cats.append(("First possible sequence of a certain length", [
        (True, b"\x00"), (True, b"\xc2\x80"), (True, b"\xe0\xa0\x80"),
        (True, b"\xf0\x90\x80\x80")]))
    cats.append(("First possible sequence length 5/6 (invalid code points)", [
        (False, b"\xf8\x88\x80\x80\x80"), (False, b"\xfc\x84\x80\x80\x80\x80")]))
    cats.append(("Last possible sequence of a certain length", [
        (True, b"\x7f"), (True, b"\xdf\xbf"), (True, b"\xef\xbf\xbf"),
        (True, b"\xf4\x8f\xbf\xbf")]))
    cats.append(("Last possible sequence length 4/5/6 (invalid code points)", [
        (False, b"\xf7\xbf\xbf\xbf"), (False, b"\xfb\xbf\xbf\xbf\xbf"),
        (False, b"\xfd\xbf\xbf\xbf\xbf\xbf")]))
    cats.append(("Other boundary conditions", [
        (True, b"\xed\x9f\xbf"), (True, b"\xee\x80\x80"), (True, b"\xef\xbf\xbd"),
        (True, b"\xf4\x8f\xbf\xbf"), (False, b"\xf4\x90\x80\x80")]))
    cont = [(False, b"\x80"), (False, b"\xbf"), (False, b"\x80\xbf"), (False, b"\x80\xbf\x80"),
            (False, b"\x80\xbf\x80\xbf"), (False, b"\x80\xbf\x80\xbf\x80"),
            (False, b"\x80\xbf\x80\xbf\x80\xbf"), (False, bytes(range(0x80, 0xbf)))]
    cats.append(("Unexpected continuation bytes", cont))
    lonely = []
    for lo, hi in ((0xc0, 0xdf), (0xe0, 0xef), (0xf0, 0xf7), (0xf8, 0xfb), (0xfc, 0xfd)):
        lonely.append((False, b"".join(bytes([c, 0x20]) for c in range(lo, hi))))
    cats.append(("Lonely start characters", lonely))
    missing = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80",
               b"\xfc\x80\x80\x80\x80", b"\xdf", b"\xef\xbf", b"\xf7\xbf\xbf",
               b"\xfb\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf"]
    cats.append(("Sequences with last continuation byte missing", [(False, s) for s in missing]))
    cats.append(("Concatenation of incomplete sequences", [(False, b"".join(missing))]))
    cats.append(("Impossible bytes", [(False, b"\xfe"), (False, b"\xff"),
                                      (False, b"\xfe\xfe\xff\xff")]))
    cats.append(("Examples of an overlong ASCII character", [
        (False, b"\xc0\xaf"), (False, b"\xe0\x80\xaf"), (False, b"\xf0\x80\x80\xaf"),
        (False, b"\xf8\x80\x80\x80\xaf"), (False, b"\xfc\x80\x80\x80\x80\xaf")]))
    cats.append(("Maximum overlong sequences", [
        (False, b"\xc1\xbf"), (False, b"\xe0\x9f\xbf"), (False, b"\xf0\x8f\xbf\xbf"),
        (False, b"\xf8\x87\xbf\xbf\xbf"), (False, b"\xfc\x83\xbf\xbf\xbf\xbf")]))
    cats.append(("Overlong representation of the NUL character", [
        (False, b"\xc0\x80"), (False, b"\xe0\x80\x80"), (False, b"\xf0\x80\x80\x80"),
        (False, b"\xf8\x80\x80\x80\x80"), (False, b"\xfc\x80\x80\x80\x80\x80")]))
    cats.append(("Single UTF-16 surrogates", [(False, s) for s in (
        b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf", b"\xed\xb0\x80",
        b"\xed\xbe\x80", b"\xed\xbf\xbf")]))
    highs = [b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf"]
    lows = [b"\xed\xb0\x80", b"\xed\xbf\xbf"]
    cats.append(("Paired UTF-16 surrogates", [(False, h + lo) for h in highs for lo in lows]))
    nonchars = [(True, b"\xef\xbf\xbe"), (True, b"\xef\xbf\xbf")]
    for z1 in (0xf0, 0xf1, 0xf2, 0xf3, 0xf4):
        for z2 in (0x8f, 0x9f, 0xaf, 0xbf):
            if z1 == 0xf4 and z2 != 0x8f:
                continue  # beyond U+10FFFF
            for z3 in (0xbe, 0xbf):
                seq = bytes([z1, z2, 0xbf, z3])
                if seq in (b"\xf0\x8f\xbf\xbe", b"\xf0\x8f\xbf\xbf"):
                    continue  # overlong
                nonchars.append((True, seq))
    cats.append(("Non-character code points (valid UTF-8)", nonchars))
    cats.append(("Unicode specials", [(True, bytes([0xef, 0xbf, c]))
                                      for c in (0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf)]))
    return cats


def _group6():
    def echo_case(cid, desc, send, payload):
        def start(run):
            send(run)
            run.kill_after(KILL_AFTER)
        add(cid, desc, start, {OK: [msg(payload)]}, CLOSE_NORMAL)

    echo_case("6.1.1", "empty text message",
              lambda run: run.p.sendFrame(opcode=1, payload=b""), b"")

    def send_6_1_2(run):
        run.p.sendFrame(opcode=1, fin=False, payload=b"")
        run.p.sendFrame(opcode=0, fin=False, payload=b"")
        run.p.sendFrame(opcode=0, fin=True, payload=b"")
    echo_case("6.1.2", "empty text message in 3 empty fragments", send_6_1_2, b"")

    def send_6_1_3(run):
        run.p.sendFrame(opcode=1, fin=False, payload=b"")
        run.p.sendFrame(opcode=0, fin=False, payload=b"middle frame payload")
        run.p.sendFrame(opcode=0, fin=True, payload=b"")
    echo_case("6.1.3", "text message in 3 fragments, first and last empty", send_6_1_3,
              b"middle frame payload")

    hello = "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!".encode()
    echo_case("6.2.1", "valid UTF-8 text in one fragment",
              lambda run: run.p.sendMessage(hello), hello)
    cut = len("Hello-\u00b5@\u00df\u00f6\u00e4".encode())

    def send_6_2_2(run):
        run.p.sendFrame(opcode=1, fin=False, payload=hello[:cut])
        run.p.sendFrame(opcode=0, fin=True, payload=hello[cut:])
    echo_case("6.2.2", "valid UTF-8 text in 2 fragments split on a code point boundary",
              send_6_2_2, hello)
    echo_case("6.2.3", "valid UTF-8 text in 1-octet fragments",
              lambda run: run.p.sendMessage(hello, fragmentSize=1), hello)
    echo_case("6.2.4", "valid UTF-8 text (multi-byte only) in 1-octet fragments",
              lambda run: run.p.sendMessage(KOSME, fragmentSize=1), KOSME)

    bad = KOSME + b"\xed\xa0\x80" + b"edited"

    def start_6_3_1(run):
        run.p.sendMessage(bad)
        run.kill_after(KILL_AFTER)
    add("6.3.1", "invalid UTF-8 text in one fragment", start_6_3_1, {OK: []},
        fail_close(1007))

    def start_6_3_2(run):
        run.p.sendMessage(bad, fragmentSize=1)
        run.kill_after(KILL_AFTER)
    add("6.3.2", "invalid UTF-8 text in 1-octet fragments", start_6_3_2, {OK: []},
        fail_close(1007))

    # Fail-fast: the server should fail the connection as soon as the text becomes invalid,
    # not only when the message ends.
    part1, part2, part3 = KOSME, b"\xf4\x90\x80\x80", b"edited"
    full = part1 + part2 + part3
    splits = {"6.4.1": (part1, part2, part3), "6.4.2": (full[:12], full[12:13], full[13:])}
    fail_fast = {OK: [("timeout", "A")], NON_STRICT: [("timeout", "A"), ("timeout", "B")]}
    for cid, (p1, p2, p3) in splits.items():
        def start(run, p1=p1, p2=p2, p3=p3):
            run.p.sendFrame(opcode=1, fin=False, payload=p1)

            def second():
                if run.is_open():
                    run.received.append(("timeout", "A"))
                    run.p.sendFrame(opcode=0, fin=False, payload=p2)
                    run.continue_later(PART_WAIT, third)

            def third():
                if run.is_open():
                    run.received.append(("timeout", "B"))
                    run.p.sendFrame(opcode=0, fin=True, payload=p3)
                    run.kill_after(KILL_AFTER)
            run.continue_later(PART_WAIT, second)
        add(cid, "invalid UTF-8 text in 3 fragments, the 2nd makes it invalid (fail fast)",
            start, dict(fail_fast), fail_close(1007))
    for cid, src in (("6.4.3", "6.4.1"), ("6.4.4", "6.4.2")):
        p1, p2, p3 = splits[src]

        def start(run, p1=p1, p2=p2, p3=p3):
            run.p.beginMessage()
            run.p.beginMessageFrame(len(full))
            run.p.sendMessageFrameData(p1)

            def second():
                if run.is_open():
                    run.received.append(("timeout", "A"))
                    run.p.sendMessageFrameData(p2)
                    run.continue_later(PART_WAIT, third)

            def third():
                if run.is_open():
                    run.received.append(("timeout", "B"))
                    run.p.sendMessageFrameData(p3)
                    run.p.endMessage()
                    run.kill_after(KILL_AFTER)
            run.continue_later(PART_WAIT, second)
        add(cid, "as %s, but the 3 parts are chops of one frame (fail fast)" % src, start,
            dict(fail_fast), fail_close(1007))

    for i, (category, seqs) in enumerate(utf8_sequences(), 5):
        for j, (valid, payload) in enumerate(seqs, 1):
            def start(run, payload=payload):
                run.p.sendMessage(payload)
                run.kill_after(0.5 if not valid else KILL_AFTER)
            desc = "%s: %s UTF-8 payload 0x%s" % (category, "valid" if valid else "invalid",
                                                   payload.hex())
            if valid:
                add("6.%d.%d" % (i, j), desc, start, {OK: [msg(payload)]}, CLOSE_NORMAL)
            else:
                add("6.%d.%d" % (i, j), desc, start, {OK: []}, fail_close(1007))


# ---- 7: close handshake ----

def _group7():
    def close_case(cid, desc, send, expected, codes, require_clean=True, post=wrong_code_fails,
                   suppress_close=True):
        def start(run):
            send(run)
            run.kill_after(KILL_AFTER)
        add(cid, desc, start, expected,
            {"closed_by_me": True, "codes": codes, "require_clean": require_clean},
            suppress_close=suppress_close, post=post)

    close_case("7.1.1", "text message, then close once it is echoed",
               lambda run: run.p.sendFrame(opcode=1, payload=b"Hello World!"),
               {OK: [msg(b"Hello World!")]}, [1000], suppress_close=False)

    def s_7_1_2(run):
        run.p.sendClose(1000)
        run.p.sendFrame(opcode=8)
    close_case("7.1.2", "two close frames", s_7_1_2, {OK: []}, [1000])

    def s_7_1_3(run):
        run.p.sendClose(1000)
        run.p.sendFrame(opcode=9)
    close_case("7.1.3", "ping after close", s_7_1_3, {OK: []}, [1000])

    def s_7_1_4(run):
        run.p.sendClose(1000)
        run.p.sendFrame(opcode=1, payload=b"Hello World!")
    close_case("7.1.4", "text message after close", s_7_1_4, {OK: []}, [1000])

    def s_7_1_5(run):
        run.p.sendFrame(opcode=1, fin=False, payload=b"fragment1")
        run.p.sendClose(1000)
        run.p.sendFrame(opcode=0, fin=True, payload=b"fragment2")
    close_case("7.1.5", "message fragment, close, then the last fragment", s_7_1_5, {OK: []},
               [1000])

    def s_7_1_6(run):
        run.p.sendFrame(opcode=1, payload=b"BAsd7&jh23", payload_len=256 * 1024)
        run.p.sendFrame(opcode=1, payload=b"Hello World!")
        run.p.sendClose(1000)
        run.p.sendFrame(opcode=9)

    def post_7_1_6(run):
        # Informational, but the echo of the first (256 KiB) message must be exact if present.
        informational(run)
    close_case("7.1.6", "256 KiB message, text, close, ping (informational)", s_7_1_6,
               {OK: [msg((b"BAsd7&jh23" * (256 * 1024 // 10 + 1))[:256 * 1024]),
                     msg(b"Hello World!")],
                NON_STRICT: []}, [1000], post=post_7_1_6)

    close_case("7.3.1", "close with empty payload", lambda run: run.p.sendCloseFrame(),
               {OK: []}, [1000])
    close_case("7.3.2", "close with 1-octet payload",
               lambda run: run.p.sendCloseFrame(reasonUtf8=b"a"), {OK: []}, [1002],
               require_clean=False)
    close_case("7.3.3", "close with code 1000, no reason",
               lambda run: run.p.sendCloseFrame(1000), {OK: []}, [1000])
    close_case("7.3.4", "close with code 1000 and a reason",
               lambda run: run.p.sendCloseFrame(1000, reasonUtf8=b"Hello World!"), {OK: []},
               [1000])
    close_case("7.3.5", "close with code 1000 and a 123-octet reason",
               lambda run: run.p.sendCloseFrame(1000, reasonUtf8=b"*" * 123), {OK: []}, [1000])
    close_case("7.3.6", "close with code 1000 and a 124-octet reason (payload 126 octets)",
               lambda run: run.p.sendCloseFrame(1000, reasonUtf8=b"*" * 124), {OK: []}, [1002],
               require_clean=False)
    close_case("7.5.1", "close with an invalid UTF-8 reason",
               lambda run: run.p.sendCloseFrame(
                   1000, reasonUtf8=KOSME + b"\xed\xa0\x80" + b"edited"),
               {OK: []}, [1002, 1007], require_clean=False)
    for i, code in enumerate([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999,
                              4000, 4999], 1):
        close_case("7.7.%d" % i, "close with valid code %d" % code,
                   lambda run, code=code: run.p.sendCloseFrame(code), {OK: []}, [1000, code])
    for i, code in enumerate([0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999], 1):
        close_case("7.9.%d" % i, "close with invalid code %d" % code,
                   lambda run, code=code: run.p.sendCloseFrame(code), {OK: []}, [1002],
                   require_clean=False)
    for i, code in enumerate([5000, 65535], 1):
        close_case("7.13.%d" % i, "close with code %d (informational)" % code,
                   lambda run, code=code: run.p.sendCloseFrame(code), {OK: []},
                   [1000, code, 1002], require_clean=False, post=informational)


# ---- 9: limits and performance ----

KIB, MIB = 1024, 1024 * 1024


def _group9():
    def big_case(cid, desc, size, binary, send, timeout=90.0):
        # Payloads are built per run so that the suite does not hold ~70 MB of them.
        def payload():
            return (b"\xfe" if binary else b"*") * size

        def start(run):
            send(run, run.expected[OK][0][1])
            run.kill_after(timeout - 5)
        add(cid, desc, start, lambda: {OK: [msg(payload(), binary)]}, CLOSE_NORMAL,
            timeout=timeout, options={"utf8validateIncoming": False})

    sizes = [64 * KIB, 256 * KIB, MIB, 4 * MIB, 8 * MIB, 16 * MIB]
    for sub, binary in ((1, False), (2, True)):
        for i, n in enumerate(sizes, 1):
            assert n <= MAX_MESSAGE_BYTES
            big_case("9.%d.%d" % (sub, i), "%s message of %d octets" % (
                "binary" if binary else "text", n), n, binary,
                lambda run, payload, binary=binary: run.p.sendMessage(payload, binary))
    frag_sizes = [64, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB]
    for sub, binary in ((3, False), (4, True)):
        for i, fs in enumerate(frag_sizes, 1):
            big_case("9.%d.%d" % (sub, i), "%s message of 4 MiB in fragments of %d octets" % (
                "binary" if binary else "text", fs), 4 * MIB, binary,
                lambda run, payload, binary=binary, fs=fs:
                    run.p.sendMessage(payload, binary, fragmentSize=fs))
    for sub, binary in ((5, False), (6, True)):
        for i, chop in enumerate([64, 128, 256, 512, 1024, 2048], 1):
            big_case("9.%d.%d" % (sub, i), "%s message of 1 MiB in chops of %d octets" % (
                "binary" if binary else "text", chop), MIB, binary,
                lambda run, payload, binary=binary, chop=chop:
                    run.p.sendFrame(opcode=2 if binary else 1, payload=payload, chopsize=chop))
    for sub, binary in ((7, False), (8, True)):
        for i, n in enumerate([0, 16, 64, 256, 1024, 4096], 1):
            payload = (b"\xfe" if binary else b"*") * n
            count = 1000

            def start(run, payload=payload, binary=binary, count=count):
                run.state["left"] = count
                run.p.sendMessage(payload, binary)
                run.kill_after(55)

            def on_record(run, payload=payload, binary=binary, count=count):
                # Round trip: send the next message when the echo arrives; anything else ends
                # the case (and fails it).
                if not run.is_open():
                    return
                if run.received[-1] == msg(payload, binary):
                    run.received.pop()
                    run.state["left"] -= 1
                    if run.state["left"] == 0:
                        run.received.append(("echoed", count))
                        run.p.sendClose(1000)
                    else:
                        run.p.sendMessage(payload, binary)
                else:
                    run.p.sendClose(1000)
            add("9.%d.%d" % (sub, i), "%d %s messages of %d octets, one at a time" % (
                count, "binary" if binary else "text", n), start, {OK: [("echoed", count)]},
                CLOSE_NORMAL, timeout=60.0, suppress_close=True, on_record=on_record)


# ---- 10: miscellaneous ----

def _group10():
    payload = b"*" * 65536

    def start(run):
        run.p.sendMessage(payload)
        run.kill_after(10)
    add("10.1.1", "65536-octet text message auto-fragmented in 1300-octet frames", start,
        {OK: [msg(payload)]}, CLOSE_NORMAL, options={"autoFragmentSize": 1300})


_group1()
_group2()
_group3()
_group4()
_group5()
_group6()
_group7()
_group9()
_group10()


# ---- x: checks beyond the Autobahn groups (frame header and size limits) ----

def _extra():
    def start_x_1(run):
        run.p.sendFrame(opcode=1, payload=b"Hello, world!")
        run.kill_after(KILL_AFTER)
    add("x.1", "unmasked text frame from the client (RFC 6455 5.1: the server must fail)",
        start_x_1, {OK: []}, fail_close(1002), options={"maskClientFrames": False})

    def start_x_2(run):
        # 64-bit length with the most significant bit set (must be 0).
        run.p.sendData(bytes([0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 5]) + b"\x00" * 4 +
                       b"hello")
        run.kill_after(KILL_AFTER)
    add("x.2", "frame whose 64-bit length has the most significant bit set", start_x_2,
        {OK: []}, fail_close(1002, 1009))

    def start_x_3(run):
        # Only the header of a 1 TiB frame: the server must refuse it without waiting for data.
        run.p.sendData(bytes([0x82, 0x80 | 127]) + (1 << 40).to_bytes(8, "big") + b"\x00" * 4)
        run.kill_after(2.0)
    add("x.3", "header of a 1 TiB binary frame (over limits.max_message_bytes)", start_x_3,
        {OK: []}, fail_close(1009))

    def start_x_4(run):
        run.p.sendMessage(b"*" * (MAX_MESSAGE_BYTES + 1))
        run.kill_after(10)
    add("x.4", "text message one octet over limits.max_message_bytes", start_x_4, {OK: []},
        fail_close(1009), options={"utf8validateIncoming": False})

    def start_x_5(run):
        half = MAX_MESSAGE_BYTES // 2 + 1
        run.p.sendFrame(opcode=2, fin=False, payload=b"\xfe" * half)
        run.p.sendFrame(opcode=0, fin=True, payload=b"\xfe" * half)
        run.kill_after(10)
    add("x.5", "binary message in 2 fragments adding up to more than limits.max_message_bytes",
        start_x_5, {OK: []}, fail_close(1009))


_extra()


# ---------------------------------------------------------------------------------------------
# unittest plumbing


class TableSelfCheck(unittest.TestCase):
    """The UTF-8 table's valid/invalid flags agree with a strict decoder."""

    def test_utf8_table_flags(self):
        for category, seqs in utf8_sequences():
            for valid, payload in seqs:
                try:
                    payload.decode("utf-8", "strict")
                    decoded = True
                except UnicodeDecodeError:
                    decoded = False
                self.assertEqual(decoded, valid, "%s: %s" % (category, payload.hex()))

    def test_case_count(self):
        per_group = collections.Counter(c.group for c in CASES)
        self.assertEqual(per_group[1], 16)
        self.assertEqual(per_group[2], 11)
        self.assertEqual(per_group[3], 7)
        self.assertEqual(per_group[4], 10)
        self.assertEqual(per_group[5], 20)
        self.assertEqual(per_group[6], 145)
        self.assertEqual(per_group[7], 37)
        self.assertEqual(per_group[9], 54)
        self.assertEqual(per_group[10], 1)


class ConformanceTest(harness.SharedServerTestCase):
    # Echoing a message queues it whole for sending: the outbound limit must hold the largest
    # echo (and then some), or the server rightly closes with 4008 (slow consumer).
    SERVER_KW = {"echo": True,
                 "extra_args": ["--limits.max_message_bytes=%d" % MAX_MESSAGE_BYTES,
                                "--limits.max_outbound_bytes=%d" % (4 * MAX_MESSAGE_BYTES)]}
    results = collections.OrderedDict()

    @classmethod
    def setUpClass(cls):
        ensure_reactor()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.print_summary()
        finally:
            super().tearDownClass()

    @classmethod
    def print_summary(cls):
        groups = collections.OrderedDict()
        for cid, verdict in cls.results.items():
            groups.setdefault(cid.split(".")[0], collections.Counter())[verdict] += 1
        out = ["", "Conformance summary (cases passed per group):"]
        total_pass = total = 0
        for g, counter in groups.items():
            n = sum(counter.values())
            passed = n - counter[FAILED]
            total_pass += passed
            total += n
            detail = ", ".join("%s %d" % (k, v) for k, v in sorted(counter.items()))
            out.append("  group %2s: %3d/%3d passed  (%s)" % (g, passed, n, detail))
        out.append("  total   : %3d/%3d passed" % (total_pass, total))
        failed = [cid for cid, v in cls.results.items() if v == FAILED]
        if failed:
            out.append("  failed cases: " + " ".join(failed))
        non_strict = [cid for cid, v in cls.results.items() if v == NON_STRICT]
        if non_strict:
            out.append("  non-strict cases: " + " ".join(non_strict))
        sys.stderr.write("\n".join(out) + "\n")
        sys.stderr.flush()

    def check_case(self, case):
        run = run_case(case, self.server.port)
        verdict = run.verdict()
        type(self).results[case.cid] = verdict
        if verdict == FAILED:
            self.fail("Autobahn-style case %s FAILED\n%s" % (case.cid, run.describe()))


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _install_case_methods():
    for case in CASES:
        def test(self, case=case):
            self.check_case(case)
        name = "test_case_%s" % case.cid.replace(".", "_")
        test.__name__ = name
        test.__doc__ = "%s %s" % (case.cid, case.desc)
        setattr(ConformanceTest, name, test)


_install_case_methods()


if __name__ == "__main__":
    try:
        harness.main(sort_key=_natural_key)
    finally:
        stop_reactor()
