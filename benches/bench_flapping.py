"""Delivery under a flapping server: no resolved send may be lost.

A client sends N numbered messages through `tether.connect` to a raw asyncio server built on the `websockets`
Sans-I/O protocol (tests/support/flapping_server.py) that crashes after a random 10-250 frames (TCP reset, bare FIN,
or close 1011) and comes back on the same port: about one crash per 130 frames. The client keeps up to
`in flight` awaited sends going at a time (`pacing` between windows), then `flush()`es. Per configuration
and seed it prints:

- unread: sends that resolved but the server never read (lost unless a SendFailed named them);
- failed: messages named by a `tether.SendFailed` (with no poison message there is no reason to fail one);
- silent: unread and not named (the promise is 0);
- crashes and reconnects seen, and wall time.

Goal: unread 0 and failed 0 in every row and seed. Then, with the same crashes, two messages that must fail,
alone: one the server rejects with close 1009 (goal: failed within 1 s of its send), and a poison message
that makes the server close 1011 whenever it reads it (failed after 3 losses that confirmed nothing).

Run: .venv/bin/python benches/bench_flapping.py [--seeds 1,2,3] [--n 5000]   (default 8 seeds; QUICK=1: N=1000, 2 seeds)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

import tether
from support.flapping_server import FlappingServer, numbered_run

QUICK = os.environ.get("QUICK") == "1"

# (send_buffer, in flight, pacing in seconds)
ROWS = [(1024, 100, 0.0), (1024, 1, 0.0), (1024, 1, 0.001), (64, 30, 0.0)]


async def one(
    seed: int, n: int, send_buffer: int, in_flight: int, pacing: float
) -> tuple[int, int, int, int, int, float]:
    t0 = time.monotonic()
    async with FlappingServer(seed=seed) as srv:
        run = await numbered_run(srv.url, srv.record, n=n, in_flight=in_flight, pacing=pacing, send_buffer=send_buffer)
    crashes = sum(srv.record.crashes.values())
    return len(run.unread), len(run.named), len(run.lost), crashes, run.losses, time.monotonic() - t0


async def must_fail(seed: int, bad: str, **server: object) -> tuple[float, list[str], int, int]:
    """200 numbered messages, `bad`, 200 more, then flush: seconds from `bad`'s send to the SendFailed, what
    it named, messages of the others the server never read, and the server's connections."""
    async with FlappingServer(seed=seed, **server) as srv:  # type: ignore[arg-type]
        conn = tether.connect(
            srv.url, policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none"), quiet_jitter=0, stable_after=0.2
        )
        async with conn:
            for i in range(200):
                await conn.send(f"m{i}")
            t0 = time.perf_counter()
            await conn.send(bad)
            failed = conn.flush()
            for i in range(200, 400):
                await conn.send(f"m{i}")
            try:
                await failed
                named: list[str] = []
            except tether.SendFailed as e:
                named = [m for m in e.messages if isinstance(m, str)]
            took = time.perf_counter() - t0
            await conn.flush()
    missing = {f"m{i}" for i in range(400)} - set(srv.record.received)
    return took, named, len(missing), srv.record.connections


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2" if QUICK else "1,2,3,4,5,6,7,8")
    ap.add_argument("--n", type=int, default=1000 if QUICK else 5000)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    # every crash is a WARNING (a backed-off retry): thousands of lines that say nothing here
    logging.getLogger("tether").setLevel(logging.ERROR)
    print(f"N = {args.n}, crash every 10-250 frames (rst / fin / close 1011), seeds {seeds}")
    print(
        f"{'send_buffer':>11} {'in flight':>9} {'pacing':>7} {'seed':>4} {'unread':>6} {'failed':>6} {'silent':>6} "
        f"{'crashes':>7} {'losses':>6} {'time':>6}"
    )
    worst = 0
    for send_buffer, in_flight, pacing in ROWS:
        for seed in seeds:
            unread, failed, silent, crashes, losses, took = await one(seed, args.n, send_buffer, in_flight, pacing)
            worst = max(worst, unread, failed)
            pace = f"{pacing * 1000:.0f} ms" if pacing else "none"
            print(
                f"{send_buffer:>11} {in_flight:>9} {pace:>7} {seed:>4} {unread:>6} {failed:>6} {silent:>6} "
                f"{crashes:>7} {losses:>6} {took:>5.1f}s",
                flush=True,
            )
    print(f"goal: 0 unread and 0 failed in every row: {'MET' if worst == 0 else 'MISSED'}")

    big = "B" * 5000
    print("\na message the server rejects with close 1009 (max_size 1000), amid the crashes:")
    slowest, alone = 0.0, True
    for seed in seeds:
        took, named, missing, conns = await must_fail(seed, big, max_size=1000)
        slowest, alone = max(slowest, took), alone and named == [big] and missing == 0
        print(
            f"  seed {seed}: failed after {took * 1000:.0f} ms; named {len(named)} message(s), the 1009 one: "
            f"{named == [big]}; others unread: {missing}; connections {conns}"
        )
    print(f"goal: that message alone failed within 1 s: {'MET' if alone and slowest < 1.0 else 'MISSED'}")
    print("\na poison message (the server closes 1011 whenever it reads it), amid the crashes:")
    alone = True
    for seed in seeds:
        took, named, missing, conns = await must_fail(seed, "POISON", poison="POISON")
        alone = alone and named == ["POISON"] and missing == 0
        print(
            f"  seed {seed}: failed after {took * 1000:.0f} ms; named {len(named)} message(s), the poison one: "
            f"{named == ['POISON']}; others unread: {missing}; connections {conns}"
        )
    print(f"goal: the poison message alone failed: {'MET' if alone else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
