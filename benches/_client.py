"""One measurement in a fresh client process: `python benches/_client.py LIB WORKLOAD BASE_URL [key=value...]`.

Prints one JSON line with the figures (the harness, bench_peers.py, parses the last line). A fresh process per
measurement means each client library is measured alone: its threads, its allocator, its CPU time.
The herd workload is interactive: it prints "ready" once connected and closes everything when stdin ends.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import sys
import time
import tracemalloc

from _libs import open_conn, shutdown, text_of

PAYLOAD = b"x" * 32


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def server_count(c) -> int:
    """How many data messages the /sink server has received, asked in band: the reply covers every message
    sent before the question, whatever the client's send() means by resolving."""
    await c.send_text("count")
    return int(text_of(await c.recv()))


async def echo(lib: str, base: str, n: str = "2000") -> dict:
    n_ = int(n)
    c = await open_conn(lib, base + "/echo")
    send, recv, p = c.send, c.recv, PAYLOAD
    for _ in range(200):
        await send(p)
        await recv()
    lat = []
    clock = time.perf_counter_ns
    for _ in range(n_):
        t0 = clock()
        await send(p)
        await recv()
        lat.append(clock() - t0)
    await c.close()
    return {"p50": pct(lat, 0.5) / 1000, "p99": pct(lat, 0.99) / 1000}


async def send(lib: str, base: str, seconds: str = "1.0") -> dict:
    c = await open_conn(lib, base + "/sink")
    snd, p = c.send, PAYLOAD
    for _ in range(200):
        await snd(p)
    before = await server_count(c)
    t0 = time.perf_counter()
    deadline = t0 + float(seconds)
    sent = 0
    while True:
        for _ in range(64):
            await snd(p)
        sent += 64
        if time.perf_counter() >= deadline:
            break
    t_queued = time.perf_counter()
    if c.flush is not None:
        await c.flush()
    received = await server_count(c) - before
    t1 = time.perf_counter()
    await c.close()
    return {
        "msg_s": received / (t1 - t0),
        "sent": sent,
        "received": received,
        "send_returned_msg_s": sent / (t_queued - t0),
    }


async def paced_sleeps(m: int) -> float:
    """CPU seconds of m steps of 1 ms paced by `asyncio.sleep`, nothing else done."""
    sleep, now = asyncio.sleep, time.monotonic
    cpu0 = time.process_time()
    t0 = now()
    for i in range(1, m + 1):
        delay = t0 + i * 0.001 - now()
        if delay > 0:
            await sleep(delay)
    return time.process_time() - cpu0


async def paced(lib: str, base: str, seconds: str = "3.0") -> dict:
    c = await open_conn(lib, base + "/sink")
    snd, p = c.send, PAYLOAD
    n = int(float(seconds) * 1000)
    before = await server_count(c)
    sleep, now = asyncio.sleep, time.monotonic
    cpu0 = time.process_time()
    t0 = now()
    for i in range(1, n + 1):
        await snd(p)
        delay = t0 + i * 0.001 - now()
        if delay > 0:
            await sleep(delay)
    if c.flush is not None:
        await c.flush()
    received = await server_count(c) - before
    cpu = time.process_time() - cpu0
    wall = now() - t0
    # the same pacing loop without the send, for a quarter of the time: the floor every library pays
    m = n // 4
    floor = await paced_sleeps(m)
    await c.close()
    cpu_us, floor_us = cpu / max(received, 1) * 1e6, floor / max(m, 1) * 1e6
    return {
        "cpu_us": cpu_us,
        "sent": n,
        "received": received,
        "rate": received / wall,
        "loop_floor_us": floor_us,
        "above_floor_us": cpu_us - floor_us,
    }


async def flood(lib: str, base: str, n: str = "100000", size: str = "1024") -> dict:
    n_ = int(n)
    c = await open_conn(lib, base + "/flood")
    t0 = time.perf_counter()
    await c.send_text(f"{n_} {size}")
    got = 0
    async for _ in c.stream:
        got += 1
        if got == n_:
            break
    dt = time.perf_counter() - t0
    await c.close()
    return {"msg_s": got / dt, "received": got}


def signaling_messages(n: int = 64) -> list[str]:
    """n different JSON signaling messages of 2-4 KiB: SDP offers and answers with their ICE candidates, as a
    voice agent's signaling channel carries them (random ids, keys and addresses, so not one repeated text)."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        tok = lambda k: "".join(rng.choice("0123456789abcdef") for _ in range(k))  # noqa: E731
        lines = ["v=0", f"o=- {rng.getrandbits(62)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
        for mid, kind in enumerate(("audio", "video")):
            lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8", f"a=ice-ufrag:{tok(8)}", f"a=ice-pwd:{tok(24)}"]
            lines.append("a=fingerprint:sha-256 " + ":".join(tok(2).upper() for _ in range(32)))
            lines += [f"a=mid:{mid}", "a=sendrecv", f"a=msid:- {tok(36)}", "a=rtcp-mux"]
            lines += [f"a=rtpmap:{pt} {c}" for pt, c in ((111, "opus/48000/2"), (63, "red/48000/2"), (9, "G722/8000"))]
            lines += [f"a=extmap:{e} urn:ietf:params:rtp-hdrext:ext-{e}" for e in range(1, 3 + rng.randrange(9))]
            lines += [f"a=rtcp-fb:{pt} {fb}" for pt in (111, 63, 9) for fb in ("transport-cc", "nack", "nack pli")]
            lines.append(f"a=ssrc:{rng.getrandbits(32)} cname:{tok(16)}")
        candidates = [
            {
                "candidate": f"candidate:{rng.getrandbits(32)} 1 udp {rng.getrandbits(31)} 10.{rng.randrange(256)}."
                f"{rng.randrange(256)}.{rng.randrange(256)} {rng.randrange(1024, 65536)} typ host generation 0",
                "sdpMid": str(rng.randrange(2)),
                "sdpMLineIndex": 0,
            }
            for _ in range(rng.randrange(2, 9))
        ]
        kind = "offer" if i % 2 == 0 else "answer"
        out.append(json.dumps({"id": i, kind: {"type": kind, "sdp": "\r\n".join(lines)}, "candidates": candidates}))
    return out


async def signaling(lib: str, base: str, seconds: str = "1.0") -> dict:
    """Request/response of JSON signaling messages through a server that compresses (permessage-deflate):
    send one, await its echo, repeat; round trips per second and client CPU per round trip."""
    msgs = signaling_messages()
    c = await open_conn(lib, base + "/echo")
    send, recv = c.send_text, c.recv
    for m in msgs:
        await send(m)
        await recv()
    n = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + float(seconds)
    while True:
        for m in msgs[n % 64 : n % 64 + 16]:
            await send(m)
            if text_of(await recv()) != m:
                raise SystemExit("signaling: the echo differs from the message")
        n += 16
        if time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await c.close()
    return {"msg_s": n / wall, "cpu_us": cpu / n * 1e6}


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_many(lib: str, url: str, n: int, batch: int = 100) -> list:
    out = []
    for i in range(0, n, batch):
        out += await asyncio.gather(*(open_conn(lib, url) for _ in range(min(batch, n - i))))
    return out


async def close_all(conns: list) -> None:
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in conns), return_exceptions=True), 30)


async def idle(lib: str, base: str, n: str = "1000") -> dict:
    n_ = int(n)
    raise_fd_limit()
    # one connection first, so the library's one-off costs (runtime, threads, session) are not counted
    warm = await open_conn(lib, base + "/idle")
    await asyncio.sleep(0.2)
    gc.collect()
    rss0, threads0 = rss(), threads()
    conns = await open_many(lib, base + "/idle", n_)
    await asyncio.sleep(0.5)
    gc.collect()
    rss1, threads1 = rss(), threads()
    await close_all([*conns, warm])
    return {"kib": (rss1 - rss0) / n_ / 1024, "threads_before": threads0, "threads_after": threads1}


async def timers(lib: str, base: str, n: str = "200", seconds: str = "2.0") -> dict:
    """What n open, idle connections cost the application's own timers: CPU per `asyncio.sleep` of a
    loop paced at 1 ms (the paced workload's floor) with the library's connections open. A timer a
    connection keeps in asyncio's heap makes each sleep compare against it in Python."""
    n_ = int(n)
    raise_fd_limit()
    conns = await open_many(lib, base + "/idle", n_)
    await asyncio.sleep(0.2)
    m = int(float(seconds) * 1000)
    cpu = await paced_sleeps(m)
    heap = len(asyncio.get_running_loop()._scheduled) if hasattr(asyncio.get_running_loop(), "_scheduled") else -1
    await close_all(conns)
    return {"cpu_us": cpu / m * 1e6, "timers_in_heap": heap}


async def unstarted(lib: str, base: str, n: str = "1000") -> dict:
    """The cost of a `connect()` object that was never started (tether), RSS and Python-heap views."""
    import tether

    n_ = int(n)
    url = base + "/idle"
    keep = [tether.connect(url)]
    gc.collect()
    rss0 = rss()
    keep += [tether.connect(url) for _ in range(n_)]
    gc.collect()
    rss_kib = (rss() - rss0) / n_ / 1024
    tracemalloc.start()
    gc.collect()
    traced0 = tracemalloc.get_traced_memory()[0]
    more = [tether.connect(url) for _ in range(n_)]
    gc.collect()
    traced_kib = (tracemalloc.get_traced_memory()[0] - traced0) / n_ / 1024
    tracemalloc.stop()
    await asyncio.wait_for(asyncio.gather(*(c.aclose() for c in keep + more), return_exceptions=True), 30)
    return {"rss_kib": rss_kib, "traced_kib": traced_kib}


async def herd(lib: str, base: str, n: str = "1000") -> dict:
    """n clients with default settings that stay connected (reconnecting by themselves) until stdin ends."""
    n_ = int(n)
    raise_fd_limit()
    url = base + "/herd"
    loop = asyncio.get_running_loop()
    if lib in ("tether", "tether-metrics"):
        conns = await open_many(lib, url, n_)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        await close_all(conns)
        return {"closed": len(conns)}
    if lib != "websockets":
        raise SystemExit(f"herd: no reconnect loop for {lib}")
    import websockets

    up = 0
    all_up = asyncio.Event()

    async def member() -> None:
        nonlocal up
        first = True
        # websockets' own reconnect loop, as its documentation shows it
        async for ws in websockets.connect(url):
            if first:
                first = False
                up += 1
                if up == n_:
                    all_up.set()
            await ws.wait_closed()

    tasks = [asyncio.ensure_future(member()) for _ in range(n_)]
    await asyncio.wait_for(all_up.wait(), 120)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return {"closed": n_}


WORKLOADS = {f.__name__: f for f in (echo, send, paced, flood, signaling, idle, timers, unstarted, herd)}


async def main() -> None:
    lib, workload, base, *rest = sys.argv[1:]
    kwargs = dict(a.split("=", 1) for a in rest)
    try:
        result = await WORKLOADS[workload](lib, base, **kwargs)
    finally:
        await shutdown()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
