"""What one tether awaitable costs next to a plain asyncio future, and threads with 20,000 pending.

Goal: ≤ 3x a plain asyncio future; threads constant. Baseline: `loop.create_future()`
resolved by `loop.call_soon(fut.set_result, None)` and awaited. Probe: the native SignalServer's
`wait_for`, which stays pending until the server sees a TCP connection:
- resolvable: `wait_for(0, key="handshakes")` holds on the first poll (no tokio thread involved);
- pending: K awaitables completed from tokio's threads by one TCP accept (asyncio.open_connection);
  cost per awaitable = (create and start K + the accept + await all) / K, against K asyncio futures.
  A tether awaitable is a coroutine: it starts (polls its Rust future, and waits) at its first step,
  which `await` takes in `__await__`. To have K waiting at once without K tasks, `await aw` is taken
  in its two halves: `aw.__await__()` for each, then, after the accept, each iterator is driven to its
  result (`yield from`, as `await` does).
- pending in tasks: the same K, each awaited by its own task, against K tasks each awaiting an asyncio
  future: what `gather` or `create_task` per awaitable costs in an application.
Every figure is the median of ROUNDS rounds (min/median/max printed), ratios from the same round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import types

from tether import _native

ROUNDS = 5
N = 20_000  # awaitables per round
GOAL = 3.0
TOKIO_WORKERS = 2  # tether's runtime (src/py/bridge/runtime.rs)


def threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except FileNotFoundError:  # not Linux
        return -1


async def knock(srv) -> None:
    _, w = await asyncio.open_connection(srv.host, srv.port)
    w.close()
    await w.wait_closed()


async def asyncio_one_by_one(n: int) -> float:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for _ in range(n):
        f = loop.create_future()
        loop.call_soon(f.set_result, None)
        await f
    return (time.perf_counter() - t0) / n


async def tether_resolvable(srv, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await srv.wait_for(0, key="handshakes")
    return (time.perf_counter() - t0) / n


async def asyncio_batch(k: int) -> float:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    futs = [loop.create_future() for _ in range(k)]
    for f in futs:
        loop.call_soon(f.set_result, None)
    for f in futs:
        await f
    return (time.perf_counter() - t0) / k


@types.coroutine
def drive(it):
    """The second half of `await aw`: wait on the iterator `aw.__await__()` returned, to its result."""
    return (yield from it)


async def tether_pending_batch(srv, k: int) -> tuple[float, int]:
    target = srv.stats()["tcp_accepts"] + 1
    t0 = time.perf_counter()
    # the first half of `await`: each polls its Rust future once, which waits
    waits = [srv.wait_for(target, timeout=60, key="tcp_accepts").__await__() for _ in range(k)]
    peak = threads()
    await knock(srv)
    for w in waits:
        assert await drive(w) is True
    return (time.perf_counter() - t0) / k, max(peak, threads())


async def _wait(f):
    return await f


async def asyncio_tasks(k: int) -> float:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    futs = [loop.create_future() for _ in range(k)]
    tasks = [asyncio.create_task(_wait(f)) for f in futs]
    await asyncio.sleep(0)  # every task waits on its future
    for f in futs:
        loop.call_soon(f.set_result, True)
    for t in tasks:
        assert await t is True
    return (time.perf_counter() - t0) / k


async def tether_tasks(srv, k: int) -> float:
    target = srv.stats()["tcp_accepts"] + 1
    t0 = time.perf_counter()
    # created straight from the coroutine, which the task steps with send()/__next__
    tasks = [asyncio.create_task(srv.wait_for(target, timeout=60, key="tcp_accepts")) for _ in range(k)]
    await asyncio.sleep(0)  # every task took its first step: K Rust futures wait
    await knock(srv)
    for t in tasks:
        assert await t is True
    return (time.perf_counter() - t0) / k


async def one_pending(srv, n: int = 200) -> tuple[float, float]:
    """p50 of (open_connection alone) and (one pending awaitable completed by that accept)."""
    alone, both = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        await knock(srv)
        alone.append(time.perf_counter() - t0)
        w = srv.wait_for(srv.stats()["tcp_accepts"] + 1, timeout=10, key="tcp_accepts").__await__()
        t0 = time.perf_counter()
        await knock(srv)
        assert await drive(w) is True
        both.append(time.perf_counter() - t0)
    return statistics.median(alone), statistics.median(both)


def line(name: str, xs: list[float]) -> str:
    return (
        f"{name:<44} min {min(xs) * 1e6:7.2f}  median {statistics.median(xs) * 1e6:7.2f}  max {max(xs) * 1e6:7.2f} µs"
    )


async def main() -> None:
    start_threads = threads()
    srv = _native.SignalServer()
    await srv.start()
    try:
        await tether_resolvable(srv, 1000)  # warm up: runtime, completer, caches
        await tether_pending_batch(srv, 1000)
        await tether_tasks(srv, 1000)
        base_threads = threads()
        rows: dict[str, list[float]] = {k: [] for k in ("a1", "t1", "ab", "tb", "at", "tt")}
        r1, rb, rt, peaks = [], [], [], []
        for i in range(ROUNDS):
            # alternate the order so neither side always runs on a warmer cache
            if i % 2:
                t1, a1 = await tether_resolvable(srv, N), await asyncio_one_by_one(N)
                (tb, peak), ab = await tether_pending_batch(srv, N), await asyncio_batch(N)
                tt, at = await tether_tasks(srv, N), await asyncio_tasks(N)
            else:
                a1, t1 = await asyncio_one_by_one(N), await tether_resolvable(srv, N)
                ab, (tb, peak) = await asyncio_batch(N), await tether_pending_batch(srv, N)
                at, tt = await asyncio_tasks(N), await tether_tasks(srv, N)
            for k, v in (("a1", a1), ("t1", t1), ("ab", ab), ("tb", tb), ("at", at), ("tt", tt)):
                rows[k].append(v)
            r1.append(t1 / a1)
            rb.append(tb / ab)
            rt.append(tt / at)
            peaks.append(peak)
            print(
                f"round {i + 1}: resolvable {t1 / a1:5.2f}x, pending {tb / ab:5.2f}x, "
                f"pending in tasks {tt / at:5.2f}x, peak threads {peak}"
            )
        print(line("asyncio future + call_soon, one by one", rows["a1"]))
        print(line("tether awaitable, already resolvable", rows["t1"]))
        print(line(f"asyncio futures, {N:,} resolved by call_soon", rows["ab"]))
        print(line(f"tether, {N:,} pending completed from tokio", rows["tb"]))
        print(line(f"{N:,} tasks awaiting asyncio futures", rows["at"]))
        print(line(f"{N:,} tasks awaiting pending tether awaitables", rows["tt"]))
        m1, mb, mt = statistics.median(r1), statistics.median(rb), statistics.median(rt)
        print(f"ratio resolvable/asyncio: median {m1:.2f}x (goal ≤ {GOAL:.0f}x: {'ok' if m1 <= GOAL else 'MISSED'})")
        print(f"ratio pending/asyncio:    median {mb:.2f}x (goal ≤ {GOAL:.0f}x: {'ok' if mb <= GOAL else 'MISSED'})")
        print(f"ratio in tasks/asyncio:   median {mt:.2f}x")
        alone, both = await one_pending(srv)
        print(
            f"one pending awaitable completed by a TCP accept: p50 {both * 1e6:.0f} µs "
            f"(the accept alone: {alone * 1e6:.0f} µs, so +{(both - alone) * 1e6:.0f} µs for the completion)"
        )
        worst = max(peaks)
        # tokio's worker threads appear with the first awaitable; anything beyond them is growth
        steady = worst <= base_threads + 1 and base_threads <= start_threads + TOKIO_WORKERS
        print(
            f"threads: {start_threads} at start, {base_threads} after warm-up, at most {worst} with {N:,} pending "
            f"({'constant' if steady else 'GREW'})"
        )
    finally:
        await srv.aclose()


if __name__ == "__main__":
    asyncio.run(main())
