"""tether.connect figures with default settings:

* aclose() right after a send that is not yet confirmed (against the `websockets` server): how long the
  close takes, whether a flush() issued before it resolved, and the close code the server recorded;
* RSS per unstarted ``tether.connect()`` object and per idle connected Connection (server in a separate
  process);
* with ``--escalation SECONDS``: the log/event timeline against a black-holed handshake (a raw server that
  accepts TCP, reads the upgrade request and never answers).

    python benches/bench_connect_close.py [--escalation 65]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import statistics
import subprocess
import sys
import textwrap
import time

import websockets

import tether


async def close_time(n: int = 30) -> None:
    codes, took, confirmed = [], [], 0

    async def handler(ws):
        try:
            async for _ in ws:
                pass
        finally:
            codes.append(ws.close_code)

    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"
        for _ in range(n):
            conn = await tether.connect(url)
            conn.send("x" * 100)
            flushed = conn.flush()
            t0 = time.perf_counter()
            await conn.aclose()
            took.append(time.perf_counter() - t0)
            try:
                await flushed
                confirmed += 1
            except tether.TetherError:
                pass
        await asyncio.sleep(0.2)
    ms = sorted(t * 1000 for t in took)
    print(
        f"aclose() with an unconfirmed send ({n} runs): min {ms[0]:.2f} ms, median {statistics.median(ms):.2f} ms, "
        f"max {ms[-1]:.2f} ms (bound: close_timeout 2 s); confirmed {confirmed}/{n}; "
        f"server close codes {sorted(set(codes))}"
    )


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


IDLE_SERVER = textwrap.dedent(
    """
    import asyncio, websockets
    async def h(ws):
        await ws.wait_closed()
    async def main():
        async with websockets.serve(h, "127.0.0.1", 0, ping_interval=None) as srv:
            print(srv.sockets[0].getsockname()[1], flush=True)
            await asyncio.sleep(600)
    asyncio.run(main())
    """
)


async def memory(n: int = 500) -> None:
    keep = [tether.connect("ws://127.0.0.1:9/") for _ in range(100)]  # allocator warm-up
    gc.collect()
    base = rss_kib()
    objs = [tether.connect("ws://127.0.0.1:9/") for _ in range(n)]
    gc.collect()
    print(f"unstarted tether.connect(): {(rss_kib() - base) / n:.2f} KiB each ({n} objects)")
    del objs, keep
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * n)), hard))
    srv = await asyncio.create_subprocess_exec(sys.executable, "-c", IDLE_SERVER, stdout=subprocess.PIPE)
    try:
        url = f"ws://127.0.0.1:{int(await srv.stdout.readline())}/"
        warm = await tether.connect(url)
        gc.collect()
        base = rss_kib()
        conns = [await tether.connect(url, ping_interval=30, ping_timeout=30) for _ in range(n)]
        await asyncio.sleep(0.5)
        gc.collect()
        print(f"idle connected Connection: {(rss_kib() - base) / n:.2f} KiB each ({n} connections)")
        await asyncio.gather(*(c.aclose() for c in conns))
        await warm.aclose()
    finally:
        srv.kill()
        await srv.wait()


async def escalation(duration: float) -> None:
    t0 = time.monotonic()

    class Print(logging.Handler):
        def emit(self, r):
            print(f"{time.monotonic() - t0:7.2f}s {r.levelname:7s} {r.name}: {r.getMessage()}", flush=True)

    logging.getLogger("tether").setLevel(logging.DEBUG)
    logging.getLogger("tether").addHandler(Print())
    tether.sync_log_level()
    peers = []

    async def hole(reader, writer):
        peers.append(writer)
        await reader.read(1 << 16)  # the upgrade request, never answered

    srv = await asyncio.start_server(hole, "127.0.0.1", 0)
    conn = tether.connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/")

    async def events():
        async for e in conn.events():
            print(f"{time.monotonic() - t0:7.2f}s EVENT   {e!r}", flush=True)

    watcher = asyncio.ensure_future(events())
    try:
        await asyncio.wait_for(conn._start(), duration)
    except (asyncio.TimeoutError, tether.TetherError) as e:
        print(f"{time.monotonic() - t0:7.2f}s start() ended: {type(e).__name__} {e}")
    await conn.aclose()
    await asyncio.wait_for(watcher, 5)
    for w in peers:
        w.close()
    srv.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--escalation", type=float, default=0.0, help="seconds against a black-holed handshake")
    a = p.parse_args()
    await close_time()
    await memory()
    if a.escalation:
        await escalation(a.escalation)


asyncio.run(main())
