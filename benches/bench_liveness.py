"""Liveness.beat() cost: it is called per audio/video frame, so it must be cheap.

Compares `Liveness.beat()` with a pure-Python timestamp store (`d[key] = time.monotonic()`, what a
hand-written ghost-room detector does). Goal: <= 150 ns per call.

Run: make bench   (or .venv/bin/python benches/bench_liveness.py)
"""

from __future__ import annotations

import asyncio
import time

import tether

N = 2_000_000


def per_call_ns(fn, n=N, repeat=5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def loop_overhead_ns(n=N, repeat=5) -> float:
    def nothing():
        pass

    return per_call_ns(nothing, n, repeat)


async def main() -> None:
    wd = tether.Watchdog("bench")
    lv = wd.liveness("audio", 5.0)
    beat = lv.beat
    stamps = {}
    mono = time.monotonic

    def py_store():
        stamps["audio"] = mono()

    empty = loop_overhead_ns()
    t_beat = per_call_ns(beat)
    t_py = per_call_ns(py_store)
    print(f"{N:,} calls, best of 5 (loop+call overhead of an empty Python function: {empty:.0f} ns)")
    print(f"  Liveness.beat()              : {t_beat:6.1f} ns/call")
    print(f"  d[key] = time.monotonic()    : {t_py:6.1f} ns/call (pure-Python store inside a function)")
    print(f"  ratio beat / python store    : {t_beat / t_py:.2f}")
    print(f"  ratio beat / 150 ns goal     : {t_beat / 150:.2f}   (goal <= 1.0)")
    wd.close()


if __name__ == "__main__":
    asyncio.run(main())
