#!/usr/bin/python3
"""Group fan-out probe: how fast does one member's message reach every member of a big group?

Starts a Parley server ($PARLEY_BIN or --bin, with a temporary data directory and the rate
limits raised so the sender is not throttled) or uses a running one (--url). Connects
--members users (all online, one WebSocket each, one asyncio loop), creates a group of all of
them, then one member sends --messages messages with at most --window unanswered at a time.

Reports deliveries per second (msg events received by all members / time from the first send
to the last receipt), the time from each send to the last member's receipt (p50/p99/max across
messages), the time to the sender's ok, and whether every member got every message exactly
once. Prints a human summary and one JSON line (the last line of output).

The client runs in one Python process on the same machine: with a small machine the figures
are a lower bound set partly by the client. Needs Debian's python3-websockets (/usr/bin/python3).

  PARLEY_BIN=build/parley tools/fanout_probe.py --members 200 --messages 200 --window 8
  tools/fanout_probe.py --url ws://127.0.0.1:8080/ws --interval-ms 25   (within default limits)
"""

import argparse
import asyncio
import json
import os
import sys
import time

import websockets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


class Member:
    def __init__(self, url, user):
        self.url = url
        self.user = user
        self.ws = None
        self.received = {}  # cmid -> [monotonic arrival times]
        self.group_events = 0
        self.answers = {}  # id -> future
        self.next_id = 1
        self.task = None

    async def connect(self):
        self.ws = await websockets.connect(self.url, ping_interval=None, max_queue=None,
                                           max_size=2 ** 23, open_timeout=15, close_timeout=2)
        self.task = asyncio.get_running_loop().create_task(self.read())
        await self.request({"op": "hello", "user": self.user, "device": "probe"})

    async def read(self):
        try:
            async for raw in self.ws:
                now = time.monotonic()
                obj = json.loads(raw)
                op = obj.get("op")
                if op == "msg":
                    self.received.setdefault(obj["cmid"], []).append(now)
                elif op == "group":
                    self.group_events += 1
                elif op in ("ok", "error") and "id" in obj:
                    fut = self.answers.pop(obj["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result((obj, now))
        except websockets.ConnectionClosed:
            pass

    async def request(self, frame, timeout=30):
        rid = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.answers[rid] = fut
        frame = dict(frame, id=rid)
        await self.ws.send(json.dumps(frame))
        obj, at = await asyncio.wait_for(fut, timeout)
        if obj.get("op") != "ok":
            raise RuntimeError(f"{self.user}: {frame['op']} failed: {obj}")
        return obj, at

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except (asyncio.TimeoutError, OSError):
            pass


async def probe(url, args):
    tag = f"{os.getpid():x}{int(time.time()) % 100000:x}"
    users = [f"fp{tag}-{i:03d}" for i in range(args.members)]
    group = f"fanout-{tag}"
    members = [Member(url, u) for u in users]
    sem = asyncio.Semaphore(50)

    async def connect(m):
        async with sem:
            await m.connect()

    t = time.monotonic()
    await asyncio.gather(*(connect(m) for m in members))
    connect_s = time.monotonic() - t
    sender = members[0]
    await sender.request({"op": "group_create", "group": group, "name": "Fan-out probe",
                          "members": users[1:]})
    deadline = time.monotonic() + 30
    while any(m.group_events == 0 for m in members):
        if time.monotonic() > deadline:
            raise RuntimeError("not every member got the group's created event")
        await asyncio.sleep(0.01)

    sent_at, ok_ms = {}, []
    window = asyncio.Semaphore(args.window)
    body = "x" * args.body_bytes

    async def send_one(i):
        cmid = f"p-{i}"
        async with window:
            sent_at[cmid] = time.monotonic()
            _, at = await sender.request({"op": "send", "group": group, "cmid": cmid,
                                          "body": body})
            ok_ms.append((at - sent_at[cmid]) * 1000)

    first_send = time.monotonic()
    tasks = []
    for i in range(args.messages):
        tasks.append(asyncio.get_running_loop().create_task(send_one(i)))
        if args.interval_ms > 0:
            await asyncio.sleep(args.interval_ms / 1000)
        else:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    expected = args.messages * len(members)
    deadline = time.monotonic() + args.timeout
    while sum(len(m.received) for m in members) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # late duplicates, if any

    last_receipt, missing, duplicates, deliveries, last_any = [], 0, 0, 0, first_send
    for cmid, t0 in sent_at.items():
        latest = None
        for m in members:
            times = m.received.get(cmid)
            if not times:
                missing += 1
                continue
            deliveries += len(times)
            duplicates += len(times) - 1
            latest = times[0] if latest is None else max(latest, times[0])
        if latest is not None:
            last_receipt.append((latest - t0) * 1000)
            last_any = max(last_any, latest)
    elapsed = last_any - first_send
    await asyncio.gather(*(m.close() for m in members))
    r = lambda x: None if x is None else round(x, 2)  # noqa: E731
    return {
        "members": len(members),
        "messages": args.messages,
        "window": args.window,
        "interval_ms": args.interval_ms,
        "body_bytes": args.body_bytes,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "missing": missing,
        "duplicates": duplicates,
        "duration_s": r(elapsed),
        "deliveries_per_sec": r(deliveries / elapsed) if elapsed > 0 else None,
        "send_to_last_receipt_ms": {"p50": r(pct(last_receipt, 50)),
                                    "p99": r(pct(last_receipt, 99)),
                                    "max": r(max(last_receipt) if last_receipt else None)},
        "send_to_ok_ms": {"p50": r(pct(ok_ms, 50)), "p99": r(pct(ok_ms, 99))},
        "connect_s": r(connect_s),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="ws://host:port/ws of a running server (else one is started)")
    ap.add_argument("--bin", default=os.environ.get("PARLEY_BIN"), help="parley binary")
    ap.add_argument("--threads", type=int, default=2, help="server threads (started server)")
    ap.add_argument("--members", type=int, default=200)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--window", type=int, default=8, help="unanswered sends at most")
    ap.add_argument("--interval-ms", type=float, default=0, help="pause between sends")
    ap.add_argument("--body-bytes", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for delivery")
    args = ap.parse_args()

    server = None
    url = args.url
    if url is None:
        if args.bin:
            os.environ["PARLEY_BIN"] = args.bin
        from harness import Server
        server = Server(["--limits.rate_per_sec=100000", "--limits.rate_burst=100000",
                         "--limits.request_rate_per_sec=100000",
                         "--limits.request_rate_burst=100000",
                         f"--limits.max_group_size={max(200, args.members)}"],
                        threads=args.threads).start()
        url = server.ws_url()
    try:
        result = asyncio.run(probe(url, args))
    finally:
        if server is not None:
            rc = server.stop(check=False)
            if rc != 0:
                print(f"server exit status {rc} (None: killed after 5 s):\n{server.log_tail()}",
                      file=sys.stderr)
            server.cleanup()
    if server is not None:
        result["server_threads"] = args.threads
        result["server_exit"] = rc
    lr = result["send_to_last_receipt_ms"]
    print(f"fan-out: {result['members']} members, {result['messages']} messages "
          f"(window {result['window']}, {result['body_bytes']}-byte bodies)")
    print(f"  deliveries: {result['deliveries']} of {result['expected_deliveries']} "
          f"(missing {result['missing']}, duplicates {result['duplicates']}) in "
          f"{result['duration_s']} s = {result['deliveries_per_sec']} deliveries/s")
    print(f"  send -> last member's receipt: p50 {lr['p50']} ms, p99 {lr['p99']} ms, "
          f"max {lr['max']} ms")
    print(f"  send -> ok (durable): p50 {result['send_to_ok_ms']['p50']} ms, "
          f"p99 {result['send_to_ok_ms']['p99']} ms")
    print(json.dumps(result, sort_keys=True))
    ok = result["missing"] == 0 and result["duplicates"] == 0 and result.get("server_exit", 0) == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
