"""tether.connect benchmarks, all on loopback against the embedded SignalServer.

1. Message throughput into asyncio: the server floods N binary messages; the client consumes them with
   `async for`. tether vs the pure-Python `websockets` client on the same server. Goal: >= 2x.
2. Reconnect time after a server-side close (drop without close frame): from the drop to the
   `Reconnected` event seen in Python, and the Rust-side downtime. Goal: p50 <= 5 ms.
3. Black-hole detection (server stops reading: no pongs): time from freeze to `ConnectionLost`, as a
   ratio of the configured ping_interval + ping_timeout (must be <= 1.0).

Run: make bench   (or .venv/bin/python benches/bench_ws.py)
"""

from __future__ import annotations

import asyncio
import statistics
import time

import tether
from tether import events as ev
from tether.testing import SignalServer

N = 200_000
SIZE = 64


async def tether_throughput(srv: SignalServer) -> float:
    async with tether.connect(srv.url, ping_interval=30, ping_timeout=30) as c:
        await srv.wait_for(1)
        t0 = time.perf_counter()
        srv.flood(N, SIZE)
        n = 0
        async for _ in c:
            n += 1
            if n == N:
                break
        return N / (time.perf_counter() - t0)


async def websockets_throughput(srv: SignalServer) -> float | None:
    try:
        import websockets
    except ImportError:
        return None
    async with websockets.connect(srv.url, max_queue=None, ping_interval=None) as ws:
        await srv.wait_for(1)
        t0 = time.perf_counter()
        srv.flood(N, SIZE)
        n = 0
        async for _ in ws:
            n += 1
            if n == N:
                break
        return N / (time.perf_counter() - t0)


async def reconnect_times(srv: SignalServer, rounds: int = 200) -> tuple[list[float], list[float]]:
    seen, downtime = [], []
    # quiet_jitter=0: this measures the reconnect machinery itself. The default spreads the first retry
    # over 1 s on purpose (a fleet dropped together must not come back in one instant: see the herd in
    # bench_peers.py), so with defaults the first reconnect waits uniform(0, 1 s) by design.
    async with tether.connect(srv.url, ping_interval=30, ping_timeout=30, stable_after=0.0, quiet_jitter=0) as c:
        evs = c.events()
        for _ in range(rounds):
            await srv.wait_for(1)
            t0 = time.perf_counter()
            srv.drop()
            while True:
                e = await evs.__anext__()
                if isinstance(e, ev.Reconnected):
                    seen.append((time.perf_counter() - t0) * 1000)
                    downtime.append(e.downtime * 1000)
                    break
    return seen, downtime


async def blackhole_detection(srv: SignalServer, interval: float, timeout: float, rounds: int = 5) -> list[float]:
    out = []
    for _ in range(rounds):
        async with tether.connect(srv.url, ping_interval=interval, ping_timeout=timeout) as c:
            evs = c.events()
            await srv.wait_for(1)
            # freeze at a random phase of the ping cycle
            await asyncio.sleep(interval * (len(out) % 5) / 5)
            t0 = time.perf_counter()
            srv.freeze()
            while True:
                e = await evs.__anext__()
                if isinstance(e, ev.ConnectionLost):
                    out.append(time.perf_counter() - t0)
                    break
            srv.unfreeze()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def main() -> None:
    async with SignalServer() as srv:
        t = max([await tether_throughput(srv) for _ in range(3)])
        w = [await websockets_throughput(srv) for _ in range(3)]
        print(f"throughput, {N} x {SIZE} B messages into asyncio (best of 3):")
        print(f"  tether.connect : {t:12,.0f} msg/s")
        if w[0] is None:
            print("  websockets     : not installed (pip install websockets)")
        else:
            wb = max(w)
            print(f"  websockets     : {wb:12,.0f} msg/s")
            print(f"  ratio          : {t / wb:.2f}x   (goal >= 2x)")

        seen, down = await reconnect_times(srv)
        print(f"reconnect after server drop (quiet_jitter=0), {len(seen)} rounds:")
        print(
            f"  drop -> Reconnected seen in Python: p50 {statistics.median(seen):.2f} ms, p99 {pct(seen, 0.99):.2f} ms"
        )
        print(
            f"  Rust-side downtime (loss -> up)   : p50 {statistics.median(down):.2f} ms, p99 {pct(down, 0.99):.2f} ms"
        )
        print(f"  ratio p50 / 5 ms goal             : {statistics.median(seen) / 5:.2f}   (goal <= 1.0)")

        interval, timeout = 0.2, 0.3
        det = await blackhole_detection(srv, interval, timeout)
        bound = interval + timeout
        print(f"black-hole detection, ping_interval={interval}s ping_timeout={timeout}s, {len(det)} rounds:")
        print(
            f"  detect: min {min(det) * 1000:.0f} ms, median {statistics.median(det) * 1000:.0f} ms, max {max(det) * 1000:.0f} ms"
        )
        print(
            f"  ratio max / (interval + timeout) : {max(det) / bound:.2f}   (goal <= 1.0; floor {timeout / bound:.2f})"
        )


if __name__ == "__main__":
    asyncio.run(main())
