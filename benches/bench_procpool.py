"""ProcPool benchmarks.

1. Warm acquire latency: a process is idle; time `await pool.acquire()` (+ release back to idle).
   Goal: p50 <= 50 us.
2. Spawn rate under a crash loop: every child exits at once; spawns per second stay bounded by the
   respawn backoff instead of spinning (the seed's pool respawned crashing children forever).

Run: make bench   (or .venv/bin/python benches/bench_procpool.py)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import tether


async def warm_acquire(n: int = 3000) -> list[float]:
    class Proc:
        pass

    async def spawn():
        return Proc()

    pool = tether.ProcPool(spawn=spawn, num_idle=1)
    pool.start()
    while pool.stats()["idle"] < 1:
        await asyncio.sleep(0.001)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = await pool.acquire()
        out.append(time.perf_counter() - t0)
        pool.release(p)  # back to idle for the next round
    await pool.aclose()
    return out


async def crash_loop(seconds: float = 5.0) -> tuple[int, float]:
    policy = tether.Backoff(0.1, 2, max_delay=1.0, jitter="none")
    pool = tether.ProcPool(
        command=[sys.executable, "-c", "import sys; sys.exit(1)"],
        num_idle=4,
        max_concurrent_spawns=4,
        respawn=policy,
        initialize_timeout=20,
    )
    pool.start()
    await asyncio.sleep(seconds)
    spawns = pool.stats()["spawns"]
    await pool.aclose()
    return spawns, seconds


async def main() -> None:
    import logging

    logging.getLogger("tether").setLevel(logging.CRITICAL)  # the crash loop's warnings are expected here
    await warm_acquire(200)
    lat = sorted(await warm_acquire())
    p50, p99 = statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99)] * 1e6
    print(f"warm acquire (idle process ready), {len(lat)} rounds: p50 {p50:.1f} us, p99 {p99:.1f} us")
    print(f"  ratio p50 / 50 us goal: {p50 / 50:.2f}   (goal <= 1.0)")
    spawns, secs = await crash_loop()
    # with 4 concurrent spawns and waits 0.1, 0.2, 0.4, 0.8, 1.0, 1.0 ... after each failure round
    bound = 4 * (1 + sum(1 for t in (0.1, 0.3, 0.7, 1.5, 2.5, 3.5, 4.5) if t < secs))
    print(
        f"crash loop (child exits at once), {secs:.0f} s, 4 concurrent spawns: {spawns} spawns = {spawns / secs:.1f}/s"
    )
    print(f"  backoff-implied bound ~{bound} spawns; ratio {spawns / bound:.2f} (<= 1.0 means no spin)")


if __name__ == "__main__":
    asyncio.run(main())
